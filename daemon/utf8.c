/* utf8.c — see hp_utf8.h. A byte that does not start a well-formed sequence is replaced
 * on its own and decoding resumes at the next byte, so a stray byte costs one
 * replacement character and the text around it survives. */
#include "hp_utf8.h"

#include <string.h>

/* Length of the well-formed sequence at p (at most n bytes), or 0 if there is none.
 * NUL counts as not well-formed here: the store binds C strings. */
static size_t seq_len(const unsigned char *p, size_t n)
{
  unsigned char c = p[0];
  if (c >= 0x01 && c <= 0x7f)
    return 1;
  size_t len;
  unsigned char lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
  if (c >= 0xc2 && c <= 0xdf) {
    len = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    len = 3;
    if (c == 0xe0)
      lo = 0xa0; /* overlong */
    else if (c == 0xed)
      hi = 0x9f; /* surrogates */
  } else if (c >= 0xf0 && c <= 0xf4) {
    len = 4;
    if (c == 0xf0)
      lo = 0x90; /* overlong */
    else if (c == 0xf4)
      hi = 0x8f; /* past U+10FFFF */
  } else {
    return 0;
  }
  if (n < len || p[1] < lo || p[1] > hi)
    return 0;
  for (size_t i = 2; i < len; i++)
    if (p[i] < 0x80 || p[i] > 0xbf)
      return 0;
  return len;
}

size_t hp_utf8_repair(char *dst, const char *src, size_t len)
{
  static const char replacement[3] = {(char)0xef, (char)0xbf, (char)0xbd}; /* U+FFFD */
  const unsigned char *p = (const unsigned char *)src;
  size_t i = 0, out = 0;
  while (i < len) {
    size_t k = seq_len(p + i, len - i);
    if (k == 0) {
      memcpy(dst + out, replacement, sizeof replacement);
      out += sizeof replacement;
      i++;
    } else {
      memcpy(dst + out, p + i, k);
      out += k;
      i += k;
    }
  }
  return out;
}
