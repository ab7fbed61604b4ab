/* check_pprof.c — heapprofd's periodic pprof export (daemon/pprof.c) on a real libuv loop,
 * with a stand-in exporter: a shell script that logs its arguments, pid and HEAPPROF_*
 * environment, then sleeps as long as the test says (FAKE_SLEEP). What the real exporter
 * writes is tested end to end in tests/integration/test_pprof_export.py.
 *
 * Timing: periods are 100-200 ms and the assertions leave room for a loaded machine
 * (counts as lower bounds, ranges checked for tiling rather than for exact times). */
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "hp_pprof.h"

static char dir[64];
static char script[128], calls[128], envlog[128];
static uv_loop_t loop;

static const char fake_exporter[] =
  "#!/bin/sh\n"
  "[ -n \"$FAKE_IGNORE_TERM\" ] && trap '' TERM\n"   /* before it says it runs */
  "env | grep '^HEAPPROF_' >> \"$FAKE_DIR/env\"\n"
  "echo \"$$ $*\" >> \"$FAKE_DIR/calls\"\n"
  "exec sleep \"$FAKE_SLEEP\"\n";

static void setup(void) {
  snprintf(dir, sizeof dir, "/tmp/hp-check-pprof-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(dir));
  snprintf(script, sizeof script, "%s/exporter.sh", dir);
  snprintf(calls, sizeof calls, "%s/calls", dir);
  snprintf(envlog, sizeof envlog, "%s/env", dir);
  FILE *f = fopen(script, "w");
  ck_assert_ptr_nonnull(f);
  fputs(fake_exporter, f);
  fclose(f);
  ck_assert_int_eq(chmod(script, 0755), 0);
  setenv("FAKE_DIR", dir, 1);
  setenv("FAKE_SLEEP", "0", 1);
  unsetenv("FAKE_IGNORE_TERM");
  /* The daemon's own environment may name its socket; the exporter must not see it. */
  setenv("HEAPPROF_SOCKET", "/tmp/should-not-reach-the-exporter.sock", 1);
  ck_assert_int_eq(uv_loop_init(&loop), 0);
}

static void teardown(void) {
  uv_loop_close(&loop);
  unlink(script);
  unlink(calls);
  unlink(envlog);
  rmdir(dir);
}

static hp_pprof *start(uint64_t every_ms) {
  hp_pprof_config cfg = {.db_path = "rec.sqlite", .dir = dir, .every_ms = every_ms,
                         .python = script};
  hp_pprof *p = NULL;
  char err[256];
  ck_assert_msg(hp_pprof_start(&loop, &cfg, &p, err, sizeof err) == 0, "%s", err);
  return p;
}

static void on_deadline(uv_timer_t *t) { uv_close((uv_handle_t *)t, NULL); }

/* Runs the loop for ms: the period timer and the exports keep no loop alive. */
static void run_for(uint64_t ms) {
  uv_timer_t t;
  uv_timer_init(&loop, &t);
  uv_timer_start(&t, on_deadline, ms, 0);
  uv_run(&loop, UV_RUN_DEFAULT);
}

static void stop(hp_pprof *p) {
  hp_pprof_stop(p);
  uv_run(&loop, UV_RUN_DEFAULT);   /* the close callbacks free it */
}

typedef struct {
  long pid;
  char since[32], until[32];
} call;

/* Reads the stand-in's log: one line per export, "PID ARGS". Checks the fixed part of
 * the command line; returns the number of calls. */
static int read_calls(call *out, int max) {
  FILE *f = fopen(calls, "r");
  if (f == NULL)
    return 0;
  char line[1024];
  int n = 0;
  while (n < max && fgets(line, sizeof line, f) != NULL) {
    char db[64], d[64];
    int got = sscanf(line, "%ld -m heapprof export --format pprof --db %63s --dir %63s "
                     "--since %31s --until %31s", &out[n].pid, db, d, out[n].since,
                     out[n].until);
    ck_assert_msg(got == 5, "unexpected exporter command line: %s", line);
    ck_assert_str_eq(db, "rec.sqlite");
    ck_assert_str_eq(d, dir);
    n++;
  }
  fclose(f);
  return n;
}

static double epoch_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Each range starts where the previous one ended; the first starts when hp_pprof_start
 * ran; every one ends HP_PPROF_SETTLE_MS before its export started. */
static void assert_ranges_tile(const call *c, int n, double started, double ended) {
  for (int i = 0; i < n; i++) {
    double s = atof(c[i].since), u = atof(c[i].until);
    ck_assert_msg(u > s, "range %d ends before it starts: %s %s", i, c[i].since, c[i].until);
    if (i == 0)
      ck_assert_msg(s >= started - 0.01 && s <= started + 1.0, "first range starts at %s, "
                    "hp_pprof_start ran at %.3f", c[i].since, started);
    else
      ck_assert_str_eq(c[i].since, c[i - 1].until);
    ck_assert_double_le(u, ended - HP_PPROF_SETTLE_MS / 1000.0 + 0.01);
  }
}

static void assert_no_heapprof_env(void) {
  struct stat st;
  ck_assert_int_eq(stat(envlog, &st), 0);      /* the stand-in ran and wrote it */
  ck_assert_msg(st.st_size == 0, "HEAPPROF_* variables reached the exporter");
}

/* What a run of the loop for run_ms with one period of every_ms did. */
typedef struct {
  hp_pprof_counts k;
  call c[64];
  int n;              /* calls the stand-in logged */
} run_result;

static void run_exports(uint64_t every_ms, uint64_t run_ms, run_result *r) {
  double t0 = epoch_now();
  hp_pprof *p = start(every_ms);
  run_for(run_ms);
  hp_pprof_counts_get(p, &r->k);
  stop(p);
  r->n = read_calls(r->c, 64);
  /* The export running at stop is ended (SIGTERM): on a loaded machine that can come
   * before the stand-in logged its call. */
  ck_assert_int_le(r->n, (int)r->k.started);
  ck_assert_int_ge(r->n, (int)r->k.started - 1);
  assert_ranges_tile(r->c, r->n, t0, epoch_now());
}

START_TEST(pprof_spawns_an_export_each_period_with_ranges_that_tile) {
  run_result r;
  run_exports(150, 1600, &r);
  /* About ten periods; on a loaded machine an export may outlive several periods (each
   * then skipped) and the timer fire late, but exports keep coming, never two at once. */
  ck_assert_uint_ge(r.k.started, 2);
  ck_assert_uint_le(r.k.started + r.k.skipped, 11);
  ck_assert_uint_eq(r.k.failed, 0);
  assert_no_heapprof_env();
}
END_TEST

START_TEST(pprof_skips_periods_while_an_export_runs_and_the_next_covers_them) {
  setenv("FAKE_SLEEP", "0.5", 1);
  run_result r;
  run_exports(100, 1700, &r);
  /* Each export takes five periods: at most one runs at a time (so at most four start
   * in 1.7 s), and the periods that fall inside a running export are skipped, at least
   * one per export before the last. Not more: on a loaded machine the timer fires late
   * and fewer periods come at all. */
  ck_assert_uint_ge(r.k.started, 1);
  ck_assert_uint_le(r.k.started, 4);
  ck_assert_uint_ge(r.k.skipped, r.k.started - 1);
  /* A skipped period is not lost (the ranges tile): the next range covers it. */
  for (int i = 1; i < r.n; i++)
    ck_assert_double_ge(atof(r.c[i].until) - atof(r.c[i].since), 0.45);
}
END_TEST

static void on_poll(uv_timer_t *t) {
  hp_pprof_counts k;
  hp_pprof_counts_get(t->data, &k);
  if (k.started > 0)
    uv_close((uv_handle_t *)t, NULL);
}

/* Runs the loop until the first export has started (at most 10 s); its pid. */
static long first_export(hp_pprof *p) {
  uv_timer_t poll;
  uv_timer_init(&loop, &poll);
  poll.data = p;
  uv_timer_start(&poll, on_poll, 20, 20);
  uv_timer_t guard;
  uv_timer_init(&loop, &guard);
  uv_timer_start(&guard, on_deadline, 10000, 0);
  uv_unref((uv_handle_t *)&guard);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&guard, NULL);
  uv_run(&loop, UV_RUN_NOWAIT);    /* the timers live on this stack frame */
  /* The stand-in logs its pid first thing; give it a moment. */
  call c[4];
  for (int i = 0; i < 200 && read_calls(c, 4) == 0; i++)
    usleep(10000);
  ck_assert_int_eq(read_calls(c, 4), 1);
  return c[0].pid;
}

static void assert_stop_ends_the_export(const char *ignore_term, double at_most_s) {
  setenv("FAKE_SLEEP", "30", 1);
  if (ignore_term)
    setenv("FAKE_IGNORE_TERM", "1", 1);
  hp_pprof *p = start(50);
  long pid = first_export(p);
  ck_assert_int_eq(kill((pid_t)pid, 0), 0);   /* running */
  double t0 = epoch_now();
  hp_pprof_counts k;
  hp_pprof_stop(p);
  double took = epoch_now() - t0;
  hp_pprof_counts_get(p, &k);
  uv_run(&loop, UV_RUN_DEFAULT);
  ck_assert_msg(took < at_most_s, "hp_pprof_stop took %.2f s", took);
  /* Ended and reaped: the pid is gone, not a zombie. */
  ck_assert_int_eq(kill((pid_t)pid, 0), -1);
  ck_assert_int_eq(errno, ESRCH);
  ck_assert_uint_eq(k.failed, 0);    /* ended on purpose, not a failure */
}

START_TEST(pprof_stop_ends_a_running_export_with_sigterm) {
  assert_stop_ends_the_export(NULL, HP_PPROF_KILL_MS / 1000.0);
}
END_TEST

START_TEST(pprof_stop_kills_an_export_that_ignores_sigterm) {
  assert_stop_ends_the_export("1", HP_PPROF_KILL_MS / 1000.0 + 3.0);
}
END_TEST

START_TEST(pprof_check_dir_names_the_problem) {
  char err[256], path[128];
  ck_assert_int_eq(hp_pprof_check_dir(dir, err, sizeof err), 0);
  snprintf(path, sizeof path, "%s/missing", dir);
  ck_assert_int_eq(hp_pprof_check_dir(path, err, sizeof err), -ENOENT);
  ck_assert_ptr_nonnull(strstr(err, path));
  ck_assert_ptr_nonnull(strstr(err, "No such file or directory"));
  ck_assert_int_eq(hp_pprof_check_dir(script, err, sizeof err), -ENOTDIR);
  ck_assert_ptr_nonnull(strstr(err, "not a directory"));
}
END_TEST

START_TEST(pprof_start_refuses_an_interpreter_that_cannot_run) {
  hp_pprof_config cfg = {.db_path = "rec.sqlite", .dir = dir, .every_ms = 100,
                         .python = "/nonexistent/bin/python3"};
  hp_pprof *p = NULL;
  char err[256];
  ck_assert_int_lt(hp_pprof_start(&loop, &cfg, &p, err, sizeof err), 0);
  ck_assert_ptr_null(p);
  ck_assert_ptr_nonnull(strstr(err, "/nonexistent/bin/python3"));
}
END_TEST

static Suite *pprof_suite(void) {
  Suite *s = suite_create("pprof");
  TCase *core = tcase_create("core");
  tcase_add_checked_fixture(core, setup, teardown);
  tcase_set_timeout(core, 60);
  tcase_add_test(core, pprof_spawns_an_export_each_period_with_ranges_that_tile);
  tcase_add_test(core, pprof_skips_periods_while_an_export_runs_and_the_next_covers_them);
  tcase_add_test(core, pprof_stop_ends_a_running_export_with_sigterm);
  tcase_add_test(core, pprof_stop_kills_an_export_that_ignores_sigterm);
  tcase_add_test(core, pprof_check_dir_names_the_problem);
  tcase_add_test(core, pprof_start_refuses_an_interpreter_that_cannot_run);
  suite_add_tcase(s, core);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(pprof_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
