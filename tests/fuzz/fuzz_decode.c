/* fuzz_decode.c — libFuzzer target for the proto decoder and framer.
 *
 * Each input is used twice:
 *   1. as one frame payload for hp_decoder_decode(). Whatever it accepts must survive a
 *      round trip: the encoder accepts the decoded message (both sides apply the same
 *      rules), the re-encoded payload decodes to an equal message, and encoding that
 *      again gives the same bytes (the encoder's output is canonical).
 *   2. as a byte stream for a framer with a small max_frame, fed in pieces whose size
 *      the first byte picks; every frame it yields is decoded.
 * Any violated invariant aborts, which libFuzzer reports as a crash. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hp_proto.h"

#define CHECK(cond)                                                              \
  do {                                                                           \
    if (!(cond)) {                                                               \
      fprintf(stderr, "fuzz_decode: invariant failed at line %d: %s\n", __LINE__, \
              #cond);                                                            \
      abort();                                                                   \
    }                                                                            \
  } while (0)

static hp_decoder *dec_a, *dec_b, *dec_frames;
static hp_encoder *enc_a, *enc_b;

static int str_eq(hp_str a, hp_str b) {
  return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

static int encode(hp_encoder *e, const hp_msg *m) {
  switch (m->type) {
  case HP_MSG_HELLO: return hp_encode_hello(e, &m->u.hello);
  case HP_MSG_FRAME_DEF: return hp_encode_frame_def(e, &m->u.frame_def);
  case HP_MSG_STACK_DEF: return hp_encode_stack_def(e, &m->u.stack_def);
  case HP_MSG_EVENTS: return hp_encode_events(e, m->u.events.events, m->u.events.count);
  case HP_MSG_COUNTERS: return hp_encode_counters(e, &m->u.counters);
  case HP_MSG_GOODBYE: return hp_encode_goodbye(e, &m->u.goodbye);
  case HP_MSG_THREAD_DEF: return hp_encode_thread_def(e, &m->u.thread_def);
  case HP_MSG_MARKER: return hp_encode_marker(e, &m->u.marker);
  }
  abort();
}

static void check_equal(const hp_msg *a, const hp_msg *b) {
  CHECK(a->type == b->type);
  switch (a->type) {
  case HP_MSG_HELLO: {
    const hp_hello *x = &a->u.hello, *y = &b->u.hello;
    CHECK(x->version == y->version && x->pid == y->pid && x->ppid == y->ppid);
    CHECK(x->argc == y->argc);
    for (uint32_t i = 0; i < x->argc; i++)
      CHECK(str_eq(x->argv[i], y->argv[i]));
    CHECK(str_eq(x->executable, y->executable));
    CHECK(str_eq(x->python_version, y->python_version));
    CHECK(x->start_wall_ns == y->start_wall_ns && x->start_mono_ns == y->start_mono_ns);
    CHECK(x->sample_interval_bytes == y->sample_interval_bytes);
    CHECK(x->max_stack_depth == y->max_stack_depth && x->nbuckets == y->nbuckets);
    for (uint32_t i = 0; i < x->nbuckets; i++) {
      CHECK(x->buckets[i].max_size == y->buckets[i].max_size);
      /* float32 input widens exactly to the float64 the encoder writes */
      CHECK(x->buckets[i].rate == y->buckets[i].rate);
    }
    break;
  }
  case HP_MSG_FRAME_DEF:
    CHECK(a->u.frame_def.frame_id == b->u.frame_def.frame_id);
    CHECK(str_eq(a->u.frame_def.function, b->u.frame_def.function));
    CHECK(str_eq(a->u.frame_def.filename, b->u.frame_def.filename));
    CHECK(a->u.frame_def.lineno == b->u.frame_def.lineno);
    break;
  case HP_MSG_STACK_DEF:
    CHECK(a->u.stack_def.stack_id == b->u.stack_def.stack_id);
    CHECK(a->u.stack_def.truncated == b->u.stack_def.truncated);
    CHECK(a->u.stack_def.depth == b->u.stack_def.depth);
    CHECK(memcmp(a->u.stack_def.frame_ids, b->u.stack_def.frame_ids,
                 a->u.stack_def.depth * sizeof(uint32_t)) == 0);
    break;
  case HP_MSG_EVENTS:
    CHECK(a->u.events.count == b->u.events.count);
    for (uint32_t i = 0; i < a->u.events.count; i++) {
      const hp_event *x = &a->u.events.events[i], *y = &b->u.events.events[i];
      CHECK(x->kind == y->kind && x->ts_ns == y->ts_ns && x->thread_id == y->thread_id);
      CHECK(x->address == y->address && x->domain == y->domain);
      CHECK(x->stack_id == y->stack_id && x->size == y->size);
      CHECK(x->est_bytes == y->est_bytes);
    }
    break;
  case HP_MSG_COUNTERS:
    CHECK(a->u.counters.ts_ns == b->u.counters.ts_ns);
    CHECK(a->u.counters.events_dropped == b->u.counters.events_dropped);
    CHECK(a->u.counters.sample_interval_bytes == b->u.counters.sample_interval_bytes);
    CHECK(a->u.counters.events_sent == b->u.counters.events_sent);
    break;
  case HP_MSG_GOODBYE:
    CHECK(a->u.goodbye.ts_ns == b->u.goodbye.ts_ns);
    CHECK(a->u.goodbye.events_dropped == b->u.goodbye.events_dropped);
    CHECK(a->u.goodbye.end_reason == b->u.goodbye.end_reason);
    break;
  case HP_MSG_THREAD_DEF:
    CHECK(a->u.thread_def.thread_id == b->u.thread_def.thread_id);
    CHECK(str_eq(a->u.thread_def.name, b->u.thread_def.name));
    break;
  case HP_MSG_MARKER:
    CHECK(a->u.marker.ts_ns == b->u.marker.ts_ns);
    CHECK(str_eq(a->u.marker.label, b->u.marker.label));
    break;
  }
}

static void roundtrip(const uint8_t *data, size_t size) {
  hp_msg m1, m2;
  int rc = hp_decoder_decode(dec_a, data, size, &m1);
  const char *err = hp_decoder_error(dec_a);
  if (rc != 0) {
    CHECK(rc < 0 && err[0] != '\0');
    return;
  }
  CHECK(err[0] == '\0');
  hp_encoder_reset(enc_a);
  rc = encode(enc_a, &m1);
  if (rc == -HP_ETOOBIG)
    return;  /* a legal message re-encoded in canonical form is never larger, but be safe */
  CHECK(rc == 0);
  size_t n1;
  const uint8_t *p1 = hp_encoder_data(enc_a, &n1);
  CHECK(n1 >= 4);
  CHECK(hp_decoder_decode(dec_b, p1 + 4, n1 - 4, &m2) == 0);
  check_equal(&m1, &m2);
  hp_encoder_reset(enc_b);
  CHECK(encode(enc_b, &m2) == 0);
  size_t n2;
  const uint8_t *p2 = hp_encoder_data(enc_b, &n2);
  CHECK(n1 == n2 && memcmp(p1, p2, n1) == 0);
}

static void frames(const uint8_t *data, size_t size) {
  if (size == 0)
    return;
  size_t piece = (size_t)(data[0] % 23) + 1;
  hp_framer *f = hp_framer_new(4096);
  CHECK(f != NULL);
  int dead = 0;
  for (size_t off = 1; off < size && !dead; off += piece) {
    size_t n = size - off < piece ? size - off : piece;
    CHECK(hp_framer_feed(f, data + off, n) == 0);
    const uint8_t *payload;
    uint32_t len;
    int rc;
    while ((rc = hp_framer_next(f, &payload, &len)) == 1) {
      CHECK(len <= 4096);
      hp_msg m;
      (void)hp_decoder_decode(dec_frames, payload, len, &m);
    }
    CHECK(rc == 0 || rc == -HP_ETOOBIG);
    dead = rc == -HP_ETOOBIG;
    /* bounded: at most one frame plus one piece */
    CHECK(hp_framer_buffered(f) <= 4096 + 4 + piece);
  }
  hp_framer_free(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (dec_a == NULL) {
    dec_a = hp_decoder_new();
    dec_b = hp_decoder_new();
    dec_frames = hp_decoder_new();
    enc_a = hp_encoder_new(0);
    enc_b = hp_encoder_new(0);
    CHECK(dec_a && dec_b && dec_frames && enc_a && enc_b);
  }
  roundtrip(data, size);
  frames(data, size);
  return 0;
}
