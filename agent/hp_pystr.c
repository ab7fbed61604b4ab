/* hp_pystr.c — code points to UTF-8 with surrogateescape/replacement (see hp_pystr.h).
 *
 * Escaped bytes (U+DC80..U+DCFF) are decoded as they come, by the Unicode standard's
 * "substitution of maximal subparts", which is what Python's UTF-8 decoder does with
 * errors='replace': a lead byte and the continuation bytes that may follow it are held
 * until the sequence is complete (then copied as is) or broken (then one U+FFFD, and the
 * breaking byte starts afresh). Any other character ends a pending sequence: its own
 * encoding starts with a byte that can continue nothing. */
#include "hp_pystr.h"

#include <stdint.h>
#include <string.h>

typedef struct {
  char *out;
  size_t len, cap;
  int full;              /* a character did not fit: write nothing more */
  unsigned char pend[4]; /* escaped bytes of an unfinished sequence */
  unsigned npend, need;  /* held, and the sequence's whole length */
} writer;

static void put(writer *w, const void *bytes, size_t n)
{
  if (w->full || n > w->cap - w->len) {
    w->full = 1;
    return;
  }
  memcpy(w->out + w->len, bytes, n);
  w->len += n;
}

static void put_replacement(writer *w)
{
  static const unsigned char fffd[3] = {0xEF, 0xBF, 0xBD};
  put(w, fffd, sizeof(fffd));
}

static void put_code_point(writer *w, uint32_t c)
{
  unsigned char b[4];
  if (c < 0x80) {
    b[0] = (unsigned char)c;
    put(w, b, 1);
  } else if (c < 0x800) {
    b[0] = (unsigned char)(0xC0 | (c >> 6));
    b[1] = (unsigned char)(0x80 | (c & 0x3F));
    put(w, b, 2);
  } else if (c < 0x10000) {
    b[0] = (unsigned char)(0xE0 | (c >> 12));
    b[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
    b[2] = (unsigned char)(0x80 | (c & 0x3F));
    put(w, b, 3);
  } else {
    b[0] = (unsigned char)(0xF0 | (c >> 18));
    b[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
    b[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
    b[3] = (unsigned char)(0x80 | (c & 0x3F));
    put(w, b, 4);
  }
}

/* A pending sequence that will not be completed: one U+FFFD for all of it. */
static void end_pending(writer *w)
{
  if (w->npend) {
    put_replacement(w);
    w->npend = 0;
  }
}

/* Length of the sequence a lead byte starts, 0 if it starts none. */
static unsigned sequence_length(unsigned char b)
{
  if (b >= 0xC2 && b <= 0xDF)
    return 2;
  if (b >= 0xE0 && b <= 0xEF)
    return 3;
  if (b >= 0xF0 && b <= 0xF4)
    return 4;
  return 0;
}

/* Whether b may be the next byte after pend (the second byte's range depends on the lead:
 * no overlong forms, no encoded surrogates, nothing above U+10FFFF). */
static int continues(const writer *w, unsigned char b)
{
  if (w->npend == 1) {
    switch (w->pend[0]) {
    case 0xE0: return b >= 0xA0 && b <= 0xBF;
    case 0xED: return b >= 0x80 && b <= 0x9F;
    case 0xF0: return b >= 0x90 && b <= 0xBF;
    case 0xF4: return b >= 0x80 && b <= 0x8F;
    default: break;
    }
  }
  return b >= 0x80 && b <= 0xBF;
}

static void put_escaped_byte(writer *w, unsigned char b)
{
  if (w->npend) {
    if (continues(w, b)) {
      w->pend[w->npend++] = b;
      if (w->npend == w->need) {
        put(w, w->pend, w->npend);
        w->npend = 0;
      }
      return;
    }
    end_pending(w);
  }
  w->need = sequence_length(b);
  if (w->need == 0) {
    put_replacement(w);
    return;
  }
  w->pend[0] = b;
  w->npend = 1;
}

size_t hp_pystr_encode(const void *data, unsigned kind, size_t n, char *out, size_t cap)
{
  writer w = {.out = out, .cap = cap};
  if (kind != 1 && kind != 2 && kind != 4)
    return 0;
  for (size_t i = 0; i < n && !w.full; i++) {
    uint32_t c = kind == 1   ? ((const uint8_t *)data)[i]
                 : kind == 2 ? ((const uint16_t *)data)[i]
                             : ((const uint32_t *)data)[i];
    if (c >= 0xDC80 && c <= 0xDCFF) {
      put_escaped_byte(&w, (unsigned char)(c - 0xDC00));
      continue;
    }
    end_pending(&w);
    if ((c >= 0xD800 && c <= 0xDFFF) || c > 0x10FFFF)
      put_replacement(&w);
    else
      put_code_point(&w, c);
  }
  end_pending(&w);
  return w.len;
}
