/* check_map.c — hp_map, the daemon's integer hash map: lookups under churn, key 0,
 * memory that follows the live entries, and out-of-memory paths. */
#include <check.h>
#include <stdlib.h>

#include "hp_error.h"
#include "hp_map.h"

static hp_map_val val(int64_t a) {
  return (hp_map_val){.live = {.alloc_id = a, .est_bytes = a * 2, .size = (uint32_t)a * 3}};
}

/* Removes key through the one deletion the map has (get, then delete at). */
static int del(hp_map *m, uint64_t key) {
  hp_map_val *v = hp_map_get(m, key);
  if (v == NULL)
    return 0;
  hp_map_del_at(m, v);
  return 1;
}

START_TEST(map_put_get_del_basic) {
  hp_map *m = hp_map_new();
  ck_assert_ptr_nonnull(m);
  ck_assert_ptr_null(hp_map_get(m, 42));
  hp_map_val v = val(7);
  ck_assert_int_eq(hp_map_put(m, 42, &v), 0);
  hp_map_val *g = hp_map_get(m, 42);
  ck_assert_ptr_nonnull(g);
  ck_assert_int_eq(g->live.alloc_id, 7);
  ck_assert_int_eq(g->live.size, 21);
  v = val(9);
  ck_assert_int_eq(hp_map_put(m, 42, &v), 0);  /* replace */
  ck_assert_int_eq(hp_map_get(m, 42)->live.alloc_id, 9);
  ck_assert_uint_eq(hp_map_count(m), 1);
  ck_assert_int_eq(del(m, 42), 1);
  ck_assert_int_eq(del(m, 42), 0);
  ck_assert_ptr_null(hp_map_get(m, 42));
  ck_assert_uint_eq(hp_map_count(m), 0);
  hp_map_free(m);
  hp_map_free(NULL);
}
END_TEST

START_TEST(map_upsert_inserts_once_then_finds) {
  hp_map *m = hp_map_new();
  for (uint64_t k = 0; k < 3000; k++) {
    int created = -1;
    hp_map_val *v = hp_map_upsert(m, k * 48, &created);
    ck_assert_ptr_nonnull(v);
    ck_assert_int_eq(created, 1);
    ck_assert_int_eq(v->live.alloc_id, 0);
    v->live.alloc_id = (int64_t)k + 1;
  }
  for (uint64_t k = 0; k < 3000; k++) {
    int created = -1;
    hp_map_val *v = hp_map_upsert(m, k * 48, &created);
    ck_assert_int_eq(created, 0);
    ck_assert_int_eq(v->live.alloc_id, (int64_t)k + 1);
  }
  ck_assert_uint_eq(hp_map_count(m), 3000);
  hp_map_free(m);
}
END_TEST

START_TEST(map_key_zero_is_an_ordinary_key) {
  hp_map *m = hp_map_new();
  hp_map_val v = val(5);
  ck_assert_ptr_null(hp_map_get(m, 0));
  ck_assert_int_eq(hp_map_put(m, 0, &v), 0);
  ck_assert_int_eq(hp_map_get(m, 0)->live.alloc_id, 5);
  ck_assert_uint_eq(hp_map_count(m), 1);
  ck_assert_int_eq(del(m, 0), 1);
  ck_assert_ptr_null(hp_map_get(m, 0));
  hp_map_free(m);
}
END_TEST

/* Addresses are multiples of 16 and clustered; deletions in the middle of probe runs
 * must not lose the entries behind them. */
START_TEST(map_survives_churn_of_clustered_keys) {
  hp_map *m = hp_map_new();
  const uint64_t base = 0x7f0000001000ULL;
  enum { N = 20000 };
  for (uint64_t i = 0; i < N; i++) {
    hp_map_val v = val((int64_t)i);
    ck_assert_int_eq(hp_map_put(m, base + 16 * i, &v), 0);
  }
  ck_assert_uint_eq(hp_map_count(m), N);
  for (uint64_t i = 0; i < N; i += 2)
    ck_assert_int_eq(del(m, base + 16 * i), 1);
  for (uint64_t i = 0; i < N; i++) {
    hp_map_val *g = hp_map_get(m, base + 16 * i);
    if (i % 2 == 0) {
      ck_assert_ptr_null(g);
    } else {
      ck_assert_ptr_nonnull(g);
      ck_assert_int_eq(g->live.alloc_id, (int64_t)i);
    }
  }
  ck_assert_uint_eq(hp_map_count(m), N / 2);
  hp_map_free(m);
}
END_TEST

START_TEST(map_del_at_removes_exactly_that_entry) {
  hp_map *m = hp_map_new();
  for (uint64_t i = 0; i < 1000; i++) {
    hp_map_val v = val((int64_t)i);
    hp_map_put(m, i, &v);  /* includes key 0 */
  }
  for (uint64_t i = 0; i < 1000; i += 3) {
    hp_map_val *g = hp_map_get(m, i);
    ck_assert_ptr_nonnull(g);
    hp_map_del_at(m, g);
  }
  for (uint64_t i = 0; i < 1000; i++) {
    hp_map_val *g = hp_map_get(m, i);
    if (i % 3 == 0)
      ck_assert_ptr_null(g);
    else
      ck_assert_int_eq(g->live.alloc_id, (int64_t)i);
  }
  ck_assert_uint_eq(hp_map_count(m), 1000 - 334);
  hp_map_free(m);
}
END_TEST

START_TEST(map_memory_follows_live_entries) {
  hp_map *m = hp_map_new();
  for (uint64_t i = 1; i <= 50000; i++) {
    hp_map_val v = val(1);
    hp_map_put(m, i * 64, &v);
  }
  size_t peak = hp_map_capacity(m);
  ck_assert_uint_ge(peak, 100000);
  for (uint64_t i = 1; i <= 49990; i++)
    del(m, i * 64);
  ck_assert_uint_le(hp_map_capacity(m), 128);
  for (uint64_t i = 49991; i <= 50000; i++)
    ck_assert_ptr_nonnull(hp_map_get(m, i * 64));
  hp_map_free(m);
}
END_TEST

/* Fail the n-th allocation: a put that needs to grow reports -HP_ENOMEM and the
 * map keeps every entry it had. */
START_TEST(map_put_reports_oom_and_keeps_entries) {
  hp_map *m = hp_map_new();
  for (uint64_t i = 1; i <= 8; i++) {
    hp_map_val v = val((int64_t)i);
    ck_assert_int_eq(hp_map_put(m, i, &v), 0);
  }
  hp_map_fail_alloc_after(1);
  int rc = 0;
  uint64_t k = 9;
  for (; k < 1000 && rc == 0; k++) {
    hp_map_val v = val((int64_t)k);
    rc = hp_map_put(m, k, &v);
  }
  hp_map_fail_alloc_after(0);
  ck_assert_int_eq(rc, -HP_ENOMEM);
  uint64_t failed_key = k - 1;
  ck_assert_ptr_null(hp_map_get(m, failed_key));
  for (uint64_t i = 1; i < failed_key; i++)
    ck_assert_int_eq(hp_map_get(m, i)->live.alloc_id, (int64_t)i);
  hp_map_free(m);
}
END_TEST

START_TEST(map_new_reports_oom) {
  hp_map_fail_alloc_after(1);
  hp_map *m = hp_map_new();
  hp_map_fail_alloc_after(0);
  ck_assert_ptr_null(m);
}
END_TEST

Suite *map_suite(void) {
  Suite *s = suite_create("map");
  TCase *core = tcase_create("core");
  tcase_set_timeout(core, 30);  /* sanitizer builds on a busy machine */
  tcase_add_test(core, map_put_get_del_basic);
  tcase_add_test(core, map_upsert_inserts_once_then_finds);
  tcase_add_test(core, map_key_zero_is_an_ordinary_key);
  tcase_add_test(core, map_survives_churn_of_clustered_keys);
  tcase_add_test(core, map_del_at_removes_exactly_that_entry);
  tcase_add_test(core, map_memory_follows_live_entries);
  suite_add_tcase(s, core);
  TCase *oom = tcase_create("oom");
  tcase_add_test(oom, map_put_reports_oom_and_keeps_entries);
  tcase_add_test(oom, map_new_reports_oom);
  suite_add_tcase(s, oom);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(map_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
