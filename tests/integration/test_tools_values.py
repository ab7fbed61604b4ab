"""The tools over stored values they must never fail on, and over sessions whose end was
not recorded (suite 'tools').

Databases are written like heapprofd writes them (tools_scenarios.py), then altered to
hold what older daemons stored or a hostile program sent: text that is not UTF-8, est_bytes
near 2**63 (sums overflow SQLite's 64-bit integers), timestamps past 2**63 ns stored
negative or near the top of the range, and the statuses of sessions that ended without
their final flush ('disconnected'), whose hooks were replaced ('hooks_replaced', schema
version 2) or whose status this build does not know. Every command runs as a real process.
"""
import io
import json
import os
import re
import sqlite3
import subprocess
import tempfile
import unittest

import tools_scenarios as sc

from heapprof import reader as hr
from heapprof import runner

PY = os.environ.get('HEAPPROF_PYTHON')
SCRIPT = os.path.join(os.path.dirname(PY), 'heapprof') if PY else 'heapprof'
TIMEOUT = 60
INT64_MAX = (1 << 63) - 1
REPLACEMENT = '\ufffd'


def heapprof(*args):
    return subprocess.run([SCRIPT] + list(args), capture_output=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL)


def alter(path, *statements):
    """Runs statements on the storage tables, CHECK constraints off (a status this schema
    version does not allow is what a newer heapprofd may write)."""
    con = sqlite3.connect(path)
    try:
        con.execute('PRAGMA ignore_check_constraints = ON')
        for sql in statements:
            if isinstance(sql, tuple):
                con.execute(*sql)
            else:
                con.execute(sql)
        con.commit()
    finally:
        con.close()


def shift_times(path, delta):
    """Moves every timestamp of the database by delta ns, in SQL (Python ints would not
    reach past 2**63 either)."""
    alter(path,
          ('UPDATE session SET started_ns = started_ns + ?, ended_ns = ended_ns + ?',
           (delta, delta)),
          ('UPDATE alloc SET ts_ns = ts_ns + ?, freed_ns = freed_ns + ?', (delta, delta)),
          ('UPDATE timeline_point SET ts_ns = ts_ns + ?', (delta,)))


# Every command a user runs over a recording, with the output it writes (if any).
def commands(d):
    return [['sessions'], ['sessions', '--json'], ['top'], ['top', '--at', 'end'], ['leaks'],
            ['stats'], ['flame', '-o', '-'], ['flame', '-o', os.path.join(d, 'f.svg')],
            ['flow', '-o', os.path.join(d, 'f.dot'), '--render', 'none'],
            ['plot', '-o', os.path.join(d, 'p.csv')], ['plot', '-o', os.path.join(d, 'p.svg')],
            ['report', '-o', os.path.join(d, 'r.html')]]


class StoredValuesTest(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory(prefix='hp-tools-values-')
        self.addCleanup(tmp.cleanup)
        self.dir = tmp.name
        self.db = sc.write_db(os.path.join(self.dir, 'v.sqlite'), sc.leak())

    def run_all(self):
        """Runs every command; each must succeed without a traceback. Returns
        {command name: stdout + stderr text}."""
        out = {}
        for cmd in commands(self.dir):
            p = heapprof(*cmd, '--db', self.db)
            text = (p.stdout + p.stderr).decode('utf-8', 'strict')
            self.assertEqual(p.returncode, 0, '%s: %s' % (cmd, text))
            self.assertNotIn('Traceback', text, cmd)
            out[' '.join(cmd[:2]) if cmd[1:2] == ['--json'] else cmd[0]] = text
        summary = io.StringIO()
        runner.summarize(self.db, summary)
        out['summary'] = summary.getvalue()
        return out

    def test_text_that_is_not_utf8_shows_replacement_characters(self):
        # argv ["app.py", "caf\xe9"] in Latin-1, and a function name with a stray byte.
        alter(self.db,
              "UPDATE session SET argv = CAST(X'5b226170702e7079222c2022636166e9225d' AS TEXT),"
              " executable = CAST(X'2f7573722f62696e2fff' AS TEXT)",
              "UPDATE frame SET function = CAST(X'68616e646c65ff5f72657175657374' AS TEXT)"
              " WHERE function = 'handle_request' AND lineno = 17")
        out = self.run_all()
        self.assertIn('app.py caf' + REPLACEMENT, out['sessions'])
        self.assertEqual(json.loads(out['sessions --json'])[0]['argv'],
                         ['app.py', 'caf' + REPLACEMENT])
        self.assertIn('handle%s_request' % REPLACEMENT, out['leaks'])
        self.assertIn('handle%s_request' % REPLACEMENT, out['top'])
        self.assertIn('handle%s_request' % REPLACEMENT, out['summary'])
        with open(os.path.join(self.dir, 'r.html'), encoding='utf-8') as f:
            self.assertIn('caf' + REPLACEMENT, f.read())
        self.assertEqual(hr.sessions(self.db)[0].argv, ['app.py', 'caf' + REPLACEMENT])

    def test_est_bytes_near_2_63_do_not_overflow_the_sums(self):
        # Two never-freed samples of the leaking line, each claiming nearly 2**63 bytes:
        # their SQL SUM overflows a 64-bit integer.
        alter(self.db, ('UPDATE alloc SET est_bytes = ? WHERE id IN (SELECT id FROM alloc'
                        ' WHERE freed_ns IS NULL ORDER BY id DESC LIMIT 2)', (INT64_MAX - 7,)))
        out = self.run_all()
        for name in ('top', 'leaks', 'stats', 'summary'):
            self.assertRegex(out[name], r'\d\d\d\d+\.\d TiB', name)
        with hr.read(self.db) as r:
            self.assertGreater(r.live_bytes_at(r.duration), 2 * (INT64_MAX - 7) * 0.99)
            self.assertGreater(r.leaks()[0].bytes, 2 * (INT64_MAX - 7) * 0.99)

    def test_timestamps_stored_negative(self):
        # A wall clock past 2**63 ns was stored negative by older daemons.
        shift_times(self.db, -(1 << 62) - sc.START_NS)
        out = self.run_all()
        self.assertIn('handle_request', out['leaks'])
        self.assertRegex(out['sessions'], r'exited\s+\S.*3\.00 s')
        with hr.read(self.db) as r:
            self.assertLess(r.metadata.started_ns, 0)
            self.assertAlmostEqual(r.duration, 3.0)
            self.assertEqual(r.leaks()[0].lineno, 17)

    def test_timestamps_near_2_63(self):
        shift_times(self.db, INT64_MAX - sc.START_NS - 4 * sc.NS)
        out = self.run_all()
        self.assertIn('handle_request', out['leaks'])
        with hr.read(self.db) as r:
            self.assertAlmostEqual(r.duration, 3.0)
            t, _ = r.peak()
            self.assertGreater(t, 2.5)

    def test_an_end_before_the_start(self):
        # A wall clock set back while the program ran: the end is before the start.
        alter(self.db, 'UPDATE session SET ended_ns = started_ns - 1000000000')
        out = self.run_all()
        self.assertIn('handle_request', out['top'])
        with hr.read(self.db) as r:
            self.assertGreaterEqual(r.duration, 0.0)


class UnknownEndTest(unittest.TestCase):
    """A session that ended without its final flush (or whose recording stopped early)
    cannot say what was still allocated at its end: the tools must say that, not list
    leaks (issue 13 item 3)."""

    def setUp(self):
        tmp = tempfile.TemporaryDirectory(prefix='hp-tools-end-')
        self.addCleanup(tmp.cleanup)
        self.dir = tmp.name
        self.db = sc.write_db(os.path.join(self.dir, 'e.sqlite'), sc.leak())

    def check_unknown_end(self, status, why):
        alter(self.db, ("UPDATE session SET status = ?", (status,)))
        p = heapprof('leaks', '--db', self.db)
        out = p.stdout.decode()
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = out.splitlines()
        self.assertRegex(lines[0], r"^heapprof leaks: session 1 \(pid 2000\) ended '%s' \(%s\): "
                         r"what was still allocated at its end is unknown, so no leaks are "
                         r"reported$" % (status, re.escape(why)))
        self.assertIn('3.8 MiB in 61 sampled allocations have no recorded free', out)
        self.assertNotIn('never freed', out)
        self.assertNotIn('handle_request', out)
        # top at the end says the same about its figures.
        top = heapprof('top', '--db', self.db, '--at', 'end').stdout.decode()
        self.assertIn("warning: session 1 ended '%s' (%s): nothing was recorded after 2.980 s, "
                      "so allocations freed later still count as live here" % (status, why), top)
        # Before the last recorded event, the figures are the recording's: no warning.
        top = heapprof('top', '--db', self.db, '--at', '2.5').stdout.decode()
        self.assertNotIn('warning', top)
        # sessions says why, in one note per such session.
        sessions = heapprof('sessions', '--db', self.db).stdout.decode()
        self.assertRegex(sessions, r'\b%s\b' % status)
        self.assertIn("session 1: %s: %s" % (status, why), sessions)
        # `heapprof run`'s summary does not claim a figure at exit.
        summary = io.StringIO()
        runner.summarize(self.db, summary)
        self.assertIn('at exit: unknown (%s)' % why, summary.getvalue())
        self.assertNotIn('still allocated', summary.getvalue())
        # The report's leaks tab has no leaks, and says why.
        html = os.path.join(self.dir, 'r.html')
        p = heapprof('report', '--db', self.db, '-o', html)
        self.assertEqual(p.returncode, 0, p.stderr)
        with open(html, encoding='utf-8') as f:
            data = json.loads(re.search(r'<script id="hp-data" type="application/json">(.*?)'
                                        r'</script>', f.read(), re.S).group(1))
        self.assertEqual(data['leaks'], [])
        self.assertIn(why, data['leaks_unknown'])

    def test_disconnected(self):
        self.check_unknown_end('disconnected', 'it stopped without its final flush')

    def test_hooks_replaced(self):
        self.check_unknown_end('hooks_replaced', 'its allocator hooks were replaced, so '
                               'recording ended early')

    def test_a_status_this_build_does_not_know(self):
        self.check_unknown_end('vanished', 'a status this heapprof does not know')

    def test_a_complete_session_still_lists_its_leaks(self):
        out = heapprof('leaks', '--db', self.db).stdout.decode()
        self.assertIn('never freed', out)
        self.assertIn('handle_request', out)
        self.assertNotIn('unknown', out)


if __name__ == '__main__':
    unittest.main()
