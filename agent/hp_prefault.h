/* hp_prefault.h — memory the hooks will write, mapped in before they write it.
 *
 * The ring and the address table are calloc()ed zero pages that cost no memory until
 * first written, and each first write takes a page fault (two when a read came first)
 * in whichever thread writes: the program's, inside an allocation hook. The sender
 * thread maps them in ahead instead, on the other core. MADV_POPULATE_WRITE (Linux
 * 5.14) never changes what the pages hold, so it may run while other threads use them. */
#ifndef HP_PREFAULT_H
#define HP_PREFAULT_H

#include <stddef.h>

/* Maps in the pages that hold [addr, addr + len) as if written. 0, or -errno (-EINVAL:
 * an older kernel; the pages then fault in as the hooks write them, as without this). */
int hp_prefault(const void *addr, size_t len);

#endif /* HP_PREFAULT_H */
