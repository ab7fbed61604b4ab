/* hp_timeline.h — the estimated live heap of one session, per timeline interval.
 *
 * Pure arithmetic, owned by the store thread (one per session). Events are fed in
 * wall-clock nanoseconds as they arrive; an interval is [k*interval, (k+1)*interval)
 * since the Unix epoch, so the intervals of concurrent sessions line up.
 *
 * Each interval reports the HIGHEST live level reached inside it (a spike shorter than
 * an interval keeps its true height) with the live count at that moment, and the level
 * at its end. A row exists for every interval in which the heap changed; and when an
 * interval ends below its maximum, the next interval gets a row with the new level even
 * if nothing happens in it (and the session lasted into it), so that the drop after a spike
 * is visible to readers that hold the last value (schema/README.md, view `timeline`). */
#ifndef HP_TIMELINE_H
#define HP_TIMELINE_H

#include <stdint.h>

typedef struct {
  int64_t ts_ns;      /* interval start */
  int64_t live_bytes; /* highest level within the interval */
  int64_t live_count; /* live count at that highest level */
  int64_t end_bytes;  /* level at the end of the interval (so far, if still open) */
} hp_tl_row;

#define HP_TL_MAX_ROWS 2 /* rows one call can complete */

typedef struct hp_timeline hp_timeline; /* opaque */

hp_timeline *hp_timeline_new(int64_t interval_ns); /* interval_ns > 0; NULL on OOM */
void hp_timeline_free(hp_timeline *t);             /* NULL is a no-op */

/* Applies a change of dbytes/dcount at ts_ns. Intervals that this closes are written
 * to out (at most HP_TL_MAX_ROWS); returns how many. An event older than the current
 * interval (clocks of different threads, or a late batch) counts in the current one. */
int hp_timeline_add(hp_timeline *t, int64_t ts_ns, int64_t dbytes, int64_t dcount,
                    hp_tl_row *out);

/* Closes the current interval if now_ns lies beyond the interval after it, so an idle
 * session still shows its drop; returns the rows completed (as hp_timeline_add). */
int hp_timeline_advance(hp_timeline *t, int64_t now_ns, hp_tl_row *out);

/* 1 when hp_timeline_advance(t, now_ns) would complete rows (without doing it). */
int hp_timeline_due(const hp_timeline *t, int64_t now_ns);

/* The open interval's row so far: 1 and *row if it has changes not yet completed. */
int hp_timeline_current(const hp_timeline *t, hp_tl_row *row);

/* Completes everything at session end, end_ns being the session's ended_ns; returns the
 * rows (as hp_timeline_add). No row starts after end_ns: when the session ends inside
 * the open interval, the drop row after it is not written and the level at the end is
 * that interval's end_bytes. */
int hp_timeline_finish(hp_timeline *t, int64_t end_ns, hp_tl_row *out);

#endif /* HP_TIMELINE_H */
