/* check_framer.c — unit tests of the frame reassembler (proto/hp_framer.c).
 *
 * A libuv read callback can deliver any number of bytes, so the same stream is fed
 * split at every byte offset (and byte by byte) and must yield the same payloads. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "hp_proto.h"
#include "hp_proto_int.h"

Suite *framer_suite(void);

/* A stream of frames with distinct payloads, including an empty one. */
#define NFRAMES 5
static const uint32_t frame_lens[NFRAMES] = { 3, 0, 17, 1, 300 };

static uint8_t *make_stream(size_t *len) {
  size_t total = 0;
  for (int i = 0; i < NFRAMES; i++)
    total += 4 + frame_lens[i];
  uint8_t *s = malloc(total);
  size_t off = 0;
  for (int i = 0; i < NFRAMES; i++) {
    uint32_t n = frame_lens[i];
    s[off++] = (uint8_t)(n >> 24);
    s[off++] = (uint8_t)(n >> 16);
    s[off++] = (uint8_t)(n >> 8);
    s[off++] = (uint8_t)n;
    for (uint32_t k = 0; k < n; k++)
      s[off++] = (uint8_t)(i * 31 + k);
  }
  *len = total;
  return s;
}

/* Frame number i of a stream that repeats the NFRAMES frames. */
static void assert_payload(int i, const uint8_t *p, uint32_t len) {
  i %= NFRAMES;
  ck_assert_uint_eq(len, frame_lens[i]);
  for (uint32_t k = 0; k < len; k++)
    ck_assert_uint_eq(p[k], (uint8_t)(i * 31 + k));
}

/* Drains every complete frame; returns how many frames have been seen in total. */
static int drain(hp_framer *f, int seen) {
  const uint8_t *p;
  uint32_t len;
  int rc;
  while ((rc = hp_framer_next(f, &p, &len)) == 1) {
    assert_payload(seen, p, len);
    seen++;
  }
  ck_assert_int_eq(rc, 0);
  return seen;
}

START_TEST(split_at_every_offset_yields_the_same_frames) {
  size_t len;
  uint8_t *s = make_stream(&len);
  for (size_t cut = 0; cut <= len; cut++) {
    hp_framer *f = hp_framer_new(0);
    ck_assert_ptr_nonnull(f);
    /* Heap copies of exactly each piece, so ASan sees any over-read. */
    uint8_t *a = malloc(cut ? cut : 1), *b = malloc(len - cut ? len - cut : 1);
    memcpy(a, s, cut);
    memcpy(b, s + cut, len - cut);
    ck_assert_int_eq(hp_framer_feed(f, a, cut), 0);
    int seen = drain(f, 0);
    ck_assert_int_eq(hp_framer_feed(f, b, len - cut), 0);
    seen = drain(f, seen);
    ck_assert_int_eq(seen, NFRAMES);
    ck_assert_uint_eq(hp_framer_buffered(f), 0);
    free(a);
    free(b);
    hp_framer_free(f);
  }
  free(s);
}
END_TEST

START_TEST(split_at_every_pair_of_offsets) {
  size_t len;
  uint8_t *s = make_stream(&len);
  /* Three pieces, over the first 60 bytes where all the small frames are. */
  for (size_t c1 = 0; c1 <= 60; c1++) {
    for (size_t c2 = c1; c2 <= 60; c2++) {
      hp_framer *f = hp_framer_new(0);
      ck_assert_int_eq(hp_framer_feed(f, s, c1), 0);
      int seen = drain(f, 0);
      ck_assert_int_eq(hp_framer_feed(f, s + c1, c2 - c1), 0);
      seen = drain(f, seen);
      ck_assert_int_eq(hp_framer_feed(f, s + c2, len - c2), 0);
      seen = drain(f, seen);
      ck_assert_int_eq(seen, NFRAMES);
      hp_framer_free(f);
    }
  }
  free(s);
}
END_TEST

START_TEST(byte_by_byte_and_all_at_once) {
  size_t len;
  uint8_t *s = make_stream(&len);
  hp_framer *f = hp_framer_new(0);
  int seen = 0;
  for (size_t i = 0; i < len; i++) {
    ck_assert_int_eq(hp_framer_feed(f, s + i, 1), 0);
    seen = drain(f, seen);
  }
  ck_assert_int_eq(seen, NFRAMES);
  /* the whole stream twice in one feed, not drained in between */
  uint8_t *twice = malloc(2 * len);
  memcpy(twice, s, len);
  memcpy(twice + len, s, len);
  ck_assert_int_eq(hp_framer_feed(f, twice, 2 * len), 0);
  ck_assert_uint_eq(hp_framer_buffered(f), 2 * len);
  ck_assert_int_eq(drain(f, 0), 2 * NFRAMES);
  ck_assert_uint_eq(hp_framer_buffered(f), 0);
  hp_framer_free(f);
  free(twice);
  free(s);
}
END_TEST

START_TEST(encoder_output_reassembles_and_decodes) {
  hp_encoder *e = hp_encoder_new(0);
  hp_event ev[100];
  memset(ev, 0, sizeof(ev));
  for (int i = 0; i < 100; i++) {
    ev[i].kind = HP_EV_ALLOC;
    ev[i].ts_ns = 1000u + (unsigned)i;
    ev[i].address = 0x1000u + 16u * (unsigned)i;
    ev[i].size = (unsigned)i;
  }
  for (int k = 0; k < 10; k++)
    ck_assert_int_eq(hp_encode_events(e, ev, (uint32_t)(10 * k)), 0);
  size_t n;
  const uint8_t *p = hp_encoder_data(e, &n);
  hp_framer *f = hp_framer_new(0);
  hp_decoder *d = hp_decoder_new();
  int frames = 0;
  for (size_t off = 0; off < n; off += 7) {
    size_t piece = n - off < 7 ? n - off : 7;
    ck_assert_int_eq(hp_framer_feed(f, p + off, piece), 0);
    const uint8_t *payload;
    uint32_t len;
    int rc;
    while ((rc = hp_framer_next(f, &payload, &len)) == 1) {
      hp_msg m;
      ck_assert_int_eq(hp_decoder_decode(d, payload, len, &m), 0);
      ck_assert_int_eq(m.type, HP_MSG_EVENTS);
      ck_assert_uint_eq(m.u.events.count, 10u * (uint32_t)frames);
      if (m.u.events.count > 0)
        ck_assert_uint_eq(m.u.events.events[m.u.events.count - 1].ts_ns,
                          1000u + m.u.events.count - 1);
      frames++;
    }
    ck_assert_int_eq(rc, 0);
  }
  ck_assert_int_eq(frames, 10);
  hp_decoder_free(d);
  hp_framer_free(f);
  hp_encoder_free(e);
}
END_TEST

/* ------------------------------------------------------------------ limits */

START_TEST(refuses_oversized_header_without_buffering_the_frame) {
  hp_framer *f = hp_framer_new(1000);
  /* One good frame, then a header announcing 1001 bytes, then lots of data. */
  uint8_t head[] = { 0, 0, 0, 2, 0xaa, 0xbb, 0, 0, 0x03, 0xe9 };
  ck_assert_int_eq(hp_framer_feed(f, head, sizeof(head)), 0);
  uint8_t *junk = calloc(1, 64 * 1024);
  for (int i = 0; i < 32; i++) {
    ck_assert_int_eq(hp_framer_feed(f, junk, 64 * 1024), 0);
    /* nothing past the bad header is kept */
    ck_assert_uint_le(hp_framer_buffered(f), sizeof(head));
  }
  const uint8_t *p;
  uint32_t len;
  ck_assert_int_eq(hp_framer_next(f, &p, &len), 1);
  ck_assert_uint_eq(len, 2);
  ck_assert_uint_eq(p[0], 0xaa);
  len = 0;
  ck_assert_int_eq(hp_framer_next(f, &p, &len), -HP_ETOOBIG);
  ck_assert_uint_eq(len, 1001);   /* the announced length, for the error message */
  len = 0;
  ck_assert_int_eq(hp_framer_next(f, &p, &len), -HP_ETOOBIG);   /* and it stays so */
  ck_assert_uint_eq(len, 1001);
  ck_assert_int_eq(hp_framer_feed(f, head, sizeof(head)), 0);
  ck_assert_int_eq(hp_framer_next(f, &p, &len), -HP_ETOOBIG);
  ck_assert_uint_eq(len, 1001);
  ck_assert_uint_eq(hp_framer_buffered(f), 0);
  free(junk);
  hp_framer_free(f);
}
END_TEST

START_TEST(refuses_above_default_limit_as_soon_as_header_is_complete) {
  hp_framer *f = hp_framer_new(0);
  uint32_t n = HP_MAX_FRAME_BYTES + 1u;
  uint8_t hdr[4] = { (uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n };
  const uint8_t *p;
  uint32_t len;
  ck_assert_int_eq(hp_framer_feed(f, hdr, 3), 0);
  ck_assert_int_eq(hp_framer_next(f, &p, &len), 0);
  ck_assert_int_eq(hp_framer_feed(f, hdr + 3, 1), 0);
  ck_assert_int_eq(hp_framer_next(f, &p, &len), -HP_ETOOBIG);
  ck_assert_uint_eq(len, HP_MAX_FRAME_BYTES + 1u);
  hp_framer_free(f);

  /* exactly at the limit is accepted */
  f = hp_framer_new(0);
  n = HP_MAX_FRAME_BYTES;
  uint8_t ok[4] = { (uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n };
  ck_assert_int_eq(hp_framer_feed(f, ok, 4), 0);
  uint8_t *body = malloc(64 * 1024);
  memset(body, 0x5a, 64 * 1024);
  size_t fed = 0;
  while (fed < HP_MAX_FRAME_BYTES) {
    ck_assert_int_eq(hp_framer_next(f, &p, &len), 0);
    ck_assert_int_eq(hp_framer_feed(f, body, 64 * 1024), 0);
    fed += 64 * 1024;
    /* memory stays at one frame plus one read */
    ck_assert_uint_le(hp_framer_buffered(f), HP_MAX_FRAME_BYTES + 4u + 64u * 1024u);
  }
  ck_assert_int_eq(hp_framer_next(f, &p, &len), 1);
  ck_assert_uint_eq(len, HP_MAX_FRAME_BYTES);
  ck_assert_uint_eq(p[0], 0x5a);
  ck_assert_uint_eq(p[len - 1], 0x5a);
  free(body);
  hp_framer_free(f);
}
END_TEST

START_TEST(max_frame_above_protocol_limit_is_clamped) {
  hp_framer *f = hp_framer_new(UINT32_MAX);
  uint32_t n = HP_MAX_FRAME_BYTES + 1u;
  uint8_t hdr[4] = { (uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n };
  const uint8_t *p;
  uint32_t len;
  ck_assert_int_eq(hp_framer_feed(f, hdr, 4), 0);
  ck_assert_int_eq(hp_framer_next(f, &p, &len), -HP_ETOOBIG);
  hp_framer_free(f);
  hp_framer_free(NULL);
}
END_TEST

/* ------------------------------------------------------------------ oom */

START_TEST(feed_reports_enomem_and_recovers) {
  hp_framer *f = hp_framer_new(0);
  size_t len;
  uint8_t *s = make_stream(&len);
  hp_proto_test_fail_alloc_after(0);
  int rc = hp_framer_feed(f, s, len);
  hp_proto_test_fail_alloc_after(-1);
  ck_assert_int_eq(rc, -HP_ENOMEM);
  ck_assert_uint_eq(hp_framer_buffered(f), 0);
  ck_assert_int_eq(hp_framer_feed(f, s, len), 0);
  ck_assert_int_eq(drain(f, 0), NFRAMES);
  free(s);
  hp_framer_free(f);

  hp_proto_test_fail_alloc_after(0);
  f = hp_framer_new(0);
  hp_proto_test_fail_alloc_after(-1);
  ck_assert_ptr_null(f);
}
END_TEST

Suite *framer_suite(void) {
  Suite *s = suite_create("framer");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, split_at_every_offset_yields_the_same_frames);
  tcase_add_test(tc, split_at_every_pair_of_offsets);
  tcase_add_test(tc, byte_by_byte_and_all_at_once);
  tcase_add_test(tc, encoder_output_reassembles_and_decodes);
  suite_add_tcase(s, tc);
  tc = tcase_create("limits");
  tcase_add_test(tc, refuses_oversized_header_without_buffering_the_frame);
  tcase_add_test(tc, refuses_above_default_limit_as_soon_as_header_is_complete);
  tcase_add_test(tc, max_frame_above_protocol_limit_is_clamped);
  suite_add_tcase(s, tc);
  tc = tcase_create("oom");
  tcase_add_test(tc, feed_reports_enomem_and_recovers);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(framer_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
