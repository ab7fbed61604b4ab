/* hp_addrtab.h — the set of live sampled addresses, so that frees can be reported.
 *
 * Every free() of the profiled program looks here once: a miss (the common case: not
 * sampled, or allocated before profiling began) costs one probe sequence and sends
 * nothing. Lock-free open addressing with linear probing over at most
 * HP_ADDRTAB_MAX_PROBE slots; removal leaves a tombstone that later inserts reuse.
 * Any thread may insert, look up and remove concurrently; an address is never inserted
 * twice while live (it is removed before the real free hands it back to the allocator). */
#ifndef HP_ADDRTAB_H
#define HP_ADDRTAB_H

#include <stddef.h>
#include <stdint.h>

#define HP_ADDRTAB_DEFAULT_SLOTS  (1u << 21)   /* 16 MiB of address space, touched lazily */
#define HP_ADDRTAB_MAX_PROBE      64u

typedef struct hp_addrtab hp_addrtab;  /* opaque */

hp_addrtab *hp_addrtab_new(size_t slots);   /* rounded up to a power of two; NULL on OOM */
void hp_addrtab_free(hp_addrtab *t);        /* NULL is a no-op */
/* 0, or -HP_EFULL when no free slot lies within the probe limit (counted). Addresses
 * 0 and 1 are reserved and refused with -HP_EINVAL. */
int  hp_addrtab_insert(hp_addrtab *t, uintptr_t addr);
/* 1 if addr was present (and is now removed), else 0. */
int  hp_addrtab_remove(hp_addrtab *t, uintptr_t addr);
int  hp_addrtab_contains(const hp_addrtab *t, uintptr_t addr);
uint64_t hp_addrtab_overflows(const hp_addrtab *t);
/* Forgets every address. Only while no other thread uses the table. */
void hp_addrtab_clear(hp_addrtab *t);

#endif /* HP_ADDRTAB_H */
