/* check_store_adapt.c — the storage thread's side of adaptive sampling: a
 * COUNTERS whose interval differs from the session's current one becomes one
 * sampling_change row, at the agent's time turned into wall-clock time; repeats and
 * size-bucket sessions store none; a failed allocation refuses the message and stores
 * nothing.
 *
 * Its own file beside check_store.c (another area's) so that the two can change
 * independently; it drives the same module, hp_store. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hp_error.h"
#include "hp_proto.h"
#include "hp_schema.h"
#include "hp_store.h"

#include "check_db_util.h"

static char tmpdir[256], dbpath[512];

static void setup(void) {
  hp_test_tmpdir_setup(tmpdir, sizeof tmpdir, "/tmp", "hp-check-store-adapt");
  snprintf(dbpath, sizeof dbpath, "%s/t.sqlite", tmpdir);
}
static void teardown(void) { hp_test_tmpdir_teardown(tmpdir); }

static hp_store *start(void) {
  sqlite3 *db;
  char err[256];
  ck_assert_msg(hp_schema_open(dbpath, &db, err, sizeof err) == 0, "%s", err);
  hp_store_config cfg = {.db = db, .timeline_interval_ns = 100000000};
  hp_store *s;
  ck_assert_int_eq(hp_store_start(&s, &cfg), 0);
  return s;
}

#define WALL0 1700000000000000000LL
#define MONO0 5000000000ULL
#define MS(ms) (MONO0 + (uint64_t)(ms) * 1000000ULL)

static hp_str S(const char *s) { return (hp_str){s, (uint32_t)strlen(s)}; }
static const hp_str argv_[] = {{"python", 6}};
static const hp_bucket buckets_[] = {{128, 0.5}, {UINT64_MAX, 1.0}};

static hp_hello hello(int64_t pid, uint64_t interval) {
  hp_hello h = {.version = HP_PROTO_VERSION, .pid = pid, .ppid = 1, .argc = 1, .argv = argv_,
                .executable = S("/usr/bin/python3"), .python_version = S("3.11.2"),
                .start_wall_ns = WALL0, .start_mono_ns = MONO0,
                .sample_interval_bytes = interval, .max_stack_depth = 64};
  if (interval == 0) {
    h.nbuckets = 2;
    h.buckets = buckets_;
  }
  return h;
}

static int counters_dropped(hp_store *s, hp_store_session *ss, uint64_t ms, uint64_t interval,
                            uint64_t dropped) {
  hp_counters c = {.ts_ns = MS(ms), .events_dropped = dropped, .sample_interval_bytes = interval};
  return hp_store_counters(s, ss, &c);
}

static int counters(hp_store *s, hp_store_session *ss, uint64_t ms, uint64_t interval) {
  return counters_dropped(s, ss, ms, interval, 0);
}

START_TEST(store_keeps_each_change_once_at_its_wall_time) {
  hp_store *s = start();
  hp_hello h = hello(1, 1);
  hp_store_session *ss = hp_store_session_start(s, &h, 1);
  ck_assert_ptr_nonnull(ss);
  ck_assert_int_eq(counters(s, ss, 1, 1), 0);    /* HELLO's value again: no row */
  ck_assert_int_eq(counters(s, ss, 20, 8), 0);
  ck_assert_int_eq(counters(s, ss, 30, 8), 0);
  ck_assert_int_eq(counters_dropped(s, ss, 35, 8, 5), 0);  /* the same interval: no row */
  ck_assert_int_eq(counters(s, ss, 40, 64), 0);
  hp_goodbye g = {MS(50), 5, HP_END_STOPPED};
  ck_assert_int_eq(hp_store_goodbye(s, ss, &g), 0);
  hp_store_session_end(s, ss, HP_SESSION_EXITED, NULL);
  ck_assert_int_eq(hp_store_stop(s), 0);

  sqlite3 *db = hp_test_db_open(dbpath);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM sampling_changes"), 2);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT ts_ns FROM sampling_changes WHERE change_no = 1"),
                   WALL0 + 20000000LL);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT previous_interval_bytes FROM sampling_changes"
                                      " WHERE change_no = 1"), 1);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT sample_interval_bytes FROM sampling_changes"
                                      " WHERE change_no = 1"), 8);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT ts_ns FROM sampling_changes WHERE change_no = 2"),
                   WALL0 + 40000000LL);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT previous_interval_bytes FROM sampling_changes"
                                      " WHERE change_no = 2"), 8);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT sample_interval_bytes FROM sampling_changes"
                                      " WHERE change_no = 2"), 64);
  /* The session keeps its starting interval; the counters still count. */
  ck_assert_int_eq(hp_test_db_int(db, "SELECT sample_interval_bytes FROM sessions"), 1);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT events_dropped FROM sessions"), 5);
  sqlite3_close(db);
}
END_TEST

START_TEST(store_never_adapts_size_bucket_sessions) {
  hp_store *s = start();
  hp_hello hb = hello(1, 0), hp = hello(2, 4096);
  hp_store_session *b = hp_store_session_start(s, &hb, 1);
  hp_store_session *p = hp_store_session_start(s, &hp, 2);
  ck_assert_ptr_nonnull(b);
  ck_assert_ptr_nonnull(p);
  ck_assert_int_eq(counters(s, b, 10, 4096), 0);   /* buckets -> Poisson: refused */
  ck_assert_int_eq(counters(s, p, 10, 0), 0);      /* Poisson -> buckets: refused */
  ck_assert_int_eq(counters(s, p, 20, 8192), 0);   /* still 4096 before: a change */
  hp_store_session_end(s, b, HP_SESSION_EXITED, NULL);
  hp_store_session_end(s, p, HP_SESSION_EXITED, NULL);
  ck_assert_int_eq(hp_store_stop(s), 0);

  sqlite3 *db = hp_test_db_open(dbpath);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM sampling_changes"
                                      " WHERE session_id = 1"), 0);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM sampling_changes"
                                      " WHERE session_id = 2"), 1);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT previous_interval_bytes FROM sampling_changes"
                                      " WHERE session_id = 2"), 4096);
  sqlite3_close(db);
}
END_TEST

/* The COUNTERS item is the only loop-side allocation of hp_store_counters: when it
 * fails the call says so and the change is not stored; the next one is. */
START_TEST(store_counters_out_of_memory_stores_nothing) {
  hp_store *s = start();
  hp_hello h = hello(1, 2);
  hp_store_session *ss = hp_store_session_start(s, &h, 1);
  ck_assert_ptr_nonnull(ss);
  hp_store_fail_alloc_after(1);
  ck_assert_int_eq(counters(s, ss, 10, 4), -HP_ENOMEM);
  hp_store_fail_alloc_after(0);
  ck_assert_int_eq(counters(s, ss, 20, 16), 0);
  hp_store_session_end(s, ss, HP_SESSION_EXITED, NULL);
  ck_assert_int_eq(hp_store_stop(s), 0);

  sqlite3 *db = hp_test_db_open(dbpath);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM sampling_changes"), 1);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT previous_interval_bytes FROM sampling_changes"), 2);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT ts_ns FROM sampling_changes"), WALL0 + 20000000LL);
  sqlite3_close(db);
}
END_TEST

Suite *store_adapt_suite(void) {
  Suite *s = suite_create("store_adapt");
  TCase *core = tcase_create("core");
  tcase_add_checked_fixture(core, setup, teardown);
  tcase_set_timeout(core, 30);
  tcase_add_test(core, store_keeps_each_change_once_at_its_wall_time);
  tcase_add_test(core, store_never_adapts_size_bucket_sessions);
  suite_add_tcase(s, core);
  TCase *oom = tcase_create("oom");
  tcase_add_checked_fixture(oom, setup, teardown);
  tcase_set_timeout(oom, 30);
  tcase_add_test(oom, store_counters_out_of_memory_stores_nothing);
  suite_add_tcase(s, oom);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(store_adapt_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
