/* store_sql.c — the store's SQLite statements, and its writes through the transaction log.
 *
 * Every statement is prepared once, at start. A write of the open transaction is first
 * appended to the log (hp_txlog.h) with its values, then executed, so that a rolled-back
 * transaction can be written again, whole, from the log (store_txn.c). Allocation rows
 * go out in multi-row INSERTs of HP_STORE_MULTI rows, which cost far less SQLite bytecode
 * per row than one INSERT each.
 *
 * Text is bound SQLITE_STATIC: each write binds every parameter right before its step,
 * from memory that outlives the step (an item being processed, a session's HELLO or
 * end item, the log's arena, which nothing changes while it is replayed, or a string
 * literal), and a statement that binds text is cleared right after its step, so that
 * none keeps a pointer to memory freed later. */
#include "store_int.h"

#include <stdio.h>
#include <string.h>

#include "hp_log.h"

#define ALLOC_COLUMNS 10
#define ALLOC_INSERT \
  "INSERT INTO alloc(id, session_id, ts_ns, thread_id, domain, address, size, est_bytes," \
  " stack_id, freed_ns) VALUES "

static const char *const sql_text[ST_COUNT] = {
  [ST_BEGIN] = "BEGIN IMMEDIATE",
  [ST_COMMIT] = "COMMIT",
  [ST_INS_SESSION] =
    "INSERT INTO session(id, pid, ppid, argv, executable, python_version, started_ns,"
    " sample_interval_bytes, sample_buckets, max_stack_depth, argv_omitted, ended_ns, "
    "status,"
    " error, events_received, events_dropped) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
  [ST_UPD_SESSION] =
    "UPDATE session SET ended_ns=?2, status=?3, error=?4, events_received=?5,"
    " events_dropped=?6 WHERE id=?1",
  [ST_INS_FRAME] = "INSERT INTO frame(id, function, filename, lineno) VALUES(?1,?2,?3,?4)",
  [ST_SEL_FRAME] = "SELECT id FROM frame WHERE filename=?2 AND lineno=?3 AND function=?1",
  [ST_SEL_STACK] = "SELECT id FROM stack WHERE hash=?1 AND depth=?2 AND truncated=?3",
  [ST_SEL_STACK_FRAMES] =
    "SELECT frame_id FROM stack_frame WHERE stack_id=? ORDER BY depth",
  [ST_INS_STACK] = "INSERT INTO stack(id, hash, depth, truncated) VALUES(?,?,?,?)",
  [ST_INS_STACK_FRAME] = "INSERT INTO stack_frame(stack_id, depth, frame_id) VALUES(?,?,?)",
  [ST_INS_ALLOC] = ALLOC_INSERT "(?,?,?,?,?,?,?,?,?,?)",
  [ST_UPD_FREE] = "UPDATE alloc SET freed_ns=?2 WHERE id=?1",
  [ST_SEL_FREED] = "SELECT stack_id, size FROM alloc WHERE id=?1",
  [ST_UPSERT_TL] =
    "INSERT INTO timeline_point(session_id, ts_ns, live_bytes, live_count, end_bytes)"
    " VALUES(?,?,?,?,?) ON CONFLICT(session_id, ts_ns) DO UPDATE SET"
    " live_bytes=excluded.live_bytes, live_count=excluded.live_count,"
    " end_bytes=excluded.end_bytes",
  [ST_INS_SAMPLING] =
    "INSERT INTO sampling_change(session_id, ts_ns, sample_interval_bytes) VALUES(?,?,?)",
  [ST_SEL_ALLOC] = "SELECT domain, size FROM alloc WHERE id=?1",
  [ST_UPSERT_THREAD] =
    "INSERT INTO thread_name(session_id, thread_id, name) VALUES(?1,?2,?3)"
    " ON CONFLICT(session_id, thread_id) DO UPDATE SET name=excluded.name",
  [ST_INS_MARKER] = "INSERT INTO marker(session_id, ts_ns, label) VALUES(?,?,?)",
  [ST_INS_AGG_SESSION] =
    "INSERT OR IGNORE INTO agg_session(session_id, bucket_ns) VALUES(?,?)",
  [ST_UPSERT_AGG_STACK] =
    "INSERT INTO agg_stack(session_id, bucket_ns, stack_id, alloc_bytes, alloc_count,"
    " alloc_samples, freed_bytes, freed_count, freed_samples, alloc_var, freed_var)"
    " VALUES(?,?,?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT(session_id, bucket_ns, stack_id) DO UPDATE SET"
    " alloc_bytes=alloc_bytes+excluded.alloc_bytes, "
    "alloc_count=alloc_count+excluded.alloc_count,"
    " alloc_samples=alloc_samples+excluded.alloc_samples,"
    " freed_bytes=freed_bytes+excluded.freed_bytes, "
    "freed_count=freed_count+excluded.freed_count,"
    " freed_samples=freed_samples+excluded.freed_samples,"
    " alloc_var=alloc_var+excluded.alloc_var, freed_var=freed_var+excluded.freed_var",
  [ST_UPSERT_AGG_SIZE] =
    "INSERT INTO agg_size(session_id, size_class, samples, est_count, est_bytes)"
    " VALUES(?,?,?,?,?) ON CONFLICT(session_id, size_class) DO UPDATE SET"
    " samples=samples+excluded.samples, est_count=est_count+excluded.est_count,"
    " est_bytes=est_bytes+excluded.est_bytes",
  [ST_INS_AGG_SITE_SESSION] =
    "INSERT OR IGNORE INTO agg_site_session(session_id, bucket_ns, done_ns) VALUES(?,?,0)",
  [ST_INS_AGG_SITE] =
    "INSERT INTO agg_site(session_id, frame_id, bucket_ns, net_bytes, high_bytes)"
    " VALUES(?,?,?,?,?)",
  [ST_UPD_AGG_SITE_DONE] = "UPDATE agg_site_session SET done_ns=?2 WHERE session_id=?1",
  [ST_DEL_AGG_SITE_SESSION] = "DELETE FROM agg_site_session WHERE session_id=?1",
  [ST_DEL_AGG_SITE] = "DELETE FROM agg_site WHERE session_id=?1",
  [ST_SEL_FRAME_LINE] =
    "SELECT (SELECT min(g.id) FROM frame g WHERE g.filename=f.filename AND"
    " g.lineno=f.lineno) FROM frame f WHERE f.id=?1",
};

/* The statements that bind text (SQLITE_STATIC). */
static const unsigned char binds_text[ST_COUNT] = {
  [ST_INS_SESSION] = 1, [ST_UPD_SESSION] = 1,   [ST_INS_FRAME] = 1,
  [ST_SEL_FRAME] = 1,   [ST_UPSERT_THREAD] = 1, [ST_INS_MARKER] = 1,
};

const char *store_sql_text(int which)
{
  return sql_text[which];
}

int store_sql_prepare(hp_store *s)
{
  for (int i = 0; i < ST_COUNT; i++)
    if (sqlite3_prepare_v3(s->db, sql_text[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i],
                           NULL) != SQLITE_OK) {
      hp_log(HP_LOG_ERROR, "database: preparing \"%s\": %s", sql_text[i],
             sqlite3_errmsg(s->db));
      return -HP_ESQLITE;
    }
  char multi[sizeof ALLOC_INSERT + HP_STORE_MULTI * sizeof ",(?,?,?,?,?,?,?,?,?,?)"];
  size_t len = strlen(ALLOC_INSERT);
  memcpy(multi, ALLOC_INSERT, len);
  for (int i = 0; i < HP_STORE_MULTI; i++)
    len += (size_t)snprintf(multi + len, sizeof multi - len, "%s(?,?,?,?,?,?,?,?,?,?)",
                            i ? "," : "");
  if (sqlite3_prepare_v3(s->db, multi, -1, SQLITE_PREPARE_PERSISTENT, &s->ins_multi,
                         NULL) != SQLITE_OK) {
    hp_log(HP_LOG_ERROR, "database: preparing the multi-row insert: %s",
           sqlite3_errmsg(s->db));
    return -HP_ESQLITE;
  }
  return 0;
}

void store_sql_finalize(hp_store *s)
{
  for (int i = 0; i < ST_COUNT; i++) {
    sqlite3_finalize(s->st[i]);
    s->st[i] = NULL;
  }
  sqlite3_finalize(s->ins_multi);
  s->ins_multi = NULL;
}

/* Storage errors are logged in full 20 times; then store_txn.c says at most every
 * HP_STORE_FAIL_LOG_S that a failure lasts, so a full disk cannot flood stderr. */
void store_sql_log_error(hp_store *s, const char *what, int rc)
{
  if (s->errors_logged >= 20)
    return;
  s->errors_logged++;
  hp_log(HP_LOG_ERROR, "database: %s: %s (%s)", what, sqlite3_errmsg(s->db),
         sqlite3_errstr(rc));
}

void store_sql_break(hp_store *s, const char *what, int rc)
{
  assert(s->in_txn);
  if (s->broken)
    return;
  s->broken = 1;
  s->broken_rc = rc;
  store_sql_log_error(s, what, rc);
}

static int step(hp_store *s, sqlite3_stmt *st, const char *what)
{
  if (s->broken) {
    sqlite3_reset(st);
    return -1;
  }
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc == SQLITE_DONE || rc == SQLITE_ROW)
    return 0;
  store_sql_break(s, what, rc);
  return -1;
}

int store_sql_run(hp_store *s, int which)
{
  int rc = step(s, s->st[which], sql_text[which]);
  if (binds_text[which])
    sqlite3_clear_bindings(s->st[which]);
  return rc;
}

void store_sql_unbind(hp_store *s, int which)
{
  assert(binds_text[which]);
  sqlite3_clear_bindings(s->st[which]);
}

/* ------------------------------------------------------------------ writes */

static void bind_opt(sqlite3_stmt *st, int col, int64_t v)
{
  if (v)
    sqlite3_bind_int64(st, col, v);
  else
    sqlite3_bind_null(st, col);
}

/* One alloc row into parameters col+1 .. col+ALLOC_COLUMNS (ALLOC_* are in column order).
 * Spelled out: this runs for every row, and a loop costs more instructions per row. */
static void bind_alloc(sqlite3_stmt *st, int col, const int64_t *v)
{
  sqlite3_bind_int64(st, col + 1 + ALLOC_ID, v[ALLOC_ID]);
  sqlite3_bind_int64(st, col + 1 + ALLOC_SESSION, v[ALLOC_SESSION]);
  sqlite3_bind_int64(st, col + 1 + ALLOC_TS, v[ALLOC_TS]);
  sqlite3_bind_int64(st, col + 1 + ALLOC_THREAD, v[ALLOC_THREAD]);
  sqlite3_bind_int64(st, col + 1 + ALLOC_DOMAIN, v[ALLOC_DOMAIN]);
  sqlite3_bind_int64(st, col + 1 + ALLOC_ADDRESS, v[ALLOC_ADDRESS]);
  sqlite3_bind_int64(st, col + 1 + ALLOC_SIZE, v[ALLOC_SIZE]);
  sqlite3_bind_int64(st, col + 1 + ALLOC_EST, v[ALLOC_EST]);
  bind_opt(st, col + 1 + ALLOC_STACK, v[ALLOC_STACK]);
  bind_opt(st, col + 1 + ALLOC_FREED, v[ALLOC_FREED]);
}

/* Inserts n alloc rows: HP_STORE_MULTI of them in one statement, fewer one by one. */
static void insert_allocs(hp_store *s, int64_t (*rows)[HP_TXOP_VALUES], uint32_t n)
{
  assert(n <= HP_STORE_MULTI);
  for (uint32_t j = 0; j < n; j++)
    store_agg_row(s, rows[j]);
  if (n == HP_STORE_MULTI) {
    for (uint32_t j = 0; j < n; j++)
      bind_alloc(s->ins_multi, (int)j * ALLOC_COLUMNS, rows[j]);
    (void)step(s, s->ins_multi, "inserting allocations");
    return;
  }
  for (uint32_t j = 0; j < n; j++) {
    bind_alloc(s->st[ST_INS_ALLOC], 0, rows[j]);
    (void)store_sql_run(s, ST_INS_ALLOC);
  }
}

static void bind_ints(sqlite3_stmt *st, const int64_t *v, int n)
{
  for (int i = 0; i < n; i++)
    sqlite3_bind_int64(st, i + 1, v[i]);
}

/* Ends a stored row (FREE_* values) and adds it to the aggregates' frees, with the stack
 * and size the address map kept; only a value that did not fit there is read back. */
static void free_row(hp_store *s, const int64_t *v)
{
  bind_ints(s->st[ST_UPD_FREE], v, 2); /* FREE_ID, FREE_TS */
  if (store_sql_run(s, ST_UPD_FREE) < 0)
    return;
  /* No row: it was given up with a failed transaction (store_txn.c), so its free is
   * in no sum either. */
  if (sqlite3_changes(s->db) == 0)
    return;
  int64_t stack = v[FREE_STACK], size = v[FREE_SIZE];
  if ((stack < 0 || size < 0) && store_sql_row_of(s, v[FREE_ID], &stack, &size) < 0)
    return;
  store_agg_freed(s, v[FREE_SESSION], stack, v[FREE_EST], size, v[FREE_TS]);
}

int store_sql_row_of(hp_store *s, int64_t id, int64_t *stack, int64_t *size)
{
  sqlite3_stmt *sel = s->st[ST_SEL_FREED];
  if (s->broken)
    return -1;
  sqlite3_bind_int64(sel, 1, id);
  int rc = sqlite3_step(sel);
  if (rc == SQLITE_ROW) {
    *stack = sqlite3_column_int64(sel, 0); /* NULL reads as 0, as agg_stack keys it */
    *size = sqlite3_column_int64(sel, 1);
  }
  sqlite3_reset(sel);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE)
    store_sql_break(s, sql_text[ST_SEL_FREED], rc);
  return rc == SQLITE_ROW ? 0 : -1;
}

/* Executes one write that is not an alloc row (those go through insert_allocs). */
static void apply(hp_store *s, const hp_txop *op)
{
  sqlite3_stmt *st;
  const int64_t *v = op->v;
  switch (op->kind) {
  case OP_FRAME: {
    const char *function = op->blob, *filename = function + strlen(function) + 1;
    st = s->st[ST_INS_FRAME];
    sqlite3_bind_int64(st, 1, v[FRAME_ID]);
    sqlite3_bind_text(st, 2, function, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, filename, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, v[FRAME_LINENO]);
    (void)store_sql_run(s, ST_INS_FRAME);
    break;
  }
  case OP_STACK: {
    const int64_t *frames = op->blob;
    bind_ints(s->st[ST_INS_STACK], v, 4);
    (void)store_sql_run(s, ST_INS_STACK);
    st = s->st[ST_INS_STACK_FRAME];
    for (int64_t i = 0; i < v[STACK_DEPTH]; i++) {
      sqlite3_bind_int64(st, 1, v[STACK_ID]);
      sqlite3_bind_int64(st, 2, i);
      sqlite3_bind_int64(st, 3, frames[i]);
      (void)store_sql_run(s, ST_INS_STACK_FRAME);
    }
    break;
  }
  case OP_FREE: free_row(s, v); break;
  case OP_TIMELINE:
    bind_ints(s->st[ST_UPSERT_TL], v, 5);
    (void)store_sql_run(s, ST_UPSERT_TL);
    break;
  case OP_SAMPLING:
    bind_ints(s->st[ST_INS_SAMPLING], v, 3);
    (void)store_sql_run(s, ST_INS_SAMPLING);
    break;
  case OP_THREAD:
  case OP_MARKER: {
    int which = op->kind == OP_THREAD ? ST_UPSERT_THREAD : ST_INS_MARKER;
    bind_ints(s->st[which], v, 2);
    sqlite3_bind_text(s->st[which], 3, op->blob, -1, SQLITE_STATIC);
    (void)store_sql_run(s, which);
    break;
  }
  default: assert(!"an alloc row, or a write of no known kind");
  }
}

static void log_write(hp_store *s, int kind, const int64_t *v, const void *blob,
                      uint32_t len)
{
  if (hp_txlog_add(s->log, kind, v, blob, len) == 0)
    return;
  if (!s->log_incomplete)
    hp_log(HP_LOG_ERROR, "database: out of memory keeping the transaction's writes; if it "
                         "fails, its data is given up");
  s->log_incomplete = 1;
}

void store_write(hp_store *s, int kind, const int64_t *v, const void *blob, uint32_t len)
{
  assert(s->in_txn && kind != OP_ALLOC);
  log_write(s, kind, v, blob, len);
  hp_txop op = {.kind = kind, .blob = blob, .len = len};
  memcpy(op.v, v, sizeof op.v);
  apply(s, &op);
  s->txn_rows++;
}

void store_write_allocs(hp_store *s, int64_t (*rows)[HP_TXOP_VALUES], uint32_t n)
{
  assert(s->in_txn);
  for (uint32_t j = 0; j < n; j++)
    log_write(s, OP_ALLOC, rows[j], NULL, 0);
  insert_allocs(s, rows, n);
}

void store_sql_replay(hp_store *s)
{
  assert(s->in_txn);
  size_t n = hp_txlog_count(s->log);
  int64_t rows[HP_STORE_MULTI][HP_TXOP_VALUES];
  uint32_t k = 0;
  for (size_t i = 0; i < n && !s->broken; i++) {
    hp_txop op;
    hp_txlog_get(s->log, i, &op);
    if (op.kind == OP_ALLOC) {
      memcpy(rows[k++], op.v, sizeof op.v);
      if (k == HP_STORE_MULTI) {
        insert_allocs(s, rows, k);
        k = 0;
      }
      continue;
    }
    if (k > 0) {
      insert_allocs(s, rows, k);
      k = 0;
    }
    apply(s, &op);
  }
  if (k > 0)
    insert_allocs(s, rows, k);
  s->txn_rows += n;
}
