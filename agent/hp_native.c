/* hp_native.c — the native hooks (see hp_native.h).
 *
 * Pipeline position: a C extension's malloc/free/mmap -> its rewritten import slot -> the
 * hooks here -> the real function, then hp_hooks_sample_alloc/free (the PEP 445 hooks'
 * sampler, per-thread countdown and re-entry marker, hp_hooks_int.h) -> hp_agent.
 *
 * Re-entry: every real call made while profiling runs with the thread's re-entry marker
 * set, and a hook that finds the marker set only passes the call on. So a native call
 * made inside a PEP 445 hook or by agent code is not counted, nor is the mmap an
 * interposed allocator makes inside its own malloc; one request is counted once.
 *
 * The real functions are the global definitions (dlsym(RTLD_DEFAULT), looked past a
 * non-PIE executable's canonical PLT entries: definitions_past_canonical_plt), resolved
 * once before the first slot is rewritten and never changed after, so the hooks read them
 * without a lock. A slot's own earlier value is not called: with lazy binding it is a PLT
 * stub whose resolver would write the real address over our hook.
 *
 * Sizes recorded are those the caller asked for (pvalloc's rounding and malloc's
 * headers are the allocator's business, as in the PEP 445 domains). */
#include <Python.h> /* PyObject_Malloc, only to find the interpreter's object */

#include "hp_native.h"

#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "hp_addrtab.h"
#include "hp_agent.h"
#include "hp_got.h"
#include "hp_hooks_int.h"

#define HP_LIKELY(x) __builtin_expect(!!(x), 1)

/* The real functions: written once under g_lock before any slot points at a hook. */
static struct {
  void *(*malloc)(size_t);
  void *(*calloc)(size_t, size_t);
  void *(*realloc)(void *, size_t);
  void *(*reallocarray)(void *, size_t, size_t);
  void (*free)(void *);
  int (*posix_memalign)(void **, size_t, size_t);
  void *(*aligned_alloc)(size_t, size_t);
  void *(*memalign)(size_t, size_t);
  void *(*valloc)(size_t);
  void *(*pvalloc)(size_t);
  void *(*mmap)(void *, size_t, int, int, int, off_t);
  void *(*mmap64)(void *, size_t, int, int, int, off_t);
  int (*munmap)(void *, size_t);
  void *(*mremap)(void *, size_t, size_t, int, ...);
  void *(*dlopen)(const char *, int);
  int (*dlclose)(void *);
} real;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static hp_got_set *g_set; /* under g_lock */
static int g_resolved;    /* under g_lock: real is filled */
/* Slots are rewritten, dlopen rewrites new objects, the allocation hooks sample. Cleared
 * first by stop. */
static _Atomic int g_started;

/* Whether the allocation hooks only pass calls on: not profiling, or a stop is restoring
 * the slots. The restore is one slot at a time, and the thread doing it may be preempted
 * in between: a block sampled through a malloc slot still rewritten and freed through a
 * free slot already restored would look leaked. So sampling ends first (g_started), while
 * the free hooks go on reporting the frees of what was sampled until their own slot is
 * put back. */
static inline int profiling_off(void)
{
  return atomic_load_explicit(&hp_agent_mode, memory_order_relaxed) == HP_MODE_OFF ||
         !atomic_load_explicit(&g_started, memory_order_relaxed);
}

static inline int maybe_sampled(const void *p)
{
  return !hp_addrtab_filter_absent(atomic_load_explicit(&hp_agent_free_filter,
                                                        memory_order_relaxed),
                                   (uintptr_t)p);
}

/* ---- the malloc family ---- */

static void *nat_malloc(size_t size)
{
  hp_hooks_tls *t = &hp_hooks_t;
  if (hp_hooks_is_reentrant(t) || profiling_off())
    return real.malloc(size);
  hp_hooks_enter(t);
  void *p = real.malloc(size);
  if (p)
    hp_hooks_sample_alloc(t, HP_DOMAIN_NATIVE, p, size);
  hp_hooks_leave(t);
  return p;
}

static void *nat_calloc(size_t nelem, size_t elsize)
{
  hp_hooks_tls *t = &hp_hooks_t;
  if (hp_hooks_is_reentrant(t) || profiling_off())
    return real.calloc(nelem, elsize);
  hp_hooks_enter(t);
  void *p = real.calloc(nelem, elsize);
  if (p) /* a product that overflows was refused by the real calloc */
    hp_hooks_sample_alloc(t, HP_DOMAIN_NATIVE, p, nelem * elsize);
  hp_hooks_leave(t);
  return p;
}

/* The old block's free is reported before the real call, which may hand its address to
 * another thread (as in the PEP 445 realloc hook). */
static void *nat_realloc(void *ptr, size_t size)
{
  hp_hooks_tls *t = &hp_hooks_t;
  if (ptr && maybe_sampled(ptr))
    hp_hooks_sample_free(t, ptr);
  if (hp_hooks_is_reentrant(t) || profiling_off())
    return real.realloc(ptr, size);
  hp_hooks_enter(t);
  void *p = real.realloc(ptr, size);
  if (p && size)
    hp_hooks_sample_alloc(t, HP_DOMAIN_NATIVE, p, size);
  hp_hooks_leave(t);
  return p;
}

static void *nat_reallocarray(void *ptr, size_t nelem, size_t elsize)
{
  size_t size;
  if (__builtin_mul_overflow(nelem, elsize, &size))
    return real.reallocarray(ptr, nelem, elsize); /* fails with ENOMEM, ptr untouched */
  hp_hooks_tls *t = &hp_hooks_t;
  if (ptr && maybe_sampled(ptr))
    hp_hooks_sample_free(t, ptr);
  if (hp_hooks_is_reentrant(t) || profiling_off())
    return real.reallocarray(ptr, nelem, elsize);
  hp_hooks_enter(t);
  void *p = real.reallocarray(ptr, nelem, elsize);
  if (p && size)
    hp_hooks_sample_alloc(t, HP_DOMAIN_NATIVE, p, size);
  hp_hooks_leave(t);
  return p;
}

/* Out of line, so that the unsampled free saves no register and ends in a tail call. */
static __attribute__((noinline)) void nat_free_maybe_sampled(void *ptr)
{
  hp_hooks_sample_free(&hp_hooks_t, ptr);
  real.free(ptr);
}

/* The counting filter proves most pointers were never sampled, and is all zero while
 * not profiling: no thread-local state and no mode on the common path. */
static void nat_free(void *ptr)
{
  if (HP_LIKELY(!maybe_sampled(ptr))) {
    real.free(ptr);
    return;
  }
  nat_free_maybe_sampled(ptr);
}

static int nat_posix_memalign(void **out, size_t align, size_t size)
{
  hp_hooks_tls *t = &hp_hooks_t;
  if (hp_hooks_is_reentrant(t) || profiling_off())
    return real.posix_memalign(out, align, size);
  hp_hooks_enter(t);
  int rc = real.posix_memalign(out, align, size);
  if (rc == 0 && *out)
    hp_hooks_sample_alloc(t, HP_DOMAIN_NATIVE, *out, size);
  hp_hooks_leave(t);
  return rc;
}

/* aligned_alloc and memalign: (alignment, size). */
#define NAT_ALIGNED(fn) \
  static void *nat_##fn(size_t align, size_t size) \
  { \
    hp_hooks_tls *t = &hp_hooks_t; \
    if (hp_hooks_is_reentrant(t) || profiling_off()) \
      return real.fn(align, size); \
    hp_hooks_enter(t); \
    void *p = real.fn(align, size); \
    if (p) \
      hp_hooks_sample_alloc(t, HP_DOMAIN_NATIVE, p, size); \
    hp_hooks_leave(t); \
    return p; \
  }
NAT_ALIGNED(aligned_alloc)
NAT_ALIGNED(memalign)

/* valloc and pvalloc: (size), page-aligned. */
#define NAT_PAGED(fn) \
  static void *nat_##fn(size_t size) \
  { \
    hp_hooks_tls *t = &hp_hooks_t; \
    if (hp_hooks_is_reentrant(t) || profiling_off()) \
      return real.fn(size); \
    hp_hooks_enter(t); \
    void *p = real.fn(size); \
    if (p) \
      hp_hooks_sample_alloc(t, HP_DOMAIN_NATIVE, p, size); \
    hp_hooks_leave(t); \
    return p; \
  }
NAT_PAGED(valloc)
NAT_PAGED(pvalloc)

/* ---- anonymous mappings ---- */

/* A mapping is recorded at its start address with its length; an munmap of that start
 * reports it freed (whatever length is unmapped: a partial unmap from the start ends the
 * sample, one elsewhere is not seen). MAP_FIXED over a sampled start replaces it. */
static void *mmap_any(void *(*fn)(void *, size_t, int, int, int, off_t), void *addr,
                      size_t len, int prot, int flags, int fd, off_t off)
{
  hp_hooks_tls *t = &hp_hooks_t;
  if (!(flags & MAP_ANONYMOUS) || hp_hooks_is_reentrant(t) || profiling_off())
    return fn(addr, len, prot, flags, fd, off);
  if ((flags & MAP_FIXED) && maybe_sampled(addr))
    hp_hooks_sample_free(t, addr);
  hp_hooks_enter(t);
  void *p = fn(addr, len, prot, flags, fd, off);
  if (p != MAP_FAILED)
    hp_hooks_sample_alloc(t, HP_DOMAIN_NATIVE, p, len);
  hp_hooks_leave(t);
  return p;
}

static void *nat_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
  return mmap_any(real.mmap, addr, len, prot, flags, fd, off);
}

static void *nat_mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
  return mmap_any(real.mmap64, addr, len, prot, flags, fd, off);
}

static int nat_munmap(void *addr, size_t len)
{
  if (maybe_sampled(addr))
    hp_hooks_sample_free(&hp_hooks_t, addr);
  return real.munmap(addr, len);
}

/* A sampled mapping that moves or grows ends as one sample and continues as a new one of
 * the new length; mappings never sampled (perhaps not anonymous) stay unseen. */
static void *nat_mremap(void *old, size_t old_len, size_t new_len, int flags, ...)
{
  void *want = NULL;
  if (flags & MREMAP_FIXED) {
    va_list ap;
    va_start(ap, flags);
    want = va_arg(ap, void *);
    va_end(ap);
  }
  hp_hooks_tls *t = &hp_hooks_t;
  int was_sampled = maybe_sampled(old) && hp_hooks_sample_free(t, old);
  if (!was_sampled || hp_hooks_is_reentrant(t) || profiling_off())
    return real.mremap(old, old_len, new_len, flags, want);
  hp_hooks_enter(t);
  void *p = real.mremap(old, old_len, new_len, flags, want);
  if (p != MAP_FAILED)
    hp_hooks_sample_alloc(t, HP_DOMAIN_NATIVE, p, new_len);
  hp_hooks_leave(t);
  return p;
}

/* ---- objects that come and go ---- */

static int rescan_unlocked(void);

/* After a dlopen or dlclose: new objects (and their dependencies) get their slots
 * rewritten before dlopen returns, so the first call into them is seen. */
static void rescan_if_started(void)
{
  if (!atomic_load(&g_started))
    return;
  int saved_errno = errno;
  pthread_mutex_lock(&g_lock);
  if (atomic_load(&g_started))
    rescan_unlocked();
  pthread_mutex_unlock(&g_lock);
  errno = saved_errno;
}

static void *nat_dlopen(const char *file, int flags)
{
  void *h = real.dlopen(file, flags);
  if (h)
    rescan_if_started();
  return h;
}

/* Forgets the objects unloaded (hp_got_patch does that first). */
static int nat_dlclose(void *h)
{
  int rc = real.dlclose(h);
  rescan_if_started();
  return rc;
}

/* ---- choosing objects ---- */

/* Indexed by SYM_*; the bits of hp_got_choose's mask. */
enum {
  SYM_MALLOC,
  SYM_CALLOC,
  SYM_REALLOC,
  SYM_REALLOCARRAY,
  SYM_FREE,
  SYM_POSIX_MEMALIGN,
  SYM_ALIGNED_ALLOC,
  SYM_MEMALIGN,
  SYM_VALLOC,
  SYM_PVALLOC,
  SYM_MMAP,
  SYM_MMAP64,
  SYM_MUNMAP,
  SYM_MREMAP,
  SYM_DLOPEN,
  SYM_DLCLOSE,
  SYM_COUNT
};

static hp_got_sym g_syms[SYM_COUNT]; /* under g_lock; .real NULL: absent here */
static hp_got_sym g_present[SYM_COUNT];
static uint32_t g_npresent, g_all_mask, g_loader_mask; /* over g_present */

static const char *base_name(const char *path)
{
  const char *s = strrchr(path, '/');
  return s ? s + 1 : path;
}

static int starts_with(const char *s, const char *prefix)
{
  return strncmp(s, prefix, strlen(prefix)) == 0;
}

static int contains(uintptr_t lo, uintptr_t hi, const void *p)
{
  return (uintptr_t)p >= lo && (uintptr_t)p < hi;
}

static uint32_t choose(const char *path, int is_main, uintptr_t lo, uintptr_t hi, void *arg)
{
  (void)arg;
  const char *name = base_name(path);
  /* Ours, libc, the allocator itself: their calls are internals or the agent's. */
  if (contains(lo, hi, (const void *)hp_native_start) ||
      contains(lo, hi, (const void *)real.malloc) ||
      contains(lo, hi, (const void *)real.dlopen) || starts_with(name, "libc.so") ||
      starts_with(name, "ld-linux") || starts_with(name, "ld64.so") ||
      starts_with(name, "linux-vdso") || starts_with(name, "linux-gate") ||
      starts_with(name, "libasan") || starts_with(name, "libubsan") ||
      starts_with(name, "liblsan") || starts_with(name, "libtsan") ||
      starts_with(name, "libclang_rt"))
    return 0;
  /* The interpreter: its allocations come through PEP 445 already. */
  if (is_main || contains(lo, hi, (const void *)PyObject_Malloc) ||
      starts_with(name, "libpython"))
    return g_loader_mask;
  return g_all_mask;
}

/* The main executable's mapped range, and the other loaded objects' paths in load order
 * (the order of the global lookup: the executable, LD_PRELOAD, its dependencies...). */
#define MAX_LOOKUP_OBJS 64
typedef struct {
  uintptr_t main_lo, main_hi;
  const char *paths[MAX_LOOKUP_OBJS];
  int n, index;
} objs_walk;

static int objs_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
  objs_walk *w = arg;
  (void)size;
  if (w->index++ == 0) {
    w->main_lo = UINTPTR_MAX;
    for (ElfW(Half) i = 0; i < info->dlpi_phnum; i++) {
      const ElfW(Phdr) *p = &info->dlpi_phdr[i];
      uintptr_t start = (uintptr_t)info->dlpi_addr + p->p_vaddr;
      if (p->p_type != PT_LOAD)
        continue;
      if (start < w->main_lo)
        w->main_lo = start;
      if (start + p->p_memsz > w->main_hi)
        w->main_hi = start + p->p_memsz;
    }
    return 0;
  }
  if (info->dlpi_name && info->dlpi_name[0] && w->n < MAX_LOOKUP_OBJS)
    w->paths[w->n++] = info->dlpi_name;
  return 0;
}

/* dlsym() gives the address every GLOB_DAT slot holds: in a non-PIE executable that takes
 * a function's address (Debian's python3 does, for malloc) that is the executable's
 * canonical PLT entry, which jumps through the executable's own slot. The slots of the
 * other objects' calls (JUMP_SLOT) hold the definition itself: the first object after the
 * executable, in lookup order, that defines the name. The hooks call that definition, and
 * a slot holding either address is ours to rewrite (hp_got_sym.alias). */
static void definitions_past_canonical_plt(void)
{
  objs_walk w = {0};
  dl_iterate_phdr(objs_cb, &w);
  for (int i = 0; i < SYM_COUNT; i++) {
    hp_got_sym *g = &g_syms[i];
    if (!g->real || (uintptr_t)g->real < w.main_lo || (uintptr_t)g->real >= w.main_hi)
      continue;
    for (int k = 0; k < w.n; k++) {
      void *h = dlopen(w.paths[k], RTLD_LAZY | RTLD_NOLOAD);
      if (!h)
        continue;
      void *def = dlsym(h, g->name);
      dlclose(h);
      Dl_info di;
      if (def && def != g->real && dladdr(def, &di) && di.dli_fname &&
          strcmp(di.dli_fname, w.paths[k]) == 0) {
        g->alias = g->real;
        g->real = def;
        break;
      }
    }
  }
}

static void resolve_unlocked(void)
{
#define SYM(idx, fn) \
  g_syms[idx] = (hp_got_sym){#fn, dlsym(RTLD_DEFAULT, #fn), (void *)nat_##fn, NULL}
  SYM(SYM_MALLOC, malloc);
  SYM(SYM_CALLOC, calloc);
  SYM(SYM_REALLOC, realloc);
  SYM(SYM_REALLOCARRAY, reallocarray);
  SYM(SYM_FREE, free);
  SYM(SYM_POSIX_MEMALIGN, posix_memalign);
  SYM(SYM_ALIGNED_ALLOC, aligned_alloc);
  SYM(SYM_MEMALIGN, memalign);
  SYM(SYM_VALLOC, valloc);
  SYM(SYM_PVALLOC, pvalloc);
  SYM(SYM_MMAP, mmap);
  SYM(SYM_MMAP64, mmap64);
  SYM(SYM_MUNMAP, munmap);
  SYM(SYM_MREMAP, mremap);
  SYM(SYM_DLOPEN, dlopen);
  SYM(SYM_DLCLOSE, dlclose);
#undef SYM
  definitions_past_canonical_plt();
#define REAL(idx, fn) real.fn = (__typeof__(real.fn))g_syms[idx].real
  REAL(SYM_MALLOC, malloc);
  REAL(SYM_CALLOC, calloc);
  REAL(SYM_REALLOC, realloc);
  REAL(SYM_REALLOCARRAY, reallocarray);
  REAL(SYM_FREE, free);
  REAL(SYM_POSIX_MEMALIGN, posix_memalign);
  REAL(SYM_ALIGNED_ALLOC, aligned_alloc);
  REAL(SYM_MEMALIGN, memalign);
  REAL(SYM_VALLOC, valloc);
  REAL(SYM_PVALLOC, pvalloc);
  REAL(SYM_MMAP, mmap);
  REAL(SYM_MMAP64, mmap64);
  REAL(SYM_MUNMAP, munmap);
  REAL(SYM_MREMAP, mremap);
  REAL(SYM_DLOPEN, dlopen);
  REAL(SYM_DLCLOSE, dlclose);
#undef REAL
  /* A function this libc lacks is simply not interposed. */
  g_npresent = g_all_mask = g_loader_mask = 0;
  for (int i = 0; i < SYM_COUNT; i++) {
    if (!g_syms[i].real)
      continue;
    uint32_t bit = 1u << g_npresent;
    g_present[g_npresent++] = g_syms[i];
    g_all_mask |= bit;
    if (i == SYM_DLOPEN || i == SYM_DLCLOSE)
      g_loader_mask |= bit;
  }
}

static int rescan_unlocked(void)
{
  int rc = hp_got_patch(g_set, g_present, g_npresent, choose, NULL);
  return rc < 0 ? rc : 0;
}

/* ---- fork ---- */

/* A fork must not copy g_lock held by another thread (a dlopen rewriting slots). */
static void atfork_prepare(void)
{
  pthread_mutex_lock(&g_lock);
}

static void atfork_release(void)
{
  pthread_mutex_unlock(&g_lock);
}

int hp_native_start(void)
{
  int rc = 0;
  pthread_mutex_lock(&g_lock);
  if (!g_resolved) {
    int saved_errno = errno;
    resolve_unlocked();
    errno = saved_errno;
    if (!real.malloc || !real.free || !real.realloc || !real.calloc) {
      rc = 0; /* nothing sensible to interpose */
      goto out_unlock;
    }
    if (pthread_atfork(atfork_prepare, atfork_release, atfork_release) != 0) {
      rc = -HP_ENOMEM;
      goto out_unlock;
    }
    g_resolved = 1;
  }
  if (!g_set && !(g_set = hp_got_set_new())) {
    rc = -HP_ENOMEM;
    goto out_unlock;
  }
  atomic_store(&g_started, 1);
  rc = rescan_unlocked();
out_unlock:
  pthread_mutex_unlock(&g_lock);
  return rc;
}

void hp_native_stop(void)
{
  pthread_mutex_lock(&g_lock);
  atomic_store(&g_started, 0);
  if (g_set)
    hp_got_restore(g_set);
  pthread_mutex_unlock(&g_lock);
}

size_t hp_native_slots(void)
{
  pthread_mutex_lock(&g_lock);
  size_t n = g_set ? hp_got_count(g_set) : 0;
  pthread_mutex_unlock(&g_lock);
  return n;
}
