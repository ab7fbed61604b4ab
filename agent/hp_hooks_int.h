/* hp_hooks_int.h — what the PEP 445 hooks (hp_hooks.c) share with the native hooks
 * (hp_native.c): one per-thread sampler countdown and one re-entry marker for both, so
 * that a native call made inside a PEP 445 hook, or by agent code, is never counted, and
 * both kinds of allocation walk the same Poisson process. */
#ifndef HP_HOOKS_INT_H
#define HP_HOOKS_INT_H

#include <stdint.h>

#include "hp_proto.h"
#include "hp_sampler.h"

/* key: the thread's sampler generation, or HP_HOOKS_KEY_REENTRANT while the thread is
 * inside a hook's real call or agent code. See hp_hooks.c. */
#define HP_HOOKS_KEY_REENTRANT (UINT32_MAX - 1u)

typedef struct {
  hp_sampler_tls sampler;
  uint32_t key;
  uintptr_t fresh; /* the block of this thread's latest sample: see block_created() */
} hp_hooks_tls;

/* initial-exec: a fixed offset from the thread pointer, no __tls_get_addr call (which
 * may itself allocate on a thread's first access in a dlopen()ed library). */
extern __thread hp_hooks_tls hp_hooks_t __attribute__((tls_model("initial-exec")));

static inline int hp_hooks_is_reentrant(const hp_hooks_tls *t)
{
  return t->key == HP_HOOKS_KEY_REENTRANT;
}

static inline void hp_hooks_enter(hp_hooks_tls *t)
{
  t->key = HP_HOOKS_KEY_REENTRANT;
}

/* Also after the sampler's slow path, which may have moved the thread to a new
 * generation. */
static inline void hp_hooks_leave(hp_hooks_tls *t)
{
  t->key = t->sampler.generation;
}

/* After a successful allocation of size bytes at ptr, with the marker set: counts it
 * down (or into the stats) and records it when sampled. Never changes errno. */
void hp_hooks_sample_alloc(hp_hooks_tls *t, hp_domain domain, void *ptr, size_t size);

/* Before the real free of ptr, whose address the free filter did not rule out: reports
 * the free if ptr was sampled (then 1, else 0). Any marker state; never changes errno. */
int hp_hooks_sample_free(hp_hooks_tls *t, void *ptr);

#endif /* HP_HOOKS_INT_H */
