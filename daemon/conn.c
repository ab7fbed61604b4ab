/* conn.c — per-connection decoding and stream-order checks (see hp_conn.h).
 * Pipeline position: server (libuv reads) -> conn -> store (via the sink). */
#include "hp_conn.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "hp_map.h"

typedef enum {
  EXPECT_HELLO = 0, /* nothing valid received yet */
  STREAMING,        /* HELLO accepted */
  DONE,             /* GOODBYE accepted */
  FAILED,           /* a protocol error closed the stream */
} conn_state;

struct hp_conn {
  const hp_conn_sink *sink;
  void *ctx;
  hp_framer *framer;
  hp_decoder *decoder;
  hp_map *frames; /* agent frame id -> number: its number in the stream, from 1 */
  hp_map *stacks; /* agent stack id -> number */
  conn_state state;
  uint32_t frame_numbers[HP_MAX_STACK_DEPTH]; /* a STACK_DEF's frames, renumbered */
  char error[512];
};

hp_conn *hp_conn_new(const hp_conn_sink *sink, void *ctx)
{
  hp_conn *c = calloc(1, sizeof *c);
  if (c == NULL)
    return NULL;
  c->sink = sink;
  c->ctx = ctx;
  c->framer = hp_framer_new(HP_MAX_FRAME_BYTES);
  c->decoder = hp_decoder_new();
  c->frames = hp_map_new();
  c->stacks = hp_map_new();
  if (c->framer == NULL || c->decoder == NULL || c->frames == NULL || c->stacks == NULL) {
    hp_conn_free(c);
    return NULL;
  }
  return c;
}

void hp_conn_free(hp_conn *c)
{
  if (c == NULL)
    return;
  hp_framer_free(c->framer);
  hp_decoder_free(c->decoder);
  hp_map_free(c->frames);
  hp_map_free(c->stacks);
  free(c);
}

__attribute__((format(printf, 3, 4))) static int fail(hp_conn *c, int err, const char *fmt,
                                                      ...)
{
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->error, sizeof c->error, fmt, ap);
  va_end(ap);
  c->state = FAILED;
  return err;
}

static int sink_rc(hp_conn *c, int rc, const char *what)
{
  if (rc < 0)
    return fail(c, rc, "storing %s failed: %s", what, hp_strerror(rc));
  return 0;
}

static int handle_hello(hp_conn *c, const hp_hello *h)
{
  if (c->state != EXPECT_HELLO)
    return fail(c, -HP_EORDER, "second HELLO in one stream");
  if (h->version != HP_PROTO_VERSION)
    return fail(c, -HP_EVERSION,
                "protocol version %u is not supported (this heapprofd speaks %u)",
                h->version, HP_PROTO_VERSION);
  int rc = sink_rc(c, c->sink->hello(c->ctx, h), "HELLO");
  if (rc == 0)
    c->state = STREAMING;
  return rc;
}

/* The next number of a map of ids: ids are numbered 1, 2, ... as they are defined. */
static uint32_t next_number(const hp_map *ids)
{
  return (uint32_t)hp_map_count(ids) + 1;
}

static int handle_frame_def(hp_conn *c, const hp_frame_def *f)
{
  assert(c->state == STREAMING);
  if (f->frame_id == 0)
    return fail(c, -HP_ERANGE, "FRAME_DEF with frame id 0");
  if (hp_map_get(c->frames, f->frame_id) != NULL)
    return fail(c, -HP_EDUP, "frame id %u defined twice", f->frame_id);
  if (hp_map_count(c->frames) >= HP_CONN_MAX_FRAMES)
    return fail(c, -HP_EFULL,
                "FRAME_DEF of frame id %u exceeds the limit of %u frames "
                "per session",
                f->frame_id, HP_CONN_MAX_FRAMES);
  hp_frame_def numbered = *f;
  numbered.frame_id = next_number(c->frames);
  hp_map_val v = {.number = numbered.frame_id};
  if (hp_map_put(c->frames, f->frame_id, &v) < 0)
    return fail(c, -HP_ENOMEM, "out of memory recording frame id %u", f->frame_id);
  return sink_rc(c, c->sink->frame_def(c->ctx, &numbered), "FRAME_DEF");
}

static int handle_stack_def(hp_conn *c, const hp_stack_def *s)
{
  assert(c->state == STREAMING);
  if (s->stack_id == 0)
    return fail(c, -HP_ERANGE, "STACK_DEF with stack id 0");
  if (s->depth > HP_MAX_STACK_DEPTH)
    return fail(c, -HP_ELEN, "stack id %u has %u frames, over the limit of %u", s->stack_id,
                s->depth, HP_MAX_STACK_DEPTH);
  if (hp_map_get(c->stacks, s->stack_id) != NULL)
    return fail(c, -HP_EDUP, "stack id %u defined twice", s->stack_id);
  if (hp_map_count(c->stacks) >= HP_CONN_MAX_STACKS)
    return fail(c, -HP_EFULL,
                "STACK_DEF of stack id %u exceeds the limit of %u stacks "
                "per session",
                s->stack_id, HP_CONN_MAX_STACKS);
  for (uint32_t i = 0; i < s->depth; i++) {
    const hp_map_val *f = hp_map_get(c->frames, s->frame_ids[i]);
    if (f == NULL)
      return fail(c, -HP_EUNDEF, "stack id %u uses frame id %u, which was never defined",
                  s->stack_id, s->frame_ids[i]);
    c->frame_numbers[i] = f->number;
  }
  hp_stack_def numbered = *s;
  numbered.stack_id = next_number(c->stacks);
  numbered.frame_ids = c->frame_numbers;
  hp_map_val v = {.number = numbered.stack_id};
  if (hp_map_put(c->stacks, s->stack_id, &v) < 0)
    return fail(c, -HP_ENOMEM, "out of memory recording stack id %u", s->stack_id);
  return sink_rc(c, c->sink->stack_def(c->ctx, &numbered), "STACK_DEF");
}

/* Validates the whole batch before anything of it is passed on (a bad batch is
 * refused as a unit), renumbering its stack ids on the way. */
static int handle_events(hp_conn *c, hp_events *ev)
{
  if (ev->count > HP_MAX_BATCH_EVENTS)
    return fail(c, -HP_ELEN, "EVENTS with %u events, over the limit of %u", ev->count,
                HP_MAX_BATCH_EVENTS);
  for (uint32_t i = 0; i < ev->count; i++) {
    hp_event *e = &ev->events[i];
    if (e->kind == HP_EV_FREE)
      continue;
    if (e->kind != HP_EV_ALLOC && e->kind != HP_EV_REATTRIBUTE)
      return fail(c, -HP_ERANGE, "event %u of EVENTS has unknown kind %u", i, e->kind);
    if (e->kind == HP_EV_ALLOC && e->domain > HP_DOMAIN_NATIVE)
      return fail(c, -HP_ERANGE, "event %u of EVENTS has unknown domain %u", i, e->domain);
    if (e->stack_id == HP_NO_STACK)
      continue;
    const hp_map_val *s = hp_map_get(c->stacks, e->stack_id);
    if (s == NULL)
      return fail(c, -HP_EUNDEF,
                  "event %u of EVENTS uses stack id %u, which was never defined", i,
                  e->stack_id);
    e->stack_id = s->number;
  }
  if (ev->count == 0)
    return 0;
  return sink_rc(c, c->sink->events(c->ctx, ev->events, ev->count), "EVENTS");
}

int hp_conn_handle(hp_conn *c, hp_msg *m)
{
  if (c->state == FAILED)
    return -HP_ECLOSED;
  if (c->state == DONE)
    return fail(c, -HP_EORDER, "%s after GOODBYE", hp_msg_type_name(m->type));
  if (c->state == EXPECT_HELLO && m->type != HP_MSG_HELLO)
    return fail(c, -HP_EORDER, "%s before HELLO", hp_msg_type_name(m->type));
  switch (m->type) {
  case HP_MSG_HELLO: return handle_hello(c, &m->u.hello);
  case HP_MSG_FRAME_DEF: return handle_frame_def(c, &m->u.frame_def);
  case HP_MSG_STACK_DEF: return handle_stack_def(c, &m->u.stack_def);
  case HP_MSG_EVENTS: return handle_events(c, &m->u.events);
  case HP_MSG_COUNTERS:
    return sink_rc(c, c->sink->counters(c->ctx, &m->u.counters), "COUNTERS");
  case HP_MSG_THREAD_DEF:
    return sink_rc(c, c->sink->thread_def(c->ctx, &m->u.thread_def), "THREAD_DEF");
  case HP_MSG_MARKER: return sink_rc(c, c->sink->marker(c->ctx, &m->u.marker), "MARKER");
  case HP_MSG_GOODBYE: {
    int rc = sink_rc(c, c->sink->goodbye(c->ctx, &m->u.goodbye), "GOODBYE");
    if (rc < 0)
      return rc;
    c->state = DONE;
    return 1;
  }
  }
  return fail(c, -HP_EMSGTYPE, "unknown message type %d", (int)m->type);
}

/* Sizes in MiB when that is exact enough to show the excess ("frame of 9.0 MiB exceeds
 * the 4 MiB limit"); in bytes when MiB would round to the limit itself. */
static int fail_too_big(hp_conn *c, uint32_t announced)
{
  const double mib = 1024.0 * 1024.0;
  char limit[32];
  if (HP_MAX_FRAME_BYTES % (1024u * 1024u) == 0)
    snprintf(limit, sizeof limit, "%u MiB", HP_MAX_FRAME_BYTES / (1024u * 1024u));
  else
    snprintf(limit, sizeof limit, "%u bytes", HP_MAX_FRAME_BYTES);
  if ((double)announced - HP_MAX_FRAME_BYTES >= 0.05 * mib)
    return fail(c, -HP_ETOOBIG, "frame of %.1f MiB exceeds the %s limit", announced / mib,
                limit);
  return fail(c, -HP_ETOOBIG, "frame of %u bytes exceeds the %s limit", announced, limit);
}

int hp_conn_feed(hp_conn *c, const uint8_t *data, size_t len)
{
  if (c->state == FAILED)
    return -HP_ECLOSED;
  if (c->state == DONE && len > 0)
    return fail(c, -HP_EORDER, "%zu bytes after GOODBYE", len);
  int rc = hp_framer_feed(c->framer, data, len);
  if (rc < 0)
    return fail(c, rc, "buffering %zu bytes: %s", len, hp_strerror(rc));
  for (;;) {
    const uint8_t *payload;
    uint32_t plen;
    rc = hp_framer_next(c->framer, &payload, &plen);
    if (rc == 0)
      return 0;
    if (rc == -HP_ETOOBIG)
      return fail_too_big(c, plen);
    if (rc < 0)
      return fail(c, rc, "framing: %s", hp_strerror(rc));
    hp_msg m;
    rc = hp_decoder_decode(c->decoder, payload, plen, &m);
    if (rc < 0) {
      const char *why = hp_decoder_error(c->decoder);
      return fail(c, rc, "bad frame of %u bytes: %s", plen,
                  (why && why[0]) ? why : hp_strerror(rc));
    }
    rc = hp_conn_handle(c, &m);
    if (rc != 0)
      return rc; /* error, or 1 after GOODBYE: later bytes are checked by the next feed */
  }
}

const char *hp_conn_error(const hp_conn *c)
{
  return c->error;
}
size_t hp_conn_buffered(const hp_conn *c)
{
  return hp_framer_buffered(c->framer);
}
