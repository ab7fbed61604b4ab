/* check_db_util.h — fixture helpers for the Check tests that run against a real SQLite
 * file (check_schema, check_store, check_store_adapt): a private temporary directory per
 * test and one-value queries. Test code only; failures fail the running test through
 * ck_assert, so the helpers must be called from a test or a checked fixture.
 *
 * Header-only (static inline) so that a test executable needs no extra source file and
 * one that includes it without using every helper compiles warning-free. */
#ifndef HP_CHECK_DB_UTIL_H
#define HP_CHECK_DB_UTIL_H

#include <check.h>
#include <ftw.h>
#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* Creates a fresh directory "<base>/<prefix>-XXXXXX" and writes its path into dir (size
 * bytes). Each test gets its own, so tests never see each other's databases. */
static inline void hp_test_tmpdir_setup(char *dir, size_t size, const char *base,
                                        const char *prefix) {
  snprintf(dir, size, "%s/%s-XXXXXX", base, prefix);
  ck_assert_ptr_nonnull(mkdtemp(dir));
}

static inline int hp_test_tmpdir_remove_entry(const char *path, const struct stat *st, int flag,
                                              struct FTW *ftw) {
  (void)st; (void)flag; (void)ftw;
  return remove(path);
}

/* Removes dir and everything in it (the database and its -wal/-shm files). Children
 * before their directory; symbolic links are removed, never followed. */
static inline void hp_test_tmpdir_teardown(const char *dir) {
  nftw(dir, hp_test_tmpdir_remove_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* A plain connection to path, for reading back what the code under test wrote; the
 * caller closes it with sqlite3_close(). */
static inline sqlite3 *hp_test_db_open(const char *path) {
  sqlite3 *db;
  ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
  return db;
}

/* The first column of the first row of sql as an integer. A query that does not prepare
 * fails the test with the query and SQLite's message; one that returns no row fails it. */
static inline int64_t hp_test_db_int(sqlite3 *db, const char *sql) {
  sqlite3_stmt *st = NULL;
  ck_assert_msg(sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK, "%s: %s", sql,
                sqlite3_errmsg(db));
  ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
  int64_t v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

#endif /* HP_CHECK_DB_UTIL_H */
