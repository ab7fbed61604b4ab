/* hp_stats.h — stats mode: every allocation counted in-process by size class.
 *
 * The original heapprof's "stats" run: no daemon, no sampling, just a histogram of
 * allocation sizes (power-of-two classes) to help choose a sampling interval. Any
 * thread may add concurrently (relaxed atomics, no locks); reading is approximate
 * while threads still allocate. */
#ifndef HP_STATS_H
#define HP_STATS_H

#include <stddef.h>
#include <stdint.h>

#define HP_STATS_CLASSES 65 /* class 0: size 0; class k: sizes in [2^(k-1), 2^k) */

void hp_stats_add(size_t size);
void hp_stats_reset(void);
/* Copies the counters out. */
void hp_stats_snapshot(uint64_t count[HP_STATS_CLASSES], uint64_t bytes[HP_STATS_CLASSES]);
/* Size class of size, and its bounds [lo, hi] (inclusive). */
unsigned hp_stats_class(size_t size);
void hp_stats_class_bounds(unsigned cls, uint64_t *lo, uint64_t *hi);

#endif /* HP_STATS_H */
