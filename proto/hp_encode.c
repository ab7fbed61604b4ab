/* hp_encode.c — packs heapprof messages into complete frames (agent side).
 *
 * The agent's sender thread calls these; nothing here touches Python or blocks. Each
 * call reserves the 4-byte length header, packs the message with msgpack-c's packer
 * straight into our own growable buffer, then backfills the length. A refused message
 * (over a limit, out of memory) leaves the buffer exactly as it was, so the caller can
 * drop one message without losing the frames already queued. Layouts: PROTOCOL.md. */
#include <string.h>

#include <msgpack.h>

#include "hp_proto_int.h"

struct hp_encoder {
  uint8_t *buf; /* frames encoded so far: [0, len) */
  size_t len;
  size_t cap;
  size_t frame_start; /* offset of the header of the frame being packed */
  int err;            /* why the write callback refused: -HP_ENOMEM or -HP_ETOOBIG */
};

hp_encoder *hp_encoder_new(size_t initial_capacity)
{
  hp_encoder *e = hp_proto_malloc(sizeof(*e));
  if (e == NULL)
    return NULL;
  memset(e, 0, sizeof(*e));
  if (initial_capacity < 64)
    initial_capacity = 64;
  e->buf = hp_proto_malloc(initial_capacity);
  if (e->buf == NULL)
    goto out_free_encoder;
  e->cap = initial_capacity;
  return e;

out_free_encoder:
  hp_proto_free(e);
  return NULL;
}

void hp_encoder_free(hp_encoder *e)
{
  if (e == NULL)
    return;
  hp_proto_free(e->buf);
  hp_proto_free(e);
}

const uint8_t *hp_encoder_data(const hp_encoder *e, size_t *len)
{
  *len = e->len;
  return e->buf;
}

void hp_encoder_reset(hp_encoder *e)
{
  e->len = 0;
}

/* Slow path of the write callback. Refuses to grow a frame past the frame limit, so
 * an oversized message costs at most HP_MAX_FRAME_BYTES of buffer, not its full size. */
static HP_NOINLINE int enc_grow(hp_encoder *e, size_t need)
{
  size_t payload = e->len - e->frame_start - HP_FRAME_HEADER_BYTES;
  if (payload > HP_MAX_FRAME_BYTES || need > HP_MAX_FRAME_BYTES - payload) {
    e->err = -HP_ETOOBIG;
    return -1;
  }
  size_t want = e->len + need;
  size_t cap = e->cap * 2;
  if (cap < want)
    cap = want;
  uint8_t *nb = hp_proto_realloc(e->buf, cap);
  if (nb == NULL) {
    e->err = -HP_ENOMEM;
    return -1;
  }
  e->buf = nb;
  e->cap = cap;
  return 0;
}

static int enc_write(void *data, const char *buf, size_t len)
{
  hp_encoder *e = data;
  if (HP_UNLIKELY(e->cap - e->len < len) && enc_grow(e, len) < 0)
    return -1;
  memcpy(e->buf + e->len, buf, len);
  e->len += len;
  return 0;
}

/* Reserves the header and points a packer at the buffer. */
static int frame_begin(hp_encoder *e, msgpack_packer *pk)
{
  e->frame_start = e->len;
  e->err = 0;
  if (e->cap - e->len < HP_FRAME_HEADER_BYTES) {
    /* Header bytes do not count against the payload limit. */
    size_t cap = e->cap * 2 + HP_FRAME_HEADER_BYTES;
    uint8_t *nb = hp_proto_realloc(e->buf, cap);
    if (nb == NULL)
      return -HP_ENOMEM;
    e->buf = nb;
    e->cap = cap;
  }
  e->len += HP_FRAME_HEADER_BYTES;
  msgpack_packer_init(pk, e, enc_write);
  return 0;
}

/* Backfills the big-endian payload length, or rolls the buffer back on failure. */
static int frame_end(hp_encoder *e, int pack_rc)
{
  size_t payload = e->len - e->frame_start - HP_FRAME_HEADER_BYTES;
  if (pack_rc == 0 && payload > HP_MAX_FRAME_BYTES)
    e->err = -HP_ETOOBIG; /* grew into capacity left by an earlier frame */
  if (pack_rc != 0 || e->err != 0) {
    e->len = e->frame_start;
    return e->err != 0 ? e->err : -HP_ENOMEM;
  }
  uint32_t n = (uint32_t)payload;
  uint8_t *h = e->buf + e->frame_start;
  h[0] = (uint8_t)(n >> 24);
  h[1] = (uint8_t)(n >> 16);
  h[2] = (uint8_t)(n >> 8);
  h[3] = (uint8_t)n;
  return 0;
}

static int pack_str(msgpack_packer *pk, const hp_str *s)
{
  int rc = msgpack_pack_str(pk, s->len);
  if (s->len > 0)
    rc |= msgpack_pack_str_body(pk, s->ptr, s->len);
  return rc;
}

int hp_encode_hello(hp_encoder *e, const hp_hello *m)
{
  msgpack_packer pk;
  int rc = hp_check_hello(m, NULL);
  if (rc < 0)
    return rc;
  if ((rc = frame_begin(e, &pk)) < 0)
    return rc;
  rc = msgpack_pack_array(&pk, HP_HELLO_NELEM);
  rc |= msgpack_pack_uint8(&pk, HP_MSG_HELLO);
  rc |= msgpack_pack_str_with_body(&pk, HP_PROTO_MAGIC, strlen(HP_PROTO_MAGIC));
  rc |= msgpack_pack_uint32(&pk, m->version);
  rc |= msgpack_pack_int64(&pk, m->pid);
  rc |= msgpack_pack_int64(&pk, m->ppid);
  rc |= msgpack_pack_array(&pk, m->argc);
  for (uint32_t i = 0; i < m->argc && rc == 0; i++)
    rc |= pack_str(&pk, &m->argv[i]);
  rc |= pack_str(&pk, &m->executable);
  rc |= pack_str(&pk, &m->python_version);
  rc |= msgpack_pack_uint64(&pk, m->start_wall_ns);
  rc |= msgpack_pack_uint64(&pk, m->start_mono_ns);
  rc |= msgpack_pack_uint64(&pk, m->sample_interval_bytes);
  rc |= msgpack_pack_uint32(&pk, m->max_stack_depth);
  rc |= msgpack_pack_array(&pk, m->nbuckets);
  for (uint32_t i = 0; i < m->nbuckets; i++) {
    rc |= msgpack_pack_array(&pk, HP_BUCKET_NELEM);
    rc |= msgpack_pack_uint64(&pk, m->buckets[i].max_size);
    rc |= msgpack_pack_double(&pk, m->buckets[i].rate);
  }
  return frame_end(e, rc);
}

int hp_encode_frame_def(hp_encoder *e, const hp_frame_def *m)
{
  msgpack_packer pk;
  int rc = hp_check_frame_def(m, NULL);
  if (rc < 0)
    return rc;
  if ((rc = frame_begin(e, &pk)) < 0)
    return rc;
  rc = msgpack_pack_array(&pk, HP_FRAME_DEF_NELEM);
  rc |= msgpack_pack_uint8(&pk, HP_MSG_FRAME_DEF);
  rc |= msgpack_pack_uint32(&pk, m->frame_id);
  rc |= pack_str(&pk, &m->function);
  rc |= pack_str(&pk, &m->filename);
  rc |= msgpack_pack_int32(&pk, m->lineno);
  return frame_end(e, rc);
}

int hp_encode_stack_def(hp_encoder *e, const hp_stack_def *m)
{
  msgpack_packer pk;
  int rc = hp_check_stack_def(m, NULL);
  if (rc < 0)
    return rc;
  if ((rc = frame_begin(e, &pk)) < 0)
    return rc;
  rc = msgpack_pack_array(&pk, HP_STACK_DEF_NELEM);
  rc |= msgpack_pack_uint8(&pk, HP_MSG_STACK_DEF);
  rc |= msgpack_pack_uint32(&pk, m->stack_id);
  rc |= m->truncated ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk);
  rc |= msgpack_pack_array(&pk, m->depth);
  for (uint32_t i = 0; i < m->depth; i++)
    rc |= msgpack_pack_uint32(&pk, m->frame_ids[i]);
  return frame_end(e, rc);
}

/* Timestamps travel as signed deltas from the previous event (the first from the
 * batch's base_ts): a few bytes instead of nine. Signed, because the ring hands the
 * sender events of different threads in push order, not in timestamp order. */
int hp_encode_events(hp_encoder *e, const hp_event *events, uint32_t count)
{
  msgpack_packer pk;
  int rc;
  if (count > HP_MAX_BATCH_EVENTS)
    return -HP_ELEN;
  if (count > 0 && events == NULL)
    return -HP_EINVAL;
  for (uint32_t i = 0; i < count; i++)
    if ((rc = hp_check_event(&events[i], i, NULL)) < 0)
      return rc;
  if ((rc = frame_begin(e, &pk)) < 0)
    return rc;
  uint64_t prev = count > 0 ? events[0].ts_ns : 0;
  rc = msgpack_pack_array(&pk, HP_EVENTS_NELEM);
  rc |= msgpack_pack_uint8(&pk, HP_MSG_EVENTS);
  rc |= msgpack_pack_uint64(&pk, prev);
  rc |= msgpack_pack_array(&pk, count);
  for (uint32_t i = 0; i < count && rc == 0; i++) {
    const hp_event *ev = &events[i];
    /* Both timestamps are in 0..INT64_MAX (checked above), so this cannot overflow. */
    int64_t delta = (int64_t)ev->ts_ns - (int64_t)prev;
    prev = ev->ts_ns;
    if (ev->kind == HP_EV_ALLOC) {
      rc |= msgpack_pack_array(&pk, HP_ALLOC_NELEM);
      rc |= msgpack_pack_uint8(&pk, HP_EV_ALLOC);
      rc |= msgpack_pack_int64(&pk, delta);
      rc |= msgpack_pack_uint64(&pk, ev->thread_id);
      rc |= msgpack_pack_uint8(&pk, ev->domain);
      rc |= msgpack_pack_uint64(&pk, ev->address);
      rc |= msgpack_pack_uint64(&pk, ev->size);
      rc |= msgpack_pack_uint64(&pk, ev->est_bytes);
      rc |= msgpack_pack_uint32(&pk, ev->stack_id);
    } else if (ev->kind == HP_EV_FREE) {
      rc |= msgpack_pack_array(&pk, HP_FREE_NELEM);
      rc |= msgpack_pack_uint8(&pk, HP_EV_FREE);
      rc |= msgpack_pack_int64(&pk, delta);
      rc |= msgpack_pack_uint64(&pk, ev->thread_id);
      rc |= msgpack_pack_uint64(&pk, ev->address);
    } else {
      rc |= msgpack_pack_array(&pk, HP_REATTR_NELEM);
      rc |= msgpack_pack_uint8(&pk, HP_EV_REATTRIBUTE);
      rc |= msgpack_pack_int64(&pk, delta);
      rc |= msgpack_pack_uint64(&pk, ev->thread_id);
      rc |= msgpack_pack_uint64(&pk, ev->address);
      rc |= msgpack_pack_uint32(&pk, ev->stack_id);
    }
  }
  return frame_end(e, rc);
}

int hp_encode_counters(hp_encoder *e, const hp_counters *m)
{
  msgpack_packer pk;
  int rc = hp_check_counters(m, NULL);
  if (rc < 0)
    return rc;
  if ((rc = frame_begin(e, &pk)) < 0)
    return rc;
  rc = msgpack_pack_array(&pk, HP_COUNTERS_NELEM);
  rc |= msgpack_pack_uint8(&pk, HP_MSG_COUNTERS);
  rc |= msgpack_pack_uint64(&pk, m->ts_ns);
  rc |= msgpack_pack_uint64(&pk, m->events_dropped);
  rc |= msgpack_pack_uint64(&pk, m->sample_interval_bytes);
  rc |= msgpack_pack_uint64(&pk, m->events_sent);
  return frame_end(e, rc);
}

int hp_encode_goodbye(hp_encoder *e, const hp_goodbye *m)
{
  msgpack_packer pk;
  int rc = hp_check_goodbye(m, NULL);
  if (rc < 0)
    return rc;
  if ((rc = frame_begin(e, &pk)) < 0)
    return rc;
  rc = msgpack_pack_array(&pk, HP_GOODBYE_NELEM);
  rc |= msgpack_pack_uint8(&pk, HP_MSG_GOODBYE);
  rc |= msgpack_pack_uint64(&pk, m->ts_ns);
  rc |= msgpack_pack_uint64(&pk, m->events_dropped);
  rc |= msgpack_pack_uint32(&pk, m->end_reason);
  return frame_end(e, rc);
}

int hp_encode_thread_def(hp_encoder *e, const hp_thread_def *m)
{
  msgpack_packer pk;
  int rc = hp_check_thread_def(m, NULL);
  if (rc < 0)
    return rc;
  if ((rc = frame_begin(e, &pk)) < 0)
    return rc;
  rc = msgpack_pack_array(&pk, HP_THREAD_DEF_NELEM);
  rc |= msgpack_pack_uint8(&pk, HP_MSG_THREAD_DEF);
  rc |= msgpack_pack_uint64(&pk, m->thread_id);
  rc |= pack_str(&pk, &m->name);
  return frame_end(e, rc);
}

int hp_encode_marker(hp_encoder *e, const hp_marker *m)
{
  msgpack_packer pk;
  int rc = hp_check_marker(m, NULL);
  if (rc < 0)
    return rc;
  if ((rc = frame_begin(e, &pk)) < 0)
    return rc;
  rc = msgpack_pack_array(&pk, HP_MARKER_NELEM);
  rc |= msgpack_pack_uint8(&pk, HP_MSG_MARKER);
  rc |= msgpack_pack_uint64(&pk, m->ts_ns);
  rc |= pack_str(&pk, &m->label);
  return frame_end(e, rc);
}
