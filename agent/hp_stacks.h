/* hp_stacks.h — the stack of a sample: the allocating thread's Python frames, named and
 * interned (hp_intern), behind caches keyed by code object and instruction.
 *
 * Called from the sampled path of the allocator hooks. Everything it does is allowed
 * there: it never allocates through Python, raises, runs Python code, starts a collection
 * or takes a lock, and it holds no reference to any Python object. Frames come from
 * hp_pyframe (the version shim); names are the strings' code points copied into libc
 * memory by the surrogateescape/replacement rule of hp_pystr.h; lines come from
 * PyCode_Addr2Line, which reads the code's line table. The caches forget a code object's
 * address when the object dies (hp_pyframe_watch_codes), so new code at an old address is
 * never mistaken for the old code, and nothing keeps code alive. */
#ifndef HP_STACKS_H
#define HP_STACKS_H

#include <stdint.h>

/* Once, with the GIL held, before the hooks go in: starts watching code objects. Without
 * a way to watch them (hp_pyframe_watch_codes failed) the caches stay off and every
 * sample names its frames afresh: slower, never wrong. */
void hp_stacks_init(void);

/* The stack id of the calling thread's Python stack (interned with hp_agent_intern(),
 * at most hp_agent_max_depth frames), or HP_NO_STACK when the thread does not hold the
 * main interpreter's GIL, runs no Python code, or the interning tables are full. */
uint32_t hp_stacks_current(void);

typedef struct {
  int caches_on;         /* code objects are watched, the caches are used */
  uint64_t code_flushes; /* cached code objects died: the caches were emptied */
  uint64_t frames_named; /* frames named afresh (cache misses) */
} hp_stacks_stats;

/* For tests: reads under the GIL. */
void hp_stacks_get_stats(hp_stacks_stats *out);

#endif /* HP_STACKS_H */
