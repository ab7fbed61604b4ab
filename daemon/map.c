/* map.c — the daemon's integer hash map (see hp_map.h).
 *
 * Linear probing with backward-shift deletion, so there are no tombstones and a
 * long-lived address map with constant churn never degrades. Key 0 is legal (an
 * address or id of 0 is nonsense, but this map does not judge input) and lives in a
 * slot of its own outside the table, so an empty table slot can be marked by key 0. */
#include "hp_map.h"

#include <assert.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "hp_error.h"

#define HP_MAP_MIN_CAP 16u

typedef struct {
  uint64_t key; /* 0 marks an empty slot */
  hp_map_val val;
} slot;

struct hp_map {
  slot *slots;
  size_t cap;   /* power of two, or 0 before the first put */
  size_t count; /* entries in slots, not counting the zero key */
  int has_zero;
  hp_map_val zero_val;
};

static unsigned fail_countdown; /* test hook only; the daemon never sets it */

void hp_map_fail_alloc_after(unsigned n)
{
  fail_countdown = n;
}

static void *map_calloc(size_t n, size_t size)
{
  if (fail_countdown > 0 && --fail_countdown == 0)
    return NULL;
  return calloc(n, size);
}

static inline size_t mix(uint64_t k)
{
  /* splitmix64 finaliser: addresses differ mostly in their middle bits. */
  k ^= k >> 30;
  k *= 0xbf58476d1ce4e5b9ULL;
  k ^= k >> 27;
  k *= 0x94d049bb133111ebULL;
  k ^= k >> 31;
  return (size_t)k;
}

hp_map *hp_map_new(void)
{
  return map_calloc(1, sizeof(hp_map));
}

void hp_map_free(hp_map *m)
{
  if (m == NULL)
    return;
  free(m->slots);
  free(m);
}

static int rehash(hp_map *m, size_t new_cap)
{
  assert(new_cap >= HP_MAP_MIN_CAP && (new_cap & (new_cap - 1)) == 0);
  assert(m->count * 2 <= new_cap); /* every entry fits, with an empty slot to end probes */
  slot *ns = map_calloc(new_cap, sizeof(slot));
  if (ns == NULL)
    return -HP_ENOMEM;
  size_t mask = new_cap - 1;
  for (size_t i = 0; i < m->cap; i++) {
    if (m->slots[i].key == 0)
      continue;
    size_t j = mix(m->slots[i].key) & mask;
    while (ns[j].key != 0)
      j = (j + 1) & mask;
    ns[j] = m->slots[i];
  }
  free(m->slots);
  m->slots = ns;
  m->cap = new_cap;
  return 0;
}

static slot *find(const hp_map *m, uint64_t key)
{
  assert(key != 0);
  if (m->cap == 0)
    return NULL;
  size_t mask = m->cap - 1;
  for (size_t i = mix(key) & mask;; i = (i + 1) & mask) {
    if (m->slots[i].key == key)
      return &m->slots[i];
    if (m->slots[i].key == 0)
      return NULL;
  }
}

int hp_map_put(hp_map *m, uint64_t key, const hp_map_val *v)
{
  if (key == 0) {
    m->has_zero = 1;
    m->zero_val = *v;
    return 0;
  }
  slot *s = find(m, key);
  if (s != NULL) {
    s->val = *v;
    return 0;
  }
  if ((m->count + 1) * 2 > m->cap) {
    int rc = rehash(m, m->cap ? m->cap * 2 : HP_MAP_MIN_CAP);
    if (rc < 0)
      return rc;
  }
  size_t mask = m->cap - 1;
  size_t i = mix(key) & mask;
  while (m->slots[i].key != 0)
    i = (i + 1) & mask;
  m->slots[i].key = key;
  m->slots[i].val = *v;
  m->count++;
  assert(m->count * 2 <= m->cap); /* at most half full: probes always end */
  return 0;
}

hp_map_val *hp_map_upsert(hp_map *m, uint64_t key, int *created)
{
  if (key == 0) {
    *created = !m->has_zero;
    if (*created)
      memset(&m->zero_val, 0, sizeof m->zero_val);
    m->has_zero = 1;
    return &m->zero_val;
  }
  if ((m->count + 1) * 2 > m->cap && rehash(m, m->cap ? m->cap * 2 : HP_MAP_MIN_CAP) < 0) {
    /* Full and cannot grow: still find an existing entry. */
    slot *s = find(m, key);
    *created = 0;
    return s ? &s->val : NULL;
  }
  size_t mask = m->cap - 1;
  size_t i = mix(key) & mask;
  for (; m->slots[i].key != 0; i = (i + 1) & mask) {
    if (m->slots[i].key == key) {
      *created = 0;
      return &m->slots[i].val;
    }
  }
  m->slots[i].key = key;
  memset(&m->slots[i].val, 0, sizeof m->slots[i].val);
  m->count++;
  assert(m->count * 2 <= m->cap);
  *created = 1;
  return &m->slots[i].val;
}

hp_map_val *hp_map_get(const hp_map *m, uint64_t key)
{
  if (key == 0)
    return m->has_zero ? (hp_map_val *)&m->zero_val : NULL;
  slot *s = find(m, key);
  return s ? &s->val : NULL;
}

static void del_slot(hp_map *m, size_t hole)
{
  assert(hole < m->cap && m->slots[hole].key != 0 && m->count > 0);
  size_t mask = m->cap - 1;
  /* Backward shift: pull later members of the probe run into the hole whenever
   * their home slot does not lie cyclically between the hole and themselves. */
  for (size_t j = (hole + 1) & mask; m->slots[j].key != 0; j = (j + 1) & mask) {
    size_t home = mix(m->slots[j].key) & mask;
    int stays = (hole <= j) ? (hole < home && home <= j) : (hole < home || home <= j);
    if (!stays) {
      m->slots[hole] = m->slots[j];
      hole = j;
    }
  }
  m->slots[hole].key = 0;
  m->count--;
  /* Shrinking is best effort: on OOM the map simply stays larger. */
  if (m->cap > HP_MAP_MIN_CAP && m->count * 8 < m->cap)
    (void)rehash(m, m->cap / 2);
}

void hp_map_del_at(hp_map *m, hp_map_val *v)
{
  if (v == &m->zero_val) {
    assert(m->has_zero);
    m->has_zero = 0;
    return;
  }
  slot *s = (slot *)((char *)v - offsetof(slot, val));
  del_slot(m, (size_t)(s - m->slots));
}

size_t hp_map_count(const hp_map *m)
{
  return m->count + (m->has_zero ? 1 : 0);
}
size_t hp_map_capacity(const hp_map *m)
{
  return m->cap;
}
