"""heapprof.reader against hand-built spike / leak / steady databases (suite 'tools').

Expected figures come from the scenarios' own allocation lists (tools_scenarios.py) or from
plain SQL over the public views, never from the Reader itself.
"""
import os
import sqlite3
import tempfile
import unittest

import tools_scenarios as sc

from heapprof import _db
from heapprof import reader as hr


class ReaderTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix='hp-tools-reader-')
        d = cls.tmp.name
        cls.spike = sc.spike()
        cls.leak = sc.leak()
        cls.steady = sc.steady()
        cls.spike_db = sc.write_db(os.path.join(d, 'spike.sqlite'), cls.spike)
        cls.leak_db = sc.write_db(os.path.join(d, 'leak.sqlite'), cls.leak)
        cls.steady_db = sc.write_db(os.path.join(d, 'steady.sqlite'), cls.steady)
        # Two sessions in one file: spike (1) then leak (2).
        cls.both = sc.write_db(os.path.join(d, 'both.sqlite'), sc.spike(1), sc.leak(2))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    # ------------------------------------------------------------ sessions and metadata
    def test_sessions_lists_every_session_and_read_defaults_to_newest(self):
        ss = hr.sessions(self.both)
        self.assertEqual([s.session_id for s in ss], [1, 2])
        self.assertEqual([s.pid for s in ss], [1000, 2000])
        self.assertEqual(ss[0].argv, ['spike.py', '--flag'])
        self.assertAlmostEqual(ss[0].duration, 3.0)
        with hr.read(self.both) as r:
            self.assertEqual(r.session_id, 2)
        # The package-level entry points are the same API.
        import heapprof
        with heapprof.read(self.both, session=1) as r:
            self.assertIsInstance(r, hr.Reader)
            self.assertEqual(r.session_id, 1)
        self.assertEqual(heapprof.sessions(self.both), ss)
        with hr.read(self.both, session=1) as r:
            self.assertEqual(r.metadata.pid, 1000)
            self.assertEqual(r.metadata.status, 'exited')
            self.assertEqual(r.metadata.python_version, '3.11.7')
            self.assertEqual(r.metadata.sample_interval_bytes, 4096)
            self.assertEqual(r.metadata.events_received, len(self.spike.allocs) * 2)
            self.assertEqual(r.metadata.events_dropped, 0)
            self.assertEqual(r.metadata.max_stack_depth, 64)
            self.assertIsNone(r.metadata.sample_buckets)
            self.assertIsNone(r.metadata.error)
            self.assertAlmostEqual(r.duration, 3.0)

    def test_default_is_the_newest_root_session_not_a_child_process(self):
        # Review finding: the default used to be the newest session, which after
        # `heapprof run app.py` with multiprocessing is a child (resource_tracker, worker).
        with tempfile.TemporaryDirectory() as d:
            path = sc.family_db(os.path.join(d, 'family.sqlite'))
            ss = hr.sessions(path)
            self.assertEqual([(s.session_id, s.pid, s.ppid) for s in ss],
                             [(1, 1000, 1), (2, 2000, 1000), (3, 2001, 1000)])
            self.assertEqual(hr.default_session(ss).session_id, 1)
            with hr.read(path) as r:
                self.assertEqual(r.session_id, 1)
                self.assertEqual(r.metadata.argv, ['spike.py', '--flag'])
                self.assertRegex(r.default_note, r'family\.sqlite holds 3 sessions; showing 1 '
                                 r'\(pid 1000, spike\.py --flag\) \(choose with --session\)$')
            # An explicit session still wins, and then nothing needs explaining.
            with hr.read(path, session=3) as r:
                self.assertEqual((r.session_id, r.metadata.pid), (3, 2001))
                self.assertIsNone(r.default_note)
            # pids are reused: a session whose ppid is the pid of a session that had already
            # ended when it started is a root of its own, and being newest it is the default.
            con = sqlite3.connect(path)
            con.execute('UPDATE session SET started_ns = started_ns + 7200 * 1000000000,'
                        ' ended_ns = ended_ns + 7200 * 1000000000 WHERE id = 3')
            con.commit()
            con.close()
            with hr.read(path) as r:
                self.assertEqual(r.session_id, 3)
            # A parent still running (no end yet) is a parent of everything started after it.
            con = sqlite3.connect(path)
            con.execute("UPDATE session SET ended_ns = NULL, status = 'running' WHERE id = 1")
            con.commit()
            con.close()
            with hr.read(path) as r:
                self.assertEqual(r.session_id, 1)
        with hr.read(self.spike_db) as r:
            self.assertIsNone(r.default_note)      # one session: nothing to say
        self.assertIsNone(hr.default_session([]))

    def test_bucket_sampling_and_broken_sessions_are_described(self):
        with tempfile.TemporaryDirectory() as d:
            path = sc.write_db(os.path.join(d, 'b.sqlite'), sc.steady())
            con = sqlite3.connect(path)
            con.execute("UPDATE session SET sample_interval_bytes = 0,"
                        " sample_buckets = '[[128, 0.0001], [8192, 0.1]]',"
                        " status = 'protocol_error', error = 'EVENTS before HELLO'")
            con.commit()
            con.close()
            (s,) = hr.sessions(path)
            self.assertEqual(s.sample_buckets, [[128, 0.0001], [8192, 0.1]])
            self.assertEqual((s.status, s.error), ('protocol_error', 'EVENTS before HELLO'))

    def test_databases_with_the_views_of_an_earlier_build_are_read(self):
        # An earlier build of schema version 1 put the extras at the end of sessions and
        # had no session_settings; a read-only reader cannot update views, so it reads both.
        for old_columns in (', sample_buckets, max_stack_depth, error', ', error', ''):
            with self.subTest(extra=old_columns), tempfile.TemporaryDirectory() as d:
                path = sc.write_db(os.path.join(d, 'old.sqlite'), sc.steady())
                con = sqlite3.connect(path)
                con.executescript(
                    "DROP VIEW sessions; DROP VIEW session_settings;"
                    " CREATE VIEW sessions AS SELECT id AS session_id, pid, ppid, argv,"
                    " executable, python_version, started_ns, ended_ns, sample_interval_bytes,"
                    " status, events_received, events_dropped%s FROM session;"
                    " UPDATE session SET status = 'protocol_error', error = 'bad frame';"
                    % old_columns)
                con.close()
                (s,) = hr.sessions(path)
                self.assertEqual(s.status, 'protocol_error')
                self.assertEqual(s.error, 'bad frame' if 'error' in old_columns else None)
                self.assertEqual(s.max_stack_depth, 64 if 'max_stack' in old_columns else None)
                self.assertIsNone(s.sample_buckets)
                with hr.read(path) as r:
                    self.assertEqual(r.metadata, s)

    # ------------------------------------------------------------ time and peak
    def test_peak_is_when_the_spike_is_held(self):
        with hr.read(self.spike_db) as r:
            t, b = r.peak()
            self.assertGreaterEqual(t, self.spike.marks['peak_lo'] - 1e-6)
            self.assertLess(t, self.spike.marks['peak_hi'])
            expected = max(sum(self.spike.live_at(x).values()) for x in
                           [a[0] for a in self.spike.allocs])
            self.assertEqual(b, expected)
            self.assertEqual(r.live_bytes_at(t), expected)
            self.assertEqual(r.resolve_time('peak'), t)
            self.assertAlmostEqual(r.resolve_time('end'), 3.0)
            self.assertEqual(r.resolve_time('1.5'), 1.5)

    def test_times_outside_the_session_are_refused(self):
        with hr.read(self.spike_db) as r:
            for bad in (-1, 3.5, 1e9, 'later', float('nan')):
                with self.assertRaises(hr.ReaderError) as cm:
                    r.snapshot_at(bad) if not isinstance(bad, str) else r.resolve_time(bad)
                self.assertNotIn('\n', str(cm.exception))
            with self.assertRaisesRegex(hr.ReaderError, r'outside session 1.*0 to 3\.000 s'):
                r.resolve_time('4')

    # ------------------------------------------------------------ snapshots
    def test_snapshot_matches_the_scenario_at_many_times(self):
        for scen, path in ((self.spike, self.spike_db), (self.leak, self.leak_db),
                           (self.steady, self.steady_db)):
            with hr.read(path) as r:
                for t in (0.0, 0.005, 0.5, 1.2, 1.25, 1.5, 1.8, 1.85, 2.55, 2.999, 3.0):
                    want = {(None if k is None else scen.db_stack_id(k)): v
                            for k, v in scen.live_at(t).items() if v}
                    self.assertEqual(r.snapshot_at(t), want, '%s at %s' % (scen.name, t))

    def test_same_answers_with_the_proposed_read_indexes(self):
        """The plans used when indexes on freed_ns and stack_id exist (late-in-session
        snapshots, site series) give the same answers as the plain ones."""
        with tempfile.TemporaryDirectory() as d:
            path = sc.write_db(os.path.join(d, 'idx.sqlite'), sc.spike())
            con = sqlite3.connect(path)
            con.execute('CREATE INDEX IF NOT EXISTS alloc_by_session_freed'
                        ' ON alloc (session_id, freed_ns)')
            con.execute('CREATE INDEX IF NOT EXISTS alloc_by_session_stack'
                        ' ON alloc (session_id, stack_id)')
            con.commit()
            con.close()
            with hr.read(path) as r, hr.read(self.spike_db) as plain:
                self.assertTrue(r._has_freed_index())
                self.assertFalse(plain._has_freed_index())
                for t in (0.1, 1.0, 1.5, 2.3, 2.55, 2.95, 3.0):
                    self.assertEqual(r.snapshot_at(t), plain.snapshot_at(t), t)
                    self.assertEqual(r.live_bytes_at(t), plain.live_bytes_at(t), t)
                self.assertGreater(r._fraction_before(r._ns(2.95)), hr._FREED_SCAN_FROM)
                self.assertTrue(r._has_index('session_id, stack_id'))
                self.assertFalse(plain._has_index('session_id, stack_id'))
                sites = ['spike.py:22', 'spike.py:12', 'spike.py:30', 'spike.py:40']
                self.assertEqual(r.site_series(sites), plain.site_series(sites))
                self.assertEqual(r.peak(), plain.peak())
                self.assertEqual(r.leaks(), plain.leaks())

    def test_trace_gives_frames_innermost_first_with_source_lines(self):
        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, 'app.py')
            with open(src, 'w') as f:
                f.write('import os\n\ndef f():\n    return bytearray(10)\n')
            s = sc.Scenario('trace', 1.0)
            st = s.stack(('f', src, 4), ('<module>', src, 6), ('gone', '/nonexistent.py', 3))
            s.alloc(0.1, 10, 4096, st)
            path = sc.write_db(os.path.join(d, 't.sqlite'), s)
            with hr.read(path) as r:
                frames = r.trace(st)
                self.assertEqual([(x.function, x.lineno) for x in frames],
                                 [('f', 4), ('<module>', 6), ('gone', 3)])
                self.assertEqual(frames[0].line, 'return bytearray(10)')
                self.assertIsNone(frames[1].line)      # past the end of the file
                self.assertIsNone(frames[2].line)      # unreadable file
                with self.assertRaises(hr.ReaderError):
                    r.trace(999)

    # ------------------------------------------------------------ series
    def test_timeline_is_the_recorded_series(self):
        with hr.read(self.spike_db) as r:
            got = r.timeline()
        rows = self.spike.timeline_rows()
        self.assertEqual(len(got), len(rows))
        for (t, b), row in zip(got, rows):
            self.assertAlmostEqual(t, (row[0] - self.spike.start_ns) / sc.NS)
            self.assertEqual(b, row[1])
        self.assertEqual(max(b for _, b in got), 100 * 100 * 1024 + 4096 * 6 + 8192)

    def test_site_series_follows_the_spike_and_the_leak(self):
        with hr.read(self.spike_db) as r:
            series = r.site_series(['spike.py:22', sc.SPIKE_FILE + ':12'])
            spike = dict(series['spike.py:22'])
            churn = series[sc.SPIKE_FILE + ':12']
            tl = r.timeline()
        self.assertEqual([t for t, _ in churn], [t for t, _ in tl])
        self.assertEqual(spike[min(spike, key=lambda t: abs(t - 1.5))], 100 * 100 * 1024)
        self.assertEqual(spike[min(spike, key=lambda t: abs(t - 1.0))], 0)
        self.assertEqual(spike[min(spike, key=lambda t: abs(t - 2.0))], 0)
        # The churn keeps 5-6 blocks of 4096 live all along.
        self.assertTrue(all(b in (4096 * 5, 4096 * 6) for t, b in churn if 0.1 < t < 2.9))
        # Per interval, the site never exceeds the total.
        for (t, total), (_, part) in zip(tl, series['spike.py:22']):
            self.assertLessEqual(part, total)
        with hr.read(self.leak_db) as r:
            leak = r.site_series(['leak.py:17'])['leak.py:17']
        self.assertEqual(leak[-1][1], 60 * 64 * 1024)
        self.assertEqual(sorted(b for _, b in leak), [b for _, b in leak])   # only grows

    def test_unknown_site_is_a_clear_error(self):
        with hr.read(self.spike_db) as r:
            with self.assertRaisesRegex(hr.ReaderError, 'no recorded frame at spike.py:999'):
                r.site_series(['spike.py:999'])
            with self.assertRaisesRegex(hr.ReaderError, 'file:line'):
                r.site_series(['spike.py'])

    # ------------------------------------------------------------ sites
    def test_top_sites_agree_with_direct_sql(self):
        t = 1.5
        with hr.read(self.spike_db) as r:
            sites = r.top_sites(t, n=None, by='self')
            cum = r.top_sites(t, n=None, by='cumulative')
        con = _db.open_db(self.spike_db)
        ns = self.spike.ns(t)
        want_self = dict(con.execute(
            'SELECT f.filename || ":" || f.lineno, SUM(a.est_bytes) FROM allocations a'
            ' JOIN stack_frames sf ON sf.stack_id = a.stack_id AND sf.depth = 0'
            ' JOIN frames f ON f.frame_id = sf.frame_id'
            ' WHERE a.session_id = 1 AND a.ts_ns <= ? AND (a.freed_ns IS NULL OR a.freed_ns > ?)'
            ' GROUP BY f.frame_id', (ns, ns)).fetchall())
        want_cum = dict(con.execute(
            'SELECT f.filename || ":" || f.lineno, SUM(a.est_bytes) FROM allocations a'
            ' JOIN (SELECT DISTINCT stack_id, frame_id FROM stack_frames) sf'
            ' ON sf.stack_id = a.stack_id JOIN frames f ON f.frame_id = sf.frame_id'
            ' WHERE a.session_id = 1 AND a.ts_ns <= ? AND (a.freed_ns IS NULL OR a.freed_ns > ?)'
            ' GROUP BY f.frame_id', (ns, ns)).fetchall())
        con.close()
        self.assertEqual({'%s:%d' % (s.filename, s.lineno): s.self_bytes for s in sites},
                         want_self)
        self.assertEqual({'%s:%d' % (s.filename, s.lineno): s.cum_bytes for s in cum},
                         want_cum)
        self.assertEqual((sites[0].function, sites[0].lineno), ('make_spike', 22))
        self.assertEqual(sites[0].self_count, 100)
        self.assertEqual(sites[0].samples, 100)
        self.assertEqual(cum[0].function, 'main')
        walk30 = [s for s in cum if (s.function, s.lineno) == ('walk', 30)][0]
        self.assertEqual(walk30.cum_bytes, 8192)             # on the stack twice, counted once
        self.assertEqual(cum[0].cum_bytes, sum(v for k, v in want_self.items()
                                               if 'decoder' not in k))
        self.assertEqual([s.self_bytes for s in sites],
                         sorted((s.self_bytes for s in sites), reverse=True))

    def test_no_stack_allocations_are_a_site_of_their_own(self):
        with hr.read(self.spike_db) as r:
            sites = r.top_sites(2.55)
            self.assertIn(hr.NO_STACK_LABEL, [s.function for s in sites])
            self.assertIn(None, r.snapshot_at(2.55))
            self.assertEqual(r.flame(2.55)[hr.NO_STACK_LABEL], 4096)

    def test_leaks_top_site_is_the_leaking_line(self):
        with hr.read(self.leak_db) as r:
            leaks = r.leaks()
        self.assertEqual((leaks[0].function, leaks[0].lineno), ('handle_request', 17))
        self.assertEqual(leaks[0].bytes, 60 * 64 * 1024)
        self.assertEqual(leaks[0].count, 60)
        self.assertAlmostEqual(leaks[0].first_t, 0.01)
        self.assertAlmostEqual(leaks[0].last_t, 0.01 + 59 * 0.05)
        self.assertEqual([(x.lineno, x.bytes) for x in leaks[1:]], [(9, 4096)])
        with hr.read(self.steady_db) as r:
            # Only the last 0.2 s of the ring were never freed.
            self.assertEqual(sum(x.bytes for x in r.leaks()),
                             sum(a[2] for a in self.steady.allocs if a[4] is None))

    # ------------------------------------------------------------ histogram, flame, flow
    def test_size_histogram_buckets(self):
        with hr.read(self.spike_db) as r:
            h = r.size_histogram()
        self.assertEqual(sum(b.samples for b in h), len(self.spike.allocs))
        # The classes of `heapprof stats PROGRAM` (issue 13 item 10): [2**(k-1), 2**k - 1].
        byhi = {b.hi: b for b in h}
        self.assertEqual(byhi[511].samples, 300)            # churn: 256 bytes
        self.assertEqual(byhi[511].lo, 256)
        self.assertEqual(byhi[511].est_bytes, 300 * 4096)
        self.assertEqual(byhi[511].est_count, 300 * 16)      # 4096 / 256 per sample
        self.assertEqual(byhi[128 * 1024 - 1].samples, 100)  # the spike's 100 KiB blocks
        self.assertEqual(byhi[128 * 1024 - 1].lo, 64 * 1024)
        self.assertEqual(byhi[63].samples, 1)                # 40 bytes
        self.assertEqual(byhi[63].lo, 32)
        self.assertEqual(h[0].hi, 63)
        self.assertEqual(h[-1].hi, 128 * 1024 - 1)
        self.assertEqual(len(h), 12)                         # 32 B .. 128 KiB, gaps kept

    def test_flame_totals_equal_the_snapshot(self):
        with hr.read(self.spike_db) as r:
            for t in (0.5, 1.5, 2.55):
                folded = r.flame(t)
                self.assertEqual(sum(folded.values()), sum(r.snapshot_at(t).values()))
                for k in folded:
                    self.assertNotIn('\n', k)
            folded = r.flame(1.5)
        key = ('main (%s:40);make_spike (%s:22)' % (sc.SPIKE_FILE, sc.SPIKE_FILE))
        self.assertEqual(folded[key], 100 * 100 * 1024)

    def test_flow_graph_nodes_and_edges(self):
        with hr.read(self.spike_db) as r:
            g = r.flow([1.0, 1.5])
            main = [fid for fid, (fr, _, _) in g.nodes.items()
                    if fr.function == 'main'][0]
            spike = [fid for fid, (fr, _, _) in g.nodes.items()
                     if fr.function == 'make_spike'][0]
        self.assertEqual(g.totals, [sum(self.spike.live_at(t).values()) for t in (1.0, 1.5)])
        self.assertEqual(g.nodes[spike][1], [0, 100 * 100 * 1024])
        self.assertEqual(g.nodes[spike][2], [0, 100 * 100 * 1024])
        self.assertEqual(g.edges[(main, spike)], [0, 100 * 100 * 1024])
        self.assertEqual(g.nodes[main][2], [0, 0])              # main allocates nothing itself
        self.assertEqual(g.nodes[main][1][1], g.totals[1] - 4096)   # all but the import

    # ------------------------------------------------------------ errors
    def test_errors_are_one_line(self):
        with tempfile.TemporaryDirectory() as d:
            missing = os.path.join(d, 'nope.sqlite')
            text = os.path.join(d, 'notes.txt')
            with open(text, 'w') as f:
                f.write('hello\n' * 100)
            other = os.path.join(d, 'other.sqlite')
            con = sqlite3.connect(other)
            con.execute('CREATE TABLE t(x)')
            con.commit()
            con.close()
            empty = sc.write_db(os.path.join(d, 'empty.sqlite'))
            for path, exc, pattern in ((missing, _db.DatabaseError, 'no such file'),
                                       (text, _db.DatabaseError, 'not a heapprof database'),
                                       (other, _db.DatabaseError, 'not a heapprof database'),
                                       (empty, hr.ReaderError, 'no recorded sessions')):
                with self.assertRaisesRegex(exc, pattern) as cm:
                    hr.read(path)
                self.assertNotIn('\n', str(cm.exception))
            with self.assertRaisesRegex(hr.ReaderError, r'session 7 is not in .*sessions: 1, 2'):
                hr.read(self.both, session=7)


if __name__ == '__main__':
    unittest.main()
