/* hp_decode.c — validates one frame payload into an hp_msg (daemon side).
 *
 * Everything here is input from another process, possibly hostile or corrupt, so the
 * decoder works in two passes:
 *   1. scan(): a bounds-checked walk over the raw msgpack bytes that proves the payload
 *      is exactly one complete msgpack value, at most HP_SCAN_MAX_DEPTH deep, and that
 *      every announced container length is backed by enough remaining bytes. msgpack-c
 *      allocates an array's element slots as soon as it reads the array header, so
 *      without this pass a 5-byte header announcing 2^32 entries would make it try to
 *      allocate 96 GiB.
 *   2. msgpack-c builds the object tree in a zone the decoder keeps and clears between
 *      messages (no per-event heap allocation), and the extraction below checks every
 *      field's type, range and length, with a message naming the field and the limit.
 * Stream-level rules (HELLO first, ids defined before use) are the daemon's job.
 * Layouts and limits: PROTOCOL.md. */
#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <msgpack.h>

#include "hp_proto_int.h"

/* The deepest heapprof message nests three levels (EVENTS -> events -> one event);
 * one more level is tolerated so that a wrongly nested field gets a type error that
 * names it rather than a generic one. */
#define HP_SCAN_MAX_DEPTH 4u
/* Upper bound on msgpack objects in one message: four times the largest legal EVENTS
 * batch. Bounds the zone at about 14 MiB even for a hostile 4 MiB frame. */
#define HP_SCAN_MAX_OBJECTS (4u * (HP_MAX_BATCH_EVENTS * (HP_ALLOC_NELEM + 1u) + 64u))
/* Zone chunks. msgpack_zone_clear() frees every chunk but the first, so a zone whose
 * first chunk is too small for the messages it sees mallocs and frees its overflow on
 * every message (and glibc may mmap/munmap it each time). The decoder therefore starts
 * small and, when a message needs more, replaces the zone by one whose first chunk
 * holds the whole message, up to what the largest legal EVENTS batch needs (~3.4 MiB).
 * A hostile bigger message still decodes, in temporary extra chunks. */
#define HP_ZONE_MIN_CHUNK_BYTES (64u * 1024u)
#define HP_ZONE_MAX_CHUNK_BYTES \
  ((size_t)(HP_MAX_BATCH_EVENTS * (HP_ALLOC_NELEM + 1u) + 64u) * sizeof(msgpack_object) + \
   64u * 1024u)

struct hp_decoder {
  msgpack_zone *zone; /* object tree of the current message */
  size_t zone_chunk;  /* size of its first chunk */
  hp_event *events;   /* decoded EVENTS batch */
  uint32_t events_cap;
  char err[256]; /* hp_decoder_error(); "" after a success */
  uint32_t frame_ids[HP_MAX_STACK_DEPTH];
  hp_bucket buckets[HP_MAX_BUCKETS];
  hp_str argv[HP_MAX_ARGV];
};

hp_decoder *hp_decoder_new(void)
{
  hp_decoder *d = hp_proto_malloc(sizeof(*d));
  if (d == NULL)
    return NULL;
  memset(d, 0, sizeof(*d));
  d->zone = msgpack_zone_new(HP_ZONE_MIN_CHUNK_BYTES);
  if (d->zone == NULL)
    goto out_free_decoder;
  d->zone_chunk = HP_ZONE_MIN_CHUNK_BYTES;
  return d;

out_free_decoder:
  hp_proto_free(d);
  return NULL;
}

void hp_decoder_free(hp_decoder *d)
{
  if (d == NULL)
    return;
  msgpack_zone_free(d->zone);
  hp_proto_free(d->events);
  hp_proto_free(d);
}

const char *hp_decoder_error(const hp_decoder *d)
{
  return d->err;
}

static HP_NOINLINE HP_COLD HP_PRINTF(3, 4) int fail(hp_decoder *d, int code,
                                                    const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(d->err, sizeof(d->err), fmt, ap);
  va_end(ap);
  return code;
}

/* ---------------------------------------------------------------- pass 1: scan */

/* Name of the message a payload claims to be, for errors raised before it is parsed. */
static const char *peek_type_name(const uint8_t *p, size_t len)
{
  if (len >= 2 && p[0] >= 0x90 && p[0] <= 0x9f && p[1] <= 0x7f &&
      strcmp(hp_msg_type_name(p[1]), "unknown") != 0)
    return hp_msg_type_name(p[1]);
  return "message";
}

static HP_NOINLINE HP_COLD int scan_truncated(hp_decoder *d, const uint8_t *p, size_t len,
                                              size_t at)
{
  if (len == 0)
    return fail(d, -HP_ETRUNC, "empty message: a payload holds one msgpack array");
  return fail(d, -HP_ETRUNC,
              "%s is truncated: the value at byte %zu needs more than the %zu bytes given",
              peek_type_name(p, len), at, len);
}

/* Reads an n-byte big-endian length at *pos; -1 when the bytes are not there. */
static inline int scan_len(const uint8_t *p, size_t len, size_t *pos, unsigned n,
                           uint64_t *out)
{
  if (len - *pos < n)
    return -1;
  uint64_t v = 0;
  for (unsigned i = 0; i < n; i++)
    v = (v << 8) | p[*pos + i];
  *pos += n;
  *out = v;
  return 0;
}

/* What the scan does with each lead byte: >= 0 is the number of bytes that follow a
 * scalar whose size the lead byte fixes (fixint, nil, bool, fixed-width numbers,
 * fixext, fixstr); the negative classes need more work. Table-driven because the scan
 * runs once per value of every message, nine times per event. */
enum { SC_FIXARRAY = -1, SC_FIXMAP = -2, SC_VAR = -3, SC_BAD = -4 };
#define A SC_FIXARRAY
#define M SC_FIXMAP
#define V SC_VAR
#define X SC_BAD
/* One row per 16 bytes, laid out by hand. */
/* clang-format off */
static const int8_t scan_class[256] = {
  /* 00 */ 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
  /* 10 */ 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
  /* 20 */ 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
  /* 30 */ 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
  /* 40 */ 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
  /* 50 */ 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
  /* 60 */ 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
  /* 70 */ 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
  /* 80 */ M,  M,  M,  M,  M,  M,  M,  M,  M,  M,  M,  M,  M,  M,  M,  M,
  /* 90 */ A,  A,  A,  A,  A,  A,  A,  A,  A,  A,  A,  A,  A,  A,  A,  A,
  /* a0 */ 0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15,
  /* b0 */ 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31,
  /* c0 */ 0,  X,  0,  0,  V,  V,  V,  V,  V,  V,  4,  8,  1,  2,  4,  8,
  /* d0 */ 1,  2,  4,  8,  2,  3,  5,  9,  17, V,  V,  V,  V,  V,  V,  V,
  /* e0 */ 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
  /* f0 */ 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
};
/* clang-format on */
#undef A
#undef M
#undef V
#undef X

/* Walks one msgpack value at p[0..]. Returns 0 with *end at the byte after it, or
 * -HP_ETRUNC / -HP_EPARSE / -HP_ELEN. Never reads past p[len-1]. *nobjects is the
 * number of msgpack values, which bounds what msgpack-c will allocate for them. */
static int scan(hp_decoder *d, const uint8_t *p, size_t len, size_t *end,
                uint64_t *nobjects)
{
  uint32_t left[HP_SCAN_MAX_DEPTH + 1]; /* elements still to read at each open level */
  unsigned sp = 0;
  uint64_t pending = 1; /* elements still to read at all levels */
  uint64_t objects = 0;
  size_t pos = 0;
  left[0] = 1;
  for (;;) {
    while (left[sp] == 0) {
      if (sp == 0) {
        assert(pos <= len);
        *end = pos;
        *nobjects = objects;
        return 0;
      }
      sp--;
    }
    /* Fast path: a run of scalars whose size the lead byte fixes (nearly every value of
     * an event), with the counters kept in registers. */
    uint32_t k = left[sp];
    uint32_t k0 = k;
    uint8_t b = 0;
    int c = 0;
    while (k > 0) {
      if (HP_UNLIKELY(pos >= len))
        return scan_truncated(d, p, len, pos);
      b = p[pos];
      c = scan_class[b];
      if (c < 0)
        break;
      if (HP_UNLIKELY((size_t)c >= len - pos)) /* needs 1 + c bytes */
        return scan_truncated(d, p, len, pos);
      pos += 1u + (size_t)c;
      k--;
    }
    pending -= k0 - k;
    objects += k0 - k;
    left[sp] = k;
    if (k == 0)
      continue;
    /* A container or a variable-length value at p[pos]. */
    size_t at = pos++;
    left[sp]--;
    pending--;
    objects++;
    uint64_t n; /* elements of a container */
    if (c == SC_FIXARRAY) {
      n = b & 0x0fu;
    } else if (c == SC_FIXMAP) {
      n = 2u * (b & 0x0fu);
    } else if (c == SC_BAD) {
      return fail(d, -HP_EPARSE,
                  "malformed msgpack: byte 0x%02x at offset %zu is not a "
                  "valid type",
                  b, at);
    } else {
      unsigned lenbytes;
      uint64_t skip = 0;
      int container = 0;
      /* One line per msgpack type, laid out by hand. */
      /* clang-format off */
      switch (b) {
      case 0xc4:
      case 0xd9: lenbytes = 1; break; /* bin8, str8 */
      case 0xc5:
      case 0xda: lenbytes = 2; break; /* bin16, str16 */
      case 0xc6:
      case 0xdb: lenbytes = 4; break; /* bin32, str32 */
      case 0xc7:
        lenbytes = 1;
        skip = 1;
        break; /* ext8 (+type) */
      case 0xc8:
        lenbytes = 2;
        skip = 1;
        break;
      case 0xc9:
        lenbytes = 4;
        skip = 1;
        break;
      case 0xdc:
      case 0xde:
        lenbytes = 2;
        container = 1;
        break; /* array16, map16 */
      default:
        lenbytes = 4;
        container = 1;
        break; /* array32, map32 */
      }
      /* clang-format on */
      uint64_t l;
      if (scan_len(p, len, &pos, lenbytes, &l) < 0)
        return scan_truncated(d, p, len, at);
      if (!container) {
        skip += l;
        if (skip > len - pos)
          return scan_truncated(d, p, len, at);
        pos += (size_t)skip;
        continue;
      }
      n = (b == 0xde || b == 0xdf) ? 2 * l : l;
    }
    if (HP_UNLIKELY(sp + 1 > HP_SCAN_MAX_DEPTH))
      return fail(d, -HP_EPARSE,
                  "%s nests msgpack containers deeper than %u levels "
                  "(at byte %zu)",
                  peek_type_name(p, len), HP_SCAN_MAX_DEPTH, at);
    /* Every element takes at least one byte: more elements than bytes left can only
     * mean a truncated payload (or a lying header, which is the same to us). */
    pending += n;
    if (HP_UNLIKELY(pending > len - pos))
      return scan_truncated(d, p, len, at);
    if (HP_UNLIKELY(objects + pending > HP_SCAN_MAX_OBJECTS))
      return fail(d, -HP_ELEN, "%s holds more than %u msgpack values",
                  peek_type_name(p, len), HP_SCAN_MAX_OBJECTS);
    assert(sp < HP_SCAN_MAX_DEPTH && n <= len); /* both checked just above */
    left[++sp] = (uint32_t)n;
  }
}

/* ---------------------------------------------------------------- pass 2: fields */

static const char *obj_type_name(const msgpack_object *o)
{
  switch (o->type) {
  case MSGPACK_OBJECT_NIL: return "nil";
  case MSGPACK_OBJECT_BOOLEAN: return "a boolean";
  case MSGPACK_OBJECT_POSITIVE_INTEGER: return "an integer";
  case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "a negative integer";
  case MSGPACK_OBJECT_FLOAT32:
  case MSGPACK_OBJECT_FLOAT64: return "a float";
  case MSGPACK_OBJECT_STR: return "a string";
  case MSGPACK_OBJECT_ARRAY: return "an array";
  case MSGPACK_OBJECT_MAP: return "a map";
  case MSGPACK_OBJECT_BIN: return "binary";
  case MSGPACK_OBJECT_EXT: return "an extension";
  default: return "an unknown type";
  }
}

static inline hp_errbuf errbuf(hp_decoder *d)
{
  hp_errbuf eb = {d->err, sizeof(d->err)};
  return eb;
}

static HP_NOINLINE HP_COLD int bad_int(hp_decoder *d, const msgpack_object *o, int t,
                                       unsigned f, int64_t min, uint64_t max)
{
  hp_errbuf eb = errbuf(d);
  if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
    return hp_proto_fail(&eb, -HP_ERANGE, t, f,
                         "%" PRIu64 " is out of range %" PRId64 "..%" PRIu64, o->via.u64,
                         min, max);
  if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
    return hp_proto_fail(&eb, -HP_ERANGE, t, f,
                         "%" PRId64 " is out of range %" PRId64 "..%" PRIu64, o->via.i64,
                         min, max);
  return hp_proto_fail(&eb, -HP_ETYPE, t, f, "expected an integer, got %s",
                       obj_type_name(o));
}

/* An unsigned integer in 0..max. */
static inline int get_uint(hp_decoder *d, const msgpack_object *o, int t, unsigned f,
                           uint64_t max, uint64_t *out)
{
  if (HP_LIKELY(o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= max)) {
    *out = o->via.u64;
    return 0;
  }
  return bad_int(d, o, t, f, 0, max);
}

/* A signed integer in min..max (max <= INT64_MAX). */
static int get_int(hp_decoder *d, const msgpack_object *o, int t, unsigned f, int64_t min,
                   int64_t max, int64_t *out)
{
  if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= (uint64_t)max &&
      (int64_t)o->via.u64 >= min) {
    *out = (int64_t)o->via.u64;
    return 0;
  }
  if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && o->via.i64 >= min &&
      o->via.i64 <= max) {
    *out = o->via.i64;
    return 0;
  }
  return bad_int(d, o, t, f, min, (uint64_t)max);
}

static int get_str(hp_decoder *d, const msgpack_object *o, int t, unsigned f, hp_str *out)
{
  hp_errbuf eb = errbuf(d);
  if (o->type != MSGPACK_OBJECT_STR)
    return hp_proto_fail(&eb, -HP_ETYPE, t, f, "expected a string, got %s",
                         obj_type_name(o));
  if (o->via.str.size > HP_MAX_STR_BYTES)
    return hp_proto_fail(&eb, -HP_ELEN, t, f, "%" PRIu32 " bytes exceed the limit of %u",
                         o->via.str.size, HP_MAX_STR_BYTES);
  out->ptr = o->via.str.size > 0 ? o->via.str.ptr : "";
  out->len = o->via.str.size;
  return 0;
}

static int get_array(hp_decoder *d, const msgpack_object *o, int t, unsigned f,
                     uint32_t max, const msgpack_object **items, uint32_t *n)
{
  hp_errbuf eb = errbuf(d);
  if (o->type != MSGPACK_OBJECT_ARRAY)
    return hp_proto_fail(&eb, -HP_ETYPE, t, f, "expected an array, got %s",
                         obj_type_name(o));
  if (o->via.array.size > max)
    return hp_proto_fail(&eb, -HP_ELEN, t, f,
                         "%" PRIu32 " entries exceed the limit of %" PRIu32,
                         o->via.array.size, max);
  *items = o->via.array.ptr;
  *n = o->via.array.size;
  return 0;
}

static int check_nelem(hp_decoder *d, int t, uint32_t have, uint32_t want)
{
  if (HP_LIKELY(have == want))
    return 0;
  return fail(d, -HP_ETYPE, "%s has %" PRIu32 " elements, expected %" PRIu32,
              hp_msg_type_name(t), have, want);
}

static int decode_hello(hp_decoder *d, const msgpack_object *el, uint32_t n, hp_hello *m)
{
  const int t = HP_MSG_HELLO;
  hp_errbuf eb = errbuf(d);
  const msgpack_object *items = NULL;
  uint32_t count = 0;
  uint64_t u = 0;
  int64_t i64 = 0;
  int rc;
  memset(m, 0, sizeof(*m));
  /* Magic and version come before the shape check, so that a stream from another
   * program or another protocol version gets the error that says so. */
  if (n < HP_F_HELLO_MAGIC || el[HP_F_HELLO_MAGIC - 1].type != MSGPACK_OBJECT_STR ||
      el[HP_F_HELLO_MAGIC - 1].via.str.size != strlen(HP_PROTO_MAGIC) ||
      memcmp(el[HP_F_HELLO_MAGIC - 1].via.str.ptr, HP_PROTO_MAGIC,
             strlen(HP_PROTO_MAGIC)) != 0)
    return hp_proto_fail(&eb, -HP_EMAGIC, t, HP_F_HELLO_MAGIC,
                         "not a heapprof stream (expected the string \"%s\")",
                         HP_PROTO_MAGIC);
  if (n < HP_F_HELLO_VERSION)
    return check_nelem(d, t, n, HP_HELLO_NELEM);
  if ((rc = get_uint(d, &el[HP_F_HELLO_VERSION - 1], t, HP_F_HELLO_VERSION, UINT32_MAX,
                     &u)) < 0)
    return rc;
  if (u != HP_PROTO_VERSION)
    return hp_proto_fail(&eb, -HP_EVERSION, t, HP_F_HELLO_VERSION,
                         "protocol version %" PRIu64 " is not supported (this heapprof "
                         "speaks version %u)",
                         u, HP_PROTO_VERSION);
  m->version = (uint32_t)u;
  if ((rc = check_nelem(d, t, n, HP_HELLO_NELEM)) < 0)
    return rc;
  if ((rc = get_int(d, &el[HP_F_HELLO_PID - 1], t, HP_F_HELLO_PID, 1, INT32_MAX, &i64)) < 0)
    return rc;
  m->pid = i64;
  if ((rc = get_int(d, &el[HP_F_HELLO_PPID - 1], t, HP_F_HELLO_PPID, 0, INT32_MAX, &i64)) <
      0)
    return rc;
  m->ppid = i64;
  if ((rc = get_array(d, &el[HP_F_HELLO_ARGV - 1], t, HP_F_HELLO_ARGV, HP_MAX_ARGV, &items,
                      &count)) < 0)
    return rc;
  for (uint32_t i = 0; i < count; i++) {
    if (items[i].type != MSGPACK_OBJECT_STR)
      return hp_proto_fail(&eb, -HP_ETYPE, t, HP_F_HELLO_ARGV,
                           "entry %" PRIu32 ": expected "
                           "a string, got %s",
                           i, obj_type_name(&items[i]));
    if (items[i].via.str.size > HP_MAX_STR_BYTES)
      return hp_proto_fail(&eb, -HP_ELEN, t, HP_F_HELLO_ARGV,
                           "entry %" PRIu32 ": %" PRIu32 " bytes exceed the limit of %u", i,
                           items[i].via.str.size, HP_MAX_STR_BYTES);
    d->argv[i].ptr = items[i].via.str.size > 0 ? items[i].via.str.ptr : "";
    d->argv[i].len = items[i].via.str.size;
  }
  m->argc = count;
  m->argv = d->argv;
  if ((rc = get_str(d, &el[HP_F_HELLO_EXECUTABLE - 1], t, HP_F_HELLO_EXECUTABLE,
                    &m->executable)) < 0)
    return rc;
  if ((rc = get_str(d, &el[HP_F_HELLO_PYVER - 1], t, HP_F_HELLO_PYVER,
                    &m->python_version)) < 0)
    return rc;
  if ((rc = get_uint(d, &el[HP_F_HELLO_WALL - 1], t, HP_F_HELLO_WALL, HP_MAX_I64,
                     &m->start_wall_ns)) < 0)
    return rc;
  if ((rc = get_uint(d, &el[HP_F_HELLO_MONO - 1], t, HP_F_HELLO_MONO, HP_MAX_I64,
                     &m->start_mono_ns)) < 0)
    return rc;
  if ((rc = get_uint(d, &el[HP_F_HELLO_INTERVAL - 1], t, HP_F_HELLO_INTERVAL, HP_MAX_I64,
                     &m->sample_interval_bytes)) < 0)
    return rc;
  if ((rc = get_uint(d, &el[HP_F_HELLO_DEPTH - 1], t, HP_F_HELLO_DEPTH, HP_MAX_STACK_DEPTH,
                     &u)) < 0)
    return rc;
  m->max_stack_depth = (uint32_t)u;
  if ((rc = get_array(d, &el[HP_F_HELLO_BUCKETS - 1], t, HP_F_HELLO_BUCKETS, HP_MAX_BUCKETS,
                      &items, &count)) < 0)
    return rc;
  for (uint32_t i = 0; i < count; i++) {
    const msgpack_object *b = &items[i];
    if (b->type != MSGPACK_OBJECT_ARRAY || b->via.array.size != HP_BUCKET_NELEM)
      return hp_proto_fail(&eb, -HP_ETYPE, t, HP_F_HELLO_BUCKETS,
                           "bucket %" PRIu32 ": expected an array [max_size, rate]", i);
    const msgpack_object *bf = b->via.array.ptr;
    if (bf[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER)
      return hp_proto_fail(&eb, -HP_ETYPE, t, HP_F_HELLO_BUCKETS,
                           "bucket %" PRIu32 " max_size: expected an integer, got %s", i,
                           obj_type_name(&bf[0]));
    if (bf[1].type != MSGPACK_OBJECT_FLOAT64 && bf[1].type != MSGPACK_OBJECT_FLOAT32)
      return hp_proto_fail(&eb, -HP_ETYPE, t, HP_F_HELLO_BUCKETS,
                           "bucket %" PRIu32 " rate: expected a float, got %s", i,
                           obj_type_name(&bf[1]));
    d->buckets[i].max_size = bf[0].via.u64;
    d->buckets[i].rate = bf[1].via.f64;
  }
  m->nbuckets = count;
  m->buckets = d->buckets;
  return hp_check_hello(m, &eb);
}

static int decode_frame_def(hp_decoder *d, const msgpack_object *el, uint32_t n,
                            hp_frame_def *m)
{
  const int t = HP_MSG_FRAME_DEF;
  hp_errbuf eb = errbuf(d);
  uint64_t u = 0;
  int64_t i64 = 0;
  int rc;
  if ((rc = check_nelem(d, t, n, HP_FRAME_DEF_NELEM)) < 0)
    return rc;
  if ((rc = get_uint(d, &el[HP_F_FRAME_ID - 1], t, HP_F_FRAME_ID, UINT32_MAX, &u)) < 0)
    return rc;
  m->frame_id = (uint32_t)u;
  if ((rc = get_str(d, &el[HP_F_FRAME_FUNCTION - 1], t, HP_F_FRAME_FUNCTION,
                    &m->function)) < 0)
    return rc;
  if ((rc = get_str(d, &el[HP_F_FRAME_FILENAME - 1], t, HP_F_FRAME_FILENAME,
                    &m->filename)) < 0)
    return rc;
  if ((rc = get_int(d, &el[HP_F_FRAME_LINENO - 1], t, HP_F_FRAME_LINENO, 0, INT32_MAX,
                    &i64)) < 0)
    return rc;
  m->lineno = (int32_t)i64;
  return hp_check_frame_def(m, &eb);
}

static int decode_stack_def(hp_decoder *d, const msgpack_object *el, uint32_t n,
                            hp_stack_def *m)
{
  const int t = HP_MSG_STACK_DEF;
  hp_errbuf eb = errbuf(d);
  const msgpack_object *items = NULL;
  uint32_t count = 0;
  uint64_t u = 0;
  int rc;
  if ((rc = check_nelem(d, t, n, HP_STACK_DEF_NELEM)) < 0)
    return rc;
  if ((rc = get_uint(d, &el[HP_F_STACK_ID - 1], t, HP_F_STACK_ID, UINT32_MAX, &u)) < 0)
    return rc;
  m->stack_id = (uint32_t)u;
  if (el[HP_F_STACK_TRUNCATED - 1].type != MSGPACK_OBJECT_BOOLEAN)
    return hp_proto_fail(&eb, -HP_ETYPE, t, HP_F_STACK_TRUNCATED,
                         "expected a boolean, got %s",
                         obj_type_name(&el[HP_F_STACK_TRUNCATED - 1]));
  m->truncated = el[HP_F_STACK_TRUNCATED - 1].via.boolean ? 1 : 0;
  if ((rc = get_array(d, &el[HP_F_STACK_FRAME_IDS - 1], t, HP_F_STACK_FRAME_IDS,
                      HP_MAX_STACK_DEPTH, &items, &count)) < 0)
    return rc;
  for (uint32_t i = 0; i < count; i++) {
    if (items[i].type != MSGPACK_OBJECT_POSITIVE_INTEGER || items[i].via.u64 > UINT32_MAX) {
      if (items[i].type == MSGPACK_OBJECT_POSITIVE_INTEGER ||
          items[i].type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        return hp_proto_fail(&eb, -HP_ERANGE, t, HP_F_STACK_FRAME_IDS,
                             "entry %" PRIu32 " is out of range 1..%" PRIu32, i,
                             UINT32_MAX);
      return hp_proto_fail(&eb, -HP_ETYPE, t, HP_F_STACK_FRAME_IDS,
                           "entry %" PRIu32 ": expected an integer, got %s", i,
                           obj_type_name(&items[i]));
    }
    d->frame_ids[i] = (uint32_t)items[i].via.u64;
  }
  m->depth = count;
  m->frame_ids = d->frame_ids;
  return hp_check_stack_def(m, &eb);
}

/* Diagnoses an event the fast path refused: finds the first bad field and says why. */
static HP_NOINLINE HP_COLD int bad_event(hp_decoder *d, const msgpack_object *eo,
                                         uint32_t i, uint64_t prev)
{
  hp_errbuf eb = errbuf(d);
  if (eo->type != MSGPACK_OBJECT_ARRAY)
    return hp_proto_fail(&eb, -HP_ETYPE, HP_MSG_EVENTS, HP_F_EVENTS_EVENTS,
                         "event %" PRIu32 ": expected an array, got %s", i,
                         obj_type_name(eo));
  uint32_t n = eo->via.array.size;
  const msgpack_object *f = eo->via.array.ptr;
  if (n == 0)
    return hp_proto_fail(&eb, -HP_ETYPE, HP_MSG_EVENTS, HP_F_EVENTS_EVENTS,
                         "event %" PRIu32 " is an empty array", i);
  if (f[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER)
    return hp_proto_fail_event(&eb, -HP_ETYPE, i, 0, HP_F_EV_KIND,
                               "expected an integer, got %s", obj_type_name(&f[0]));
  if (f[0].via.u64 > HP_EV_REATTRIBUTE)
    return hp_proto_fail_event(&eb, -HP_ERANGE, i, 0, HP_F_EV_KIND,
                               "%" PRIu64 " is out of range 0..%u", f[0].via.u64,
                               (unsigned)HP_EV_REATTRIBUTE);
  unsigned kind = (unsigned)f[0].via.u64;
  static const uint32_t nelem[] = {HP_ALLOC_NELEM, HP_FREE_NELEM, HP_REATTR_NELEM};
  static const char *const kind_name[] = {"alloc", "free", "reattribute"};
  if (n != nelem[kind])
    return hp_proto_fail(&eb, -HP_ETYPE, HP_MSG_EVENTS, HP_F_EVENTS_EVENTS,
                         "event %" PRIu32 " (%s) has %" PRIu32
                         " elements, expected %" PRIu32,
                         i, kind_name[kind], n, nelem[kind]);
  for (unsigned k = 1; k < n; k++) {
    if (f[k].type == MSGPACK_OBJECT_POSITIVE_INTEGER)
      continue;
    if (k == HP_F_EV_TS - 1 && f[k].type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
      continue;
    if (f[k].type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
      return hp_proto_fail_event(&eb, -HP_ERANGE, i, kind, k + 1, "%" PRId64 " is negative",
                                 f[k].via.i64);
    return hp_proto_fail_event(&eb, -HP_ETYPE, i, kind, k + 1,
                               "expected an integer, got %s", obj_type_name(&f[k]));
  }
  const msgpack_object *ts = &f[HP_F_EV_TS - 1];
  if (ts->type == MSGPACK_OBJECT_POSITIVE_INTEGER && ts->via.u64 > HP_MAX_I64 - prev)
    return hp_proto_fail_event(&eb, -HP_ERANGE, i, kind, HP_F_EV_TS,
                               "delta %" PRIu64 " takes the timestamp past %" PRIu64
                               " (previous %" PRIu64 ")",
                               ts->via.u64, HP_MAX_I64, prev);
  if (ts->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && (int64_t)prev + ts->via.i64 < 0)
    return hp_proto_fail_event(&eb, -HP_ERANGE, i, kind, HP_F_EV_TS,
                               "delta %" PRId64
                               " takes the timestamp below 0 (previous %" PRIu64 ")",
                               ts->via.i64, prev);
  if (kind == HP_EV_ALLOC) {
    if (f[HP_F_EV_DOMAIN - 1].via.u64 > HP_DOMAIN_NATIVE)
      return hp_proto_fail_event(&eb, -HP_ERANGE, i, kind, HP_F_EV_DOMAIN,
                                 "%" PRIu64 " is out of range 0..%u",
                                 f[HP_F_EV_DOMAIN - 1].via.u64, (unsigned)HP_DOMAIN_NATIVE);
    if (f[HP_F_EV_STACK - 1].via.u64 > UINT32_MAX)
      return hp_proto_fail_event(&eb, -HP_ERANGE, i, kind, HP_F_EV_STACK,
                                 "%" PRIu64 " is out of range 0..%" PRIu32,
                                 f[HP_F_EV_STACK - 1].via.u64, UINT32_MAX);
  }
  if (kind == HP_EV_REATTRIBUTE && f[HP_F_REATTR_STACK - 1].via.u64 > UINT32_MAX)
    return hp_proto_fail_event(&eb, -HP_ERANGE, i, kind, HP_F_REATTR_STACK,
                               "%" PRIu64 " is out of range 0..%" PRIu32,
                               f[HP_F_REATTR_STACK - 1].via.u64, UINT32_MAX);
  return fail(d, -HP_EPARSE, "EVENTS field 3 (events): event %" PRIu32 " is invalid", i);
}

static int decode_events(hp_decoder *d, const msgpack_object *el, uint32_t n, hp_events *m)
{
  const int t = HP_MSG_EVENTS;
  hp_errbuf eb = errbuf(d);
  const msgpack_object *items = NULL;
  uint32_t count = 0;
  uint64_t prev = 0;
  int rc;
  if ((rc = check_nelem(d, t, n, HP_EVENTS_NELEM)) < 0)
    return rc;
  if ((rc = get_uint(d, &el[HP_F_EVENTS_BASE_TS - 1], t, HP_F_EVENTS_BASE_TS, HP_MAX_I64,
                     &prev)) < 0)
    return rc;
  if ((rc = get_array(d, &el[HP_F_EVENTS_EVENTS - 1], t, HP_F_EVENTS_EVENTS,
                      HP_MAX_BATCH_EVENTS, &items, &count)) < 0)
    return rc;
  if (count > d->events_cap) {
    uint32_t cap = d->events_cap ? d->events_cap : 256;
    while (cap < count)
      cap *= 2;
    hp_event *ne = hp_proto_realloc(d->events, (size_t)cap * sizeof(*ne));
    if (ne == NULL)
      return fail(d, -HP_ENOMEM, "out of memory for a batch of %" PRIu32 " events", count);
    d->events = ne;
    d->events_cap = cap;
  }
  hp_event *out = d->events;
  for (uint32_t i = 0; i < count; i++) {
    const msgpack_object *eo = &items[i];
    hp_event *ev = &out[i];
    if (HP_UNLIKELY(eo->type != MSGPACK_OBJECT_ARRAY || eo->via.array.size == 0))
      return bad_event(d, eo, i, prev);
    const msgpack_object *f = eo->via.array.ptr;
    uint32_t nf = eo->via.array.size;
    /* Timestamp delta: signed, and the sum must stay in 0..INT64_MAX. */
    uint64_t ts;
    if (f[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER && nf >= 2 &&
        f[1].type == MSGPACK_OBJECT_POSITIVE_INTEGER && f[1].via.u64 <= HP_MAX_I64 - prev)
      ts = prev + f[1].via.u64;
    else if (f[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER && nf >= 2 &&
             f[1].type == MSGPACK_OBJECT_NEGATIVE_INTEGER &&
             (int64_t)prev + f[1].via.i64 >= 0)
      ts = (uint64_t)((int64_t)prev + f[1].via.i64);
    else
      return bad_event(d, eo, i, prev);
    if (f[0].via.u64 == HP_EV_ALLOC && nf == HP_ALLOC_NELEM) {
      if (HP_UNLIKELY(f[2].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
                      f[3].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
                      f[4].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
                      f[5].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
                      f[6].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
                      f[7].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
                      f[3].via.u64 > HP_DOMAIN_NATIVE || f[7].via.u64 > UINT32_MAX))
        return bad_event(d, eo, i, prev);
      ev->kind = HP_EV_ALLOC;
      ev->domain = (uint8_t)f[3].via.u64;
      ev->stack_id = (uint32_t)f[7].via.u64;
      ev->ts_ns = ts;
      ev->thread_id = f[2].via.u64;
      ev->address = f[4].via.u64;
      ev->size = f[5].via.u64;
      ev->est_bytes = f[6].via.u64;
    } else if (f[0].via.u64 == HP_EV_FREE && nf == HP_FREE_NELEM) {
      if (HP_UNLIKELY(f[2].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
                      f[3].type != MSGPACK_OBJECT_POSITIVE_INTEGER))
        return bad_event(d, eo, i, prev);
      ev->kind = HP_EV_FREE;
      ev->domain = 0;
      ev->stack_id = HP_NO_STACK;
      ev->ts_ns = ts;
      ev->thread_id = f[2].via.u64;
      ev->address = f[3].via.u64;
      ev->size = 0;
      ev->est_bytes = 0;
    } else if (f[0].via.u64 == HP_EV_REATTRIBUTE && nf == HP_REATTR_NELEM) {
      if (HP_UNLIKELY(f[2].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
                      f[3].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
                      f[4].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
                      f[4].via.u64 > UINT32_MAX))
        return bad_event(d, eo, i, prev);
      ev->kind = HP_EV_REATTRIBUTE;
      ev->domain = 0;
      ev->stack_id = (uint32_t)f[4].via.u64;
      ev->ts_ns = ts;
      ev->thread_id = f[2].via.u64;
      ev->address = f[3].via.u64;
      ev->size = 0;
      ev->est_bytes = 0;
    } else {
      return bad_event(d, eo, i, prev);
    }
    if (HP_UNLIKELY((rc = hp_check_event(ev, i, &eb)) < 0))
      return rc;
    prev = ts;
  }
  m->count = count;
  m->events = out;
  return 0;
}

static int decode_counters(hp_decoder *d, const msgpack_object *el, uint32_t n,
                           hp_counters *m)
{
  const int t = HP_MSG_COUNTERS;
  hp_errbuf eb = errbuf(d);
  int rc;
  if ((rc = check_nelem(d, t, n, HP_COUNTERS_NELEM)) < 0)
    return rc;
  if ((rc = get_uint(d, &el[HP_F_COUNTERS_TS - 1], t, HP_F_COUNTERS_TS, HP_MAX_I64,
                     &m->ts_ns)) < 0)
    return rc;
  if ((rc = get_uint(d, &el[HP_F_COUNTERS_DROPPED - 1], t, HP_F_COUNTERS_DROPPED,
                     HP_MAX_I64, &m->events_dropped)) < 0)
    return rc;
  if ((rc = get_uint(d, &el[HP_F_COUNTERS_INTERVAL - 1], t, HP_F_COUNTERS_INTERVAL,
                     HP_MAX_I64, &m->sample_interval_bytes)) < 0)
    return rc;
  if ((rc = get_uint(d, &el[HP_F_COUNTERS_SENT - 1], t, HP_F_COUNTERS_SENT, HP_MAX_I64,
                     &m->events_sent)) < 0)
    return rc;
  return hp_check_counters(m, &eb);
}

static int decode_goodbye(hp_decoder *d, const msgpack_object *el, uint32_t n,
                          hp_goodbye *m)
{
  const int t = HP_MSG_GOODBYE;
  hp_errbuf eb = errbuf(d);
  uint64_t u = 0;
  int rc;
  if ((rc = check_nelem(d, t, n, HP_GOODBYE_NELEM)) < 0)
    return rc;
  if ((rc = get_uint(d, &el[HP_F_GOODBYE_TS - 1], t, HP_F_GOODBYE_TS, HP_MAX_I64,
                     &m->ts_ns)) < 0)
    return rc;
  if ((rc = get_uint(d, &el[HP_F_GOODBYE_DROPPED - 1], t, HP_F_GOODBYE_DROPPED, HP_MAX_I64,
                     &m->events_dropped)) < 0)
    return rc;
  if ((rc = get_uint(d, &el[HP_F_GOODBYE_REASON - 1], t, HP_F_GOODBYE_REASON,
                     HP_END_HOOKS_REPLACED, &u)) < 0)
    return rc;
  m->end_reason = (uint32_t)u;
  return hp_check_goodbye(m, &eb);
}

static int decode_thread_def(hp_decoder *d, const msgpack_object *el, uint32_t n,
                             hp_thread_def *m)
{
  const int t = HP_MSG_THREAD_DEF;
  hp_errbuf eb = errbuf(d);
  int rc;
  if ((rc = check_nelem(d, t, n, HP_THREAD_DEF_NELEM)) < 0)
    return rc;
  if ((rc = get_uint(d, &el[HP_F_THREAD_ID - 1], t, HP_F_THREAD_ID, UINT64_MAX,
                     &m->thread_id)) < 0)
    return rc;
  if ((rc = get_str(d, &el[HP_F_THREAD_NAME - 1], t, HP_F_THREAD_NAME, &m->name)) < 0)
    return rc;
  return hp_check_thread_def(m, &eb);
}

static int decode_marker(hp_decoder *d, const msgpack_object *el, uint32_t n, hp_marker *m)
{
  const int t = HP_MSG_MARKER;
  hp_errbuf eb = errbuf(d);
  int rc;
  if ((rc = check_nelem(d, t, n, HP_MARKER_NELEM)) < 0)
    return rc;
  if ((rc = get_uint(d, &el[HP_F_MARKER_TS - 1], t, HP_F_MARKER_TS, HP_MAX_I64,
                     &m->ts_ns)) < 0)
    return rc;
  if ((rc = get_str(d, &el[HP_F_MARKER_LABEL - 1], t, HP_F_MARKER_LABEL, &m->label)) < 0)
    return rc;
  return hp_check_marker(m, &eb);
}

/* Makes the zone's first chunk big enough for nobjects values (see HP_ZONE_*). */
static int zone_reserve(hp_decoder *d, uint64_t nobjects)
{
  /* Each container's elements are one zone allocation whose size is a multiple of the
   * zone's alignment already; the slack covers the chunk header. */
  uint64_t need = nobjects * sizeof(msgpack_object) + 4096u;
  if (HP_LIKELY(need <= d->zone_chunk) || d->zone_chunk >= HP_ZONE_MAX_CHUNK_BYTES)
    return 0;
  size_t chunk = d->zone_chunk;
  while (chunk < need && chunk < HP_ZONE_MAX_CHUNK_BYTES)
    chunk *= 2;
  if (chunk > HP_ZONE_MAX_CHUNK_BYTES)
    chunk = HP_ZONE_MAX_CHUNK_BYTES;
  msgpack_zone *z = msgpack_zone_new(chunk);
  if (z == NULL)
    return fail(d, -HP_ENOMEM, "out of memory for a %zu-byte decoding zone", chunk);
  msgpack_zone_free(d->zone);
  d->zone = z;
  d->zone_chunk = chunk;
  return 0;
}

int hp_decoder_decode(hp_decoder *d, const uint8_t *payload, size_t len, hp_msg *out)
{
  size_t end = 0;
  uint64_t nobjects = 0;
  int rc;
  d->err[0] = '\0';
  if (payload == NULL && len > 0)
    return fail(d, -HP_EINVAL, "NULL payload of %zu bytes", len);
  if (len > HP_MAX_FRAME_BYTES)
    return fail(d, -HP_ETOOBIG, "payload of %zu bytes exceeds the limit of %u bytes", len,
                HP_MAX_FRAME_BYTES);
  if ((rc = scan(d, payload, len, &end, &nobjects)) < 0)
    return rc;
  if (end != len)
    return fail(d, -HP_ETRAILING, "%zu bytes left over after the %s (%zu bytes)", len - end,
                peek_type_name(payload, len), end);

  /* msgpack_unpack() with the decoder's own zone (msgpack-c's zone API) rather than
   * msgpack_unpack_next(), which frees its msgpack_unpacked zone and allocates a new
   * one on every call. */
  if ((rc = zone_reserve(d, nobjects)) < 0)
    return rc;
  msgpack_zone_clear(d->zone);
  msgpack_object root;
  size_t off = 0;
  msgpack_unpack_return ur = msgpack_unpack((const char *)payload, len, &off, d->zone,
                                            &root);
  if (ur != MSGPACK_UNPACK_SUCCESS) {
    /* The scan accepted the bytes, so only memory can run out here. */
    if (ur == MSGPACK_UNPACK_NOMEM_ERROR)
      return fail(d, -HP_ENOMEM, "out of memory unpacking a %zu-byte message", len);
    return fail(d, -HP_EPARSE, "malformed msgpack (msgpack-c error %d)", (int)ur);
  }
  if (root.type != MSGPACK_OBJECT_ARRAY)
    return fail(d, -HP_ETYPE, "message is %s, expected an array [type, fields...]",
                obj_type_name(&root));
  const msgpack_object *el = root.via.array.ptr;
  uint32_t n = root.via.array.size;
  if (n == 0)
    return fail(d, -HP_ETYPE, "message is an empty array, expected [type, fields...]");
  if (el[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER)
    return fail(d, el[0].type == MSGPACK_OBJECT_NEGATIVE_INTEGER ? -HP_EMSGTYPE : -HP_ETYPE,
                "message field 1 (type): expected a message type 1..%d, got %s",
                (int)HP_MSG_MARKER, obj_type_name(&el[0]));
  switch (el[0].via.u64) {
  case HP_MSG_HELLO: rc = decode_hello(d, el, n, &out->u.hello); break;
  case HP_MSG_FRAME_DEF: rc = decode_frame_def(d, el, n, &out->u.frame_def); break;
  case HP_MSG_STACK_DEF: rc = decode_stack_def(d, el, n, &out->u.stack_def); break;
  case HP_MSG_EVENTS: rc = decode_events(d, el, n, &out->u.events); break;
  case HP_MSG_COUNTERS: rc = decode_counters(d, el, n, &out->u.counters); break;
  case HP_MSG_GOODBYE: rc = decode_goodbye(d, el, n, &out->u.goodbye); break;
  case HP_MSG_THREAD_DEF: rc = decode_thread_def(d, el, n, &out->u.thread_def); break;
  case HP_MSG_MARKER: rc = decode_marker(d, el, n, &out->u.marker); break;
  default:
    return fail(d, -HP_EMSGTYPE,
                "message field 1 (type): unknown message type %" PRIu64 " (known: 1..%d)",
                el[0].via.u64, (int)HP_MSG_MARKER);
  }
  if (rc < 0)
    return rc;
  out->type = (hp_msg_type)el[0].via.u64;
  return 0;
}
