"""The tools over sessions whose agent adapted its sampling interval (issue 4, on-full
'adapt'): Reader.sampling_changes(), `heapprof sessions` and `top`, the HTML report's
warnings, and the `heapprof run` summary.

The databases are hand-built through the storage tables (tools_scenarios.py), with
sampling_change rows written as heapprofd writes them (test_adapt_daemon.py checks the
daemon's side). An older version 1 database without the table must read as "no change".
"""
import io
import os
import sqlite3
import subprocess
import sys
import tempfile
import unittest

import tools_scenarios as sc

from heapprof import reader
from heapprof import runner

PY = os.environ.get('HEAPPROF_PYTHON', sys.executable)
SCRIPT = os.path.join(os.path.dirname(PY), 'heapprof')
NS = sc.NS

# Session 1 (the spike scenario, interval 4096 as tools_scenarios writes it) raised its
# interval three times; session 2 (leak) never changed it.
CHANGES = [(0.21, 8192), (0.21, 16384), (1.5, 65536)]


def add_changes(path, scenario, changes):
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.executemany('INSERT INTO sampling_change(session_id, ts_ns, sample_interval_bytes)'
                        ' VALUES (?, ?, ?)',
                        [(scenario.session_id, scenario.ns(t), i) for t, i in changes])
    finally:
        con.close()


def set_interval(path, session_id, interval):
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute('UPDATE session SET sample_interval_bytes = ? WHERE id = ?',
                    (interval, session_id))
    finally:
        con.close()


def heapprof(*args):
    return subprocess.run([SCRIPT] + list(args), capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


class AdaptedSessions(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix='hp-adapt-tools-')
        cls.spike, cls.leak = sc.spike(1), sc.leak(2)
        cls.db = sc.write_db(os.path.join(cls.tmp.name, 'adapted.sqlite'), cls.spike, cls.leak)
        add_changes(cls.db, cls.spike, CHANGES)
        # A database as heapprof wrote it before the sampling_change table existed.
        cls.old = sc.write_db(os.path.join(cls.tmp.name, 'old.sqlite'), sc.spike(1))
        con = sqlite3.connect(cls.old, isolation_level=None)
        con.executescript('DROP VIEW sampling_changes; DROP TABLE sampling_change;')
        con.close()

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    # ------------------------------------------------------------ Reader
    def test_reader_lists_the_changes_in_seconds_from_the_start(self):
        with reader.read(self.db, session=1) as r:
            got = r.sampling_changes()
            self.assertEqual([i for _, i in got], [8192, 16384, 65536])
            for (t, _), (want, _) in zip(got, CHANGES):
                self.assertAlmostEqual(t, want, places=9)
            self.assertEqual(r.metadata.sample_interval_bytes, 4096)
            self.assertEqual(r.metadata.final_interval_bytes, 65536)
            self.assertEqual(r.interval_at(0.1), 4096)
            self.assertEqual(r.interval_at(0.21), 16384)
            self.assertEqual(r.interval_at(1.0), 16384)
            self.assertEqual(r.interval_at(2.9), 65536)
            with self.assertRaises(reader.ReaderError):
                r.interval_at(99)
        with reader.read(self.db, session=2) as r:
            self.assertEqual(r.sampling_changes(), [])
            self.assertEqual(r.metadata.interval_changes, ())
            self.assertEqual(r.metadata.final_interval_bytes, 4096)

    def test_sessions_api_carries_the_changes_of_each_session(self):
        by_id = {s.session_id: s for s in reader.sessions(self.db)}
        self.assertEqual(by_id[1].interval_changes,
                         tuple((self.spike.ns(t), i) for t, i in CHANGES))
        self.assertEqual(by_id[2].interval_changes, ())

    def test_database_without_the_table_reads_as_no_change(self):
        with reader.read(self.old) as r:
            self.assertEqual(r.sampling_changes(), [])
            self.assertEqual(r.metadata.final_interval_bytes, 4096)
            # The rest of the Reader is unaffected.
            self.assertGreater(r.peak()[1], 0)

    # ------------------------------------------------------------ heapprof sessions
    def test_sessions_table_shows_where_the_interval_started_and_ended(self):
        p = heapprof('sessions', '--db', self.db)
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = p.stdout.splitlines()
        row1 = [l for l in lines if l.split()[:1] == ['1']]
        row2 = [l for l in lines if l.split()[:1] == ['2']]
        self.assertEqual(len(row1), 1, lines)
        self.assertRegex(row1[0], r'\bevery 4\.0 KiB -> 64\.0 KiB\s')
        self.assertRegex(row2[0], r'\bevery 4\.0 KiB\s')
        self.assertNotIn('->', row2[0])
        notes = [l for l in lines if 'could not keep up' in l]
        self.assertEqual(notes, [
            'session 1: heapprofd could not keep up, so the agent raised its sampling '
            'interval from 4.0 KiB to 64.0 KiB (3 times, first at +0.21 s); estimates stay '
            'unbiased, with fewer samples after each change'])

    def test_sessions_table_of_an_every_allocation_session(self):
        with tempfile.TemporaryDirectory() as tmp:
            s = sc.steady(1)
            db = sc.write_db(os.path.join(tmp, 'one.sqlite'), s)
            set_interval(db, 1, 1)
            add_changes(db, s, [(0.5, 2), (0.5, 4), (0.6, 4096)])
            p = heapprof('sessions', '--db', db)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertRegex(p.stdout, r'\n\s*1\s.*\bevery alloc -> 4\.0 KiB\s')
            self.assertIn('from 1 B to 4.0 KiB (3 times, first at +0.50 s)', p.stdout)

    def test_sessions_table_of_an_older_database(self):
        p = heapprof('sessions', '--db', self.old)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertNotIn('->', p.stdout)
        self.assertNotIn('could not keep up', p.stdout)
        self.assertRegex(p.stdout, r'\bevery 4\.0 KiB\s')

    def test_top_header_says_the_interval_was_raised(self):
        p = heapprof('top', '--db', self.db, '--session', '1')
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn('(sampling every 4.0 KiB, raised to every 64.0 KiB by the end '
                      '(3 changes from +0.21 s))', p.stdout)
        p = heapprof('top', '--db', self.db, '--session', '2')
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn('(sampling every 4.0 KiB)', p.stdout)

    def test_report_warns_that_the_interval_was_raised(self):
        from heapprof import report
        warnings = report.build_data(self.db, session=1)['warnings']
        self.assertIn('heapprofd could not keep up, so the agent raised its sampling interval '
                      'from 4,096 to 65,536 bytes (3 times, first at +0.21 s). Estimates stay '
                      'unbiased', ' '.join(warnings))
        for db, sid in ((self.db, 2), (self.old, 1)):
            warnings = report.build_data(db, session=sid)['warnings']
            self.assertFalse([w for w in warnings if 'could not keep up' in w], warnings)

    # ------------------------------------------------------------ heapprof run summary
    def summary(self, db):
        out = io.StringIO()
        runner.summarize(db, out)
        return out.getvalue().splitlines()

    def test_run_summary_says_the_interval_was_raised(self):
        with tempfile.TemporaryDirectory() as tmp:
            s = sc.leak(1)
            db = sc.write_db(os.path.join(tmp, 'run.sqlite'), s, sc.steady(2))
            set_interval(db, 1, 1)
            add_changes(db, s, [(0.21, 2), (0.21, 4), (0.9, 4096)])
            lines = self.summary(db)
            heads = [i for i, l in enumerate(lines) if l.startswith('session ')]
            self.assertEqual(len(heads), 2, lines)
            first, second = lines[heads[0]:heads[1]], lines[heads[1]:]
            adapted = [l.strip() for l in first if 'could not keep up' in l]
            self.assertEqual(adapted, [
                'heapprof: heapprofd could not keep up; the sampling interval was raised '
                'from 1 to 4096 bytes (3 times, first at +0.21 s); estimates stay unbiased'])
            self.assertFalse([l for l in second if 'could not keep up' in l], lines)

    def test_run_summary_of_an_older_database_has_no_such_line(self):
        lines = self.summary(self.old)
        self.assertTrue(lines[0].startswith('session 1 '), lines)
        self.assertFalse([l for l in lines if 'could not keep up' in l], lines)


if __name__ == '__main__':
    unittest.main()
