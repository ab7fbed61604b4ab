/* check_pystr.c — code points to UTF-8 by s.encode('utf-8', 'surrogateescape')
 * .decode('utf-8', 'replace') (hp_pystr.h). The expected bytes of every case were printed
 * by CPython 3.11 from that expression (with other lone surrogates first replaced by
 * U+FFFD, which that expression would refuse). */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hp_pystr.h"

typedef struct {
  const char *what;
  uint32_t cp[8];
  size_t n;
  const char *utf8;   /* expected bytes */
  size_t len;
} utf8_case;

#define CP(...) { __VA_ARGS__ }, (sizeof((uint32_t[]){ __VA_ARGS__ }) / sizeof(uint32_t))
#define OUT(s) s, sizeof(s) - 1

static const utf8_case cases[] = {
  { "ascii", CP('a', 'b', 'c'), OUT("abc") },
  { "latin-1", CP(0xE9), OUT("\xc3\xa9") },
  { "bmp", CP(0x20AC), OUT("\xe2\x82\xac") },
  { "astral", CP(0x1F600), OUT("\xf0\x9f\x98\x80") },
  { "escaped invalid byte", CP('a', 0xDCFF, 'b'), OUT("a\xef\xbf\xbd" "b") },
  { "escaped valid pair restored", CP(0xDCC3, 0xDCA9), OUT("\xc3\xa9") },
  { "escaped astral restored", CP(0xDCF0, 0xDC9F, 0xDC98, 0xDC80), OUT("\xf0\x9f\x98\x80") },
  { "truncated sequence is one U+FFFD", CP(0xDCE2, 0xDC82), OUT("\xef\xbf\xbd") },
  { "sequence broken by a character", CP(0xDCE2, 0xDC82, 'x'), OUT("\xef\xbf\xbd" "x") },
  { "overlong E0 80", CP(0xDCE0, 0xDC80), OUT("\xef\xbf\xbd\xef\xbf\xbd") },
  { "encoded surrogate ED A0 80", CP(0xDCED, 0xDCA0, 0xDC80),
    OUT("\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd") },
  { "above U+10FFFF F4 90", CP(0xDCF4, 0xDC90, 0xDC80, 0xDC80),
    OUT("\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd") },
  { "C0 is never a lead", CP(0xDCC0, 0xDCAF), OUT("\xef\xbf\xbd\xef\xbf\xbd") },
  { "lone continuation", CP(0xDC80), OUT("\xef\xbf\xbd") },
  { "broken then valid", CP(0xDCE1, 0xDC80, 0xDCE1, 0xDC80, 0xDC80),
    OUT("\xef\xbf\xbd\xe1\x80\x80") },
  { "escape then real character", CP(0xDCC3, 0xE9), OUT("\xef\xbf\xbd\xc3\xa9") },
  { "high surrogate", CP(0xD800), OUT("\xef\xbf\xbd") },
  { "low surrogate below the escapes", CP(0xDC7F), OUT("\xef\xbf\xbd") },
  { "low surrogate above the escapes", CP(0xDD00), OUT("\xef\xbf\xbd") },
};

static void encode_kind(const utf8_case *c, unsigned kind, char *out, size_t cap, size_t *len)
{
  uint8_t k1[8];
  uint16_t k2[8];
  const void *data = c->cp;
  if (kind == 1) {
    for (size_t i = 0; i < c->n; i++)
      k1[i] = (uint8_t)c->cp[i];
    data = k1;
  } else if (kind == 2) {
    for (size_t i = 0; i < c->n; i++)
      k2[i] = (uint16_t)c->cp[i];
    data = k2;
  }
  *len = hp_pystr_encode(data, kind, c->n, out, cap);
}

static unsigned narrowest_kind(const utf8_case *c)
{
  uint32_t max = 0;
  for (size_t i = 0; i < c->n; i++)
    max = c->cp[i] > max ? c->cp[i] : max;
  return max < 0x100 ? 1 : max < 0x10000 ? 2 : 4;
}

/* Every case in every kind wide enough for it (CPython stores each str in the narrowest). */
START_TEST(encodes_like_python)
{
  const utf8_case *c = &cases[_i];
  char out[64];
  size_t len;
  for (unsigned kind = narrowest_kind(c); kind <= 4; kind *= 2) {
    encode_kind(c, kind, out, sizeof(out), &len);
    ck_assert_msg(len == c->len && memcmp(out, c->utf8, len) == 0,
                  "%s (kind %u): %zu bytes, expected %zu", c->what, kind, len, c->len);
  }
}
END_TEST

/* Cut at every capacity: the result is the longest prefix of whole characters that fits,
 * so it is always valid UTF-8 and never overruns. */
START_TEST(stops_before_a_character_that_does_not_fit)
{
  const utf8_case *c = &cases[_i];
  for (size_t cap = 0; cap <= c->len; cap++) {
    char out[64];
    memset(out, 0x55, sizeof(out));
    size_t len;
    encode_kind(c, 4, out, cap, &len);
    ck_assert_uint_le(len, cap);
    ck_assert_msg(memcmp(out, c->utf8, len) == 0, "%s: cap %zu", c->what, cap);
    ck_assert_int_eq((unsigned char)out[len], 0x55);
    /* Whole characters only: the next expected byte starts a character. */
    if (len < c->len)
      ck_assert_msg(((unsigned char)c->utf8[len] & 0xC0) != 0x80, "%s: cut mid-character at %zu",
                    c->what, len);
  }
}
END_TEST

START_TEST(other_kinds_give_nothing)
{
  char out[8];
  uint32_t cp = 'a';
  ck_assert_uint_eq(hp_pystr_encode(&cp, 0, 1, out, sizeof(out)), 0);
  ck_assert_uint_eq(hp_pystr_encode(&cp, 3, 1, out, sizeof(out)), 0);
  ck_assert_uint_eq(hp_pystr_encode(&cp, 4, 0, out, sizeof(out)), 0);
}
END_TEST

Suite *pystr_suite(void)
{
  Suite *s = suite_create("pystr");
  TCase *core = tcase_create("core");
  int n = (int)(sizeof(cases) / sizeof(cases[0]));
  tcase_add_loop_test(core, encodes_like_python, 0, n);
  tcase_add_test(core, other_kinds_give_nothing);
  suite_add_tcase(s, core);
  TCase *limits = tcase_create("limits");
  tcase_add_loop_test(limits, stops_before_a_character_that_does_not_fit, 0, n);
  suite_add_tcase(s, limits);
  return s;
}

int main(void)
{
  SRunner *sr = srunner_create(pystr_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
