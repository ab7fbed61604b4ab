"""heapprof._db: readers open only heapprof databases, read-only, with one-line errors.

Tests the installed module (heapprof/_db.py beside the installed schema.sql) when the
package is importable, else the source file schema/heapprof_db.py (which reads the
schema.sql beside it); it says which on stderr. Either way the module reads its constants
from schema.sql, which this test checks against the C header.
"""
import hashlib
import importlib.util
import os
import re
import select
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import unittest

SOURCE_ROOT = os.environ.get("HEAPPROF_SOURCE_ROOT",
                             os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def load_db_module():
    try:
        from heapprof import _db  # the installed package
        return _db, "installed"
    except ImportError:
        path = os.path.join(SOURCE_ROOT, "schema", "heapprof_db.py")
        spec = importlib.util.spec_from_file_location("heapprof_db_source", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod, "source"


db, WHERE = load_db_module()
sys.stderr.write("test_db_open: testing the %s module %s\n" % (WHERE, db.__file__))


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class DbOpenTest(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="hp-db-open-")
        self.addCleanup(self._tmp.cleanup)
        self.dir = self._tmp.name
        self.path = os.path.join(self.dir, "prof.sqlite")

    def make_foreign(self, sql):
        con = sqlite3.connect(self.path)
        con.executescript(sql)
        con.close()

    def assert_refused(self, path, *fragments, fn=None):
        before = digest(path) if os.path.isfile(path) else None
        with self.assertRaises(db.DatabaseError) as cm:
            (fn or db.open_db)(path)
        msg = str(cm.exception)
        self.assertNotIn("\n", msg)
        self.assertTrue(msg.startswith(path + ": "), msg)
        for fragment in fragments:
            self.assertIn(fragment, msg)
        if before is not None:
            self.assertEqual(digest(path), before, "the refused file was modified")
            for suffix in ("-wal", "-journal"):
                self.assertFalse(os.path.exists(path + suffix), suffix + " appeared")
        return msg

    # ------------------------------------------------------------ constants
    def test_constants_match_schema_sql_and_c_header(self):
        with open(os.path.join(SOURCE_ROOT, "schema", "hp_schema.h")) as f:
            header = f.read()
        app = int(re.search(r"#define HP_SCHEMA_APPLICATION_ID\s+(0x[0-9a-fA-F]+)", header)
                  .group(1), 16)
        version = int(re.search(r"#define HP_SCHEMA_VERSION\s+(\d+)", header).group(1))
        oldest = int(re.search(r"#define HP_SCHEMA_OLDEST_VERSION\s+(\d+)", header).group(1))
        self.assertEqual(db.APPLICATION_ID, app)
        self.assertEqual(db.SCHEMA_VERSION, version)
        self.assertEqual(db.OLDEST_VERSION, oldest)
        self.assertEqual(db.APPLICATION_ID, 0x68707266)
        self.assertIn("CREATE VIEW IF NOT EXISTS allocations", db.schema_sql())

    # ------------------------------------------------------------ create + open
    def test_create_then_open_read_only(self):
        con = db.create_db(self.path)
        self.assertEqual(con.execute("PRAGMA application_id").fetchone()[0], db.APPLICATION_ID)
        self.assertEqual(con.execute("PRAGMA user_version").fetchone()[0], db.SCHEMA_VERSION)
        self.assertEqual(con.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        con.execute("INSERT INTO frame (function, filename, lineno) VALUES ('f', 'a.py', 1)")
        con.close()

        ro = db.open_db(self.path)
        try:
            self.assertEqual(ro.execute("SELECT function, filename, lineno FROM frames")
                             .fetchall(), [("f", "a.py", 1)])
            with self.assertRaises(sqlite3.OperationalError) as cm:
                ro.execute("INSERT INTO frame (function, filename, lineno) "
                           "VALUES ('g', 'b.py', 2)")
            self.assertIn("readonly", str(cm.exception))
        finally:
            ro.close()

    def test_open_read_write(self):
        db.create_db(self.path).close()
        rw = db.open_db(self.path, readonly=False)
        try:
            rw.execute("INSERT INTO frame (function, filename, lineno) VALUES ('g', 'b.py', 2)")
            rw.commit()
        finally:
            rw.close()
        ro = db.open_db(self.path)
        self.assertEqual(ro.execute("SELECT count(*) FROM frames").fetchone()[0], 1)
        ro.close()

    def test_reader_sees_commits_of_a_live_writer(self):
        # WAL: a reader opened while the writer holds the file sees each commit.
        writer = db.create_db(self.path)
        ro = db.open_db(self.path)
        try:
            writer.execute("BEGIN")
            writer.execute("INSERT INTO frame (function, filename, lineno) VALUES ('f', 'a', 1)")
            self.assertEqual(ro.execute("SELECT count(*) FROM frames").fetchone()[0], 0)
            writer.execute("COMMIT")
            self.assertEqual(ro.execute("SELECT count(*) FROM frames").fetchone()[0], 1)
        finally:
            ro.close()
            writer.close()

    def test_path_with_uri_characters(self):
        path = os.path.join(self.dir, "a?b#c%20d.sqlite")
        db.create_db(path).close()
        self.assertTrue(os.path.isfile(path))
        ro = db.open_db(path)
        self.assertEqual(ro.execute("PRAGMA user_version").fetchone()[0], db.SCHEMA_VERSION)
        ro.close()
        # Nothing was created under a mangled name (only the file and its WAL side files).
        for name in os.listdir(self.dir):
            self.assertTrue(name.startswith("a?b#c%20d.sqlite"), name)

    def test_open_accepts_pathlike(self):
        import pathlib
        db.create_db(pathlib.Path(self.path)).close()
        db.open_db(pathlib.Path(self.path)).close()

    def test_create_refuses_existing_database(self):
        db.create_db(self.path).close()
        self.assert_refused(self.path, "already exists", fn=db.create_db)

    def test_create_in_missing_directory(self):
        path = os.path.join(self.dir, "nope", "prof.sqlite")
        self.assert_refused(path, "directory", "does not exist", fn=db.create_db)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "nope")))

    # ------------------------------------------------------------ refusals
    def test_missing_file(self):
        self.assert_refused(self.path, "no such file")
        self.assertFalse(os.path.exists(self.path), "open_db created the file")

    def test_directory(self):
        self.assert_refused(self.dir, "is a directory")

    def test_empty_file(self):
        open(self.path, "wb").close()
        self.assert_refused(self.path, "not a heapprof database", "not an SQLite file")

    def test_text_file(self):
        with open(self.path, "w") as f:
            f.write("time,bytes\n" * 100)
        self.assert_refused(self.path, "not a heapprof database (not an SQLite file)")

    def test_sqlite_header_with_garbage(self):
        with open(self.path, "wb") as f:
            f.write(b"SQLite format 3\x00" + b"\xa5" * 8000)
        self.assert_refused(self.path, "not a heapprof database")

    def test_locked_database_is_a_read_error_not_a_foreign_file(self):
        # A writer holding an exclusive lock on a rollback-journal database: the reader
        # times out with "database is locked", which says nothing about the file's kind.
        con = db.create_db(self.path)
        con.execute("PRAGMA journal_mode = DELETE")
        con.execute("PRAGMA locking_mode = EXCLUSIVE")
        con.execute("BEGIN EXCLUSIVE")
        con.execute("INSERT INTO frame (function, filename, lineno) VALUES ('f', 'a', 1)")
        saved = db._BUSY_TIMEOUT_S
        db._BUSY_TIMEOUT_S = 0.05
        try:
            with self.assertRaises(db.DatabaseError) as cm:
                db.open_db(self.path)
            self.assertEqual(str(cm.exception),
                             self.path + ": cannot read: database is locked")
        finally:
            db._BUSY_TIMEOUT_S = saved
            con.execute("ROLLBACK")
            con.close()

    def test_other_application(self):
        self.make_foreign("PRAGMA application_id = 305419896; CREATE TABLE t (x);")
        msg = self.assert_refused(self.path)
        self.assertEqual(msg, self.path + ": not a heapprof database (application_id "
                         "0x12345678, expected 0x68707266)")

    def test_plain_sqlite_database(self):
        self.make_foreign("CREATE TABLE session (id INTEGER PRIMARY KEY);")
        self.assert_refused(self.path, "application_id 0x00000000, expected 0x68707266")

    def test_newer_schema_version(self):
        con = db.create_db(self.path)
        con.execute("PRAGMA user_version = %d" % (db.SCHEMA_VERSION + 1))
        con.execute("PRAGMA journal_mode = DELETE")
        con.close()
        self.assert_refused(self.path, "written by a newer heapprof",
                            "schema version %d" % (db.SCHEMA_VERSION + 1))

    def test_older_schema_version(self):
        self.make_foreign("PRAGMA application_id = %d; CREATE TABLE t (x);" % db.APPLICATION_ID)
        self.assert_refused(self.path, "unsupported schema version 0 (expected 1 to %d)"
                            % db.SCHEMA_VERSION)

    def test_version_1_database_is_read_as_it_is(self):
        # Readers open a recording of an older heapprofd read-only, without migrating it.
        make_v1_db(self.path, V1_DATA)
        before = digest(self.path)
        ro = db.open_db(self.path)
        try:
            self.assertEqual(ro.execute("PRAGMA user_version").fetchone()[0], 1)
            self.assertEqual(ro.execute("SELECT session_id, status FROM sessions").fetchall(),
                             [(1, "exited")])
            self.assertEqual(ro.execute("SELECT count(*) FROM sqlite_schema WHERE type = 'view'"
                                        " AND name IN ('threads', 'markers')").fetchone()[0], 0)
        finally:
            ro.close()
        self.assertEqual(digest(self.path), before)

    def test_cli_style_error_is_one_line_without_traceback(self):
        # What a tool prints when it catches DatabaseError: one line, no traceback.
        with open(self.path, "w") as f:
            f.write("not a database")
        prog = textwrap.dedent("""
            import importlib.util, sys
            spec = importlib.util.spec_from_file_location("m", sys.argv[1])
            m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
            try:
                m.open_db(sys.argv[2])
            except m.DatabaseError as e:
                print("heapprof: %s" % e, file=sys.stderr)
                sys.exit(2)
            """)
        python = os.environ.get("HEAPPROF_PYTHON", sys.executable)
        r = subprocess.run([python, "-c", prog, db.__file__, self.path], capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertEqual(r.stderr, "heapprof: %s: not a heapprof database (not an SQLite "
                         "file)\n" % self.path)


BUILD_ROOT = os.environ.get("HEAPPROF_BUILD_ROOT", "")
HEAPPROFD = os.environ.get("HEAPPROFD") or os.path.join(BUILD_ROOT, "daemon", "heapprofd")
DAEMON_START_S = 10.0
DAEMON_STOP_S = 30.0

# The sessions and timeline views as an earlier build of schema version 1 defined them,
# with heapprof's extra columns at the end and no extension views.
OLD_VIEWS = """
DROP VIEW sessions; DROP VIEW timeline; DROP VIEW session_settings; DROP VIEW timeline_detail;
CREATE VIEW sessions AS
  SELECT id AS session_id, pid, ppid, argv, executable, python_version, started_ns,
         ended_ns, sample_interval_bytes, status, events_received, events_dropped,
         sample_buckets, max_stack_depth, error
  FROM session;
CREATE VIEW timeline AS
  SELECT session_id, ts_ns, live_bytes, live_count, end_bytes FROM timeline_point;
"""


SCHEMA_V1 = os.path.join(SOURCE_ROOT, "tests", "data", "schema_v1.sql")
V1_DATA = """
INSERT INTO session (id, pid, ppid, argv, executable, python_version, started_ns, ended_ns,
  sample_interval_bytes, max_stack_depth, status, events_received, events_dropped)
  VALUES (1, 10, 1, '["a.py"]', 'py', '3.11.2', 1000, 2000, 1, 64, 'exited', 2, 0);
INSERT INTO frame (id, function, filename, lineno) VALUES (1, 'f', 'a.py', 3);
INSERT INTO stack (id, hash, depth, truncated) VALUES (1, 5, 1, 0);
INSERT INTO stack_frame VALUES (1, 0, 1);
INSERT INTO alloc (id, session_id, ts_ns, thread_id, domain, address, size, est_bytes,
  stack_id, freed_ns) VALUES (1, 1, 1100, 7, 2, 4096, 32, 32, 1, 1500),
  (2, 1, 1200, 7, 1, 8192, 64, 64, NULL, NULL);
INSERT INTO timeline_point VALUES (1, 1000, 96, 2, 64);
"""


def make_v1_db(path, data):
    """A database as a version 1 heapprofd left it: its schema, WAL, data, closed."""
    with open(SCHEMA_V1) as f:
        schema = f.read()
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.executescript(schema + data)
    con.close()


def view_columns(con, view):
    return [r[1] for r in con.execute("PRAGMA table_info(%s)" % view)]


class ViewUpgradeTest(unittest.TestCase):
    """A database of this schema version written with older view definitions gets the
    current views when heapprofd opens it again; its data stays."""

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="hp-db-views-")
        self.addCleanup(self._tmp.cleanup)
        self.path = os.path.join(self._tmp.name, "prof.sqlite")
        self.assertTrue(os.access(HEAPPROFD, os.X_OK), "no heapprofd at %s" % HEAPPROFD)

    def run_daemon_once(self):
        """Starts heapprofd on the database, waits until it listens, stops it cleanly."""
        sock = os.path.join(self._tmp.name, "hp.sock")
        with open(os.path.join(self._tmp.name, "heapprofd.log"), "wb") as log:
            proc = subprocess.Popen([HEAPPROFD, "--db", self.path, "--socket", sock,
                                     "--no-index"], stdout=subprocess.PIPE, stderr=log)
            try:
                ready, _, _ = select.select([proc.stdout], [], [], DAEMON_START_S)
                line = proc.stdout.readline().decode() if ready else ""
                self.assertEqual(line, "heapprofd: listening on %s\n" % sock)
                proc.send_signal(signal.SIGTERM)
                self.assertEqual(proc.wait(DAEMON_STOP_S), 0)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(DAEMON_STOP_S)
                proc.stdout.close()

    def test_heapprofd_replaces_the_views_of_an_earlier_build(self):
        con = db.create_db(self.path)
        con.executescript(OLD_VIEWS)
        con.execute("INSERT INTO session (id, pid, ppid, argv, executable, python_version,"
                    " started_ns, ended_ns, sample_interval_bytes, sample_buckets,"
                    " max_stack_depth, status, error) VALUES (1, 10, 1, '[\"a.py\"]', 'py',"
                    " '3.11.2', 1000, 2000, 0, '[[128, 0.5]]', 64, 'protocol_error', 'bad')")
        con.execute("INSERT INTO timeline_point (session_id, ts_ns, live_bytes, live_count,"
                    " end_bytes) VALUES (1, 1000, 300, 3, 100)")
        con.close()
        ro = db.open_db(self.path)
        self.assertEqual(view_columns(ro, "timeline")[-1], "end_bytes")  # the old form
        ro.close()

        self.run_daemon_once()

        ro = db.open_db(self.path)
        try:
            self.assertEqual(view_columns(ro, "sessions"), [
                "session_id", "pid", "ppid", "argv", "executable", "python_version",
                "started_ns", "ended_ns", "sample_interval_bytes", "status",
                "events_received", "events_dropped"])
            self.assertEqual(view_columns(ro, "timeline"),
                             ["session_id", "ts_ns", "live_bytes", "live_count"])
            self.assertEqual(ro.execute("SELECT * FROM session_settings").fetchall(),
                             [(1, "[[128, 0.5]]", 64, "bad", 0)])
            self.assertEqual(ro.execute("SELECT * FROM timeline_detail").fetchall(),
                             [(1, 1000, 300, 3, 100)])
            self.assertEqual(ro.execute("SELECT session_id, status FROM sessions").fetchall(),
                             [(1, "protocol_error")])
        finally:
            ro.close()

    def test_heapprofd_migrates_a_version_1_database(self):
        make_v1_db(self.path, V1_DATA)
        self.run_daemon_once()
        ro = db.open_db(self.path)
        try:
            self.assertEqual(ro.execute("PRAGMA user_version").fetchone()[0], db.SCHEMA_VERSION)
            self.assertEqual(ro.execute("PRAGMA integrity_check").fetchone()[0], "ok")
            self.assertEqual(ro.execute("SELECT session_id, pid, status, events_received"
                                        " FROM sessions").fetchall(), [(1, 10, "exited", 2)])
            self.assertEqual(ro.execute("SELECT alloc_id, domain, freed_ns FROM allocations"
                                        " ORDER BY alloc_id").fetchall(),
                             [(1, "obj", 1500), (2, "mem", None)])
            self.assertEqual(ro.execute("SELECT * FROM timeline_detail").fetchall(),
                             [(1, 1000, 96, 2, 64)])
            self.assertEqual(ro.execute("SELECT argv_omitted FROM session_settings").fetchall(),
                             [(0,)])
            self.assertEqual(ro.execute("SELECT count(*) FROM threads").fetchone()[0], 0)
            self.assertEqual(ro.execute("SELECT count(*) FROM markers").fetchone()[0], 0)
        finally:
            ro.close()
        # The new status is allowed now.
        rw = db.open_db(self.path, readonly=False)
        try:
            rw.execute("UPDATE session SET status = 'hooks_replaced'")
            rw.commit()
        finally:
            rw.close()


if __name__ == "__main__":
    unittest.main()
