/* hp_intern.h — agent-side interning of frames and stacks, sent once per stream.
 *
 * A frame is its content, (function, filename, line) -> frame id: never a code object's
 * address, which Python may hand to other code once the object is freed, so the table
 * holds no reference into the program and code that is compiled again and again (eval,
 * namedtuple) adds no frames. The entry holds copies of the strings. A stack is the
 * sequence of frame ids,
 * innermost first, plus a truncation flag -> stack id. Ids are dense, 1, 2, ...: entry
 * id is published (release) after it is complete, so the sender thread can read every
 * entry below hp_intern_frame_count()/hp_intern_stack_count() (acquire) without a lock
 * and emit FRAME_DEF/STACK_DEF before the events that refer to them.
 *
 * Writers: one at a time (the agent calls these under the GIL). Readers: any thread.
 * Memory comes from libc only; tables are bounded and refuse more with -HP_EFULL. */
#ifndef HP_INTERN_H
#define HP_INTERN_H

#include <stddef.h>
#include <stdint.h>

#include "hp_proto.h"

#define HP_INTERN_MAX_FRAMES (1u << 18)
#define HP_INTERN_MAX_STACKS (1u << 18)

typedef struct hp_intern hp_intern; /* opaque */

typedef struct {
  hp_str function;
  hp_str filename;
  int32_t lineno;
} hp_intern_frame;

typedef struct {
  uint32_t depth;
  uint8_t truncated;
  const uint32_t *frame_ids;
} hp_intern_stack;

/* max_frames/max_stacks of 0 mean the defaults above. NULL on OOM. */
hp_intern *hp_intern_new(uint32_t max_frames, uint32_t max_stacks);
void hp_intern_free(hp_intern *in); /* NULL is a no-op */

/* Frame id of (function, filename, line), adding it with copies of the strings when new.
 * Strings are cut to HP_MAX_STR_BYTES first (the cut is part of the content). Returns the
 * id (> 0), or -HP_EFULL / -HP_ENOMEM. */
int64_t hp_intern_frame_add(hp_intern *in, const char *function, size_t function_len,
                            const char *filename, size_t filename_len, int32_t line);
/* Stack id for these frame ids (adding it when new), or -HP_EFULL / -HP_ENOMEM /
 * -HP_EINVAL (depth 0 or over HP_MAX_STACK_DEPTH). */
int64_t hp_intern_stack_add(hp_intern *in, const uint32_t *frame_ids, uint32_t depth,
                            uint8_t truncated);

/* Published counts: ids 1..count are readable. */
uint32_t hp_intern_frame_count(const hp_intern *in);
uint32_t hp_intern_stack_count(const hp_intern *in);
/* Borrowed until hp_intern_free(); id in 1..count. */
void hp_intern_frame_get(const hp_intern *in, uint32_t id, hp_intern_frame *out);
void hp_intern_stack_get(const hp_intern *in, uint32_t id, hp_intern_stack *out);

#endif /* HP_INTERN_H */
