"""heapprofd's life: command line, SIGTERM drain, SIGKILL durability, the timeline."""
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import (HEAPPROFD, Client, Daemon, aggregate_mismatches, finished_session,  # noqa: E402
                            query, run_client, session, wait_for)


class CommandLine(unittest.TestCase):
    def run_d(self, *args):
        return subprocess.run([HEAPPROFD] + list(args), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=20)

    def test_help_and_version(self):
        p = self.run_d("--help")
        self.assertEqual(p.returncode, 0)
        self.assertIn(b"--db PATH", p.stdout)
        self.assertIn(b"--timeline-interval", p.stdout)
        p = self.run_d("--version")
        self.assertEqual(p.returncode, 0)
        self.assertRegex(p.stdout.decode(), r"^heapprofd \d+\.\d+\.\d+")

    def test_usage_errors_are_one_clear_line(self):
        for args, text in [((), "--db PATH is required"),
                           (("--db", "x", "--bogus"), "unknown option '--bogus'"),
                           (("--db", "x", "--timeline-interval", "0"), "--timeline-interval"),
                           (("--db", "x", "--log-level", "loud"), "not one of error"),
                           (("--db",), "needs a value")]:
            p = self.run_d(*args)
            self.assertEqual(p.returncode, 2, args)
            err = p.stderr.decode()
            self.assertIn(text, err)
            self.assertNotIn("Traceback", err)
            self.assertLessEqual(len(err.splitlines()), 2)

    def test_default_socket_is_in_xdg_runtime_dir(self):
        with tempfile.TemporaryDirectory() as tmp:
            run = os.path.join(tmp, "run")
            os.mkdir(run, 0o700)
            env = dict(os.environ, XDG_RUNTIME_DIR=run)
            p = subprocess.Popen([HEAPPROFD, "--db", os.path.join(tmp, "p.sqlite")],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            try:
                line = p.stdout.readline().decode()
                self.assertEqual(line, "heapprofd: listening on %s/heapprofd.sock\n" % run)
                p.send_signal(signal.SIGINT)
                self.assertEqual(p.wait(20), 0)
                self.assertFalse(os.path.exists(os.path.join(run, "heapprofd.sock")))
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
                p.stdout.close()
                p.stderr.close()


class Shutdown(unittest.TestCase):
    def test_sigterm_drains_received_events(self):
        with tempfile.TemporaryDirectory() as tmp, Daemon(tmp) as d:
            with Client(d.sock, "hold", "held", events=100000, batch=2000) as c:
                c.wait_line("sent")
                # The events are written but maybe not all read yet: SIGTERM now.
                self.assertEqual(d.stop(signal.SIGTERM), 0)
                [s] = c.finish()
            self.assertFalse(os.path.exists(d.sock))
            row = session(d.db, "held")
            self.assertEqual(row["status"], "disconnected")
            self.assertIsNotNone(row["ended_ns"])
            self.assertEqual(row["events_received"], 100000)
            n = query(d.db, "SELECT count(*) AS n, count(freed_ns) AS f FROM allocations")[0]
            self.assertEqual((n["n"], n["f"]), (s["allocs"], s["frees"]))
            self.assertIn("SIGTERM", d.log())

    def test_sigkill_mid_stream_leaves_a_sound_database(self):
        with tempfile.TemporaryDirectory() as tmp:
            d = Daemon(tmp, args=["--batch-rows", "5000"])
            d.start()
            try:
                with Client(d.sock, "normal", "killed", events=3000000, clients=4, batch=4000):
                    # Wait until some batches are committed, note what is there, kill.
                    def committed():
                        try:
                            return query(d.db, "SELECT count(*) AS n FROM allocations")[0]["n"]
                        except sqlite3.OperationalError:
                            return 0
                    seen = wait_for(lambda: committed() > 20000, what="committed rows")
                    d.proc.send_signal(signal.SIGKILL)
                    d.proc.wait(10)
            finally:
                d.kill()
            con = sqlite3.connect(d.db)
            try:
                self.assertEqual(con.execute("PRAGMA integrity_check").fetchall(), [("ok",)])
                n = con.execute("SELECT count(*) FROM allocations").fetchone()[0]
                self.assertGreaterEqual(n, seen)
                # Killed daemons write no end: the sessions stay 'running'.
                statuses = [r[0] for r in con.execute("SELECT status FROM sessions")]
                self.assertGreaterEqual(len(statuses), 1)
                self.assertEqual(set(statuses), {"running"})
                # The aggregates committed with the rows they sum, so they still agree.
                self.assertGreater(con.execute("SELECT count(*) FROM agg_stack").fetchone()[0], 0)
                self.assertEqual(aggregate_mismatches(con), 0)
            finally:
                con.close()
            # A new daemon reopens the database and replaces the stale socket.
            with Daemon(tmp, db=d.db, sock=d.sock) as d2:
                run_client(d2.sock, "normal", "after", events=100)
                self.assertEqual(finished_session(d2.db, "after")["status"], "exited")
                self.assertIn("replaced stale socket", d2.log())


class WhileRecording(unittest.TestCase):
    def test_running_session_is_queryable_within_a_second_or_so(self):
        with tempfile.TemporaryDirectory() as tmp, Daemon(tmp) as d:
            with Client(d.sock, "hold", "live", events=20000) as c:
                c.wait_line("sent")
                # Commits happen at least every 200 ms: the session, its counters, its
                # allocations and its timeline show up while the agent is still connected.
                def visible():
                    s = session(d.db, "live")
                    return s if s and s["events_received"] == 20000 else None
                row = wait_for(visible, timeout=5, what="events_received to reach 20000")
                self.assertEqual(row["status"], "running")
                self.assertIsNone(row["ended_ns"])
                # Allocation rows follow by the second commit after their arrival.
                wait_for(lambda: query(d.db, "SELECT count(*) AS n FROM allocations WHERE"
                                       " session_id = ?", (row["session_id"],))[0]["n"] > 10000,
                         timeout=3, what="allocation rows of a running session")
                tl = query(d.db, "SELECT count(*) AS n FROM timeline WHERE session_id = ?",
                           (row["session_id"],))[0]["n"]
                self.assertGreater(tl, 0)
                [s] = c.finish()
            row = finished_session(d.db, "live")
            self.assertEqual(row["status"], "disconnected")
            self.assertEqual(query(d.db, "SELECT count(*) AS n FROM allocations")[0]["n"],
                             s["allocs"])

    def test_backpressure_keeps_memory_bounded_and_loses_nothing(self):
        # Under AddressSanitizer freed memory sits in a quarantine (256 MB by default),
        # which would hide what this test measures; keep it small.
        env = dict(os.environ)
        env["ASAN_OPTIONS"] = ":".join(filter(None, [env.get("ASAN_OPTIONS"),
                                                     "quarantine_size_mb=4"]))
        with tempfile.TemporaryDirectory() as tmp, Daemon(tmp, env=env) as d:
            # 8 agents stream 6 M events (about 290 MB as decoded events) as fast as they
            # can; storage cannot keep up, so the daemon must stop reading, not buffer.
            summaries = run_client(d.sock, "normal", "flood", events=750000, clients=8,
                                   batch=8192, timeout=300)
            for s in summaries:
                row = finished_session(d.db, s["tag"], timeout=120)
                self.assertEqual(row["events_received"], 750000)
                self.assertEqual(row["status"], "exited")
            self.assertIn("storage is behind: stopped reading", d.log())
            self.assertIn("storage caught up: reading again", d.log())
            with open("/proc/%d/status" % d.proc.pid) as f:
                hwm_kib = int([l for l in f if l.startswith("VmHWM:")][0].split()[1])
            # Queue bound 16 MiB + SQLite cache 16 MiB + pending rows + code: far below
            # the 290 MB an unbounded queue would have reached.
            self.assertLess(hwm_kib, 160 * 1024)


class Timeline(unittest.TestCase):
    def test_spike_shorter_than_interval_shows_its_height_and_drop(self):
        with tempfile.TemporaryDirectory() as tmp, Daemon(tmp, args=["--timeline-interval", "100"]) as d:
            run_client(d.sock, "spike", "spike")
            row = finished_session(d.db, "spike")
            t0 = row["started_ns"]  # the client starts on a 100 ms boundary
            self.assertEqual(t0 % 100000000, 0)
            points = {r["ts_ns"] - t0: r for r in query(
                d.db, "SELECT * FROM timeline_detail WHERE session_id = ?", (row["session_id"],))}
            ms = 1000000
            self.assertEqual(sorted(points), [0, 100 * ms, 300 * ms])
            # 1000 B live, then a 1 MB spike for 10 ms: the interval keeps the peak.
            self.assertEqual(points[0]["live_bytes"], 1001000)
            self.assertEqual(points[0]["live_count"], 2)
            self.assertEqual(points[0]["end_bytes"], 1000)
            # The drop is visible in the next interval though nothing happened in it.
            self.assertEqual(points[100 * ms]["live_bytes"], 1000)
            self.assertEqual(points[300 * ms]["live_bytes"], 1001)


    def test_drop_after_spike_shows_while_the_program_is_idle(self):
        with tempfile.TemporaryDirectory() as tmp, Daemon(tmp, args=["--timeline-interval", "100"]) as d:
            with Client(d.sock, "spike-idle", "idle") as c:
                c.wait_line("sent")
                row = wait_for(lambda: session(d.db, "idle"), what="session row")
                t0, sid = row["started_ns"], row["session_id"]
                # Nothing more happens, yet about a second later the interval after the
                # spike gets its row with the level after the drop.
                after = wait_for(lambda: query(d.db, "SELECT * FROM timeline WHERE session_id = ?"
                                               " AND ts_ns = ?", (sid, t0 + 100000000)),
                                 timeout=10, what="the row after the spike")
                self.assertEqual(after[0]["live_bytes"], 1000)
                spike = query(d.db, "SELECT live_bytes FROM timeline WHERE session_id = ?"
                              " AND ts_ns = ?", (sid, t0))
                self.assertEqual(spike[0]["live_bytes"], 1001000)
                self.assertEqual(session(d.db, "idle")["status"], "running")
                c.finish()

    def test_no_timeline_row_after_the_session_ended(self):
        # One-second intervals: the session ends inside the interval of its last
        # event, where the heap is below that interval's maximum (the test client
        # frees as it goes). The "drop" row of the next interval would start after
        # ended_ns; it must not be written, and the end level must still be known.
        with tempfile.TemporaryDirectory() as tmp, Daemon(tmp, args=["--timeline-interval", "1000"]) as d:
            # 100 events span 0.1 ms of the client's clock, all before it prints "sent";
            # its GOODBYE (ended_ns) follows at once, so almost surely in the same second.
            with Client(d.sock, "hold-goodbye", "ends", events=100) as c:
                c.wait_line("sent")
                [summary] = c.finish()
            row = finished_session(d.db, "ends")
            self.assertEqual(row["status"], "exited")
            sid = row["session_id"]
            late = query(d.db, "SELECT ts_ns FROM timeline WHERE session_id = ? AND ts_ns > ?",
                         (sid, row["ended_ns"]))
            self.assertEqual(late, [], "timeline rows after ended_ns %d" % row["ended_ns"])
            last = query(d.db, "SELECT ts_ns, live_bytes, end_bytes FROM timeline_detail"
                         " WHERE session_id = ? ORDER BY ts_ns DESC LIMIT 1", (sid,))[0]
            live = query(d.db, "SELECT sum(est_bytes) AS b FROM allocations"
                         " WHERE session_id = ? AND freed_ns IS NULL", (sid,))[0]["b"]
            self.assertGreater(summary["frees"], 0)
            self.assertGreater(live, 0)
            self.assertEqual(last["end_bytes"], live)
            self.assertGreaterEqual(last["live_bytes"], live)


if __name__ == "__main__":
    unittest.main()
