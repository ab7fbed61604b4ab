/* hp_pyframe_int.h — what the version files of hp_pyframe share. Included only by
 * hp_pyframe_3XX.c, after its version's internal frame header and after it has defined:
 *
 *   first_frame(ts)   the newest interpreter frame of thread state ts, or NULL
 *   frame_code(f)     the code object of frame f, or NULL when a traceback skips f
 *   frame_offset(f)   the byte offset of f's current instruction (f has code)
 *
 * so that each version file holds its version's facts and nothing else. */
#ifndef HP_PYFRAME_INT_H
#define HP_PYFRAME_INT_H

#include "hp_pyframe.h"

/* The calling thread's state if it holds the main interpreter's GIL, else NULL.
 * _PyThreadState_UncheckedGet() is the GIL holder's state on 3.11 (one global), this
 * thread's attached state on 3.12+ (a thread-local; attached means holding its
 * interpreter's GIL); comparing with this thread's own GILState state covers 3.11, the
 * interpreter check covers 3.12+'s sub-interpreters with a GIL of their own, which run in
 * parallel with the main interpreter and must not touch the agent's GIL-protected caches. */
static PyThreadState *main_gil_holder(void)
{
  PyThreadState *ts = _PyThreadState_UncheckedGet();
  if (!ts || ts != PyGILState_GetThisThreadState() ||
      ts->interp != PyInterpreterState_Main())
    return NULL;
  return ts;
}

uint32_t hp_pyframe_walk(hp_pyframe *out, uint32_t max, uint8_t *truncated)
{
  uint32_t n = 0;
  *truncated = 0;
  PyThreadState *ts = main_gil_holder();
  if (!ts)
    return 0;
  for (_PyInterpreterFrame *f = first_frame(ts); f; f = f->previous) {
    PyCodeObject *code = frame_code(f);
    if (!code)
      continue;
    if (n == max) {
      *truncated = 1;
      break;
    }
    out[n].code = code;
    out[n].offset = frame_offset(f);
    n++;
  }
  return n;
}

#if PY_VERSION_HEX >= 0x030C0000
/* 3.12+: code watchers (PyCode_AddWatcher; PY_CODE_EVENT_DESTROY comes from code_dealloc,
 * before anything is freed). A watcher belongs to the interpreter that adds it: the main
 * one, whose frames alone are walked. */
static void (*g_code_destroyed)(PyCodeObject *code);

static int on_code_event(PyCodeEvent event, PyCodeObject *code)
{
  if (event == PY_CODE_EVENT_DESTROY)
    g_code_destroyed(code);
  return 0;
}

static int watch_codes_with_watcher(void (*destroyed)(PyCodeObject *code))
{
  if (PyInterpreterState_Get() != PyInterpreterState_Main())
    return -1; /* the main interpreter's code would go unwatched */
  g_code_destroyed = destroyed;
  if (PyCode_AddWatcher(on_code_event) < 0) { /* all watcher slots taken */
    PyErr_Clear();
    return -1;
  }
  return 0;
}
#endif

#endif /* HP_PYFRAME_INT_H */
