/* hp_prefault.c — see hp_prefault.h. */
#include "hp_prefault.h"

#include <errno.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14; older headers lack it */
#endif

int hp_prefault(const void *addr, size_t len)
{
  if (len == 0)
    return 0;
  uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  uintptr_t start = (uintptr_t)addr & ~(page - 1);
  uintptr_t end = ((uintptr_t)addr + len + page - 1) & ~(page - 1);
  if (madvise((void *)start, end - start, MADV_POPULATE_WRITE) != 0)
    return -errno;
  return 0;
}
