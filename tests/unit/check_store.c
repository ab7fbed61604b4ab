/* check_store.c — the storage thread against a real SQLite database: pairing frees
 * with sampled allocations (before and after their row is committed), frames and
 * stacks shared across sessions, session end states, the timeline's spike height,
 * and the queue's backpressure signal. */
#include <check.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "hp_error.h"
#include "hp_proto.h"
#include "hp_schema.h"
#include "hp_store.h"

#include "check_db_util.h"
#include "hp_fault_vfs.h"
#include "hp_utf8.h"

static char tmpdir[256], dbpath[512];

static void setup(void) {
  hp_test_tmpdir_setup(tmpdir, sizeof tmpdir, "/tmp", "hp-check-store");
  snprintf(dbpath, sizeof dbpath, "%s/t.sqlite", tmpdir);
}
static void teardown(void) { hp_test_tmpdir_teardown(tmpdir); }

static atomic_int resumed;
static void on_resume(void *ctx) { (void)ctx; atomic_fetch_add(&resumed, 1); }

static hp_store *start(uint32_t batch_rows, size_t high, int64_t interval_ns) {
  sqlite3 *db;
  char err[256];
  ck_assert_msg(hp_schema_open(dbpath, &db, err, sizeof err) == 0, "%s", err);
  hp_store_config cfg = {.db = db, .timeline_interval_ns = interval_ns,
                         .batch_rows = batch_rows, .queue_high = high,
                         .queue_low = high ? high / 2 : 0, .on_resume = on_resume};
  hp_store *s;
  ck_assert_int_eq(hp_store_start(&s, &cfg), 0);
  return s;
}

static const char *qs(sqlite3 *db, const char *sql, char *buf, size_t n) {
  sqlite3_stmt *st;
  ck_assert_int_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
  ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
  const unsigned char *t = sqlite3_column_text(st, 0);
  snprintf(buf, n, "%s", t ? (const char *)t : "(null)");
  sqlite3_finalize(st);
  return buf;
}

#define WALL0 1700000000000000000ULL
#define MONO0 5000000000ULL

static hp_str S(const char *s) { return (hp_str){s, (uint32_t)strlen(s)}; }
static const hp_str argv_[] = {{"python", 6}, {"say \"hi\"", 8}};

static hp_hello hello(int64_t pid) {
  return (hp_hello){.version = HP_PROTO_VERSION, .pid = pid, .ppid = 1, .argc = 2, .argv = argv_,
                    .executable = S("/usr/bin/python3"), .python_version = S("3.11.2"),
                    .start_wall_ns = WALL0, .start_mono_ns = MONO0, .sample_interval_bytes = 1,
                    .max_stack_depth = 64};
}

static hp_event alloc_ev(uint64_t ms, uint64_t addr, uint64_t size, uint32_t stack) {
  return (hp_event){.kind = HP_EV_ALLOC, .domain = HP_DOMAIN_OBJ, .stack_id = stack,
                    .ts_ns = MONO0 + ms * 1000000ULL, .thread_id = 7, .address = addr,
                    .size = size, .est_bytes = size};
}
static hp_event free_ev(uint64_t ms, uint64_t addr) {
  return (hp_event){.kind = HP_EV_FREE, .ts_ns = MONO0 + ms * 1000000ULL, .thread_id = 7,
                    .address = addr};
}

static hp_store_session *session_with_stack_at(hp_store *s, int64_t pid, uint64_t wall) {
  hp_hello h = hello(pid);
  h.start_wall_ns = wall;
  hp_store_session *ss = hp_store_session_start(s, &h, pid);
  ck_assert_ptr_nonnull(ss);
  /* Ids as conn passes them on (hp_conn.h): every session numbers its frames and stacks
   * from 1, and the rows must still be shared between sessions. */
  hp_frame_def a = {1, S("inner"), S("mod.py"), 10};
  hp_frame_def b = {2, S("<module>"), S("main.py"), 3};
  ck_assert_int_eq(hp_store_frame_def(s, ss, &a), 0);
  ck_assert_int_eq(hp_store_frame_def(s, ss, &b), 0);
  uint32_t ids[2] = {1, 2};
  hp_stack_def st = {.stack_id = 1, .truncated = 0, .depth = 2, .frame_ids = ids};
  ck_assert_int_eq(hp_store_stack_def(s, ss, &st), 0);
  return ss;
}

static hp_store_session *session_with_stack(hp_store *s, int64_t pid) {
  return session_with_stack_at(s, pid, WALL0);
}

/* The current wall time, rounded down to a 100 ms timeline interval: sessions that start
 * there are not closed early by the store's idle ticks, which follow the real clock. */
static uint64_t wall_now_interval(void) {
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  return ((uint64_t)now.tv_sec * 1000000000ULL + (uint64_t)now.tv_nsec) / 100000000ULL *
         100000000ULL;
}

START_TEST(store_pairs_frees_and_shares_frames_across_sessions) {
  /* batch_rows 2 forces rows out of `pending` and commits mid-stream, so frees are
   * paired both with pending rows and with rows already in the table. */
  hp_store *s = start(2, 0, 100000000);
  hp_store_session *a = session_with_stack(s, 1);
  hp_store_session *b = session_with_stack(s, 2);
  hp_event ev[] = {
    alloc_ev(1, 0x1000, 100, 1), alloc_ev(2, 0x2000, 50, 1), free_ev(3, 0x1000),
    alloc_ev(4, 0x3000, 30, HP_NO_STACK), alloc_ev(5, 0x4000, 10, 1), alloc_ev(6, 0x5000, 10, 1),
    free_ev(7, 0x2000), free_ev(8, 0xdead),
  };
  ck_assert_int_eq(hp_store_events(s, a, ev, 8), 0);
  hp_event evb[] = {alloc_ev(1, 0x1000, 100, 1), alloc_ev(2, 0x2000, 50, 1)};
  ck_assert_int_eq(hp_store_events(s, b, evb, 2), 0);
  hp_goodbye g = {MONO0 + 9000000ULL, 5, HP_END_STOPPED};
  ck_assert_int_eq(hp_store_goodbye(s, a, &g), 0);
  hp_store_session_end(s, a, HP_SESSION_EXITED, NULL);
  hp_store_session_end(s, b, HP_SESSION_PROTOCOL_ERROR, "stack id 9 was never defined");
  ck_assert_int_eq(hp_store_stop(s), 0);

  sqlite3 *db = hp_test_db_open(dbpath);
  char buf[256];
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM frames"), 2);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM stacks"), 1);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM stack_frames"), 2);
  ck_assert_str_eq(qs(db, "SELECT f.function FROM stack_frames s JOIN frames f USING (frame_id)"
                          " WHERE s.depth = 0", buf, sizeof buf), "inner");
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM allocations WHERE session_id = 1"), 5);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT freed_ns - ts_ns FROM allocations"
                                      " WHERE session_id = 1 AND address = 4096"), 2000000);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT freed_ns FROM allocations WHERE session_id = 1"
                                      " AND address = 8192"), (int64_t)WALL0 + 7000000);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM allocations WHERE freed_ns IS NULL"
                                      " AND session_id = 1"), 3);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM allocations"
                                      " WHERE stack_id IS NULL"), 1);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(DISTINCT stack_id) FROM allocations"), 1);
  ck_assert_str_eq(qs(db, "SELECT status FROM sessions WHERE session_id = 1", buf, sizeof buf),
                   "exited");
  ck_assert_int_eq(hp_test_db_int(db, "SELECT events_received FROM sessions"
                                      " WHERE session_id = 1"), 8);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT events_dropped FROM sessions"
                                      " WHERE session_id = 1"), 5);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT ended_ns FROM sessions WHERE session_id = 1"),
                   (int64_t)WALL0 + 9000000);
  ck_assert_str_eq(qs(db, "SELECT argv FROM sessions WHERE session_id = 1", buf, sizeof buf),
                   "[\"python\",\"say \\\"hi\\\"\"]");
  ck_assert_int_eq(hp_test_db_int(db, "SELECT json_valid(argv) FROM sessions"
                                      " WHERE session_id = 1"), 1);
  ck_assert_str_eq(qs(db, "SELECT status || ': ' || error FROM sessions"
                          " JOIN session_settings USING (session_id) WHERE session_id = 2",
                      buf, sizeof buf), "protocol_error: stack id 9 was never defined");
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM allocations WHERE session_id = 2"), 2);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT ended_ns IS NOT NULL FROM sessions"
                                      " WHERE session_id = 2"), 1);
  sqlite3_close(db);
}
END_TEST

/* A free that arrives after its allocation row was committed must update that row. */
START_TEST(store_pairs_free_with_committed_row) {
  sqlite3 *db;
  char err[256];
  ck_assert_msg(hp_schema_open(dbpath, &db, err, sizeof err) == 0, "%s", err);
  hp_store_config cfg = {.db = db, .timeline_interval_ns = 100000000, .commit_ms = 5};
  hp_store *s;
  ck_assert_int_eq(hp_store_start(&s, &cfg), 0);
  hp_store_session *a = session_with_stack(s, 1);
  hp_event al = alloc_ev(1, 0x1000, 100, 1);
  ck_assert_int_eq(hp_store_events(s, a, &al, 1), 0);
  sqlite3 *rd = hp_test_db_open(dbpath);
  struct timespec d = {0, 5000000};
  int64_t n = 0;
  for (int i = 0; i < 2000 && n == 0; i++) {
    nanosleep(&d, NULL);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(rd, "SELECT count(*) FROM alloc", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
      n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
  }
  ck_assert_int_eq(n, 1);  /* committed (and visible to readers) without further events */
  hp_event fr = free_ev(50, 0x1000);
  ck_assert_int_eq(hp_store_events(s, a, &fr, 1), 0);
  hp_store_session_end(s, a, HP_SESSION_EXITED, NULL);
  ck_assert_int_eq(hp_store_stop(s), 0);
  ck_assert_int_eq(hp_test_db_int(rd, "SELECT freed_ns - ts_ns FROM alloc"), 49000000);
  sqlite3_close(rd);
}
END_TEST

START_TEST(store_timeline_keeps_spike_height_and_drop) {
  hp_store *s = start(0, 0, 100000000);  /* 100 ms intervals */
  hp_store_session *a = session_with_stack(s, 1);
  /* WALL0 is a multiple of 100 ms, so ms offsets map onto intervals directly. */
  hp_event ev[] = {
    alloc_ev(10, 0x1000, 1000, 1),
    alloc_ev(20, 0x2000, 1000000, 1),   /* spike: 1 MB for 10 ms */
    free_ev(30, 0x2000),
    alloc_ev(350, 0x3000, 1, 1),        /* three intervals later */
  };
  ck_assert_int_eq(hp_store_events(s, a, ev, 4), 0);
  hp_store_session_end(s, a, HP_SESSION_DISCONNECTED, NULL);
  ck_assert_int_eq(hp_store_stop(s), 0);

  sqlite3 *db = hp_test_db_open(dbpath);
  char sql[256];
  snprintf(sql, sizeof sql, "SELECT live_bytes FROM timeline WHERE ts_ns = %llu",
           (unsigned long long)WALL0);
  ck_assert_int_eq(hp_test_db_int(db, sql), 1001000);
  snprintf(sql, sizeof sql, "SELECT live_count FROM timeline WHERE ts_ns = %llu",
           (unsigned long long)WALL0);
  ck_assert_int_eq(hp_test_db_int(db, sql), 2);
  snprintf(sql, sizeof sql, "SELECT live_bytes FROM timeline WHERE ts_ns = %llu",
           (unsigned long long)WALL0 + 100000000);
  ck_assert_int_eq(hp_test_db_int(db, sql), 1000);
  snprintf(sql, sizeof sql, "SELECT live_bytes FROM timeline WHERE ts_ns = %llu",
           (unsigned long long)WALL0 + 300000000);
  ck_assert_int_eq(hp_test_db_int(db, sql), 1001);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM timeline"), 3);
  ck_assert_str_eq(
    (const char *)(hp_test_db_int(db, "SELECT status = 'disconnected' FROM sessions") ? "y" : "n"),
    "y");
  sqlite3_close(db);
}
END_TEST

/* A session whose heap drops just before it ends: the timeline must not get a row
 * after ended_ns (the "drop" row of the next interval), and the level at the end must
 * still be recorded (the last row's end_bytes). The session starts at the current wall
 * time so that no idle tick or commit closes its interval before the end arrives. */
START_TEST(store_timeline_has_no_row_after_the_end) {
  hp_store *s = start(0, 0, 100000000);
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  int64_t wall = ((int64_t)now.tv_sec * 1000000000 + now.tv_nsec) / 100000000 * 100000000;
  hp_hello h = hello(1);
  h.start_wall_ns = (uint64_t)wall;
  hp_store_session *a = hp_store_session_start(s, &h, 1);
  ck_assert_ptr_nonnull(a);
  hp_event ev[] = {
    alloc_ev(10, 0x1000, 1000, HP_NO_STACK),
    alloc_ev(20, 0x2000, 1000000, HP_NO_STACK),
    free_ev(30, 0x2000),
  };
  ck_assert_int_eq(hp_store_events(s, a, ev, 3), 0);
  hp_goodbye g = {MONO0 + 50000000ULL, 0, HP_END_STOPPED};  /* ends in the spike's interval */
  ck_assert_int_eq(hp_store_goodbye(s, a, &g), 0);
  hp_store_session_end(s, a, HP_SESSION_EXITED, NULL);
  ck_assert_int_eq(hp_store_stop(s), 0);

  sqlite3 *db = hp_test_db_open(dbpath);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT ended_ns FROM sessions"
                                      " WHERE session_id = 1"), wall + 50000000);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM timeline t JOIN sessions s"
                                      " USING (session_id) WHERE t.ts_ns > s.ended_ns"), 0);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM timeline"), 1);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT live_bytes FROM timeline"), 1001000);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT end_bytes FROM timeline_detail WHERE session_id = 1"
                                      " ORDER BY ts_ns DESC LIMIT 1"), 1000);
  sqlite3_close(db);
}
END_TEST

START_TEST(store_signals_full_queue_then_resumes) {
  atomic_store(&resumed, 0);
  hp_store *s = start(0, 4096, 100000000);
  hp_store_session *a = session_with_stack(s, 1);
  hp_event ev[200];
  for (int i = 0; i < 200; i++)
    ev[i] = alloc_ev((uint64_t)i, 0x10000 + 16u * (uint64_t)i, 16, 1);
  /* Push until the store reports full; it cannot drain 12 KB of events instantly. */
  int full = 0;
  for (int i = 0; i < 1000 && !full; i++) {
    ck_assert_int_eq(hp_store_events(s, a, ev, 200), 0);
    full = hp_store_pause_if_full(s);
  }
  ck_assert_int_eq(full, 1);
  struct timespec d = {0, 5000000};
  for (int i = 0; i < 1000 && atomic_load(&resumed) == 0; i++)
    nanosleep(&d, NULL);
  ck_assert_int_eq(atomic_load(&resumed), 1);
  ck_assert_int_eq(hp_store_pause_if_full(s), 0);  /* drained below the mark */
  hp_store_session_end(s, a, HP_SESSION_EXITED, NULL);
  ck_assert_int_eq(hp_store_stop(s), 0);
}
END_TEST

/* Fail the n-th loop-side allocation, for every n that the session's calls reach:
 * each call must report the failure (NULL or -HP_ENOMEM) and leave nothing behind, and
 * whatever was accepted must still be stored. ASan builds check the "nothing behind". */
START_TEST(store_loop_side_oom_sweep) {
  int n = _i + 1;
  hp_store *s = start(0, 0, 100000000);
  hp_store_fail_alloc_after((unsigned)n);
  hp_hello h = hello(1);
  hp_store_session *ss = hp_store_session_start(s, &h, 1);
  int failures = 0;
  if (ss == NULL) {
    failures++;
  } else {
    hp_frame_def f = {1, S("f"), S("x.py"), 1};
    uint32_t ids[1] = {1};
    hp_stack_def st = {.stack_id = 1, .depth = 1, .frame_ids = ids};
    hp_event ev = alloc_ev(1, 0x10, 8, 1);
    hp_counters c = {.ts_ns = MONO0 + 2000000ULL, .events_dropped = 2,
                     .sample_interval_bytes = 1, .events_sent = 3};
    hp_goodbye g = {MONO0 + 5000000ULL, 0, HP_END_STOPPED};
    int rc[5] = {hp_store_frame_def(s, ss, &f), hp_store_stack_def(s, ss, &st),
                 hp_store_events(s, ss, &ev, 1), hp_store_counters(s, ss, &c),
                 hp_store_goodbye(s, ss, &g)};
    for (int i = 0; i < 5; i++) {
      ck_assert(rc[i] == 0 || rc[i] == -HP_ENOMEM);
      failures += rc[i] != 0;
    }
    hp_store_session_end(s, ss, HP_SESSION_EXITED, NULL);  /* preallocated: never fails */
  }
  hp_store_fail_alloc_after(0);
  ck_assert_int_gt(failures, 0);  /* n is within the allocations these calls make */
  ck_assert_int_eq(hp_store_stop(s), 0);
  sqlite3 *db = hp_test_db_open(dbpath);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM sessions"), ss ? 1 : 0);
  if (ss)
    ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM sessions"
                                        " WHERE status = 'exited'"), 1);
  sqlite3_close(db);
}
END_TEST

/* At max_live_addrs live allocations a session drops (and counts) new allocations
 * instead of growing its address map; reusing a live address and frees still work,
 * frees make room again, and another session is not affected. */
START_TEST(store_drops_allocations_over_the_live_limit) {
  sqlite3 *db;
  char err[256];
  ck_assert_msg(hp_schema_open(dbpath, &db, err, sizeof err) == 0, "%s", err);
  hp_store_config cfg = {.db = db, .timeline_interval_ns = 100000000, .max_live_addrs = 4};
  hp_store *s;
  ck_assert_int_eq(hp_store_start(&s, &cfg), 0);
  hp_store_session *a = session_with_stack(s, 1);
  hp_store_session *b = session_with_stack(s, 2);
  hp_event ev[] = {
    alloc_ev(1, 0x1000, 100, 1), alloc_ev(2, 0x2000, 100, 1), alloc_ev(3, 0x3000, 100, 1),
    alloc_ev(4, 0x4000, 100, 1),
    alloc_ev(5, 0x5000, 100, 1),   /* 5th live: dropped */
    alloc_ev(6, 0x1000, 40, 1),    /* a live address handed out again: replaces, stored */
    free_ev(7, 0x2000),            /* paired; makes room */
    alloc_ev(8, 0x6000, 100, 1),   /* stored */
    alloc_ev(9, 0x7000, 100, 1),   /* dropped */
    free_ev(10, 0x5000),           /* the dropped one: unpaired */
  };
  ck_assert_int_eq(hp_store_events(s, a, ev, 10), 0);
  hp_event evb[] = {alloc_ev(1, 0x1000, 10, 1), alloc_ev(2, 0x2000, 10, 1),
                    alloc_ev(3, 0x3000, 10, 1), alloc_ev(4, 0x4000, 10, 1)};
  ck_assert_int_eq(hp_store_events(s, b, evb, 4), 0);
  hp_goodbye g = {MONO0 + 20000000ULL, 2, HP_END_STOPPED};
  ck_assert_int_eq(hp_store_goodbye(s, a, &g), 0);
  hp_store_session_end(s, a, HP_SESSION_EXITED, NULL);
  hp_store_session_end(s, b, HP_SESSION_EXITED, NULL);
  ck_assert_int_eq(hp_store_stop(s), 0);

  db = hp_test_db_open(dbpath);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM allocations WHERE session_id = 1"), 6);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM allocations WHERE session_id = 1"
                                      " AND address IN (20480, 28672)"), 0);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT freed_ns FROM allocations WHERE session_id = 1"
                                      " AND address = 8192"), (int64_t)WALL0 + 7000000);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT events_received FROM sessions"
                                      " WHERE session_id = 1"), 10);
  /* The agent's 2 plus the 2 allocations the daemon could not track. */
  ck_assert_int_eq(hp_test_db_int(db, "SELECT events_dropped FROM sessions"
                                      " WHERE session_id = 1"), 4);
  /* Live at the end: 0x1000 (40 B), 0x3000, 0x4000, 0x6000; the dropped ones never
   * counted, the replaced 0x1000 block stopped counting. */
  ck_assert_int_eq(hp_test_db_int(db, "SELECT end_bytes FROM timeline_point WHERE session_id = 1"
                                      " ORDER BY ts_ns DESC LIMIT 1"), 340);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM allocations WHERE session_id = 2"), 4);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT events_dropped FROM sessions"
                                      " WHERE session_id = 2"), 0);
  sqlite3_close(db);
}
END_TEST

/* ------------------------------------------------------------------ protocol 2 */

static hp_event reattr_ev(uint64_t ms, uint64_t addr, uint32_t stack, uint64_t tid) {
  return (hp_event){.kind = HP_EV_REATTRIBUTE, .stack_id = stack, .thread_id = tid,
                    .ts_ns = MONO0 + ms * 1000000ULL, .address = addr};
}

START_TEST(store_keeps_the_latest_thread_name_and_every_marker) {
  hp_store *s = start(0, 0, 100000000);
  hp_store_session *a = session_with_stack(s, 1);
  hp_store_session *b = session_with_stack(s, 2);
  hp_thread_def t1 = {4242, S("MainThread")}, t2 = {4243, S("worker-1")},
                t3 = {4243, S("worker-1 (busy)")}, tb = {4242, S("other session")};
  hp_marker m1 = {MONO0 + 5000000ULL, S("start")}, m2 = {MONO0 + 5000000ULL, S("same tick")},
            m3 = {MONO0 + 9000000ULL, S("")};
  ck_assert_int_eq(hp_store_thread_def(s, a, &t1), 0);
  ck_assert_int_eq(hp_store_thread_def(s, a, &t2), 0);
  ck_assert_int_eq(hp_store_marker(s, a, &m1), 0);
  ck_assert_int_eq(hp_store_marker(s, a, &m2), 0);
  ck_assert_int_eq(hp_store_thread_def(s, a, &t3), 0);
  ck_assert_int_eq(hp_store_marker(s, a, &m3), 0);
  ck_assert_int_eq(hp_store_thread_def(s, b, &tb), 0);
  hp_store_session_end(s, a, HP_SESSION_DISCONNECTED, NULL);
  hp_store_session_end(s, b, HP_SESSION_DISCONNECTED, NULL);
  ck_assert_int_eq(hp_store_stop(s), 0);

  sqlite3 *db = hp_test_db_open(dbpath);
  char buf[256];
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM threads WHERE session_id = 1"), 2);
  ck_assert_str_eq(qs(db, "SELECT group_concat(thread_id || '=' || name, ';') FROM"
                          " (SELECT * FROM threads WHERE session_id = 1 ORDER BY thread_id)",
                      buf, sizeof buf), "4242=MainThread;4243=worker-1 (busy)");
  ck_assert_str_eq(qs(db, "SELECT name FROM threads WHERE session_id = 2", buf, sizeof buf),
                   "other session");
  ck_assert_str_eq(qs(db, "SELECT group_concat((ts_ns - 1700000000000000000) || ':' || label,"
                          " ';') FROM markers WHERE session_id = 1", buf, sizeof buf),
                   "5000000:start;5000000:same tick;9000000:");
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM markers WHERE session_id = 2"), 0);
  sqlite3_close(db);
}
END_TEST

/* A reattribute ends the live allocation at its address and starts a new one of the same
 * domain, size and est_bytes for the new thread and stack: for a row still pending
 * (batch_rows large) and for one already committed (batch_rows 1), and again for the new
 * row. One at an address with no live allocation is an unpaired free. The timeline does
 * not move: the block stays live throughout. */
START_TEST(store_reattribute_moves_a_live_block_to_a_new_row) {
  uint32_t rows = _i == 0 ? 0 : 1;
  hp_store *s = start(rows, 0, 100000000);
  uint64_t wall = wall_now_interval();
  hp_store_session *a = session_with_stack_at(s, 1, wall);
  hp_frame_def f = {3, S("reuse_site"), S("mod.py"), 40};  /* the session's third frame */
  uint32_t ids[1] = {3};
  hp_stack_def st = {.stack_id = 2, .depth = 1, .frame_ids = ids};
  ck_assert_int_eq(hp_store_frame_def(s, a, &f), 0);
  ck_assert_int_eq(hp_store_stack_def(s, a, &st), 0);
  hp_event first[] = {alloc_ev(1, 0x1000, 100, 1)};
  first[0].domain = HP_DOMAIN_MEM;
  first[0].est_bytes = 6400;
  ck_assert_int_eq(hp_store_events(s, a, first, 1), 0);
  hp_event later[] = {
    reattr_ev(5, 0x1000, 2, 8),             /* second life, stack 2, thread 8 */
    reattr_ev(6, 0x9999, 2, 8),             /* nothing live there: unpaired */
    reattr_ev(7, 0x1000, HP_NO_STACK, 9),   /* third life, no stack */
    free_ev(12, 0x1000),                    /* ends the third */
  };
  ck_assert_int_eq(hp_store_events(s, a, later, 4), 0);
  hp_goodbye g = {MONO0 + 20000000ULL, 0, HP_END_STOPPED};
  ck_assert_int_eq(hp_store_goodbye(s, a, &g), 0);
  hp_store_session_end(s, a, HP_SESSION_EXITED, NULL);
  ck_assert_int_eq(hp_store_stop(s), 0);

  sqlite3 *db = hp_test_db_open(dbpath);
  char buf[512], sql[1024];
  /* Each life: ts, freed, thread, stack's site, domain, size, est. */
  snprintf(sql, sizeof sql, "SELECT group_concat(x, ' | ') FROM (SELECT"
           " ((a.ts_ns - %1$llu) / 1000000) || ',' || ((a.freed_ns - %1$llu) / 1000000) || ','"
           " || a.thread_id || ',' || coalesce(f.function, '-') || ',' ||"
           " a.domain || ',' || a.size || ',' || a.est_bytes AS x"
           " FROM allocations a LEFT JOIN stack_frames sf"
           " ON sf.stack_id = a.stack_id AND sf.depth = 0"
           " LEFT JOIN frames f USING (frame_id) ORDER BY a.alloc_id)",
           (unsigned long long)wall);
  ck_assert_str_eq(qs(db, sql, buf, sizeof buf),
                   "1,5,7,inner,mem,100,6400 | 5,7,8,reuse_site,mem,100,6400 | "
                   "7,12,9,-,mem,100,6400");
  /* The block was live from 1 ms to 12 ms without a dip: one interval, 6400 at its
   * highest and 0 at its end. */
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM timeline"), 1);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT live_bytes FROM timeline"), 6400);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT live_count FROM timeline"), 64);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT end_bytes FROM timeline_detail"), 0);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT events_received FROM sessions"), 5);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT events_dropped FROM sessions"), 0);
  sqlite3_close(db);
}
END_TEST

START_TEST(store_stores_native_allocations) {
  hp_store *s = start(0, 0, 100000000);
  hp_store_session *a = session_with_stack(s, 1);
  hp_event ev[] = {alloc_ev(1, 0x1000, 1 << 20, HP_NO_STACK), alloc_ev(2, 0x2000, 10, 1)};
  ev[0].domain = HP_DOMAIN_NATIVE;
  ck_assert_int_eq(hp_store_events(s, a, ev, 2), 0);
  hp_store_session_end(s, a, HP_SESSION_DISCONNECTED, NULL);
  ck_assert_int_eq(hp_store_stop(s), 0);
  sqlite3 *db = hp_test_db_open(dbpath);
  char buf[64];
  ck_assert_str_eq(qs(db, "SELECT domain FROM allocations WHERE address = 4096", buf,
                      sizeof buf), "native");
  ck_assert_int_eq(hp_test_db_int(db, "SELECT domain FROM alloc WHERE address = 4096"), 3);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT sum(est_bytes) FROM allocations"
                                      " WHERE domain = 'native'"), 1 << 20);
  sqlite3_close(db);
}
END_TEST

/* The loss a stream's end without GOODBYE reveals: events_sent of the last COUNTERS minus
 * the events received, added to the agent's own drop count. _i: 0 disconnected, 1 a
 * protocol error, 2 GOODBYE (the agent's final count is the whole truth: no inference),
 * 3 more received than the last COUNTERS said (events after it): nothing added. */
START_TEST(store_counts_events_sent_but_never_received) {
  static const int64_t want[] = {3 + 6, 3 + 6, 4, 3};
  hp_store *s = start(0, 0, 100000000);
  hp_store_session *a = session_with_stack(s, 1);
  hp_event ev[] = {alloc_ev(1, 0x1000, 100, 1), alloc_ev(2, 0x2000, 100, 1),
                   free_ev(3, 0x1000), alloc_ev(4, 0x3000, 100, 1)};
  hp_counters c = {.ts_ns = MONO0 + 5000000ULL, .events_dropped = 3,
                   .sample_interval_bytes = 1, .events_sent = _i == 3 ? 2 : 10};
  ck_assert_int_eq(hp_store_events(s, a, ev, 4), 0);
  ck_assert_int_eq(hp_store_counters(s, a, &c), 0);
  if (_i == 2) {
    hp_goodbye g = {MONO0 + 6000000ULL, 4, HP_END_STOPPED};
    ck_assert_int_eq(hp_store_goodbye(s, a, &g), 0);
  }
  hp_store_session_end(s, a, _i == 2 ? HP_SESSION_EXITED : _i == 1 ? HP_SESSION_PROTOCOL_ERROR
                                                                   : HP_SESSION_DISCONNECTED,
                       _i == 1 ? "bad frame" : NULL);
  ck_assert_int_eq(hp_store_stop(s), 0);
  sqlite3 *db = hp_test_db_open(dbpath);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT events_received FROM sessions"), 4);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT events_dropped FROM sessions"), want[_i]);
  sqlite3_close(db);
}
END_TEST

START_TEST(store_goodbye_with_hooks_replaced_sets_the_status) {
  hp_store *s = start(0, 0, 100000000);
  hp_store_session *a = session_with_stack(s, 1);
  hp_store_session *b = session_with_stack(s, 2);
  hp_goodbye g1 = {MONO0 + 6000000ULL, 0, HP_END_HOOKS_REPLACED};
  hp_goodbye g2 = {MONO0 + 6000000ULL, 0, HP_END_STOPPED};
  ck_assert_int_eq(hp_store_goodbye(s, a, &g1), 0);
  ck_assert_int_eq(hp_store_goodbye(s, b, &g2), 0);
  hp_store_session_end(s, a, HP_SESSION_EXITED, NULL);
  hp_store_session_end(s, b, HP_SESSION_EXITED, NULL);
  ck_assert_int_eq(hp_store_stop(s), 0);
  sqlite3 *db = hp_test_db_open(dbpath);
  char buf[64];
  ck_assert_str_eq(qs(db, "SELECT status FROM sessions WHERE session_id = 1", buf, sizeof buf),
                   "hooks_replaced");
  ck_assert_str_eq(qs(db, "SELECT status FROM sessions WHERE session_id = 2", buf, sizeof buf),
                   "exited");
  ck_assert_int_eq(hp_test_db_int(db, "SELECT ended_ns FROM sessions WHERE session_id = 1"),
                   (int64_t)WALL0 + 6000000);
  sqlite3_close(db);
}
END_TEST

/* An allocation at an address whose previous allocation is still live means the agent
 * lost that allocation's free: the old row ends when the new one starts, so that
 * `leaks` (freed_ns IS NULL) and the timeline (which stops counting the old block then)
 * agree. _i 0: the old row is still pending; 1: committed. */
START_TEST(store_ends_the_previous_row_at_a_reused_address) {
  hp_store *s = start(_i == 0 ? 0 : 1, 0, 100000000);
  uint64_t wall = wall_now_interval();
  hp_store_session *a = session_with_stack_at(s, 1, wall);
  hp_event ev[] = {
    alloc_ev(1, 0x1000, 100, 1),
    alloc_ev(2, 0x2000, 7, 1),
    alloc_ev(5, 0x1000, 40, 1),   /* 0x1000 again: its free was lost */
    free_ev(8, 0x2000),
  };
  ck_assert_int_eq(hp_store_events(s, a, ev, 2), 0);
  ck_assert_int_eq(hp_store_events(s, a, ev + 2, 2), 0);
  hp_goodbye g = {MONO0 + 20000000ULL, 1, HP_END_STOPPED};
  ck_assert_int_eq(hp_store_goodbye(s, a, &g), 0);
  hp_store_session_end(s, a, HP_SESSION_EXITED, NULL);
  ck_assert_int_eq(hp_store_stop(s), 0);

  sqlite3 *db = hp_test_db_open(dbpath);
  char sql[256];
  snprintf(sql, sizeof sql, "SELECT freed_ns - %llu FROM allocations WHERE address = 4096"
           " AND size = 100", (unsigned long long)wall);
  ck_assert_int_eq(hp_test_db_int(db, sql), 5000000);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM allocations WHERE address = 4096"
                                      " AND size = 40 AND freed_ns IS NULL"), 1);
  /* What leaks reports is what the timeline ends at. */
  ck_assert_int_eq(hp_test_db_int(db, "SELECT sum(est_bytes) FROM allocations"
                                      " WHERE freed_ns IS NULL"), 40);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT end_bytes FROM timeline_detail"
                                      " ORDER BY ts_ns DESC LIMIT 1"), 40);
  sqlite3_close(db);
}
END_TEST

/* ------------------------------------------------------------------ bad values */

static int valid_utf8_column(sqlite3 *db, const char *sql) {
  sqlite3_stmt *st;
  ck_assert_int_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
  int ok = 1, rows = 0;
  while (sqlite3_step(st) == SQLITE_ROW) {
    rows++;
    const char *t = (const char *)sqlite3_column_text(st, 0);
    size_t len = t != NULL ? (size_t)sqlite3_column_bytes(st, 0) : 0;
    char *again = malloc(len * HP_UTF8_MAX_GROWTH + 1);
    ck_assert_ptr_nonnull(again);
    /* Valid UTF-8 is what repairing leaves unchanged. */
    ok &= t != NULL && hp_utf8_repair(again, t, len) == len && memcmp(again, t, len) == 0;
    free(again);
  }
  sqlite3_finalize(st);
  ck_assert_int_gt(rows, 0);
  return ok;
}

#define R "\xef\xbf\xbd"   /* U+FFFD */

/* Text the protocol allows but that is not UTF-8 (a Latin-1 argv, a NUL in a name) is
 * stored repaired, so that every reader can decode every column. */
START_TEST(store_repairs_text_that_is_not_utf8) {
  hp_store *s = start(0, 0, 100000000);
  static const hp_str bad_argv[] = {{"caf\xe9.py", 7}, {"--x=\xff\xfe", 6}, {"ok", 2}};
  hp_hello h = hello(1);
  h.argv = bad_argv;
  h.argc = 3;
  h.executable = (hp_str){"/usr/bin/py\xc0\xaf", 13};
  h.python_version = (hp_str){"3.11\x80", 5};
  hp_store_session *a = hp_store_session_start(s, &h, 1);
  ck_assert_ptr_nonnull(a);
  hp_frame_def f = {1, {"fn\0c", 4}, {"m\xedod.py", 7}, 3};
  ck_assert_int_eq(hp_store_frame_def(s, a, &f), 0);
  uint32_t ids[1] = {1};
  hp_stack_def st = {.stack_id = 1, .depth = 1, .frame_ids = ids};
  ck_assert_int_eq(hp_store_stack_def(s, a, &st), 0);
  hp_event ev = alloc_ev(1, 0x1000, 8, 1);
  ck_assert_int_eq(hp_store_events(s, a, &ev, 1), 0);
  hp_thread_def t = {7, {"w\xf4\x90\x80\x80", 5}};
  hp_marker m = {MONO0 + 2000000ULL, {"\xe2\x82", 2}};
  ck_assert_int_eq(hp_store_thread_def(s, a, &t), 0);
  ck_assert_int_eq(hp_store_marker(s, a, &m), 0);
  hp_store_session_end(s, a, HP_SESSION_DISCONNECTED, NULL);
  ck_assert_int_eq(hp_store_stop(s), 0);

  sqlite3 *db = hp_test_db_open(dbpath);
  char buf[256];
  ck_assert_str_eq(qs(db, "SELECT argv FROM sessions", buf, sizeof buf),
                   "[\"caf" R ".py\",\"--x=" R R "\",\"ok\"]");
  ck_assert_int_eq(hp_test_db_int(db, "SELECT json_valid(argv) FROM sessions"), 1);
  ck_assert_str_eq(qs(db, "SELECT executable FROM sessions", buf, sizeof buf),
                   "/usr/bin/py" R R);
  ck_assert_str_eq(qs(db, "SELECT python_version FROM sessions", buf, sizeof buf), "3.11" R);
  ck_assert_str_eq(qs(db, "SELECT function FROM frames", buf, sizeof buf), "fn" R "c");
  ck_assert_str_eq(qs(db, "SELECT filename FROM frames", buf, sizeof buf), "m" R "od.py");
  ck_assert_str_eq(qs(db, "SELECT name FROM threads", buf, sizeof buf), "w" R R R R);
  ck_assert_str_eq(qs(db, "SELECT label FROM markers", buf, sizeof buf), R R);
  static const char *const columns[] = {
    "SELECT argv FROM sessions", "SELECT executable FROM sessions",
    "SELECT python_version FROM sessions", "SELECT function FROM frames",
    "SELECT filename FROM frames", "SELECT name FROM threads", "SELECT label FROM markers",
  };
  for (size_t i = 0; i < sizeof columns / sizeof columns[0]; i++)
    ck_assert_msg(valid_utf8_column(db, columns[i]), "%s is not UTF-8", columns[i]);
  sqlite3_close(db);
}
END_TEST

/* Clocks the protocol allows but whose wall time falls outside SQLite's signed 64 bits
 * (a start near 2^63 and an event after it; an event long before a start near 0) are
 * stored clamped to 0 .. 2^63-1, never negative. */
START_TEST(store_clamps_wall_times_to_the_int64_range) {
  hp_store *s = start(0, 0, 100000000);
  hp_hello h = hello(1);
  h.start_wall_ns = (uint64_t)INT64_MAX - 1000;
  h.start_mono_ns = 0;
  hp_store_session *late = hp_store_session_start(s, &h, 1);
  hp_event ev[] = {{.kind = HP_EV_ALLOC, .domain = HP_DOMAIN_OBJ, .ts_ns = 500, .thread_id = 1,
                    .address = 0x10, .size = 8, .est_bytes = 8},
                   {.kind = HP_EV_ALLOC, .domain = HP_DOMAIN_OBJ, .ts_ns = 1000000000ULL,
                    .thread_id = 1, .address = 0x20, .size = 8, .est_bytes = 8},
                   {.kind = HP_EV_FREE, .ts_ns = (uint64_t)INT64_MAX, .thread_id = 1,
                    .address = 0x10}};
  ck_assert_int_eq(hp_store_events(s, late, ev, 3), 0);
  hp_marker m = {(uint64_t)INT64_MAX, S("late")};
  ck_assert_int_eq(hp_store_marker(s, late, &m), 0);
  hp_goodbye g = {(uint64_t)INT64_MAX, 0, HP_END_STOPPED};
  ck_assert_int_eq(hp_store_goodbye(s, late, &g), 0);
  hp_store_session_end(s, late, HP_SESSION_EXITED, NULL);

  h.start_wall_ns = 5;
  h.start_mono_ns = 1000000000ULL;
  hp_store_session *early = hp_store_session_start(s, &h, 2);
  hp_event ev2 = {.kind = HP_EV_ALLOC, .domain = HP_DOMAIN_OBJ, .ts_ns = 10, .thread_id = 1,
                  .address = 0x10, .size = 8, .est_bytes = 8};
  ck_assert_int_eq(hp_store_events(s, early, &ev2, 1), 0);
  hp_store_session_end(s, early, HP_SESSION_DISCONNECTED, NULL);
  ck_assert_int_eq(hp_store_stop(s), 0);

  sqlite3 *db = hp_test_db_open(dbpath);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM allocations WHERE ts_ns < 0"
                                      " OR freed_ns < 0"), 0);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM timeline WHERE ts_ns < 0"), 0);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT max(ts_ns) FROM allocations"), INT64_MAX);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT freed_ns FROM allocations WHERE session_id = 1"
                                      " AND address = 16"), INT64_MAX);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT ended_ns FROM sessions WHERE session_id = 1"),
                   INT64_MAX);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT ts_ns FROM markers"), INT64_MAX);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT ts_ns FROM allocations WHERE session_id = 2"), 0);
  sqlite3_close(db);
}
END_TEST

/* Estimates near 2^63: the timeline's rows stay in range and come back to 0 when
 * everything is freed. */
START_TEST(store_timeline_stays_in_range_with_huge_estimates) {
  hp_store *s = start(0, 0, 100000000);
  uint64_t wall = wall_now_interval();
  hp_store_session *a = session_with_stack_at(s, 1, wall);
  hp_event ev[] = {alloc_ev(1, 0x10, 1, 1), alloc_ev(2, 0x20, 1, 1), free_ev(3, 0x10),
                   free_ev(4, 0x20)};
  ev[0].est_bytes = ev[1].est_bytes = (uint64_t)INT64_MAX - 7;
  ck_assert_int_eq(hp_store_events(s, a, ev, 4), 0);
  hp_goodbye g = {MONO0 + 10000000ULL, 0, HP_END_STOPPED};
  ck_assert_int_eq(hp_store_goodbye(s, a, &g), 0);
  hp_store_session_end(s, a, HP_SESSION_EXITED, NULL);
  ck_assert_int_eq(hp_store_stop(s), 0);
  sqlite3 *db = hp_test_db_open(dbpath);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT live_bytes FROM timeline_detail"), INT64_MAX);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT end_bytes FROM timeline_detail"), 0);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT count(*) FROM timeline_detail WHERE"
                                      " live_bytes < 0 OR end_bytes < 0 OR live_count < 0"), 0);
  sqlite3_close(db);
}
END_TEST

/* ------------------------------------------------------------------ faults */

/* The fault VFS (tests/fault) is the default VFS of this process, so the store's own
 * connection meets SQLITE_FULL and SQLITE_BUSY from SQLite's real code paths. */
static void setup_faults(void) {
  ck_assert_int_eq(hp_fault_vfs_install(), SQLITE_OK);
  hp_fault_set_full(0);
  hp_fault_set_locked(0);
  setup();
}

static void teardown_faults(void) {
  hp_fault_set_full(0);
  hp_fault_set_locked(0);
  teardown();
}

static hp_store *start_cfg(hp_store_config cfg) {
  sqlite3 *db;
  char err[256];
  ck_assert_msg(hp_schema_open(dbpath, &db, err, sizeof err) == 0, "%s", err);
  cfg.db = db;
  if (cfg.timeline_interval_ns == 0)
    cfg.timeline_interval_ns = 100000000;
  hp_store *s;
  ck_assert_int_eq(hp_store_start(&s, &cfg), 0);
  return s;
}

static void sleep_ms(long ms) {
  struct timespec d = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&d, NULL);
}

static int64_t db_int(const char *sql) {
  sqlite3 *db = hp_test_db_open(dbpath);
  int64_t v = hp_test_db_int(db, sql);
  sqlite3_close(db);
  return v;
}

/* Polls until readers see `sql` give `want` (a commit of the store), for at most 20 s. */
static void wait_for_db(const char *sql, int64_t want, const char *what) {
  for (int i = 0; i < 10000; i++) {
    if (db_int(sql) == want)
      return;
    sleep_ms(2);
  }
  ck_abort_msg("timed out waiting until %s", what);
}

/* A full disk rolls back the transaction that inserted session A. Its id must not be
 * handed to session B, which starts once the disk has room again: the two programs
 * would be merged into one session. A is stored too, later. */
START_TEST(store_never_reuses_the_id_of_a_rolled_back_session) {
  long before = hp_fault_writes_refused();
  hp_store *s = start_cfg((hp_store_config){.commit_ms = 20});
  hp_fault_set_full(1);
  hp_store_session *a = session_with_stack(s, 100);
  hp_event ea[] = {alloc_ev(1, 0x1000, 100, 1)};
  ck_assert_int_eq(hp_store_events(s, a, ea, 1), 0);
  struct timespec d = {0, 2000000};
  for (int i = 0; i < 10000 && hp_fault_writes_refused() == before; i++)
    nanosleep(&d, NULL);
  ck_assert_int_gt(hp_fault_writes_refused(), before);
  hp_fault_set_full(0);
  hp_store_session *b = session_with_stack(s, 200);
  hp_event eb[] = {alloc_ev(1, 0x2000, 100, 1)};
  ck_assert_int_eq(hp_store_events(s, b, eb, 1), 0);
  hp_store_session_end(s, a, HP_SESSION_DISCONNECTED, NULL);
  hp_store_session_end(s, b, HP_SESSION_DISCONNECTED, NULL);
  int stop_rc = hp_store_stop(s);

  ck_assert_int_eq(db_int("SELECT count(*) FROM sessions"), 2);
  ck_assert_int_eq(db_int("SELECT count(DISTINCT session_id) FROM allocations"), 2);
  /* Each allocation belongs to the session of its own program. */
  ck_assert_int_eq(db_int("SELECT count(*) FROM allocations a JOIN sessions s USING"
                          " (session_id) WHERE (a.address = 4096 AND s.pid = 100) OR"
                          " (a.address = 8192 AND s.pid = 200)"), 2);
  ck_assert_int_eq(db_int("SELECT count(*) FROM sessions WHERE status = 'disconnected'"), 2);
  ck_assert_int_eq(stop_rc, 0);  /* nothing was lost */
}
END_TEST

/* A transaction that fails at COMMIT (disk full) is retried until the disk has room;
 * then everything is stored, the session ends with its true status, and nothing counts
 * as lost. */
START_TEST(store_retries_a_failed_commit_until_the_disk_has_room) {
  hp_store *s = start_cfg((hp_store_config){.commit_ms = 20});
  hp_store_session *a = session_with_stack(s, 1);
  wait_for_db("SELECT count(*) FROM sessions", 1, "the session's row is committed");
  long before = hp_fault_writes_refused();
  hp_fault_set_full(1);
  enum { N = 3000 };
  static hp_event ev[N];
  for (int i = 0; i < N; i++)
    ev[i] = i % 3 == 2 ? free_ev((uint64_t)i, 0x10000 + 16u * (uint64_t)(i - 1))
                       : alloc_ev((uint64_t)i, 0x10000 + 16u * (uint64_t)i, 32, 1);
  ck_assert_int_eq(hp_store_events(s, a, ev, N), 0);
  struct timespec d = {0, 2000000};
  for (int i = 0; i < 10000 && hp_fault_writes_refused() == before; i++)
    nanosleep(&d, NULL);
  ck_assert_int_gt(hp_fault_writes_refused(), before);
  sleep_ms(300);  /* more attempts fail */
  hp_fault_set_full(0);
  hp_goodbye g = {MONO0 + 9000000000ULL, 0, HP_END_STOPPED};
  ck_assert_int_eq(hp_store_goodbye(s, a, &g), 0);
  hp_store_session_end(s, a, HP_SESSION_EXITED, NULL);
  int stop_rc = hp_store_stop(s);

  ck_assert_int_eq(db_int("SELECT count(*) FROM sessions WHERE status = 'exited'"
                          " AND events_received = 3000 AND events_dropped = 0"), 1);
  ck_assert_int_eq(db_int("SELECT count(*) FROM allocations"), 2000);
  ck_assert_int_eq(db_int("SELECT count(*) FROM allocations WHERE freed_ns IS NOT NULL"), 1000);
  ck_assert_int_eq(stop_rc, 0);  /* nothing was lost */
}
END_TEST

/* Another connection holds the write lock while a program starts and ends: its session
 * must be stored, whole, once the lock is released. */
START_TEST(store_waits_out_another_writers_lock) {
  hp_store *s = start_cfg((hp_store_config){.commit_ms = 20, .busy_timeout_ms = 20});
  sqlite3 *locker = hp_test_db_open(dbpath);
  ck_assert_int_eq(sqlite3_exec(locker, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
  hp_store_session *a = session_with_stack(s, 1);
  hp_event ev[] = {alloc_ev(1, 0x1000, 100, 1), alloc_ev(2, 0x2000, 50, 1), free_ev(3, 0x1000)};
  ck_assert_int_eq(hp_store_events(s, a, ev, 3), 0);
  hp_goodbye g = {MONO0 + 9000000ULL, 2, HP_END_STOPPED};
  ck_assert_int_eq(hp_store_goodbye(s, a, &g), 0);
  hp_store_session_end(s, a, HP_SESSION_EXITED, NULL);
  sleep_ms(400);  /* the store tries, and waits */
  ck_assert_int_eq(sqlite3_exec(locker, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(locker);
  int stop_rc = hp_store_stop(s);
  ck_assert_int_eq(db_int("SELECT count(*) FROM sessions WHERE status = 'exited'"
                          " AND events_received = 3 AND events_dropped = 2"), 1);
  ck_assert_int_eq(db_int("SELECT count(*) FROM allocations WHERE session_id = 1"), 2);
  ck_assert_int_eq(db_int("SELECT freed_ns - ts_ns FROM allocations WHERE address = 4096"),
                   2000000);
  ck_assert_int_eq(stop_rc, 0);  /* nothing was lost */
}
END_TEST

/* A session ends while BEGIN fails and some of its rows are still pending: the store
 * must not free the session before those rows are stored, since they point at it
 * (under ASan, reading a freed session fails the test). batch_rows 4 makes every
 * events item commit, keeping its own rows pending for one more round. */
START_TEST(store_keeps_an_ended_session_until_its_rows_are_stored) {
  hp_store *s = start_cfg((hp_store_config){.batch_rows = 4, .commit_ms = 10000,
                                            .busy_timeout_ms = 10});
  hp_store_session *a = session_with_stack(s, 1);
  hp_event e1[] = {alloc_ev(1, 0x1000, 8, 1), alloc_ev(2, 0x2000, 8, 1),
                   alloc_ev(3, 0x3000, 8, 1), alloc_ev(4, 0x4000, 8, 1)};
  ck_assert_int_eq(hp_store_events(s, a, e1, 4), 0);
  wait_for_db("SELECT count(*) FROM sessions WHERE events_received = 4", 1,
              "the first events are processed");
  long before = hp_fault_locks_refused();
  hp_fault_set_locked(1);
  hp_event e2[] = {alloc_ev(5, 0x5000, 8, 1), alloc_ev(6, 0x6000, 8, 1),
                   alloc_ev(7, 0x7000, 8, 1), alloc_ev(8, 0x8000, 8, 1)};
  ck_assert_int_eq(hp_store_events(s, a, e2, 4), 0);
  hp_store_session_end(s, a, HP_SESSION_DISCONNECTED, NULL);
  struct timespec d = {0, 2000000};
  for (int i = 0; i < 10000 && hp_fault_locks_refused() == before; i++)
    nanosleep(&d, NULL);
  ck_assert_int_gt(hp_fault_locks_refused(), before);
  sleep_ms(100);
  hp_fault_set_locked(0);
  int stop_rc = hp_store_stop(s);
  ck_assert_int_eq(db_int("SELECT count(*) FROM allocations WHERE session_id = 1"), 8);
  ck_assert_int_eq(db_int("SELECT count(*) FROM allocations"), 8);
  ck_assert_int_eq(db_int("SELECT count(*) FROM sessions WHERE status = 'disconnected'"
                          " AND events_received = 8"), 1);
  ck_assert_int_eq(stop_rc, 0);  /* nothing was lost */
}
END_TEST

/* The disk stays full until heapprofd stops: after stop_retry_ms the store gives up,
 * says so, and hp_store_stop fails, so that heapprofd exits non-zero.
 * The session's row keeps the last state that could be written ('running'), which the
 * next heapprofd ends as disconnected. */
START_TEST(store_gives_up_at_stop_when_the_disk_stays_full) {
  hp_store *s = start_cfg((hp_store_config){.commit_ms = 20, .stop_retry_ms = 300});
  hp_store_session *a = session_with_stack(s, 1);
  wait_for_db("SELECT count(*) FROM sessions WHERE status = 'running'", 1,
              "the session's row is committed");
  hp_fault_set_full(1);
  hp_event ev[] = {alloc_ev(1, 0x1000, 100, 1), alloc_ev(2, 0x2000, 50, 1)};
  ck_assert_int_eq(hp_store_events(s, a, ev, 2), 0);
  hp_store_session_end(s, a, HP_SESSION_DISCONNECTED, NULL);
  ck_assert_int_eq(hp_store_stop(s), -HP_ESQLITE);
  hp_fault_set_full(0);
  ck_assert_int_eq(db_int("SELECT count(*) FROM sessions WHERE status = 'running'"), 1);
  ck_assert_int_eq(db_int("SELECT count(*) FROM allocations"), 0);
  ck_assert_int_eq(db_int("SELECT integrity_check = 'ok' FROM pragma_integrity_check"), 1);
}
END_TEST

/* A transaction whose retry cannot succeed (another writer took an allocation id it
 * holds: a constraint error, not a transient one) is given up after a few attempts; its
 * events are counted in the session's events_dropped, the session goes on and ends
 * with its true status, and hp_store_stop reports the loss. batch_rows 5 commits after
 * every 5 rows, each events item keeping its own rows pending for one more commit. */
START_TEST(store_gives_up_what_a_retry_cannot_store_and_counts_it) {
  hp_store *s = start_cfg((hp_store_config){.batch_rows = 5, .commit_ms = 100000});
  hp_store_session *a = session_with_stack(s, 1);
  hp_event e1[5], e2[5];
  for (int i = 0; i < 5; i++) {
    e1[i] = alloc_ev((uint64_t)i + 1, 0x1000 + 16u * (uint64_t)i, 8, 1);
    e2[i] = alloc_ev((uint64_t)i + 10, 0x2000 + 16u * (uint64_t)i, 8, 1);
  }
  ck_assert_int_eq(hp_store_events(s, a, e1, 5), 0);
  wait_for_db("SELECT count(*) FROM sessions WHERE events_received = 5", 1,
              "the first events are processed");
  long before = hp_fault_writes_refused();
  hp_fault_set_full(1);
  ck_assert_int_eq(hp_store_events(s, a, e2, 5), 0);  /* its commit writes e1's rows: fails */
  struct timespec d = {0, 2000000};
  for (int i = 0; i < 10000 && hp_fault_writes_refused() == before; i++)
    nanosleep(&d, NULL);
  ck_assert_int_gt(hp_fault_writes_refused(), before);
  /* Another writer, through the plain unix VFS, takes the id of e1's first row. */
  sqlite3 *other = NULL;
  ck_assert_int_eq(sqlite3_open_v2(dbpath, &other, SQLITE_OPEN_READWRITE, "unix"), SQLITE_OK);
  sqlite3_busy_timeout(other, 5000);
  ck_assert_int_eq(sqlite3_exec(other, "INSERT INTO alloc (id, session_id, ts_ns, thread_id,"
                                " domain, address, size, est_bytes) VALUES (1, 99, 1, 1, 0, 1,"
                                " 1, 1)", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(other);
  hp_fault_set_full(0);
  hp_goodbye g = {MONO0 + 50000000ULL, 0, HP_END_STOPPED};
  ck_assert_int_eq(hp_store_goodbye(s, a, &g), 0);
  hp_store_session_end(s, a, HP_SESSION_EXITED, NULL);
  ck_assert_int_eq(hp_store_stop(s), -HP_ESQLITE);
  ck_assert_int_eq(db_int("SELECT count(*) FROM sessions WHERE session_id = 1 AND"
                          " status = 'exited' AND events_received = 10 AND events_dropped = 5"),
                   1);
  ck_assert_int_eq(db_int("SELECT count(*) FROM allocations WHERE session_id = 1"), 5);
  ck_assert_int_eq(db_int("SELECT min(address) FROM allocations WHERE session_id = 1"), 0x2000);
}
END_TEST

/* A HELLO may carry 1024 arguments of 4096 bytes (4 MiB); what a session's row keeps
 * of them is bounded, whole entries are left out from the end, and the row says how
 * many. */
START_TEST(store_bounds_the_stored_argv_and_says_how_much_was_cut) {
  hp_store *s = start(0, 0, 100000000);
  static hp_str big[HP_MAX_ARGV];
  static char text[HP_MAX_STR_BYTES];
  memset(text, 'a', sizeof text);
  for (unsigned i = 0; i < HP_MAX_ARGV; i++)
    big[i] = (hp_str){text, HP_MAX_STR_BYTES};
  hp_hello h = hello(1);
  h.argv = big;
  h.argc = HP_MAX_ARGV;
  hp_store_session *a = hp_store_session_start(s, &h, 1);
  ck_assert_ptr_nonnull(a);
  hp_store_session_end(s, a, HP_SESSION_DISCONNECTED, NULL);
  h.argc = 3;   /* a normal command line is kept whole */
  hp_store_session *b = hp_store_session_start(s, &h, 2);
  hp_store_session_end(s, b, HP_SESSION_DISCONNECTED, NULL);
  ck_assert_int_eq(hp_store_stop(s), 0);

  sqlite3 *db = hp_test_db_open(dbpath);
  int64_t len = hp_test_db_int(db, "SELECT length(argv) FROM sessions WHERE session_id = 1");
  ck_assert_int_le(len, HP_STORE_MAX_ARGV_BYTES);
  ck_assert_int_gt(len, HP_STORE_MAX_ARGV_BYTES - HP_MAX_STR_BYTES - 4);
  int64_t kept = hp_test_db_int(db, "SELECT json_array_length(argv) FROM sessions"
                                    " WHERE session_id = 1");
  ck_assert_int_eq(kept, HP_STORE_MAX_ARGV_BYTES / (HP_MAX_STR_BYTES + 3));
  ck_assert_int_eq(hp_test_db_int(db, "SELECT argv_omitted FROM session_settings"
                                      " WHERE session_id = 1"), HP_MAX_ARGV - kept);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT json_array_length(argv) FROM sessions"
                                      " WHERE session_id = 2"), 3);
  ck_assert_int_eq(hp_test_db_int(db, "SELECT argv_omitted FROM session_settings"
                                      " WHERE session_id = 2"), 0);
  sqlite3_close(db);
}
END_TEST

/* Thread names are metadata too: past the limit per session they are not stored. */
START_TEST(store_bounds_the_thread_names_of_a_session) {
  hp_store *s = start(0, 0, 100000000);
  hp_store_session *a = session_with_stack(s, 1);
  char name[32];
  for (uint32_t i = 0; i < HP_STORE_MAX_THREAD_DEFS + 10; i++) {
    int n = snprintf(name, sizeof name, "worker-%u", i);
    hp_thread_def t = {1000u + i, {name, (uint32_t)n}};
    ck_assert_int_eq(hp_store_thread_def(s, a, &t), 0);
  }
  hp_store_session_end(s, a, HP_SESSION_DISCONNECTED, NULL);
  ck_assert_int_eq(hp_store_stop(s), 0);
  ck_assert_int_eq(db_int("SELECT count(*) FROM threads"), HP_STORE_MAX_THREAD_DEFS);
  ck_assert_int_eq(db_int("SELECT max(thread_id) FROM threads"), 1000 + HP_STORE_MAX_THREAD_DEFS - 1);
}
END_TEST

Suite *store_suite(void) {
  Suite *s = suite_create("store");
  TCase *core = tcase_create("core");
  tcase_add_checked_fixture(core, setup, teardown);
  tcase_set_timeout(core, 30);
  tcase_add_test(core, store_pairs_frees_and_shares_frames_across_sessions);
  tcase_add_test(core, store_pairs_free_with_committed_row);
  tcase_add_test(core, store_timeline_keeps_spike_height_and_drop);
  tcase_add_test(core, store_timeline_has_no_row_after_the_end);
  tcase_add_test(core, store_signals_full_queue_then_resumes);
  suite_add_tcase(s, core);
  TCase *v2 = tcase_create("protocol2");
  tcase_add_checked_fixture(v2, setup, teardown);
  tcase_set_timeout(v2, 30);
  tcase_add_test(v2, store_keeps_the_latest_thread_name_and_every_marker);
  tcase_add_loop_test(v2, store_reattribute_moves_a_live_block_to_a_new_row, 0, 2);
  tcase_add_test(v2, store_stores_native_allocations);
  tcase_add_loop_test(v2, store_counts_events_sent_but_never_received, 0, 4);
  tcase_add_test(v2, store_goodbye_with_hooks_replaced_sets_the_status);
  tcase_add_loop_test(v2, store_ends_the_previous_row_at_a_reused_address, 0, 2);
  suite_add_tcase(s, v2);
  TCase *bad = tcase_create("values");
  tcase_add_checked_fixture(bad, setup, teardown);
  tcase_set_timeout(bad, 30);
  tcase_add_test(bad, store_repairs_text_that_is_not_utf8);
  tcase_add_test(bad, store_clamps_wall_times_to_the_int64_range);
  tcase_add_test(bad, store_timeline_stays_in_range_with_huge_estimates);
  suite_add_tcase(s, bad);
  TCase *faults = tcase_create("faults");
  tcase_add_checked_fixture(faults, setup_faults, teardown_faults);
  tcase_set_timeout(faults, 60);
  tcase_add_test(faults, store_never_reuses_the_id_of_a_rolled_back_session);
  tcase_add_test(faults, store_retries_a_failed_commit_until_the_disk_has_room);
  tcase_add_test(faults, store_waits_out_another_writers_lock);
  tcase_add_test(faults, store_keeps_an_ended_session_until_its_rows_are_stored);
  tcase_add_test(faults, store_gives_up_at_stop_when_the_disk_stays_full);
  tcase_add_test(faults, store_gives_up_what_a_retry_cannot_store_and_counts_it);
  suite_add_tcase(s, faults);
  TCase *oom = tcase_create("oom");
  tcase_add_checked_fixture(oom, setup, teardown);
  tcase_set_timeout(oom, 30);
  /* Session start allocates the session and its end item, then (after the address map,
   * which has its own hook) the argv's JSON buffer and the HELLO item; then one item per
   * call: 9 allocations in all. */
  tcase_add_loop_test(oom, store_loop_side_oom_sweep, 0, 9);
  suite_add_tcase(s, oom);
  TCase *limits = tcase_create("limits");
  tcase_add_checked_fixture(limits, setup, teardown);
  tcase_set_timeout(limits, 30);
  tcase_add_test(limits, store_drops_allocations_over_the_live_limit);
  tcase_add_test(limits, store_bounds_the_stored_argv_and_says_how_much_was_cut);
  tcase_add_test(limits, store_bounds_the_thread_names_of_a_session);
  suite_add_tcase(s, limits);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(store_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
