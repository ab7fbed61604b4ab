/* hp_pyframe_312.c — hp_pyframe.h for CPython 3.12.
 *
 * Facts (Include/internal/pycore_frame.h and Python/tracemalloc.c of 3.12):
 * - A thread's newest frame is still tstate->cframe->current_frame (_PyThreadState_GetFrame).
 * - Every entry into the interpreter from C pushes an extra frame owned by the C stack
 *   (FRAME_OWNED_BY_CSTACK, code: the interpreter's "<interpreter trampoline>"). It is never
 *   shown: _PyFrame_IsIncomplete already says so, its prev_instr being before the
 *   trampoline's first traceable instruction, and the owner is tested first anyway.
 * - Incomplete frames are skipped as on 3.11 (what _PyFrame_GetFirstComplete skips).
 * - The code object is f_code; prev_instr is a code-unit index (_PyInterpreterFrame_LASTI)
 *   that PyCode_Addr2Line wants in bytes, as PyUnstable_InterpreterFrame_GetLine does.
 * - Code objects are watched with PyCode_AddWatcher (new in 3.12). */
#include <Python.h>

#if PY_VERSION_HEX < 0x030C0000 || PY_VERSION_HEX >= 0x030D0000
#error "hp_pyframe_312.c is for CPython 3.12 (agent/meson.build chooses the file)"
#endif

#define Py_BUILD_CORE 1
#include <internal/pycore_frame.h>
#undef Py_BUILD_CORE

static inline _PyInterpreterFrame *first_frame(PyThreadState *ts)
{
  return ts->cframe ? ts->cframe->current_frame : NULL;
}

static inline PyCodeObject *frame_code(_PyInterpreterFrame *f)
{
  if (f->owner == FRAME_OWNED_BY_CSTACK || _PyFrame_IsIncomplete(f))
    return NULL;
  return f->f_code;
}

static inline int frame_offset(_PyInterpreterFrame *f)
{
  return _PyInterpreterFrame_LASTI(f) * (int)sizeof(_Py_CODEUNIT);
}

#include "hp_pyframe_int.h"

int hp_pyframe_watch_codes(void (*destroyed)(PyCodeObject *code))
{
  return watch_codes_with_watcher(destroyed);
}
