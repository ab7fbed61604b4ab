/* check_codec.c — unit tests of the proto encoder and decoder (proto/hp_encode.c,
 * proto/hp_decode.c, proto/hp_check.c).
 *
 * Round trips go through the real encoder and the real decoder. Malformed input is built
 * with msgpack-c's own packer, independently of our encoder, so that a bug shared by
 * both sides of the codec cannot hide itself. */
#include <check.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "hp_proto.h"
#include "hp_proto_int.h"

Suite *codec_suite(void);

/* ------------------------------------------------------------------ helpers */

/* Payload of the only frame in an encoder, checked against its header. */
static const uint8_t *only_payload(hp_encoder *e, size_t *len) {
  size_t n;
  const uint8_t *p = hp_encoder_data(e, &n);
  ck_assert_uint_ge(n, HP_FRAME_HEADER_BYTES);
  uint32_t hdr = ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
  ck_assert_uint_eq(hdr, n - HP_FRAME_HEADER_BYTES);
  *len = n - HP_FRAME_HEADER_BYTES;
  return p + HP_FRAME_HEADER_BYTES;
}

static int decode_only(hp_decoder *d, hp_encoder *e, hp_msg *m) {
  size_t len;
  const uint8_t *p = only_payload(e, &len);
  return hp_decoder_decode(d, p, len, m);
}

static int str_is(hp_str s, const char *want) {
  return s.len == strlen(want) && memcmp(s.ptr, want, s.len) == 0;
}

static hp_str S(const char *s) {
  hp_str r = { s, (uint32_t)strlen(s) };
  return r;
}

#define ARRAY_LEN(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* Builder for hand-made payloads: a canonical valid message of each type, in which the
 * element at position `bad` (1-based, 0 for none) is replaced by calling `repl`. */
typedef void (*repl_fn)(msgpack_packer *pk);

static void repl_str(msgpack_packer *pk) { msgpack_pack_str_with_body(pk, "x", 1); }
static void repl_nil(msgpack_packer *pk) { msgpack_pack_nil(pk); }
static void repl_map(msgpack_packer *pk) { msgpack_pack_map(pk, 0); }
static void repl_float(msgpack_packer *pk) { msgpack_pack_double(pk, 1.5); }
static void repl_int(msgpack_packer *pk) { msgpack_pack_uint32(pk, 7); }

#define FIELD(k, expr) do { if ((k) == bad) repl(pk); else { expr; } } while (0)

static void pack_str(msgpack_packer *pk, const char *s) {
  msgpack_pack_str_with_body(pk, s, strlen(s));
}

static void pack_valid(msgpack_packer *pk, int type, unsigned bad, repl_fn repl) {
  switch (type) {
  case HP_MSG_HELLO:
    msgpack_pack_array(pk, 13);
    FIELD(1, msgpack_pack_uint8(pk, 1));
    FIELD(2, pack_str(pk, "heapprof"));
    FIELD(3, msgpack_pack_uint8(pk, HP_PROTO_VERSION));
    FIELD(4, msgpack_pack_int64(pk, 4242));
    FIELD(5, msgpack_pack_int64(pk, 1));
    FIELD(6, msgpack_pack_array(pk, 2); pack_str(pk, "prog.py"); pack_str(pk, "-v"));
    FIELD(7, pack_str(pk, "/usr/bin/python3"));
    FIELD(8, pack_str(pk, "3.11.2"));
    FIELD(9, msgpack_pack_uint64(pk, 1700000000000000000ull));
    FIELD(10, msgpack_pack_uint64(pk, 5000));
    FIELD(11, msgpack_pack_uint64(pk, 0));
    FIELD(12, msgpack_pack_uint32(pk, 64));
    FIELD(13, msgpack_pack_array(pk, 2);
          msgpack_pack_array(pk, 2); msgpack_pack_uint64(pk, 64); msgpack_pack_double(pk, 0.01);
          msgpack_pack_array(pk, 2); msgpack_pack_uint64(pk, 1u << 20);
          msgpack_pack_double(pk, 1.0));
    break;
  case HP_MSG_FRAME_DEF:
    msgpack_pack_array(pk, 5);
    FIELD(1, msgpack_pack_uint8(pk, 2));
    FIELD(2, msgpack_pack_uint32(pk, 7));
    FIELD(3, pack_str(pk, "main"));
    FIELD(4, pack_str(pk, "prog.py"));
    FIELD(5, msgpack_pack_int32(pk, 12));
    break;
  case HP_MSG_STACK_DEF:
    msgpack_pack_array(pk, 4);
    FIELD(1, msgpack_pack_uint8(pk, 3));
    FIELD(2, msgpack_pack_uint32(pk, 9));
    FIELD(3, msgpack_pack_false(pk));
    FIELD(4, msgpack_pack_array(pk, 2); msgpack_pack_uint32(pk, 7); msgpack_pack_uint32(pk, 8));
    break;
  case HP_MSG_EVENTS:
    msgpack_pack_array(pk, 3);
    FIELD(1, msgpack_pack_uint8(pk, 4));
    FIELD(2, msgpack_pack_uint64(pk, 1000));
    FIELD(3, msgpack_pack_array(pk, 3);
          msgpack_pack_array(pk, 8); msgpack_pack_uint8(pk, 0); msgpack_pack_int64(pk, 0);
          msgpack_pack_uint64(pk, 1); msgpack_pack_uint8(pk, 3);
          msgpack_pack_uint64(pk, 0x7f0000001000ull); msgpack_pack_uint64(pk, 32);
          msgpack_pack_uint64(pk, 512); msgpack_pack_uint32(pk, 9);
          msgpack_pack_array(pk, 5); msgpack_pack_uint8(pk, 2); msgpack_pack_int64(pk, 3);
          msgpack_pack_uint64(pk, 2); msgpack_pack_uint64(pk, 0x7f0000001000ull);
          msgpack_pack_uint32(pk, 9);
          msgpack_pack_array(pk, 4); msgpack_pack_uint8(pk, 1); msgpack_pack_int64(pk, 5);
          msgpack_pack_uint64(pk, 1); msgpack_pack_uint64(pk, 0x7f0000001000ull));
    break;
  case HP_MSG_COUNTERS:
    msgpack_pack_array(pk, 5);
    FIELD(1, msgpack_pack_uint8(pk, 5));
    FIELD(2, msgpack_pack_uint64(pk, 2000));
    FIELD(3, msgpack_pack_uint64(pk, 3));
    FIELD(4, msgpack_pack_uint64(pk, 4096));
    FIELD(5, msgpack_pack_uint64(pk, 70000));
    break;
  case HP_MSG_GOODBYE:
    msgpack_pack_array(pk, 4);
    FIELD(1, msgpack_pack_uint8(pk, 6));
    FIELD(2, msgpack_pack_uint64(pk, 3000));
    FIELD(3, msgpack_pack_uint64(pk, 3));
    FIELD(4, msgpack_pack_uint8(pk, 1));
    break;
  case HP_MSG_THREAD_DEF:
    msgpack_pack_array(pk, 3);
    FIELD(1, msgpack_pack_uint8(pk, 7));
    FIELD(2, msgpack_pack_uint32(pk, 31337));
    FIELD(3, pack_str(pk, "worker-1"));
    break;
  case HP_MSG_MARKER:
    msgpack_pack_array(pk, 3);
    FIELD(1, msgpack_pack_uint8(pk, 8));
    FIELD(2, msgpack_pack_uint64(pk, 4000));
    FIELD(3, pack_str(pk, "phase 2"));
    break;
  default:
    ck_abort_msg("bad type in test");
  }
}

static const unsigned nelem_of[] = { 0, 13, 5, 4, 3, 5, 4, 3, 3 };

/* Decodes the hand-made message; returns the code and keeps the error text. */
static int decode_built(int type, unsigned bad, repl_fn repl, char *err, size_t errlen) {
  msgpack_sbuffer sb;
  msgpack_packer pk;
  msgpack_sbuffer_init(&sb);
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  pack_valid(&pk, type, bad, repl);
  hp_decoder *d = hp_decoder_new();
  ck_assert_ptr_nonnull(d);
  hp_msg m;
  int rc = hp_decoder_decode(d, (const uint8_t *)sb.data, sb.size, &m);
  if (err != NULL)
    snprintf(err, errlen, "%s", hp_decoder_error(d));
  if (rc == 0)
    ck_assert_int_eq(m.type, type);
  hp_decoder_free(d);
  msgpack_sbuffer_destroy(&sb);
  return rc;
}

static void pack_hello_prefix(msgpack_packer *pk);
static void pack_hello_suffix(msgpack_packer *pk, uint32_t depth);
static void pack_hello_until_buckets(msgpack_packer *pk, uint64_t interval);

/* Decodes raw bytes with a fresh decoder. */
static int decode_bytes(const void *p, size_t len, char *err, size_t errlen) {
  hp_decoder *d = hp_decoder_new();
  ck_assert_ptr_nonnull(d);
  hp_msg m;
  int rc = hp_decoder_decode(d, p, len, &m);
  if (err != NULL)
    snprintf(err, errlen, "%s", hp_decoder_error(d));
  hp_decoder_free(d);
  return rc;
}

/* The checks every table-driven decode case makes; `name` is the case's name in failure
 * messages. err_has / err_is NULL: that part of the message is not checked. */
static void assert_decoded(const char *name, int rc, const char *err, int want,
                           const char *err_has, const char *err_is) {
  ck_assert_msg(rc == want, "%s: got %d (%s), want %d (%s)", name, rc, hp_strerror(rc), want,
                err);
  if (err_has != NULL)
    ck_assert_msg(strstr(err, err_has) != NULL, "%s: '%s' lacks '%s'", name, err, err_has);
  if (err_is != NULL)
    ck_assert_msg(strcmp(err, err_is) == 0, "%s: '%s' is not '%s'", name, err, err_is);
}

/* A complete valid HELLO with bucket sampling. */
static const hp_str test_argv[] = { { "prog.py", 7 }, { "--flag", 6 }, { "", 0 } };
static const hp_bucket test_buckets[] = { { 64, 0.01 }, { 4096, 0.25 }, { UINT64_MAX, 1.0 } };

static hp_hello make_hello(void) {
  hp_hello h;
  memset(&h, 0, sizeof(h));
  h.version = HP_PROTO_VERSION;
  h.pid = 4242;
  h.ppid = 1;
  h.argc = 3;
  h.argv = test_argv;
  h.executable = S("/usr/bin/python3");
  h.python_version = S("3.11.2");
  h.start_wall_ns = 1700000000123456789ull;
  h.start_mono_ns = 987654321ull;
  h.sample_interval_bytes = 0;
  h.max_stack_depth = 128;
  h.nbuckets = 3;
  h.buckets = test_buckets;
  return h;
}

/* ------------------------------------------------------------------ core */

START_TEST(roundtrip_hello_with_buckets) {
  hp_encoder *e = hp_encoder_new(0);
  hp_decoder *d = hp_decoder_new();
  hp_hello h = make_hello();
  ck_assert_int_eq(hp_encode_hello(e, &h), 0);
  hp_msg m;
  ck_assert_int_eq(decode_only(d, e, &m), 0);
  ck_assert_str_eq(hp_decoder_error(d), "");
  ck_assert_int_eq(m.type, HP_MSG_HELLO);
  const hp_hello *g = &m.u.hello;
  ck_assert_uint_eq(g->version, HP_PROTO_VERSION);
  ck_assert_int_eq(g->pid, 4242);
  ck_assert_int_eq(g->ppid, 1);
  ck_assert_uint_eq(g->argc, 3);
  ck_assert(str_is(g->argv[0], "prog.py"));
  ck_assert(str_is(g->argv[1], "--flag"));
  ck_assert(str_is(g->argv[2], ""));
  ck_assert(str_is(g->executable, "/usr/bin/python3"));
  ck_assert(str_is(g->python_version, "3.11.2"));
  ck_assert_uint_eq(g->start_wall_ns, 1700000000123456789ull);
  ck_assert_uint_eq(g->start_mono_ns, 987654321ull);
  ck_assert_uint_eq(g->sample_interval_bytes, 0);
  ck_assert_uint_eq(g->max_stack_depth, 128);
  ck_assert_uint_eq(g->nbuckets, 3);
  for (int i = 0; i < 3; i++) {
    ck_assert_uint_eq(g->buckets[i].max_size, test_buckets[i].max_size);
    ck_assert(g->buckets[i].rate == test_buckets[i].rate);
  }
  hp_decoder_free(d);
  hp_encoder_free(e);
}
END_TEST

START_TEST(roundtrip_hello_with_interval_and_no_argv) {
  hp_encoder *e = hp_encoder_new(16);
  hp_decoder *d = hp_decoder_new();
  hp_hello h = make_hello();
  h.argc = 0;
  h.argv = NULL;
  h.nbuckets = 0;
  h.buckets = NULL;
  h.sample_interval_bytes = 512 * 1024;
  h.pid = INT32_MAX;
  h.ppid = 0;
  h.max_stack_depth = HP_MAX_STACK_DEPTH;
  ck_assert_int_eq(hp_encode_hello(e, &h), 0);
  hp_msg m;
  ck_assert_int_eq(decode_only(d, e, &m), 0);
  ck_assert_uint_eq(m.u.hello.argc, 0);
  ck_assert_uint_eq(m.u.hello.nbuckets, 0);
  ck_assert_uint_eq(m.u.hello.sample_interval_bytes, 512 * 1024);
  ck_assert_int_eq(m.u.hello.pid, INT32_MAX);
  ck_assert_int_eq(m.u.hello.ppid, 0);
  ck_assert_uint_eq(m.u.hello.max_stack_depth, HP_MAX_STACK_DEPTH);
  hp_decoder_free(d);
  hp_encoder_free(e);
}
END_TEST

START_TEST(roundtrip_frame_def) {
  hp_encoder *e = hp_encoder_new(0);
  hp_decoder *d = hp_decoder_new();
  hp_frame_def f = { UINT32_MAX, S("Klass.method"), S("/src/some file.py"), INT32_MAX };
  ck_assert_int_eq(hp_encode_frame_def(e, &f), 0);
  hp_msg m;
  ck_assert_int_eq(decode_only(d, e, &m), 0);
  ck_assert_int_eq(m.type, HP_MSG_FRAME_DEF);
  ck_assert_uint_eq(m.u.frame_def.frame_id, UINT32_MAX);
  ck_assert(str_is(m.u.frame_def.function, "Klass.method"));
  ck_assert(str_is(m.u.frame_def.filename, "/src/some file.py"));
  ck_assert_int_eq(m.u.frame_def.lineno, INT32_MAX);

  hp_encoder_reset(e);
  hp_frame_def z = { 1, S(""), S(""), 0 };
  ck_assert_int_eq(hp_encode_frame_def(e, &z), 0);
  ck_assert_int_eq(decode_only(d, e, &m), 0);
  ck_assert_uint_eq(m.u.frame_def.frame_id, 1);
  ck_assert_uint_eq(m.u.frame_def.function.len, 0);
  ck_assert_ptr_nonnull(m.u.frame_def.function.ptr);
  ck_assert_int_eq(m.u.frame_def.lineno, 0);
  hp_decoder_free(d);
  hp_encoder_free(e);
}
END_TEST

START_TEST(roundtrip_stack_def_full_depth) {
  hp_encoder *e = hp_encoder_new(0);
  hp_decoder *d = hp_decoder_new();
  uint32_t ids[HP_MAX_STACK_DEPTH];
  for (uint32_t i = 0; i < HP_MAX_STACK_DEPTH; i++)
    ids[i] = i * 2654435761u | 1u;
  hp_stack_def s = { 77, 1, HP_MAX_STACK_DEPTH, ids };
  ck_assert_int_eq(hp_encode_stack_def(e, &s), 0);
  hp_msg m;
  ck_assert_int_eq(decode_only(d, e, &m), 0);
  ck_assert_int_eq(m.type, HP_MSG_STACK_DEF);
  ck_assert_uint_eq(m.u.stack_def.stack_id, 77);
  ck_assert_uint_eq(m.u.stack_def.truncated, 1);
  ck_assert_uint_eq(m.u.stack_def.depth, HP_MAX_STACK_DEPTH);
  ck_assert_mem_eq(m.u.stack_def.frame_ids, ids, sizeof(ids));

  hp_encoder_reset(e);
  uint32_t one = 5;
  hp_stack_def s1 = { 1, 0, 1, &one };
  ck_assert_int_eq(hp_encode_stack_def(e, &s1), 0);
  ck_assert_int_eq(decode_only(d, e, &m), 0);
  ck_assert_uint_eq(m.u.stack_def.truncated, 0);
  ck_assert_uint_eq(m.u.stack_def.depth, 1);
  ck_assert_uint_eq(m.u.stack_def.frame_ids[0], 5);
  hp_decoder_free(d);
  hp_encoder_free(e);
}
END_TEST

/* Timestamps out of order (several threads share one ring) and at both extremes. */
static void fill_events(hp_event *ev, uint32_t n) {
  memset(ev, 0, sizeof(*ev) * n);
  for (uint32_t i = 0; i < n; i++) {
    if (i % 6 == 2) {
      ev[i].kind = HP_EV_FREE;
      ev[i].address = 0x7f0000000000ull + 16u * (i - 1);
    } else if (i % 6 == 5) {
      ev[i].kind = HP_EV_REATTRIBUTE;
      ev[i].address = 0x7f0000000000ull + 16u * (i - 1);
      ev[i].stack_id = i % 4 == 0 ? HP_NO_STACK : i;
    } else {
      ev[i].kind = HP_EV_ALLOC;
      ev[i].domain = (uint8_t)(i % 4);
      ev[i].stack_id = i % 5 == 0 ? HP_NO_STACK : i;
      ev[i].address = 0x7f0000000000ull + 16u * i;
      ev[i].size = i * 7u;
      ev[i].est_bytes = i * 7u + 100000u;
    }
    ev[i].thread_id = 140000000000000ull + i % 4;
    ev[i].ts_ns = 1000000000ull + (uint64_t)i * 1000u - (i % 2 ? 1500u : 0u);
  }
}

static void assert_events_eq(const hp_event *a, const hp_event *b, uint32_t n) {
  for (uint32_t i = 0; i < n; i++) {
    ck_assert_uint_eq(a[i].kind, b[i].kind);
    ck_assert_uint_eq(a[i].ts_ns, b[i].ts_ns);
    ck_assert_uint_eq(a[i].thread_id, b[i].thread_id);
    ck_assert_uint_eq(a[i].address, b[i].address);
    if (a[i].kind == HP_EV_ALLOC) {
      ck_assert_uint_eq(a[i].domain, b[i].domain);
      ck_assert_uint_eq(a[i].stack_id, b[i].stack_id);
      ck_assert_uint_eq(a[i].size, b[i].size);
      ck_assert_uint_eq(a[i].est_bytes, b[i].est_bytes);
    } else if (a[i].kind == HP_EV_REATTRIBUTE) {
      ck_assert_uint_eq(a[i].stack_id, b[i].stack_id);
      ck_assert_uint_eq(b[i].domain, 0);
      ck_assert_uint_eq(b[i].size, 0);
      ck_assert_uint_eq(b[i].est_bytes, 0);
    } else {
      ck_assert_uint_eq(b[i].size, 0);
      ck_assert_uint_eq(b[i].est_bytes, 0);
      ck_assert_uint_eq(b[i].stack_id, HP_NO_STACK);
    }
  }
}

START_TEST(roundtrip_events_full_batch) {
  hp_encoder *e = hp_encoder_new(0);
  hp_decoder *d = hp_decoder_new();
  hp_event *ev = malloc(sizeof(*ev) * HP_MAX_BATCH_EVENTS);
  fill_events(ev, HP_MAX_BATCH_EVENTS);
  ck_assert_int_eq(hp_encode_events(e, ev, HP_MAX_BATCH_EVENTS), 0);
  hp_msg m;
  ck_assert_int_eq(decode_only(d, e, &m), 0);
  ck_assert_int_eq(m.type, HP_MSG_EVENTS);
  ck_assert_uint_eq(m.u.events.count, HP_MAX_BATCH_EVENTS);
  assert_events_eq(ev, m.u.events.events, HP_MAX_BATCH_EVENTS);
  free(ev);
  hp_decoder_free(d);
  hp_encoder_free(e);
}
END_TEST

START_TEST(roundtrip_events_extreme_values) {
  hp_encoder *e = hp_encoder_new(0);
  hp_decoder *d = hp_decoder_new();
  hp_event ev[6];
  memset(ev, 0, sizeof(ev));
  ev[0] = (hp_event){ HP_EV_ALLOC, HP_DOMAIN_OBJ, UINT32_MAX, (uint64_t)INT64_MAX, UINT64_MAX,
                      UINT64_MAX, (uint64_t)INT64_MAX, (uint64_t)INT64_MAX };
  ev[1] = (hp_event){ HP_EV_FREE, 0, 0, 0, 0, 0, 0, 0 };   /* delta of -INT64_MAX */
  ev[2] = (hp_event){ HP_EV_ALLOC, HP_DOMAIN_RAW, HP_NO_STACK, (uint64_t)INT64_MAX, 0, 1, 0, 0 };
  ev[3] = (hp_event){ HP_EV_FREE, 0, 0, 5, 1, UINT64_MAX, 0, 0 };
  ev[4] = (hp_event){ HP_EV_REATTRIBUTE, 0, UINT32_MAX, (uint64_t)INT64_MAX, UINT64_MAX,
                      UINT64_MAX, 0, 0 };
  ev[5] = (hp_event){ HP_EV_ALLOC, HP_DOMAIN_NATIVE, HP_NO_STACK, 0, UINT64_MAX, 0, 0, 0 };
  ck_assert_int_eq(hp_encode_events(e, ev, 6), 0);
  hp_msg m;
  ck_assert_int_eq(decode_only(d, e, &m), 0);
  ck_assert_uint_eq(m.u.events.count, 6);
  assert_events_eq(ev, m.u.events.events, 6);

  hp_encoder_reset(e);
  ck_assert_int_eq(hp_encode_events(e, NULL, 0), 0);
  ck_assert_int_eq(decode_only(d, e, &m), 0);
  ck_assert_int_eq(m.type, HP_MSG_EVENTS);
  ck_assert_uint_eq(m.u.events.count, 0);
  hp_decoder_free(d);
  hp_encoder_free(e);
}
END_TEST

START_TEST(roundtrip_counters_and_goodbye) {
  hp_encoder *e = hp_encoder_new(0);
  hp_decoder *d = hp_decoder_new();
  hp_counters c = { 123456789, 42, (uint64_t)INT64_MAX, (uint64_t)INT64_MAX - 1 };
  hp_goodbye g = { (uint64_t)INT64_MAX, 0, HP_END_STOPPED };
  ck_assert_int_eq(hp_encode_counters(e, &c), 0);
  hp_msg m;
  ck_assert_int_eq(decode_only(d, e, &m), 0);
  ck_assert_int_eq(m.type, HP_MSG_COUNTERS);
  ck_assert_uint_eq(m.u.counters.ts_ns, 123456789);
  ck_assert_uint_eq(m.u.counters.events_dropped, 42);
  ck_assert_uint_eq(m.u.counters.sample_interval_bytes, (uint64_t)INT64_MAX);
  ck_assert_uint_eq(m.u.counters.events_sent, (uint64_t)INT64_MAX - 1);
  hp_encoder_reset(e);
  ck_assert_int_eq(hp_encode_goodbye(e, &g), 0);
  ck_assert_int_eq(decode_only(d, e, &m), 0);
  ck_assert_int_eq(m.type, HP_MSG_GOODBYE);
  ck_assert_uint_eq(m.u.goodbye.ts_ns, (uint64_t)INT64_MAX);
  ck_assert_uint_eq(m.u.goodbye.events_dropped, 0);
  ck_assert_uint_eq(m.u.goodbye.end_reason, HP_END_STOPPED);
  hp_encoder_reset(e);
  g = (hp_goodbye){ 5, 7, HP_END_HOOKS_REPLACED };
  ck_assert_int_eq(hp_encode_goodbye(e, &g), 0);
  ck_assert_int_eq(decode_only(d, e, &m), 0);
  ck_assert_uint_eq(m.u.goodbye.end_reason, HP_END_HOOKS_REPLACED);
  ck_assert_uint_eq(m.u.goodbye.events_dropped, 7);
  hp_decoder_free(d);
  hp_encoder_free(e);
}
END_TEST

START_TEST(roundtrip_thread_def_and_marker) {
  hp_encoder *e = hp_encoder_new(0);
  hp_decoder *d = hp_decoder_new();
  hp_thread_def t = { UINT64_MAX, S("MainThread") };
  ck_assert_int_eq(hp_encode_thread_def(e, &t), 0);
  hp_msg m;
  ck_assert_int_eq(decode_only(d, e, &m), 0);
  ck_assert_int_eq(m.type, HP_MSG_THREAD_DEF);
  ck_assert_uint_eq(m.u.thread_def.thread_id, UINT64_MAX);
  ck_assert(str_is(m.u.thread_def.name, "MainThread"));

  hp_encoder_reset(e);
  hp_thread_def unnamed = { 0, S("") };
  ck_assert_int_eq(hp_encode_thread_def(e, &unnamed), 0);
  ck_assert_int_eq(decode_only(d, e, &m), 0);
  ck_assert_uint_eq(m.u.thread_def.thread_id, 0);
  ck_assert_uint_eq(m.u.thread_def.name.len, 0);
  ck_assert_ptr_nonnull(m.u.thread_def.name.ptr);

  hp_encoder_reset(e);
  hp_marker k = { (uint64_t)INT64_MAX, S("after load: 3 files") };
  ck_assert_int_eq(hp_encode_marker(e, &k), 0);
  ck_assert_int_eq(decode_only(d, e, &m), 0);
  ck_assert_int_eq(m.type, HP_MSG_MARKER);
  ck_assert_uint_eq(m.u.marker.ts_ns, (uint64_t)INT64_MAX);
  ck_assert(str_is(m.u.marker.label, "after load: 3 files"));
  hp_decoder_free(d);
  hp_encoder_free(e);
}
END_TEST

/* The encoder holds exactly `want`, frame headers included. */
static void assert_encoded_bytes(hp_encoder *e, const uint8_t *want, size_t len) {
  size_t n;
  const uint8_t *p = hp_encoder_data(e, &n);
  ck_assert_uint_eq(n, len);
  ck_assert_mem_eq(p, want, len);
}

/* The examples in PROTOCOL.md, byte for byte. */
START_TEST(goodbye_bytes_match_the_spec_example) {
  hp_encoder *e = hp_encoder_new(0);
  hp_goodbye g = { 1500000000ull, 3, HP_END_STOPPED };
  ck_assert_int_eq(hp_encode_goodbye(e, &g), 0);
  static const uint8_t want[] = { 0x00, 0x00, 0x00, 0x09, 0x94, 0x06, 0xce,
                                  0x59, 0x68, 0x2f, 0x00, 0x03, 0x00 };
  assert_encoded_bytes(e, want, sizeof(want));
  hp_encoder_free(e);
}
END_TEST

START_TEST(reattribute_and_marker_bytes_match_the_spec_example) {
  hp_encoder *e = hp_encoder_new(0);
  hp_event ev = { HP_EV_REATTRIBUTE, 0, 5, 2000, 4242, 0x1000, 0, 0 };
  ck_assert_int_eq(hp_encode_events(e, &ev, 1), 0);
  hp_marker k = { 2500, S("loaded") };
  ck_assert_int_eq(hp_encode_marker(e, &k), 0);
  static const uint8_t want[] = {
    0x00, 0x00, 0x00, 0x10,
    0x93, 0x04, 0xcd, 0x07, 0xd0, 0x91,
    0x95, 0x02, 0x00, 0xcd, 0x10, 0x92, 0xcd, 0x10, 0x00, 0x05,
    0x00, 0x00, 0x00, 0x0c,
    0x93, 0x08, 0xcd, 0x09, 0xc4, 0xa6, 'l', 'o', 'a', 'd', 'e', 'd',
  };
  assert_encoded_bytes(e, want, sizeof(want));
  hp_encoder_free(e);
}
END_TEST

START_TEST(events_bytes_match_the_spec_example) {
  hp_encoder *e = hp_encoder_new(0);
  hp_event ev[2] = {
    { HP_EV_ALLOC, HP_DOMAIN_OBJ, 3, 1000, 1, 0x1000, 32, 4096 },
    { HP_EV_FREE, 0, 0, 990, 1, 0x1000, 0, 0 },
  };
  ck_assert_int_eq(hp_encode_events(e, ev, 2), 0);
  static const uint8_t want[] = {
    0x00, 0x00, 0x00, 0x1a,
    0x93, 0x04, 0xcd, 0x03, 0xe8, 0x92,
    0x98, 0x00, 0x00, 0x01, 0x02, 0xcd, 0x10, 0x00, 0x20, 0xcd, 0x10, 0x00, 0x03,
    0x94, 0x01, 0xf6, 0x01, 0xcd, 0x10, 0x00,
  };
  assert_encoded_bytes(e, want, sizeof(want));
  hp_encoder_free(e);
}
END_TEST

START_TEST(encoder_appends_frames_and_resets) {
  hp_encoder *e = hp_encoder_new(8);
  hp_decoder *d = hp_decoder_new();
  hp_goodbye g = { 1, 2, 0 };
  hp_counters c = { 3, 4, 5, 6 };
  ck_assert_int_eq(hp_encode_counters(e, &c), 0);
  ck_assert_int_eq(hp_encode_goodbye(e, &g), 0);
  size_t n;
  const uint8_t *p = hp_encoder_data(e, &n);
  uint32_t l1 = ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
  ck_assert_uint_lt(l1 + 8u, n);
  hp_msg m;
  ck_assert_int_eq(hp_decoder_decode(d, p + 4, l1, &m), 0);
  ck_assert_int_eq(m.type, HP_MSG_COUNTERS);
  const uint8_t *q = p + 4 + l1;
  uint32_t l2 = ((uint32_t)q[0] << 24) | ((uint32_t)q[1] << 16) | ((uint32_t)q[2] << 8) | q[3];
  ck_assert_uint_eq(4u + l1 + 4u + l2, n);
  ck_assert_int_eq(hp_decoder_decode(d, q + 4, l2, &m), 0);
  ck_assert_int_eq(m.type, HP_MSG_GOODBYE);
  ck_assert_uint_eq(m.u.goodbye.events_dropped, 2);
  hp_encoder_reset(e);
  hp_encoder_data(e, &n);
  ck_assert_uint_eq(n, 0);
  hp_decoder_free(d);
  hp_encoder_free(e);
}
END_TEST

START_TEST(msg_type_names) {
  ck_assert_str_eq(hp_msg_type_name(HP_MSG_HELLO), "HELLO");
  ck_assert_str_eq(hp_msg_type_name(HP_MSG_FRAME_DEF), "FRAME_DEF");
  ck_assert_str_eq(hp_msg_type_name(HP_MSG_STACK_DEF), "STACK_DEF");
  ck_assert_str_eq(hp_msg_type_name(HP_MSG_EVENTS), "EVENTS");
  ck_assert_str_eq(hp_msg_type_name(HP_MSG_COUNTERS), "COUNTERS");
  ck_assert_str_eq(hp_msg_type_name(HP_MSG_GOODBYE), "GOODBYE");
  ck_assert_str_eq(hp_msg_type_name(HP_MSG_THREAD_DEF), "THREAD_DEF");
  ck_assert_str_eq(hp_msg_type_name(HP_MSG_MARKER), "MARKER");
  ck_assert_str_eq(hp_msg_type_name(0), "unknown");
  ck_assert_str_eq(hp_msg_type_name(9), "unknown");
}
END_TEST

/* The hand-made canonical messages are valid: the error tests below change one thing. */
START_TEST(decode_hand_made_messages) {
  char err[256];
  for (int t = HP_MSG_HELLO; t <= HP_MSG_MARKER; t++)
    ck_assert_msg(decode_built(t, 0, NULL, err, sizeof(err)) == 0, "%s: %s",
                  hp_msg_type_name(t), err);
}
END_TEST

/* The same decoder keeps working across messages of every kind and after errors. */
START_TEST(decoder_is_reusable_after_errors) {
  hp_encoder *e = hp_encoder_new(0);
  hp_decoder *d = hp_decoder_new();
  hp_event ev[3];
  fill_events(ev, 3);
  hp_msg m;
  for (int round = 0; round < 3; round++) {
    hp_encoder_reset(e);
    ck_assert_int_eq(hp_encode_events(e, ev, 3), 0);
    ck_assert_int_eq(decode_only(d, e, &m), 0);
    assert_events_eq(ev, m.u.events.events, 3);
    static const uint8_t junk[] = { 0x92, 0x04, 0xc1 };
    ck_assert_int_eq(hp_decoder_decode(d, junk, sizeof(junk), &m), -HP_EPARSE);
    ck_assert_str_ne(hp_decoder_error(d), "");
  }
  hp_decoder_free(d);
  hp_encoder_free(e);
}
END_TEST

/* ------------------------------------------------------------------ truncation */

static void check_every_prefix_is_truncated(hp_encoder *e) {
  size_t len;
  const uint8_t *p = only_payload(e, &len);
  hp_decoder *d = hp_decoder_new();
  hp_msg m;
  for (size_t cut = 0; cut < len; cut++) {
    /* A heap copy of exactly `cut` bytes, so ASan catches any read past the end. */
    uint8_t *copy = malloc(cut ? cut : 1);
    memcpy(copy, p, cut);
    int rc = hp_decoder_decode(d, copy, cut, &m);
    ck_assert_msg(rc == -HP_ETRUNC, "cut at %zu of %zu: got %d (%s)", cut, len, rc,
                  hp_decoder_error(d));
    ck_assert_str_ne(hp_decoder_error(d), "");
    free(copy);
  }
  ck_assert_int_eq(hp_decoder_decode(d, p, len, &m), 0);
  hp_decoder_free(d);
}

START_TEST(decode_rejects_every_truncation) {
  hp_encoder *e = hp_encoder_new(0);
  hp_hello h = make_hello();
  ck_assert_int_eq(hp_encode_hello(e, &h), 0);
  check_every_prefix_is_truncated(e);

  hp_encoder_reset(e);
  hp_frame_def f = { 3, S("fn"), S("file.py"), 300 };
  ck_assert_int_eq(hp_encode_frame_def(e, &f), 0);
  check_every_prefix_is_truncated(e);

  hp_encoder_reset(e);
  uint32_t ids[40];
  for (int i = 0; i < 40; i++)
    ids[i] = 1000u * (uint32_t)i + 1u;
  hp_stack_def s = { 300, 0, 40, ids };
  ck_assert_int_eq(hp_encode_stack_def(e, &s), 0);
  check_every_prefix_is_truncated(e);

  hp_encoder_reset(e);
  hp_event ev[20];
  fill_events(ev, 20);
  ck_assert_int_eq(hp_encode_events(e, ev, 20), 0);
  check_every_prefix_is_truncated(e);

  hp_encoder_reset(e);
  hp_counters c = { 1ull << 40, 70000, 1u << 20, 1ull << 33 };
  ck_assert_int_eq(hp_encode_counters(e, &c), 0);
  check_every_prefix_is_truncated(e);

  hp_encoder_reset(e);
  hp_goodbye g = { 1ull << 40, 70000, HP_END_HOOKS_REPLACED };
  ck_assert_int_eq(hp_encode_goodbye(e, &g), 0);
  check_every_prefix_is_truncated(e);

  hp_encoder_reset(e);
  hp_thread_def t = { 1ull << 40, S("ThreadPoolExecutor-0_3") };
  ck_assert_int_eq(hp_encode_thread_def(e, &t), 0);
  check_every_prefix_is_truncated(e);

  hp_encoder_reset(e);
  hp_marker k = { 1ull << 40, S("checkpoint") };
  ck_assert_int_eq(hp_encode_marker(e, &k), 0);
  check_every_prefix_is_truncated(e);
  hp_encoder_free(e);
}
END_TEST

/* ------------------------------------------------------------------ errors */

/* Payloads written out byte by byte. A 5-byte header announcing 2^32-1 entries must not make
 * anything allocate them; a message type or element count off by one must be named. */
#define BYTES(lit) (const uint8_t *)(lit), sizeof(lit) - 1

static const struct {
  const char *name;
  const uint8_t *bytes;
  size_t len;
  int want;
  const char *err_has;   /* NULL: the message is not checked */
  const char *err_is;    /* NULL: the message is not checked whole */
} raw_cases[] = {
  { "lying_arr32",   BYTES("\xdd\xff\xff\xff\xff"),                 -HP_ETRUNC, NULL, NULL },
  { "lying_map32",   BYTES("\x93\x04\x00\xdf\xff\xff\xff\xff"),     -HP_ETRUNC, NULL, NULL },
  { "lying_str32",   BYTES("\x95\x02\x01\xdb\x7f\xff\xff\xff\x41"), -HP_ETRUNC, NULL, NULL },
  { "lying_nested",  BYTES("\x93\x04\x00\x91\xdd\x00\x10\x00\x00"), -HP_ETRUNC, NULL, NULL },
  { "empty",         BYTES(""),                                     -HP_ETRUNC, NULL, NULL },
  { "never_used_c1", BYTES("\xc1"),                                 -HP_EPARSE, "0xc1", NULL },
  { "not_an_array",  BYTES("\x04"),                                 -HP_ETYPE, NULL, NULL },
  { "empty_array",   BYTES("\x90"),                                 -HP_ETYPE, NULL, NULL },
  { "too_deep",      BYTES("\x93\x04\x00\x91\x91\x91\x90"),         -HP_EPARSE, "deeper", NULL },
  { "type_9",        BYTES("\x92\x09\x00"),                         -HP_EMSGTYPE,
    NULL, "message field 1 (type): unknown message type 9 (known: 1..8)" },
  { "type_0",        BYTES("\x91\x00"),                             -HP_EMSGTYPE, NULL, NULL },
  { "type_2^32+1",   BYTES("\x91\xcf\x00\x00\x00\x01\x00\x00\x00\x01"), -HP_EMSGTYPE,
    NULL, NULL },
  { "type_-1",       BYTES("\x91\xff"),                             -HP_EMSGTYPE, NULL, NULL },
  { "short_goodbye", BYTES("\x93\x06\x00\x00"),                     -HP_ETYPE, NULL,
    "GOODBYE has 3 elements, expected 4" },
  { "long_goodbye",  BYTES("\x95\x06\x00\x00\x00\x00"),             -HP_ETYPE, NULL, NULL },
  { "v1_counters",   BYTES("\x94\x05\x00\x00\x01"),                 -HP_ETYPE, NULL,
    "COUNTERS has 4 elements, expected 5" },
  { "short_thread",  BYTES("\x92\x07\x01"),                         -HP_ETYPE, NULL,
    "THREAD_DEF has 2 elements, expected 3" },
  { "long_marker",   BYTES("\x94\x08\x01\xa1x\x00"),               -HP_ETYPE, NULL,
    "MARKER has 4 elements, expected 3" },
};

#undef BYTES

/* _i indexes raw_cases. */
START_TEST(decode_rejects_raw_bytes) {
  /* A heap copy of exactly the payload: the literal has a NUL after it, which would hide a
   * one-byte read past the end from ASan. */
  size_t len = raw_cases[_i].len;
  uint8_t *copy = malloc(len ? len : 1);
  ck_assert_ptr_nonnull(copy);
  memcpy(copy, raw_cases[_i].bytes, len);
  char err[256];
  int rc = decode_bytes(copy, len, err, sizeof(err));
  free(copy);
  assert_decoded(raw_cases[_i].name, rc, err, raw_cases[_i].want, raw_cases[_i].err_has,
                 raw_cases[_i].err_is);
}
END_TEST

START_TEST(decode_rejects_trailing_bytes) {
  hp_encoder *e = hp_encoder_new(0);
  hp_goodbye g = { 10, 0, 0 };
  ck_assert_int_eq(hp_encode_goodbye(e, &g), 0);
  size_t len;
  const uint8_t *p = only_payload(e, &len);
  uint8_t buf[64];
  memcpy(buf, p, len);
  buf[len] = 0x00;
  char err[256];
  ck_assert_int_eq(decode_bytes(buf, len + 1, err, sizeof(err)), -HP_ETRAILING);
  ck_assert_str_eq(err, "1 bytes left over after the GOODBYE (5 bytes)");
  memcpy(buf + len, p, len);   /* two messages in one payload */
  ck_assert_int_eq(decode_bytes(buf, 2 * len, NULL, 0), -HP_ETRAILING);
  hp_encoder_free(e);
}
END_TEST

START_TEST(decode_rejects_oversized_payload) {
  size_t len = HP_MAX_FRAME_BYTES + 1u;
  uint8_t *p = calloc(1, len);
  char err[256];
  ck_assert_int_eq(decode_bytes(p, len, err, sizeof(err)), -HP_ETOOBIG);
  ck_assert_ptr_nonnull(strstr(err, "4194304"));
  free(p);
}
END_TEST

/* Every element of every message, replaced by a value of a wrong type. _i is the
 * message type; each element is tried with two wrong types. */
START_TEST(decode_rejects_wrong_type_in_each_position) {
  int t = _i;
  char err[256];
  for (unsigned f = 1; f <= nelem_of[t]; f++) {
    /* A string where an integer/array/bool goes, an integer where a string goes. */
    int is_str = (t == HP_MSG_HELLO && (f == 2 || f == 7 || f == 8)) ||
                 (t == HP_MSG_FRAME_DEF && (f == 3 || f == 4)) ||
                 ((t == HP_MSG_THREAD_DEF || t == HP_MSG_MARKER) && f == 3);
    repl_fn wrongs[2] = { is_str ? repl_int : repl_str, repl_map };
    if (t == HP_MSG_HELLO && f == 13)
      wrongs[0] = repl_float;
    for (int w = 0; w < 2; w++) {
      int rc = decode_built(t, f, wrongs[w], err, sizeof(err));
      int want = (t == HP_MSG_HELLO && f == 2) ? -HP_EMAGIC : -HP_ETYPE;
      ck_assert_msg(rc == want, "%s element %u (wrong %d): got %d (%s): %s",
                    hp_msg_type_name(t), f, w, rc, hp_strerror(rc), err);
      if (f > 1) {
        char where[64];
        snprintf(where, sizeof(where), "%s field %u (%s)", hp_msg_type_name(t), f,
                 hp_proto_field_name(t, f));
        ck_assert_msg(strstr(err, where) != NULL, "'%s' does not name '%s'", err, where);
      }
    }
    /* nil is never a valid value either */
    ck_assert_int_lt(decode_built(t, f, repl_nil, NULL, 0), 0);
  }
}
END_TEST

/* Encodes with msgpack-c directly: an EVENTS batch whose one event has `f` (1-based)
 * set to `v`, or to what `repl` packs when it is not NULL; other fields valid. */
static int decode_event_with(unsigned kind, unsigned f, int64_t v, uint64_t base, repl_fn repl,
                             char *err) {
  msgpack_sbuffer sb;
  msgpack_packer pk;
  msgpack_sbuffer_init(&sb);
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  unsigned n = kind == 1 ? 4 : kind == 2 ? 5 : 8;
  msgpack_pack_array(&pk, 3);
  msgpack_pack_uint8(&pk, 4);
  msgpack_pack_uint64(&pk, base);
  msgpack_pack_array(&pk, 1);
  msgpack_pack_array(&pk, n);
  for (unsigned k = 1; k <= n; k++) {
    if (k == f && repl != NULL) {
      repl(&pk);
    } else if (k == f) {
      if (v < 0)
        msgpack_pack_int64(&pk, v);
      else
        msgpack_pack_uint64(&pk, (uint64_t)v);
    } else if (k == 1) {
      msgpack_pack_uint8(&pk, (uint8_t)kind);
    } else {
      msgpack_pack_uint8(&pk, 1);
    }
  }
  int rc = decode_bytes(sb.data, sb.size, err, 256);
  msgpack_sbuffer_destroy(&sb);
  return rc;
}

/* Wrong types inside events, one position at a time. */
START_TEST(decode_rejects_wrong_type_inside_events) {
  for (unsigned kind = 0; kind <= 2; kind++) {
    unsigned n = kind == 0 ? 8 : kind == 1 ? 4 : 5;
    for (unsigned f = 1; f <= n; f++) {
      char err[256];
      int rc = decode_event_with(kind, f, 0, 100, repl_str, err);
      ck_assert_msg(rc == -HP_ETYPE, "kind %u field %u: %s", kind, f, err);
      if (f > 1) {
        char where[96];
        snprintf(where, sizeof(where), "event 0 field %u (%s)", f,
                 hp_proto_event_field_name(kind, f));
        ck_assert_msg(strstr(err, where) != NULL, "'%s' lacks '%s'", err, where);
      }
    }
  }
}
END_TEST

/* Hand-built messages that are wrong in one place. Each fixture packs one whole message;
 * a table names it, and the code and message the decoder must answer with. */
typedef struct {
  const char *name;
  repl_fn pack;
  int want;
  const char *err_has;   /* NULL: the message is not checked */
  const char *err_is;    /* NULL: the message is not checked whole */
} built_case;

static void check_built_case(const built_case *c) {
  msgpack_sbuffer sb;
  msgpack_packer pk;
  msgpack_sbuffer_init(&sb);
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  c->pack(&pk);
  char err[256];
  int rc = decode_bytes(sb.data, sb.size, err, sizeof(err));
  assert_decoded(c->name, rc, err, c->want, c->err_has, c->err_is);
  msgpack_sbuffer_destroy(&sb);
}

static void fx_argv_bin(msgpack_packer *pk) {
  pack_hello_prefix(pk);
  msgpack_pack_array(pk, 2);
  msgpack_pack_str_with_body(pk, "a", 1);
  msgpack_pack_bin_with_body(pk, "b", 1);   /* bin is not str */
  pack_hello_suffix(pk, 16);
}

/* A HELLO whose one bucket is packed by `bucket`. */
static void pack_hello_one_bucket(msgpack_packer *pk, repl_fn bucket) {
  pack_hello_until_buckets(pk, 0);
  msgpack_pack_array(pk, 1);
  bucket(pk);
}

static void bucket_int(msgpack_packer *pk) { msgpack_pack_uint8(pk, 5); }
static void bucket_3_elements(msgpack_packer *pk) {
  msgpack_pack_array(pk, 3);
  msgpack_pack_uint8(pk, 5);
  msgpack_pack_double(pk, 0.5);
  msgpack_pack_nil(pk);
}
static void bucket_float_size(msgpack_packer *pk) {
  msgpack_pack_array(pk, 2);
  msgpack_pack_double(pk, 5);
  msgpack_pack_double(pk, 0.5);
}
static void bucket_int_rate(msgpack_packer *pk) {
  msgpack_pack_array(pk, 2);
  msgpack_pack_uint8(pk, 5);
  msgpack_pack_uint8(pk, 1);
}
static void bucket_float32_rate(msgpack_packer *pk) {
  msgpack_pack_array(pk, 2);
  msgpack_pack_uint8(pk, 5);
  msgpack_pack_float(pk, 0.25f);
}
static void fx_bucket_int(msgpack_packer *pk) {
  pack_hello_one_bucket(pk, bucket_int);
}
static void fx_bucket_3_elements(msgpack_packer *pk) {
  pack_hello_one_bucket(pk, bucket_3_elements);
}
static void fx_bucket_float_size(msgpack_packer *pk) {
  pack_hello_one_bucket(pk, bucket_float_size);
}
static void fx_bucket_int_rate(msgpack_packer *pk) {
  pack_hello_one_bucket(pk, bucket_int_rate);
}

static void fx_frame_id_str(msgpack_packer *pk) {
  msgpack_pack_array(pk, 4);
  msgpack_pack_uint8(pk, 3);
  msgpack_pack_uint8(pk, 1);
  msgpack_pack_false(pk);
  msgpack_pack_array(pk, 2);
  msgpack_pack_uint8(pk, 1);
  msgpack_pack_str_with_body(pk, "7", 1);
}

/* HELLO's first elements only: the magic and version are checked before the count. */
static void fx_magic_heapprog(msgpack_packer *pk) {
  msgpack_pack_array(pk, 3);
  msgpack_pack_uint8(pk, 1);
  msgpack_pack_str_with_body(pk, "heapprog", 8);
  msgpack_pack_uint8(pk, 1);
}

/* Another version with a different shape still gets the version error: an older agent
 * (version 1, whose HELLO had the same shape) and a future one. */
static void fx_version_1(msgpack_packer *pk) {
  msgpack_pack_array(pk, 13);
  msgpack_pack_uint8(pk, 1);
  msgpack_pack_str_with_body(pk, "heapprof", 8);
  msgpack_pack_uint8(pk, 1);
  msgpack_pack_uint8(pk, 10);
  msgpack_pack_uint8(pk, 1);
  msgpack_pack_array(pk, 0);
  pack_hello_suffix(pk, 16);
}

static void fx_version_3(msgpack_packer *pk) {
  msgpack_pack_array(pk, 4);
  msgpack_pack_uint8(pk, 1);
  msgpack_pack_str_with_body(pk, "heapprof", 8);
  msgpack_pack_uint8(pk, 3);
  msgpack_pack_nil(pk);
}

static void fx_hello_type_only(msgpack_packer *pk) {
  msgpack_pack_array(pk, 1);
  msgpack_pack_uint8(pk, 1);
}

static const built_case type_cases[] = {
  { "argv_bin",         fx_argv_bin, -HP_ETYPE, NULL,
    "HELLO field 6 (argv): entry 1: expected a string, got binary" },
  { "bucket_int",       fx_bucket_int, -HP_ETYPE,
    "bucket 0: expected an array [max_size, rate]", NULL },
  { "bucket_3_elements", fx_bucket_3_elements, -HP_ETYPE,
    "bucket 0: expected an array [max_size, rate]", NULL },
  { "bucket_float_size", fx_bucket_float_size, -HP_ETYPE,
    "bucket 0 max_size: expected an integer, got a float", NULL },
  { "bucket_int_rate",  fx_bucket_int_rate, -HP_ETYPE,
    "bucket 0 rate: expected a float, got an integer", NULL },
  { "frame_id_str",     fx_frame_id_str, -HP_ETYPE, NULL,
    "STACK_DEF field 4 (frame_ids): entry 1: expected an integer, got a string" },
  { "magic_heapprog",   fx_magic_heapprog, -HP_EMAGIC, "HELLO field 2 (magic)", NULL },
  { "version_1",        fx_version_1, -HP_EVERSION, NULL,
    "HELLO field 3 (version): protocol version 1 is not supported "
    "(this heapprof speaks version 2)" },
  { "version_3",        fx_version_3, -HP_EVERSION, NULL,
    "HELLO field 3 (version): protocol version 3 is not supported "
    "(this heapprof speaks version 2)" },
  { "hello_type_only",  fx_hello_type_only, -HP_EMAGIC, NULL, NULL },
};

/* _i indexes type_cases: wrong types inside HELLO's argv and buckets and STACK_DEF's frame
 * ids, wrong magic and version. */
START_TEST(decode_rejects_wrong_types_and_magic) {
  check_built_case(&type_cases[_i]);
}
END_TEST

/* A float32 rate is accepted and widened exactly. */
START_TEST(decode_widens_float32_bucket_rate) {
  msgpack_sbuffer sb;
  msgpack_packer pk;
  msgpack_sbuffer_init(&sb);
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  pack_hello_one_bucket(&pk, bucket_float32_rate);
  hp_decoder *d = hp_decoder_new();
  hp_msg m;
  ck_assert_int_eq(hp_decoder_decode(d, (const uint8_t *)sb.data, sb.size, &m), 0);
  ck_assert(m.u.hello.buckets[0].rate == 0.25);
  hp_decoder_free(d);
  msgpack_sbuffer_destroy(&sb);
}
END_TEST

START_TEST(encode_refuses_unknown_version) {
  hp_encoder *e = hp_encoder_new(0);
  hp_hello h = make_hello();
  h.version = HP_PROTO_VERSION - 1;
  ck_assert_int_eq(hp_encode_hello(e, &h), -HP_EVERSION);
  h.version = HP_PROTO_VERSION + 1;
  ck_assert_int_eq(hp_encode_hello(e, &h), -HP_EVERSION);
  size_t n;
  hp_encoder_data(e, &n);
  ck_assert_uint_eq(n, 0);
  hp_encoder_free(e);
}
END_TEST

/* ------------------------------------------------------------------ limits */

/* One event field set to `v` (kind, field and base as in decode_event_with). */
static const struct {
  const char *name;
  unsigned kind, f;
  int64_t v;
  uint64_t base;
  int want;
  const char *err_has;
  const char *err_is;
} event_value_cases[] = {
  { "domain_4",          0, 4, 4, 0, -HP_ERANGE, NULL,
    "EVENTS field 3 (events): event 0 field 4 (domain): 4 is out of range 0..3" },
  { "domain_3_native",   0, 4, 3, 0, 0, NULL, NULL },
  { "domain_2",          0, 4, 2, 0, 0, NULL, NULL },
  { "kind_3",            3, 1, 3, 0, -HP_ERANGE, NULL,
    "EVENTS field 3 (events): event 0 field 1 (kind): 3 is out of range 0..2" },
  { "reattr_valid",      2, 5, 9, 0, 0, NULL, NULL },
  { "reattr_no_stack",   2, 5, 0, 0, 0, NULL, NULL },
  { "reattr_stack_2^32", 2, 5, (int64_t)UINT32_MAX + 1, 0, -HP_ERANGE, NULL,
    "EVENTS field 3 (events): event 0 field 5 (stack_id): 4294967296 is out of range "
    "0..4294967295" },
  { "reattr_addr_-1",    2, 4, -1, 0, -HP_ERANGE, "field 4 (address): -1 is negative", NULL },
  { "reattr_ts_below_0", 2, 2, -2, 1, -HP_ERANGE, "below 0", NULL },
  { "stack_id_2^32",     0, 8, (int64_t)UINT32_MAX + 1, 0, -HP_ERANGE, "(stack_id)", NULL },
  { "size_-1",           0, 6, -1, 0, -HP_ERANGE, NULL, NULL },
  { "ts_below_0",        0, 2, -1, 0, -HP_ERANGE, "below 0", NULL },
  { "ts_4",              1, 2, -1, 5, 0, NULL, NULL },
  { "ts_above_int64",    0, 2, 2, (uint64_t)INT64_MAX - 1, -HP_ERANGE, NULL, NULL },
  { "ts_int64_max",      0, 2, 1, (uint64_t)INT64_MAX - 1, 0, NULL, NULL },
  { "address_0",         0, 5, 0, 0, 0, NULL, NULL },
};

/* _i indexes event_value_cases. */
START_TEST(decode_checks_event_field_ranges) {
  char err[256];
  int rc = decode_event_with(event_value_cases[_i].kind, event_value_cases[_i].f,
                             event_value_cases[_i].v, event_value_cases[_i].base, NULL, err);
  assert_decoded(event_value_cases[_i].name, rc, err, event_value_cases[_i].want,
                 event_value_cases[_i].err_has, event_value_cases[_i].err_is);
}
END_TEST

/* STACK_DEF [3, stack_id, truncated, frame_ids]: frame id k is ids[k] for k < 2, else 1. */
static const struct {
  const char *name;
  uint64_t stack_id;
  bool truncated;
  unsigned nids;
  uint64_t ids[2];
  int want;
  const char *err_has;
  const char *err_is;
} stack_def_cases[] = {
  { "stack_id_0",     0, true, 1, { 1 }, -HP_ERANGE, "STACK_DEF field 2 (stack_id)", NULL },
  { "frame_id_0",     5, true, 2, { 1, 0 }, -HP_ERANGE, "entry 1", NULL },
  { "empty",          5, true, 0, { 0 }, -HP_ELEN, NULL, NULL },
  { "frame_id_2^32",  5, true, 1, { 1ull << 32 }, -HP_ERANGE, NULL, NULL },
  { "600_frames",     1, false, 600, { 1, 1 }, -HP_ELEN, NULL,
    "STACK_DEF field 4 (frame_ids): 600 entries exceed the limit of 512" },
};

/* _i indexes stack_def_cases. */
START_TEST(decode_rejects_bad_stack_def_values) {
  msgpack_sbuffer sb;
  msgpack_packer pk;
  msgpack_sbuffer_init(&sb);
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  msgpack_pack_array(&pk, 4);
  msgpack_pack_uint8(&pk, 3);
  msgpack_pack_uint64(&pk, stack_def_cases[_i].stack_id);
  if (stack_def_cases[_i].truncated)
    msgpack_pack_true(&pk);
  else
    msgpack_pack_false(&pk);
  msgpack_pack_array(&pk, stack_def_cases[_i].nids);
  for (unsigned k = 0; k < stack_def_cases[_i].nids; k++)
    msgpack_pack_uint64(&pk, k < 2 ? stack_def_cases[_i].ids[k] : 1);
  char err[256];
  int rc = decode_bytes(sb.data, sb.size, err, sizeof(err));
  assert_decoded(stack_def_cases[_i].name, rc, err, stack_def_cases[_i].want,
                 stack_def_cases[_i].err_has, stack_def_cases[_i].err_is);
  msgpack_sbuffer_destroy(&sb);
}
END_TEST

/* HELLO up to its argv (left out): msgpack-c packs every integer in its shortest form, so
 * `pid` 10 gives the same bytes however it is passed. */
static void pack_hello_prefix_with_pid(msgpack_packer *pk, int64_t pid) {
  msgpack_pack_array(pk, 13);
  msgpack_pack_uint8(pk, 1);
  msgpack_pack_str_with_body(pk, "heapprof", 8);
  msgpack_pack_uint8(pk, HP_PROTO_VERSION);
  msgpack_pack_int64(pk, pid);
  msgpack_pack_uint8(pk, 1);
}

static void pack_hello_prefix(msgpack_packer *pk) { pack_hello_prefix_with_pid(pk, 10); }

static void pack_hello_suffix(msgpack_packer *pk, uint32_t depth) {
  msgpack_pack_str_with_body(pk, "/bin/py", 7);
  msgpack_pack_str_with_body(pk, "3.12", 4);
  msgpack_pack_uint8(pk, 0);
  msgpack_pack_uint8(pk, 0);
  msgpack_pack_uint8(pk, 1);
  msgpack_pack_uint32(pk, depth);
  msgpack_pack_array(pk, 0);
}

/* A HELLO with no argv, max_stack_depth 16, up to its bucket array, which is left out. */
static void pack_hello_until_buckets(msgpack_packer *pk, uint64_t interval) {
  pack_hello_prefix(pk);
  msgpack_pack_array(pk, 0);
  msgpack_pack_str_with_body(pk, "/bin/py", 7);
  msgpack_pack_str_with_body(pk, "3.12", 4);
  msgpack_pack_uint8(pk, 0);
  msgpack_pack_uint8(pk, 0);
  msgpack_pack_uint64(pk, interval);
  msgpack_pack_uint32(pk, 16);
}

/* size 2^63 does not fit the SQLite INTEGER it is stored in. */
static void fx_size_2_63(msgpack_packer *pk) {
  msgpack_pack_array(pk, 3);
  msgpack_pack_uint8(pk, 4);
  msgpack_pack_uint64(pk, 0);
  msgpack_pack_array(pk, 1);
  msgpack_pack_array(pk, 8);
  uint64_t vals[8] = { 0, 0, 1, 1, 1, 1ull << 63, 1, 1 };
  for (int k = 0; k < 8; k++)
    msgpack_pack_uint64(pk, vals[k]);
}

static void fx_goodbye_ts_2_63(msgpack_packer *pk) {
  msgpack_pack_array(pk, 4);
  msgpack_pack_uint8(pk, 6);
  msgpack_pack_uint64(pk, 1ull << 63);
  msgpack_pack_uint64(pk, 0);
  msgpack_pack_uint8(pk, 0);
}

static void fx_goodbye_reason_2(msgpack_packer *pk) {
  msgpack_pack_array(pk, 4);
  msgpack_pack_uint8(pk, 6);
  msgpack_pack_uint64(pk, 5);
  msgpack_pack_uint64(pk, 0);
  msgpack_pack_uint8(pk, 2);
}

static void fx_counters_sent_2_63(msgpack_packer *pk) {
  msgpack_pack_array(pk, 5);
  msgpack_pack_uint8(pk, 5);
  msgpack_pack_uint64(pk, 5);
  msgpack_pack_uint64(pk, 0);
  msgpack_pack_uint64(pk, 4096);
  msgpack_pack_uint64(pk, 1ull << 63);
}

static void fx_marker_ts_2_63(msgpack_packer *pk) {
  msgpack_pack_array(pk, 3);
  msgpack_pack_uint8(pk, 8);
  msgpack_pack_uint64(pk, 1ull << 63);
  msgpack_pack_str_with_body(pk, "m", 1);
}

static void fx_too_many_events(msgpack_packer *pk) {
  size_t n = HP_MAX_BATCH_EVENTS + 1u;
  msgpack_pack_array(pk, 3);
  msgpack_pack_uint8(pk, 4);
  msgpack_pack_uint8(pk, 0);
  msgpack_pack_array(pk, n);
  for (size_t i = 0; i < n; i++) {
    msgpack_pack_array(pk, 4);
    msgpack_pack_uint8(pk, 1);
    msgpack_pack_uint8(pk, 0);
    msgpack_pack_uint8(pk, 1);
    msgpack_pack_uint8(pk, 1);
  }
}

static void fx_too_many_argv(msgpack_packer *pk) {
  pack_hello_prefix(pk);
  msgpack_pack_array(pk, HP_MAX_ARGV + 1);
  for (unsigned i = 0; i <= HP_MAX_ARGV; i++)
    msgpack_pack_str_with_body(pk, "a", 1);
  pack_hello_suffix(pk, 16);
}

/* A string of `len` bytes 'x'. */
static void pack_long_str(msgpack_packer *pk, size_t len) {
  char *big = malloc(len);
  ck_assert_ptr_nonnull(big);
  memset(big, 'x', len);
  msgpack_pack_str_with_body(pk, big, len);
  free(big);
}

static void fx_long_argv(msgpack_packer *pk) {
  pack_hello_prefix(pk);
  msgpack_pack_array(pk, 1);
  pack_long_str(pk, HP_MAX_STR_BYTES + 1);
  pack_hello_suffix(pk, 16);
}

static void fx_long_function(msgpack_packer *pk) {
  msgpack_pack_array(pk, 5);
  msgpack_pack_uint8(pk, 2);
  msgpack_pack_uint8(pk, 1);
  pack_long_str(pk, HP_MAX_STR_BYTES + 1);
  msgpack_pack_str_with_body(pk, "f", 1);
  msgpack_pack_uint8(pk, 1);
}

static void fx_long_thread_name(msgpack_packer *pk) {
  msgpack_pack_array(pk, 3);
  msgpack_pack_uint8(pk, 7);
  msgpack_pack_uint8(pk, 1);
  pack_long_str(pk, HP_MAX_STR_BYTES + 1);
}

static void fx_long_marker_label(msgpack_packer *pk) {
  msgpack_pack_array(pk, 3);
  msgpack_pack_uint8(pk, 8);
  msgpack_pack_uint8(pk, 1);
  pack_long_str(pk, HP_MAX_STR_BYTES + 1);
}

static void fx_thread_name_at_limit(msgpack_packer *pk) {
  msgpack_pack_array(pk, 3);
  msgpack_pack_uint8(pk, 7);
  msgpack_pack_uint64(pk, UINT64_MAX);
  pack_long_str(pk, HP_MAX_STR_BYTES);
}

static void fx_strings_at_limit(msgpack_packer *pk) {
  msgpack_pack_array(pk, 5);
  msgpack_pack_uint8(pk, 2);
  msgpack_pack_uint8(pk, 1);
  pack_long_str(pk, HP_MAX_STR_BYTES);
  pack_long_str(pk, HP_MAX_STR_BYTES);
  msgpack_pack_uint8(pk, 1);
}

static void fx_deep_max_stack_depth(msgpack_packer *pk) {
  pack_hello_prefix(pk);
  msgpack_pack_array(pk, 0);
  pack_hello_suffix(pk, HP_MAX_STACK_DEPTH + 1);
}

static void fx_pid_0(msgpack_packer *pk) {
  pack_hello_prefix_with_pid(pk, 0);
  msgpack_pack_array(pk, 0);
  pack_hello_suffix(pk, 16);
}

static const built_case limit_cases[] = {
  { "size_2^63",        fx_size_2_63, -HP_ERANGE, "field 6 (size)", NULL },
  { "goodbye_ts_2^63",  fx_goodbye_ts_2_63, -HP_ERANGE, "GOODBYE field 2 (ts)", NULL },
  { "goodbye_reason_2", fx_goodbye_reason_2, -HP_ERANGE, NULL,
    "GOODBYE field 4 (end_reason): 2 is out of range 0..1" },
  { "counters_sent_2^63", fx_counters_sent_2_63, -HP_ERANGE, NULL,
    "COUNTERS field 5 (events_sent): 9223372036854775808 is out of range "
    "0..9223372036854775807" },
  { "marker_ts_2^63",   fx_marker_ts_2_63, -HP_ERANGE, "MARKER field 2 (ts)", NULL },
  { "long_thread_name", fx_long_thread_name, -HP_ELEN, NULL,
    "THREAD_DEF field 3 (name): 4097 bytes exceed the limit of 4096" },
  { "long_marker_label", fx_long_marker_label, -HP_ELEN, NULL,
    "MARKER field 3 (label): 4097 bytes exceed the limit of 4096" },
  { "thread_name_at_limit", fx_thread_name_at_limit, 0, NULL, NULL },
  { "too_many_events",  fx_too_many_events, -HP_ELEN, NULL,
    "EVENTS field 3 (events): 16385 entries exceed the limit of 16384" },
  { "too_many_argv",    fx_too_many_argv, -HP_ELEN, NULL,
    "HELLO field 6 (argv): 1025 entries exceed the limit of 1024" },
  { "long_argv",        fx_long_argv, -HP_ELEN, "entry 0: 4097 bytes exceed the limit of 4096",
    NULL },
  { "long_function",    fx_long_function, -HP_ELEN, NULL,
    "FRAME_DEF field 3 (function): 4097 bytes exceed the limit of 4096" },
  { "strings_at_limit", fx_strings_at_limit, 0, NULL, NULL },
  { "max_stack_depth",  fx_deep_max_stack_depth, -HP_ERANGE, "HELLO field 12 (max_stack_depth)",
    NULL },
  { "pid_0",            fx_pid_0, -HP_ERANGE, NULL,
    "HELLO field 4 (pid): 0 is out of range 1..2147483647" },
};

/* _i indexes limit_cases. */
START_TEST(decode_rejects_values_over_limits) {
  check_built_case(&limit_cases[_i]);
}
END_TEST

/* Buckets: rates finite in (0, 1], max_size strictly increasing, only with interval 0. */
static int decode_hello_buckets(uint64_t interval, const uint64_t *sizes, const double *rates,
                                int n, char *err) {
  msgpack_sbuffer sb;
  msgpack_packer pk;
  msgpack_sbuffer_init(&sb);
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  pack_hello_until_buckets(&pk, interval);
  msgpack_pack_array(&pk, (size_t)n);
  for (int i = 0; i < n; i++) {
    msgpack_pack_array(&pk, 2);
    msgpack_pack_uint64(&pk, sizes[i]);
    msgpack_pack_double(&pk, rates[i]);
  }
  int rc = decode_bytes(sb.data, sb.size, err, 256);
  msgpack_sbuffer_destroy(&sb);
  return rc;
}

static const struct {
  const char *name;
  uint64_t interval;
  uint64_t sizes[3];
  double rates[3];
  int n;
  int want;
  const char *err_has;
} bucket_cases[] = {
  { "valid",         0,    { 10, 100, 1000 },       { 0.5, 0.75, 1.0 },     3, 0, NULL },
  { "rate_0",        0,    { 10, 100, 1000 },       { 0.0, 0.75, 1.0 },     3, -HP_ERANGE,
    "bucket 0 rate" },
  { "rate_above_1",  0,    { 10, 100, 1000 },       { 0.5, 1.5, 1.0 },      3, -HP_ERANGE, NULL },
  { "rate_nan",      0,    { 10, 100, 1000 },       { 0.5, NAN, 1.0 },      3, -HP_ERANGE, NULL },
  { "rate_inf",      0,    { 10, 100, 1000 },       { 0.5, 0.6, INFINITY }, 3, -HP_ERANGE, NULL },
  { "size_repeated", 0,    { 10, 10, 1000 },        { 0.5, 0.75, 1.0 },     3, -HP_ERANGE,
    "not above the previous" },
  { "size_down",     0,    { 10, 100, 50 },         { 0.5, 0.75, 1.0 },     3, -HP_ERANGE, NULL },
  { "none",          0,    { 10, 100, 1000 },       { 0.5, 0.75, 1.0 },     0, -HP_ERANGE, NULL },
  { "unused",        4096, { 10, 100, 1000 },       { 0.5, 0.75, 1.0 },     3, -HP_ERANGE, NULL },
  { "interval_only", 4096, { 10, 100, 1000 },       { 0.5, 0.75, 1.0 },     0, 0, NULL },
  { "size_0",        0,    { 0, 100, 1000 },        { 0.5, 0.75, 1.0 },     3, -HP_ERANGE,
    "bucket 0 max_size 0" },
  { "catch_all",     0,    { 10, 100, UINT64_MAX }, { 0.5, 0.75, 1.0 },     3, 0, NULL },
};

/* _i indexes bucket_cases. */
START_TEST(decode_checks_buckets) {
  char err[256];
  int rc = decode_hello_buckets(bucket_cases[_i].interval, bucket_cases[_i].sizes,
                                bucket_cases[_i].rates, bucket_cases[_i].n, err);
  assert_decoded(bucket_cases[_i].name, rc, err, bucket_cases[_i].want, bucket_cases[_i].err_has,
                 NULL);
}
END_TEST

START_TEST(decode_checks_bucket_count_limit) {
  char err[256];
  uint64_t many[HP_MAX_BUCKETS + 1];
  double r[HP_MAX_BUCKETS + 1];
  for (unsigned i = 0; i <= HP_MAX_BUCKETS; i++) {
    many[i] = i + 1;
    r[i] = 1.0;
  }
  ck_assert_int_eq(decode_hello_buckets(0, many, r, HP_MAX_BUCKETS, err), 0);
  ck_assert_int_eq(decode_hello_buckets(0, many, r, HP_MAX_BUCKETS + 1, err), -HP_ELEN);
}
END_TEST

/* The encoder refuses what the decoder would refuse, and leaves its buffer untouched. */
static void assert_refused(hp_encoder *e, int rc, int want) {
  ck_assert_msg(rc == want, "got %d (%s), want %d", rc, hp_strerror(rc), want);
  size_t n;
  const uint8_t *p = hp_encoder_data(e, &n);
  /* The buffer still holds exactly the one GOODBYE encoded before. */
  ck_assert_uint_eq(n, 13);
  ck_assert_uint_eq(p[4], 0x94);
  ck_assert_uint_eq(p[5], 0x06);
}

START_TEST(encode_refuses_over_limit_input_keeping_the_buffer) {
  hp_encoder *e = hp_encoder_new(0);
  hp_goodbye g = { 1500000000ull, 3, 0 };
  ck_assert_int_eq(hp_encode_goodbye(e, &g), 0);

  hp_hello h = make_hello();
  h.argc = HP_MAX_ARGV + 1;
  hp_str *argv = calloc(HP_MAX_ARGV + 1, sizeof(*argv));
  char *big = malloc(HP_MAX_STR_BYTES + 1);
  memset(big, 'y', HP_MAX_STR_BYTES + 1);
  h.argv = argv;
  assert_refused(e, hp_encode_hello(e, &h), -HP_ELEN);
  /* 1024 arguments of 4096 bytes: every field is legal, the frame is not */
  for (unsigned i = 0; i < HP_MAX_ARGV; i++)
    argv[i] = (hp_str){ big, HP_MAX_STR_BYTES };
  h.argc = HP_MAX_ARGV;
  assert_refused(e, hp_encode_hello(e, &h), -HP_ETOOBIG);
  h = make_hello();
  h.executable = (hp_str){ big, HP_MAX_STR_BYTES + 1 };
  assert_refused(e, hp_encode_hello(e, &h), -HP_ELEN);
  h = make_hello();
  h.max_stack_depth = HP_MAX_STACK_DEPTH + 1;
  assert_refused(e, hp_encode_hello(e, &h), -HP_ERANGE);
  h = make_hello();
  h.pid = 0;
  assert_refused(e, hp_encode_hello(e, &h), -HP_ERANGE);
  h = make_hello();
  hp_bucket bad_b[2] = { { 100, 0.5 }, { 50, 1.0 } };
  h.buckets = bad_b;
  h.nbuckets = 2;
  assert_refused(e, hp_encode_hello(e, &h), -HP_ERANGE);

  hp_frame_def f = { 0, S("f"), S("x.py"), 1 };
  assert_refused(e, hp_encode_frame_def(e, &f), -HP_ERANGE);
  f = (hp_frame_def){ 1, { big, HP_MAX_STR_BYTES + 1 }, S("x.py"), 1 };
  assert_refused(e, hp_encode_frame_def(e, &f), -HP_ELEN);
  f = (hp_frame_def){ 1, S("f"), S("x.py"), -1 };
  assert_refused(e, hp_encode_frame_def(e, &f), -HP_ERANGE);

  uint32_t ids[HP_MAX_STACK_DEPTH + 1];
  for (unsigned i = 0; i <= HP_MAX_STACK_DEPTH; i++)
    ids[i] = i + 1;
  hp_stack_def s = { 0, 0, 3, ids };
  assert_refused(e, hp_encode_stack_def(e, &s), -HP_ERANGE);
  s = (hp_stack_def){ 1, 0, HP_MAX_STACK_DEPTH + 1, ids };
  assert_refused(e, hp_encode_stack_def(e, &s), -HP_ELEN);
  ids[1] = 0;
  s = (hp_stack_def){ 1, 0, 3, ids };
  assert_refused(e, hp_encode_stack_def(e, &s), -HP_ERANGE);

  hp_event *ev = calloc(HP_MAX_BATCH_EVENTS + 1, sizeof(*ev));
  fill_events(ev, HP_MAX_BATCH_EVENTS + 1);
  assert_refused(e, hp_encode_events(e, ev, HP_MAX_BATCH_EVENTS + 1), -HP_ELEN);
  ev[10].domain = 4;
  ev[10].kind = HP_EV_ALLOC;
  assert_refused(e, hp_encode_events(e, ev, 20), -HP_ERANGE);
  fill_events(ev, 20);
  ev[5].kind = 3;
  assert_refused(e, hp_encode_events(e, ev, 20), -HP_ERANGE);
  fill_events(ev, 20);
  ev[5].kind = HP_EV_REATTRIBUTE;
  ev[5].ts_ns = 1ull << 63;
  assert_refused(e, hp_encode_events(e, ev, 20), -HP_ERANGE);
  fill_events(ev, 20);
  ev[19].ts_ns = 1ull << 63;
  assert_refused(e, hp_encode_events(e, ev, 20), -HP_ERANGE);
  fill_events(ev, 20);
  ev[0].size = 1ull << 63;
  ev[0].kind = HP_EV_ALLOC;
  assert_refused(e, hp_encode_events(e, ev, 20), -HP_ERANGE);

  hp_counters c = { 1ull << 63, 0, 0, 0 };
  assert_refused(e, hp_encode_counters(e, &c), -HP_ERANGE);
  c = (hp_counters){ 1, 0, 0, 1ull << 63 };
  assert_refused(e, hp_encode_counters(e, &c), -HP_ERANGE);
  hp_goodbye gb = { 0, 1ull << 63, 0 };
  assert_refused(e, hp_encode_goodbye(e, &gb), -HP_ERANGE);
  gb = (hp_goodbye){ 0, 0, HP_END_HOOKS_REPLACED + 1 };
  assert_refused(e, hp_encode_goodbye(e, &gb), -HP_ERANGE);
  hp_thread_def td = { 1, { big, HP_MAX_STR_BYTES + 1 } };
  assert_refused(e, hp_encode_thread_def(e, &td), -HP_ELEN);
  td = (hp_thread_def){ 1, { NULL, 3 } };
  assert_refused(e, hp_encode_thread_def(e, &td), -HP_EINVAL);
  hp_marker mk = { 1ull << 63, S("m") };
  assert_refused(e, hp_encode_marker(e, &mk), -HP_ERANGE);
  mk = (hp_marker){ 1, { big, HP_MAX_STR_BYTES + 1 } };
  assert_refused(e, hp_encode_marker(e, &mk), -HP_ELEN);
  free(ev);
  free(big);
  free(argv);
  hp_encoder_free(e);
}
END_TEST

/* With capacity to spare the packer never asks to grow, so the frame limit must also
 * be enforced when the frame is closed. */
START_TEST(encode_refuses_oversized_frame_in_a_roomy_buffer) {
  hp_encoder *e = hp_encoder_new(8u << 20);
  hp_goodbye g = { 1500000000ull, 3, 0 };
  ck_assert_int_eq(hp_encode_goodbye(e, &g), 0);
  char *big = malloc(HP_MAX_STR_BYTES);
  memset(big, 'z', HP_MAX_STR_BYTES);
  hp_str *argv = calloc(HP_MAX_ARGV, sizeof(*argv));
  for (unsigned i = 0; i < HP_MAX_ARGV; i++)
    argv[i] = (hp_str){ big, HP_MAX_STR_BYTES };
  hp_hello h = make_hello();
  h.argv = argv;
  h.argc = HP_MAX_ARGV;
  assert_refused(e, hp_encode_hello(e, &h), -HP_ETOOBIG);
  /* one argument fewer fits, and decodes */
  h.argc = HP_MAX_ARGV - 2;
  ck_assert_int_eq(hp_encode_hello(e, &h), 0);
  size_t n;
  const uint8_t *p = hp_encoder_data(e, &n);
  hp_decoder *d = hp_decoder_new();
  hp_msg m;
  ck_assert_int_eq(hp_decoder_decode(d, p + 17, n - 17, &m), 0);
  ck_assert_uint_eq(m.u.hello.argc, HP_MAX_ARGV - 2);
  ck_assert_uint_eq(m.u.hello.argv[HP_MAX_ARGV - 3].len, HP_MAX_STR_BYTES);
  ck_assert_mem_eq(m.u.hello.argv[HP_MAX_ARGV - 3].ptr, big, HP_MAX_STR_BYTES);
  hp_decoder_free(d);
  free(argv);
  free(big);
  hp_encoder_free(e);
}
END_TEST

/* ------------------------------------------------------------------ random input */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

static void assert_known_result(hp_decoder *d, int rc, const hp_msg *m) {
  if (rc == 0) {
    ck_assert(m->type >= HP_MSG_HELLO && m->type <= HP_MSG_MARKER);
    ck_assert_str_eq(hp_decoder_error(d), "");
  } else {
    ck_assert_msg(rc <= -HP_ENOMEM && rc >= -HP_ECLOSED, "unexpected code %d", rc);
    ck_assert_str_ne(hp_decoder_error(d), "");
  }
}

START_TEST(random_bytes_never_crash) {
  hp_decoder *d = hp_decoder_new();
  hp_msg m;
  for (int iter = 0; iter < 20000; iter++) {
    size_t len = rng() % 64;
    uint8_t *p = malloc(len ? len : 1);
    for (size_t i = 0; i < len; i++)
      p[i] = (uint8_t)rng();
    if (len > 0 && iter % 2 == 0)
      p[0] = (uint8_t)(0x90 | (rng() % 14));   /* make it look like a message array */
    if (len > 1 && iter % 4 == 0)
      p[1] = (uint8_t)(1 + rng() % 8);
    int rc = hp_decoder_decode(d, p, len, &m);
    assert_known_result(d, rc, &m);
    free(p);
  }
  hp_decoder_free(d);
}
END_TEST

/* Valid messages with a few bytes flipped: the decoder's hardest inputs. */
START_TEST(mutated_messages_never_crash) {
  hp_encoder *e = hp_encoder_new(0);
  hp_hello h = make_hello();
  ck_assert_int_eq(hp_encode_hello(e, &h), 0);
  hp_event ev[12];
  fill_events(ev, 12);
  ck_assert_int_eq(hp_encode_events(e, ev, 12), 0);
  uint32_t ids[5] = { 1, 2, 3, 4, 5 };
  hp_stack_def s = { 9, 1, 5, ids };
  ck_assert_int_eq(hp_encode_stack_def(e, &s), 0);
  hp_thread_def td = { 4242, S("worker") };
  ck_assert_int_eq(hp_encode_thread_def(e, &td), 0);
  hp_marker mk = { 123456, S("phase") };
  ck_assert_int_eq(hp_encode_marker(e, &mk), 0);
  size_t total;
  const uint8_t *all = hp_encoder_data(e, &total);
  hp_decoder *d = hp_decoder_new();
  hp_msg m;
  int accepted = 0;
  enum { NMSG = 5 };
  size_t offs[NMSG], lens[NMSG], off = 0;
  for (int k = 0; k < NMSG; k++) {
    lens[k] = (uint32_t)all[off] << 24 | (uint32_t)all[off + 1] << 16 |
              (uint32_t)all[off + 2] << 8 | all[off + 3];
    offs[k] = off;
    off += 4 + lens[k];
  }
  ck_assert_uint_eq(off, total);
  for (int iter = 0; iter < 30000; iter++) {
    int which = (int)(rng() % NMSG);
    size_t len = lens[which];
    const uint8_t *src = all + offs[which] + 4;
    uint8_t *p = malloc(len);
    memcpy(p, src, len);
    int flips = 1 + (int)(rng() % 3);
    for (int k = 0; k < flips; k++)
      p[rng() % len] ^= (uint8_t)(1u << (rng() % 8));
    size_t use = rng() % 8 == 0 ? rng() % (len + 1) : len;
    int rc = hp_decoder_decode(d, p, use, &m);
    assert_known_result(d, rc, &m);
    accepted += rc == 0;
    free(p);
  }
  /* Flipping a low bit of a value usually leaves a valid message: the decoder must not
   * be rejecting everything. */
  ck_assert_int_gt(accepted, 100);
  hp_decoder_free(d);
  hp_encoder_free(e);
}
END_TEST

/* ------------------------------------------------------------------ oom */

/* Fails the _i-th allocation of encoder creation and use; every path reports ENOMEM
 * and leaves a consistent encoder. */
START_TEST(encoder_survives_allocation_failure) {
  hp_proto_test_fail_alloc_after(_i);
  hp_encoder *e = hp_encoder_new(8);
  if (e == NULL) {
    hp_proto_test_fail_alloc_after(-1);
    ck_assert_int_lt(_i, 2);
    return;
  }
  hp_goodbye g = { 1500000000ull, 3, 0 };
  hp_hello h = make_hello();
  size_t n0, n1, n2;
  hp_encoder_data(e, &n0);
  int rc1 = hp_encode_goodbye(e, &g);
  hp_encoder_data(e, &n1);
  int rc2 = hp_encode_hello(e, &h);
  hp_encoder_data(e, &n2);
  hp_proto_test_fail_alloc_after(-1);
  ck_assert_uint_eq(n0, 0);
  ck_assert(rc1 == 0 || rc1 == -HP_ENOMEM);
  ck_assert(rc2 == 0 || rc2 == -HP_ENOMEM);
  ck_assert_uint_eq(n1, rc1 == 0 ? 13u : 0u);
  if (rc2 == 0)
    ck_assert_uint_gt(n2, n1);
  else
    ck_assert_uint_eq(n2, n1);
  size_t n;
  /* and it works again once memory is back */
  ck_assert_int_eq(hp_encode_hello(e, &h), 0);
  hp_decoder *d = hp_decoder_new();
  hp_msg m;
  const uint8_t *p = hp_encoder_data(e, &n);
  size_t off = 0;
  int frames = 0;
  while (off < n) {
    uint32_t l = (uint32_t)p[off] << 24 | (uint32_t)p[off + 1] << 16 |
                 (uint32_t)p[off + 2] << 8 | p[off + 3];
    ck_assert_int_eq(hp_decoder_decode(d, p + off + 4, l, &m), 0);
    off += 4u + l;
    frames++;
  }
  ck_assert_int_eq(frames, 1 + (rc1 == 0) + (rc2 == 0));
  hp_decoder_free(d);
  hp_encoder_free(e);
}
END_TEST

START_TEST(decoder_reports_enomem_for_event_array) {
  hp_encoder *e = hp_encoder_new(0);
  hp_event ev[300];
  fill_events(ev, 300);
  ck_assert_int_eq(hp_encode_events(e, ev, 300), 0);
  hp_decoder *d = hp_decoder_new();
  hp_msg m;
  hp_proto_test_fail_alloc_after(0);
  int rc = decode_only(d, e, &m);
  hp_proto_test_fail_alloc_after(-1);
  ck_assert_int_eq(rc, -HP_ENOMEM);
  ck_assert_ptr_nonnull(strstr(hp_decoder_error(d), "out of memory"));
  ck_assert_int_eq(decode_only(d, e, &m), 0);
  assert_events_eq(ev, m.u.events.events, 300);
  hp_decoder_free(d);
  hp_encoder_free(e);
}
END_TEST

START_TEST(constructors_return_null_when_memory_runs_out) {
  hp_proto_test_fail_alloc_after(0);
  hp_decoder *d = hp_decoder_new();
  hp_encoder *e = hp_encoder_new(0);
  hp_proto_test_fail_alloc_after(-1);
  ck_assert_ptr_null(d);
  ck_assert_ptr_null(e);
  hp_decoder_free(NULL);
  hp_encoder_free(NULL);
}
END_TEST

Suite *codec_suite(void) {
  Suite *s = suite_create("codec");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, roundtrip_hello_with_buckets);
  tcase_add_test(tc, roundtrip_hello_with_interval_and_no_argv);
  tcase_add_test(tc, roundtrip_frame_def);
  tcase_add_test(tc, roundtrip_stack_def_full_depth);
  tcase_add_test(tc, roundtrip_events_full_batch);
  tcase_add_test(tc, roundtrip_events_extreme_values);
  tcase_add_test(tc, roundtrip_counters_and_goodbye);
  tcase_add_test(tc, roundtrip_thread_def_and_marker);
  tcase_add_test(tc, goodbye_bytes_match_the_spec_example);
  tcase_add_test(tc, reattribute_and_marker_bytes_match_the_spec_example);
  tcase_add_test(tc, events_bytes_match_the_spec_example);
  tcase_add_test(tc, encoder_appends_frames_and_resets);
  tcase_add_test(tc, msg_type_names);
  tcase_add_test(tc, decode_hand_made_messages);
  tcase_add_test(tc, decoder_is_reusable_after_errors);
  suite_add_tcase(s, tc);

  tc = tcase_create("errors");
  tcase_add_test(tc, decode_rejects_every_truncation);
  tcase_add_loop_test(tc, decode_rejects_raw_bytes, 0, ARRAY_LEN(raw_cases));
  tcase_add_test(tc, decode_rejects_trailing_bytes);
  tcase_add_test(tc, decode_rejects_oversized_payload);
  tcase_add_loop_test(tc, decode_rejects_wrong_type_in_each_position, HP_MSG_HELLO,
                      HP_MSG_MARKER + 1);
  tcase_add_test(tc, decode_rejects_wrong_type_inside_events);
  tcase_add_loop_test(tc, decode_rejects_wrong_types_and_magic, 0, ARRAY_LEN(type_cases));
  tcase_add_test(tc, decode_widens_float32_bucket_rate);
  tcase_add_test(tc, encode_refuses_unknown_version);
  suite_add_tcase(s, tc);

  tc = tcase_create("limits");
  tcase_add_loop_test(tc, decode_checks_event_field_ranges, 0, ARRAY_LEN(event_value_cases));
  tcase_add_loop_test(tc, decode_rejects_bad_stack_def_values, 0, ARRAY_LEN(stack_def_cases));
  tcase_add_loop_test(tc, decode_rejects_values_over_limits, 0, ARRAY_LEN(limit_cases));
  tcase_add_loop_test(tc, decode_checks_buckets, 0, ARRAY_LEN(bucket_cases));
  tcase_add_test(tc, decode_checks_bucket_count_limit);
  tcase_add_test(tc, encode_refuses_over_limit_input_keeping_the_buffer);
  tcase_add_test(tc, encode_refuses_oversized_frame_in_a_roomy_buffer);
  suite_add_tcase(s, tc);

  tc = tcase_create("random");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, random_bytes_never_crash);
  tcase_add_test(tc, mutated_messages_never_crash);
  suite_add_tcase(s, tc);

  tc = tcase_create("oom");
  tcase_add_loop_test(tc, encoder_survives_allocation_failure, 0, 8);
  tcase_add_test(tc, decoder_reports_enomem_for_event_array);
  tcase_add_test(tc, constructors_return_null_when_memory_runs_out);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(codec_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
