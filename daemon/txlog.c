/* txlog.c — the open transaction's writes (see hp_txlog.h). Entries live in one array
 * and their blobs in one byte arena, both grown by doubling and kept between
 * transactions, so the steady state allocates nothing. */
#include "hp_txlog.h"

#include <stdlib.h>
#include <string.h>

#include "hp_error.h"

typedef struct {
  int kind;
  uint32_t len;
  size_t off; /* of the blob in the arena */
  int64_t v[HP_TXOP_VALUES];
} entry;

struct hp_txlog {
  entry *e;
  size_t n, cap;
  unsigned char *arena;
  size_t used, size;
};

hp_txlog *hp_txlog_new(void)
{
  return calloc(1, sizeof(hp_txlog));
}

void hp_txlog_free(hp_txlog *l)
{
  if (l == NULL)
    return;
  free(l->e);
  free(l->arena);
  free(l);
}

static int grow(void **p, size_t *cap, size_t need, size_t unit, size_t first)
{
  if (need <= *cap)
    return 0;
  size_t c = *cap ? *cap : first;
  while (c < need)
    c *= 2;
  void *np = realloc(*p, c * unit);
  if (np == NULL)
    return -HP_ENOMEM;
  *p = np;
  *cap = c;
  return 0;
}

/* Blobs start at multiples of 8, so that one holding integers can be read in place. */
static size_t align8(size_t n)
{
  return (n + 7) & ~(size_t)7;
}

int hp_txlog_add(hp_txlog *l, int kind, const int64_t v[HP_TXOP_VALUES], const void *blob,
                 uint32_t len)
{
  size_t off = align8(l->used);
  if (grow((void **)&l->e, &l->cap, l->n + 1, sizeof(entry), 1024) < 0 ||
      grow((void **)&l->arena, &l->size, off + len, 1, 4096) < 0)
    return -HP_ENOMEM;
  entry *x = &l->e[l->n++];
  x->kind = kind;
  x->len = len;
  x->off = off;
  memcpy(x->v, v, sizeof x->v);
  if (len > 0) {
    memcpy(l->arena + off, blob, len);
    l->used = off + len;
  }
  return 0;
}

size_t hp_txlog_count(const hp_txlog *l)
{
  return l->n;
}

void hp_txlog_get(const hp_txlog *l, size_t i, hp_txop *op)
{
  const entry *x = &l->e[i];
  op->kind = x->kind;
  memcpy(op->v, x->v, sizeof op->v);
  op->len = x->len;
  op->blob = x->len > 0 ? l->arena + x->off : NULL;
}

void hp_txlog_filter(hp_txlog *l, int (*keep)(const hp_txop *op, void *ctx), void *ctx)
{
  size_t out = 0, used = 0;
  for (size_t i = 0; i < l->n; i++) {
    hp_txop op;
    hp_txlog_get(l, i, &op);
    if (!keep(&op, ctx))
      continue;
    entry x = l->e[i];
    /* Entries only move towards the front, so a kept blob never overlaps one that
     * is still to be read. */
    if (x.len > 0) {
      used = align8(used);
      if (x.off != used)
        memmove(l->arena + used, l->arena + x.off, x.len);
      x.off = used;
      used += x.len;
    }
    l->e[out++] = x;
  }
  l->n = out;
  l->used = used;
}

void hp_txlog_clear(hp_txlog *l)
{
  l->n = 0;
  l->used = 0;
}
