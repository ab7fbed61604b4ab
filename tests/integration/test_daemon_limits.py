"""heapprofd's per-session memory limits (daemon/README.md, "Limits"), driven by a real
daemon and the codec-built test client: too many frame or stack ids end the session as
protocol_error naming the limit while other sessions go on; over the live-allocation
limit new allocations are dropped and counted instead."""
import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import (HEAPPROFD, Client, Daemon, finished_session, query,  # noqa: E402
                            run_client, session, wait_for)

SOURCE_ROOT = os.environ.get("HEAPPROF_SOURCE_ROOT") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..")


def header_limit(header, name):
    """The value of `#define name (1u << N)` in daemon/<header>: the tests follow the
    limit where it is defined rather than repeating it."""
    with open(os.path.join(SOURCE_ROOT, "daemon", header)) as f:
        m = re.search(r"#define\s+%s\s+\(1u << (\d+)\)" % name, f.read())
    assert m, "%s not found in daemon/%s" % (name, header)
    return 1 << int(m.group(1))


MAX_FRAMES = header_limit("hp_conn.h", "HP_CONN_MAX_FRAMES")
MAX_STACKS = header_limit("hp_conn.h", "HP_CONN_MAX_STACKS")
MAX_LIVE = header_limit("hp_store.h", "HP_STORE_MAX_LIVE_ADDRS")


def error_of(db, tag):
    """The stored protocol error of a session (storage table: the public views may
    move the column)."""
    argv = json.dumps(["hp_testclient", tag], separators=(",", ":"))
    rows = query(db, "SELECT error FROM session WHERE argv = ?", (argv,))
    assert len(rows) == 1, rows
    return rows[0]["error"]


class IdLimits(unittest.TestCase):
    def over_the_limit(self, scenario, total, what, limit):
        with tempfile.TemporaryDirectory() as tmp, Daemon(tmp) as d:
            with Client(d.sock, "hold-goodbye", "bystander", events=500) as bystander:
                bystander.wait_line("sent")
                run_client(d.sock, scenario, "hostile", events=100,
                           extra=["--defs", str(total)], timeout=120)
                s = finished_session(d.db, "hostile", timeout=60)
                self.assertEqual(s["status"], "protocol_error")
                # The client defines ids 1, 2, ... so the refused one is limit + 1.
                want = "%s of %s id %d exceeds the limit of %d %s per session" % (
                    "FRAME_DEF" if what == "frames" else "STACK_DEF", what[:-1], limit + 1,
                    limit, what)
                self.assertEqual(error_of(d.db, "hostile"), want)
                d.wait_log("protocol error: " + want)
                # Everything before the refused definition was kept.
                self.assertEqual(s["events_received"], 100)
                # The other session was not touched: still running, then ends normally.
                self.assertEqual(session(d.db, "bystander")["status"], "running")
                bystander.finish()
            b = finished_session(d.db, "bystander")
            self.assertEqual((b["status"], b["events_received"]), ("exited", 500))
            self.assertTrue(d.alive())
            self.assertEqual(d.stop(), 0)

    def test_one_frame_over_the_limit_fails_the_session(self):
        self.over_the_limit("many-frames", MAX_FRAMES + 1, "frames", MAX_FRAMES)

    def test_one_stack_over_the_limit_fails_the_session(self):
        self.over_the_limit("many-stacks", MAX_STACKS + 1, "stacks", MAX_STACKS)

    def test_stacks_up_to_the_limit_are_accepted(self):
        with tempfile.TemporaryDirectory() as tmp, Daemon(tmp) as d:
            run_client(d.sock, "many-stacks", "full", events=100,
                       extra=["--defs", str(MAX_STACKS)], timeout=120)
            s = finished_session(d.db, "full", timeout=60)
            self.assertEqual(s["status"], "exited")
            # All the new ids name one stack: with the client's first two, the database
            # holds three.
            self.assertEqual(query(d.db, "SELECT count(*) AS n FROM stack")[0]["n"], 3)


class LiveLimit(unittest.TestCase):
    def test_allocations_over_the_live_limit_are_dropped_and_counted(self):
        limit = 40
        with tempfile.TemporaryDirectory() as tmp, \
                Daemon(tmp, args=["--max-live-allocs", str(limit)]) as d:
            # The normal scenario keeps up to 65 allocations live, so some go over.
            (c,) = run_client(d.sock, "normal", "busy", events=2000)
            (o,) = run_client(d.sock, "normal", "other", events=2000)
            s = finished_session(d.db, "busy")
            self.assertEqual(s["status"], "exited")
            self.assertEqual(s["events_received"], 2000)
            stored = query(d.db, "SELECT count(*) AS n FROM allocations WHERE session_id = ?",
                           (s["session_id"],))[0]["n"]
            untracked = s["events_dropped"] - 3   # the client reports 3 dropped itself
            self.assertGreater(untracked, 0)
            self.assertEqual(stored + untracked, c["allocs"])
            # Never more stored allocations live at once than the limit: replay the rows.
            rows = query(d.db, "SELECT ts_ns, freed_ns FROM allocations WHERE session_id = ?",
                         (s["session_id"],))
            marks = sorted([(r["ts_ns"], 1) for r in rows] +
                           [(r["freed_ns"], -1) for r in rows if r["freed_ns"] is not None],
                           key=lambda m: (m[0], m[1]))
            live = peak = 0
            for _, delta in marks:
                live += delta
                peak = max(peak, live)
            self.assertEqual(peak, limit)
            d.wait_log("reached the limit of %d live sampled allocations per session" % limit)
            d.wait_log("%d allocations dropped (counted in events_dropped)" % untracked)
            # The limit is per session: the same stream in another session drops as much,
            # not everything.
            so = finished_session(d.db, "other")
            self.assertEqual(so["events_dropped"], s["events_dropped"])
            self.assertEqual(o["allocs"], c["allocs"])
            self.assertEqual(d.stop(), 0)

    def test_bad_max_live_allocs_is_a_usage_error(self):
        with tempfile.TemporaryDirectory() as tmp:
            for bad in ("0", "x", str(MAX_LIVE + 1)):
                p = subprocess.run([HEAPPROFD, "--db", os.path.join(tmp, "p.sqlite"),
                                    "--socket", os.path.join(tmp, "s"), "--max-live-allocs", bad],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
                self.assertEqual(p.returncode, 2)
                self.assertIn("--max-live-allocs: '%s' is not a number from 1 to %d" % (bad, MAX_LIVE),
                              p.stderr.decode())
                self.assertFalse(os.path.exists(os.path.join(tmp, "p.sqlite")))


FD_LIMIT = 64


def low_fd_limit():
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


class ConnectionLimit(unittest.TestCase):
    """More agents than heapprofd's file descriptors allow (ulimit -n): the ones over the
    limit are refused with a log line and counted, the others are served (issue 12,
    item 11)."""

    def test_connections_over_the_fd_limit_are_logged_and_counted(self):
        with tempfile.TemporaryDirectory() as tmp, \
                Daemon(tmp, preexec_fn=low_fd_limit) as d:
            socks = []
            try:
                for _ in range(FD_LIMIT + 16):
                    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    c.connect(d.sock)
                    socks.append(c)
                d.wait_log("refused connection from pid %d: over the limit of " % os.getpid())
                m = re.search(r"over the limit of (\d+) connections \(open file limit %d, "
                              r"ulimit -n\)" % FD_LIMIT, d.log())
                self.assertIsNotNone(m, d.log()[-2000:])
                limit = int(m.group(1))
                self.assertLess(limit, FD_LIMIT)
                # The refused ones see their connection closed; the others stay open.
                def closed():
                    n = 0
                    for c in socks:
                        try:
                            n += c.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
                        except BlockingIOError:
                            pass
                    return n
                wait_for(lambda: closed() == len(socks) - limit,
                         what="%d refused connections to be closed" % (len(socks) - limit))
                # A session still works within the limit once connections go away.
                for c in socks:
                    c.close()
                socks = []
                [r] = run_client(d.sock, "normal", "after", events=100)
                self.assertEqual(finished_session(d.db, "after")["events_received"], 100)
            finally:
                for c in socks:
                    c.close()
            self.assertEqual(d.stop(), 0)
            self.assertIn("refused %d connections over the limit of %d connections"
                          % (FD_LIMIT + 16 - limit, limit), d.log())


if __name__ == "__main__":
    unittest.main()
