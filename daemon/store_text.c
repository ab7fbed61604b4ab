/* store_text.c — agents' text made storable, on the loop thread.
 *
 * The protocol carries strings as bytes, but SQLite TEXT must be UTF-8 for readers to
 * decode it (hp_utf8.h), so every string is repaired as it is copied into an item. argv
 * and the size buckets are stored as JSON text; argv is bounded by
 * HP_STORE_MAX_ARGV_BYTES, since a HELLO may carry megabytes of it. */
#include "store_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hp_utf8.h"

size_t store_text_room(hp_str s)
{
  return (size_t)s.len * HP_UTF8_MAX_GROWTH + 1;
}

char *store_text_copy(char **cursor, hp_str s)
{
  char *dst = *cursor;
  size_t n = hp_utf8_repair(dst, s.ptr, s.len);
  dst[n] = '\0';
  *cursor += n + 1;
  return dst;
}

/* A growing NUL-terminated buffer; after a failed allocation it only records `oom`. */
typedef struct {
  char *p;
  size_t len, cap;
  int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
  if (b->oom)
    return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 256;
    while (cap < b->len + n + 1)
      cap *= 2;
    char *p = store_loop_realloc(b->p, cap);
    if (p == NULL) {
      b->oom = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

/* s as a JSON string, repaired to valid UTF-8 first. */
static void sb_json_str(sbuf *b, hp_str s)
{
  char stack_buf[HP_UTF8_MAX_GROWTH * 256];
  char *text = stack_buf;
  if ((size_t)s.len * HP_UTF8_MAX_GROWTH > sizeof stack_buf &&
      (text = store_loop_malloc((size_t)s.len * HP_UTF8_MAX_GROWTH)) == NULL) {
    b->oom = 1;
    return;
  }
  size_t n = hp_utf8_repair(text, s.ptr, s.len);
  sb_put(b, "\"", 1);
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)text[i];
    char esc[8];
    if (ch == '"' || ch == '\\') {
      esc[0] = '\\';
      esc[1] = (char)ch;
      sb_put(b, esc, 2);
    } else if (ch < 0x20) {
      int k = snprintf(esc, sizeof esc, "\\u%04x", ch);
      sb_put(b, esc, (size_t)k);
    } else {
      sb_put(b, &text[i], 1);
    }
  }
  sb_put(b, "\"", 1);
  if (text != stack_buf)
    free(text);
}

/* The buffer's text as the caller's to free, or -HP_ENOMEM (and nothing to free). */
static int sb_finish(sbuf *b, char **json)
{
  if (b->oom) {
    free(b->p);
    *json = NULL;
    return -HP_ENOMEM;
  }
  *json = b->p;
  return 0;
}

int store_argv_json(const hp_hello *h, char **json, uint32_t *omitted)
{
  sbuf b = {0};
  sb_put(&b, "[", 1);
  uint32_t i = 0;
  for (; i < h->argc && !b.oom; i++) {
    size_t mark = b.len;
    if (i > 0)
      sb_put(&b, ",", 1);
    sb_json_str(&b, h->argv[i]);
    if (b.len + 1 > HP_STORE_MAX_ARGV_BYTES) {
      b.len = mark; /* whole entries only, so that the text stays a valid array */
      if (b.p != NULL)
        b.p[mark] = '\0';
      break;
    }
  }
  *omitted = h->argc - i;
  sb_put(&b, "]", 1);
  return sb_finish(&b, json);
}

int store_buckets_json(const hp_hello *h, char **json)
{
  sbuf b = {0};
  *json = NULL;
  if (h->nbuckets == 0)
    return 0;
  sb_put(&b, "[", 1);
  for (uint32_t i = 0; i < h->nbuckets; i++) {
    char num[80];
    int n = snprintf(num, sizeof num, "%s[%" PRIu64 ",%.17g]", i ? "," : "",
                     h->buckets[i].max_size, h->buckets[i].rate);
    sb_put(&b, num, (size_t)n);
  }
  sb_put(&b, "]", 1);
  return sb_finish(&b, json);
}
