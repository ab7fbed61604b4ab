/* check_ring.c — the MPSC event ring: order, bounds, counted drops, concurrent producers,
 * pages mapped in ahead of the producers. */
#include <check.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "check_fault_util.h"
#include "hp_ring.h"

static hp_event ev_n(uint64_t tid, uint64_t n)
{
  hp_event e = {.kind = HP_EV_ALLOC, .thread_id = tid, .address = n, .size = n};
  return e;
}

START_TEST(ring_is_fifo)
{
  hp_ring *r = hp_ring_new(16);
  ck_assert_ptr_nonnull(r);
  hp_event e;
  ck_assert_int_eq(hp_ring_pop(r, &e), 0);
  for (uint64_t lap = 0; lap < 5; lap++) { /* several laps around the slots */
    for (uint64_t i = 0; i < 10; i++) {
      hp_event in = ev_n(1, lap * 100 + i);
      ck_assert_int_eq(hp_ring_push(r, &in), 0);
    }
    for (uint64_t i = 0; i < 10; i++) {
      ck_assert_int_eq(hp_ring_pop(r, &e), 1);
      ck_assert_uint_eq(e.address, lap * 100 + i);
    }
    ck_assert_int_eq(hp_ring_pop(r, &e), 0);
  }
  ck_assert_uint_eq(hp_ring_dropped(r), 0);
  hp_ring_free(r);
  hp_ring_free(NULL);
}
END_TEST

START_TEST(ring_capacity_rounds_up_to_power_of_two)
{
  hp_ring *r = hp_ring_new(100);
  ck_assert_uint_eq(hp_ring_capacity(r), 128);
  hp_ring_free(r);
}
END_TEST

#ifndef NDEBUG
/* The normal build keeps the agent's asserts: asking for more room than the ring has is
 * a caller's bug, caught where it is assumed. */
START_TEST(room_beyond_capacity_is_an_assertion)
{
  hp_ring *r = hp_ring_new(16);
  hp_ring_has_room(r, 16);
}
END_TEST
#endif

START_TEST(full_ring_drops_and_counts)
{
  hp_ring *r = hp_ring_new(16); /* reserve 1: 15 allocs, then 1 free */
  ck_assert_uint_eq(hp_ring_capacity(r) / HP_RING_FREE_RESERVE_DIV, 1);
  hp_event e = ev_n(1, 1);
  for (int i = 0; i < 15; i++)
    ck_assert_int_eq(hp_ring_push(r, &e), 0);
  ck_assert_int_eq(hp_ring_push(r, &e), -HP_EFULL);
  ck_assert_int_eq(hp_ring_push(r, &e), -HP_EFULL);
  ck_assert_uint_eq(hp_ring_dropped(r), 2);
  /* try_push refuses without counting (block mode retries). */
  ck_assert_int_eq(hp_ring_try_push(r, &e), -HP_EFULL);
  ck_assert_uint_eq(hp_ring_dropped(r), 2);
  hp_ring_count_drop(r);
  ck_assert_uint_eq(hp_ring_dropped(r), 3);
  hp_event f = {.kind = HP_EV_FREE, .address = 9};
  ck_assert_int_eq(hp_ring_push(r, &f), 0);
  ck_assert_int_eq(hp_ring_push(r, &f), -HP_EFULL);
  ck_assert_uint_eq(hp_ring_dropped(r), 4);
  hp_event out;
  ck_assert_int_eq(hp_ring_pop(r, &out), 1);
  /* One slot free is the reserve: an alloc still may not take it, a free may. */
  ck_assert_int_eq(hp_ring_push(r, &e), -HP_EFULL);
  ck_assert_int_eq(hp_ring_push(r, &f), 0);
  /* Claimed slots count as pushed, whether or not popped since. */
  ck_assert_uint_eq(hp_ring_pushed(r), 17);
  ck_assert_uint_eq(hp_ring_popped(r), 1);
  hp_ring_free(r);
}
END_TEST

/* A REATTRIBUTE only adds information, like an ALLOC: it must not eat into the room
 * kept for FREEs, whose loss would make a block look leaked. */
START_TEST(reattribute_leaves_the_free_reserve_alone)
{
  hp_ring *r = hp_ring_new(16); /* reserve 1 */
  hp_event re = {.kind = HP_EV_REATTRIBUTE, .address = 7, .stack_id = 3};
  for (int i = 0; i < 15; i++)
    ck_assert_int_eq(hp_ring_push(r, &re), 0);
  ck_assert_int_eq(hp_ring_push(r, &re), -HP_EFULL);
  ck_assert_int_eq(hp_ring_try_push(r, &re), -HP_EFULL);
  ck_assert_uint_eq(hp_ring_dropped(r), 1);
  hp_event f = {.kind = HP_EV_FREE, .address = 7};
  ck_assert_int_eq(hp_ring_push(r, &f), 0);
  hp_event out;
  ck_assert_int_eq(hp_ring_pop(r, &out), 1);
  ck_assert_int_eq(out.kind, HP_EV_REATTRIBUTE);
  ck_assert_uint_eq(out.stack_id, 3);
  hp_ring_free(r);
}
END_TEST

/* Item 3 of the review: a ring full of allocations still takes the frees of the
 * allocations it holds, up to the reserve, on every lap; the records come out in order. */
START_TEST(ring_full_of_allocs_still_accepts_frees_up_to_reserve)
{
  hp_ring *r = hp_ring_new(1024);
  size_t cap = hp_ring_capacity(r), reserve = cap / HP_RING_FREE_RESERVE_DIV;
  ck_assert_uint_eq(reserve, cap / HP_RING_FREE_RESERVE_DIV);
  hp_event out;
  for (uint64_t lap = 0; lap < 3; lap++) {
    size_t allocs = 0, frees = 0;
    for (;;) {
      int room = hp_ring_alloc_room(r);
      hp_event a = ev_n(1, allocs + 1);
      ck_assert_int_eq(room, hp_ring_try_push(r, &a) == 0);
      if (room) {
        allocs++;
        continue;
      }
      hp_ring_count_drop(r);
      break;
    }
    ck_assert_uint_eq(allocs, cap - reserve);
    for (;;) {
      hp_event f = {.kind = HP_EV_FREE, .address = frees + 1};
      if (hp_ring_push(r, &f) < 0)
        break;
      frees++;
    }
    ck_assert_uint_eq(frees, reserve);
    ck_assert_uint_eq(hp_ring_dropped(r), 2 * (lap + 1));
    for (size_t i = 0; i < allocs + frees; i++) {
      ck_assert_int_eq(hp_ring_pop(r, &out), 1);
      ck_assert_int_eq(out.kind, i < allocs ? HP_EV_ALLOC : HP_EV_FREE);
      ck_assert_uint_eq(out.address, i < allocs ? i + 1 : i - allocs + 1);
    }
    ck_assert_int_eq(hp_ring_pop(r, &out), 0);
    ck_assert_int_eq(hp_ring_alloc_room(r), 1);
  }
  hp_ring_free(r);
}
END_TEST

static void push_allocs(hp_ring *r, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    hp_event e = ev_n(1, i);
    ck_assert_int_eq(hp_ring_push(r, &e), 0);
  }
}

/* A ring of 8 MiB is calloc()ed zero pages. Once the consumer has mapped in the slots
 * ahead of the head, a producer's pushes take no page fault; into a ring nobody mapped
 * in, each of their 64 pages takes at least one. The records come out unchanged. */
START_TEST(prefault_spares_the_producer_page_faults)
{
  mallopt(M_PERTURB, 0); /* meson's MALLOC_PERTURB_ makes calloc write every page */
  const size_t cap = 1u << 17, n = cap / 32; /* within the mapped-in window */
  hp_ring *warm = hp_ring_new(cap), *cold = hp_ring_new(cap);
  ck_assert_ptr_nonnull(warm);
  ck_assert_ptr_nonnull(cold);
  int supported = hp_test_kernel_can_prefault();
  while (hp_ring_prefault(warm, 64u << 10)) /* in pieces, as the sender does */
    ;
  long f0 = hp_test_thread_minor_faults();
  push_allocs(warm, n);
  long f1 = hp_test_thread_minor_faults();
  push_allocs(cold, n);
  long f2 = hp_test_thread_minor_faults();
  /* ThreadSanitizer's shadow and trace memory fault in by the hundred, in no fixed
   * order: the counts say nothing there. */
#ifndef __SANITIZE_THREAD__
  long pages = (long)(n * 64 / 4096); /* the ring's slots are 64 bytes */
  if (supported) {
    ck_assert_int_ge((f2 - f1) - (f1 - f0), pages / 2);
#ifndef __SANITIZE_ADDRESS__
    ck_assert_int_lt(f1 - f0, 4); /* ASan's shadow pages fault in for either ring */
#endif
  } else { /* an older kernel: the producer maps its pages in itself, as into cold */
    ck_assert_int_lt((f2 - f1) - (f1 - f0), pages / 2);
  }
#else
  (void)supported;
  (void)f0, (void)f1, (void)f2;
#endif
  for (size_t i = 0; i < n; i++) {
    hp_event e;
    ck_assert_int_eq(hp_ring_pop(warm, &e), 1);
    ck_assert_uint_eq(e.address, i);
  }
  hp_ring_free(warm);
  hp_ring_free(cold);
}
END_TEST

#define PRODUCERS    4
#define PER_PRODUCER 200000u

static hp_ring *g_r;
static atomic_int g_go;

static void *producer(void *arg)
{
  uint64_t tid = (uint64_t)(uintptr_t)arg;
  while (!atomic_load(&g_go))
    ;
  for (uint64_t i = 0; i < PER_PRODUCER; i++) {
    hp_event e = ev_n(tid, i);
    hp_ring_push(g_r, &e);
  }
  return NULL;
}

/* Four producers and one consumer: every record arrives at most once, each producer's
 * records in its own order, and received + dropped accounts for every push, also while
 * the consumer maps pages in ahead of them. */
START_TEST(mpsc_threads_keep_per_producer_order_and_count_drops)
{
  g_r = hp_ring_new(1024);
  pthread_t th[PRODUCERS];
  atomic_store(&g_go, 0);
  for (uintptr_t i = 0; i < PRODUCERS; i++)
    ck_assert_int_eq(pthread_create(&th[i], NULL, producer, (void *)i), 0);
  int64_t last[PRODUCERS];
  for (int i = 0; i < PRODUCERS; i++)
    last[i] = -1;
  uint64_t received = 0;
  atomic_store(&g_go, 1);
  int done = 0;
  for (;;) {
    hp_event e;
    if (hp_ring_pop(g_r, &e)) {
      ck_assert_uint_lt(e.thread_id, PRODUCERS);
      ck_assert_int_gt((int64_t)e.address, last[e.thread_id]);
      ck_assert_uint_eq(e.size, e.address);
      last[e.thread_id] = (int64_t)e.address;
      received++;
      continue;
    }
    hp_ring_prefault(g_r,
                     4096); /* as the sender does between batches, while producers push */
    if (done)
      break;
    if (received + hp_ring_dropped(g_r) == (uint64_t)PRODUCERS * PER_PRODUCER) {
      for (int i = 0; i < PRODUCERS; i++)
        pthread_join(th[i], NULL);
      done = 1;
    }
  }
  ck_assert_uint_eq(received + hp_ring_dropped(g_r), (uint64_t)PRODUCERS * PER_PRODUCER);
  ck_assert_uint_gt(received, 0);
  hp_ring_free(g_r);
}
END_TEST

Suite *ring_suite(void)
{
  Suite *s = suite_create("ring");
  TCase *core = tcase_create("core");
  tcase_add_test(core, ring_is_fifo);
  tcase_add_test(core, ring_capacity_rounds_up_to_power_of_two);
  tcase_add_test(core, prefault_spares_the_producer_page_faults);
  suite_add_tcase(s, core);
  TCase *limits = tcase_create("limits");
  tcase_add_test(limits, full_ring_drops_and_counts);
  tcase_add_test(limits, ring_full_of_allocs_still_accepts_frees_up_to_reserve);
#ifndef NDEBUG
  tcase_add_test_raise_signal(limits, room_beyond_capacity_is_an_assertion, SIGABRT);
#endif
  tcase_add_test(limits, reattribute_leaves_the_free_reserve_alone);
  suite_add_tcase(s, limits);
  TCase *threads = tcase_create("threads");
  tcase_set_timeout(threads, 60);
  tcase_add_test(threads, mpsc_threads_keep_per_producer_order_and_count_drops);
  suite_add_tcase(s, threads);
  return s;
}

int main(void)
{
  SRunner *sr = srunner_create(ring_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
