/* hp_native.h — native allocations: the malloc family, anonymous mmap and munmap called
 * by the shared objects of the process (C extensions and the libraries they use), sampled
 * as domain HP_DOMAIN_NATIVE by the same per-thread Poisson countdown as the PEP 445 hooks.
 *
 * Interposed by rewriting the import slots of loaded objects (hp_got.h), and of every
 * object dlopen() loads later, while profiling; put back by hp_native_stop(). Left alone:
 * libc and the allocator that defines malloc, the dynamic loader, the vDSO, sanitizer
 * runtimes and heapprof's own extension; the interpreter (the main executable and the
 * object defining PyObject_Malloc, whose allocations arrive through PEP 445) has only its
 * dlopen and dlclose redirected, so that `import` of an extension is seen. The hook
 * functions stay in place for the life of the process (the extension is never unloaded),
 * so a call racing the restore is harmless. */
#ifndef HP_NATIVE_H
#define HP_NATIVE_H

#include <stddef.h>

/* Rewrites the slots of the objects loaded now; from then on every dlopen() through a
 * rewritten slot rewrites the new objects' too. Again while started: looks for new
 * objects only. Any thread; takes the native lock, never the GIL. 0, or -HP_ENOMEM (what
 * was rewritten stays recorded and is restored by stop). */
int hp_native_start(void);

/* Puts back every slot still holding a hook, in the objects still loaded. Idempotent. */
void hp_native_stop(void);

/* For tests: the number of slots rewritten now. */
size_t hp_native_slots(void);

#endif /* HP_NATIVE_H */
