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
 * HP_STORE_SITE_SOFT_EVENTS wait). Then they are sorted,
 * their bucket's rows written, and agg_site_session.done_ns moved past them, in the
 * transaction that commits them. A row or free that arrives for a bucket already
 * written (an agent thread's event stamped more than the lag before the stream's
 * latest), memory that runs out, or a level beyond 64 bits ends the session's site
 * aggregate: its rows are
 * deleted and readers read the alloc rows, as for an older recording.
 *
 * Lines are keyed by the smallest frame id with that filename and line number (two
 * functions on one line, e.g. a comprehension and its caller, are one site); each
 * stack's distinct lines are read from the database once, when a bucket first needs
 * them. */
#include "store_int.h"

#include <stdlib.h>
#include <string.h>

/* One change of a line's level: from a row's ts_ns (+est_bytes) or freed_ns (-). */
typedef struct {
  int64_t ts, delta, stack;
} site_ev;

typedef struct {
  site_ev *ev;
  uint32_t n, cap;
} ev_buf;

typedef struct {
  int64_t id;
  int failed;              /* given up: its rows are deleted at the next commit */
  int deleted;             /* ... and that commit succeeded: nothing more to do */
  int ended;               /* its end is in the open transaction: finish it all */
  int64_t done;            /* committed: buckets before it are written */
  int64_t next_done;       /* what this transaction's write moved it to */
  int64_t max_ts, txn_max; /* latest event time committed, and in this transaction */
  int64_t pending_min;     /* oldest pending row's ts_ns, at the write */
  ev_buf kept;             /* committed, in buckets not written yet */
  ev_buf txn;              /* written by the open transaction */
} site_sess;

typedef struct {
  uint32_t off, n; /* into lines_of */
} stack_lines;

#define SITE_CACHE 256 /* stacks whose lines are found without a hash look-up */

struct store_site {
  site_sess *sess;
  uint32_t nsess, capsess, last;
  hp_map *stacks;  /* stack id -> number: index into st, plus 1 */
  stack_lines *st; /* per stack seen */
  uint32_t nst, capst;
  uint32_t *lines_of; /* line indexes of the stacks, distinct per stack */
  uint32_t nlines_of, caplines_of;
  hp_map *frames; /* frame id -> number: line index plus 1 */
  hp_map *keys;   /* line key (a frame id) -> number: line index plus 1 */
  int64_t *key;   /* per line index: its key */
  int64_t *level, *high;
  uint32_t *stamp, *touched;
  uint32_t nlines, caplines, gen;
  site_ev *sorted, *tmp; /* scratch of the write */
  uint32_t capsorted, captmp;
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

static void sess_release(site_sess *x)
{
  free(x->kept.ev);
  free(x->txn.ev);
  x->kept = x->txn = (ev_buf){0};
}

void store_site_free(store_site *t)
{
  if (t == NULL)
    return;
  for (uint32_t i = 0; i < t->nsess; i++)
    sess_release(&t->sess[i]);
  free(t->sess);
  hp_map_free(t->stacks);
  hp_map_free(t->frames);
  hp_map_free(t->keys);
  free(t->st);
  free(t->lines_of);
  free(t->key);
  free(t->level);
  free(t->high);
  free(t->stamp);
  free(t->touched);
  free(t->sorted);
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

static void fail(site_sess *x)
{
  if (!x->failed) {
    x->failed = 1;
    sess_release(x);
  }
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
    fail(x); /* its bucket is written already */
    return;
  }
  if (x->txn.n == x->txn.cap &&
      (x->kept.n + x->txn.n >= HP_STORE_SITE_MAX_EVENTS ||
       reserve((void **)&x->txn.ev, &x->txn.cap, x->txn.n + 1, sizeof(site_ev)) < 0)) {
    fail(x);
    return;
  }
  x->txn.ev[x->txn.n++] = (site_ev){.ts = ts, .delta = delta, .stack = stack};
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
        (c = t->caplines, reserve((void **)&t->level, &c, i + 1, sizeof *t->level)) < 0 ||
        (c = t->caplines, reserve((void **)&t->high, &c, i + 1, sizeof *t->high)) < 0 ||
        (c = t->caplines, reserve((void **)&t->touched, &c, i + 1, sizeof *t->touched)) <
          0 ||
        (c = t->caplines, reserve((void **)&t->stamp, &c, i + 1, sizeof *t->stamp)) < 0) {
      hp_map_del_at(t->keys, k);
      return -1;
    }
    t->caplines = c;
    t->key[i] = key;
    t->stamp[i] = 0;
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

/* Sorts n events by time, frees before allocations at one instant (an allocation is live
 * over [ts, freed)): a least-significant-digit radix sort on the time since the
 * earliest, whose spread is a few buckets, in as few passes of at most 16 bits as it
 * takes; events already in order are left as they are. count: 2^16 + 1 entries. */
static site_ev *sort_events(site_ev *a, site_ev *b, uint32_t n, uint32_t *count)
{
  if (n < 2)
    return a;
  int64_t lo = a[0].ts, hi = a[0].ts;
  int sorted = 1;
  for (uint32_t i = 1; i < n; i++) {
    lo = a[i].ts < lo ? a[i].ts : lo;
    hi = a[i].ts > hi ? a[i].ts : hi;
    sorted &= a[i - 1].ts < a[i].ts ||
              (a[i - 1].ts == a[i].ts && a[i - 1].delta <= a[i].delta);
  }
  if (sorted)
    return a;
  uint64_t span = ((uint64_t)hi - (uint64_t)lo) * 2 + 1;
  unsigned bits = 64 - (unsigned)__builtin_clzll(span);
  unsigned passes = (bits + 15) / 16, digit = (bits + passes - 1) / passes;
  uint64_t mask = ((uint64_t)1 << digit) - 1;
#define KEY(e) ((((uint64_t)(e).ts - (uint64_t)lo) << 1) | ((e).delta > 0))
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
    if (t->level[l] == 0 && t->high[l] == 0)
      continue; /* as if untouched */
    sqlite3_bind_int64(st, 1, session);
    sqlite3_bind_int64(st, 2, t->key[l]);
    sqlite3_bind_int64(st, 3, bucket);
    sqlite3_bind_int64(st, 4, t->level[l]);
    sqlite3_bind_int64(st, 5, t->high[l]);
    (void)store_sql_run(s, ST_INS_AGG_SITE);
  }
}

/* Writes the buckets of x's events before `limit` (a bucket edge; INT64_MAX: all of
 * them, at the session's end). 0, or -1 when memory ran out or a level overflowed (the
 * session fails) or the transaction broke. */
static int write_before(hp_store *s, site_sess *x, int64_t limit)
{
  store_site *t = s->site;
  int64_t width = s->cfg.timeline_interval_ns;
  uint32_t n = 0, total = x->kept.n + x->txn.n;
  if (reserve((void **)&t->sorted, &t->capsorted, total, sizeof *t->sorted) < 0 ||
      reserve((void **)&t->tmp, &t->captmp, total, sizeof *t->tmp) < 0)
    return -1;
  const ev_buf *bufs[2] = {&x->kept, &x->txn};
  for (int k = 0; k < 2; k++)
    for (uint32_t i = 0; i < bufs[k]->n; i++)
      if (bufs[k]->ev[i].ts < limit || limit == INT64_MAX)
        t->sorted[n++] = bufs[k]->ev[i];
  const site_ev *ev = sort_events(t->sorted, t->tmp, n, t->count);
  int64_t bucket = 0;
  uint32_t ntouched = 0;
  int64_t last_stack = 0;
  const stack_lines *sl = NULL;
  for (uint32_t i = 0; i < n && !s->broken; i++) {
    if (i == 0 || ev[i].ts - bucket >= width) {
      if (i > 0)
        write_bucket(s, x->id, bucket, ntouched);
      bucket = bucket_of(ev[i].ts, width);
      ntouched = 0;
      if (++t->gen == 0) { /* wrapped: no stamp may look current */
        memset(t->stamp, 0, (size_t)t->nlines * sizeof *t->stamp);
        t->gen = 1;
      }
    }
    if (sl == NULL || ev[i].stack != last_stack) {
      int oom = 0;
      sl = lines_of_stack(s, ev[i].stack, &oom);
      if (sl == NULL)
        return -1;
      last_stack = ev[i].stack;
    }
    for (uint32_t j = 0; j < sl->n; j++) {
      uint32_t l = t->lines_of[sl->off + j];
      if (t->stamp[l] != t->gen) {
        t->stamp[l] = t->gen;
        t->level[l] = 0;
        /* The level before the bucket counts unless an event comes at its very start. */
        t->high[l] = ev[i].ts == bucket ? INT64_MIN : 0;
        t->touched[ntouched++] = l;
      }
      /* est_bytes may come near 2^63 (unbiased estimates of huge blocks at a tiny
       * interval): a level beyond 64 bits gives the session's aggregate up, as memory
       * running out does, rather than store a wrong sum. */
      if (__builtin_add_overflow(t->level[l], ev[i].delta, &t->level[l]))
        return -1;
      if (t->level[l] > t->high[l])
        t->high[l] = t->level[l];
    }
  }
  if (n > 0 && !s->broken)
    write_bucket(s, x->id, bucket, ntouched);
  return s->broken ? -1 : 0;
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
    n += t->sess[i].kept.n + t->sess[i].txn.n;
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
  /* Past the hard bound (events stamped far denser than heapprofd stores them fill a
   * bucket faster than it can be written), the sessions holding the most give their
   * site aggregate up until the rest fit. */
  for (uint64_t w = waiting_events(t); w > HP_STORE_SITE_MAX_EVENTS;) {
    site_sess *big = &t->sess[0];
    for (uint32_t i = 1; i < t->nsess; i++)
      if (t->sess[i].kept.n + t->sess[i].txn.n > big->kept.n + big->txn.n)
        big = &t->sess[i];
    w -= big->kept.n + big->txn.n;
    fail(big);
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
      fail(x);
      delete_rows(s, x->id); /* some of this write's among them */
      continue;
    }
    x->next_done = limit;
    sqlite3_bind_int64(s->st[ST_UPD_AGG_SITE_DONE], 1, x->id);
    sqlite3_bind_int64(s->st[ST_UPD_AGG_SITE_DONE], 2, limit);
    (void)store_sql_run(s, ST_UPD_AGG_SITE_DONE);
  }
}

/* Keeps the events of b at or after `done` in a (appended). */
static int keep_after(ev_buf *a, const ev_buf *b, int64_t done)
{
  if (reserve((void **)&a->ev, &a->cap, a->n + b->n, sizeof(site_ev)) < 0)
    return -1;
  for (uint32_t i = 0; i < b->n; i++)
    if (b->ev[i].ts >= done)
      a->ev[a->n++] = b->ev[i];
  return 0;
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
      uint32_t kept = 0;
      for (uint32_t k = 0; k < x->kept.n; k++)
        if (x->kept.ev[k].ts >= x->done)
          x->kept.ev[kept++] = x->kept.ev[k];
      x->kept.n = kept;
      if (keep_after(&x->kept, &x->txn, x->done) < 0)
        fail(x); /* its rows are deleted at the next commit */
      x->txn.n = 0;
    }
    /* A session whose end committed is done with. */
    if (x->ended && (x->deleted || x->done == INT64_MAX)) {
      sess_release(x);
      continue;
    }
    t->sess[j++] = *x;
  }
  t->nsess = j;
  t->last = 0;
  /* The scratch of the writes stays for the next ones, unless it is far larger than
   * what waits now (the memory of a burst is given back). */
  if (t->capsorted > (1u << 20) && t->capsorted / 4 > waiting_events(t)) {
    free(t->tmp);
    free(t->sorted);
    t->tmp = t->sorted = NULL;
    t->capsorted = t->captmp = 0;
  }
}

void store_site_rolled_back(hp_store *s)
{
  store_site *t = s->site;
  for (uint32_t i = 0; i < t->nsess; i++) {
    t->sess[i].txn.n = 0;
    t->sess[i].txn_max = INT64_MIN;
    t->sess[i].next_done = t->sess[i].done;
  }
}
