/* hp_sender.c — the sender thread (see hp_sender.h). */
#include "hp_sender.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* One page shared by a program's processes (hp_sender.h). stuck_peer is the pid of a
 * daemon one of them gave up on at stuck_ns (CLOCK_MONOTONIC, the same clock in every
 * process), 0 when none or since it was seen taking data again. */
struct hp_sender_family {
  _Atomic int64_t stuck_peer;
  _Atomic uint64_t stuck_ns;
};

hp_sender_family *hp_sender_family_new(void)
{
  void *p = mmap(NULL, sizeof(hp_sender_family), PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? NULL : p; /* zero-filled: nobody stuck */
}

struct hp_sender {
  pthread_t thread;
  int fd;
  hp_sender_cfg cfg;
  char *socket_path;
  hp_hello hello; /* strings point into hello_block */
  hp_str *argv;
  char *hello_block;
  hp_bucket *buckets;
  hp_encoder *enc;                   /* sender thread only */
  hp_event *batch;                   /* sender thread only */
  uint32_t frames_sent, stacks_sent; /* sender thread only */
  uint32_t changes_sent;             /* sender thread only: interval changes reported */
  int warmed;                        /* sender thread only: cfg.warm returned 0 */
  uint64_t interval_sent;            /* sender thread only: the interval last reported */
  _Atomic int stop;         /* set by hp_sender_stop(), under mu to pair with wake */
  _Atomic uint64_t stop_ns; /* when the stop began; written before stop is set */
  uint64_t stall_ns;        /* read-only after start */
  int64_t peer;             /* the daemon's pid (SO_PEERCRED), 0 unknown; read-only */
  int sndbuf;               /* SO_SNDBUF: the socket's size; read-only after start */
  size_t flush_bytes;       /* write once this much is encoded; read-only */
  hp_encoder *ctl;          /* sender thread only: COUNTERS, written apart from enc */
  /* Sender thread only: */
  uint64_t progress_ns;    /* the daemon last took data from this stream, 0 never */
  int unread;              /* the socket's unread bytes when last looked at */
  int final_sent;          /* the final counters went out */
  int gave_up_for_family;  /* gave up because another process did */
  uint32_t pending_events; /* encoded, not yet written */
  /* Sender thread only: the threads of this stream whose kernel name was looked at
   * (open addressing, 0 empty), the last one seen, and the main thread's name. */
  uint32_t tids[2 * HP_SENDER_MAX_THREADS];
  uint32_t ntids, last_tid;
  char process_comm[32];
  /* Names the program gave (hp_sender_thread_name), not yet sent; under mu. */
  hp_thread_def *names[HP_SENDER_MAX_NAMES];
  uint32_t nnames;
  /* Markers the program set (hp_sender_marker), not yet sent; under mu. */
  hp_marker *markers[HP_SENDER_MAX_MARKERS];
  uint32_t nmarkers;
  pthread_mutex_t mu;  /* guards the idle wait, names[] and markers[]; hooks never
                                touch it */
  pthread_cond_t wake; /* signalled by hp_sender_stop(): exit without oversleeping */
  int sync_ready;      /* mu and wake were initialised */
  _Atomic int error;   /* first write error, set by the thread */
  _Atomic uint32_t end_reason; /* GOODBYE's; the first nonzero one set wins */
};

uint64_t hp_now_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t hp_wall_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int hp_sender_connect(const char *path, int *fd_out)
{
  return hp_sender_connect_timeout(path, HP_SENDER_CONNECT_TIMEOUT_NS, fd_out);
}

/* Non-blocking, because a blocking connect() to a daemon that accepts nothing (SIGSTOPped
 * with its backlog full) never returns, and the caller holds the agent lock: the
 * program's start, or a fork child's, would hang. A Unix socket's connect() does not
 * complete in the background; with the backlog full it fails with EAGAIN and is tried
 * again. */
int hp_sender_connect_timeout(const char *path, uint64_t timeout_ns, int *fd_out)
{
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof(sa));
  sa.sun_family = AF_UNIX;
  size_t n = strlen(path);
  if (n == 0)
    return -EINVAL;
  if (n >= sizeof(sa.sun_path))
    return -ENAMETOOLONG;
  memcpy(sa.sun_path, path, n);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0)
    return -errno;
  uint64_t deadline = hp_now_ns() + timeout_ns;
  int err = 0;
  while (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
    if (errno == EINTR)
      continue;
    if (errno != EAGAIN) {
      err = -errno;
      goto out_close;
    }
    if (hp_now_ns() >= deadline) {
      err = -ETIMEDOUT;
      goto out_close;
    }
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  *fd_out = fd;
  return 0;

out_close:
  close(fd);
  return err;
}

/* Bytes the daemon has not read yet from this socket (the kernel's accounting, in the
 * units of SO_SNDBUF); -1 if unknown. */
static int unread_bytes(const hp_sender *s)
{
  int q = 0;
  return ioctl(s->fd, SIOCOUTQ, &q) == 0 ? q : -1;
}

/* The daemon took data from this stream: remember it, and tell the program's other
 * processes that it is not stuck after all. */
static void note_progress(hp_sender *s, uint64_t now)
{
  s->progress_ns = now;
  int64_t peer = s->peer;
  if (s->cfg.family && peer &&
      atomic_load_explicit(&s->cfg.family->stuck_peer, memory_order_relaxed) == peer)
    atomic_compare_exchange_strong(&s->cfg.family->stuck_peer, &peer, 0);
}

/* Progress is the unread bytes going down since this thread last looked (after its own
 * last write): only the daemon's reads make them go down. Returns them (-1: unknown). */
static int check_progress(hp_sender *s)
{
  int q = unread_bytes(s);
  if (q < 0)
    return q;
  if (q < s->unread)
    note_progress(s, hp_now_ns());
  s->unread = q;
  return q;
}

/* Another process of this program gave up on this daemon after the last time this
 * stream saw it take anything. */
static int family_says_stuck(const hp_sender *s)
{
  hp_sender_family *f = s->cfg.family;
  return f && s->peer &&
         atomic_load_explicit(&f->stuck_peer, memory_order_acquire) == s->peer &&
         atomic_load_explicit(&f->stuck_ns, memory_order_relaxed) > s->progress_ns;
}

/* Waits a slice for the socket to drain. Before stop it waits as long as it takes (the
 * ring drops meanwhile, the program is not held up), in slices so that a stop is
 * noticed; after stop, until the daemon has taken nothing for the stall bound (from the
 * stop, or from its last progress if later; see hp_sender.h): -ETIMEDOUT then. A peer
 * that hung up also returns 0: the next send() reports the error. */
static int wait_writable(hp_sender *s)
{
  int timeout_ms = HP_SENDER_WAIT_SLICE_MS;
  check_progress(s);
  if (atomic_load_explicit(&s->stop, memory_order_acquire)) {
    uint64_t base = atomic_load_explicit(&s->stop_ns, memory_order_relaxed);
    if (s->progress_ns > base)
      base = s->progress_ns;
    int stuck = family_says_stuck(s);
    uint64_t deadline = base + (stuck ? HP_SENDER_STUCK_GRACE_NS : s->stall_ns);
    uint64_t now = hp_now_ns();
    if (now >= deadline) {
      s->gave_up_for_family = stuck;
      return -ETIMEDOUT;
    }
    uint64_t left_ms = (deadline - now + 999999u) / 1000000u;
    if (left_ms < (uint64_t)timeout_ms)
      timeout_ms = (int)left_ms;
  }
  struct pollfd p = {.fd = s->fd, .events = POLLOUT};
  int r = poll(&p, 1, timeout_ms);
  if (r < 0 && errno != EINTR)
    return -errno;
  if (r > 0 && !(p.revents & (POLLERR | POLLHUP))) {
    /* Writable, yet the caller found no room for its data (the kernel reports room at a
     * quarter full): let the daemon read on rather than spin. */
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  return 0;
}

/* Writes all of buf; -errno on failure. MSG_NOSIGNAL: a dead daemon gives EPIPE here
 * instead of killing the program with SIGPIPE. MSG_DONTWAIT: a daemon that stopped
 * reading must not block this thread beyond what wait_writable() allows. */
static int write_all(hp_sender *s, const uint8_t *buf, size_t len)
{
  while (len > 0) {
    check_progress(s);
    ssize_t n = send(s->fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        int rc = wait_writable(s);
        if (rc < 0)
          return rc;
        continue;
      }
      return -errno;
    }
    buf += n;
    len -= (size_t)n;
    /* What this thread just added is not the daemon's progress. */
    int q = unread_bytes(s);
    if (q >= 0)
      s->unread = q;
  }
  return 0;
}

static int send_final_counters(hp_sender *s);

/* The stream's data (everything but the final counters) keeps a quarter of the socket
 * free, so that the final counters get in even when the daemon has stopped reading:
 * whole frames are written only while the unread bytes stay within three quarters of
 * the socket's size (or the socket is empty: a frame larger than that still goes). A
 * stop that arrives while this waits sends the final counters first. */
static int write_data(hp_sender *s, const uint8_t *buf, size_t len)
{
  while (!s->final_sent) {
    if (!s->final_sent && atomic_load_explicit(&s->stop, memory_order_acquire)) {
      int rc = send_final_counters(s);
      if (rc < 0)
        return rc;
    }
    if (s->final_sent)
      break;
    int q = check_progress(s);
    if (q <= 0 || (size_t)q + len <= (size_t)s->sndbuf / 4 * 3)
      break;
    int rc = wait_writable(s);
    if (rc < 0)
      return rc;
  }
  return write_all(s, buf, len);
}

static int flush_encoder(hp_sender *s)
{
  size_t len;
  const uint8_t *data = hp_encoder_data(s->enc, &len);
  int rc = len ? write_data(s, data, len) : 0;
  hp_encoder_reset(s->enc);
  if (rc == 0)
    s->pending_events = 0;
  return rc;
}

static int flush_if_big(hp_sender *s)
{
  size_t len;
  hp_encoder_data(s->enc, &len);
  return len >= s->flush_bytes ? flush_encoder(s) : 0;
}

/* Emits definitions published since the last call. Stacks are read first: a stack is
 * published after its frames, so every frame a visible stack uses is visible too. */
static int send_defs(hp_sender *s)
{
  const hp_intern *in = s->cfg.intern;
  uint32_t nstacks = hp_intern_stack_count(in);
  uint32_t nframes = hp_intern_frame_count(in);
  int rc = 0;
  for (uint32_t id = s->frames_sent + 1; id <= nframes; id++) {
    hp_intern_frame f;
    hp_intern_frame_get(in, id, &f);
    hp_frame_def d = {.frame_id = id,
                      .function = f.function,
                      .filename = f.filename,
                      .lineno = f.lineno};
    if ((rc = hp_encode_frame_def(s->enc, &d)) < 0 || (rc = flush_if_big(s)) < 0)
      return rc;
    s->frames_sent = id;
  }
  for (uint32_t id = s->stacks_sent + 1; id <= nstacks; id++) {
    hp_intern_stack st;
    hp_intern_stack_get(in, id, &st);
    hp_stack_def d = {.stack_id = id,
                      .truncated = st.truncated,
                      .depth = st.depth,
                      .frame_ids = st.frame_ids};
    if ((rc = hp_encode_stack_def(s->enc, &d)) < 0 || (rc = flush_if_big(s)) < 0)
      return rc;
    s->stacks_sent = id;
  }
  return 0;
}

/* Appends a COUNTERS message to the control encoder. ts_ns: when the interval changed,
 * or 0 for now. */
static int encode_counters(hp_sender *s, uint64_t ts_ns, uint64_t interval)
{
  hp_counters c = {.ts_ns = ts_ns ? ts_ns : hp_now_ns(),
                   .events_dropped = s->cfg.dropped ? s->cfg.dropped(s->cfg.arg) : 0,
                   .sample_interval_bytes = interval,
                   .events_sent = hp_ring_pushed(s->cfg.ring)};
  return hp_encode_counters(s->ctl, &c);
}

/* Writes the control encoder (COUNTERS) within the data's budget, or not at all when a
 * stop arrives meanwhile: then the final counters, which supersede it, go instead, and
 * 1 is returned. */
static int write_control(hp_sender *s)
{
  size_t len;
  const uint8_t *data = hp_encoder_data(s->ctl, &len);
  int rc;
  for (;;) {
    if (!s->final_sent && atomic_load_explicit(&s->stop, memory_order_acquire)) {
      hp_encoder_reset(s->ctl);
      rc = send_final_counters(s);
      return rc < 0 ? rc : 1;
    }
    int q = check_progress(s);
    if (s->final_sent || q <= 0 || (size_t)q + len <= (size_t)s->sndbuf / 4 * 3)
      break;
    if ((rc = wait_writable(s)) < 0)
      return rc;
  }
  rc = write_all(s, data, len);
  hp_encoder_reset(s->ctl);
  return rc;
}

/* 0 also when a stop sent the final counters instead (write_control's 1): the stream
 * goes on to its drain and GOODBYE. */
static int send_counters(hp_sender *s)
{
  int rc = encode_counters(s, 0, s->interval_sent);
  if (rc == 0)
    rc = write_control(s);
  return rc < 0 ? rc : 0;
}

/* Reports each change of interval not yet told, oldest first, each once written. */
static int send_interval_changes(hp_sender *s)
{
  uint64_t ts, interval;
  int rc = 0;
  while (rc == 0 && s->cfg.interval_change &&
         s->cfg.interval_change(s->cfg.arg, s->changes_sent, &ts, &interval)) {
    if ((rc = encode_counters(s, ts, interval)) < 0 || (rc = write_control(s)) != 0)
      return rc < 0 ? rc : 0; /* 1: the final counters told it */
    s->interval_sent = interval;
    s->changes_sent++;
  }
  return rc;
}

/* At the stop, once nothing is pushed any more: the interval changes not yet told and
 * the final COUNTERS, ahead of whatever data is still to be written (between frames;
 * write_data() keeps room for this). */
static int send_final_counters(hp_sender *s)
{
  uint64_t ts, interval;
  int rc = 0;
  s->final_sent = 1;
  hp_encoder_reset(s->ctl);
  while (rc == 0 && s->cfg.interval_change &&
         s->cfg.interval_change(s->cfg.arg, s->changes_sent, &ts, &interval)) {
    rc = encode_counters(s, ts, interval);
    s->interval_sent = interval;
    s->changes_sent++;
  }
  if (rc == 0)
    rc = encode_counters(s, 0, s->interval_sent);
  size_t len;
  const uint8_t *data = hp_encoder_data(s->ctl, &len);
  if (rc == 0)
    rc = write_all(s, data, len);
  hp_encoder_reset(s->ctl);
  return rc;
}

/* A thread's kernel name (/proc/self/task/TID/comm, without its newline) into buf;
 * its length, 0 if the thread is gone or has none. */
static size_t read_comm(const char *path, char *buf, size_t cap)
{
  FILE *f = fopen(path, "re");
  if (!f)
    return 0;
  size_t n = fread(buf, 1, cap - 1, f);
  fclose(f);
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\0'))
    n--;
  buf[n] = 0;
  return n;
}

/* The kernel name of each thread this stream meets for the first time, as THREAD_DEF:
 * the main thread's always, another thread's when it is not just the name it inherited
 * from the main thread (set with pthread_setname_np or prctl: a native library's worker,
 * a program that names its threads). Read here, never in a hook; a thread already gone
 * has no name to read. At most HP_SENDER_MAX_THREADS threads a stream are looked at. */
static int send_thread_names(hp_sender *s, const hp_event *ev, uint32_t n)
{
  int rc = 0;
  for (uint32_t i = 0; i < n && rc == 0; i++) {
    uint32_t tid = (uint32_t)ev[i].thread_id;
    if (tid == s->last_tid || tid == 0)
      continue;
    s->last_tid = tid;
    uint32_t slot = (tid * 2654435761u) & (2 * HP_SENDER_MAX_THREADS - 1);
    while (s->tids[slot] != 0 && s->tids[slot] != tid)
      slot = (slot + 1) & (2 * HP_SENDER_MAX_THREADS - 1);
    if (s->tids[slot] == tid || s->ntids >= HP_SENDER_MAX_THREADS)
      continue;
    s->tids[slot] = tid;
    s->ntids++;
    char path[64], name[32];
    snprintf(path, sizeof(path), "/proc/self/task/%u/comm", tid);
    size_t len = read_comm(path, name, sizeof(name));
    if (len == 0 || (tid != (uint32_t)s->hello.pid && strcmp(name, s->process_comm) == 0))
      continue;
    hp_thread_def d = {.thread_id = tid, .name = {name, (uint32_t)len}};
    if ((rc = hp_encode_thread_def(s->enc, &d)) == 0)
      rc = flush_if_big(s);
  }
  return rc;
}

/* The names the program gave, after the kernel's: the latest wins in the daemon. */
static int send_given_names(hp_sender *s)
{
  hp_thread_def *taken[HP_SENDER_MAX_NAMES];
  pthread_mutex_lock(&s->mu);
  uint32_t n = s->nnames;
  memcpy(taken, s->names, n * sizeof(taken[0]));
  s->nnames = 0;
  pthread_mutex_unlock(&s->mu);
  int rc = 0;
  for (uint32_t i = 0; i < n; i++) {
    if (rc == 0 && (rc = hp_encode_thread_def(s->enc, taken[i])) == 0)
      rc = flush_if_big(s);
    free(taken[i]);
  }
  return rc;
}

int hp_sender_thread_name(hp_sender *s, uint64_t thread_id, const char *name, size_t len)
{
  if (len > HP_MAX_STR_BYTES)
    len = HP_MAX_STR_BYTES;
  hp_thread_def *d = malloc(sizeof(*d) + len + 1);
  if (!d)
    return -HP_ENOMEM;
  char *copy = (char *)(d + 1);
  memcpy(copy, name, len);
  copy[len] = 0;
  d->thread_id = thread_id;
  d->name.ptr = copy;
  d->name.len = (uint32_t)len;
  int rc = 0;
  pthread_mutex_lock(&s->mu);
  if (s->nnames < HP_SENDER_MAX_NAMES)
    s->names[s->nnames++] = d;
  else
    rc = -HP_EFULL;
  pthread_mutex_unlock(&s->mu);
  if (rc < 0)
    free(d);
  return rc;
}

/* The markers the program set, in the order it set them. */
static int send_markers(hp_sender *s)
{
  hp_marker *taken[HP_SENDER_MAX_MARKERS];
  pthread_mutex_lock(&s->mu);
  uint32_t n = s->nmarkers;
  memcpy(taken, s->markers, n * sizeof(taken[0]));
  s->nmarkers = 0;
  pthread_mutex_unlock(&s->mu);
  int rc = 0;
  for (uint32_t i = 0; i < n; i++) {
    if (rc == 0 && (rc = hp_encode_marker(s->enc, taken[i])) == 0)
      rc = flush_if_big(s);
    free(taken[i]);
  }
  return rc;
}

int hp_sender_marker(hp_sender *s, uint64_t ts_ns, const char *label, size_t len)
{
  if (len > HP_MAX_STR_BYTES) {
    /* Cut before a continuation byte would split a character: the daemon would store
     * the remnant as U+FFFD. */
    len = HP_MAX_STR_BYTES;
    while (len > 0 && ((unsigned char)label[len] & 0xC0) == 0x80)
      len--;
  }
  hp_marker *m = malloc(sizeof(*m) + len + 1);
  if (!m)
    return -HP_ENOMEM;
  char *copy = (char *)(m + 1);
  memcpy(copy, label, len);
  copy[len] = 0;
  m->ts_ns = ts_ns;
  m->label.ptr = copy;
  m->label.len = (uint32_t)len;
  int rc = 0;
  pthread_mutex_lock(&s->mu);
  if (s->nmarkers < HP_SENDER_MAX_MARKERS)
    s->markers[s->nmarkers++] = m;
  else
    rc = -HP_EFULL;
  pthread_mutex_unlock(&s->mu);
  if (rc < 0)
    free(m);
  return rc;
}

/* lost: events taken from the ring but never written, for the stop timeout's message. */
static void report_failure(hp_sender *s, int err, uint64_t lost)
{
  char line[512];
  int n;
  if (err == -ETIMEDOUT && s->gave_up_for_family)
    n = snprintf(line, sizeof(line),
                 "heapprof: heapprofd at %s is taking no data (another process of this "
                 "program gave up on it); %llu events lost, the session is incomplete\n",
                 s->socket_path, (unsigned long long)lost);
  else if (err == -ETIMEDOUT)
    n = snprintf(line, sizeof(line),
                 "heapprof: heapprofd at %s took no data for %.3g s; %llu events lost, "
                 "the session is incomplete\n",
                 s->socket_path, (double)s->stall_ns / 1e9, (unsigned long long)lost);
  else
    n = snprintf(line, sizeof(line),
                 "heapprof: lost the connection to heapprofd at %s (%s); profiling "
                 "stopped, the program continues\n",
                 s->socket_path, hp_strerror(err));
  if (n > 0) {
    ssize_t w = write(STDERR_FILENO, line,
                      (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
    (void)w;
  }
  if (s->cfg.failed)
    s->cfg.failed(s->cfg.arg, err);
}

/* Sleeps up to ns, or until hp_sender_stop() signals. */
static void idle_wait(hp_sender *s, uint64_t ns)
{
  struct timespec until;
  clock_gettime(CLOCK_MONOTONIC, &until);
  until.tv_nsec += (long)(ns % 1000000000ull);
  until.tv_sec += (time_t)(ns / 1000000000ull) + until.tv_nsec / 1000000000L;
  until.tv_nsec %= 1000000000L;
  pthread_mutex_lock(&s->mu);
  while (!atomic_load_explicit(&s->stop, memory_order_acquire))
    if (pthread_cond_timedwait(&s->wake, &s->mu, &until) != 0)
      break;
  pthread_mutex_unlock(&s->mu);
}

uint64_t hp_sender_wait_ns(uint64_t pushed, uint64_t elapsed_ns, uint64_t last_wait_ns)
{
  uint64_t ns = pushed == 0 || elapsed_ns > UINT64_MAX / HP_SENDER_BATCH
                  ? UINT64_MAX
                  : elapsed_ns * HP_SENDER_BATCH / pushed;
  if (ns / 2 > last_wait_ns)
    ns = 2 * last_wait_ns;
  return ns < HP_SENDER_IDLE_NS       ? HP_SENDER_IDLE_NS
         : ns > HP_SENDER_IDLE_MAX_NS ? HP_SENDER_IDLE_MAX_NS
                                      : ns;
}

/* Encodes n events as EVENTS messages of at most HP_SENDER_FRAME_EVENTS, writing
 * whenever the encoder holds a write's worth (small frames keep the writes within the
 * data's budget, see write_data). */
static int send_events(hp_sender *s, const hp_event *ev, uint32_t n)
{
  int rc = 0;
  for (uint32_t i = 0; i < n && rc == 0; i += HP_SENDER_FRAME_EVENTS) {
    uint32_t k = n - i < HP_SENDER_FRAME_EVENTS ? n - i : HP_SENDER_FRAME_EVENTS;
    if ((rc = hp_encode_events(s->enc, ev + i, k)) == 0) {
      s->pending_events += k;
      rc = flush_if_big(s);
    }
  }
  return rc;
}

/* Ends the stream from within, as hp_sender_stop_with() would: the next turn of the
 * loop sends the final counters and drains. */
static void end_here(hp_sender *s, uint32_t reason)
{
  uint32_t none = 0;
  atomic_compare_exchange_strong(&s->end_reason, &none, reason);
  atomic_store_explicit(&s->stop_ns, hp_now_ns(), memory_order_relaxed);
  atomic_store_explicit(&s->stop, 1, memory_order_release);
}

/* Memory the hooks will write, mapped in a piece at a time (the ring's next pages first,
 * then cfg.warm's), with a look at the stop flag after each: a short program's exit
 * waits for one piece at most. */
static void prefault_ahead(hp_sender *s)
{
  while (!atomic_load_explicit(&s->stop, memory_order_acquire)) {
    if (hp_ring_prefault(s->cfg.ring, HP_SENDER_PREFAULT_BYTES))
      continue;
    if (!s->cfg.warm || s->warmed)
      break;
    s->warmed = !s->cfg.warm(s->cfg.arg, HP_SENDER_PREFAULT_BYTES);
  }
}

static void *sender_main(void *arg)
{
  hp_sender *s = arg;
  read_comm("/proc/self/comm", s->process_comm, sizeof(s->process_comm));
  /* HELLO opens the stream whatever comes next (write_data could put the final
   * counters first). */
  size_t hello_len;
  int rc = hp_encode_hello(s->enc, &s->hello);
  const uint8_t *hello = hp_encoder_data(s->enc, &hello_len);
  if (rc == 0)
    rc = write_all(s, hello, hello_len);
  hp_encoder_reset(s->enc);
  if (rc == 0)
    prefault_ahead(s);
  uint64_t last_counters = hp_now_ns();
  s->interval_sent = s->hello.sample_interval_bytes;
  uint64_t last_turn = last_counters, last_pushed = hp_ring_pushed(s->cfg.ring);
  uint64_t wait_ns = HP_SENDER_IDLE_NS;
  while (rc == 0) {
    int stopping = atomic_load_explicit(&s->stop, memory_order_acquire);
    /* At the stop nothing is pushed any more: the counters are final. They go before
     * the drain, so that a stream cut off at exit still says what it should have held. */
    if (stopping && !s->final_sent && (rc = send_final_counters(s)) < 0)
      break;
    uint32_t n = 0;
    while (n < HP_SENDER_BATCH && hp_ring_pop(s->cfg.ring, &s->batch[n]))
      n++;
    /* The flow is counted by the slots producers claimed, not by the records popped: a
     * pop stops at a record still being written, which says nothing about the flow. */
    uint64_t turn = hp_now_ns(), pushed = hp_ring_pushed(s->cfg.ring);
    if ((rc = send_defs(s)) < 0 || (rc = send_thread_names(s, s->batch, n)) < 0 ||
        (rc = send_given_names(s)) < 0 || (rc = send_markers(s)) < 0 ||
        (rc = send_events(s, s->batch, n)) < 0 || (rc = flush_encoder(s)) < 0)
      break;
    uint64_t now = hp_now_ns();
    /* An adapted interval is told at once (its time stamps the change in the daemon);
     * the events already sent were taken at the old one, later ones carry their own
     * estimates either way. */
    if ((rc = send_interval_changes(s)) < 0)
      break;
    if (now - last_counters >= HP_SENDER_COUNTERS_NS) {
      if ((rc = send_counters(s)) < 0)
        break;
      last_counters = now;
      uint32_t reason;
      if (!stopping && s->cfg.check_end && (reason = s->cfg.check_end(s->cfg.arg)) != 0)
        end_here(s, reason);
    }
    if (n == 0 && stopping)
      break;
    prefault_ahead(s);
    /* A thin batch means the ring is nearly empty: wait for more (hp_sender_wait_ns)
     * rather than paying a wake-up and a send() per handful of events. */
    wait_ns = hp_sender_wait_ns(pushed - last_pushed, turn - last_turn, wait_ns);
    last_turn = turn;
    last_pushed = pushed;
    if (n < HP_SENDER_BATCH / 4 && !stopping)
      idle_wait(s, wait_ns);
  }
  if (rc == 0) {
    hp_goodbye g = {.ts_ns = hp_now_ns(),
                    .events_dropped = s->cfg.dropped ? s->cfg.dropped(s->cfg.arg) : 0,
                    .end_reason = atomic_load(&s->end_reason)};
    if ((rc = send_given_names(s)) == 0 && (rc = send_markers(s)) == 0 &&
        (rc = send_interval_changes(s)) == 0 && (rc = send_counters(s)) == 0 &&
        (rc = hp_encode_goodbye(s->enc, &g)) == 0)
      rc = flush_encoder(s);
  }
  if (rc < 0) {
    uint64_t lost = s->pending_events;
    if (rc == -ETIMEDOUT) {
      /* The daemon may wake up later: it must see the stream end here, not a frame
       * that goes on with whatever a later writer puts on this socket. */
      shutdown(s->fd, SHUT_RDWR);
      hp_event ev;
      while (hp_ring_pop(s->cfg.ring, &ev))
        lost++;
      /* The program's other processes need not wait for this daemon in turn. */
      if (s->cfg.family && s->peer) {
        atomic_store_explicit(&s->cfg.family->stuck_ns, hp_now_ns(), memory_order_relaxed);
        atomic_store_explicit(&s->cfg.family->stuck_peer, s->peer, memory_order_release);
      }
    }
    atomic_store(&s->error, rc);
    report_failure(s, rc, lost);
  }
  return NULL;
}

static void sender_release(hp_sender *s)
{
  if (s->sync_ready) {
    pthread_cond_destroy(&s->wake);
    pthread_mutex_destroy(&s->mu);
  }
  if (s->fd >= 0)
    close(s->fd);
  for (uint32_t i = 0; i < s->nnames; i++)
    free(s->names[i]);
  for (uint32_t i = 0; i < s->nmarkers; i++)
    free(s->markers[i]);
  hp_encoder_free(s->enc);
  hp_encoder_free(s->ctl);
  free(s->batch);
  free(s->hello_block);
  free(s->argv);
  free(s->buckets);
  free(s->socket_path);
  free(s);
}

/* Deep copy of the HELLO strings into one block. */
static int copy_hello(hp_sender *s, const hp_hello *h)
{
  size_t total = h->executable.len + h->python_version.len;
  for (uint32_t i = 0; i < h->argc; i++)
    total += h->argv[i].len;
  s->hello = *h;
  s->hello_block = malloc(total + 1);
  s->argv = calloc(h->argc ? h->argc : 1, sizeof(hp_str));
  s->buckets = calloc(h->nbuckets ? h->nbuckets : 1, sizeof(hp_bucket));
  if (!s->hello_block || !s->argv || !s->buckets)
    return -HP_ENOMEM;
  char *p = s->hello_block;
#define COPY_STR_(dst, src) \
  do { \
    if ((src).len) \
      memcpy(p, (src).ptr, (src).len); \
    (dst).ptr = p; \
    (dst).len = (src).len; \
    p += (src).len; \
  } while (0)
  for (uint32_t i = 0; i < h->argc; i++)
    COPY_STR_(s->argv[i], h->argv[i]);
  COPY_STR_(s->hello.executable, h->executable);
  COPY_STR_(s->hello.python_version, h->python_version);
#undef COPY_STR_
  for (uint32_t i = 0; i < h->nbuckets; i++)
    s->buckets[i] = h->buckets[i];
  s->hello.argv = s->argv;
  s->hello.buckets = s->buckets;
  return 0;
}

hp_sender *hp_sender_start(int fd, const hp_hello *hello, const hp_sender_cfg *cfg,
                           int *err)
{
  int rc = -HP_ENOMEM;
  hp_sender *s = calloc(1, sizeof(*s));
  if (!s) {
    close(fd);
    goto out;
  }
  s->fd = fd;
  s->cfg = *cfg;
  s->stall_ns = cfg->stall_ns ? cfg->stall_ns : HP_SENDER_STALL_NS;
  atomic_init(&s->stop_ns, 0);
  struct ucred cred;
  socklen_t cred_len = sizeof(cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cred_len) == 0)
    s->peer = cred.pid;
  atomic_init(&s->stop, 0);
  atomic_init(&s->error, 0);
  atomic_init(&s->end_reason, 0);
  pthread_condattr_t ca;
  if (pthread_condattr_init(&ca) != 0)
    goto out_release;
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  int crc = pthread_cond_init(&s->wake, &ca);
  pthread_condattr_destroy(&ca);
  if (crc != 0)
    goto out_release;
  if (pthread_mutex_init(&s->mu, NULL) != 0) {
    pthread_cond_destroy(&s->wake);
    goto out_release;
  }
  s->sync_ready = 1;
  s->socket_path = strdup(cfg->socket_path ? cfg->socket_path : "?");
  socklen_t optlen = sizeof(s->sndbuf);
  if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &s->sndbuf, &optlen) != 0 || s->sndbuf <= 0)
    s->sndbuf = 212992; /* Linux's usual default */
  s->flush_bytes = (size_t)s->sndbuf / 4 < HP_SENDER_FLUSH_BYTES ? (size_t)s->sndbuf / 4
                                                                 : HP_SENDER_FLUSH_BYTES;
  s->ctl = hp_encoder_new(4096);
  s->enc = hp_encoder_new(HP_SENDER_FLUSH_BYTES + (64u << 10));
  s->batch = malloc(HP_SENDER_BATCH * sizeof(hp_event));
  if (!s->socket_path || !s->enc || !s->ctl || !s->batch ||
      (rc = copy_hello(s, hello)) < 0) {
    rc = -HP_ENOMEM;
    goto out_release;
  }
  int prc = pthread_create(&s->thread, NULL, sender_main, s);
  if (prc != 0) {
    rc = -prc;
    goto out_release;
  }
  return s;

out_release:
  sender_release(s);
out:
  *err = rc;
  return NULL;
}

int hp_sender_stop(hp_sender *s)
{
  return hp_sender_stop_with(s, HP_END_STOPPED);
}

int hp_sender_stop_with(hp_sender *s, uint32_t end_reason)
{
  if (!s)
    return 0;
  uint32_t none = 0;
  if (end_reason)
    atomic_compare_exchange_strong(&s->end_reason, &none, end_reason);
  atomic_store_explicit(&s->stop_ns, hp_now_ns(), memory_order_relaxed);
  pthread_mutex_lock(&s->mu);
  atomic_store_explicit(&s->stop, 1, memory_order_release);
  pthread_cond_signal(&s->wake);
  pthread_mutex_unlock(&s->mu);
  pthread_join(s->thread, NULL);
  int rc = atomic_load(&s->error);
  sender_release(s);
  return rc;
}

void hp_sender_abandon(hp_sender *s)
{
  if (!s)
    return;
  /* The thread vanished in fork, possibly holding mu: never touch mu or wake again
   * (destroying a mutex locked by a thread that no longer exists is undefined). */
  s->sync_ready = 0;
  sender_release(s);
}
