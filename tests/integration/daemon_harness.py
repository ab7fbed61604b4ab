"""Helpers for the heapprofd tests: start the real daemon on a temporary socket and
database, run the codec-built test client, query the public views.

Every process started here is killed on exit of its context manager, even when the
test fails; callers keep their files inside a tempfile.TemporaryDirectory."""
import json
import os
import select
import signal
import sqlite3
import subprocess
import tempfile
import time
import unittest

BUILD_ROOT = os.environ.get("HEAPPROF_BUILD_ROOT", "")
HEAPPROFD = os.environ.get("HEAPPROFD") or os.path.join(BUILD_ROOT, "daemon", "heapprofd")
TESTCLIENT = os.environ.get("HEAPPROF_TESTCLIENT") or os.path.join(
    BUILD_ROOT, "tests", "integration", "hp_testclient")
# heapprofd with the fault VFS (tests/fault/hp_fault_vfs.h): HP_FAULT_DIR in its
# environment names the directory whose files "full" and "locked" switch faults on.
HEAPPROFD_FAULT = os.path.join(BUILD_ROOT, "tests", "integration", "heapprofd_fault")


def wait_for(pred, timeout=20.0, interval=0.02, what="condition"):
    """Polls pred() until it returns a true value; raises AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


def query(db, sql, args=()):
    con = sqlite3.connect(db, timeout=10)
    try:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute(sql, args)]
    finally:
        con.close()


def session(db, tag):
    """The sessions-view row of the test client tagged `tag`, or None."""
    argv = json.dumps(["hp_testclient", tag], separators=(",", ":"))
    rows = query(db, "SELECT * FROM sessions JOIN session_settings USING (session_id)"
                 " WHERE argv = ?", (argv,))
    assert len(rows) <= 1, rows
    return rows[0] if rows else None


def finished_session(db, tag, timeout=20.0):
    """Waits until the session of `tag` has ended (committed) and returns its row."""
    def done():
        try:
            s = session(db, tag)
        except sqlite3.OperationalError:
            return None
        return s if s and s["status"] != "running" else None
    return wait_for(done, timeout, what="session %s to end" % tag)


class Daemon:
    """A running heapprofd. Use as a context manager."""

    def __init__(self, tmpdir, db=None, sock=None, args=(), env=None, binary=None,
                 preexec_fn=None):
        self.db = db or os.path.join(tmpdir, "prof.sqlite")
        self.sock = sock or os.path.join(tmpdir, "hp.sock")
        self.logpath = os.path.join(tmpdir, "heapprofd-%d.log" % id(self))
        self.args = list(args)
        self.env = env
        self.binary = binary or HEAPPROFD
        self.preexec_fn = preexec_fn
        self.proc = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.kill()
        self.check_sanitizers()

    def check_sanitizers(self):
        """Fails on any AddressSanitizer/UBSan report in the daemon's log."""
        log = self.log() if os.path.exists(self.logpath) else ""
        for marker in ("runtime error:", "Sanitizer"):
            if marker in log:
                raise AssertionError("heapprofd reported a sanitizer error:\n" + log[-4000:])

    def start(self, timeout=10.0):
        self._log = open(self.logpath, "wb")
        self.proc = subprocess.Popen(
            [self.binary, "--db", self.db, "--socket", self.sock, "--log-level", "debug"]
            + self.args, stdout=subprocess.PIPE, stderr=self._log, env=self.env,
            preexec_fn=self.preexec_fn)
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode() if ready else ""
        if line != "heapprofd: listening on %s\n" % self.sock:
            self.kill()
            raise AssertionError("heapprofd did not start: stdout %r, log:\n%s" % (line, self.log()))

    def log(self):
        with open(self.logpath, "rb") as f:
            return f.read().decode(errors="replace")

    def wait_log(self, text, timeout=10.0):
        return wait_for(lambda: text in self.log(), timeout, what="log line %r" % text)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=30.0):
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("heapprofd did not exit within %.0f s after signal %d; "
                                 "the end of its log:\n%s" % (timeout, sig, self.log()[-4000:]))

    def kill(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self.proc.stdout.close()
        if getattr(self, "_log", None):
            self._log.close()


def client_cmd(sock, scenario, tag, events=1000, clients=1, batch=1000, extra=()):
    return [TESTCLIENT, "--socket", sock, "--scenario", scenario, "--tag", tag,
            "--events", str(events), "--clients", str(clients), "--batch", str(batch)] + list(extra)


def run_client(sock, scenario, tag, events=1000, clients=1, batch=1000, extra=(), timeout=60):
    """Runs the test client to completion; returns its per-client JSON summaries."""
    p = subprocess.run(client_cmd(sock, scenario, tag, events, clients, batch, extra),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError("hp_testclient %s failed (%d): %s" % (scenario, p.returncode,
                                                                 p.stderr.decode()))
    return [json.loads(l) for l in p.stdout.decode().splitlines() if l.startswith("{")]


class Client:
    """A test client running in the background. Use as a context manager."""

    def __init__(self, sock, scenario, tag, events=1000, clients=1, batch=1000, extra=()):
        self.proc = subprocess.Popen(client_cmd(sock, scenario, tag, events, clients, batch, extra),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f and not f.closed:
                f.close()

    def wait_line(self, text, timeout=30.0):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode() if ready else ""
        assert line.strip() == text, "client printed %r, expected %r" % (line, text)

    def finish(self, timeout=60.0):
        if self.proc.stdin:
            self.proc.stdin.close()
            self.proc.stdin = None  # communicate() must not flush it again
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err.decode()
        return [json.loads(l) for l in out.decode().splitlines() if l.startswith("{")]


class SharedDaemonTest(unittest.TestCase):
    """A test class whose tests share one heapprofd (self.d), started once for the class
    in a temporary directory and checked for sanitizer reports at its end."""

    daemon_args = ()

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.d = Daemon(cls.tmp.name, args=cls.daemon_args)
        try:
            cls.d.start()
        except BaseException:
            cls.tmp.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.d.kill()
        try:
            cls.d.check_sanitizers()
        finally:
            cls.tmp.cleanup()


def _size_class_sql():
    """The bit length of size (0 for 0 or less) as SQL: agg_size's size_class."""
    return 'CASE WHEN size <= 0 THEN 0 %s ELSE 63 END' % ' '.join(
        'WHEN size < %d THEN %d' % (1 << k, k) for k in range(1, 63))


def site_mismatches(con):
    """Rows of agg_site (the site aggregate, schema/schema.sql) that differ from the same
    computation over the alloc rows, in either direction, in the buckets heapprofd has
    written (before each session's done_ns); 0 when they agree. Per session, line (the
    smallest frame id of its filename and lineno) and bucket: the net change of the live
    bytes of the rows whose stack has the line, and the highest level after any instant
    of the bucket, relative to its start, which counts too unless a change comes at the
    bucket's first instant."""
    return con.execute("""
      WITH ss AS (SELECT session_id s, bucket_ns w, done_ns done FROM agg_site_session),
      lines AS (SELECT DISTINCT sf.stack_id k, (SELECT min(g.id) FROM frame g
                  WHERE g.filename = f.filename AND g.lineno = f.lineno) line
                FROM stack_frame sf JOIN frame f ON f.id = sf.frame_id),
      ev AS (SELECT a.session_id s, l.line, a.ts_ns t, a.est_bytes d
               FROM alloc a JOIN lines l ON l.k = a.stack_id
               WHERE a.session_id IN (SELECT s FROM ss)
             UNION ALL
             SELECT a.session_id, l.line, a.freed_ns, -a.est_bytes
               FROM alloc a JOIN lines l ON l.k = a.stack_id
               WHERE a.freed_ns IS NOT NULL AND a.session_id IN (SELECT s FROM ss)),
      inst AS (SELECT ev.s, line, t, t - t % ss.w b, sum(d) d FROM ev JOIN ss ON ss.s = ev.s
               WHERE t - t % ss.w < ss.done GROUP BY ev.s, line, t),
      run AS (SELECT s, line, b, t, d, sum(d) OVER (PARTITION BY s, line, b ORDER BY t) lvl
              FROM inst),
      g AS (SELECT s, line, b, max(max(lvl), CASE WHEN min(t) = b THEN -9223372036854775808
                                                  ELSE 0 END) high,
                   sum(d) net
            FROM run GROUP BY s, line, b),
      want AS (SELECT * FROM g WHERE NOT (net = 0 AND high = 0))
      SELECT (SELECT count(*) FROM want LEFT JOIN agg_site a ON a.session_id = want.s
                AND a.frame_id = want.line AND a.bucket_ns = want.b
                AND a.net_bytes = want.net AND a.high_bytes = want.high
              WHERE a.session_id IS NULL)
           + abs((SELECT count(*) FROM agg_site) - (SELECT count(*) FROM want))
    """).fetchone()[0]


def aggregate_mismatches(con):
    """Rows of agg_stack and agg_size (the aggregates heapprofd keeps, schema/schema.sql)
    that differ from a GROUP BY over the alloc rows, in either direction, for the sessions
    that have aggregates, plus those of agg_site (site_mismatches); 0 when they agree.
    Counts are REAL sums added in another order, so they are compared to a relative
    1e-9."""
    return site_mismatches(con) + con.execute("""
      WITH r AS (SELECT * FROM alloc WHERE session_id IN (SELECT session_id FROM agg_session)),
      e AS (SELECT session_id s, ts_ns - ts_ns %% 1000000000 b, coalesce(stack_id, 0) k,
              total(est_bytes) ab, total(CAST(est_bytes AS REAL) / max(size, 1)) ac,
              count(*) an, 0 fb, 0 fc, 0 fn,
              total(CAST(est_bytes AS REAL) * max(est_bytes - size, 0)) av, 0 fv
              FROM r GROUP BY 1, 2, 3
            UNION ALL
            SELECT session_id, freed_ns - freed_ns %% 1000000000, coalesce(stack_id, 0), 0, 0,
              0, total(est_bytes), total(CAST(est_bytes AS REAL) / max(size, 1)), count(*),
              0, total(CAST(est_bytes AS REAL) * max(est_bytes - size, 0))
              FROM r WHERE freed_ns IS NOT NULL GROUP BY 1, 2, 3),
      g AS (SELECT s, b, k, sum(ab) ab, sum(ac) ac, sum(an) an, sum(fb) fb, sum(fc) fc,
              sum(fn) fn, sum(av) av, sum(fv) fv FROM e GROUP BY 1, 2, 3),
      z AS (SELECT session_id s, %s c, count(*) n,
              total(CAST(est_bytes AS REAL) / max(size, 1)) ec, total(est_bytes) eb
              FROM r GROUP BY 1, 2)
      SELECT (SELECT count(*) FROM g LEFT JOIN agg_stack a ON a.session_id = g.s
                AND a.bucket_ns = g.b AND a.stack_id = g.k AND a.alloc_bytes = g.ab
                AND a.alloc_samples = g.an AND a.freed_bytes = g.fb
                AND a.freed_samples = g.fn AND abs(a.alloc_count - g.ac) <= 1e-9 * max(1, g.ac)
                AND abs(a.freed_count - g.fc) <= 1e-9 * max(1, g.fc)
                AND abs(a.alloc_var - g.av) <= 1e-9 * max(1, g.av)
                AND abs(a.freed_var - g.fv) <= 1e-9 * max(1, g.fv)
              WHERE a.session_id IS NULL)
           + abs((SELECT count(*) FROM agg_stack) - (SELECT count(*) FROM g))
           + (SELECT count(*) FROM z LEFT JOIN agg_size a ON a.session_id = z.s
                AND a.size_class = z.c AND a.samples = z.n AND a.est_bytes = z.eb
                AND abs(a.est_count - z.ec) <= 1e-9 * max(1, z.ec) WHERE a.session_id IS NULL)
           + abs((SELECT count(*) FROM agg_size) - (SELECT count(*) FROM z))
    """ % _size_class_sql()).fetchone()[0]
