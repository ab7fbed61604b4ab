"""heapprofd under a full disk and a locked database (issue 12, items 1 and 2).

The disk-full cases run heapprofd_fault: the real heapprofd with the fault VFS of
tests/fault installed, whose writes fail with SQLITE_FULL while the file "full" exists in
$HP_FAULT_DIR, exactly as SQLite reports ENOSPC. The lock is real: a second SQLite
connection holding BEGIN IMMEDIATE, as another writer (or `sqlite3` in a shell) would.

What must hold: nothing received is lost while the daemon runs (it writes failed
transactions again once it can), every session ends with a true status, and heapprofd
exits non-zero when it had to give data up."""
import os
import signal
import sqlite3
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import (HEAPPROFD_FAULT, Client, Daemon, aggregate_mismatches,  # noqa: E402
                            finished_session, query, run_client, session, wait_for)


class DiskFull(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self._tmp.cleanup)
        self.tmp = self._tmp.name
        self.faults = os.path.join(self.tmp, "faults")
        os.mkdir(self.faults)
        self.full = os.path.join(self.faults, "full")
        self.assertTrue(os.access(HEAPPROFD_FAULT, os.X_OK), "no %s" % HEAPPROFD_FAULT)

    def daemon(self):
        env = dict(os.environ, HP_FAULT_DIR=self.faults)
        return Daemon(self.tmp, binary=HEAPPROFD_FAULT, env=env)

    def disk_full(self, on):
        if on:
            open(self.full, "w").close()
        else:
            os.unlink(self.full)

    def fill_the_disk_during(self, d, tag, events, batch):
        """Runs a client whose session row is committed before the disk fills and whose
        end comes while it is full; returns its summary."""
        with Client(d.sock, "hold-goodbye", tag, events=events, batch=batch) as c:
            c.wait_line("sent")
            wait_for(lambda: session(d.db, tag), what="session %s's row" % tag)
            self.disk_full(True)
            [s] = c.finish()
        return s

    def test_everything_is_stored_once_the_disk_has_room(self):
        with self.daemon() as d:
            # Session a starts before the disk fills and ends while it is full; session b
            # starts while it is full: both programs, whole, in sessions of their own.
            sa = self.fill_the_disk_during(d, "a", 20000, 1000)
            [sb] = run_client(d.sock, "normal", "b", events=5000, batch=500)
            d.wait_log("storing failed (database or disk is full)")
            time.sleep(1.0)  # it keeps failing a while
            self.assertIsNone(session(d.db, "b"))
            self.disk_full(False)
            d.wait_log("storing works again after")
            for tag, s in (("a", sa), ("b", sb)):
                row = finished_session(d.db, tag)
                self.assertEqual(row["status"], "exited", tag)
                self.assertEqual(row["events_received"], s["events"], tag)
                self.assertEqual(row["events_dropped"], 3, tag)  # the agent's own
                n = query(d.db, "SELECT count(*) AS n, count(freed_ns) AS freed FROM"
                          " allocations WHERE session_id = ?", (row["session_id"],))[0]
                self.assertEqual((n["n"], n["freed"]), (s["allocs"], s["frees"]), tag)
            self.assertNotIn("giving up", d.log())
            self.assertEqual(d.stop(), 0)
        # Rolled-back transactions took their aggregates with them; the retries wrote
        # them again with their rows, once.
        con = sqlite3.connect(d.db)
        try:
            self.assertEqual(aggregate_mismatches(con), 0)
        finally:
            con.close()

    def test_a_disk_full_until_the_stop_is_an_error_and_the_session_ends_truthfully(self):
        with self.daemon() as d:
            self.fill_the_disk_during(d, "held", 2000, 500)
            d.wait_log("storing failed (database or disk is full)")
            rc = d.stop(timeout=60)
            log = d.log()
        self.assertEqual(rc, 1, log[-3000:])
        self.assertIn("could not be stored to its end", log)
        self.assertIn("stopped with data received but not stored", log)
        self.disk_full(False)
        # The row says what could be written: running. The next heapprofd, finding it so,
        # ends it as disconnected.
        self.assertEqual(session(os.path.join(self.tmp, "prof.sqlite"), "held")["status"],
                         "running")
        with Daemon(self.tmp) as d2:
            row = session(d2.db, "held")
            self.assertEqual(row["status"], "disconnected")
            self.assertEqual(d2.stop(), 0)


class Locked(unittest.TestCase):
    def test_a_program_that_starts_while_another_writer_holds_the_lock_is_stored(self):
        with tempfile.TemporaryDirectory() as tmp, Daemon(tmp) as d:
            # Longer than heapprofd's busy timeout (5 s), so that its BEGIN gives up at
            # least once and the transaction is retried.
            other = sqlite3.connect(d.db, isolation_level=None, timeout=10)
            try:
                other.execute("BEGIN IMMEDIATE")
                [s] = run_client(d.sock, "normal", "late", events=3000, batch=500)
                d.wait_log("database is locked", timeout=20)
                time.sleep(1.0)
            finally:
                other.execute("ROLLBACK")
                other.close()
            row = finished_session(d.db, "late", timeout=30)
            self.assertEqual(row["status"], "exited")
            self.assertEqual(row["events_received"], 3000)
            n = query(d.db, "SELECT count(*) AS n FROM allocations WHERE session_id = ?",
                      (row["session_id"],))[0]["n"]
            self.assertEqual(n, s["allocs"])
            d.wait_log("storing works again after")
            self.assertEqual(d.stop(signal.SIGINT), 0)


if __name__ == "__main__":
    unittest.main()
