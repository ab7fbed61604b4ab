/* hp_alloc.c — the proto module's allocator: libc, plus a fault-injection hook.
 *
 * The encoder runs on the agent's sender thread and must never call Python, so all of
 * proto allocates with libc malloc. The hook lets the unit tests fail the N-th
 * allocation (SQLite's malloc.test idea) and check that every out-of-memory path
 * returns -HP_ENOMEM with the object still usable. msgpack-c's own zone allocations
 * are not covered; the decoder maps their failure to -HP_ENOMEM as well. */
#include <stdatomic.h>
#include <stdlib.h>

#include "hp_proto_int.h"

/* < 0: no injection. Otherwise the number of allocations that still succeed. Set
 * only by tests; atomic so that concurrent users never see a torn value. */
static _Atomic long fail_countdown = -1;

void hp_proto_test_fail_alloc_after(long n)
{
  atomic_store_explicit(&fail_countdown, n, memory_order_relaxed);
}

static int should_fail(void)
{
  long n = atomic_load_explicit(&fail_countdown, memory_order_relaxed);
  if (HP_LIKELY(n < 0))
    return 0;
  if (n == 0)
    return 1;
  atomic_store_explicit(&fail_countdown, n - 1, memory_order_relaxed);
  return 0;
}

void *hp_proto_malloc(size_t size)
{
  return should_fail() ? NULL : malloc(size);
}

void *hp_proto_realloc(void *p, size_t size)
{
  return should_fail() ? NULL : realloc(p, size);
}

void hp_proto_free(void *p)
{
  free(p);
}
