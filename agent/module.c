/* module.c — heapprof._agent: the Python binding of the agent engine. No logic here:
 * argument conversion and calls into hp_agent / hp_hooks / hp_stats (tracemalloc's
 * split between _tracemalloc's binding and its engine). The pure-Python package
 * (heapprof/__init__.py) reads the environment and options and calls these. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "hp_agent.h"
#include "hp_hooks.h"
#include "hp_native.h"
#include "hp_stacks.h"
#include "hp_stats.h"
#include "hp_pystr.h"

/* Whether the running session re-attributes blocks that free lists hand out again
 * (hp_hooks_reuse_start). Under the GIL. */
static int g_reuse_seen;

/* A str argument as UTF-8 in a malloc()ed copy (the caller frees out->ptr), by the rule
 * frame names follow (hp_pystr.h): argv and paths may come from bytes that are not UTF-8
 * (sys.argv[0] of a script in such a directory). Cut at HP_MAX_STR_BYTES: informational. */
static int str_arg(PyObject *o, hp_str *out)
{
  if (!PyUnicode_Check(o)) {
    PyErr_SetString(PyExc_TypeError, "expected str");
    return -1;
  }
  size_t cap = (size_t)PyUnicode_GET_LENGTH(o) * 4;
  cap = cap > HP_MAX_STR_BYTES ? HP_MAX_STR_BYTES : cap;
  char *buf = malloc(cap ? cap : 1);
  if (!buf) {
    PyErr_NoMemory();
    return -1;
  }
  out->ptr = buf;
  out->len = (uint32_t)hp_pystr_encode(PyUnicode_DATA(o), PyUnicode_KIND(o),
                                       (size_t)PyUnicode_GET_LENGTH(o), buf, cap);
  return 0;
}

static void str_args_free(hp_str *s, size_t n)
{
  for (size_t i = 0; s && i < n; i++)
    free((char *)s[i].ptr);
}

/* start(socket, interval, max_depth, on_full, buckets, argv, executable, python_version,
 *       native, freelists)
 * on_full: 0 drop, 1 block, 2 adapt. native: also interpose the malloc family of the
 * loaded shared objects (hp_native.h). freelists: re-attribute blocks that free lists
 * hand out again (hp_hooks_reuse_start); off, the interpreter calls no tracer of ours
 * for every object, and a reused block keeps its first stack as on 3.11/3.12, where
 * there is nothing to install either way.
 * buckets: None or a sequence of (max_size, rate). Raises ValueError for bad options,
 * OSError(errno, message) when the daemon cannot be reached. */
static PyObject *agent_start(PyObject *self, PyObject *args)
{
  (void)self;
  const char *sock;
  unsigned long long interval;
  unsigned int max_depth;
  int on_full, native = 1, freelists = 1;
  PyObject *buckets_obj, *argv_obj, *exe_obj, *ver_obj;
  hp_bucket buckets[HP_MAX_BUCKETS];
  hp_str *argv = NULL;
  hp_str exe = {0}, ver = {0};
  PyObject *argv_seq = NULL, *result = NULL;
  if (!PyArg_ParseTuple(args, "sKIiOOUU|pp", &sock, &interval, &max_depth, &on_full,
                        &buckets_obj, &argv_obj, &exe_obj, &ver_obj, &native, &freelists))
    return NULL;
  hp_agent_opts o = {.socket_path = sock,
                     .sample_interval = interval,
                     .max_depth = max_depth,
                     .block_when_full = on_full == 1,
                     .adapt_when_full = on_full == 2,
                     .follow_reuse = freelists && hp_hooks_reuse_available(),
                     .hooks_replaced = hp_hooks_replaced};
  if (max_depth < 1 || max_depth > HP_MAX_STACK_DEPTH) {
    PyErr_Format(PyExc_ValueError, "max stack depth %u is outside 1..%u", max_depth,
                 HP_MAX_STACK_DEPTH);
    return NULL;
  }
  if (buckets_obj != Py_None) {
    PyObject *seq = PySequence_Fast(buckets_obj, "sample rates must be a sequence");
    if (!seq)
      return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n < 1 || n > (Py_ssize_t)HP_MAX_BUCKETS) {
      PyErr_Format(PyExc_ValueError, "sample rates: %zd size buckets, allowed 1..%u", n,
                   HP_MAX_BUCKETS);
      Py_DECREF(seq);
      return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
      unsigned long long sz;
      double rate;
      if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i),
                            "Kd;sample rate entries are "
                            "(max_size, rate)",
                            &sz, &rate)) {
        Py_DECREF(seq);
        return NULL;
      }
      buckets[i].max_size = sz;
      buckets[i].rate = rate;
    }
    Py_DECREF(seq);
    o.buckets = buckets;
    o.nbuckets = (uint32_t)n;
  } else if (interval < 1) {
    PyErr_SetString(PyExc_ValueError, "sample interval must be at least 1 byte");
    return NULL;
  }
  argv_seq = PySequence_Fast(argv_obj, "argv must be a sequence of str");
  if (!argv_seq)
    return NULL;
  Py_ssize_t argc = PySequence_Fast_GET_SIZE(argv_seq);
  if (argc > (Py_ssize_t)HP_MAX_ARGV)
    argc = HP_MAX_ARGV;
  argv = calloc((size_t)(argc ? argc : 1), sizeof(hp_str));
  if (!argv) {
    PyErr_NoMemory();
    goto out;
  }
  for (Py_ssize_t i = 0; i < argc; i++)
    if (str_arg(PySequence_Fast_GET_ITEM(argv_seq, i), &argv[i]) < 0)
      goto out;
  if (str_arg(exe_obj, &exe) < 0 || str_arg(ver_obj, &ver) < 0)
    goto out;
  o.executable = exe;
  o.python_version = ver;
  o.argc = (uint32_t)argc;
  o.argv = argv;

  if (hp_hooks_install() < 0) {
    PyErr_NoMemory();
    goto out;
  }
  int rc = hp_agent_start(&o);
  if (rc == -HP_EINVAL) {
    PyErr_SetString(PyExc_ValueError, hp_agent_is_profiling()
                                        ? "heapprof is already profiling this process"
                                        : "invalid sampling options (bucket sizes must "
                                          "increase, rates in (0, 1])");
    goto out;
  }
  if (rc < 0) {
    if (rc > -1000) {
      errno = -rc;
      PyErr_SetFromErrnoWithFilename(PyExc_OSError, sock);
    } else {
      PyErr_Format(PyExc_OSError, "%s: %s", sock, hp_strerror(rc));
    }
    goto out;
  }
  /* After the session is up: a start that failed has rewritten nothing. A failure here
   * (out of memory) only narrows what is seen. */
  if (native)
    (void)hp_native_start();
  g_reuse_seen = freelists && hp_hooks_reuse_start() == 0;
  result = Py_NewRef(Py_None);
out:
  str_args_free(argv, argv ? (size_t)argc : 0);
  free(argv);
  free((char *)exe.ptr);
  free((char *)ver.ptr);
  Py_XDECREF(argv_seq);
  return result;
}

static PyObject *agent_stop(PyObject *self, PyObject *unused)
{
  (void)self;
  (void)unused;
  int rc;
  hp_hooks_reuse_stop(); /* needs the GIL */
  g_reuse_seen = 0;
  /* The sender may need a moment to drain; other Python threads can run meanwhile. */
  Py_BEGIN_ALLOW_THREADS
  /* The slots first, so that the program runs without the native hooks while the
   * session drains. */
  hp_native_stop();
  rc = hp_agent_stop();
  Py_END_ALLOW_THREADS return PyLong_FromLong(rc);
}

/* thread_names(names): the program's names for its threads, sent to the running session
 * (after the kernel's names, so they win). names is a sequence of (native_id, name), or
 * a callable returning one, which is then called with this thread's allocations
 * unprofiled: heapprof's own work at the stop must not show up in the profile under its
 * frames. Entries that are not a (int, str) pair raise TypeError; with no session running
 * it does nothing. */
static PyObject *agent_thread_names(PyObject *self, PyObject *arg)
{
  (void)self;
  PyObject *names = NULL;
  if (PyCallable_Check(arg)) {
    hp_hooks_unprofiled(1);
    names = PyObject_CallNoArgs(arg);
    hp_hooks_unprofiled(0);
    if (!names)
      return NULL;
    arg = names;
  }
  PyObject *seq = PySequence_Fast(arg, "thread_names() takes a sequence of (id, name)");
  Py_XDECREF(names);
  if (!seq)
    return NULL;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  for (Py_ssize_t i = 0; i < n; i++) {
    unsigned long long tid;
    PyObject *name;
    if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i),
                          "KU;thread names are (id, name)", &tid, &name)) {
      Py_DECREF(seq);
      return NULL;
    }
    hp_str str;
    if (str_arg(name, &str) < 0) {
      Py_DECREF(seq);
      return NULL;
    }
    int rc;
    /* A stop in another thread may hold the agent lock while heapprofd drains. */
    Py_BEGIN_ALLOW_THREADS rc = hp_agent_thread_name(tid, str.ptr, str.len);
    Py_END_ALLOW_THREADS if (rc == -HP_EINVAL) break; /* no session */
  }
  Py_DECREF(seq);
  Py_RETURN_NONE;
}

/* mark(label): a marker for the running session (heapprof.mark). True when queued;
 * False when no session runs or the marker could not be queued. TypeError for a label
 * that is not a str. Never waits (hp_agent_mark). */
static PyObject *agent_mark(PyObject *self, PyObject *label)
{
  (void)self;
  if (!PyUnicode_Check(label)) {
    PyErr_Format(PyExc_TypeError, "heapprof.mark() label must be str, not %.100s",
                 Py_TYPE(label)->tp_name);
    return NULL;
  }
  if (!hp_agent_is_profiling())
    Py_RETURN_FALSE;
  hp_str str;
  if (str_arg(label, &str) < 0) {
    PyErr_Clear(); /* out of memory: the marker is lost, the program goes on */
    Py_RETURN_FALSE;
  }
  int rc = hp_agent_mark(str.ptr, str.len);
  free((char *)str.ptr);
  return PyBool_FromLong(rc == 0);
}

static PyObject *agent_is_profiling(PyObject *self, PyObject *unused)
{
  (void)self;
  (void)unused;
  return PyBool_FromLong(hp_agent_is_profiling());
}

static PyObject *agent_child_needs_restart(PyObject *self, PyObject *unused)
{
  (void)self;
  (void)unused;
  return PyBool_FromLong(hp_agent_child_needs_restart());
}

static PyObject *agent_dropped(PyObject *self, PyObject *unused)
{
  (void)self;
  (void)unused;
  return PyLong_FromUnsignedLongLong(hp_agent_dropped());
}

static PyObject *agent_stats_enable(PyObject *self, PyObject *arg)
{
  (void)self;
  int on = PyObject_IsTrue(arg);
  if (on < 0)
    return NULL;
  if (on && hp_hooks_install() < 0)
    return PyErr_NoMemory();
  hp_agent_stats_enable(on);
  Py_RETURN_NONE;
}

/* [(lo, hi, count, bytes), ...] for the non-empty size classes, smallest first. */
static PyObject *agent_stats_snapshot(PyObject *self, PyObject *unused)
{
  (void)self;
  (void)unused;
  uint64_t count[HP_STATS_CLASSES], bytes[HP_STATS_CLASSES];
  hp_stats_snapshot(count, bytes);
  PyObject *list = PyList_New(0);
  if (!list)
    return NULL;
  for (unsigned c = 0; c < HP_STATS_CLASSES; c++) {
    if (!count[c])
      continue;
    uint64_t lo, hi;
    hp_stats_class_bounds(c, &lo, &hi);
    PyObject *t = Py_BuildValue("(KKKK)", (unsigned long long)lo, (unsigned long long)hi,
                                (unsigned long long)count[c], (unsigned long long)bytes[c]);
    if (!t || PyList_Append(list, t) < 0) {
      Py_XDECREF(t);
      Py_DECREF(list);
      return NULL;
    }
    Py_DECREF(t);
  }
  return list;
}

/* For tests and the curious: whether mem/obj frees bypass the hooks (hp_hooks.h). */
static PyObject *agent_frees_via_raw(PyObject *self, PyObject *noargs)
{
  (void)self;
  (void)noargs;
  return PyBool_FromLong(hp_hooks_frees_via_raw());
}

/* Whether blocks that free lists hand out again are re-attributed in this session
 * (CPython 3.13+; hp_hooks.h). */
static PyObject *agent_reuse_seen(PyObject *self, PyObject *noargs)
{
  (void)self;
  (void)noargs;
  return PyBool_FromLong(g_reuse_seen && hp_agent_is_profiling());
}

/* For tests: whether this thread is inside a hook right now (a gc.callbacks entry asks
 * it to catch a collection started inside an allocation hook). */
static PyObject *agent_in_hook(PyObject *self, PyObject *noargs)
{
  (void)self;
  (void)noargs;
  return PyBool_FromLong(hp_hooks_in_hook());
}

/* For tests: the stack caches' counters (hp_stacks.h) and the interning tables' sizes. */
static PyObject *agent_stack_stats(PyObject *self, PyObject *noargs)
{
  (void)self;
  (void)noargs;
  hp_stacks_stats st;
  hp_stacks_get_stats(&st);
  hp_intern *in = hp_agent_intern();
  return Py_BuildValue("{s:O,s:K,s:K,s:I,s:I}", "caches_on",
                       st.caches_on ? Py_True : Py_False, "code_flushes",
                       (unsigned long long)st.code_flushes, "frames_named",
                       (unsigned long long)st.frames_named, "frames",
                       in ? hp_intern_frame_count(in) : 0u, "stacks",
                       in ? hp_intern_stack_count(in) : 0u);
}

/* For tests: how many import slots hold a native hook now. */
static PyObject *agent_native_slots(PyObject *self, PyObject *noargs)
{
  (void)self;
  (void)noargs;
  size_t n;
  Py_BEGIN_ALLOW_THREADS n = hp_native_slots();
  Py_END_ALLOW_THREADS return PyLong_FromSize_t(n);
}

static PyObject *agent_sample_estimate(PyObject *self, PyObject *args)
{
  (void)self;
  unsigned long long interval, size;
  if (!PyArg_ParseTuple(args, "KK", &interval, &size))
    return NULL;
  return PyLong_FromUnsignedLongLong(hp_sampler_estimate(interval, size));
}

static PyMethodDef agent_methods[] = {
  {"start", agent_start, METH_VARARGS,
   "start(socket, interval, max_depth, on_full, buckets, argv, executable, python_version"
   "[, native=True, freelists=True])"},
  {"stop", agent_stop, METH_NOARGS,
   "stop() -> 0 or the negative error that ended the stream"},
  {"is_profiling", agent_is_profiling, METH_NOARGS, "is_profiling() -> bool"},
  {"mark", agent_mark, METH_O,
   "mark(label) -> bool: a timestamped marker for the running session; False when none"},
  {"thread_names", agent_thread_names, METH_O,
   "thread_names([(native_id, name), ...]): the program's thread names, for the session"},
  {"child_needs_restart", agent_child_needs_restart, METH_NOARGS,
   "In a fork child: True once if the parent was profiling."},
  {"dropped", agent_dropped, METH_NOARGS, "Records dropped in the current session."},
  {"stats_enable", agent_stats_enable, METH_O, "stats_enable(on): stats mode"},
  {"stats_snapshot", agent_stats_snapshot, METH_NOARGS,
   "[(lo, hi, count, bytes), ...] per size class"},
  {"frees_via_raw", agent_frees_via_raw, METH_NOARGS,
   "frees_via_raw() -> bool: mem/obj frees go to pymalloc unhooked (sampled blocks "
   "come from the raw allocator, whose free is hooked)"},
  {"reuse_seen", agent_reuse_seen, METH_NOARGS,
   "reuse_seen() -> bool: this session re-attributes sampled blocks that the interpreter's "
   "free lists hand out again (CPython 3.13+)"},
  {"_in_hook", agent_in_hook, METH_NOARGS,
   "_in_hook() -> bool: this thread is inside an allocator hook (tests)"},
  {"_stack_stats", agent_stack_stats, METH_NOARGS,
   "_stack_stats() -> dict: stack caches and interning tables (tests)"},
  {"_native_slots", agent_native_slots, METH_NOARGS,
   "_native_slots() -> int: import slots rewritten to the native hooks now (tests)"},
  {"sample_estimate", agent_sample_estimate, METH_VARARGS,
   "sample_estimate(interval, size) -> est_bytes of one sample"},
  {NULL, NULL, 0, NULL},
};

static struct PyModuleDef agent_module = {
  PyModuleDef_HEAD_INIT,
  "heapprof._agent",
  "heapprof's native agent: PEP 445 hooks, sampler and sender thread.",
  -1,
  agent_methods,
  NULL,
  NULL,
  NULL,
  NULL,
};

/* Built only for the CPython versions agent/meson.build has a stack-walk file for. */
PyMODINIT_FUNC PyInit__agent(void)
{
  if (PyInterpreterState_Get() != PyInterpreterState_Main()) {
    PyErr_SetString(PyExc_ImportError, "heapprof profiles the main interpreter only; "
                                       "sub-interpreters are refused");
    return NULL;
  }
  if (hp_agent_init() < 0) {
    PyErr_NoMemory();
    return NULL;
  }
  PyObject *m = PyModule_Create(&agent_module);
  if (!m)
    return NULL;
  if (PyModule_AddIntConstant(m, "DEFAULT_INTERVAL", HP_SAMPLER_DEFAULT_INTERVAL) < 0 ||
      PyModule_AddIntConstant(m, "DEFAULT_MAX_DEPTH", HP_AGENT_DEFAULT_MAX_DEPTH) < 0 ||
      PyModule_AddIntConstant(m, "MAX_STACK_DEPTH", HP_MAX_STACK_DEPTH) < 0 ||
      PyModule_AddIntConstant(m, "MAX_BUCKETS", HP_MAX_BUCKETS) < 0) {
    Py_DECREF(m);
    return NULL;
  }
  return m;
}
