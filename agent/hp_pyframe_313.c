/* hp_pyframe_313.c — hp_pyframe.h for CPython 3.13 (the default build, with the GIL).
 *
 * Facts (Include/internal/pycore_frame.h and Python/tracemalloc.c of 3.13):
 * - _PyCFrame is gone: a thread's newest frame is tstate->current_frame.
 * - A frame's code is f_executable, which is not always a code object: the C-entry frame
 *   (FRAME_OWNED_BY_CSTACK) holds None. Such frames are skipped before anything reads them
 *   as code; _PyFrame_IsIncomplete itself tests the owner first.
 * - Incomplete frames are skipped (_PyFrame_GetFirstComplete, as tracemalloc walks). That
 *   includes the clean-up frame that a specialised call of a class with __init__
 *   (CALL_ALLOC_AND_ENTER_INIT) pushes between the caller and __init__: its code,
 *   _Py_InitCleanup ("__init__" in file "__init__"), has _co_firsttraceable beyond its last
 *   instruction, so it is always incomplete.
 * - instr_ptr points at the current instruction; _PyInterpreterFrame_LASTI gives its
 *   code-unit index, which PyCode_Addr2Line wants in bytes.
 * - Code objects are watched with PyCode_AddWatcher. */
#include <Python.h>

#if PY_VERSION_HEX < 0x030D0000 || PY_VERSION_HEX >= 0x030E0000
#error "hp_pyframe_313.c is for CPython 3.13 (agent/meson.build chooses the file)"
#endif
#ifdef Py_GIL_DISABLED
#error "free-threaded CPython is not supported (agent/meson.build refuses it)"
#endif

#define Py_BUILD_CORE 1
#include <internal/pycore_frame.h>
#undef Py_BUILD_CORE

static inline _PyInterpreterFrame *first_frame(PyThreadState *ts)
{
  return ts->current_frame;
}

static inline PyCodeObject *frame_code(_PyInterpreterFrame *f)
{
  if (f->owner == FRAME_OWNED_BY_CSTACK || !PyCode_Check(f->f_executable) ||
      _PyFrame_IsIncomplete(f))
    return NULL;
  return (PyCodeObject *)f->f_executable;
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
