/* store_int.h — what the files of the store module share; hp_store.h is its interface.
 *
 * One module, one file per job:
 *   store.c          the store thread: start, stop, its loop, what each item does
 *   store_queue.c    the loop thread's side: messages copied into items, the bounded queue
 *   store_text.c     agents' text made storable: UTF-8 repair, argv and buckets as JSON
 *   store_sql.c      the SQLite statements, and every write through the transaction log
 *   store_txn.c      transactions: begin, commit, a failure's rollback, retry, giving up
 *   store_pair.c     allocation rows kept back, frees and reattributes paired with them
 *   store_session.c  a session's life on the store thread: its row, counters and end
 *   store_intern.c   frames and stacks shared across sessions; the id counters
 *   store_agg.c      the aggregates, summed from the rows each transaction writes
 *   store_site.c     the site aggregate: each line's highest level per bucket
 * Unless a comment says otherwise, everything here belongs to the store thread. */
#ifndef HP_STORE_INT_H
#define HP_STORE_INT_H

#include <assert.h>
#include <pthread.h>
#include <stdint.h>
#include <time.h>

#include "hp_map.h"
#include "hp_store.h"
#include "hp_timeline.h"
#include "hp_txlog.h"

/* ------------------------------------------------------------------ queue items */

typedef enum {
  IT_HELLO,
  IT_FRAME,
  IT_STACK,
  IT_EVENTS,
  IT_COUNTERS,
  IT_GOODBYE,
  IT_THREAD,
  IT_MARKER,
  IT_END
} item_kind;

#define HP_STORE_REASON_BYTES 512 /* a protocol error's message, as stored */

/* One message, copied by the loop thread (strings repaired, hp_utf8.h) so that the
 * store thread never reads the connection's buffers. */
typedef struct item {
  struct item *next;
  item_kind kind;
  hp_store_session *ss;
  size_t cost; /* bytes charged to the queue's bound */
  union {
    struct {
      int64_t pid, ppid;
      uint64_t start_wall, start_mono, sample_interval;
      uint32_t max_depth, argc, argv_omitted;
      size_t argv_bytes; /* of the whole argv, for the log line when cut */
      char *argv_json, *executable, *python_version, *buckets_json; /* into data */
    } hello;
    struct {
      uint32_t number;
      int32_t lineno;
      char *function, *filename;
    } frame;
    struct {
      uint32_t number;
      uint8_t truncated;
      uint32_t depth;
      uint32_t *frame_numbers;
    } stack;
    struct {
      uint32_t n;
      hp_event *ev;
    } events;
    struct {
      uint64_t dropped, ts, interval, sent;
    } counters;
    struct {
      uint64_t ts, dropped;
      uint32_t reason;
    } goodbye;
    struct {
      uint64_t tid;
      char *name;
    } thread;
    struct {
      uint64_t ts;
      char *label;
    } marker;
    struct {
      hp_session_end how;
      int64_t wall_ns;
      char reason[HP_STORE_REASON_BYTES];
    } end;
  } u;
  _Alignas(16) unsigned char data[]; /* strings, frame numbers or events of this item */
} item;

/* ------------------------------------------------------------------ sessions */

/* Where a session is in its life on the store thread. */
typedef enum {
  SESSION_QUEUED = 0, /* created by the loop thread; its HELLO not processed yet */
  SESSION_ACTIVE,     /* HELLO processed: on the active list, status 'running' */
  SESSION_ENDED,      /* its end processed: on the ending list until a commit stores it */
} session_state;

/* How far the session's row has got into the database. */
typedef enum {
  ROW_NONE = 0, /* not inserted, or its INSERT was rolled back */
  ROW_IN_TXN,   /* inserted by the open transaction */
  ROW_STORED,   /* inserted by a committed transaction: updated from now on */
} row_state;

/* Database ids of a session's frames or of its stacks, by the number conn gave each
 * (hp_conn.h): numbers arrive in order, so an array does where a map would. */
typedef struct {
  int64_t *db_id; /* [number - 1]; 0: its definition could not be stored */
  uint32_t count; /* numbers recorded, 1 .. count */
  uint32_t cap;
} id_table;

/* A session. Created on the loop thread, then handed to the store thread by the queue
 * (its mutex orders the hand-over); after that only the store thread touches it,
 * except `end`, which the loop thread fills in and pushes as the session's last item. */
struct hp_store_session {
  item *end;   /* preallocated end item; freed with the session */
  item *hello; /* the HELLO item, for the session row; freed with it */
  int64_t peer_pid;
  /* store thread only: */
  session_state state;
  row_state row;
  int dirty; /* the row differs from what was last written */
  int64_t id, pid;
  int64_t start_wall, start_mono;
  int64_t ended_wall; /* from GOODBYE, 0 until then */
  int64_t end_ns;     /* ended_ns as stored, once the end is processed */
  const char *status; /* "running" until the end is processed */
  id_table frames, stacks;
  hp_map *addrs; /* live sampled address -> .live */
  hp_timeline *tl;
  uint64_t events_received, events_dropped, unpaired_frees;
  uint64_t untracked;       /* allocations dropped here: addrs was at max_live_addrs */
  uint64_t events_sent;     /* the last COUNTERS' events_sent */
  uint64_t lost_in_transit; /* events_sent - events_received at an end without GOODBYE */
  uint64_t lost_storage;    /* events given up after storage failures */
  uint32_t end_reason;      /* GOODBYE's (hp_end_reason) */
  uint32_t thread_defs; /* THREAD_DEFs stored; beyond HP_STORE_MAX_THREAD_DEFS ignored */
  uint64_t thread_defs_ignored;
  uint64_t start_interval;   /* HELLO's sampling interval (0: size buckets) */
  uint64_t interval;         /* the current one: HELLO's, or the last stored change */
  uint64_t interval_changes; /* sampling_change rows stored for this session */
  int interval_refused;      /* a nonsensical change was logged (once per session) */
  struct hp_store_session *prev, *next; /* the active list, or the ending list */
};

/* ------------------------------------------------------------------ the store */

/* An allocation row not inserted yet (store_pair.c). */
typedef struct {
  hp_store_session *ss;
  int64_t ts, thread, address, size, est, stack, freed; /* stack, freed 0: NULL */
  int domain;
  int events; /* events this row stores: its alloc, and its free */
} pending_alloc;

/* Statements prepared once (store_sql.c). */
enum {
  ST_BEGIN,
  ST_COMMIT,
  ST_INS_SESSION,
  ST_UPD_SESSION,
  ST_INS_FRAME,
  ST_SEL_FRAME,
  ST_SEL_STACK,
  ST_SEL_STACK_FRAMES,
  ST_INS_STACK,
  ST_INS_STACK_FRAME,
  ST_INS_ALLOC,
  ST_UPD_FREE,
  ST_UPSERT_TL,
  ST_INS_SAMPLING,
  ST_SEL_ALLOC,
  ST_UPSERT_THREAD,
  ST_INS_MARKER,
  ST_INS_AGG_SESSION,
  ST_UPSERT_AGG_STACK,
  ST_UPSERT_AGG_SIZE,
  ST_SEL_FREED,
  ST_INS_AGG_SITE_SESSION,
  ST_INS_AGG_SITE,
  ST_UPD_AGG_SITE_DONE,
  ST_DEL_AGG_SITE_SESSION,
  ST_DEL_AGG_SITE,
  ST_SEL_FRAME_LINE,
  ST_COUNT
};

#define HP_STORE_MULTI 64 /* rows per multi-row INSERT into alloc */

/* Width of the aggregates' time buckets (schema.sql, agg_session): a snapshot between two
 * edges reads the rows of at most one bucket. */
#define HP_STORE_AGG_BUCKET_NS 1000000000LL
/* Sums one transaction keeps in memory before writing them early (store_agg.c). */
#define HP_STORE_AGG_MAX_ENTRIES (1u << 16)

/* One key's sums of one transaction (store_agg.c). Bytes are doubles, exact below 2^53
 * per key, so that no sum can overflow (SQLite turns an overflowing + into a REAL too). */
typedef struct {
  int64_t session, bucket, stack; /* bucket < 0: size class -1 - bucket, stack 0 */
  double alloc_bytes, alloc_count, freed_bytes, freed_count;
  double alloc_var, freed_var; /* sums of est_var(): the standard errors of the bytes */
  int64_t alloc_samples, freed_samples;
} agg_entry;
typedef struct store_agg store_agg;
typedef struct store_site store_site;

/* How long before a session's latest event the site aggregate writes a bucket
 * (store_site.c): events of agent threads reach heapprofd out of time order by less. */
#define HP_STORE_SITE_LAG_NS 250000000LL
/* Events of all sessions waiting for their bucket's write beyond which there is no lag;
 * beyond which the sessions holding the most give their site aggregate up (also any one
 * session at once); line references of the stacks read beyond which it gives up
 * (store_site.c). */
#define HP_STORE_SITE_SOFT_EVENTS   (1u << 20)
#define HP_STORE_SITE_MAX_EVENTS    (1u << 22)
#define HP_STORE_SITE_MAX_LINE_REFS (1u << 24)

struct hp_store {
  hp_store_config cfg;
  pthread_t thread;

  /* The queue between the loop thread and this one (store_queue.c): protected by mu. */
  pthread_mutex_t mu;
  pthread_cond_t cond; /* signalled on push and on stop */
  item *head, *tail;   /* pushed, not taken yet */
  size_t queued_bytes; /* cost of the items pushed and not processed yet */
  int paused;          /* the loop stopped reading; call on_resume below queue_low */
  int stop;            /* hp_store_stop() asks the thread to finish */

  /* Everything below: the store thread only (and hp_store_stop after the join). */
  item *held, *held_tail;    /* taken from the queue, not processed yet */
  struct timespec next_tick; /* next idle tick of the timelines (store.c) */

  /* SQLite (store_sql.c). */
  sqlite3 *db;
  sqlite3_stmt *st[ST_COUNT];
  sqlite3_stmt *ins_multi; /* ST_INS_ALLOC with HP_STORE_MULTI rows */
  store_agg *agg;          /* the open transaction's aggregates (store_agg.c) */
  store_site *site;        /* the site aggregate's waiting events (store_site.c) */
  unsigned errors_logged;

  /* The open transaction (store_txn.c). */
  int in_txn;
  int broken; /* a statement of the open transaction failed */
  int broken_rc;
  uint64_t txn_rows;
  struct timespec txn_deadline;
  hp_txlog *log;      /* the open transaction's writes */
  int log_incomplete; /* a write could not be logged (out of memory) */

  /* A failed transaction waiting to be written again (store_txn.c). */
  int failing;
  unsigned attempts; /* failed attempts in a row */
  struct timespec fail_since, retry_at, next_fail_log, stop_at;
  uint64_t lost_events;     /* given up for good */
  uint64_t lost_at_failure; /* lost_events when the current failure began */
  uint64_t lost_sessions;   /* sessions whose row or end could not be written */

  /* Allocation rows kept back (store_pair.c): pending[i] gets alloc id pending_base + i. */
  pending_alloc *pending; /* oldest first */
  uint32_t npending, pending_cap;
  uint32_t pending_old; /* pending[0..pending_old) were pending at the last commit */
  int64_t pending_base; /* only grows */

  /* Id counters (store_intern.c): read from the tables at start, then only grow. */
  int64_t next_session, next_frame, next_stack;

  /* Sessions (store_session.c). */
  hp_store_session *active; /* HELLO processed, end not yet */
  hp_store_session *ending; /* end processed, not committed yet */
};

/* ------------------------------------------------------------------ time */

static inline struct timespec store_mono_now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts;
}

static inline int64_t store_wall_now_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline int store_ts_before(struct timespec a, struct timespec b)
{
  return a.tv_sec < b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec < b.tv_nsec);
}

static inline struct timespec store_ts_add_ms(struct timespec t, uint32_t ms)
{
  t.tv_sec += ms / 1000;
  t.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (t.tv_nsec >= 1000000000L) {
    t.tv_sec++;
    t.tv_nsec -= 1000000000L;
  }
  return t;
}

static inline double store_seconds_since(struct timespec t)
{
  struct timespec now = store_mono_now();
  return (double)(now.tv_sec - t.tv_sec) + (double)(now.tv_nsec - t.tv_nsec) / 1e9;
}

/* ------------------------------------------------------------------ store_queue.c */

/* Loop-side allocations, failing on request (hp_store_fail_alloc_after). */
void *store_loop_malloc(size_t n);
void *store_loop_realloc(void *p, size_t n);
/* Waits until something is queued, the deadline passes, or (when wake_on_stop) a stop
 * is asked for; moves what is queued to the held list. Returns s->stop. */
int store_queue_take(hp_store *s, const struct timespec *deadline, int wake_on_stop);
/* A processed item's cost leaves the queue's bound; resumes the loop below queue_low. */
void store_queue_release(hp_store *s, size_t cost);

/* ------------------------------------------------------------------ store_text.c */

/* Room an agent's string takes in an item once repaired, with its NUL. */
size_t store_text_room(hp_str s);
/* Copies s, repaired to valid UTF-8, to *cursor as a C string; advances the cursor. */
char *store_text_copy(char **cursor, hp_str s);
/* argv as a JSON array of at most HP_STORE_MAX_ARGV_BYTES (whole entries left out from
 * the end, counted in *omitted), and the buckets as a JSON array (NULL when there are
 * none). Loop thread; malloc'ed, the caller frees. 0, or -HP_ENOMEM. */
int store_argv_json(const hp_hello *h, char **json, uint32_t *omitted);
int store_buckets_json(const hp_hello *h, char **json);

/* ------------------------------------------------------------------ store_sql.c */

/* The writes kept in the transaction log, and the meaning of each one's values. */
enum {
  OP_FRAME,    /* FRAME_*; blob: function \0 filename \0 */
  OP_STACK,    /* STACK_*; blob: depth int64 frame ids */
  OP_ALLOC,    /* ALLOC_* */
  OP_FREE,     /* FREE_* */
  OP_TIMELINE, /* session, ts, live_bytes, live_count, end_bytes */
  OP_SAMPLING, /* session, ts, interval */
  OP_THREAD,   /* session, thread id; blob: name \0 */
  OP_MARKER,   /* session, ts; blob: label \0 */
};
enum { FRAME_ID, FRAME_LINENO };
enum { STACK_ID, STACK_HASH, STACK_DEPTH, STACK_TRUNCATED };
/* An alloc row's values, in the order of its columns. */
enum {
  ALLOC_ID,
  ALLOC_SESSION,
  ALLOC_TS,
  ALLOC_THREAD,
  ALLOC_DOMAIN,
  ALLOC_ADDRESS,
  ALLOC_SIZE,
  ALLOC_EST,
  ALLOC_STACK /* 0: NULL */,
  ALLOC_FREED /* 0: NULL */,
  ALLOC_EVENTS /* not a column */
};
/* A stored row's end; FREE_STACK and FREE_SIZE are -1 when the row must be read for them. */
enum { FREE_ID, FREE_TS, FREE_SESSION, FREE_EVENTS, FREE_STACK, FREE_EST, FREE_SIZE };

int store_sql_prepare(hp_store *s);
void store_sql_finalize(hp_store *s);
const char *store_sql_text(int which);
/* Steps statement `which` (returning no rows, or ignoring them) and resets it: 0, or
 * -1 when it failed or the transaction is broken already (nothing runs then). */
int store_sql_run(hp_store *s, int which);
/* Forgets the text statement `which` binds, after a step outside store_sql_run. */
void store_sql_unbind(hp_store *s, int which);
/* A statement of the open transaction failed with rc: no more statements run in it. */
void store_sql_break(hp_store *s, const char *what, int rc);
/* Logs a storage error (the first 20; later ones are summed up by store_txn.c). */
void store_sql_log_error(hp_store *s, const char *what, int rc);
/* A write of the open transaction: kept in the log, then executed (unless broken). */
void store_write(hp_store *s, int kind, const int64_t *v, const void *blob, uint32_t len);
/* Alloc rows (ALLOC_* values): logged, and inserted HP_STORE_MULTI to a statement. */
void store_write_allocs(hp_store *s, int64_t (*rows)[HP_TXOP_VALUES], uint32_t n);
/* The stack (0: none) and size of stored row `id`: 0, or -1 when it cannot be read. */
int store_sql_row_of(hp_store *s, int64_t id, int64_t *stack, int64_t *size);
/* Writes the log again after a rollback, in its order. */
void store_sql_replay(hp_store *s);

/* ------------------------------------------------------------------ store_txn.c */

/* Opens the transaction every write happens in (after a failure: not before its retry
 * time, and then the failed transaction's writes go first). 0, or -1: not open. */
int store_txn_begin(hp_store *s);
/* Commits the open transaction. `final` stores every pending row (at shutdown);
 * otherwise the rows that arrived since the last commit stay pending one more round. */
void store_txn_commit(hp_store *s, int final);
/* The open transaction (or its BEGIN) failed with rc: rolled back, retried later. */
void store_txn_fail(hp_store *s, int rc);
/* Shutdown with storage still failing: everything not written is given up, and said. */
void store_txn_give_up_all(hp_store *s);

/* ------------------------------------------------------------------ store_pair.c */

void store_pair_events(hp_store *s, item *it);
/* Inserts every pending row (before the session they point at can go away). */
void store_pair_flush(hp_store *s);
/* Inserts the rows that were pending at the last commit; the rest wait one more round. */
void store_pair_flush_old(hp_store *s);
/* Timeline rows of a session, written in the open transaction. */
void store_timeline_rows(hp_store *s, hp_store_session *ss, const hp_tl_row *rows, int n);

/* ------------------------------------------------------------------ store_agg.c */

store_agg *store_agg_new(void);    /* NULL on OOM */
void store_agg_free(store_agg *a); /* NULL is a no-op */
/* An alloc row written in the open transaction (ALLOC_* values), or the freed_ns an
 * UPDATE set on the row of that session, stack, est_bytes and size. */
void store_agg_row(hp_store *s, const int64_t *v);
void store_agg_freed(hp_store *s, int64_t session, int64_t stack, int64_t est, int64_t size,
                     int64_t freed);
/* Writes the sums into agg_stack and agg_size (before COMMIT); store_agg_clear forgets
 * them (after COMMIT, or at a rollback: the replay sums the rows again). */
void store_agg_write(hp_store *s);
void store_agg_clear(hp_store *s);

/* ------------------------------------------------------------------ store_site.c */

store_site *store_site_new(void);    /* NULL on OOM */
void store_site_free(store_site *t); /* NULL is a no-op */
/* A change of delta bytes at ts on the lines of stack (0: none) of a session, from an
 * alloc row or a free written in the open transaction (store_agg.c calls it). */
void store_site_add(hp_store *s, int64_t session, int64_t stack, int64_t delta, int64_t ts);
/* Writes the buckets no later row can reach (before COMMIT); then one of: */
void store_site_write(hp_store *s);
void store_site_committed(hp_store *s);
void store_site_rolled_back(hp_store *s); /* the replay adds the rows again */

/* ------------------------------------------------------------------ store_session.c */

void store_session_free(hp_store_session *ss);
void store_session_hello(hp_store *s, item *it);
void store_session_counters(hp_store *s, item *it);
void store_session_goodbye(item *it);
void store_session_thread(hp_store *s, item *it);
void store_session_marker(hp_store *s, item *it);
void store_session_end(hp_store *s, item *it);
/* Writes the row of every session whose row changed (at each commit). */
void store_session_write_rows(hp_store *s);
/* The transaction committed: rows it inserted are stored, ended sessions are freed. */
void store_session_committed(hp_store *s);
/* The transaction was rolled back: every row is written again at the next commit. */
void store_session_rolled_back(hp_store *s);
/* The session with database id `id`, or NULL when it is gone. */
hp_store_session *store_session_find(hp_store *s, int64_t id);
/* What the session row reports as events_dropped. */
int64_t store_session_dropped(const hp_store_session *ss);

/* ------------------------------------------------------------------ store_intern.c */

/* Reads the next ids from the tables; before the thread starts. 0, or -HP_ESQLITE. */
int store_ids_load(hp_store *s);
void store_intern_frame(hp_store *s, item *it);
void store_intern_stack(hp_store *s, item *it);
void store_id_table_free(id_table *t);

/* Wall time of an agent's monotonic time (every event's: inline). Both clocks are i63
 * (PROTOCOL.md), so their difference fits an int64; the sum need not: it is clamped to
 * what SQLite stores, 0 .. INT64_MAX (a time before the epoch is as much nonsense from
 * an agent as one past 2262), so no stored time is ever negative or wrapped. */
static inline int64_t store_session_wall(const hp_store_session *ss, uint64_t mono)
{
  int64_t d = (int64_t)mono - ss->start_mono, w;
  if (__builtin_add_overflow(ss->start_wall, d, &w))
    w = d > 0 ? INT64_MAX : 0;
  return w < 0 ? 0 : w;
}

/* The database id of the stack with this number in its session; 0 for none (HP_NO_STACK,
 * or a definition that could not be stored). */
static inline int64_t store_stack_db_id(const hp_store_session *ss, uint32_t number)
{
  const id_table *t = &ss->stacks;
  return number >= 1 && number <= t->count ? t->db_id[number - 1] : 0;
}

#endif /* HP_STORE_INT_H */
