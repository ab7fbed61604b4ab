/* store.c — the store thread: its loop, what each queued item does, start and stop.
 *
 * Pipeline position: conn (loop thread) -> [bounded queue] -> store thread -> SQLite,
 * with the timeline computed here because it needs the pairing of frees with
 * allocations. store_int.h says which file of the module owns which job. */
#include "store_int.h"

#include <stdlib.h>

#include "hp_log.h"

static void process(hp_store *s, item *it)
{
  switch (it->kind) {
  case IT_HELLO: store_session_hello(s, it); break;
  case IT_FRAME: store_intern_frame(s, it); break;
  case IT_STACK: store_intern_stack(s, it); break;
  case IT_EVENTS: store_pair_events(s, it); break;
  case IT_COUNTERS: store_session_counters(s, it); break;
  case IT_GOODBYE: store_session_goodbye(it); break;
  case IT_THREAD: store_session_thread(s, it); break;
  case IT_MARKER: store_session_marker(s, it); break;
  case IT_END: store_session_end(s, it); break;
  }
}

/* Processes the held items, each inside the open transaction. While storing fails
 * they stay held, in order. */
static void process_held(hp_store *s)
{
  while (s->held != NULL) {
    if (store_txn_begin(s) < 0)
      return;
    item *it = s->held;
    s->held = it->next;
    if (s->held == NULL)
      s->held_tail = NULL;
    size_t cost = it->cost;
    item_kind kind = it->kind;
    process(s, it);
    if (kind != IT_HELLO && kind != IT_END)
      free(it); /* a session keeps its HELLO and its end until it is freed */
    if (s->broken)
      store_txn_fail(s, s->broken_rc);
    else if (s->txn_rows >= s->cfg.batch_rows)
      store_txn_commit(s, 0);
    store_queue_release(s, cost);
  }
}

/* Idle sessions: close timeline intervals that time has passed, so that the drop
 * after a spike shows even when the program then goes quiet. */
static void idle_tick(hp_store *s)
{
  int64_t now = store_wall_now_ns() - 1000000000; /* slack for batches on their way */
  int due = 0;
  for (hp_store_session *ss = s->active; ss && !due; ss = ss->next)
    due = hp_timeline_due(ss->tl, now);
  if (!due || store_txn_begin(s) < 0)
    return;
  for (hp_store_session *ss = s->active; ss; ss = ss->next) {
    hp_tl_row rows[HP_TL_MAX_ROWS];
    int n = hp_timeline_advance(ss->tl, now, rows);
    store_timeline_rows(s, ss, rows, n);
  }
}

static void *store_main(void *arg)
{
  hp_store *s = arg;
  int stop_seen = 0;
  s->next_tick = store_ts_add_ms(store_mono_now(), 1000);
  for (;;) {
    /* Wake for the commit deadline, the retry, or once a second for idle timelines;
     * at a stop with storage failing, at the latest when the retries run out. */
    struct timespec deadline = s->in_txn    ? s->txn_deadline
                               : s->failing ? s->retry_at
                                            : s->next_tick;
    if (stop_seen && store_ts_before(s->stop_at, deadline))
      deadline = s->stop_at;
    int stopping = store_queue_take(s, &deadline, !s->failing);
    if (stopping && !stop_seen) {
      stop_seen = 1;
      s->stop_at = store_ts_add_ms(store_mono_now(), s->cfg.stop_retry_ms);
    }

    process_held(s);
    struct timespec now = store_mono_now();
    if (s->in_txn && !store_ts_before(now, s->txn_deadline)) {
      store_txn_commit(s, 0);
    } else if (!s->in_txn && s->failing && s->held == NULL) {
      if (store_txn_begin(s) ==
          0) /* not before the retry time: writes the failed one again */
        store_txn_commit(s, 0);
    } else if (!s->in_txn && !store_ts_before(now, s->next_tick)) {
      idle_tick(s);
      s->next_tick = store_ts_add_ms(now, 1000);
    }
    if (stopping && s->held == NULL) {
      if (store_txn_begin(s) == 0) { /* open already, or not before a retry's time */
        store_txn_commit(s, 1);
        if (!s->failing)
          break;
      }
      if (!store_ts_before(store_mono_now(), s->stop_at)) {
        store_txn_give_up_all(s);
        break;
      }
    } else if (stopping && !store_ts_before(store_mono_now(), s->stop_at)) {
      store_txn_give_up_all(s);
      break;
    }
  }
  return NULL;
}

/* ------------------------------------------------------------------ start / stop */

/* After the final commit, on the caller's thread (the store thread has ended). Each
 * CREATE INDEX is its own transaction: a kill while building leaves the database as
 * it was, just without the index being built. max(id) counts the rows because
 * allocations get consecutive ids, and it costs one b-tree descent. */
static void build_indexes(hp_store *s)
{
  long long rows = 0;
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(s->db, "SELECT coalesce(max(id), 0) FROM alloc", -1, &st, NULL) ==
        SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW)
    rows = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  hp_log(HP_LOG_INFO, "indexing %lld allocations for fast queries...", rows);
  struct timespec t0 = store_mono_now();
  char *msg = NULL;
  if (sqlite3_exec(s->db, s->cfg.index_sql, NULL, NULL, &msg) != SQLITE_OK) {
    hp_log(HP_LOG_ERROR,
           "database: building the read indexes: %s; the data is intact, "
           "queries over long sessions will be slower",
           msg ? msg : "?");
    sqlite3_free(msg);
    return;
  }
  hp_log(HP_LOG_INFO, "indexed %lld allocations in %.2f s", rows, store_seconds_since(t0));
}

static void close_db(hp_store *s)
{
  store_sql_finalize(s);
  int rc = sqlite3_close(s->db);
  if (rc != SQLITE_OK)
    hp_log(HP_LOG_ERROR, "closing the database: %s", sqlite3_errstr(rc));
}

static void apply_defaults(hp_store_config *cfg)
{
  if (cfg->batch_rows == 0)
    cfg->batch_rows = HP_STORE_DEFAULT_ROWS;
  if (cfg->commit_ms == 0)
    cfg->commit_ms = HP_STORE_COMMIT_MS;
  if (cfg->queue_high == 0)
    cfg->queue_high = HP_STORE_QUEUE_HIGH;
  if (cfg->queue_low == 0 || cfg->queue_low > cfg->queue_high)
    cfg->queue_low = cfg->queue_high / 4;
  if (cfg->timeline_interval_ns <= 0)
    cfg->timeline_interval_ns = 100000000;
  if (cfg->max_live_addrs == 0)
    cfg->max_live_addrs = HP_STORE_MAX_LIVE_ADDRS;
  if (cfg->stop_retry_ms == 0)
    cfg->stop_retry_ms = HP_STORE_STOP_RETRY_MS;
}

int hp_store_start(hp_store **out, const hp_store_config *cfg)
{
  int rc = -HP_ENOMEM;
  *out = NULL;
  hp_store *s = calloc(1, sizeof *s);
  if (s == NULL) {
    sqlite3_close(cfg->db);
    return -HP_ENOMEM;
  }
  s->cfg = *cfg;
  s->db = cfg->db;
  apply_defaults(&s->cfg);

  /* One commit's rows kept back plus one commit's new rows, and a margin. */
  s->pending_cap = 2 * s->cfg.batch_rows + HP_STORE_MULTI;
  s->pending = malloc((size_t)s->pending_cap * sizeof(pending_alloc));
  s->log = hp_txlog_new();
  s->agg = store_agg_new();
  s->site = store_site_new();
  if (s->pending == NULL || s->log == NULL || s->agg == NULL || s->site == NULL)
    goto out_free;
  /* WAL with synchronous=NORMAL survives a killed process (the OS keeps what was
   * written); only a power cut can lose the last commits, never corrupt. The page cache
   * is bounded at 16 MiB because a larger one only fills up as the database grows, and
   * the daemon's memory must stay flat. A checkpoint every 8192 WAL pages instead of
   * SQLite's 1000 copies hot b-tree pages back less often (bench/README.md); the WAL is
   * removed at a clean close. */
  char *msg = NULL;
  if (sqlite3_exec(s->db,
                   "PRAGMA synchronous=NORMAL; PRAGMA cache_size=-16384;"
                   " PRAGMA wal_autocheckpoint=8192; PRAGMA temp_store=MEMORY;",
                   NULL, NULL, &msg) != SQLITE_OK) {
    hp_log(HP_LOG_ERROR, "database: setting pragmas: %s", msg ? msg : "?");
    sqlite3_free(msg);
    rc = -HP_ESQLITE;
    goto out_free;
  }
  if (s->cfg.busy_timeout_ms > 0)
    sqlite3_busy_timeout(s->db, (int)s->cfg.busy_timeout_ms);
  if ((rc = store_ids_load(s)) < 0 || (rc = store_sql_prepare(s)) < 0)
    goto out_free;
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&s->cond, &ca);
  pthread_condattr_destroy(&ca);
  pthread_mutex_init(&s->mu, NULL);
  int prc = pthread_create(&s->thread, NULL, store_main, s);
  if (prc != 0) {
    rc = -prc;
    goto out_destroy;
  }
  pthread_setname_np(s->thread, "hp-store"); /* for top -H and perf; best effort */
  *out = s;
  return 0;

out_destroy:
  pthread_cond_destroy(&s->cond);
  pthread_mutex_destroy(&s->mu);
out_free:
  close_db(s);
  hp_txlog_free(s->log);
  store_agg_free(s->agg);
  store_site_free(s->site);
  free(s->pending);
  free(s);
  return rc;
}

int hp_store_stop(hp_store *s)
{
  if (s == NULL)
    return 0;
  pthread_mutex_lock(&s->mu);
  s->stop = 1;
  pthread_cond_signal(&s->cond);
  pthread_mutex_unlock(&s->mu);
  pthread_join(s->thread, NULL);
  /* What is left was given up (store_txn_give_up_all) or never ended: the server ends
   * every session first. Held items of a session whose HELLO was never processed are
   * freed with that session; a session's end item always is. */
  assert(s->head == NULL);
  while (s->held) {
    item *it = s->held;
    s->held = it->next;
    if (it->kind == IT_HELLO)
      store_session_free(it->ss); /* frees it->ss->end; `it` is not the session's yet */
    if (it->kind != IT_END)
      free(it);
  }
  hp_store_session *lists[2] = {s->active, s->ending};
  for (int l = 0; l < 2; l++)
    while (lists[l]) {
      hp_store_session *ss = lists[l];
      lists[l] = ss->next;
      store_session_free(ss);
    }
  if (s->cfg.index_sql != NULL)
    build_indexes(s);
  close_db(s);
  int rc = (s->lost_events > 0 || s->lost_sessions > 0) ? -HP_ESQLITE : 0;
  pthread_cond_destroy(&s->cond);
  pthread_mutex_destroy(&s->mu);
  hp_txlog_free(s->log);
  store_agg_free(s->agg);
  store_site_free(s->site);
  free(s->pending);
  free(s);
  return rc;
}
