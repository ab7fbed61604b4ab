/* check_txlog.c — the store's transaction log (daemon/txlog.c): entries come back in
 * order with their values and blobs, blobs are aligned for in-place reading, filtering
 * keeps the chosen entries intact, and clearing keeps the log usable. */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hp_txlog.h"

static void add(hp_txlog *l, int kind, int64_t first, const char *text) {
  int64_t v[HP_TXOP_VALUES] = {first, first * 2};
  ck_assert_int_eq(hp_txlog_add(l, kind, v, text, text ? (uint32_t)strlen(text) + 1 : 0), 0);
}

START_TEST(txlog_returns_entries_in_order) {
  hp_txlog *l = hp_txlog_new();
  ck_assert_ptr_nonnull(l);
  for (int i = 0; i < 5000; i++)
    add(l, i % 3, i, i % 2 ? "odd" : NULL);
  ck_assert_uint_eq(hp_txlog_count(l), 5000);
  for (size_t i = 0; i < 5000; i++) {
    hp_txop op;
    hp_txlog_get(l, i, &op);
    ck_assert_int_eq(op.kind, (int)(i % 3));
    ck_assert_int_eq(op.v[0], (int64_t)i);
    ck_assert_int_eq(op.v[1], 2 * (int64_t)i);
    ck_assert_int_eq(op.v[9], 0);
    if (i % 2) {
      ck_assert_str_eq(op.blob, "odd");
      ck_assert_uint_eq(op.len, 4);
    } else {
      ck_assert_ptr_null(op.blob);
      ck_assert_uint_eq(op.len, 0);
    }
  }
  hp_txlog_free(l);
  hp_txlog_free(NULL);
}
END_TEST

/* A blob of integers after a text blob of odd length can be read in place. */
START_TEST(txlog_aligns_blobs) {
  hp_txlog *l = hp_txlog_new();
  int64_t ids[3] = {7, 8, 9};
  int64_t v[HP_TXOP_VALUES] = {0};
  for (int i = 0; i < 50; i++) {
    add(l, 1, i, "abc");
    ck_assert_int_eq(hp_txlog_add(l, 2, v, ids, sizeof ids), 0);
  }
  for (size_t i = 1; i < hp_txlog_count(l); i += 2) {
    hp_txop op;
    hp_txlog_get(l, i, &op);
    ck_assert_uint_eq((uintptr_t)op.blob % 8, 0);
    ck_assert_int_eq(((const int64_t *)op.blob)[2], 9);
  }
  hp_txlog_free(l);
}
END_TEST

static int keep_even(const hp_txop *op, void *ctx) {
  (*(int *)ctx)++;
  return op->v[0] % 2 == 0;
}

START_TEST(txlog_filter_keeps_the_chosen_entries_intact) {
  hp_txlog *l = hp_txlog_new();
  char text[64];
  for (int i = 0; i < 300; i++) {
    snprintf(text, sizeof text, "entry %d%s", i, i % 7 ? "" : " with a longer text");
    add(l, 0, i, text);
  }
  int seen = 0;
  hp_txlog_filter(l, keep_even, &seen);
  ck_assert_int_eq(seen, 300);
  ck_assert_uint_eq(hp_txlog_count(l), 150);
  for (size_t i = 0; i < 150; i++) {
    hp_txop op;
    hp_txlog_get(l, i, &op);
    int n = (int)(2 * i);
    snprintf(text, sizeof text, "entry %d%s", n, n % 7 ? "" : " with a longer text");
    ck_assert_int_eq(op.v[0], n);
    ck_assert_str_eq(op.blob, text);
    ck_assert_uint_eq((uintptr_t)op.blob % 8, 0);
  }
  hp_txlog_clear(l);
  ck_assert_uint_eq(hp_txlog_count(l), 0);
  add(l, 4, 42, "again");
  hp_txop op;
  hp_txlog_get(l, 0, &op);
  ck_assert_str_eq(op.blob, "again");
  hp_txlog_free(l);
}
END_TEST

Suite *txlog_suite(void) {
  Suite *s = suite_create("txlog");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, txlog_returns_entries_in_order);
  tcase_add_test(tc, txlog_aligns_blobs);
  tcase_add_test(tc, txlog_filter_keeps_the_chosen_entries_intact);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(txlog_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
