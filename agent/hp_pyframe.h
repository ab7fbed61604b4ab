/* hp_pyframe.h — the only window onto CPython's interpreter internals: the Python frames
 * the calling thread is running, the death of code objects, and the creation of objects
 * (to see a free list hand a block out again).
 *
 * One implementation per CPython minor version, hp_pyframe_3XX.c, chosen by the build
 * (agent/meson.build); they alone define Py_BUILD_CORE, and the rest of the agent (the
 * hooks, hp_stacks, interning) knows only this header and the public C API, so it never
 * knows which version it runs in. Supporting the next version is one more file. Each file
 * states its version's facts and where they were checked (that version's tracemalloc and
 * internal frame header).
 *
 * hp_pyframe_walk may run inside an allocator hook: it reads memory only, and never
 * allocates, raises, runs Python code or takes a lock. */
#ifndef HP_PYFRAME_H
#define HP_PYFRAME_H

#include <Python.h>
#include <stdatomic.h>
#include <stdint.h>

typedef struct {
  PyCodeObject *code; /* borrowed: alive while its frame runs */
  int offset; /* byte offset of the frame's current instruction (PyCode_Addr2Line) */
} hp_pyframe;

/* The calling thread's Python frames, innermost first: those a traceback shows. Frames
 * still being set up, the C-entry frames of 3.12+ and 3.13's __init__ clean-up frame are
 * skipped. Writes at most max entries; *truncated = 1 when more frames followed. Returns
 * the count; 0, having read no Python state and written nothing to out, unless the thread
 * holds the GIL of the main interpreter. */
uint32_t hp_pyframe_walk(hp_pyframe *out, uint32_t max, uint8_t *truncated);

/* The same for a thread of the main interpreter that released the GIL around a C call
 * (Py_BEGIN_ALLOW_THREADS: numpy's large calloc, ctypes calls): its own frames, which
 * only it could change. 0, having written nothing, when the thread holds the GIL, has no
 * thread state or the interpreter is finalizing. The caller serialises the use of what
 * it returns with any other walker (hp_stacks' lock), as the GIL does for the other. */
uint32_t hp_pyframe_walk_detached(hp_pyframe *out, uint32_t max, uint8_t *truncated);

/* From now on, destroyed(code) is called for every code object of the main interpreter
 * before its memory is freed (with the GIL held, possibly inside an allocation: it must
 * only forget the address). Caller holds the GIL; call once. 0, or -1 when this interpreter
 * offers no way to watch (e.g. no code-watcher slot left): then never cache anything by a
 * code object's address. */
int hp_pyframe_watch_codes(void (*destroyed)(PyCodeObject *code));

/* From now on, created(block) is called whenever the interpreter makes an object live,
 * whether its memory is new or was kept by a free list since the last object there died
 * (CPython allocates nothing then), with block = the start of the object's memory block
 * (the object minus its pre-header: the GC header, managed dict and weakref pointers),
 * unless *filter (an hp_addrtab counting filter, read at each call, counting with
 * HP_ADDRTAB_FILTER_NEAR) proves that block absent: this runs for every object the
 * program creates, and nearly every call ends at that test. created() runs with the GIL
 * of the object's interpreter held, in the middle of the object's creation: it must not
 * run Python code, allocate through Python or raise. A tracer that was in place
 * (tracemalloc's, while it traces) is still called. Caller holds the GIL; calling it
 * again while in place does nothing. 0, or -1 when this interpreter has no way to see
 * it: CPython 3.11 and 3.12 (PyRefTracer_SetTracer is new in 3.13; their free lists call
 * only tracemalloc's private hook). */
int hp_pyframe_reuse_start(void (*created)(uintptr_t block),
                           const _Atomic uint8_t *const _Atomic *filter);
/* 1 when hp_pyframe_reuse_start can succeed on this interpreter (3.13+), else 0. */
int hp_pyframe_reuse_available(void);
/* Puts back the tracer that was in place at the start, unless someone has replaced ours
 * since (tracemalloc.start() takes the one tracer slot without calling the previous
 * one; its stop() empties the slot): theirs is then left alone. Caller holds the GIL. */
void hp_pyframe_reuse_stop(void);

#endif /* HP_PYFRAME_H */
