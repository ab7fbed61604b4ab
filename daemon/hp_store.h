/* hp_store.h — the storage thread: a bounded work queue in front of SQLite.
 *
 * The loop thread (server.c, through conn's sink) pushes copies of validated messages;
 * the store thread alone owns the sqlite3 connection. It interns frames and stacks
 * across sessions, maps each session's frame and stack numbers to database ids, pairs
 * frees with sampled allocations, keeps the timeline, and commits in transactions
 * bounded by rows and by time (HP_STORE_COMMIT_MS) so that readers see recent data
 * within a second.
 *
 * Pushing never blocks and never waits on SQLite. The queue is bounded in bytes:
 * hp_store_pause_if_full() tells the loop to stop reading sockets, and the store calls
 * on_resume (from its own thread; use uv_async_send) once it has drained the queue
 * below the low-water mark.
 *
 * A transaction that fails (a full disk, another writer's lock, an I/O error) is rolled
 * back and written again, whole, until it commits; meanwhile the store takes nothing new
 * from the queue, so the queue's bound applies backpressure (store_txn.c). Ids are never
 * reused after a rollback. What cannot be written in the end is counted in its
 * sessions' events_dropped, logged, and reported by hp_store_stop().
 *
 * The module's files and what each owns: daemon/store_int.h. */
#ifndef HP_STORE_H
#define HP_STORE_H

#include <stdint.h>
#include <sqlite3.h>

#include "hp_proto.h"

#define HP_STORE_COMMIT_MS    200         /* longest a transaction stays open */
#define HP_STORE_DEFAULT_ROWS 65536       /* rows per transaction */
#define HP_STORE_QUEUE_HIGH   (16u << 20) /* bytes queued: stop reading sockets */
/* Live sampled allocations tracked per session (to pair their frees): as many as our
 * agent's own address table can hold (HP_ADDRTAB_MAX_SLOTS, agent/hp_addrtab.h), so a
 * real session never reaches it; about 256 MiB of map at the limit. Beyond it a new
 * allocation is dropped and counted in the session's events_dropped (logged once), not
 * stored: a row whose free could never be paired would look leaked forever. Frees make
 * room again. daemon/README.md, "Limits". */
#define HP_STORE_MAX_LIVE_ADDRS (1u << 22)
/* A session's argv, as stored (JSON text): what does not fit is left out, entry by
 * entry, and counted in session_settings.argv_omitted. A HELLO can carry 4 MiB of
 * argv (HP_MAX_ARGV entries of HP_MAX_STR_BYTES); a real command line is far shorter.
 * daemon/README.md, "Limits". */
#define HP_STORE_MAX_ARGV_BYTES (64u << 10)
/* Thread names one session may store (THREAD_DEF, renames included): metadata bounded
 * like argv; a program that names more threads than this gets the rest unnamed. */
#define HP_STORE_MAX_THREAD_DEFS 65536u
/* At shutdown, how long a failing database is retried before what is left is given up. */
#define HP_STORE_STOP_RETRY_MS 10000u

typedef enum {
  HP_SESSION_EXITED = 0,     /* GOODBYE received */
  HP_SESSION_DISCONNECTED,   /* the stream ended without GOODBYE */
  HP_SESSION_PROTOCOL_ERROR, /* closed by the daemon for bad input */
} hp_session_end;

typedef struct {
  sqlite3 *db; /* from hp_schema_open; the store takes ownership */
  int64_t timeline_interval_ns;
  uint32_t batch_rows;          /* 0: HP_STORE_DEFAULT_ROWS */
  uint32_t commit_ms;           /* 0: HP_STORE_COMMIT_MS */
  size_t queue_high;            /* 0: HP_STORE_QUEUE_HIGH */
  size_t queue_low;             /* bytes queued to read again; 0 (or over queue_high):
                                  a quarter of queue_high */
  uint32_t max_live_addrs;      /* per session; 0: HP_STORE_MAX_LIVE_ADDRS */
  uint32_t busy_timeout_ms;     /* how long BEGIN waits for another writer's lock before
                                  the transaction is retried later; 0: as opened */
  uint32_t stop_retry_ms;       /* 0: HP_STORE_STOP_RETRY_MS */
  void (*on_resume)(void *ctx); /* called on the store thread */
  void *ctx;
  /* SQL run by hp_store_stop() after the final commit, before the database closes:
   * heapprofd's read indexes (hp_schema_index_sql()), too costly to keep up while
   * recording. Borrowed until hp_store_stop() returns; NULL: none. */
  const char *index_sql;
} hp_store_config;

typedef struct hp_store hp_store; /* opaque */
typedef struct hp_store_session
  hp_store_session; /* opaque; lives until its end is stored */

/* Starts the store thread. 0 and *out, or a negative code (cfg->db is then closed). */
int hp_store_start(hp_store **out, const hp_store_config *cfg);
/* Stores everything queued, commits, joins the thread, builds the indexes of
 * cfg->index_sql (logging how many allocations and how long) and closes the database.
 * Returns 0 when everything received was stored (failures that a retry cured are not
 * losses), or -HP_ESQLITE when something was given up: then the log says what, per
 * session. A failed index build is logged; the data is intact without it. NULL is a
 * no-op. */
int hp_store_stop(hp_store *s);

/* Loop thread only. The session handle is valid until hp_store_session_end(). Messages
 * come from conn (hp_conn.h): frame and stack ids are the numbers conn gave them, 1, 2,
 * ... per session in the order of their definition, each defined before it is used.
 * Text from the agent (argv, executable, python_version, frame names, thread names,
 * marker labels) is stored repaired to valid UTF-8 (hp_utf8.h), argv bounded by
 * HP_STORE_MAX_ARGV_BYTES, and agents' clocks clamped to 0 .. INT64_MAX ns. Each call
 * returns 0, or -HP_ENOMEM with nothing queued. */
hp_store_session *hp_store_session_start(hp_store *s, const hp_hello *h, int64_t peer_pid);
int hp_store_frame_def(hp_store *s, hp_store_session *ss, const hp_frame_def *m);
int hp_store_stack_def(hp_store *s, hp_store_session *ss, const hp_stack_def *m);
int hp_store_events(hp_store *s, hp_store_session *ss, const hp_event *ev, uint32_t n);
/* COUNTERS: the agent's drop count, events_sent (for an end without GOODBYE, below) and
 * its current sampling interval. When the interval differs from the session's current
 * one (HELLO's until a change), the change is stored as a sampling_change row at
 * m->ts_ns (schema/README.md, "sampling_changes"). */
int hp_store_counters(hp_store *s, hp_store_session *ss, const hp_counters *m);
/* GOODBYE: the agent's final drop count, the end time and why it ended (end_reason
 * HP_END_HOOKS_REPLACED stores the session as 'hooks_replaced'). */
int hp_store_goodbye(hp_store *s, hp_store_session *ss, const hp_goodbye *m);
/* THREAD_DEF: the thread's name; a later one for the same thread replaces it. */
int hp_store_thread_def(hp_store *s, hp_store_session *ss, const hp_thread_def *m);
/* MARKER: one row in `markers` at the marker's time. */
int hp_store_marker(hp_store *s, hp_store_session *ss, const hp_marker *m);
/* Last call for a session: reason is copied (NULL for none). Never fails: the end
 * record is preallocated with the session, so a session always gets its status. A
 * session that ends without GOODBYE has the events its last COUNTERS says were sent but
 * that never arrived added to its events_dropped (PROTOCOL.md 2.5). */
void hp_store_session_end(hp_store *s, hp_store_session *ss, hp_session_end how,
                          const char *reason);

/* 1 when the queue is over its high-water mark: the caller must stop reading, and
 * on_resume will be called once it has drained; 0 otherwise. */
int hp_store_pause_if_full(hp_store *s);

/* Test hook: the loop-side allocations of this module fail from the n-th one on,
 * until called again with 0. */
void hp_store_fail_alloc_after(unsigned n);

#endif /* HP_STORE_H */
