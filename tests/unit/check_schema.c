/* check_schema.c — hp_schema_open: creating, reopening and refusing databases.
 *
 * The refusals matter most: a user who points heapprofd at the wrong file must get a
 * clear message and an untouched file, so every refusal test compares the file's bytes
 * before and after and checks that no -wal/-shm side files appeared. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hp_error.h"
#include "hp_schema.h"

#include "check_db_util.h"

/* tests/data/schema_v1.sql, embedded by meson: the schema older heapprofd wrote; and
 * schema/schema.sql as hp_schema embeds it (schema/meson.build): the one it writes. */
extern const char hp_test_schema_v1_sql[];
extern const char hp_schema_sql_text[];

static char tmpdir[256];
static char dbpath[512];
static char errbuf[512];

static void setup_in(const char *base) {
  hp_test_tmpdir_setup(tmpdir, sizeof tmpdir, base, "hp-check-schema");
  snprintf(dbpath, sizeof dbpath, "%s/prof.sqlite", tmpdir);
  errbuf[0] = '\0';
}

static void setup(void) {
  setup_in(getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp");
}

/* The allocation-failure sweeps open a database some thousands of times; on a disk each
 * open's fsyncs add up to tens of seconds, on tmpfs they cost nothing. Durability is not
 * what those tests check. */
static void setup_fast(void) {
  struct stat st;
  if (stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) && access("/dev/shm", W_OK) == 0)
    setup_in("/dev/shm");
  else
    setup();
}

static void teardown(void) {
  hp_test_tmpdir_teardown(tmpdir);
}

static int exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

static int side_file_exists(const char *suffix) {
  char p[600];
  snprintf(p, sizeof p, "%s%s", dbpath, suffix);
  return exists(p);
}

static void remove_db_files(void) {
  static const char *const suffixes[] = {"", "-wal", "-shm", "-journal"};
  for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
    char p[600];
    snprintf(p, sizeof p, "%s%s", dbpath, suffixes[i]);
    unlink(p);
  }
}

/* Whole file into a malloc'd buffer; *len set. */
static unsigned char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  ck_assert_msg(f != NULL, "cannot open %s: %s", path, strerror(errno));
  ck_assert_int_eq(fseek(f, 0, SEEK_END), 0);
  long n = ftell(f);
  ck_assert_int_ge(n, 0);
  rewind(f);
  unsigned char *buf = malloc((size_t)n + 1);
  ck_assert_ptr_nonnull(buf);
  ck_assert_uint_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
  fclose(f);
  *len = (size_t)n;
  return buf;
}

static void write_file(const char *path, const void *data, size_t len) {
  FILE *f = fopen(path, "wb");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(data, 1, len, f), len);
  ck_assert_int_eq(fclose(f), 0);
}

static void exec_ok(sqlite3 *db, const char *sql) {
  char *msg = NULL;
  int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
  ck_assert_msg(rc == SQLITE_OK, "%s: %s", sql, msg != NULL ? msg : "?");
}

/* A plain SQLite database (rollback journal, so nothing lingers beside it) built with
 * the sqlite3 API directly, for the "another application's database" cases. */
static void make_foreign_db(const char *sql) {
  sqlite3 *db = hp_test_db_open(dbpath);
  exec_ok(db, sql);
  ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
}

/* A version 1 database as an older heapprofd left it (WAL, then closed), with `sql` run
 * on it. */
static void make_v1(const char *sql) {
  sqlite3 *db = hp_test_db_open(dbpath);
  exec_ok(db, "PRAGMA journal_mode = WAL");
  exec_ok(db, hp_test_schema_v1_sql);
  exec_ok(db, sql);
  ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
}

/* Opens dbpath expecting the error code `want`, and checks the file is byte-for-byte
 * what it was and that no WAL side files appeared. `name` names the case in failures. */
static void assert_refused_untouched(const char *name, int want, const char *msg_part) {
  size_t before_len, after_len;
  unsigned char *before = slurp(dbpath, &before_len);
  struct stat st_before, st_after;
  ck_assert_int_eq(stat(dbpath, &st_before), 0);
  sqlite3 *db = (sqlite3 *)0x1;

  int rc = hp_schema_open(dbpath, &db, errbuf, sizeof errbuf);
  ck_assert_msg(rc == want, "%s: rc %d (%s), want %d; message: %s", name, rc, hp_strerror(rc),
                want, errbuf);
  ck_assert_msg(db == NULL, "%s: a connection was returned", name);
  ck_assert_msg(strstr(errbuf, dbpath) != NULL, "%s: message does not name the file: %s", name,
                errbuf);
  ck_assert_msg(strstr(errbuf, msg_part) != NULL, "%s: message lacks '%s': %s", name, msg_part,
                errbuf);
  ck_assert_msg(strchr(errbuf, '\n') == NULL, "%s: message has a newline: %s", name, errbuf);

  unsigned char *after = slurp(dbpath, &after_len);
  ck_assert_msg(after_len == before_len, "%s: %zu bytes became %zu", name, before_len,
                after_len);
  ck_assert_msg(memcmp(after, before, before_len) == 0, "%s: the bytes changed", name);
  ck_assert_int_eq(stat(dbpath, &st_after), 0);
  ck_assert_msg(st_after.st_mtim.tv_sec == st_before.st_mtim.tv_sec,
                "%s: the modification time changed (seconds)", name);
  ck_assert_msg(st_after.st_mtim.tv_nsec == st_before.st_mtim.tv_nsec,
                "%s: the modification time changed (nanoseconds)", name);
  ck_assert_msg(!side_file_exists("-wal"), "%s: a -wal file was created", name);
  ck_assert_msg(!side_file_exists("-shm"), "%s: a -shm file was created", name);
  ck_assert_msg(!side_file_exists("-journal"), "%s: a -journal file was created", name);
  free(before);
  free(after);
}

static void assert_is_new_heapprof_db(sqlite3 *db) {
  ck_assert_int_eq(hp_test_db_int(db, "PRAGMA application_id"), HP_SCHEMA_APPLICATION_ID);
  ck_assert_int_eq(hp_test_db_int(db, "PRAGMA user_version"), HP_SCHEMA_VERSION);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM sqlite_schema WHERE type = 'view'"
                                      " AND name IN ('sessions', 'frames', 'stack_frames',"
                                      " 'stacks', 'allocations', 'timeline')"), 6);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM sessions"), 0);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM allocations"), 0);
  sqlite3_stmt *st = NULL;
  ck_assert_int_eq(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
  ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
  ck_assert_str_eq((const char *)sqlite3_column_text(st, 0), "wal");
  sqlite3_finalize(st);
  ck_assert_int_eq(sqlite3_db_readonly(db, "main"), 0);
}

#define INSERT_SESSION                                                             \
  "INSERT INTO session (pid, ppid, argv, executable, python_version, started_ns, " \
  "sample_interval_bytes, max_stack_depth) "                                       \
  "VALUES (42, 1, '[\"x.py\"]', '/usr/bin/python3', '3.11.7', 1000, 1, 64)"
static const char insert_session[] = INSERT_SESSION;

static void assert_opens_as_new(void) {
  sqlite3 *db = NULL;
  int rc = hp_schema_open(dbpath, &db, errbuf, sizeof errbuf);
  ck_assert_msg(rc == 0, "rc %d: %s", rc, errbuf);
  assert_is_new_heapprof_db(db);
  ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
}

/* A heapprof database with one session, changed by `sql`, closed and opened again. */
static sqlite3 *reopen_after(const char *sql) {
  sqlite3 *db = NULL;
  ck_assert_int_eq(hp_schema_open(dbpath, &db, errbuf, sizeof errbuf), 0);
  exec_ok(db, insert_session);
  exec_ok(db, sql);
  ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
  db = NULL;
  int rc = hp_schema_open(dbpath, &db, errbuf, sizeof errbuf);
  ck_assert_msg(rc == 0, "rc %d: %s", rc, errbuf);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM sessions"), 1);
  return db;
}

/* ------------------------------------------------------------------ core */

START_TEST(open_creates_missing_file_with_schema_and_wal) {
  sqlite3 *db = NULL;
  ck_assert(!exists(dbpath));
  int rc = hp_schema_open(dbpath, &db, errbuf, sizeof errbuf);
  ck_assert_msg(rc == 0, "rc %d: %s", rc, errbuf);
  ck_assert_ptr_nonnull(db);
  ck_assert_str_eq(errbuf, "");
  assert_is_new_heapprof_db(db);
  ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
  ck_assert(exists(dbpath));
}
END_TEST

START_TEST(open_treats_empty_file_as_new) {
  write_file(dbpath, "", 0);
  assert_opens_as_new();
}
END_TEST

START_TEST(open_claims_empty_sqlite_database) {
  /* A valid SQLite file with nothing in it and no application id: nobody's yet. */
  make_foreign_db("CREATE TABLE t (x); DROP TABLE t;");
  struct stat st;
  ck_assert_int_eq(stat(dbpath, &st), 0);
  ck_assert_int_gt(st.st_size, 0);
  assert_opens_as_new();
}
END_TEST

START_TEST(reopen_keeps_data_and_appends_sessions) {
  sqlite3 *db =
      reopen_after("INSERT INTO frame (function, filename, lineno) VALUES ('f', 'a.py', 3)");
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM frames WHERE filename = 'a.py'"), 1);
  exec_ok(db, insert_session);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT max(session_id) FROM sessions"), 2);
  ck_assert_int_eq(hp_test_db_int(db, "PRAGMA user_version"), HP_SCHEMA_VERSION);
  ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);

  /* And a third time, after the WAL was checkpointed on close. */
  db = NULL;
  ck_assert_int_eq(hp_schema_open(dbpath, &db, errbuf, sizeof errbuf), 0);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM sessions"), 2);
  ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
}
END_TEST

START_TEST(reopen_restores_missing_views) {
  /* A database of this version written before a view was added gets the view. */
  sqlite3 *db = reopen_after("DROP VIEW timeline; DROP VIEW sessions;");
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM timeline"), 0);
  ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
}
END_TEST

START_TEST(reopen_adds_the_aggregates_to_a_version_2_database_without_them) {
  /* Written before the aggregates were added within version 2: not damaged for that. */
  sqlite3 *db = reopen_after("DROP VIEW aggregated_sessions; DROP VIEW stack_buckets;"
                             " DROP VIEW stack_live; DROP VIEW size_classes;"
                             " DROP TABLE agg_session; DROP TABLE agg_stack; DROP TABLE agg_size;");
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM aggregated_sessions"), 0);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM stack_buckets"), 0);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM size_classes"), 0);
  ck_assert_int_eq(hp_test_db_int(db, "PRAGMA user_version"), HP_SCHEMA_VERSION);
  ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
}
END_TEST

START_TEST(open_while_another_connection_holds_it) {
  /* The daemon may be restarted while a reader is looking at the file. */
  sqlite3 *db = NULL, *db2 = NULL, *reader = NULL;
  ck_assert_int_eq(hp_schema_open(dbpath, &db, errbuf, sizeof errbuf), 0);
  exec_ok(db, insert_session);
  ck_assert_int_eq(sqlite3_open_v2(dbpath, &reader, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
  exec_ok(reader, "BEGIN");
  ck_assert_int_eq(hp_test_db_int(reader, "SELECT count(*) FROM sessions"), 1);
  int rc = hp_schema_open(dbpath, &db2, errbuf, sizeof errbuf);
  ck_assert_msg(rc == 0, "rc %d: %s", rc, errbuf);
  exec_ok(db2, insert_session);
  ck_assert_int_eq(hp_test_db_int(reader, "SELECT count(*) FROM sessions"), 1); /* snapshot */
  exec_ok(reader, "COMMIT");
  ck_assert_int_eq(hp_test_db_int(reader, "SELECT count(*) FROM sessions"), 2);
  sqlite3_close(reader);
  sqlite3_close(db2);
  sqlite3_close(db);
}
END_TEST

START_TEST(new_databases_get_the_embedded_schema) {
  sqlite3 *db = NULL;
  ck_assert_int_eq(hp_schema_open(dbpath, &db, errbuf, sizeof errbuf), 0);
  ck_assert_int_eq(hp_test_db_int(db, "PRAGMA application_id"), HP_SCHEMA_APPLICATION_ID);
  ck_assert_int_eq(hp_test_db_int(db, "PRAGMA user_version"), HP_SCHEMA_VERSION);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM sqlite_schema WHERE type = 'view'"
                                      " AND name = 'allocations'"), 1);
  ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
}
END_TEST

START_TEST(new_databases_get_16k_pages_existing_ones_keep_theirs) {
  sqlite3 *db = NULL;
  ck_assert_int_eq(hp_schema_open(dbpath, &db, errbuf, sizeof errbuf), 0);
  ck_assert_int_eq(hp_test_db_int(db, "PRAGMA page_size"), 16384);
  ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);

  /* A heapprof database made with 4 KiB pages is appended to as it is. */
  char other[600];
  snprintf(other, sizeof other, "%s/old.sqlite", tmpdir);
  db = hp_test_db_open(other);
  exec_ok(db, "PRAGMA page_size=4096");
  exec_ok(db, hp_schema_sql_text);
  ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
  ck_assert_int_eq(hp_schema_open(other, &db, errbuf, sizeof errbuf), 0);
  ck_assert_int_eq(hp_test_db_int(db, "PRAGMA page_size"), 4096);
  exec_ok(db, insert_session);
  ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
}
END_TEST

START_TEST(read_indexes_are_counted_and_not_created_by_open) {
  sqlite3 *db = NULL;
  int present = -1, total = -1;
  ck_assert_int_eq(hp_schema_open(dbpath, &db, errbuf, sizeof errbuf), 0);
  /* Opening never builds them: they would slow ingestion down. */
  ck_assert_int_eq(hp_schema_index_count(db, &present, &total), 0);
  ck_assert_int_eq(present, 0);
  ck_assert_int_eq(total, 2);
  ck_assert_ptr_nonnull(strstr(hp_schema_index_sql(), "alloc (session_id, freed_ns)"));
  exec_ok(db, "CREATE INDEX alloc_by_session_freed ON alloc (session_id, freed_ns)");
  ck_assert_int_eq(hp_schema_index_count(db, &present, &total), 0);
  ck_assert_int_eq(present, 1);
  exec_ok(db, hp_schema_index_sql());
  exec_ok(db, hp_schema_index_sql());   /* again: IF NOT EXISTS */
  ck_assert_int_eq(hp_schema_index_count(db, &present, &total), 0);
  ck_assert_int_eq(present, 2);
  ck_assert_int_eq(total, 2);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM sqlite_schema WHERE type = 'index'"
                                      " AND name = 'alloc_by_session_stack'"), 1);
  ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
  /* An indexed database is still a heapprof database of this version. */
  ck_assert_int_eq(hp_schema_open(dbpath, &db, errbuf, sizeof errbuf), 0);
  ck_assert_int_eq(hp_schema_index_count(db, &present, &total), 0);
  ck_assert_int_eq(present, 2);
  ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
}
END_TEST

START_TEST(stale_running_sessions_end_at_their_last_event) {
  sqlite3 *db = NULL;
  long long n = -1;
  ck_assert_int_eq(hp_schema_open(dbpath, &db, errbuf, sizeof errbuf), 0);
  exec_ok(db, insert_session);   /* 1: running, allocations, the last one freed latest */
  exec_ok(db, insert_session);   /* 2: running, no allocations */
  exec_ok(db, insert_session);   /* 3: exited: untouched */
  exec_ok(db, insert_session);   /* 4: running, last allocation after the last free */
  exec_ok(db, "UPDATE session SET status = 'exited', ended_ns = 1500 WHERE id = 3");
  exec_ok(db, "INSERT INTO alloc (session_id, ts_ns, thread_id, domain, address, size,"
              " est_bytes, stack_id, freed_ns) VALUES"
              " (1, 2000, 1, 1, 16, 8, 8, NULL, 9000), (1, 5000, 1, 1, 32, 8, 8, NULL, NULL),"
              " (3, 7000, 1, 1, 16, 8, 8, NULL, 8000),"
              " (4, 3000, 1, 1, 16, 8, 8, NULL, 4000), (4, 6000, 1, 1, 32, 8, 8, NULL, NULL)");
  ck_assert_int_eq(hp_schema_end_stale_sessions(db, &n), 0);
  ck_assert_int_eq(n, 3);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM session WHERE status = 'running'"), 0);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT ended_ns FROM session WHERE id = 1"), 9000);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT ended_ns FROM session WHERE id = 2"), 1000);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT ended_ns FROM session WHERE id = 3"), 1500);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT ended_ns FROM session WHERE id = 4"), 6000);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM session WHERE status = 'disconnected'"),
                   3);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT status = 'exited' FROM session WHERE id = 3"), 1);
  ck_assert_int_eq(hp_schema_end_stale_sessions(db, &n), 0);   /* nothing left to end */
  ck_assert_int_eq(n, 0);
  ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
}
END_TEST

/* ------------------------------------------------------------------ migration */

/* Two sessions, a frame, a stack, allocations, a timeline point and a sampling change:
 * a bit of every table a version 1 heapprofd wrote. */
static const char v1_data[] =
    "INSERT INTO session (id, pid, ppid, argv, executable, python_version, started_ns,"
    " ended_ns, sample_interval_bytes, sample_buckets, max_stack_depth, status, error,"
    " events_received, events_dropped) VALUES"
    " (1, 10, 1, '[\"a.py\"]', 'py', '3.11.2', 1000, 5000, 0, '[[128, 0.5]]', 64,"
    "  'protocol_error', 'bad frame', 7, 2),"
    " (3, 11, 1, '[\"b.py\"]', 'py', '3.11.2', 2000, NULL, 4096, NULL, 128, 'running',"
    "  NULL, 0, 0);"
    "INSERT INTO frame (id, function, filename, lineno) VALUES (5, 'f', 'a.py', 3);"
    "INSERT INTO stack (id, hash, depth, truncated) VALUES (9, 77, 1, 0);"
    "INSERT INTO stack_frame (stack_id, depth, frame_id) VALUES (9, 0, 5);"
    "INSERT INTO alloc (id, session_id, ts_ns, thread_id, domain, address, size, est_bytes,"
    " stack_id, freed_ns) VALUES (1, 1, 1500, 4, 2, 4096, 32, 512, 9, 2500),"
    " (2, 1, 1600, 4, 0, 8192, 64, 64, NULL, NULL);"
    "INSERT INTO timeline_point VALUES (1, 1000, 576, 17, 64);"
    "INSERT INTO sampling_change (session_id, ts_ns, sample_interval_bytes)"
    " VALUES (3, 2500, 8192);";

/* The version 1 data, read through the views every version has. */
static void assert_v1_data(sqlite3 *db) {
  char *got = NULL;
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM sessions"), 2);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT events_dropped * 10 + events_received"
                                      " FROM sessions WHERE session_id = 1"), 27);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM sessions WHERE session_id = 3"
                                      " AND status = 'running' AND ended_ns IS NULL"
                                      " AND sample_interval_bytes = 4096"), 1);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM session_settings WHERE"
                                      " session_id = 1 AND error = 'bad frame' AND"
                                      " sample_buckets = '[[128, 0.5]]' AND"
                                      " max_stack_depth = 64"), 1);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT sum(est_bytes) FROM allocations"
                                      " WHERE freed_ns IS NULL OR freed_ns > 0"), 576);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM allocations a JOIN stack_frames"
                                      " USING (stack_id) JOIN frames f USING (frame_id)"
                                      " WHERE f.function = 'f' AND a.domain = 'obj'"), 1);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT live_count FROM timeline"), 17);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT sample_interval_bytes FROM sampling_changes"
                                      " WHERE session_id = 3"), 8192);
  sqlite3_stmt *st = NULL;
  ck_assert_int_eq(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK);
  ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
  got = (char *)sqlite3_column_text(st, 0);
  ck_assert_str_eq(got, "ok");
  sqlite3_finalize(st);
}

START_TEST(migrates_a_version_1_database_keeping_its_data) {
  make_v1(v1_data);
  sqlite3 *db = NULL;
  int rc = hp_schema_open(dbpath, &db, errbuf, sizeof errbuf);
  ck_assert_msg(rc == 0, "rc %d: %s", rc, errbuf);
  ck_assert_int_eq(hp_test_db_int(db, "PRAGMA user_version"), HP_SCHEMA_VERSION);
  assert_v1_data(db);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM session_settings"
                                      " WHERE argv_omitted = 0"), 2);
  /* What version 2 adds works: the new status, thread names, markers, native. */
  exec_ok(db, "UPDATE session SET status = 'hooks_replaced' WHERE id = 3");
  exec_ok(db, "INSERT INTO thread_name VALUES (3, 4242, 'MainThread')");
  exec_ok(db, "INSERT INTO marker (session_id, ts_ns, label) VALUES (3, 2600, 'm')");
  exec_ok(db, "INSERT INTO alloc (session_id, ts_ns, thread_id, domain, address, size,"
              " est_bytes) VALUES (3, 2700, 4242, 3, 1, 2, 3)");
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM threads WHERE name = 'MainThread'"),
                   1);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT ts_ns FROM markers WHERE label = 'm'"), 2600);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM allocations WHERE"
                                      " domain = 'native'"), 1);
  /* New sessions continue after the highest id, as before. */
  exec_ok(db, insert_session);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT max(session_id) FROM sessions"), 4);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM sqlite_schema"
                                      " WHERE name = 'session_v1'"), 0);
  ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);

  /* And it opens again as a version 2 database. */
  db = NULL;
  ck_assert_int_eq(hp_schema_open(dbpath, &db, errbuf, sizeof errbuf), 0);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM sessions"), 3);
  ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
}
END_TEST

/* A version 1 database from before sampling_change was added within version 1. */
START_TEST(migrates_an_early_version_1_database) {
  make_v1("DROP VIEW sampling_changes; DROP TABLE sampling_change;"
          "INSERT INTO session (pid, ppid, argv, executable, python_version, started_ns,"
          " sample_interval_bytes, max_stack_depth, status) VALUES"
          " (1, 0, '[]', 'py', '3.11', 5, 1, 64, 'exited')");
  sqlite3 *db = NULL;
  int rc = hp_schema_open(dbpath, &db, errbuf, sizeof errbuf);
  ck_assert_msg(rc == 0, "rc %d: %s", rc, errbuf);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM sessions WHERE status = 'exited'"),
                   1);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM sampling_changes"), 0);
  ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
}
END_TEST

/* A user's own view over the session table survives the migration, naming the new one. */
START_TEST(migration_keeps_a_users_view_working) {
  make_v1("INSERT INTO session (pid, ppid, argv, executable, python_version, started_ns,"
          " sample_interval_bytes, max_stack_depth) VALUES (1, 0, '[]', 'py', '3.11', 5, 1, 64);"
          "CREATE VIEW my_pids AS SELECT pid FROM session;");
  sqlite3 *db = NULL;
  int rc = hp_schema_open(dbpath, &db, errbuf, sizeof errbuf);
  ck_assert_msg(rc == 0, "rc %d: %s", rc, errbuf);
  exec_ok(db, insert_session);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT sum(pid) FROM my_pids"), 43);
  ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
}
END_TEST

/* ------------------------------------------------------------------ refusals */

/* The file at dbpath before each refusal: `sql` run on a plain SQLite database
 * (make_foreign), on a fresh heapprof one (make_heapprof), or unused. */
static void make_text_4k(const char *sql) {
  (void)sql;
  char text[4096];
  for (size_t i = 0; i < sizeof text; i++)
    text[i] = (char)('a' + i % 26);
  write_file(dbpath, text, sizeof text);
}

static void make_short(const char *sql) {
  (void)sql;
  write_file(dbpath, "hello\n", 6);
}

static void make_sqlite_header_garbage(const char *sql) {
  (void)sql;
  unsigned char buf[8192];
  memset(buf, 0xA5, sizeof buf);
  memcpy(buf, "SQLite format 3", 16);
  write_file(dbpath, buf, sizeof buf);
}

static void make_foreign(const char *sql) { make_foreign_db(sql); }

static void make_heapprof(const char *sql) {
  sqlite3 *db = NULL;
  ck_assert_int_eq(hp_schema_open(dbpath, &db, errbuf, sizeof errbuf), 0);
  exec_ok(db, sql);
  ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
}


/* Each heapprof case goes back to a rollback journal so that nothing but the main file
 * remains after close. */
static const struct {
  const char *name;
  void (*make)(const char *sql);
  const char *sql;
  int want;
  const char *msg_part;
} refusal_cases[] = {
  { "non_sqlite_file",   make_text_4k, NULL, -HP_ESCHEMA,
    "not a heapprof database (not an SQLite file)" },
  { "short_file",        make_short, NULL, -HP_ESCHEMA, "not an SQLite file" },
  { "header_garbage",    make_sqlite_header_garbage, NULL, -HP_ESCHEMA, "not a heapprof database" },
  { "other_app_id",      make_foreign,
    "PRAGMA application_id = 305419896;"  /* 0x12345678 */
    "CREATE TABLE t (x); INSERT INTO t VALUES (1);",
    -HP_ESCHEMA, "not a heapprof database (application_id 0x12345678, expected 0x68707266); "
                 "refusing to touch it" },
  { "no_app_id",         make_foreign, "CREATE TABLE session (id INTEGER PRIMARY KEY);",
    -HP_ESCHEMA, "not a heapprof database (application_id 0x00000000, expected 0x68707266); "
                 "refusing to touch it" },
  { "newer_version",     make_heapprof,
    INSERT_SESSION "; PRAGMA user_version = 3; PRAGMA journal_mode = DELETE;",
    -HP_ENEWER, "written by a newer heapprof (schema version 3, this heapprof knows up to 2)" },
  { "older_version",     make_foreign, "PRAGMA application_id = 1752199782; CREATE TABLE t (x);",
    -HP_ESCHEMA, "unsupported schema version 0 (expected 1 to 2)" },
  { "damaged_version_1", make_v1,
    "DROP VIEW allocations; DROP TABLE alloc; PRAGMA journal_mode = DELETE;",
    -HP_ESCHEMA, "damaged heapprof database (table alloc is missing)" },
  { "missing_tables",    make_heapprof,
    "DROP VIEW allocations; DROP TABLE alloc; PRAGMA journal_mode = DELETE;",
    -HP_ESCHEMA, "damaged heapprof database (table alloc is missing)" },
};

/* _i indexes refusal_cases. */
START_TEST(refuses_and_leaves_the_file_untouched) {
  refusal_cases[_i].make(refusal_cases[_i].sql);
  assert_refused_untouched(refusal_cases[_i].name, refusal_cases[_i].want,
                           refusal_cases[_i].msg_part);
}
END_TEST

START_TEST(missing_directory_is_a_clear_error) {
  char path[700];
  snprintf(path, sizeof path, "%s/no/such/dir/prof.sqlite", tmpdir);
  sqlite3 *db = (sqlite3 *)0x1;
  int rc = hp_schema_open(path, &db, errbuf, sizeof errbuf);
  ck_assert_int_eq(rc, -ENOENT);
  ck_assert_ptr_null(db);
  ck_assert_msg(strstr(errbuf, path) == errbuf, "message does not start with the path: %s",
                errbuf);
  ck_assert_msg(strstr(errbuf, "directory") != NULL && strstr(errbuf, "does not exist") != NULL,
                "unclear message: %s", errbuf);
  char dir[700];
  snprintf(dir, sizeof dir, "%s/no", tmpdir);
  ck_assert(!exists(dir));
}
END_TEST

START_TEST(relative_paths_resolve_against_the_working_directory) {
  char cwd[1024];
  ck_assert_ptr_nonnull(getcwd(cwd, sizeof cwd));
  ck_assert_int_eq(chdir(tmpdir), 0);
  sqlite3 *db = NULL, *db_missing = (sqlite3 *)0x1;
  int rc = hp_schema_open("rel.sqlite", &db, errbuf, sizeof errbuf);
  int rc_missing = hp_schema_open("nodir/rel.sqlite", &db_missing, errbuf, sizeof errbuf);
  ck_assert_int_eq(chdir(cwd), 0);  /* before any assert can end the test */
  ck_assert_int_eq(rc, 0);
  ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
  ck_assert_int_eq(rc_missing, -ENOENT);
  ck_assert_ptr_null(db_missing);
  ck_assert_str_eq(errbuf, "nodir/rel.sqlite: cannot create the database: directory nodir "
                           "does not exist");
  char p[700];
  snprintf(p, sizeof p, "%s/rel.sqlite", tmpdir);
  ck_assert(exists(p));
}
END_TEST

START_TEST(directory_path_is_refused) {
  sqlite3 *db = NULL;
  int rc = hp_schema_open(tmpdir, &db, errbuf, sizeof errbuf);
  ck_assert_int_eq(rc, -EISDIR);
  ck_assert_ptr_null(db);
  ck_assert_ptr_nonnull(strstr(errbuf, "is a directory"));
}
END_TEST

START_TEST(bad_arguments_are_einval) {
  sqlite3 *db = NULL;
  ck_assert_int_eq(hp_schema_open(dbpath, NULL, errbuf, sizeof errbuf), -HP_EINVAL);
  ck_assert_int_eq(hp_schema_open("", &db, errbuf, sizeof errbuf), -HP_EINVAL);
  ck_assert_ptr_null(db);
  /* A missing error buffer is allowed. */
  ck_assert_int_eq(hp_schema_open(NULL, &db, NULL, 0), -HP_EINVAL);
  ck_assert(!exists(dbpath));
}
END_TEST

START_TEST(read_only_file_is_refused_for_writing) {
  sqlite3 *db = NULL;
  ck_assert_int_eq(hp_schema_open(dbpath, &db, errbuf, sizeof errbuf), 0);
  exec_ok(db, "PRAGMA journal_mode = DELETE;");
  ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
  ck_assert_int_eq(chmod(dbpath, 0444), 0);
  db = (sqlite3 *)0x1;
  int rc = hp_schema_open(dbpath, &db, errbuf, sizeof errbuf);
  ck_assert_int_eq(rc, -EACCES);
  ck_assert_ptr_null(db);
  ck_assert_ptr_nonnull(strstr(errbuf, "cannot open for writing"));
}
END_TEST

/* ------------------------------------------------------------------ path */

/* The database path is protected as the socket's is: heapprofd may
 * run as root in a directory others can write to. */

static void side_path(char *buf, size_t n, const char *suffix) {
  snprintf(buf, n, "%s%s", dbpath, suffix);
}

static void assert_refused_naming(int rc, const char *part) {
  ck_assert_msg(rc < 0, "accepted; message: %s", errbuf);
  ck_assert_msg(strstr(errbuf, part) != NULL, "message lacks '%s': %s", part, errbuf);
  ck_assert_msg(strstr(errbuf, dbpath) == errbuf, "message does not start with the path: %s",
                errbuf);
}

START_TEST(refuses_a_symlink_at_the_database_path) {
  char target[600];
  snprintf(target, sizeof target, "%s/elsewhere.sqlite", tmpdir);
  ck_assert_int_eq(symlink(target, dbpath), 0);   /* dangling: where root would create */
  sqlite3 *db = (sqlite3 *)0x1;
  assert_refused_naming(hp_schema_open(dbpath, &db, errbuf, sizeof errbuf),
                        "is a symbolic link");
  ck_assert_ptr_null(db);
  ck_assert(!exists(target));
  /* Also when it points at a good heapprof database. */
  ck_assert_int_eq(hp_schema_open(target, &db, errbuf, sizeof errbuf), 0);
  ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
  assert_refused_naming(hp_schema_open(dbpath, &db, errbuf, sizeof errbuf),
                        "is a symbolic link");
}
END_TEST

START_TEST(refuses_planted_side_files) {
  static const char *const suffixes[] = {"-wal", "-shm", "-journal"};
  for (size_t i = 0; i < 3; i++) {
    char side[600], target[600];
    side_path(side, sizeof side, suffixes[i]);
    snprintf(target, sizeof target, "%s/target%zu", tmpdir, i);
    ck_assert_int_eq(symlink(target, side), 0);
    sqlite3 *db = (sqlite3 *)0x1;
    int rc = hp_schema_open(dbpath, &db, errbuf, sizeof errbuf);
    assert_refused_naming(rc, suffixes[i]);
    ck_assert_ptr_nonnull(strstr(errbuf, "is a symbolic link"));
    ck_assert(!exists(target));
    ck_assert(!exists(dbpath));
    ck_assert_int_eq(unlink(side), 0);
  }
}
END_TEST

/* Run only as root, who can make a file another user's. */
START_TEST(refuses_files_of_another_user) {
  const uid_t other = 65534;
  sqlite3 *db = NULL;
  ck_assert_int_eq(hp_schema_open(dbpath, &db, errbuf, sizeof errbuf), 0);
  exec_ok(db, "PRAGMA journal_mode = DELETE;");
  ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
  ck_assert_int_eq(chown(dbpath, other, other), 0);
  assert_refused_naming(hp_schema_open(dbpath, &db, errbuf, sizeof errbuf),
                        "belongs to uid 65534");
  ck_assert_int_eq(chown(dbpath, geteuid(), getegid()), 0);
  char shm[600];
  side_path(shm, sizeof shm, "-shm");
  write_file(shm, "", 0);
  ck_assert_int_eq(chown(shm, other, other), 0);
  assert_refused_naming(hp_schema_open(dbpath, &db, errbuf, sizeof errbuf), "-shm");
  ck_assert_ptr_nonnull(strstr(errbuf, "belongs to uid 65534"));
}
END_TEST

static unsigned mode_of(const char *path) {
  struct stat st;
  ck_assert_int_eq(stat(path, &st), 0);
  return (unsigned)(st.st_mode & 0777);
}

/* Whatever the umask, the database and its WAL files are the owner's alone. */
START_TEST(creates_the_database_private) {
  mode_t old = umask(0);
  sqlite3 *db = NULL;
  int rc = hp_schema_open(dbpath, &db, errbuf, sizeof errbuf);
  umask(old);
  ck_assert_msg(rc == 0, "%s", errbuf);
  exec_ok(db, insert_session);
  char wal[600], shm[600];
  side_path(wal, sizeof wal, "-wal");
  side_path(shm, sizeof shm, "-shm");
  ck_assert_uint_eq(mode_of(dbpath), 0600);
  ck_assert_uint_eq(mode_of(wal), 0600);
  ck_assert_uint_eq(mode_of(shm), 0600);
  ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
}
END_TEST

/* An empty file anyone may write, planted before heapprofd starts, is adopted as a new
 * database only once nobody else can write it; an existing database of ours that others
 * may write loses their write permission. */
START_TEST(adopted_files_lose_other_users_write_permission) {
  write_file(dbpath, "", 0);
  ck_assert_int_eq(chmod(dbpath, 0666), 0);
  sqlite3 *db = NULL;
  int rc = hp_schema_open(dbpath, &db, errbuf, sizeof errbuf);
  ck_assert_msg(rc == 0, "%s", errbuf);
  exec_ok(db, insert_session);
  char wal[600];
  side_path(wal, sizeof wal, "-wal");
  ck_assert_uint_eq(mode_of(dbpath), 0600);
  ck_assert_uint_eq(mode_of(wal), 0600);
  ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);

  ck_assert_int_eq(chmod(dbpath, 0664), 0);
  ck_assert_int_eq(hp_schema_open(dbpath, &db, errbuf, sizeof errbuf), 0);
  ck_assert_uint_eq(mode_of(dbpath), 0644);
  ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
}
END_TEST

START_TEST(warns_about_a_directory_others_can_write) {
  char warn[512];
  ck_assert_int_eq(hp_schema_path_warning(dbpath, warn, sizeof warn), 0);
  ck_assert_int_eq(chmod(tmpdir, 01777), 0);
  ck_assert_int_eq(hp_schema_path_warning(dbpath, warn, sizeof warn), 1);
  ck_assert_msg(strstr(warn, tmpdir) != NULL && strstr(warn, "writable by other users") &&
                strstr(warn, "1777"), "%s", warn);
  ck_assert_int_eq(chmod(tmpdir, 0700), 0);
}
END_TEST

/* A newer heapprof's database and another application's, both in WAL mode and closed:
 * refusing them creates no -wal or -shm beside them. */
START_TEST(refusing_a_wal_database_leaves_no_side_files) {
  for (int foreign = 0; foreign < 2; foreign++) {
    remove_db_files();
    if (foreign) {
      make_foreign_db("PRAGMA application_id = 305419896; PRAGMA journal_mode = WAL;"
                      " CREATE TABLE t (x); INSERT INTO t VALUES (1);");
    } else {
      make_heapprof(INSERT_SESSION "; PRAGMA user_version = 3;");
    }
    ck_assert(!side_file_exists("-wal"));
    ck_assert(!side_file_exists("-shm"));
    sqlite3 *db = (sqlite3 *)0x1;
    int rc = hp_schema_open(dbpath, &db, errbuf, sizeof errbuf);
    ck_assert_int_eq(rc, foreign ? -HP_ESCHEMA : -HP_ENEWER);
    ck_assert_msg(!side_file_exists("-wal"), "%s: a -wal file was left", errbuf);
    ck_assert_msg(!side_file_exists("-shm"), "%s: a -shm file was left", errbuf);
  }
}
END_TEST

/* Another application's WAL database in use (its -wal holds data not checkpointed yet):
 * refused without a byte of its -wal or -shm changing. */
START_TEST(refusing_a_database_in_use_leaves_its_side_files_alone) {
  sqlite3 *app = hp_test_db_open(dbpath);
  exec_ok(app, "PRAGMA application_id = 305419896; PRAGMA journal_mode = WAL;"
               " PRAGMA wal_autocheckpoint = 0; CREATE TABLE t (x); INSERT INTO t VALUES (1);");
  char wal[600], shm[600];
  side_path(wal, sizeof wal, "-wal");
  side_path(shm, sizeof shm, "-shm");
  size_t wal_len, shm_len;
  unsigned char *wal_before = slurp(wal, &wal_len), *shm_before = slurp(shm, &shm_len);
  struct stat wst, sst, wst2, sst2;
  ck_assert_int_eq(stat(wal, &wst), 0);
  ck_assert_int_eq(stat(shm, &sst), 0);
  sqlite3 *db = (sqlite3 *)0x1;
  ck_assert_int_eq(hp_schema_open(dbpath, &db, errbuf, sizeof errbuf), -HP_ESCHEMA);
  ck_assert_ptr_nonnull(strstr(errbuf, "application_id 0x12345678"));
  size_t n;
  unsigned char *wal_after = slurp(wal, &n);
  ck_assert_uint_eq(n, wal_len);
  ck_assert_mem_eq(wal_after, wal_before, n);
  unsigned char *shm_after = slurp(shm, &n);
  ck_assert_uint_eq(n, shm_len);
  ck_assert_mem_eq(shm_after, shm_before, n);
  ck_assert_int_eq(stat(wal, &wst2), 0);
  ck_assert_int_eq(stat(shm, &sst2), 0);
  ck_assert(wst.st_mtim.tv_sec == wst2.st_mtim.tv_sec &&
            wst.st_mtim.tv_nsec == wst2.st_mtim.tv_nsec);
  ck_assert(sst.st_mtim.tv_sec == sst2.st_mtim.tv_sec &&
            sst.st_mtim.tv_nsec == sst2.st_mtim.tv_nsec);
  free(wal_before);
  free(shm_before);
  free(wal_after);
  free(shm_after);
  ck_assert_int_eq(sqlite3_close(app), SQLITE_OK);
}
END_TEST

/* ------------------------------------------------------------------ oom */

/* SQLite's allocator wrapped to fail the fail_at-th allocation (SQLite's malloc.test
 * idea): every early exit of hp_schema_open must close what it opened (ASan checks the
 * leaks) and report an error, and a refused file must stay untouched even then. */
static sqlite3_mem_methods real_mem;
static long alloc_seen, fail_at = -1, failures_injected;

static int should_fail(void) {
  if (fail_at < 0 || alloc_seen++ != fail_at)
    return 0;
  failures_injected++;
  return 1;
}
static void *oom_malloc(int n) { return should_fail() ? NULL : real_mem.xMalloc(n); }
static void *oom_realloc(void *p, int n) {
  return should_fail() ? NULL : real_mem.xRealloc(p, n);
}

static void install_oom_allocator(void) {
  static int installed;  /* with CK_FORK=no the tests share one process */
  if (installed)
    return;
  installed = 1;
  ck_assert_int_eq(sqlite3_shutdown(), SQLITE_OK);
  ck_assert_int_eq(sqlite3_config(SQLITE_CONFIG_GETMALLOC, &real_mem), SQLITE_OK);
  sqlite3_mem_methods m = real_mem;
  m.xMalloc = oom_malloc;
  m.xRealloc = oom_realloc;
  ck_assert_int_eq(sqlite3_config(SQLITE_CONFIG_MALLOC, &m), SQLITE_OK);
  ck_assert_int_eq(sqlite3_initialize(), SQLITE_OK);
}


/* One hp_schema_open of dbpath with the point-th allocation failing. */
static int open_failing_at(long point, sqlite3 **db) {
  alloc_seen = 0;
  failures_injected = 0;
  fail_at = point;
  *db = (sqlite3 *)0x1;
  int rc = hp_schema_open(dbpath, db, errbuf, sizeof errbuf);
  fail_at = -1;
  return rc;
}

/* The number of allocation failure points tried; more than one open makes in total. */
#define OOM_MAX_POINTS 20000

START_TEST(create_survives_every_allocation_failure) {
  install_oom_allocator();
  long errors = 0, point;
  for (point = 0; point < OOM_MAX_POINTS; point++) {
    remove_db_files();
    sqlite3 *db;
    int rc = open_failing_at(point, &db);
    if (rc == 0) {
      ck_assert_ptr_nonnull(db);
      assert_is_new_heapprof_db(db);
      ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
    } else {
      ck_assert_msg(rc < 0, "rc %d", rc);
      ck_assert_ptr_null(db);
      ck_assert_msg(strstr(errbuf, dbpath) == errbuf, "message: %s", errbuf);
      errors++;
    }
    if (failures_injected == 0)
      break;  /* the open finished before reaching this failure point: all covered */
  }
  ck_assert_msg(point < OOM_MAX_POINTS, "hp_schema_open made over %d allocations",
                OOM_MAX_POINTS);
  ck_assert_int_gt(errors, 0);
}
END_TEST

START_TEST(refusal_survives_every_allocation_failure) {
  /* No application_id: only SQLite can tell it is not an empty database to claim (one
   * with another application's id is refused from its header, before SQLite). */
  make_foreign_db("CREATE TABLE t (x);");
  size_t before_len, after_len;
  unsigned char *before = slurp(dbpath, &before_len);
  install_oom_allocator();
  long point;
  for (point = 0; point < OOM_MAX_POINTS; point++) {
    sqlite3 *db;
    int rc = open_failing_at(point, &db);
    ck_assert_msg(rc < 0, "point %ld: rc %d", point, rc);
    ck_assert_ptr_null(db);
    unsigned char *after = slurp(dbpath, &after_len);
    ck_assert_uint_eq(after_len, before_len);
    ck_assert_mem_eq(after, before, before_len);
    free(after);
    ck_assert(!side_file_exists("-wal"));
    if (failures_injected == 0) {
      ck_assert_int_eq(rc, -HP_ESCHEMA);
      break;
    }
  }
  ck_assert_msg(point < OOM_MAX_POINTS, "too many allocations");
  ck_assert_int_gt(point, 0);
  free(before);
}
END_TEST

/* A version 1 database opened with an allocation failure at every MIGRATION_STRIDE-th
 * point in turn: each open either migrates it whole or leaves it a version 1 database
 * with all its data (the migration is one transaction; a failure rolls all of it back).
 * An open that fails after the commit (reading the version back) leaves it migrated
 * whole. The stride keeps the sweep within a minute under ASan: a migrating open makes
 * some 14000 allocations, and every statement of the migration makes dozens, so each
 * still fails at several points. */
#define MIGRATION_STRIDE 8
START_TEST(migration_survives_every_allocation_failure) {
  make_v1(v1_data);
  size_t v1_len;
  unsigned char *v1_bytes = slurp(dbpath, &v1_len);
  install_oom_allocator();
  long point, migrated = 0, refused = 0;
  for (point = 0; point < OOM_MAX_POINTS; point += MIGRATION_STRIDE) {
    remove_db_files();
    write_file(dbpath, v1_bytes, v1_len);
    sqlite3 *db;
    int rc = open_failing_at(point, &db);
    if (rc == 0) {
      migrated++;
      ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
    } else {
      refused++;
      ck_assert_ptr_null(db);
    }
    db = hp_test_db_open(dbpath);
    long long version = hp_test_db_int(db, "PRAGMA user_version");
    ck_assert_msg(version == HP_SCHEMA_VERSION ||
                  (rc != 0 && version == HP_SCHEMA_OLDEST_VERSION),
                  "point %ld: rc %d (%s): version %lld", point, rc, errbuf, version);
    assert_v1_data(db);
    if (version == HP_SCHEMA_VERSION)
      ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM sqlite_schema WHERE name IN"
                                          " ('session_v1', 'thread_name', 'marker')"), 2);
    ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
    if (failures_injected == 0)
      break;
  }
  ck_assert_msg(point < OOM_MAX_POINTS, "too many allocations");
  ck_assert_int_gt(refused, 0);
  ck_assert_int_gt(migrated, 0);
  free(v1_bytes);
}
END_TEST

Suite *schema_suite(void) {
  Suite *s = suite_create("schema");
  TCase *core = tcase_create("core");
  tcase_add_checked_fixture(core, setup, teardown);
  tcase_add_test(core, open_creates_missing_file_with_schema_and_wal);
  tcase_add_test(core, open_treats_empty_file_as_new);
  tcase_add_test(core, open_claims_empty_sqlite_database);
  tcase_add_test(core, reopen_keeps_data_and_appends_sessions);
  tcase_add_test(core, reopen_restores_missing_views);
  tcase_add_test(core, reopen_adds_the_aggregates_to_a_version_2_database_without_them);
  tcase_add_test(core, open_while_another_connection_holds_it);
  tcase_add_test(core, new_databases_get_the_embedded_schema);
  tcase_add_test(core, read_indexes_are_counted_and_not_created_by_open);
  tcase_add_test(core, new_databases_get_16k_pages_existing_ones_keep_theirs);
  tcase_add_test(core, stale_running_sessions_end_at_their_last_event);
  tcase_add_test(core, migrates_a_version_1_database_keeping_its_data);
  tcase_add_test(core, migrates_an_early_version_1_database);
  tcase_add_test(core, migration_keeps_a_users_view_working);
  suite_add_tcase(s, core);

  TCase *refuse = tcase_create("refuse");
  tcase_add_checked_fixture(refuse, setup, teardown);
  tcase_add_loop_test(refuse, refuses_and_leaves_the_file_untouched, 0,
                      (int)(sizeof refusal_cases / sizeof refusal_cases[0]));
  tcase_add_test(refuse, missing_directory_is_a_clear_error);
  tcase_add_test(refuse, relative_paths_resolve_against_the_working_directory);
  tcase_add_test(refuse, directory_path_is_refused);
  tcase_add_test(refuse, bad_arguments_are_einval);
  /* Root writes through mode bits, so the read-only case cannot be produced as root: it
   * is not registered then (and says so) rather than passing without checking anything. */
  if (geteuid() != 0)
    tcase_add_test(refuse, read_only_file_is_refused_for_writing);
  else
    fprintf(stderr, "check_schema: running as root: read_only_file_is_refused_for_writing "
                    "not run\n");
  suite_add_tcase(s, refuse);

  TCase *path = tcase_create("path");
  tcase_add_checked_fixture(path, setup, teardown);
  tcase_add_test(path, refuses_a_symlink_at_the_database_path);
  tcase_add_test(path, refuses_planted_side_files);
  /* Only root can give a file to another user; as anyone else the case is not run
   * (and says so) rather than passing without checking anything. */
  if (geteuid() == 0)
    tcase_add_test(path, refuses_files_of_another_user);
  else
    fprintf(stderr, "check_schema: not root: refuses_files_of_another_user not run\n");
  tcase_add_test(path, creates_the_database_private);
  tcase_add_test(path, adopted_files_lose_other_users_write_permission);
  tcase_add_test(path, warns_about_a_directory_others_can_write);
  tcase_add_test(path, refusing_a_wal_database_leaves_no_side_files);
  tcase_add_test(path, refusing_a_database_in_use_leaves_its_side_files_alone);
  suite_add_tcase(s, path);

  TCase *oomc = tcase_create("oom");
  tcase_add_checked_fixture(oomc, setup_fast, teardown);
  tcase_set_timeout(oomc, 60);
  tcase_add_test(oomc, create_survives_every_allocation_failure);
  tcase_add_test(oomc, refusal_survives_every_allocation_failure);
  tcase_add_test(oomc, migration_survives_every_allocation_failure);
  suite_add_tcase(s, oomc);
  return s;
}

#ifndef HP_CHECK_NO_MAIN
int main(void) {
  SRunner *sr = srunner_create(schema_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
#endif
