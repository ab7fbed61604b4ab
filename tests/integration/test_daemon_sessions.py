"""heapprofd with many agents at once, and with agents that misbehave.

Each bad input must close only its own connection, mark its session protocol_error
with what it sent before kept, and leave a concurrent good session unharmed."""
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import (Client, Daemon, SharedDaemonTest, finished_session, query,  # noqa: E402
                            run_client, session)


class ConcurrentSessions(unittest.TestCase):
    def test_64_concurrent_sessions_are_all_stored(self):
        with tempfile.TemporaryDirectory() as tmp, Daemon(tmp) as d:
            summaries = run_client(d.sock, "normal", "many", events=3000, clients=64, batch=500)
            self.assertEqual(len(summaries), 64)
            for s in summaries:
                row = finished_session(d.db, s["tag"])
                self.assertEqual(row["status"], "exited", s["tag"])
                self.assertEqual(row["events_received"], 3000)
                self.assertEqual(row["events_dropped"], 3)
                self.assertIsNotNone(row["ended_ns"])
                self.assertGreaterEqual(row["ended_ns"], row["started_ns"])
                counts = query(d.db, "SELECT count(*) AS n, count(freed_ns) AS freed,"
                               " sum(stack_id IS NULL) AS nostack"
                               " FROM allocations WHERE session_id = ?", (row["session_id"],))[0]
                self.assertEqual(counts["n"], s["allocs"])
                self.assertEqual(counts["freed"], s["frees"])
                self.assertEqual(counts["nostack"], 0)
            # Frames and stacks are stored once for all 64 sessions.
            self.assertEqual(query(d.db, "SELECT count(*) AS n FROM frames")[0]["n"], 3)
            self.assertEqual(query(d.db, "SELECT count(*) AS n FROM stacks")[0]["n"], 2)
            self.assertEqual(query(d.db, "SELECT count(*) AS n FROM stack_frames")[0]["n"], 5)
            innermost = query(d.db, "SELECT DISTINCT f.function FROM stack_frames s"
                              " JOIN frames f USING (frame_id) WHERE s.depth = 0")
            self.assertEqual([r["function"] for r in innermost], ["alloc_here"])
            # Each session's timeline ends at its live allocations: 64 of the cycle.
            for s in summaries[:4]:
                sid = session(d.db, s["tag"])["session_id"]
                last = query(d.db, "SELECT live_bytes, end_bytes FROM timeline_detail"
                             " WHERE session_id = ? ORDER BY ts_ns DESC LIMIT 1", (sid,))[0]
                live = query(d.db, "SELECT sum(est_bytes) AS b FROM allocations"
                             " WHERE session_id = ? AND freed_ns IS NULL", (sid,))[0]["b"]
                self.assertEqual(last["end_bytes"], live)
            # The log names each session's start (pid, argv) and end (status, counts).
            log = d.log()
            sid = session(d.db, "many-7")["session_id"]
            self.assertRegex(log, r'session %d \(pid \d+\) started: argv \["hp_testclient","many-7"\]'
                             % sid)
            self.assertRegex(log, r"session %d \(pid \d+\) ended: exited, 3000 events, 3 dropped"
                             % sid)
            self.assertTrue(d.alive())

    def test_disconnect_without_goodbye_keeps_everything(self):
        with tempfile.TemporaryDirectory() as tmp, Daemon(tmp) as d:
            [s] = run_client(d.sock, "disconnect", "gone", events=5000)
            row = finished_session(d.db, "gone")
            self.assertEqual(row["status"], "disconnected")
            self.assertIsNotNone(row["ended_ns"])
            self.assertEqual(row["events_received"], 5000)
            n = query(d.db, "SELECT count(*) AS n FROM allocations WHERE session_id = ?",
                      (row["session_id"],))[0]["n"]
            self.assertEqual(n, s["allocs"])


PRE_HELLO = ("before-hello", "bad-version", "random")


class BadInput(SharedDaemonTest):
    """One daemon for all cases: each must leave it serving the next."""

    def run_beside_good_session(self, scenario, tag, events=2000):
        """Runs a bad client while a good one is connected; checks the good one."""
        with Client(self.d.sock, "hold-goodbye", tag + "-good", events=50000, batch=1000) as good:
            good.wait_line("sent")  # the good session is open and has sent its events
            bad = run_client(self.d.sock, scenario, tag, events=events)
            if scenario not in PRE_HELLO:
                # The bad session is over while the good one is still connected.
                finished_session(self.d.db, tag)
            [g] = good.finish()
        row = finished_session(self.d.db, tag + "-good", timeout=30)
        self.assertEqual(row["status"], "exited")
        self.assertEqual(row["events_received"], 50000)
        n = query(self.d.db, "SELECT count(*) AS n FROM allocations WHERE session_id = ?",
                  (row["session_id"],))[0]["n"]
        self.assertEqual(n, g["allocs"])
        self.assertTrue(self.d.alive())
        return bad[0]

    def check_protocol_error_after_data(self, scenario, reason):
        tag = "bad-" + scenario
        s = self.run_beside_good_session(scenario, tag)
        row = finished_session(self.d.db, tag)
        self.assertEqual(row["status"], "protocol_error")
        self.assertIn(reason, row["error"])
        self.assertIsNotNone(row["ended_ns"])
        # What it sent before the bad frame is kept.
        self.assertEqual(row["events_received"], s["events"])
        n = query(self.d.db, "SELECT count(*) AS n FROM allocations WHERE session_id = ?",
                  (row["session_id"],))[0]["n"]
        self.assertEqual(n, s["allocs"])
        self.d.wait_log("session %d (pid " % row["session_id"])
        self.d.wait_log("): protocol error: " + row["error"])

    def test_undefined_stack_id(self):
        self.check_protocol_error_after_data("undef-stack", "stack id 77")

    def test_duplicate_frame_id(self):
        self.check_protocol_error_after_data("dup-frame", "frame id 2 defined twice")

    def test_garbage_bytes(self):
        self.check_protocol_error_after_data("garbage", "bad frame")

    def test_oversized_frame_length(self):
        self.check_protocol_error_after_data("oversized", "frame of 2048.0 MiB exceeds the 4 MiB limit")

    def check_refused_before_hello(self, scenario, reason):
        tag = "pre-" + scenario
        before = self.d.log().count("protocol error before HELLO")
        self.run_beside_good_session(scenario, tag)
        self.d.wait_log("protocol error before HELLO")
        log = self.d.log()
        self.assertGreater(log.count("protocol error before HELLO"), before)
        self.assertIn(reason, log)
        self.assertIsNone(session(self.d.db, tag))  # nothing valid arrived: no session row

    def test_events_before_hello(self):
        self.check_refused_before_hello("before-hello", "EVENTS before HELLO")

    def test_wrong_protocol_version(self):
        self.check_refused_before_hello("bad-version", "protocol version 99")

    def test_random_bytes(self):
        self.check_refused_before_hello("random", "bad frame of 200 bytes")

    def test_truncated_frame_then_disconnect(self):
        tag = "bad-truncated"
        s = self.run_beside_good_session("truncated", tag)
        row = finished_session(self.d.db, tag)
        # An agent killed in the middle of a write looks exactly like this: the session
        # ends as disconnected, with every complete frame kept.
        self.assertEqual(row["status"], "disconnected")
        self.assertEqual(row["events_received"], s["events"])
        self.d.wait_log("closed inside a frame")


if __name__ == "__main__":
    unittest.main()
