/* hp_dblock.h — one heapprofd per database: an exclusive lock on "<db>.lock".
 *
 * Two daemons appending to one database would each take the other's running sessions
 * for leftovers of a crash; so a daemon holds flock(LOCK_EX) on "<db>.lock" (which
 * holds its pid, for the refusal message) from start to exit. The kernel drops the
 * lock when the holder dies however it dies, so "the lock is free" means "no daemon is
 * writing this database". Main thread only. */
#ifndef HP_DBLOCK_H
#define HP_DBLOCK_H

typedef struct hp_dblock hp_dblock; /* opaque */

/* Takes the lock of db_path. 0 and *out; -EWOULDBLOCK when another process holds it
 * (*holder_pid is then its pid, or 0 if unknown); -EPERM when the lock file belongs to
 * another user; another -errno when it cannot be created (then *holder_pid is 0), or
 * -HP_ENOMEM. */
int hp_dblock_acquire(const char *db_path, hp_dblock **out, long *holder_pid);
/* Removes the lock file (while still holding it, so no other daemon can be misled
 * into locking a removed file) and releases the lock. NULL is a no-op. */
void hp_dblock_release(hp_dblock *l);

#endif /* HP_DBLOCK_H */
