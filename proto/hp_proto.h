/* hp_proto.h — heapprof wire records and the one codec shared by agent and daemon.
 *
 * proto/PROTOCOL.md is the specification; this header is its C form. A stream is a
 * sequence of frames: a 4-byte big-endian payload length, then one msgpack array
 * [type, fields...]. The first frame of a stream is HELLO. Everything is sent by the
 * agent; the daemon never writes to the socket.
 *
 * Strings in decoded messages are borrowed: they point into the payload passed to
 * hp_decoder_decode() (or into the decoder) and are valid until the next decode
 * call on the same decoder or until the payload is freed, whichever comes first. */
#ifndef HP_PROTO_H
#define HP_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "hp_error.h"

#define HP_PROTO_VERSION 2u         /* the only version heapprofd accepts */
#define HP_PROTO_MAGIC   "heapprof" /* first field of HELLO */

/* Limits. A frame or field over its limit is a protocol error (-HP_ETOOBIG, -HP_ELEN). */
#define HP_FRAME_HEADER_BYTES 4u
#define HP_MAX_FRAME_BYTES    (4u << 20) /* payload bytes of one frame */
#define HP_MAX_STR_BYTES \
  4096u                            /* function, filename, executable, one argv entry,
                                              thread name, marker label */
#define HP_MAX_ARGV         1024u  /* entries of HELLO argv */
#define HP_MAX_STACK_DEPTH  512u   /* frame ids in one STACK_DEF */
#define HP_MAX_BATCH_EVENTS 16384u /* events in one EVENTS message */
#define HP_MAX_BUCKETS      64u    /* size buckets in HELLO (bucket sampling) */

/* Ids: frame and stack ids are chosen by the agent, unique within one stream, never 0.
 * Stack id 0 in an alloc event means "no Python stack" (e.g. raw domain without GIL). */
#define HP_NO_STACK 0u

typedef enum {
  HP_MSG_HELLO = 1,
  HP_MSG_FRAME_DEF = 2,
  HP_MSG_STACK_DEF = 3,
  HP_MSG_EVENTS = 4,
  HP_MSG_COUNTERS = 5,
  HP_MSG_GOODBYE = 6,
  HP_MSG_THREAD_DEF = 7,
  HP_MSG_MARKER = 8,
} hp_msg_type;

/* Allocator domains: PEP 445's three, and native code's malloc family and anonymous
 * mmap outside the interpreter. */
typedef enum {
  HP_DOMAIN_RAW = 0,
  HP_DOMAIN_MEM = 1,
  HP_DOMAIN_OBJ = 2,
  HP_DOMAIN_NATIVE = 3
} hp_domain;
/* REATTRIBUTE: a still-live sampled block was handed out again by the interpreter (a
 * free list), so it now belongs to another allocation site (PROTOCOL.md 2.4). */
typedef enum { HP_EV_ALLOC = 0, HP_EV_FREE = 1, HP_EV_REATTRIBUTE = 2 } hp_event_kind;

/* GOODBYE end_reason. */
typedef enum {
  HP_END_STOPPED = 0,        /* profiling stopped normally */
  HP_END_HOOKS_REPLACED = 1, /* someone else replaced or removed the allocator hooks */
} hp_end_reason;

/* A length-delimited string; not NUL-terminated. */
typedef struct {
  const char *ptr;
  uint32_t len;
} hp_str;

/* One size bucket of the original heapprof's sampling rates: allocations of at most
 * max_size bytes (and above the previous bucket's) are sampled with probability rate. */
typedef struct {
  uint64_t max_size;
  double rate; /* 0 < rate <= 1 */
} hp_bucket;

typedef struct {
  uint32_t version; /* HP_PROTO_VERSION */
  int64_t pid, ppid;
  uint32_t argc;
  const hp_str *argv;             /* argc entries */
  hp_str executable;              /* sys.executable */
  hp_str python_version;          /* e.g. "3.11.7" */
  uint64_t start_wall_ns;         /* CLOCK_REALTIME at start, ns since the Unix epoch */
  uint64_t start_mono_ns;         /* CLOCK_MONOTONIC at the same moment: event ts base */
  uint64_t sample_interval_bytes; /* mean Poisson interval; 1 = every allocation;
                                      0 = bucket sampling (see buckets) */
  uint32_t max_stack_depth;
  uint32_t nbuckets;
  const hp_bucket *buckets; /* nbuckets entries, max_size increasing */
} hp_hello;

typedef struct {
  uint32_t frame_id; /* != 0 */
  hp_str function;   /* qualified name */
  hp_str filename;
  int32_t lineno; /* >= 0; 0 when unknown */
} hp_frame_def;

typedef struct {
  uint32_t stack_id;         /* != 0 */
  uint8_t truncated;         /* 1 if deeper frames were cut at max_stack_depth */
  uint32_t depth;            /* number of frame ids, <= HP_MAX_STACK_DEPTH */
  const uint32_t *frame_ids; /* innermost first; each defined by an earlier FRAME_DEF */
} hp_stack_def;

/* One event. For HP_EV_FREE only ts_ns, thread_id and address are meaningful; for
 * HP_EV_REATTRIBUTE also stack_id. thread_id is the kernel thread id (gettid()).
 * ts_ns is CLOCK_MONOTONIC; wall time = hello.start_wall_ns + (ts_ns - hello.start_mono_ns).
 * Within a stream events are in causal order: a free is sent before its address can be
 * handed out again, so the daemon pairs a free with the latest alloc at that address. */
typedef struct {
  uint8_t kind;      /* hp_event_kind */
  uint8_t domain;    /* hp_domain (alloc only) */
  uint32_t stack_id; /* alloc and reattribute; HP_NO_STACK or a defined stack */
  uint64_t ts_ns;
  uint64_t thread_id;
  uint64_t address;
  uint64_t size;      /* requested bytes (alloc only) */
  uint64_t est_bytes; /* unbiased estimate this sample stands for (alloc only) */
} hp_event;

typedef struct {
  uint32_t count;   /* <= HP_MAX_BATCH_EVENTS */
  hp_event *events; /* decoded: the decoder's scratch, which the receiver
                                      may rewrite (the daemon renumbers stack ids) */
} hp_events;

/* Cumulative totals since HELLO; the latest one wins. */
typedef struct {
  uint64_t ts_ns;
  uint64_t events_dropped;        /* records the agent could not send */
  uint64_t sample_interval_bytes; /* current interval, if the agent adapted it */
  uint64_t events_sent;           /* events committed to the stream (pushed to the ring) */
} hp_counters;

typedef struct {
  uint64_t ts_ns;          /* CLOCK_MONOTONIC at stop */
  uint64_t events_dropped; /* final cumulative total */
  uint32_t end_reason;     /* hp_end_reason */
} hp_goodbye;

/* The name of one thread of the stream; sent again when it changes (the latest wins). */
typedef struct {
  uint64_t thread_id; /* as in events */
  hp_str name;
} hp_thread_def;

/* A timestamped marker from the program (heapprof.mark(label)). */
typedef struct {
  uint64_t ts_ns; /* CLOCK_MONOTONIC */
  hp_str label;
} hp_marker;

typedef struct {
  hp_msg_type type;
  union {
    hp_hello hello;
    hp_frame_def frame_def;
    hp_stack_def stack_def;
    hp_events events;
    hp_counters counters;
    hp_goodbye goodbye;
    hp_thread_def thread_def;
    hp_marker marker;
  } u;
} hp_msg;

/* ---- Encoder: appends complete frames (header + payload) to a growable buffer. ---- */
typedef struct hp_encoder hp_encoder; /* opaque; uses libc malloc, never PyMem_* */

hp_encoder *hp_encoder_new(size_t initial_capacity); /* NULL on OOM */
void hp_encoder_free(hp_encoder *e);                 /* NULL is a no-op */
/* Each returns 0, or -HP_ENOMEM / -HP_ELEN / -HP_ERANGE / -HP_ETOOBIG; on failure the
 * buffer is left as it was before the call. */
int hp_encode_hello(hp_encoder *e, const hp_hello *m);
int hp_encode_frame_def(hp_encoder *e, const hp_frame_def *m);
int hp_encode_stack_def(hp_encoder *e, const hp_stack_def *m);
int hp_encode_events(hp_encoder *e, const hp_event *events, uint32_t count);
int hp_encode_counters(hp_encoder *e, const hp_counters *m);
int hp_encode_goodbye(hp_encoder *e, const hp_goodbye *m);
int hp_encode_thread_def(hp_encoder *e, const hp_thread_def *m);
int hp_encode_marker(hp_encoder *e, const hp_marker *m);
/* Bytes encoded so far; borrowed until the next encode, reset or free. */
const uint8_t *hp_encoder_data(const hp_encoder *e, size_t *len);
void hp_encoder_reset(hp_encoder *e); /* keeps capacity */

/* ---- Framer: reassembles frames from a byte stream delivered in arbitrary pieces. ---- */
typedef struct hp_framer hp_framer; /* opaque; memory bounded by max_frame + one read */

hp_framer *hp_framer_new(uint32_t max_frame); /* 0 means HP_MAX_FRAME_BYTES */
void hp_framer_free(hp_framer *f);
/* Copies len bytes in. 0, or -HP_ENOMEM. */
int hp_framer_feed(hp_framer *f, const uint8_t *data, size_t len);
/* 1 and sets *payload and *len (borrowed until the next feed/next/free) when a whole frame
 * is buffered; 0 when more bytes are needed; -HP_ETOOBIG when the announced length
 * exceeds max_frame (the stream cannot be resynchronised after that), and then *len is
 * the announced length, so that messages can name it (on this and every later call). */
int hp_framer_next(hp_framer *f, const uint8_t **payload, uint32_t *len);
size_t hp_framer_buffered(const hp_framer *f); /* bytes held, for bounds/tests */

/* ---- Decoder: validates one payload into an hp_msg. ---- */
typedef struct hp_decoder hp_decoder; /* opaque; reusable scratch for one stream */

hp_decoder *hp_decoder_new(void);
void hp_decoder_free(hp_decoder *d);
/* 0 and fills *out, or a negative -HP_E* code. Validates every field's type, range and
 * length; never reads outside [payload, payload+len); never aborts. */
int hp_decoder_decode(hp_decoder *d, const uint8_t *payload, size_t len, hp_msg *out);
/* Precise description of the last failure, e.g. "STACK_DEF field 4 (frame_ids): 600
 * entries exceed the limit of 512". Borrowed; "" after a success. */
const char *hp_decoder_error(const hp_decoder *d);

const char *hp_msg_type_name(int type); /* "HELLO", ...; "unknown" */

#endif /* HP_PROTO_H */
