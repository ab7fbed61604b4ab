/* hp_hooks.c — PEP 445 hooks: the per-allocation fast path and sampling.
 *
 * Pipeline position: the program's allocation -> these hooks -> hp_sampler (decide) ->
 * hp_stacks (the Python stack, sampled only) -> hp_agent_record_* -> ring -> sender thread.
 *
 * Nothing here knows the CPython version: the stack of a sample comes from hp_stacks,
 * which reads frames through the version shim hp_pyframe. Only the thread that holds the
 * GIL gets a stack; any other caller (raw domain without the GIL) records stack id 0
 * without touching Python state.
 *
 * Re-entry: a thread-local flag is set while a hook runs the real allocator and while
 * agent code runs. PyObject_Malloc falls through to PyMem_RawMalloc above 512 bytes;
 * the flag makes the inner raw call a plain pass-through, so one request is counted
 * once, in the domain the program asked for. The agent's own allocations pass through
 * unprofiled. */
#include <Python.h>

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "hp_addrtab.h"
#include "hp_agent.h"
#include "hp_hooks.h"
#include "hp_hooks_int.h"
#include "hp_pyframe.h"
#include "hp_stacks.h"
#include "hp_stats.h"

typedef struct {
  PyMemAllocatorEx prev;
  hp_domain domain;
  PyMemAllocatorDomain py_domain;
  void *(*ours)(void *, size_t); /* the malloc hook installed on py_domain */
} hook_ctx;

/* Written once by hp_hooks_install() under the GIL before the hooks go live. */
static hook_ctx g_ctx[3]; /* indexed by CTX_* */
enum { CTX_RAW, CTX_MEM, CTX_OBJ };
static int g_installed;

/* Frees of the mem and obj domains go straight to pymalloc, unhooked (set at install
 * when both domains are CPython's pymalloc). pymalloc's free hands every block it did
 * not allocate to PyMem_RawFree, i.e. to our raw free hook; so a sampled mem/obj block
 * is served by the raw allocator instead of pymalloc (sampled_block_*), and its free
 * still reaches us, while the frees of the millions of unsampled small blocks cost the
 * program nothing at all: no call, no filter. Requests above PYMALLOC_SMALL already
 * come from the raw allocator (pymalloc passes them down). */
static int g_frees_via_raw;

/* With g_frees_via_raw, the functions of pymalloc that both the mem and obj domains had
 * (their ctx is NULL, and none of them reads it). The hot hooks below call them
 * directly, passing on the ctx they got, which is ours: one load and one move fewer per
 * call than through the domain's hook_ctx, the same reliance on pymalloc ignoring its ctx
 * as the unhooked free (hp_hooks_install). Written at install. */
static PyMemAllocatorEx g_pymalloc;

/* The thread's key (hp_hooks_int.h): its sampler generation, or the re-entry marker
 * while the thread is inside a hook's real call or agent code. The malloc fast path
 * compares it with hp_agent_gate and so checks in one compare that profiling is on in
 * Poisson mode, that this thread's countdown belongs to the current configuration, and
 * that it is not re-entering. A thread never seeded has key 0, which no gate equals
 * either. Shared with the native hooks (hp_native.c). */
__thread hp_hooks_tls hp_hooks_t __attribute__((tls_model("initial-exec")));

/* Whether a sample may be recorded now. Overloaded (recording everything faster than
 * heapprofd stores), an ALLOC would be refused by the ring anyway: counting it as
 * dropped here saves the stack walk and the address table's insert and remove, and
 * (with g_frees_via_raw) lets its block come from pymalloc as if unsampled. Call once
 * per sample: on_full='adapt' counts samples here. */
static int sample_room(void)
{
  if (hp_agent_alloc_room())
    return 1;
  hp_agent_count_drop();
  return 0;
}

/* A sample that found room (sample_room). */
static __attribute__((noinline)) void record_sample_room(hp_domain domain, void *ptr,
                                                         size_t size, uint64_t est)
{
  int saved_errno = errno;
  /* Native code that released the GIL around the call (numpy's large calloc) still has
   * its thread's Python stack; the PEP 445 domains keep "no stack without the GIL". */
  uint32_t stack_id = domain == HP_DOMAIN_NATIVE ? hp_stacks_current_detached()
                                                 : hp_stacks_current();
  hp_agent_record_alloc(domain, ptr, size, est, stack_id);
  hp_hooks_t.fresh = (uintptr_t)ptr;
  errno = saved_errno;
}

static void record_sample(hp_domain domain, void *ptr, size_t size, uint64_t est)
{
  if (sample_room())
    record_sample_room(domain, ptr, size, est);
}

static inline void after_alloc(hp_hooks_tls *t, hp_domain domain, void *ptr, size_t size)
{
  int mode = atomic_load_explicit(&hp_agent_mode, memory_order_relaxed);
  uint64_t est;
  if (mode == HP_MODE_PROFILE) {
    if (hp_sampler_sample(&hp_agent_sampler, &t->sampler, size, &est))
      record_sample(domain, ptr, size, est);
  } else if (mode == HP_MODE_STATS) {
    hp_stats_add(size);
  }
}

/* Requests pymalloc serves itself (SMALL_REQUEST_THRESHOLD): for these the mem and obj
 * allocators never call down into the raw domain, so the re-entry flag need not be set
 * around the real call. Larger requests fall through to PyMem_RawMalloc. */
#define PYMALLOC_SMALL 512u

#define HP_LIKELY(x) __builtin_expect(!!(x), 1)

/* The hooks' fast paths run millions of times a second inside loops whose own code
 * already fills the L1 instruction cache: every cache line they take evicts a line of
 * the interpreter's. So they are few (one hook per function for mem and obj), small
 * (everything but the fast path out of line) and packed together in one section, the
 * first of them on a cache line's start. */
#define HP_HOT_HOOK __attribute__((section(".text.hot.hp_hooks")))

/* The unsampled fast path of a small mem/obj request, shared by malloc and calloc: the
 * gate against the thread's key (see hp_hooks_tls), the size, the countdown step. The
 * countdown test is hp_sampler_sample()'s, spelled out so that the hooks stay frameless
 * and end in a tail call. Everything else (off, stats, interval 1, size buckets,
 * re-entry, a new configuration, a sample) fails a compare and takes the slow path. */
static inline int small_unsampled(hp_hooks_tls *t, size_t size)
{
  if (HP_LIKELY(t->key == atomic_load_explicit(&hp_agent_gate, memory_order_relaxed) &&
                size <= PYMALLOC_SMALL && (uint64_t)t->sampler.countdown > size)) {
    t->sampler.countdown -= (int64_t)size;
    return 1;
  }
  return 0;
}

/* A request that may reach another hook (raw domain, or above pymalloc's threshold):
 * flagged so that the nested call passes through. */
static __attribute__((noinline)) void *malloc_flagged(hook_ctx *c, hp_hooks_tls *t,
                                                      size_t size)
{
  hp_hooks_enter(t);
  void *p = c->prev.malloc(c->prev.ctx, size);
  if (p)
    after_alloc(t, c->domain, p, size);
  hp_hooks_leave(t);
  return p;
}

/* The raw allocator failed a sampled small block that pymalloc may still serve (the
 * hooks must not fail what the underlying allocator would serve). The
 * program gets pymalloc's block, unrecorded (its free would bypass the raw hook); the
 * sample is counted as dropped, and errno is as pymalloc left it. */
static __attribute__((noinline)) void sampled_block_fallback(int saved_errno)
{
  hp_agent_count_drop();
  errno = saved_errno;
}

/* The block of a sampled mem/obj request of at most PYMALLOC_SMALL bytes: see
 * g_frees_via_raw. Called with the re-entry marker set. *record: whether the block may
 * be recorded (not one of the fallback above). */
static void *sampled_block_malloc(hook_ctx *c, size_t size, int *record)
{
  *record = 1;
  if (g_frees_via_raw) {
    int saved_errno = errno;
    void *p = g_ctx[CTX_RAW].prev.malloc(g_ctx[CTX_RAW].prev.ctx, size);
    if (p)
      return p;
    *record = 0;
    sampled_block_fallback(saved_errno);
  }
  return c->prev.malloc(c->prev.ctx, size);
}

/* Everything but the mem/obj fast path: off, stats, re-entry, large, or sampled. */
static __attribute__((noinline)) void *malloc_slow(hook_ctx *c, hp_hooks_tls *t,
                                                   size_t size)
{
  uint64_t est;
  int mode = atomic_load_explicit(&hp_agent_mode, memory_order_relaxed);
  if (hp_hooks_is_reentrant(t) || mode == HP_MODE_OFF)
    return c->prev.malloc(c->prev.ctx, size);
  if (size > PYMALLOC_SMALL || c->domain == HP_DOMAIN_RAW)
    return malloc_flagged(c, t, size);
  if (mode == HP_MODE_STATS) {
    hp_stats_add(size);
    return c->prev.malloc(c->prev.ctx, size);
  }
  int sampled = hp_sampler_sample_slow(&hp_agent_sampler, &t->sampler, size, &est);
  hp_hooks_leave(t); /* the key follows a newly drawn countdown's generation */
  if (!sampled || !sample_room())
    return c->prev.malloc(c->prev.ctx, size);
  hp_hooks_enter(t);
  int record;
  void *p = sampled_block_malloc(c, size, &record);
  if (p && record)
    record_sample_room(c->domain, p, size, est);
  hp_hooks_leave(t);
  return p;
}

/* The fast paths below are written once (inline, taking the domain's hook_ctx, and the
 * real allocator with the ctx to pass it: the domain's, or pymalloc's own with ours).
 * The raw domain's hooks use a constant &g_ctx[CTX_RAW]; the mem and obj domains share
 * one hook per function, which finds its hook_ctx in the ctx argument
 * (hp_hooks_install). */

/* mem and obj domains. */
static inline void *malloc_fast(hook_ctx *c, const PyMemAllocatorEx *real, void *real_ctx,
                                size_t size)
{
  hp_hooks_tls *t = &hp_hooks_t;
  if (small_unsampled(t, size))
    return real->malloc(real_ctx, size);
  return malloc_slow(c, t, size);
}

/* The raw domain: every profiled request is flagged (it may be the fall-through of a
 * larger mem/obj request, which arrives here already flagged and passes through). */
static void *hook_raw_malloc(void *ctx, size_t size)
{
  (void)ctx;
  hook_ctx *c = &g_ctx[CTX_RAW];
  hp_hooks_tls *t = &hp_hooks_t;
  if (hp_hooks_is_reentrant(t) ||
      atomic_load_explicit(&hp_agent_mode, memory_order_relaxed) == HP_MODE_OFF)
    return c->prev.malloc(c->prev.ctx, size);
  return malloc_flagged(c, t, size);
}

/* A small mem/obj calloc while profiling with g_frees_via_raw: the sampling decision
 * comes first, because a sampled block must come from the raw allocator. */
static void *calloc_small_sampling(hook_ctx *c, hp_hooks_tls *t, size_t nelem,
                                   size_t elsize, size_t size)
{
  uint64_t est;
  int sampled = hp_sampler_sample_slow(&hp_agent_sampler, &t->sampler, size, &est);
  hp_hooks_leave(t); /* the key follows a newly drawn countdown's generation */
  if (!sampled || !sample_room())
    return c->prev.calloc(c->prev.ctx, nelem, elsize);
  hp_hooks_enter(t);
  int saved_errno = errno;
  void *p = g_ctx[CTX_RAW].prev.calloc(g_ctx[CTX_RAW].prev.ctx, nelem, elsize);
  if (p) {
    record_sample_room(c->domain, p, size, est);
  } else { /* as in sampled_block_malloc */
    sampled_block_fallback(saved_errno);
    p = c->prev.calloc(c->prev.ctx, nelem, elsize);
  }
  hp_hooks_leave(t);
  return p;
}

static __attribute__((noinline)) void *calloc_slow(hook_ctx *c, hp_hooks_tls *t,
                                                   size_t nelem, size_t elsize)
{
  int mode = atomic_load_explicit(&hp_agent_mode, memory_order_relaxed);
  size_t size;
  if (hp_hooks_is_reentrant(t) || mode == HP_MODE_OFF)
    return c->prev.calloc(c->prev.ctx, nelem, elsize);
  if (g_frees_via_raw && mode == HP_MODE_PROFILE && c->domain != HP_DOMAIN_RAW &&
      !__builtin_mul_overflow(nelem, elsize, &size) && size <= PYMALLOC_SMALL)
    return calloc_small_sampling(c, t, nelem, elsize, size);
  hp_hooks_enter(t);
  void *p = c->prev.calloc(c->prev.ctx, nelem, elsize);
  if (p) /* a product that overflows was refused by the real calloc */
    after_alloc(t, c->domain, p, nelem * elsize);
  hp_hooks_leave(t);
  return p;
}

/* mem and obj domains (3.11's GC objects and dict keys come through here). The product
 * is taken as it wraps, without an overflow test: a request whose true product overflows
 * is refused by the real calloc (which tests it), and its wrapped product, when small,
 * only moves the countdown by at most PYMALLOC_SMALL bytes for a request that allocated
 * nothing, as a small malloc that fails does. */
static inline void *calloc_fast(hook_ctx *c, const PyMemAllocatorEx *real, void *real_ctx,
                                size_t nelem, size_t elsize)
{
  hp_hooks_tls *t = &hp_hooks_t;
  if (small_unsampled(t, nelem * elsize))
    return real->calloc(real_ctx, nelem, elsize);
  return calloc_slow(c, t, nelem, elsize);
}

static void *hook_raw_calloc(void *ctx, size_t nelem, size_t elsize)
{
  (void)ctx;
  return calloc_slow(&g_ctx[CTX_RAW], &hp_hooks_t, nelem, elsize);
}

/* After a mem/obj realloc to at most PYMALLOC_SMALL bytes with g_frees_via_raw: a
 * sampled result may lie in a pymalloc pool, whose free would bypass us, so it moves
 * to a raw block (copying the size bytes the caller asked for). Only sampled reallocs
 * pay the copy. If the raw allocation fails, the sample is dropped (counted), never
 * the program's block. */
static void *after_small_realloc(hook_ctx *c, hp_hooks_tls *t, void *p, size_t size)
{
  uint64_t est;
  int mode = atomic_load_explicit(&hp_agent_mode, memory_order_relaxed);
  if (mode == HP_MODE_STATS) {
    hp_stats_add(size);
    return p;
  }
  if (mode != HP_MODE_PROFILE ||
      !hp_sampler_sample(&hp_agent_sampler, &t->sampler, size, &est) || !sample_room())
    return p;
  void *q = g_ctx[CTX_RAW].prev.malloc(g_ctx[CTX_RAW].prev.ctx, size);
  if (!q) {
    hp_agent_count_drop();
    return p;
  }
  memcpy(q, p, size);
  c->prev.free(c->prev.ctx, p);
  record_sample_room(c->domain, q, size, est);
  return q;
}

/* realloc is a free of the old block and an allocation of the new one. The free is
 * queued before the real realloc, which may release the old address to other threads.
 * (If the real realloc then fails, the old block lives on unreported: rare, and a
 * lost sample rather than a wrong pairing.) */
static __attribute__((noinline)) void *realloc_any(hook_ctx *c, void *ptr, size_t size)
{
  hp_hooks_tls *t = &hp_hooks_t;
  int mode = atomic_load_explicit(&hp_agent_mode, memory_order_relaxed);
  if (mode == HP_MODE_OFF)
    return c->prev.realloc(c->prev.ctx, ptr, size);
  /* The old block's free is looked up even while re-entering, as in free_slow(). */
  if (ptr && mode == HP_MODE_PROFILE &&
      !hp_addrtab_filter_absent(atomic_load_explicit(&hp_agent_free_filter,
                                                     memory_order_relaxed),
                                (uintptr_t)ptr)) {
    int saved_errno = errno;
    int was_reentrant = hp_hooks_is_reentrant(t);
    hp_hooks_enter(t);
    hp_agent_record_free(ptr);
    if (!was_reentrant)
      hp_hooks_leave(t);
    errno = saved_errno;
  }
  if (hp_hooks_is_reentrant(t))
    return c->prev.realloc(c->prev.ctx, ptr, size);
  hp_hooks_enter(t);
  void *p = c->prev.realloc(c->prev.ctx, ptr, size);
  if (p && g_frees_via_raw && c->domain != HP_DOMAIN_RAW && size <= PYMALLOC_SMALL)
    p = after_small_realloc(c, t, p, size);
  else if (p)
    after_alloc(t, c->domain, p, size);
  hp_hooks_leave(t);
  return p;
}

/* mem and obj domains: a small realloc of a block never sampled, not sampled itself
 * (string and list resizes make this common). Not a tail call: pymalloc passes a block
 * it does not own (one allocated large, now shrunk) on to PyMem_RawRealloc, whose hook
 * must see the re-entry marker and pass it through, or the request would count twice.
 * The filter comes first so that a failed test never has taken the countdown step. */
static inline void *realloc_fast(hook_ctx *c, void *ptr, size_t size)
{
  hp_hooks_tls *t = &hp_hooks_t;
  if (HP_LIKELY(hp_addrtab_filter_absent(atomic_load_explicit(&hp_agent_free_filter,
                                                              memory_order_relaxed),
                                         (uintptr_t)ptr) &&
                small_unsampled(t, size))) {
    hp_hooks_enter(t);
    void *p = c->prev.realloc(c->prev.ctx, ptr, size);
    hp_hooks_leave(t);
    return p;
  }
  return realloc_any(c, ptr, size);
}

/* The same with g_frees_via_raw, without the filter: a sampled mem/obj block lives in
 * the raw allocator, so pymalloc hands its realloc to PyMem_RawRealloc, whose hook
 * reports the free while re-entering (realloc_any). Every realloc saves the filter's
 * load. */
static inline void *realloc_fast_via_raw(hook_ctx *c, void *ptr, size_t size)
{
  hp_hooks_tls *t = &hp_hooks_t;
  if (HP_LIKELY(small_unsampled(t, size))) {
    hp_hooks_enter(t);
    void *p = g_pymalloc.realloc(c, ptr, size);
    hp_hooks_leave(t);
    return p;
  }
  return realloc_any(c, ptr, size);
}

static void *hook_raw_realloc(void *ctx, void *ptr, size_t size)
{
  (void)ctx;
  return realloc_any(&g_ctx[CTX_RAW], ptr, size);
}

/* The free of a block the filter may have sampled, also while re-entering: a free is
 * looked up whoever frees, because the look-up removes the address (a nested free of
 * the same block, e.g. PyObject_Free passing a large block on to PyMem_RawFree, then
 * finds nothing) and the agent's own blocks are never in the table. Skipping frees
 * while re-entering lost the frees that another allocator hooked on top of ours makes
 * inside our real call (tracemalloc started after heapprof frees its trace records
 * from within pymalloc's PyMem_RawRealloc): their blocks looked leaked. */
static __attribute__((noinline)) void free_slow(hook_ctx *c, hp_hooks_tls *t, void *ptr)
{
  if (!ptr ||
      atomic_load_explicit(&hp_agent_mode, memory_order_relaxed) != HP_MODE_PROFILE) {
    c->prev.free(c->prev.ctx, ptr);
    return;
  }
  int was_reentrant = hp_hooks_is_reentrant(t);
  hp_hooks_enter(t);
  int saved_errno = errno;
  hp_agent_record_free(ptr);
  errno = saved_errno;
  c->prev.free(c->prev.ctx, ptr);
  if (!was_reentrant)
    hp_hooks_leave(t);
}

static inline void free_fast(hook_ctx *c, void *ptr)
{
  /* Fast path: the counting filter proves most pointers were never sampled (and, while
   * not profiling, is all zero). No TLS and no mode: re-entry, NULL and the mode matter
   * only for the few pointers the filter lets by. */
  if (HP_LIKELY(hp_addrtab_filter_absent(atomic_load_explicit(&hp_agent_free_filter,
                                                              memory_order_relaxed),
                                         (uintptr_t)ptr))) {
    c->prev.free(c->prev.ctx, ptr);
    return;
  }
  free_slow(c, &hp_hooks_t, ptr);
}

void hp_hooks_sample_alloc(hp_hooks_tls *t, hp_domain domain, void *ptr, size_t size)
{
  after_alloc(t, domain, ptr, size);
}

int hp_hooks_sample_free(hp_hooks_tls *t, void *ptr)
{
  if (!ptr || atomic_load_explicit(&hp_agent_mode, memory_order_relaxed) != HP_MODE_PROFILE)
    return 0;
  int was_reentrant = hp_hooks_is_reentrant(t);
  hp_hooks_enter(t);
  int saved_errno = errno;
  int sampled = hp_agent_record_free(ptr);
  errno = saved_errno;
  if (!was_reentrant)
    hp_hooks_leave(t);
  return sampled;
}

/* The mem and obj domains: ctx is the domain's hook_ctx. With g_frees_via_raw (CPython's
 * own allocators, the common case) the hot ones, calling pymalloc directly. */
static HP_HOT_HOOK __attribute__((aligned(64))) void *hook_pymalloc_malloc(void *ctx,
                                                                           size_t size)
{
  return malloc_fast(ctx, &g_pymalloc, ctx, size);
}

static HP_HOT_HOOK void *hook_pymalloc_calloc(void *ctx, size_t nelem, size_t elsize)
{
  return calloc_fast(ctx, &g_pymalloc, ctx, nelem, elsize);
}

static HP_HOT_HOOK void *hook_pymalloc_realloc(void *ctx, void *ptr, size_t size)
{
  return realloc_fast_via_raw(ctx, ptr, size);
}

/* Under any other allocator (a debug allocator, PYTHONMALLOC=malloc, another profiler
 * under or over ours): through the domain's hook_ctx, and realloc tests the filter. */
static void *hook_pym_malloc(void *ctx, size_t size)
{
  hook_ctx *c = ctx;
  return malloc_fast(c, &c->prev, c->prev.ctx, size);
}

static void *hook_pym_calloc(void *ctx, size_t nelem, size_t elsize)
{
  hook_ctx *c = ctx;
  return calloc_fast(c, &c->prev, c->prev.ctx, nelem, elsize);
}

static void *hook_pym_realloc(void *ctx, void *ptr, size_t size)
{
  return realloc_fast(ctx, ptr, size);
}

static void hook_pym_free(void *ctx, void *ptr)
{
  free_fast(ctx, ptr);
}

static void hook_raw_free(void *ctx, void *ptr)
{
  (void)ctx;
  free_fast(&g_ctx[CTX_RAW], ptr);
}

/* Objects handed out again (hp_pyframe_reuse_start; CPython 3.13+). A free list keeps an
 * object's block allocated after the object dies and gives it to the next object of its
 * type without calling the allocator: without this the block's bytes would stay with the
 * line of its first allocation for as long as the free list recycles it, as tracemalloc
 * avoids by re-attributing a traced block at that moment. A sampled block made live
 * again is re-attributed to the stack creating the new object (REATTRIBUTE, PROTOCOL.md
 * 2.4), with its size and estimate unchanged: the bytes are the same, only their owner
 * changed.
 *
 * Called for every object the program creates while profiling; the version shim tests
 * the free filter first, so only blocks that may be sampled get here. An object whose
 * block was sampled a moment ago, by this allocation (the thread's fresh block), is new
 * and keeps its sample's stack: it is not re-attributed. */
static __attribute__((noinline)) void block_created_slow(hp_hooks_tls *t, uintptr_t block)
{
  if (hp_hooks_is_reentrant(t) ||
      atomic_load_explicit(&hp_agent_mode, memory_order_relaxed) != HP_MODE_PROFILE ||
      !hp_agent_is_sampled((const void *)block))
    return;
  int saved_errno = errno;
  hp_hooks_enter(t);
  hp_agent_record_reattribute((const void *)block, hp_stacks_current());
  hp_hooks_leave(t);
  errno = saved_errno;
}

/* Called for the blocks the free filter does not rule out (hp_pyframe_reuse_start). */
static void block_created(uintptr_t block)
{
  hp_hooks_tls *t = &hp_hooks_t;
  if (t->fresh == block) {
    t->fresh = 0;
    return;
  }
  block_created_slow(t, block);
}

int hp_hooks_reuse_start(void)
{
  return hp_pyframe_reuse_start(block_created, &hp_agent_free_filter);
}

void hp_hooks_reuse_stop(void)
{
  hp_pyframe_reuse_stop();
}

int hp_hooks_reuse_available(void)
{
  return hp_pyframe_reuse_available();
}

/* Whether the three domains are CPython's defaults (raw malloc, pymalloc for mem and
 * obj), asked before our hooks go in. The function is CPython's own (3.11 exports
 * _PyMem_GetCurrentAllocatorName but declares it internal), looked up at run time so
 * that an interpreter without it only loses the optimisation. Anything else (a debug
 * allocator, PYTHONMALLOC=malloc, tracemalloc or another profiler hooked first) keeps
 * every free hooked. */
static const char *(*g_allocator_name)(void); /* set at install; NULL if absent */

static int allocators_are_pymalloc(void)
{
  const char *n = g_allocator_name ? g_allocator_name() : NULL;
  return n && strcmp(n, "pymalloc") == 0;
}

/* Whether our hooks are off the allocation path (hp_hooks.h). Someone else's hook on
 * top of ours is fine (tracemalloc started after heapprof calls ours); ours are gone
 * when a domain holds again what we replaced, or CPython's own allocators, which call
 * no hook: tracemalloc.stop() after a tracemalloc.start() that came before heapprof puts
 * back what tracemalloc found. Reads the allocator table without the GIL (the sender
 * thread asks): in 3.11 PyMem_GetAllocator copies four words, and a racing change is
 * seen on the next call. */
int hp_hooks_replaced(void)
{
  if (!g_installed)
    return 0;
  for (int i = 0; i < 3; i++) {
    PyMemAllocatorEx cur;
    PyMem_GetAllocator(g_ctx[i].py_domain, &cur);
    if (cur.malloc == g_ctx[i].ours)
      continue;
    if ((cur.malloc == g_ctx[i].prev.malloc && cur.ctx == g_ctx[i].prev.ctx) ||
        (g_allocator_name && g_allocator_name() != NULL))
      return 1;
  }
  return 0;
}

/* The forking thread's sampler state was copied into the child: without a reseed the
 * child would draw the very gaps its parent (and every sibling) draws, so their samples
 * -- and errors -- would be identical. The next sample reseeds (clock and pid). */
static void hooks_after_fork_child(void)
{
  hp_hooks_tls *t = &hp_hooks_t;
  t->sampler.rng = 0;
  t->sampler.generation = 0;
  if (!hp_hooks_is_reentrant(t))
    hp_hooks_leave(t);
}

int hp_hooks_frees_via_raw(void)
{
  return g_frees_via_raw;
}

void hp_hooks_unprofiled(int on)
{
  if (on)
    hp_hooks_enter(&hp_hooks_t);
  else
    hp_hooks_leave(&hp_hooks_t);
}

int hp_hooks_in_hook(void)
{
  return hp_hooks_is_reentrant(&hp_hooks_t);
}

int hp_hooks_install(void)
{
  /* Indexed by CTX_*. */
  static const PyMemAllocatorDomain domains[3] = {PYMEM_DOMAIN_RAW, PYMEM_DOMAIN_MEM,
                                                  PYMEM_DOMAIN_OBJ};
  static const hp_domain ours[3] = {HP_DOMAIN_RAW, HP_DOMAIN_MEM, HP_DOMAIN_OBJ};
  static const PyMemAllocatorEx hooks[3] = {
    [CTX_RAW] = {.malloc = hook_raw_malloc,
                 .calloc = hook_raw_calloc,
                 .realloc = hook_raw_realloc,
                 .free = hook_raw_free},
    [CTX_MEM] = {.malloc = hook_pym_malloc,
                 .calloc = hook_pym_calloc,
                 .realloc = hook_pym_realloc,
                 .free = hook_pym_free},
    [CTX_OBJ] = {.malloc = hook_pym_malloc,
                 .calloc = hook_pym_calloc,
                 .realloc = hook_pym_realloc,
                 .free = hook_pym_free},
  };
  if (g_installed)
    return 0;
  hp_stacks_init();
  for (int i = 0; i < 3; i++) {
    PyMem_GetAllocator(domains[i], &g_ctx[i].prev);
    g_ctx[i].domain = ours[i];
    g_ctx[i].py_domain = domains[i];
  }
  g_allocator_name = (const char *(*)(void))dlsym(RTLD_DEFAULT,
                                                  "_PyMem_GetCurrentAllocatorName");
  g_frees_via_raw = allocators_are_pymalloc() &&
                    memcmp(&g_ctx[CTX_MEM].prev, &g_ctx[CTX_OBJ].prev,
                           sizeof(PyMemAllocatorEx)) == 0;
  g_pymalloc = g_ctx[CTX_OBJ].prev;
  if (pthread_atfork(NULL, NULL, hooks_after_fork_child) != 0)
    return -HP_ENOMEM;
  for (int i = 0; i < 3; i++) {
    PyMemAllocatorEx a = hooks[i];
    /* The raw hooks find their domain in g_ctx, and the raw domain's ctx stays the
     * real one. The shared mem/obj hooks get theirs as ctx; with g_frees_via_raw the
     * free passed on unhooked (below) gets it too, and the hot hooks pass it on to
     * pymalloc (g_pymalloc), which is safe only because pymalloc ignores its ctx
     * (g_frees_via_raw is set for pymalloc alone). */
    a.ctx = i == CTX_RAW ? g_ctx[i].prev.ctx : (void *)&g_ctx[i];
    if (g_frees_via_raw && i != CTX_RAW) {
      a.malloc = hook_pymalloc_malloc;
      a.calloc = hook_pymalloc_calloc;
      a.realloc = hook_pymalloc_realloc;
      a.free = g_ctx[i].prev.free;
    }
    g_ctx[i].ours = a.malloc;
    PyMem_SetAllocator(domains[i], &a);
  }
  g_installed = 1;
  return 0;
}
