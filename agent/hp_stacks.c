/* hp_stacks.c — the stack of a sample (see hp_stacks.h).
 *
 * Pipeline position: a sampled allocation (hp_hooks.c) -> hp_stacks_current() -> frames
 * from hp_pyframe -> stack cache, else frame cache, else naming -> hp_intern ids.
 *
 * All state here is protected by the main interpreter's GIL: hp_pyframe_walk() returns no
 * frames to any other caller, and code objects die (code_destroyed) under that GIL too.
 *
 * Caches and code lifetime. Both caches are keyed by code addresses, which CPython reuses
 * once a code object is freed (at once, with pymalloc's free lists, for code compiled in
 * a loop). Every entry carries the generation it was made in; when a code object dies
 * whose address may be in a cache (a bit per address hash says so), the generation moves
 * on and every entry is stale. Programs that keep their code see no flush; programs that
 * compile code all the time (eval, namedtuple, templates) flush only when such code had
 * been sampled, and then name a few frames again. The interned frames themselves are keyed
 * by content (hp_intern.h), so they need no flush and bound memory by what is distinct. */
#include <Python.h>

#include <string.h>
#include <unistd.h>

#include "hp_agent.h"
#include "hp_pyframe.h"
#include "hp_stacks.h"
#include "hp_pystr.h"

/* Generation of the cache entries now valid; never 0, so an empty entry is stale. */
static uint64_t g_gen = 1;
static int g_caches_on;
static uint64_t g_code_flushes, g_frames_named;

/* One bit per hash of a code address that entered a cache in this generation. */
#define CODE_FILTER_BITS 32768u
static uint8_t g_code_filter[CODE_FILTER_BITS / 8];

static inline size_t code_bit(const PyCodeObject *code)
{
  return (size_t)((((uintptr_t)code >> 4) * 0x9e3779b97f4a7c15ull) >> 49) &
         (CODE_FILTER_BITS - 1);
}

static inline void code_cached(const PyCodeObject *code)
{
  size_t b = code_bit(code);
  g_code_filter[b >> 3] |= (uint8_t)(1u << (b & 7));
}

static void code_destroyed(PyCodeObject *code)
{
  size_t b = code_bit(code);
  if (!(g_code_filter[b >> 3] & (1u << (b & 7))))
    return;
  g_gen++;
  g_code_flushes++;
  memset(g_code_filter, 0, sizeof(g_code_filter));
}

/* Direct-mapped (code, instruction offset) -> frame id: a hit skips the line-table scan
 * of PyCode_Addr2Line and the strings. */
#define FRAME_CACHE_SIZE 8192u
static struct {
  const PyCodeObject *code;
  int offset;
  uint32_t id;
  uint64_t gen;
} g_frame_cache[FRAME_CACHE_SIZE];

/* Direct-mapped: 64-bit hash of the (code, offset) chain, its depth, truncation and the
 * generation -> stack id. A hit skips the per-frame look-ups and the interning table:
 * recording everything, most samples come from a few hundred distinct stacks. It may be
 * wrong only on a 64-bit collision between two chains in one slot (odds ~2^-64 a pair). */
#define STACK_CACHE_SIZE 4096u
static struct {
  uint64_t hash;
  uint32_t id;
} g_stack_cache[STACK_CACHE_SIZE];

static inline uint64_t chain_mix(uint64_t h, uint64_t v)
{
  h = (h ^ v) * 0x9e3779b97f4a7c15ull;
  return h ^ (h >> 29);
}

/* A str field of a code object as UTF-8 into buf, read from its code points in place;
 * "?" for anything but a str with code points (3.11's legacy not-ready strings have kind
 * 0; code objects' names are always ready, but a hook cannot make one so). */
static size_t name_utf8(PyObject *s, char *buf, size_t cap)
{
  if (!s || !PyUnicode_Check(s) || PyUnicode_KIND(s) == 0) {
    buf[0] = '?';
    return 1;
  }
  return hp_pystr_encode(PyUnicode_DATA(s), PyUnicode_KIND(s),
                         (size_t)PyUnicode_GET_LENGTH(s), buf, cap);
}

/* The frame id of (code, offset), interned by content; 0 when the table is full. */
static uint32_t name_frame(hp_intern *in, PyCodeObject *code, int offset)
{
  static char function[HP_MAX_STR_BYTES], filename[HP_MAX_STR_BYTES]; /* GIL */
  size_t nlen = name_utf8(code->co_qualname, function, sizeof(function));
  size_t flen = name_utf8(code->co_filename, filename, sizeof(filename));
  int line = PyCode_Addr2Line(code, offset);
  g_frames_named++;
  int64_t id = hp_intern_frame_add(in, function, nlen, filename, flen, line < 0 ? 0 : line);
  return id > 0 ? (uint32_t)id : 0;
}

static uint32_t frame_id(hp_intern *in, const hp_pyframe *f)
{
  if (!g_caches_on)
    return name_frame(in, f->code, f->offset);
  size_t slot = (((uintptr_t)f->code >> 4) * 31u + (unsigned)f->offset) &
                (FRAME_CACHE_SIZE - 1);
  if (g_frame_cache[slot].code == f->code && g_frame_cache[slot].offset == f->offset &&
      g_frame_cache[slot].gen == g_gen)
    return g_frame_cache[slot].id;
  uint32_t id = name_frame(in, f->code, f->offset);
  if (id != 0) {
    code_cached(f->code);
    g_frame_cache[slot].code = f->code;
    g_frame_cache[slot].offset = f->offset;
    g_frame_cache[slot].id = id;
    g_frame_cache[slot].gen = g_gen;
  }
  return id;
}

/* Said once per process when the interning tables are full. */
static int g_intern_full_said;

static __attribute__((noinline)) uint32_t intern_full(void)
{
  if (!g_intern_full_said) {
    static const char msg[] = "heapprof: the agent's frame/stack tables are full ("
                              "HP_INTERN_MAX_FRAMES/HP_INTERN_MAX_STACKS); further samples "
                              "of new stacks are recorded without a stack\n";
    g_intern_full_said = 1;
    ssize_t w = write(STDERR_FILENO, msg, sizeof(msg) - 1);
    (void)w;
  }
  return HP_NO_STACK;
}

void hp_stacks_init(void)
{
  static int done;
  if (done)
    return;
  done = 1;
  g_caches_on = hp_pyframe_watch_codes(code_destroyed) == 0;
}

uint32_t hp_stacks_current(void)
{
  static hp_pyframe frames[HP_MAX_STACK_DEPTH]; /* GIL: written only for its holder */
  uint32_t ids[HP_MAX_STACK_DEPTH];
  uint8_t truncated;
  uint32_t depth = hp_pyframe_walk(frames, hp_agent_max_depth, &truncated);
  if (depth == 0)
    return HP_NO_STACK;
  uint64_t h = chain_mix(0x243f6a8885a308d3ull, g_gen);
  for (uint32_t i = 0; i < depth; i++)
    h = chain_mix(h, (uint64_t)(uintptr_t)frames[i].code ^
                       ((uint64_t)(uint32_t)frames[i].offset << 48));
  h = chain_mix(h, ((uint64_t)depth << 1) | truncated);
  size_t slot = (size_t)h & (STACK_CACHE_SIZE - 1);
  if (g_caches_on && g_stack_cache[slot].hash == h && g_stack_cache[slot].id != 0)
    return g_stack_cache[slot].id;
  hp_intern *in = hp_agent_intern();
  for (uint32_t i = 0; i < depth; i++) {
    ids[i] = frame_id(in, &frames[i]);
    if (ids[i] == 0)
      return intern_full();
  }
  int64_t sid = hp_intern_stack_add(in, ids, depth, truncated);
  if (sid <= 0)
    return intern_full();
  if (g_caches_on) {
    g_stack_cache[slot].hash = h;
    g_stack_cache[slot].id = (uint32_t)sid;
  }
  return (uint32_t)sid;
}

void hp_stacks_get_stats(hp_stacks_stats *out)
{
  out->caches_on = g_caches_on;
  out->code_flushes = g_code_flushes;
  out->frames_named = g_frames_named;
}
