/* timeline.c — per-session live-heap intervals (see hp_timeline.h for the contract).
 * Sits at the end of the daemon pipeline: the store feeds it paired events
 * (store_pair.c) and writes the rows it completes into timeline_point. */
#include "hp_timeline.h"

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>

/* Levels are kept in 128 bits: estimates are i63 (PROTOCOL.md), so a handful of them
 * already pass 2^63, and a level must come back down exactly when they are freed (a
 * saturated sum would not). Rows report them clamped to what SQLite stores. */
typedef __int128 level;

struct hp_timeline {
  int64_t interval;
  int64_t cur; /* start of the open interval; valid when started */
  int started;
  int changed; /* an event landed in the open interval */
  level live_b, live_c;
  level max_b, max_c; /* highest level in the open interval, and the count then */
};

hp_timeline *hp_timeline_new(int64_t interval_ns)
{
  if (interval_ns <= 0)
    return NULL;
  hp_timeline *t = calloc(1, sizeof *t);
  if (t != NULL)
    t->interval = interval_ns;
  return t;
}

void hp_timeline_free(hp_timeline *t)
{
  free(t);
}

static int64_t clamp(level v)
{
  return v > INT64_MAX ? INT64_MAX : v < INT64_MIN ? INT64_MIN : (int64_t)v;
}

static hp_tl_row row_of(int64_t ts, level max_b, level max_c, level end_b)
{
  return (hp_tl_row){ts, clamp(max_b), clamp(max_c), clamp(end_b)};
}

static int64_t interval_of(const hp_timeline *t, int64_t ts)
{
  int64_t r = ts % t->interval;
  if (r < 0)
    r += t->interval;
  return ts - r;
}

/* Completes the open interval, given that the next activity is at interval `next`
 * and the session lasts at least until `until`. Emits the open interval if it changed,
 * then the interval after it if the level dropped below the maximum and that interval
 * would otherwise have no row - but only if the session reached it: a row after the
 * end would put a point past ended_ns (the end level is then the open row's end_bytes). */
static int close_open(hp_timeline *t, int64_t next, int64_t until, hp_tl_row *out)
{
  int n = 0;
  if (!t->changed)
    return 0;
  out[n++] = row_of(t->cur, t->max_b, t->max_c, t->live_b);
  int64_t after;
  if (t->live_b != t->max_b && !__builtin_add_overflow(t->cur, t->interval, &after) &&
      after < next && after <= until)
    out[n++] = row_of(after, t->live_b, t->live_c, t->live_b);
  t->changed = 0;
  assert(n <= HP_TL_MAX_ROWS);
  return n;
}

static void open_at(hp_timeline *t, int64_t iv)
{
  t->cur = iv;
  t->started = 1;
  t->changed = 0;
  t->max_b = t->live_b; /* the level carried in is reached at the interval start */
  t->max_c = t->live_c;
}

int hp_timeline_add(hp_timeline *t, int64_t ts_ns, int64_t dbytes, int64_t dcount,
                    hp_tl_row *out)
{
  int n = 0;
  int64_t iv = interval_of(t, ts_ns);
  if (!t->started) {
    open_at(t, iv);
  } else if (iv > t->cur) {
    n = close_open(t, iv, INT64_MAX, out);
    open_at(t, iv);
  }
  t->live_b += dbytes; /* 2^64 events of 2^63 bytes would be needed to overflow */
  t->live_c += dcount;
  if (t->live_b > t->max_b) {
    t->max_b = t->live_b;
    t->max_c = t->live_c;
  }
  t->changed = 1;
  assert(t->max_b >= t->live_b); /* the open interval's maximum includes the level now */
  return n;
}

/* The interval after the open one; INT64_MAX when that lies past the clock's range. */
static int64_t next_of(const hp_timeline *t)
{
  int64_t next;
  return __builtin_add_overflow(t->cur, t->interval, &next) ? INT64_MAX : next;
}

int hp_timeline_due(const hp_timeline *t, int64_t now_ns)
{
  return t->started && t->changed && interval_of(t, now_ns) > next_of(t);
}

int hp_timeline_advance(hp_timeline *t, int64_t now_ns, hp_tl_row *out)
{
  if (!hp_timeline_due(t, now_ns))
    return 0;
  int64_t iv = interval_of(t, now_ns);
  int n = close_open(t, iv, INT64_MAX, out);
  open_at(t, iv);
  return n;
}

int hp_timeline_current(const hp_timeline *t, hp_tl_row *row)
{
  if (!t->started || !t->changed)
    return 0;
  *row = row_of(t->cur, t->max_b, t->max_c, t->live_b);
  return 1;
}

int hp_timeline_finish(hp_timeline *t, int64_t end_ns, hp_tl_row *out)
{
  if (!t->started)
    return 0;
  return close_open(t, INT64_MAX, end_ns, out);
}
