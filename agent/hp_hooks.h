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

/* Re-attribution of sampled blocks that the interpreter hands out again without freeing
 * them (free lists): hp_hooks.c, "Objects handed out again". Start when profiling starts,
 * stop before it stops; the caller holds the GIL. Start returns 0, or -1 when this
 * interpreter offers no hook for it (CPython 3.11, 3.12): such blocks then keep the
 * stack of their first allocation until they are freed. */
int hp_hooks_reuse_start(void);
void hp_hooks_reuse_stop(void);
/* 1 when hp_hooks_reuse_start can succeed here (CPython 3.13+): the session's free filter
 * must then be made for it (hp_agent_opts.follow_reuse). */
int hp_hooks_reuse_available(void);

/* While on, the calling thread's allocations pass through unprofiled, as the agent's
 * own do (its frees are still looked up): for heapprof's own Python code at the stop.
 * Not from a hook; calls do not nest. */
void hp_hooks_unprofiled(int on);

/* 1 while the calling thread is inside a hook (or agent code called from one), else 0.
 * For tests: a gc.callbacks entry that sees 1 caught a collection started inside a hook. */
int hp_hooks_in_hook(void);

#endif /* HP_HOOKS_H */
