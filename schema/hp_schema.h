/* hp_schema.h — opening a heapprof database: create it, verify it, refuse what is not ours.
 *
 * The schema text is schema/schema.sql, embedded at build time; it is the one source
 * of truth for table and view names. A file that is not a heapprof database, or that
 * a newer heapprof wrote, is refused and left byte-for-byte untouched. */
#ifndef HP_SCHEMA_H
#define HP_SCHEMA_H

#include <stddef.h>
#include <sqlite3.h>

#define HP_SCHEMA_VERSION         1          /* PRAGMA user_version */
#define HP_SCHEMA_APPLICATION_ID  0x68707266 /* PRAGMA application_id, 'hprf' */

/* Opens path read-write (creating it when missing), sets WAL mode and a busy timeout,
 * and applies the schema to an empty database. Returns 0 and *db_out, or
 * -HP_ESCHEMA (not a heapprof database, or not SQLite at all), -HP_ENEWER (newer
 * user_version), -HP_ESQLITE; then *db_out is NULL and errbuf holds one line for users
 * that names the file and the reason. */
int hp_schema_open(const char *path, sqlite3 **db_out, char *errbuf, size_t errlen);

/* The embedded schema.sql text (static). */
const char *hp_schema_sql(void);

#endif /* HP_SCHEMA_H */
