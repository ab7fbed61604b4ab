/* hp_proto_int.h — internals shared by the files of the proto module only.
 *
 * The encoder and the decoder validate messages with the same functions (hp_check.c),
 * so that what one side refuses to send is exactly what the other side refuses to
 * accept. Element positions and limits follow proto/PROTOCOL.md; positions are
 * 1-based and element 1 of every message is its type, as in the error messages
 * ("STACK_DEF field 4 (frame_ids): ..."). */
#ifndef HP_PROTO_INT_H
#define HP_PROTO_INT_H

#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>

#include "hp_proto.h"

#if defined(__GNUC__)
#define HP_NOINLINE     __attribute__((noinline))
#define HP_COLD         __attribute__((cold))
#define HP_LIKELY(x)    __builtin_expect(!!(x), 1)
#define HP_UNLIKELY(x)  __builtin_expect(!!(x), 0)
#define HP_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define HP_NOINLINE
#define HP_COLD
#define HP_LIKELY(x)   (x)
#define HP_UNLIKELY(x) (x)
#define HP_PRINTF(f, a)
#endif

/* Integers that end up in SQLite INTEGER columns (timestamps, sizes, counters) must
 * fit in a signed 64-bit value. Addresses and thread ids are opaque 64-bit patterns. */
#define HP_MAX_I64 ((uint64_t)INT64_MAX)

/* Number of elements of each message array, including the type. */
#define HP_HELLO_NELEM      13u
#define HP_FRAME_DEF_NELEM  5u
#define HP_STACK_DEF_NELEM  4u
#define HP_EVENTS_NELEM     3u
#define HP_COUNTERS_NELEM   5u
#define HP_GOODBYE_NELEM    4u
#define HP_THREAD_DEF_NELEM 3u
#define HP_MARKER_NELEM     3u
#define HP_ALLOC_NELEM      8u /* [0, ts_delta, tid, domain, addr, size, est, stack_id] */
#define HP_FREE_NELEM       4u /* [1, ts_delta, tid, addr] */
#define HP_REATTR_NELEM     5u /* [2, ts_delta, tid, addr, stack_id] */
#define HP_BUCKET_NELEM     2u /* [max_size, rate] */

/* Element positions (1-based) named in errors. */
/* One line per message, laid out by hand. */
/* clang-format off */
enum {
  HP_F_TYPE = 1,
  HP_F_HELLO_MAGIC = 2,
  HP_F_HELLO_VERSION,
  HP_F_HELLO_PID,
  HP_F_HELLO_PPID,
  HP_F_HELLO_ARGV,
  HP_F_HELLO_EXECUTABLE,
  HP_F_HELLO_PYVER,
  HP_F_HELLO_WALL,
  HP_F_HELLO_MONO,
  HP_F_HELLO_INTERVAL,
  HP_F_HELLO_DEPTH,
  HP_F_HELLO_BUCKETS,
  HP_F_FRAME_ID = 2,
  HP_F_FRAME_FUNCTION,
  HP_F_FRAME_FILENAME,
  HP_F_FRAME_LINENO,
  HP_F_STACK_ID = 2,
  HP_F_STACK_TRUNCATED,
  HP_F_STACK_FRAME_IDS,
  HP_F_EVENTS_BASE_TS = 2,
  HP_F_EVENTS_EVENTS,
  HP_F_COUNTERS_TS = 2,
  HP_F_COUNTERS_DROPPED,
  HP_F_COUNTERS_INTERVAL,
  HP_F_COUNTERS_SENT,
  HP_F_GOODBYE_TS = 2,
  HP_F_GOODBYE_DROPPED,
  HP_F_GOODBYE_REASON,
  HP_F_THREAD_ID = 2,
  HP_F_THREAD_NAME,
  HP_F_MARKER_TS = 2,
  HP_F_MARKER_LABEL,
  /* inside one event */
  HP_F_EV_KIND = 1,
  HP_F_EV_TS,
  HP_F_EV_TID,
  HP_F_EV_DOMAIN,
  HP_F_EV_ADDR,
  HP_F_EV_SIZE,
  HP_F_EV_EST,
  HP_F_EV_STACK,
  HP_F_FREE_ADDR = 4,
  HP_F_REATTR_ADDR = 4,
  HP_F_REATTR_STACK,
};
/* clang-format on */

/* Where a precise message goes; NULL means the caller only wants the code. */
typedef struct {
  char *buf;
  size_t size;
} hp_errbuf;

/* Formats "<MSG> field <n> (<name>): <detail>" into eb (when not NULL) and returns
 * code. Kept out of line: it only runs on the failure path. */
int hp_proto_fail(hp_errbuf *eb, int code, int msg_type, unsigned field, const char *fmt,
                  ...) HP_NOINLINE HP_COLD HP_PRINTF(5, 6);
/* Like hp_proto_fail for a field of one event inside EVENTS. */
int hp_proto_fail_event(hp_errbuf *eb, int code, uint32_t index, unsigned kind,
                        unsigned field, const char *fmt, ...) HP_NOINLINE HP_COLD
  HP_PRINTF(6, 7);

/* Name of element `field` of a message of type msg_type ("frame_ids"); "?" if none. */
const char *hp_proto_field_name(int msg_type, unsigned field);
const char *hp_proto_event_field_name(unsigned kind, unsigned field);

/* Semantic checks of a whole message (ranges, lengths, non-zero ids). Return 0 or a
 * negative -HP_E* code, with the message in eb. The encoder runs them before
 * packing; the decoder after extracting the fields (types and container lengths
 * are its own business, since they must be checked before anything is built). */
int hp_check_hello(const hp_hello *m, hp_errbuf *eb);
int hp_check_frame_def(const hp_frame_def *m, hp_errbuf *eb);
int hp_check_stack_def(const hp_stack_def *m, hp_errbuf *eb);
int hp_check_counters(const hp_counters *m, hp_errbuf *eb);
int hp_check_goodbye(const hp_goodbye *m, hp_errbuf *eb);
int hp_check_thread_def(const hp_thread_def *m, hp_errbuf *eb);
int hp_check_marker(const hp_marker *m, hp_errbuf *eb);
int hp_check_event_slow(const hp_event *ev, uint32_t index, hp_errbuf *eb) HP_NOINLINE;

/* The per-event check runs once per event on both sides, so its passing path is
 * inline; the failing path finds and reports the offending field. */
static inline int hp_check_event(const hp_event *ev, uint32_t index, hp_errbuf *eb)
{
  if (HP_LIKELY((ev->kind == HP_EV_FREE || ev->kind == HP_EV_REATTRIBUTE) &&
                ev->ts_ns <= HP_MAX_I64))
    return 0;
  if (HP_LIKELY(ev->kind == HP_EV_ALLOC && ev->domain <= HP_DOMAIN_NATIVE &&
                ev->ts_ns <= HP_MAX_I64 && ev->size <= HP_MAX_I64 &&
                ev->est_bytes <= HP_MAX_I64))
    return 0;
  return hp_check_event_slow(ev, index, eb);
}

/* Allocation for everything in proto/ (hp_alloc.c): libc, never PyMem_*. */
void *hp_proto_malloc(size_t size);
void *hp_proto_realloc(void *p, size_t size);
void hp_proto_free(void *p);
/* Tests only: let n more allocations succeed, then fail every one until reset with
 * a negative n. */
void hp_proto_test_fail_alloc_after(long n);

#endif /* HP_PROTO_INT_H */
