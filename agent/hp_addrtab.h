/* hp_addrtab.h — the set of live sampled addresses, so that frees can be reported.
 *
 * Every free() of the profiled program looks here once, so a miss (the common case: not
 * sampled, or allocated before profiling began) must be cheap: an address hashes to one
 * bucket of HP_ADDRTAB_BUCKET slots, exactly one 64-byte cache line. When that bucket is
 * full, the insert goes to a second bucket and sets the first bucket's "spilled" bit in a
 * small bitmap; a lookup reads the second bucket only when that bit is set. A miss thus
 * costs one bit test (L1-resident bitmap) and one cache line, and removal just empties
 * the slot: no tombstones, so the cost never degrades as addresses churn. Both buckets
 * full: the insert is refused (the caller counts the lost sample).
 *
 * In front of the buckets sits a counting filter of HP_ADDRTAB_FILTER one-byte counters
 * (32 KiB, cache-resident): insert increments an address's counter before storing it,
 * remove decrements after emptying its slot, so a zero counter proves absence without
 * touching the buckets. At large intervals almost every free stops there. A counter
 * that reaches 255 sticks (a permanent "maybe").
 *
 * Lock-free: any thread may insert, look up and remove concurrently (slot updates are
 * compare-and-swap). An address is never inserted twice while live: it is removed before
 * the real free hands it back to the allocator. */
#ifndef HP_ADDRTAB_H
#define HP_ADDRTAB_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define HP_ADDRTAB_BUCKET    8u /* slots per bucket: one cache line */
#define HP_ADDRTAB_MIN_SLOTS (1u << 7)
#define HP_ADDRTAB_MAX_SLOTS (1u << 22) /* 32 MiB of address space, touched lazily */
#define HP_ADDRTAB_FILTER    (1u << 15) /* counting-filter bytes */

typedef struct hp_addrtab hp_addrtab; /* opaque */

/* What a table's counting filter counts (hp_addrtab_new). */
typedef enum {
  HP_ADDRTAB_NO_FILTER,    /* nothing: every address reads "maybe" */
  HP_ADDRTAB_FILTER_EXACT, /* each stored address at its own counter */
  /* each stored address also at the counters of the next two 16-byte granules, for
   * hp_addrtab_filter_absent_near: three times the counts, so more "maybe"s for the
   * free hooks; only where a reference tracer asks */
  HP_ADDRTAB_FILTER_NEAR
} hp_addrtab_filtering;

/* Slots to allocate for a sampling interval (bucket mode: pass 1): about eight slots per
 * sampled block of a 1 GiB live heap, within [2^16, HP_ADDRTAB_MAX_SLOTS]. A table
 * sized for recording everything would cost a cache miss per free at large intervals. */
size_t hp_addrtab_slots_for_interval(uint64_t interval);
/* Whether a table for this interval should keep the counting filter (interval >= 1024). */
int hp_addrtab_filter_for_interval(uint64_t interval);

/* slots is rounded up to a power of two. Without a filter (recording everything, where
 * nearly every free is a hit and the filter would be saturated) the filter reads as
 * "maybe" for every address and costs nothing to keep. NULL on OOM. */
hp_addrtab *hp_addrtab_new(size_t slots, hp_addrtab_filtering filtering);
/* NULL is a no-op. Only once no thread inserts, removes or looks up any more; readers of
 * the filter alone (hp_addrtab_filter_absent, the free hook's unlocked test) may go on:
 * a filter is never unmapped, it is zeroed and handed to a later table, so a late read
 * only gets a stale hint. */
void hp_addrtab_free(hp_addrtab *t);
/* 0, or -HP_EFULL when both buckets are full. Address 0 is refused with
 * -HP_EINVAL. */
int hp_addrtab_insert(hp_addrtab *t, uintptr_t addr);
/* Maps in bytes [from, from + len) of the buckets, and with the first piece (from 0) the
 * spill bitmap and the filter (hp_prefault.h): inserts land anywhere in them, so nearly
 * every early insert would otherwise fault a page in. Returns where the next piece
 * starts, or 0 when nothing is left to map in (the buckets' end, or a kernel that
 * cannot). Any thread, while others use the table. */
size_t hp_addrtab_prefault(const hp_addrtab *t, size_t from, size_t len);

/* 1 if addr was present (and is now removed), else 0. */
int hp_addrtab_remove(hp_addrtab *t, uintptr_t addr);
/* 1 if addr is present: a block handed out again is re-attributed only when sampled. */
int hp_addrtab_contains(const hp_addrtab *t, uintptr_t addr);

/* The counting filter, exposed so that the free hook can inline its negative test:
 * readable for the life of the process (see hp_addrtab_free), meaningful as long as the
 * table. hp_addrtab_filter_absent() is 1 when addr is certainly not in the table, 0 when
 * it may be (then call hp_addrtab_remove). */
const _Atomic uint8_t *hp_addrtab_filter(const hp_addrtab *t);

/* The address bits above the 16-byte alignment, unhashed: sampled blocks are sparse and
 * spread over the heap, so 15 address bits spread them as well as a multiplicative hash
 * would, and every free of the program saves the multiply. Page-aligned blocks (mmap)
 * share 1/256 of the counters; they are the large, nearly always sampled ones, so few
 * of them are live at a time. */
static inline size_t hp_addrtab_filter_index(uintptr_t addr)
{
  return (size_t)(addr >> 4) & (HP_ADDRTAB_FILTER - 1);
}

static inline int hp_addrtab_filter_absent(const _Atomic uint8_t *filter, uintptr_t addr)
{
  return atomic_load_explicit(&filter[hp_addrtab_filter_index(addr)],
                              memory_order_acquire) == 0;
}

/* 1 when none of addr, addr - 16 and addr - 32 can be in a table counting with
 * HP_ADDRTAB_FILTER_NEAR: the test of CPython 3.13's reference tracer, which learns an
 * object's address and would need two loads and a computation from its type to find the
 * block in front of it (up to 32 bytes of pre-header). One load, as the free hook's:
 * the table counted each block for the two granules after it. Wrong for other tables
 * (it misses blocks 16 or 32 bytes before addr). */
static inline int hp_addrtab_filter_absent_near(const _Atomic uint8_t *filter,
                                                uintptr_t addr)
{
  return hp_addrtab_filter_absent(filter, addr);
}

#endif /* HP_ADDRTAB_H */
