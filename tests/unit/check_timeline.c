/* check_timeline.c — the live-heap intervals: spikes keep their true height, the drop
 * after a spike is visible, quiet intervals get no rows. Interval 100 ns keeps the
 * arithmetic readable. */
#include <check.h>
#include <stdlib.h>

#include "hp_timeline.h"

#define IV 100

static hp_timeline *tl;
static void setup(void) { tl = hp_timeline_new(IV); ck_assert_ptr_nonnull(tl); }
static void teardown(void) { hp_timeline_free(tl); }

static void assert_row(const hp_tl_row *r, int64_t ts, int64_t live, int64_t count, int64_t end) {
  ck_assert_int_eq(r->ts_ns, ts);
  ck_assert_int_eq(r->live_bytes, live);
  ck_assert_int_eq(r->live_count, count);
  ck_assert_int_eq(r->end_bytes, end);
}

START_TEST(timeline_spike_inside_one_interval_keeps_its_height) {
  hp_tl_row rows[HP_TL_MAX_ROWS];
  ck_assert_int_eq(hp_timeline_add(tl, 1005, 100, 1, rows), 0);
  ck_assert_int_eq(hp_timeline_add(tl, 1010, 5000, 2, rows), 0);   /* spike */
  ck_assert_int_eq(hp_timeline_add(tl, 1020, -5000, -2, rows), 0); /* gone again */
  /* The next event is three intervals later: the spike's interval closes at 5100 and
   * the interval after it must show the drop back to 100. */
  ck_assert_int_eq(hp_timeline_add(tl, 1350, 1, 1, rows), 2);
  assert_row(&rows[0], 1000, 5100, 3, 100);
  assert_row(&rows[1], 1100, 100, 1, 100);
  hp_tl_row cur;
  ck_assert_int_eq(hp_timeline_current(tl, &cur), 1);
  assert_row(&cur, 1300, 101, 2, 101);
}
END_TEST

START_TEST(timeline_rise_without_drop_writes_no_extra_row) {
  hp_tl_row rows[HP_TL_MAX_ROWS];
  hp_timeline_add(tl, 1005, 100, 1, rows);
  hp_timeline_add(tl, 1050, 200, 1, rows);
  ck_assert_int_eq(hp_timeline_add(tl, 1500, 1, 1, rows), 1);
  assert_row(&rows[0], 1000, 300, 2, 300);
}
END_TEST

START_TEST(timeline_drop_followed_by_activity_next_interval) {
  hp_tl_row rows[HP_TL_MAX_ROWS];
  hp_timeline_add(tl, 1005, 800, 1, rows);
  hp_timeline_add(tl, 1095, -800, -1, rows);
  /* The very next interval has its own activity, which carries the new level. */
  ck_assert_int_eq(hp_timeline_add(tl, 1150, 10, 1, rows), 1);
  assert_row(&rows[0], 1000, 800, 1, 0);
  hp_tl_row cur;
  ck_assert_int_eq(hp_timeline_current(tl, &cur), 1);
  assert_row(&cur, 1100, 10, 1, 10);
}
END_TEST

START_TEST(timeline_interval_max_includes_level_carried_in) {
  hp_tl_row rows[HP_TL_MAX_ROWS];
  hp_timeline_add(tl, 1005, 1000, 10, rows);
  /* Only frees in the next interval: its highest level is the one it started at. */
  ck_assert_int_eq(hp_timeline_add(tl, 1110, -300, -3, rows), 1);
  hp_timeline_add(tl, 1120, -300, -3, rows);
  ck_assert_int_eq(hp_timeline_finish(tl, 1250, rows), 2);
  assert_row(&rows[0], 1100, 1000, 10, 400);
  assert_row(&rows[1], 1200, 400, 4, 400);
}
END_TEST

START_TEST(timeline_quiet_session_has_nothing_open) {
  hp_tl_row rows[HP_TL_MAX_ROWS], cur;
  ck_assert_int_eq(hp_timeline_current(tl, &cur), 0);
  ck_assert_int_eq(hp_timeline_finish(tl, 999999, rows), 0);
  ck_assert_int_eq(hp_timeline_advance(tl, 999999, rows), 0);
}
END_TEST

START_TEST(timeline_advance_closes_idle_interval_with_drop) {
  hp_tl_row rows[HP_TL_MAX_ROWS];
  hp_timeline_add(tl, 1005, 900, 1, rows);
  hp_timeline_add(tl, 1006, -900, -1, rows);
  /* Too early: the interval after the open one has not passed yet. */
  ck_assert_int_eq(hp_timeline_advance(tl, 1150, rows), 0);
  ck_assert_int_eq(hp_timeline_advance(tl, 1250, rows), 2);
  assert_row(&rows[0], 1000, 900, 1, 0);
  assert_row(&rows[1], 1100, 0, 0, 0);
  ck_assert_int_eq(hp_timeline_advance(tl, 5000, rows), 0);  /* nothing left to close */
  hp_tl_row cur;
  ck_assert_int_eq(hp_timeline_current(tl, &cur), 0);
  ck_assert_int_eq(hp_timeline_finish(tl, 5000, rows), 0);
}
END_TEST

START_TEST(timeline_late_event_counts_in_current_interval) {
  hp_tl_row rows[HP_TL_MAX_ROWS];
  hp_timeline_add(tl, 2005, 10, 1, rows);
  ck_assert_int_eq(hp_timeline_add(tl, 1500, 20, 1, rows), 0);  /* older than open interval */
  hp_tl_row cur;
  ck_assert_int_eq(hp_timeline_current(tl, &cur), 1);
  assert_row(&cur, 2000, 30, 2, 30);
}
END_TEST

START_TEST(timeline_saturates_instead_of_overflowing) {
  hp_tl_row rows[HP_TL_MAX_ROWS], cur;
  hp_timeline_add(tl, 1005, INT64_MAX, 1, rows);
  hp_timeline_add(tl, 1006, INT64_MAX, 1, rows);  /* would overflow */
  ck_assert_int_eq(hp_timeline_current(tl, &cur), 1);
  ck_assert_int_eq(cur.live_bytes, INT64_MAX);
  ck_assert_int_eq(cur.end_bytes, INT64_MAX);
}
END_TEST

/* Estimates near 2^63 are legal (PROTOCOL.md, i63), and the level must come back down
 * exactly when they are freed: a saturated sum would lose what was added past the top
 * and end below zero. Rows report levels past 2^63-1 as 2^63-1. */
START_TEST(timeline_levels_stay_exact_past_int64) {
  hp_tl_row rows[HP_TL_MAX_ROWS], cur;
  hp_timeline_add(tl, 1005, INT64_MAX, 1, rows);
  hp_timeline_add(tl, 1006, INT64_MAX, 1, rows);
  hp_timeline_add(tl, 1007, -INT64_MAX, -1, rows);
  ck_assert_int_eq(hp_timeline_current(tl, &cur), 1);
  ck_assert_int_eq(cur.end_bytes, INT64_MAX);   /* 2^63 - 1 above 2^63 - 1: clamped */
  hp_timeline_add(tl, 1008, -INT64_MAX, -1, rows);
  ck_assert_int_eq(hp_timeline_current(tl, &cur), 1);
  assert_row(&cur, 1000, INT64_MAX, 2, 0);
  /* The count came back to 0 exactly too: one more allocation makes it 1. */
  ck_assert_int_eq(hp_timeline_add(tl, 1105, 1, 1, rows), 1);
  ck_assert_int_eq(hp_timeline_current(tl, &cur), 1);
  assert_row(&cur, 1100, 1, 1, 1);
}
END_TEST

/* An interval at the very end of the clock's range does not overflow its arithmetic. */
START_TEST(timeline_works_at_the_end_of_time) {
  hp_tl_row rows[HP_TL_MAX_ROWS];
  int64_t last = INT64_MAX - INT64_MAX % IV;
  hp_timeline_add(tl, INT64_MAX - 1, 50, 1, rows);
  hp_timeline_add(tl, INT64_MAX, -50, -1, rows);
  ck_assert_int_eq(hp_timeline_advance(tl, INT64_MAX, rows), 0);
  ck_assert_int_eq(hp_timeline_finish(tl, INT64_MAX, rows), 1);
  assert_row(&rows[0], last, 50, 1, 0);
}
END_TEST

START_TEST(timeline_rejects_bad_interval) {
  ck_assert_ptr_null(hp_timeline_new(0));
  ck_assert_ptr_null(hp_timeline_new(-5));
}
END_TEST

/* A session that ends inside the interval of its drop: no row may start after the end
 * (Reader.timeline() would return a point past ended_ns); the end level stays known as
 * the last row's end_bytes. */
START_TEST(timeline_finish_writes_no_row_after_the_end) {
  hp_tl_row rows[HP_TL_MAX_ROWS];
  hp_timeline_add(tl, 1005, 100, 1, rows);
  hp_timeline_add(tl, 1010, 5000, 2, rows);
  hp_timeline_add(tl, 1020, -5000, -2, rows);
  ck_assert_int_eq(hp_timeline_finish(tl, 1030, rows), 1);
  assert_row(&rows[0], 1000, 5100, 3, 100);
  ck_assert_int_eq(hp_timeline_finish(tl, 1030, rows), 0);  /* nothing left open */
}
END_TEST

/* Ending later than the next interval's start, or exactly at it, keeps the drop row:
 * the session was alive at that level there. */
START_TEST(timeline_finish_keeps_drop_row_the_session_reached) {
  hp_tl_row rows[HP_TL_MAX_ROWS];
  hp_timeline_add(tl, 1005, 100, 1, rows);
  hp_timeline_add(tl, 1010, 5000, 2, rows);
  hp_timeline_add(tl, 1020, -5000, -2, rows);
  ck_assert_int_eq(hp_timeline_finish(tl, 1100, rows), 2);
  assert_row(&rows[0], 1000, 5100, 3, 100);
  assert_row(&rows[1], 1100, 100, 1, 100);

  hp_timeline *t2 = hp_timeline_new(IV);
  ck_assert_ptr_nonnull(t2);
  hp_timeline_add(t2, 1005, 700, 7, rows);
  hp_timeline_add(t2, 1006, -600, -6, rows);
  ck_assert_int_eq(hp_timeline_finish(t2, 1199, rows), 2);
  assert_row(&rows[0], 1000, 700, 7, 100);
  assert_row(&rows[1], 1100, 100, 1, 100);
  hp_timeline_free(t2);
}
END_TEST

Suite *timeline_suite(void) {
  Suite *s = suite_create("timeline");
  TCase *core = tcase_create("core");
  tcase_add_checked_fixture(core, setup, teardown);
  tcase_add_test(core, timeline_spike_inside_one_interval_keeps_its_height);
  tcase_add_test(core, timeline_rise_without_drop_writes_no_extra_row);
  tcase_add_test(core, timeline_drop_followed_by_activity_next_interval);
  tcase_add_test(core, timeline_interval_max_includes_level_carried_in);
  tcase_add_test(core, timeline_quiet_session_has_nothing_open);
  tcase_add_test(core, timeline_advance_closes_idle_interval_with_drop);
  tcase_add_test(core, timeline_late_event_counts_in_current_interval);
  tcase_add_test(core, timeline_saturates_instead_of_overflowing);
  tcase_add_test(core, timeline_levels_stay_exact_past_int64);
  tcase_add_test(core, timeline_works_at_the_end_of_time);
  tcase_add_test(core, timeline_rejects_bad_interval);
  tcase_add_test(core, timeline_finish_writes_no_row_after_the_end);
  tcase_add_test(core, timeline_finish_keeps_drop_row_the_session_reached);
  suite_add_tcase(s, core);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(timeline_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
