/* hp_schema.c — open a heapprof database for recording: create it, or verify it is ours.
 *
 * Sits between the daemon's store thread and the file on disk. The order of operations is
 * the contract: every check runs on a read-only connection first, and only a file that is
 * missing, empty, or a heapprof database of our version or one we migrate is ever opened
 * read-write. So a foreign file (not SQLite, another application's database, a newer
 * heapprof's database) is refused without a single byte written: no WAL switch, no
 * schema, no header pragma. An older heapprof database (version 1) is migrated in the
 * same transaction that applies the schema, so it is either migrated whole or left as it
 * was. schema/README.md documents what the schema means; schema.sql is the schema. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hp_error.h"
#include "hp_schema.h"

/* Generated from schema.sql and indexes.sql by embed_sql.py. */
extern const char hp_schema_sql_text[];
extern const char hp_schema_index_sql_text[];

/* Page size of databases heapprofd creates: larger than SQLite's default 4 KiB, so that
 * each row costs fewer b-tree page splits and WAL page writes, and the daemon less CPU
 * per stored event (bench/README.md, "Ingestion"). */
#define HP_SCHEMA_PAGE_SIZE 16384
#define HP_SCHEMA_STR_(x) #x
#define HP_SCHEMA_STR(x) HP_SCHEMA_STR_(x)

/* How long a statement waits for another connection's lock (a reader checkpointing, a
 * second daemon starting) before giving up with SQLITE_BUSY. */
#define HP_SCHEMA_BUSY_TIMEOUT_MS 5000

/* The first 16 bytes of every SQLite 3 database file (the SQLite file format, section 1.3). */
static const char sqlite_magic[16] = "SQLite format 3";

/* What a read-only look at the file found. */
typedef enum {
  DB_MISSING,   /* no file: create it */
  DB_EMPTY,     /* a 0-byte file or an SQLite database with nothing in it: apply the schema */
  DB_OURS,      /* a heapprof database of our version: append to it */
  DB_OLD,       /* a heapprof database of HP_SCHEMA_OLDEST_VERSION: migrate, then append */
} db_state;

/* One line for users into errbuf; returns rc so callers can `return fail(...)`. */
static int fail(char *errbuf, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(char *errbuf, size_t errlen, int rc, const char *fmt, ...) {
  if (errbuf != NULL && errlen > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf, errlen, fmt, ap);
    va_end(ap);
  }
  return rc;
}

static int refuse_foreign(const char *path, unsigned app_id, char *errbuf, size_t errlen) {
  return fail(errbuf, errlen, -HP_ESCHEMA,
              "%s: not a heapprof database (application_id 0x%08x, expected 0x%08x); "
              "refusing to touch it", path, app_id, (unsigned)HP_SCHEMA_APPLICATION_ID);
}

/* Runs a statement that yields one integer. SQLITE_NOTADB and SQLITE_CORRUPT come back
 * as they are so that the caller can tell "not a database" from other failures. */
static int query_int(sqlite3 *db, const char *sql, long long *out) {
  sqlite3_stmt *stmt = NULL;
  int rc = sqlite3_prepare_v2(db, sql, -1, &stmt, NULL);
  if (rc != SQLITE_OK)
    return rc;
  rc = sqlite3_step(stmt);
  if (rc == SQLITE_ROW) {
    *out = sqlite3_column_int64(stmt, 0);
    rc = SQLITE_OK;
  } else if (rc == SQLITE_DONE) {
    rc = SQLITE_ERROR;   /* every statement used here returns a row */
  }
  sqlite3_finalize(stmt);
  return rc;
}

/* The directory of path, malloc'd ("." for a bare name); NULL on OOM. */
static char *parent_dir(const char *path) {
  char *dir = strdup(path);
  if (dir == NULL)
    return NULL;
  char *slash = strrchr(dir, '/');
  if (slash == NULL) {
    strcpy(dir, ".");
  } else if (slash == dir) {
    slash[1] = '\0';     /* "/x.sqlite": the parent is the root */
  } else {
    *slash = '\0';
  }
  return dir;
}

/* stat() said ENOENT: tell a missing file (fine, we create it) from a missing directory. */
static int check_parent_dir(const char *path, char *errbuf, size_t errlen) {
  char *dir = parent_dir(path);
  struct stat st;
  int rc = 0;

  if (dir == NULL)
    return fail(errbuf, errlen, -HP_ENOMEM, "%s: out of memory", path);
  if (stat(dir, &st) != 0) {
    int err = errno;
    if (err == ENOENT)
      rc = fail(errbuf, errlen, -ENOENT,
                "%s: cannot create the database: directory %s does not exist", path, dir);
    else
      rc = fail(errbuf, errlen, -err, "%s: cannot create the database: %s: %s",
                path, dir, strerror(err));
  } else if (!S_ISDIR(st.st_mode)) {
    rc = fail(errbuf, errlen, -ENOTDIR,
              "%s: cannot create the database: %s is not a directory", path, dir);
  }
  free(dir);
  return rc;
}

static int refuse_newer(const char *path, long long version, char *errbuf, size_t errlen) {
  return fail(errbuf, errlen, -HP_ENEWER,
              "%s: written by a newer heapprof (schema version %lld, this heapprof knows "
              "up to %d); refusing to touch it", path, version, HP_SCHEMA_VERSION);
}

static uint32_t be32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* A cheap first look at the raw header, so that a text file or an executable gets a
 * precise message; SQLite itself would only say "file is not a database" later. Another
 * application's database, and a newer heapprof's, are refused from the header alone
 * (user_version at offset 60, application_id at 68: the SQLite file format, 1.3), so that
 * no SQLite connection ever opens them: even a read-only one would create -wal and -shm
 * files beside a database in WAL mode, or write to the ones in use. */
static int check_header(const char *path, off_t size, char *errbuf, size_t errlen) {
  unsigned char head[100];
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    return fail(errbuf, errlen, -err, "%s: cannot read: %s", path, strerror(err));
  }
  ssize_t n = read(fd, head, sizeof head);
  int err = errno;
  close(fd);
  if (n < 0)
    return fail(errbuf, errlen, -err, "%s: cannot read: %s", path, strerror(err));
  /* 100 bytes is the size of the SQLite database header; anything shorter is not one. */
  if (size < 100 || (size_t)n != sizeof head ||
      memcmp(head, sqlite_magic, sizeof sqlite_magic) != 0)
    return fail(errbuf, errlen, -HP_ESCHEMA,
                "%s: not a heapprof database (not an SQLite file); refusing to touch it", path);
  uint32_t version = be32(head + 60), app_id = be32(head + 68);
  if (app_id != 0 && app_id != HP_SCHEMA_APPLICATION_ID)
    return refuse_foreign(path, app_id, errbuf, errlen);
  if (app_id == HP_SCHEMA_APPLICATION_ID && version > HP_SCHEMA_VERSION)
    return refuse_newer(path, version, errbuf, errlen);
  return 0;
}

/* A table added to schema.sql within version 1 carries this marker in its CREATE
 * statement: a version 1 database written before it lacks it, and is not damaged for
 * that (applying schema.sql creates it). schema/README.md, "Versions". */
#define HP_SCHEMA_ADDED_MARK "-- heapprof: added within version 1"
/* Tables added in version 2 carry this one: a version 1 database lacks them until it is
 * migrated. */
#define HP_SCHEMA_ADDED_V2_MARK "-- heapprof: added in version 2"
/* Tables added within version 2 (the aggregates) carry this one: a database of any
 * version may lack them until heapprofd opens it again. */
#define HP_SCHEMA_ADDED_WITHIN_V2_MARK "-- heapprof: added within version 2"

/* Every table that schema.sql creates must exist in a database that claims to be ours:
 * without them it is damaged, and appending to it would fail later and obscurely. (In a
 * version 1 database, tables marked HP_SCHEMA_ADDED_MARK or HP_SCHEMA_ADDED_V2_MARK are
 * the exception; in any version, those marked HP_SCHEMA_ADDED_WITHIN_V2_MARK. Views and indexes are not checked: opening re-applies schema.sql, which
 * creates missing tables and indexes and drops and recreates every view, and so restores
 * them.) The names come from applying the embedded schema to an in-memory database, so
 * they are spelled only in schema.sql. */
static int check_objects(sqlite3 *db, long long version, const char *path, char *errbuf,
                         size_t errlen) {
  sqlite3 *ref = NULL;
  sqlite3_stmt *list = NULL, *probe = NULL;
  int rc;

  if (sqlite3_open_v2(":memory:", &ref, SQLITE_OPEN_READWRITE | SQLITE_OPEN_MEMORY, NULL)
          != SQLITE_OK ||
      sqlite3_exec(ref, hp_schema_sql_text, NULL, NULL, NULL) != SQLITE_OK) {
    rc = fail(errbuf, errlen, -HP_ESQLITE, "%s: cannot load the built-in schema: %s", path,
              ref != NULL ? sqlite3_errmsg(ref) : "out of memory");
    goto out_close_ref;
  }
  if (sqlite3_prepare_v2(ref,
                         "SELECT type, name FROM sqlite_schema "
                         "WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' "
                         "ESCAPE '\\' AND instr(sql, '" HP_SCHEMA_ADDED_WITHIN_V2_MARK "') = 0 "
                         "AND (?1 >= 2 OR (instr(sql, '" HP_SCHEMA_ADDED_MARK
                         "') = 0 AND instr(sql, '" HP_SCHEMA_ADDED_V2_MARK "') = 0)) "
                         "ORDER BY type, name",
                         -1, &list, NULL) != SQLITE_OK ||
      sqlite3_bind_int64(list, 1, version) != SQLITE_OK) {
    rc = fail(errbuf, errlen, -HP_ESQLITE, "%s: %s", path, sqlite3_errmsg(ref));
    goto out_close_ref;
  }
  if (sqlite3_prepare_v2(db, "SELECT count(*) FROM sqlite_schema WHERE type = ?1 AND name = ?2",
                         -1, &probe, NULL) != SQLITE_OK) {
    rc = fail(errbuf, errlen, -HP_ESQLITE, "%s: %s", path, sqlite3_errmsg(db));
    goto out_finalize;
  }
  while ((rc = sqlite3_step(list)) == SQLITE_ROW) {
    const char *type = (const char *)sqlite3_column_text(list, 0);
    const char *name = (const char *)sqlite3_column_text(list, 1);
    sqlite3_reset(probe);
    if (sqlite3_bind_text(probe, 1, type, -1, SQLITE_TRANSIENT) != SQLITE_OK ||
        sqlite3_bind_text(probe, 2, name, -1, SQLITE_TRANSIENT) != SQLITE_OK ||
        sqlite3_step(probe) != SQLITE_ROW) {
      rc = fail(errbuf, errlen, -HP_ESQLITE, "%s: %s", path, sqlite3_errmsg(db));
      goto out_finalize;
    }
    if (sqlite3_column_int(probe, 0) != 1) {
      rc = fail(errbuf, errlen, -HP_ESCHEMA,
                "%s: damaged heapprof database (%s %s is missing); refusing to touch it",
                path, type, name);
      goto out_finalize;
    }
  }
  if (rc != SQLITE_DONE) {
    rc = fail(errbuf, errlen, -HP_ESQLITE, "%s: %s", path, sqlite3_errmsg(ref));
    goto out_finalize;
  }
  rc = 0;
out_finalize:
  sqlite3_finalize(probe);
  sqlite3_finalize(list);
out_close_ref:
  sqlite3_close(ref);
  return rc;
}

static int side_exists(const char *path, const char *suffix) {
  char side[PATH_MAX + 16];
  struct stat st;
  snprintf(side, sizeof side, "%s%s", path, suffix);
  return lstat(side, &st) == 0;
}

/* "file:" URI of path with immutable=1: SQLite then opens it without locks, -wal or -shm
 * (it takes the file for read-only media). Only for a file with no -wal and no
 * -journal, whose content is then all in the main file. NULL on OOM. */
static char *immutable_uri(const char *path) {
  size_t len = strlen(path);
  char *uri = malloc(len * 3 + 32);
  if (uri == NULL)
    return NULL;
  char *o = uri + sprintf(uri, "file:");
  for (const char *p = path; *p; p++)
    o += (*p == '%' || *p == '?' || *p == '#') ? sprintf(o, "%%%02X", (unsigned char)*p)
                                               : sprintf(o, "%c", *p);
  strcpy(o, "?mode=ro&immutable=1");
  return uri;
}

/* Reads application_id, user_version and the object count of an existing file through a
 * read-only connection, and decides. Nothing here can write to the file; and unless
 * the database has a -wal or -journal (content outside the main file, which only a
 * normal connection reads), not even a side file is created. */
static int inspect_sqlite(const char *path, db_state *state, char *errbuf, size_t errlen) {
  sqlite3 *ro = NULL;
  long long app_id = 0, version = 0, objects = 0;
  int rc;
  if (!side_exists(path, "-wal") && !side_exists(path, "-journal")) {
    char *uri = immutable_uri(path);
    if (uri == NULL)
      return fail(errbuf, errlen, -HP_ENOMEM, "%s: out of memory", path);
    rc = sqlite3_open_v2(uri, &ro, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL);
    free(uri);
  } else {
    rc = sqlite3_open_v2(path, &ro, SQLITE_OPEN_READONLY, NULL);
  }
  if (rc != SQLITE_OK) {
    rc = fail(errbuf, errlen, -HP_ESQLITE, "%s: cannot open: %s", path,
              ro != NULL ? sqlite3_errmsg(ro) : "out of memory");
    goto out_close;
  }
  sqlite3_busy_timeout(ro, HP_SCHEMA_BUSY_TIMEOUT_MS);
  if ((rc = query_int(ro, "PRAGMA application_id", &app_id)) != SQLITE_OK ||
      (rc = query_int(ro, "PRAGMA user_version", &version)) != SQLITE_OK ||
      (rc = query_int(ro, "SELECT count(*) FROM sqlite_schema", &objects)) != SQLITE_OK) {
    if (rc == SQLITE_NOTADB || rc == SQLITE_CORRUPT)
      rc = fail(errbuf, errlen, -HP_ESCHEMA,
                "%s: not a heapprof database (not a valid SQLite file: %s); "
                "refusing to touch it", path, sqlite3_errstr(rc));
    else
      rc = fail(errbuf, errlen, -HP_ESQLITE, "%s: cannot read: %s", path, sqlite3_errmsg(ro));
    goto out_close;
  }

  if (app_id == HP_SCHEMA_APPLICATION_ID) {
    if (version > HP_SCHEMA_VERSION) {
      rc = refuse_newer(path, version, errbuf, errlen);
    } else if (version < HP_SCHEMA_OLDEST_VERSION) {
      rc = fail(errbuf, errlen, -HP_ESCHEMA,
                "%s: heapprof database of unsupported schema version %lld (expected %d "
                "to %d); refusing to touch it", path, version, HP_SCHEMA_OLDEST_VERSION,
                HP_SCHEMA_VERSION);
    } else {
      rc = check_objects(ro, version, path, errbuf, errlen);
      *state = version == HP_SCHEMA_VERSION ? DB_OURS : DB_OLD;
    }
  } else if (app_id == 0 && version == 0 && objects == 0) {
    /* An SQLite database nobody has put anything in: claim it. */
    *state = DB_EMPTY;
    rc = 0;
  } else {
    rc = refuse_foreign(path, (unsigned)app_id, errbuf, errlen);
  }
out_close:
  sqlite3_close(ro);
  return rc;
}

/* file (path or one of its side files), where it exists: not a symbolic link, which
 * could send our writes anywhere (as root too), and not another user's file, which its
 * owner could rewrite under us. As the socket's path (daemon/server.c). */
static int check_owner(const char *path, const char *suffix, char *errbuf, size_t errlen) {
  char file[PATH_MAX + 16];
  struct stat st;
  snprintf(file, sizeof file, "%s%s", path, suffix);
  if (lstat(file, &st) != 0) {
    int err = errno;
    if (err == ENOENT)
      return 0;
    return fail(errbuf, errlen, -err, "%s: cannot check %s: %s", path, file, strerror(err));
  }
  const char *what = suffix[0] ? file : "the database";
  if (S_ISLNK(st.st_mode))
    return fail(errbuf, errlen, -HP_EINVAL, "%s: %s is a symbolic link; refusing to follow "
                "it (give heapprofd the real path)", path, what);
  if (st.st_uid != geteuid())
    return fail(errbuf, errlen, -EPERM, "%s: %s belongs to uid %u, not to us (uid %u); "
                "refusing to touch it", path, what, (unsigned)st.st_uid, (unsigned)geteuid());
  return 0;
}

/* Side files SQLite keeps beside a database. */
static const char *const side_suffixes[] = {"-wal", "-shm", "-journal"};

static int inspect(const char *path, db_state *state, char *errbuf, size_t errlen) {
  struct stat st;
  int rc = check_owner(path, "", errbuf, errlen);
  for (size_t i = 0; rc == 0 && i < sizeof side_suffixes / sizeof side_suffixes[0]; i++)
    rc = check_owner(path, side_suffixes[i], errbuf, errlen);
  if (rc != 0)
    return rc;
  if (stat(path, &st) != 0) {
    int err = errno;
    if (err != ENOENT)
      return fail(errbuf, errlen, -err, "%s: cannot open: %s", path, strerror(err));
    rc = check_parent_dir(path, errbuf, errlen);
    if (rc == 0)
      *state = DB_MISSING;
    return rc;
  }
  if (S_ISDIR(st.st_mode))
    return fail(errbuf, errlen, -EISDIR, "%s: is a directory, not a database file", path);
  if (!S_ISREG(st.st_mode))
    return fail(errbuf, errlen, -HP_ESCHEMA,
                "%s: not a heapprof database (not a regular file); refusing to touch it", path);
  if (st.st_size > 0) {
    rc = check_header(path, st.st_size, errbuf, errlen);
    if (rc != 0)
      return rc;
  }
  /* Even a 0-byte file goes through SQLite: a database whose content still sits in its
   * -wal file has an empty or stale main file, and only SQLite reads both. */
  return inspect_sqlite(path, state, errbuf, errlen);
}

/* Version 1 -> 2, first half, before schema.sql runs: moves the session table aside,
 * because SQLite cannot change a CHECK constraint (status gained 'hooks_replaced') or add
 * a column with one in place. schema.sql then creates the version 2 table, and
 * migrate_v1_finish copies the rows over with their ids. legacy_alter_table keeps SQLite
 * from rewriting views that name `session` to the new name: schema.sql redefines
 * heapprof's own views anyway, and a user's view keeps naming the migrated table. */
static int migrate_v1_begin(sqlite3 *db) {
  if (sqlite3_exec(db, "PRAGMA legacy_alter_table = ON", NULL, NULL, NULL) != SQLITE_OK)
    return -1;
  int rc = sqlite3_exec(db, "ALTER TABLE session RENAME TO session_v1", NULL, NULL, NULL);
  if (sqlite3_exec(db, "PRAGMA legacy_alter_table = OFF", NULL, NULL, NULL) != SQLITE_OK ||
      rc != SQLITE_OK)
    return -1;
  return 0;
}

/* Second half: the version 1 columns into the version 2 table (argv_omitted takes its
 * default: a version 1 heapprofd stored argv whole). */
static int migrate_v1_finish(sqlite3 *db) {
  static const char sql[] =
      "INSERT INTO session (id, pid, ppid, argv, executable, python_version, started_ns,"
      " ended_ns, sample_interval_bytes, sample_buckets, max_stack_depth, status, error,"
      " events_received, events_dropped)"
      " SELECT id, pid, ppid, argv, executable, python_version, started_ns, ended_ns,"
      " sample_interval_bytes, sample_buckets, max_stack_depth, status, error,"
      " events_received, events_dropped FROM session_v1;"
      "DROP TABLE session_v1;";
  return sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

/* Applies schema.sql inside one write transaction. To an empty database it adds
 * everything; to one of ours it adds the tables and indexes a database of this version
 * lacks (those statements are IF NOT EXISTS) and redefines every view, so that views
 * written by an earlier build of this version are brought up to date; a version 1
 * database is migrated in the same transaction, so a failure at any point (a full disk,
 * a kill) leaves it a version 1 database. The transaction first re-checks what
 * inspect() saw: another process may have created or replaced the file since. */
static int apply_schema(sqlite3 *db, const char *path, char *errbuf, size_t errlen) {
  long long app_id = 0, version = 0, objects = 0;
  int rc, migrate;

  if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
    return fail(errbuf, errlen, -HP_ESQLITE, "%s: cannot start the schema transaction: %s",
                path, sqlite3_errmsg(db));
  if (query_int(db, "PRAGMA application_id", &app_id) != SQLITE_OK ||
      query_int(db, "PRAGMA user_version", &version) != SQLITE_OK ||
      query_int(db, "SELECT count(*) FROM sqlite_schema", &objects) != SQLITE_OK) {
    rc = fail(errbuf, errlen, -HP_ESQLITE, "%s: %s", path, sqlite3_errmsg(db));
    goto out_rollback;
  }
  if (objects != 0 && app_id != HP_SCHEMA_APPLICATION_ID) {
    rc = refuse_foreign(path, (unsigned)app_id, errbuf, errlen);
    goto out_rollback;
  }
  if (objects != 0 && version != HP_SCHEMA_VERSION && version != HP_SCHEMA_OLDEST_VERSION) {
    rc = fail(errbuf, errlen, version > HP_SCHEMA_VERSION ? -HP_ENEWER : -HP_ESCHEMA,
              "%s: schema version changed to %lld while opening (expected %d); "
              "refusing to touch it", path, version, HP_SCHEMA_VERSION);
    goto out_rollback;
  }
  migrate = objects != 0 && version == HP_SCHEMA_OLDEST_VERSION;
  if (migrate && migrate_v1_begin(db) < 0) {
    rc = fail(errbuf, errlen, -HP_ESQLITE, "%s: cannot migrate from schema version %lld: %s",
              path, version, sqlite3_errmsg(db));
    goto out_rollback;
  }
  if (sqlite3_exec(db, hp_schema_sql_text, NULL, NULL, NULL) != SQLITE_OK) {
    rc = fail(errbuf, errlen, -HP_ESQLITE, "%s: cannot create the schema: %s", path,
              sqlite3_errmsg(db));
    goto out_rollback;
  }
  if (migrate && migrate_v1_finish(db) < 0) {
    rc = fail(errbuf, errlen, -HP_ESQLITE, "%s: cannot migrate from schema version %lld: %s",
              path, version, sqlite3_errmsg(db));
    goto out_rollback;
  }
  if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
    rc = fail(errbuf, errlen, -HP_ESQLITE, "%s: cannot commit the schema: %s", path,
              sqlite3_errmsg(db));
    goto out_rollback;
  }
  return 0;
out_rollback:
  sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
  return rc;
}

/* Switches to WAL; PRAGMA journal_mode answers with the mode in force afterwards, which
 * stays the old one where WAL is impossible (some network file systems). */
static int set_wal(sqlite3 *db, const char *path, char *errbuf, size_t errlen) {
  sqlite3_stmt *stmt = NULL;
  int rc = 0;

  if (sqlite3_prepare_v2(db, "PRAGMA journal_mode=WAL", -1, &stmt, NULL) != SQLITE_OK ||
      sqlite3_step(stmt) != SQLITE_ROW) {
    rc = fail(errbuf, errlen, -HP_ESQLITE, "%s: cannot switch to WAL mode: %s", path,
              sqlite3_errmsg(db));
    goto out_finalize;
  }
  const char *mode = (const char *)sqlite3_column_text(stmt, 0);
  if (mode == NULL || strcmp(mode, "wal") != 0)
    rc = fail(errbuf, errlen, -HP_ESQLITE,
              "%s: cannot switch to WAL mode (journal mode stays %s)", path,
              mode != NULL ? mode : "unknown");
out_finalize:
  sqlite3_finalize(stmt);
  return rc;
}

/* A new database is created by us, 0600 whatever the umask, and exclusively: a link or
 * file planted since inspect() makes this fail rather than be followed or adopted.
 * SQLite then opens an empty file, and creates -wal and -shm with its mode. */
static int create_private(const char *path, char *errbuf, size_t errlen) {
  int fd = open(path, O_CREAT | O_EXCL | O_NOFOLLOW | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) {
    int err = errno;
    return fail(errbuf, errlen, -err, "%s: cannot create the database: %s", path,
                strerror(err));
  }
  int rc = fchmod(fd, 0600) == 0 ? 0 : -errno;   /* the umask may have taken bits away */
  close(fd);
  return rc == 0 ? 0 : fail(errbuf, errlen, rc, "%s: chmod: %s", path, strerror(-rc));
}

/* Files heapprofd records into: nobody else may write them. An empty file it adopts as
 * a new database becomes 0600, as one it creates; an existing database and its side
 * files lose group and other write permission (SQLite gives new side files the
 * database's mode). Through descriptors opened without following links. */
static int secure_files(const char *path, int as_new, char *errbuf, size_t errlen) {
  for (size_t i = 0; i <= sizeof side_suffixes / sizeof side_suffixes[0]; i++) {
    const char *suffix = i == 0 ? "" : side_suffixes[i - 1];
    char file[PATH_MAX + 16];
    struct stat st;
    snprintf(file, sizeof file, "%s%s", path, suffix);
    int fd = open(file, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      if (err == ENOENT && i > 0)
        continue;
      return fail(errbuf, errlen, -err, "%s: cannot open %s: %s", path, file, strerror(err));
    }
    int rc = 0;
    if (fstat(fd, &st) != 0) {
      rc = -errno;
    } else {
      mode_t want = (as_new && i == 0) ? 0600 : (st.st_mode & 07777 & ~(mode_t)022);
      if ((st.st_mode & 07777) != want && fchmod(fd, want) != 0)
        rc = -errno;
    }
    close(fd);
    if (rc != 0)
      return fail(errbuf, errlen, rc, "%s: cannot make %s private: %s", path, file,
                  strerror(-rc));
  }
  return 0;
}

int hp_schema_path_warning(const char *path, char *buf, size_t len) {
  char *dir = parent_dir(path);
  struct stat st;
  int warn = 0;
  if (dir != NULL && stat(dir, &st) == 0 && (st.st_mode & (S_IWGRP | S_IWOTH))) {
    snprintf(buf, len, "%s: the database directory %s is writable by other users (mode %04o):"
             " they can replace the database or plant files beside it; use a directory only "
             "you can write", path, dir, (unsigned)(st.st_mode & 07777));
    warn = 1;
  }
  free(dir);
  return warn;
}

int hp_schema_open(const char *path, sqlite3 **db_out, char *errbuf, size_t errlen) {
  sqlite3 *db = NULL;
  db_state state = DB_MISSING;
  long long version = 0;
  int rc;

  if (errbuf != NULL && errlen > 0)
    errbuf[0] = '\0';
  if (db_out == NULL)
    return fail(errbuf, errlen, -HP_EINVAL, "hp_schema_open: db_out is NULL");
  *db_out = NULL;
  if (path == NULL || path[0] == '\0')
    return fail(errbuf, errlen, -HP_EINVAL, "database path is empty");

  rc = inspect(path, &state, errbuf, errlen);
  if (rc != 0)
    return rc;

  /* Decided. Only now may the file be created or written. */
  rc = state == DB_MISSING ? create_private(path, errbuf, errlen)
                           : secure_files(path, state == DB_EMPTY, errbuf, errlen);
  if (rc != 0)
    return rc;
  int flags = SQLITE_OPEN_READWRITE;
#ifdef SQLITE_OPEN_NOFOLLOW
  flags |= SQLITE_OPEN_NOFOLLOW;   /* a link planted since the checks is refused too */
#endif
  if (sqlite3_open_v2(path, &db, flags, NULL) != SQLITE_OK) {
    rc = fail(errbuf, errlen, -HP_ESQLITE, "%s: cannot open for writing: %s", path,
              db != NULL ? sqlite3_errmsg(db) : "out of memory");
    goto out_close;
  }
  /* SQLite silently falls back to read-only for a write-protected file; a recorder that
   * cannot write must say so now, not at its first batch. */
  if (sqlite3_db_readonly(db, "main") != 0) {
    rc = fail(errbuf, errlen, -EACCES, "%s: cannot open for writing: permission denied", path);
    goto out_close;
  }
  sqlite3_busy_timeout(db, HP_SCHEMA_BUSY_TIMEOUT_MS);

  /* The page size of a database is fixed once its header is written and cannot change
   * in WAL mode, so it is set before anything else, and only for a file with no header
   * yet (missing or 0 bytes); an existing database keeps its own. */
  if (state != DB_OURS && state != DB_OLD &&
      sqlite3_exec(db, "PRAGMA page_size=" HP_SCHEMA_STR(HP_SCHEMA_PAGE_SIZE), NULL, NULL,
                   NULL) != SQLITE_OK) {
    rc = fail(errbuf, errlen, -HP_ESQLITE, "%s: %s", path, sqlite3_errmsg(db));
    goto out_close;
  }

  /* WAL lets readers (the CLI, a notebook) query while the daemon records, without
   * blocking it. It cannot be switched inside a transaction, so it comes first. */
  rc = set_wal(db, path, errbuf, errlen);
  if (rc != 0)
    goto out_close;
  /* With WAL, NORMAL loses at most the last commits on power loss, never consistency. */
  if (sqlite3_exec(db, "PRAGMA synchronous=NORMAL", NULL, NULL, NULL) != SQLITE_OK) {
    rc = fail(errbuf, errlen, -HP_ESQLITE, "%s: %s", path, sqlite3_errmsg(db));
    goto out_close;
  }

  rc = apply_schema(db, path, errbuf, errlen);
  if (rc != 0)
    goto out_close;
  /* Whoever created it, the file must now be ours at our version. */
  if (query_int(db, "PRAGMA user_version", &version) != SQLITE_OK) {
    rc = fail(errbuf, errlen, -HP_ESQLITE, "%s: cannot read the schema version: %s", path,
              sqlite3_errmsg(db));
    goto out_close;
  }
  if (version != HP_SCHEMA_VERSION) {
    rc = fail(errbuf, errlen, -HP_ESCHEMA,
              "%s: schema version is %lld after opening, expected %d", path, version,
              HP_SCHEMA_VERSION);
    goto out_close;
  }
  *db_out = db;
  return 0;
out_close:
  sqlite3_close(db);
  return rc;
}

const char *hp_schema_index_sql(void) {
  return hp_schema_index_sql_text;
}

/* The index names come from applying indexes.sql to an in-memory copy of the schema,
 * so that they are spelled only in indexes.sql. */
int hp_schema_index_count(sqlite3 *db, int *present, int *total) {
  sqlite3 *ref = NULL;
  sqlite3_stmt *list = NULL, *probe = NULL;
  int rc = -HP_ESQLITE, src;

  *present = *total = 0;
  src = sqlite3_open_v2(":memory:", &ref, SQLITE_OPEN_READWRITE | SQLITE_OPEN_MEMORY, NULL);
  if (src != SQLITE_OK) {
    rc = src == SQLITE_NOMEM ? -HP_ENOMEM : -HP_ESQLITE;
    goto out_close_ref;
  }
  if (sqlite3_exec(ref, hp_schema_sql_text, NULL, NULL, NULL) != SQLITE_OK ||
      sqlite3_exec(ref, "CREATE TEMP TABLE schema_index AS "
                        "SELECT name FROM main.sqlite_schema WHERE type = 'index'",
                   NULL, NULL, NULL) != SQLITE_OK ||
      sqlite3_exec(ref, hp_schema_index_sql_text, NULL, NULL, NULL) != SQLITE_OK ||
      sqlite3_prepare_v2(ref, "SELECT name FROM main.sqlite_schema WHERE type = 'index' "
                              "AND name NOT IN (SELECT name FROM temp.schema_index)",
                         -1, &list, NULL) != SQLITE_OK ||
      sqlite3_prepare_v2(db, "SELECT count(*) FROM main.sqlite_schema "
                             "WHERE type = 'index' AND name = ?1",
                         -1, &probe, NULL) != SQLITE_OK)
    goto out_finalize;
  while ((src = sqlite3_step(list)) == SQLITE_ROW) {
    sqlite3_reset(probe);
    if (sqlite3_bind_text(probe, 1, (const char *)sqlite3_column_text(list, 0), -1,
                          SQLITE_TRANSIENT) != SQLITE_OK ||
        sqlite3_step(probe) != SQLITE_ROW)
      goto out_finalize;
    (*total)++;
    *present += sqlite3_column_int(probe, 0) > 0;
  }
  if (src == SQLITE_DONE)
    rc = 0;
out_finalize:
  sqlite3_finalize(probe);
  sqlite3_finalize(list);
out_close_ref:
  sqlite3_close(ref);
  return rc;
}

/* max(ts_ns) is one descent of alloc_by_session_ts; max(freed_ns) reads the session's
 * rows once (or one descent of the freed read index when the database has it). A free
 * is never earlier than its allocation, so the later of the two is the last event. */
int hp_schema_end_stale_sessions(sqlite3 *db, long long *ended) {
  static const char sql[] =
      "UPDATE session SET status = 'disconnected', ended_ns = max(started_ns,"
      " coalesce((SELECT max(ts_ns) FROM alloc WHERE session_id = session.id), 0),"
      " coalesce((SELECT max(freed_ns) FROM alloc WHERE session_id = session.id), 0))"
      " WHERE status = 'running'";
  *ended = 0;
  if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK)
    return -HP_ESQLITE;
  *ended = sqlite3_changes64(db);
  return 0;
}
