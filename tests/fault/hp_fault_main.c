/* hp_fault_main.c — installs the fault VFS before heapprofd's main() runs, for the
 * heapprofd_fault test binary (daemon/main.c linked with this file). HP_FAULT_DIR names
 * the directory whose files "full" and "locked" switch the faults on and off. */
#include <stdio.h>
#include <stdlib.h>

#include "hp_fault_vfs.h"

__attribute__((constructor)) static void install_fault_vfs(void) {
  if (hp_fault_vfs_install() != 0) {
    fprintf(stderr, "heapprofd_fault: cannot install the fault VFS\n");
    exit(1);
  }
}
