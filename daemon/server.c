/* server.c — accepts agents on the Unix socket and feeds their bytes to conn.c.
 *
 * Pipeline position: main -> server -> conn -> store. One uv_pipe_t per agent; each
 * connection is one session. The loop never waits on SQLite: it only pushes onto the
 * store's bounded queue, and when that queue is full it stops reading every socket
 * (the agents then count drops on their side) until the store wakes it up. */
#include "hp_server.h"

#include <errno.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "hp_conn.h"
#include "hp_log.h"

#define HP_READ_BYTES     65536u /* one read; the framer copies it, so one buffer serves all */
#define HP_LISTEN_BACKLOG 256
/* Refusals are logged at most once per this many ms (with how many since the last). */
#define HP_SERVER_REFUSAL_LOG_MS 10000

typedef struct client {
  uv_pipe_t pipe; /* first: the handle's address is the client's */
  hp_server *srv;
  hp_conn *conn;
  hp_store_session *ss; /* NULL until HELLO */
  int64_t peer_pid;
  uint64_t bytes_in;
  int finished; /* session ended; the handle is closing */
  struct client *prev, *next;
} client;

struct hp_server {
  uv_loop_t *loop;
  uv_pipe_t listener;
  uv_signal_t sigint, sigterm;
  uv_async_t wake; /* store -> loop: the queue has room again */
  hp_store *store;
  char *path; /* socket to remove at the end; NULL until bound */
  client *clients;
  long nclients;                      /* on the clients list */
  long max_clients;                   /* RLIMIT_NOFILE - HP_SERVER_RESERVED_FDS */
  unsigned long long fd_limit;        /* RLIMIT_NOFILE, for messages */
  uint64_t refused, refused_unlogged; /* connections refused over max_clients */
  uint64_t next_refusal_log;          /* uv_now() after which a refusal is logged again */
  int listening, paused, stopping;
  char rbuf[HP_READ_BYTES];
};

/* ------------------------------------------------------------------ path checks */

__attribute__((format(printf, 3, 4))) static int say(char *err, size_t errlen,
                                                     const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
  return -HP_EINVAL;
}

int hp_server_check_path(const char *path, int create_dir, char *err, size_t errlen)
{
  struct sockaddr_un sa;
  size_t len = strlen(path);
  if (len == 0)
    return say(err, errlen, "socket path is empty");
  if (len >= sizeof sa.sun_path)
    return say(err, errlen, "socket path %s is %zu bytes, over the limit of %zu", path, len,
               sizeof sa.sun_path - 1);
  char *copy = strdup(path);
  if (copy == NULL)
    return say(err, errlen, "out of memory");
  const char *dir = dirname(copy);
  int rc = 0;
  struct stat st;
  if (create_dir && mkdir(dir, 0700) < 0 && errno != EEXIST) {
    rc = say(err, errlen, "cannot create socket directory %s: %s", dir, strerror(errno));
    goto out_free;
  }
  if ((create_dir ? lstat(dir, &st) : stat(dir, &st)) < 0) {
    rc = say(err, errlen, "socket directory %s: %s", dir, strerror(errno));
    goto out_free;
  }
  if (!S_ISDIR(st.st_mode)) {
    rc = say(err, errlen, "socket directory %s is not a directory", dir);
    goto out_free;
  }
  if (st.st_uid != geteuid() && st.st_uid != 0) {
    rc = say(err, errlen, "socket directory %s belongs to uid %u, not to us (uid %u)", dir,
             (unsigned)st.st_uid, (unsigned)geteuid());
    goto out_free;
  }
  /* Whoever can write the directory can swap the socket for their own. */
  if (st.st_mode & (S_IWGRP | S_IWOTH)) {
    rc = say(err, errlen,
             "socket directory %s is writable by other users (mode %03o); "
             "use a directory only you can write",
             dir, (unsigned)(st.st_mode & 0777));
    goto out_free;
  }
  if (create_dir && (st.st_uid != geteuid() || (st.st_mode & 077))) {
    rc = say(err, errlen,
             "socket directory %s must be private to uid %u (mode 0700), "
             "it has mode %03o",
             dir, (unsigned)geteuid(), (unsigned)(st.st_mode & 0777));
    goto out_free;
  }

  if (lstat(path, &st) < 0) {
    if (errno != ENOENT)
      rc = say(err, errlen, "socket path %s: %s", path, strerror(errno));
    goto out_free;
  }
  if (!S_ISSOCK(st.st_mode)) {
    rc = say(err, errlen, "%s exists and is not a socket; refusing to replace it", path);
    goto out_free;
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    rc = say(err, errlen, "socket(): %s", strerror(errno));
    goto out_free;
  }
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  memcpy(sa.sun_path, path, len + 1);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
    rc = say(err, errlen, "another heapprofd is already listening on %s", path);
  } else if (errno == ECONNREFUSED) {
    if (unlink(path) < 0 && errno != ENOENT)
      rc = say(err, errlen, "cannot remove stale socket %s: %s", path, strerror(errno));
    else
      hp_log(HP_LOG_INFO, "replaced stale socket %s", path);
  } else {
    rc = say(err, errlen, "socket %s exists and cannot be probed: %s", path,
             strerror(errno));
  }
  close(fd);
out_free:
  free(copy);
  return rc;
}

/* ------------------------------------------------------------------ clients */

static void on_client_closed(uv_handle_t *h)
{
  client *c = (client *)h;
  hp_conn_free(c->conn);
  free(c);
}

static void client_finish(client *c, hp_session_end how, const char *reason)
{
  if (c->finished)
    return;
  c->finished = 1;
  hp_server *srv = c->srv;
  if (c->ss != NULL) {
    hp_store_session_end(srv->store, c->ss, how, reason);
    c->ss = NULL;
  } else if (how == HP_SESSION_PROTOCOL_ERROR) {
    hp_log(HP_LOG_WARN, "connection from pid %lld: protocol error before HELLO: %s",
           (long long)c->peer_pid, reason);
  } else if (c->bytes_in > 0) {
    hp_log(HP_LOG_DEBUG, "connection from pid %lld closed before HELLO",
           (long long)c->peer_pid);
  }
  if (c->prev)
    c->prev->next = c->next;
  else
    srv->clients = c->next;
  if (c->next)
    c->next->prev = c->prev;
  srv->nclients--;
  uv_read_stop((uv_stream_t *)&c->pipe);
  uv_close((uv_handle_t *)&c->pipe, on_client_closed);
}

static void pause_all(hp_server *srv)
{
  srv->paused = 1;
  for (client *c = srv->clients; c; c = c->next)
    uv_read_stop((uv_stream_t *)&c->pipe);
  hp_log(HP_LOG_DEBUG, "storage is behind: stopped reading %s",
         srv->clients ? "all agents" : "(no agents)");
}

static void feed_client(client *c, const uint8_t *data, size_t len)
{
  hp_server *srv = c->srv;
  c->bytes_in += len;
  int rc = hp_conn_feed(c->conn, data, len);
  if (rc < 0)
    client_finish(c, HP_SESSION_PROTOCOL_ERROR, hp_conn_error(c->conn));
  else if (rc == 1)
    client_finish(c, HP_SESSION_EXITED, NULL);
  if (!srv->paused && !srv->stopping && hp_store_pause_if_full(srv->store))
    pause_all(srv);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
  (void)suggested;
  client *c = (client *)h;
  *buf = uv_buf_init(c->srv->rbuf, sizeof c->srv->rbuf);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
  client *c = (client *)st;
  if (nread > 0) {
    feed_client(c, (const uint8_t *)buf->base, (size_t)nread);
    return;
  }
  if (nread == 0)
    return; /* EAGAIN */
  if (nread != UV_EOF)
    hp_log(HP_LOG_DEBUG, "read from pid %lld: %s", (long long)c->peer_pid,
           uv_strerror((int)nread));
  size_t partial = hp_conn_buffered(c->conn);
  if (partial > 0)
    hp_log(HP_LOG_WARN,
           "connection from pid %lld closed inside a frame (%zu bytes of it "
           "received); the complete frames before it are kept",
           (long long)c->peer_pid, partial);
  client_finish(c, HP_SESSION_DISCONNECTED, NULL);
}

static int start_reading(client *c)
{
  int rc = uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
  if (rc < 0) {
    hp_log(HP_LOG_ERROR, "reading from pid %lld: %s", (long long)c->peer_pid,
           uv_strerror(rc));
    client_finish(c, HP_SESSION_DISCONNECTED, NULL);
  }
  return rc;
}

static int sink_hello(void *ctx, const hp_hello *m)
{
  client *c = ctx;
  c->ss = hp_store_session_start(c->srv->store, m, c->peer_pid);
  return c->ss ? 0 : -HP_ENOMEM;
}
static int sink_frame(void *ctx, const hp_frame_def *m)
{
  client *c = ctx;
  return hp_store_frame_def(c->srv->store, c->ss, m);
}
static int sink_stack(void *ctx, const hp_stack_def *m)
{
  client *c = ctx;
  return hp_store_stack_def(c->srv->store, c->ss, m);
}
static int sink_events(void *ctx, const hp_event *ev, uint32_t n)
{
  client *c = ctx;
  return hp_store_events(c->srv->store, c->ss, ev, n);
}
static int sink_counters(void *ctx, const hp_counters *m)
{
  client *c = ctx;
  return hp_store_counters(c->srv->store, c->ss, m);
}
static int sink_goodbye(void *ctx, const hp_goodbye *m)
{
  client *c = ctx;
  return hp_store_goodbye(c->srv->store, c->ss, m);
}

static int sink_thread(void *ctx, const hp_thread_def *m)
{
  client *c = ctx;
  return hp_store_thread_def(c->srv->store, c->ss, m);
}
static int sink_marker(void *ctx, const hp_marker *m)
{
  client *c = ctx;
  return hp_store_marker(c->srv->store, c->ss, m);
}

static const hp_conn_sink store_sink = {
  sink_hello,    sink_frame,   sink_stack,  sink_events,
  sink_counters, sink_goodbye, sink_thread, sink_marker,
};

/* A connection refused: counted, and logged at once unless one was logged in the last
 * HP_SERVER_REFUSAL_LOG_MS (then the next line says how many came meanwhile). */
static void refused(hp_server *srv, long pid, const char *why)
{
  srv->refused++;
  uint64_t now = uv_now(srv->loop);
  if (now < srv->next_refusal_log) {
    srv->refused_unlogged++;
    return;
  }
  char more[64] = "";
  if (srv->refused_unlogged > 0)
    snprintf(more, sizeof more, " (and %llu more since the last such line)",
             (unsigned long long)srv->refused_unlogged);
  if (pid > 0)
    hp_log(HP_LOG_WARN, "refused connection from pid %ld: %s%s", pid, why, more);
  else
    hp_log(HP_LOG_WARN, "refused a connection: %s%s", why, more);
  srv->refused_unlogged = 0;
  srv->next_refusal_log = now + HP_SERVER_REFUSAL_LOG_MS;
}

static void on_connection(uv_stream_t *listener, int status)
{
  hp_server *srv = listener->data;
  char why[160];
  if (status < 0) {
    /* EMFILE/ENFILE: libuv has accepted and closed what was pending. */
    snprintf(why, sizeof why, "accept failed: %s", uv_strerror(status));
    refused(srv, 0, why);
    return;
  }
  client *c = calloc(1, sizeof *c);
  if (c == NULL) {
    hp_log(HP_LOG_ERROR, "out of memory accepting a connection");
    return;
  }
  c->srv = srv;
  int rc = uv_pipe_init(srv->loop, &c->pipe, 0);
  if (rc < 0) {
    hp_log(HP_LOG_ERROR, "uv_pipe_init: %s", uv_strerror(rc));
    free(c);
    return;
  }
  c->finished = 1; /* until it is on the client list */
  rc = uv_accept(listener, (uv_stream_t *)&c->pipe);
  if (rc < 0) {
    hp_log(HP_LOG_WARN, "accept: %s", uv_strerror(rc));
    uv_close((uv_handle_t *)&c->pipe, on_client_closed);
    return;
  }
  uv_os_fd_t fd;
  struct ucred cred;
  socklen_t clen = sizeof cred;
  if (uv_fileno((uv_handle_t *)&c->pipe, &fd) < 0 ||
      getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) < 0) {
    hp_log(HP_LOG_WARN, "refused a connection: cannot read its credentials: %s",
           strerror(errno));
    uv_close((uv_handle_t *)&c->pipe, on_client_closed);
    return;
  }
  c->peer_pid = cred.pid;
  if (srv->nclients >= srv->max_clients) {
    snprintf(why, sizeof why,
             "over the limit of %ld connections (open file limit %llu, "
             "ulimit -n)",
             srv->max_clients, srv->fd_limit);
    refused(srv, (long)cred.pid, why);
    uv_close((uv_handle_t *)&c->pipe, on_client_closed);
    return;
  }
  if (cred.uid != geteuid()) {
    hp_log(HP_LOG_WARN,
           "refused connection from pid %ld: uid %u is not the daemon's uid %u",
           (long)cred.pid, (unsigned)cred.uid, (unsigned)geteuid());
    uv_close((uv_handle_t *)&c->pipe, on_client_closed);
    return;
  }
  c->conn = hp_conn_new(&store_sink, c);
  if (c->conn == NULL) {
    hp_log(HP_LOG_ERROR, "out of memory accepting pid %ld", (long)cred.pid);
    uv_close((uv_handle_t *)&c->pipe, on_client_closed);
    return;
  }
  c->finished = 0;
  c->next = srv->clients;
  if (srv->clients)
    srv->clients->prev = c;
  srv->clients = c;
  srv->nclients++;
  hp_log(HP_LOG_DEBUG, "connection from pid %ld", (long)cred.pid);
  if (!srv->paused)
    start_reading(c);
}

/* ------------------------------------------------------------------ wake-up, shutdown */

static void on_wake(uv_async_t *a)
{
  hp_server *srv = a->data;
  if (!srv->paused || srv->stopping)
    return;
  srv->paused = 0;
  hp_log(HP_LOG_DEBUG, "storage caught up: reading again");
  client *next;
  for (client *c = srv->clients; c; c = next) {
    next = c->next; /* start_reading may finish c */
    start_reading(c);
  }
}

void hp_server_wake(void *ctx)
{
  hp_server *srv = ctx;
  uv_async_send(&srv->wake);
}

/* Reads what the agent already wrote before we stopped: it was sent before the
 * signal, so it belongs in the database. The socket buffer bounds this. */
static void drain_client(client *c)
{
  uv_os_fd_t fd;
  uv_read_stop((uv_stream_t *)&c->pipe);
  if (uv_fileno((uv_handle_t *)&c->pipe, &fd) < 0)
    return;
  while (!c->finished) {
    ssize_t n = recv(fd, c->srv->rbuf, sizeof c->srv->rbuf, MSG_DONTWAIT);
    if (n > 0) {
      feed_client(c, (const uint8_t *)c->srv->rbuf, (size_t)n);
    } else if (n == 0) {
      client_finish(c, HP_SESSION_DISCONNECTED, NULL);
    } else if (errno != EINTR) {
      break;
    }
  }
}

static void on_signal(uv_signal_t *sig, int signum)
{
  hp_server *srv = sig->data;
  if (srv->stopping)
    return;
  srv->stopping = 1;
  hp_log(HP_LOG_INFO, "%s: stopping; storing what was received",
         signum == SIGINT ? "SIGINT" : "SIGTERM");
  if (srv->listening) {
    uv_close((uv_handle_t *)&srv->listener, NULL);
    srv->listening = 0;
  }
  client *next;
  for (client *c = srv->clients; c; c = next) {
    next = c->next;
    drain_client(c);
    client_finish(c, HP_SESSION_DISCONNECTED, NULL);
  }
  uv_close((uv_handle_t *)&srv->sigint, NULL);
  uv_close((uv_handle_t *)&srv->sigterm, NULL);
  uv_close((uv_handle_t *)&srv->wake, NULL);
}

/* ------------------------------------------------------------------ setup */

hp_server *hp_server_new(uv_loop_t *loop)
{
  hp_server *srv = calloc(1, sizeof *srv);
  if (srv == NULL)
    return NULL;
  srv->loop = loop;
  if (uv_async_init(loop, &srv->wake, on_wake) < 0) {
    free(srv);
    return NULL;
  }
  srv->wake.data = srv;
  return srv;
}

int hp_server_listen(hp_server *srv, const char *path, hp_store *store, char *err,
                     size_t errlen)
{
  int rc;
  srv->store = store;
  struct rlimit rl;
  srv->fd_limit = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
                    ? (unsigned long long)rl.rlim_cur
                    : 1048576ULL;
  srv->max_clients = (long)srv->fd_limit - HP_SERVER_RESERVED_FDS;
  if (srv->max_clients < 1)
    return say(err, errlen,
               "the open file limit (ulimit -n) is %llu; heapprofd needs more "
               "than %d",
               srv->fd_limit, HP_SERVER_RESERVED_FDS);
  if ((rc = uv_pipe_init(srv->loop, &srv->listener, 0)) < 0)
    return say(err, errlen, "uv_pipe_init: %s", uv_strerror(rc));
  srv->listener.data = srv;
  srv->listening = 1;
  /* The socket is born 0600: no window in which another user could connect. */
  mode_t old = umask(0177);
  rc = uv_pipe_bind(&srv->listener, path);
  umask(old);
  if (rc < 0)
    return say(err, errlen, "cannot bind socket %s: %s", path, uv_strerror(rc));
  srv->path = strdup(path);
  if (srv->path == NULL)
    return say(err, errlen, "out of memory");
  if (chmod(path, 0600) < 0)
    return say(err, errlen, "chmod %s: %s", path, strerror(errno));
  if ((rc = uv_listen((uv_stream_t *)&srv->listener, HP_LISTEN_BACKLOG, on_connection)) < 0)
    return say(err, errlen, "cannot listen on %s: %s", path, uv_strerror(rc));
  uv_signal_init(srv->loop, &srv->sigint);
  uv_signal_init(srv->loop, &srv->sigterm);
  srv->sigint.data = srv->sigterm.data = srv;
  if ((rc = uv_signal_start(&srv->sigint, on_signal, SIGINT)) < 0 ||
      (rc = uv_signal_start(&srv->sigterm, on_signal, SIGTERM)) < 0)
    return say(err, errlen, "installing signal handlers: %s", uv_strerror(rc));
  return 0;
}

void hp_server_free(hp_server *srv)
{
  if (srv == NULL)
    return;
  if (srv->refused > 0)
    hp_log(HP_LOG_WARN,
           "refused %llu connections over the limit of %ld connections "
           "(open file limit %llu, ulimit -n); raise ulimit -n to serve more agents at "
           "once",
           (unsigned long long)srv->refused, srv->max_clients, srv->fd_limit);
  if (srv->path != NULL && unlink(srv->path) < 0 && errno != ENOENT)
    hp_log(HP_LOG_WARN, "cannot remove socket %s: %s", srv->path, strerror(errno));
  free(srv->path);
  free(srv);
}
