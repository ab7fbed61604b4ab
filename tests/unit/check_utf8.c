/* check_utf8.c — repairing agents' text to valid UTF-8 (daemon/utf8.c): valid text is
 * kept byte for byte, each byte that does not begin a well-formed sequence becomes
 * U+FFFD, and so does NUL. Cases follow RFC 3629's well-formed table. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "hp_utf8.h"

#define R "\xef\xbf\xbd"   /* U+FFFD */

/* Valid UTF-8 is what repairing leaves unchanged. */
static int repairs_to_itself(const char *text, size_t len) {
  char out[64];
  ck_assert_uint_le(len * HP_UTF8_MAX_GROWTH, sizeof out);
  return hp_utf8_repair(out, text, len) == len && memcmp(out, text, len) == 0;
}

static const struct {
  const char *name, *in;
  size_t len;
  const char *want;
} cases[] = {
  {"ascii", "python3 -m app", 14, "python3 -m app"},
  {"empty", "", 0, ""},
  {"two_byte", "caf\xc3\xa9", 5, "caf\xc3\xa9"},
  {"three_byte", "\xe2\x82\xac", 3, "\xe2\x82\xac"},
  {"four_byte", "\xf0\x9f\x98\x80", 4, "\xf0\x9f\x98\x80"},
  {"latin1", "caf\xe9!", 5, "caf" R "!"},
  {"lone_continuation", "a\x80z", 3, "a" R "z"},
  {"overlong_slash", "\xc0\xaf", 2, R R},
  {"overlong_three", "\xe0\x80\xaf", 3, R R R},
  {"surrogate", "\xed\xa0\x80", 3, R R R},
  {"past_10ffff", "\xf4\x90\x80\x80", 4, R R R R},
  {"f5", "\xf5\x80\x80\x80", 4, R R R R},
  {"truncated_at_end", "ab\xe2\x82", 4, "ab" R R},
  {"nul", "a\0b", 3, "a" R "b"},
  {"ff", "\xff", 1, R},
};

START_TEST(utf8_repairs_each_case) {
  char out[64];
  size_t n = hp_utf8_repair(out, cases[_i].in, cases[_i].len);
  ck_assert_msg(n == strlen(cases[_i].want) && memcmp(out, cases[_i].want, n) == 0,
                "%s: got %zu bytes", cases[_i].name, n);
  ck_assert_int_eq(repairs_to_itself(out, n), 1);  /* repaired text is valid */
  ck_assert_uint_le(n, HP_UTF8_MAX_GROWTH * cases[_i].len);
}
END_TEST

/* Every byte value alone and after a lead byte: the output is always valid (repairing it
 * again changes nothing), and within the growth bound. */
START_TEST(utf8_output_is_always_valid) {
  unsigned char in[4];
  char out[16];
  for (unsigned a = 0; a < 256; a++)
    for (unsigned b = 0; b < 256; b++) {
      in[0] = (unsigned char)a;
      in[1] = (unsigned char)b;
      in[2] = 0x80;
      in[3] = 0xbf;
      size_t n = hp_utf8_repair(out, (const char *)in, 4);
      ck_assert_uint_le(n, 12);
      ck_assert_int_eq(repairs_to_itself(out, n), 1);
    }
}
END_TEST

Suite *utf8_suite(void) {
  Suite *s = suite_create("utf8");
  TCase *tc = tcase_create("core");
  tcase_add_loop_test(tc, utf8_repairs_each_case, 0, (int)(sizeof cases / sizeof cases[0]));
  tcase_add_test(tc, utf8_output_is_always_valid);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(utf8_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
