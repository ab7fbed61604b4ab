/* check_sender.c — the sender thread over a socketpair, decoded with the real codec:
 * HELLO first, definitions before the events that use them, GOODBYE last with the drop
 * count; a peer that went away ends the thread with one failure callback. */
#include <check.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hp_intern.h"
#include "hp_proto.h"
#include "hp_ring.h"
#include "hp_sender.h"

static uint64_t fake_drops(void *arg)
{
  (void)arg;
  return 7;
}

static atomic_int g_failures;
static void on_failed(void *arg, int err)
{
  (void)arg;
  (void)err;
  atomic_fetch_add(&g_failures, 1);
}

static hp_hello test_hello(void)
{
  static const hp_str argv[2] = { { "app.py", 6 }, { "--x", 3 } };
  hp_hello h = { .version = HP_PROTO_VERSION, .pid = 1234, .ppid = 1,
                 .argc = 2, .argv = argv, .executable = { "/usr/bin/python3", 16 },
                 .python_version = { "3.11.7", 6 }, .start_wall_ns = 1, .start_mono_ns = 2,
                 .sample_interval_bytes = 65536, .max_stack_depth = 64 };
  return h;
}

START_TEST(stream_has_hello_defs_events_goodbye_in_order)
{
  int sv[2];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  hp_ring *ring = hp_ring_new(64);
  hp_intern *in = hp_intern_new(0, 0);
  ck_assert_int_eq(hp_intern_frame_add(in, 0x10, 5, "inner", 5, "m.py", 4), 1);
  ck_assert_int_eq(hp_intern_frame_add(in, 0x20, 9, "<module>", 8, "m.py", 4), 2);
  uint32_t ids[2] = { 1, 2 };
  ck_assert_int_eq(hp_intern_stack_add(in, ids, 2, 0), 1);
  for (uint64_t i = 0; i < 3; i++) {
    hp_event e = { .kind = HP_EV_ALLOC, .domain = HP_DOMAIN_OBJ, .stack_id = 1,
                   .ts_ns = 10 + i, .thread_id = 99, .address = 0x1000 + i * 16,
                   .size = 100, .est_bytes = 65586 };
    ck_assert_int_eq(hp_ring_push(ring, &e), 0);
  }
  hp_event fr = { .kind = HP_EV_FREE, .ts_ns = 20, .thread_id = 99, .address = 0x1000 };
  ck_assert_int_eq(hp_ring_push(ring, &fr), 0);

  hp_hello h = test_hello();
  hp_sender_cfg cfg = { .ring = ring, .intern = in, .dropped = fake_drops,
                        .failed = on_failed, .socket_path = "test" };
  int err = 0;
  atomic_store(&g_failures, 0);
  hp_sender *s = hp_sender_start(sv[0], &h, &cfg, &err);
  ck_assert_ptr_nonnull(s);
  ck_assert_int_eq(hp_sender_stop(s), 0);
  ck_assert_int_eq(atomic_load(&g_failures), 0);

  hp_framer *fm = hp_framer_new(0);
  hp_decoder *dec = hp_decoder_new();
  uint8_t buf[4096];
  ssize_t n;
  while ((n = read(sv[1], buf, sizeof(buf))) > 0)
    ck_assert_int_eq(hp_framer_feed(fm, buf, (size_t)n), 0);
  const uint8_t *payload;
  uint32_t len;
  int order[16], nmsg = 0, frames = 0, events = 0, frees = 0;
  while (hp_framer_next(fm, &payload, &len) == 1) {
    hp_msg m;
    ck_assert_msg(hp_decoder_decode(dec, payload, len, &m) == 0, "%s", hp_decoder_error(dec));
    ck_assert_int_lt(nmsg, 16);
    order[nmsg++] = m.type;
    if (m.type == HP_MSG_HELLO) {
      ck_assert_int_eq(m.u.hello.pid, 1234);
      ck_assert_uint_eq(m.u.hello.argc, 2);
      ck_assert(memcmp(m.u.hello.argv[1].ptr, "--x", 3) == 0);
      ck_assert_uint_eq(m.u.hello.sample_interval_bytes, 65536);
    } else if (m.type == HP_MSG_FRAME_DEF) {
      frames++;
      ck_assert_uint_eq(m.u.frame_def.frame_id, (uint32_t)frames);
    } else if (m.type == HP_MSG_STACK_DEF) {
      ck_assert_int_eq(frames, 2);   /* frames come before the stack using them */
      ck_assert_uint_eq(m.u.stack_def.depth, 2);
    } else if (m.type == HP_MSG_EVENTS) {
      for (uint32_t i = 0; i < m.u.events.count; i++) {
        if (m.u.events.events[i].kind == HP_EV_FREE)
          frees++;
        else
          events++;
      }
    } else if (m.type == HP_MSG_GOODBYE) {
      ck_assert_uint_eq(m.u.goodbye.events_dropped, 7);
    }
  }
  ck_assert_int_ge(nmsg, 6);
  ck_assert_int_eq(order[0], HP_MSG_HELLO);
  ck_assert_int_eq(order[nmsg - 1], HP_MSG_GOODBYE);
  ck_assert_int_eq(events, 3);
  ck_assert_int_eq(frees, 1);
  int first_events = -1, stack_def = -1;
  for (int i = 0; i < nmsg; i++) {
    if (order[i] == HP_MSG_EVENTS && first_events < 0)
      first_events = i;
    if (order[i] == HP_MSG_STACK_DEF)
      stack_def = i;
  }
  ck_assert_int_lt(stack_def, first_events);
  hp_framer_free(fm);
  hp_decoder_free(dec);
  close(sv[1]);
  hp_ring_free(ring);
  hp_intern_free(in);
}
END_TEST

START_TEST(peer_gone_ends_thread_with_one_failure)
{
  int sv[2];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  close(sv[1]);
  hp_ring *ring = hp_ring_new(64);
  hp_intern *in = hp_intern_new(0, 0);
  hp_hello h = test_hello();
  hp_sender_cfg cfg = { .ring = ring, .intern = in, .dropped = fake_drops,
                        .failed = on_failed, .socket_path = "gone.sock" };
  int err = 0;
  atomic_store(&g_failures, 0);
  /* Would be killed by SIGPIPE without MSG_NOSIGNAL. */
  hp_sender *s = hp_sender_start(sv[0], &h, &cfg, &err);
  ck_assert_ptr_nonnull(s);
  for (int i = 0; i < 2000 && atomic_load(&g_failures) == 0; i++)
    usleep(1000);
  ck_assert_int_eq(atomic_load(&g_failures), 1);
  ck_assert_int_eq(hp_sender_stop(s), -EPIPE);
  ck_assert_int_eq(atomic_load(&g_failures), 1);
  hp_ring_free(ring);
  hp_intern_free(in);
}
END_TEST

START_TEST(connect_reports_errno)
{
  int fd = -1;
  ck_assert_int_eq(hp_sender_connect("/nonexistent-dir/heapprofd.sock", &fd), -ENOENT);
  char longpath[200];
  memset(longpath, 'x', sizeof(longpath) - 1);
  longpath[sizeof(longpath) - 1] = 0;
  ck_assert_int_eq(hp_sender_connect(longpath, &fd), -ENAMETOOLONG);
  ck_assert_int_eq(fd, -1);
}
END_TEST

Suite *sender_suite(void)
{
  Suite *s = suite_create("sender");
  TCase *core = tcase_create("core");
  tcase_set_timeout(core, 30);
  tcase_add_test(core, stream_has_hello_defs_events_goodbye_in_order);
  tcase_add_test(core, peer_gone_ends_thread_with_one_failure);
  tcase_add_test(core, connect_reports_errno);
  suite_add_tcase(s, core);
  return s;
}

int main(void)
{
  SRunner *sr = srunner_create(sender_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
