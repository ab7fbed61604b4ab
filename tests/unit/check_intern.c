/* check_intern.c — frame and stack interning: dedupe, dense published ids, limits. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "hp_intern.h"

START_TEST(frames_are_interned_once_by_content)
{
  hp_intern *in = hp_intern_new(0, 0);
  ck_assert_ptr_nonnull(in);
  int64_t a = hp_intern_frame_add(in, "f", 1, "a.py", 4, 3);
  int64_t b = hp_intern_frame_add(in, "f", 1, "a.py", 4, 4);
  int64_t c = hp_intern_frame_add(in, "Cls.g", 5, "b.py", 4, 3);
  ck_assert_int_eq(a, 1);
  ck_assert_int_eq(b, 2);
  ck_assert_int_eq(c, 3);
  /* The same content is the same frame, whatever code object it came from. */
  ck_assert_int_eq(hp_intern_frame_add(in, "f", 1, "a.py", 4, 3), 1);
  ck_assert_int_eq(hp_intern_frame_add(in, "Cls.g", 5, "b.py", 4, 3), 3);
  /* Any difference is another frame: name, file, line, or where name ends and file begins. */
  ck_assert_int_eq(hp_intern_frame_add(in, "g", 1, "a.py", 4, 3), 4);
  ck_assert_int_eq(hp_intern_frame_add(in, "f", 1, "b.py", 4, 3), 5);
  ck_assert_int_eq(hp_intern_frame_add(in, "fa", 2, ".py", 3, 3), 6);
  ck_assert_int_eq(hp_intern_frame_add(in, "", 0, "", 0, 0), 7);
  ck_assert_int_eq(hp_intern_frame_add(in, "", 0, "", 0, 0), 7);
  ck_assert_uint_eq(hp_intern_frame_count(in), 7);
  hp_intern_frame f;
  hp_intern_frame_get(in, 3, &f);
  ck_assert_uint_eq(f.function.len, 5);
  ck_assert(memcmp(f.function.ptr, "Cls.g", 5) == 0);
  ck_assert_uint_eq(f.filename.len, 4);
  ck_assert(memcmp(f.filename.ptr, "b.py", 4) == 0);
  ck_assert_int_eq(f.lineno, 3);
  hp_intern_free(in);
  hp_intern_free(NULL);
}
END_TEST

START_TEST(stacks_dedupe_by_ids_and_truncation)
{
  hp_intern *in = hp_intern_new(0, 0);
  uint32_t s1[3] = { 1, 2, 3 }, s2[3] = { 1, 2, 4 }, s3[2] = { 1, 2 };
  ck_assert_int_eq(hp_intern_stack_add(in, s1, 3, 0), 1);
  ck_assert_int_eq(hp_intern_stack_add(in, s2, 3, 0), 2);
  ck_assert_int_eq(hp_intern_stack_add(in, s3, 2, 0), 3);
  ck_assert_int_eq(hp_intern_stack_add(in, s3, 2, 1), 4);   /* truncated is distinct */
  ck_assert_int_eq(hp_intern_stack_add(in, s1, 3, 0), 1);
  ck_assert_int_eq(hp_intern_stack_add(in, s3, 2, 1), 4);
  ck_assert_uint_eq(hp_intern_stack_count(in), 4);
  hp_intern_stack st;
  hp_intern_stack_get(in, 2, &st);
  ck_assert_uint_eq(st.depth, 3);
  ck_assert_uint_eq(st.frame_ids[2], 4);
  hp_intern_stack_get(in, 4, &st);
  ck_assert_uint_eq(st.truncated, 1);
  ck_assert_int_eq(hp_intern_stack_add(in, s1, 0, 0), -HP_EINVAL);
  ck_assert_int_eq(hp_intern_stack_add(in, s1, HP_MAX_STACK_DEPTH + 1, 0), -HP_EINVAL);
  hp_intern_free(in);
}
END_TEST

START_TEST(tables_are_bounded)
{
  hp_intern *in = hp_intern_new(4, 3);
  for (int i = 0; i < 4; i++)
    ck_assert_int_eq(hp_intern_frame_add(in, "f", 1, "x", 1, i), i + 1);
  ck_assert_int_eq(hp_intern_frame_add(in, "f", 1, "x", 1, 99), -HP_EFULL);
  ck_assert_int_eq(hp_intern_frame_add(in, "f", 1, "x", 1, 2), 3);   /* known ones still found */
  ck_assert_uint_eq(hp_intern_frame_count(in), 4);
  for (uint32_t i = 1; i <= 3; i++)
    ck_assert_int_eq(hp_intern_stack_add(in, &i, 1, 0), i);
  uint32_t four = 4;
  ck_assert_int_eq(hp_intern_stack_add(in, &four, 1, 0), -HP_EFULL);
  uint32_t one = 1;
  ck_assert_int_eq(hp_intern_stack_add(in, &one, 1, 0), 1);   /* known ones still found */
  hp_intern_free(in);
}
END_TEST

START_TEST(long_strings_are_cut_at_the_wire_limit)
{
  hp_intern *in = hp_intern_new(0, 0);
  size_t n = HP_MAX_STR_BYTES + 100;
  char *big = malloc(n);
  memset(big, 'a', n);
  ck_assert_int_eq(hp_intern_frame_add(in, big, n, "", 0, 1), 1);
  hp_intern_frame f;
  hp_intern_frame_get(in, 1, &f);
  ck_assert_uint_eq(f.function.len, HP_MAX_STR_BYTES);
  ck_assert_uint_eq(f.filename.len, 0);
  /* Names that differ only beyond the limit are one frame. */
  big[n - 1] = 'b';
  ck_assert_int_eq(hp_intern_frame_add(in, big, n, "", 0, 1), 1);
  free(big);
  hp_intern_free(in);
}
END_TEST

Suite *intern_suite(void)
{
  Suite *s = suite_create("intern");
  TCase *core = tcase_create("core");
  tcase_add_test(core, frames_are_interned_once_by_content);
  tcase_add_test(core, stacks_dedupe_by_ids_and_truncation);
  suite_add_tcase(s, core);
  TCase *limits = tcase_create("limits");
  tcase_add_test(limits, tables_are_bounded);
  tcase_add_test(limits, long_strings_are_cut_at_the_wire_limit);
  suite_add_tcase(s, limits);
  return s;
}

int main(void)
{
  SRunner *sr = srunner_create(intern_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
