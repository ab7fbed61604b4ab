/* hp_agent.c — sessions, the record path and fork handling (see hp_agent.h).
 *
 * A session owns everything the record path writes: its ring, its address table, its
 * counters and its settings. start() builds a session completely and then publishes it
 * with one atomic store; the record path reaches it only through session_pin(), which
 * announces the thread in a pin counter before it loads the pointer. stop() withdraws
 * the pointer, waits until no thread is pinned, and only then stops the sender and frees
 * the session. So a hook that raced the stop finishes in its own session's ring and
 * table, and nothing it may still touch is reset or freed under it; the pointer's
 * publication orders every setting before its use.
 *
 * What the hooks read without a pin lives for the process: the sampler configuration,
 * the gate, the mode and the free hook's filter (address-table filters are recycled,
 * never unmapped). Interned frames and stacks keep their ids for the life of the
 * process; each new stream re-sends their definitions. */
#include "hp_agent.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "hp_addrtab.h"
#include "hp_ring.h"
#include "hp_sender.h"
#include "hp_stats.h"

_Atomic int hp_agent_mode = HP_MODE_OFF;
/* Read by the free hook while not profiling: every address "never sampled". */
static _Atomic uint8_t g_no_filter[HP_ADDRTAB_FILTER];
_Atomic(const _Atomic uint8_t *) hp_agent_free_filter = g_no_filter;
hp_sampler_cfg hp_agent_sampler;
_Atomic uint32_t hp_agent_gate = HP_AGENT_GATE_CLOSED;
_Atomic uint32_t hp_agent_max_depth = HP_AGENT_DEFAULT_MAX_DEPTH;

/* Every change of a session's interval, in order, for the sender to report one by one
 * (an interval doubles at most 30 times up to HP_AGENT_ADAPT_MAX_INTERVAL). An entry is
 * published by its interval, stored last (0: not yet). */
#define ADAPT_LOG_MAX 64u

typedef struct session {
  hp_ring *ring;
  hp_addrtab *addrtab;
  hp_sender *sender;     /* under g_lock */
  size_t addrtab_warmed; /* sender thread only: where sender_warm goes on */
  /* Settings: written before the session is published, read-only after. */
  int (*hooks_replaced)(void); /* hp_agent_opts */
  clockid_t ts_clock;          /* event time stamps, see event_ts() */
  int block;                   /* block or adapt: a sample waits for ring space */
  int adapt;
  size_t adapt_fill;        /* adapt when fewer slots than this are free */
  size_t adapt_samples_min; /* ... and at least this many samples came */
  /* Any thread, relaxed: counts and hints. */
  _Atomic uint64_t adapt_samples; /* samples since the last change */
  _Atomic uint64_t extra_drops;   /* drops the ring does not count */
  /* Set when a FREE waited HP_AGENT_FREE_WAIT_NS in vain (drop mode): later FREEs are
   * dropped at once instead of each stalling the program, until one gets in. */
  _Atomic int free_wait_gave_up;
  /* Block (and adapt) mode's give-up latch: set when an event waited while the sender
   * took nothing for HP_AGENT_BLOCK_STALL_NS (heapprofd stopped or stuck). Without it
   * every further event would wait that long. While set, events are pushed only if there
   * is room at once, else counted as dropped; it clears when the ring has drained below
   * its free reserve again, and blocking resumes. */
  _Atomic int block_gave_up;
  _Atomic int block_gave_up_said;  /* the one line is printed once a session */
  _Atomic int hooks_replaced_said; /* likewise, when the hooks were replaced */
  _Atomic uint32_t adapt_log_len;
  struct {
    _Atomic uint64_t ts_ns;
    _Atomic uint64_t interval;
  } adapt_log[ADAPT_LOG_MAX];
} session;

/* Serialises start/stop/fork; taken by the fork prepare handler so that a fork never
 * copies a half-started or half-stopped session into the child. */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_initialised;   /* under g_lock */
static hp_intern *g_intern; /* set once under g_lock, then read-only */
/* The session start() made and stop() has not ended yet, under g_lock. It stays here
 * after its sender failed (then it is no longer published) until stop or the next
 * start reaps it. */
static session *g_current;
/* The session the record path uses: g_current while it profiles, else NULL. Stored
 * seq_cst, see session_pin(). */
static _Atomic(session *) g_session;
/* Serialises interval changes against each other (a try-lock: a hook never waits for
 * it). Reset in the fork child. */
static _Atomic int g_adapt_busy;
static _Atomic pid_t g_pid; /* pid the session belongs to */
static int g_child_restart; /* set in the fork child handler */
/* Processes of this program share what their senders learnt about heapprofd (a
 * MAP_SHARED page made once, inherited by fork children). NULL if mmap failed. */
static hp_sender_family *g_family;

/* ---- pins: who may still be inside a session ---- */

/* A thread on the record path counts itself here before it loads g_session and uncounts
 * itself when done. stop() withdraws g_session, then waits for every counter to read
 * zero: seq_cst on both sides (Dekker) means a thread either saw NULL or was seen, and
 * the release of the decrement orders all its accesses to the session before the free.
 * Counters are spread over cache lines by kernel thread id so that threads allocating
 * at once do not share one. */
#define PIN_STRIPES 16u
static struct {
  _Alignas(64) _Atomic uint64_t n;
} g_pins[PIN_STRIPES];

/* The kernel thread id (gettid): unlike a pthread_self() value, not handed to the next
 * thread as soon as one ends (the kernel cycles through pid_max first), and what /proc
 * and debuggers show. Cached per thread; the fork child handler forgets the forking
 * thread's. */
static __thread uint32_t t_tid __attribute__((tls_model("initial-exec")));

static inline uint32_t thread_id(void)
{
  uint32_t tid = t_tid;
  if (__builtin_expect(tid == 0, 0))
    t_tid = tid = (uint32_t)syscall(SYS_gettid);
  return tid;
}

static inline session *session_pin(_Atomic uint64_t **pin)
{
  _Atomic uint64_t *c = &g_pins[thread_id() % PIN_STRIPES].n;
  atomic_fetch_add_explicit(c, 1, memory_order_seq_cst);
  session *s = atomic_load_explicit(&g_session, memory_order_seq_cst);
  if (!s) {
    atomic_fetch_sub_explicit(c, 1, memory_order_release);
    return NULL;
  }
  *pin = c;
  return s;
}

static inline void session_unpin(_Atomic uint64_t *pin)
{
  uint64_t was = atomic_fetch_sub_explicit(pin, 1, memory_order_release);
  assert(was > 0);
  (void)was;
}

/* After g_session was withdrawn: a pinned thread only finishes its record (a waiting
 * one sees g_session change within HP_AGENT_WAIT_SLICE_NS), so this is short. */
static void pins_drain(void)
{
  for (unsigned i = 0; i < PIN_STRIPES; i++)
    while (atomic_load_explicit(&g_pins[i].n, memory_order_seq_cst) != 0)
      sched_yield();
}

/* ---- sessions ---- */

static inline uint64_t event_ts(const session *s);

/* Every way out of profiling: the hooks' fast paths close first, so that they fall
 * back to the slow paths, which check the mode. */
static void profiling_off(void)
{
  /* Mode first: adapt_interval() reopens the gate only after it saw the mode on, and
   * closes it again if the mode turned off meanwhile. A hook that passes the gate
   * between these stores only counts down and calls the real allocator. */
  atomic_store(&hp_agent_mode, HP_MODE_OFF);
  atomic_store(&hp_agent_gate, HP_AGENT_GATE_CLOSED);
  atomic_store(&hp_agent_free_filter, g_no_filter);
}

static void session_free(session *s)
{
  hp_ring_free(s->ring);
  hp_addrtab_free(s->addrtab);
  free(s);
}

/* Turns profiling off for s, withdraws it and waits out the threads still inside it:
 * afterwards nothing pushes to its ring. Any thread but a hook; again is harmless. */
static void session_withdraw(session *s)
{
  if (atomic_load(&hp_agent_mode) == HP_MODE_PROFILE)
    profiling_off();
  session *expected = s;
  atomic_compare_exchange_strong(&g_session, &expected, NULL);
  pins_drain();
  assert(atomic_load(&g_session) != s); /* nothing can reach s any more */
}

/* The hooks were replaced (tracemalloc started before heapprof and stopped while it
 * profiled puts back the allocators it found, without ours): nothing
 * is recorded any more, and blocks freed from now on would look never freed. Said once;
 * the session ends with HP_END_HOOKS_REPLACED ('hooks_replaced' in the database). */
static uint32_t check_hooks(session *s)
{
  if (!s->hooks_replaced || !s->hooks_replaced())
    return HP_END_STOPPED;
  if (!atomic_exchange(&s->hooks_replaced_said, 1)) {
    static const char msg[] = "heapprof: the allocator hooks were replaced or removed by "
                              "someone else (e.g. tracemalloc.stop()); recording ended "
                              "here, the session ends as hooks_replaced\n";
    ssize_t w = write(STDERR_FILENO, msg, sizeof(msg) - 1);
    (void)w;
  }
  return HP_END_HOOKS_REPLACED;
}

/* Ends g_current's recording: withdraws it, then stops its sender (which sends the final
 * counters, what the ring holds and GOODBYE) and frees it. Under g_lock. */
static int session_end(session *s)
{
  session_withdraw(s);
  int rc = hp_sender_stop_with(s->sender, check_hooks(s));
  session_free(s);
  return rc;
}

/* The sender thread, about once a second: hooks replaced ends the session there, with
 * the time of the discovery as its end. */
static uint32_t sender_check_end(void *arg)
{
  session *s = arg;
  uint32_t reason = check_hooks(s);
  if (reason != HP_END_STOPPED)
    session_withdraw(s);
  return reason;
}

static void on_sender_failed(void *arg, int err)
{
  session *s = arg;
  (void)err;
  /* Profiling stops; hooks fall back to pass-through. The session is reaped by the next
   * hp_agent_stop() (atexit) or start, which report nothing further. */
  profiling_off();
  atomic_compare_exchange_strong(&g_session, &s, NULL);
}

static uint64_t session_dropped(const session *s)
{
  return hp_ring_dropped(s->ring) +
         atomic_load_explicit(&((session *)s)->extra_drops, memory_order_relaxed);
}

/* The address table's buckets are written at random: mapped in from the start, so that
 * early samples take no page fault in the program's threads. Tables for intervals under
 * about 4 KiB are larger than this and are mapped in as far as it goes. */
#define HP_AGENT_PREFAULT_ADDRTAB_BYTES (2u << 20)

/* The sender calls it until it returns 0 (hp_sender_cfg.warm). */
static int sender_warm(void *arg, size_t max_bytes)
{
  session *s = arg;
  size_t left = HP_AGENT_PREFAULT_ADDRTAB_BYTES - s->addrtab_warmed;
  s->addrtab_warmed = hp_addrtab_prefault(s->addrtab, s->addrtab_warmed,
                                          max_bytes < left ? max_bytes : left);
  return s->addrtab_warmed != 0 && s->addrtab_warmed < HP_AGENT_PREFAULT_ADDRTAB_BYTES;
}

static uint64_t sender_dropped(void *arg)
{
  return session_dropped(arg);
}

static int sender_interval_change(void *arg, uint32_t index, uint64_t *ts_ns,
                                  uint64_t *interval)
{
  session *s = arg;
  if (index >= ADAPT_LOG_MAX || index >= atomic_load(&s->adapt_log_len))
    return 0;
  uint64_t v = atomic_load_explicit(&s->adapt_log[index].interval, memory_order_acquire);
  if (v == 0)
    return 0; /* claimed, not yet written */
  *ts_ns = atomic_load_explicit(&s->adapt_log[index].ts_ns, memory_order_relaxed);
  *interval = v;
  return 1;
}

static void atfork_prepare(void)
{
  pthread_mutex_lock(&g_lock);
}

static void atfork_parent(void)
{
  pthread_mutex_unlock(&g_lock);
}

/* Only the forking thread exists here: the sender thread and any thread that was on the
 * record path are gone, some perhaps pinned or mid-push. The parent's session is not
 * the child's: drop it whole (its memory is the child's copy, nobody else can touch it)
 * and forget the pins of the threads that vanished. */
static void atfork_child(void)
{
  int was = atomic_load(&hp_agent_mode);
  profiling_off();
  atomic_store(&g_session, NULL);
  for (unsigned i = 0; i < PIN_STRIPES; i++)
    atomic_store(&g_pins[i].n, 0);
  atomic_store(&g_adapt_busy, 0); /* its holder, if any, is gone */
  t_tid = 0;
  g_child_restart = (was == HP_MODE_PROFILE);
  if (g_current) {
    hp_sender_abandon(g_current->sender);
    session_free(g_current);
    g_current = NULL;
  }
  atomic_store(&g_pid, getpid());
  if (was == HP_MODE_STATS)
    atomic_store(&hp_agent_mode, HP_MODE_STATS);
  pthread_mutex_unlock(&g_lock);
}

int hp_agent_init(void)
{
  int rc = 0;
  pthread_mutex_lock(&g_lock);
  if (g_initialised)
    goto out_unlock;
  g_intern = hp_intern_new(0, 0);
  if (!g_intern) {
    rc = -HP_ENOMEM;
    goto out_unlock;
  }
  if (pthread_atfork(atfork_prepare, atfork_parent, atfork_child) != 0) {
    rc = -HP_ENOMEM;
    goto out_free;
  }
  hp_sampler_cfg cfg = {0};
  hp_sampler_configure_interval(&cfg, HP_SAMPLER_DEFAULT_INTERVAL);
  hp_sampler_publish(&hp_agent_sampler, &cfg);
  g_family = hp_sender_family_new(); /* NULL: every process judges alone */
  atomic_store(&g_pid, getpid());
  g_initialised = 1;
  goto out_unlock;

out_free:
  hp_intern_free(g_intern);
  g_intern = NULL;
out_unlock:
  pthread_mutex_unlock(&g_lock);
  return rc;
}

/* A session with its ring and address table, not yet published. NULL on OOM. */
static session *session_new(const hp_agent_opts *o)
{
  session *s = calloc(1, sizeof(*s));
  if (!s)
    return NULL;
  uint64_t like = o->nbuckets ? 1 : o->sample_interval; /* buckets: may sample a lot */
  s->ring = hp_ring_new(HP_RING_DEFAULT_CAPACITY);
  hp_addrtab_filtering filtering = !hp_addrtab_filter_for_interval(like)
                                     ? HP_ADDRTAB_NO_FILTER
                                   : o->follow_reuse ? HP_ADDRTAB_FILTER_NEAR
                                                     : HP_ADDRTAB_FILTER_EXACT;
  s->addrtab = hp_addrtab_new(hp_addrtab_slots_for_interval(like), filtering);
  if (!s->ring || !s->addrtab) {
    session_free(s);
    return NULL;
  }
  /* Recording everything, see event_ts(). */
  s->ts_clock = (!o->nbuckets && o->sample_interval == 1) ? CLOCK_MONOTONIC_COARSE
                                                          : CLOCK_MONOTONIC;
  s->hooks_replaced = o->hooks_replaced;
  s->adapt = o->adapt_when_full && !o->nbuckets;
  s->block = o->block_when_full || s->adapt;
  s->adapt_fill = hp_ring_capacity(s->ring) / 2;
  s->adapt_samples_min = hp_ring_capacity(s->ring) / HP_AGENT_ADAPT_SAMPLES_DIV;
  return s;
}

int hp_agent_start(const hp_agent_opts *o)
{
  int rc, fd = -1;
  session *s = NULL;
  if (!g_initialised || !o->socket_path || o->max_depth == 0 ||
      o->max_depth > HP_MAX_STACK_DEPTH)
    return -HP_EINVAL;
  pthread_mutex_lock(&g_lock);
  if (atomic_load(&hp_agent_mode) != HP_MODE_OFF) {
    rc = -HP_EINVAL;
    goto out_unlock;
  }
  if (g_current) {
    /* A session whose daemon went away (the sender turned profiling off): reap it. */
    session_end(g_current);
    g_current = NULL;
  }
  /* No session is published and none is pinned: no adapter writes the sampler now. */
  hp_sampler_cfg cfg = hp_agent_sampler;
  rc = o->nbuckets ? hp_sampler_configure_buckets(&cfg, o->buckets, o->nbuckets)
                   : hp_sampler_configure_interval(&cfg, o->sample_interval);
  if (rc < 0)
    goto out_unlock;
  if ((rc = hp_sender_connect(o->socket_path, &fd)) < 0)
    goto out_unlock;
  if (!(s = session_new(o))) {
    close(fd);
    rc = -HP_ENOMEM;
    goto out_unlock;
  }
  atomic_store(&g_pid, getpid());

  hp_hello h = {
    .version = HP_PROTO_VERSION,
    .pid = getpid(),
    .ppid = getppid(),
    .argc = o->argc,
    .argv = o->argv,
    .executable = o->executable,
    .python_version = o->python_version,
    .start_wall_ns = hp_wall_ns(),
    .start_mono_ns = event_ts(s), /* the events' clock: no event stamps before it */
    .sample_interval_bytes = o->nbuckets ? 0 : o->sample_interval,
    .max_stack_depth = o->max_depth,
    .nbuckets = o->nbuckets,
    .buckets = o->buckets,
  };
  hp_sender_cfg scfg = {.ring = s->ring,
                        .intern = g_intern,
                        .dropped = sender_dropped,
                        .interval_change = sender_interval_change,
                        .failed = on_sender_failed,
                        .check_end = o->hooks_replaced ? sender_check_end : NULL,
                        .warm = sender_warm,
                        .arg = s,
                        .socket_path = o->socket_path,
                        .family = g_family};
  s->sender = hp_sender_start(fd, &h, &scfg, &rc);
  if (!s->sender) {
    session_free(s);
    goto out_unlock;
  }
  assert(!g_current && !atomic_load(&g_session)); /* one session at a time */
  hp_sampler_publish(&hp_agent_sampler, &cfg);
  atomic_store(&hp_agent_max_depth, o->max_depth);
  atomic_store(&hp_agent_free_filter, hp_addrtab_filter(s->addrtab));
  g_current = s;
  atomic_store_explicit(&g_session, s, memory_order_seq_cst);
  atomic_store(&hp_agent_mode, HP_MODE_PROFILE);
  if (!cfg.nbuckets && cfg.interval > 1)
    atomic_store(&hp_agent_gate, cfg.generation);
  rc = 0;
out_unlock:
  pthread_mutex_unlock(&g_lock);
  return rc;
}

/* Holds g_lock across the sender's stop so that a start or a fork never sees half a
 * session; that is bounded: hp_sender_stop() gives a daemon that takes nothing at most
 * HP_SENDER_STALL_NS, so a fork in another thread (atfork_prepare) or the program's
 * exit (atexit) waits at most that long for a stuck daemon. */
int hp_agent_stop(void)
{
  int rc = 0;
  pthread_mutex_lock(&g_lock);
  if (g_current) {
    rc = session_end(g_current);
    g_current = NULL;
  }
  pthread_mutex_unlock(&g_lock);
  return rc;
}

int hp_agent_thread_name(uint64_t thread_id, const char *name, size_t len)
{
  pthread_mutex_lock(&g_lock);
  int rc = g_current ? hp_sender_thread_name(g_current->sender, thread_id, name, len)
                     : -HP_EINVAL;
  pthread_mutex_unlock(&g_lock);
  return rc;
}

/* Reaches the session through a pin, as the record path does, rather than g_lock: a
 * stop holds that lock while heapprofd drains (up to the stall bound), and a marker must
 * not wait for it. While pinned, the session and its sender stay allocated. */
int hp_agent_mark(const char *label, size_t len)
{
  _Atomic uint64_t *pin;
  session *s = session_pin(&pin);
  if (!s)
    return -HP_EINVAL;
  int rc = hp_sender_marker(s->sender, event_ts(s), label, len);
  session_unpin(pin);
  return rc;
}

int hp_agent_is_profiling(void)
{
  return atomic_load(&hp_agent_mode) == HP_MODE_PROFILE;
}

void hp_agent_stats_enable(int on)
{
  pthread_mutex_lock(&g_lock);
  if (on && atomic_load(&hp_agent_mode) == HP_MODE_OFF) {
    hp_stats_reset();
    atomic_store(&hp_agent_mode, HP_MODE_STATS);
  } else if (!on && atomic_load(&hp_agent_mode) == HP_MODE_STATS) {
    atomic_store(&hp_agent_mode, HP_MODE_OFF);
  }
  pthread_mutex_unlock(&g_lock);
}

int hp_agent_child_needs_restart(void)
{
  pthread_mutex_lock(&g_lock);
  int r = g_child_restart;
  g_child_restart = 0;
  pthread_mutex_unlock(&g_lock);
  return r;
}

/* Event timestamps. When sampling (interval > 1, or bucket rates) events are few and
 * get CLOCK_MONOTONIC at nanosecond resolution. Recording everything (interval 1)
 * produces millions of events a second, where the precise clock's read is a visible
 * share of the cost (bench/README.md), so it uses CLOCK_MONOTONIC_COARSE: the same
 * clock at kernel-tick resolution, whose sub-tick order is still the stream order the
 * daemon pairs by. Either way HELLO's
 * start_mono_ns (stamped by this function) converts the stamps to wall time. */
static inline uint64_t event_ts(const session *s)
{
  struct timespec ts;
  clock_gettime(s->ts_clock, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Per-thread count of sampled events, to space out the pid check below. */
static __thread uint32_t t_pid_check __attribute__((tls_model("initial-exec")));
#define PID_CHECK_EVERY 64u

/* A process that forked without running the fork handlers (raw clone, vfork) must not
 * feed the parent's ring: nobody drains it there. getpid() is a system call (glibc no
 * longer caches it), too dear for every sample when recording everything: it runs on a
 * thread's first sample and then every PID_CHECK_EVERY samples; the fork handlers cover
 * fork() itself exactly. */
static int wrong_process(void)
{
  if (t_pid_check++ % PID_CHECK_EVERY != 0 ||
      getpid() == atomic_load_explicit(&g_pid, memory_order_relaxed))
    return 0;
  profiling_off();
  return 1;
}

/* Waits for ring space in slices of HP_AGENT_WAIT_SLICE_NS. With stall_ns, as long as
 * the sender keeps taking records out (heapprofd takes data, however slowly) and until
 * it has taken nothing for stall_ns; with limit_ns, at most that long in all. A stop
 * ends the wait (the session is withdrawn): that is not the daemon's fault. 0, or
 * -HP_EFULL with the drop counted. */
static __attribute__((noinline)) int push_waiting(session *s, const hp_event *ev,
                                                  uint64_t stall_ns, uint64_t limit_ns)
{
  uint64_t start = hp_now_ns(), moved = start;
  uint64_t popped = hp_ring_popped(s->ring);
  struct timespec ts = {0, HP_AGENT_WAIT_SLICE_NS};
  for (;;) {
    if (hp_ring_try_push(s->ring, ev) == 0)
      return 0;
    if (atomic_load_explicit(&g_session, memory_order_relaxed) != s)
      break;
    nanosleep(&ts, NULL);
    uint64_t now = hp_now_ns(), p = hp_ring_popped(s->ring);
    if (p != popped) {
      popped = p;
      moved = now;
    }
    if ((limit_ns && now - start >= limit_ns) || (stall_ns && now - moved >= stall_ns))
      break;
  }
  atomic_fetch_add_explicit(&s->extra_drops, 1, memory_order_relaxed);
  return -HP_EFULL;
}

/* A FREE in drop mode that found the ring full even with its reserve. */
static __attribute__((noinline)) int push_free_waiting(session *s, const hp_event *ev)
{
  if (atomic_load_explicit(&s->free_wait_gave_up, memory_order_relaxed)) {
    hp_ring_count_drop(s->ring);
    return -HP_EFULL;
  }
  int rc = push_waiting(s, ev, 0, HP_AGENT_FREE_WAIT_NS);
  if (rc < 0)
    atomic_store_explicit(&s->free_wait_gave_up, 1, memory_order_relaxed);
  return rc;
}

/* Block mode, after an event waited for a sender that took nothing: see block_gave_up. */
static __attribute__((noinline)) int push_block_gave_up(session *s, const hp_event *ev)
{
  if (hp_ring_alloc_room(s->ring)) {
    atomic_store_explicit(&s->block_gave_up, 0, memory_order_relaxed);
    return push_waiting(s, ev, HP_AGENT_BLOCK_STALL_NS, 0);
  }
  if (hp_ring_try_push(s->ring, ev) == 0)
    return 0;
  atomic_fetch_add_explicit(&s->extra_drops, 1, memory_order_relaxed);
  return -HP_EFULL;
}

static __attribute__((noinline)) int push_block(session *s, const hp_event *ev)
{
  if (atomic_load_explicit(&s->block_gave_up, memory_order_relaxed))
    return push_block_gave_up(s, ev);
  int rc = push_waiting(s, ev, HP_AGENT_BLOCK_STALL_NS, 0);
  if (rc < 0 && atomic_load_explicit(&g_session, memory_order_relaxed) == s) {
    atomic_store_explicit(&s->block_gave_up, 1, memory_order_relaxed);
    if (!atomic_exchange(&s->block_gave_up_said, 1)) {
      static const char block_msg[] = "heapprof: heapprofd took no data for 5 s; dropping "
                                      "events until it does (block mode)\n";
      static const char adapt_msg[] = "heapprof: heapprofd took no data for 5 s; dropping "
                                      "events until it does (adapt mode)\n";
      const char *msg = s->adapt ? adapt_msg : block_msg;
      size_t len = s->adapt ? sizeof(adapt_msg) - 1 : sizeof(block_msg) - 1;
      ssize_t w = write(STDERR_FILENO, msg, len);
      (void)w;
    }
  }
  return rc;
}

/* ALLOCs are dropped when only the ring's free reserve is left (hp_ring.h); FREEs use
 * the reserve, and when even that is full they wait briefly (see push_free_waiting). */
static int push(session *s, const hp_event *ev)
{
  if (s->block)
    return push_block(s, ev);
  if (ev->kind != HP_EV_FREE)
    return hp_ring_push(s->ring, ev);
  if (hp_ring_try_push(s->ring, ev) < 0)
    return push_free_waiting(s, ev);
  if (atomic_load_explicit(&s->free_wait_gave_up, memory_order_relaxed))
    atomic_store_explicit(&s->free_wait_gave_up, 0, memory_order_relaxed);
  return 0;
}

void hp_agent_record_alloc(hp_domain domain, void *ptr, size_t size, uint64_t est_bytes,
                           uint32_t stack_id)
{
  _Atomic uint64_t *pin;
  session *s = session_pin(&pin);
  if (!s)
    return;
  if (wrong_process())
    goto out;
  if (hp_addrtab_insert(s->addrtab, (uintptr_t)ptr) < 0) {
    /* Without a table entry its free could not be reported: the sample would look
     * leaked forever. Dropping it keeps the live heap honest; the loss is counted. */
    atomic_fetch_add_explicit(&s->extra_drops, 1, memory_order_relaxed);
    goto out;
  }
  hp_event ev = {.kind = HP_EV_ALLOC,
                 .domain = (uint8_t)domain,
                 .stack_id = stack_id,
                 .ts_ns = event_ts(s),
                 .thread_id = thread_id(),
                 .address = (uint64_t)(uintptr_t)ptr,
                 .size = size,
                 .est_bytes = est_bytes};
  if (push(s, &ev) < 0)
    hp_addrtab_remove(s->addrtab, (uintptr_t)ptr);
out:
  session_unpin(pin);
}

/* on_full='adapt', the ring more than half full: double the interval when enough
 * samples came since the last change (see hp_agent.h). Any allocating thread, pinned to
 * s; the one that resets the count makes the change. A change cannot outlive its
 * session: the next start waits for the pins. */
static __attribute__((noinline)) void adapt_interval(session *s, uint64_t samples_min)
{
  uint64_t seen = atomic_load_explicit(&s->adapt_samples, memory_order_relaxed);
  if (seen < samples_min || atomic_exchange(&g_adapt_busy, 1))
    return;
  if (atomic_load(&hp_agent_mode) != HP_MODE_PROFILE ||
      !atomic_compare_exchange_strong(&s->adapt_samples, &seen, 0))
    goto out;
  uint64_t interval = __atomic_load_n(&hp_agent_sampler.interval, __ATOMIC_RELAXED);
  if (interval == 0 || interval >= HP_AGENT_ADAPT_MAX_INTERVAL)
    goto out;
  uint32_t slot = atomic_load(&s->adapt_log_len);
  if (slot < ADAPT_LOG_MAX) {
    atomic_store_explicit(&s->adapt_log[slot].ts_ns, hp_now_ns(), memory_order_relaxed);
    atomic_store_explicit(&s->adapt_log[slot].interval, interval * 2, memory_order_release);
    atomic_store(&s->adapt_log_len, slot + 1);
  }
  atomic_store(&hp_agent_gate, hp_sampler_adapt(&hp_agent_sampler, interval * 2));
  if (atomic_load(&hp_agent_mode) != HP_MODE_PROFILE) /* a stop raced this change */
    atomic_store(&hp_agent_gate, HP_AGENT_GATE_CLOSED);
out:
  atomic_store(&g_adapt_busy, 0);
}

int hp_agent_alloc_room(void)
{
  _Atomic uint64_t *pin;
  session *s = session_pin(&pin);
  if (!s)
    return 0;
  if (s->adapt) {
    atomic_fetch_add_explicit(&s->adapt_samples, 1, memory_order_relaxed);
    if (!hp_ring_has_room(s->ring, s->adapt_fill))
      adapt_interval(s, hp_ring_alloc_room(s->ring)
                          ? s->adapt_samples_min
                          : s->adapt_samples_min / HP_AGENT_ADAPT_DROP_DIV);
  }
  /* Given up in block mode: like drop mode, skip the stack walk of a sample that would
   * be dropped (push_block_gave_up clears the latch once there is room). */
  int room = (s->block && !atomic_load_explicit(&s->block_gave_up, memory_order_relaxed)) ||
             hp_ring_alloc_room(s->ring);
  session_unpin(pin);
  return room;
}

int hp_agent_record_free(void *ptr)
{
  _Atomic uint64_t *pin;
  session *s = session_pin(&pin);
  if (!s)
    return 0;
  int sampled = hp_addrtab_remove(s->addrtab, (uintptr_t)ptr);
  if (sampled && !wrong_process()) {
    hp_event ev = {.kind = HP_EV_FREE,
                   .ts_ns = event_ts(s),
                   .thread_id = thread_id(),
                   .address = (uint64_t)(uintptr_t)ptr};
    push(s, &ev);
  }
  session_unpin(pin);
  return sampled;
}

int hp_agent_is_sampled(const void *ptr)
{
  _Atomic uint64_t *pin;
  session *s = session_pin(&pin);
  if (!s)
    return 0;
  int r = hp_addrtab_contains(s->addrtab, (uintptr_t)ptr);
  session_unpin(pin);
  return r;
}

/* Pushed like an ALLOC: a lost REATTRIBUTE leaves the block with its old stack, its
 * bytes and its free still right, so it gets no share of the free reserve. */
void hp_agent_record_reattribute(const void *ptr, uint32_t stack_id)
{
  _Atomic uint64_t *pin;
  session *s = session_pin(&pin);
  if (!s)
    return;
  if (hp_addrtab_contains(s->addrtab, (uintptr_t)ptr) && !wrong_process()) {
    hp_event ev = {.kind = HP_EV_REATTRIBUTE,
                   .stack_id = stack_id,
                   .ts_ns = event_ts(s),
                   .thread_id = thread_id(),
                   .address = (uint64_t)(uintptr_t)ptr};
    push(s, &ev);
  }
  session_unpin(pin);
}

hp_intern *hp_agent_intern(void)
{
  return g_intern;
}

uint64_t hp_agent_dropped(void)
{
  pthread_mutex_lock(&g_lock);
  uint64_t n = g_current ? session_dropped(g_current) : 0;
  pthread_mutex_unlock(&g_lock);
  return n;
}

void hp_agent_count_drop(void)
{
  _Atomic uint64_t *pin;
  session *s = session_pin(&pin);
  if (!s)
    return;
  atomic_fetch_add_explicit(&s->extra_drops, 1, memory_order_relaxed);
  session_unpin(pin);
}
