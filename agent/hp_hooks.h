/* hp_hooks.h — the PEP 445 allocator hooks and the Python stack walk.
 *
 * Installed once (under the GIL) on the raw, mem and obj domains, chaining to the
 * allocators that were in place; never removed, because memory allocated through them
 * may be freed at any later time. While the agent is off each hook costs one relaxed
 * load on top of the real allocator. Hooks never fail an allocation and never change
 * errno. */
#ifndef HP_HOOKS_H
#define HP_HOOKS_H

/* Installs the hooks if not yet installed. Caller holds the GIL. 0 or -HP_EINVAL when
 * the interpreter is not supported. */
int hp_hooks_install(void);

/* Sets this thread's re-entry flag around agent work that may allocate through the
 * hooked allocators (e.g. building Python objects in module.c), so it is not profiled.
 * Returns the previous value for hp_hooks_leave_agent(). */
int hp_hooks_enter_agent(void);
void hp_hooks_leave_agent(int previous);

#endif /* HP_HOOKS_H */
