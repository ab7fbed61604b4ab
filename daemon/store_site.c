/* store_site.c — the site aggregate (table agg_site): per session, source line and
 * bucket, the net change of the live bytes allocated while that line was on the stack,
 * and the highest level they reach inside the bucket, relative to its start.
 *
 * The pair composes over consecutive buckets (net n1 + n2, highest max(h1, n1 + h2)), so
 * a reader gets a line's highest level within any run of whole buckets without reading
 * a row; a sum per stack cannot give it (the highest level of a sum over several stacks
 * is not the sum of their highest levels).
 *
 * Like agg_stack, it is computed from the alloc rows as they are written (store_agg.c
 * passes each row and each UPDATEd free here), so that it equals the same computation
 * over the rows after a kill or a rollback. But the highest level needs a bucket's
 * events in time order, and rows are written out of it (a row waits one commit,
 * store_pair.c, with the free folded into it). So each session's events wait in memory
 * until no row written later can fall into their bucket: before the session's oldest
 * pending row and HP_STORE_SITE_LAG_NS before its latest event (no lag while more than
 * HP_STORE_SITE_SOFT_EVENTS wait). They wait in two lists per bucket, allocations and
 * frees, of chunks that grow and are reused: nothing is copied as a list grows, and a
 * commit costs what it writes, not what waits. Then the bucket's two lists are merged
 * (a list that came out of time order is sorted first), its rows written, and
 * agg_site_session.done_ns moved past it, in the transaction that commits them. A row
 * or free that arrives for a bucket already written (an agent thread's event stamped
 * more than the lag before the stream's latest), memory that runs out or reaches
 * HP_STORE_SITE_MAX_EVENTS, or a level beyond 64 bits ends the session's site
 * aggregate: its rows are deleted and readers read the alloc rows, as for an older
 * recording.
 *
 * Lines are keyed by the smallest frame id with that filename and line number (two
 * functions on one line, e.g. a comprehension and its caller, are one site); each
 * stack's distinct lines are read from the database once, when a bucket first needs
 * them. */
#include "store_int.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* One change of a line's level: from a row's ts_ns (+est_bytes) or freed_ns (-). */
typedef struct {
  int64_t ts, delta, stack;
} site_ev;

typedef struct site_chunk {
  struct site_chunk *next;
  uint32_t n, cap;
  site_ev ev[];
} site_chunk;

/* A list's chunks grow from SITE_CHUNK_FIRST events, doubling, to SITE_CHUNK, so that the
 * many short lists of small intervals stay small. Full-size chunks (16 KiB) are mapped
 * apart from the heap, because thousands of them a second taken from and given back to
 * the heap leave holes there that SQLite's own allocations then pay for. They are kept
 * for reuse after a commit, as many as are in use (a steady load reuses them all; the
 * memory of a burst is given back), within SITE_SPARE_MIN and SITE_SPARE_MAX. */
#define SITE_CHUNK_BYTES 16384
#define SITE_CHUNK_FIRST 16
#define SITE_CHUNK       ((SITE_CHUNK_BYTES - sizeof(site_chunk)) / sizeof(site_ev))
#define SITE_SPARE_MIN   256
#define SITE_SPARE_MAX   2048

/* Waiting events in the order they came; the first `committed` are committed, the rest
 * the open transaction's (a rollback drops them). */
typedef struct {
  site_chunk *head, *tail;
  uint32_t n, committed;
  int64_t last, committed_last; /* the latest time in it */
  int unsorted, committed_unsorted;
} ev_list;

/* A bucket's frees (and changes of 0) and allocations apart. Allocations come in time
 * order as a rule (rows are written in the order of their allocation), so a write merges
 * them as they are; frees come in order only when blocks die in the order they were
 * made (frees folded into rows come in allocation order, UPDATEd ones in theirs), and a
 * list out of order is sorted. */
typedef struct {
  int64_t start; /* the bucket's first ns */
  ev_list l[2];  /* [delta > 0] */
} site_bucket;

typedef struct {
  int64_t id;
  int failed;              /* given up: its rows are deleted at the next commit */
  int deleted;             /* ... and that commit succeeded: nothing more to do */
  int ended;               /* its end is in the open transaction: finish it all */
  int64_t done;            /* committed: buckets before it are written */
  int64_t next_done;       /* what this transaction's write moved it to */
  int64_t max_ts, txn_max; /* latest event time committed, and in this transaction */
  int64_t pending_min;     /* oldest pending row's ts_ns, at the write */
  site_bucket *b;          /* by start */
  uint32_t nb, capb;
  uint32_t cur[2];  /* the bucket of the latest free and allocation: a hint */
  uint32_t waiting; /* events in b[0..nb-1] */
  uint32_t held;    /* events their chunks can hold: what the bounds count */
} site_sess;

typedef struct {
  uint32_t off, n; /* into lines_of */
} stack_lines;

/* A line's level in the bucket being written, together: the write's inner loop reads
 * all three for every line of every change. */
typedef struct {
  int64_t level, high;
  uint32_t stamp; /* == gen: level and high are this write's */
} line_state;

#define SITE_CACHE 256 /* stacks whose lines are found without a hash look-up */

struct store_site {
  site_sess *sess;
  uint32_t nsess, capsess, last;
  hp_map *stacks;  /* stack id -> number: index into st, plus 1 */
  stack_lines *st; /* per stack seen */
  uint32_t nst, capst;
  uint32_t *lines_of; /* line indexes of the stacks, distinct per stack */
  uint32_t nlines_of, caplines_of;
  hp_map *frames;    /* frame id -> number: line index plus 1 */
  hp_map *keys;      /* line key (a frame id) -> number: line index plus 1 */
  int64_t *key;      /* per line index: its key */
  line_state *ls;    /* per line index */
  uint32_t *touched; /* line indexes the write touched */
  uint32_t nlines, caplines, gen;
  site_chunk *spare; /* free full-size chunks */
  uint32_t nspare;
  site_ev *sorted[2], *tmp; /* scratch of the write: a list sorted */
  uint32_t capsorted[2], captmp;
  uint32_t count[(1u << 16) + 1];  /* of the radix sort */
  int64_t cache_stack[SITE_CACHE]; /* stacks found last (0: none), by their low bits */
  uint32_t cache_index[SITE_CACHE];
};

store_site *store_site_new(void)
{
  store_site *t = calloc(1, sizeof *t);
  if (t == NULL)
    return NULL;
  t->stacks = hp_map_new();
  t->frames = hp_map_new();
  t->keys = hp_map_new();
  if (t->stacks == NULL || t->frames == NULL || t->keys == NULL) {
    store_site_free(t);
    return NULL;
  }
  return t;
}

/* A chunk for cap events: NULL when memory runs out. */
static site_chunk *chunk_new(uint32_t cap)
{
  if (cap < SITE_CHUNK)
    return malloc(sizeof(site_chunk) + (size_t)cap * sizeof(site_ev));
  void *p = mmap(NULL, SITE_CHUNK_BYTES, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

static void chunk_free(site_chunk *c)
{
  if (c->cap < SITE_CHUNK)
    free(c);
  else
    munmap(c, SITE_CHUNK_BYTES);
}

/* Gives the chunks of list c, held by x, back: full-size ones to the spares. */
static void chunks_release(store_site *t, site_sess *x, site_chunk *c)
{
  while (c != NULL) {
    site_chunk *next = c->next;
    x->held -= c->cap;
    if (c->cap == SITE_CHUNK) {
      c->next = t->spare;
      t->spare = c;
      t->nspare++;
    } else {
      chunk_free(c);
    }
    c = next;
  }
}

static void sess_release(store_site *t, site_sess *x)
{
  for (uint32_t i = 0; i < x->nb; i++) {
    chunks_release(t, x, x->b[i].l[0].head);
    chunks_release(t, x, x->b[i].l[1].head);
  }
  free(x->b);
  x->b = NULL;
  x->nb = x->capb = x->cur[0] = x->cur[1] = x->waiting = 0;
  assert(x->held == 0);
}

void store_site_free(store_site *t)
{
  if (t == NULL)
    return;
  for (uint32_t i = 0; i < t->nsess; i++)
    sess_release(t, &t->sess[i]);
  free(t->sess);
  for (site_chunk *c = t->spare, *next; c != NULL; c = next) {
    next = c->next;
    chunk_free(c);
  }
  hp_map_free(t->stacks);
  hp_map_free(t->frames);
  hp_map_free(t->keys);
  free(t->st);
  free(t->lines_of);
  free(t->key);
  free(t->ls);
  free(t->touched);
  free(t->sorted[0]);
  free(t->sorted[1]);
  free(t->tmp);
  free(t);
}

/* Grows *p (of *cap elements of size sz) to hold need: 0, or -1 (unchanged). */
static int reserve(void **p, uint32_t *cap, uint32_t need, size_t sz)
{
  if (need <= *cap)
    return 0;
  uint32_t c = *cap ? *cap : 64;
  while (c < need) {
    if (c > UINT32_MAX / 2)
      return -1;
    c *= 2;
  }
  void *q = realloc(*p, (size_t)c * sz);
  if (q == NULL)
    return -1;
  *p = q;
  *cap = c;
  return 0;
}

/* The session's state, created at its first row; NULL when memory ran out. */
static __attribute__((noinline)) site_sess *sess_find(store_site *t, int64_t id)
{
  for (uint32_t i = 0; i < t->nsess; i++)
    if (t->sess[i].id == id) {
      t->last = i + 1;
      return &t->sess[i];
    }
  if (reserve((void **)&t->sess, &t->capsess, t->nsess + 1, sizeof *t->sess) < 0)
    return NULL;
  site_sess *x = &t->sess[t->nsess++];
  *x = (site_sess){.id = id, .max_ts = INT64_MIN, .txn_max = INT64_MIN};
  t->last = t->nsess;
  return x;
}

/* Rows come in runs of one session. */
static inline site_sess *sess_of(store_site *t, int64_t id)
{
  if (t->last != 0 && t->sess[t->last - 1].id == id)
    return &t->sess[t->last - 1];
  return sess_find(t, id);
}

static int64_t bucket_of(int64_t ts, int64_t width)
{
  int64_t r = ts % width;
  return ts - (r < 0 ? r + width : r);
}

static void fail(store_site *t, site_sess *x)
{
  if (!x->failed) {
    x->failed = 1;
    sess_release(t, x);
  }
}

/* The bucket starting at `start`, inserted in order if new, and made x's current one for
 * changes of kind k; NULL when memory runs out. */
static __attribute__((noinline)) site_bucket *bucket_find(site_sess *x, int64_t start,
                                                          int k)
{
  uint32_t lo = 0, hi = x->nb; /* the first bucket at or after start */
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    if (x->b[mid].start < start)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo == x->nb || x->b[lo].start != start) {
    if (reserve((void **)&x->b, &x->capb, x->nb + 1, sizeof *x->b) < 0)
      return NULL;
    memmove(&x->b[lo + 1], &x->b[lo], (x->nb - lo) * sizeof *x->b);
    x->b[lo] = (site_bucket){.start = start,
                             .l = {{.last = INT64_MIN, .committed_last = INT64_MIN},
                                   {.last = INT64_MIN, .committed_last = INT64_MIN}}};
    x->nb++;
  }
  x->cur[k] = lo;
  return &x->b[lo];
}

/* Appends a chunk to list l of x: 0, or -1 when the bound is reached or memory runs
 * out. */
static __attribute__((noinline)) int chunk_append(store_site *t, site_sess *x, ev_list *l)
{
  uint32_t cap = l->tail == NULL ? SITE_CHUNK_FIRST : l->tail->cap * 2;
  cap = cap < SITE_CHUNK ? cap : (uint32_t)SITE_CHUNK;
  if (x->held + cap > HP_STORE_SITE_MAX_EVENTS)
    return -1;
  site_chunk *c = NULL;
  if (cap == SITE_CHUNK && t->spare != NULL) {
    c = t->spare;
    t->spare = c->next;
    t->nspare--;
  } else if ((c = chunk_new(cap)) == NULL) {
    return -1;
  }
  *c = (site_chunk){.cap = cap};
  x->held += cap;
  if (l->tail != NULL)
    l->tail->next = c;
  else
    l->head = c;
  l->tail = c;
  return 0;
}

void store_site_add(hp_store *s, int64_t session, int64_t stack, int64_t delta, int64_t ts)
{
  store_site *t = s->site;
  if (stack == 0)
    return; /* no Python stack: on no line */
  site_sess *x = sess_of(t, session);
  if (x == NULL || x->failed)
    return;
  if (ts < x->done) {
    fail(t, x); /* its bucket is written already */
    return;
  }
  int64_t width = s->cfg.timeline_interval_ns;
  int k = delta > 0;
  site_bucket *b = x->cur[k] < x->nb ? &x->b[x->cur[k]] : NULL;
  if (b == NULL || ts < b->start || ts - b->start >= width)
    b = bucket_find(x, bucket_of(ts, width), k);
  ev_list *l = b != NULL ? &b->l[k] : NULL;
  if (l == NULL ||
      ((l->tail == NULL || l->tail->n == l->tail->cap) && chunk_append(t, x, l) < 0)) {
    fail(t, x);
    return;
  }
  l->tail->ev[l->tail->n++] = (site_ev){.ts = ts, .delta = delta, .stack = stack};
  l->n++;
  if (ts < l->last)
    l->unsorted = 1;
  else
    l->last = ts;
  x->waiting++;
  if (ts > x->txn_max)
    x->txn_max = ts;
}

/* ------------------------------------------------------------------ lines of a stack */

/* The line index of frame `frame`: -1 when it cannot be read or memory runs out. */
static int64_t line_of_frame(hp_store *s, int64_t frame)
{
  store_site *t = s->site;
  hp_map_val *v = hp_map_get(t->frames, (uint64_t)frame);
  if (v != NULL)
    return v->number - 1;
  sqlite3_stmt *st = s->st[ST_SEL_FRAME_LINE];
  sqlite3_bind_int64(st, 1, frame);
  int rc = sqlite3_step(st);
  int64_t key = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
  sqlite3_reset(st);
  if (rc != SQLITE_ROW) {
    if (rc != SQLITE_DONE)
      store_sql_break(s, store_sql_text(ST_SEL_FRAME_LINE), rc);
    return -1;
  }
  int created;
  hp_map_val *k = hp_map_upsert(t->keys, (uint64_t)key, &created);
  if (k == NULL)
    return -1;
  if (created) {
    uint32_t i = t->nlines, c = t->caplines;
    if (reserve((void **)&t->key, &c, i + 1, sizeof *t->key) < 0 ||
        (c = t->caplines, reserve((void **)&t->ls, &c, i + 1, sizeof *t->ls)) < 0 ||
        (c = t->caplines, reserve((void **)&t->touched, &c, i + 1, sizeof *t->touched)) <
          0) {
      hp_map_del_at(t->keys, k);
      return -1;
    }
    t->caplines = c;
    t->key[i] = key;
    t->ls[i].stamp = 0;
    k->number = ++t->nlines;
  }
  uint32_t line = k->number - 1;
  if (hp_map_put(t->frames, (uint64_t)frame, &(hp_map_val){.number = line + 1}) < 0)
    return -1;
  return line;
}

/* The distinct lines of stack `stack`: NULL when they cannot be read (a broken
 * transaction: nothing is committed then) or memory runs out (*oom set). */
static const stack_lines *lines_of_stack(hp_store *s, int64_t stack, int *oom)
{
  store_site *t = s->site;
  uint32_t c = (uint32_t)stack & (SITE_CACHE - 1);
  if (t->cache_stack[c] == stack)
    return &t->st[t->cache_index[c]];
  hp_map_val *v = hp_map_get(t->stacks, (uint64_t)stack);
  if (v != NULL) {
    t->cache_stack[c] = stack;
    t->cache_index[c] = v->number - 1;
    return &t->st[v->number - 1];
  }
  if (s->broken)
    return NULL;
  int64_t frames[HP_MAX_STACK_DEPTH];
  uint32_t depth = 0;
  sqlite3_stmt *st = s->st[ST_SEL_STACK_FRAMES];
  sqlite3_bind_int64(st, 1, stack);
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW && depth < HP_MAX_STACK_DEPTH)
    frames[depth++] = sqlite3_column_int64(st, 0);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
    store_sql_break(s, store_sql_text(ST_SEL_STACK_FRAMES), rc);
    return NULL;
  }
  if (t->nlines_of + depth > HP_STORE_SITE_MAX_LINE_REFS ||
      reserve((void **)&t->lines_of, &t->caplines_of, t->nlines_of + depth,
              sizeof *t->lines_of) < 0 ||
      reserve((void **)&t->st, &t->capst, t->nst + 1, sizeof *t->st) < 0) {
    *oom = 1;
    return NULL;
  }
  stack_lines sl = {.off = t->nlines_of, .n = 0};
  for (uint32_t i = 0; i < depth; i++) {
    int64_t line = line_of_frame(s, frames[i]);
    if (line < 0) {
      *oom = !s->broken;
      return NULL;
    }
    uint32_t j = 0;
    while (j < sl.n && t->lines_of[sl.off + j] != (uint32_t)line)
      j++;
    if (j == sl.n)
      t->lines_of[sl.off + sl.n++] = (uint32_t)line;
  }
  if (hp_map_put(t->stacks, (uint64_t)stack, &(hp_map_val){.number = t->nst + 1}) < 0) {
    *oom = 1;
    return NULL;
  }
  t->nlines_of += sl.n;
  t->st[t->nst] = sl;
  return &t->st[t->nst++];
}

/* ------------------------------------------------------------------ the write */

/* Sorts the n events of the bucket starting at `start` by time, frees before
 * allocations at one instant (an allocation is live over [ts, freed)). Events already in
 * order are left as they are; a few are insertion-sorted; more by a least-significant-
 * digit radix sort on twice the time into the bucket, in passes of as many bits as n
 * has (between 8 and 16), so that a small bucket does not clear a large count array.
 * Returns a or b, whichever holds the result; count: 2^16 + 1 entries. */
static site_ev *sort_events(site_ev *a, site_ev *b, uint32_t n, int64_t start,
                            uint32_t *count)
{
#define KEY(e) ((((uint64_t)(e).ts - (uint64_t)start) << 1) | ((e).delta > 0))
  uint64_t hi = 0;
  int sorted = 1;
  for (uint32_t i = 0; i < n; i++) {
    uint64_t k = KEY(a[i]);
    sorted &= i == 0 || KEY(a[i - 1]) <= k;
    hi = k > hi ? k : hi;
  }
  if (sorted)
    return a;
  if (n <= 32) {
    for (uint32_t i = 1; i < n; i++) {
      site_ev e = a[i];
      uint32_t j = i;
      for (; j > 0 && KEY(a[j - 1]) > KEY(e); j--)
        a[j] = a[j - 1];
      a[j] = e;
    }
    return a;
  }
  unsigned bits = 64 - (unsigned)__builtin_clzll(hi | 1);
  unsigned want = 32 - (unsigned)__builtin_clz(n);
  want = want < 8 ? 8 : want > 16 ? 16 : want;
  unsigned passes = (bits + want - 1) / want, digit = (bits + passes - 1) / passes;
  uint64_t mask = ((uint64_t)1 << digit) - 1;
  for (unsigned shift = 0; shift < bits; shift += digit) {
    memset(count, 0, (mask + 2) * sizeof *count);
    for (uint32_t i = 0; i < n; i++)
      count[((KEY(a[i]) >> shift) & mask) + 1]++;
    for (uint64_t d = 0; d < mask; d++)
      count[d + 1] += count[d];
    for (uint32_t i = 0; i < n; i++)
      b[count[(KEY(a[i]) >> shift) & mask]++] = a[i];
    site_ev *c = a;
    a = b;
    b = c;
  }
#undef KEY
  return a;
}

static void write_bucket(hp_store *s, int64_t session, int64_t bucket, uint32_t ntouched)
{
  store_site *t = s->site;
  sqlite3_stmt *st = s->st[ST_INS_AGG_SITE];
  for (uint32_t i = 0; i < ntouched && !s->broken; i++) {
    uint32_t l = t->touched[i];
    const line_state *x = &t->ls[l];
    if (x->level == 0 && x->high == 0)
      continue; /* as if untouched */
    sqlite3_bind_int64(st, 1, session);
    sqlite3_bind_int64(st, 2, t->key[l]);
    sqlite3_bind_int64(st, 3, bucket);
    sqlite3_bind_int64(st, 4, x->level);
    sqlite3_bind_int64(st, 5, x->high);
    (void)store_sql_run(s, ST_INS_AGG_SITE);
  }
}

/* Reads a list in time order: its chunks, or its copy sorted. */
typedef struct {
  const site_chunk *c;
  const site_ev *p, *end;
} ev_cursor;

/* A cursor on list l, sorted into scratch k if it is not in order: 0, or -1 when memory
 * runs out. */
static int cursor_open(store_site *t, const ev_list *l, int64_t start, int k,
                       ev_cursor *cur)
{
  static const site_ev none;
  *cur = (ev_cursor){.p = &none, .end = &none};
  if (l->n == 0)
    return 0;
  if (!l->unsorted) {
    *cur = (ev_cursor){.c = l->head, .p = l->head->ev, .end = l->head->ev + l->head->n};
    return 0;
  }
  if (reserve((void **)&t->sorted[k], &t->capsorted[k], l->n, sizeof(site_ev)) < 0 ||
      reserve((void **)&t->tmp, &t->captmp, l->n, sizeof(site_ev)) < 0)
    return -1;
  uint32_t n = 0;
  for (const site_chunk *c = l->head; c != NULL; c = c->next) {
    memcpy(t->sorted[k] + n, c->ev, (size_t)c->n * sizeof *c->ev);
    n += c->n;
  }
  const site_ev *a = sort_events(t->sorted[k], t->tmp, n, start, t->count);
  if (a == t->tmp) { /* the result stays in scratch k; tmp is the next sort's */
    site_ev *e = t->tmp;
    uint32_t c = t->captmp;
    t->tmp = t->sorted[k];
    t->captmp = t->capsorted[k];
    t->sorted[k] = e;
    t->capsorted[k] = c;
  }
  *cur = (ev_cursor){.p = t->sorted[k], .end = t->sorted[k] + n};
  return 0;
}

static inline void cursor_next(ev_cursor *cur)
{
  if (++cur->p == cur->end && cur->c != NULL && cur->c->next != NULL) {
    cur->c = cur->c->next;
    cur->p = cur->c->ev;
    cur->end = cur->p + cur->c->n;
  }
}

/* Writes bucket b of session x: its two lists merged in time order, frees before
 * allocations at one instant (an allocation is live over [ts, freed)), each line's net
 * change and highest level. 0, or -1 when memory ran out, a level overflowed or the
 * transaction broke. */
static int write_bucket_of(hp_store *s, site_sess *x, const site_bucket *b)
{
  store_site *t = s->site;
  ev_cursor fr, al;
  if (cursor_open(t, &b->l[0], b->start, 0, &fr) < 0 ||
      cursor_open(t, &b->l[1], b->start, 1, &al) < 0)
    return -1;
  if (++t->gen == 0) { /* wrapped: no stamp may look current */
    for (uint32_t l = 0; l < t->nlines; l++)
      t->ls[l].stamp = 0;
    t->gen = 1;
  }
  uint32_t ntouched = 0;
  int64_t last_stack = 0;
  const stack_lines *sl = NULL;
  while (fr.p != fr.end || al.p != al.end) {
    const site_ev *ev;
    if (al.p == al.end || (fr.p != fr.end && fr.p->ts <= al.p->ts)) {
      ev = fr.p;
      cursor_next(&fr);
    } else {
      ev = al.p;
      cursor_next(&al);
    }
    if (sl == NULL || ev->stack != last_stack) {
      int oom = 0;
      sl = lines_of_stack(s, ev->stack, &oom);
      if (sl == NULL)
        return -1;
      last_stack = ev->stack;
    }
    for (uint32_t j = 0; j < sl->n; j++) {
      uint32_t l = t->lines_of[sl->off + j];
      line_state *y = &t->ls[l];
      if (y->stamp != t->gen) {
        y->stamp = t->gen;
        y->level = 0;
        /* The level before the bucket counts unless an event comes at its very start. */
        y->high = ev->ts == b->start ? INT64_MIN : 0;
        t->touched[ntouched++] = l;
      }
      /* est_bytes may come near 2^63 (unbiased estimates of huge blocks at a tiny
       * interval): a level beyond 64 bits gives the session's aggregate up, as memory
       * running out does, rather than store a wrong sum. */
      if (__builtin_add_overflow(y->level, ev->delta, &y->level))
        return -1;
      if (y->level > y->high)
        y->high = y->level;
    }
  }
  write_bucket(s, x->id, b->start, ntouched);
  return s->broken ? -1 : 0;
}

/* Writes the buckets of x before `limit` (a bucket edge; INT64_MAX: all of them, at the
 * session's end). 0, or -1 as write_bucket_of. */
static int write_before(hp_store *s, site_sess *x, int64_t limit)
{
  for (uint32_t i = 0; i < x->nb && x->b[i].start < limit; i++)
    if (write_bucket_of(s, x, &x->b[i]) < 0)
      return -1;
  return 0;
}

/* A session given up: readers read its alloc rows. */
static void delete_rows(hp_store *s, int64_t session)
{
  sqlite3_bind_int64(s->st[ST_DEL_AGG_SITE_SESSION], 1, session);
  (void)store_sql_run(s, ST_DEL_AGG_SITE_SESSION);
  sqlite3_bind_int64(s->st[ST_DEL_AGG_SITE], 1, session);
  (void)store_sql_run(s, ST_DEL_AGG_SITE);
}

static uint64_t waiting_events(const store_site *t)
{
  uint64_t n = 0;
  for (uint32_t i = 0; i < t->nsess; i++)
    n += t->sess[i].waiting;
  return n;
}

static uint64_t held_events(const store_site *t)
{
  uint64_t n = 0;
  for (uint32_t i = 0; i < t->nsess; i++)
    n += t->sess[i].held;
  return n;
}

void store_site_write(hp_store *s)
{
  store_site *t = s->site;
  int64_t width = s->cfg.timeline_interval_ns;
  for (uint32_t i = 0; i < t->nsess; i++) {
    t->sess[i].pending_min = INT64_MAX;
    t->sess[i].ended = 0;
    t->sess[i].next_done = t->sess[i].done;
  }
  for (uint32_t i = 0; i < s->npending; i++) {
    site_sess *x = sess_of(t, s->pending[i].ss->id);
    if (x != NULL && s->pending[i].ts < x->pending_min)
      x->pending_min = s->pending[i].ts;
  }
  for (hp_store_session *ss = s->ending; ss; ss = ss->next) {
    site_sess *x = sess_of(t, ss->id);
    if (x != NULL)
      x->ended = 1;
  }
  /* Past the hard bound, on the memory the waiting events hold (events stamped far
   * denser than heapprofd stores them fill a bucket faster than it can be written), the
   * sessions holding the most give their site aggregate up until the rest fit. */
  for (uint64_t w = held_events(t); w > HP_STORE_SITE_MAX_EVENTS;) {
    site_sess *big = &t->sess[0];
    for (uint32_t i = 1; i < t->nsess; i++)
      if (t->sess[i].held > big->held)
        big = &t->sess[i];
    w -= big->held;
    fail(t, big);
  }
  /* Past the soft bound, buckets are written as soon as their rows are: only events out
   * of time order can then come too late. */
  int64_t lag = waiting_events(t) > HP_STORE_SITE_SOFT_EVENTS ? 0 : HP_STORE_SITE_LAG_NS;
  for (uint32_t i = 0; i < t->nsess && !s->broken; i++) {
    site_sess *x = &t->sess[i];
    if (x->deleted)
      continue;
    if (x->failed) {
      delete_rows(s, x->id);
      continue;
    }
    int64_t limit = INT64_MAX;
    if (!x->ended) {
      int64_t latest = x->txn_max > x->max_ts ? x->txn_max : x->max_ts;
      if (latest == INT64_MIN)
        continue;
      limit = latest - lag;
      if (x->pending_min < limit)
        limit = x->pending_min;
      limit = bucket_of(limit, width);
      if (limit <= x->done)
        continue;
    }
    if (write_before(s, x, limit) < 0) {
      if (s->broken)
        return;
      fail(t, x);
      delete_rows(s, x->id); /* some of this write's among them */
      continue;
    }
    x->next_done = limit;
    sqlite3_bind_int64(s->st[ST_UPD_AGG_SITE_DONE], 1, x->id);
    sqlite3_bind_int64(s->st[ST_UPD_AGG_SITE_DONE], 2, limit);
    (void)store_sql_run(s, ST_UPD_AGG_SITE_DONE);
  }
}

/* Drops x's buckets before `done` (written), their chunks to the spares, and makes the
 * rest committed. */
static void commit_buckets(store_site *t, site_sess *x)
{
  uint32_t gone = 0;
  for (; gone < x->nb && x->b[gone].start < x->done; gone++) {
    chunks_release(t, x, x->b[gone].l[0].head);
    chunks_release(t, x, x->b[gone].l[1].head);
  }
  if (gone > 0) {
    memmove(&x->b[0], &x->b[gone], (x->nb - gone) * sizeof *x->b);
    x->nb -= gone;
    x->cur[0] = x->cur[1] = 0;
  }
  x->waiting = 0;
  for (uint32_t i = 0; i < x->nb; i++)
    for (int k = 0; k < 2; k++) {
      ev_list *l = &x->b[i].l[k];
      l->committed = l->n;
      l->committed_last = l->last;
      l->committed_unsorted = l->unsorted;
      x->waiting += l->n;
    }
}

void store_site_committed(hp_store *s)
{
  store_site *t = s->site;
  uint32_t j = 0;
  for (uint32_t i = 0; i < t->nsess; i++) {
    site_sess *x = &t->sess[i];
    if (x->failed) {
      x->deleted = 1;
    } else {
      x->done = x->next_done;
      if (x->txn_max > x->max_ts)
        x->max_ts = x->txn_max;
      x->txn_max = INT64_MIN;
      commit_buckets(t, x);
    }
    /* A session whose end committed is done with. */
    if (x->ended && (x->deleted || x->done == INT64_MAX)) {
      sess_release(t, x);
      continue;
    }
    t->sess[j++] = *x;
  }
  t->nsess = j;
  t->last = 0;
  /* The scratch of the writes stays for the next ones, unless it is far larger than
   * what waits now, and so do free chunks up to those in use (see SITE_CHUNK). */
  uint64_t waiting = waiting_events(t);
  for (int k = 0; k < 2; k++)
    if (t->capsorted[k] > (1u << 20) && t->capsorted[k] / 4 > waiting) {
      free(t->sorted[k]);
      t->sorted[k] = NULL;
      t->capsorted[k] = 0;
    }
  if (t->captmp > (1u << 20) && t->captmp / 4 > waiting) {
    free(t->tmp);
    t->tmp = NULL;
    t->captmp = 0;
  }
  uint64_t keep = held_events(t) / SITE_CHUNK;
  keep = keep < SITE_SPARE_MIN   ? SITE_SPARE_MIN
         : keep > SITE_SPARE_MAX ? SITE_SPARE_MAX
                                 : keep;
  while (t->nspare > keep) {
    site_chunk *c = t->spare;
    t->spare = c->next;
    t->nspare--;
    chunk_free(c);
  }
}

/* Drops the open transaction's events of list b (their chunks to the spares); returns
 * the events left. */
static uint32_t list_truncate(store_site *t, site_sess *x, ev_list *b)
{
  uint32_t left = b->committed;
  site_chunk *last = NULL;
  for (site_chunk *c = b->head; c != NULL && left > 0; c = c->next) {
    last = c;
    if (c->n >= left) {
      c->n = left;
      break;
    }
    left -= c->n;
  }
  chunks_release(t, x, last != NULL ? last->next : b->head);
  if (last != NULL)
    last->next = NULL;
  else
    b->head = NULL;
  b->tail = last;
  b->last = b->committed_last;
  b->unsorted = b->committed_unsorted;
  return b->n = b->committed;
}

void store_site_rolled_back(hp_store *s)
{
  store_site *t = s->site;
  for (uint32_t i = 0; i < t->nsess; i++) {
    site_sess *x = &t->sess[i];
    x->txn_max = INT64_MIN;
    x->next_done = x->done;
    x->waiting = 0;
    for (uint32_t k = 0; k < x->nb; k++)
      x->waiting += list_truncate(t, x, &x->b[k].l[0]) + list_truncate(t, x, &x->b[k].l[1]);
  }
}
