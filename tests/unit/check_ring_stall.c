/* check_ring_stall.c — a producer held between claiming its slot and publishing its
 * record (hp_ring_test_claimed, a ring built with HP_RING_TEST_HOOKS): the consumer waits
 * for it without skipping it, later pushes queue behind it, and hp_ring_pushed() counts its
 * claim at once (the sender measures the flow by claims: hp_sender.c). */
#include <check.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "hp_ring.h"

static sem_t g_claimed;    /* posted by the held producer once it holds its slot */
static sem_t g_release;    /* posted by the test to let it publish */
static _Atomic int g_hold; /* hold the next push that claims a slot */

static void hold_after_claim(size_t pos)
{
  (void)pos;
  if (atomic_exchange(&g_hold, 0)) {
    sem_post(&g_claimed);
    sem_wait(&g_release);
  }
}

static hp_event ev_n(uint64_t n)
{
  hp_event e = {.kind = HP_EV_ALLOC, .thread_id = 1, .address = n, .size = n};
  return e;
}

static void *push_first(void *arg)
{
  hp_event e = ev_n(100);
  return (void *)(intptr_t)hp_ring_push(arg, &e);
}

START_TEST(a_held_producer_keeps_its_place_and_counts_as_pushed)
{
  hp_ring *r = hp_ring_new(64);
  ck_assert_ptr_nonnull(r);
  ck_assert_int_eq(sem_init(&g_claimed, 0, 0), 0);
  ck_assert_int_eq(sem_init(&g_release, 0, 0), 0);
  hp_ring_test_claimed = hold_after_claim;
  atomic_store(&g_hold, 1);

  pthread_t held;
  ck_assert_int_eq(pthread_create(&held, NULL, push_first, r), 0);
  sem_wait(&g_claimed);
  hp_event out;
  /* Claimed, not yet written: counted in the flow, not yet to be taken. */
  ck_assert_uint_eq(hp_ring_pushed(r), 1);
  ck_assert_int_eq(hp_ring_pop(r, &out), 0);
  for (uint64_t i = 1; i <= 3; i++) {
    hp_event in = ev_n(i);
    ck_assert_int_eq(hp_ring_push(r, &in), 0);
  }
  /* Three published records wait behind the held one: none comes out before it. */
  ck_assert_uint_eq(hp_ring_pushed(r), 4);
  ck_assert_int_eq(hp_ring_pop(r, &out), 0);
  ck_assert_uint_eq(hp_ring_popped(r), 0);

  sem_post(&g_release);
  void *rc;
  ck_assert_int_eq(pthread_join(held, &rc), 0);
  ck_assert_int_eq((int)(intptr_t)rc, 0);
  ck_assert_int_eq(hp_ring_pop(r, &out), 1);
  ck_assert_uint_eq(out.address, 100);
  for (uint64_t i = 1; i <= 3; i++) {
    ck_assert_int_eq(hp_ring_pop(r, &out), 1);
    ck_assert_uint_eq(out.address, i);
  }
  ck_assert_int_eq(hp_ring_pop(r, &out), 0);
  ck_assert_uint_eq(hp_ring_pushed(r), 4);
  ck_assert_uint_eq(hp_ring_popped(r), 4);
  ck_assert_uint_eq(hp_ring_dropped(r), 0);

  hp_ring_test_claimed = NULL;
  sem_destroy(&g_claimed);
  sem_destroy(&g_release);
  hp_ring_free(r);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("ring_stall");
  TCase *tc = tcase_create("stall");
  tcase_add_test(tc, a_held_producer_keeps_its_place_and_counts_as_pushed);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
