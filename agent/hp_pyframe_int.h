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

/* The calling thread's own state of the main interpreter while it does not hold the GIL
 * (released around a C call), else NULL. Its frames are its own: no other thread changes
 * them, and they and their code objects stay as they are until this thread takes the GIL
 * back. Not while the interpreter finalizes, which frees other threads' states. */
static PyThreadState *detached_own_state(void)
{
  PyThreadState *ts = PyGILState_GetThisThreadState();
  if (!ts || ts == _PyThreadState_UncheckedGet() || ts->interp != PyInterpreterState_Main())
    return NULL;
#if PY_VERSION_HEX >= 0x030D0000
  if (Py_IsFinalizing())
    return NULL;
#else
  if (_Py_IsFinalizing())
    return NULL;
#endif
  return ts;
}

static uint32_t walk_state(PyThreadState *ts, hp_pyframe *out, uint32_t max,
                           uint8_t *truncated);

uint32_t hp_pyframe_walk(hp_pyframe *out, uint32_t max, uint8_t *truncated)
{
  *truncated = 0;
  PyThreadState *ts = main_gil_holder();
  if (!ts)
    return 0;
  return walk_state(ts, out, max, truncated);
}

uint32_t hp_pyframe_walk_detached(hp_pyframe *out, uint32_t max, uint8_t *truncated)
{
  *truncated = 0;
  PyThreadState *ts = detached_own_state();
  if (!ts)
    return 0;
  return walk_state(ts, out, max, truncated);
}

static uint32_t walk_state(PyThreadState *ts, hp_pyframe *out, uint32_t max,
                           uint8_t *truncated)
{
  uint32_t n = 0;
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

#if PY_VERSION_HEX < 0x030D0000
/* No public hook sees a free list hand an object out again before 3.13. */
int hp_pyframe_reuse_start(void (*created)(uintptr_t block),
                           const _Atomic uint8_t *const _Atomic *filter)
{
  (void)created;
  (void)filter;
  return -1;
}

void hp_pyframe_reuse_stop(void)
{
}

int hp_pyframe_reuse_available(void)
{
  return 0;
}
#endif

#endif /* HP_PYFRAME_INT_H */
