"""heapprofd keeps every change of a session's sampling interval (issue 4, on-full 'adapt').

A Python agent (adapt_wire.py) speaks the real wire protocol to a real heapprofd: HELLO
with an interval, then COUNTERS messages whose interval the agent changed. Each change,
and only a change, becomes one row of sampling_changes, at the wall-clock time the agent
reported it; databases of schema version 1 made before the table existed still open."""
import json
import os
import sqlite3
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from adapt_wire import Agent  # noqa: E402
from daemon_harness import Daemon, query, wait_for  # noqa: E402

SOURCE_ROOT = os.environ.get("HEAPPROF_SOURCE_ROOT",
                             os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def session_of(db, tag):
    argv = json.dumps(["adapt-agent", tag], separators=(",", ":"))
    try:
        rows = query(db, "SELECT * FROM sessions WHERE argv = ?", (argv,))
    except sqlite3.OperationalError:
        return None
    return rows[0] if rows else None


def ended(db, tag):
    return wait_for(lambda: (lambda s: s if s and s["status"] != "running" else None)(
        session_of(db, tag)), 20, what="session %s to end" % tag)


def changes(db, session_id):
    return [(r["change_no"], r["ts_ns"], r["previous_interval_bytes"],
             r["sample_interval_bytes"])
            for r in query(db, "SELECT * FROM sampling_changes WHERE session_id = ?"
                           " ORDER BY change_no", (session_id,))]


class SamplingChanges(unittest.TestCase):
    def test_each_change_is_one_row_and_repeats_are_not(self):
        with tempfile.TemporaryDirectory() as tmp, Daemon(tmp) as d:
            with Agent(d.sock, "adapt", interval=1) as a:
                a.define_stack()
                a.counters(5, 1)             # repeats HELLO's interval: no row
                a.allocs(10, [100, 200])        # est_bytes = size at interval 1
                a.counters(210, 8)           # change 1 -> 8
                a.allocs(220, [100], est=800, first_address=0x20000)
                a.counters(400, 8)           # no change
                a.counters(650, 64)          # change 8 -> 64
                a.counters(700, 64, dropped=0)
                a.goodbye(900)
            s = ended(d.db, "adapt")
            self.assertEqual(s["status"], "exited")
            # HELLO's interval stays the session's starting interval.
            self.assertEqual(s["sample_interval_bytes"], 1)
            self.assertEqual(changes(d.db, s["session_id"]),
                             [(1, a.wall(210), 1, 8), (2, a.wall(650), 8, 64)])
            # The storage table holds exactly those two rows for the session.
            self.assertEqual(query(d.db, "SELECT count(*) AS n FROM sampling_change")[0]["n"], 2)
            self.assertEqual(query(d.db, "SELECT count(*) AS n FROM allocations")[0]["n"], 3)
            d.wait_log("session %d (pid %d): the agent changed its sampling interval 2 times,"
                       " from 1 to 64 bytes" % (s["session_id"], os.getpid()))

    def test_a_change_is_visible_while_the_session_records(self):
        # Stored through the writer thread's batches: committed within the commit
        # interval, not only at the session's end.
        with tempfile.TemporaryDirectory() as tmp, Daemon(tmp) as d:
            with Agent(d.sock, "live", interval=4096) as a:
                a.counters(1, 4096)
                a.counters(50, 8192)
                s = wait_for(lambda: session_of(d.db, "live"), 20, what="session row")
                rows = wait_for(lambda: changes(d.db, s["session_id"]), 20,
                                what="the change to be committed")
                self.assertEqual(rows, [(1, a.wall(50), 4096, 8192)])
                self.assertEqual(session_of(d.db, "live")["status"], "running")
                a.goodbye(100)
            ended(d.db, "live")

    def test_changes_go_to_their_own_session(self):
        with tempfile.TemporaryDirectory() as tmp, Daemon(tmp) as d:
            with Agent(d.sock, "one", interval=2) as a, \
                    Agent(d.sock, "two", interval=2, mono0=99_000_000_000) as b:
                a.counters(10, 4)
                b.counters(10, 2)
                b.counters(20, 16)
                a.counters(30, 4)
                a.counters(40, 8)
                b.counters(50, 32)
                b.counters(60, 32)
                a.goodbye(70)
                b.goodbye(70)
            sa, sb = ended(d.db, "one"), ended(d.db, "two")
            self.assertEqual(changes(d.db, sa["session_id"]),
                             [(1, a.wall(10), 2, 4), (2, a.wall(40), 4, 8)])
            self.assertEqual(changes(d.db, sb["session_id"]),
                             [(1, b.wall(20), 2, 16), (2, b.wall(50), 16, 32)])

    def test_disconnect_keeps_the_changes_received(self):
        with tempfile.TemporaryDirectory() as tmp, Daemon(tmp) as d:
            with Agent(d.sock, "gone", interval=1) as a:
                a.counters(10, 2)
                a.counters(20, 4)
            s = ended(d.db, "gone")
            self.assertEqual(s["status"], "disconnected")
            self.assertEqual(changes(d.db, s["session_id"]),
                             [(1, a.wall(10), 1, 2), (2, a.wall(20), 2, 4)])

    def test_size_bucket_sessions_never_adapt(self):
        # Interval 0 means size-bucket rates; a change from or to 0 is refused (logged
        # once), and the session itself goes on normally.
        with tempfile.TemporaryDirectory() as tmp, Daemon(tmp) as d:
            with Agent(d.sock, "buckets", interval=0, buckets=[(128, 0.5), (2**64 - 1, 1.0)]) as a:
                a.counters(5, 0)
                a.counters(10, 4096)
                a.counters(20, 8192)
                a.goodbye(30)
            with Agent(d.sock, "to-zero", interval=64) as b:
                b.counters(5, 0)
                b.counters(10, 128)
                b.goodbye(30)
            s = ended(d.db, "buckets")
            z = ended(d.db, "to-zero")
            self.assertEqual(s["status"], "exited")
            self.assertEqual(changes(d.db, s["session_id"]), [])
            self.assertEqual(changes(d.db, z["session_id"]), [(1, b.wall(10), 64, 128)])
            log = d.log()
            self.assertEqual(log.count("session %d (pid %d): ignoring a change of sampling "
                                       "interval" % (s["session_id"], os.getpid())), 1)
            self.assertIn("ignoring a change of sampling interval from 64 to 0 bytes", log)


class OlderDatabases(unittest.TestCase):
    def test_version_1_database_without_the_table_is_opened_and_completed(self):
        with tempfile.TemporaryDirectory() as tmp:
            db = os.path.join(tmp, "old.sqlite")
            # A version 1 recording as heapprof wrote it before sampling_change existed
            # (heapprofd migrates it to the current version and adds the table).
            with open(os.path.join(SOURCE_ROOT, "tests", "data", "schema_v1.sql")) as f:
                schema = f.read()
            con = sqlite3.connect(db, isolation_level=None)
            con.executescript(schema)
            con.executescript("DROP VIEW sampling_changes; DROP TABLE sampling_change;")
            con.execute("INSERT INTO session (pid, ppid, argv, executable, python_version,"
                        " started_ns, ended_ns, sample_interval_bytes, max_stack_depth, status)"
                        " VALUES (1, 0, '[\"old.py\"]', 'py', '3.11', 1, 2, 1, 64, 'exited')")
            con.close()
            with Daemon(tmp, db=db) as d:
                with Agent(d.sock, "new", interval=1) as a:
                    a.counters(10, 2)
                    a.goodbye(20)
                s = ended(d.db, "new")
                self.assertEqual(s["session_id"], 2)
                self.assertEqual(changes(d.db, 2), [(1, a.wall(10), 1, 2)])
                self.assertEqual(changes(d.db, 1), [])


if __name__ == "__main__":
    unittest.main()
