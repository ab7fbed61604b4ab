"""The Reader answers from heapprofd's aggregates exactly as from the rows (suite 'tools').

Real recordings of examples/ by a real heapprofd and the installed agent. The same
database is read twice: as heapprofd left it (aggregates, and the read indexes it builds
when it stops), and as a copy without the aggregates' views, which is how a recording of
an older heapprof looks, so the Reader reads the rows. Every operation is compared at
many instants: bucket edges, instants of allocations and frees, and in between. Bytes
and samples must be equal; estimated counts are sums of floats in another order, so
they may differ by rounding only.
"""
import os
import shutil
import sqlite3
import tempfile
import unittest

import tools_recording as rec

from heapprof import reader as hr

NS = 1_000_000_000
MIB = 1 << 20

# 80 MiB held for 30 ms, well inside one timeline interval (100 ms), between churn.
SHORT_SPIKE = '''import time
def churn(n):
    for _ in range(n):
        junk = [bytes(256) for _ in range(100)]
        del junk
        time.sleep(0.01)
churn(20)
spike = [bytearray(64 * 1024) for _ in range(1280)]  # line 8
time.sleep(0.03)
del spike
churn(20)
'''


def without_aggregates(src, dst):
    """A copy of the recording src whose aggregates a Reader cannot see."""
    shutil.copyfile(src, dst)
    con = sqlite3.connect(dst)
    try:
        con.execute('DROP VIEW aggregated_sessions')
        con.execute('DROP VIEW site_sessions')
        con.commit()
    finally:
        con.close()


class AggregatesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix='hp-tools-agg-')
        cls.addClassCleanup(cls.tmp.cleanup)
        daemon = rec.Daemon(cls.tmp.name)
        try:
            daemon.record('spike.py', 20, interval=512)
            daemon.record('leak.py', 200, interval=1)
            daemon.record('steady.py', 2.5, interval=256)
            cls.short_spike = os.path.join(cls.tmp.name, 'short_spike.py')
            with open(cls.short_spike, 'w') as f:
                f.write(SHORT_SPIKE)
            daemon.record(cls.short_spike, interval=4096)
        finally:
            daemon.stop()
        cls.db = daemon.db
        cls.rows_db = os.path.join(cls.tmp.name, 'rows.sqlite')
        without_aggregates(cls.db, cls.rows_db)
        cls.sessions = [s.session_id for s in hr.sessions(cls.db)]

    def both(self, sid):
        """(Reader from the aggregates, Reader from the rows) of one session."""
        a, r = hr.read(self.db, sid), hr.read(self.rows_db, sid)
        self.addCleanup(a.close)
        self.addCleanup(r.close)
        return a, r

    def pairs(self):
        return [self.both(sid) for sid in self.sessions]

    def instants(self, r):
        """ns instants to compare at: every bucket edge, the instants of a spread of
        allocations and frees (and one ns either side), and evenly spaced ones."""
        first, last = r.span_ns()
        out = set(range(first - first % NS, last + NS, NS))
        con = sqlite3.connect(self.rows_db)
        try:
            rows = con.execute('SELECT ts_ns, freed_ns FROM allocations WHERE session_id = ?'
                               ' ORDER BY alloc_id', (r.session_id,)).fetchall()
        finally:
            con.close()
        for ts, freed in rows[::max(1, len(rows) // 40)]:
            for x in (ts, freed):
                if x is not None:
                    out.update((x - 1, x, x + 1))
        out.update(first + (last - first) * k // 37 for k in range(38))
        return sorted(out)

    def assert_counts_close(self, a, b, msg=None):
        self.assertLessEqual(abs(a - b), 1e-6 * max(1.0, abs(b)) + 1, msg)

    def test_the_recordings_have_aggregates_and_the_copy_none(self):
        con = sqlite3.connect(self.db)
        try:
            self.assertEqual(sorted(r[0] for r in con.execute(
                'SELECT session_id FROM aggregated_sessions')), sorted(self.sessions))
            self.assertGreater(con.execute('SELECT count(*) FROM stack_buckets').fetchone()[0],
                               10)
        finally:
            con.close()
        self.assertEqual(len(self.sessions), 4)

    def test_snapshots_are_equal_at_every_instant(self):
        for a, r in self.pairs():
            for ns in self.instants(r):
                got, want = a.snapshot_at_ns(ns), r.snapshot_at_ns(ns)
                self.assertEqual(got, want, 'at %d' % ns)

    def test_standard_errors_are_equal(self):
        # Variances are float sums (and differences) taken in another order.
        seen = 0
        for a, r in self.pairs():
            start, end = r.span_ns()
            for ns in self.instants(r):
                if not start <= ns <= end:
                    continue
                t = (ns - start) / 1e9
                got, want = a.live_at(t), r.live_at(t)
                self.assertEqual(got.value, want.value, t)
                self.assertLessEqual(abs(got.se - want.se), 1e-6 * max(1.0, want.se) + 1e-3, t)
                seen += want.se > 0
                ga = {s.frame_id: s.self_se for s in a.top_sites(t, n=None)}
                wa = {s.frame_id: s.self_se for s in r.top_sites(t, n=None)}
                self.assertEqual(ga.keys(), wa.keys(), t)
                for k in wa:
                    self.assertLessEqual(abs(ga[k] - wa[k]), 1e-6 * max(1.0, wa[k]) + 1e-3, t)
            ta, tr = a.totals(), r.totals()
            self.assertLessEqual(abs(ta.allocated_se - tr.allocated_se),
                                 1e-6 * max(1.0, tr.allocated_se) + 1e-3)
        self.assertGreater(seen, 0, 'no instant with a sampled (nonzero) standard error')

    def test_top_sites_flame_and_flow_are_equal(self):
        for a, r in self.pairs():
            times = [r.duration * k / 9 for k in range(10)]
            for t in times:
                self.assertEqual(a.flame(t), r.flame(t), t)
                self.assertEqual(a.live_bytes_at(t), r.live_bytes_at(t), t)
                for by in ('self', 'cumulative'):
                    got, want = a.top_sites(t, n=None, by=by), r.top_sites(t, n=None, by=by)
                    key = lambda s: (s.frame_id, s.self_bytes, s.cum_bytes, s.samples)
                    self.assertEqual([key(s) for s in got], [key(s) for s in want], t)
                    for g, w in zip(got, want):
                        self.assert_counts_close(g.self_count, w.self_count)
                        self.assert_counts_close(g.cum_count, w.cum_count)
            fa, fr = a.flow(times[1::3]), r.flow(times[1::3])
            self.assertEqual(fa.totals, fr.totals)
            self.assertEqual(fa.edges, fr.edges)
            self.assertEqual({k: v[1:] for k, v in fa.nodes.items()},
                             {k: v[1:] for k, v in fr.nodes.items()})

    def test_peak_totals_sites_and_histogram_are_equal(self):
        for a, r in self.pairs():
            self.assertEqual(a.peak(), r.peak())
            self.assertEqual(a.peak_ns(), r.peak_ns())
            self.assertEqual(a.totals(), r.totals())
            self.assertEqual(a.allocated_sites(), r.allocated_sites())
            got, want = a.size_histogram(), r.size_histogram()
            self.assertGreater(len(want), 3)
            self.assertEqual([(b.lo, b.hi, b.samples, b.est_bytes) for b in got],
                             [(b.lo, b.hi, b.samples, b.est_bytes) for b in want])
            for g, w in zip(got, want):
                self.assert_counts_close(g.est_count, w.est_count)

    def sites_of(self, r):
        """Every 'file:line' on a stack of r's session, as a full path and as a suffix."""
        con = sqlite3.connect(self.rows_db)
        try:
            rows = con.execute(
                'SELECT DISTINCT f.filename, f.lineno FROM allocations a'
                ' JOIN stack_frames sf ON sf.stack_id = a.stack_id'
                ' JOIN frames f ON f.frame_id = sf.frame_id WHERE a.session_id = ?',
                (r.session_id,)).fetchall()
        finally:
            con.close()
        return ['%s:%d' % (os.path.basename(fn) if k % 2 else fn, line)
                for k, (fn, line) in enumerate(sorted(rows))]

    def test_site_series_are_equal_and_from_the_aggregates(self):
        answered = 0
        for a, r in self.pairs():
            self.assertIsNotNone(a._site_bucket())
            self.assertIsNone(r._site_bucket())
            sites = self.sites_of(r)
            self.assertGreater(len(sites), 3)
            got, want = a.site_series(sites), r.site_series(sites)
            for site in sites:
                self.assertEqual(got[site], want[site], site)
                fids = a._match_sites(site)
                times = [ts for ts, in a._con.execute(
                    'SELECT ts_ns FROM timeline WHERE session_id = ?', (a.session_id,))]
                answered += a._site_series_agg(fids, sorted(times)) is not None
        self.assertGreater(answered, 20)

    def test_a_spike_shorter_than_an_interval_keeps_its_height(self):
        sid = max(self.sessions)
        a, r = self.both(sid)
        site = 'short_spike.py:8'
        got = a.site_series([site])[site]
        self.assertEqual(got, r.site_series([site])[site])
        high = [(t, b) for t, b in got if b >= 80 * MIB]
        self.assertIn(len(high), (1, 2), got)   # its interval, and the next if it straddles
        self.assertLess(high[-1][0] - high[0][0], 0.15)
        self.assertGreaterEqual(max(b for _, b in got), 80 * MIB)
        self.assertLessEqual(max(b for _, b in got), max(b for _, b in a.timeline()))
        self.assertLess(got[-1][1], MIB)

    def test_leaks_are_equal(self):
        seen = 0
        for a, r in self.pairs():
            self.assertEqual(a.unfreed_stacks(), r.unfreed_stacks())
            got, want = a.leaks(), r.leaks()
            key = lambda s: (s.frame_id, s.bytes, s.samples, s.first_t, s.last_t)
            self.assertEqual([key(s) for s in got], [key(s) for s in want])
            for g, w in zip(got, want):
                self.assertLessEqual(abs(g.count - w.count), 1)
                self.assertLessEqual(abs(g.se - w.se), 1e-6 * max(1.0, w.se) + 1e-3)
            seen += len(want)
        self.assertGreater(seen, 0)

    def test_steps_at_bucket_ends_are_equal(self):
        for a, r in self.pairs():
            first, last = r.span_ns()
            for points in (2, 7, 200):
                start, step, n = a.bucket_steps_ns(first, last, points)
                self.assertEqual((start + 1) % NS, 0)
                self.assertLessEqual(start, first)
                self.assertGreaterEqual(start + (n - 1) * step, last)
                got = a.stack_step_deltas_agg_ns(start, step, n)
                self.assertEqual(got, r.stack_step_deltas_ns(start, step, n), points)
                self.assertEqual(got, a.stack_step_deltas_ns(start, step, n), points)
            self.assertIsNone(a.stack_step_deltas_agg_ns(first, NS, 3))
            self.assertIsNone(r.bucket_steps_ns(first, last, 200))

    def test_report_of_a_large_session_takes_its_steps_from_the_aggregates(self):
        from heapprof import report
        sid = min(self.sessions)
        old = report.AGGREGATE_STEPS_FROM
        report.AGGREGATE_STEPS_FROM = 0
        try:
            data = report.build_data(self.db, sid)
        finally:
            report.AGGREGATE_STEPS_FROM = old
        plain = report.build_data(self.db, sid)
        with hr.read(self.db, sid) as a:
            first, last = a.span_ns()
            start, step, n = a.bucket_steps_ns(first, last, report.DEFAULT_STEPS)
        self.assertEqual(len(data['steps']['t']), n)
        self.assertEqual(data['steps']['t'][0], 0)
        self.assertAlmostEqual(data['steps']['t'][1], (start + step - first) / NS)
        self.assertEqual(len(plain['steps']['t']), report.DEFAULT_STEPS)
        # The same stacks, and the same heap at the end.
        self.assertEqual(data['steps']['total'][-1], plain['steps']['total'][-1])
        self.assertEqual(data['peak'], plain['peak'])

    def test_the_aggregates_are_what_answers(self):
        # A copy whose aggregates say one more byte for one stack in its first bucket:
        # the Reader must show it, or it did not read them.
        path = os.path.join(self.tmp.name, 'tampered.sqlite')
        shutil.copyfile(self.db, path)
        con = sqlite3.connect(path)
        try:
            sid, bucket, stack = con.execute(
                'SELECT session_id, bucket_ns, stack_id FROM agg_stack WHERE alloc_bytes > 0'
                ' ORDER BY session_id, bucket_ns, stack_id LIMIT 1').fetchone()
            con.execute('UPDATE agg_stack SET alloc_bytes = alloc_bytes + 1, alloc_samples ='
                        ' alloc_samples + 1 WHERE session_id = ? AND bucket_ns = ?'
                        ' AND stack_id = ?', (sid, bucket, stack))
            con.execute('UPDATE agg_size SET est_bytes = est_bytes + 1 WHERE session_id = ?'
                        ' AND size_class = (SELECT min(size_class) FROM agg_size'
                        ' WHERE session_id = ?)', (sid, sid))
            con.commit()
        finally:
            con.close()
        with hr.read(path, sid) as t, hr.read(self.rows_db, sid) as r:
            later = bucket + NS
            stack = stack or None
            self.assertEqual(t.snapshot_at_ns(later).get(stack, 0),
                             r.snapshot_at_ns(later).get(stack, 0) + 1)
            self.assertEqual(t.totals().allocated_bytes, r.totals().allocated_bytes + 1)
            self.assertEqual(sum(b.est_bytes for b in t.size_histogram()),
                             sum(b.est_bytes for b in r.size_histogram()) + 1)


if __name__ == '__main__':
    unittest.main()
