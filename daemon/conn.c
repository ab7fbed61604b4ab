/* conn.c — per-connection decoding and stream-order checks (see hp_conn.h).
 * Pipeline position: server (libuv reads) -> conn -> store (via the sink). */
#include "hp_conn.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "hp_map.h"

struct hp_conn {
  const hp_conn_sink *sink;
  void *ctx;
  hp_framer *framer;
  hp_decoder *decoder;
  hp_map *frames;     /* agent frame ids defined so far (values unused) */
  hp_map *stacks;     /* agent stack ids defined so far (values unused) */
  hp_conn_state state;
  uint64_t events;
  char error[512];
};

hp_conn *hp_conn_new(const hp_conn_sink *sink, void *ctx) {
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

void hp_conn_free(hp_conn *c) {
  if (c == NULL)
    return;
  hp_framer_free(c->framer);
  hp_decoder_free(c->decoder);
  hp_map_free(c->frames);
  hp_map_free(c->stacks);
  free(c);
}

__attribute__((format(printf, 3, 4)))
static int fail(hp_conn *c, int err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->error, sizeof c->error, fmt, ap);
  va_end(ap);
  c->state = HP_CONN_FAILED;
  return err;
}

static int sink_rc(hp_conn *c, int rc, const char *what) {
  if (rc < 0)
    return fail(c, rc, "storing %s failed: %s", what, hp_strerror(rc));
  return 0;
}

static int handle_hello(hp_conn *c, const hp_hello *h) {
  if (c->state != HP_CONN_EXPECT_HELLO)
    return fail(c, -HP_EORDER, "second HELLO in one stream");
  if (h->version != HP_PROTO_VERSION)
    return fail(c, -HP_EVERSION, "protocol version %u is not supported (this heapprofd speaks %u)",
                h->version, HP_PROTO_VERSION);
  int rc = sink_rc(c, c->sink->hello(c->ctx, h), "HELLO");
  if (rc == 0)
    c->state = HP_CONN_STREAMING;
  return rc;
}

static int handle_frame_def(hp_conn *c, const hp_frame_def *f) {
  static const hp_map_val none = {0, 0, 0};
  if (f->frame_id == 0)
    return fail(c, -HP_ERANGE, "FRAME_DEF with frame id 0");
  if (hp_map_get(c->frames, f->frame_id) != NULL)
    return fail(c, -HP_EDUP, "frame id %u defined twice", f->frame_id);
  if (hp_map_count(c->frames) >= HP_CONN_MAX_FRAMES)
    return fail(c, -HP_EFULL, "FRAME_DEF of frame id %u exceeds the limit of %u frames "
                "per session", f->frame_id, HP_CONN_MAX_FRAMES);
  if (hp_map_put(c->frames, f->frame_id, &none) < 0)
    return fail(c, -HP_ENOMEM, "out of memory recording frame id %u", f->frame_id);
  return sink_rc(c, c->sink->frame_def(c->ctx, f), "FRAME_DEF");
}

static int handle_stack_def(hp_conn *c, const hp_stack_def *s) {
  static const hp_map_val none = {0, 0, 0};
  if (s->stack_id == 0)
    return fail(c, -HP_ERANGE, "STACK_DEF with stack id 0");
  if (s->depth > HP_MAX_STACK_DEPTH)
    return fail(c, -HP_ELEN, "stack id %u has %u frames, over the limit of %u",
                s->stack_id, s->depth, HP_MAX_STACK_DEPTH);
  if (hp_map_get(c->stacks, s->stack_id) != NULL)
    return fail(c, -HP_EDUP, "stack id %u defined twice", s->stack_id);
  if (hp_map_count(c->stacks) >= HP_CONN_MAX_STACKS)
    return fail(c, -HP_EFULL, "STACK_DEF of stack id %u exceeds the limit of %u stacks "
                "per session", s->stack_id, HP_CONN_MAX_STACKS);
  for (uint32_t i = 0; i < s->depth; i++)
    if (hp_map_get(c->frames, s->frame_ids[i]) == NULL)
      return fail(c, -HP_EUNDEF, "stack id %u uses frame id %u, which was never defined",
                  s->stack_id, s->frame_ids[i]);
  if (hp_map_put(c->stacks, s->stack_id, &none) < 0)
    return fail(c, -HP_ENOMEM, "out of memory recording stack id %u", s->stack_id);
  return sink_rc(c, c->sink->stack_def(c->ctx, s), "STACK_DEF");
}

static int handle_events(hp_conn *c, const hp_events *ev) {
  if (ev->count > HP_MAX_BATCH_EVENTS)
    return fail(c, -HP_ELEN, "EVENTS with %u events, over the limit of %u", ev->count,
                HP_MAX_BATCH_EVENTS);
  /* Validate the whole batch first: a bad batch is refused as a unit. */
  for (uint32_t i = 0; i < ev->count; i++) {
    const hp_event *e = &ev->events[i];
    if (e->kind == HP_EV_FREE)
      continue;
    if (e->kind != HP_EV_ALLOC && e->kind != HP_EV_REATTRIBUTE)
      return fail(c, -HP_ERANGE, "event %u of EVENTS has unknown kind %u", i, e->kind);
    if (e->kind == HP_EV_ALLOC && e->domain > HP_DOMAIN_NATIVE)
      return fail(c, -HP_ERANGE, "event %u of EVENTS has unknown domain %u", i, e->domain);
    if (e->stack_id != HP_NO_STACK && hp_map_get(c->stacks, e->stack_id) == NULL)
      return fail(c, -HP_EUNDEF, "event %u of EVENTS uses stack id %u, which was never defined",
                  i, e->stack_id);
  }
  if (ev->count == 0)
    return 0;
  int rc = sink_rc(c, c->sink->events(c->ctx, ev->events, ev->count), "EVENTS");
  if (rc == 0)
    c->events += ev->count;
  return rc;
}

int hp_conn_handle(hp_conn *c, const hp_msg *m) {
  if (c->state == HP_CONN_FAILED)
    return -HP_ECLOSED;
  if (c->state == HP_CONN_DONE)
    return fail(c, -HP_EORDER, "%s after GOODBYE", hp_msg_type_name(m->type));
  if (c->state == HP_CONN_EXPECT_HELLO && m->type != HP_MSG_HELLO)
    return fail(c, -HP_EORDER, "%s before HELLO", hp_msg_type_name(m->type));
  switch (m->type) {
  case HP_MSG_HELLO:
    return handle_hello(c, &m->u.hello);
  case HP_MSG_FRAME_DEF:
    return handle_frame_def(c, &m->u.frame_def);
  case HP_MSG_STACK_DEF:
    return handle_stack_def(c, &m->u.stack_def);
  case HP_MSG_EVENTS:
    return handle_events(c, &m->u.events);
  case HP_MSG_COUNTERS:
    return sink_rc(c, c->sink->counters(c->ctx, &m->u.counters), "COUNTERS");
  case HP_MSG_THREAD_DEF:
    return sink_rc(c, c->sink->thread_def(c->ctx, &m->u.thread_def), "THREAD_DEF");
  case HP_MSG_MARKER:
    return sink_rc(c, c->sink->marker(c->ctx, &m->u.marker), "MARKER");
  case HP_MSG_GOODBYE: {
    int rc = sink_rc(c, c->sink->goodbye(c->ctx, &m->u.goodbye), "GOODBYE");
    if (rc < 0)
      return rc;
    c->state = HP_CONN_DONE;
    return 1;
  }
  }
  return fail(c, -HP_EMSGTYPE, "unknown message type %d", (int)m->type);
}

/* Sizes in MiB when that is exact enough to show the excess ("frame of 9.0 MiB exceeds
 * the 4 MiB limit"); in bytes when MiB would round to the limit itself. */
static int fail_too_big(hp_conn *c, uint32_t announced) {
  const double mib = 1024.0 * 1024.0;
  char limit[32];
  if (HP_MAX_FRAME_BYTES % (1024u * 1024u) == 0)
    snprintf(limit, sizeof limit, "%u MiB", HP_MAX_FRAME_BYTES / (1024u * 1024u));
  else
    snprintf(limit, sizeof limit, "%u bytes", HP_MAX_FRAME_BYTES);
  if ((double)announced - HP_MAX_FRAME_BYTES >= 0.05 * mib)
    return fail(c, -HP_ETOOBIG, "frame of %.1f MiB exceeds the %s limit",
                announced / mib, limit);
  return fail(c, -HP_ETOOBIG, "frame of %u bytes exceeds the %s limit", announced, limit);
}

int hp_conn_feed(hp_conn *c, const uint8_t *data, size_t len) {
  if (c->state == HP_CONN_FAILED)
    return -HP_ECLOSED;
  if (c->state == HP_CONN_DONE && len > 0)
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
      return rc;   /* error, or 1 after GOODBYE: later bytes are checked by the next feed */
  }
}

hp_conn_state hp_conn_get_state(const hp_conn *c) { return c->state; }
const char *hp_conn_error(const hp_conn *c) { return c->error; }
uint64_t hp_conn_events(const hp_conn *c) { return c->events; }
size_t hp_conn_buffered(const hp_conn *c) { return hp_framer_buffered(c->framer); }
uint32_t hp_conn_frames(const hp_conn *c) { return (uint32_t)hp_map_count(c->frames); }
uint32_t hp_conn_stacks(const hp_conn *c) { return (uint32_t)hp_map_count(c->stacks); }
