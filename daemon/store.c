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
 * Allocation ids are chosen here, not by SQLite: every transaction starts with
 * BEGIN IMMEDIATE (so no other writer can slip in) and reads max(id) once; pending
 * row i then has id pending_base + i (renumbered if another writer took those ids
 * between our transactions). The address map holds the final id from the
 * start, a free can tell a pending row from a stored one by comparing ids, and the
 * pending rows go out in multi-row INSERTs (HP_STORE_MULTI rows per statement), which
 * cost far less SQLite bytecode per row than one INSERT each. */
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
      uint32_t max_depth;
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
  item *end;                 /* preallocated end record */
  int64_t peer_pid;
  /* store thread only: */
  int64_t id, pid;
  int64_t start_wall, start_mono;
  int64_t ended_wall;        /* from GOODBYE, 0 until then */
  hp_map *frames;            /* agent frame id -> a: frame.id */
  hp_map *stacks;            /* agent stack id -> a: stack.id */
  hp_map *addrs;             /* live sampled address -> a: alloc.id; b: est_bytes;
                                c: estimated count */
  hp_timeline *tl;
  uint64_t events_received, events_dropped, unpaired_frees;
  uint64_t untracked;        /* allocations dropped here: addrs was at max_live_addrs */
  uint64_t events_sent;      /* the last COUNTERS' events_sent (0 from an agent without) */
  uint64_t lost_in_transit;  /* events_sent - events_received at an end without GOODBYE */
  uint32_t end_reason;       /* GOODBYE's (hp_end_reason) */
  uint64_t start_interval;   /* HELLO's sampling interval (0: size buckets) */
  uint64_t interval;         /* the current one: HELLO's, or the last stored change */
  uint64_t interval_changes; /* sampling_change rows stored for this session */
  int interval_refused;      /* a nonsensical change was logged (once per session) */
  int dirty;                 /* counters changed since the last commit */
  int stored;                /* the session row exists */
  struct hp_store_session *prev, *next;  /* active sessions */
};

typedef struct {
  hp_store_session *ss;
  int64_t ts, thread, address, size, est, stack, freed; /* stack/freed 0: NULL */
  int domain;
} pending_alloc;

#define HP_STORE_MULTI 64  /* rows per multi-row INSERT into alloc */
#define ALLOC_COLS 10

enum {
  ST_BEGIN, ST_COMMIT, ST_INS_SESSION, ST_UPD_COUNTS, ST_END_SESSION,
  ST_INS_FRAME, ST_SEL_FRAME, ST_SEL_STACK, ST_SEL_STACK_FRAMES, ST_INS_STACK,
  ST_INS_STACK_FRAME, ST_INS_ALLOC, ST_UPD_FREE, ST_UPSERT_TL, ST_MAX_ALLOC_ID,
  ST_INS_SAMPLING, ST_SEL_ALLOC, ST_UPSERT_THREAD, ST_INS_MARKER, ST_COUNT
};

static const char *const sql_text[ST_COUNT] = {
  [ST_BEGIN] = "BEGIN IMMEDIATE",
  [ST_COMMIT] = "COMMIT",
  [ST_INS_SESSION] =
    "INSERT INTO session(pid, ppid, argv, executable, python_version, started_ns,"
    " sample_interval_bytes, sample_buckets, max_stack_depth) VALUES(?,?,?,?,?,?,?,?,?)",
  [ST_UPD_COUNTS] = "UPDATE session SET events_received=?2, events_dropped=?3 WHERE id=?1",
  [ST_END_SESSION] =
    "UPDATE session SET ended_ns=?2, status=?3, error=?4, events_received=?5,"
    " events_dropped=?6 WHERE id=?1",
  [ST_INS_FRAME] =
    "INSERT INTO frame(function, filename, lineno) VALUES(?1,?2,?3) ON CONFLICT DO NOTHING",
  [ST_SEL_FRAME] = "SELECT id FROM frame WHERE filename=?2 AND lineno=?3 AND function=?1",
  [ST_SEL_STACK] = "SELECT id FROM stack WHERE hash=?1 AND depth=?2 AND truncated=?3",
  [ST_SEL_STACK_FRAMES] = "SELECT frame_id FROM stack_frame WHERE stack_id=? ORDER BY depth",
  [ST_INS_STACK] = "INSERT INTO stack(hash, depth, truncated) VALUES(?,?,?)",
  [ST_INS_STACK_FRAME] = "INSERT INTO stack_frame(stack_id, depth, frame_id) VALUES(?,?,?)",
  [ST_INS_ALLOC] =
    "INSERT INTO alloc(id, session_id, ts_ns, thread_id, domain, address, size, est_bytes,"
    " stack_id, freed_ns) VALUES(?,?,?,?,?,?,?,?,?,?)",
  [ST_MAX_ALLOC_ID] = "SELECT coalesce(max(id), 0) FROM alloc",
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
  size_t bytes;                /* sum of queued items' cost */
  int paused;                  /* the loop stopped reading; call on_resume below low */
  int stop;

  /* Store thread only. */
  sqlite3 *db;
  sqlite3_stmt *st[ST_COUNT];
  int in_txn;
  uint64_t txn_rows;
  struct timespec txn_deadline;
  struct timespec next_tick;   /* next idle_tick() */
  sqlite3_stmt *ins_multi;     /* ST_INS_ALLOC with HP_STORE_MULTI rows */
  pending_alloc *pending;      /* allocations not inserted yet, oldest first */
  uint32_t npending, pending_cap;
  uint32_t pending_old;        /* pending[0..pending_old) were pending at the last commit */
  int64_t pending_base;        /* alloc id of pending[0] */
  hp_store_session *active;
  int first_error;
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

/* Unsigned arithmetic: the clock values come from the agent and must not be able to
 * provoke signed overflow; nonsense in, nonsense (but defined) out. */
static int64_t to_wall(const hp_store_session *ss, uint64_t mono) {
  return (int64_t)((uint64_t)ss->start_wall + (mono - (uint64_t)ss->start_mono));
}

/* Records a storage failure. Logging is capped so a full disk cannot flood stderr. */
static int db_fail(hp_store *s, const char *what, int rc) {
  if (s->first_error == 0)
    s->first_error = -HP_ESQLITE;
  if (s->errors_logged < 20) {
    s->errors_logged++;
    hp_log(HP_LOG_ERROR, "database: %s: %s (%s)", what, sqlite3_errmsg(s->db),
           sqlite3_errstr(rc));
  }
  return -HP_ESQLITE;
}

/* Steps a statement that returns no rows, then resets it. */
static int run(hp_store *s, int which) {
  sqlite3_stmt *st = s->st[which];
  int rc = sqlite3_step(st);
  int rrc = sqlite3_reset(st);
  if (rc != SQLITE_DONE && rc != SQLITE_ROW)
    return db_fail(s, sql_text[which], rc != SQLITE_ERROR ? rc : rrc);
  return 0;
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

static int begin_txn(hp_store *s) {
  if (s->in_txn)
    return 0;
  int rc = run(s, ST_BEGIN);
  if (rc < 0)
    return rc;
  sqlite3_stmt *st = s->st[ST_MAX_ALLOC_ID];
  rc = sqlite3_step(st);
  int64_t max = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
  sqlite3_reset(st);
  if (rc != SQLITE_ROW) {
    rc = db_fail(s, sql_text[ST_MAX_ALLOC_ID], rc);
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
  }
  if (s->npending == 0)
    s->pending_base = max + 1;
  else if (max >= s->pending_base)
    renumber_pending(s, max + 1);
  s->in_txn = 1;
  s->txn_rows = 0;
  s->txn_deadline = ts_add_ms(mono_now(), s->cfg.commit_ms);
  return 0;
}

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

static void sb_json_str(sbuf *b, hp_str s) {
  sb_put(b, "\"", 1);
  for (uint32_t i = 0; i < s.len; i++) {
    unsigned char ch = (unsigned char)s.ptr[i];
    char esc[8];
    if (ch == '"' || ch == '\\') {
      esc[0] = '\\';
      esc[1] = (char)ch;
      sb_put(b, esc, 2);
    } else if (ch < 0x20) {
      int n = snprintf(esc, sizeof esc, "\\u%04x", ch);
      sb_put(b, esc, (size_t)n);
    } else {
      sb_put(b, (const char *)&s.ptr[i], 1);
    }
  }
  sb_put(b, "\"", 1);
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

static char *copy_str(char **cursor, hp_str str) {
  char *dst = *cursor;
  memcpy(dst, str.ptr, str.len);
  dst[str.len] = '\0';
  *cursor += str.len + 1;
  return dst;
}

static char *copy_cstr(char **cursor, const char *str, size_t len) {
  char *dst = *cursor;
  memcpy(dst, str, len);
  dst[len] = '\0';
  *cursor += len + 1;
  return dst;
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

  sb_put(&argv, "[", 1);
  for (uint32_t i = 0; i < h->argc; i++) {
    if (i > 0)
      sb_put(&argv, ",", 1);
    sb_json_str(&argv, h->argv[i]);
  }
  sb_put(&argv, "]", 1);
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

  size_t extra = argv.len + 1 + h->executable.len + 1 + h->python_version.len + 1 +
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
  it->u.hello.argv_json = copy_cstr(&cur, argv.p, argv.len);
  it->u.hello.executable = copy_str(&cur, h->executable);
  it->u.hello.python_version = copy_str(&cur, h->python_version);
  it->u.hello.buckets_json = buckets.len ? copy_cstr(&cur, buckets.p, buckets.len) : NULL;
  free(argv.p);
  free(buckets.p);
  push(s, it);
  return ss;

out_free_json:
  free(argv.p);
  free(buckets.p);
out_free_session:
  free(ss->end);
  hp_map_free(ss->frames);
  hp_map_free(ss->stacks);
  hp_map_free(ss->addrs);
  hp_timeline_free(ss->tl);
  free(ss);
  return NULL;
}

int hp_store_frame_def(hp_store *s, hp_store_session *ss, const hp_frame_def *m) {
  item *it = item_new(IT_FRAME, ss, (size_t)m->function.len + m->filename.len + 2);
  if (it == NULL)
    return -HP_ENOMEM;
  char *cur = (char *)it->data;
  it->u.frame.id = m->frame_id;
  it->u.frame.lineno = m->lineno;
  it->u.frame.function = copy_str(&cur, m->function);
  it->u.frame.filename = copy_str(&cur, m->filename);
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
  item *it = item_new(IT_THREAD, ss, (size_t)m->name.len + 1);
  if (it == NULL)
    return -HP_ENOMEM;
  char *cur = (char *)it->data;
  it->u.thread.tid = m->thread_id;
  it->u.thread.name = copy_str(&cur, m->name);
  push(s, it);
  return 0;
}

int hp_store_marker(hp_store *s, hp_store_session *ss, const hp_marker *m) {
  item *it = item_new(IT_MARKER, ss, (size_t)m->label.len + 1);
  if (it == NULL)
    return -HP_ENOMEM;
  char *cur = (char *)it->data;
  it->u.marker.ts = m->ts_ns;
  it->u.marker.label = copy_str(&cur, m->label);
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

/* ------------------------------------------------------------------ store thread */

static int put_timeline_rows(hp_store *s, hp_store_session *ss, const hp_tl_row *rows, int n) {
  sqlite3_stmt *st = s->st[ST_UPSERT_TL];
  for (int i = 0; i < n; i++) {
    sqlite3_bind_int64(st, 1, ss->id);
    sqlite3_bind_int64(st, 2, rows[i].ts_ns);
    sqlite3_bind_int64(st, 3, rows[i].live_bytes);
    sqlite3_bind_int64(st, 4, rows[i].live_count);
    sqlite3_bind_int64(st, 5, rows[i].end_bytes);
    int rc = run(s, ST_UPSERT_TL);
    if (rc < 0)
      return rc;
    s->txn_rows++;
  }
  return 0;
}

static void bind_alloc(sqlite3_stmt *st, int col, int64_t id, const pending_alloc *p) {
  sqlite3_bind_int64(st, col + 1, id);
  sqlite3_bind_int64(st, col + 2, p->ss->id);
  sqlite3_bind_int64(st, col + 3, p->ts);
  sqlite3_bind_int64(st, col + 4, p->thread);
  sqlite3_bind_int(st, col + 5, p->domain);
  sqlite3_bind_int64(st, col + 6, p->address);
  sqlite3_bind_int64(st, col + 7, p->size);
  sqlite3_bind_int64(st, col + 8, p->est);
  if (p->stack)
    sqlite3_bind_int64(st, col + 9, p->stack);
  else
    sqlite3_bind_null(st, col + 9);
  if (p->freed)
    sqlite3_bind_int64(st, col + 10, p->freed);
  else
    sqlite3_bind_null(st, col + 10);
}

/* Inserts the oldest `count` pending rows, HP_STORE_MULTI at a time, and moves the
 * rest to the front. Inside a transaction only. */
static int flush_pending_n(hp_store *s, uint32_t count) {
  int err = 0;
  uint32_t i = 0;
  for (; i + HP_STORE_MULTI <= count; i += HP_STORE_MULTI) {
    for (uint32_t j = 0; j < HP_STORE_MULTI; j++)
      bind_alloc(s->ins_multi, (int)j * ALLOC_COLS, s->pending_base + i + j, &s->pending[i + j]);
    int rc = sqlite3_step(s->ins_multi);
    int rrc = sqlite3_reset(s->ins_multi);
    if (rc != SQLITE_DONE)
      err = db_fail(s, "inserting allocations", rc != SQLITE_ERROR ? rc : rrc);
  }
  for (; i < count; i++) {
    bind_alloc(s->st[ST_INS_ALLOC], 0, s->pending_base + i, &s->pending[i]);
    int rc = run(s, ST_INS_ALLOC);
    if (rc < 0)
      err = rc;
  }
  if (count < s->npending)
    memmove(s->pending, s->pending + count, (s->npending - count) * sizeof *s->pending);
  s->pending_base += count;
  s->npending -= count;
  s->pending_old = s->pending_old > count ? s->pending_old - count : 0;
  return err;
}

static int flush_pending(hp_store *s) { return flush_pending_n(s, s->npending); }

/* What the session row reports as dropped: the agent's count (absolute, from COUNTERS
 * and GOODBYE), the allocations this store could not track, and at an end without
 * GOODBYE the events the agent said it sent that never arrived. */
static int64_t dropped_total(const hp_store_session *ss) {
  return (int64_t)(ss->events_dropped + ss->untracked + ss->lost_in_transit);
}

static int update_counts(hp_store *s, hp_store_session *ss) {
  sqlite3_stmt *st = s->st[ST_UPD_COUNTS];
  sqlite3_bind_int64(st, 1, ss->id);
  sqlite3_bind_int64(st, 2, (int64_t)ss->events_received);
  sqlite3_bind_int64(st, 3, dropped_total(ss));
  ss->dirty = 0;
  return run(s, ST_UPD_COUNTS);
}

/* Commits the open transaction. `final` stores every pending row (session end is
 * handled by its caller; this is for shutdown); otherwise the rows that arrived since
 * the last commit stay pending for one more round. */
static void commit(hp_store *s, int final) {
  if (!s->in_txn)
    return;
  (void)flush_pending_n(s, final ? s->npending : s->pending_old);
  s->pending_old = s->npending;
  int64_t now = wall_now_ns();
  for (hp_store_session *ss = s->active; ss; ss = ss->next) {
    if (!ss->stored)
      continue;
    hp_tl_row rows[HP_TL_MAX_ROWS];
    /* A second of slack: agents batch, so events may still be on their way. */
    int n = hp_timeline_advance(ss->tl, now - 1000000000, rows);
    (void)put_timeline_rows(s, ss, rows, n);
    if (hp_timeline_current(ss->tl, rows))
      (void)put_timeline_rows(s, ss, rows, 1);
    if (ss->dirty)
      (void)update_counts(s, ss);
  }
  if (run(s, ST_COMMIT) < 0) {
    /* The transaction may still be open after a failed COMMIT; do not let it grow. */
    if (!sqlite3_get_autocommit(s->db))
      sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
  }
  s->in_txn = 0;
  s->txn_rows = 0;
  /* Rows kept back must not wait for the next event, which may never come: open the
   * next transaction now so that its deadline commits them. */
  if (s->npending > 0 && !final)
    (void)begin_txn(s);
}

static void do_hello(hp_store *s, item *it) {
  hp_store_session *ss = it->ss;
  ss->pid = it->u.hello.pid;
  ss->start_wall = (int64_t)it->u.hello.start_wall;
  ss->start_mono = (int64_t)it->u.hello.start_mono;
  ss->start_interval = ss->interval = it->u.hello.sample_interval;
  ss->next = s->active;
  if (s->active)
    s->active->prev = ss;
  s->active = ss;
  if (begin_txn(s) < 0)
    return;
  sqlite3_stmt *st = s->st[ST_INS_SESSION];
  sqlite3_bind_int64(st, 1, it->u.hello.pid);
  sqlite3_bind_int64(st, 2, it->u.hello.ppid);
  sqlite3_bind_text(st, 3, it->u.hello.argv_json, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 4, it->u.hello.executable, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 5, it->u.hello.python_version, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 6, (int64_t)it->u.hello.start_wall);
  sqlite3_bind_int64(st, 7, (int64_t)it->u.hello.sample_interval);
  if (it->u.hello.buckets_json)
    sqlite3_bind_text(st, 8, it->u.hello.buckets_json, -1, SQLITE_STATIC);
  else
    sqlite3_bind_null(st, 8);
  sqlite3_bind_int64(st, 9, it->u.hello.max_depth);
  if (run(s, ST_INS_SESSION) < 0)
    return;
  ss->id = sqlite3_last_insert_rowid(s->db);
  ss->stored = 1;
  s->txn_rows++;
  hp_log(HP_LOG_INFO, "session %" PRId64 " (pid %" PRId64 ") started: argv %s, %s, Python %s",
         ss->id, ss->pid, it->u.hello.argv_json, it->u.hello.executable,
         it->u.hello.python_version);
}

static int64_t intern_frame(hp_store *s, const item *it) {
  sqlite3_stmt *ins = s->st[ST_INS_FRAME], *sel = s->st[ST_SEL_FRAME];
  sqlite3_bind_text(ins, 1, it->u.frame.function, -1, SQLITE_STATIC);
  sqlite3_bind_text(ins, 2, it->u.frame.filename, -1, SQLITE_STATIC);
  sqlite3_bind_int(ins, 3, it->u.frame.lineno);
  if (run(s, ST_INS_FRAME) < 0)
    return 0;
  if (sqlite3_changes(s->db) == 1)
    return sqlite3_last_insert_rowid(s->db);
  sqlite3_bind_text(sel, 1, it->u.frame.function, -1, SQLITE_STATIC);
  sqlite3_bind_text(sel, 2, it->u.frame.filename, -1, SQLITE_STATIC);
  sqlite3_bind_int(sel, 3, it->u.frame.lineno);
  int64_t id = 0;
  int rc = sqlite3_step(sel);
  if (rc == SQLITE_ROW)
    id = sqlite3_column_int64(sel, 0);
  else
    db_fail(s, "looking up a frame", rc);
  sqlite3_reset(sel);
  return id;
}

static void do_frame(hp_store *s, item *it) {
  hp_store_session *ss = it->ss;
  if (!ss->stored || begin_txn(s) < 0)
    return;
  int64_t id = intern_frame(s, it);
  if (id == 0)
    return;
  hp_map_val v = {id, 0, 0};
  if (hp_map_put(ss->frames, it->u.frame.id, &v) < 0)
    hp_log(HP_LOG_ERROR, "session %" PRId64 ": out of memory mapping frame %u", ss->id,
           it->u.frame.id);
  s->txn_rows++;
}

/* 1 when stack `id` consists of exactly frames[0..depth). */
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
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    db_fail(s, "comparing stacks", rc);
    same = 0;
  }
  sqlite3_reset(st);
  return same && i == depth;
}

static int64_t intern_stack(hp_store *s, const int64_t *frames, uint32_t depth, int truncated) {
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
    if (stack_matches(s, cand, frames, depth))
      found = cand;
  }
  sqlite3_reset(sel);
  if (found)
    return found;

  sqlite3_stmt *ins = s->st[ST_INS_STACK];
  sqlite3_bind_int64(ins, 1, hash);
  sqlite3_bind_int64(ins, 2, depth);
  sqlite3_bind_int(ins, 3, truncated);
  if (run(s, ST_INS_STACK) < 0)
    return 0;
  int64_t id = sqlite3_last_insert_rowid(s->db);
  sqlite3_stmt *insf = s->st[ST_INS_STACK_FRAME];
  for (uint32_t i = 0; i < depth; i++) {
    sqlite3_bind_int64(insf, 1, id);
    sqlite3_bind_int64(insf, 2, i);
    sqlite3_bind_int64(insf, 3, frames[i]);
    if (run(s, ST_INS_STACK_FRAME) < 0)
      return 0;
  }
  s->txn_rows += depth + 1;
  return id;
}

static void do_stack(hp_store *s, item *it) {
  hp_store_session *ss = it->ss;
  if (!ss->stored || begin_txn(s) < 0)
    return;
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
  if (n > 0)
    (void)put_timeline_rows(s, ss, rows, n);
}

static void do_free(hp_store *s, hp_store_session *ss, const hp_event *e) {
  hp_map_val *v = hp_map_get(ss->addrs, e->address);
  if (v == NULL) {
    ss->unpaired_frees++;  /* sampled out, or its alloc was dropped by the agent */
    return;
  }
  int64_t ts = to_wall(ss, e->ts_ns);
  if (v->a >= s->pending_base) {
    s->pending[v->a - s->pending_base].freed = ts;
  } else {
    sqlite3_stmt *st = s->st[ST_UPD_FREE];
    sqlite3_bind_int64(st, 1, v->a);
    sqlite3_bind_int64(st, 2, ts);
    (void)run(s, ST_UPD_FREE);
    s->txn_rows++;
  }
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

static void do_alloc(hp_store *s, hp_store_session *ss, const hp_event *e) {
  int64_t stack = 0;
  if (e->stack_id != HP_NO_STACK) {
    hp_map_val *sv = hp_map_get(ss->stacks, e->stack_id);
    if (sv != NULL)
      stack = sv->a;  /* else its definition failed to store; keep the event unattributed */
  }
  if (s->npending == s->pending_cap)
    (void)flush_pending(s);
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
  uint32_t slot = s->npending++;
  int64_t id = s->pending_base + slot;
  s->pending[slot] = (pending_alloc){
    .ss = ss, .ts = ts, .thread = (int64_t)e->thread_id,
    .address = (int64_t)e->address, .size = (int64_t)e->size, .est = est, .stack = stack,
    .freed = 0, .domain = e->domain};
  if (!created) {
    /* The address was handed out again, so its previous block was freed even though
     * we never saw the free (the agent dropped it). Stop counting it as live. */
    int64_t ob = v->b, oc = v->c;
    *v = (hp_map_val){id, est, cnt};
    timeline_add(s, ss, ts, -ob, -oc);
  } else {
    *v = (hp_map_val){id, est, cnt};
  }
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
  int64_t stack = 0;
  if (e->stack_id != HP_NO_STACK) {
    hp_map_val *sv = hp_map_get(ss->stacks, e->stack_id);
    if (sv != NULL)
      stack = sv->a;
  }
  if (s->npending == s->pending_cap)
    (void)flush_pending(s);  /* moves rows, not map entries: v stays valid */
  int64_t ts = to_wall(ss, e->ts_ns);
  int64_t size = 0;
  int domain = 0;
  if (v->a >= s->pending_base) {
    pending_alloc *old = &s->pending[v->a - s->pending_base];
    old->freed = ts;
    size = old->size;
    domain = old->domain;
  } else {
    sqlite3_stmt *sel = s->st[ST_SEL_ALLOC];
    sqlite3_bind_int64(sel, 1, v->a);
    int rc = sqlite3_step(sel);
    if (rc == SQLITE_ROW) {
      domain = sqlite3_column_int(sel, 0);
      size = sqlite3_column_int64(sel, 1);
    }
    sqlite3_reset(sel);
    sqlite3_stmt *st = s->st[ST_UPD_FREE];
    sqlite3_bind_int64(st, 1, v->a);
    sqlite3_bind_int64(st, 2, ts);
    (void)run(s, ST_UPD_FREE);
    s->txn_rows++;
    if (rc != SQLITE_ROW) {
      /* Without its row the new life cannot be stored: it ends here, counted. */
      db_fail(s, "looking up a reattributed allocation", rc);
      int64_t est = v->b, cnt = v->c;
      hp_map_del_at(ss->addrs, v);
      timeline_add(s, ss, ts, -est, -cnt);
      ss->untracked++;
      ss->dirty = 1;
      return;
    }
  }
  uint32_t slot = s->npending++;
  int64_t id = s->pending_base + slot;
  s->pending[slot] = (pending_alloc){
    .ss = ss, .ts = ts, .thread = (int64_t)e->thread_id, .address = (int64_t)e->address,
    .size = size, .est = v->b, .stack = stack, .freed = 0, .domain = domain};
  v->a = id;
  s->txn_rows++;
}

static void do_events(hp_store *s, item *it) {
  hp_store_session *ss = it->ss;
  if (!ss->stored || begin_txn(s) < 0)
    return;
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
  if (!ss->stored)
    return;
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
  if (begin_txn(s) < 0)
    return;
  sqlite3_stmt *st = s->st[ST_INS_SAMPLING];
  sqlite3_bind_int64(st, 1, ss->id);
  sqlite3_bind_int64(st, 2, to_wall(ss, it->u.counters.ts));
  sqlite3_bind_int64(st, 3, (int64_t)to);
  if (run(s, ST_INS_SAMPLING) < 0)
    return;
  hp_log(HP_LOG_DEBUG, "session %" PRId64 ": sampling interval %" PRIu64 " -> %" PRIu64
         " bytes", ss->id, ss->interval, to);
  ss->interval = to;
  ss->interval_changes++;
  s->txn_rows++;
}

/* The thread's latest name wins (an upsert): no memory is kept per thread here. */
static void do_thread(hp_store *s, item *it) {
  hp_store_session *ss = it->ss;
  if (!ss->stored || begin_txn(s) < 0)
    return;
  sqlite3_stmt *st = s->st[ST_UPSERT_THREAD];
  sqlite3_bind_int64(st, 1, ss->id);
  sqlite3_bind_int64(st, 2, (int64_t)it->u.thread.tid);
  sqlite3_bind_text(st, 3, it->u.thread.name, -1, SQLITE_STATIC);
  if (run(s, ST_UPSERT_THREAD) == 0)
    s->txn_rows++;
}

static void do_marker(hp_store *s, item *it) {
  hp_store_session *ss = it->ss;
  if (!ss->stored || begin_txn(s) < 0)
    return;
  sqlite3_stmt *st = s->st[ST_INS_MARKER];
  sqlite3_bind_int64(st, 1, ss->id);
  sqlite3_bind_int64(st, 2, to_wall(ss, it->u.marker.ts));
  sqlite3_bind_text(st, 3, it->u.marker.label, -1, SQLITE_STATIC);
  if (run(s, ST_INS_MARKER) == 0)
    s->txn_rows++;
}

static const char *end_status(const hp_store_session *ss, hp_session_end how) {
  switch (how) {
  case HP_SESSION_EXITED:
    return ss->end_reason == HP_END_HOOKS_REPLACED ? "hooks_replaced" : "exited";
  case HP_SESSION_DISCONNECTED: return "disconnected";
  case HP_SESSION_PROTOCOL_ERROR: return "protocol_error";
  }
  return "disconnected";
}

static void free_session(hp_store_session *ss) {
  hp_map_free(ss->frames);
  hp_map_free(ss->stacks);
  hp_map_free(ss->addrs);
  hp_timeline_free(ss->tl);
  free(ss);
}

static void do_end(hp_store *s, item *it) {
  hp_store_session *ss = it->ss;
  hp_session_end how = it->u.end.how;
  /* Without GOODBYE the agent never said what it finally dropped; what its last
   * COUNTERS says it sent but never arrived is lost (PROTOCOL.md 2.5). */
  if (how != HP_SESSION_EXITED && ss->events_sent > ss->events_received)
    ss->lost_in_transit = ss->events_sent - ss->events_received;
  if (ss->stored && begin_txn(s) == 0) {
    /* Pending rows point at this session; insert them before it goes away. */
    (void)flush_pending(s);
    int64_t ended = (how == HP_SESSION_EXITED && ss->ended_wall) ? ss->ended_wall
                                                                  : it->u.end.wall_ns;
    hp_tl_row rows[HP_TL_MAX_ROWS];
    int n = hp_timeline_finish(ss->tl, ended, rows);
    (void)put_timeline_rows(s, ss, rows, n);
    sqlite3_stmt *st = s->st[ST_END_SESSION];
    sqlite3_bind_int64(st, 1, ss->id);
    sqlite3_bind_int64(st, 2, ended);
    sqlite3_bind_text(st, 3, end_status(ss, how), -1, SQLITE_STATIC);
    if (how == HP_SESSION_PROTOCOL_ERROR)
      sqlite3_bind_text(st, 4, it->u.end.reason, -1, SQLITE_STATIC);
    else
      sqlite3_bind_null(st, 4);
    sqlite3_bind_int64(st, 5, (int64_t)ss->events_received);
    sqlite3_bind_int64(st, 6, dropped_total(ss));
    (void)run(s, ST_END_SESSION);
    s->txn_rows++;
    if (how == HP_SESSION_PROTOCOL_ERROR)
      hp_log(HP_LOG_WARN, "session %" PRId64 " (pid %" PRId64 "): protocol error: %s", ss->id,
             ss->pid, it->u.end.reason);
    hp_log(HP_LOG_INFO,
           "session %" PRId64 " (pid %" PRId64 ") ended: %s, %" PRIu64 " events, %" PRIu64
           " dropped, %" PRIu64 " unpaired frees, %.3f s",
           ss->id, ss->pid, end_status(ss, how), ss->events_received,
           (uint64_t)dropped_total(ss), ss->unpaired_frees,
           (double)(ended - ss->start_wall) / 1e9);
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
  } else if (how == HP_SESSION_PROTOCOL_ERROR) {
    hp_log(HP_LOG_WARN, "session of pid %" PRId64 " (not stored): protocol error: %s",
           ss->peer_pid, it->u.end.reason);
  }
  if (ss->prev)
    ss->prev->next = ss->next;
  else if (s->active == ss)
    s->active = ss->next;
  if (ss->next)
    ss->next->prev = ss->prev;
  free_session(ss);  /* `it` is ss->end, freed by the caller */
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
  for (hp_store_session *ss = s->active; ss; ss = ss->next) {
    hp_tl_row rows[HP_TL_MAX_ROWS];
    int n = ss->stored ? hp_timeline_advance(ss->tl, now, rows) : 0;
    if (n > 0 && begin_txn(s) == 0)
      (void)put_timeline_rows(s, ss, rows, n);
  }
}

static void *store_main(void *arg) {
  hp_store *s = arg;
  s->next_tick = ts_add_ms(mono_now(), 1000);
  for (;;) {
    pthread_mutex_lock(&s->mu);
    while (s->head == NULL && !s->stop) {
      /* Wake for the commit deadline, or once a second for idle timelines. */
      struct timespec deadline = s->in_txn ? s->txn_deadline : s->next_tick;
      int rc = pthread_cond_timedwait(&s->cond, &s->mu, &deadline);
      if (rc == ETIMEDOUT)
        break;
    }
    item *list = s->head;
    s->head = s->tail = NULL;
    int stopping = s->stop && list == NULL;
    pthread_mutex_unlock(&s->mu);

    while (list != NULL) {
      item *it = list;
      list = it->next;
      size_t cost = it->cost;
      process(s, it);
      free(it);
      if (s->in_txn && s->txn_rows >= s->cfg.batch_rows)
        commit(s, 0);
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
    struct timespec now = mono_now();
    if (s->in_txn && !ts_before(now, s->txn_deadline))
      commit(s, 0);
    else if (!s->in_txn && !ts_before(now, s->next_tick)) {
      idle_tick(s);
      s->next_tick = ts_add_ms(now, 1000);
    }
    if (stopping)
      break;
  }
  if (!s->in_txn && s->npending > 0)
    (void)begin_txn(s);
  commit(s, 1);
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

  /* One commit's rows kept back plus one commit's new rows, and a margin. */
  s->pending_cap = 2 * s->cfg.batch_rows + HP_STORE_MULTI;
  s->pending = malloc((size_t)s->pending_cap * sizeof(pending_alloc));
  if (s->pending == NULL)
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
  /* Sessions still active never got an end record (the server ends them all first). */
  while (s->active) {
    hp_store_session *ss = s->active;
    s->active = ss->next;
    free(ss->end);
    free_session(ss);
  }
  if (s->cfg.index_sql != NULL)
    build_indexes(s);
  close_db(s);
  int rc = s->first_error;
  pthread_cond_destroy(&s->cond);
  pthread_mutex_destroy(&s->mu);
  free(s->pending);
  free(s);
  return rc;
}
