/* hp_fault_vfs.h — a SQLite VFS for tests that fails as a full disk and a busy database
 * do, on request.
 *
 * It wraps the default VFS (unix) and becomes the default itself, so that every
 * connection opened afterwards, heapprofd's included, goes through it and meets real
 * SQLite error paths: while "full" is on, every write to a database, WAL or journal file
 * fails with SQLITE_FULL (what the unix VFS returns for ENOSPC); while "locked" is on,
 * taking the WAL write lock fails with SQLITE_BUSY, as when another connection holds
 * BEGIN IMMEDIATE, so BEGIN IMMEDIATE waits out the busy timeout and fails.
 *
 * The switches are set by a test in the same process, or, for a separate process (the
 * heapprofd_fault test binary), by the existence of the files "full" and "locked" in
 * the directory named by the environment variable HP_FAULT_DIR. Test code only. */
#ifndef HP_FAULT_VFS_H
#define HP_FAULT_VFS_H

/* Registers the VFS as the default. 0, or an SQLite error code. Idempotent. */
int hp_fault_vfs_install(void);
void hp_fault_set_full(int on);
void hp_fault_set_locked(int on);
/* Writes and write locks refused so far. */
long hp_fault_writes_refused(void);
long hp_fault_locks_refused(void);

#endif /* HP_FAULT_VFS_H */
