/* pprof.c — periodic pprof export: heapprofd --pprof-dir DIR --pprof-every SECONDS.
 *
 * Beside the pipeline, not in it: every period the loop thread spawns
 *   PYTHON -m heapprof export --format pprof --db DB --dir DIR --since S --until U
 * (tools/cmd_export.py), which reads the database read-only (WAL: it neither blocks the
 * store thread nor waits for it) and writes one profile per session recording in (S, U].
 * Ranges tile: each starts where the last one handed out ended, so the alloc_* values of
 * a session's files add up to its allocations, even across a skipped period. The profile
 * encoder exists once, in Python; this file only schedules it.
 *
 * Ingestion never waits for an export: spawning is a fork/exec on the loop thread, the
 * child runs at the lowest CPU priority, at most one runs at a time, and a period that
 * comes while one still runs is skipped with a warning. The child stays in heapprofd's
 * session: with the kernel's autogroup scheduling a new session (setsid) would be a group
 * of its own, with a fair share of the CPU whatever its nice value. So a terminal's
 * Ctrl-C reaches the export as well as heapprofd; it just ends. The child gets
 * heapprofd's environment without HEAPPROF_* (a HEAPPROF_SOCKET would make the exporter
 * profile itself into this very daemon). */
#include "hp_pprof.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "hp_log.h"

#ifndef HP_PYTHON
#define HP_PYTHON "python3"
#endif

extern char **environ;

struct hp_pprof {
  uv_loop_t *loop;
  uv_timer_t tick;   /* the period */
  uv_timer_t kill;   /* hp_pprof_stop(): SIGKILL after HP_PPROF_KILL_MS */
  uv_process_t proc; /* the running export, while busy */
  int busy;          /* proc spawned and its handle not yet closed */
  int running;       /* proc spawned and its exit not yet seen */
  int stopping;      /* hp_pprof_stop() was called: a running export is ended */
  int open_handles;  /* handles not yet through their close callback */
  uint64_t every_ms;
  uint64_t spawned_ms; /* uv_now() when the running export started */
  int64_t since_ns;    /* end of the last range handed to an export */
  hp_pprof_counts counts;
  char *python, *db, *dir;
  char **env; /* environ without HEAPPROF_*, NULL-terminated */
};

static int64_t wall_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void fmt_epoch(char *buf, size_t len, int64_t ns)
{
  snprintf(buf, len, "%" PRId64 ".%09" PRId64, ns / 1000000000, ns % 1000000000);
}

static void free_all(hp_pprof *p)
{
  if (p->env != NULL)
    for (char **e = p->env; *e != NULL; e++)
      free(*e);
  free(p->env);
  free(p->python);
  free(p->db);
  free(p->dir);
  free(p);
}

static void on_handle_closed(uv_handle_t *h)
{
  hp_pprof *p = h->data;
  if (h == (uv_handle_t *)&p->proc)
    p->busy = 0;
  if (--p->open_handles == 0)
    free_all(p);
}

static void on_export_exit(uv_process_t *proc, int64_t status, int term_signal)
{
  hp_pprof *p = proc->data;
  p->running = 0;
  double secs = (double)(uv_now(p->loop) - p->spawned_ms) / 1000.0;
  if (p->stopping || term_signal == SIGINT || status == 128 + SIGINT) {
    /* Ended on purpose: by hp_pprof_stop(), or by a terminal's Ctrl-C, which stops
     * heapprofd too. */
    hp_log(HP_LOG_INFO, "pprof export (pid %d) ended after %.1f s: heapprofd is stopping",
           proc->pid, secs);
  } else if (term_signal != 0) {
    p->counts.failed++;
    hp_log(HP_LOG_WARN,
           "pprof export (pid %d) was ended by signal %d after %.1f s; the "
           "profiles of its period are missing",
           proc->pid, term_signal, secs);
  } else if (status != 0) {
    p->counts.failed++;
    hp_log(HP_LOG_WARN,
           "pprof export (pid %d) failed with exit status %" PRId64 " after "
           "%.1f s (its messages are above); the profiles of its period are missing",
           proc->pid, status, secs);
  } else {
    hp_log(HP_LOG_DEBUG, "pprof export (pid %d) wrote its profiles in %.1f s", proc->pid,
           secs);
  }
  p->open_handles++;
  uv_close((uv_handle_t *)proc, on_handle_closed);
}

static void spawn_export(hp_pprof *p)
{
  int64_t until = wall_ns() - (int64_t)HP_PPROF_SETTLE_MS * 1000000;
  if (until <= p->since_ns)
    return; /* the wall clock went back: nothing new to export yet */
  char since_arg[32], until_arg[32];
  fmt_epoch(since_arg, sizeof since_arg, p->since_ns);
  fmt_epoch(until_arg, sizeof until_arg, until);
  char *args[] = {p->python, "-m",      "heapprof", "export",  "--format",
                  "pprof",   "--db",    p->db,      "--dir",   p->dir,
                  "--since", since_arg, "--until",  until_arg, NULL};
  /* Our stdout carries the "listening" line only; the exporter's messages are logs. */
  uv_stdio_container_t stdio[3] = {
    {.flags = UV_IGNORE},
    {.flags = UV_IGNORE},
    {.flags = UV_INHERIT_FD, .data.fd = STDERR_FILENO},
  };
  uv_process_options_t opts = {
    .exit_cb = on_export_exit,
    .file = p->python,
    .args = args,
    .env = p->env,
    .stdio_count = 3,
    .stdio = stdio,
  };
  p->proc.data = p;
  int rc = uv_spawn(p->loop, &p->proc, &opts);
  if (rc < 0) {
    /* libuv wants even a failed process handle closed. */
    p->counts.failed++;
    hp_log(HP_LOG_WARN, "cannot start the pprof export (%s): %s; trying again next period",
           p->python, uv_strerror(rc));
    p->busy = 1;
    p->open_handles++;
    uv_close((uv_handle_t *)&p->proc, on_handle_closed);
    return;
  }
  p->busy = p->running = 1;
  p->counts.started++;
  p->spawned_ms = uv_now(p->loop);
  p->since_ns = until;
  uv_unref((uv_handle_t *)&p->proc);
  if (uv_os_setpriority(p->proc.pid, UV_PRIORITY_LOW) < 0)
    hp_log(HP_LOG_DEBUG, "cannot lower the priority of the pprof export (pid %d)",
           p->proc.pid);
  hp_log(HP_LOG_DEBUG, "pprof export (pid %d) of the range up to %s started", p->proc.pid,
         until_arg);
}

static void on_tick(uv_timer_t *t)
{
  hp_pprof *p = t->data;
  if (p->busy && !p->running)
    return; /* a failed spawn still closing: the next range covers this period */
  if (p->running) {
    p->counts.skipped++;
    hp_log(HP_LOG_WARN,
           "pprof export still running after %.1f s (--pprof-every %.1f s): "
           "skipping this period; the next profiles cover it",
           (double)(uv_now(p->loop) - p->spawned_ms) / 1000.0,
           (double)p->every_ms / 1000.0);
    return;
  }
  spawn_export(p);
}

static void on_kill(uv_timer_t *t)
{
  hp_pprof *p = t->data;
  if (p->running && uv_process_kill(&p->proc, SIGKILL) == 0)
    hp_log(HP_LOG_WARN, "pprof export (pid %d) did not end within %d ms of SIGTERM: killed",
           p->proc.pid, HP_PPROF_KILL_MS);
}

int hp_pprof_check_dir(const char *dir, char *err, size_t errlen)
{
  struct stat st;
  if (stat(dir, &st) < 0) {
    int e = errno;
    snprintf(err, errlen, "--pprof-dir %s: %s", dir, strerror(e));
    return -e;
  }
  if (!S_ISDIR(st.st_mode)) {
    snprintf(err, errlen, "--pprof-dir %s: not a directory", dir);
    return -ENOTDIR;
  }
  if (access(dir, W_OK | X_OK) < 0) {
    int e = errno;
    snprintf(err, errlen, "--pprof-dir %s: cannot write into it: %s", dir, strerror(e));
    return -e;
  }
  return 0;
}

/* heapprofd's environment without HEAPPROF_*; NULL on OOM. */
static char **child_env(void)
{
  size_t n = 0;
  for (char **e = environ; *e != NULL; e++)
    n++;
  char **env = calloc(n + 1, sizeof *env);
  if (env == NULL)
    return NULL;
  size_t k = 0;
  for (char **e = environ; *e != NULL; e++) {
    if (strncmp(*e, "HEAPPROF_", 9) == 0)
      continue;
    if ((env[k] = strdup(*e)) == NULL)
      goto out_free;
    k++;
  }
  return env;
out_free:
  for (size_t i = 0; i < k; i++)
    free(env[i]);
  free(env);
  return NULL;
}

int hp_pprof_start(uv_loop_t *loop, const hp_pprof_config *cfg, hp_pprof **out, char *err,
                   size_t errlen)
{
  const char *python = cfg->python != NULL ? cfg->python : HP_PYTHON;
  if (access(python, X_OK) < 0) {
    snprintf(err, errlen,
             "--pprof-dir needs the Python exporter, but the interpreter "
             "heapprof was built with, %s, cannot be run: %s",
             python, strerror(errno));
    return -ENOENT;
  }
  hp_pprof *p = calloc(1, sizeof *p);
  if (p == NULL)
    goto out_nomem;
  p->loop = loop;
  p->every_ms = cfg->every_ms;
  /* The first range starts now: sessions recorded before heapprofd started are over. */
  p->since_ns = wall_ns();
  p->python = strdup(python);
  p->db = strdup(cfg->db_path);
  p->dir = strdup(cfg->dir);
  p->env = child_env();
  if (p->python == NULL || p->db == NULL || p->dir == NULL || p->env == NULL)
    goto out_free;
  uv_timer_init(loop, &p->tick);
  uv_timer_init(loop, &p->kill);
  p->tick.data = p->kill.data = p;
  p->open_handles = 2;
  uv_timer_start(&p->tick, on_tick, cfg->every_ms, cfg->every_ms);
  uv_unref((uv_handle_t *)&p->tick);
  *out = p;
  return 0;
out_free:
  free_all(p);
out_nomem:
  snprintf(err, errlen, "--pprof-dir: out of memory");
  return -ENOMEM;
}

void hp_pprof_counts_get(const hp_pprof *p, hp_pprof_counts *out)
{
  *out = p->counts;
}

void hp_pprof_stop(hp_pprof *p)
{
  if (p == NULL)
    return;
  uv_timer_stop(&p->tick);
  p->stopping = 1;
  if (p->running) {
    hp_log(HP_LOG_INFO, "stopping the running pprof export (pid %d)", p->proc.pid);
    /* Even when it has just exited (the kill fails), its exit must be reaped: the ref
     * keeps the loop polling for it. */
    uv_process_kill(&p->proc, SIGTERM);
    uv_ref((uv_handle_t *)&p->proc);
    uv_timer_start(&p->kill, on_kill, HP_PPROF_KILL_MS, 0);
  }
  /* The loop has returned: only our process handle and timer keep it busy now. */
  while (p->busy)
    uv_run(p->loop, UV_RUN_ONCE);
  hp_log(HP_LOG_INFO,
         "pprof: %" PRIu64 " exports started, %" PRIu64 " periods skipped, "
         "%" PRIu64 " failed",
         p->counts.started, p->counts.skipped, p->counts.failed);
  uv_close((uv_handle_t *)&p->tick, on_handle_closed);
  uv_close((uv_handle_t *)&p->kill, on_handle_closed);
}
