/* store_txn.c — the store's transactions: begin, commit, and what a failure does.
 *
 * Every write happens in a transaction that commits after batch_rows rows or commit_ms.
 * A transaction can fail at BEGIN (another connection holds the write lock), in a
 * statement or at COMMIT (a full disk, an I/O error); SQLite then rolls it back, while
 * its effects are already in memory (ids handed out, frees paired, the timeline moved).
 * So the transaction log keeps every write (store_sql.c), and after a rollback:
 *  - the transaction is written again from the log, whole, before anything new, with
 *    capped exponential backoff, until it commits;
 *  - meanwhile nothing new is processed: items wait on the held list and keep counting
 *    against the queue's bound, so the loop stops reading sockets;
 *  - session rows are written from memory at every commit, so a session's row and its
 *    end are written again until they commit;
 *  - an error that retrying cannot cure (a constraint, a damaged file) is retried
 *    HP_STORE_PERMANENT_TRIES times; then the transaction's data is given up and counted
 *    in its sessions' events_dropped, keeping its frame and stack definitions, which the
 *    sessions' id tables point at and the agents never send again.
 * A statement that fails inside a transaction stops all further statements of it
 * ("broken"): what the item being processed still writes goes to the log only, and the
 * transaction is rolled back and retried after that item. */
#include "store_int.h"

#include <inttypes.h>

#include "hp_log.h"

/* Retries of a failed transaction: the first after RETRY_MIN_MS, doubling up to
 * RETRY_MAX_MS; an error that is not transient is given up after PERMANENT_TRIES. */
#define HP_STORE_RETRY_MIN_MS    50u
#define HP_STORE_RETRY_MAX_MS    2000u
#define HP_STORE_PERMANENT_TRIES 3
/* While storing fails, one log line per this many seconds. */
#define HP_STORE_FAIL_LOG_S 30

int store_txn_begin(hp_store *s)
{
  if (s->in_txn)
    return 0;
  assert(!s->broken && s->txn_rows == 0);
  /* Outside a transaction the log holds only a failed one's writes. */
  assert(s->failing || hp_txlog_count(s->log) == 0);
  if (s->failing && store_ts_before(store_mono_now(), s->retry_at))
    return -1;
  sqlite3_stmt *st = s->st[ST_BEGIN];
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) {
    store_sql_log_error(s, store_sql_text(ST_BEGIN), rc);
    store_txn_fail(s, rc);
    return -1;
  }
  s->in_txn = 1;
  store_sql_replay(s);
  if (s->broken) {
    store_txn_fail(s, s->broken_rc);
    return -1;
  }
  s->txn_deadline = store_ts_add_ms(store_mono_now(), s->cfg.commit_ms);
  return 0;
}

/* The transaction committed: its log is done with, and so are the sessions whose end
 * it stored. */
static void committed(hp_store *s)
{
  s->in_txn = 0;
  s->txn_rows = 0;
  store_agg_clear(s);
  store_site_committed(s);
  hp_txlog_clear(s->log);
  s->log_incomplete = 0;
  store_session_committed(s);
  if (s->failing) {
    uint64_t lost = s->lost_events - s->lost_at_failure;
    if (lost == 0)
      hp_log(HP_LOG_INFO,
             "database: storing works again after %u failed attempts in %.1f s;"
             " nothing received meanwhile was lost",
             s->attempts, store_seconds_since(s->fail_since));
    else
      hp_log(HP_LOG_WARN,
             "database: storing works again after %u failed attempts in %.1f s;"
             " %" PRIu64 " events were given up (counted in events_dropped)",
             s->attempts, store_seconds_since(s->fail_since), lost);
    s->failing = 0;
    s->attempts = 0;
  }
}

void store_txn_commit(hp_store *s, int final)
{
  assert(s->in_txn);
  if (final)
    store_pair_flush(s);
  else
    store_pair_flush_old(s);
  int64_t now = store_wall_now_ns();
  for (hp_store_session *ss = s->active; ss; ss = ss->next) {
    hp_tl_row rows[HP_TL_MAX_ROWS];
    /* A second of slack: agents batch, so events may still be on their way. */
    int n = hp_timeline_advance(ss->tl, now - 1000000000, rows);
    store_timeline_rows(s, ss, rows, n);
    if (hp_timeline_current(ss->tl, rows))
      store_timeline_rows(s, ss, rows, 1);
  }
  store_session_write_rows(s);
  store_agg_write(s);
  store_site_write(s);
  int rc = s->broken ? s->broken_rc : SQLITE_OK;
  if (!s->broken) {
    sqlite3_stmt *st = s->st[ST_COMMIT];
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc == SQLITE_DONE)
      rc = SQLITE_OK;
    else
      store_sql_log_error(s, store_sql_text(ST_COMMIT), rc);
  }
  if (rc != SQLITE_OK) {
    store_txn_fail(s, rc);
    return;
  }
  committed(s);
  /* Rows kept back must not wait for the next event, which may never come: open the
   * next transaction now so that its deadline commits them. */
  if (s->npending > 0 && !final)
    (void)store_txn_begin(s);
}

/* ------------------------------------------------------------------ failures */

static int transient(int rc)
{
  switch (rc & 0xff) {
  case SQLITE_BUSY:
  case SQLITE_LOCKED:
  case SQLITE_FULL:
  case SQLITE_IOERR:
  case SQLITE_NOMEM:
  case SQLITE_CANTOPEN:
  case SQLITE_PROTOCOL: return 1;
  default: return 0;
  }
}

/* Counts the events of one write that is given up in its session. */
static void count_lost(hp_store *s, const hp_txop *op)
{
  int64_t session = 0, events = 0;
  if (op->kind == OP_ALLOC) {
    session = op->v[ALLOC_SESSION];
    events = op->v[ALLOC_EVENTS];
  } else if (op->kind == OP_FREE) {
    session = op->v[FREE_SESSION];
    events = op->v[FREE_EVENTS];
  }
  if (events <= 0)
    return;
  hp_store_session *ss = store_session_find(s, session);
  if (ss != NULL) {
    ss->lost_storage += (uint64_t)events;
    ss->dirty = 1;
  }
  s->lost_events += (uint64_t)events;
}

static int keep_definition(const hp_txop *op, void *ctx)
{
  if (op->kind == OP_FRAME || op->kind == OP_STACK)
    return 1;
  count_lost(ctx, op);
  return 0;
}

static void give_up(hp_store *s, int rc)
{
  uint64_t before = s->lost_events;
  hp_txlog_filter(s->log, keep_definition, s);
  s->log_incomplete = 0;
  hp_log(HP_LOG_ERROR,
         "database: giving up a transaction after %u attempts (%s): %" PRIu64
         " events are lost, counted in their sessions' events_dropped",
         s->attempts, sqlite3_errstr(rc), s->lost_events - before);
}

void store_txn_fail(hp_store *s, int rc)
{
  if (!sqlite3_get_autocommit(s->db))
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
  s->in_txn = 0;
  s->broken = 0;
  s->txn_rows = 0;
  store_agg_clear(s);
  store_site_rolled_back(s);
  store_session_rolled_back(s);
  struct timespec now = store_mono_now();
  if (!s->failing) {
    s->failing = 1;
    s->attempts = 0;
    s->lost_at_failure = s->lost_events;
    s->fail_since = now;
    s->next_fail_log = store_ts_add_ms(now, HP_STORE_FAIL_LOG_S * 1000);
    hp_log(HP_LOG_ERROR,
           "database: storing failed (%s); everything received is kept and "
           "written again when the database can take it (meanwhile agents wait or count "
           "what they drop)",
           sqlite3_errstr(rc));
  } else if (!store_ts_before(now, s->next_fail_log)) {
    s->next_fail_log = store_ts_add_ms(now, HP_STORE_FAIL_LOG_S * 1000);
    hp_log(HP_LOG_ERROR, "database: storing still fails after %u attempts in %.0f s (%s)",
           s->attempts, store_seconds_since(s->fail_since), sqlite3_errstr(rc));
  }
  s->attempts++;
  if (s->log_incomplete || (!transient(rc) && s->attempts >= HP_STORE_PERMANENT_TRIES))
    give_up(s, rc);
  unsigned shift = s->attempts > 10 ? 10 : s->attempts - 1;
  uint32_t delay = HP_STORE_RETRY_MIN_MS << shift;
  s->retry_at = store_ts_add_ms(now, delay > HP_STORE_RETRY_MAX_MS ? HP_STORE_RETRY_MAX_MS
                                                                   : delay);
}

void store_txn_give_up_all(hp_store *s)
{
  assert(s->failing && !s->in_txn);
  hp_txlog_filter(s->log, keep_definition, s); /* counts the log's data */
  for (uint32_t i = 0; i < s->npending; i++) {
    s->pending[i].ss->lost_storage += (uint64_t)s->pending[i].events;
    s->lost_events += (uint64_t)s->pending[i].events;
  }
  s->npending = s->pending_old = 0;
  for (item *it = s->held; it; it = it->next)
    if (it->kind == IT_EVENTS) {
      it->ss->lost_storage += it->u.events.n;
      s->lost_events += it->u.events.n;
    }
  hp_store_session *lists[2] = {s->active, s->ending};
  for (int l = 0; l < 2; l++)
    for (hp_store_session *ss = lists[l]; ss; ss = ss->next) {
      s->lost_sessions++;
      hp_log(HP_LOG_ERROR,
             "session %" PRId64 " (pid %" PRId64 "): could not be stored to "
             "its end: %" PRIu64 " events lost; its row %s",
             ss->id, ss->pid, ss->lost_storage,
             ss->row == ROW_STORED ? "stays 'running' until the next "
                                     "heapprofd marks it disconnected"
                                   : "was never written");
    }
  for (item *it = s->held; it; it = it->next)
    if (it->kind == IT_HELLO) {
      s->lost_sessions++;
      hp_log(HP_LOG_ERROR, "session of pid %" PRId64 ": never stored", it->ss->peer_pid);
    }
  hp_log(HP_LOG_ERROR,
         "database: stopping with storage still failing after %u attempts "
         "in %.0f s: %" PRIu64 " events could not be stored",
         s->attempts, store_seconds_since(s->fail_since), s->lost_events);
}
