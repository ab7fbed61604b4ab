/* hp_failmalloc.c — an LD_PRELOAD shim for the agent's tests: libc's malloc and calloc
 * fail small requests (up to 512 bytes) in a thread that asked for it, while pymalloc,
 * which takes its arenas from mmap, goes on serving. That is the situation of issue 12
 * item 9: the raw allocator refuses a sampled small block that pymalloc would serve.
 *
 *   ctypes.CDLL(None).hp_failmalloc_set(1)   # this thread's small mallocs now fail
 *
 * Everything else goes to glibc's own functions (__libc_*), so free and realloc stay
 * consistent. */
#include <errno.h>
#include <stddef.h>

extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t nelem, size_t elsize);

static __thread int t_fail_small;

void hp_failmalloc_set(int on)
{
  t_fail_small = on;
}

void *malloc(size_t size)
{
  if (t_fail_small && size <= 512) {
    errno = ENOMEM;
    return NULL;
  }
  return __libc_malloc(size);
}

void *calloc(size_t nelem, size_t elsize)
{
  if (t_fail_small && nelem * elsize <= 512) {
    errno = ENOMEM;
    return NULL;
  }
  return __libc_calloc(nelem, elsize);
}
