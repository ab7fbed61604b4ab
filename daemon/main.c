/* main.c — heapprofd: command line, start-up order and exit status.
 *
 * Pipeline: main -> server (libuv) -> conn (decode) -> store (SQLite thread) ->
 * timeline. Start-up checks the socket path before touching the database, so that a
 * refused socket never creates or modifies a database file. Exit status: 0 after a
 * clean SIGINT/SIGTERM shutdown that stored everything received, 1 on a runtime error or
 * when data received could not be stored (the log says what, per session), 2 on a usage
 * error. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <unistd.h>

#include <uv.h>

#include "hp_dblock.h"
#include "hp_log.h"
#include "hp_pprof.h"
#include "hp_schema.h"
#include "hp_server.h"
#include "hp_store.h"

#ifndef HP_VERSION
#define HP_VERSION "unknown"
#endif

static const char usage_text[] =
  "usage: heapprofd --db PATH [--socket PATH] [options]\n"
  "\n"
  "Receives the streams of profiled Python processes (heapprof agents) and stores\n"
  "them in a SQLite database that can be queried while it records.\n"
  "\n"
  "  --db PATH               database to write (created if missing; an existing\n"
  "                          heapprof database gets new sessions appended)\n"
  "  --socket PATH           Unix socket to listen on (default:\n"
  "                          $XDG_RUNTIME_DIR/heapprofd.sock, else\n"
  "                          /tmp/heapprofd-$UID/heapprofd.sock)\n"
  "  --timeline-interval MS  timeline resolution in milliseconds (default 100)\n"
  "  --batch-rows N          rows per database transaction (default 65536); a\n"
  "                          transaction also commits at least every 200 ms\n"
  "  --max-live-allocs N     live sampled allocations tracked per session (default\n"
  "                          4194304, about 256 MiB of memory per session at the\n"
  "                          limit); beyond it new allocations are dropped and\n"
  "                          counted in the session's events_dropped\n"
  "  --log-level LEVEL       error, warn, info (default) or debug\n"
  "  --no-index              do not build the read indexes at shutdown (by default\n"
  "                          heapprofd indexes the allocations once it has stopped\n"
  "                          recording, so that queries over long sessions are fast)\n"
  "  --pprof-dir DIR         write a pprof heap profile of each session recording\n"
  "                          into DIR every --pprof-every seconds (for collectors\n"
  "                          such as Pyroscope; see `heapprof export --help`)\n"
  "  --pprof-every SECONDS   the period of --pprof-dir (default 60)\n"
  "  --help                  show this help and exit\n"
  "  --version               show the version and exit\n"
  "\n"
  "On start heapprofd prints one line, \"heapprofd: listening on PATH\". It logs to\n"
  "stderr. SIGINT or SIGTERM stops it after storing everything received, then it\n"
  "builds the read indexes (a second SIGINT stops that; the data stays intact).\n"
  "Exit status: 0 when everything received was stored, 1 on an error or when some\n"
  "data could not be stored (full disk, database locked until the end), 2 on a\n"
  "usage error.\n";

static int usage_error(const char *fmt, const char *arg)
{
  fprintf(stderr, "heapprofd: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\nTry 'heapprofd --help'.\n");
  return 2;
}

/* Parses a decimal integer in [lo, hi]; 0 on success. */
static int parse_num(const char *s, long long lo, long long hi, long long *out)
{
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
    return -1;
  *out = v;
  return 0;
}

static void close_walk_cb(uv_handle_t *h, void *arg)
{
  (void)arg;
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

int main(int argc, char **argv)
{
  const char *db_path = NULL, *socket_arg = NULL;
  long long interval_ms = 100, batch_rows = HP_STORE_DEFAULT_ROWS;
  long long max_live = HP_STORE_MAX_LIVE_ADDRS;
  int no_index = 0;
  const char *pprof_dir = NULL;
  long long pprof_every = 0;
  static const struct option opts[] = {
    {"db", required_argument, NULL, 'd'},
    {"socket", required_argument, NULL, 's'},
    {"timeline-interval", required_argument, NULL, 't'},
    {"batch-rows", required_argument, NULL, 'b'},
    {"max-live-allocs", required_argument, NULL, 'm'},
    {"log-level", required_argument, NULL, 'l'},
    {"no-index", no_argument, NULL, 'n'},
    {"pprof-dir", required_argument, NULL, 'P'},
    {"pprof-every", required_argument, NULL, 'E'},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
  };
  opterr = 0;
  int opt;
  while ((opt = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
    switch (opt) {
    case 'd': db_path = optarg; break;
    case 's': socket_arg = optarg; break;
    case 't':
      if (parse_num(optarg, 1, 3600000, &interval_ms) < 0)
        return usage_error("--timeline-interval: '%s' is not a number of milliseconds "
                           "from 1 to 3600000",
                           optarg);
      break;
    case 'b':
      /* The store keeps up to two batches of rows in memory (72 bytes each). */
      if (parse_num(optarg, 1, 1000000, &batch_rows) < 0)
        return usage_error("--batch-rows: '%s' is not a number from 1 to 1000000", optarg);
      break;
    case 'm':
      if (parse_num(optarg, 1, HP_STORE_MAX_LIVE_ADDRS, &max_live) < 0) {
        char fmt[96];
        snprintf(fmt, sizeof fmt, "--max-live-allocs: '%%s' is not a number from 1 to %u",
                 HP_STORE_MAX_LIVE_ADDRS);
        return usage_error(fmt, optarg);
      }
      break;
    case 'l': {
      int lvl = hp_log_parse_level(optarg);
      if (lvl < 0)
        return usage_error("--log-level: '%s' is not one of error, warn, info, debug",
                           optarg);
      hp_log_set_level((hp_log_level)lvl);
      break;
    }
    case 'n': no_index = 1; break;
    case 'P': pprof_dir = optarg; break;
    case 'E':
      if (parse_num(optarg, 1, HP_PPROF_MAX_EVERY_S, &pprof_every) < 0)
        return usage_error("--pprof-every: '%s' is not a number of seconds from 1 to 86400",
                           optarg);
      break;
    case 'h': fputs(usage_text, stdout); return 0;
    case 'V':
      printf("heapprofd %s (protocol %u, schema %d)\n", HP_VERSION, HP_PROTO_VERSION,
             HP_SCHEMA_VERSION);
      return 0;
    case ':': return usage_error("option %s needs a value", argv[optind - 1]);
    default: return usage_error("unknown option '%s'", argv[optind - 1]);
    }
  }
  if (optind < argc)
    return usage_error("unexpected argument '%s'", argv[optind]);
  if (db_path == NULL)
    return usage_error("%s", "--db PATH is required");
  if (pprof_every > 0 && pprof_dir == NULL)
    return usage_error("%s", "--pprof-every needs --pprof-dir DIR");

  char path[PATH_MAX];
  int default_dir = 0;
  if (socket_arg != NULL) {
    snprintf(path, sizeof path, "%s", socket_arg);
  } else {
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    if (xdg != NULL && xdg[0] == '/') {
      snprintf(path, sizeof path, "%s/heapprofd.sock", xdg);
    } else {
      snprintf(path, sizeof path, "/tmp/heapprofd-%u/heapprofd.sock", (unsigned)getuid());
      default_dir = 1;
    }
  }

  char err[1024];
  if (pprof_dir != NULL && hp_pprof_check_dir(pprof_dir, err, sizeof err) < 0) {
    fprintf(stderr, "heapprofd: %s\n", err);
    return 1;
  }
  if (hp_server_check_path(path, default_dir, err, sizeof err) < 0) {
    fprintf(stderr, "heapprofd: %s\n", err);
    return 1;
  }
  /* The database connection is used by one thread at a time (opened here, then only
   * by the store thread), so SQLite's per-call connection mutex is pure cost
   * (bench/README.md). Must precede any other SQLite call. Memory statistics would add
   * a global mutex per malloc. */
  if (sqlite3_config(SQLITE_CONFIG_MULTITHREAD) != SQLITE_OK ||
      sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0) != SQLITE_OK)
    hp_log(HP_LOG_DEBUG, "SQLite refused the threading configuration; using its default");
  /* The lock comes before the database is opened, so that a second daemon never
   * writes to it. A lock file that cannot be created (no such directory, no
   * permission) is reported after hp_schema_open has had its say about the database,
   * which names the reason more precisely. */
  hp_dblock *lock = NULL;
  long holder = 0;
  int lock_rc = hp_dblock_acquire(db_path, &lock, &holder);
  if (lock_rc == -EWOULDBLOCK) {
    if (holder > 0)
      fprintf(stderr,
              "heapprofd: %s is being recorded by another heapprofd (pid %ld); "
              "two daemons on one database are not supported\n",
              db_path, holder);
    else
      fprintf(stderr,
              "heapprofd: %s is being recorded by another heapprofd; "
              "two daemons on one database are not supported\n",
              db_path);
    return 1;
  }
  if (lock_rc == -EPERM) {
    fprintf(stderr,
            "heapprofd: the lock file %s.lock belongs to another user; refusing "
            "to use it or to open the database\n",
            db_path);
    return 1;
  }
  if (hp_schema_path_warning(db_path, err, sizeof err))
    hp_log(HP_LOG_WARN, "%s", err);
  sqlite3 *db = NULL;
  if (hp_schema_open(db_path, &db, err, sizeof err) < 0) {
    fprintf(stderr, "heapprofd: %s\n", err);
    hp_dblock_release(lock);
    return 1;
  }
  if (lock_rc < 0) {
    fprintf(stderr, "heapprofd: cannot create the lock file %s.lock: %s\n", db_path,
            lock_rc == -HP_ENOMEM ? "out of memory" : strerror(-lock_rc));
    sqlite3_close(db);
    return 1;
  }
  /* Holding the lock, we know no daemon is writing: sessions still 'running' were left
   * by one that was killed, and would otherwise stay 'running' forever. */
  long long stale = 0;
  if (hp_schema_end_stale_sessions(db, &stale) < 0)
    hp_log(HP_LOG_WARN, "%s: cannot end the sessions a stopped daemon left running: %s",
           db_path, sqlite3_errmsg(db));
  else if (stale > 0)
    hp_log(HP_LOG_INFO,
           "%lld session%s left running by a heapprofd that did not stop "
           "cleanly: marked disconnected, ended at their last event",
           stale, stale == 1 ? "" : "s");
  signal(SIGPIPE, SIG_IGN);

  /* The read indexes are built at shutdown; a database that already has them (from an
   * earlier recording) keeps them up to date on every insert, which costs ingestion. */
  int idx_present = 0, idx_total = 0;
  const char *index_sql = no_index ? NULL : hp_schema_index_sql();
  if (hp_schema_index_count(db, &idx_present, &idx_total) < 0) {
    hp_log(HP_LOG_WARN, "%s: cannot list its indexes: %s", db_path, sqlite3_errmsg(db));
  } else if (idx_present > 0) {
    hp_log(HP_LOG_WARN,
           "%s already has %d of the %d read indexes: recording into it is "
           "slower (they are kept up to date on every insert)",
           db_path, idx_present, idx_total);
    if (idx_present == idx_total)
      index_sql = NULL;
  }

  int status = 1;
  uv_loop_t *loop = uv_default_loop();
  hp_server *srv = hp_server_new(loop);
  if (srv == NULL) {
    fprintf(stderr, "heapprofd: cannot set up the event loop\n");
    sqlite3_close(db);
    hp_dblock_release(lock);
    return 1;
  }
  hp_store *store = NULL;
  hp_store_config cfg = {
    .db = db,
    .timeline_interval_ns = interval_ms * 1000000LL,
    .batch_rows = (uint32_t)batch_rows,
    .max_live_addrs = (uint32_t)max_live,
    .on_resume = hp_server_wake,
    .ctx = srv,
    .index_sql = index_sql,
  };
  int rc = hp_store_start(&store, &cfg);
  if (rc < 0) {
    fprintf(stderr, "heapprofd: cannot start storage on %s: %s\n", db_path,
            hp_strerror(rc));
    goto out_close_loop;
  }
  if (hp_server_listen(srv, path, store, err, sizeof err) < 0) {
    fprintf(stderr, "heapprofd: %s\n", err);
    goto out_stop_store;
  }
  hp_pprof *pprof = NULL;
  if (pprof_dir != NULL) {
    hp_pprof_config pcfg = {
      .db_path = db_path,
      .dir = pprof_dir,
      .every_ms = (uint64_t)(pprof_every > 0 ? pprof_every : HP_PPROF_DEFAULT_EVERY_S) *
                  1000,
    };
    if (hp_pprof_start(loop, &pcfg, &pprof, err, sizeof err) < 0) {
      fprintf(stderr, "heapprofd: %s\n", err);
      goto out_stop_store;
    }
  }
  printf("heapprofd: listening on %s\n", path);
  fflush(stdout);
  hp_log(HP_LOG_INFO, "recording into %s (timeline interval %lld ms)", db_path,
         interval_ms);

  uv_run(loop, UV_RUN_DEFAULT);
  hp_pprof_stop(pprof); /* before the final commit and indexing: ends a running export */
  status = 0;

out_stop_store:
  /* Everything the loop queued is stored before the database closes; what could not be
   * is logged per session, and makes the exit status say so. */
  if (hp_store_stop(store) < 0 && status == 0) {
    hp_log(HP_LOG_ERROR,
           "stopped with data received but not stored (see the errors above)");
    status = 1;
  }
out_close_loop:
  uv_walk(loop, close_walk_cb, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  hp_server_free(srv); /* removes the socket, after the database is closed */
  if (uv_loop_close(loop) != 0)
    hp_log(HP_LOG_DEBUG, "event loop closed with handles still open");
  hp_dblock_release(lock); /* the database is closed: another daemon may take it */
  if (status == 0)
    hp_log(HP_LOG_INFO, "stopped");
  return status;
}
