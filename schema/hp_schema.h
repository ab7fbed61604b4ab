/* hp_schema.h — opening a heapprof database: create it, verify it, refuse what is not ours.
 *
 * The schema text is schema/schema.sql, embedded at build time; it is the one source
 * of truth for table and view names. A file that is not a heapprof database, or that
 * a newer heapprof wrote, is refused and left byte-for-byte untouched. */
#ifndef HP_SCHEMA_H
#define HP_SCHEMA_H

#include <stddef.h>
#include <sqlite3.h>

#define HP_SCHEMA_VERSION         2          /* PRAGMA user_version */
/* The oldest version heapprofd migrates to HP_SCHEMA_VERSION when it opens a database
 * (and heapprof's readers read as it is); older ones are refused. */
#define HP_SCHEMA_OLDEST_VERSION  1
#define HP_SCHEMA_APPLICATION_ID  0x68707266 /* PRAGMA application_id, 'hprf' */

/* Opens path read-write (creating it when missing), sets WAL mode, synchronous=NORMAL
 * and a busy timeout, and applies the schema to an empty (or 0-byte) database; an
 * existing heapprof database of this version is opened for appending, and one of
 * HP_SCHEMA_OLDEST_VERSION is first migrated to this version in one transaction (all or
 * nothing). Everything is verified on a read-only connection first, so a refused file
 * is left byte-for-byte untouched. Returns 0 and *db_out (the caller closes it with sqlite3_close), or
 * -HP_ESCHEMA (not a heapprof database, not SQLite at all, or damaged), -HP_ENEWER
 * (newer user_version), -HP_ESQLITE, -HP_EINVAL (NULL/empty arguments), or -errno
 * (-ENOENT: the directory does not exist, -EISDIR, -EACCES: not writable, ...); then
 * *db_out is NULL and errbuf (may be NULL) holds one line for users that names the file
 * and the reason. */
int hp_schema_open(const char *path, sqlite3 **db_out, char *errbuf, size_t errlen);

/* 1 and one line for users in buf when others can write the directory of path (they
 * could replace the database or plant files beside it between heapprofd's runs);
 * 0 otherwise, or when it cannot be told. */
int hp_schema_path_warning(const char *path, char *buf, size_t len);

/* The embedded indexes.sql text (static): the optional read indexes (alloc by
 * (session_id, freed_ns) and by (session_id, stack_id)) that make queries over long
 * sessions fast but slow ingestion down, so heapprofd builds them at shutdown. Every
 * statement is IF NOT EXISTS; run it with sqlite3_exec. */
const char *hp_schema_index_sql(void);

/* Ends the sessions a killed heapprofd left 'running': status 'disconnected', ended_ns
 * the last time recorded for the session (its latest allocation or free, else its
 * start). Only for a caller that knows no daemon is writing the database (heapprofd
 * holding its lock, daemon/hp_dblock.h). 0 and *ended (how many sessions), or
 * -HP_ESQLITE with the database unchanged. */
int hp_schema_end_stale_sessions(sqlite3 *db, long long *ended);

/* How many of the indexes in indexes.sql db already has (*present) out of how many
 * there are (*total). 0, or -HP_ESQLITE / -HP_ENOMEM. */
int hp_schema_index_count(sqlite3 *db, int *present, int *total);

#endif /* HP_SCHEMA_H */
