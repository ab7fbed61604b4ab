/* hp_ring.h — bounded ring of event records from the allocation hooks to the sender thread.
 *
 * Producers: any thread, including threads without the GIL; a push never blocks, never
 * allocates and never makes a system call: when the ring is full the record is dropped
 * and counted. Consumer: the sender thread only (or the owner while no sender runs).
 * A ring is never emptied behind a producer's back: the agent gives each session a
 * ring of its own and frees it only once no producer can still hold it.
 * Order: records come out in the order their pushes claimed a slot, so a FREE pushed
 * before the real free() precedes any later ALLOC of the same address.
 *
 * Frees have reserved space: an ALLOC (or a REATTRIBUTE, which like an ALLOC only adds
 * information) is refused once fewer than reserve + 1 slots are free (reserve = capacity
 * / HP_RING_FREE_RESERVE_DIV), a FREE only when the ring is completely full. A lost FREE is worse than a lost ALLOC: its block would look leaked
 * forever, while a lost ALLOC only loses one sample (its address is forgotten too).
 * Each FREE answers an ALLOC that got in, so a burst of frees after allocs are refused
 * drains into the reserve while the sender catches up. */
#ifndef HP_RING_H
#define HP_RING_H

#include <stddef.h>
#include <stdint.h>

#include "hp_proto.h"

#define HP_RING_DEFAULT_CAPACITY (1u << 17) /* records (64 bytes each) */
#define HP_RING_FREE_RESERVE_DIV 16u        /* 1/16 of the slots only frees may use */

typedef struct hp_ring hp_ring; /* opaque */

hp_ring *hp_ring_new(size_t capacity); /* rounded up to a power of two; NULL on OOM */
void hp_ring_free(hp_ring *r);         /* NULL is a no-op */
/* 0, or -HP_EFULL: the record was dropped and counted (an ALLOC when the free reserve is
 * all that is left, a FREE when the ring is full). */
int hp_ring_push(hp_ring *r, const hp_event *ev);
/* 1 if an ALLOC pushed now would get in (more than the free reserve is free), else 0.
 * A hint for producers that can skip the work of building a record that would be
 * dropped; the push itself decides. */
int hp_ring_alloc_room(const hp_ring *r);
/* 1 if more than n slots are free (n < capacity): a fill level, as a hint likewise. */
int hp_ring_has_room(const hp_ring *r, size_t n);
/* Like hp_ring_push() but a full ring is not counted (block mode retries). */
int hp_ring_try_push(hp_ring *r, const hp_event *ev);
/* 1 and fills *out, or 0 when empty (or the next record is still being written). */
int hp_ring_pop(hp_ring *r, hp_event *out);
uint64_t hp_ring_dropped(const hp_ring *r);
/* Counts a record the caller gave up on (block mode timeout) as dropped. */
void hp_ring_count_drop(hp_ring *r);
size_t hp_ring_capacity(const hp_ring *r);
/* Records whose slot was claimed by a push so far (including ones still being written):
 * the number of records committed to the stream. Any thread. */
uint64_t hp_ring_pushed(const hp_ring *r);
/* Records taken out by the consumer so far. Any thread: producers that wait for room
 * tell a consumer that moves (however slowly) from one that is stuck. */
uint64_t hp_ring_popped(const hp_ring *r);
/* Consumer: maps in up to max_bytes of the pages the producers are about to write
 * (hp_prefault.h), so that their first writes take no page fault in the producing
 * thread. Call between pops; 1 when more is wanted now (call again), else 0. */
int hp_ring_prefault(hp_ring *r, size_t max_bytes);

#ifdef HP_RING_TEST_HOOKS
/* Tests only (a ring built with HP_RING_TEST_HOOKS, tests/unit/meson.build): when set,
 * every push calls it between claiming position pos and publishing its record, so that
 * a test can hold a producer there. */
extern void (*hp_ring_test_claimed)(size_t pos);
#endif

#endif /* HP_RING_H */
