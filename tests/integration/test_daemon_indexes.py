"""heapprofd builds the read indexes (schema/indexes.sql) at clean shutdown, not while
recording: they exist after SIGTERM, not with --no-index, a daemon appending to an
indexed database says it will be slower, and a kill while indexing harms nothing."""
import os
import re
import signal
import sqlite3
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import Daemon, finished_session, query, run_client, wait_for  # noqa: E402

READ_INDEXES = {"alloc_by_session_freed", "alloc_by_session_stack"}


def indexes(db):
    return {r["name"] for r in query(db, "SELECT name FROM sqlite_master WHERE type = 'index'")}


def integrity(db):
    return [r["integrity_check"] for r in query(db, "PRAGMA integrity_check")]


class Indexes(unittest.TestCase):
    def record(self, d, tag, events=20000):
        [s] = run_client(d.sock, "normal", tag, events=events)
        self.assertEqual(finished_session(d.db, tag)["status"], "exited")
        return s

    def test_sigterm_builds_the_read_indexes_after_storing_everything(self):
        with tempfile.TemporaryDirectory() as tmp, Daemon(tmp) as d:
            s = self.record(d, "first")
            # Not while recording: they would slow ingestion down.
            self.assertEqual(indexes(d.db) & READ_INDEXES, set())
            self.assertEqual(d.stop(signal.SIGTERM), 0)
            self.assertEqual(indexes(d.db) & READ_INDEXES, READ_INDEXES)
            self.assertEqual(integrity(d.db), ["ok"])
            n = query(d.db, "SELECT count(*) AS n, count(freed_ns) AS f FROM allocations")[0]
            self.assertEqual((n["n"], n["f"]), (s["allocs"], s["frees"]))
            log = d.log()
            self.assertIn("indexing %d allocations for fast queries..." % s["allocs"], log)
            self.assertRegex(log, r"indexed %d allocations in \d+\.\d\d s" % s["allocs"])
            # The indexes come after the final commit and before "stopped".
            self.assertLess(log.index("SIGTERM"), log.index("indexing "))
            self.assertLess(log.index("indexed "), log.index("stopped"))

            # Appending to an indexed database works and is said to be slower, once.
            with Daemon(tmp, db=d.db, sock=d.sock) as d2:
                s2 = self.record(d2, "second", events=1000)
                self.assertEqual(d2.stop(signal.SIGINT), 0)
                log2 = d2.log()
            self.assertEqual(log2.count("already has 2 of the 2 read indexes"), 1)
            self.assertIn("recording into it is slower", log2)
            self.assertNotIn("indexing ", log2)   # nothing left to build
            n = query(d.db, "SELECT count(*) AS n FROM allocations")[0]["n"]
            self.assertEqual(n, s["allocs"] + s2["allocs"])
            self.assertEqual(integrity(d.db), ["ok"])

    def test_no_index_leaves_them_out(self):
        with tempfile.TemporaryDirectory() as tmp, Daemon(tmp, args=["--no-index"]) as d:
            s = self.record(d, "plain")
            self.assertEqual(d.stop(signal.SIGTERM), 0)
            self.assertEqual(indexes(d.db) & READ_INDEXES, set())
            self.assertNotIn("indexing", d.log())
            n = query(d.db, "SELECT count(*) AS n FROM allocations")[0]["n"]
            self.assertEqual(n, s["allocs"])

    def test_partly_indexed_database_gets_the_rest_at_shutdown(self):
        with tempfile.TemporaryDirectory() as tmp:
            with Daemon(tmp, args=["--no-index"]) as d:
                self.record(d, "one")
                self.assertEqual(d.stop(), 0)
            con = sqlite3.connect(d.db)
            try:
                con.execute("CREATE INDEX alloc_by_session_freed ON alloc (session_id, freed_ns)")
                con.commit()
            finally:
                con.close()
            with Daemon(tmp, db=d.db, sock=d.sock) as d2:
                self.assertEqual(d2.stop(), 0)
                self.assertIn("already has 1 of the 2 read indexes", d2.log())
            self.assertEqual(indexes(d.db) & READ_INDEXES, READ_INDEXES)

    def test_sigkill_while_indexing_leaves_an_intact_database(self):
        rows = 2000000
        with tempfile.TemporaryDirectory() as tmp:
            with Daemon(tmp, args=["--no-index"]) as d:
                self.record(d, "base", events=1000)
                self.assertEqual(d.stop(), 0)
            # Enough rows that building the indexes takes long enough to be killed in.
            con = sqlite3.connect(d.db)
            try:
                sid = con.execute("SELECT max(id) FROM session").fetchone()[0]
                con.execute(
                    "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?)"
                    " INSERT INTO alloc (session_id, ts_ns, thread_id, domain, address, size,"
                    " est_bytes, stack_id, freed_ns) SELECT ?, i * 1000, 1, 1, i * 16, 64, 64,"
                    " NULL, CASE WHEN i % 7 THEN (i * 7919) % 1000003 * 1000 END FROM c",
                    (rows, sid))
                con.commit()
                before = con.execute("SELECT count(*) FROM alloc").fetchone()[0]
            finally:
                con.close()
            with Daemon(tmp, db=d.db, sock=d.sock) as d2:
                d2.proc.send_signal(signal.SIGTERM)
                d2.wait_log("indexing ", timeout=30)
                d2.proc.send_signal(signal.SIGKILL)
                d2.proc.wait(10)
                self.assertNotIn("indexed ", d2.log())
            self.assertEqual(integrity(d.db), ["ok"])
            self.assertEqual(query(d.db, "SELECT count(*) AS n FROM alloc")[0]["n"], before)
            # Killed mid-way: the second index was not committed.
            self.assertNotIn("alloc_by_session_stack", indexes(d.db))
            # The next clean stop builds them.
            with Daemon(tmp, db=d.db, sock=d.sock) as d3:
                # Indexing 2 M rows under ThreadSanitizer, beside another test, can take
                # over 30 s: the timeout only guards against a hang, and stays under
                # meson's for the whole file (240 s) so that a hang fails with the log.
                self.assertEqual(d3.stop(timeout=150), 0)
                m = re.search(r"indexing (\d+) allocations", d3.log())
                self.assertIsNotNone(m)
                self.assertEqual(int(m.group(1)), before)
            self.assertEqual(indexes(d.db) & READ_INDEXES, READ_INDEXES)
            self.assertEqual(integrity(d.db), ["ok"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
