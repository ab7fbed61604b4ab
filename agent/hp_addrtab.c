/* hp_addrtab.c — lock-free bucketed set of sampled addresses (see hp_addrtab.h). */
#include "hp_addrtab.h"

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "hp_error.h"
#include "hp_prefault.h"

#define EMPTY ((uintptr_t)0)

struct hp_addrtab {
  size_t nbuckets;           /* power of two */
  int shift;                 /* 64 - log2(nbuckets) */
  _Atomic uint64_t *spilled; /* one bit per bucket; set once, cleared by clear() */
  _Atomic uint8_t *filter;   /* HP_ADDRTAB_FILTER counters, or g_all_maybe */
  hp_addrtab_filtering filtering;
  _Atomic uintptr_t *slots; /* nbuckets * HP_ADDRTAB_BUCKET, 64-byte aligned */
  void *slots_mem;          /* what calloc returned */
};

/* The filter of tables without one: never zero, so every address is a "maybe". */
static _Atomic uint8_t g_all_maybe[HP_ADDRTAB_FILTER];
static pthread_once_t g_all_maybe_once = PTHREAD_ONCE_INIT;

/* Filters of freed tables, kept for the next tables: the free hook reads a filter
 * without any lock or pin, so a filter may be read after its table is gone and must
 * never be unmapped. The list holds as many as tables were ever alive at once (one, in
 * the agent). Protected by g_pool_lock (taken by new/free only, never by a hook). */
typedef struct pooled_filter {
  struct pooled_filter *next; /* apart from the counters: a late reader may read them */
  _Atomic uint8_t counters[HP_ADDRTAB_FILTER];
} pooled_filter;
static pthread_mutex_t g_pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pooled_filter *g_pool;

/* A zeroed filter. A late reader of its previous table may still read it: atomic
 * stores, and a stale "maybe" or "absent" only costs that reader a look-up or a miss
 * on a table that is no longer its own. */
static _Atomic uint8_t *filter_take(void)
{
  pthread_mutex_lock(&g_pool_lock);
  pooled_filter *f = g_pool;
  if (f)
    g_pool = f->next;
  pthread_mutex_unlock(&g_pool_lock);
  if (!f)
    return (f = calloc(1, sizeof(pooled_filter))) ? f->counters : NULL;
  f->next = NULL;
  for (size_t i = 0; i < HP_ADDRTAB_FILTER; i++)
    atomic_store_explicit(&f->counters[i], 0, memory_order_relaxed);
  return f->counters;
}

static void filter_give_back(_Atomic uint8_t *counters)
{
  pooled_filter *f = (pooled_filter *)(void *)((char *)counters -
                                               offsetof(pooled_filter, counters));
  pthread_mutex_lock(&g_pool_lock);
  f->next = g_pool;
  g_pool = f;
  pthread_mutex_unlock(&g_pool_lock);
}

static void fill_all_maybe(void)
{
  for (size_t i = 0; i < HP_ADDRTAB_FILTER; i++)
    atomic_init(&g_all_maybe[i], 255);
}

int hp_addrtab_filter_for_interval(uint64_t interval)
{
  return interval >= 1024;
}

size_t hp_addrtab_slots_for_interval(uint64_t interval)
{
  if (interval == 0)
    interval = 1;
  uint64_t want = (8ull << 30) / interval; /* 8 slots per sample of a 1 GiB heap */
  if (want < (1u << 16))
    want = 1u << 16;
  if (want > HP_ADDRTAB_MAX_SLOTS)
    want = HP_ADDRTAB_MAX_SLOTS;
  return (size_t)want;
}

hp_addrtab *hp_addrtab_new(size_t slots, hp_addrtab_filtering filtering)
{
  size_t nb = HP_ADDRTAB_MIN_SLOTS / HP_ADDRTAB_BUCKET;
  int bits = 4;
  while (nb * HP_ADDRTAB_BUCKET < slots && nb * HP_ADDRTAB_BUCKET < HP_ADDRTAB_MAX_SLOTS) {
    nb <<= 1;
    bits++;
  }
  hp_addrtab *t = calloc(1, sizeof(*t));
  if (!t)
    return NULL;
  /* calloc of a large block maps fresh zero pages: untouched buckets cost no memory.
   * 64 extra bytes let us align the buckets to cache lines by hand. */
  t->slots_mem = calloc(nb * HP_ADDRTAB_BUCKET * sizeof(uintptr_t) + 64, 1);
  t->spilled = calloc((nb + 63) / 64, sizeof(uint64_t));
  t->filtering = filtering;
  if (filtering != HP_ADDRTAB_NO_FILTER) {
    t->filter = filter_take();
  } else {
    pthread_once(&g_all_maybe_once, fill_all_maybe);
    t->filter = g_all_maybe;
  }
  if (!t->slots_mem || !t->spilled || !t->filter) {
    hp_addrtab_free(t);
    return NULL;
  }
  t->slots = (_Atomic uintptr_t *)(((uintptr_t)t->slots_mem + 63) & ~(uintptr_t)63);
  t->nbuckets = nb;
  t->shift = 64 - bits;
  /* bucket1() and bucket2() keep the top bits of a 64-bit hash: always a bucket. */
  assert(((size_t)1 << bits) == nb && nb * HP_ADDRTAB_BUCKET <= HP_ADDRTAB_MAX_SLOTS);
  return t;
}

size_t hp_addrtab_prefault(const hp_addrtab *t, size_t from, size_t len)
{
  size_t bytes = t->nbuckets * HP_ADDRTAB_BUCKET * sizeof(uintptr_t);
  if (from >= bytes)
    return 0;
  size_t end = len < bytes - from ? from + len : bytes;
  if (hp_prefault((const char *)t->slots + from, end - from) < 0)
    return 0;
  if (from == 0) {
    (void)hp_prefault((const void *)t->spilled, (t->nbuckets + 63) / 64 * sizeof(uint64_t));
    if (t->filtering != HP_ADDRTAB_NO_FILTER) /* the all-"maybe" filter is never written */
      (void)hp_prefault((const void *)t->filter, HP_ADDRTAB_FILTER);
  }
  return end < bytes ? end : 0;
}

void hp_addrtab_free(hp_addrtab *t)
{
  if (!t)
    return;
  free(t->slots_mem);
  free((void *)t->spilled);
  if (t->filtering != HP_ADDRTAB_NO_FILTER && t->filter)
    filter_give_back(t->filter);
  free(t);
}

/* Fibonacci hashing of the address without its alignment bits; the second bucket uses
 * another multiplier so that addresses sharing a first bucket spread out. */
static size_t bucket1(const hp_addrtab *t, uintptr_t addr)
{
  return (size_t)(((uint64_t)(addr >> 4) * 0x9e3779b97f4a7c15ull) >> t->shift);
}

static size_t bucket2(const hp_addrtab *t, uintptr_t addr)
{
  return (size_t)(((uint64_t)(addr >> 4) * 0xc2b2ae3d27d4eb4full + 0x165667b19e3779f9ull) >>
                  t->shift);
}

static size_t filter_index(uintptr_t addr)
{
  return hp_addrtab_filter_index(addr);
}

static inline __attribute__((always_inline)) void counter_add(_Atomic uint8_t *c, int delta)
{
  uint8_t v = atomic_load_explicit(c, memory_order_relaxed);
  do {
    if (v == 255)
      return;                   /* saturated: sticks at "maybe" */
    assert(delta > 0 || v > 0); /* only a stored address is removed */
  } while (!atomic_compare_exchange_weak_explicit(c, &v, (uint8_t)(v + delta),
                                                  memory_order_acq_rel,
                                                  memory_order_relaxed));
}

/* Always inlined: insert and remove pass a constant delta, and with the assert GCC
 * would otherwise call it on every sampled allocation and free. */
static inline __attribute__((always_inline)) void filter_add(hp_addrtab *t, uintptr_t addr,
                                                             int delta)
{
  if (t->filtering == HP_ADDRTAB_NO_FILTER)
    return;
  size_t i = filter_index(addr);
  counter_add(&t->filter[i], delta);
  if (t->filtering == HP_ADDRTAB_FILTER_NEAR) {
    counter_add(&t->filter[(i + 1) & (HP_ADDRTAB_FILTER - 1)], delta);
    counter_add(&t->filter[(i + 2) & (HP_ADDRTAB_FILTER - 1)], delta);
  }
}

/* Same index as hp_addrtab_filter_absent() in the header. */
static int filter_says_absent(const hp_addrtab *t, uintptr_t addr)
{
  return hp_addrtab_filter_absent(t->filter, addr);
}

const _Atomic uint8_t *hp_addrtab_filter(const hp_addrtab *t)
{
  return t->filter;
}

static int spilled(const hp_addrtab *t, size_t b)
{
  uint64_t w = atomic_load_explicit(&t->spilled[b / 64], memory_order_acquire);
  return (w >> (b % 64)) & 1;
}

static int bucket_insert(hp_addrtab *t, size_t b, uintptr_t addr)
{
  _Atomic uintptr_t *s = &t->slots[b * HP_ADDRTAB_BUCKET];
  for (unsigned i = 0; i < HP_ADDRTAB_BUCKET; i++) {
    uintptr_t k = atomic_load_explicit(&s[i], memory_order_relaxed);
    if (k == EMPTY &&
        atomic_compare_exchange_strong_explicit(&s[i], &k, addr, memory_order_release,
                                                memory_order_relaxed))
      return 1;
  }
  return 0;
}

static int bucket_remove(hp_addrtab *t, size_t b, uintptr_t addr)
{
  _Atomic uintptr_t *s = &t->slots[b * HP_ADDRTAB_BUCKET];
  for (unsigned i = 0; i < HP_ADDRTAB_BUCKET; i++) {
    uintptr_t k = atomic_load_explicit(&s[i], memory_order_acquire);
    if (k == addr)
      /* The CAS decides a racing double free in the program: one remover wins. */
      return atomic_compare_exchange_strong_explicit(&s[i], &k, EMPTY, memory_order_acq_rel,
                                                     memory_order_relaxed);
  }
  return -1;
}

int hp_addrtab_insert(hp_addrtab *t, uintptr_t addr)
{
  if (addr == EMPTY)
    return -HP_EINVAL;
  filter_add(t, addr, +1);
  size_t b1 = bucket1(t, addr);
  if (bucket_insert(t, b1, addr))
    return 0;
  /* Announce the spill before the key lands in the second bucket: whoever later frees
   * addr learned it after this insert returned, so it sees the bit. */
  atomic_fetch_or_explicit(&t->spilled[b1 / 64], (uint64_t)1 << (b1 % 64),
                           memory_order_acq_rel);
  if (bucket_insert(t, bucket2(t, addr), addr))
    return 0;
  filter_add(t, addr, -1);
  return -HP_EFULL;
}

static int bucket_contains(const hp_addrtab *t, size_t b, uintptr_t addr)
{
  _Atomic uintptr_t *s = &t->slots[b * HP_ADDRTAB_BUCKET];
  for (unsigned i = 0; i < HP_ADDRTAB_BUCKET; i++)
    if (atomic_load_explicit(&s[i], memory_order_acquire) == addr)
      return 1;
  return 0;
}

int hp_addrtab_remove(hp_addrtab *t, uintptr_t addr)
{
  if (filter_says_absent(t, addr))
    return 0;
  size_t b1 = bucket1(t, addr);
  int r = bucket_remove(t, b1, addr);
  if (r < 0)
    r = spilled(t, b1) ? bucket_remove(t, bucket2(t, addr), addr) > 0 : 0;
  if (r)
    filter_add(t, addr, -1);
  return r;
}

int hp_addrtab_contains(const hp_addrtab *t, uintptr_t addr)
{
  if (filter_says_absent(t, addr))
    return 0;
  size_t b1 = bucket1(t, addr);
  if (bucket_contains(t, b1, addr))
    return 1;
  return spilled(t, b1) && bucket_contains(t, bucket2(t, addr), addr);
}
