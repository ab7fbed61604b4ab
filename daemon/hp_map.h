/* hp_map.h — open-addressing hash map from a 64-bit key to a small fixed value.
 *
 * Used by the daemon for everything it keys by an integer: the agent's frame and
 * stack ids of one stream (conn.c numbers them) and the live sampled addresses of one
 * session (the store pairs frees with allocations). Memory is proportional to the
 * entries held: the table grows at half load and shrinks again when it falls to an
 * eighth, so an address map follows the live sampled allocations of its session, not
 * their history. The map has no limit of its own: its owners cap the entries
 * (HP_CONN_MAX_FRAMES/STACKS, HP_STORE_MAX_LIVE_ADDRS).
 * Not thread-safe: each map belongs to one thread. */
#ifndef HP_MAP_H
#define HP_MAP_H

#include <stddef.h>
#include <stdint.h>

/* The live sampled allocation at an address (the store's address maps). Its size and
 * stack let the store end its row in the aggregates without reading the row back; one
 * that does not fit 32 bits (a block of 4 GiB or more, a stack id past 2^32 - 2) is
 * HP_LIVE_LOOKUP, and read from the row when needed. */
#define HP_LIVE_LOOKUP UINT32_MAX
typedef struct {
  int64_t alloc_id;  /* its row in table alloc */
  int64_t est_bytes; /* what it adds to the timeline's live level */
  uint32_t size;     /* requested size, or HP_LIVE_LOOKUP */
  uint32_t stack;    /* database stack id (0: none), or HP_LIVE_LOOKUP */
} hp_live_alloc;

/* A value: each map uses one member, chosen by its owner. */
typedef union {
  uint32_t number;    /* conn's id maps: the id's number in its stream (hp_conn.h) */
  hp_live_alloc live; /* the store's address maps */
} hp_map_val;

typedef struct hp_map hp_map; /* opaque */

hp_map *hp_map_new(void);    /* NULL on OOM */
void hp_map_free(hp_map *m); /* NULL is a no-op */
/* Inserts or replaces. 0, or -HP_ENOMEM (the map is unchanged). */
int hp_map_put(hp_map *m, uint64_t key, const hp_map_val *v);
/* The value for key, inserted zeroed if absent (*created says which): one probe where
 * get-then-put takes two. NULL on OOM. Valid until the next put/upsert/del/free. */
hp_map_val *hp_map_upsert(hp_map *m, uint64_t key, int *created);
/* Pointer to the value (valid until the next put/del/free), or NULL. */
hp_map_val *hp_map_get(const hp_map *m, uint64_t key);
/* Removes the entry whose value v points to (as returned by hp_map_get or
 * hp_map_upsert just before): one lookup where get-then-delete takes two. */
void hp_map_del_at(hp_map *m, hp_map_val *v);
size_t hp_map_count(const hp_map *m);
/* Slots allocated (32 bytes each): what the map's memory bound is stated in
 * (daemon/README.md, "Limits"), and what tests check it by. */
size_t hp_map_capacity(const hp_map *m);

/* Test hook: make the n-th allocation from now fail (0 disables). */
void hp_map_fail_alloc_after(unsigned n);

#endif /* HP_MAP_H */
