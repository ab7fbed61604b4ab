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
#include "hp_stacks.h"
#include "hp_stats.h"
#include "hp_pystr.h"

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

/* start(socket, interval, max_depth, on_full, buckets, argv, executable, python_version)
 * on_full: 0 drop, 1 block, 2 adapt.
 * buckets: None or a sequence of (max_size, rate). Raises ValueError for bad options,
 * OSError(errno, message) when the daemon cannot be reached. */
static PyObject *agent_start(PyObject *self, PyObject *args)
{
  (void)self;
  const char *sock;
  unsigned long long interval;
  unsigned int max_depth;
  int on_full;
  PyObject *buckets_obj, *argv_obj, *exe_obj, *ver_obj;
  hp_bucket buckets[HP_MAX_BUCKETS];
  hp_str *argv = NULL;
  hp_str exe = {0}, ver = {0};
  PyObject *argv_seq = NULL, *result = NULL;
  if (!PyArg_ParseTuple(args, "sKIiOOUU", &sock, &interval, &max_depth, &on_full,
                        &buckets_obj, &argv_obj, &exe_obj, &ver_obj))
    return NULL;
  hp_agent_opts o = {.socket_path = sock,
                     .sample_interval = interval,
                     .max_depth = max_depth,
                     .block_when_full = on_full == 1,
                     .adapt_when_full = on_full == 2,
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
  /* The sender may need a moment to drain; other Python threads can run meanwhile. */
  Py_BEGIN_ALLOW_THREADS rc = hp_agent_stop();
  Py_END_ALLOW_THREADS return PyLong_FromLong(rc);
}

/* thread_names([(native_id, name), ...]): the program's names for its threads, sent to
 * the running session (after the kernel's names, so they win). Entries that are not a
 * (int, str) pair raise TypeError; with no session running it does nothing. */
static PyObject *agent_thread_names(PyObject *self, PyObject *arg)
{
  (void)self;
  PyObject *seq = PySequence_Fast(arg, "thread_names() takes a sequence of (id, name)");
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
static PyObject *agent_frees_forwarded(PyObject *self, PyObject *noargs)
{
  (void)self;
  (void)noargs;
  return PyBool_FromLong(hp_hooks_frees_forwarded());
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
   "start(socket, interval, max_depth, on_full, buckets, argv, executable, "
   "python_version)"},
  {"stop", agent_stop, METH_NOARGS,
   "stop() -> 0 or the negative error that ended the stream"},
  {"is_profiling", agent_is_profiling, METH_NOARGS, "is_profiling() -> bool"},
  {"thread_names", agent_thread_names, METH_O,
   "thread_names([(native_id, name), ...]): the program's thread names, for the session"},
  {"child_needs_restart", agent_child_needs_restart, METH_NOARGS,
   "In a fork child: True once if the parent was profiling."},
  {"dropped", agent_dropped, METH_NOARGS, "Records dropped in the current session."},
  {"stats_enable", agent_stats_enable, METH_O, "stats_enable(on): stats mode"},
  {"stats_snapshot", agent_stats_snapshot, METH_NOARGS,
   "[(lo, hi, count, bytes), ...] per size class"},
  {"frees_forwarded", agent_frees_forwarded, METH_NOARGS,
   "frees_forwarded() -> bool: mem/obj frees go to pymalloc unhooked (sampled blocks "
   "come from the raw allocator, whose free is hooked)"},
  {"_in_hook", agent_in_hook, METH_NOARGS,
   "_in_hook() -> bool: this thread is inside an allocator hook (tests)"},
  {"_stack_stats", agent_stack_stats, METH_NOARGS,
   "_stack_stats() -> dict: stack caches and interning tables (tests)"},
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
