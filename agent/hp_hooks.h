/* hp_hooks.h — the PEP 445 allocator hooks.
 *
 * Installed once (under the GIL) on the raw, mem and obj domains, chaining to the
 * allocators that were in place; never removed, because memory allocated through them
 * may be freed at any later time. While the agent is off each hook costs a compare or
 * two on top of the real allocator. Hooks never fail an allocation and never change
 * errno. When the mem and obj domains are CPython's pymalloc, their frees are not
 * hooked at all: sampled blocks come from the raw allocator, whose free hook pymalloc
 * calls for them (hp_hooks.c, g_frees_via_raw). */
#ifndef HP_HOOKS_H
#define HP_HOOKS_H

/* Installs the hooks if not yet installed. Caller holds the GIL. 0 or -HP_ENOMEM. */
int hp_hooks_install(void);

/* 1 when the mem/obj frees go to pymalloc unhooked and sampled blocks' frees come via
 * the raw free hook (see above), else 0. */
int hp_hooks_frees_via_raw(void);

/* 1 when someone else replaced or removed the hooks, so that they see nothing any more
 * (e.g. tracemalloc.stop() after a tracemalloc.start() that came before heapprof's),
 * else 0. Any thread, with or without the GIL. */
int hp_hooks_replaced(void);

/* 1 while the calling thread is inside a hook (or agent code called from one), else 0.
 * For tests: a gc.callbacks entry that sees 1 caught a collection started inside a hook. */
int hp_hooks_in_hook(void);

#endif /* HP_HOOKS_H */
