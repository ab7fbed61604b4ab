/* hp_intern.c — frame and stack interning tables (see hp_intern.h).
 *
 * Each table is an array of entries indexed by id plus an open-addressing index of ids
 * (twice the capacity, so probes stay short). Only the single writer touches the index;
 * readers use the entry array below the published count. */
#include "hp_intern.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  uint64_t hash;
  int32_t line;
  uint32_t function_len, filename_len;
  char *strings; /* function then filename, one allocation */
} frame_ent;

typedef struct {
  uint64_t hash;
  uint32_t depth;
  uint8_t truncated;
  uint32_t *ids;
} stack_ent;

struct hp_intern {
  uint32_t max_frames, max_stacks;
  _Atomic uint32_t nframes, nstacks; /* published counts */
  frame_ent *frames;                 /* [0] unused: ids start at 1 */
  stack_ent *stacks;
  uint32_t *frame_index, *stack_index; /* 0 = empty; writer only */
  size_t frame_mask, stack_mask;
};

static size_t pow2_at_least(size_t n)
{
  size_t c = 16;
  while (c < n)
    c <<= 1;
  return c;
}

hp_intern *hp_intern_new(uint32_t max_frames, uint32_t max_stacks)
{
  hp_intern *in = calloc(1, sizeof(*in));
  if (!in)
    return NULL;
  in->max_frames = max_frames ? max_frames : HP_INTERN_MAX_FRAMES;
  in->max_stacks = max_stacks ? max_stacks : HP_INTERN_MAX_STACKS;
  in->frame_mask = pow2_at_least(2 * (size_t)in->max_frames) - 1;
  in->stack_mask = pow2_at_least(2 * (size_t)in->max_stacks) - 1;
  in->frames = calloc((size_t)in->max_frames + 1, sizeof(frame_ent));
  in->stacks = calloc((size_t)in->max_stacks + 1, sizeof(stack_ent));
  in->frame_index = calloc(in->frame_mask + 1, sizeof(uint32_t));
  in->stack_index = calloc(in->stack_mask + 1, sizeof(uint32_t));
  if (!in->frames || !in->stacks || !in->frame_index || !in->stack_index) {
    hp_intern_free(in);
    return NULL;
  }
  return in;
}

void hp_intern_free(hp_intern *in)
{
  if (!in)
    return;
  uint32_t nf = atomic_load(&in->nframes), ns = atomic_load(&in->nstacks);
  if (in->frames)
    for (uint32_t i = 1; i <= nf; i++)
      free(in->frames[i].strings);
  if (in->stacks)
    for (uint32_t i = 1; i <= ns; i++)
      free(in->stacks[i].ids);
  free(in->frames);
  free(in->stacks);
  free(in->frame_index);
  free(in->stack_index);
  free(in);
}

static uint64_t mix(uint64_t h, uint64_t v)
{
  h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  return h * 0xff51afd7ed558ccdull;
}

static uint64_t bytes_hash(uint64_t h, const char *s, size_t n)
{
  for (size_t i = 0; i < n; i++)
    h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull; /* FNV-1a */
  return mix(h, n);
}

static uint64_t frame_hash(const char *function, size_t function_len, const char *filename,
                           size_t filename_len, int32_t line)
{
  uint64_t h = bytes_hash(0xcbf29ce484222325ull, function, function_len);
  h = bytes_hash(h, filename, filename_len);
  return mix(h, (uint64_t)(uint32_t)line);
}

static int frame_is(const frame_ent *e, uint64_t h, const char *function,
                    size_t function_len, const char *filename, size_t filename_len,
                    int32_t line)
{
  return e->hash == h && e->line == line && e->function_len == function_len &&
         e->filename_len == filename_len &&
         memcmp(e->strings, function, function_len) == 0 &&
         memcmp(e->strings + function_len, filename, filename_len) == 0;
}

int64_t hp_intern_frame_add(hp_intern *in, const char *function, size_t function_len,
                            const char *filename, size_t filename_len, int32_t line)
{
  if (function_len > HP_MAX_STR_BYTES)
    function_len = HP_MAX_STR_BYTES;
  if (filename_len > HP_MAX_STR_BYTES)
    filename_len = HP_MAX_STR_BYTES;
  uint64_t h = frame_hash(function, function_len, filename, filename_len, line);
  size_t i = (size_t)h & in->frame_mask;
  for (;;) {
    uint32_t id = in->frame_index[i];
    if (id == 0)
      break;
    if (frame_is(&in->frames[id], h, function, function_len, filename, filename_len, line))
      return id;
    i = (i + 1) & in->frame_mask;
  }
  uint32_t n = atomic_load_explicit(&in->nframes, memory_order_relaxed);
  if (n >= in->max_frames)
    return -HP_EFULL;
  char *s = malloc(function_len + filename_len + 1);
  if (!s)
    return -HP_ENOMEM;
  if (function_len)
    memcpy(s, function, function_len);
  if (filename_len)
    memcpy(s + function_len, filename, filename_len);
  uint32_t id = n + 1;
  frame_ent *e = &in->frames[id];
  e->hash = h;
  e->line = line;
  e->function_len = (uint32_t)function_len;
  e->filename_len = (uint32_t)filename_len;
  e->strings = s;
  in->frame_index[i] = id;
  atomic_store_explicit(&in->nframes, id, memory_order_release);
  return id;
}

static uint64_t stack_hash(const uint32_t *ids, uint32_t depth, uint8_t truncated)
{
  uint64_t h = mix(0x1234567, truncated);
  for (uint32_t i = 0; i < depth; i++)
    h = mix(h, ids[i]);
  return h;
}

int64_t hp_intern_stack_add(hp_intern *in, const uint32_t *frame_ids, uint32_t depth,
                            uint8_t truncated)
{
  if (depth == 0 || depth > HP_MAX_STACK_DEPTH)
    return -HP_EINVAL;
  uint64_t h = stack_hash(frame_ids, depth, truncated);
  size_t i = (size_t)h & in->stack_mask;
  for (;;) {
    uint32_t id = in->stack_index[i];
    if (id == 0)
      break;
    const stack_ent *e = &in->stacks[id];
    if (e->hash == h && e->depth == depth && e->truncated == truncated &&
        memcmp(e->ids, frame_ids, depth * sizeof(uint32_t)) == 0)
      return id;
    i = (i + 1) & in->stack_mask;
  }
  uint32_t n = atomic_load_explicit(&in->nstacks, memory_order_relaxed);
  if (n >= in->max_stacks)
    return -HP_EFULL;
  uint32_t *ids = malloc(depth * sizeof(uint32_t));
  if (!ids)
    return -HP_ENOMEM;
  memcpy(ids, frame_ids, depth * sizeof(uint32_t));
  uint32_t id = n + 1;
  stack_ent *e = &in->stacks[id];
  e->hash = h;
  e->depth = depth;
  e->truncated = truncated;
  e->ids = ids;
  in->stack_index[i] = id;
  atomic_store_explicit(&in->nstacks, id, memory_order_release);
  return id;
}

uint32_t hp_intern_frame_count(const hp_intern *in)
{
  return atomic_load_explicit(&((hp_intern *)in)->nframes, memory_order_acquire);
}

uint32_t hp_intern_stack_count(const hp_intern *in)
{
  return atomic_load_explicit(&((hp_intern *)in)->nstacks, memory_order_acquire);
}

void hp_intern_frame_get(const hp_intern *in, uint32_t id, hp_intern_frame *out)
{
  const frame_ent *e = &in->frames[id];
  out->function.ptr = e->strings;
  out->function.len = e->function_len;
  out->filename.ptr = e->strings + e->function_len;
  out->filename.len = e->filename_len;
  out->lineno = e->line < 0 ? 0 : e->line;
}

void hp_intern_stack_get(const hp_intern *in, uint32_t id, hp_intern_stack *out)
{
  const stack_ent *e = &in->stacks[id];
  out->depth = e->depth;
  out->truncated = e->truncated;
  out->frame_ids = e->ids;
}
