/* store.c — the storage thread (see hp_store.h).
 *
 * Pipeline position: conn (loop thread) -> [bounded queue] -> store thread -> SQLite,
 * with the timeline computed here because it needs the pairing of frees with allocs.
 *
 * Why allocations wait in `pending`: most sampled objects die young, so their free
 * usually arrives soon after. Holding the row in memory lets us insert it once with
 * freed_ns already set instead of an INSERT now and an UPDATE later — half the SQLite
 * work at high rates. A commit therefore stores only the rows that were already
 * pending at the previous commit and keeps the younger ones for one more round: every
 * row is committed by its second commit (under half a second at the 200 ms commit
 * interval), and a free that comes within one commit interval never costs an UPDATE.
 * (Storing all pending rows at each commit made half the benchmark's frees UPDATEs.)
 *
 * Ids are chosen here, not by SQLite: every transaction starts with BEGIN IMMEDIATE (so
 * no other writer can slip in) and reads the highest id of each table once; sessions,
 * frames, stacks and allocations then take ids from counters that only ever grow, so
 * an id handed out in a transaction that was rolled back is never given to anything
 * else (two programs were once merged into one session that way). Pending row i has id
 * pending_base + i (renumbered if another writer took those ids between our
 * transactions). The address map holds the final id from the start, a free can tell a
 * pending row from a stored one by comparing ids, and the pending rows go out in
 * multi-row INSERTs (HP_STORE_MULTI rows per statement), which cost far less SQLite
 * bytecode per row than one INSERT each.
 *
 * Failures. A transaction can fail at BEGIN (another writer holds the lock), in a
 * statement or at COMMIT (a full disk, an I/O error), and SQLite then rolls it back,
 * while its effects are already in memory: ids handed out, frees paired, the timeline
 * moved. So:
 *  - every write of the open transaction is also kept in a log (hp_txlog.h) with its
 *    values, and after a rollback the transaction is written again from the log, whole,
 *    before anything new, with capped exponential backoff, until it commits;
 *  - meanwhile nothing new is processed: items wait in the queue, which fills, and the
 *    loop stops reading sockets (agents then wait or count their drops);
 *  - session rows are written from memory at every commit, so a session's row and its
 *    end are written again until they commit, and a session is freed only after its
 *    end has been committed (rows still pending point at it);
 *  - an error that retrying cannot cure (a constraint, a damaged file) is retried
 *    HP_STORE_PERMANENT_TRIES times; then the transaction's data is given up, counted
 *    in its sessions' events_dropped, and its frame and stack definitions are kept for
 *    the next transaction. At shutdown the store retries for stop_retry_ms; what it
 *    still cannot write is given up and logged per session, and hp_store_stop fails.
 * A statement that fails inside a transaction stops all further statements of it
 * ("broken"): what the item being processed still writes goes to the log only, and the
 * transaction is rolled back and retried after that item. */
#include "hp_store.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hp_log.h"
#include "hp_map.h"
#include "hp_timeline.h"
#include "hp_txlog.h"
#include "hp_utf8.h"

/* ------------------------------------------------------------------ queue items */

typedef enum {
  IT_HELLO, IT_FRAME, IT_STACK, IT_EVENTS, IT_COUNTERS, IT_GOODBYE, IT_THREAD, IT_MARKER, IT_END
} item_kind;

#define HP_STORE_REASON_BYTES 512

typedef struct item {
  struct item *next;
  item_kind kind;
  hp_store_session *ss;
  size_t cost;                       /* bytes charged to the queue bound */
  union {
    struct {
      int64_t pid, ppid;
      uint64_t start_wall, start_mono, sample_interval;
      uint32_t max_depth, argc, argv_omitted;
      size_t argv_bytes;             /* of the whole argv, for the log line when cut */
      char *argv_json, *executable, *python_version, *buckets_json; /* into data */
    } hello;
    struct { uint32_t id; int32_t lineno; char *function, *filename; } frame;
    struct { uint32_t id; uint8_t truncated; uint32_t depth; uint32_t *frame_ids; } stack;
    struct { uint32_t n; hp_event *ev; } events;
    struct { uint64_t dropped, ts, interval, sent; int has_interval; } counters;
    struct { uint64_t ts, dropped; uint32_t reason; } goodbye;
    struct { uint64_t tid; char *name; } thread;
    struct { uint64_t ts; char *label; } marker;
    struct { hp_session_end how; int64_t wall_ns; char reason[HP_STORE_REASON_BYTES]; } end;
  } u;
  _Alignas(16) unsigned char data[];  /* strings, ids or events of this item */
} item;

/* A session. Created on the loop thread, then handed to the store thread by the
 * queue (its mutex orders the hand-over); after that only the store thread touches
 * it, except `end`, which the loop thread fills in and pushes as the last item. */
struct hp_store_session {
  item *end;                 /* preallocated end record; freed with the session */
  item *hello;               /* the HELLO item, for the session row; freed with it */
  int64_t peer_pid;
  /* store thread only: */
  int64_t id, pid;
  int64_t start_wall, start_mono;
  int64_t ended_wall;        /* from GOODBYE, 0 until then */
  int64_t end_ns;            /* ended_ns as stored, once the end is processed */
  const char *status;        /* "running" until then */
  hp_map *frames;            /* agent frame id -> a: frame.id */
  hp_map *stacks;            /* agent stack id -> a: stack.id */
  hp_map *addrs;             /* live sampled address -> a: alloc.id; b: est_bytes;
                                c: estimated count */
  hp_timeline *tl;
  uint64_t events_received, events_dropped, unpaired_frees;
  uint64_t untracked;        /* allocations dropped here: addrs was at max_live_addrs */
  uint64_t events_sent;      /* the last COUNTERS' events_sent (0 from an agent without) */
  uint64_t lost_in_transit;  /* events_sent - events_received at an end without GOODBYE */
  uint64_t lost_storage;     /* events given up after storage failures */
  uint32_t end_reason;       /* GOODBYE's (hp_end_reason) */
  uint32_t thread_defs;      /* THREAD_DEFs stored; beyond HP_STORE_MAX_THREAD_DEFS ignored */
  uint64_t thread_defs_ignored;
  uint64_t start_interval;   /* HELLO's sampling interval (0: size buckets) */
  uint64_t interval;         /* the current one: HELLO's, or the last stored change */
  uint64_t interval_changes; /* sampling_change rows stored for this session */
  int interval_refused;      /* a nonsensical change was logged (once per session) */
  int dirty;                 /* the row differs from what was last written */
  int in_db;                 /* its INSERT has been committed */
  int inserted_now;          /* its INSERT is in the open transaction */
  int ended;                 /* the end is processed: on the `ending` list */
  struct hp_store_session *prev, *next;  /* active sessions, or the ending list */
};

typedef struct {
  hp_store_session *ss;
  int64_t ts, thread, address, size, est, stack, freed; /* stack/freed 0: NULL */
  int domain;
  int events;                /* events this row stores: its alloc, and its free */
} pending_alloc;

#define HP_STORE_MULTI 64  /* rows per multi-row INSERT into alloc */
#define ALLOC_COLS 10
/* Retries of a failed transaction: the first after RETRY_MIN_MS, doubling up to
 * RETRY_MAX_MS; an error that is not transient is given up after PERMANENT_TRIES. */
#define HP_STORE_RETRY_MIN_MS 50u
#define HP_STORE_RETRY_MAX_MS 2000u
#define HP_STORE_PERMANENT_TRIES 3
/* While storing fails, one log line per this many seconds. */
#define HP_STORE_FAIL_LOG_S 30

/* The writes kept in the transaction log (hp_txlog.h); v[] as listed. */
enum {
  OP_FRAME,     /* id, lineno; blob: function \0 filename \0 */
  OP_STACK,     /* id, hash, depth, truncated; blob: depth int64 frame ids */
  OP_ALLOC,     /* id, session, ts, thread, domain | events << 8, address, size, est,
                   stack (0: NULL), freed (0: NULL) */
  OP_FREE,      /* alloc id, freed_ns, session, events */
  OP_TIMELINE,  /* session, ts, live_bytes, live_count, end_bytes */
  OP_SAMPLING,  /* session, ts, interval */
  OP_THREAD,    /* session, thread id; blob: name \0 */
  OP_MARKER,    /* session, ts; blob: label \0 */
};

enum {
  ST_BEGIN, ST_COMMIT, ST_INS_SESSION, ST_UPD_SESSION, ST_MAX_IDS,
  ST_INS_FRAME, ST_SEL_FRAME, ST_SEL_STACK, ST_SEL_STACK_FRAMES, ST_INS_STACK,
  ST_INS_STACK_FRAME, ST_INS_ALLOC, ST_UPD_FREE, ST_UPSERT_TL, ST_INS_SAMPLING, ST_SEL_ALLOC,
  ST_UPSERT_THREAD, ST_INS_MARKER, ST_COUNT
};

static const char *const sql_text[ST_COUNT] = {
  [ST_BEGIN] = "BEGIN IMMEDIATE",
  [ST_COMMIT] = "COMMIT",
  [ST_INS_SESSION] =
    "INSERT INTO session(id, pid, ppid, argv, executable, python_version, started_ns,"
    " sample_interval_bytes, sample_buckets, max_stack_depth, argv_omitted, ended_ns, status,"
    " error, events_received, events_dropped) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
  [ST_UPD_SESSION] =
    "UPDATE session SET ended_ns=?2, status=?3, error=?4, events_received=?5,"
    " events_dropped=?6 WHERE id=?1",
  [ST_MAX_IDS] =
    "SELECT (SELECT coalesce(max(id), 0) FROM session), (SELECT coalesce(max(id), 0) FROM"
    " frame), (SELECT coalesce(max(id), 0) FROM stack), (SELECT coalesce(max(id), 0) FROM"
    " alloc)",
  [ST_INS_FRAME] = "INSERT INTO frame(id, function, filename, lineno) VALUES(?1,?2,?3,?4)",
  [ST_SEL_FRAME] = "SELECT id FROM frame WHERE filename=?2 AND lineno=?3 AND function=?1",
  [ST_SEL_STACK] = "SELECT id FROM stack WHERE hash=?1 AND depth=?2 AND truncated=?3",
  [ST_SEL_STACK_FRAMES] = "SELECT frame_id FROM stack_frame WHERE stack_id=? ORDER BY depth",
  [ST_INS_STACK] = "INSERT INTO stack(id, hash, depth, truncated) VALUES(?,?,?,?)",
  [ST_INS_STACK_FRAME] = "INSERT INTO stack_frame(stack_id, depth, frame_id) VALUES(?,?,?)",
  [ST_INS_ALLOC] =
    "INSERT INTO alloc(id, session_id, ts_ns, thread_id, domain, address, size, est_bytes,"
    " stack_id, freed_ns) VALUES(?,?,?,?,?,?,?,?,?,?)",
  [ST_UPD_FREE] = "UPDATE alloc SET freed_ns=?2 WHERE id=?1",
  [ST_UPSERT_TL] =
    "INSERT INTO timeline_point(session_id, ts_ns, live_bytes, live_count, end_bytes)"
    " VALUES(?,?,?,?,?) ON CONFLICT(session_id, ts_ns) DO UPDATE SET"
    " live_bytes=excluded.live_bytes, live_count=excluded.live_count,"
    " end_bytes=excluded.end_bytes",
  [ST_INS_SAMPLING] =
    "INSERT INTO sampling_change(session_id, ts_ns, sample_interval_bytes) VALUES(?,?,?)",
  [ST_SEL_ALLOC] = "SELECT domain, size FROM alloc WHERE id=?1",
  [ST_UPSERT_THREAD] =
    "INSERT INTO thread_name(session_id, thread_id, name) VALUES(?1,?2,?3)"
    " ON CONFLICT(session_id, thread_id) DO UPDATE SET name=excluded.name",
  [ST_INS_MARKER] = "INSERT INTO marker(session_id, ts_ns, label) VALUES(?,?,?)",
};

struct hp_store {
  hp_store_config cfg;
  pthread_t thread;

  /* Queue: everything in this block is protected by mu. */
  pthread_mutex_t mu;
  pthread_cond_t cond;         /* signalled on push and on stop */
  item *head, *tail;
  size_t bytes;                /* sum of the cost of items not yet processed */
  int paused;                  /* the loop stopped reading; call on_resume below low */
  int stop;

  /* Store thread only. */
  sqlite3 *db;
  sqlite3_stmt *st[ST_COUNT];
  sqlite3_stmt *ins_multi;     /* ST_INS_ALLOC with HP_STORE_MULTI rows */
  int in_txn;
  int broken;                  /* a statement of the open transaction failed */
  int broken_rc;
  uint64_t txn_rows;
  struct timespec txn_deadline;
  struct timespec next_tick;   /* next idle_tick() */
  item *held, *held_tail;      /* taken from the queue, not processed yet */
  hp_txlog *log;               /* the open transaction's writes */
  int log_incomplete;          /* a write could not be logged (out of memory) */
  pending_alloc *pending;      /* allocations not inserted yet, oldest first */
  uint32_t npending, pending_cap;
  uint32_t pending_old;        /* pending[0..pending_old) were pending at the last commit */
  int64_t pending_base;        /* alloc id of pending[0]; never decreases */
  int64_t next_session, next_frame, next_stack;  /* ids; never decrease */
  hp_store_session *active;    /* sessions whose end was not processed yet */
  hp_store_session *ending;    /* ended, their end not committed yet */
  int failing;                 /* a transaction failed and waits to be retried */
  unsigned attempts;           /* failed attempts in a row */
  struct timespec fail_since, retry_at, next_fail_log, stop_at;
  uint64_t lost_events;        /* given up for good */
  uint64_t lost_at_failure;    /* lost_events when the current failure began */
  uint64_t lost_sessions;      /* sessions whose row or end could not be written */
  unsigned errors_logged;
};

/* ------------------------------------------------------------------ helpers */

static struct timespec mono_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts;
}

static int64_t wall_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int ts_before(struct timespec a, struct timespec b) {
  return a.tv_sec < b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec < b.tv_nsec);
}

static struct timespec ts_add_ms(struct timespec t, uint32_t ms) {
  t.tv_sec += ms / 1000;
  t.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (t.tv_nsec >= 1000000000L) {
    t.tv_sec++;
    t.tv_nsec -= 1000000000L;
  }
  return t;
}

static double seconds_since(struct timespec t) {
  struct timespec now = mono_now();
  return (double)(now.tv_sec - t.tv_sec) + (double)(now.tv_nsec - t.tv_nsec) / 1e9;
}

/* Wall time of an agent's monotonic time. Both are i63 (PROTOCOL.md), so their
 * difference fits an int64; the sum need not: it is clamped to what SQLite stores,
 * 0 .. INT64_MAX (a time before the epoch is as much nonsense from an agent as one
 * past 2262), so no stored time is ever negative or wrapped. */
static int64_t to_wall(const hp_store_session *ss, uint64_t mono) {
  int64_t d = (int64_t)mono - ss->start_mono, w;
  if (__builtin_add_overflow(ss->start_wall, d, &w))
    w = d > 0 ? INT64_MAX : 0;
  return w < 0 ? 0 : w;
}

static uint64_t sat_add_u64(uint64_t a, uint64_t b) {
  return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* What the session row reports as dropped: the agent's count (absolute, from COUNTERS
 * and GOODBYE), the allocations this store could not track, at an end without GOODBYE
 * the events the agent said it sent that never arrived, and what storage gave up. */
static int64_t dropped_total(const hp_store_session *ss) {
  uint64_t n = sat_add_u64(sat_add_u64(ss->events_dropped, ss->untracked),
                           sat_add_u64(ss->lost_in_transit, ss->lost_storage));
  return n > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)n;
}

/* Storage errors are logged in full 20 times, then once per HP_STORE_FAIL_LOG_S while a
 * failure lasts (fail_txn), so a full disk cannot flood stderr. */
static void log_db_error(hp_store *s, const char *what, int rc) {
  if (s->errors_logged >= 20)
    return;
  s->errors_logged++;
  hp_log(HP_LOG_ERROR, "database: %s: %s (%s)", what, sqlite3_errmsg(s->db),
         sqlite3_errstr(rc));
}

/* A statement of the open transaction failed: no more statements run in it. */
static void break_txn(hp_store *s, const char *what, int rc) {
  if (s->broken)
    return;
  s->broken = 1;
  s->broken_rc = rc;
  log_db_error(s, what, rc);
}

/* Steps a statement that returns no rows, then resets it; nothing runs once broken. */
static int step(hp_store *s, sqlite3_stmt *st, const char *what) {
  if (s->broken) {
    sqlite3_reset(st);
    return -1;
  }
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc == SQLITE_DONE || rc == SQLITE_ROW)
    return 0;
  break_txn(s, what, rc);
  return -1;
}

static int run(hp_store *s, int which) { return step(s, s->st[which], sql_text[which]); }

/* Test hook (hp_store_fail_alloc_after): loop-side allocations fail from the n-th on
 * until reset. Loop thread only, like the functions that use it. */
static unsigned fail_countdown;

void hp_store_fail_alloc_after(unsigned n) { fail_countdown = n; }

static int alloc_fails(void) {
  if (fail_countdown == 0)
    return 0;
  if (fail_countdown > 1) {
    fail_countdown--;
    return 0;
  }
  return 1;
}

static void *loop_malloc(size_t n) { return alloc_fails() ? NULL : malloc(n); }
static void *loop_calloc(size_t n, size_t size) { return alloc_fails() ? NULL : calloc(n, size); }
static void *loop_realloc(void *p, size_t n) { return alloc_fails() ? NULL : realloc(p, n); }

/* ------------------------------------------------------------------ JSON text */

typedef struct { char *p; size_t len, cap; int oom; } sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
  if (b->oom)
    return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 256;
    while (cap < b->len + n + 1)
      cap *= 2;
    char *p = loop_realloc(b->p, cap);
    if (p == NULL) {
      b->oom = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

/* s as a JSON string, repaired to valid UTF-8 first (hp_utf8.h). */
static void sb_json_str(sbuf *b, hp_str s) {
  char stack_buf[HP_UTF8_MAX_GROWTH * 256];
  char *text = stack_buf;
  if ((size_t)s.len * HP_UTF8_MAX_GROWTH > sizeof stack_buf &&
      (text = loop_malloc((size_t)s.len * HP_UTF8_MAX_GROWTH)) == NULL) {
    b->oom = 1;
    return;
  }
  size_t n = hp_utf8_repair(text, s.ptr, s.len);
  sb_put(b, "\"", 1);
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)text[i];
    char esc[8];
    if (ch == '"' || ch == '\\') {
      esc[0] = '\\';
      esc[1] = (char)ch;
      sb_put(b, esc, 2);
    } else if (ch < 0x20) {
      int k = snprintf(esc, sizeof esc, "\\u%04x", ch);
      sb_put(b, esc, (size_t)k);
    } else {
      sb_put(b, &text[i], 1);
    }
  }
  sb_put(b, "\"", 1);
  if (text != stack_buf)
    free(text);
}

/* argv as a JSON array of at most HP_STORE_MAX_ARGV_BYTES: the entries that do not fit
 * are left out (whole, so the text stays a valid array) and counted in *omitted. */
static void sb_json_argv(sbuf *b, const hp_hello *h, uint32_t *omitted) {
  sb_put(b, "[", 1);
  uint32_t i = 0;
  for (; i < h->argc && !b->oom; i++) {
    size_t mark = b->len;
    if (i > 0)
      sb_put(b, ",", 1);
    sb_json_str(b, h->argv[i]);
    if (b->len + 1 > HP_STORE_MAX_ARGV_BYTES) {
      b->len = mark;
      if (b->p != NULL)
        b->p[mark] = '\0';
      break;
    }
  }
  *omitted = h->argc - i;
  sb_put(b, "]", 1);
}

/* ------------------------------------------------------------------ queue (loop side) */

static item *item_new(item_kind kind, hp_store_session *ss, size_t extra) {
  item *it = loop_malloc(sizeof(item) + extra);
  if (it == NULL)
    return NULL;
  it->next = NULL;
  it->kind = kind;
  it->ss = ss;
  it->cost = sizeof(item) + extra;
  return it;
}

static void push(hp_store *s, item *it) {
  pthread_mutex_lock(&s->mu);
  if (s->tail)
    s->tail->next = it;
  else
    s->head = it;
  s->tail = it;
  s->bytes += it->cost;
  pthread_cond_signal(&s->cond);
  pthread_mutex_unlock(&s->mu);
}

/* Room an agent's string takes in an item once repaired, with its NUL. */
static size_t text_room(hp_str s) { return (size_t)s.len * HP_UTF8_MAX_GROWTH + 1; }

/* Copies s, repaired to valid UTF-8 (hp_utf8.h), to *cursor as a C string. */
static char *copy_text(char **cursor, hp_str s) {
  char *dst = *cursor;
  size_t n = hp_utf8_repair(dst, s.ptr, s.len);
  dst[n] = '\0';
  *cursor += n + 1;
  return dst;
}

static char *copy_cstr(char **cursor, const char *str, size_t len) {
  char *dst = *cursor;
  memcpy(dst, str, len);
  dst[len] = '\0';
  *cursor += len + 1;
  return dst;
}

static void free_session(hp_store_session *ss) {
  hp_map_free(ss->frames);
  hp_map_free(ss->stacks);
  hp_map_free(ss->addrs);
  hp_timeline_free(ss->tl);
  free(ss->hello);
  free(ss->end);
  free(ss);
}

hp_store_session *hp_store_session_start(hp_store *s, const hp_hello *h, int64_t peer_pid) {
  hp_store_session *ss = loop_calloc(1, sizeof *ss);
  sbuf argv = {0}, buckets = {0};
  item *it = NULL;
  if (ss == NULL)
    return NULL;
  ss->peer_pid = peer_pid;
  ss->end = item_new(IT_END, ss, 0);
  ss->frames = hp_map_new();
  ss->stacks = hp_map_new();
  ss->addrs = hp_map_new();
  ss->tl = hp_timeline_new(s->cfg.timeline_interval_ns);
  if (!ss->end || !ss->frames || !ss->stacks || !ss->addrs || !ss->tl)
    goto out_free_session;

  uint32_t omitted = 0;
  sb_json_argv(&argv, h, &omitted);
  if (h->nbuckets > 0) {
    sb_put(&buckets, "[", 1);
    for (uint32_t i = 0; i < h->nbuckets; i++) {
      char num[80];
      int n = snprintf(num, sizeof num, "%s[%" PRIu64 ",%.17g]", i ? "," : "",
                       h->buckets[i].max_size, h->buckets[i].rate);
      sb_put(&buckets, num, (size_t)n);
    }
    sb_put(&buckets, "]", 1);
  }
  if (argv.oom || buckets.oom)
    goto out_free_json;

  size_t extra = argv.len + 1 + text_room(h->executable) + text_room(h->python_version) +
                 buckets.len + 1;
  it = item_new(IT_HELLO, ss, extra);
  if (it == NULL)
    goto out_free_json;
  char *cur = (char *)it->data;
  it->u.hello.pid = h->pid;
  it->u.hello.ppid = h->ppid;
  it->u.hello.start_wall = h->start_wall_ns;
  it->u.hello.start_mono = h->start_mono_ns;
  it->u.hello.sample_interval = h->sample_interval_bytes;
  it->u.hello.max_depth = h->max_stack_depth;
  it->u.hello.argc = h->argc;
  it->u.hello.argv_omitted = omitted;
  it->u.hello.argv_bytes = 0;
  for (uint32_t i = 0; omitted > 0 && i < h->argc; i++)
    it->u.hello.argv_bytes += h->argv[i].len;
  it->u.hello.argv_json = copy_cstr(&cur, argv.p, argv.len);
  it->u.hello.executable = copy_text(&cur, h->executable);
  it->u.hello.python_version = copy_text(&cur, h->python_version);
  it->u.hello.buckets_json = buckets.len ? copy_cstr(&cur, buckets.p, buckets.len) : NULL;
  free(argv.p);
  free(buckets.p);
  push(s, it);
  return ss;

out_free_json:
  free(argv.p);
  free(buckets.p);
out_free_session:
  free_session(ss);
  return NULL;
}

int hp_store_frame_def(hp_store *s, hp_store_session *ss, const hp_frame_def *m) {
  item *it = item_new(IT_FRAME, ss, text_room(m->function) + text_room(m->filename));
  if (it == NULL)
    return -HP_ENOMEM;
  char *cur = (char *)it->data;
  it->u.frame.id = m->frame_id;
  it->u.frame.lineno = m->lineno;
  it->u.frame.function = copy_text(&cur, m->function);
  it->u.frame.filename = copy_text(&cur, m->filename);
  push(s, it);
  return 0;
}

int hp_store_stack_def(hp_store *s, hp_store_session *ss, const hp_stack_def *m) {
  item *it = item_new(IT_STACK, ss, (size_t)m->depth * sizeof(uint32_t));
  if (it == NULL)
    return -HP_ENOMEM;
  it->u.stack.id = m->stack_id;
  it->u.stack.truncated = m->truncated;
  it->u.stack.depth = m->depth;
  it->u.stack.frame_ids = (uint32_t *)it->data;
  if (m->depth > 0)
    memcpy(it->data, m->frame_ids, (size_t)m->depth * sizeof(uint32_t));
  push(s, it);
  return 0;
}

int hp_store_events(hp_store *s, hp_store_session *ss, const hp_event *ev, uint32_t n) {
  item *it = item_new(IT_EVENTS, ss, (size_t)n * sizeof(hp_event));
  if (it == NULL)
    return -HP_ENOMEM;
  it->u.events.n = n;
  it->u.events.ev = (hp_event *)it->data;
  memcpy(it->data, ev, (size_t)n * sizeof(hp_event));
  push(s, it);
  return 0;
}

int hp_store_counters(hp_store *s, hp_store_session *ss, uint64_t events_dropped) {
  item *it = item_new(IT_COUNTERS, ss, 0);
  if (it == NULL)
    return -HP_ENOMEM;
  it->u.counters.dropped = events_dropped;
  it->u.counters.sent = 0;
  it->u.counters.has_interval = 0;  /* item_new does not clear */
  push(s, it);
  return 0;
}

int hp_store_counters_msg(hp_store *s, hp_store_session *ss, const hp_counters *m) {
  item *it = item_new(IT_COUNTERS, ss, 0);
  if (it == NULL)
    return -HP_ENOMEM;
  it->u.counters.dropped = m->events_dropped;
  it->u.counters.ts = m->ts_ns;
  it->u.counters.interval = m->sample_interval_bytes;
  it->u.counters.sent = m->events_sent;
  it->u.counters.has_interval = 1;
  push(s, it);
  return 0;
}

int hp_store_goodbye(hp_store *s, hp_store_session *ss, const hp_goodbye *m) {
  item *it = item_new(IT_GOODBYE, ss, 0);
  if (it == NULL)
    return -HP_ENOMEM;
  it->u.goodbye.ts = m->ts_ns;
  it->u.goodbye.dropped = m->events_dropped;
  it->u.goodbye.reason = m->end_reason;
  push(s, it);
  return 0;
}

int hp_store_thread_def(hp_store *s, hp_store_session *ss, const hp_thread_def *m) {
  item *it = item_new(IT_THREAD, ss, text_room(m->name));
  if (it == NULL)
    return -HP_ENOMEM;
  char *cur = (char *)it->data;
  it->u.thread.tid = m->thread_id;
  it->u.thread.name = copy_text(&cur, m->name);
  push(s, it);
  return 0;
}

int hp_store_marker(hp_store *s, hp_store_session *ss, const hp_marker *m) {
  item *it = item_new(IT_MARKER, ss, text_room(m->label));
  if (it == NULL)
    return -HP_ENOMEM;
  char *cur = (char *)it->data;
  it->u.marker.ts = m->ts_ns;
  it->u.marker.label = copy_text(&cur, m->label);
  push(s, it);
  return 0;
}

void hp_store_session_end(hp_store *s, hp_store_session *ss, hp_session_end how,
                          const char *reason) {
  item *it = ss->end;
  it->u.end.how = how;
  it->u.end.wall_ns = wall_now_ns();
  snprintf(it->u.end.reason, sizeof it->u.end.reason, "%s", reason ? reason : "");
  push(s, it);
}

int hp_store_pause_if_full(hp_store *s) {
  pthread_mutex_lock(&s->mu);
  int full = s->bytes > s->cfg.queue_high;
  if (full)
    s->paused = 1;
  pthread_mutex_unlock(&s->mu);
  return full;
}

size_t hp_store_queued_bytes(hp_store *s) {
  pthread_mutex_lock(&s->mu);
  size_t b = s->bytes;
  pthread_mutex_unlock(&s->mu);
  return b;
}

/* ------------------------------------------------------------------ writes and the log */

static void bind_opt(sqlite3_stmt *st, int col, int64_t v) {
  if (v)
    sqlite3_bind_int64(st, col, v);
  else
    sqlite3_bind_null(st, col);
}

/* One alloc row, OP_ALLOC's values, into columns col+1 .. col+10. */
static void bind_alloc(sqlite3_stmt *st, int col, const int64_t *v) {
  sqlite3_bind_int64(st, col + 1, v[0]);
  sqlite3_bind_int64(st, col + 2, v[1]);
  sqlite3_bind_int64(st, col + 3, v[2]);
  sqlite3_bind_int64(st, col + 4, v[3]);
  sqlite3_bind_int(st, col + 5, (int)(v[4] & 0xff));
  sqlite3_bind_int64(st, col + 6, v[5]);
  sqlite3_bind_int64(st, col + 7, v[6]);
  sqlite3_bind_int64(st, col + 8, v[7]);
  bind_opt(st, col + 9, v[8]);
  bind_opt(st, col + 10, v[9]);
}

/* Inserts n alloc rows: HP_STORE_MULTI of them in one statement, fewer one by one. */
static void insert_allocs(hp_store *s, int64_t (*rows)[HP_TXOP_VALUES], uint32_t n) {
  if (n == HP_STORE_MULTI) {
    for (uint32_t j = 0; j < n; j++)
      bind_alloc(s->ins_multi, (int)j * ALLOC_COLS, rows[j]);
    (void)step(s, s->ins_multi, "inserting allocations");
    return;
  }
  for (uint32_t j = 0; j < n; j++) {
    bind_alloc(s->st[ST_INS_ALLOC], 0, rows[j]);
    (void)run(s, ST_INS_ALLOC);
  }
}

/* Executes one write (not OP_ALLOC, which goes through insert_allocs). */
static void apply_op(hp_store *s, const hp_txop *op) {
  sqlite3_stmt *st;
  const int64_t *v = op->v;
  switch (op->kind) {
  case OP_FRAME: {
    const char *function = op->blob, *filename = function + strlen(function) + 1;
    st = s->st[ST_INS_FRAME];
    sqlite3_bind_int64(st, 1, v[0]);
    sqlite3_bind_text(st, 2, function, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, filename, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, v[1]);
    (void)run(s, ST_INS_FRAME);
    break;
  }
  case OP_STACK: {
    const int64_t *frames = op->blob;
    st = s->st[ST_INS_STACK];
    for (int i = 0; i < 4; i++)
      sqlite3_bind_int64(st, i + 1, v[i]);
    (void)run(s, ST_INS_STACK);
    st = s->st[ST_INS_STACK_FRAME];
    for (int64_t i = 0; i < v[2]; i++) {
      sqlite3_bind_int64(st, 1, v[0]);
      sqlite3_bind_int64(st, 2, i);
      sqlite3_bind_int64(st, 3, frames[i]);
      (void)run(s, ST_INS_STACK_FRAME);
    }
    break;
  }
  case OP_FREE:
    st = s->st[ST_UPD_FREE];
    sqlite3_bind_int64(st, 1, v[0]);
    sqlite3_bind_int64(st, 2, v[1]);
    (void)run(s, ST_UPD_FREE);
    break;
  case OP_TIMELINE:
    st = s->st[ST_UPSERT_TL];
    for (int i = 0; i < 5; i++)
      sqlite3_bind_int64(st, i + 1, v[i]);
    (void)run(s, ST_UPSERT_TL);
    break;
  case OP_SAMPLING:
    st = s->st[ST_INS_SAMPLING];
    for (int i = 0; i < 3; i++)
      sqlite3_bind_int64(st, i + 1, v[i]);
    (void)run(s, ST_INS_SAMPLING);
    break;
  case OP_THREAD:
  case OP_MARKER:
    st = s->st[op->kind == OP_THREAD ? ST_UPSERT_THREAD : ST_INS_MARKER];
    sqlite3_bind_int64(st, 1, v[0]);
    sqlite3_bind_int64(st, 2, v[1]);
    sqlite3_bind_text(st, 3, op->blob, -1, SQLITE_STATIC);
    (void)step(s, st, sql_text[op->kind == OP_THREAD ? ST_UPSERT_THREAD : ST_INS_MARKER]);
    break;
  }
}

static void log_op(hp_store *s, int kind, const int64_t *v, const void *blob, uint32_t len) {
  if (hp_txlog_add(s->log, kind, v, blob, len) == 0)
    return;
  if (!s->log_incomplete)
    hp_log(HP_LOG_ERROR, "database: out of memory keeping the transaction's writes; if it "
           "fails, its data is given up");
  s->log_incomplete = 1;
}

/* A write of the open transaction: kept in the log, then executed (unless broken). */
static void write_op(hp_store *s, int kind, const int64_t *v, const void *blob, uint32_t len) {
  log_op(s, kind, v, blob, len);
  hp_txop op = {.kind = kind, .blob = blob, .len = len};
  memcpy(op.v, v, sizeof op.v);
  apply_op(s, &op);
  s->txn_rows++;
}

/* Writes the log again after a rollback, in its order; consecutive alloc rows go out in
 * multi-row statements as they did the first time. */
static void replay(hp_store *s) {
  size_t n = hp_txlog_count(s->log);
  int64_t rows[HP_STORE_MULTI][HP_TXOP_VALUES];
  uint32_t k = 0;
  for (size_t i = 0; i < n && !s->broken; i++) {
    hp_txop op;
    hp_txlog_get(s->log, i, &op);
    if (op.kind == OP_ALLOC) {
      memcpy(rows[k++], op.v, sizeof op.v);
      if (k == HP_STORE_MULTI) {
        insert_allocs(s, rows, k);
        k = 0;
      }
      continue;
    }
    if (k > 0) {
      insert_allocs(s, rows, k);
      k = 0;
    }
    apply_op(s, &op);
  }
  if (k > 0)
    insert_allocs(s, rows, k);
  s->txn_rows += n;
}

/* ------------------------------------------------------------------ sessions' rows */

static const char *end_status(const hp_store_session *ss, hp_session_end how) {
  switch (how) {
  case HP_SESSION_EXITED:
    return ss->end_reason == HP_END_HOOKS_REPLACED ? "hooks_replaced" : "exited";
  case HP_SESSION_DISCONNECTED: return "disconnected";
  case HP_SESSION_PROTOCOL_ERROR: return "protocol_error";
  }
  return "disconnected";
}

/* The session's row as memory has it: inserted once, then updated. Not logged: after a
 * rollback every session is dirty again and written at the next commit. */
static void write_session(hp_store *s, hp_store_session *ss) {
  sqlite3_stmt *st;
  const char *error = NULL;
  if (ss->ended && ss->end->u.end.how == HP_SESSION_PROTOCOL_ERROR)
    error = ss->end->u.end.reason;
  if (!ss->in_db && !ss->inserted_now) {
    const item *h = ss->hello;
    st = s->st[ST_INS_SESSION];
    sqlite3_bind_int64(st, 1, ss->id);
    sqlite3_bind_int64(st, 2, h->u.hello.pid);
    sqlite3_bind_int64(st, 3, h->u.hello.ppid);
    sqlite3_bind_text(st, 4, h->u.hello.argv_json, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, h->u.hello.executable, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, h->u.hello.python_version, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 7, ss->start_wall);
    sqlite3_bind_int64(st, 8, (int64_t)h->u.hello.sample_interval);
    if (h->u.hello.buckets_json)
      sqlite3_bind_text(st, 9, h->u.hello.buckets_json, -1, SQLITE_STATIC);
    else
      sqlite3_bind_null(st, 9);
    sqlite3_bind_int64(st, 10, h->u.hello.max_depth);
    sqlite3_bind_int64(st, 11, h->u.hello.argv_omitted);
    bind_opt(st, 12, ss->ended ? ss->end_ns : 0);
    sqlite3_bind_text(st, 13, ss->status, -1, SQLITE_STATIC);
    if (error)
      sqlite3_bind_text(st, 14, error, -1, SQLITE_STATIC);
    else
      sqlite3_bind_null(st, 14);
    sqlite3_bind_int64(st, 15, (int64_t)ss->events_received);
    sqlite3_bind_int64(st, 16, dropped_total(ss));
    if (run(s, ST_INS_SESSION) == 0)
      ss->inserted_now = 1;
  } else {
    st = s->st[ST_UPD_SESSION];
    sqlite3_bind_int64(st, 1, ss->id);
    bind_opt(st, 2, ss->ended ? ss->end_ns : 0);
    sqlite3_bind_text(st, 3, ss->status, -1, SQLITE_STATIC);
    if (error)
      sqlite3_bind_text(st, 4, error, -1, SQLITE_STATIC);
    else
      sqlite3_bind_null(st, 4);
    sqlite3_bind_int64(st, 5, (int64_t)ss->events_received);
    sqlite3_bind_int64(st, 6, dropped_total(ss));
    (void)run(s, ST_UPD_SESSION);
  }
  ss->dirty = 0;
  s->txn_rows++;
}

static void write_sessions(hp_store *s) {
  for (hp_store_session *ss = s->active; ss; ss = ss->next)
    if (ss->dirty)
      write_session(s, ss);
  for (hp_store_session *ss = s->ending; ss; ss = ss->next)
    if (ss->dirty)
      write_session(s, ss);
}

static hp_store_session *find_session(hp_store *s, int64_t id) {
  for (hp_store_session *ss = s->active; ss; ss = ss->next)
    if (ss->id == id)
      return ss;
  for (hp_store_session *ss = s->ending; ss; ss = ss->next)
    if (ss->id == id)
      return ss;
  return NULL;
}

/* ------------------------------------------------------------------ failures */

static int transient(int rc) {
  switch (rc & 0xff) {
  case SQLITE_BUSY: case SQLITE_LOCKED: case SQLITE_FULL: case SQLITE_IOERR:
  case SQLITE_NOMEM: case SQLITE_CANTOPEN: case SQLITE_PROTOCOL:
    return 1;
  default:
    return 0;
  }
}

/* Counts the events of one write that is given up in its session. */
static void count_lost(hp_store *s, const hp_txop *op) {
  int64_t session = 0, events = 0;
  if (op->kind == OP_ALLOC) {
    session = op->v[1];
    events = op->v[4] >> 8;
  } else if (op->kind == OP_FREE) {
    session = op->v[2];
    events = op->v[3];
  }
  if (events <= 0)
    return;
  hp_store_session *ss = find_session(s, session);
  if (ss != NULL) {
    ss->lost_storage += (uint64_t)events;
    ss->dirty = 1;
  }
  s->lost_events += (uint64_t)events;
}

static int keep_definition(const hp_txop *op, void *ctx) {
  if (op->kind == OP_FRAME || op->kind == OP_STACK)
    return 1;
  count_lost(ctx, op);
  return 0;
}

/* Gives up the failed transaction's data, keeping its frame and stack definitions
 * (sessions' maps point at them, and the agents never send them again). */
static void give_up(hp_store *s, int rc) {
  uint64_t before = s->lost_events;
  hp_txlog_filter(s->log, keep_definition, s);
  s->log_incomplete = 0;
  hp_log(HP_LOG_ERROR, "database: giving up a transaction after %u attempts (%s): %" PRIu64
         " events are lost, counted in their sessions' events_dropped", s->attempts,
         sqlite3_errstr(rc), s->lost_events - before);
}

/* The open transaction (or its BEGIN) failed with rc: roll it back and schedule its
 * retry. Memory keeps every effect, the log every write. */
static void fail_txn(hp_store *s, int rc) {
  if (!sqlite3_get_autocommit(s->db))
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
  s->in_txn = 0;
  s->broken = 0;
  s->txn_rows = 0;
  for (hp_store_session *ss = s->active; ss; ss = ss->next) {
    ss->inserted_now = 0;
    ss->dirty = 1;
  }
  for (hp_store_session *ss = s->ending; ss; ss = ss->next) {
    ss->inserted_now = 0;
    ss->dirty = 1;
  }
  struct timespec now = mono_now();
  if (!s->failing) {
    s->failing = 1;
    s->attempts = 0;
    s->lost_at_failure = s->lost_events;
    s->fail_since = now;
    s->next_fail_log = ts_add_ms(now, HP_STORE_FAIL_LOG_S * 1000);
    hp_log(HP_LOG_ERROR, "database: storing failed (%s); everything received is kept and "
           "written again when the database can take it (meanwhile agents wait or count "
           "what they drop)", sqlite3_errstr(rc));
  } else if (!ts_before(now, s->next_fail_log)) {
    s->next_fail_log = ts_add_ms(now, HP_STORE_FAIL_LOG_S * 1000);
    hp_log(HP_LOG_ERROR, "database: storing still fails after %u attempts in %.0f s (%s)",
           s->attempts, seconds_since(s->fail_since), sqlite3_errstr(rc));
  }
  s->attempts++;
  if (s->log_incomplete || (!transient(rc) && s->attempts >= HP_STORE_PERMANENT_TRIES))
    give_up(s, rc);
  unsigned shift = s->attempts > 10 ? 10 : s->attempts - 1;
  uint32_t delay = HP_STORE_RETRY_MIN_MS << shift;
  s->retry_at = ts_add_ms(now, delay > HP_STORE_RETRY_MAX_MS ? HP_STORE_RETRY_MAX_MS : delay);
}

/* Another process wrote allocation rows since our last transaction and took the ids
 * our pending rows were given: move them to new ids, and the address map with them. */
static void renumber_pending(hp_store *s, int64_t new_base) {
  for (uint32_t i = 0; i < s->npending; i++) {
    const pending_alloc *p = &s->pending[i];
    if (p->freed)
      continue;
    hp_map_val *v = hp_map_get(p->ss->addrs, (uint64_t)p->address);
    if (v != NULL && v->a == s->pending_base + i)
      v->a = new_base + i;
  }
  hp_log(HP_LOG_WARN, "database: another writer added allocations; renumbered %u pending rows",
         s->npending);
  s->pending_base = new_base;
}

/* Ids continue after the highest in the tables, and never go back. */
static int read_next_ids(hp_store *s) {
  sqlite3_stmt *st = s->st[ST_MAX_IDS];
  int rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    sqlite3_reset(st);
    break_txn(s, sql_text[ST_MAX_IDS], rc);
    return -1;
  }
  int64_t next[4];
  for (int i = 0; i < 4; i++)
    next[i] = sqlite3_column_int64(st, i) + 1;
  sqlite3_reset(st);
  if (next[0] > s->next_session)
    s->next_session = next[0];
  if (next[1] > s->next_frame)
    s->next_frame = next[1];
  if (next[2] > s->next_stack)
    s->next_stack = next[2];
  if (next[3] > s->pending_base) {
    if (s->npending > 0)
      renumber_pending(s, next[3]);
    else
      s->pending_base = next[3];
  }
  return 0;
}

/* Opens the transaction every write happens in; after a failure, not before its retry
 * time, and then the failed transaction's writes go first. */
static int begin_txn(hp_store *s) {
  if (s->in_txn)
    return 0;
  if (s->failing && ts_before(mono_now(), s->retry_at))
    return -1;
  sqlite3_stmt *st = s->st[ST_BEGIN];
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) {
    log_db_error(s, sql_text[ST_BEGIN], rc);
    fail_txn(s, rc);
    return -1;
  }
  s->in_txn = 1;
  s->broken = 0;
  s->txn_rows = 0;
  if (read_next_ids(s) == 0)
    replay(s);
  if (s->broken) {
    fail_txn(s, s->broken_rc);
    return -1;
  }
  s->txn_deadline = ts_add_ms(mono_now(), s->cfg.commit_ms);
  return 0;
}

/* ------------------------------------------------------------------ store thread */

static void put_timeline_rows(hp_store *s, hp_store_session *ss, const hp_tl_row *rows, int n) {
  for (int i = 0; i < n; i++) {
    int64_t v[HP_TXOP_VALUES] = {ss->id, rows[i].ts_ns, rows[i].live_bytes, rows[i].live_count,
                                 rows[i].end_bytes};
    write_op(s, OP_TIMELINE, v, NULL, 0);
  }
}

/* Inserts the oldest `count` pending rows, HP_STORE_MULTI at a time, and moves the
 * rest to the front. Inside a transaction only. */
static void flush_pending_n(hp_store *s, uint32_t count) {
  int64_t rows[HP_STORE_MULTI][HP_TXOP_VALUES];
  uint32_t k = 0;
  for (uint32_t i = 0; i < count; i++) {
    const pending_alloc *p = &s->pending[i];
    int64_t *v = rows[k++];
    v[0] = s->pending_base + i;
    v[1] = p->ss->id;
    v[2] = p->ts;
    v[3] = p->thread;
    v[4] = p->domain | ((int64_t)p->events << 8);
    v[5] = p->address;
    v[6] = p->size;
    v[7] = p->est;
    v[8] = p->stack;
    v[9] = p->freed;
    log_op(s, OP_ALLOC, v, NULL, 0);
    if (k == HP_STORE_MULTI) {
      insert_allocs(s, rows, k);
      k = 0;
    }
  }
  if (k > 0)
    insert_allocs(s, rows, k);
  if (count < s->npending)
    memmove(s->pending, s->pending + count, (s->npending - count) * sizeof *s->pending);
  s->pending_base += count;
  s->npending -= count;
  s->pending_old = s->pending_old > count ? s->pending_old - count : 0;
}

static void flush_pending(hp_store *s) { flush_pending_n(s, s->npending); }

/* The transaction committed: its log is done with, sessions whose end it held are. */
static void committed(hp_store *s) {
  s->in_txn = 0;
  s->txn_rows = 0;
  hp_txlog_clear(s->log);
  s->log_incomplete = 0;
  for (hp_store_session *ss = s->active; ss; ss = ss->next)
    if (ss->inserted_now) {
      ss->in_db = 1;
      ss->inserted_now = 0;
    }
  while (s->ending) {
    hp_store_session *ss = s->ending;
    s->ending = ss->next;
    free_session(ss);
  }
  if (s->failing) {
    uint64_t lost = s->lost_events - s->lost_at_failure;
    if (lost == 0)
      hp_log(HP_LOG_INFO, "database: storing works again after %u failed attempts in %.1f s;"
             " nothing received meanwhile was lost", s->attempts, seconds_since(s->fail_since));
    else
      hp_log(HP_LOG_WARN, "database: storing works again after %u failed attempts in %.1f s;"
             " %" PRIu64 " events were given up (counted in events_dropped)", s->attempts,
             seconds_since(s->fail_since), lost);
    s->failing = 0;
    s->attempts = 0;
  }
}

/* Commits the open transaction. `final` stores every pending row (for shutdown);
 * otherwise the rows that arrived since the last commit stay pending for one more round. */
static void commit(hp_store *s, int final) {
  if (!s->in_txn)
    return;
  flush_pending_n(s, final ? s->npending : s->pending_old);
  s->pending_old = s->npending;
  int64_t now = wall_now_ns();
  for (hp_store_session *ss = s->active; ss; ss = ss->next) {
    hp_tl_row rows[HP_TL_MAX_ROWS];
    /* A second of slack: agents batch, so events may still be on their way. */
    int n = hp_timeline_advance(ss->tl, now - 1000000000, rows);
    put_timeline_rows(s, ss, rows, n);
    if (hp_timeline_current(ss->tl, rows))
      put_timeline_rows(s, ss, rows, 1);
  }
  write_sessions(s);
  int rc = s->broken ? s->broken_rc : SQLITE_OK;
  if (!s->broken) {
    sqlite3_stmt *st = s->st[ST_COMMIT];
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc == SQLITE_DONE)
      rc = SQLITE_OK;
    else
      log_db_error(s, sql_text[ST_COMMIT], rc);
  }
  if (rc != SQLITE_OK) {
    fail_txn(s, rc);
    return;
  }
  committed(s);
  /* Rows kept back must not wait for the next event, which may never come: open the
   * next transaction now so that its deadline commits them. */
  if (s->npending > 0 && !final)
    (void)begin_txn(s);
}

static void do_hello(hp_store *s, item *it) {
  hp_store_session *ss = it->ss;
  ss->hello = it;
  ss->id = s->next_session++;
  ss->pid = it->u.hello.pid;
  ss->start_wall = (int64_t)it->u.hello.start_wall;
  ss->start_mono = (int64_t)it->u.hello.start_mono;
  ss->start_interval = ss->interval = it->u.hello.sample_interval;
  ss->status = "running";
  ss->dirty = 1;
  ss->next = s->active;
  if (s->active)
    s->active->prev = ss;
  s->active = ss;
  hp_log(HP_LOG_INFO, "session %" PRId64 " (pid %" PRId64 ") started: argv %s, %s, Python %s",
         ss->id, ss->pid, it->u.hello.argv_json, it->u.hello.executable,
         it->u.hello.python_version);
  if (it->u.hello.argv_omitted > 0)
    hp_log(HP_LOG_WARN, "session %" PRId64 " (pid %" PRId64 "): argv of %" PRIu32 " entries "
           "(%zu bytes) exceeds the limit of %u bytes; the last %" PRIu32 " entries are not "
           "stored (session_settings.argv_omitted)", ss->id, ss->pid, it->u.hello.argc,
           it->u.hello.argv_bytes, HP_STORE_MAX_ARGV_BYTES, it->u.hello.argv_omitted);
}

/* The id of a frame with this content: the one in the table, or a new one. 0 only if
 * the table cannot be read (then the frame stays unattributed). */
static int64_t intern_frame(hp_store *s, const item *it) {
  if (s->broken)
    return 0;
  sqlite3_stmt *sel = s->st[ST_SEL_FRAME];
  sqlite3_bind_text(sel, 1, it->u.frame.function, -1, SQLITE_STATIC);
  sqlite3_bind_text(sel, 2, it->u.frame.filename, -1, SQLITE_STATIC);
  sqlite3_bind_int(sel, 3, it->u.frame.lineno);
  int rc = sqlite3_step(sel);
  int64_t id = rc == SQLITE_ROW ? sqlite3_column_int64(sel, 0) : 0;
  sqlite3_reset(sel);
  if (rc == SQLITE_ROW)
    return id;
  if (rc != SQLITE_DONE) {
    break_txn(s, "looking up a frame", rc);
    return 0;
  }
  size_t lf = strlen(it->u.frame.function) + 1, lg = strlen(it->u.frame.filename) + 1;
  char blob[2 * (HP_UTF8_MAX_GROWTH * HP_MAX_STR_BYTES + 1)];
  memcpy(blob, it->u.frame.function, lf);
  memcpy(blob + lf, it->u.frame.filename, lg);
  id = s->next_frame++;
  int64_t v[HP_TXOP_VALUES] = {id, it->u.frame.lineno};
  write_op(s, OP_FRAME, v, blob, (uint32_t)(lf + lg));
  return id;
}

static void do_frame(hp_store *s, item *it) {
  hp_store_session *ss = it->ss;
  int64_t id = intern_frame(s, it);
  if (id == 0)
    return;
  hp_map_val v = {id, 0, 0};
  if (hp_map_put(ss->frames, it->u.frame.id, &v) < 0)
    hp_log(HP_LOG_ERROR, "session %" PRId64 ": out of memory mapping frame %u", ss->id,
           it->u.frame.id);
}

/* 1 when stack `id` consists of exactly frames[0..depth); -1 if it cannot be read. */
static int stack_matches(hp_store *s, int64_t id, const int64_t *frames, uint32_t depth) {
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
    break_txn(s, "comparing stacks", rc);
    return -1;
  }
  return same && i == depth;
}

static int64_t intern_stack(hp_store *s, const int64_t *frames, uint32_t depth, int truncated) {
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
    break_txn(s, "looking up a stack", rc);
    return 0;
  }
  int64_t id = s->next_stack++;
  int64_t v[HP_TXOP_VALUES] = {id, hash, depth, truncated};
  write_op(s, OP_STACK, v, frames, (uint32_t)(depth * sizeof *frames));
  s->txn_rows += depth;
  return id;
}

static void do_stack(hp_store *s, item *it) {
  hp_store_session *ss = it->ss;
  int64_t frames[HP_MAX_STACK_DEPTH];
  uint32_t depth = it->u.stack.depth;
  for (uint32_t i = 0; i < depth; i++) {
    hp_map_val *v = hp_map_get(ss->frames, it->u.stack.frame_ids[i]);
    if (v == NULL)
      return;  /* its frame failed to store; already logged */
    frames[i] = v->a;
  }
  int64_t id = intern_stack(s, frames, depth, it->u.stack.truncated);
  if (id == 0)
    return;
  hp_map_val v = {id, 0, 0};
  if (hp_map_put(ss->stacks, it->u.stack.id, &v) < 0)
    hp_log(HP_LOG_ERROR, "session %" PRId64 ": out of memory mapping stack %u", ss->id,
           it->u.stack.id);
}

static void timeline_add(hp_store *s, hp_store_session *ss, int64_t ts, int64_t db, int64_t dc) {
  hp_tl_row rows[HP_TL_MAX_ROWS];
  int n = hp_timeline_add(ss->tl, ts, db, dc, rows);
  put_timeline_rows(s, ss, rows, n);
}

/* Ends the allocation with id `id` at ts. `events`: 1 when this is the event of its
 * free; 0 when its end comes with the next allocation at the address (a reattribute,
 * or a lost free), whose row counts that event. */
static void end_row(hp_store *s, hp_store_session *ss, int64_t id, int64_t ts, int events) {
  if (id >= s->pending_base) {
    pending_alloc *p = &s->pending[id - s->pending_base];
    p->freed = ts;
    p->events += events;
    return;
  }
  int64_t v[HP_TXOP_VALUES] = {id, ts, ss->id, events};
  write_op(s, OP_FREE, v, NULL, 0);
}

static void do_free(hp_store *s, hp_store_session *ss, const hp_event *e) {
  hp_map_val *v = hp_map_get(ss->addrs, e->address);
  if (v == NULL) {
    ss->unpaired_frees++;  /* sampled out, or its alloc was dropped by the agent */
    return;
  }
  int64_t ts = to_wall(ss, e->ts_ns);
  end_row(s, ss, v->a, ts, 1);
  int64_t est = v->b, cnt = v->c;
  hp_map_del_at(ss->addrs, v);
  timeline_add(s, ss, ts, -est, -cnt);
}

/* Drops an allocation the address map has no room for (see HP_STORE_MAX_LIVE_ADDRS):
 * counted, and said once per session. Not stored, because its free could never be
 * paired; its free arrives as an unpaired free. */
static __attribute__((noinline)) void drop_untracked(hp_store *s, hp_store_session *ss,
                                             const hp_event *e, int oom) {
  if (ss->untracked++ == 0) {
    if (oom)
      hp_log(HP_LOG_WARN, "session %" PRId64 ": out of memory tracking address %#" PRIx64
             "; allocations that cannot be tracked are dropped and counted", ss->id,
             e->address);
    else
      hp_log(HP_LOG_WARN, "session %" PRId64 ": reached the limit of %u live sampled "
             "allocations per session (--max-live-allocs); further allocations are dropped "
             "and counted until frees make room", ss->id, s->cfg.max_live_addrs);
  }
  ss->dirty = 1;
}

static int64_t stack_of(const hp_store_session *ss, uint32_t stack_id) {
  if (stack_id == HP_NO_STACK)
    return 0;
  const hp_map_val *sv = hp_map_get(ss->stacks, stack_id);
  return sv != NULL ? sv->a : 0;  /* else its definition failed to store: unattributed */
}

static void do_alloc(hp_store *s, hp_store_session *ss, const hp_event *e) {
  int64_t stack = stack_of(ss, e->stack_id);
  if (s->npending == s->pending_cap)
    flush_pending(s);
  int64_t ts = to_wall(ss, e->ts_ns);
  int64_t est = (int64_t)e->est_bytes;
  /* Estimated number of allocations this sample stands for: est_bytes/size is the
   * inverse sampling probability. */
  int64_t cnt = 1;
  if (e->size > 0 && e->est_bytes > e->size) {
    double ratio = (double)e->est_bytes / (double)e->size;
    cnt = ratio < 1e18 ? (int64_t)llround(ratio) : (int64_t)1000000000000000000LL;
  }

  /* At the limit only an address already live may be reused (that replaces an entry). */
  int created = 0;
  hp_map_val *v;
  if (hp_map_count(ss->addrs) >= s->cfg.max_live_addrs)
    v = hp_map_get(ss->addrs, e->address);
  else
    v = hp_map_upsert(ss->addrs, e->address, &created);
  if (v == NULL) {
    drop_untracked(s, ss, e, hp_map_count(ss->addrs) < s->cfg.max_live_addrs);
    return;
  }
  if (!created) {
    /* The address was handed out again, so its previous block was freed even though
     * we never saw the free (the agent dropped it): it ends now, in its row as in the
     * timeline, so that leaks and the timeline agree. */
    end_row(s, ss, v->a, ts, 0);
    timeline_add(s, ss, ts, -v->b, -v->c);
  }
  uint32_t slot = s->npending++;
  int64_t id = s->pending_base + slot;
  s->pending[slot] = (pending_alloc){
    .ss = ss, .ts = ts, .thread = (int64_t)e->thread_id,
    .address = (int64_t)e->address, .size = (int64_t)e->size, .est = est, .stack = stack,
    .freed = 0, .domain = e->domain, .events = 1};
  *v = (hp_map_val){id, est, cnt};
  s->txn_rows++;
  timeline_add(s, ss, ts, est, cnt);
}

/* A reattribute (PROTOCOL.md 2.4): the live sampled block at the address was handed out
 * again by an interpreter free list. Its allocation ends at ts, and a new one with the
 * same domain, size and est_bytes begins at ts for the new thread and stack. The live
 * level does not change, so the timeline is left alone; the address map entry moves to
 * the new row, so a later free or reattribute pairs with it. */
static void do_reattribute(hp_store *s, hp_store_session *ss, const hp_event *e) {
  hp_map_val *v = hp_map_get(ss->addrs, e->address);
  if (v == NULL) {
    ss->unpaired_frees++;  /* as a free: its allocation was sampled out or dropped */
    return;
  }
  int64_t stack = stack_of(ss, e->stack_id);
  if (s->npending == s->pending_cap)
    flush_pending(s);  /* moves rows, not map entries: v stays valid */
  int64_t ts = to_wall(ss, e->ts_ns);
  int64_t size = 0;
  int domain = 0;
  if (v->a >= s->pending_base) {
    const pending_alloc *old = &s->pending[v->a - s->pending_base];
    size = old->size;
    domain = old->domain;
  } else {
    sqlite3_stmt *sel = s->st[ST_SEL_ALLOC];
    int rc = SQLITE_ERROR;
    if (!s->broken) {
      sqlite3_bind_int64(sel, 1, v->a);
      rc = sqlite3_step(sel);
      if (rc == SQLITE_ROW) {
        domain = sqlite3_column_int(sel, 0);
        size = sqlite3_column_int64(sel, 1);
      }
      sqlite3_reset(sel);
      if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        break_txn(s, "looking up a reattributed allocation", rc);
    }
    if (rc != SQLITE_ROW) {
      /* Without its row the new life cannot be stored: it ends here, counted. */
      end_row(s, ss, v->a, ts, 0);
      int64_t est = v->b, cnt = v->c;
      hp_map_del_at(ss->addrs, v);
      timeline_add(s, ss, ts, -est, -cnt);
      ss->untracked++;
      ss->dirty = 1;
      return;
    }
  }
  end_row(s, ss, v->a, ts, 0);
  uint32_t slot = s->npending++;
  int64_t id = s->pending_base + slot;
  s->pending[slot] = (pending_alloc){
    .ss = ss, .ts = ts, .thread = (int64_t)e->thread_id, .address = (int64_t)e->address,
    .size = size, .est = v->b, .stack = stack, .freed = 0, .domain = domain, .events = 1};
  v->a = id;
  s->txn_rows++;
}

static void do_events(hp_store *s, item *it) {
  hp_store_session *ss = it->ss;
  const hp_event *ev = it->u.events.ev;
  for (uint32_t i = 0; i < it->u.events.n; i++) {
    if (ev[i].kind == HP_EV_ALLOC)
      do_alloc(s, ss, &ev[i]);
    else if (ev[i].kind == HP_EV_FREE)
      do_free(s, ss, &ev[i]);
    else
      do_reattribute(s, ss, &ev[i]);
  }
  ss->events_received += it->u.events.n;
  ss->dirty = 1;
}

/* A COUNTERS whose interval differs from the session's current one: the agent adapted
 * its sampling (on-full policy 'adapt'). One row in the current batch, like any other
 * write (never a transaction of its own); its ts_ns, not the commit order, places it
 * among the session's events. Rare: the agent doubles its interval, so a session
 * changes it at most some dozens of times. Size-bucket sessions
 * (interval 0) cannot adapt, and no Poisson session can turn into one mid-stream, so
 * a change from or to 0 is nonsense from the agent: logged once and not stored, the
 * session goes on with its interval. */
static __attribute__((noinline)) void do_interval_change(hp_store *s, item *it) {
  hp_store_session *ss = it->ss;
  uint64_t to = it->u.counters.interval;
  if (ss->interval == 0 || to == 0) {
    if (!ss->interval_refused) {
      ss->interval_refused = 1;
      hp_log(HP_LOG_WARN, "session %" PRId64 " (pid %" PRId64 "): ignoring a change of "
             "sampling interval from %" PRIu64 " to %" PRIu64 " bytes (0 is size-bucket "
             "sampling, which a session cannot switch to or from)", ss->id, ss->pid,
             ss->interval, to);
    }
    return;
  }
  int64_t v[HP_TXOP_VALUES] = {ss->id, to_wall(ss, it->u.counters.ts), (int64_t)to};
  write_op(s, OP_SAMPLING, v, NULL, 0);
  hp_log(HP_LOG_DEBUG, "session %" PRId64 ": sampling interval %" PRIu64 " -> %" PRIu64
         " bytes", ss->id, ss->interval, to);
  ss->interval = to;
  ss->interval_changes++;
}

/* The thread's latest name wins (an upsert): no memory is kept per thread here. */
static void do_thread(hp_store *s, item *it) {
  hp_store_session *ss = it->ss;
  if (ss->thread_defs >= HP_STORE_MAX_THREAD_DEFS) {
    if (ss->thread_defs_ignored++ == 0)
      hp_log(HP_LOG_WARN, "session %" PRId64 " (pid %" PRId64 "): over the limit of %u "
             "thread names per session; further names are not stored", ss->id, ss->pid,
             HP_STORE_MAX_THREAD_DEFS);
    return;
  }
  ss->thread_defs++;
  int64_t v[HP_TXOP_VALUES] = {ss->id, (int64_t)it->u.thread.tid};
  write_op(s, OP_THREAD, v, it->u.thread.name, (uint32_t)strlen(it->u.thread.name) + 1);
}

static void do_marker(hp_store *s, item *it) {
  hp_store_session *ss = it->ss;
  int64_t v[HP_TXOP_VALUES] = {ss->id, to_wall(ss, it->u.marker.ts)};
  write_op(s, OP_MARKER, v, it->u.marker.label, (uint32_t)strlen(it->u.marker.label) + 1);
}

/* The session's end: its rows and final timeline go into this transaction, its row is
 * written at the commit, and it is freed once that commit succeeds. */
static void do_end(hp_store *s, item *it) {
  hp_store_session *ss = it->ss;
  hp_session_end how = it->u.end.how;
  /* Without GOODBYE the agent never said what it finally dropped; what its last
   * COUNTERS says it sent but never arrived is lost (PROTOCOL.md 2.5). */
  if (how != HP_SESSION_EXITED && ss->events_sent > ss->events_received)
    ss->lost_in_transit = ss->events_sent - ss->events_received;
  /* Pending rows point at this session; insert them before it can go away. */
  flush_pending(s);
  int64_t ended = (how == HP_SESSION_EXITED && ss->ended_wall) ? ss->ended_wall
                                                                : it->u.end.wall_ns;
  hp_tl_row rows[HP_TL_MAX_ROWS];
  int n = hp_timeline_finish(ss->tl, ended, rows);
  put_timeline_rows(s, ss, rows, n);
  ss->ended = 1;
  ss->end_ns = ended;
  ss->status = end_status(ss, how);
  ss->dirty = 1;
  if (ss->prev)
    ss->prev->next = ss->next;
  else if (s->active == ss)
    s->active = ss->next;
  if (ss->next)
    ss->next->prev = ss->prev;
  ss->prev = NULL;
  ss->next = s->ending;
  s->ending = ss;

  if (how == HP_SESSION_PROTOCOL_ERROR)
    hp_log(HP_LOG_WARN, "session %" PRId64 " (pid %" PRId64 "): protocol error: %s", ss->id,
           ss->pid, it->u.end.reason);
  hp_log(HP_LOG_INFO,
         "session %" PRId64 " (pid %" PRId64 ") ended: %s, %" PRIu64 " events, %" PRIu64
         " dropped, %" PRIu64 " unpaired frees, %.3f s",
         ss->id, ss->pid, ss->status, ss->events_received, (uint64_t)dropped_total(ss),
         ss->unpaired_frees, (double)(ended - ss->start_wall) / 1e9);
  if (ss->lost_in_transit > 0)
    hp_log(HP_LOG_WARN, "session %" PRId64 " (pid %" PRId64 "): the stream ended without "
           "GOODBYE; %" PRIu64 " events the agent sent never arrived (counted in "
           "events_dropped)", ss->id, ss->pid, ss->lost_in_transit);
  if (ss->end_reason == HP_END_HOOKS_REPLACED && how == HP_SESSION_EXITED)
    hp_log(HP_LOG_WARN, "session %" PRId64 " (pid %" PRId64 "): recording ended early: "
           "the program replaced or removed heapprof's allocator hooks (hooks_replaced)",
           ss->id, ss->pid);
  if (ss->interval_changes > 0)
    hp_log(HP_LOG_INFO, "session %" PRId64 " (pid %" PRId64 "): the agent changed its "
           "sampling interval %" PRIu64 " times, from %" PRIu64 " to %" PRIu64 " bytes "
           "(sampling_changes)", ss->id, ss->pid, ss->interval_changes, ss->start_interval,
           ss->interval);
  if (ss->untracked > 0)
    hp_log(HP_LOG_WARN, "session %" PRId64 " (pid %" PRId64 "): %" PRIu64 " allocations "
           "dropped (counted in events_dropped): over the limit of %u live sampled "
           "allocations per session, or out of memory", ss->id, ss->pid, ss->untracked,
           s->cfg.max_live_addrs);
  if (ss->thread_defs_ignored > 0)
    hp_log(HP_LOG_WARN, "session %" PRId64 " (pid %" PRId64 "): %" PRIu64 " thread names "
           "not stored (over the limit of %u)", ss->id, ss->pid, ss->thread_defs_ignored,
           HP_STORE_MAX_THREAD_DEFS);
}

static void process(hp_store *s, item *it) {
  switch (it->kind) {
  case IT_HELLO: do_hello(s, it); break;
  case IT_FRAME: do_frame(s, it); break;
  case IT_STACK: do_stack(s, it); break;
  case IT_EVENTS: do_events(s, it); break;
  case IT_COUNTERS:
    it->ss->events_dropped = it->u.counters.dropped;
    it->ss->dirty = 1;
    if (it->u.counters.has_interval) {
      it->ss->events_sent = it->u.counters.sent;
      if (it->u.counters.interval != it->ss->interval)
        do_interval_change(s, it);
    }
    break;
  case IT_GOODBYE:
    it->ss->events_dropped = it->u.goodbye.dropped;
    it->ss->ended_wall = to_wall(it->ss, it->u.goodbye.ts);
    it->ss->end_reason = it->u.goodbye.reason;
    it->ss->dirty = 1;
    break;
  case IT_THREAD: do_thread(s, it); break;
  case IT_MARKER: do_marker(s, it); break;
  case IT_END: do_end(s, it); break;
  }
}

/* Idle sessions: close timeline intervals that time has passed, so that the drop
 * after a spike shows even when the program then goes quiet. */
static void idle_tick(hp_store *s) {
  int64_t now = wall_now_ns() - 1000000000;  /* slack for batches still on their way */
  int due = 0;
  for (hp_store_session *ss = s->active; ss && !due; ss = ss->next)
    due = hp_timeline_due(ss->tl, now);
  if (!due || begin_txn(s) < 0)
    return;
  for (hp_store_session *ss = s->active; ss; ss = ss->next) {
    hp_tl_row rows[HP_TL_MAX_ROWS];
    int n = hp_timeline_advance(ss->tl, now, rows);
    put_timeline_rows(s, ss, rows, n);
  }
}

/* The queue's cost of a processed item is released; the loop may read again. */
static void release(hp_store *s, size_t cost) {
  int resume = 0;
  pthread_mutex_lock(&s->mu);
  s->bytes -= cost;
  /* No wake-ups once stopping: the loop that would receive them has ended. */
  if (s->paused && s->bytes < s->cfg.queue_low && !s->stop) {
    s->paused = 0;
    resume = 1;
  }
  pthread_mutex_unlock(&s->mu);
  if (resume && s->cfg.on_resume)
    s->cfg.on_resume(s->cfg.ctx);
}

/* Processes the items taken from the queue, each inside the open transaction. While
 * storing fails they stay held, in order, and count against the queue's bound. */
static void process_held(hp_store *s) {
  while (s->held != NULL) {
    if (begin_txn(s) < 0)
      return;
    item *it = s->held;
    s->held = it->next;
    if (s->held == NULL)
      s->held_tail = NULL;
    size_t cost = it->cost;
    item_kind kind = it->kind;
    process(s, it);
    if (kind != IT_HELLO && kind != IT_END)
      free(it);  /* a session keeps its HELLO and its end until it is freed */
    if (s->broken)
      fail_txn(s, s->broken_rc);
    else if (s->txn_rows >= s->cfg.batch_rows)
      commit(s, 0);
    release(s, cost);
  }
}

/* Shutdown with storage still failing: everything not yet written is given up, and
 * said per session. */
static void give_up_all(hp_store *s) {
  hp_txlog_filter(s->log, keep_definition, s);  /* counts the log's data */
  for (uint32_t i = 0; i < s->npending; i++) {
    s->pending[i].ss->lost_storage += (uint64_t)s->pending[i].events;
    s->lost_events += (uint64_t)s->pending[i].events;
  }
  s->npending = 0;
  for (item *it = s->held; it; it = it->next)
    if (it->kind == IT_EVENTS) {
      it->ss->lost_storage += it->u.events.n;
      s->lost_events += it->u.events.n;
    }
  hp_store_session *lists[2] = {s->active, s->ending};
  for (int l = 0; l < 2; l++)
    for (hp_store_session *ss = lists[l]; ss; ss = ss->next) {
      s->lost_sessions++;
      hp_log(HP_LOG_ERROR, "session %" PRId64 " (pid %" PRId64 "): could not be stored to "
             "its end: %" PRIu64 " events lost; its row %s", ss->id, ss->pid,
             ss->lost_storage, ss->in_db ? "stays 'running' until the next heapprofd "
             "marks it disconnected" : "was never written");
    }
  for (item *it = s->held; it; it = it->next)
    if (it->kind == IT_HELLO) {
      s->lost_sessions++;
      hp_log(HP_LOG_ERROR, "session of pid %" PRId64 ": never stored", it->ss->peer_pid);
    }
  hp_log(HP_LOG_ERROR, "database: stopping with storage still failing after %u attempts "
         "in %.0f s: %" PRIu64 " events could not be stored", s->attempts,
         seconds_since(s->fail_since), s->lost_events);
}

static void *store_main(void *arg) {
  hp_store *s = arg;
  int stop_seen = 0;
  s->next_tick = ts_add_ms(mono_now(), 1000);
  for (;;) {
    pthread_mutex_lock(&s->mu);
    while (s->head == NULL && !(s->stop && !s->failing)) {
      /* Wake for the retry, the commit deadline, or once a second for idle timelines;
       * at shutdown with storage failing, at the latest when the retries run out. */
      struct timespec deadline = s->in_txn  ? s->txn_deadline
                               : s->failing ? s->retry_at : s->next_tick;
      if (stop_seen && ts_before(s->stop_at, deadline))
        deadline = s->stop_at;
      if (pthread_cond_timedwait(&s->cond, &s->mu, &deadline) == ETIMEDOUT)
        break;
    }
    if (s->head != NULL) {
      if (s->held_tail)
        s->held_tail->next = s->head;
      else
        s->held = s->head;
      s->held_tail = s->tail;
      s->head = s->tail = NULL;
    }
    int stopping = s->stop;
    pthread_mutex_unlock(&s->mu);
    if (stopping && !stop_seen) {
      stop_seen = 1;
      s->stop_at = ts_add_ms(mono_now(), s->cfg.stop_retry_ms);
    }

    process_held(s);
    struct timespec now = mono_now();
    if (s->in_txn && !ts_before(now, s->txn_deadline)) {
      commit(s, 0);
    } else if (!s->in_txn && s->failing && s->held == NULL) {
      if (begin_txn(s) == 0)  /* not before the retry time: writes the failed one again */
        commit(s, 0);
    } else if (!s->in_txn && !ts_before(now, s->next_tick)) {
      idle_tick(s);
      s->next_tick = ts_add_ms(now, 1000);
    }
    if (stopping && s->held == NULL) {
      if (begin_txn(s) == 0) {  /* open already, or not before a retry's time */
        commit(s, 1);
        if (!s->failing)
          break;
      }
      if (!ts_before(mono_now(), s->stop_at)) {
        give_up_all(s);
        break;
      }
    } else if (stopping && !ts_before(mono_now(), s->stop_at)) {
      give_up_all(s);
      break;
    }
  }
  return NULL;
}

/* ------------------------------------------------------------------ start / stop */

/* After the final commit, on the caller's thread (the store thread has ended). Each
 * CREATE INDEX is its own transaction: a kill while building leaves the database as
 * it was, just without the index being built. max(id) counts the rows because the
 * store gives allocations consecutive ids, and it costs one b-tree descent. */
static void build_indexes(hp_store *s) {
  long long rows = 0;
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(s->db, "SELECT coalesce(max(id), 0) FROM alloc", -1, &st, NULL)
          == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
    rows = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  hp_log(HP_LOG_INFO, "indexing %lld allocations for fast queries...", rows);
  struct timespec t0 = mono_now();
  char *msg = NULL;
  if (sqlite3_exec(s->db, s->cfg.index_sql, NULL, NULL, &msg) != SQLITE_OK) {
    hp_log(HP_LOG_ERROR, "database: building the read indexes: %s; the data is intact, "
           "queries over long sessions will be slower", msg ? msg : "?");
    sqlite3_free(msg);
    return;
  }
  struct timespec t1 = mono_now();
  hp_log(HP_LOG_INFO, "indexed %lld allocations in %.2f s", rows,
         (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
}

static void close_db(hp_store *s) {
  for (int i = 0; i < ST_COUNT; i++)
    sqlite3_finalize(s->st[i]);
  sqlite3_finalize(s->ins_multi);
  int rc = sqlite3_close(s->db);
  if (rc != SQLITE_OK)
    hp_log(HP_LOG_ERROR, "closing the database: %s", sqlite3_errstr(rc));
}

int hp_store_start(hp_store **out, const hp_store_config *cfg) {
  int rc = -HP_ENOMEM;
  *out = NULL;
  hp_store *s = calloc(1, sizeof *s);
  if (s == NULL) {
    sqlite3_close(cfg->db);
    return -HP_ENOMEM;
  }
  s->cfg = *cfg;
  s->db = cfg->db;
  if (s->cfg.batch_rows == 0)
    s->cfg.batch_rows = HP_STORE_DEFAULT_ROWS;
  if (s->cfg.commit_ms == 0)
    s->cfg.commit_ms = HP_STORE_COMMIT_MS;
  if (s->cfg.queue_high == 0)
    s->cfg.queue_high = HP_STORE_QUEUE_HIGH;
  if (s->cfg.queue_low == 0 || s->cfg.queue_low > s->cfg.queue_high)
    s->cfg.queue_low = s->cfg.queue_high / 4;
  if (s->cfg.timeline_interval_ns <= 0)
    s->cfg.timeline_interval_ns = 100000000;
  if (s->cfg.max_live_addrs == 0)
    s->cfg.max_live_addrs = HP_STORE_MAX_LIVE_ADDRS;
  if (s->cfg.stop_retry_ms == 0)
    s->cfg.stop_retry_ms = HP_STORE_STOP_RETRY_MS;
  s->next_session = s->next_frame = s->next_stack = 1;

  /* One commit's rows kept back plus one commit's new rows, and a margin. */
  s->pending_cap = 2 * s->cfg.batch_rows + HP_STORE_MULTI;
  s->pending = malloc((size_t)s->pending_cap * sizeof(pending_alloc));
  s->log = hp_txlog_new();
  if (s->pending == NULL || s->log == NULL)
    goto out_free;
  /* Durability: WAL with synchronous=NORMAL survives a killed process (the OS keeps
   * what was written); only a power cut can lose the last commits, never corrupt.
   * The page cache is 16 MiB because the daemon's RSS must stay flat: a larger cache
   * just fills up as the database grows. Checkpointing every 8192 WAL pages (128 MiB
   * with the 16 KiB pages of new databases, 32 MiB with 4 KiB ones) instead of 1000
   * copies the hot b-tree pages back less often; the WAL is removed at a clean close. */
  char *msg = NULL;
  if (sqlite3_exec(s->db, "PRAGMA synchronous=NORMAL; PRAGMA cache_size=-16384;"
                   " PRAGMA wal_autocheckpoint=8192; PRAGMA temp_store=MEMORY;",
                   NULL, NULL, &msg) != SQLITE_OK) {
    hp_log(HP_LOG_ERROR, "database: setting pragmas: %s", msg ? msg : "?");
    sqlite3_free(msg);
    rc = -HP_ESQLITE;
    goto out_free;
  }
  if (s->cfg.busy_timeout_ms > 0)
    sqlite3_busy_timeout(s->db, (int)s->cfg.busy_timeout_ms);
  for (int i = 0; i < ST_COUNT; i++) {
    int src = sqlite3_prepare_v3(s->db, sql_text[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i], NULL);
    if (src != SQLITE_OK) {
      hp_log(HP_LOG_ERROR, "database: preparing \"%s\": %s", sql_text[i], sqlite3_errmsg(s->db));
      rc = -HP_ESQLITE;
      goto out_free;
    }
  }
  {
    sbuf q = {0};
    const char *head = "INSERT INTO alloc(id, session_id, ts_ns, thread_id, domain, address,"
                       " size, est_bytes, stack_id, freed_ns) VALUES ";
    sb_put(&q, head, strlen(head));
    for (int i = 0; i < HP_STORE_MULTI; i++)
      sb_put(&q, i ? ",(?,?,?,?,?,?,?,?,?,?)" : "(?,?,?,?,?,?,?,?,?,?)", i ? 22 : 21);
    int src = q.oom ? SQLITE_NOMEM
                    : sqlite3_prepare_v3(s->db, q.p, -1, SQLITE_PREPARE_PERSISTENT,
                                         &s->ins_multi, NULL);
    free(q.p);
    if (src != SQLITE_OK) {
      hp_log(HP_LOG_ERROR, "database: preparing the multi-row insert: %s", sqlite3_errstr(src));
      rc = -HP_ESQLITE;
      goto out_free;
    }
  }
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&s->cond, &ca);
  pthread_condattr_destroy(&ca);
  pthread_mutex_init(&s->mu, NULL);
  int prc = pthread_create(&s->thread, NULL, store_main, s);
  if (prc != 0) {
    rc = -prc;
    goto out_destroy;
  }
  pthread_setname_np(s->thread, "hp-store");  /* for top -H and perf; best effort */
  *out = s;
  return 0;

out_destroy:
  pthread_cond_destroy(&s->cond);
  pthread_mutex_destroy(&s->mu);
out_free:
  close_db(s);
  hp_txlog_free(s->log);
  free(s->pending);
  free(s);
  return rc;
}

int hp_store_stop(hp_store *s) {
  if (s == NULL)
    return 0;
  pthread_mutex_lock(&s->mu);
  s->stop = 1;
  pthread_cond_signal(&s->cond);
  pthread_mutex_unlock(&s->mu);
  pthread_join(s->thread, NULL);
  /* What is left was given up (give_up_all) or never ended: the server ends every
   * session first. Held items of a session whose HELLO was never processed are freed
   * with that session; a session's end item always is. */
  while (s->held) {
    item *it = s->held;
    s->held = it->next;
    if (it->kind == IT_HELLO)
      free_session(it->ss);   /* frees it->ss->end; `it` itself is not the session's yet */
    if (it->kind != IT_END)
      free(it);
  }
  hp_store_session *lists[2] = {s->active, s->ending};
  for (int l = 0; l < 2; l++)
    while (lists[l]) {
      hp_store_session *ss = lists[l];
      lists[l] = ss->next;
      free_session(ss);
    }
  if (s->cfg.index_sql != NULL)
    build_indexes(s);
  close_db(s);
  int rc = (s->lost_events > 0 || s->lost_sessions > 0) ? -HP_ESQLITE : 0;
  pthread_cond_destroy(&s->cond);
  pthread_mutex_destroy(&s->mu);
  hp_txlog_free(s->log);
  free(s->pending);
  free(s);
  return rc;
}
