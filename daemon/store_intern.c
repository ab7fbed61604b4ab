/* store_intern.c — frames and stacks shared across sessions, and the id counters.
 *
 * A frame or stack with the same content gets the same row whichever session defines
 * it: the table is looked up by content first, and a new row is written only when
 * there is none. Each session remembers the database id of its frames and stacks by
 * the number conn gave them (hp_conn.h), in an id_table.
 *
 * Ids are chosen here, not by SQLite: sessions, frames, stacks and allocations take
 * them from counters that start after the highest id in each table and only grow, so
 * an id handed out in a transaction that was rolled back is never given to anything
 * else. Reading the tables once is enough: heapprofd holds the database's lock
 * (hp_dblock.h), so no other heapprofd adds rows meanwhile. */
#include "store_int.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "hp_log.h"
#include "hp_utf8.h"

int store_ids_load(hp_store *s)
{
  static const char sql[] =
    "SELECT (SELECT coalesce(max(id), 0) FROM session), (SELECT coalesce(max(id), 0) FROM"
    " frame), (SELECT coalesce(max(id), 0) FROM stack), (SELECT coalesce(max(id), 0) FROM"
    " alloc)";
  sqlite3_stmt *st = NULL;
  int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
  if (rc == SQLITE_OK)
    rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    s->next_session = sqlite3_column_int64(st, 0) + 1;
    s->next_frame = sqlite3_column_int64(st, 1) + 1;
    s->next_stack = sqlite3_column_int64(st, 2) + 1;
    s->pending_base = sqlite3_column_int64(st, 3) + 1;
  } else {
    hp_log(HP_LOG_ERROR, "database: reading the highest ids: %s", sqlite3_errmsg(s->db));
  }
  sqlite3_finalize(st);
  return rc == SQLITE_ROW ? 0 : -HP_ESQLITE;
}

/* ------------------------------------------------------------------ id tables */

void store_id_table_free(id_table *t)
{
  free(t->db_id);
  t->db_id = NULL;
  t->count = t->cap = 0;
}

/* Records the database id of `number`. Numbers only grow; one skipped (its entry could
 * not be recorded for lack of memory) reads as 0, like a definition that could not be
 * stored. 0, or -HP_ENOMEM. */
static int id_table_set(id_table *t, uint32_t number, int64_t db_id)
{
  assert(number > t->count);
  if (number > t->cap) {
    uint32_t cap = t->cap ? t->cap : 64;
    while (cap < number)
      cap *= 2;
    int64_t *p = realloc(t->db_id, (size_t)cap * sizeof *p);
    if (p == NULL)
      return -HP_ENOMEM;
    t->db_id = p;
    t->cap = cap;
  }
  memset(t->db_id + t->count, 0, (size_t)(number - 1 - t->count) * sizeof *t->db_id);
  t->db_id[number - 1] = db_id;
  t->count = number;
  return 0;
}

static void record(hp_store_session *ss, id_table *t, const char *what, uint32_t number,
                   int64_t db_id)
{
  if (id_table_set(t, number, db_id) < 0)
    hp_log(HP_LOG_ERROR,
           "session %" PRId64 ": out of memory recording %s %u; what uses "
           "it is stored without it",
           ss->id, what, number);
}

/* ------------------------------------------------------------------ frames */

/* The id of a frame with this content: the one in the table, or a new one. 0 only if
 * the table cannot be read (then the frame stays unattributed). */
static int64_t frame_id(hp_store *s, const item *it)
{
  if (s->broken)
    return 0;
  sqlite3_stmt *sel = s->st[ST_SEL_FRAME];
  sqlite3_bind_text(sel, 1, it->u.frame.function, -1, SQLITE_STATIC);
  sqlite3_bind_text(sel, 2, it->u.frame.filename, -1, SQLITE_STATIC);
  sqlite3_bind_int(sel, 3, it->u.frame.lineno);
  int rc = sqlite3_step(sel);
  int64_t id = rc == SQLITE_ROW ? sqlite3_column_int64(sel, 0) : 0;
  sqlite3_reset(sel);
  store_sql_unbind(s, ST_SEL_FRAME);
  if (rc == SQLITE_ROW)
    return id;
  if (rc != SQLITE_DONE) {
    store_sql_break(s, "looking up a frame", rc);
    return 0;
  }
  size_t lf = strlen(it->u.frame.function) + 1, lg = strlen(it->u.frame.filename) + 1;
  char blob[2 * (HP_UTF8_MAX_GROWTH * HP_MAX_STR_BYTES + 1)];
  assert(lf + lg <= sizeof blob);
  memcpy(blob, it->u.frame.function, lf);
  memcpy(blob + lf, it->u.frame.filename, lg);
  id = s->next_frame++;
  int64_t v[HP_TXOP_VALUES] = {[FRAME_ID] = id, [FRAME_LINENO] = it->u.frame.lineno};
  store_write(s, OP_FRAME, v, blob, (uint32_t)(lf + lg));
  return id;
}

void store_intern_frame(hp_store *s, item *it)
{
  hp_store_session *ss = it->ss;
  assert(ss->state == SESSION_ACTIVE);
  record(ss, &ss->frames, "frame", it->u.frame.number, frame_id(s, it));
}

/* ------------------------------------------------------------------ stacks */

/* 1 when stack `id` consists of exactly frames[0..depth); -1 if it cannot be read. */
static int stack_matches(hp_store *s, int64_t id, const int64_t *frames, uint32_t depth)
{
  sqlite3_stmt *st = s->st[ST_SEL_STACK_FRAMES];
  sqlite3_bind_int64(st, 1, id);
  uint32_t i = 0;
  int same = 1, rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (i >= depth || sqlite3_column_int64(st, 0) != frames[i]) {
      same = 0;
      break;
    }
    i++;
  }
  sqlite3_reset(st);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    store_sql_break(s, "comparing stacks", rc);
    return -1;
  }
  return same && i == depth;
}

static int64_t stack_id(hp_store *s, const int64_t *frames, uint32_t depth, int truncated)
{
  if (s->broken)
    return 0;
  /* FNV-1a over (truncated, frame ids); the table compares colliding stacks in full. */
  uint64_t h = 14695981039346656037ULL;
  h = (h ^ (uint64_t)truncated) * 1099511628211ULL;
  for (uint32_t i = 0; i < depth; i++)
    h = (h ^ (uint64_t)frames[i]) * 1099511628211ULL;
  int64_t hash = (int64_t)h;

  sqlite3_stmt *sel = s->st[ST_SEL_STACK];
  sqlite3_bind_int64(sel, 1, hash);
  sqlite3_bind_int64(sel, 2, depth);
  sqlite3_bind_int(sel, 3, truncated);
  int64_t found = 0;
  int rc;
  while (!found && (rc = sqlite3_step(sel)) == SQLITE_ROW) {
    int64_t cand = sqlite3_column_int64(sel, 0);
    int m = stack_matches(s, cand, frames, depth);
    if (m < 0)
      break;
    if (m)
      found = cand;
  }
  sqlite3_reset(sel);
  if (found)
    return found;
  if (s->broken)
    return 0;
  if (rc != SQLITE_DONE) {
    store_sql_break(s, "looking up a stack", rc);
    return 0;
  }
  int64_t id = s->next_stack++;
  int64_t v[HP_TXOP_VALUES] = {[STACK_ID] = id,
                               [STACK_HASH] = hash,
                               [STACK_DEPTH] = depth,
                               [STACK_TRUNCATED] = truncated};
  store_write(s, OP_STACK, v, frames, (uint32_t)(depth * sizeof *frames));
  s->txn_rows += depth;
  return id;
}

void store_intern_stack(hp_store *s, item *it)
{
  hp_store_session *ss = it->ss;
  assert(ss->state == SESSION_ACTIVE && it->u.stack.depth <= HP_MAX_STACK_DEPTH);
  int64_t frames[HP_MAX_STACK_DEPTH];
  uint32_t depth = it->u.stack.depth;
  for (uint32_t i = 0; i < depth; i++) {
    uint32_t number = it->u.stack.frame_numbers[i];
    assert(number >= 1);
    frames[i] = number <= ss->frames.count ? ss->frames.db_id[number - 1] : 0;
    if (frames[i] == 0) {
      /* Its frame could not be stored (logged), so neither can the stack. */
      record(ss, &ss->stacks, "stack", it->u.stack.number, 0);
      return;
    }
  }
  record(ss, &ss->stacks, "stack", it->u.stack.number,
         stack_id(s, frames, depth, it->u.stack.truncated));
}
