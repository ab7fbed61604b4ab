/* store_pair.c — allocation rows, and the pairing of frees and reattributes with them.
 *
 * Most sampled objects die young, so their free usually arrives soon after. A new
 * allocation row therefore waits in `pending`, and a free that comes meanwhile is
 * folded into it (freed_ns set before the INSERT) instead of costing an UPDATE later.
 * A commit inserts only the rows that were already pending at the previous commit and
 * keeps the younger ones for one more round, so every row is stored by its second
 * commit and a free within one commit interval never costs an UPDATE.
 *
 * A row's id is handed out when it is created (pending[i] gets pending_base + i), so
 * each session's address map holds the final id from the start, and a free tells a
 * pending row from a stored one by comparing its id with pending_base. The timeline of
 * each session follows every change of its live level here. */
#include "store_int.h"

#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "hp_log.h"

void store_timeline_rows(hp_store *s, hp_store_session *ss, const hp_tl_row *rows, int n)
{
  for (int i = 0; i < n; i++) {
    int64_t v[HP_TXOP_VALUES] = {ss->id, rows[i].ts_ns, rows[i].live_bytes,
                                 rows[i].live_count, rows[i].end_bytes};
    store_write(s, OP_TIMELINE, v, NULL, 0);
  }
}

static void timeline_add(hp_store *s, hp_store_session *ss, int64_t ts, int64_t dbytes,
                         int64_t dcount)
{
  hp_tl_row rows[HP_TL_MAX_ROWS];
  int n = hp_timeline_add(ss->tl, ts, dbytes, dcount, rows);
  if (n > 0) /* rarely: at most once per interval */
    store_timeline_rows(s, ss, rows, n);
}

/* Inserts the oldest `count` pending rows and moves the rest to the front. */
static void flush_pending(hp_store *s, uint32_t count)
{
  assert(count <= s->npending && s->pending_old <= s->npending);
  int64_t rows[HP_STORE_MULTI][HP_TXOP_VALUES];
  uint32_t k = 0;
  for (uint32_t i = 0; i < count; i++) {
    const pending_alloc *p = &s->pending[i];
    int64_t *v = rows[k++];
    v[ALLOC_ID] = s->pending_base + i;
    v[ALLOC_SESSION] = p->ss->id;
    v[ALLOC_TS] = p->ts;
    v[ALLOC_THREAD] = p->thread;
    v[ALLOC_DOMAIN] = p->domain;
    v[ALLOC_ADDRESS] = p->address;
    v[ALLOC_SIZE] = p->size;
    v[ALLOC_EST] = p->est;
    v[ALLOC_STACK] = p->stack;
    v[ALLOC_FREED] = p->freed;
    v[ALLOC_EVENTS] = p->events;
    if (k == HP_STORE_MULTI) {
      store_write_allocs(s, rows, k);
      k = 0;
    }
  }
  if (k > 0)
    store_write_allocs(s, rows, k);
  if (count < s->npending)
    memmove(s->pending, s->pending + count, (s->npending - count) * sizeof *s->pending);
  s->pending_base += count;
  s->npending -= count;
  s->pending_old = s->pending_old > count ? s->pending_old - count : 0;
}

void store_pair_flush(hp_store *s)
{
  flush_pending(s, s->npending);
}

void store_pair_flush_old(hp_store *s)
{
  flush_pending(s, s->pending_old);
  s->pending_old = s->npending;
}

/* Room for one more pending row: when full, every pending row is inserted now. */
static void make_room(hp_store *s)
{
  if (s->npending == s->pending_cap)
    store_pair_flush(s);
  assert(s->npending < s->pending_cap);
}

/* A new pending row; returns its alloc id. */
static int64_t add_pending(hp_store *s, pending_alloc row)
{
  assert(s->npending < s->pending_cap);
  uint32_t slot = s->npending++;
  s->pending[slot] = row;
  s->txn_rows++;
  return s->pending_base + slot;
}

/* How many allocations a sample stands for: est_bytes / size, the inverse of its
 * sampling probability (unsigned, as the agent sent them). */
static int64_t count_of(uint64_t est, uint64_t size)
{
  if (size > 0 && est > size) {
    double ratio = (double)est / (double)size;
    return ratio < 1e18 ? (int64_t)llround(ratio) : (int64_t)1000000000000000000LL;
  }
  return 1;
}

static uint32_t fit32(int64_t v)
{
  return v >= 0 && v < (int64_t)HP_LIVE_LOOKUP ? (uint32_t)v : HP_LIVE_LOOKUP;
}

/* The size of the live allocation: from the map, else from its row. A stored row that
 * cannot be read now (the transaction failed: it is written again later) counts as a
 * size that makes the sample stand for one allocation, as every block of 4 GiB does
 * unless sampled with a larger interval. */
static int64_t live_size(hp_store *s, const hp_live_alloc *l)
{
  if (l->size != HP_LIVE_LOOKUP)
    return l->size;
  if (l->alloc_id >= s->pending_base)
    return s->pending[l->alloc_id - s->pending_base].size;
  int64_t stack, size;
  return store_sql_row_of(s, l->alloc_id, &stack, &size) == 0 ? size : l->est_bytes;
}

/* Ends the row of the live allocation l at ts. `events`: 1 when this is the event of its
 * free; 0 when its end comes with the next allocation at the address (a reattribute, or a
 * lost free), whose row counts that event. A stored row is ended by an UPDATE, which
 * also adds it to the aggregates' frees with the stack and size kept in the map. */
static void end_row(hp_store *s, hp_store_session *ss, const hp_live_alloc *l, int64_t ts,
                    int events)
{
  int64_t id = l->alloc_id;
  if (id >= s->pending_base) {
    assert(id - s->pending_base < s->npending);
    pending_alloc *p = &s->pending[id - s->pending_base];
    assert(p->ss == ss && p->freed == 0);
    p->freed = ts;
    p->events += events;
    return;
  }
  int64_t v[HP_TXOP_VALUES] = {[FREE_ID] = id,
                               [FREE_TS] = ts,
                               [FREE_SESSION] = ss->id,
                               [FREE_EVENTS] = events,
                               [FREE_STACK] = l->stack == HP_LIVE_LOOKUP
                                                ? -1
                                                : (int64_t)l->stack,
                               [FREE_EST] = l->est_bytes,
                               [FREE_SIZE] = l->size == HP_LIVE_LOOKUP ? -1
                                                                       : (int64_t)l->size};
  store_write(s, OP_FREE, v, NULL, 0);
}

/* Ends the live allocation at v: its row, its place in the address map, its share of
 * the live level. */
static void end_live(hp_store *s, hp_store_session *ss, hp_map_val *v, int64_t ts,
                     int events)
{
  hp_live_alloc live = v->live;
  int64_t cnt = count_of((uint64_t)live.est_bytes, (uint64_t)live_size(s, &live));
  end_row(s, ss, &live, ts, events);
  hp_map_del_at(ss->addrs, v);
  timeline_add(s, ss, ts, -live.est_bytes, -cnt);
}

static void do_free(hp_store *s, hp_store_session *ss, const hp_event *e)
{
  hp_map_val *v = hp_map_get(ss->addrs, e->address);
  if (v == NULL) {
    ss->unpaired_frees++; /* sampled out, or its alloc was dropped by the agent */
    return;
  }
  end_live(s, ss, v, store_session_wall(ss, e->ts_ns), 1);
}

/* Drops an allocation the address map has no room for (see HP_STORE_MAX_LIVE_ADDRS):
 * counted, and said once per session. Not stored, because its free could never be
 * paired; its free arrives as an unpaired free. */
static __attribute__((noinline)) void drop_untracked(hp_store *s, hp_store_session *ss,
                                                     const hp_event *e, int oom)
{
  if (ss->untracked++ == 0) {
    if (oom)
      hp_log(HP_LOG_WARN,
             "session %" PRId64 ": out of memory tracking address %#" PRIx64
             "; allocations that cannot be tracked are dropped and counted",
             ss->id, e->address);
    else
      hp_log(HP_LOG_WARN,
             "session %" PRId64 ": reached the limit of %u live sampled "
             "allocations per session (--max-live-allocs); further allocations are dropped "
             "and counted until frees make room",
             ss->id, s->cfg.max_live_addrs);
  }
  ss->dirty = 1;
}

static void do_alloc(hp_store *s, hp_store_session *ss, const hp_event *e)
{
  int64_t stack = store_stack_db_id(ss, e->stack_id);
  make_room(s);
  int64_t ts = store_session_wall(ss, e->ts_ns);
  int64_t est = (int64_t)e->est_bytes;
  int64_t cnt = count_of(e->est_bytes, e->size);

  /* At the limit only an address already live may be reused (that replaces an entry). */
  int created = 0;
  hp_map_val *v;
  if (hp_map_count(ss->addrs) >= s->cfg.max_live_addrs)
    v = hp_map_get(ss->addrs, e->address);
  else
    v = hp_map_upsert(ss->addrs, e->address, &created);
  if (v == NULL) {
    drop_untracked(s, ss, e, hp_map_count(ss->addrs) < s->cfg.max_live_addrs);
    return;
  }
  if (!created) {
    /* The address was handed out again, so its previous block was freed even though
     * its free never came (the agent dropped it): it ends now, in its row as in the
     * timeline, so that leaks and the timeline agree. */
    hp_live_alloc old = v->live;
    int64_t old_cnt = count_of((uint64_t)old.est_bytes, (uint64_t)live_size(s, &old));
    end_row(s, ss, &old, ts, 0);
    timeline_add(s, ss, ts, -old.est_bytes, -old_cnt);
  }
  int64_t id = add_pending(s, (pending_alloc){.ss = ss,
                                              .ts = ts,
                                              .thread = (int64_t)e->thread_id,
                                              .address = (int64_t)e->address,
                                              .size = (int64_t)e->size,
                                              .est = est,
                                              .stack = stack,
                                              .domain = e->domain,
                                              .events = 1});
  v->live =
    (hp_live_alloc){.alloc_id = id,
                    .est_bytes = est,
                    .size = fit32((int64_t)(e->size > INT64_MAX ? INT64_MAX : e->size)),
                    .stack = fit32(stack)};
  timeline_add(s, ss, ts, est, cnt);
}

/* The domain and size of allocation row `id`: 1, 0 when it cannot be read. */
static int row_of(hp_store *s, int64_t id, int *domain, int64_t *size)
{
  if (id >= s->pending_base) {
    const pending_alloc *p = &s->pending[id - s->pending_base];
    *domain = p->domain;
    *size = p->size;
    return 1;
  }
  if (s->broken)
    return 0;
  sqlite3_stmt *sel = s->st[ST_SEL_ALLOC];
  sqlite3_bind_int64(sel, 1, id);
  int rc = sqlite3_step(sel);
  if (rc == SQLITE_ROW) {
    *domain = sqlite3_column_int(sel, 0);
    *size = sqlite3_column_int64(sel, 1);
  }
  sqlite3_reset(sel);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE)
    store_sql_break(s, "looking up a reattributed allocation", rc);
  return rc == SQLITE_ROW;
}

/* A reattribute (PROTOCOL.md 2.4): the live sampled block at the address was handed out
 * again by an interpreter free list. Its allocation ends at ts, and a new one with the
 * same domain, size and est_bytes begins at ts for the new thread and stack. The live
 * level does not change, so the timeline is left alone; the address map entry moves to
 * the new row, so a later free or reattribute pairs with it. */
static void do_reattribute(hp_store *s, hp_store_session *ss, const hp_event *e)
{
  hp_map_val *v = hp_map_get(ss->addrs, e->address);
  if (v == NULL) {
    ss->unpaired_frees++; /* as a free: its allocation was sampled out or dropped */
    return;
  }
  int64_t stack = store_stack_db_id(ss, e->stack_id);
  make_room(s); /* moves rows, not map entries: v stays valid */
  int64_t ts = store_session_wall(ss, e->ts_ns);
  int64_t size = 0;
  int domain = 0;
  if (!row_of(s, v->live.alloc_id, &domain, &size)) {
    /* Without its row the new life cannot be stored: it ends here, counted. */
    end_live(s, ss, v, ts, 0);
    ss->untracked++;
    ss->dirty = 1;
    return;
  }
  end_row(s, ss, &v->live, ts, 0);
  v->live.alloc_id = add_pending(s, (pending_alloc){.ss = ss,
                                                    .ts = ts,
                                                    .thread = (int64_t)e->thread_id,
                                                    .address = (int64_t)e->address,
                                                    .size = size,
                                                    .est = v->live.est_bytes,
                                                    .stack = stack,
                                                    .domain = domain,
                                                    .events = 1});
  v->live.stack = fit32(stack);
}

void store_pair_events(hp_store *s, item *it)
{
  hp_store_session *ss = it->ss;
  const hp_event *ev = it->u.events.ev;
  for (uint32_t i = 0; i < it->u.events.n; i++) {
    if (ev[i].kind == HP_EV_ALLOC)
      do_alloc(s, ss, &ev[i]);
    else if (ev[i].kind == HP_EV_FREE)
      do_free(s, ss, &ev[i]);
    else
      do_reattribute(s, ss, &ev[i]);
  }
  ss->events_received += it->u.events.n;
  ss->dirty = 1;
}
