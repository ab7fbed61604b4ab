/* hp_stats.c — the stats-mode size histogram (see hp_stats.h). */
#include "hp_stats.h"

#include <stdatomic.h>

/* Shared by every allocating thread; relaxed atomics: counts, not synchronisation. */
static _Atomic uint64_t g_count[HP_STATS_CLASSES];
static _Atomic uint64_t g_bytes[HP_STATS_CLASSES];

unsigned hp_stats_class(size_t size)
{
  if (size == 0)
    return 0;
  return 64u - (unsigned)__builtin_clzll((unsigned long long)size);
}

void hp_stats_class_bounds(unsigned cls, uint64_t *lo, uint64_t *hi)
{
  if (cls == 0) {
    *lo = *hi = 0;
    return;
  }
  *lo = (uint64_t)1 << (cls - 1);
  *hi = cls >= 64 ? UINT64_MAX : ((uint64_t)1 << cls) - 1;
}

void hp_stats_add(size_t size)
{
  unsigned c = hp_stats_class(size);
  atomic_fetch_add_explicit(&g_count[c], 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&g_bytes[c], size, memory_order_relaxed);
}

void hp_stats_reset(void)
{
  for (unsigned i = 0; i < HP_STATS_CLASSES; i++) {
    atomic_store(&g_count[i], 0);
    atomic_store(&g_bytes[i], 0);
  }
}

void hp_stats_snapshot(uint64_t count[HP_STATS_CLASSES], uint64_t bytes[HP_STATS_CLASSES])
{
  for (unsigned i = 0; i < HP_STATS_CLASSES; i++) {
    count[i] = atomic_load_explicit(&g_count[i], memory_order_relaxed);
    bytes[i] = atomic_load_explicit(&g_bytes[i], memory_order_relaxed);
  }
}
