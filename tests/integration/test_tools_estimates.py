"""heapprof.reader: standard errors of the estimates, markers, `--at marker:LABEL` and
`top --between` (suite 'tools'), on the hand-built scenarios of tools_scenarios.py.

Expected standard errors come from the scenarios' own allocation lists with the formula of
tools/README.md ("Standard errors"): a sample of size s standing for e bytes adds
e * (e - s) to the variance of any sum it is part of.
"""
import math
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import unittest

import tools_scenarios as sc

from heapprof import reader as hr

PYTHON = os.environ.get('HEAPPROF_PYTHON', sys.executable)


def heapprof(*args):
    return subprocess.run([PYTHON, '-m', 'heapprof'] + list(args), capture_output=True,
                          text=True, timeout=60)


def var(allocs):
    return sum(est * (est - size) for _, size, est, _, _ in allocs)


def live(scen, t, since=None):
    tn = scen.ns(t)
    lo = None if since is None else scen.ns(since)
    return [a for a in scen.allocs if scen.ns(a[0]) <= tn and (a[4] is None or scen.ns(a[4]) > tn)
            and (lo is None or scen.ns(a[0]) > lo)]


def add_markers(path, session_id, scen, marks):
    con = sqlite3.connect(path)
    try:
        con.executemany('INSERT INTO marker(session_id, ts_ns, label) VALUES (?,?,?)',
                        [(session_id, scen.ns(t), label) for t, label in marks])
        con.commit()
    finally:
        con.close()


class EstimatesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix='hp-tools-estimates-')
        cls.spike = sc.spike()
        cls.leak = sc.leak()
        cls.spike_db = sc.write_db(os.path.join(cls.tmp.name, 'spike.sqlite'), cls.spike)
        cls.leak_db = sc.write_db(os.path.join(cls.tmp.name, 'leak.sqlite'), cls.leak)
        # Markers around the spike; 'phase' twice: --at takes the first.
        add_markers(cls.spike_db, 1, cls.spike, [(1.1, 'before spike'), (1.5, 'phase'),
                                                 (1.85, 'after spike'), (2.0, 'phase')])

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_site_standard_errors_at_a_time(self):
        t = 1.5
        with hr.read(self.spike_db) as r:
            sites = {(s.function, s.lineno): s for s in r.top_sites(t, n=None, by='cumulative')}
            est = r.live_at(t)
        now = live(self.spike, t)
        work = self.spike.marks['work_stack']
        churn = [a for a in now if a[3] == work]
        # 256-byte blocks standing for 4096 bytes each: sampling blurs them.
        self.assertGreater(len(churn), 3)
        self.assertAlmostEqual(sites[('churn', 12)].self_se, math.sqrt(var(churn)), places=6)
        # 100 KiB blocks recorded with probability 1: exact.
        self.assertEqual(sites[('make_spike', 22)].self_se, 0.0)
        # main is on every stack but the stackless one: its cumulative variance is the sum.
        with_main = [a for a in now if a[3] is not None and a[3] != self.spike.stack(
            ('<module>', '/usr/lib/python3.11/json/decoder.py', 3),)]
        self.assertAlmostEqual(sites[('main', 40)].cum_se, math.sqrt(var(with_main)), places=6)
        self.assertEqual(est.value, sum(a[2] for a in now))
        self.assertAlmostEqual(est.se, math.sqrt(var(now)), places=6)
        self.assertAlmostEqual(est.margin, hr.Z95 * est.se)
        self.assertAlmostEqual(est.high - est.low, 2 * hr.Z95 * est.se)

    def test_leak_total_and_allocated_standard_errors(self):
        unfreed = [a for a in self.leak.allocs if a[4] is None]
        with hr.read(self.leak_db) as r:
            leaks = {s.lineno: s for s in r.leaks()}
            totals = r.totals()
            alloc = {s.lineno: s for s in r.allocated_sites()}
        self.assertEqual(leaks[17].se, 0.0)                     # est == size: exact
        self.assertAlmostEqual(leaks[9].se, math.sqrt(4096 * (4096 - 512)), places=6)
        self.assertAlmostEqual(totals.unfreed_se, math.sqrt(var(unfreed)), places=6)
        self.assertAlmostEqual(totals.allocated_se, math.sqrt(var(self.leak.allocs)), places=6)
        scratch = [a for a in self.leak.allocs if a[1] == 100]
        self.assertAlmostEqual(alloc[16].allocated_se, math.sqrt(var(scratch)), places=6)
        self.assertEqual(alloc[16].unfreed_se, 0.0)

    def test_markers_and_marker_times(self):
        with hr.read(self.spike_db) as r:
            marks = r.markers()
            self.assertEqual([(round(m.t, 6), m.label) for m in marks],
                             [(1.1, 'before spike'), (1.5, 'phase'), (1.85, 'after spike'),
                              (2.0, 'phase')])
            self.assertEqual(marks[0].ts_ns, self.spike.ns(1.1))
            self.assertAlmostEqual(r.resolve_time('marker:phase'), 1.5)
            self.assertAlmostEqual(r.resolve_time('marker:after spike'), 1.85)
            with self.assertRaisesRegex(hr.ReaderError, r"no marker 'nope' in session 1 "
                                        r"\(markers: 'before spike', 'phase', 'after spike'\)"):
                r.resolve_time('marker:nope')
        with hr.read(self.leak_db) as r:
            self.assertEqual(r.markers(), [])
            with self.assertRaisesRegex(hr.ReaderError, r'\(markers: none\)'):
                r.resolve_time('marker:x')

    def test_between_markers_is_what_a_phase_left_behind(self):
        with hr.read(self.spike_db) as r:
            a, b = r.resolve_time('marker:before spike'), r.resolve_time('marker:phase')
            sites = {s.lineno: s for s in r.top_sites(b, n=None, since=a)}
            left = live(self.spike, 1.5, since=1.1)
            self.assertEqual(sum(s.self_bytes for s in sites.values()),
                             sum(x[2] for x in left))
            # The spike (1.2-1.29 s, freed at 1.8) and churn made after 1.45 s; not the
            # walk() block of 0.3 s, which is live at 1.5 s too.
            self.assertEqual(sites[22].self_bytes, 100 * 100 * 1024)
            self.assertNotIn(30, sites)
            self.assertIn(30, {s.lineno for s in r.top_sites(b, n=None)})
            self.assertEqual(r.live_at(b, since=a).value, sum(x[2] for x in left))
            with self.assertRaisesRegex(hr.ReaderError, 'must start before it ends'):
                r.top_sites(a, since=b)
            # After the spike was freed, the phase from 'before spike' left nothing of it.
            after = r.resolve_time('marker:after spike')
            self.assertNotIn(22, {s.lineno for s in r.top_sites(after, n=None, since=a)})

    def test_cli_at_marker_and_between(self):
        p = heapprof('top', '--db', self.spike_db, '--at', 'marker:phase')
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertRegex(p.stdout.splitlines()[0], r' at 1\.500 s \(marker:phase\)$')
        p = heapprof('top', '--db', self.spike_db, '--between', 'marker:before spike',
                     'marker:phase')
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn('allocated after 1.100 s and live at 1.500 s', p.stdout)
        self.assertRegex(p.stdout, r'left behind: 9\.8 MiB \u00b1')
        rows = [l for l in p.stdout.splitlines() if re.match(r'^\s*\d+\s', l)]
        self.assertIn('make_spike', rows[0])
        self.assertNotIn('walk', p.stdout)
        p = heapprof('top', '--db', self.spike_db, '--at', 'marker:missing')
        self.assertEqual(p.returncode, 1)
        self.assertEqual(len(p.stderr.splitlines()), 1, p.stderr)
        self.assertIn("no marker 'missing'", p.stderr)
        p = heapprof('top', '--db', self.spike_db, '--at', '1', '--between', '0', '1')
        self.assertEqual(p.returncode, 1)
        self.assertIn('not with --at', p.stderr)
        # Every --at: flame takes a marker too.
        p = heapprof('flame', '--db', self.spike_db, '--at', 'marker:phase', '-o', '-')
        self.assertEqual(p.returncode, 0, p.stderr)

    def test_cli_top_and_leaks_show_the_margin(self):
        p = heapprof('top', '--db', self.spike_db, '--at', '1.5')
        self.assertEqual(p.returncode, 0, p.stderr)
        with hr.read(self.spike_db) as r:
            churn = [s for s in r.top_sites(1.5, n=None) if s.lineno == 12][0]
        row = [l for l in p.stdout.splitlines() if 'churn' in l][0]
        self.assertIn('\u00b1%.1f KiB' % (hr.Z95 * churn.self_se / 1024), row)
        p = heapprof('leaks', '--db', self.leak_db)
        self.assertEqual(p.returncode, 0, p.stderr)
        row = [l for l in p.stdout.splitlines() if ':9)' in l][0]
        self.assertIn('\u00b1%.1f KiB' % (hr.Z95 * math.sqrt(4096 * 3584) / 1024), row)

    def test_plot_and_report_draw_the_markers(self):
        svg = os.path.join(self.tmp.name, 'plot.svg')
        p = heapprof('plot', '--db', self.spike_db, '-o', svg)
        self.assertEqual(p.returncode, 0, p.stderr)
        with open(svg, encoding='utf-8') as f:
            text = f.read()
        groups = re.findall(r'<g class="marker"><title>([^<]*)</title><line x1="([\d.]+)"',
                            text)
        self.assertEqual([g[0] for g in groups],
                         ['before spike (1.100 s)', 'phase (1.500 s)', 'after spike (1.850 s)',
                          'phase (2.000 s)'])
        # Evenly placed in time: x grows with t, 1.1 -> 1.5 is 0.4 s, 1.5 -> 2.0 is 0.5 s.
        xs = [float(g[1]) for g in groups]
        self.assertAlmostEqual((xs[1] - xs[0]) / (xs[3] - xs[1]), 0.4 / 0.5, places=2)
        # Without markers, none drawn.
        p = heapprof('plot', '--db', self.leak_db, '-o', svg)
        self.assertEqual(p.returncode, 0, p.stderr)
        with open(svg, encoding='utf-8') as f:
            self.assertNotIn('class="marker"', f.read())
        from heapprof import report
        data = report.build_data(self.spike_db)
        t0 = hr.read(self.spike_db).span_ns()[0]
        self.assertEqual([(m['label'], round(m['t'], 6)) for m in data['markers']],
                         [(label, round((self.spike.ns(t) - t0) / 1e9, 6)) for t, label in
                          ((1.1, 'before spike'), (1.5, 'phase'), (1.85, 'after spike'),
                           (2.0, 'phase'))])
        self.assertEqual(report.build_data(self.leak_db)['markers'], [])

    def test_report_gives_the_standard_errors(self):
        from heapprof import report
        data = report.build_data(self.leak_db)
        by_line = {data['frames'][l['site']][2]: l for l in data['leaks']}
        self.assertEqual(by_line[17]['se'], 0.0)
        self.assertAlmostEqual(by_line[9]['se'], math.sqrt(4096 * (4096 - 512)), places=6)
        self.assertAlmostEqual(data['z95'], hr.Z95)
        data = report.build_data(self.spike_db)
        with hr.read(self.spike_db) as r:
            t = r.peak()[0]
            want = math.sqrt(var(live(self.spike, t)))
        self.assertAlmostEqual(data['peak']['se'], want, places=6)
        self.assertGreater(data['peak']['se'], 0)


if __name__ == '__main__':
    unittest.main()
