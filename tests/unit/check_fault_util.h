/* check_fault_util.h — page-fault helpers for the Check tests of memory the agent maps in
 * ahead of the hooks (check_ring, check_addrtab: hp_prefault.h). Test code only; failures
 * fail the running test through ck_assert.
 *
 * Header-only (static inline), as check_db_util.h. */
#ifndef HP_CHECK_FAULT_UTIL_H
#define HP_CHECK_FAULT_UTIL_H

#include <check.h>
#include <sys/mman.h>
#include <sys/resource.h>

/* Whether this kernel maps pages in on request (MADV_POPULATE_WRITE, Linux 5.14), asked
 * without the agent's code. */
static inline int hp_test_kernel_can_prefault(void)
{
  void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ck_assert_ptr_ne(p, MAP_FAILED);
  int ok = madvise(p, 4096, MADV_POPULATE_WRITE) == 0;
  munmap(p, 4096);
  return ok;
}

/* The minor page faults the calling thread has taken so far. */
static inline long hp_test_thread_minor_faults(void)
{
  struct rusage ru;
  ck_assert_int_eq(getrusage(RUSAGE_THREAD, &ru), 0);
  return ru.ru_minflt;
}

#endif /* HP_CHECK_FAULT_UTIL_H */
