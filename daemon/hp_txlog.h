/* hp_txlog.h — the writes of the store's open transaction, kept until it commits.
 *
 * SQLite rolls a transaction back when a COMMIT (or a statement) fails for a full disk
 * or an I/O error, but the store has already applied its effects to memory (ids handed
 * out, frees paired, the timeline moved). So every write of the open transaction is
 * also appended here, with its values, and a transaction that failed is written again
 * from this log, whole, before anything new (store_txn.c). Each entry is a kind
 * chosen by the store, up to HP_TXOP_VALUES integers and an optional blob that the log
 * copies. Store thread only; the log holds at most one transaction's writes. */
#ifndef HP_TXLOG_H
#define HP_TXLOG_H

#include <stddef.h>
#include <stdint.h>

#define HP_TXOP_VALUES 11

typedef struct {
  int kind;
  int64_t v[HP_TXOP_VALUES];
  const void *blob; /* borrowed until the log is changed; NULL when len is 0 */
  uint32_t len;
} hp_txop;

typedef struct hp_txlog hp_txlog; /* opaque */

hp_txlog *hp_txlog_new(void);    /* NULL on OOM */
void hp_txlog_free(hp_txlog *l); /* NULL is a no-op */
/* Appends one write; the blob (len bytes) is copied. 0, or -HP_ENOMEM (not appended). */
int hp_txlog_add(hp_txlog *l, int kind, const int64_t v[HP_TXOP_VALUES], const void *blob,
                 uint32_t len);
size_t hp_txlog_count(const hp_txlog *l);
/* Entry i (< count) into *op. */
void hp_txlog_get(const hp_txlog *l, size_t i, hp_txop *op);
/* Keeps the entries keep() says 1 for, in their order; drops the others. */
void hp_txlog_filter(hp_txlog *l, int (*keep)(const hp_txop *op, void *ctx), void *ctx);
void hp_txlog_clear(hp_txlog *l); /* keeps its memory for the next transaction */

#endif /* HP_TXLOG_H */
