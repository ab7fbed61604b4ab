/* check_addrtab.c — the sampled-address set: insert/lookup/remove, full buckets spilling
 * to their second bucket, slot reuse, refusal when full, sizing, buckets mapped in ahead,
 * concurrent threads. */
#include <check.h>
#include <malloc.h>
#include <pthread.h>
#include <stdlib.h>

#include "check_fault_util.h"
#include "hp_addrtab.h"
#include "hp_error.h"

/* Whether addr is in t, asked through the agent's own interface: a remove that finds
 * it, then the same insert again. */
static int present(hp_addrtab *t, uintptr_t addr)
{
  int r = hp_addrtab_remove(t, addr);
  if (r)
    ck_assert_int_eq(hp_addrtab_insert(t, addr), 0);
  return r;
}

START_TEST(insert_contains_remove)
{
  hp_addrtab *t = hp_addrtab_new(1024, _i); /* each kind of filter */
  ck_assert_ptr_nonnull(t);
  ck_assert_int_eq(present(t, 0x1000), 0);
  ck_assert_int_eq(hp_addrtab_insert(t, 0x1000), 0);
  ck_assert_int_eq(hp_addrtab_insert(t, 0x2000), 0);
  ck_assert_int_eq(present(t, 0x1000), 1);
  ck_assert_int_eq(present(t, 0x2000), 1);
  ck_assert_int_eq(present(t, 0x3000), 0);
  ck_assert_int_eq(hp_addrtab_remove(t, 0x1000), 1);
  ck_assert_int_eq(hp_addrtab_remove(t, 0x1000), 0); /* second free: not reported again */
  ck_assert_int_eq(present(t, 0x1000), 0);
  ck_assert_int_eq(present(t, 0x2000), 1);
  ck_assert_int_eq(hp_addrtab_remove(t, 0x9990), 0); /* never inserted */
  ck_assert_int_eq(hp_addrtab_insert(t, 0), -HP_EINVAL);
  hp_addrtab_free(t);
  hp_addrtab_free(NULL);
}
END_TEST

/* 100 keys in the smallest table (16 buckets of 8) fill buckets past 8, so some keys
 * spill to their second bucket; every inserted key stays findable, removing some keeps
 * the others (and the spilled ones) findable, and freed slots are reused forever. */
START_TEST(collisions_and_spills)
{
  hp_addrtab *t = hp_addrtab_new(1, _i);
  int inserted[100];
  int n_ok = 0;
  for (uintptr_t i = 0; i < 100; i++) {
    inserted[i] = hp_addrtab_insert(t, 0x10000 + i * 16) == 0;
    n_ok += inserted[i];
  }
  ck_assert_int_ge(n_ok, 80);
  for (uintptr_t i = 0; i < 100; i++)
    ck_assert_int_eq(present(t, 0x10000 + i * 16), inserted[i]);
  for (uintptr_t i = 0; i < 100; i += 2)
    ck_assert_int_eq(hp_addrtab_remove(t, 0x10000 + i * 16), inserted[i]);
  for (uintptr_t i = 1; i < 100; i += 2)
    ck_assert_int_eq(present(t, 0x10000 + i * 16), inserted[i]);
  /* Reinsert into the freed slots, many times over: the table must not clog up. */
  for (int round = 0; round < 50; round++) {
    for (uintptr_t i = 0; i < 100; i += 2)
      if (inserted[i])
        ck_assert_int_eq(hp_addrtab_insert(t, 0x10000 + i * 16), 0);
    for (uintptr_t i = 0; i < 100; i += 2)
      if (inserted[i])
        ck_assert_int_eq(hp_addrtab_remove(t, 0x10000 + i * 16), 1);
  }
  hp_addrtab_free(t);
}
END_TEST

/* The filter counts per address class: zero after every key of a class is removed, so a
 * later lookup is answered without the buckets; without a filter it always says maybe. */
START_TEST(filter_answers_absent_without_touching_buckets)
{
  hp_addrtab *t = hp_addrtab_new(1024, HP_ADDRTAB_FILTER_EXACT);
  const _Atomic uint8_t *f = hp_addrtab_filter(t);
  ck_assert_int_eq(hp_addrtab_filter_absent(f, 0x5000), 1);
  ck_assert_int_eq(hp_addrtab_insert(t, 0x5000), 0);
  ck_assert_int_eq(hp_addrtab_filter_absent(f, 0x5000), 0);
  ck_assert_int_eq(hp_addrtab_remove(t, 0x5000), 1);
  ck_assert_int_eq(hp_addrtab_filter_absent(f, 0x5000), 1);
  hp_addrtab_free(t);
  t = hp_addrtab_new(1024, HP_ADDRTAB_NO_FILTER);
  ck_assert_int_eq(hp_addrtab_filter_absent(hp_addrtab_filter(t), 0x5000), 0);
  ck_assert_int_eq(hp_addrtab_remove(t, 0x5000), 0);
  hp_addrtab_free(t);
  ck_assert_int_eq(hp_addrtab_filter_for_interval(1), 0);
  ck_assert_int_eq(hp_addrtab_filter_for_interval(65536), 1);
}
END_TEST

/* The reference tracer's test (hp_addrtab_filter_absent_near) in a table counting for
 * it: an object's address stands for the blocks at it, 16 and 32 bytes before it, across
 * the wrap of the filter's index too; the free hooks' test still finds the block itself.
 * A table counting exactly keeps the neighbours' counters at zero; one without a filter
 * says "maybe" everywhere. */
START_TEST(filter_near_covers_two_granules_before)
{
  hp_addrtab *t = hp_addrtab_new(1024, HP_ADDRTAB_FILTER_NEAR);
  const _Atomic uint8_t *f = hp_addrtab_filter(t);
  const uintptr_t period = (uintptr_t)HP_ADDRTAB_FILTER << 4;
  const uintptr_t blocks[] = {0x50000, 0x7000 * period - 32, 0x7000 * period - 16};
  for (size_t b = 0; b < sizeof(blocks) / sizeof(blocks[0]); b++) {
    uintptr_t block = blocks[b];
    ck_assert_int_eq(hp_addrtab_filter_absent_near(f, block + 32), 1);
    ck_assert_int_eq(hp_addrtab_insert(t, block), 0);
    ck_assert_int_eq(hp_addrtab_filter_absent(f, block), 0);
    ck_assert_int_eq(hp_addrtab_filter_absent_near(f, block), 0);
    ck_assert_int_eq(hp_addrtab_filter_absent_near(f, block + 16), 0);
    ck_assert_int_eq(hp_addrtab_filter_absent_near(f, block + 32), 0);
    ck_assert_int_eq(hp_addrtab_filter_absent_near(f, block + 48), 1);
    ck_assert_int_eq(hp_addrtab_filter_absent_near(f, block - 16), 1);
    ck_assert_int_eq(hp_addrtab_remove(t, block), 1);
    for (uintptr_t a = block - 16; a <= block + 48; a += 16)
      ck_assert_int_eq(hp_addrtab_filter_absent_near(f, a), 1);
  }
  hp_addrtab_free(t);
  t = hp_addrtab_new(1024, HP_ADDRTAB_FILTER_EXACT);
  f = hp_addrtab_filter(t);
  ck_assert_int_eq(hp_addrtab_insert(t, 0x50000), 0);
  ck_assert_int_eq(hp_addrtab_filter_absent(f, 0x50000), 0);
  ck_assert_int_eq(hp_addrtab_filter_absent(f, 0x50010), 1);
  ck_assert_int_eq(hp_addrtab_filter_absent(f, 0x50020), 1);
  hp_addrtab_free(t);
  t = hp_addrtab_new(1024, HP_ADDRTAB_NO_FILTER);
  ck_assert_int_eq(hp_addrtab_filter_absent_near(hp_addrtab_filter(t), 0x7000 * period), 0);
  hp_addrtab_free(t);
}
END_TEST

/* The free hook tests a filter without any lock, so it may read one after its table was
 * freed (each session has its own table): the memory stays valid and the next table
 * gets it back zeroed. */
START_TEST(filter_outlives_its_table_and_comes_back_zeroed)
{
  hp_addrtab *t = hp_addrtab_new(1024, HP_ADDRTAB_FILTER_EXACT);
  const _Atomic uint8_t *f = hp_addrtab_filter(t);
  ck_assert_int_eq(hp_addrtab_insert(t, 0x5000), 0);
  hp_addrtab_free(t); /* 0x5000 still counted: freed while live */
  ck_assert_int_eq(hp_addrtab_filter_absent(f, 0x5000), 0); /* readable, stale */
  hp_addrtab *u = hp_addrtab_new(4096, HP_ADDRTAB_FILTER_EXACT);
  ck_assert_ptr_eq(hp_addrtab_filter(u), f);
  ck_assert_int_eq(hp_addrtab_filter_absent(f, 0x5000), 1);
  ck_assert_int_eq(hp_addrtab_remove(u, 0x5000), 0);
  hp_addrtab_free(u);
}
END_TEST

START_TEST(sizing_follows_interval)
{
  ck_assert_uint_eq(hp_addrtab_slots_for_interval(1), HP_ADDRTAB_MAX_SLOTS);
  ck_assert_uint_eq(hp_addrtab_slots_for_interval(0), HP_ADDRTAB_MAX_SLOTS);
  ck_assert_uint_eq(hp_addrtab_slots_for_interval(65536), 1u << 17);
  ck_assert_uint_eq(hp_addrtab_slots_for_interval(1ull << 30), 1u << 16);
  hp_addrtab *t =
    hp_addrtab_new(1000,
                   HP_ADDRTAB_FILTER_EXACT); /* rounded to a power of two (asserted) */
  ck_assert_ptr_nonnull(t);
  hp_addrtab_free(t);
}
END_TEST

/* Samples' addresses land anywhere in the 1 MiB of buckets of a default-interval table:
 * 4096 inserts into a fresh table fault in most of its 256 pages, and none once the
 * table was mapped in. The addresses are all there either way. */
START_TEST(prefault_spares_the_inserts_page_faults)
{
  mallopt(M_PERTURB, 0); /* meson's MALLOC_PERTURB_ makes calloc write every page */
  const size_t n = 4096;
  hp_addrtab *warm = hp_addrtab_new(hp_addrtab_slots_for_interval(65536),
                                    HP_ADDRTAB_FILTER_EXACT);
  hp_addrtab *cold = hp_addrtab_new(hp_addrtab_slots_for_interval(65536),
                                    HP_ADDRTAB_FILTER_EXACT);
  ck_assert_ptr_nonnull(warm);
  ck_assert_ptr_nonnull(cold);
  int supported = hp_test_kernel_can_prefault();
  size_t pieces = 0;
  for (size_t next = 0; (next = hp_addrtab_prefault(warm, next, 256u << 10)) != 0;)
    pieces++;
  ck_assert_uint_eq(pieces, supported ? 3 : 0); /* 1 MiB in four: the last returns 0 */
  long f0 = hp_test_thread_minor_faults();
  for (size_t i = 1; i <= n; i++)
    ck_assert_int_eq(hp_addrtab_insert(warm, i * 4096 + 48), 0);
  long f1 = hp_test_thread_minor_faults();
  for (size_t i = 1; i <= n; i++)
    ck_assert_int_eq(hp_addrtab_insert(cold, i * 4096 + 48), 0);
  long f2 = hp_test_thread_minor_faults();
  /* ThreadSanitizer's shadow and trace memory fault in by the hundred, in no fixed
   * order: the counts say nothing there. */
#ifndef __SANITIZE_THREAD__
  if (supported) {
    ck_assert_int_ge((f2 - f1) - (f1 - f0), 128);
#ifndef __SANITIZE_ADDRESS__
    ck_assert_int_lt(f1 - f0, 4); /* ASan's shadow pages fault in for either table */
#endif
  } else { /* an older kernel: the inserts map the pages in themselves */
    ck_assert_int_lt((f2 - f1) - (f1 - f0), 128);
  }
#else
  (void)supported;
  (void)f0, (void)f1, (void)f2;
#endif
  for (size_t i = 1; i <= n; i++)
    ck_assert_int_eq(hp_addrtab_contains(warm, i * 4096 + 48), 1);
  hp_addrtab_free(warm);
  hp_addrtab_free(cold);
}
END_TEST

START_TEST(full_table_refuses)
{
  hp_addrtab *t = hp_addrtab_new(1, HP_ADDRTAB_FILTER_EXACT); /* 128 slots */
  int refused = 0;
  for (uintptr_t i = 0; i < 1000; i++)
    if (hp_addrtab_insert(t, 0x100000 + i * 64) == -HP_EFULL)
      refused++;
  ck_assert_int_ge(refused, 1000 - 128);
  for (uintptr_t i = 0; i < 1000; i++) /* exactly the refused ones are absent */
    refused -= !hp_addrtab_remove(t, 0x100000 + i * 64);
  ck_assert_int_eq(refused, 0);
  hp_addrtab_free(t);
}
END_TEST

#define THREADS    4
#define PER_THREAD 20000u
static hp_addrtab *g_t;

static void *churn(void *arg)
{
  uintptr_t base = 0x1000000 * ((uintptr_t)arg + 1);
  for (int round = 0; round < 5; round++) {
    for (uintptr_t i = 0; i < PER_THREAD; i++)
      if (hp_addrtab_insert(g_t, base + i * 16) != 0)
        return (void *)1;
    for (uintptr_t i = 0; i < PER_THREAD; i++)
      if (hp_addrtab_remove(g_t, base + i * 16) != 1)
        return (void *)2;
  }
  for (uintptr_t i = 0; i < PER_THREAD; i += 7)
    if (hp_addrtab_insert(g_t, base + i * 16) != 0)
      return (void *)3;
  return NULL;
}

START_TEST(concurrent_threads_see_their_own_keys)
{
  g_t = hp_addrtab_new(1u << 18, _i);
  pthread_t th[THREADS];
  for (uintptr_t i = 0; i < THREADS; i++)
    ck_assert_int_eq(pthread_create(&th[i], NULL, churn, (void *)i), 0);
  for (int i = 0; i < THREADS; i++) {
    void *rc;
    pthread_join(th[i], &rc);
    ck_assert_ptr_null(rc);
  }
  for (uintptr_t k = 0; k < THREADS; k++) {
    uintptr_t base = 0x1000000 * (k + 1);
    for (uintptr_t i = 0; i < PER_THREAD; i++)
      ck_assert_int_eq(hp_addrtab_remove(g_t, base + i * 16), i % 7 == 0);
  }
  hp_addrtab_free(g_t);
}
END_TEST

Suite *addrtab_suite(void)
{
  Suite *s = suite_create("addrtab");
  TCase *core = tcase_create("core");
  tcase_add_loop_test(core, insert_contains_remove, HP_ADDRTAB_NO_FILTER,
                      HP_ADDRTAB_FILTER_NEAR + 1);
  tcase_add_loop_test(core, collisions_and_spills, HP_ADDRTAB_NO_FILTER,
                      HP_ADDRTAB_FILTER_NEAR + 1);
  tcase_add_test(core, filter_answers_absent_without_touching_buckets);
  tcase_add_test(core, filter_outlives_its_table_and_comes_back_zeroed);
  tcase_add_test(core, filter_near_covers_two_granules_before);
  tcase_add_test(core, sizing_follows_interval);
  tcase_add_test(core, prefault_spares_the_inserts_page_faults);
  suite_add_tcase(s, core);
  TCase *limits = tcase_create("limits");
  tcase_add_test(limits, full_table_refuses);
  suite_add_tcase(s, limits);
  TCase *threads = tcase_create("threads");
  tcase_set_timeout(threads, 60);
  tcase_add_loop_test(threads, concurrent_threads_see_their_own_keys, HP_ADDRTAB_NO_FILTER,
                      HP_ADDRTAB_FILTER_NEAR + 1);
  suite_add_tcase(s, threads);
  return s;
}

int main(void)
{
  SRunner *sr = srunner_create(addrtab_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
