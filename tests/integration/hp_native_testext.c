/* hp_native_testext.c — a C extension for the native-allocation tests (built by the test
 * suite, never installed). Each function allocates or frees with one function of the
 * malloc family, or maps anonymous memory, through this object's own import slots, and
 * counts what it asked for, so that the tests compare heapprof's record with the
 * extension's own byte counts. Built twice: lazy binding (HP_TESTEXT_NAME
 * hp_native_testext) and full RELRO (-z now, hp_native_testext_now), whose slots are
 * read-only once relocated.
 *
 * Addresses cross into Python as ints. churn_start() runs threads that allocate and free
 * without the GIL until churn_stop(), for the stop-while-allocating and fork tests. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#ifndef HP_TESTEXT_NAME
#define HP_TESTEXT_NAME hp_native_testext
#endif
#define HP_STR2(x) #x
#define HP_STR(x) HP_STR2(x)
#define HP_CAT2(a, b) a##b
#define HP_CAT(a, b) HP_CAT2(a, b)

static unsigned long long g_bytes, g_calls;   /* under the GIL */

static PyObject *addr_result(void *p, size_t size)
{
  if (!p)
    return PyErr_NoMemory();
  memset(p, 1, size);   /* touch it, as a real user would */
  g_bytes += size;
  g_calls++;
  return PyLong_FromVoidPtr(p);
}

static PyObject *t_malloc(PyObject *self, PyObject *args)
{
  (void)self;
  Py_ssize_t n;
  if (!PyArg_ParseTuple(args, "n", &n))
    return NULL;
  return addr_result(malloc((size_t)n), (size_t)n);
}

static PyObject *t_calloc(PyObject *self, PyObject *args)
{
  (void)self;
  Py_ssize_t n, s;
  if (!PyArg_ParseTuple(args, "nn", &n, &s))
    return NULL;
  return addr_result(calloc((size_t)n, (size_t)s), (size_t)(n * s));
}

static PyObject *t_realloc(PyObject *self, PyObject *args)
{
  (void)self;
  PyObject *a;
  Py_ssize_t n;
  if (!PyArg_ParseTuple(args, "On", &a, &n))
    return NULL;
  void *p = a == Py_None ? NULL : PyLong_AsVoidPtr(a);
  return addr_result(realloc(p, (size_t)n), (size_t)n);
}

static PyObject *t_reallocarray(PyObject *self, PyObject *args)
{
  (void)self;
  PyObject *a;
  Py_ssize_t n, s;
  if (!PyArg_ParseTuple(args, "Onn", &a, &n, &s))
    return NULL;
  void *p = a == Py_None ? NULL : PyLong_AsVoidPtr(a);
  return addr_result(reallocarray(p, (size_t)n, (size_t)s), (size_t)(n * s));
}

static PyObject *t_posix_memalign(PyObject *self, PyObject *args)
{
  (void)self;
  Py_ssize_t al, n;
  void *p = NULL;
  if (!PyArg_ParseTuple(args, "nn", &al, &n))
    return NULL;
  if (posix_memalign(&p, (size_t)al, (size_t)n) != 0)
    p = NULL;
  return addr_result(p, (size_t)n);
}

#define ALIGNED_FN(fn)                                                                       \
  static PyObject *t_##fn(PyObject *self, PyObject *args)                                    \
  {                                                                                          \
    (void)self;                                                                              \
    Py_ssize_t al, n;                                                                        \
    if (!PyArg_ParseTuple(args, "nn", &al, &n))                                              \
      return NULL;                                                                           \
    return addr_result(fn((size_t)al, (size_t)n), (size_t)n);                                \
  }
ALIGNED_FN(aligned_alloc)
ALIGNED_FN(memalign)

#define PAGED_FN(fn)                                                                         \
  static PyObject *t_##fn(PyObject *self, PyObject *args)                                    \
  {                                                                                          \
    (void)self;                                                                              \
    Py_ssize_t n;                                                                            \
    if (!PyArg_ParseTuple(args, "n", &n))                                                    \
      return NULL;                                                                           \
    return addr_result(fn((size_t)n), (size_t)n);                                            \
  }
PAGED_FN(valloc)
PAGED_FN(pvalloc)

static PyObject *t_free(PyObject *self, PyObject *a)
{
  (void)self;
  void *p = PyLong_AsVoidPtr(a);
  if (!p && PyErr_Occurred())
    return NULL;
  free(p);
  Py_RETURN_NONE;
}

static PyObject *t_mmap(PyObject *self, PyObject *args)
{
  (void)self;
  Py_ssize_t n;
  if (!PyArg_ParseTuple(args, "n", &n))
    return NULL;
  void *p = mmap(NULL, (size_t)n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return addr_result(p == MAP_FAILED ? NULL : p, (size_t)n);
}

/* A file mapping (of /dev/zero): never a native allocation. */
static PyObject *t_mmap_file(PyObject *self, PyObject *args)
{
  (void)self;
  Py_ssize_t n;
  if (!PyArg_ParseTuple(args, "n", &n))
    return NULL;
  FILE *f = fopen("/dev/zero", "r");
  if (!f)
    return PyErr_SetFromErrno(PyExc_OSError);
  void *p = mmap(NULL, (size_t)n, PROT_READ, MAP_PRIVATE, fileno(f), 0);
  fclose(f);
  if (p == MAP_FAILED)
    return PyErr_SetFromErrno(PyExc_OSError);
  return PyLong_FromVoidPtr(p);
}

static PyObject *t_munmap(PyObject *self, PyObject *args)
{
  (void)self;
  PyObject *a;
  Py_ssize_t n;
  if (!PyArg_ParseTuple(args, "On", &a, &n))
    return NULL;
  munmap(PyLong_AsVoidPtr(a), (size_t)n);
  Py_RETURN_NONE;
}

/* malloc without the GIL: recorded with no Python stack. */
static PyObject *t_malloc_nogil(PyObject *self, PyObject *args)
{
  (void)self;
  Py_ssize_t n;
  void *p;
  if (!PyArg_ParseTuple(args, "n", &n))
    return NULL;
  Py_BEGIN_ALLOW_THREADS
  p = malloc((size_t)n);
  Py_END_ALLOW_THREADS
  return addr_result(p, (size_t)n);
}

/* (bytes, calls) asked for so far, and reset. */
static PyObject *t_counts(PyObject *self, PyObject *noargs)
{
  (void)self;
  (void)noargs;
  PyObject *r = Py_BuildValue("(KK)", g_bytes, g_calls);
  g_bytes = g_calls = 0;
  return r;
}

/* Whether this object's import slot for malloc holds something other than the global
 * malloc (i.e. a hook): the address of malloc taken here is loaded from that slot. */
static PyObject *t_malloc_slot_hooked(PyObject *self, PyObject *noargs)
{
  (void)self;
  (void)noargs;
  void *(*volatile mine)(size_t) = malloc;
  void *global = dlsym(RTLD_DEFAULT, "malloc");
  return PyBool_FromLong((void *)mine != global);
}

/* ---- threads allocating without the GIL ---- */

#define CHURN_MAX 16
static pthread_t g_threads[CHURN_MAX];
static int g_nthreads;
static _Atomic int g_churn;
static _Atomic unsigned long long g_churned;

static void *churn_main(void *arg)
{
  size_t seed = (size_t)(uintptr_t)arg;
  while (atomic_load(&g_churn)) {
    void *keep[8];
    for (int i = 0; i < 8; i++) {
      seed = seed * 6364136223846793005ull + 1442695040888963407ull;
      size_t n = 16 + (seed >> 40) % 8192;
      keep[i] = (i & 1) ? calloc(1, n) : malloc(n);
      if (keep[i] && i == 3)
        keep[i] = realloc(keep[i], n * 2);
    }
    void *m = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m != MAP_FAILED)
      munmap(m, 65536);
    for (int i = 0; i < 8; i++)
      free(keep[i]);
    atomic_fetch_add(&g_churned, 1);
  }
  return NULL;
}

static PyObject *t_churn_start(PyObject *self, PyObject *args)
{
  (void)self;
  int n;
  if (!PyArg_ParseTuple(args, "i", &n))
    return NULL;
  if (g_nthreads || n < 1 || n > CHURN_MAX) {
    PyErr_SetString(PyExc_ValueError, "churn already running or bad thread count");
    return NULL;
  }
  atomic_store(&g_churn, 1);
  for (int i = 0; i < n; i++) {
    if (pthread_create(&g_threads[i], NULL, churn_main, (void *)(uintptr_t)(i + 1)) != 0)
      break;
    g_nthreads++;
  }
  Py_RETURN_NONE;
}

/* Stops and joins the threads; returns how many rounds they made. */
static PyObject *t_churn_stop(PyObject *self, PyObject *noargs)
{
  (void)self;
  (void)noargs;
  atomic_store(&g_churn, 0);
  Py_BEGIN_ALLOW_THREADS
  for (int i = 0; i < g_nthreads; i++)
    pthread_join(g_threads[i], NULL);
  Py_END_ALLOW_THREADS
  g_nthreads = 0;
  return PyLong_FromUnsignedLongLong(atomic_load(&g_churned));
}

static PyObject *t_churned(PyObject *self, PyObject *noargs)
{
  (void)self;
  (void)noargs;
  return PyLong_FromUnsignedLongLong(atomic_load(&g_churned));
}

static PyMethodDef methods[] = {
  {"malloc", t_malloc, METH_VARARGS, NULL},
  {"calloc", t_calloc, METH_VARARGS, NULL},
  {"realloc", t_realloc, METH_VARARGS, NULL},
  {"reallocarray", t_reallocarray, METH_VARARGS, NULL},
  {"posix_memalign", t_posix_memalign, METH_VARARGS, NULL},
  {"aligned_alloc", t_aligned_alloc, METH_VARARGS, NULL},
  {"memalign", t_memalign, METH_VARARGS, NULL},
  {"valloc", t_valloc, METH_VARARGS, NULL},
  {"pvalloc", t_pvalloc, METH_VARARGS, NULL},
  {"free", t_free, METH_O, NULL},
  {"mmap", t_mmap, METH_VARARGS, NULL},
  {"mmap_file", t_mmap_file, METH_VARARGS, NULL},
  {"munmap", t_munmap, METH_VARARGS, NULL},
  {"malloc_nogil", t_malloc_nogil, METH_VARARGS, NULL},
  {"counts", t_counts, METH_NOARGS, NULL},
  {"malloc_slot_hooked", t_malloc_slot_hooked, METH_NOARGS, NULL},
  {"churn_start", t_churn_start, METH_VARARGS, NULL},
  {"churn_stop", t_churn_stop, METH_NOARGS, NULL},
  {"churned", t_churned, METH_NOARGS, NULL},
  {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
  PyModuleDef_HEAD_INIT, HP_STR(HP_TESTEXT_NAME), NULL, -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC HP_CAT(PyInit_, HP_TESTEXT_NAME)(void)
{
  return PyModule_Create(&module);
}
