/* hp_framer.c — reassembles length-prefixed frames from a byte stream (daemon side).
 *
 * A libuv read callback hands over whatever the kernel had: half a header, three frames
 * and a bit, one byte. The framer copies the pieces into one buffer and hands out each
 * complete payload in place. Memory stays bounded by one frame plus one read: an
 * announced length above max_frame is refused as soon as its header is complete, and
 * nothing after that header is ever kept. Consumed bytes are shifted out only when the
 * tail has no room, so reassembling a large frame from small reads copies it once. */
#include <assert.h>
#include <string.h>

#include "hp_proto_int.h"

/* An idle connection keeps at most this much buffer after a large frame. */
#define HP_FRAMER_KEEP_BYTES (256u * 1024u)

struct hp_framer {
  uint8_t *buf;
  size_t start; /* first unconsumed byte */
  size_t end;   /* one past the last buffered byte */
  size_t cap;
  uint32_t max_frame;
  int failed;         /* an oversized header was seen; the stream is lost */
  uint32_t announced; /* the oversized length, kept so every later next() can name it */
};

hp_framer *hp_framer_new(uint32_t max_frame)
{
  hp_framer *f = hp_proto_malloc(sizeof(*f));
  if (f == NULL)
    return NULL;
  memset(f, 0, sizeof(*f));
  f->max_frame = (max_frame == 0 || max_frame > HP_MAX_FRAME_BYTES) ? HP_MAX_FRAME_BYTES
                                                                    : max_frame;
  return f;
}

void hp_framer_free(hp_framer *f)
{
  if (f == NULL)
    return;
  hp_proto_free(f->buf);
  hp_proto_free(f);
}

size_t hp_framer_buffered(const hp_framer *f)
{
  return f->end - f->start;
}

static inline uint32_t load_be32(const uint8_t *p)
{
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* Finds the end of the last byte worth keeping: frames are walked header to header,
 * and the stream is cut right after the first header announcing too much. */
static size_t keep_end(const hp_framer *f)
{
  size_t pos = f->start;
  while (f->end - pos >= HP_FRAME_HEADER_BYTES) {
    uint32_t n = load_be32(f->buf + pos);
    if (n > f->max_frame)
      return pos + HP_FRAME_HEADER_BYTES;
    if (f->end - pos - HP_FRAME_HEADER_BYTES < n)
      break;
    pos += HP_FRAME_HEADER_BYTES + n;
  }
  return f->end;
}

static HP_NOINLINE int make_room(hp_framer *f, size_t len)
{
  size_t held = f->end - f->start;
  if (f->start > 0 && held > 0 && f->buf != NULL)
    memmove(f->buf, f->buf + f->start, held);
  f->start = 0;
  f->end = held;
  if (f->cap - f->end >= len)
    return 0;
  size_t want = held + len;
  size_t cap = f->cap * 2;
  if (cap < 4096)
    cap = 4096;
  if (cap < want)
    cap = want;
  /* Never more than a whole frame plus the read being added. */
  size_t bound = (size_t)f->max_frame + HP_FRAME_HEADER_BYTES + len;
  if (cap > bound && want <= bound)
    cap = bound;
  uint8_t *nb = hp_proto_realloc(f->buf, cap);
  if (nb == NULL)
    return -HP_ENOMEM;
  f->buf = nb;
  f->cap = cap;
  assert(f->cap - f->end >= len);
  return 0;
}

int hp_framer_feed(hp_framer *f, const uint8_t *data, size_t len)
{
  int rc;
  if (f->failed || len == 0)
    return 0; /* after an oversized header, hp_framer_next() reports it; drop the rest */
  if (f->start == f->end) {
    f->start = f->end = 0;
    if (f->cap > HP_FRAMER_KEEP_BYTES && len <= HP_FRAMER_KEEP_BYTES) {
      /* Give back the memory of an earlier large frame. */
      hp_proto_free(f->buf);
      f->buf = NULL;
      f->cap = 0;
    }
  }
  if (f->cap - f->end < len && (rc = make_room(f, len)) < 0)
    return rc;
  memcpy(f->buf + f->end, data, len);
  f->end += len;
  f->end = keep_end(f);
  assert(f->start <= f->end && f->end <= f->cap);
  return 0;
}

int hp_framer_next(hp_framer *f, const uint8_t **payload, uint32_t *len)
{
  if (f->failed) {
    *len = f->announced;
    return -HP_ETOOBIG;
  }
  size_t held = f->end - f->start;
  if (held < HP_FRAME_HEADER_BYTES)
    return 0;
  uint32_t n = load_be32(f->buf + f->start);
  if (n > f->max_frame) {
    f->failed = 1;
    f->announced = n;
    f->start = f->end = 0;
    *len = n; /* so the error message can name the announced size */
    return -HP_ETOOBIG;
  }
  if (held - HP_FRAME_HEADER_BYTES < n)
    return 0;
  *payload = f->buf + f->start + HP_FRAME_HEADER_BYTES;
  *len = n;
  f->start += HP_FRAME_HEADER_BYTES + (size_t)n;
  assert(f->start <= f->end);
  return 1;
}
