/* hp_pyframe.h — the only window onto CPython's interpreter internals: the Python frames
 * the calling thread is running, and the death of code objects.
 *
 * One implementation per CPython minor version, hp_pyframe_3XX.c, chosen by the build
 * (agent/meson.build); they alone define Py_BUILD_CORE, and the rest of the agent (the
 * hooks, hp_stacks, interning) knows only this header and the public C API, so it never
 * knows which version it runs in. Supporting the next version is one more file. Each file
 * states its version's facts and where they were checked (that version's tracemalloc and
 * internal frame header).
 *
 * Both functions may run inside an allocator hook: they read memory only, and never
 * allocate, raise, run Python code or take a lock. */
#ifndef HP_PYFRAME_H
#define HP_PYFRAME_H

#include <Python.h>
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

/* From now on, destroyed(code) is called for every code object of the main interpreter
 * before its memory is freed (with the GIL held, possibly inside an allocation: it must
 * only forget the address). Caller holds the GIL; call once. 0, or -1 when this interpreter
 * offers no way to watch (e.g. no code-watcher slot left): then never cache anything by a
 * code object's address. */
int hp_pyframe_watch_codes(void (*destroyed)(PyCodeObject *code));

#endif /* HP_PYFRAME_H */
