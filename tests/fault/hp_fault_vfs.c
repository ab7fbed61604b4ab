/* hp_fault_vfs.c — see hp_fault_vfs.h. A shim in the manner of SQLite's own test VFSes:
 * each file is the real VFS's file preceded by our header, and every method forwards. */
#include "hp_fault_vfs.h"

#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

typedef struct {
  sqlite3_file base;   /* our methods */
  sqlite3_file *real;  /* the wrapped VFS's file, right after this struct */
} fault_file;

static sqlite3_vfs fault_vfs;
static sqlite3_vfs *real_vfs;
static atomic_int full_on, locked_on;
static atomic_long writes_refused, locks_refused;
static char control_dir[PATH_MAX];  /* "" unless HP_FAULT_DIR is set */

void hp_fault_set_full(int on) { atomic_store(&full_on, on); }
void hp_fault_set_locked(int on) { atomic_store(&locked_on, on); }
long hp_fault_writes_refused(void) { return atomic_load(&writes_refused); }
long hp_fault_locks_refused(void) { return atomic_load(&locks_refused); }

static int switch_on(atomic_int *flag, const char *name) {
  if (atomic_load(flag))
    return 1;
  if (control_dir[0] == '\0')
    return 0;
  char path[PATH_MAX + 16];
  snprintf(path, sizeof path, "%s/%s", control_dir, name);
  return access(path, F_OK) == 0;
}

#define REAL(f) (((fault_file *)(f))->real)

static int f_close(sqlite3_file *f) { return REAL(f)->pMethods->xClose(REAL(f)); }
static int f_read(sqlite3_file *f, void *b, int n, sqlite3_int64 off) {
  return REAL(f)->pMethods->xRead(REAL(f), b, n, off);
}
static int f_write(sqlite3_file *f, const void *b, int n, sqlite3_int64 off) {
  if (switch_on(&full_on, "full")) {
    atomic_fetch_add(&writes_refused, 1);
    return SQLITE_FULL;
  }
  return REAL(f)->pMethods->xWrite(REAL(f), b, n, off);
}
static int f_truncate(sqlite3_file *f, sqlite3_int64 size) {
  return REAL(f)->pMethods->xTruncate(REAL(f), size);
}
static int f_sync(sqlite3_file *f, int flags) { return REAL(f)->pMethods->xSync(REAL(f), flags); }
static int f_size(sqlite3_file *f, sqlite3_int64 *size) {
  return REAL(f)->pMethods->xFileSize(REAL(f), size);
}
static int f_lock(sqlite3_file *f, int l) { return REAL(f)->pMethods->xLock(REAL(f), l); }
static int f_unlock(sqlite3_file *f, int l) { return REAL(f)->pMethods->xUnlock(REAL(f), l); }
static int f_check_reserved(sqlite3_file *f, int *out) {
  return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}
static int f_control(sqlite3_file *f, int op, void *arg) {
  return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}
static int f_sector(sqlite3_file *f) { return REAL(f)->pMethods->xSectorSize(REAL(f)); }
static int f_device(sqlite3_file *f) { return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f)); }
static int f_shm_map(sqlite3_file *f, int pg, int pgsz, int extend, void volatile **pp) {
  return REAL(f)->pMethods->xShmMap(REAL(f), pg, pgsz, extend, pp);
}
/* Slot 0 of the WAL's lock array is its write lock (WAL_WRITE_LOCK in SQLite's wal.c). */
static int f_shm_lock(sqlite3_file *f, int offset, int n, int flags) {
  if (offset == 0 && (flags & SQLITE_SHM_LOCK) && (flags & SQLITE_SHM_EXCLUSIVE) &&
      switch_on(&locked_on, "locked")) {
    atomic_fetch_add(&locks_refused, 1);
    return SQLITE_BUSY;
  }
  return REAL(f)->pMethods->xShmLock(REAL(f), offset, n, flags);
}
static void f_shm_barrier(sqlite3_file *f) { REAL(f)->pMethods->xShmBarrier(REAL(f)); }
static int f_shm_unmap(sqlite3_file *f, int del) {
  return REAL(f)->pMethods->xShmUnmap(REAL(f), del);
}
static int f_fetch(sqlite3_file *f, sqlite3_int64 off, int n, void **pp) {
  return REAL(f)->pMethods->xFetch(REAL(f), off, n, pp);
}
static int f_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p) {
  return REAL(f)->pMethods->xUnfetch(REAL(f), off, p);
}

static const sqlite3_io_methods fault_methods = {
  3, f_close, f_read, f_write, f_truncate, f_sync, f_size, f_lock, f_unlock,
  f_check_reserved, f_control, f_sector, f_device, f_shm_map, f_shm_lock, f_shm_barrier,
  f_shm_unmap, f_fetch, f_unfetch,
};

static int v_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *out) {
  (void)vfs;
  fault_file *ff = (fault_file *)f;
  ff->real = (sqlite3_file *)(ff + 1);
  int rc = real_vfs->xOpen(real_vfs, name, ff->real, flags, out);
  /* SQLite calls xClose only when pMethods is set; the unix VFS's methods are version 3,
   * so every method we forward exists. */
  ff->base.pMethods = ff->real->pMethods != NULL ? &fault_methods : NULL;
  return rc;
}
static int v_delete(sqlite3_vfs *vfs, const char *name, int sync) {
  (void)vfs;
  return real_vfs->xDelete(real_vfs, name, sync);
}
static int v_access(sqlite3_vfs *vfs, const char *name, int flags, int *out) {
  (void)vfs;
  return real_vfs->xAccess(real_vfs, name, flags, out);
}
static int v_fullpath(sqlite3_vfs *vfs, const char *name, int n, char *out) {
  (void)vfs;
  return real_vfs->xFullPathname(real_vfs, name, n, out);
}
static void *v_dlopen(sqlite3_vfs *vfs, const char *name) {
  (void)vfs;
  return real_vfs->xDlOpen(real_vfs, name);
}
static void v_dlerror(sqlite3_vfs *vfs, int n, char *out) {
  (void)vfs;
  real_vfs->xDlError(real_vfs, n, out);
}
static void (*v_dlsym(sqlite3_vfs *vfs, void *h, const char *sym))(void) {
  (void)vfs;
  return real_vfs->xDlSym(real_vfs, h, sym);
}
static void v_dlclose(sqlite3_vfs *vfs, void *h) {
  (void)vfs;
  real_vfs->xDlClose(real_vfs, h);
}
static int v_random(sqlite3_vfs *vfs, int n, char *out) {
  (void)vfs;
  return real_vfs->xRandomness(real_vfs, n, out);
}
static int v_sleep(sqlite3_vfs *vfs, int us) {
  (void)vfs;
  return real_vfs->xSleep(real_vfs, us);
}
static int v_time(sqlite3_vfs *vfs, double *out) {
  (void)vfs;
  return real_vfs->xCurrentTime(real_vfs, out);
}
static int v_lasterror(sqlite3_vfs *vfs, int n, char *out) {
  (void)vfs;
  return real_vfs->xGetLastError ? real_vfs->xGetLastError(real_vfs, n, out) : 0;
}
static int v_time64(sqlite3_vfs *vfs, sqlite3_int64 *out) {
  (void)vfs;
  return real_vfs->xCurrentTimeInt64(real_vfs, out);
}

int hp_fault_vfs_install(void) {
  if (real_vfs != NULL)
    return SQLITE_OK;
  sqlite3_vfs *def = sqlite3_vfs_find(NULL);
  if (def == NULL || def->iVersion < 2)
    return SQLITE_ERROR;
  const char *dir = getenv("HP_FAULT_DIR");
  if (dir != NULL)
    snprintf(control_dir, sizeof control_dir, "%s", dir);
  real_vfs = def;
  fault_vfs = (sqlite3_vfs){
    .iVersion = 2, .szOsFile = (int)sizeof(fault_file) + def->szOsFile,
    .mxPathname = def->mxPathname, .zName = "hp-fault", .xOpen = v_open,
    .xDelete = v_delete, .xAccess = v_access, .xFullPathname = v_fullpath,
    .xDlOpen = v_dlopen, .xDlError = v_dlerror, .xDlSym = v_dlsym, .xDlClose = v_dlclose,
    .xRandomness = v_random, .xSleep = v_sleep, .xCurrentTime = v_time,
    .xGetLastError = v_lasterror, .xCurrentTimeInt64 = v_time64,
  };
  return sqlite3_vfs_register(&fault_vfs, 1);
}
