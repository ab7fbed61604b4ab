/* check_conn.c — the stream-order state machine of one agent connection, driven both
 * with decoded messages (hp_conn_handle) and with encoded bytes split at every offset
 * (hp_conn_feed), as a libuv read callback may deliver them; and the numbering of frame
 * and stack ids that the sink receives. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hp_conn.h"
#include "hp_error.h"
#include "hp_proto.h"

/* ------------------------------------------------------------------ recording sink */

typedef struct {
  int hello, frames, stacks, batches, counters, goodbye, threads, markers;
  uint64_t events;
  uint64_t reattributes, native;
  uint32_t last_frame_id, last_stack_id;
  uint32_t last_stack_frames[4];        /* the first frame ids of the last STACK_DEF */
  uint32_t last_event_stacks[3];        /* the stack ids of the last batch's first events */
  int fail_with;    /* returned by every callback when nonzero */
} rec;

static int r_hello(void *c, const hp_hello *m) { rec *r = c; (void)m; r->hello++; return r->fail_with; }
static int r_frame(void *c, const hp_frame_def *m) {
  rec *r = c; r->frames++; r->last_frame_id = m->frame_id; return r->fail_with;
}
static int r_stack(void *c, const hp_stack_def *m) {
  rec *r = c;
  r->stacks++;
  r->last_stack_id = m->stack_id;
  for (uint32_t i = 0; i < m->depth && i < 4; i++)
    r->last_stack_frames[i] = m->frame_ids[i];
  return r->fail_with;
}
static int r_events(void *c, const hp_event *e, uint32_t n) {
  rec *r = c;
  r->batches++;
  r->events += n;
  for (uint32_t i = 0; i < n; i++) {
    r->reattributes += e[i].kind == HP_EV_REATTRIBUTE;
    r->native += e[i].kind == HP_EV_ALLOC && e[i].domain == HP_DOMAIN_NATIVE;
    if (i < 3)
      r->last_event_stacks[i] = e[i].stack_id;
  }
  return r->fail_with;
}
static int r_counters(void *c, const hp_counters *m) { rec *r = c; (void)m; r->counters++; return r->fail_with; }
static int r_goodbye(void *c, const hp_goodbye *m) { rec *r = c; (void)m; r->goodbye++; return r->fail_with; }
static int r_thread(void *c, const hp_thread_def *m) { rec *r = c; (void)m; r->threads++; return r->fail_with; }
static int r_marker(void *c, const hp_marker *m) { rec *r = c; (void)m; r->markers++; return r->fail_with; }
static const hp_conn_sink sink = {r_hello, r_frame, r_stack, r_events, r_counters, r_goodbye,
                                  r_thread, r_marker};

static rec R;
static hp_conn *C;
static void setup(void) { memset(&R, 0, sizeof R); C = hp_conn_new(&sink, &R); ck_assert_ptr_nonnull(C); }
static void teardown(void) { hp_conn_free(C); }

/* ------------------------------------------------------------------ message builders */

static hp_str S(const char *s) { return (hp_str){s, (uint32_t)strlen(s)}; }
static const hp_str argv_[] = {{"python", 6}, {"x.py", 4}};

static hp_msg hello(uint32_t version) {
  hp_msg m = {.type = HP_MSG_HELLO};
  m.u.hello = (hp_hello){.version = version, .pid = 42, .ppid = 1, .argc = 2, .argv = argv_,
                         .executable = S("/usr/bin/python3"), .python_version = S("3.11.2"),
                         .start_wall_ns = 1700000000000000000ULL, .start_mono_ns = 1000,
                         .sample_interval_bytes = 1, .max_stack_depth = 64};
  return m;
}
static hp_msg frame(uint32_t id) {
  hp_msg m = {.type = HP_MSG_FRAME_DEF};
  m.u.frame_def = (hp_frame_def){id, S("f"), S("x.py"), (int32_t)id};
  return m;
}
static uint32_t ids_[4] = {1, 2, 3, 4};
static hp_msg stack(uint32_t id, uint32_t depth, const uint32_t *frames) {
  hp_msg m = {.type = HP_MSG_STACK_DEF};
  m.u.stack_def = (hp_stack_def){.stack_id = id, .truncated = 0, .depth = depth, .frame_ids = frames};
  return m;
}
static hp_event evs_[3];
static hp_msg events(uint32_t stack_id) {
  evs_[0] = (hp_event){.kind = HP_EV_ALLOC, .domain = HP_DOMAIN_OBJ, .stack_id = stack_id,
                       .ts_ns = 2000, .thread_id = 1, .address = 0x1000, .size = 32, .est_bytes = 32};
  evs_[1] = (hp_event){.kind = HP_EV_ALLOC, .domain = HP_DOMAIN_MEM, .stack_id = HP_NO_STACK,
                       .ts_ns = 2001, .thread_id = 1, .address = 0x2000, .size = 64, .est_bytes = 64};
  evs_[2] = (hp_event){.kind = HP_EV_FREE, .ts_ns = 2002, .thread_id = 1, .address = 0x1000};
  hp_msg m = {.type = HP_MSG_EVENTS};
  m.u.events = (hp_events){3, evs_};
  return m;
}
static hp_msg goodbye(void) {
  hp_msg m = {.type = HP_MSG_GOODBYE};
  m.u.goodbye = (hp_goodbye){3000, 5, HP_END_STOPPED};
  return m;
}
static hp_msg thread_def(uint64_t tid, const char *name) {
  hp_msg m = {.type = HP_MSG_THREAD_DEF};
  m.u.thread_def = (hp_thread_def){tid, S(name)};
  return m;
}
static hp_msg marker(uint64_t ts, const char *label) {
  hp_msg m = {.type = HP_MSG_MARKER};
  m.u.marker = (hp_marker){ts, S(label)};
  return m;
}
/* A native allocation, then a reattribute of it under stack_id. */
static hp_event evr_[2];
static hp_msg native_and_reattribute(uint32_t stack_id) {
  evr_[0] = (hp_event){.kind = HP_EV_ALLOC, .domain = HP_DOMAIN_NATIVE, .ts_ns = 2000,
                       .thread_id = 7, .address = 0x3000, .size = 4096, .est_bytes = 4096};
  evr_[1] = (hp_event){.kind = HP_EV_REATTRIBUTE, .stack_id = stack_id, .ts_ns = 2100,
                       .thread_id = 8, .address = 0x3000};
  hp_msg m = {.type = HP_MSG_EVENTS};
  m.u.events = (hp_events){2, evr_};
  return m;
}

static void handle_ok(hp_msg m) { ck_assert_int_eq(hp_conn_handle(C, &m), 0); }

/* ------------------------------------------------------------------ order */

START_TEST(conn_accepts_a_well_ordered_stream) {
  handle_ok(hello(HP_PROTO_VERSION));
  handle_ok(frame(1));
  handle_ok(frame(2));
  handle_ok(stack(7, 2, ids_));
  handle_ok(events(7));
  hp_msg cm = {.type = HP_MSG_COUNTERS};
  handle_ok(cm);
  hp_msg g = goodbye();
  ck_assert_int_eq(hp_conn_handle(C, &g), 1);
  ck_assert_int_eq(R.hello, 1);
  ck_assert_int_eq(R.frames, 2);
  ck_assert_int_eq(R.stacks, 1);
  ck_assert_uint_eq(R.events, 3);
  ck_assert_int_eq(R.counters, 1);
  ck_assert_int_eq(R.goodbye, 1);
  ck_assert_str_eq(hp_conn_error(C), "");
}
END_TEST

START_TEST(conn_rejects_events_before_hello) {
  hp_msg m = events(0);
  ck_assert_int_eq(hp_conn_handle(C, &m), -HP_EORDER);
  ck_assert_ptr_nonnull(strstr(hp_conn_error(C), "EVENTS before HELLO"));
  ck_assert_int_eq(R.batches, 0);
  /* A failed stream accepts nothing more, not even a HELLO. */
  hp_msg h = hello(HP_PROTO_VERSION);
  ck_assert_int_eq(hp_conn_handle(C, &h), -HP_ECLOSED);
  ck_assert_int_eq(R.hello, 0);
}
END_TEST

START_TEST(conn_rejects_second_hello) {
  handle_ok(hello(HP_PROTO_VERSION));
  hp_msg h = hello(HP_PROTO_VERSION);
  ck_assert_int_eq(hp_conn_handle(C, &h), -HP_EORDER);
  ck_assert_int_eq(R.hello, 1);
}
END_TEST

START_TEST(conn_rejects_wrong_version) {
  hp_msg h = hello(HP_PROTO_VERSION + 1);
  ck_assert_int_eq(hp_conn_handle(C, &h), -HP_EVERSION);
  ck_assert_ptr_nonnull(strstr(hp_conn_error(C), "protocol version"));
  ck_assert_int_eq(R.hello, 0);
}
END_TEST

START_TEST(conn_rejects_duplicate_frame_and_stack) {
  handle_ok(hello(HP_PROTO_VERSION));
  handle_ok(frame(1));
  hp_msg f = frame(1);
  ck_assert_int_eq(hp_conn_handle(C, &f), -HP_EDUP);
  ck_assert_ptr_nonnull(strstr(hp_conn_error(C), "frame id 1 defined twice"));
  ck_assert_int_eq(R.frames, 1);

  teardown();
  setup();
  handle_ok(hello(HP_PROTO_VERSION));
  handle_ok(frame(1));
  handle_ok(stack(3, 1, ids_));
  hp_msg s = stack(3, 1, ids_);
  ck_assert_int_eq(hp_conn_handle(C, &s), -HP_EDUP);
  ck_assert_int_eq(R.stacks, 1);
}
END_TEST

START_TEST(conn_rejects_stack_with_undefined_frame) {
  handle_ok(hello(HP_PROTO_VERSION));
  handle_ok(frame(1));
  hp_msg s = stack(5, 3, ids_);  /* frames 2 and 3 were never defined */
  ck_assert_int_eq(hp_conn_handle(C, &s), -HP_EUNDEF);
  ck_assert_ptr_nonnull(strstr(hp_conn_error(C), "frame id 2"));
  ck_assert_int_eq(R.stacks, 0);
}
END_TEST

START_TEST(conn_rejects_events_with_undefined_stack_as_a_batch) {
  handle_ok(hello(HP_PROTO_VERSION));
  hp_msg e = events(9);
  ck_assert_int_eq(hp_conn_handle(C, &e), -HP_EUNDEF);
  ck_assert_ptr_nonnull(strstr(hp_conn_error(C), "stack id 9"));
  ck_assert_int_eq(R.batches, 0);  /* nothing of the bad batch is passed on */
  ck_assert_uint_eq(R.events, 0);
}
END_TEST

START_TEST(conn_rejects_messages_after_goodbye) {
  handle_ok(hello(HP_PROTO_VERSION));
  hp_msg g = goodbye();
  ck_assert_int_eq(hp_conn_handle(C, &g), 1);
  hp_msg e = events(0);
  ck_assert_int_eq(hp_conn_handle(C, &e), -HP_EORDER);
  ck_assert_ptr_nonnull(strstr(hp_conn_error(C), "after GOODBYE"));
  ck_assert_int_eq(R.batches, 0);
}
END_TEST

/* THREAD_DEF and MARKER may come anywhere between HELLO and GOODBYE, also more than once
 * for one thread (a rename), and reach the sink. */
START_TEST(conn_passes_thread_names_and_markers_between_hello_and_goodbye) {
  handle_ok(hello(HP_PROTO_VERSION));
  handle_ok(thread_def(100, "MainThread"));
  handle_ok(marker(1500, "start"));
  handle_ok(frame(1));
  handle_ok(thread_def(100, "renamed"));
  handle_ok(marker(1400, "earlier than the last one"));
  hp_msg g = goodbye();
  ck_assert_int_eq(hp_conn_handle(C, &g), 1);
  ck_assert_int_eq(R.threads, 2);
  ck_assert_int_eq(R.markers, 2);
  hp_msg t = thread_def(101, "late");
  ck_assert_int_eq(hp_conn_handle(C, &t), -HP_EORDER);
  ck_assert_str_eq(hp_conn_error(C), "THREAD_DEF after GOODBYE");
  ck_assert_int_eq(R.threads, 2);
}
END_TEST

START_TEST(conn_rejects_thread_def_and_marker_before_hello) {
  hp_msg t = thread_def(1, "x");
  ck_assert_int_eq(hp_conn_handle(C, &t), -HP_EORDER);
  ck_assert_str_eq(hp_conn_error(C), "THREAD_DEF before HELLO");
  teardown();
  setup();
  hp_msg k = marker(1, "x");
  ck_assert_int_eq(hp_conn_handle(C, &k), -HP_EORDER);
  ck_assert_str_eq(hp_conn_error(C), "MARKER before HELLO");
  ck_assert_int_eq(R.threads + R.markers, 0);
}
END_TEST

/* Reattribute events name stacks under the same rule as allocations; native allocations
 * (domain 3) are accepted. */
START_TEST(conn_checks_reattribute_stacks_and_accepts_native) {
  handle_ok(hello(HP_PROTO_VERSION));
  handle_ok(frame(1));
  handle_ok(stack(7, 1, ids_));
  handle_ok(native_and_reattribute(7));
  handle_ok(native_and_reattribute(HP_NO_STACK));
  ck_assert_uint_eq(R.reattributes, 2);
  ck_assert_uint_eq(R.native, 2);
  hp_msg bad = native_and_reattribute(8);
  ck_assert_int_eq(hp_conn_handle(C, &bad), -HP_EUNDEF);
  ck_assert_str_eq(hp_conn_error(C), "event 1 of EVENTS uses stack id 8, which was never defined");
  ck_assert_uint_eq(R.reattributes, 2);   /* the bad batch is refused as a unit */
  ck_assert_uint_eq(R.events, 4);
}
END_TEST

START_TEST(conn_stops_when_the_sink_fails) {
  R.fail_with = -HP_ENOMEM;
  hp_msg h = hello(HP_PROTO_VERSION);
  ck_assert_int_eq(hp_conn_handle(C, &h), -HP_ENOMEM);
  ck_assert_ptr_nonnull(strstr(hp_conn_error(C), "out of memory"));
  R.fail_with = 0;
  ck_assert_int_eq(hp_conn_handle(C, &h), -HP_ECLOSED);  /* the stream has failed */
  ck_assert_int_eq(R.hello, 1);
}
END_TEST

/* The sink gets ids numbered 1, 2, ... in order of definition, frames and stacks each
 * on their own, whatever ids the agent chose; references are renumbered to match. */
START_TEST(conn_numbers_frames_and_stacks_in_order_of_definition) {
  handle_ok(hello(HP_PROTO_VERSION));
  handle_ok(frame(100));
  ck_assert_uint_eq(R.last_frame_id, 1);
  handle_ok(frame(7));
  handle_ok(frame(42));
  ck_assert_uint_eq(R.last_frame_id, 3);
  uint32_t frames[2] = {42, 100};
  handle_ok(stack(9, 2, frames));
  ck_assert_uint_eq(R.last_stack_id, 1);
  ck_assert_uint_eq(R.last_stack_frames[0], 3);
  ck_assert_uint_eq(R.last_stack_frames[1], 1);
  uint32_t one[1] = {7};
  handle_ok(stack(3, 1, one));
  ck_assert_uint_eq(R.last_stack_id, 2);
  ck_assert_uint_eq(R.last_stack_frames[0], 2);
  handle_ok(events(3));   /* stack 3, no stack, a free */
  ck_assert_uint_eq(R.last_event_stacks[0], 2);
  ck_assert_uint_eq(R.last_event_stacks[1], HP_NO_STACK);
  handle_ok(native_and_reattribute(9));
  ck_assert_uint_eq(R.last_event_stacks[1], 1);
}
END_TEST

/* Random message sequences against a small model of the rules: the verdict on every
 * message and what reached the sink must match. Ids come from a tiny range so that
 * duplicates and undefined references are frequent. */
static uint32_t rng_state;
static uint32_t rnd(uint32_t n) {
  rng_state = rng_state * 1664525u + 1013904223u;
  return (rng_state >> 8) % n;
}

START_TEST(conn_random_sequences_match_the_model) {
  rng_state = 12345u + (uint32_t)_i;
  for (int round = 0; round < 200; round++) {
    teardown();
    setup();
    int state = 0;  /* 0 expect hello, 1 streaming, 2 done, 3 failed */
    int fdef[6] = {0}, sdef[6] = {0};
    int want_frames = 0, want_stacks = 0;
    uint64_t want_events = 0;
    for (int step = 0; step < 24; step++) {
      hp_msg m;
      uint32_t fr[3];
      int expect;
      switch (rnd(state == 0 ? 3 : 6)) {
      case 0:
        m = hello(HP_PROTO_VERSION);
        expect = state == 3 ? -HP_ECLOSED : state == 2 ? -HP_EORDER
               : state == 1 ? -HP_EORDER : 0;
        if (expect == 0)
          state = 1;
        break;
      case 1: {
        uint32_t id = 1 + rnd(5);
        m = frame(id);
        expect = state == 3 ? -HP_ECLOSED : state != 1 ? -HP_EORDER
               : fdef[id] ? -HP_EDUP : 0;
        if (expect == 0) {
          fdef[id] = 1;
          want_frames++;
        }
        break;
      }
      case 2: {
        uint32_t id = 1 + rnd(5), depth = 1 + rnd(3);
        for (uint32_t k = 0; k < depth; k++)
          fr[k] = 1 + rnd(5);
        m = stack(id, depth, fr);
        int undef = 0;
        for (uint32_t k = 0; k < depth; k++)
          undef |= !fdef[fr[k]];
        expect = state == 3 ? -HP_ECLOSED : state != 1 ? -HP_EORDER
               : sdef[id] ? -HP_EDUP : undef ? -HP_EUNDEF : 0;
        if (expect == 0) {
          sdef[id] = 1;
          want_stacks++;
        }
        break;
      }
      case 3:
      case 4: {
        uint32_t sid = rnd(6);  /* 0 = no stack: always valid */
        m = events(sid);
        expect = state == 3 ? -HP_ECLOSED : state != 1 ? -HP_EORDER
               : (sid != 0 && !sdef[sid]) ? -HP_EUNDEF : 0;
        if (expect == 0)
          want_events += 3;
        break;
      }
      default:
        m = goodbye();
        expect = state == 3 ? -HP_ECLOSED : state != 1 ? -HP_EORDER : 1;
        if (expect == 1)
          state = 2;
        break;
      }
      int rc = hp_conn_handle(C, &m);
      ck_assert_msg(rc == expect, "round %d step %d: %s got %d, want %d (%s)", round, step,
                    hp_msg_type_name(m.type), rc, expect, hp_conn_error(C));
      if (expect < 0)
        state = 3;
    }
    ck_assert_int_eq(R.frames, want_frames);
    ck_assert_int_eq(R.stacks, want_stacks);
    ck_assert_uint_eq(R.events, want_events);
  }
}
END_TEST

/* ------------------------------------------------------------------ bytes */

static hp_encoder *encode_stream(void) {
  hp_encoder *e = hp_encoder_new(256);
  ck_assert_ptr_nonnull(e);
  hp_msg h = hello(HP_PROTO_VERSION), f1 = frame(1), f2 = frame(2), s = stack(7, 2, ids_),
         ev = events(7), g = goodbye(), t = thread_def(7, "worker"), k = marker(2500, "m");
  ck_assert_int_eq(hp_encode_hello(e, &h.u.hello), 0);
  ck_assert_int_eq(hp_encode_thread_def(e, &t.u.thread_def), 0);
  ck_assert_int_eq(hp_encode_frame_def(e, &f1.u.frame_def), 0);
  ck_assert_int_eq(hp_encode_frame_def(e, &f2.u.frame_def), 0);
  ck_assert_int_eq(hp_encode_stack_def(e, &s.u.stack_def), 0);
  ck_assert_int_eq(hp_encode_events(e, ev.u.events.events, ev.u.events.count), 0);
  ck_assert_int_eq(hp_encode_marker(e, &k.u.marker), 0);
  ck_assert_int_eq(hp_encode_goodbye(e, &g.u.goodbye), 0);
  return e;
}

START_TEST(conn_feed_split_at_every_offset) {
  hp_encoder *e = encode_stream();
  size_t len;
  const uint8_t *p = hp_encoder_data(e, &len);
  for (size_t cut = 0; cut <= len; cut++) {
    teardown();
    setup();
    int rc1 = hp_conn_feed(C, p, cut);
    ck_assert_int_ge(rc1, 0);
    int rc2 = hp_conn_feed(C, p + cut, len - cut);
    ck_assert_msg(rc1 == 1 || rc2 == 1, "cut %zu: goodbye not seen (%s)", cut, hp_conn_error(C));
    ck_assert_int_eq(R.hello, 1);
    ck_assert_int_eq(R.frames, 2);
    ck_assert_int_eq(R.stacks, 1);
    ck_assert_uint_eq(R.events, 3);
    ck_assert_int_eq(R.threads, 1);
    ck_assert_int_eq(R.markers, 1);
    ck_assert_int_eq(R.goodbye, 1);
  }
  hp_encoder_free(e);
}
END_TEST

START_TEST(conn_feed_rejects_oversized_frame_length) {
  uint8_t hdr[4] = {0x7f, 0xff, 0xff, 0xff};
  ck_assert_int_eq(hp_conn_feed(C, hdr, sizeof hdr), -HP_ETOOBIG);
  ck_assert_str_eq(hp_conn_error(C), "frame of 2048.0 MiB exceeds the 4 MiB limit");
  ck_assert_int_eq(R.hello, 0);
}
END_TEST

START_TEST(conn_oversized_error_names_the_announced_size) {
  uint32_t n = 9u * 1024u * 1024u;
  uint8_t hdr[4] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};
  ck_assert_int_eq(hp_conn_feed(C, hdr, sizeof hdr), -HP_ETOOBIG);
  ck_assert_str_eq(hp_conn_error(C), "frame of 9.0 MiB exceeds the 4 MiB limit");
}
END_TEST

START_TEST(conn_oversized_by_one_byte_is_named_in_bytes) {
  uint32_t n = HP_MAX_FRAME_BYTES + 1u;
  uint8_t hdr[4] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};
  ck_assert_int_eq(hp_conn_feed(C, hdr, sizeof hdr), -HP_ETOOBIG);
  ck_assert_str_eq(hp_conn_error(C), "frame of 4194305 bytes exceeds the 4 MiB limit");
}
END_TEST

START_TEST(conn_feed_rejects_garbage_after_good_data) {
  hp_encoder *e = hp_encoder_new(256);
  hp_msg h = hello(HP_PROTO_VERSION);
  ck_assert_int_eq(hp_encode_hello(e, &h.u.hello), 0);
  size_t len;
  const uint8_t *p = hp_encoder_data(e, &len);
  ck_assert_int_eq(hp_conn_feed(C, p, len), 0);
  /* A small frame whose payload is not a msgpack array of a known message. */
  uint8_t junk[] = {0, 0, 0, 3, 0xc1, 0xc1, 0xc1};
  ck_assert_int_lt(hp_conn_feed(C, junk, sizeof junk), 0);
  ck_assert_ptr_nonnull(strstr(hp_conn_error(C), "bad frame"));
  ck_assert_int_eq(R.hello, 1);
  ck_assert_int_eq(hp_conn_feed(C, p, len), -HP_ECLOSED);  /* the stream has failed */
  hp_encoder_free(e);
}
END_TEST

/* ------------------------------------------------------------------ limits */

/* Defines frame ids 1..n (a real agent's ids are dense from 1). */
static void define_frames(uint32_t n) {
  for (uint32_t id = 1; id <= n; id++) {
    hp_msg m = frame(id);
    ck_assert_int_eq(hp_conn_handle(C, &m), 0);
  }
}

START_TEST(conn_accepts_frames_up_to_the_limit_then_names_it) {
  handle_ok(hello(HP_PROTO_VERSION));
  define_frames(HP_CONN_MAX_FRAMES);
  ck_assert_int_eq(R.frames, (int)HP_CONN_MAX_FRAMES);
  hp_msg m = frame(HP_CONN_MAX_FRAMES + 1);
  ck_assert_int_eq(hp_conn_handle(C, &m), -HP_EFULL);
  ck_assert_int_eq(R.frames, (int)HP_CONN_MAX_FRAMES);  /* the one over was not passed on */
  char want[160];
  snprintf(want, sizeof want, "FRAME_DEF of frame id %u exceeds the limit of %u frames per "
           "session", HP_CONN_MAX_FRAMES + 1, HP_CONN_MAX_FRAMES);
  ck_assert_str_eq(hp_conn_error(C), want);
  ck_assert_int_eq(hp_conn_handle(C, &m), -HP_ECLOSED);
}
END_TEST

START_TEST(conn_accepts_stacks_up_to_the_limit_then_names_it) {
  handle_ok(hello(HP_PROTO_VERSION));
  define_frames(1);
  for (uint32_t id = 1; id <= HP_CONN_MAX_STACKS; id++) {
    hp_msg m = stack(id, 1, ids_);
    ck_assert_int_eq(hp_conn_handle(C, &m), 0);
  }
  ck_assert_int_eq(R.stacks, (int)HP_CONN_MAX_STACKS);
  /* Events may still use every defined stack. */
  handle_ok(events(HP_CONN_MAX_STACKS));
  hp_msg m = stack(HP_CONN_MAX_STACKS + 7, 1, ids_);
  ck_assert_int_eq(hp_conn_handle(C, &m), -HP_EFULL);
  ck_assert_int_eq(R.stacks, (int)HP_CONN_MAX_STACKS);
  ck_assert_uint_eq(R.last_stack_id, HP_CONN_MAX_STACKS);
  char want[160];
  snprintf(want, sizeof want, "STACK_DEF of stack id %u exceeds the limit of %u stacks per "
           "session", HP_CONN_MAX_STACKS + 7, HP_CONN_MAX_STACKS);
  ck_assert_str_eq(hp_conn_error(C), want);
}
END_TEST

/* A duplicate at the limit is still reported as a duplicate: the limit counts distinct
 * ids, and the more precise error wins. */
START_TEST(conn_duplicate_at_the_frame_limit_is_a_duplicate) {
  handle_ok(hello(HP_PROTO_VERSION));
  define_frames(HP_CONN_MAX_FRAMES);
  hp_msg m = frame(5);
  ck_assert_int_eq(hp_conn_handle(C, &m), -HP_EDUP);
  ck_assert_str_eq(hp_conn_error(C), "frame id 5 defined twice");
}
END_TEST

/* The limits are per stream: a second connection starts from zero. */
START_TEST(conn_limits_are_per_stream) {
  handle_ok(hello(HP_PROTO_VERSION));
  define_frames(HP_CONN_MAX_FRAMES);
  rec r2 = {0};
  hp_conn *c2 = hp_conn_new(&sink, &r2);
  ck_assert_ptr_nonnull(c2);
  hp_msg h = hello(HP_PROTO_VERSION), f = frame(HP_CONN_MAX_FRAMES + 1);
  ck_assert_int_eq(hp_conn_handle(c2, &h), 0);
  ck_assert_int_eq(hp_conn_handle(c2, &f), 0);
  ck_assert_int_eq(r2.frames, 1);
  ck_assert_uint_eq(r2.last_frame_id, 1);  /* numbered from 1 again */
  hp_conn_free(c2);
}
END_TEST

Suite *conn_suite(void) {
  Suite *s = suite_create("conn");
  TCase *order = tcase_create("order");
  tcase_add_checked_fixture(order, setup, teardown);
  tcase_add_test(order, conn_accepts_a_well_ordered_stream);
  tcase_add_test(order, conn_rejects_events_before_hello);
  tcase_add_test(order, conn_rejects_second_hello);
  tcase_add_test(order, conn_rejects_wrong_version);
  tcase_add_test(order, conn_rejects_duplicate_frame_and_stack);
  tcase_add_test(order, conn_rejects_stack_with_undefined_frame);
  tcase_add_test(order, conn_rejects_events_with_undefined_stack_as_a_batch);
  tcase_add_test(order, conn_rejects_messages_after_goodbye);
  tcase_add_test(order, conn_passes_thread_names_and_markers_between_hello_and_goodbye);
  tcase_add_test(order, conn_rejects_thread_def_and_marker_before_hello);
  tcase_add_test(order, conn_checks_reattribute_stacks_and_accepts_native);
  tcase_add_test(order, conn_stops_when_the_sink_fails);
  tcase_add_test(order, conn_numbers_frames_and_stacks_in_order_of_definition);
  tcase_add_loop_test(order, conn_random_sequences_match_the_model, 0, 5);
  suite_add_tcase(s, order);
  TCase *bytes = tcase_create("bytes");
  tcase_add_checked_fixture(bytes, setup, teardown);
  tcase_add_test(bytes, conn_feed_split_at_every_offset);
  tcase_add_test(bytes, conn_feed_rejects_oversized_frame_length);
  tcase_add_test(bytes, conn_oversized_error_names_the_announced_size);
  tcase_add_test(bytes, conn_oversized_by_one_byte_is_named_in_bytes);
  tcase_add_test(bytes, conn_feed_rejects_garbage_after_good_data);
  suite_add_tcase(s, bytes);
  TCase *limits = tcase_create("limits");
  tcase_add_checked_fixture(limits, setup, teardown);
  tcase_set_timeout(limits, 60);
  tcase_add_test(limits, conn_accepts_frames_up_to_the_limit_then_names_it);
  tcase_add_test(limits, conn_accepts_stacks_up_to_the_limit_then_names_it);
  tcase_add_test(limits, conn_duplicate_at_the_frame_limit_is_a_duplicate);
  tcase_add_test(limits, conn_limits_are_per_stream);
  suite_add_tcase(s, limits);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(conn_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
