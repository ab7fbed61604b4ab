/* store_agg.c — the aggregates (tables agg_stack, agg_size), summed in memory per
 * transaction and written once, just before its COMMIT.
 *
 * They must equal a GROUP BY over the alloc rows, after a kill or a rolled-back
 * transaction too. So they are summed from the rows as they are written, not from the
 * events as they arrive (a row is kept back one commit, store_pair.c): every alloc row
 * insert_allocs() writes and every freed_ns an UPDATE sets, in the open transaction or
 * in its replay after a rollback. A rollback clears the sums; the replay of the
 * transaction's log sums its rows again. An UPSERT per row would cost more than the
 * row's INSERT; one per (session, bucket, stack) per transaction costs a few per cent.
 *
 * The sums live in one open-addressing table keyed by (session, bucket, stack), and the
 * size classes of the first AGG_SIZE_SESSIONS sessions of a transaction in arrays; those
 * of further sessions share the table with bucket = -1 - class (real buckets are >= 0:
 * stored times are).
 * Its entries are bounded by HP_STORE_AGG_MAX_ENTRIES: at the bound, or when it cannot
 * grow, the sums so far are written at once, which is as correct, only slower. */
#include "store_int.h"

#include <stdlib.h>
#include <string.h>

#define AGG_MIN_SLOTS     1024u
#define AGG_SIZE_SESSIONS 8u /* sessions whose size classes have an array of their own */
#define AGG_CLASSES       64
#define AGG_RECENT        256u /* entries found last, by their stack's low bits */

/* One session's size classes in this transaction: an array, cheaper than the table for
 * what every row adds to. */
typedef struct {
  int64_t session; /* 0: unused (session ids start at 1) */
  double bytes[AGG_CLASSES], count[AGG_CLASSES];
  int64_t samples[AGG_CLASSES];
} agg_sizes;

struct store_agg {
  agg_sizes sizes[AGG_SIZE_SESSIONS]; /* more sessions per transaction use the table */
  uint32_t nsizes;
  agg_entry *e;    /* entries in insertion order, e[0 .. n) */
  uint32_t n, cap; /* entries used, allocated */
  uint32_t *slot;  /* 0: empty, else index into e plus 1 */
  uint32_t nslots; /* a power of two, at least twice n */
  /* Index plus 1 of the entry found last per stack's low bits (0: none): a row's stack
   * recurs within a transaction, and the table's hash costs more than this look. */
  uint32_t recent[AGG_RECENT];
};

store_agg *store_agg_new(void)
{
  store_agg *a = calloc(1, sizeof *a);
  if (a == NULL)
    return NULL;
  a->slot = calloc(AGG_MIN_SLOTS, sizeof *a->slot);
  a->e = malloc(AGG_MIN_SLOTS / 2 * sizeof *a->e);
  if (a->slot == NULL || a->e == NULL) {
    store_agg_free(a);
    return NULL;
  }
  a->nslots = AGG_MIN_SLOTS;
  a->cap = AGG_MIN_SLOTS / 2;
  return a;
}

void store_agg_free(store_agg *a)
{
  if (a == NULL)
    return;
  free(a->slot);
  free(a->e);
  free(a);
}

void store_agg_clear(hp_store *s)
{
  store_agg *a = s->agg;
  if (a->nsizes > 0)
    memset(a->sizes, 0, a->nsizes * sizeof a->sizes[0]);
  a->nsizes = 0;
  if (a->n == 0)
    return;
  memset(a->slot, 0, (size_t)a->nslots * sizeof *a->slot);
  a->n = 0;
  memset(a->recent, 0, sizeof a->recent);
}

static uint32_t hash3(int64_t x, int64_t y, int64_t z)
{
  uint64_t h = (uint64_t)x * 0x9E3779B97F4A7C15ull;
  h ^= (uint64_t)y + 0x632BE59BD9B4E019ull + (h << 6) + (h >> 2);
  h ^= (uint64_t)z * 0xC2B2AE3D27D4EB4Full + (h << 6) + (h >> 2);
  h ^= h >> 29;
  h *= 0xBF58476D1CE4E5B9ull;
  return (uint32_t)(h ^ (h >> 32));
}

static void place(store_agg *a, uint32_t index)
{
  const agg_entry *x = &a->e[index];
  uint32_t mask = a->nslots - 1, i = hash3(x->session, x->bucket, x->stack) & mask;
  while (a->slot[i] != 0)
    i = (i + 1) & mask;
  a->slot[i] = index + 1;
}

/* Room for one more entry: 0, or -1 when the table cannot grow. */
static int grow(store_agg *a)
{
  if (a->n >= HP_STORE_AGG_MAX_ENTRIES)
    return -1;
  if (a->n == a->cap) {
    agg_entry *e = realloc(a->e, (size_t)a->cap * 2 * sizeof *e);
    if (e == NULL)
      return -1;
    a->e = e;
    a->cap *= 2;
  }
  if ((a->n + 1) * 2 > a->nslots) {
    uint32_t *slot = calloc((size_t)a->nslots * 2, sizeof *slot);
    if (slot == NULL)
      return -1;
    free(a->slot);
    a->slot = slot;
    a->nslots *= 2;
    for (uint32_t i = 0; i < a->n; i++)
      place(a, i);
  }
  return 0;
}

/* The entry for the key, created zeroed if absent, and remembered in *r. At the bound,
 * the sums so far are written first (the transaction is open: every caller writes a row
 * in it). */
static __attribute__((noinline)) agg_entry *
entry_find(hp_store *s, int64_t session, int64_t bucket, int64_t stack, uint32_t *r)
{
  store_agg *a = s->agg;
  uint32_t mask = a->nslots - 1, i = hash3(session, bucket, stack) & mask;
  for (; a->slot[i] != 0; i = (i + 1) & mask) {
    agg_entry *x = &a->e[a->slot[i] - 1];
    if (x->session == session && x->bucket == bucket && x->stack == stack) {
      *r = a->slot[i];
      return x;
    }
  }
  if (grow(a) < 0) {
    store_agg_write(s);
    store_agg_clear(s);
  }
  agg_entry *x = &a->e[a->n];
  memset(x, 0, sizeof *x);
  x->session = session;
  x->bucket = bucket;
  x->stack = stack;
  place(a, a->n);
  *r = ++a->n;
  return x;
}

/* entry_find() after a look at the entry found last for the stack's low bits. */
static inline agg_entry *entry(hp_store *s, int64_t session, int64_t bucket, int64_t stack)
{
  store_agg *a = s->agg;
  uint32_t *r = &a->recent[(uint64_t)stack & (AGG_RECENT - 1)];
  if (*r != 0) {
    agg_entry *x = &a->e[*r - 1];
    if (x->session == session && x->bucket == bucket && x->stack == stack)
      return x;
  }
  return entry_find(s, session, bucket, stack, r);
}

static int64_t bucket_of(int64_t ts)
{
  return ts - ts % HP_STORE_AGG_BUCKET_NS;
}

/* The bit length of size: 0 for 0 (and for a negative size, which no agent sends). */
static int64_t size_class(int64_t size)
{
  return size <= 0 ? 0 : 64 - __builtin_clzll((unsigned long long)size);
}

/* As the readers count it: est_bytes / MAX(size, 1), a REAL. */
/* A sample's share of the variance of any sum of est_bytes it belongs to, as the readers
 * count it: est_bytes * MAX(est_bytes - size, 0), a REAL (tools/README.md, "Standard
 * errors"). */
static double est_var(int64_t est, int64_t size)
{
  return est > size ? (double)est * (double)(est - size) : 0.0;
}

static double est_count(int64_t est, int64_t size)
{
  return (double)est / (double)(size > 1 ? size : 1);
}

/* The size-class array of the session, or NULL when AGG_SIZE_SESSIONS are in use. */
static agg_sizes *sizes_of(store_agg *a, int64_t session)
{
  for (uint32_t i = 0; i < a->nsizes; i++)
    if (a->sizes[i].session == session)
      return &a->sizes[i];
  if (a->nsizes == AGG_SIZE_SESSIONS)
    return NULL;
  agg_sizes *z = &a->sizes[a->nsizes++];
  z->session = session;
  return z;
}

void store_agg_row(hp_store *s, const int64_t *v)
{
  double count = est_count(v[ALLOC_EST], v[ALLOC_SIZE]);
  double bytes = (double)v[ALLOC_EST];
  agg_entry *x = entry(s, v[ALLOC_SESSION], bucket_of(v[ALLOC_TS]), v[ALLOC_STACK]);
  x->alloc_bytes += bytes;
  x->alloc_count += count;
  x->alloc_var += est_var(v[ALLOC_EST], v[ALLOC_SIZE]);
  x->alloc_samples++;
  store_site_add(s, v[ALLOC_SESSION], v[ALLOC_STACK], v[ALLOC_EST], v[ALLOC_TS]);
  if (v[ALLOC_FREED] != 0)
    store_agg_freed(s, v[ALLOC_SESSION], v[ALLOC_STACK], v[ALLOC_EST], v[ALLOC_SIZE],
                    v[ALLOC_FREED]);
  int64_t c = size_class(v[ALLOC_SIZE]);
  agg_sizes *z = sizes_of(s->agg, v[ALLOC_SESSION]);
  if (z != NULL) {
    z->bytes[c] += bytes;
    z->count[c] += count;
    z->samples[c]++;
    return;
  }
  x = entry(s, v[ALLOC_SESSION], -1 - c, 0);
  x->alloc_bytes += bytes;
  x->alloc_count += count;
  x->alloc_samples++;
}

void store_agg_freed(hp_store *s, int64_t session, int64_t stack, int64_t est, int64_t size,
                     int64_t freed)
{
  agg_entry *x = entry(s, session, bucket_of(freed), stack);
  x->freed_bytes += (double)est;
  x->freed_count += est_count(est, size);
  x->freed_var += est_var(est, size);
  x->freed_samples++;
  store_site_add(s, session, stack, -est, freed);
}

void store_agg_write(hp_store *s)
{
  store_agg *a = s->agg;
  sqlite3_stmt *st = s->st[ST_UPSERT_AGG_STACK], *sz = s->st[ST_UPSERT_AGG_SIZE];
  for (uint32_t i = 0; i < a->n && !s->broken; i++) {
    const agg_entry *x = &a->e[i];
    if (x->bucket >= 0) {
      sqlite3_bind_int64(st, 1, x->session);
      sqlite3_bind_int64(st, 2, x->bucket);
      sqlite3_bind_int64(st, 3, x->stack);
      sqlite3_bind_double(st, 4, x->alloc_bytes);
      sqlite3_bind_double(st, 5, x->alloc_count);
      sqlite3_bind_int64(st, 6, x->alloc_samples);
      sqlite3_bind_double(st, 7, x->freed_bytes);
      sqlite3_bind_double(st, 8, x->freed_count);
      sqlite3_bind_int64(st, 9, x->freed_samples);
      sqlite3_bind_double(st, 10, x->alloc_var);
      sqlite3_bind_double(st, 11, x->freed_var);
      (void)store_sql_run(s, ST_UPSERT_AGG_STACK);
    } else {
      sqlite3_bind_int64(sz, 1, x->session);
      sqlite3_bind_int64(sz, 2, -1 - x->bucket);
      sqlite3_bind_int64(sz, 3, x->alloc_samples);
      sqlite3_bind_double(sz, 4, x->alloc_count);
      sqlite3_bind_double(sz, 5, x->alloc_bytes);
      (void)store_sql_run(s, ST_UPSERT_AGG_SIZE);
    }
  }
  for (uint32_t i = 0; i < a->nsizes && !s->broken; i++) {
    const agg_sizes *z = &a->sizes[i];
    for (int c = 0; c < AGG_CLASSES && !s->broken; c++) {
      if (z->samples[c] == 0)
        continue;
      sqlite3_bind_int64(sz, 1, z->session);
      sqlite3_bind_int64(sz, 2, c);
      sqlite3_bind_int64(sz, 3, z->samples[c]);
      sqlite3_bind_double(sz, 4, z->count[c]);
      sqlite3_bind_double(sz, 5, z->bytes[c]);
      (void)store_sql_run(s, ST_UPSERT_AGG_SIZE);
    }
  }
}
