/* check_store_agg.c — the aggregates heapprofd keeps (agg_stack, agg_size and their
 * views) against a real SQLite database: known values for a small session, and equality
 * with a GROUP BY over the alloc rows after a mixed workload (frees of pending and of
 * stored rows, reattributes, reused addresses, no stack), after a full disk rolled
 * transactions back, and after a transaction was given up; agg_site likewise against the
 * same computation over the rows. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hp_error.h"
#include "hp_proto.h"
#include "hp_schema.h"
#include "hp_store.h"

#include "check_db_util.h"
#include "hp_fault_vfs.h"

static char tmpdir[256], dbpath[512];

static void setup(void) {
  hp_test_tmpdir_setup(tmpdir, sizeof tmpdir, "/tmp", "hp-check-store-agg");
  snprintf(dbpath, sizeof dbpath, "%s/t.sqlite", tmpdir);
}
static void teardown(void) { hp_test_tmpdir_teardown(tmpdir); }

static void setup_faults(void) {
  ck_assert_int_eq(hp_fault_vfs_install(), SQLITE_OK);
  hp_fault_set_full(0);
  setup();
}
static void teardown_faults(void) {
  hp_fault_set_full(0);
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

static int64_t db_int(const char *sql) {
  sqlite3 *db = hp_test_db_open(dbpath);
  int64_t v = hp_test_db_int(db, sql);
  sqlite3_close(db);
  return v;
}

static double db_real(const char *sql) {
  sqlite3 *db = hp_test_db_open(dbpath);
  sqlite3_stmt *st;
  ck_assert_msg(sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK, "%s", sql);
  ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
  double v = sqlite3_column_double(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(db);
  return v;
}

static void sleep_ms(long ms) {
  struct timespec d = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&d, NULL);
}

#define WALL0 1700000000000000000ULL  /* a whole second: buckets start at WALL0 + k s */
#define MONO0 5000000000ULL

static hp_str S(const char *s) { return (hp_str){s, (uint32_t)strlen(s)}; }
static const hp_str argv_[] = {{"python", 6}};

static hp_store_session *session(hp_store *s, int64_t pid) {
  hp_hello h = {.version = HP_PROTO_VERSION, .pid = pid, .ppid = 1, .argc = 1, .argv = argv_,
                .executable = S("/usr/bin/python3"), .python_version = S("3.11.2"),
                .start_wall_ns = WALL0, .start_mono_ns = MONO0, .sample_interval_bytes = 512,
                .max_stack_depth = 64};
  hp_store_session *ss = hp_store_session_start(s, &h, pid);
  ck_assert_ptr_nonnull(ss);
  hp_frame_def f[3] = {{1, S("a"), S("m.py"), 1}, {2, S("b"), S("m.py"), 2},
                       {3, S("c"), S("m.py"), 3}};
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(hp_store_frame_def(s, ss, &f[i]), 0);
  for (uint32_t k = 1; k <= 3; k++) {
    uint32_t ids[2] = {k, k % 3 + 1};
    hp_stack_def st = {.stack_id = k, .depth = 2, .frame_ids = ids};
    ck_assert_int_eq(hp_store_stack_def(s, ss, &st), 0);
  }
  return ss;
}

static hp_event ev(int kind, uint64_t ms, uint64_t addr, uint64_t size, uint64_t est,
                   uint32_t stack) {
  return (hp_event){.kind = (uint8_t)kind, .domain = HP_DOMAIN_OBJ, .stack_id = stack,
                    .ts_ns = MONO0 + ms * 1000000ULL, .thread_id = 7, .address = addr,
                    .size = size, .est_bytes = est};
}

static void end(hp_store *s, hp_store_session *ss, uint64_t ms) {
  hp_goodbye g = {MONO0 + ms * 1000000ULL, 0, HP_END_STOPPED};
  ck_assert_int_eq(hp_store_goodbye(s, ss, &g), 0);
  hp_store_session_end(s, ss, HP_SESSION_EXITED, NULL);
}

/* Rows of agg_stack and agg_size that differ from a GROUP BY over alloc (in either
 * direction), for the sessions that have aggregates. Counts are REALs summed in another
 * order, so they are compared to a relative 1e-9. The size class goes in between. */
static const char MISMATCH_HEAD[] =
  "WITH r AS (SELECT * FROM alloc WHERE session_id IN (SELECT session_id FROM agg_session)),"
  " e AS (SELECT session_id s, ts_ns - ts_ns % 1000000000 b, coalesce(stack_id, 0) k,"
  "   total(est_bytes) ab, total(CAST(est_bytes AS REAL) / max(size, 1)) ac, count(*) an,"
  "   0 fb, 0 fc, 0 fn, total(CAST(est_bytes AS REAL) * max(est_bytes - size, 0)) av, 0 fv"
  "   FROM r GROUP BY 1, 2, 3"
  "  UNION ALL SELECT session_id, freed_ns - freed_ns % 1000000000, coalesce(stack_id, 0),"
  "   0, 0, 0, total(est_bytes), total(CAST(est_bytes AS REAL) / max(size, 1)), count(*),"
  "   0, total(CAST(est_bytes AS REAL) * max(est_bytes - size, 0))"
  "   FROM r WHERE freed_ns IS NOT NULL GROUP BY 1, 2, 3),"
  " g AS (SELECT s, b, k, sum(ab) ab, sum(ac) ac, sum(an) an, sum(fb) fb, sum(fc) fc,"
  "   sum(fn) fn, sum(av) av, sum(fv) fv FROM e GROUP BY 1, 2, 3),"
  " z AS (SELECT session_id s, ";
static const char MISMATCH_TAIL[] =
  " c, count(*) n, total(CAST(est_bytes AS REAL) / max(size, 1)) ec, total(est_bytes) eb"
  "   FROM r GROUP BY 1, 2)"
  " SELECT (SELECT count(*) FROM g LEFT JOIN agg_stack a ON a.session_id = g.s"
  "   AND a.bucket_ns = g.b AND a.stack_id = g.k AND a.alloc_bytes = g.ab"
  "   AND a.alloc_samples = g.an AND a.freed_bytes = g.fb AND a.freed_samples = g.fn"
  "   AND abs(a.alloc_count - g.ac) <= 1e-9 * max(1, g.ac)"
  "   AND abs(a.freed_count - g.fc) <= 1e-9 * max(1, g.fc)"
  "   AND abs(a.alloc_var - g.av) <= 1e-9 * max(1, g.av)"
  "   AND abs(a.freed_var - g.fv) <= 1e-9 * max(1, g.fv) WHERE a.session_id IS NULL)"
  " + abs((SELECT count(*) FROM agg_stack) - (SELECT count(*) FROM g))"
  " + (SELECT count(*) FROM z LEFT JOIN agg_size a ON a.session_id = z.s"
  "   AND a.size_class = z.c AND a.samples = z.n AND a.est_bytes = z.eb"
  "   AND abs(a.est_count - z.ec) <= 1e-9 * max(1, z.ec) WHERE a.session_id IS NULL)"
  " + abs((SELECT count(*) FROM agg_size) - (SELECT count(*) FROM z))";

/* Rows of agg_site that differ from the same computation over alloc (in either
 * direction), in the buckets written (before each session's done_ns): per session, line
 * (the smallest frame id of its filename and lineno) and bucket, the net change of the
 * live bytes of the rows whose stack has the line, and the highest level after any
 * instant of the bucket, relative to its start, which counts unless a change comes at
 * the bucket's first instant. As site_mismatches in tests/integration/daemon_harness.py. */
static const char SITE_MISMATCH[] =
  "WITH ss AS (SELECT session_id s, bucket_ns w, done_ns done FROM agg_site_session),"
  " lines AS (SELECT DISTINCT sf.stack_id k, (SELECT min(g.id) FROM frame g"
  "   WHERE g.filename = f.filename AND g.lineno = f.lineno) line"
  "   FROM stack_frame sf JOIN frame f ON f.id = sf.frame_id),"
  " ev AS (SELECT a.session_id s, l.line, a.ts_ns t, a.est_bytes d"
  "   FROM alloc a JOIN lines l ON l.k = a.stack_id WHERE a.session_id IN (SELECT s FROM ss)"
  "  UNION ALL SELECT a.session_id, l.line, a.freed_ns, -a.est_bytes"
  "   FROM alloc a JOIN lines l ON l.k = a.stack_id"
  "   WHERE a.freed_ns IS NOT NULL AND a.session_id IN (SELECT s FROM ss)),"
  " inst AS (SELECT ev.s, line, t, t - t % ss.w b, sum(d) d FROM ev JOIN ss ON ss.s = ev.s"
  "   WHERE t - t % ss.w < ss.done GROUP BY ev.s, line, t),"
  " run AS (SELECT s, line, b, t, d, sum(d) OVER (PARTITION BY s, line, b ORDER BY t) lvl"
  "   FROM inst),"
  " g AS (SELECT s, line, b, max(max(lvl), CASE WHEN min(t) = b"
  "   THEN -9223372036854775808 ELSE 0 END) high, sum(d) net FROM run GROUP BY s, line, b),"
  " want AS (SELECT * FROM g WHERE NOT (net = 0 AND high = 0))"
  " SELECT (SELECT count(*) FROM want LEFT JOIN agg_site a ON a.session_id = want.s"
  "   AND a.frame_id = want.line AND a.bucket_ns = want.b AND a.net_bytes = want.net"
  "   AND a.high_bytes = want.high WHERE a.session_id IS NULL)"
  " + abs((SELECT count(*) FROM agg_site) - (SELECT count(*) FROM want))";

static const char *mismatch_sql(void) {
  static char sql[sizeof MISMATCH_HEAD + sizeof MISMATCH_TAIL + 2048];
  char cls[2048] = "CASE WHEN size <= 0 THEN 0";
  for (int k = 1; k < 63; k++) {
    size_t len = strlen(cls);
    snprintf(cls + len, sizeof cls - len, " WHEN size < %llu THEN %d", 1ULL << k, k);
  }
  strcat(cls, " ELSE 63 END");
  snprintf(sql, sizeof sql, "%s%s%s", MISMATCH_HEAD, cls, MISMATCH_TAIL);
  return sql;
}

/* Mismatches of every aggregate. */
static long long mismatches(void) { return db_int(mismatch_sql()) + db_int(SITE_MISMATCH); }

/* A mixed workload over `seconds` s: allocations over three stacks and none, of sizes
 * from 0 to 64 KiB with unrounded estimates; frees soon (pending rows) and late (stored
 * rows); reattributes; addresses reused without a free. Deterministic. */
static void workload_from(hp_store *s, hp_store_session *ss, unsigned seed, uint64_t first_ms,
                          int seconds) {
  enum { BATCH = 200, SLOTS = 512 };
  uint64_t live[SLOTS] = {0};
  hp_event batch[BATCH];
  int n = 0;
  for (uint64_t ms = first_ms; ms < first_ms + (uint64_t)seconds * 1000; ms += 2) {
    seed = seed * 1103515245u + 12345u;
    unsigned r = seed >> 8;
    unsigned slot = r % SLOTS;
    uint64_t addr = 0x100000 + 64u * slot;
    unsigned what = (r >> 9) % 10;
    if (live[slot] && what < 4) {
      batch[n++] = ev(HP_EV_FREE, ms, addr, 0, 0, 0);
      live[slot] = 0;
    } else if (live[slot] && what == 4) {
      batch[n++] = ev(HP_EV_REATTRIBUTE, ms, addr, 0, 0, (r >> 13) % 4);
    } else {  /* a new allocation, also over a live one (its free was lost) */
      uint64_t size = (r >> 4) % 7 == 0 ? 0 : 1ull << ((r >> 5) % 17);
      size += (r >> 16) % 3;
      uint64_t est = size > 0 ? size + (r % 977) : 1 + r % 5;
      batch[n++] = ev(HP_EV_ALLOC, ms, addr, size, est, (r >> 13) % 4);  /* 0: no stack */
      live[slot] = 1;
    }
    if (n == BATCH) {
      ck_assert_int_eq(hp_store_events(s, ss, batch, (uint32_t)n), 0);
      n = 0;
    }
  }
  if (n > 0)
    ck_assert_int_eq(hp_store_events(s, ss, batch, (uint32_t)n), 0);
}

static void workload(hp_store *s, hp_store_session *ss, unsigned seed, int seconds) {
  workload_from(s, ss, seed, 1, seconds);
}

START_TEST(agg_known_values_of_a_small_session) {
  hp_store *s = start_cfg((hp_store_config){0});
  hp_store_session *a = session(s, 1);
  hp_event e[] = {
    ev(HP_EV_ALLOC, 100, 0x1000, 100, 400, 1),   /* bucket 0, freed in bucket 1 */
    ev(HP_EV_ALLOC, 200, 0x2000, 3, 9, 0),       /* no stack, never freed */
    ev(HP_EV_FREE, 1500, 0x1000, 0, 0, 0),
    ev(HP_EV_ALLOC, 1600, 0x3000, 100, 300, 2),  /* reattributed to stack 3 at 2.5 s */
    ev(HP_EV_REATTRIBUTE, 2500, 0x3000, 0, 0, 3),
  };
  ck_assert_int_eq(hp_store_events(s, a, e, 5), 0);
  end(s, a, 3000);
  ck_assert_int_eq(hp_store_stop(s), 0);

  ck_assert_int_eq(db_int("SELECT bucket_ns FROM aggregated_sessions WHERE session_id = 1"),
                   1000000000);
  ck_assert_int_eq(db_int("SELECT count(*) FROM stack_buckets"), 6);
  /* Stack 1: 400 bytes (4 allocations) in bucket 0, freed in bucket 1. */
  ck_assert_int_eq(db_int("SELECT alloc_bytes * 10 + alloc_samples FROM stack_buckets"
                          " WHERE stack_id = 1 AND bucket_ns = 1700000000000000000"), 4001);
  ck_assert_int_eq(db_int("SELECT freed_bytes * 10 + freed_samples FROM stack_buckets"
                          " WHERE stack_id = 1 AND bucket_ns = 1700000001000000000"), 4001);
  ck_assert(db_real("SELECT freed_count FROM stack_buckets WHERE stack_id = 1"
                    " AND freed_samples = 1") == 4.0);
  ck_assert_int_eq(db_int("SELECT alloc_bytes FROM stack_buckets WHERE stack_id IS NULL"), 9);
  /* Stack 2's row ends at the reattribute (2.5 s), where stack 3's begins. */
  ck_assert_int_eq(db_int("SELECT alloc_bytes - freed_bytes FROM stack_buckets"
                          " WHERE stack_id = 2 AND bucket_ns = 1700000001000000000"), 300);
  ck_assert_int_eq(db_int("SELECT freed_bytes FROM stack_buckets"
                          " WHERE stack_id = 2 AND bucket_ns = 1700000002000000000"), 300);
  ck_assert_int_eq(db_int("SELECT alloc_bytes FROM stack_buckets"
                          " WHERE stack_id = 3 AND bucket_ns = 1700000002000000000"), 300);
  /* stack_live: stack 1 live 400 at the end of bucket 0, 0 at the end of bucket 1. */
  ck_assert_int_eq(db_int("SELECT live_bytes FROM stack_live WHERE stack_id = 1"
                          " AND end_ns = 1700000001000000000"), 400);
  ck_assert_int_eq(db_int("SELECT live_bytes FROM stack_live WHERE stack_id = 1"
                          " AND end_ns = 1700000002000000000"), 0);
  /* Size classes: 100 (class 7, three rows: two lives of one block and another) and 3
   * (class 2). */
  ck_assert_int_eq(db_int("SELECT samples * 100000 + est_bytes FROM size_classes"
                          " WHERE size_class = 7 AND min_size = 64 AND max_size = 127"),
                   3 * 100000 + 1000);
  ck_assert_int_eq(db_int("SELECT samples FROM size_classes WHERE size_class = 2"
                          " AND min_size = 2 AND max_size = 3"), 1);
  ck_assert_int_eq(mismatches(), 0);
}
END_TEST

/* Small batches commit often, so frees meet rows both pending and stored. */
/* The site aggregate of the small session above: per line (frames 1-3 are lines 1-3 of
 * m.py; stacks 1-3 are lines {1,2}, {2,3}, {3,1}) and 100 ms bucket, the net change and
 * the highest level relative to the bucket's start. Every change here comes at its
 * bucket's first instant, so the start does not count; the reattribute from stack 2 to 3
 * moves 300 bytes from line 2 to line 1 and leaves line 3, on both, unchanged (no row). */
START_TEST(agg_site_known_values) {
  hp_store *s = start_cfg((hp_store_config){0});
  hp_store_session *a = session(s, 1);
  hp_event e[] = {
    ev(HP_EV_ALLOC, 100, 0x1000, 100, 400, 1),
    ev(HP_EV_ALLOC, 200, 0x2000, 3, 9, 0),
    ev(HP_EV_ALLOC, 230, 0x4000, 10, 50, 1),  /* a 50-byte spike within bucket 200 */
    ev(HP_EV_FREE, 260, 0x4000, 0, 0, 0),
    ev(HP_EV_FREE, 1500, 0x1000, 0, 0, 0),
    ev(HP_EV_ALLOC, 1600, 0x3000, 100, 300, 2),
    ev(HP_EV_REATTRIBUTE, 2500, 0x3000, 0, 0, 3),
  };
  ck_assert_int_eq(hp_store_events(s, a, e, 7), 0);
  end(s, a, 3000);
  ck_assert_int_eq(hp_store_stop(s), 0);
  ck_assert_int_eq(db_int("SELECT bucket_ns FROM site_sessions"), 100000000);
  ck_assert_int_eq(db_int("SELECT done_ns = 9223372036854775807 FROM site_sessions"), 1);
  ck_assert_int_eq(
    db_int("SELECT group_concat(x, ' ') = '1:100:400:400 1:200:0:50 1:1500:-400:-400"
           " 1:2500:300:300 2:100:400:400 2:200:0:50 2:1500:-400:-400 2:1600:300:300"
           " 2:2500:-300:-300 3:1600:300:300' FROM (SELECT frame_id || ':' ||"
           " ((bucket_ns - 1700000000000000000) / 1000000) || ':' || net_bytes || ':' ||"
           " high_bytes x FROM agg_site ORDER BY frame_id, bucket_ns)"), 1);
  /* The view: the level before each bucket, and the highest within it. */
  ck_assert_int_eq(db_int("SELECT before_bytes * 1000 + high_bytes FROM site_buckets"
                          " WHERE lineno = 2 AND bucket_ns = 1700000000200000000"), 400450);
  ck_assert_int_eq(mismatches(), 0);
}
END_TEST

/* Agent threads' batches reach heapprofd out of time order: here three blocks arrive
 * latest first, so both the bucket's allocations and its frees come out of order. In
 * time order the line reaches 600 bytes (135-159 and 146-174 ms overlap); taken as they
 * came it would reach 700, with only the frees sorted 400. */
START_TEST(agg_site_events_out_of_time_order) {
  hp_store *s = start_cfg((hp_store_config){0});
  hp_store_session *a = session(s, 1);
  hp_event e[] = {
    ev(HP_EV_ALLOC, 171, 0x3000, 100, 100, 1), ev(HP_EV_ALLOC, 146, 0x1000, 300, 300, 1),
    ev(HP_EV_ALLOC, 135, 0x2000, 300, 300, 1), ev(HP_EV_FREE, 185, 0x3000, 0, 0, 0),
    ev(HP_EV_FREE, 174, 0x1000, 0, 0, 0),      ev(HP_EV_FREE, 159, 0x2000, 0, 0, 0),
  };
  ck_assert_int_eq(hp_store_events(s, a, e, 6), 0);
  end(s, a, 1000);
  ck_assert_int_eq(hp_store_stop(s), 0);
  ck_assert_int_eq(db_int("SELECT count(*) FROM site_sessions"), 1); /* not given up */
  ck_assert_int_gt(db_int("SELECT count(*) FROM agg_site"), 0);
  ck_assert_int_eq(db_int("SELECT count(*) FROM agg_site WHERE bucket_ns != 1700000000100000000"
                          " OR net_bytes != 0 OR high_bytes != 600"), 0);
  ck_assert_int_eq(mismatches(), 0);
}
END_TEST

/* An event stamped well before the bucket its session's site aggregate has written
 * gives that aggregate up: its rows go, readers read the alloc rows. */
START_TEST(agg_site_given_up_for_an_event_too_late) {
  hp_store *s = start_cfg((hp_store_config){.commit_ms = 5});
  hp_store_session *a = session(s, 1);
  hp_store_session *b = session(s, 2);
  hp_event e[40];
  for (int i = 0; i < 40; i++)
    e[i] = ev(HP_EV_ALLOC, 50 + 50 * (uint64_t)i, 0x1000 + 16u * (uint64_t)i, 8, 80, 1);
  ck_assert_int_eq(hp_store_events(s, a, e, 40), 0);
  ck_assert_int_eq(hp_store_events(s, b, e, 40), 0);
  for (int i = 0; i < 10000 && db_int("SELECT count(*) FROM site_sessions"
                                      " WHERE done_ns > 1700000001000000000") < 2; i++)
    sleep_ms(2);
  ck_assert_int_eq(db_int("SELECT count(*) FROM site_sessions"
                          " WHERE done_ns > 1700000001000000000"), 2);
  hp_event late = ev(HP_EV_ALLOC, 120, 0x9000, 8, 80, 2);
  ck_assert_int_eq(hp_store_events(s, a, &late, 1), 0);
  end(s, a, 3000);
  end(s, b, 3000);
  ck_assert_int_eq(hp_store_stop(s), 0);
  ck_assert_int_eq(db_int("SELECT count(*) FROM alloc WHERE session_id = 1"), 41);
  ck_assert_int_eq(db_int("SELECT group_concat(session_id) FROM site_sessions"), 2);
  ck_assert_int_eq(db_int("SELECT count(DISTINCT session_id) FROM agg_site"), 1);
  ck_assert_int_eq(mismatches(), 0);
}
END_TEST

START_TEST(agg_equal_a_group_by_over_the_rows) {
  uint32_t batch = _i == 0 ? 16 : 0;
  hp_store *s = start_cfg((hp_store_config){.batch_rows = batch, .commit_ms = 5});
  hp_store_session *a = session(s, 1);
  hp_store_session *b = session(s, 2);
  workload(s, a, 1, 5);
  workload(s, b, 2, 3);
  end(s, a, 6000);
  hp_store_session_end(s, b, HP_SESSION_DISCONNECTED, NULL);
  ck_assert_int_eq(hp_store_stop(s), 0);
  ck_assert_int_gt(db_int("SELECT count(*) FROM alloc WHERE freed_ns IS NOT NULL"), 1000);
  ck_assert_int_gt(db_int("SELECT count(*) FROM agg_stack"), 20);
  ck_assert_int_eq(db_int("SELECT count(*) FROM agg_session"), 2);
  ck_assert_int_gt(db_int("SELECT count(*) FROM agg_site"), 20);
  ck_assert_int_eq(db_int("SELECT count(*) FROM agg_site_session WHERE done_ns ="
                          " 9223372036854775807"), 2);
  ck_assert_int_eq(mismatches(), 0);
  /* The comparison sees one sample too many, and one count off by more than rounding. */
  sqlite3 *db = hp_test_db_open(dbpath);
  ck_assert_int_eq(sqlite3_exec(db, "UPDATE agg_stack SET freed_samples = freed_samples + 1"
                                " WHERE stack_id = 2 AND freed_samples > 0 AND bucket_ns ="
                                " (SELECT max(bucket_ns) FROM agg_stack WHERE stack_id = 2);"
                                " UPDATE agg_size SET est_count = est_count * 1.000001"
                                " WHERE size_class = 3 AND session_id = 1", NULL, NULL, NULL),
                   SQLITE_OK);
  sqlite3_close(db);
  ck_assert_int_eq(mismatches(), 2);
}
END_TEST

/* More sessions in one transaction than have size-class arrays (store_agg.c): the rest
 * go through the table, with the same result. */
START_TEST(agg_many_sessions_in_one_transaction) {
  hp_store *s = start_cfg((hp_store_config){.commit_ms = 100000});
  hp_store_session *ss[11];
  for (int i = 0; i < 11; i++)
    ss[i] = session(s, 100 + i);
  for (int i = 0; i < 11; i++)
    workload(s, ss[i], 10u + (unsigned)i, 1);
  for (int i = 0; i < 11; i++)
    end(s, ss[i], 2000);
  ck_assert_int_eq(hp_store_stop(s), 0);
  ck_assert_int_eq(db_int("SELECT count(DISTINCT session_id) FROM agg_size"), 11);
  ck_assert_int_eq(mismatches(), 0);
}
END_TEST

/* Blocks of 4 GiB and more do not fit the address map's 32-bit size: their rows are read
 * back when they end, pending or stored, for the aggregates and the timeline's count. */
START_TEST(agg_blocks_over_4_gib_are_read_back) {
  hp_store *s = start_cfg((hp_store_config){.commit_ms = 5});
  hp_store_session *a = session(s, 1);
  const uint64_t G = 1ull << 30;
  hp_event e1[] = {
    ev(HP_EV_ALLOC, 1, 0x1000, 5 * G, 10 * G, 1),  /* stands for 2 allocations */
    ev(HP_EV_ALLOC, 2, 0x2000, 6 * G, 6 * G, 0),
    ev(HP_EV_ALLOC, 3, 0x3000, 7 * G, 7 * G, 2),
  };
  ck_assert_int_eq(hp_store_events(s, a, e1, 3), 0);
  for (int i = 0; i < 10000 && db_int("SELECT count(*) FROM alloc") < 3; i++)
    sleep_ms(2);
  ck_assert_int_eq(db_int("SELECT count(*) FROM alloc"), 3);  /* stored: ends are UPDATEs */
  hp_event e2[] = {
    ev(HP_EV_FREE, 1200, 0x1000, 0, 0, 0),
    ev(HP_EV_REATTRIBUTE, 1300, 0x2000, 0, 0, 3),
    ev(HP_EV_ALLOC, 1400, 0x3000, 8 * G, 8 * G, 1),  /* over a live block: its end */
    ev(HP_EV_FREE, 1500, 0x3000, 0, 0, 0),           /* a pending row's end */
  };
  ck_assert_int_eq(hp_store_events(s, a, e2, 4), 0);
  end(s, a, 2000);
  ck_assert_int_eq(hp_store_stop(s), 0);
  ck_assert_int_eq(db_int("SELECT count(*) FROM alloc WHERE freed_ns IS NOT NULL"), 4);
  ck_assert(db_real("SELECT freed_count FROM agg_stack WHERE stack_id = 1"
                    " AND bucket_ns = 1700000001000000000") == 3.0);
  /* The timeline counted 2 + 1 + 1 live at first, and after the ends only the
   * reattributed block. */
  ck_assert_int_eq(db_int("SELECT max(live_count) FROM timeline"), 4);
  ck_assert_int_eq(db_int("SELECT end_bytes FROM timeline_detail ORDER BY ts_ns DESC"
                          " LIMIT 1"), (int64_t)(6 * G));
  ck_assert_int_eq(mismatches(), 0);
}
END_TEST

/* One transaction with more keys (session, bucket, stack) than the sums may hold
 * (HP_STORE_AGG_MAX_ENTRIES, 65536): what is summed so far is written early, in the same
 * transaction, and the result is the same. */
START_TEST(agg_more_keys_than_one_transaction_holds) {
  enum { STACKS = 300, SECONDS = 240, N = STACKS * SECONDS };
  hp_store *s = start_cfg((hp_store_config){.commit_ms = 1000000, .batch_rows = 1000000});
  hp_store_session *a = session(s, 1);
  for (uint32_t k = 4; k <= STACKS; k++) {  /* stacks 1-3 exist; frame k, stack k */
    hp_frame_def f = {k, S("f"), S("many.py"), (int32_t)k};
    ck_assert_int_eq(hp_store_frame_def(s, a, &f), 0);
    uint32_t ids[1] = {k};
    hp_stack_def st = {.stack_id = k, .depth = 1, .frame_ids = ids};
    ck_assert_int_eq(hp_store_stack_def(s, a, &st), 0);
  }
  static hp_event e[N];
  for (uint32_t i = 0; i < N; i++)
    e[i] = ev(HP_EV_ALLOC, (uint64_t)(i / STACKS) * 1000 + 1, 0x100000 + 16u * i, 24, 48,
              i % STACKS + 1);
  for (uint32_t i = 0; i < N; i += 12000)
    ck_assert_int_eq(hp_store_events(s, a, e + i, N - i < 12000 ? N - i : 12000), 0);
  end(s, a, SECONDS * 1000 + 10);
  ck_assert_int_eq(hp_store_stop(s), 0);
  ck_assert_int_eq(db_int("SELECT count(*) FROM alloc"), N);
  ck_assert_int_gt(db_int("SELECT count(*) FROM agg_stack"), 65536);
  ck_assert_int_eq(mismatches(), 0);
}
END_TEST

/* A full disk rolls back transactions with their aggregates; their replay must sum the
 * rows again, once. Loop 1: 3 s buckets of 1500 events, whose waiting lists span several
 * chunks (store_site.c), the full disk coming after some of a bucket's rows committed. */
START_TEST(agg_survive_rolled_back_transactions) {
  hp_store *s = start_cfg((hp_store_config){
    .batch_rows = _i == 0 ? 64 : 333, .commit_ms = 10,
    .timeline_interval_ns = _i == 0 ? 0 : 3000000000});
  hp_store_session *a = session(s, 1);
  workload(s, a, 3, 2);
  if (_i == 1) /* the first rows committed: the full disk comes in the middle of a bucket */
    for (int i = 0; i < 5000 && db_int("SELECT count(*) FROM alloc") < 200; i++)
      sleep_ms(2);
  long before = hp_fault_writes_refused();
  hp_fault_set_full(1);
  workload_from(s, a, 4, 2001, 2); /* later: the site aggregate takes no event too late */
  for (int i = 0; i < 10000 && hp_fault_writes_refused() == before; i++)
    sleep_ms(2);
  ck_assert_int_gt(hp_fault_writes_refused(), before);
  sleep_ms(200);  /* more attempts fail */
  hp_fault_set_full(0);
  end(s, a, 9000);
  ck_assert_int_eq(hp_store_stop(s), 0);
  ck_assert_int_eq(db_int("SELECT events_dropped FROM sessions"), 0);
  ck_assert_int_eq(db_int("SELECT count(*) FROM agg_site_session"), 1); /* not given up */
  ck_assert_int_gt(db_int("SELECT count(*) FROM agg_site"), 0);
  ck_assert_int_eq(mismatches(), 0);
}
END_TEST

/* A transaction given up (another writer took an id it holds) loses its rows and their
 * aggregates together. */
START_TEST(agg_lose_what_a_given_up_transaction_loses) {
  hp_store *s = start_cfg((hp_store_config){.batch_rows = 5, .commit_ms = 100000});
  hp_store_session *a = session(s, 1);
  hp_event e1[5], e2[5];
  for (int i = 0; i < 5; i++) {
    e1[i] = ev(HP_EV_ALLOC, (uint64_t)i + 1, 0x1000 + 16u * (uint64_t)i, 8, 80, 1);
    e2[i] = ev(HP_EV_ALLOC, (uint64_t)i + 1100, 0x2000 + 16u * (uint64_t)i, 8, 80, 2);
  }
  ck_assert_int_eq(hp_store_events(s, a, e1, 5), 0);
  for (int i = 0; i < 10000 && db_int("SELECT count(*) FROM sessions WHERE"
                                      " events_received = 5") == 0; i++)
    sleep_ms(2);
  long before = hp_fault_writes_refused();
  hp_fault_set_full(1);
  ck_assert_int_eq(hp_store_events(s, a, e2, 5), 0);
  for (int i = 0; i < 10000 && hp_fault_writes_refused() == before; i++)
    sleep_ms(2);
  ck_assert_int_gt(hp_fault_writes_refused(), before);
  sqlite3 *other = NULL;
  ck_assert_int_eq(sqlite3_open_v2(dbpath, &other, SQLITE_OPEN_READWRITE, "unix"), SQLITE_OK);
  sqlite3_busy_timeout(other, 5000);
  ck_assert_int_eq(sqlite3_exec(other, "INSERT INTO alloc (id, session_id, ts_ns, thread_id,"
                                " domain, address, size, est_bytes) VALUES (1, 99, 1, 1, 0, 1,"
                                " 1, 1)", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(other);
  hp_fault_set_full(0);
  hp_event fr = ev(HP_EV_FREE, 2500, 0x2000, 0, 0, 0);
  ck_assert_int_eq(hp_store_events(s, a, &fr, 1), 0);
  end(s, a, 3000);
  ck_assert_int_eq(hp_store_stop(s), -HP_ESQLITE);
  ck_assert_int_eq(db_int("SELECT count(*) FROM alloc WHERE session_id = 1"), 5);
  ck_assert_int_eq(db_int("SELECT total(alloc_bytes) FROM agg_stack"), 400);
  ck_assert_int_eq(db_int("SELECT total(freed_bytes) FROM agg_stack"), 80);
  ck_assert_int_eq(mismatches(), 0);
}
END_TEST

Suite *store_agg_suite(void) {
  Suite *s = suite_create("store_agg");
  TCase *core = tcase_create("core");
  tcase_add_checked_fixture(core, setup, teardown);
  tcase_set_timeout(core, 60);
  tcase_add_test(core, agg_known_values_of_a_small_session);
  tcase_add_test(core, agg_site_known_values);
  tcase_add_test(core, agg_site_events_out_of_time_order);
  tcase_add_test(core, agg_site_given_up_for_an_event_too_late);
  tcase_add_loop_test(core, agg_equal_a_group_by_over_the_rows, 0, 2);
  tcase_add_test(core, agg_many_sessions_in_one_transaction);
  tcase_add_test(core, agg_blocks_over_4_gib_are_read_back);
  tcase_add_test(core, agg_more_keys_than_one_transaction_holds);
  suite_add_tcase(s, core);
  TCase *faults = tcase_create("faults");
  tcase_add_checked_fixture(faults, setup_faults, teardown_faults);
  tcase_set_timeout(faults, 60);
  tcase_add_loop_test(faults, agg_survive_rolled_back_transactions, 0, 2);
  tcase_add_test(faults, agg_lose_what_a_given_up_transaction_loses);
  suite_add_tcase(s, faults);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(store_agg_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
