/* hp_native_lib.c — a plain shared library (no Python) for the native-allocation tests:
 * loaded at run time with ctypes (dlopen), its malloc and free must be seen like an
 * extension's. */
#include <stdlib.h>
#include <string.h>

void *hp_native_lib_malloc(size_t n)
{
  void *p = malloc(n);
  if (p)
    memset(p, 2, n);
  return p;
}

void hp_native_lib_free(void *p)
{
  free(p);
}
