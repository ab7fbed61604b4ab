/* hp_pyframe_311.c — hp_pyframe.h for CPython 3.11.
 *
 * Facts (Include/internal/pycore_frame.h and Python/tracemalloc.c of 3.11):
 * - A thread's newest frame is tstate->cframe->current_frame; frames link by ->previous.
 *   3.11 pushes no frame for a C entry into the interpreter (the _PyCFrame does that job).
 * - A frame is skipped while incomplete (_PyFrame_IsIncomplete: not a generator's and its
 *   prev_instr still before _co_firsttraceable, i.e. still copying arguments and cells),
 *   as tracemalloc's traceback does.
 * - The code object is f_code; the instruction is prev_instr, a code-unit index
 *   (_PyInterpreterFrame_LASTI) that PyCode_Addr2Line wants in bytes.
 * - 3.11 has no code watchers. Its code objects all die through PyCode_Type.tp_dealloc
 *   (code_dealloc, before the memory and the co_extra free functions run), so the watch
 *   wraps that slot: a notification, then CPython's own deallocator. The slot is replaced
 *   once, under the GIL, and never put back (like the allocator hooks: the agent stays
 *   loaded). The co_extra free function (PEP 523) would notify too, but attaching it
 *   allocates with PyMem_Realloc, which an allocator hook must not. */
#include <Python.h>

#if PY_VERSION_HEX < 0x030B0000 || PY_VERSION_HEX >= 0x030C0000
#error "hp_pyframe_311.c is for CPython 3.11 (agent/meson.build chooses the file)"
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
  return _PyFrame_IsIncomplete(f) ? NULL : f->f_code;
}

static inline int frame_offset(_PyInterpreterFrame *f)
{
  return _PyInterpreterFrame_LASTI(f) * (int)sizeof(_Py_CODEUNIT);
}

#include "hp_pyframe_int.h"

static void (*g_code_destroyed)(PyCodeObject *code);
static destructor g_code_dealloc;

static void code_dealloc_watched(PyObject *code)
{
  g_code_destroyed((PyCodeObject *)code);
  g_code_dealloc(code);
}

int hp_pyframe_watch_codes(void (*destroyed)(PyCodeObject *code))
{
  if (g_code_dealloc)
    return 0;
  g_code_destroyed = destroyed;
  g_code_dealloc = PyCode_Type.tp_dealloc;
  PyCode_Type.tp_dealloc = code_dealloc_watched;
  return 0;
}
