/* hp_pprof.h — heapprofd --pprof-dir/--pprof-every: a pprof profile of every session
 * recording, written into a directory once a period, for continuous-profiling collectors.
 *
 * The loop thread only starts and reaps a child process: the export is the Python
 * exporter (`heapprof export --format pprof --dir`, tools/cmd_export.py), the one pprof
 * encoder, reading the database through its own read-only connection. The loop never
 * waits for it; at most one export runs at a time, and a period that comes while one is
 * still running is skipped (logged) and covered by the next. Loop thread only. */
#ifndef HP_PPROF_H
#define HP_PPROF_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define HP_PPROF_DEFAULT_EVERY_S 60 /* --pprof-dir without --pprof-every */
#define HP_PPROF_MAX_EVERY_S     86400
/* Each period's range ends this long before the export starts: the agent's buffers and
 * the store's commits (HP_STORE_COMMIT_MS, an allocation row by its second commit) put
 * an allocation in the database up to about half a second after it happened. */
#define HP_PPROF_SETTLE_MS 1000
/* At hp_pprof_stop(), a running export has this long to exit after SIGTERM. */
#define HP_PPROF_KILL_MS 2000

typedef struct hp_pprof hp_pprof; /* opaque */

typedef struct {
  const char *db_path; /* copied */
  const char *dir;     /* copied; checked with hp_pprof_check_dir() */
  uint64_t every_ms;   /* the period */
  const char *python;  /* the exporter's interpreter; NULL: HP_PYTHON, set at build */
} hp_pprof_config;

typedef struct {
  uint64_t started; /* exports spawned */
  uint64_t skipped; /* periods skipped because an export was still running */
  uint64_t failed;  /* exports that could not start, exited non-zero or were killed */
} hp_pprof_counts;

/* 0 when dir is a directory we can write into; else a negative errno with one line for
 * users in err. */
int hp_pprof_check_dir(const char *dir, char *err, size_t errlen);
/* Starts the period timer on loop. Neither the timer nor a running export keeps uv_run
 * from returning. 0 and *out, or a negative code with a message in err. */
int hp_pprof_start(uv_loop_t *loop, const hp_pprof_config *cfg, hp_pprof **out, char *err,
                   size_t errlen);
void hp_pprof_counts_get(const hp_pprof *p, hp_pprof_counts *out);
/* After uv_run has returned: stops the timer, ends a running export (SIGTERM, SIGKILL
 * after HP_PPROF_KILL_MS) and waits for it, then closes the handles; the memory is freed
 * by their close callbacks, on the loop's next run. NULL is a no-op. */
void hp_pprof_stop(hp_pprof *p);

#endif /* HP_PPROF_H */
