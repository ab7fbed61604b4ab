/* store_session.c — a session's life on the store thread, and its row.
 *
 * A session goes QUEUED -> ACTIVE (its HELLO: an id, the active list) -> ENDED (its end:
 * the ending list) and is freed once the transaction holding its end commits, since
 * pending rows and the transaction log still name it until then. Its row is written
 * from memory, not logged: inserted at the first commit, updated at every commit where
 * it changed, and written again after a rollback. */
#include "store_int.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "hp_log.h"

void store_session_free(hp_store_session *ss)
{
  store_id_table_free(&ss->frames);
  store_id_table_free(&ss->stacks);
  hp_map_free(ss->addrs);
  hp_timeline_free(ss->tl);
  free(ss->hello);
  free(ss->end);
  free(ss);
}

static uint64_t sat_add_u64(uint64_t a, uint64_t b)
{
  return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* The agent's count (absolute, from COUNTERS and GOODBYE), the allocations this store
 * could not track, at an end without GOODBYE the events the agent said it sent that
 * never arrived, and what storage gave up. */
int64_t store_session_dropped(const hp_store_session *ss)
{
  uint64_t n = sat_add_u64(sat_add_u64(ss->events_dropped, ss->untracked),
                           sat_add_u64(ss->lost_in_transit, ss->lost_storage));
  return n > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)n;
}

hp_store_session *store_session_find(hp_store *s, int64_t id)
{
  hp_store_session *lists[2] = {s->active, s->ending};
  for (int l = 0; l < 2; l++)
    for (hp_store_session *ss = lists[l]; ss; ss = ss->next)
      if (ss->id == id)
        return ss;
  return NULL;
}

/* ------------------------------------------------------------------ messages */

void store_session_hello(hp_store *s, item *it)
{
  hp_store_session *ss = it->ss;
  assert(ss->state == SESSION_QUEUED && ss->hello == NULL);
  ss->state = SESSION_ACTIVE;
  ss->hello = it;
  ss->id = s->next_session++;
  ss->pid = it->u.hello.pid;
  ss->start_wall = (int64_t)it->u.hello.start_wall;
  ss->start_mono = (int64_t)it->u.hello.start_mono;
  ss->start_interval = ss->interval = it->u.hello.sample_interval;
  ss->status = "running";
  ss->dirty = 1;
  ss->next = s->active;
  if (s->active)
    s->active->prev = ss;
  s->active = ss;
  hp_log(HP_LOG_INFO,
         "session %" PRId64 " (pid %" PRId64 ") started: argv %s, %s, Python %s", ss->id,
         ss->pid, it->u.hello.argv_json, it->u.hello.executable,
         it->u.hello.python_version);
  if (it->u.hello.argv_omitted > 0)
    hp_log(HP_LOG_WARN,
           "session %" PRId64 " (pid %" PRId64 "): argv of %" PRIu32 " entries "
           "(%zu bytes) exceeds the limit of %u bytes; the last %" PRIu32
           " entries are not "
           "stored (session_settings.argv_omitted)",
           ss->id, ss->pid, it->u.hello.argc, it->u.hello.argv_bytes,
           HP_STORE_MAX_ARGV_BYTES, it->u.hello.argv_omitted);
}

/* A COUNTERS whose interval differs from the session's current one: the agent adapted
 * its sampling (on-full policy 'adapt'). One row in the open transaction; its ts_ns, not
 * the commit order, places it among the session's events. Size-bucket sessions
 * (interval 0) cannot adapt, and no Poisson session can turn into one mid-stream, so a
 * change from or to 0 is nonsense from the agent: logged once and not stored, the
 * session goes on with its interval. */
static __attribute__((noinline)) void interval_change(hp_store *s, item *it)
{
  hp_store_session *ss = it->ss;
  uint64_t to = it->u.counters.interval;
  if (ss->interval == 0 || to == 0) {
    if (!ss->interval_refused) {
      ss->interval_refused = 1;
      hp_log(HP_LOG_WARN,
             "session %" PRId64 " (pid %" PRId64 "): ignoring a change of "
             "sampling interval from %" PRIu64 " to %" PRIu64 " bytes (0 is size-bucket "
             "sampling, which a session cannot switch to or from)",
             ss->id, ss->pid, ss->interval, to);
    }
    return;
  }
  int64_t v[HP_TXOP_VALUES] = {ss->id, store_session_wall(ss, it->u.counters.ts),
                               (int64_t)to};
  store_write(s, OP_SAMPLING, v, NULL, 0);
  hp_log(HP_LOG_DEBUG,
         "session %" PRId64 ": sampling interval %" PRIu64 " -> %" PRIu64 " bytes", ss->id,
         ss->interval, to);
  ss->interval = to;
  ss->interval_changes++;
}

void store_session_counters(hp_store *s, item *it)
{
  hp_store_session *ss = it->ss;
  assert(ss->state == SESSION_ACTIVE);
  ss->events_dropped = it->u.counters.dropped;
  ss->events_sent = it->u.counters.sent;
  ss->dirty = 1;
  if (it->u.counters.interval != ss->interval)
    interval_change(s, it);
}

void store_session_goodbye(item *it)
{
  hp_store_session *ss = it->ss;
  assert(ss->state == SESSION_ACTIVE);
  ss->events_dropped = it->u.goodbye.dropped;
  ss->ended_wall = store_session_wall(ss, it->u.goodbye.ts);
  ss->end_reason = it->u.goodbye.reason;
  ss->dirty = 1;
}

/* The thread's latest name wins (an upsert): no memory is kept per thread here. */
void store_session_thread(hp_store *s, item *it)
{
  hp_store_session *ss = it->ss;
  assert(ss->state == SESSION_ACTIVE);
  if (ss->thread_defs >= HP_STORE_MAX_THREAD_DEFS) {
    if (ss->thread_defs_ignored++ == 0)
      hp_log(HP_LOG_WARN,
             "session %" PRId64 " (pid %" PRId64 "): over the limit of %u "
             "thread names per session; further names are not stored",
             ss->id, ss->pid, HP_STORE_MAX_THREAD_DEFS);
    return;
  }
  ss->thread_defs++;
  int64_t v[HP_TXOP_VALUES] = {ss->id, (int64_t)it->u.thread.tid};
  store_write(s, OP_THREAD, v, it->u.thread.name, (uint32_t)strlen(it->u.thread.name) + 1);
}

void store_session_marker(hp_store *s, item *it)
{
  hp_store_session *ss = it->ss;
  assert(ss->state == SESSION_ACTIVE);
  int64_t v[HP_TXOP_VALUES] = {ss->id, store_session_wall(ss, it->u.marker.ts)};
  store_write(s, OP_MARKER, v, it->u.marker.label,
              (uint32_t)strlen(it->u.marker.label) + 1);
}

/* ------------------------------------------------------------------ the end */

static const char *end_status(const hp_store_session *ss, hp_session_end how)
{
  switch (how) {
  case HP_SESSION_EXITED:
    return ss->end_reason == HP_END_HOOKS_REPLACED ? "hooks_replaced" : "exited";
  case HP_SESSION_DISCONNECTED: return "disconnected";
  case HP_SESSION_PROTOCOL_ERROR: return "protocol_error";
  }
  return "disconnected";
}

static void log_end(const hp_store *s, const hp_store_session *ss, hp_session_end how,
                    const char *reason)
{
  if (how == HP_SESSION_PROTOCOL_ERROR)
    hp_log(HP_LOG_WARN, "session %" PRId64 " (pid %" PRId64 "): protocol error: %s", ss->id,
           ss->pid, reason);
  hp_log(HP_LOG_INFO,
         "session %" PRId64 " (pid %" PRId64 ") ended: %s, %" PRIu64 " events, %" PRIu64
         " dropped, %" PRIu64 " unpaired frees, %.3f s",
         ss->id, ss->pid, ss->status, ss->events_received,
         (uint64_t)store_session_dropped(ss), ss->unpaired_frees,
         (double)(ss->end_ns - ss->start_wall) / 1e9);
  if (ss->lost_in_transit > 0)
    hp_log(HP_LOG_WARN,
           "session %" PRId64 " (pid %" PRId64 "): the stream ended without "
           "GOODBYE; %" PRIu64 " events the agent sent never arrived (counted in "
           "events_dropped)",
           ss->id, ss->pid, ss->lost_in_transit);
  if (ss->end_reason == HP_END_HOOKS_REPLACED && how == HP_SESSION_EXITED)
    hp_log(HP_LOG_WARN,
           "session %" PRId64 " (pid %" PRId64 "): recording ended early: "
           "the program replaced or removed heapprof's allocator hooks (hooks_replaced)",
           ss->id, ss->pid);
  if (ss->interval_changes > 0)
    hp_log(HP_LOG_INFO,
           "session %" PRId64 " (pid %" PRId64 "): the agent changed its "
           "sampling interval %" PRIu64 " times, from %" PRIu64 " to %" PRIu64 " bytes "
           "(sampling_changes)",
           ss->id, ss->pid, ss->interval_changes, ss->start_interval, ss->interval);
  if (ss->untracked > 0)
    hp_log(HP_LOG_WARN,
           "session %" PRId64 " (pid %" PRId64 "): %" PRIu64 " allocations "
           "dropped (counted in events_dropped): over the limit of %u live sampled "
           "allocations per session, or out of memory",
           ss->id, ss->pid, ss->untracked, s->cfg.max_live_addrs);
  if (ss->thread_defs_ignored > 0)
    hp_log(HP_LOG_WARN,
           "session %" PRId64 " (pid %" PRId64 "): %" PRIu64 " thread names "
           "not stored (over the limit of %u)",
           ss->id, ss->pid, ss->thread_defs_ignored, HP_STORE_MAX_THREAD_DEFS);
}

/* Its rows and final timeline go into this transaction, its row is written at the
 * commit, and it is freed once that commit succeeds. */
void store_session_end(hp_store *s, item *it)
{
  hp_store_session *ss = it->ss;
  assert(ss->state == SESSION_ACTIVE && it == ss->end);
  hp_session_end how = it->u.end.how;
  /* Without GOODBYE the agent never said what it finally dropped; what its last
   * COUNTERS says it sent but never arrived is lost (PROTOCOL.md 2.5). */
  if (how != HP_SESSION_EXITED && ss->events_sent > ss->events_received)
    ss->lost_in_transit = ss->events_sent - ss->events_received;
  /* Pending rows point at this session; insert them before it can go away. */
  store_pair_flush(s);
  int64_t ended = (how == HP_SESSION_EXITED && ss->ended_wall) ? ss->ended_wall
                                                               : it->u.end.wall_ns;
  hp_tl_row rows[HP_TL_MAX_ROWS];
  int n = hp_timeline_finish(ss->tl, ended, rows);
  store_timeline_rows(s, ss, rows, n);
  ss->state = SESSION_ENDED;
  ss->end_ns = ended;
  ss->status = end_status(ss, how);
  ss->dirty = 1;
  assert(ss->prev != NULL || s->active == ss);
  if (ss->prev)
    ss->prev->next = ss->next;
  else
    s->active = ss->next;
  if (ss->next)
    ss->next->prev = ss->prev;
  ss->prev = NULL;
  ss->next = s->ending;
  s->ending = ss;
  log_end(s, ss, how, it->u.end.reason);
}

/* ------------------------------------------------------------------ rows */

static void bind_text_or_null(sqlite3_stmt *st, int col, const char *text)
{
  if (text)
    sqlite3_bind_text(st, col, text, -1, SQLITE_STATIC);
  else
    sqlite3_bind_null(st, col);
}

static void bind_int_or_null(sqlite3_stmt *st, int col, int64_t v)
{
  if (v)
    sqlite3_bind_int64(st, col, v);
  else
    sqlite3_bind_null(st, col);
}

static void write_row(hp_store *s, hp_store_session *ss)
{
  assert(ss->state != SESSION_QUEUED && ss->hello != NULL);
  int ended = ss->state == SESSION_ENDED;
  const char *error = NULL;
  if (ended && ss->end->u.end.how == HP_SESSION_PROTOCOL_ERROR)
    error = ss->end->u.end.reason;
  sqlite3_stmt *st;
  if (ss->row == ROW_NONE) {
    const item *h = ss->hello;
    st = s->st[ST_INS_SESSION];
    sqlite3_bind_int64(st, 1, ss->id);
    sqlite3_bind_int64(st, 2, h->u.hello.pid);
    sqlite3_bind_int64(st, 3, h->u.hello.ppid);
    sqlite3_bind_text(st, 4, h->u.hello.argv_json, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, h->u.hello.executable, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, h->u.hello.python_version, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 7, ss->start_wall);
    sqlite3_bind_int64(st, 8, (int64_t)h->u.hello.sample_interval);
    bind_text_or_null(st, 9, h->u.hello.buckets_json);
    sqlite3_bind_int64(st, 10, h->u.hello.max_depth);
    sqlite3_bind_int64(st, 11, h->u.hello.argv_omitted);
    bind_int_or_null(st, 12, ended ? ss->end_ns : 0);
    sqlite3_bind_text(st, 13, ss->status, -1, SQLITE_STATIC);
    bind_text_or_null(st, 14, error);
    sqlite3_bind_int64(st, 15, (int64_t)ss->events_received);
    sqlite3_bind_int64(st, 16, store_session_dropped(ss));
    if (store_sql_run(s, ST_INS_SESSION) == 0)
      ss->row = ROW_IN_TXN;
    /* Its aggregates are complete from its first row on: readers may use them. */
    st = s->st[ST_INS_AGG_SESSION];
    sqlite3_bind_int64(st, 1, ss->id);
    sqlite3_bind_int64(st, 2, HP_STORE_AGG_BUCKET_NS);
    (void)store_sql_run(s, ST_INS_AGG_SESSION);
    /* The site aggregate's buckets are the timeline's intervals, so that a line's
     * series is read at the timeline's times. */
    st = s->st[ST_INS_AGG_SITE_SESSION];
    sqlite3_bind_int64(st, 1, ss->id);
    sqlite3_bind_int64(st, 2, s->cfg.timeline_interval_ns);
    (void)store_sql_run(s, ST_INS_AGG_SITE_SESSION);
  } else {
    st = s->st[ST_UPD_SESSION];
    sqlite3_bind_int64(st, 1, ss->id);
    bind_int_or_null(st, 2, ended ? ss->end_ns : 0);
    sqlite3_bind_text(st, 3, ss->status, -1, SQLITE_STATIC);
    bind_text_or_null(st, 4, error);
    sqlite3_bind_int64(st, 5, (int64_t)ss->events_received);
    sqlite3_bind_int64(st, 6, store_session_dropped(ss));
    (void)store_sql_run(s, ST_UPD_SESSION);
  }
  ss->dirty = 0;
  s->txn_rows++;
}

void store_session_write_rows(hp_store *s)
{
  hp_store_session *lists[2] = {s->active, s->ending};
  for (int l = 0; l < 2; l++)
    for (hp_store_session *ss = lists[l]; ss; ss = ss->next)
      if (ss->dirty)
        write_row(s, ss);
}

void store_session_committed(hp_store *s)
{
  for (hp_store_session *ss = s->active; ss; ss = ss->next) {
    assert(ss->state == SESSION_ACTIVE && ss->row != ROW_NONE && !ss->dirty);
    ss->row = ROW_STORED;
  }
  while (s->ending) {
    hp_store_session *ss = s->ending;
    assert(ss->state == SESSION_ENDED && ss->row != ROW_NONE && !ss->dirty);
    s->ending = ss->next;
    store_session_free(ss);
  }
}

void store_session_rolled_back(hp_store *s)
{
  hp_store_session *lists[2] = {s->active, s->ending};
  for (int l = 0; l < 2; l++)
    for (hp_store_session *ss = lists[l]; ss; ss = ss->next) {
      if (ss->row == ROW_IN_TXN)
        ss->row = ROW_NONE;
      ss->dirty = 1;
    }
}
