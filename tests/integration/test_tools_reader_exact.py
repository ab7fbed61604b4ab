"""heapprof.reader: exact instants (the *_ns methods) and per-stack figures, the part of the
Reader API that the HTML report is a client of (suite 'tools').

Expected figures come from the scenarios' own allocation lists (tools_scenarios.py), never
from the Reader itself.
"""
import collections
import os
import re
import sqlite3
import tempfile
import unittest

import tools_scenarios as sc

from heapprof import reader as hr

MS = 1_000_000


def events_of(scen):
    """[(ns, est_bytes, db stack id)] of every allocation and (negative) free."""
    out = []
    for ts, _, est, st, fr in scen.allocs:
        sid = None if st is None else scen.db_stack_id(st)
        out.append((scen.ns(ts), est, sid))
        if fr is not None:
            out.append((scen.ns(fr), -est, sid))
    return out


def live_by_stack_ns(scen, ns):
    """{db stack id: est bytes} of the allocations made at or before ns, not freed by then."""
    out = collections.Counter()
    for ts, _, est, st, fr in scen.allocs:
        if scen.ns(ts) <= ns and (fr is None or scen.ns(fr) > ns):
            out[None if st is None else scen.db_stack_id(st)] += est
    return dict(out)


def update(path, *statements):
    con = sqlite3.connect(path)
    try:
        for sql, args in statements:
            con.execute(sql, args)
        con.commit()
    finally:
        con.close()


class ExactReaderTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix='hp-tools-reader-exact-')
        cls.spike = sc.spike()
        cls.leak = sc.leak()
        cls.spike_db = sc.write_db(cls.path('spike.sqlite'), cls.spike)
        cls.leak_db = sc.write_db(cls.path('leak.sqlite'), cls.leak)
        cls.both = sc.write_db(cls.path('both.sqlite'), sc.spike(1), sc.leak(2))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    @classmethod
    def path(cls, name):
        return os.path.join(cls.tmp.name, name)

    def copy_of(self, scen, name):
        """A fresh database of one scenario, for a test that changes it."""
        path = self.path(name)
        if os.path.exists(path):
            os.unlink(path)
        return sc.write_db(path, scen)

    # ------------------------------------------------------------ counts and span
    def test_allocation_count_is_per_session(self):
        with hr.read(self.both, session=1) as r:
            self.assertEqual(r.allocation_count(), len(sc.spike().allocs))
        with hr.read(self.both, session=2) as r:
            self.assertEqual(r.allocation_count(), len(sc.leak().allocs))

    def test_span_covers_the_session_and_every_recorded_event(self):
        s = self.spike
        # The last churn block is freed at 3.04 s, after the session's end at 3 s.
        self.assertEqual(max(ns for ns, _, _ in events_of(s)), s.ns(3.04))
        with hr.read(self.spike_db) as r:
            self.assertEqual(r.span_ns(), (s.start_ns, s.ns(3.04)))
        # An allocation stamped before the start widens it too; so does the end.
        path = self.copy_of(sc.spike(), 'span.sqlite')
        update(path, ('UPDATE alloc SET ts_ns = ? WHERE id = 1', (s.start_ns - 7 * MS,)),
               ('UPDATE session SET ended_ns = ?', (s.ns(3.5),)))
        with hr.read(path) as r:
            self.assertEqual(r.span_ns(), (s.start_ns - 7 * MS, s.ns(3.5)))
            self.assertAlmostEqual(r.recorded_until(), 3.04)
        # A running session with no allocation yet ends at its last timeline interval.
        update(path, ("UPDATE session SET ended_ns = NULL, status = 'running'", ()),
               ('DELETE FROM alloc', ()))
        last_interval = s.timeline_rows()[-1][0]
        with hr.read(path) as r:
            self.assertEqual(r.span_ns(), (s.start_ns, last_interval))
            self.assertEqual(r.allocation_count(), 0)

    # ------------------------------------------------------------ timeline
    def assert_buckets(self, got, rows, t0, t1, points):
        """got holds, per bucket in order, the highest level of its intervals at the
        (clamped) start of an interval with that level."""
        buckets = collections.defaultdict(list)
        for ts, live, _, _ in rows:
            at = min(max(ts, t0), t1)
            buckets[(at - t0) * points // max(t1 - t0, 1)].append((at, live))
        self.assertEqual(len(got), len(buckets))
        for (ts, live), b in zip(got, sorted(buckets)):
            top = max(v for _, v in buckets[b])
            self.assertEqual(live, top, b)
            self.assertIn((ts, live), buckets[b])

    def test_timeline_ns_takes_the_highest_interval_per_bucket_and_ends_at_the_end(self):
        s = self.spike
        rows = s.timeline_rows()
        t0, t1 = s.start_ns, s.ns(3.04)
        self.assertEqual(rows[-1][0], s.ns(3.0))        # the last interval starts at 3 s
        with hr.read(self.spike_db) as r:
            fine = r.timeline_ns(t0, t1, 4000)
            coarse = r.timeline_ns(t0, t1, 3)
            inner = r.timeline_ns(s.ns(1.0), s.ns(2.0), 10)
            to_last = r.timeline_ns(t0, s.ns(3.0), 4000)
        # Fine buckets hold one interval each: the recorded series, then the end level.
        self.assertEqual(fine[:-1], [(ts, live) for ts, live, _, _ in rows])
        self.assertEqual(fine[-1], (t1, rows[-1][3]))
        # A range ending where the last interval starts needs no point for its end.
        self.assertEqual(to_last, [(ts, live) for ts, live, _, _ in rows])
        self.assert_buckets(coarse[:-1], rows, t0, t1, 3)
        self.assertEqual(max(b for _, b in coarse), 100 * 100 * 1024 + 4096 * 6 + 8192)
        # Intervals before the range are clamped to its start, into the first bucket;
        # those at or after its end to its end, one more point, which is the last.
        self.assert_buckets(inner, rows, s.ns(1.0), s.ns(2.0), 10)
        self.assertEqual(len(inner), 11)
        self.assertEqual(inner[0][0], s.ns(1.0))
        self.assertEqual(inner[-1], (s.ns(2.0), max(live for ts, live, _, _ in rows
                                                    if ts >= s.ns(2.0))))

    def test_timeline_ns_reads_the_end_level_from_views_of_an_earlier_build(self):
        s = sc.spike()
        t0, t1 = s.start_ns, s.ns(3.04)
        last = s.timeline_rows()[-1]
        for old_timeline, want_end in (('live_count, end_bytes', last[3]),
                                       ('live_count', last[1])):
            with self.subTest(timeline=old_timeline):
                path = self.copy_of(s, 'old-timeline.sqlite')
                con = sqlite3.connect(path)
                con.executescript('DROP VIEW timeline_detail; DROP VIEW timeline;'
                                  ' CREATE VIEW timeline AS SELECT session_id, ts_ns,'
                                  ' live_bytes, %s FROM timeline_point;' % old_timeline)
                con.execute('UPDATE timeline_point SET end_bytes = 777 WHERE ts_ns = ?',
                            (last[0],))
                con.commit()
                con.close()
                if 'end_bytes' in old_timeline:
                    want_end = 777
                with hr.read(path) as r:
                    self.assertEqual(r.timeline_ns(t0, t1, 4000)[-1], (t1, want_end))

    def test_timeline_ns_is_empty_without_a_timeline(self):
        path = self.copy_of(sc.spike(), 'no-timeline.sqlite')
        update(path, ('DELETE FROM timeline_point', ()))
        with hr.read(path) as r:
            self.assertEqual(r.timeline_ns(*r.span_ns(), 100), [])
            self.assertIsNone(r.peak_ns())
            self.assertEqual(r.peak(), (0.0, 0))

    # ------------------------------------------------------------ peak and levels
    def test_peak_ns_is_the_instant_peak_finds_in_nanoseconds(self):
        s = self.spike
        top = 100 * 100 * 1024 + 4096 * 6 + 8192
        with hr.read(self.spike_db) as r:
            ts, live = r.peak_ns()
            t, peak_bytes = r.peak()
        self.assertEqual(ts, s.ns(s.marks['peak_lo']))
        self.assertEqual((live, peak_bytes), (top, top))
        self.assertEqual(ts, s.start_ns + round(t * sc.NS))

    def test_peak_ns_takes_the_events_level_when_the_timeline_is_lower(self):
        s = sc.spike()
        top = 100 * 100 * 1024 + 4096 * 6 + 8192
        path = self.copy_of(s, 'low-timeline.sqlite')
        # One byte lower is still the highest interval (the next level is 4096 lower).
        update(path, ('UPDATE timeline_point SET live_bytes = live_bytes - 1'
                      ' WHERE live_bytes = ?', (top,)))
        with hr.read(path) as r:
            self.assertEqual(r.peak_ns(), (s.ns(s.marks['peak_lo']), top))
            self.assertEqual(r.peak()[1], top - 1)          # peak() keeps the timeline's

    def test_peak_ns_is_not_clamped_into_the_session(self):
        # The highest moment is an allocation stamped before the session's start (its
        # interval starts there too): peak() says 0 s, peak_ns() the real instant.
        s = sc.Scenario('early', 1.0)
        st = s.stack(('load', '/app/early.py', 3))
        s.alloc(0.0, 1 << 20, 1 << 20, st, 0.05)
        s.alloc(0.5, 100, 4096, st)
        path = self.copy_of(s, 'early.sqlite')
        update(path, ('UPDATE session SET started_ns = started_ns + ?', (30 * MS,)))
        with hr.read(path) as r:
            self.assertEqual(r.peak_ns(), (s.start_ns, 1 << 20))
            self.assertEqual(r.peak(), (0.0, 1 << 20))
            self.assertEqual(r.span_ns()[0], s.start_ns)

    def test_live_levels_ns_is_the_level_after_every_instant(self):
        for scen, path in ((self.spike, self.spike_db), (self.leak, self.leak_db)):
            instants = sorted({ns for ns, _, _ in events_of(scen)})
            want = [(ns, sum(live_by_stack_ns(scen, ns).values())) for ns in instants]
            with hr.read(path) as r:
                self.assertEqual(r.live_levels_ns(), want, scen.name)

    # ------------------------------------------------------------ per stack
    def test_snapshot_at_ns_matches_the_scenario_inside_and_outside_the_session(self):
        s = self.spike
        with hr.read(self.spike_db) as r:
            for t in (0.0, 0.3, 1.25, 1.8, 2.55, 3.0):
                self.assertEqual(r.snapshot_at_ns(s.ns(t)), r.snapshot_at(t), t)
                want = {k: v for k, v in live_by_stack_ns(s, s.ns(t)).items() if v}
                self.assertEqual(r.snapshot_at_ns(s.ns(t)), want, t)
            self.assertEqual(r.snapshot_at_ns(s.start_ns - 1), {})
            later = r.snapshot_at_ns(s.ns(10.0))
        self.assertEqual(later, {s.db_stack_id(3): 4096})     # the import, never freed

    def test_stack_step_deltas_add_up_to_the_live_bytes_at_each_step(self):
        s = self.spike
        start, step = s.start_ns - 50 * MS, 100 * MS
        for steps in (33, 5):
            with hr.read(self.spike_db) as r:
                deltas = r.stack_step_deltas_ns(start, step, steps)
            for stack_id, changes in deltas.items():
                self.assertTrue(all(0 <= i < steps for i in changes), (stack_id, changes))
            for i in range(steps):
                want = {k: v for k, v in live_by_stack_ns(s, start + i * step).items() if v}
                got = {k: sum(b for j, b in d.items() if j <= i) for k, d in deltas.items()}
                self.assertEqual({k: v for k, v in got.items() if v}, want, (steps, i))
        # Five steps end at 0.35 s: stacks first allocated later are left out.
        self.assertNotIn(s.db_stack_id(s.marks['spike_stack']), deltas)
        self.assertNotIn(None, deltas)

    def test_unfreed_stacks_are_per_stack_in_id_order_with_no_stack_first(self):
        s = sc.Scenario('unfreed', 1.0)
        a = s.stack(('a', '/app/u.py', 1))
        b = s.stack(('b', '/app/u.py', 2), ('a', '/app/u.py', 1))
        s.alloc(0.1, 10, 4096, b)
        s.alloc(0.2, 10, 4096, b)
        s.alloc(0.3, 10, 8192, a)
        s.alloc(0.4, 10, 4096, a, 0.5)
        s.alloc(0.6, 10, 1024, None)
        path = self.copy_of(s, 'unfreed.sqlite')
        with hr.read(path) as r:
            self.assertEqual(r.unfreed_stacks(), [(None, 1024, 1), (a, 8192, 1), (b, 8192, 2)])
            totals = r.totals()
        self.assertEqual((totals.unfreed_samples, totals.unfreed_bytes), (4, 1024 + 2 * 8192))
        with hr.read(self.spike_db) as r:
            # Only the import at 0 s (stack 3) is never freed.
            self.assertEqual(r.unfreed_stacks(), [(self.spike.db_stack_id(3), 4096, 1)])

    def test_frames_of_stacks_are_innermost_first(self):
        s = self.spike
        rec = s.db_stack_id(4)
        with hr.read(self.spike_db) as r:
            got = r.frames_of_stacks([rec, None, s.db_stack_id(s.marks['spike_stack']), 999])
        self.assertEqual([(f.function, f.filename, f.lineno) for f in got[rec]],
                         [('walk', sc.SPIKE_FILE, 30), ('walk', sc.SPIKE_FILE, 31),
                          ('walk', sc.SPIKE_FILE, 30), ('main', sc.SPIKE_FILE, 40)])
        self.assertEqual(got[rec][0].frame_id, got[rec][2].frame_id)
        self.assertTrue(all(f.line is None for f in got[rec]))
        self.assertEqual([f.function for f in got[s.db_stack_id(2)]], ['make_spike', 'main'])
        self.assertEqual(got[None], ())
        self.assertEqual(got[999], ())            # no such stack: no frames, no error

    def test_same_answers_with_the_read_indexes(self):
        # heapprofd adds indexes on (session_id, freed_ns) and (session_id, stack_id) at a
        # clean shutdown (schema/indexes.sql); the plans change, the answers must not.
        s = self.spike
        path = self.copy_of(sc.spike(), 'indexed.sqlite')
        con = sqlite3.connect(path)
        con.execute('CREATE INDEX alloc_by_session_freed ON alloc (session_id, freed_ns)')
        con.execute('CREATE INDEX alloc_by_session_stack ON alloc (session_id, stack_id)')
        con.commit()
        con.close()
        with hr.read(path) as r, hr.read(self.spike_db) as plain:
            self.assertEqual(r.stack_step_deltas_ns(s.start_ns, 100 * MS, 31),
                             plain.stack_step_deltas_ns(s.start_ns, 100 * MS, 31))
            self.assertEqual(r.unfreed_stacks(), plain.unfreed_stacks())
            self.assertEqual(r.peak_ns(), plain.peak_ns())
            self.assertEqual(r.live_levels_ns(), plain.live_levels_ns())
            self.assertEqual(r.span_ns(), plain.span_ns())
            for t in (0.5, 1.5, 2.9):
                self.assertEqual(r.snapshot_at_ns(s.ns(t)), plain.snapshot_at_ns(s.ns(t)))

    # ------------------------------------------------------------ one SQL layer
    def test_only_the_reader_speaks_sql_and_no_client_calls_its_private_members(self):
        # Every module of the installed package but the Reader and heapprof._db (which
        # opens and checks a database) asks the Reader: no queries, no connections of
        # its own, and no _private member of heapprof.reader.
        package = os.path.dirname(hr.__file__)
        sql = re.compile(r'\.execute(many|script)?\(|sqlite3\.connect\(|\bopen_db\(|\bSELECT\b')
        private = re.compile(r'\b(_?reader|hr)\._[a-z]')
        clients = sorted(f for f in os.listdir(package)
                         if f.endswith('.py') and f not in ('reader.py', '_db.py'))
        self.assertIn('report.py', clients)
        self.assertIn('runner.py', clients)
        for name in clients:
            with open(os.path.join(package, name), encoding='utf-8') as f:
                text = f.read()
            with self.subTest(module=name):
                self.assertIsNone(sql.search(text))
                self.assertIsNone(private.search(text))

    # ------------------------------------------------------------ session facts
    def test_sample_buckets_that_are_not_a_list_read_as_none(self):
        path = self.copy_of(sc.steady(), 'buckets.sqlite')
        for stored, want in (('[[128, 0.5]]', [[128, 0.5]]), ('{"128": 0.5}', None),
                             ('7', None), ('', None), ('not json', None)):
            update(path, ('UPDATE session SET sample_buckets = ?', (stored,)))
            with self.subTest(stored=stored):
                (s,) = hr.sessions(path)
                self.assertEqual(s.sample_buckets, want)


if __name__ == '__main__':
    unittest.main()
