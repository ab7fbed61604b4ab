/* hp_agent.c — session lifecycle, the record path and fork handling (see hp_agent.h).
 *
 * Tables (ring, address table, interning) are allocated once and live until the process
 * ends: a hook running on another thread while a session stops may still touch them,
 * and freeing them under it would be a use-after-free. Interned frames and stacks keep
 * their ids for the life of the process; each new stream re-sends their definitions. */
#include "hp_agent.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
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
uint32_t hp_agent_max_depth = HP_AGENT_DEFAULT_MAX_DEPTH;

/* Serialises start/stop/fork; taken by the fork prepare handler so that a fork never
 * copies a half-started or half-stopped session into the child. */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_initialised;                  /* under g_lock */
static hp_ring *g_ring;                    /* set once under g_lock, then read-only */
/* Created by the first start, sized for its interval; replaced (the old one is retired,
 * never freed: a hook that raced the previous stop may still read it) only by a start
 * that needs another size, and in a fork child. */
static hp_addrtab *g_addrtab;
static hp_intern *g_intern;                /* likewise */
static hp_sender *g_sender;                /* under g_lock */
/* Block mode, and adapt mode: a sample waits for ring space (bounded, see
 * g_block_gave_up) rather than being dropped; adapt raises the interval meanwhile. */
static int g_block;                        /* written while mode is OFF */
static int g_adapt;                        /* likewise */
static size_t g_adapt_fill;                /* likewise: adapt when fewer slots are free */
static size_t g_adapt_samples_min;         /* likewise: ... and this many samples came */
static _Atomic uint64_t g_adapt_samples;   /* samples since the last change; relaxed */
/* Serialises interval changes against each other and against a start (a try-lock: a
 * hook never waits for it); g_session_epoch tells a change that began in an earlier
 * session to give up. Reset in the fork child. */
static _Atomic int g_adapt_busy;
static _Atomic uint32_t g_session_epoch;
/* Every change of this session, in order, for the sender to report one by one (an
 * interval doubles at most 30 times up to HP_AGENT_ADAPT_MAX_INTERVAL). An entry is
 * published by its interval, stored last (0: not yet). */
#define ADAPT_LOG_MAX 64u
static struct {
  _Atomic uint64_t ts_ns;
  _Atomic uint64_t interval;
} g_adapt_log[ADAPT_LOG_MAX];
static _Atomic uint32_t g_adapt_log_len;
static _Atomic uint64_t g_extra_drops;     /* drops not counted by the ring; relaxed */
static _Atomic pid_t g_pid;                /* pid the session belongs to */
/* Set when a FREE waited HP_AGENT_FREE_WAIT_NS in vain (the sender is stuck): later
 * FREEs are dropped at once instead of each stalling the program, until one gets in.
 * Any thread, relaxed: a hint. */
static _Atomic int g_free_wait_gave_up;
/* Block mode's give-up latch: set when an event waited HP_AGENT_BLOCK_TIMEOUT_NS in vain
 * (heapprofd stopped or stuck). Without it every further event would wait the full
 * timeout and a stuck daemon would hold the program at ~1 event/s. While set, events
 * are pushed only if there is room at once, else counted as dropped; it clears when the
 * ring has drained below its free reserve again, and blocking resumes. Relaxed: a hint. */
static _Atomic int g_block_gave_up;
static _Atomic int g_block_gave_up_said;   /* the one line is printed once a session */
static int g_child_restart;                /* set in the fork child handler */
static int g_addrtab_dirty;                /* under g_lock: a session may have filled it */
static int g_addrtab_filter;               /* under g_lock: g_addrtab has a filter */

static inline uint64_t event_ts(void);
static clockid_t g_ts_clock;

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

static void on_sender_failed(void *arg, int err)
{
  (void)arg;
  (void)err;
  /* Profiling stops; hooks fall back to pass-through. The session is reaped by the next
   * hp_agent_stop() (atexit), which reports nothing further. */
  profiling_off();
}

static uint64_t sender_dropped(void *arg)
{
  (void)arg;
  return hp_agent_dropped();
}

static int sender_interval_change(void *arg, uint32_t index, uint64_t *ts_ns,
                                  uint64_t *interval)
{
  (void)arg;
  if (index >= ADAPT_LOG_MAX || index >= atomic_load(&g_adapt_log_len))
    return 0;
  uint64_t v = atomic_load_explicit(&g_adapt_log[index].interval, memory_order_acquire);
  if (v == 0)
    return 0;   /* claimed, not yet written */
  *ts_ns = atomic_load_explicit(&g_adapt_log[index].ts_ns, memory_order_relaxed);
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

/* Only the forking thread exists here: the sender thread and any producer that was
 * mid-push are gone. Reset everything they could have left half-done. */
static void atfork_child(void)
{
  int was = atomic_load(&hp_agent_mode);
  profiling_off();
  atomic_store(&g_adapt_busy, 0);   /* its holder, if any, is gone */
  g_child_restart = (was == HP_MODE_PROFILE);
  if (g_sender) {
    hp_sender_abandon(g_sender);
    g_sender = NULL;
  }
  if (g_ring)
    hp_ring_reset(g_ring);
  if (g_addrtab) {
    /* A fresh table maps zero pages instead of copying the parent's on write. */
    hp_addrtab *fresh = hp_addrtab_new(hp_addrtab_slots(g_addrtab), g_addrtab_filter);
    if (fresh) {
      hp_addrtab_free(g_addrtab);
      g_addrtab = fresh;
      g_addrtab_dirty = 0;
    } else {
      hp_addrtab_clear(g_addrtab);
    }
  }
  atomic_store(&g_extra_drops, 0);
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
  g_ring = hp_ring_new(HP_RING_DEFAULT_CAPACITY);
  g_intern = hp_intern_new(0, 0);
  if (!g_ring || !g_intern) {
    rc = -HP_ENOMEM;
    goto out_free;
  }
  if (pthread_atfork(atfork_prepare, atfork_parent, atfork_child) != 0) {
    rc = -HP_ENOMEM;
    goto out_free;
  }
  hp_sampler_configure_interval(&hp_agent_sampler, HP_SAMPLER_DEFAULT_INTERVAL);
  atomic_store(&g_pid, getpid());
  g_initialised = 1;
  goto out_unlock;

out_free:
  hp_ring_free(g_ring);
  hp_intern_free(g_intern);
  g_ring = NULL;
  g_intern = NULL;
out_unlock:
  pthread_mutex_unlock(&g_lock);
  return rc;
}

int hp_agent_start(const hp_agent_opts *o)
{
  int rc, fd = -1;
  hp_event scratch;
  if (!g_initialised || !o->socket_path || o->max_depth == 0 ||
      o->max_depth > HP_MAX_STACK_DEPTH)
    return -HP_EINVAL;
  pthread_mutex_lock(&g_lock);
  if (atomic_load(&hp_agent_mode) != HP_MODE_OFF) {
    rc = -HP_EINVAL;
    goto out_unlock;
  }
  if (g_sender) {
    /* A session whose daemon went away (the sender turned profiling off): reap it. */
    hp_sender_stop(g_sender);
    g_sender = NULL;
  }
  /* A change of the previous session still under way must not touch this one's
   * configuration: it sees the new epoch and gives up, or finishes before this write. */
  atomic_fetch_add(&g_session_epoch, 1);
  while (atomic_load(&g_adapt_busy))
    sched_yield();
  hp_sampler_cfg cfg = hp_agent_sampler;
  rc = o->nbuckets ? hp_sampler_configure_buckets(&cfg, o->buckets, o->nbuckets)
                   : hp_sampler_configure_interval(&cfg, o->sample_interval);
  if (rc < 0)
    goto out_unlock;
  if ((rc = hp_sender_connect(o->socket_path, &fd)) < 0)
    goto out_unlock;
  /* Leftovers of an earlier session (a hook that raced its stop) must not leak into
   * this stream. No sender runs now, so this thread may consume. */
  while (hp_ring_pop(g_ring, &scratch))
    ;
  hp_ring_reset(g_ring);
  uint64_t like = o->nbuckets ? 1 : o->sample_interval;   /* buckets: may sample a lot */
  size_t want = hp_addrtab_slots_for_interval(like);
  int filter = hp_addrtab_filter_for_interval(like);
  if (!g_addrtab || hp_addrtab_slots(g_addrtab) != want || g_addrtab_filter != filter) {
    hp_addrtab *t = hp_addrtab_new(want, filter);
    if (!t) {
      close(fd);
      rc = -HP_ENOMEM;
      goto out_unlock;
    }
    g_addrtab = t;
    g_addrtab_filter = filter;
    g_addrtab_dirty = 0;
  }
  /* Clearing touches every page of the table; a fresh one is still all zero pages. */
  if (g_addrtab_dirty)
    hp_addrtab_clear(g_addrtab);
  g_addrtab_dirty = 1;
  atomic_store(&g_extra_drops, 0);
  atomic_store(&g_free_wait_gave_up, 0);
  atomic_store(&g_block_gave_up, 0);
  atomic_store(&g_block_gave_up_said, 0);
  g_ts_clock = (!o->nbuckets && o->sample_interval == 1) ? CLOCK_MONOTONIC_COARSE
                                                          : CLOCK_MONOTONIC;
  hp_agent_sampler = cfg;
  hp_agent_max_depth = o->max_depth;
  g_adapt = o->adapt_when_full && !o->nbuckets;
  g_block = o->block_when_full || g_adapt;
  g_adapt_fill = hp_ring_capacity(g_ring) / 2;
  g_adapt_samples_min = hp_ring_capacity(g_ring) / HP_AGENT_ADAPT_SAMPLES_DIV;
  atomic_store(&g_adapt_samples, 0);
  for (uint32_t i = 0; i < ADAPT_LOG_MAX; i++)
    atomic_store(&g_adapt_log[i].interval, 0);
  atomic_store(&g_adapt_log_len, 0);
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
    .start_mono_ns = event_ts(),   /* the events' clock: no event stamps before it */
    .sample_interval_bytes = o->nbuckets ? 0 : o->sample_interval,
    .max_stack_depth = o->max_depth,
    .nbuckets = o->nbuckets,
    .buckets = o->buckets,
  };
  hp_sender_cfg scfg = { .ring = g_ring, .intern = g_intern, .dropped = sender_dropped,
                         .interval_change = sender_interval_change,
                         .failed = on_sender_failed, .arg = NULL,
                         .socket_path = o->socket_path };
  g_sender = hp_sender_start(fd, &h, &scfg, &rc);
  if (!g_sender)
    goto out_unlock;
  atomic_store(&hp_agent_free_filter, hp_addrtab_filter(g_addrtab));
  atomic_store(&hp_agent_mode, HP_MODE_PROFILE);
  if (!cfg.nbuckets && cfg.interval > 1)
    atomic_store(&hp_agent_gate, cfg.generation);
  rc = 0;
out_unlock:
  pthread_mutex_unlock(&g_lock);
  return rc;
}

/* Holds g_lock across the sender's join so that a start or a fork never sees half a
 * session; that is bounded: hp_sender_stop() gives a daemon that reads nothing at most
 * HP_SENDER_STOP_TIMEOUT_NS, so a fork in another thread (atfork_prepare) or the
 * program's exit (atexit) waits at most that long. */
int hp_agent_stop(void)
{
  int rc = 0;
  pthread_mutex_lock(&g_lock);
  if (atomic_load(&hp_agent_mode) == HP_MODE_PROFILE)
    profiling_off();
  if (g_sender) {
    rc = hp_sender_stop(g_sender);
    g_sender = NULL;
  }
  pthread_mutex_unlock(&g_lock);
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
 * get CLOCK_MONOTONIC: nanosecond resolution through the vDSO, ~21 ns a read here
 * against ~3 ns for CLOCK_MONOTONIC_COARSE, i.e. nothing measurable at a few thousand
 * events a second. Recording everything (interval 1) produces millions of events a
 * second, where those 18 ns per event were 16% of the profile, so it keeps the coarse
 * clock: the same clock at kernel-tick resolution (1-4 ms; 4 ms here), whose sub-tick
 * order is still the stream order the daemon pairs by. Either way HELLO's
 * start_mono_ns (stamped by this function) converts the stamps to wall time.
 * Written under g_lock while profiling is off; read by the hooks. */
static clockid_t g_ts_clock = CLOCK_MONOTONIC;

static inline uint64_t event_ts(void)
{
  struct timespec ts;
  clock_gettime(g_ts_clock, &ts);
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

static __attribute__((noinline)) int push_blocking(const hp_event *ev, uint64_t timeout_ns)
{
  uint64_t deadline = hp_now_ns() + timeout_ns;
  struct timespec ts = { 0, 50000 };
  do {
    if (hp_ring_try_push(g_ring, ev) == 0)
      return 0;
    if (atomic_load_explicit(&hp_agent_mode, memory_order_relaxed) != HP_MODE_PROFILE)
      break;
    nanosleep(&ts, NULL);
  } while (hp_now_ns() < deadline);
  atomic_fetch_add_explicit(&g_extra_drops, 1, memory_order_relaxed);
  return -HP_EFULL;
}

/* A FREE in drop mode that found the ring full even with its reserve. */
static __attribute__((noinline)) int push_free_waiting(const hp_event *ev)
{
  if (atomic_load_explicit(&g_free_wait_gave_up, memory_order_relaxed)) {
    hp_ring_count_drop(g_ring);
    return -HP_EFULL;
  }
  int rc = push_blocking(ev, HP_AGENT_FREE_WAIT_NS);
  if (rc < 0)
    atomic_store_explicit(&g_free_wait_gave_up, 1, memory_order_relaxed);
  return rc;
}

/* Block mode, after an event waited the whole timeout: see g_block_gave_up. */
static __attribute__((noinline)) int push_block_gave_up(const hp_event *ev)
{
  if (hp_ring_alloc_room(g_ring)) {
    atomic_store_explicit(&g_block_gave_up, 0, memory_order_relaxed);
    return push_blocking(ev, HP_AGENT_BLOCK_TIMEOUT_NS);
  }
  if (hp_ring_try_push(g_ring, ev) == 0)
    return 0;
  atomic_fetch_add_explicit(&g_extra_drops, 1, memory_order_relaxed);
  return -HP_EFULL;
}

static __attribute__((noinline)) int push_block(const hp_event *ev)
{
  if (atomic_load_explicit(&g_block_gave_up, memory_order_relaxed))
    return push_block_gave_up(ev);
  int rc = push_blocking(ev, HP_AGENT_BLOCK_TIMEOUT_NS);
  /* A stop (mode no longer PROFILE) also ends the wait: that is not the daemon's fault. */
  if (rc < 0 && atomic_load_explicit(&hp_agent_mode, memory_order_relaxed) == HP_MODE_PROFILE) {
    atomic_store_explicit(&g_block_gave_up, 1, memory_order_relaxed);
    if (!atomic_exchange(&g_block_gave_up_said, 1)) {
      static const char block_msg[] = "heapprof: heapprofd took no data for 1 s; dropping "
                                      "events (block mode)\n";
      static const char adapt_msg[] = "heapprof: heapprofd took no data for 1 s; dropping "
                                      "events (adapt mode)\n";
      const char *msg = g_adapt ? adapt_msg : block_msg;
      size_t len = g_adapt ? sizeof(adapt_msg) - 1 : sizeof(block_msg) - 1;
      ssize_t w = write(STDERR_FILENO, msg, len);
      (void)w;
    }
  }
  return rc;
}

/* ALLOCs are dropped when only the ring's free reserve is left (hp_ring.h); FREEs use
 * the reserve, and when even that is full they wait briefly (see push_free_waiting). */
static int push(const hp_event *ev)
{
  if (g_block)
    return push_block(ev);
  if (ev->kind == HP_EV_ALLOC)
    return hp_ring_push(g_ring, ev);
  if (hp_ring_try_push(g_ring, ev) < 0)
    return push_free_waiting(ev);
  if (atomic_load_explicit(&g_free_wait_gave_up, memory_order_relaxed))
    atomic_store_explicit(&g_free_wait_gave_up, 0, memory_order_relaxed);
  return 0;
}

void hp_agent_record_alloc(hp_domain domain, void *ptr, size_t size, uint64_t est_bytes,
                           uint32_t stack_id)
{
  if (wrong_process())
    return;
  if (hp_addrtab_insert(g_addrtab, (uintptr_t)ptr) < 0) {
    /* Without a table entry its free could not be reported: the sample would look
     * leaked forever. Dropping it keeps the live heap honest; the loss is counted. */
    atomic_fetch_add_explicit(&g_extra_drops, 1, memory_order_relaxed);
    return;
  }
  hp_event ev = { .kind = HP_EV_ALLOC, .domain = (uint8_t)domain, .stack_id = stack_id,
                  .ts_ns = event_ts(), .thread_id = (uint64_t)pthread_self(),
                  .address = (uint64_t)(uintptr_t)ptr, .size = size,
                  .est_bytes = est_bytes };
  if (push(&ev) < 0)
    hp_addrtab_remove(g_addrtab, (uintptr_t)ptr);
}

/* on_full='adapt', the ring more than half full: double the interval when half a
 * ring of samples came since the last change (see hp_agent.h). Any allocating thread;
 * the one that resets the count makes the change. */
static __attribute__((noinline)) void adapt_interval(uint64_t samples_min)
{
  uint32_t epoch = atomic_load(&g_session_epoch);
  uint64_t seen = atomic_load_explicit(&g_adapt_samples, memory_order_relaxed);
  if (seen < samples_min || atomic_exchange(&g_adapt_busy, 1))
    return;
  if (epoch != atomic_load(&g_session_epoch) ||
      atomic_load(&hp_agent_mode) != HP_MODE_PROFILE ||
      !atomic_compare_exchange_strong(&g_adapt_samples, &seen, 0))
    goto out;
  uint64_t interval = __atomic_load_n(&hp_agent_sampler.interval, __ATOMIC_RELAXED);
  if (interval == 0 || interval >= HP_AGENT_ADAPT_MAX_INTERVAL)
    goto out;
  uint32_t slot = atomic_load(&g_adapt_log_len);
  if (slot < ADAPT_LOG_MAX) {
    atomic_store_explicit(&g_adapt_log[slot].ts_ns, hp_now_ns(), memory_order_relaxed);
    atomic_store_explicit(&g_adapt_log[slot].interval, interval * 2, memory_order_release);
    atomic_store(&g_adapt_log_len, slot + 1);
  }
  atomic_store(&hp_agent_gate, hp_sampler_adapt(&hp_agent_sampler, interval * 2));
  if (atomic_load(&hp_agent_mode) != HP_MODE_PROFILE)   /* a stop raced this change */
    atomic_store(&hp_agent_gate, HP_AGENT_GATE_CLOSED);
out:
  atomic_store(&g_adapt_busy, 0);
}

int hp_agent_alloc_room(void)
{
  if (g_adapt) {
    atomic_fetch_add_explicit(&g_adapt_samples, 1, memory_order_relaxed);
    if (!hp_ring_has_room(g_ring, g_adapt_fill))
      adapt_interval(hp_ring_alloc_room(g_ring) ? g_adapt_samples_min
                                                : g_adapt_samples_min / HP_AGENT_ADAPT_DROP_DIV);
  }
  /* Given up in block mode: like drop mode, skip the stack walk of a sample that would
   * be dropped (push_block_gave_up clears the latch once there is room). */
  return (g_block && !atomic_load_explicit(&g_block_gave_up, memory_order_relaxed)) ||
         hp_ring_alloc_room(g_ring);
}

void hp_agent_record_free(void *ptr)
{
  if (!hp_addrtab_remove(g_addrtab, (uintptr_t)ptr))
    return;
  if (wrong_process())
    return;
  hp_event ev = { .kind = HP_EV_FREE, .ts_ns = event_ts(),
                  .thread_id = (uint64_t)pthread_self(),
                  .address = (uint64_t)(uintptr_t)ptr };
  push(&ev);
}

hp_intern *hp_agent_intern(void)
{
  return g_intern;
}

uint64_t hp_agent_dropped(void)
{
  uint64_t ring = g_ring ? hp_ring_dropped(g_ring) : 0;
  return ring + atomic_load_explicit(&g_extra_drops, memory_order_relaxed);
}

void hp_agent_count_drop(void)
{
  atomic_fetch_add_explicit(&g_extra_drops, 1, memory_order_relaxed);
}
