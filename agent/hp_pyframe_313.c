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
 * - Code objects are watched with PyCode_AddWatcher.
 * - Every object made live, new or taken from a free list, passes _Py_NewReference, which
 *   calls the runtime's one reference tracer (PyRefTracer_SetTracer, PyRefTracer_CREATE)
 *   with the object's type already set and the GIL held; the object's memory block starts
 *   _PyType_PreHeaderSize(type) bytes before it (tracemalloc's _PyTraceMalloc_TraceRef
 *   finds its trace there). tracemalloc.start() sets its own tracer, calling no previous
 *   one; tracemalloc.stop() sets none. */
#include <Python.h>

#include <stdatomic.h>

#if PY_VERSION_HEX < 0x030D0000 || PY_VERSION_HEX >= 0x030E0000
#error "hp_pyframe_313.c is for CPython 3.13 (agent/meson.build chooses the file)"
#endif
#ifdef Py_GIL_DISABLED
#error "free-threaded CPython is not supported (agent/meson.build refuses it)"
#endif

#define Py_BUILD_CORE 1
#include <internal/pycore_frame.h>
#include <internal/pycore_gc.h>
#undef Py_BUILD_CORE

#include "hp_addrtab.h"

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

/* Read by the tracers on any thread holding some interpreter's GIL (3.13's isolated
 * sub-interpreters run in parallel with the main one), written under the main GIL by
 * start: relaxed atomics. */
static _Atomic(void (*)(uintptr_t)) g_created;
static _Atomic(PyRefTracer) g_prev_tracer;
static _Atomic(void *) g_prev_data;

/* _PyType_PreHeaderSize() of the GIL build (pycore_object.h, whose inline functions do
 * not compile cleanly with -Wextra). */
static inline size_t preheader_size(PyTypeObject *tp)
{
  return (PyType_HasFeature(tp, Py_TPFLAGS_HAVE_GC) ? sizeof(PyGC_Head) : 0) +
         (PyType_HasFeature(tp, Py_TPFLAGS_PREHEADER) ? 2 * sizeof(PyObject *) : 0);
}

/* Runs for every object created and destroyed while profiling: a DESTROY returns at
 * once, and for a CREATE the filter's "never sampled" ends nearly every call here, without
 * a second call. The filter's test takes the object's address itself, standing for the
 * three blocks that may hold it (no pre-header, 16 or 32 bytes of it), so that the type's
 * flags are read only for the few objects that may be in a sampled block. data is the
 * tracer's own (hp_pyframe_reuse_start): where the filter's address is, one load fewer
 * than a global. */
static inline void object_created(PyObject *op, void *data)
{
  const _Atomic uint8_t *filter =
    atomic_load_explicit((const _Atomic uint8_t *const _Atomic *)data,
                         memory_order_relaxed);
  if (__builtin_expect(!hp_addrtab_filter_absent_near(filter, (uintptr_t)op), 0))
    atomic_load_explicit(&g_created,
                         memory_order_relaxed)((uintptr_t)op - preheader_size(Py_TYPE(op)));
}

static int on_ref_event(PyObject *op, PyRefTracerEvent event, void *data)
{
  if (event == PyRefTracer_CREATE)
    object_created(op, data);
  return 0;
}

/* The same, after the tracer that was in place before ours (tracemalloc's). */
static int on_ref_event_chained(PyObject *op, PyRefTracerEvent event, void *data)
{
  PyRefTracer prev = atomic_load_explicit(&g_prev_tracer, memory_order_relaxed);
  if (prev)
    prev(op, event, atomic_load_explicit(&g_prev_data, memory_order_relaxed));
  if (event == PyRefTracer_CREATE)
    object_created(op, data);
  return 0;
}

int hp_pyframe_reuse_available(void)
{
  return 1;
}

int hp_pyframe_reuse_start(void (*created)(uintptr_t block),
                           const _Atomic uint8_t *const _Atomic *filter)
{
  void *data;
  PyRefTracer cur = PyRefTracer_GetTracer(&data);
  if (cur == on_ref_event || cur == on_ref_event_chained)
    return 0; /* still ours, e.g. in a fork child starting its own session */
  atomic_store_explicit(&g_created, created, memory_order_relaxed);
  atomic_store_explicit(&g_prev_tracer, cur, memory_order_relaxed);
  atomic_store_explicit(&g_prev_data, data, memory_order_relaxed);
  if (PyRefTracer_SetTracer(cur ? on_ref_event_chained : on_ref_event, (void *)filter) <
      0) {
    PyErr_Clear();
    return -1;
  }
  return 0;
}

void hp_pyframe_reuse_stop(void)
{
  void *data;
  PyRefTracer cur = PyRefTracer_GetTracer(&data);
  if (cur != on_ref_event && cur != on_ref_event_chained)
    return;
  if (PyRefTracer_SetTracer(atomic_load_explicit(&g_prev_tracer, memory_order_relaxed),
                            atomic_load_explicit(&g_prev_data, memory_order_relaxed)) < 0)
    PyErr_Clear();
}
