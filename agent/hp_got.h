/* hp_got.h — redirecting the calls a loaded ELF object makes to named functions, by
 * rewriting its relocated import slots (GOT entries of R_*_JUMP_SLOT and R_*_GLOB_DAT
 * relocations), and putting them back.
 *
 * Used by hp_native.c to interpose the malloc family in the shared objects already loaded
 * and in those loaded later, without LD_PRELOAD. Pure C over <link.h>: no Python here.
 *
 * Only slots of symbols the object imports (undefined in it) are touched, and only while
 * they hold the real function or still point into the object itself (a lazy-binding PLT
 * stub): a slot someone else redirected is left alone. Every rewritten slot is remembered
 * with what it held; hp_got_restore() writes that back to slots that still hold ours, in
 * the objects still loaded, while the loader cannot unload them. Not thread-safe: the
 * caller serialises all calls. */
#ifndef HP_GOT_H
#define HP_GOT_H

#include <stddef.h>
#include <stdint.h>

#define HP_GOT_MAX_SYMS 32u /* functions per hp_got_set */

typedef struct hp_got_set hp_got_set; /* opaque: the rewritten slots, by object */

/* What to do with one loaded object: a bit mask over the symbols passed to hp_got_patch()
 * (bit i: symbol i), 0 to leave the object alone. path is the loader's name for it ("" for
 * the main executable); [lo, hi) its mapped address range. */
typedef uint32_t (*hp_got_choose)(const char *path, int is_main, uintptr_t lo, uintptr_t hi,
                                  void *arg);

typedef struct {
  const char *name; /* the symbol, without version */
  void *real;       /* the function the slot holds when bound (the global definition) */
  void *hook;       /* what the slot should hold instead */
  /* Another address a bound slot may hold for the same function, or NULL: a non-PIE
   * executable that takes a function's address defines a canonical PLT entry for it, to
   * which GLOB_DAT slots everywhere (and dlsym) resolve, while JUMP_SLOTs get the real
   * definition. */
  void *alias;
} hp_got_sym;

hp_got_set *hp_got_set_new(void); /* NULL on OOM */
/* Restores nothing: call hp_got_restore() first. NULL is a no-op. */
void hp_got_set_free(hp_got_set *s);

/* Rewrites the chosen slots of every loaded object not patched yet (syms: at most
 * HP_GOT_MAX_SYMS, borrowed for the call), and forgets the objects unloaded since the last
 * call. Returns the number of slots rewritten now (>= 0), or -HP_ENOMEM (the slots
 * rewritten until then are recorded). */
int hp_got_patch(hp_got_set *s, const hp_got_sym *syms, uint32_t nsyms,
                 hp_got_choose choose, void *arg);

/* Puts back every recorded slot of the objects still loaded that still holds our hook,
 * and forgets them all. Returns the number of slots written back. */
int hp_got_restore(hp_got_set *s);

/* For tests: the number of slots currently recorded as rewritten. */
size_t hp_got_count(const hp_got_set *s);

#endif /* HP_GOT_H */
