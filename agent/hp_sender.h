/* hp_sender.h — the agent's one native sender thread: ring -> msgpack frames -> socket.
 *
 * The thread sends HELLO, then repeatedly pops the event ring, emits FRAME_DEF and
 * STACK_DEF for every interned id not sent yet on this stream (before the events that
 * may use them: an event popped from the ring was pushed after its stack was
 * published), THREAD_DEF for the threads it meets (their kernel names, then the names
 * the program gave), MARKER for the markers the program set, then the EVENTS batch; COUNTERS about once a second; GOODBYE at
 * stop.
 * Only this thread waits on the socket. It never touches Python state and allocates
 * with libc only. A write error (the daemon went away) ends the thread after one line
 * on stderr and a call to the failure callback; the program goes on unprofiled.
 *
 * Never hang the program, never cut off a daemon that works. While profiling, a daemon
 * that stops reading (SIGSTOPped, stuck) only makes the sender wait and the ring drop.
 * Once hp_sender_stop() is called, the sender first reports the final counters (COUNTERS
 * with the number of events committed to the stream, so that whatever is lost after it
 * is still counted), then drains the ring and says GOODBYE. It waits for the daemon as
 * long as the daemon takes data, and gives up when it has taken nothing for the stall
 * bound (counted from the stop, or from the daemon's last progress if that is later):
 * then it shuts the socket down, says how many events were lost (one line) and ends.
 * Progress is the daemon taking data from this stream: a write that goes through after
 * the socket was full, or a socket it has read empty. A daemon that reads a byte now
 * and then never makes the socket writable again, so it cannot hold the exit.
 *
 * The processes of one program (a process and its fork children) share what they learnt
 * (hp_sender_family): once one of them gave up on a daemon, the others give up on it
 * within HP_SENDER_STUCK_GRACE_NS when they find it still taking nothing, instead of
 * each waiting the whole bound; the first sign of progress clears that. */
#ifndef HP_SENDER_H
#define HP_SENDER_H

#include <stdint.h>

#include "hp_intern.h"
#include "hp_proto.h"
#include "hp_ring.h"

#define HP_SENDER_BATCH        4096u /* events taken from the ring at a time */
#define HP_SENDER_FRAME_EVENTS 1024u /* events per EVENTS message (~32 KiB) */
#define HP_SENDER_FLUSH_BYTES \
  (256u << 10)                       /* write once this much is encoded (at most a
                                                 quarter of the socket's buffer) */
#define HP_SENDER_IDLE_NS 1000000ull /* shortest poll period (hp_sender_wait_ns) */
#define HP_SENDER_IDLE_MAX_NS \
  16000000ull /* longest poll period: an idle ring, or a
                                                 flow that fills a batch in no less */
#define HP_SENDER_COUNTERS_NS 1000000000ull
#define HP_SENDER_STALL_NS \
  5000000000ull /* stop: a daemon that takes nothing for
                                                  this long is given up on */
#define HP_SENDER_STUCK_GRACE_NS \
  100000000ull /* ... or for this long, when another
                                                  process of the program gave up on it */
#define HP_SENDER_MAX_THREADS \
  4096u                                       /* threads a stream looks up a kernel name
                                                 for */
#define HP_SENDER_MAX_NAMES      1024u        /* names the program gave, pending at once */
#define HP_SENDER_MAX_MARKERS    4096u        /* markers the program set, pending at once */
#define HP_SENDER_WAIT_SLICE_MS  50           /* a blocked write re-checks for stop */
#define HP_SENDER_PREFAULT_BYTES (256u << 10) /* mapped in per piece (prefault_ahead) */
#define HP_SENDER_CONNECT_TIMEOUT_NS \
  5000000000ull /* a daemon whose listen backlog is
                                                     full (stopped, swamped) */

/* Shared by the processes of one program through a MAP_SHARED page that fork children
 * inherit (opaque; any process, lock-free). */
typedef struct hp_sender_family hp_sender_family;
/* Maps a fresh one, never unmapped. NULL on failure: each process then judges alone. */
hp_sender_family *hp_sender_family_new(void);

typedef struct hp_sender hp_sender; /* opaque */

typedef struct {
  hp_ring *ring;                  /* borrowed until hp_sender_stop/abandon */
  hp_intern *intern;              /* borrowed likewise */
  uint64_t (*dropped)(void *arg); /* cumulative drops, read by the sender thread */
  /* The index-th change of the sampling interval this session (0, 1, ...): 1 and its
   * time (CLOCK_MONOTONIC) and new interval once it has happened, else 0; NULL: the
   * interval never changes. Each change is reported at once, in order, in a COUNTERS
   * message stamped with the change's time, so the daemon dates every step right even
   * when the stream lags behind. */
  int (*interval_change)(void *arg, uint32_t index, uint64_t *ts_ns, uint64_t *interval);
  void (*failed)(void *arg, int err); /* called once from the sender thread */
  /* Called by the sender thread about once a second (NULL: never): a nonzero
   * hp_end_reason ends the stream there as a stop does (final counters, drain, GOODBYE
   * with that reason). The callee has made sure nothing is pushed to the ring any more. */
  uint32_t (*check_end)(void *arg);
  /* Called by the sender thread between its turns until it returns 0 (NULL: never):
   * work the program's threads would otherwise do, such as mapping in memory the hooks
   * will write (hp_prefault.h), at most about max_bytes of it per call, so that a stop
   * never waits long. The ring's pages the sender maps in itself. */
  int (*warm)(void *arg, size_t max_bytes);
  void *arg;
  const char *socket_path;  /* for messages only; copied */
  hp_sender_family *family; /* NULL: none */
  uint64_t stall_ns;        /* 0: HP_SENDER_STALL_NS (tests shorten it) */
} hp_sender_cfg;

/* Connects a stream socket to a Unix socket path, waiting at most
 * HP_SENDER_CONNECT_TIMEOUT_NS for room in the daemon's listen backlog. 0 and *fd_out
 * (non-blocking: the sender waits with poll()), or -errno (-ENAMETOOLONG for a path over
 * the sun_path limit, -ETIMEDOUT when the backlog stayed full). */
int hp_sender_connect(const char *path, int *fd_out);
/* The same with another time limit (tests). */
int hp_sender_connect_timeout(const char *path, uint64_t timeout_ns, int *fd_out);

/* Takes ownership of fd (closed on failure too); hello is deep-copied. NULL and *err on
 * failure (-HP_ENOMEM, or -errno from pthread_create). */
hp_sender *hp_sender_start(int fd, const hp_hello *hello, const hp_sender_cfg *cfg,
                           int *err);
/* Sends the final counters, what is left in the ring and GOODBYE, joins the thread,
 * closes the socket, frees. No producer may push to the ring any more. Waits while the
 * daemon takes data; returns within about the stall bound once it takes nothing: then
 * -ETIMEDOUT (after one line on stderr and the failure callback). Otherwise 0, or the
 * error that stopped the thread earlier. NULL is a no-op. */
int hp_sender_stop(hp_sender *s);
/* The same, with GOODBYE's end_reason (hp_end_reason); the first reason given wins
 * (the sender may have ended the stream itself, see check_end). */
int hp_sender_stop_with(hp_sender *s, uint32_t end_reason);
/* For a fork child, where the thread no longer exists: closes the socket and frees
 * without joining or sending. NULL is a no-op. */
void hp_sender_abandon(hp_sender *s);
/* A name the program gives a thread (threading.Thread.name), sent as THREAD_DEF after
 * the kernel's name, so it wins; name is copied (cut at HP_MAX_STR_BYTES). Any thread
 * but a hook. 0, -HP_ENOMEM, or -HP_EFULL when HP_SENDER_MAX_NAMES are pending. */
int hp_sender_thread_name(hp_sender *s, uint64_t thread_id, const char *name, size_t len);
/* A marker the program sets (heapprof.mark), sent as MARKER; label is copied (cut at
 * HP_MAX_STR_BYTES, at a UTF-8 character boundary). Any thread but a hook; never waits
 * on the socket. 0, -HP_ENOMEM, or -HP_EFULL when HP_SENDER_MAX_MARKERS are pending. */
int hp_sender_marker(hp_sender *s, uint64_t ts_ns, const char *label, size_t len);

/* How long the sender sleeps after a turn: the time the flow since the turn before
 * (pushed: the slots producers claimed in elapsed_ns) takes to fill a batch, at most
 * twice the last wait, between HP_SENDER_IDLE_NS and HP_SENDER_IDLE_MAX_NS. Every
 * wake-up of the sender interrupts a core the program may be using, and a send() wakes
 * heapprofd: a steady flow at the default interval goes out once per
 * HP_SENDER_IDLE_MAX_NS, where a fixed 1 ms poll would wake 16 times. The doubling
 * bound keeps one quiet turn in a heavy flow (a pause of the program's) from putting the
 * sender to sleep for the longest wait at once. */
uint64_t hp_sender_wait_ns(uint64_t pushed, uint64_t elapsed_ns, uint64_t last_wait_ns);

uint64_t hp_now_ns(void);  /* CLOCK_MONOTONIC */
uint64_t hp_wall_ns(void); /* CLOCK_REALTIME */

#endif /* HP_SENDER_H */
