"""One heapprofd per database (the "<db>.lock" file), and what a daemon starting on a
database finds after another was SIGKILLed: sessions it left 'running' are ended as
'disconnected' at their last event."""
import os
import signal
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import (HEAPPROFD, Client, Daemon, finished_session, query,  # noqa: E402
                            run_client, session, wait_for)


class Recovery(unittest.TestCase):
    def test_sessions_of_a_killed_daemon_end_disconnected_at_their_last_event(self):
        with tempfile.TemporaryDirectory() as tmp:
            d = Daemon(tmp)
            d.start()
            try:
                run_client(d.sock, "normal", "done", events=1000)
                done = finished_session(d.db, "done")
                with Client(d.sock, "hold", "orphan", events=20000, batch=1000) as c:
                    c.wait_line("sent")
                    def committed():
                        s = session(d.db, "orphan")
                        if s is None:
                            return None
                        n = query(d.db, "SELECT count(*) AS n FROM allocations"
                                        " WHERE session_id = ?", (s["session_id"],))[0]["n"]
                        return s if n > 0 and s["events_received"] == 20000 else None
                    wait_for(committed, what="the held session's events committed")
                    self.assertTrue(os.path.exists(d.db + ".lock"))
                    d.proc.send_signal(signal.SIGKILL)
                    d.proc.wait(10)
            finally:
                d.kill()
            row = session(d.db, "orphan")
            self.assertEqual(row["status"], "running")
            last = query(d.db, "SELECT max(max(ts_ns), coalesce(max(freed_ns), 0)) AS t"
                               " FROM allocations WHERE session_id = ?",
                         (row["session_id"],))[0]["t"]
            self.assertGreater(last, row["started_ns"])
            # The kernel dropped the dead daemon's lock: the next one may take over.
            with Daemon(tmp, db=d.db, sock=d.sock) as d2:
                d2.wait_log("1 session left running by a heapprofd that did not stop cleanly")
                row2 = session(d2.db, "orphan")
                self.assertEqual(row2["status"], "disconnected")
                self.assertEqual(row2["ended_ns"], last)
                self.assertEqual(row2["events_received"], row["events_received"])
                # Sessions that had ended are untouched.
                self.assertEqual(session(d2.db, "done"), done)
                run_client(d2.sock, "normal", "new", events=100)
                self.assertEqual(finished_session(d2.db, "new")["status"], "exited")
                self.assertEqual(d2.stop(), 0)
                self.assertFalse(os.path.exists(d.db + ".lock"))

    def test_session_without_allocations_ends_at_its_start(self):
        with tempfile.TemporaryDirectory() as tmp:
            d = Daemon(tmp)
            d.start()
            try:
                with Client(d.sock, "hold", "empty", events=0) as c:
                    c.wait_line("sent")
                    wait_for(lambda: session(d.db, "empty"), what="the session row")
                    d.proc.send_signal(signal.SIGKILL)
                    d.proc.wait(10)
            finally:
                d.kill()
            with Daemon(tmp, db=d.db, sock=d.sock) as d2:
                row = session(d2.db, "empty")
                self.assertEqual(row["status"], "disconnected")
                self.assertEqual(row["ended_ns"], row["started_ns"])

    def test_second_daemon_on_the_same_database_is_refused(self):
        with tempfile.TemporaryDirectory() as tmp, Daemon(tmp) as d:
            run_client(d.sock, "normal", "first", events=100)
            finished_session(d.db, "first")
            with Client(d.sock, "hold", "live", events=100) as c:
                c.wait_line("sent")
                wait_for(lambda: session(d.db, "live"), what="the live session")
                p = subprocess.run([HEAPPROFD, "--db", d.db, "--socket",
                                    os.path.join(tmp, "other.sock")],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
                self.assertEqual(p.returncode, 1)
                self.assertEqual(p.stdout, b"")
                err = p.stderr.decode()
                self.assertEqual(len(err.splitlines()), 1, err)
                self.assertIn("%s is being recorded by another heapprofd (pid %d)"
                              % (d.db, d.proc.pid), err)
                self.assertFalse(os.path.exists(os.path.join(tmp, "other.sock")))
                # The first daemon's live session was not taken for a leftover.
                self.assertEqual(session(d.db, "live")["status"], "running")
                self.assertTrue(d.alive())
                c.finish()
            self.assertEqual(finished_session(d.db, "live")["status"], "disconnected")

    def test_refused_database_leaves_no_lock_file(self):
        with tempfile.TemporaryDirectory() as tmp:
            db = os.path.join(tmp, "notes.txt")
            with open(db, "w") as f:
                f.write("not a database\n" * 20)
            p = subprocess.run([HEAPPROFD, "--db", db, "--socket", os.path.join(tmp, "s")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
            self.assertEqual(p.returncode, 1)
            self.assertIn(b"not a heapprof database", p.stderr)
            self.assertEqual(sorted(os.listdir(tmp)), ["notes.txt"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
