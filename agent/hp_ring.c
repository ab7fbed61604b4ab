/* hp_ring.c — a bounded multi-producer, single-consumer ring.
 *
 * Each slot carries a sequence number (the well-known bounded-queue design by Dmitry
 * Vyukov): a producer claims position pos with one compare-and-swap on the shared head
 * when the slot's sequence equals pos, writes the record, then publishes it by storing
 * pos + 1 into the sequence. The consumer takes position pos once the sequence reads
 * pos + 1 and frees the slot for the next lap by storing pos + capacity.
 *
 * We store the sequence minus the slot's index (seq - (pos & mask) = the lap base
 * pos & ~mask), so that all-zero memory is the initial state: a fresh ring is calloc()ed
 * zero pages that cost no memory until a lap first reaches them.
 *
 * The free reserve (hp_ring.h): before claiming position pos for an ALLOC, the producer
 * checks against the consumer's index (tail) that more than reserve slots are free. The
 * index shares its cache line with the fields every push reads (mask, reserve, slots),
 * so the test adds no line to a push; a slot reserve positions ahead would be a line
 * untouched since the consumer's previous lap, read from memory. The test runs again
 * for every position a push tries, so racing producers cannot take the reserve between
 * them. The consumer moves its index before it frees the slot, so while a pop completes
 * the reserve may be one slot short. A FREE that finds the ring completely full is the
 * caller's to wait for (hp_agent.c). */
#include "hp_ring.h"

#include <assert.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "hp_prefault.h"

typedef struct {
  _Atomic size_t seq;
  hp_event ev;
} hp_slot;

struct hp_ring {
  /* Written by producers (CAS); cache-line separated from the consumer's index. */
  _Alignas(64) _Atomic size_t head;
  /* Written by the consumer only; read relaxed by the room test and by producers that
   * wait. On the line of the fields below, which every push reads anyway. */
  _Alignas(64) _Atomic size_t tail;
  _Atomic uint64_t dropped; /* any thread, relaxed: a statistic */
  size_t mask;
  size_t reserve; /* slots kept for FREE records */
  hp_slot *slots;
  /* Consumer only: slots [0, prefaulted) are mapped in (hp_ring_prefault). */
  size_t prefaulted;
};

#ifdef HP_RING_TEST_HOOKS
void (*hp_ring_test_claimed)(size_t pos);
#endif

hp_ring *hp_ring_new(size_t capacity)
{
  size_t cap = 2;
  while (cap < capacity && cap < ((size_t)1 << 30))
    cap <<= 1;
  hp_ring *r = aligned_alloc(64, sizeof(*r));
  if (!r)
    return NULL;
  r->slots = calloc(cap, sizeof(hp_slot));
  if (!r->slots) {
    free(r);
    return NULL;
  }
  r->mask = cap - 1;
  r->reserve = cap / HP_RING_FREE_RESERVE_DIV;
  assert((cap & r->mask) == 0 && r->reserve < cap); /* indices wrap by mask */
  atomic_init(&r->head, 0);
  atomic_init(&r->tail, 0);
  atomic_init(&r->dropped, 0);
  r->prefaulted = 0;
  return r;
}

void hp_ring_free(hp_ring *r)
{
  if (!r)
    return;
  free(r->slots);
  free(r);
}

int hp_ring_push(hp_ring *r, const hp_event *ev)
{
  int rc = hp_ring_try_push(r, ev);
  if (rc < 0)
    atomic_fetch_add_explicit(&r->dropped, 1, memory_order_relaxed);
  return rc;
}

/* Whether more than n slots are free for a push at position pos. A tail read after
 * pos may be past it (other pushes and pops came between): then there is room, and the
 * push's compare-and-swap finds pos taken. */
static inline int room_past(const hp_ring *r, size_t pos, size_t n)
{
  size_t tail = atomic_load_explicit(&((hp_ring *)r)->tail, memory_order_relaxed);
  return (intptr_t)(pos + n - tail) < (intptr_t)(r->mask + 1);
}

int hp_ring_has_room(const hp_ring *r, size_t n)
{
  assert(n <= r->mask);
  return room_past(r, atomic_load_explicit(&((hp_ring *)r)->head, memory_order_relaxed), n);
}

int hp_ring_alloc_room(const hp_ring *r)
{
  return hp_ring_has_room(r, r->reserve);
}

int hp_ring_try_push(hp_ring *r, const hp_event *ev)
{
  size_t pos = atomic_load_explicit(&r->head, memory_order_relaxed);
  for (;;) {
    if (ev->kind != HP_EV_FREE && r->reserve && !room_past(r, pos, r->reserve))
      return -HP_EFULL; /* only the free reserve is left */
    hp_slot *s = &r->slots[pos & r->mask];
    size_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
    intptr_t dif = (intptr_t)seq - (intptr_t)(pos & ~r->mask);
    if (dif == 0) {
      if (atomic_compare_exchange_weak_explicit(&r->head, &pos, pos + 1,
                                                memory_order_relaxed,
                                                memory_order_relaxed)) {
#ifdef HP_RING_TEST_HOOKS
        if (hp_ring_test_claimed)
          hp_ring_test_claimed(pos);
#endif
        s->ev = *ev;
        atomic_store_explicit(&s->seq, (pos & ~r->mask) + 1, memory_order_release);
        return 0;
      }
      /* pos was reloaded by the failed CAS. */
    } else if (dif < 0) {
      return -HP_EFULL;
    } else {
      pos = atomic_load_explicit(&r->head, memory_order_relaxed);
    }
  }
}

int hp_ring_pop(hp_ring *r, hp_event *out)
{
  size_t pos = atomic_load_explicit(&r->tail, memory_order_relaxed);
  hp_slot *s = &r->slots[pos & r->mask];
  size_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
  /* A slot the single consumer reaches is free for this lap or published in it. */
  assert(seq - (pos & ~r->mask) <= 1);
  if (seq != (pos & ~r->mask) + 1)
    return 0;
  *out = s->ev;
  atomic_store_explicit(&r->tail, pos + 1, memory_order_relaxed);
  atomic_store_explicit(&s->seq, (pos & ~r->mask) + r->mask + 1, memory_order_release);
  return 1;
}

uint64_t hp_ring_dropped(const hp_ring *r)
{
  return atomic_load_explicit(&((hp_ring *)r)->dropped, memory_order_relaxed);
}

void hp_ring_count_drop(hp_ring *r)
{
  atomic_fetch_add_explicit(&r->dropped, 1, memory_order_relaxed);
}

size_t hp_ring_capacity(const hp_ring *r)
{
  return r->mask + 1;
}

uint64_t hp_ring_pushed(const hp_ring *r)
{
  return atomic_load_explicit(&((hp_ring *)r)->head, memory_order_acquire);
}

uint64_t hp_ring_popped(const hp_ring *r)
{
  return atomic_load_explicit(&((hp_ring *)r)->tail, memory_order_relaxed);
}

/* Pushes write the slots from the head on: mapping in twice the reserve ahead keeps them
 * on mapped pages between the consumer's turns. Work starts once a quarter of that is
 * missing, so a lap takes a few dozen system calls. After the first lap every slot is
 * mapped and a call is one compare. */
int hp_ring_prefault(hp_ring *r, size_t max_bytes)
{
  size_t cap = r->mask + 1, ahead = 2 * r->reserve;
  if (r->prefaulted >= cap)
    return 0;
  size_t want = atomic_load_explicit(&r->head, memory_order_relaxed) + ahead;
  if (want > cap)
    want = cap;
  if (want <= r->prefaulted || (want < cap && want - r->prefaulted < ahead / 4))
    return 0;
  size_t chunk = max_bytes / sizeof(hp_slot) ? max_bytes / sizeof(hp_slot) : 1;
  size_t end = want - r->prefaulted > chunk ? r->prefaulted + chunk : want;
  if (hp_prefault(&r->slots[r->prefaulted], (end - r->prefaulted) * sizeof(hp_slot)) < 0) {
    r->prefaulted = cap; /* not on this kernel: pages fault in as pushes write them */
    return 0;
  }
  r->prefaulted = end;
  return end < want;
}
