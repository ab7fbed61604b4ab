/* hp_got.c — rewriting and restoring the import slots of loaded ELF objects (hp_got.h).
 *
 * Facts relied on (the ELF gABI and the x86-64/AArch64 psABIs; glibc's loader):
 * - An object's PT_DYNAMIC lists DT_JMPREL/DT_PLTRELSZ/DT_PLTREL (the PLT relocations) and
 *   DT_RELA/DT_RELASZ (the others), DT_SYMTAB and DT_STRTAB. glibc rewrites these d_ptr
 *   values in place to run-time addresses for ordinary objects; where it did not (the
 *   vDSO, other loaders) they are below the load bias and are relocated here.
 * - A JUMP_SLOT or GLOB_DAT relocation at r_offset fills the pointer-sized slot at
 *   load bias + r_offset with the address of symbol ELF_R_SYM(r_info). With lazy binding
 *   a JUMP_SLOT first holds an address inside the object's own PLT.
 * - Slots inside PT_GNU_RELRO are read-only once relocated (full RELRO makes the whole
 *   GOT so); they are made writable for the write and read-only again after. The loader
 *   protects the region's whole pages only (start and end rounded down to a page), so a
 *   slot on the page of its end stays writable and is written without mprotect: making
 *   that page read-only would break the data beside it. Other slots live in a writable
 *   PT_LOAD segment.
 * - dl_iterate_phdr() runs its callback under the loader's lock, so an object seen there
 *   cannot be unloaded during the callback: every write to a slot happens inside it. */
#include "hp_got.h"

#include <elf.h>
#include <link.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "hp_proto.h"

#if defined(__x86_64__)
#define HP_R_JUMP_SLOT R_X86_64_JUMP_SLOT
#define HP_R_GLOB_DAT  R_X86_64_GLOB_DAT
#elif defined(__aarch64__)
#define HP_R_JUMP_SLOT R_AARCH64_JUMP_SLOT
#define HP_R_GLOB_DAT  R_AARCH64_GLOB_DAT
#endif
#if defined(__x86_64__) || defined(__aarch64__)
#define HP_R_TYPE(i) ELF64_R_TYPE(i)
#define HP_R_SYM(i)  ELF64_R_SYM(i)
#else
#error "hp_got.c knows the relocation types of x86-64 and AArch64 only"
#endif

typedef struct {
  void **slot;
  void *orig; /* what the slot held before */
  void *hook; /* what we wrote */
} got_slot;

/* One patched object, known by its load bias and program headers (the loader's
 * dl_phdr_info identity while it stays loaded). */
typedef struct {
  uintptr_t bias;
  const void *phdr;
  got_slot *slots;
  size_t nslots, cap;
  int seen; /* scratch of the current walk */
} got_obj;

struct hp_got_set {
  got_obj *objs;
  size_t nobjs, cap;
  /* The loader's counts of objects loaded and unloaded at the last complete walk: while
   * they stay the same, no object came or went and a walk finds nothing new. */
  unsigned long long adds, subs;
  int counted;
};

hp_got_set *hp_got_set_new(void)
{
  return calloc(1, sizeof(hp_got_set));
}

static void obj_clear(got_obj *o)
{
  free(o->slots);
  o->slots = NULL;
  o->nslots = o->cap = 0;
}

void hp_got_set_free(hp_got_set *s)
{
  if (!s)
    return;
  for (size_t i = 0; i < s->nobjs; i++)
    obj_clear(&s->objs[i]);
  free(s->objs);
  free(s);
}

size_t hp_got_count(const hp_got_set *s)
{
  size_t n = 0;
  for (size_t i = 0; i < s->nobjs; i++)
    n += s->objs[i].nslots;
  return n;
}

static got_obj *find_obj(hp_got_set *s, const struct dl_phdr_info *info)
{
  for (size_t i = 0; i < s->nobjs; i++)
    if (s->objs[i].bias == (uintptr_t)info->dlpi_addr && s->objs[i].phdr == info->dlpi_phdr)
      return &s->objs[i];
  return NULL;
}

/* ---- one object's layout ---- */

typedef struct {
  uintptr_t bias, lo, hi;       /* load bias; mapped range of its PT_LOAD segments */
  uintptr_t relro_lo, relro_hi; /* the pages PT_GNU_RELRO made read-only, or empty */
  const ElfW(Dyn) * dyn;
} obj_layout;

static void layout_of(const struct dl_phdr_info *info, obj_layout *l)
{
  memset(l, 0, sizeof(*l));
  l->bias = (uintptr_t)info->dlpi_addr;
  l->lo = UINTPTR_MAX;
  for (ElfW(Half) i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *p = &info->dlpi_phdr[i];
    uintptr_t start = l->bias + p->p_vaddr, end = start + p->p_memsz;
    if (p->p_type == PT_LOAD) {
      if (start < l->lo)
        l->lo = start;
      if (end > l->hi)
        l->hi = end;
    } else if (p->p_type == PT_DYNAMIC) {
      l->dyn = (const ElfW(Dyn) *)start;
    } else if (p->p_type == PT_GNU_RELRO) {
      uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
      l->relro_lo = start & ~(page - 1);
      l->relro_hi = end & ~(page - 1);
    }
  }
  if (l->lo == UINTPTR_MAX)
    l->lo = 0;
}

static uintptr_t dyn_ptr(const obj_layout *l, ElfW(Addr) v)
{
  return v < l->bias ? l->bias + v : v;
}

/* Writes v into *slot; RELRO pages are opened for the write and closed after. Inside
 * the dl_iterate_phdr callback only. 0, or -1 when mprotect refused (left as it was). */
static int slot_write(const obj_layout *l, void **slot, void *v)
{
  uintptr_t a = (uintptr_t)slot;
  if (a >= l->relro_lo && a + sizeof(void *) <= l->relro_hi) {
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    void *start = (void *)(a & ~(page - 1));
    size_t len = ((a + sizeof(void *) + page - 1) & ~(page - 1)) - (uintptr_t)start;
    if (mprotect(start, len, PROT_READ | PROT_WRITE) != 0)
      return -1;
    __atomic_store_n(slot, v, __ATOMIC_RELEASE);
    mprotect(start, len, PROT_READ);
    return 0;
  }
  __atomic_store_n(slot, v, __ATOMIC_RELEASE);
  return 0;
}

/* ---- patching ---- */

typedef struct {
  hp_got_set *set;
  const hp_got_sym *syms;
  uint32_t nsyms;
  hp_got_choose choose;
  void *arg;
  int count, err;
  unsigned index; /* of the object in this walk */
  int unchanged;  /* the loader's counts say nothing came or went */
  int counted;
  unsigned long long adds, subs;
} patch_walk;

static int obj_add_slot(got_obj *o, void **slot, void *orig, void *hook)
{
  if (o->nslots == o->cap) {
    size_t cap = o->cap ? o->cap * 2 : 16;
    got_slot *n = realloc(o->slots, cap * sizeof(*n));
    if (!n)
      return -1;
    o->slots = n;
    o->cap = cap;
  }
  o->slots[o->nslots++] = (got_slot){slot, orig, hook};
  return 0;
}

static int sym_index(const patch_walk *w, uint32_t mask, const char *name)
{
  for (uint32_t i = 0; i < w->nsyms; i++)
    if ((mask & (1u << i)) && strcmp(w->syms[i].name, name) == 0)
      return (int)i;
  return -1;
}

/* The relocations rel[0..n) of one object: rewrite the chosen imports. */
static void patch_relocs(patch_walk *w, got_obj *o, const obj_layout *l, uint32_t mask,
                         const ElfW(Rela) * rel, size_t n, const ElfW(Sym) * symtab,
                         const char *strtab)
{
  for (size_t i = 0; i < n && !w->err; i++) {
    uint32_t type = (uint32_t)HP_R_TYPE(rel[i].r_info);
    if (type != HP_R_JUMP_SLOT && type != HP_R_GLOB_DAT)
      continue;
    const ElfW(Sym) *sym = &symtab[HP_R_SYM(rel[i].r_info)];
    if (sym->st_shndx != SHN_UNDEF || sym->st_name == 0)
      continue; /* the object's own definition: not ours to redirect */
    int k = sym_index(w, mask, strtab + sym->st_name);
    if (k < 0)
      continue;
    void **slot = (void **)(l->bias + rel[i].r_offset);
    void *cur = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    if (cur == w->syms[k].hook)
      continue;
    /* Bound to the real function, or not bound yet (a lazy PLT stub of its own). */
    if (cur != w->syms[k].real && (cur != w->syms[k].alias || !cur) &&
        !((uintptr_t)cur >= l->lo && (uintptr_t)cur < l->hi))
      continue;
    if (obj_add_slot(o, slot, cur, w->syms[k].hook) < 0) {
      w->err = -HP_ENOMEM;
      return;
    }
    if (slot_write(l, slot, w->syms[k].hook) != 0) {
      o->nslots--;
      continue;
    }
    w->count++;
  }
}

static void patch_obj(patch_walk *w, got_obj *o, const obj_layout *l, uint32_t mask)
{
  uintptr_t jmprel = 0, rela = 0, symtab = 0, strtab = 0;
  size_t pltrelsz = 0, relasz = 0;
  long pltrel = DT_RELA;
  for (const ElfW(Dyn) *d = l->dyn; d->d_tag != DT_NULL; d++) {
    switch (d->d_tag) {
    case DT_JMPREL: jmprel = dyn_ptr(l, d->d_un.d_ptr); break;
    case DT_PLTRELSZ: pltrelsz = d->d_un.d_val; break;
    case DT_PLTREL: pltrel = (long)d->d_un.d_val; break;
    case DT_RELA: rela = dyn_ptr(l, d->d_un.d_ptr); break;
    case DT_RELASZ: relasz = d->d_un.d_val; break;
    case DT_SYMTAB: symtab = dyn_ptr(l, d->d_un.d_ptr); break;
    case DT_STRTAB: strtab = dyn_ptr(l, d->d_un.d_ptr); break;
    default: break;
    }
  }
  if (!symtab || !strtab)
    return;
  const ElfW(Sym) *syms = (const ElfW(Sym) *)symtab;
  const char *strs = (const char *)strtab;
  if (jmprel && pltrel == DT_RELA)
    patch_relocs(w, o, l, mask, (const ElfW(Rela) *)jmprel, pltrelsz / sizeof(ElfW(Rela)),
                 syms, strs);
  if (rela)
    patch_relocs(w, o, l, mask, (const ElfW(Rela) *)rela, relasz / sizeof(ElfW(Rela)), syms,
                 strs);
}

static int patch_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
  patch_walk *w = arg;
  if (w->err)
    return 1;
  unsigned index = w->index++;
  if (index == 0 &&
      size >= offsetof(struct dl_phdr_info, dlpi_subs) + sizeof(info->dlpi_subs)) {
    if (w->set->counted && info->dlpi_adds == w->set->adds &&
        info->dlpi_subs == w->set->subs) {
      w->unchanged = 1;
      return 1;
    }
    w->adds = info->dlpi_adds;
    w->subs = info->dlpi_subs;
    w->counted = 1;
  }
  got_obj *o = find_obj(w->set, info);
  if (o) {
    o->seen = 1;
    return 0;
  }
  obj_layout l;
  layout_of(info, &l);
  const char *path = info->dlpi_name ? info->dlpi_name : "";
  /* The first object the loader reports is the main executable. */
  int is_main = index == 0;
  uint32_t mask = l.dyn ? w->choose(path, is_main, l.lo, l.hi, w->arg) : 0;
  hp_got_set *s = w->set;
  if (s->nobjs == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 32;
    got_obj *n = realloc(s->objs, cap * sizeof(*n));
    if (!n) {
      w->err = -HP_ENOMEM;
      return 1;
    }
    s->objs = n;
    s->cap = cap;
  }
  /* Recorded even when nothing in it is chosen, so that it is not looked at again. */
  o = &s->objs[s->nobjs++];
  *o = (got_obj){.bias = l.bias, .phdr = info->dlpi_phdr, .seen = 1};
  if (mask)
    patch_obj(w, o, &l, mask);
  return w->err ? 1 : 0;
}

/* Drops the objects the last walk did not see: unloaded (their slots are gone with
 * them; nothing is written). */
static void forget_unseen(hp_got_set *s)
{
  size_t j = 0;
  for (size_t i = 0; i < s->nobjs; i++) {
    if (s->objs[i].seen) {
      s->objs[j++] = s->objs[i];
    } else {
      obj_clear(&s->objs[i]);
    }
  }
  s->nobjs = j;
}

int hp_got_patch(hp_got_set *s, const hp_got_sym *syms, uint32_t nsyms,
                 hp_got_choose choose, void *arg)
{
  if (nsyms > HP_GOT_MAX_SYMS)
    return -HP_EINVAL;
  for (size_t i = 0; i < s->nobjs; i++)
    s->objs[i].seen = 0;
  patch_walk w = {.set = s, .syms = syms, .nsyms = nsyms, .choose = choose, .arg = arg};
  dl_iterate_phdr(patch_cb, &w);
  if (w.unchanged)
    return 0;
  if (w.err) {
    for (size_t i = 0; i < s->nobjs; i++)
      s->objs[i].seen = 1; /* an interrupted walk proves nothing unloaded */
    return w.err;
  }
  forget_unseen(s);
  s->counted = w.counted;
  s->adds = w.adds;
  s->subs = w.subs;
  return w.count;
}

/* ---- restoring ---- */

typedef struct {
  hp_got_set *set;
  int count;
} restore_walk;

static int restore_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
  restore_walk *w = arg;
  (void)size;
  got_obj *o = find_obj(w->set, info);
  if (!o || o->nslots == 0)
    return 0;
  obj_layout l;
  layout_of(info, &l);
  for (size_t i = 0; i < o->nslots; i++) {
    got_slot *g = &o->slots[i];
    if (__atomic_load_n(g->slot, __ATOMIC_ACQUIRE) == g->hook &&
        slot_write(&l, g->slot, g->orig) == 0)
      w->count++;
  }
  obj_clear(o);
  return 0;
}

int hp_got_restore(hp_got_set *s)
{
  restore_walk w = {.set = s};
  dl_iterate_phdr(restore_cb, &w);
  for (size_t i = 0; i < s->nobjs; i++)
    obj_clear(&s->objs[i]);
  s->nobjs = 0;
  s->counted = 0;
  return w.count;
}
