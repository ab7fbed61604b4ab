/* hp_conn.h — one agent stream: reassembly, decoding and stream-order rules.
 *
 * server.c feeds the bytes it reads from one socket; conn turns them into validated
 * messages for a sink (the store, or a test). It enforces the order PROTOCOL.md
 * requires: HELLO first and once; frame and stack ids defined once, before use, and
 * no more of them than the limits below; nothing after GOODBYE. A message that breaks
 * a rule is not passed on; everything before it was. Loop thread only; no libuv, no
 * SQLite, so tests drive it directly. */
#ifndef HP_CONN_H
#define HP_CONN_H

#include <stddef.h>
#include <stdint.h>

#include "hp_proto.h"

/* Ids one stream may define: every definition costs memory until the session ends (an
 * id map entry here and an array entry in the store), so a buggy or hostile agent must
 * not grow them without end. Twice what our agent can define (HP_INTERN_MAX_FRAMES/STACKS in
 * agent/hp_intern.h, 2^18 each), so a real session never reaches them. Beyond a limit
 * the stream fails with a protocol error naming it (daemon/README.md, "Limits"). */
#define HP_CONN_MAX_FRAMES (1u << 19)
#define HP_CONN_MAX_STACKS (1u << 19)

/* Receivers of validated messages. Each returns 0 or a negative -HP_E* code, which
 * stops the stream (e.g. -HP_ENOMEM). Messages are borrowed for the call only.
 *
 * Frame and stack ids reach the sink renumbered: conn numbers a stream's frames, and
 * separately its stacks, 1, 2, 3, ... in the order they are defined, and every id in a
 * message it passes on (a FRAME_DEF's frame_id, a STACK_DEF's stack_id and frame_ids,
 * an event's stack_id) is that number; HP_NO_STACK stays 0. So conn's maps are the only
 * ones keyed by the agent's ids, and a receiver keeps what it learns per id in an array
 * (the store keeps database ids that way). Each number is passed on once, in order; a
 * definition the sink refuses ends the stream, so no later message uses its number. */
typedef struct {
  int (*hello)(void *ctx, const hp_hello *m);
  int (*frame_def)(void *ctx, const hp_frame_def *m);
  int (*stack_def)(void *ctx, const hp_stack_def *m);
  int (*events)(void *ctx, const hp_event *events, uint32_t count);
  int (*counters)(void *ctx, const hp_counters *m);
  int (*goodbye)(void *ctx, const hp_goodbye *m);
  int (*thread_def)(void *ctx, const hp_thread_def *m);
  int (*marker)(void *ctx, const hp_marker *m);
} hp_conn_sink;

typedef struct hp_conn hp_conn; /* opaque */

/* sink is borrowed for the life of the conn. NULL on OOM. */
hp_conn *hp_conn_new(const hp_conn_sink *sink, void *ctx);
void hp_conn_free(hp_conn *c); /* NULL is a no-op */

/* Feeds len bytes read from the socket. Returns 0 (more wanted), 1 (GOODBYE accepted:
 * the stream is complete), or a negative -HP_E* code: the stream is broken for good
 * (every later call returns -HP_ECLOSED) and hp_conn_error() says why in one line. */
int hp_conn_feed(hp_conn *c, const uint8_t *data, size_t len);

/* Applies one decoded message (what hp_conn_feed does per frame); same returns. The
 * events of an EVENTS message are renumbered in place (it is the decoder's scratch). */
int hp_conn_handle(hp_conn *c, hp_msg *m);

const char *hp_conn_error(const hp_conn *c); /* "" while no error */
size_t hp_conn_buffered(const hp_conn *c);   /* bytes held by the framer */

#endif /* HP_CONN_H */
