/* dblock.c — the "<db>.lock" file that keeps a second heapprofd off a database.
 *
 * Used by main before the store starts: only a daemon holding the lock may decide that
 * sessions still 'running' in the database were left behind by a daemon that died.
 * flock locks belong to the open file, not the path, so a lock file that a stopping
 * daemon removed between our open() and flock() would give us a lock nobody else
 * sees; after locking we check that the path still names the file we locked, and try
 * again if not. */
#include "hp_dblock.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hp_error.h"

/* Each retry means a daemon stopped during our attempt; a handful is plenty. */
#define HP_DBLOCK_ATTEMPTS 8

struct hp_dblock {
  int fd;
  char path[]; /* "<db>.lock" */
};

static long read_pid(int fd)
{
  char buf[32];
  ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  if (n <= 0)
    return 0;
  buf[n] = '\0';
  char *end;
  long pid = strtol(buf, &end, 10);
  return (end != buf && pid > 0) ? pid : 0;
}

static int write_pid(int fd)
{
  char buf[32];
  int n = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, buf, (size_t)n, 0) != n)
    return -errno;
  return 0;
}

int hp_dblock_acquire(const char *db_path, hp_dblock **out, long *holder_pid)
{
  size_t len = strlen(db_path);
  int rc;

  *out = NULL;
  *holder_pid = 0;
  hp_dblock *l = malloc(sizeof *l + len + sizeof ".lock");
  if (l == NULL)
    return -HP_ENOMEM;
  memcpy(l->path, db_path, len);
  memcpy(l->path + len, ".lock", sizeof ".lock");
  for (int attempt = 0; attempt < HP_DBLOCK_ATTEMPTS; attempt++) {
    struct stat fst, pst;
    l->fd = open(l->path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (l->fd < 0) {
      rc = -errno;
      goto out_free;
    }
    if (flock(l->fd, LOCK_EX | LOCK_NB) != 0) {
      rc = -errno;
      if (rc == -EWOULDBLOCK)
        *holder_pid = read_pid(l->fd);
      goto out_close;
    }
    if (fstat(l->fd, &fst) != 0) {
      rc = -errno;
      goto out_close;
    }
    /* Another user's lock file (planted in a shared directory) would let its owner
     * keep us off the database, or make us write our pid where they want it. */
    if (fst.st_uid != geteuid()) {
      rc = -EPERM;
      goto out_close;
    }
    if (stat(l->path, &pst) == 0 && fst.st_dev == pst.st_dev && fst.st_ino == pst.st_ino) {
      rc = write_pid(l->fd);
      if (rc < 0)
        goto out_close;
      *out = l;
      return 0;
    }
    close(l->fd); /* the file we locked was removed meanwhile: lock the new one */
  }
  rc = -EAGAIN;
  goto out_free;

out_close:
  close(l->fd);
out_free:
  free(l);
  return rc;
}

void hp_dblock_release(hp_dblock *l)
{
  if (l == NULL)
    return;
  unlink(l->path);
  close(l->fd);
  free(l);
}
