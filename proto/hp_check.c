/* hp_check.c — the semantic rules of each message, shared by encoder and decoder.
 *
 * One set of rules on both sides of the socket: the agent's encoder refuses exactly
 * what heapprofd's decoder would refuse, so a stream built by hp_encode_* never ends in
 * a protocol error. The rules are those of proto/PROTOCOL.md, section "Messages". */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>

#include "hp_proto_int.h"

/* The names of each message's elements by position, laid out by hand. */
/* clang-format off */
static const char *const hello_names[] = {
  "?",
  "type",
  "magic",
  "version",
  "pid",
  "ppid",
  "argv",
  "executable",
  "python_version",
  "start_wall_ns",
  "start_mono_ns",
  "sample_interval_bytes",
  "max_stack_depth",
  "buckets",
};
static const char *const frame_def_names[] = {
  "?", "type", "frame_id", "function", "filename", "lineno",
};
static const char *const stack_def_names[] = {
  "?", "type", "stack_id", "truncated", "frame_ids",
};
static const char *const events_names[] = {"?", "type", "base_ts", "events"};
static const char *const counters_names[] = {
  "?", "type", "ts", "events_dropped", "sample_interval_bytes", "events_sent",
};
static const char *const goodbye_names[] = {
  "?", "type", "ts", "events_dropped", "end_reason",
};
static const char *const thread_def_names[] = {"?", "type", "thread_id", "name"};
static const char *const marker_names[] = {"?", "type", "ts", "label"};
static const char *const alloc_names[] = {
  "?",       "kind", "ts_delta",  "thread_id", "domain",
  "address", "size", "est_bytes", "stack_id",
};
static const char *const free_names[] = {"?", "kind", "ts_delta", "thread_id", "address"};
static const char *const reattr_names[] = {
  "?", "kind", "ts_delta", "thread_id", "address", "stack_id",
};
/* clang-format on */

#define HP_NAME_AT(tab, i) ((i) < sizeof(tab) / sizeof((tab)[0]) ? (tab)[i] : "?")

const char *hp_proto_field_name(int msg_type, unsigned field)
{
  switch (msg_type) {
  case HP_MSG_HELLO: return HP_NAME_AT(hello_names, field);
  case HP_MSG_FRAME_DEF: return HP_NAME_AT(frame_def_names, field);
  case HP_MSG_STACK_DEF: return HP_NAME_AT(stack_def_names, field);
  case HP_MSG_EVENTS: return HP_NAME_AT(events_names, field);
  case HP_MSG_COUNTERS: return HP_NAME_AT(counters_names, field);
  case HP_MSG_GOODBYE: return HP_NAME_AT(goodbye_names, field);
  case HP_MSG_THREAD_DEF: return HP_NAME_AT(thread_def_names, field);
  case HP_MSG_MARKER: return HP_NAME_AT(marker_names, field);
  default: return field == HP_F_TYPE ? "type" : "?";
  }
}

const char *hp_proto_event_field_name(unsigned kind, unsigned field)
{
  if (kind == HP_EV_FREE)
    return HP_NAME_AT(free_names, field);
  if (kind == HP_EV_REATTRIBUTE)
    return HP_NAME_AT(reattr_names, field);
  return HP_NAME_AT(alloc_names, field);
}

const char *hp_msg_type_name(int type)
{
  switch (type) {
  case HP_MSG_HELLO: return "HELLO";
  case HP_MSG_FRAME_DEF: return "FRAME_DEF";
  case HP_MSG_STACK_DEF: return "STACK_DEF";
  case HP_MSG_EVENTS: return "EVENTS";
  case HP_MSG_COUNTERS: return "COUNTERS";
  case HP_MSG_GOODBYE: return "GOODBYE";
  case HP_MSG_THREAD_DEF: return "THREAD_DEF";
  case HP_MSG_MARKER: return "MARKER";
  default: return "unknown";
  }
}

int hp_proto_fail(hp_errbuf *eb, int code, int msg_type, unsigned field, const char *fmt,
                  ...)
{
  if (eb == NULL || eb->buf == NULL || eb->size == 0)
    return code;
  int n = snprintf(eb->buf, eb->size, "%s field %u (%s): ", hp_msg_type_name(msg_type),
                   field, hp_proto_field_name(msg_type, field));
  if (n >= 0 && (size_t)n < eb->size) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(eb->buf + n, eb->size - (size_t)n, fmt, ap);
    va_end(ap);
  }
  return code;
}

int hp_proto_fail_event(hp_errbuf *eb, int code, uint32_t index, unsigned kind,
                        unsigned field, const char *fmt, ...)
{
  if (eb == NULL || eb->buf == NULL || eb->size == 0)
    return code;
  int n = snprintf(eb->buf, eb->size,
                   "EVENTS field %u (events): event %" PRIu32 " field %u (%s): ",
                   (unsigned)HP_F_EVENTS_EVENTS, index, field,
                   hp_proto_event_field_name(kind, field));
  if (n >= 0 && (size_t)n < eb->size) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(eb->buf + n, eb->size - (size_t)n, fmt, ap);
    va_end(ap);
  }
  return code;
}

/* Messages for the common failures, so that every rule reads the same way. */
#define FAIL_LEN(eb, t, f, n, lim, unit) \
  hp_proto_fail(eb, -HP_ELEN, t, f, "%" PRIu64 " " unit " exceed the limit of %" PRIu64, \
                (uint64_t)(n), (uint64_t)(lim))
#define FAIL_RANGE_U(eb, t, f, v, lo, hi) \
  hp_proto_fail(eb, -HP_ERANGE, t, f, "%" PRIu64 " is out of range %" PRIu64 "..%" PRIu64, \
                (uint64_t)(v), (uint64_t)(lo), (uint64_t)(hi))
#define FAIL_RANGE_I(eb, t, f, v, lo, hi) \
  hp_proto_fail(eb, -HP_ERANGE, t, f, "%" PRId64 " is out of range %" PRId64 "..%" PRId64, \
                (int64_t)(v), (int64_t)(lo), (int64_t)(hi))

static int check_str(const hp_str *s, int t, unsigned f, hp_errbuf *eb)
{
  if (s->len > 0 && s->ptr == NULL)
    return hp_proto_fail(eb, -HP_EINVAL, t, f, "NULL string of %" PRIu32 " bytes", s->len);
  if (s->len > HP_MAX_STR_BYTES)
    return FAIL_LEN(eb, t, f, s->len, HP_MAX_STR_BYTES, "bytes");
  return 0;
}

int hp_check_hello(const hp_hello *m, hp_errbuf *eb)
{
  const int t = HP_MSG_HELLO;
  int rc;
  if (m->version != HP_PROTO_VERSION)
    return hp_proto_fail(eb, -HP_EVERSION, t, HP_F_HELLO_VERSION,
                         "version %" PRIu32 " is not supported (this heapprof speaks %u)",
                         m->version, HP_PROTO_VERSION);
  if (m->pid < 1 || m->pid > INT32_MAX)
    return FAIL_RANGE_I(eb, t, HP_F_HELLO_PID, m->pid, 1, INT32_MAX);
  if (m->ppid < 0 || m->ppid > INT32_MAX)
    return FAIL_RANGE_I(eb, t, HP_F_HELLO_PPID, m->ppid, 0, INT32_MAX);
  if (m->argc > HP_MAX_ARGV)
    return FAIL_LEN(eb, t, HP_F_HELLO_ARGV, m->argc, HP_MAX_ARGV, "entries");
  if (m->argc > 0 && m->argv == NULL)
    return hp_proto_fail(eb, -HP_EINVAL, t, HP_F_HELLO_ARGV,
                         "NULL array of %" PRIu32 " entries", m->argc);
  for (uint32_t i = 0; i < m->argc; i++) {
    if (m->argv[i].len > 0 && m->argv[i].ptr == NULL)
      return hp_proto_fail(eb, -HP_EINVAL, t, HP_F_HELLO_ARGV,
                           "entry %" PRIu32 " is a NULL string", i);
    if (m->argv[i].len > HP_MAX_STR_BYTES)
      return hp_proto_fail(eb, -HP_ELEN, t, HP_F_HELLO_ARGV,
                           "entry %" PRIu32 ": %" PRIu32 " bytes exceed the limit of %u", i,
                           m->argv[i].len, HP_MAX_STR_BYTES);
  }
  if ((rc = check_str(&m->executable, t, HP_F_HELLO_EXECUTABLE, eb)) < 0)
    return rc;
  if ((rc = check_str(&m->python_version, t, HP_F_HELLO_PYVER, eb)) < 0)
    return rc;
  if (m->start_wall_ns > HP_MAX_I64)
    return FAIL_RANGE_U(eb, t, HP_F_HELLO_WALL, m->start_wall_ns, 0, HP_MAX_I64);
  if (m->start_mono_ns > HP_MAX_I64)
    return FAIL_RANGE_U(eb, t, HP_F_HELLO_MONO, m->start_mono_ns, 0, HP_MAX_I64);
  if (m->sample_interval_bytes > HP_MAX_I64)
    return FAIL_RANGE_U(eb, t, HP_F_HELLO_INTERVAL, m->sample_interval_bytes, 0,
                        HP_MAX_I64);
  if (m->max_stack_depth < 1 || m->max_stack_depth > HP_MAX_STACK_DEPTH)
    return FAIL_RANGE_U(eb, t, HP_F_HELLO_DEPTH, m->max_stack_depth, 1, HP_MAX_STACK_DEPTH);
  if (m->nbuckets > HP_MAX_BUCKETS)
    return FAIL_LEN(eb, t, HP_F_HELLO_BUCKETS, m->nbuckets, HP_MAX_BUCKETS, "entries");
  /* Buckets describe the sampling only when the interval says "buckets"; accepting
   * them otherwise would leave the stored session ambiguous. */
  if (m->sample_interval_bytes == 0 && m->nbuckets == 0)
    return hp_proto_fail(eb, -HP_ERANGE, t, HP_F_HELLO_BUCKETS,
                         "empty, but sample_interval_bytes 0 means bucket sampling");
  if (m->sample_interval_bytes != 0 && m->nbuckets != 0)
    return hp_proto_fail(eb, -HP_ERANGE, t, HP_F_HELLO_BUCKETS,
                         "%" PRIu32 " entries, but must be empty when sample_interval_bytes"
                         " is not 0",
                         m->nbuckets);
  if (m->nbuckets > 0 && m->buckets == NULL)
    return hp_proto_fail(eb, -HP_EINVAL, t, HP_F_HELLO_BUCKETS,
                         "NULL array of %" PRIu32 " entries", m->nbuckets);
  for (uint32_t i = 0; i < m->nbuckets; i++) {
    const hp_bucket *b = &m->buckets[i];
    /* max_size may use all 64 bits: UINT64_MAX is the natural "every larger size"
     * bucket, and the daemon stores buckets as JSON text, not as INTEGER columns. */
    if (b->max_size < 1)
      return hp_proto_fail(eb, -HP_ERANGE, t, HP_F_HELLO_BUCKETS,
                           "bucket %" PRIu32 " max_size 0 is out of range 1..%" PRIu64, i,
                           UINT64_MAX);
    if (i > 0 && b->max_size <= m->buckets[i - 1].max_size)
      return hp_proto_fail(eb, -HP_ERANGE, t, HP_F_HELLO_BUCKETS,
                           "bucket %" PRIu32 " max_size %" PRIu64
                           " is not above the previous %" PRIu64,
                           i, b->max_size, m->buckets[i - 1].max_size);
    /* Written so that NaN fails too. */
    if (!(isfinite(b->rate) && b->rate > 0.0 && b->rate <= 1.0))
      return hp_proto_fail(eb, -HP_ERANGE, t, HP_F_HELLO_BUCKETS,
                           "bucket %" PRIu32 " rate %g is not in (0, 1]", i, b->rate);
  }
  return 0;
}

int hp_check_frame_def(const hp_frame_def *m, hp_errbuf *eb)
{
  const int t = HP_MSG_FRAME_DEF;
  int rc;
  if (m->frame_id == 0)
    return FAIL_RANGE_U(eb, t, HP_F_FRAME_ID, 0, 1, UINT32_MAX);
  if ((rc = check_str(&m->function, t, HP_F_FRAME_FUNCTION, eb)) < 0)
    return rc;
  if ((rc = check_str(&m->filename, t, HP_F_FRAME_FILENAME, eb)) < 0)
    return rc;
  if (m->lineno < 0)
    return FAIL_RANGE_I(eb, t, HP_F_FRAME_LINENO, m->lineno, 0, INT32_MAX);
  return 0;
}

int hp_check_stack_def(const hp_stack_def *m, hp_errbuf *eb)
{
  const int t = HP_MSG_STACK_DEF;
  if (m->stack_id == HP_NO_STACK)
    return hp_proto_fail(eb, -HP_ERANGE, t, HP_F_STACK_ID,
                         "0 is reserved for \"no stack\" (range 1..%" PRIu32 ")",
                         UINT32_MAX);
  if (m->truncated > 1)
    return FAIL_RANGE_U(eb, t, HP_F_STACK_TRUNCATED, m->truncated, 0, 1);
  if (m->depth > HP_MAX_STACK_DEPTH)
    return FAIL_LEN(eb, t, HP_F_STACK_FRAME_IDS, m->depth, HP_MAX_STACK_DEPTH, "entries");
  if (m->depth == 0)
    return hp_proto_fail(eb, -HP_ELEN, t, HP_F_STACK_FRAME_IDS,
                         "empty; a stack has at least one frame");
  if (m->frame_ids == NULL)
    return hp_proto_fail(eb, -HP_EINVAL, t, HP_F_STACK_FRAME_IDS,
                         "NULL array of %" PRIu32 " entries", m->depth);
  for (uint32_t i = 0; i < m->depth; i++)
    if (m->frame_ids[i] == 0)
      return hp_proto_fail(eb, -HP_ERANGE, t, HP_F_STACK_FRAME_IDS,
                           "entry %" PRIu32 " is frame id 0, which is reserved", i);
  return 0;
}

int hp_check_counters(const hp_counters *m, hp_errbuf *eb)
{
  const int t = HP_MSG_COUNTERS;
  if (m->ts_ns > HP_MAX_I64)
    return FAIL_RANGE_U(eb, t, HP_F_COUNTERS_TS, m->ts_ns, 0, HP_MAX_I64);
  if (m->events_dropped > HP_MAX_I64)
    return FAIL_RANGE_U(eb, t, HP_F_COUNTERS_DROPPED, m->events_dropped, 0, HP_MAX_I64);
  if (m->sample_interval_bytes > HP_MAX_I64)
    return FAIL_RANGE_U(eb, t, HP_F_COUNTERS_INTERVAL, m->sample_interval_bytes, 0,
                        HP_MAX_I64);
  if (m->events_sent > HP_MAX_I64)
    return FAIL_RANGE_U(eb, t, HP_F_COUNTERS_SENT, m->events_sent, 0, HP_MAX_I64);
  return 0;
}

int hp_check_goodbye(const hp_goodbye *m, hp_errbuf *eb)
{
  const int t = HP_MSG_GOODBYE;
  if (m->ts_ns > HP_MAX_I64)
    return FAIL_RANGE_U(eb, t, HP_F_GOODBYE_TS, m->ts_ns, 0, HP_MAX_I64);
  if (m->events_dropped > HP_MAX_I64)
    return FAIL_RANGE_U(eb, t, HP_F_GOODBYE_DROPPED, m->events_dropped, 0, HP_MAX_I64);
  /* Only the reasons PROTOCOL.md defines: a daemon cannot store a status it does not
   * know, and a new reason is a new protocol version. */
  if (m->end_reason > HP_END_HOOKS_REPLACED)
    return FAIL_RANGE_U(eb, t, HP_F_GOODBYE_REASON, m->end_reason, 0,
                        HP_END_HOOKS_REPLACED);
  return 0;
}

int hp_check_thread_def(const hp_thread_def *m, hp_errbuf *eb)
{
  return check_str(&m->name, HP_MSG_THREAD_DEF, HP_F_THREAD_NAME, eb);
}

int hp_check_marker(const hp_marker *m, hp_errbuf *eb)
{
  const int t = HP_MSG_MARKER;
  if (m->ts_ns > HP_MAX_I64)
    return FAIL_RANGE_U(eb, t, HP_F_MARKER_TS, m->ts_ns, 0, HP_MAX_I64);
  return check_str(&m->label, t, HP_F_MARKER_LABEL, eb);
}

#define FAIL_EV(eb, i, k, f, v, hi) \
  hp_proto_fail_event(eb, -HP_ERANGE, i, k, f, "%" PRIu64 " is out of range 0..%" PRIu64, \
                      (uint64_t)(v), (uint64_t)(hi))

int hp_check_event_slow(const hp_event *ev, uint32_t i, hp_errbuf *eb)
{
  if (ev->kind > HP_EV_REATTRIBUTE)
    return FAIL_EV(eb, i, ev->kind, HP_F_EV_KIND, ev->kind, HP_EV_REATTRIBUTE);
  if (ev->ts_ns > HP_MAX_I64)
    return hp_proto_fail_event(eb, -HP_ERANGE, i, ev->kind, HP_F_EV_TS,
                               "timestamp %" PRIu64 " is out of range 0..%" PRIu64,
                               ev->ts_ns, HP_MAX_I64);
  if (ev->kind != HP_EV_ALLOC)
    return 0;
  if (ev->domain > HP_DOMAIN_NATIVE)
    return FAIL_EV(eb, i, ev->kind, HP_F_EV_DOMAIN, ev->domain, HP_DOMAIN_NATIVE);
  if (ev->size > HP_MAX_I64)
    return FAIL_EV(eb, i, ev->kind, HP_F_EV_SIZE, ev->size, HP_MAX_I64);
  if (ev->est_bytes > HP_MAX_I64)
    return FAIL_EV(eb, i, ev->kind, HP_F_EV_EST, ev->est_bytes, HP_MAX_I64);
  return 0;
}
