/* hp_server.h — heapprofd's libuv side: the Unix socket, agents' connections,
 * backpressure and the SIGINT/SIGTERM shutdown. Loop thread only, except
 * hp_server_wake(), which the store thread calls when it has room again. */
#ifndef HP_SERVER_H
#define HP_SERVER_H

#include <stddef.h>
#include <uv.h>

#include "hp_store.h"

/* File descriptors kept out of the agents' reach: SQLite's database, WAL and shared
 * memory, the lock file, stdio, the listener, libuv's own (epoll, signals, async, its
 * spare for EMFILE). Connections beyond RLIMIT_NOFILE minus these are refused with a
 * log line and counted, instead of libuv closing them silently when accept() hits
 * EMFILE. daemon/README.md, "Limits". */
#define HP_SERVER_RESERVED_FDS 32

typedef struct hp_server hp_server; /* opaque */

/* Checks that path can be served before anything is created: its length fits
 * sun_path, its directory is owned by us and writable by nobody else (creating it
 * 0700 when create_dir is set), and the path is free, or a stale socket of ours
 * (removed). A regular file there, or a live daemon, is refused.
 * 0, or a negative code with one line for users in err. */
int hp_server_check_path(const char *path, int create_dir, char *err, size_t errlen);

hp_server *hp_server_new(uv_loop_t *loop); /* NULL on failure */
/* Binds (mode 0600), listens and installs the signal handlers; the store is borrowed
 * until the loop has returned. 0, or a negative code with a message in err. */
int hp_server_listen(hp_server *srv, const char *path, hp_store *store, char *err,
                     size_t errlen);
/* Store thread: the queue drained; resume reading. ctx is the hp_server. */
void hp_server_wake(void *ctx);
/* After uv_run has returned: removes the socket and frees everything. */
void hp_server_free(hp_server *srv);

#endif /* HP_SERVER_H */
