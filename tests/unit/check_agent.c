/* check_agent.c — the agent engine (hp_agent) driven the way the allocation hooks drive
 * it, from several pthreads, against a Unix-socket reader that decodes every stream.
 *
 * Issue 12 item 5: a stop and the next start reset the ring and cleared the address
 * table while a hook that raced the stop could still be pushing or inserting; the next
 * producer to reach that slot spun for ever, and a stale address of the old session
 * came out as a FREE in the new one. Item 6: the session's settings were published
 * with plain stores. These tests run in the ThreadSanitizer build as well. */
#include <check.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "hp_addrtab.h"
#include "hp_agent.h"
#include "hp_proto.h"
#include "hp_sampler.h"

/* ---- a reader that plays heapprofd: accepts one stream after the other ---- */

typedef struct {
  int lfd;
  char path[108];
  _Atomic int quit;
  pthread_t thread;
  _Atomic unsigned streams;     /* streams read to their end */
  /* Written by the reader thread, read after it was joined. */
  unsigned goodbyes, bad_order, unpaired_frees, decode_errors;
  uint64_t events, reattributes;
  uint32_t last_end_reason;          /* of the last GOODBYE */
  uint64_t last_events_sent;         /* of the last COUNTERS */
  uint64_t stream_events;            /* of the last stream */
  unsigned named;                    /* THREAD_DEFs naming a thread "named-by-test" */
  unsigned markers;                  /* MARKERs labelled "m" */
} reader;

/* Live addresses of one stream: a FREE must follow an ALLOC of its address in the same
 * stream, or an address leaked from another session. Open addressing, sized for the
 * addresses the producers use (they recycle a small set). */
#define LIVE_SLOTS (1u << 16)
typedef struct {
  uint64_t key[LIVE_SLOTS];
} live_set;

/* The slot holding a, or the empty slot where it would go. */
static size_t live_slot(const live_set *ls, uint64_t a)
{
  size_t i = (size_t)((a >> 4) * 0x9e3779b97f4a7c15ull) & (LIVE_SLOTS - 1);
  while (ls->key[i] != a && ls->key[i] != 0)
    i = (i + 1) & (LIVE_SLOTS - 1);
  return i;
}

static void read_stream(reader *r, int fd, live_set *ls)
{
  hp_framer *fm = hp_framer_new(0);
  hp_decoder *dec = hp_decoder_new();
  uint8_t buf[65536];
  ssize_t n;
  int nmsg = 0, ended = 0;
  memset(ls, 0, sizeof(*ls));
  r->stream_events = 0;
  while ((n = read(fd, buf, sizeof(buf))) > 0) {
    if (hp_framer_feed(fm, buf, (size_t)n) != 0) {
      r->decode_errors++;
      break;
    }
    const uint8_t *payload;
    uint32_t len;
    while (hp_framer_next(fm, &payload, &len) == 1) {
      hp_msg m;
      if (hp_decoder_decode(dec, payload, len, &m) != 0) {
        r->decode_errors++;
        continue;
      }
      if ((nmsg++ == 0) != (m.type == HP_MSG_HELLO) || ended)
        r->bad_order++;
      if (m.type == HP_MSG_GOODBYE) {
        r->goodbyes++;
        r->last_end_reason = m.u.goodbye.end_reason;
        ended = 1;
      } else if (m.type == HP_MSG_COUNTERS) {
        r->last_events_sent = m.u.counters.events_sent;
      } else if (m.type == HP_MSG_MARKER) {
        if (m.u.marker.label.len == 1 && m.u.marker.label.ptr[0] == 'm')
          r->markers++;
      } else if (m.type == HP_MSG_THREAD_DEF) {
        if (m.u.thread_def.name.len == 13 &&
            memcmp(m.u.thread_def.name.ptr, "named-by-test", 13) == 0)
          r->named++;
      } else if (m.type == HP_MSG_EVENTS) {
        r->events += m.u.events.count;
        r->stream_events += m.u.events.count;
        for (uint32_t i = 0; i < m.u.events.count; i++) {
          const hp_event *e = &m.u.events.events[i];
          if (e->kind == HP_EV_ALLOC) {
            ls->key[live_slot(ls, e->address)] = e->address;
          } else if (e->kind == HP_EV_REATTRIBUTE) {
            /* Only a live sampled block is handed out again: paired like a FREE. */
            r->reattributes++;
            if (ls->key[live_slot(ls, e->address)] != e->address)
              r->unpaired_frees++;
          } else if (e->kind == HP_EV_FREE) {
            size_t s = live_slot(ls, e->address);
            if (ls->key[s] != e->address) {
              r->unpaired_frees++;
            } else {
              /* Deletion from linear probing: re-insert the rest of the run. */
              ls->key[s] = 0;
              for (size_t j = (s + 1) & (LIVE_SLOTS - 1); ls->key[j];
                   j = (j + 1) & (LIVE_SLOTS - 1)) {
                uint64_t k = ls->key[j];
                ls->key[j] = 0;
                ls->key[live_slot(ls, k)] = k;
              }
            }
          }
        }
      }
    }
  }
  atomic_fetch_add(&r->streams, 1);
  hp_framer_free(fm);
  hp_decoder_free(dec);
}

static void *reader_main(void *arg)
{
  reader *r = arg;
  live_set *ls = malloc(sizeof(*ls));
  while (!atomic_load(&r->quit)) {
    struct pollfd p = { .fd = r->lfd, .events = POLLIN };
    if (poll(&p, 1, 20) <= 0)
      continue;
    int fd = accept(r->lfd, NULL, NULL);
    if (fd < 0)
      continue;
    read_stream(r, fd, ls);
    close(fd);
  }
  free(ls);
  return NULL;
}

static void reader_start(reader *r)
{
  memset(r, 0, sizeof(*r));
  snprintf(r->path, sizeof(r->path), "/tmp/hp-check-agent-%d.sock", (int)getpid());
  unlink(r->path);
  r->lfd = socket(AF_UNIX, SOCK_STREAM, 0);
  ck_assert_int_ge(r->lfd, 0);
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof(sa));
  sa.sun_family = AF_UNIX;
  strcpy(sa.sun_path, r->path);
  ck_assert_int_eq(bind(r->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  ck_assert_int_eq(listen(r->lfd, 16), 0);
  ck_assert_int_eq(pthread_create(&r->thread, NULL, reader_main, r), 0);
}

static void reader_stop(reader *r)
{
  atomic_store(&r->quit, 1);
  ck_assert_int_eq(pthread_join(r->thread, NULL), 0);
  close(r->lfd);
  unlink(r->path);
}

/* ---- producers that do what the hooks do ---- */

typedef struct {
  int index;
  _Atomic int *quit;
  _Atomic uint64_t *rounds;
  _Atomic uint64_t *marked;          /* markers queued (hp_agent_mark returned 0) */
  pthread_t thread;
} producer;

/* The hooks' order: the mode (relaxed) as the gate, the sampler, the room check, the
 * record; the free hook's filter, then the record. A yield now and then stands for a
 * hook preempted between its mode check and its record: exactly the hook that races a
 * stop. */
static void *producer_main(void *arg)
{
  producer *p = arg;
  hp_sampler_tls tls;
  hp_sampler_seed(&tls, (uint64_t)p->index + 1);
  uintptr_t base = ((uintptr_t)(p->index + 1) << 32);
  uint64_t n = 0;
  while (!atomic_load_explicit(p->quit, memory_order_relaxed)) {
    if (atomic_load_explicit(&hp_agent_mode, memory_order_relaxed) != HP_MODE_PROFILE) {
      sched_yield();
      continue;
    }
    uintptr_t a = base + (uintptr_t)(n % 1024u) * 64u;
    uint64_t est;
    n++;
    if ((n & 63) == 0)
      sched_yield();
    if (hp_sampler_sample(&hp_agent_sampler, &tls, 48, &est)) {
      if (hp_agent_alloc_room())
        hp_agent_record_alloc(HP_DOMAIN_OBJ, (void *)a, 48, est, HP_NO_STACK);
      else
        hp_agent_count_drop();
    }
    /* A free list handing the block out again (hp_hooks.c, block_created). */
    if ((n & 7) == 0 && hp_agent_is_sampled((void *)a))
      hp_agent_record_reattribute((void *)a, HP_NO_STACK);
    if ((n & 127) == 0)
      sched_yield();
    const _Atomic uint8_t *filter =
        atomic_load_explicit(&hp_agent_free_filter, memory_order_relaxed);
    if (!hp_addrtab_filter_absent(filter, a))
      hp_agent_record_free((void *)a);
    /* heapprof.mark() from a program thread, racing the stop as the hooks do: it must
     * land in a session whole or be refused, never touch a freed one. */
    if ((n & 1023) == 0 && hp_agent_mark("m", 1) == 0)
      atomic_fetch_add_explicit(p->marked, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(p->rounds, 1, memory_order_relaxed);
  }
  return NULL;
}

static _Atomic uint64_t g_marked;

static void producers_start(producer *ps, int n, _Atomic int *quit, _Atomic uint64_t *rounds)
{
  for (int i = 0; i < n; i++) {
    ps[i] = (producer){ .index = i, .quit = quit, .rounds = rounds, .marked = &g_marked };
    ck_assert_int_eq(pthread_create(&ps[i].thread, NULL, producer_main, &ps[i]), 0);
  }
}

static void producers_stop(producer *ps, int n)
{
  atomic_store(ps[0].quit, 1);
  for (int i = 0; i < n; i++)
    ck_assert_int_eq(pthread_join(ps[i].thread, NULL), 0);
}

/* After the last stop: the reader has every stream once the last one ended. */
static void reader_wait_stop(reader *r, unsigned streams)
{
  for (int i = 0; i < 5000 && atomic_load(&r->streams) < streams; i++)
    usleep(1000);
  reader_stop(r);
}

static hp_agent_opts opts_for(const char *path, int round)
{
  static const hp_str argv[1] = { { "check_agent", 11 } };
  hp_agent_opts o = { .socket_path = path, .max_depth = 8, .argc = 1, .argv = argv,
                      .executable = { "check_agent", 11 }, .python_version = { "3.11.7", 6 } };
  /* Recording everything fills the ring; a large interval keeps the address table's
   * filter; adapt and block wait for room. Each change of size replaces the table. */
  switch (round % 4) {
  case 0: o.sample_interval = 1; break;
  case 1: o.sample_interval = 4096; break;
  case 2: o.sample_interval = 1; o.block_when_full = 1; break;
  default: o.sample_interval = 64; o.adapt_when_full = 1; break;
  }
  return o;
}

#define PRODUCERS 8
#define ROUNDS 300

START_TEST(start_stop_while_threads_allocate)
{
  reader r;
  reader_start(&r);
  ck_assert_int_eq(hp_agent_init(), 0);
  _Atomic int quit = 0;
  _Atomic uint64_t rounds = 0;
  producer ps[PRODUCERS];
  atomic_store(&g_marked, 0);
  producers_start(ps, PRODUCERS, &quit, &rounds);
  unsigned started = 0;
  for (int round = 0; round < ROUNDS; round++) {
    hp_agent_opts o = opts_for(r.path, round);
    int rc = hp_agent_start(&o);
    ck_assert_msg(rc == 0, "round %d: start: %d", round, rc);
    started++;
    /* Let the producers in; some rounds stop at once, some after a while. */
    uint64_t before = atomic_load(&rounds);
    for (int spin = 0; spin < (round % 5) * 50 && atomic_load(&rounds) - before < 2000; spin++)
      sched_yield();
    ck_assert_msg(hp_agent_stop() == 0, "round %d: stop failed", round);
  }
  producers_stop(ps, PRODUCERS);
  reader_wait_stop(&r, started);
  ck_assert_uint_eq(atomic_load(&r.streams), started);
  ck_assert_uint_eq(r.goodbyes, started);
  ck_assert_uint_eq(r.bad_order, 0);
  ck_assert_uint_eq(r.decode_errors, 0);
  ck_assert_msg(r.unpaired_frees == 0, "%u FREEs of addresses not allocated in their stream",
                r.unpaired_frees);
  ck_assert_uint_gt(r.events, 0);
  ck_assert_uint_gt(r.reattributes, 0);
  ck_assert_uint_gt(atomic_load(&rounds), 0);
  /* Every marker queued reached its stream before GOODBYE (bad_order counts any after). */
  ck_assert_uint_eq(r.markers, atomic_load(&g_marked));
  ck_assert_uint_gt(r.markers, 0);
}
END_TEST

static _Atomic int g_replaced;

static int test_hooks_replaced(void)
{
  return atomic_load(&g_replaced);
}

/* Issue 12 item 10: hooks that someone else removed see nothing any more. The sender
 * asks about once a second; the session then ends by itself, with the producers still
 * running, as a stop would: final counters, drain, GOODBYE with end reason 1. Every
 * event committed arrives (events_sent of the final counters), names given before the
 * end are sent (item 12), and the later stop has nothing left to do. */
START_TEST(replaced_hooks_end_the_session_from_the_sender)
{
  reader r;
  reader_start(&r);
  ck_assert_int_eq(hp_agent_init(), 0);
  _Atomic int quit = 0;
  _Atomic uint64_t rounds = 0;
  producer ps[2];
  producers_start(ps, 2, &quit, &rounds);
  hp_agent_opts o = opts_for(r.path, 1);
  o.hooks_replaced = test_hooks_replaced;
  atomic_store(&g_replaced, 0);
  int errpipe[2];
  ck_assert_int_eq(pipe(errpipe), 0);
  int saved_stderr = dup(STDERR_FILENO);
  ck_assert_int_eq(dup2(errpipe[1], STDERR_FILENO), STDERR_FILENO);
  ck_assert_int_eq(hp_agent_start(&o), 0);
  ck_assert_int_eq(hp_agent_thread_name(12345, "named-by-test", 13), 0);
  while (atomic_load(&rounds) < 1000)
    sched_yield();
  atomic_store(&g_replaced, 1);
  for (int i = 0; i < 5000 && hp_agent_is_profiling(); i++)
    usleep(1000);
  int still = hp_agent_is_profiling();
  ck_assert_int_eq(hp_agent_stop(), 0);
  ck_assert_int_eq(dup2(saved_stderr, STDERR_FILENO), STDERR_FILENO);
  close(saved_stderr);
  close(errpipe[1]);
  char msg[512];
  ssize_t n = read(errpipe[0], msg, sizeof(msg) - 1);
  msg[n > 0 ? n : 0] = 0;
  close(errpipe[0]);
  producers_stop(ps, 2);
  reader_wait_stop(&r, 1);
  ck_assert_msg(!still, "the sender did not end the session within 5 s");
  ck_assert_uint_eq(atomic_load(&r.streams), 1);
  ck_assert_uint_eq(r.goodbyes, 1);
  ck_assert_uint_eq(r.last_end_reason, HP_END_HOOKS_REPLACED);
  ck_assert_uint_eq(r.last_events_sent, r.stream_events);
  ck_assert_uint_gt(r.stream_events, 0);
  ck_assert_uint_eq(r.named, 1);
  ck_assert_uint_eq(r.unpaired_frees, 0);
  ck_assert_msg(strstr(msg, "the session ends as hooks_replaced\n") != NULL, "%s", msg);
  ck_assert_ptr_null(strchr(strchr(msg, '\n') + 1, '\n'));   /* one line */
}
END_TEST

Suite *agent_suite(void)
{
  Suite *s = suite_create("agent");
  TCase *threads = tcase_create("threads");
  tcase_set_timeout(threads, 300);
  tcase_add_test(threads, start_stop_while_threads_allocate);
  tcase_add_test(threads, replaced_hooks_end_the_session_from_the_sender);
  suite_add_tcase(s, threads);
  return s;
}

int main(void)
{
  SRunner *sr = srunner_create(agent_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
