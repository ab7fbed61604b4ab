/* hp_addrtab.c — lock-free open-addressing set of sampled addresses (see hp_addrtab.h). */
#include "hp_addrtab.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "hp_error.h"

#define SLOT_EMPTY ((uintptr_t)0)
#define SLOT_TOMB  ((uintptr_t)1)

struct hp_addrtab {
  size_t mask;
  int shift;
  _Atomic uint64_t overflows;
  _Atomic uintptr_t *slots;
};

hp_addrtab *hp_addrtab_new(size_t slots)
{
  size_t cap = 2 * HP_ADDRTAB_MAX_PROBE;
  int bits = 7;
  while (cap < slots && cap < ((size_t)1 << 32)) {
    cap <<= 1;
    bits++;
  }
  hp_addrtab *t = malloc(sizeof(*t));
  if (!t)
    return NULL;
  /* calloc of a large block maps fresh zero pages: untouched slots cost no memory. */
  t->slots = calloc(cap, sizeof(*t->slots));
  if (!t->slots) {
    free(t);
    return NULL;
  }
  t->mask = cap - 1;
  t->shift = 64 - bits;
  atomic_init(&t->overflows, 0);
  return t;
}

void hp_addrtab_free(hp_addrtab *t)
{
  if (!t)
    return;
  free((void *)t->slots);
  free(t);
}

void hp_addrtab_clear(hp_addrtab *t)
{
  memset((void *)t->slots, 0, (t->mask + 1) * sizeof(*t->slots));
  atomic_store(&t->overflows, 0);
}

/* Fibonacci hashing of the address without its alignment bits. */
static size_t home(const hp_addrtab *t, uintptr_t addr)
{
  return (size_t)(((uint64_t)(addr >> 4) * 0x9e3779b97f4a7c15ull) >> t->shift);
}

int hp_addrtab_insert(hp_addrtab *t, uintptr_t addr)
{
  if (addr <= SLOT_TOMB)
    return -HP_EINVAL;
  size_t i = home(t, addr);
  for (unsigned n = 0; n < HP_ADDRTAB_MAX_PROBE; n++, i = (i + 1) & t->mask) {
    uintptr_t k = atomic_load_explicit(&t->slots[i], memory_order_relaxed);
    while (k == SLOT_EMPTY || k == SLOT_TOMB) {
      if (atomic_compare_exchange_weak_explicit(&t->slots[i], &k, addr,
                                                memory_order_release, memory_order_relaxed))
        return 0;
    }
    if (k == addr)
      return 0;
  }
  atomic_fetch_add_explicit(&t->overflows, 1, memory_order_relaxed);
  return -HP_EFULL;
}

int hp_addrtab_remove(hp_addrtab *t, uintptr_t addr)
{
  size_t i = home(t, addr);
  for (unsigned n = 0; n < HP_ADDRTAB_MAX_PROBE; n++, i = (i + 1) & t->mask) {
    uintptr_t k = atomic_load_explicit(&t->slots[i], memory_order_acquire);
    if (k == addr) {
      /* Only the thread freeing addr removes it; the CAS guards against a racing
       * double free in the program, where exactly one remover must win. */
      return atomic_compare_exchange_strong_explicit(&t->slots[i], &k, SLOT_TOMB,
                                                     memory_order_acq_rel,
                                                     memory_order_relaxed) ? 1 : 0;
    }
    if (k == SLOT_EMPTY)
      return 0;
  }
  return 0;
}

int hp_addrtab_contains(const hp_addrtab *t, uintptr_t addr)
{
  size_t i = home(t, addr);
  for (unsigned n = 0; n < HP_ADDRTAB_MAX_PROBE; n++, i = (i + 1) & t->mask) {
    uintptr_t k = atomic_load_explicit(&t->slots[i], memory_order_acquire);
    if (k == addr)
      return 1;
    if (k == SLOT_EMPTY)
      return 0;
  }
  return 0;
}

uint64_t hp_addrtab_overflows(const hp_addrtab *t)
{
  return atomic_load_explicit(&((hp_addrtab *)t)->overflows, memory_order_relaxed);
}
