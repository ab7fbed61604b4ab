"""`heapprof export --format pprof` (suite 'tools', 'pprof').

Three layers: the file's structure and values over hand-built scenario databases (decoded
by pprof_decode, written independently of heapprof's encoder, against figures derived
from the scenarios); a real pprof client, Go's `go tool pprof`, over real recordings of
examples/ made by a real heapprofd and the installed agent; and the command's errors.

`go tool pprof` comes from Debian's golang-go, which `./setup.sh test` installs; without it
these tests fail (they do not skip). It reads local files offline.
"""
import collections
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import unittest

import pprof_decode
import tools_recording as rec
import tools_scenarios as sc
from test_tools_cli import human as _human

from heapprof import reader as hr

PY = os.environ.get('HEAPPROF_PYTHON', sys.executable)
SCRIPT = os.path.join(os.path.dirname(PY), 'heapprof')
TIMEOUT = 120
TYPES = ['alloc_objects', 'alloc_space', 'inuse_objects', 'inuse_space']


def heapprof(*args):
    return subprocess.run([SCRIPT] + [str(a) for a in args], capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)


def go_pprof(*args):
    """Output of `go tool pprof ARGS`; fails the test when Go is missing or pprof fails."""
    go = shutil.which('go')
    if go is None:
        raise AssertionError('go tool pprof is needed: install Debian\'s golang-go '
                             '(./setup.sh test does)')
    env = dict(os.environ, GOTOOLCHAIN='local', GOFLAGS='', GOPROXY='off')
    p = subprocess.run([go, 'tool', 'pprof'] + [str(a) for a in args], capture_output=True,
                       text=True, timeout=TIMEOUT, env=env, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise AssertionError('go tool pprof %s: %d\n%s' % (' '.join(map(str, args)),
                                                           p.returncode, p.stderr))
    return p.stdout


def top_rows(out):
    """[(flat, name)] of a `go tool pprof -top` listing, flat as a number (bytes with
    -unit=B, counts as they are)."""
    rows = []
    for line in out.splitlines():
        m = re.match(r'^\s*(\d+)B?\s+[\d.]+%\s+[\d.]+%\s+(\d+)B?\s+[\d.]+%\s+(.*)$', line)
        if m:
            rows.append((int(m.group(1)), m.group(3).strip()))
    return rows


def top_total(out):
    """The total of a -top listing ('... of 1234B total')."""
    return int(re.search(r' of (\d+)B? total', out).group(1))


class ExportMixin:
    def export(self, db, *args, name='heap.pb.gz'):
        path = os.path.join(self.tmp.name, name)
        if os.path.exists(path):
            os.unlink(path)
        p = heapprof('export', '--db', db, '-o', path, *args)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertNotIn('Traceback', p.stderr)
        with open(path, 'rb') as f:
            return path, pprof_decode.decode(f.read())


# ---------------------------------------------------------------------- scenarios
class ScenarioExportTest(ExportMixin, unittest.TestCase):
    """Structure and values, against what the hand-built scenarios say."""

    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix='hp-pprof-sc-')
        cls.spike = sc.spike()
        cls.db = sc.write_db(os.path.join(cls.tmp.name, 'spike.sqlite'), cls.spike)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def frames_by_stack(self):
        """{scenario stack id: ((function, filename, line), ...) leaf first}."""
        by_id = {fid: key for key, fid in self.spike.frames.items()}
        return {sid: tuple(by_id[f] for f in ids) for ids, sid in self.spike.stacks.items()}

    def expected(self, t, since=None):
        """{leaf-first frames: [alloc_bytes, live_bytes]} from the scenario's allocations;
        () for allocations without a stack."""
        frames = self.frames_by_stack()
        out = collections.defaultdict(lambda: [0, 0])
        ns = self.spike.ns      # compared in ns, as stored
        for ts, _, est, st, fr in self.spike.allocs:
            key = frames[st] if st is not None else ()
            if ns(ts) <= ns(t) and (since is None or ns(ts) > ns(since)):
                out[key][0] += est
            if ns(ts) <= ns(t) and (fr is None or ns(fr) > ns(t)):
                out[key][1] += est
        return {k: v for k, v in out.items() if v != [0, 0]}

    def got(self, p):
        out = {}
        for s in p.samples:
            frames = tuple(p.frames(s))
            key = () if frames == ((hr.NO_STACK_LABEL, '', 0),) else frames
            self.assertNotIn(key, out, 'two samples for one stack')
            out[key] = [s.values[p.column('alloc_space')], s.values[p.column('inuse_space')]]
        return out

    def test_values_per_stack_at_a_time_and_over_a_range(self):
        for args, t, since in ((['--at', '1.25'], 1.25, None),
                               (['--at', '2.55'], 2.55, None),
                               (['--between', '0.355', '1.5'], 1.5, 0.355),
                               (['--at', 'end'], 3.0, None)):
            _, p = self.export(self.db, *args)
            self.assertEqual(self.got(p), self.expected(t, since), args)
            start = self.spike.start_ns + (0 if since is None else round(since * 1e9))
            self.assertEqual(p.time_nanos, start, args)
            self.assertEqual(p.duration_nanos, self.spike.ns(t) - start, args)

    def test_structure_follows_profile_proto(self):
        _, p = self.export(self.db, '--at', '1.25')
        self.assertEqual(p.sample_types, [('alloc_objects', 'count'), ('alloc_space', 'bytes'),
                                          ('inuse_objects', 'count'), ('inuse_space', 'bytes')])
        self.assertEqual(p.default_sample_type, 'inuse_space')
        self.assertEqual(p.period_type, ('space', 'bytes'))
        self.assertEqual(p.period, 4096)      # the scenario's sample_interval_bytes
        # string 0 is "", and every string, function and location is there once.
        self.assertEqual(p.strings[0], '')
        self.assertEqual(len(p.strings), len(set(p.strings)))
        fkeys = [(f.name, f.filename) for f in p.functions.values()]
        self.assertEqual(len(fkeys), p.raw_function_count)
        self.assertEqual(len(fkeys), len(set(fkeys)))
        lkeys = [tuple(loc.lines) for loc in p.locations.values()]
        self.assertEqual(len(lkeys), p.raw_location_count)
        self.assertEqual(len(lkeys), len(set(lkeys)))
        self.assertEqual(sorted(p.functions), list(range(1, len(fkeys) + 1)))
        self.assertEqual(sorted(p.locations), list(range(1, len(lkeys) + 1)))
        # The recursive walk() stack: walk:30 twice on one stack is one location, used twice.
        walk = [s for s in p.samples if p.frames(s)[0][0] == 'walk']
        self.assertEqual(len(walk), 1)
        self.assertEqual(walk[0].location_ids[0], walk[0].location_ids[2])
        self.assertEqual(p.frames(walk[0]), [('walk', sc.SPIKE_FILE, 30),
                                             ('walk', sc.SPIKE_FILE, 31),
                                             ('walk', sc.SPIKE_FILE, 30),
                                             ('main', sc.SPIKE_FILE, 40)])
        # One mapping, saying the locations are symbolized already.
        self.assertEqual(len(p.mappings), 1)
        m = p.mappings[0]
        self.assertTrue(m['has_functions'] and m['has_filenames'] and m['has_line_numbers'])
        self.assertTrue(all(loc.mapping_id == m['id'] for loc in p.locations.values()))
        self.assertTrue(any('unbiased estimates' in c and 'not raw sample counts' in c
                            for c in p.comments), p.comments)
        self.assertTrue(any('allocations made from the start to 1.250 s' in c
                            for c in p.comments), p.comments)

    def test_counts_are_estimated_allocations(self):
        # make_spike: 100 allocations of 100 KiB, each standing for one allocation.
        _, p = self.export(self.db, '--at', '1.5')
        spike = [s for s in p.samples if p.frames(s)[0][:2] == ('make_spike', sc.SPIKE_FILE)]
        self.assertEqual(len(spike), 1)
        self.assertEqual(spike[0].values, [100, 100 * 100 * 1024, 100, 100 * 100 * 1024])
        # work(): 256-byte samples standing for 4096 bytes: 16 allocations each; at 1.5 s
        # 151 were made (0.00 .. 1.50 s) and 5 are live (freed 50 ms after).
        work = [s for s in p.samples if p.frames(s)[0][0] == 'churn']
        self.assertEqual(work[0].values, [151 * 16, 151 * 4096, 5 * 16, 5 * 4096])

    def test_labels_split_samples_and_name_pid_thread_domain(self):
        _, p = self.export(self.db, '--at', '1.25', '--label', 'pid', '--label', 'thread',
                           '--label', 'domain', '--label', 'pid')
        for s in p.samples:
            self.assertEqual(s.labels, [('thread', 1), ('pid', self.spike.pid),
                                        ('domain', 'mem')])
        _, plain = self.export(self.db, '--at', '1.25', name='plain.pb.gz')
        self.assertEqual(len(p.samples), len(plain.samples))
        for s in plain.samples:
            self.assertEqual(s.labels, [])
        # Two threads on one stack make two samples under --label thread, one without.
        two = sc.Scenario('two', 1.0)
        st = two.stack(('f', '/app/two.py', 3))
        two.alloc(0.1, 64, 4096, st)
        two.alloc(0.2, 64, 4096, st)
        db = sc.write_db(os.path.join(self.tmp.name, 'two.sqlite'), two)
        con = sqlite3.connect(db)
        con.execute('UPDATE alloc SET thread_id = 2, domain = 2 WHERE ts_ns = ?',
                    (two.ns(0.2),))
        con.commit()
        con.close()
        _, p = self.export(db, '--at', 'end', '--label', 'thread', '--label', 'domain',
                           name='two.pb.gz')
        self.assertEqual(sorted((s.labels, s.values) for s in p.samples),
                         [([('thread', 1), ('domain', 'mem')], [64, 4096, 64, 4096]),
                          ([('thread', 2), ('domain', 'obj')], [64, 4096, 64, 4096])])
        _, p = self.export(db, '--at', 'end', name='two1.pb.gz')
        self.assertEqual([s.values for s in p.samples], [[128, 8192, 128, 8192]])

    def test_errors_are_one_clear_line(self):
        out = os.path.join(self.tmp.name, 'never.pb.gz')
        for args, pattern in (
                (['--db', self.db, '--session', '7', '-o', out],
                 r'session 7 is not in .*spike\.sqlite \(sessions: 1\)'),
                (['--db', self.db, '--at', 'soon', '-o', out],
                 r"time must be seconds from the start, 'peak' or 'end', not 'soon'"),
                (['--db', self.db, '--at', '99', '-o', out],
                 r'time 99 s is outside session 1, which runs from 0 to 3\.000 s'),
                (['--db', self.db, '--between', '2', '1', '-o', out],
                 r'--between 2 1: the range must start before it ends'),
                (['--db', self.db, '-o', os.path.join(self.tmp.name, 'heap.json')],
                 r'heap\.json: a pprof profile is gzipped protobuf; name it \*\.pb\.gz'),
                (['--db', self.db, '--format', 'json', '-o', out],
                 r"argument --format: invalid choice: 'json' \(choose from 'pprof'\)"),
                (['--db', self.db, '--label', 'host', '-o', out],
                 r"argument --label: invalid choice: 'host'"),
                (['--db', self.db, '--since', '1700000000', '-o', out],
                 r'--since is for --dir; for one session use --at T or --between T1 T2'),
                (['--db', self.db, '--at', '1', '--dir', self.tmp.name],
                 r'--at names a time or session of one recording; with --dir, use '
                 r'--since/--until'),
                (['--db', self.db, '--dir', os.path.join(self.tmp.name, 'nope')],
                 r'--dir .*nope: no such directory'),
                (['--db', self.db, '--dir', self.tmp.name, '--until', 'noon'],
                 r'--until noon: not a time in seconds since the Unix epoch'),
                (['--db', os.path.join(self.tmp.name, 'missing.sqlite'), '-o', out],
                 r'missing\.sqlite'),
                (['--db', self.db, '-o', os.path.join(self.tmp.name, 'no', 'heap.pb.gz')],
                 r'^heapprof: .*/no/heap\.pb\.gz: No such file or directory$'),
                (['--db', self.db],
                 r'one of the arguments -o/--output --dir is required')):
            p = heapprof('export', *args)
            self.assertNotEqual(p.returncode, 0, args)
            self.assertNotIn('Traceback', p.stderr, args)
            self.assertRegex(p.stderr, pattern, args)
            lines = [l for l in p.stderr.splitlines() if not l.startswith('usage:') and
                     not l.startswith(' ')]
            self.assertEqual(len(lines), 1, p.stderr)
            self.assertFalse(os.path.exists(out), args)

    def test_help(self):
        p = heapprof('export', '--help')
        self.assertEqual(p.returncode, 0)
        for opt in ('--format', '-o', '--dir', '--at', '--between', '--since', '--until',
                    '--label', '--session', '--db'):
            self.assertIn(opt, p.stdout)
        self.assertIn('export', heapprof('--help').stdout)

    def test_dir_writes_one_file_per_session_in_the_range_named_by_host_pid_time(self):
        db = sc.write_db(os.path.join(self.tmp.name, 'both.sqlite'), sc.spike(1), sc.leak(2))
        leak = sc.leak(2)
        out = tempfile.mkdtemp(dir=self.tmp.name)
        # A stale temporary file of a writer that is gone is cleaned up.
        stale = os.path.join(out, '.heapprof-tmp-999999999-x.pb.gz')
        open(stale, 'w').close()
        until = leak.start_ns + 2 * 10**9
        p = heapprof('export', '--db', db, '--dir', out, '--since', _epoch(until - 10**9),
                     '--until', _epoch(until))
        self.assertEqual(p.returncode, 0, p.stderr)
        files = sorted(os.listdir(out))
        self.assertEqual(len(files), 1, files)     # only the leak session overlaps
        self.assertRegex(files[0], r'^heapprof-[A-Za-z0-9.-]+-2000-2-\d{8}T\d{6}\.\d{3}Z\.pb\.gz$')
        self.assertEqual(oct(os.stat(os.path.join(out, files[0])).st_mode & 0o777), '0o600')
        with open(os.path.join(out, files[0]), 'rb') as f:
            prof = pprof_decode.decode(f.read())
        # (1 s, 2 s] of the leak session: 20 leaked 64 KiB blocks and 20 scratch samples.
        self.assertEqual(prof.time_nanos, leak.start_ns + 10**9)
        self.assertEqual(prof.duration_nanos, 10**9)
        self.assertEqual(prof.total('alloc_space'), 20 * 64 * 1024 + 20 * 8192)
        self.assertEqual(prof.total('inuse_space'),
                         sum(leak.live_at(2.0).values()))


# ---------------------------------------------------------------------- go tool pprof
class GoPprofTest(ExportMixin, unittest.TestCase):
    """A real pprof client over real recordings."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix='hp-pprof-rec-')
        daemon = rec.Daemon(cls.tmp.name)
        try:
            daemon.record('demo.py')
            daemon.record('spike.py', 20)
            daemon.record('leak.py', 200)
            daemon.record('steady.py', 1.5)
        finally:
            daemon.stop()
        cls.db = daemon.db
        cls.sessions = {os.path.basename(s.argv[0]): s for s in hr.sessions(cls.db)}

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def sid(self, example):
        return str(self.sessions[example].session_id)

    def test_top_lists_the_sites_of_heapprof_top_with_the_same_estimates(self):
        sid = self.sid('demo.py')
        path, _ = self.export(self.db, '--session', sid)      # default time: peak, like top
        top = heapprof('top', '--db', self.db, '--session', sid, '-n', '8')
        self.assertEqual(top.returncode, 0, top.stderr)
        ours = []       # (self bytes as printed, 'function file:line')
        for line in top.stdout.splitlines():
            m = re.match(r'^\s*\d+\s+(\S+ \S+)\s+\S+ \S+\s+\S+\s+\S+\s+\S+ \S+\s+\S+ \S+\s+\S+'
                         r'\s+(.*) \((.*)\)$', line)
            if m and m.group(2) != hr.NO_STACK_LABEL:
                ours.append((m.group(1), '%s %s' % (m.group(2), m.group(3))))
        self.assertGreaterEqual(len(ours), 3, top.stdout)
        rows = top_rows(go_pprof('-top', '-lines', '-unit=B', '-nodefraction=0', path))
        flat = {name: b for b, name in rows}
        # heapprof top cuts a long site at its start ('...lsMetaFinder.find_spec PATH:LINE'
        # when a start-up allocation in a long venv path was sampled): such a site is the
        # one pprof site that ends with what is left.
        for i, (printed, site) in enumerate(ours):
            if site.startswith('...'):
                whole = [name for name in flat if name.endswith(site[3:])]
                self.assertEqual(len(whole), 1, (site, rows))
                ours[i] = (printed, whole[0])
        for printed, site in ours:
            self.assertIn(site, flat, rows)
            self.assertEqual(_human(flat[site]), printed, site)
        # The same order (heapprof top leaves out the stackless pseudo-site here). Sites of
        # equal bytes (site.py's setquit and setcopyright) may come in either order.
        ours_sites = [s for _, s in ours]
        ranked = [name for b, name in rows if b > 0 and name in ours_sites]
        self.assertEqual(sorted(ranked), sorted(ours_sites))
        self.assertEqual([flat[s] for s in ranked], [flat[s] for s in ours_sites],
                         (ranked, ours_sites))
        # Plain -top groups by function: demo.py's first site is its own function there.
        by_fn = top_rows(go_pprof('-top', '-unit=B', path))
        self.assertEqual(by_fn[0][1], ours[0][1].split(' ')[0])
        self.assertEqual(_human(by_fn[0][0]), ours[0][0])

    def test_top_shows_the_spike_and_the_leak(self):
        spike_line = rec.marked_line('spike.py', 'SPIKE_LINE')
        path, _ = self.export(self.db, '--session', self.sid('spike.py'), '--at', 'peak')
        rows = top_rows(go_pprof('-top', '-lines', '-unit=B', path))
        self.assertRegex(rows[0][1], r'^make_spike(\.<locals>\.<listcomp>)? '
                                     r'.*examples/spike\.py:%d$' % spike_line)
        with hr.read(self.db, self.sid('spike.py')) as r:
            t = r.peak()[0]
            self.assertEqual(rows[0][0], r.top_sites(t, n=1)[0].self_bytes)
        leak_line = rec.marked_line('leak.py', 'LEAK_LINE')
        path, _ = self.export(self.db, '--session', self.sid('leak.py'), '--at', 'end')
        rows = top_rows(go_pprof('-top', '-lines', '-unit=B', path))
        self.assertRegex(rows[0][1], r'^handle_request .*examples/leak\.py:%d$' % leak_line)
        with hr.read(self.db, self.sid('leak.py')) as r:
            self.assertEqual(rows[0][0], r.leaks(n=1)[0].bytes)

    def test_sample_index_selects_each_of_the_four_types(self):
        path, p = self.export(self.db, '--session', self.sid('spike.py'), '--at', 'end')
        totals = {}
        for name in TYPES:
            out = go_pprof('-top', '-sample_index=' + name, '-unit=B', path)
            self.assertRegex(out, r'(?m)^Type: %s$' % name)
            totals[name] = top_total(out)
            self.assertEqual(totals[name], p.total(name), name)
        with hr.read(self.db, self.sid('spike.py')) as r:
            self.assertEqual(totals['inuse_space'], r.live_bytes_at(r.duration))
            self.assertEqual(totals['alloc_space'], sum(b.est_bytes for b in r.size_histogram()))
            # Counts are rounded per sample: within half an allocation per sample.
            est = sum(b.est_count for b in r.size_histogram())
        self.assertLessEqual(abs(totals['alloc_objects'] - est), len(p.samples) / 2 + 1)
        self.assertGreater(totals['alloc_objects'], totals['inuse_objects'])
        # Without -sample_index pprof shows the default, inuse_space.
        self.assertRegex(go_pprof('-top', path), r'(?m)^Type: inuse_space$')

    def test_raw_shows_period_comments_and_labels(self):
        s = self.sessions['steady.py']
        path, p = self.export(self.db, '--session', s.session_id, '--at', '0.5', '--label',
                              'thread', '--label', 'pid', '--label', 'domain')
        raw = go_pprof('-raw', path)
        self.assertIn('PeriodType: space bytes', raw)
        self.assertRegex(raw, r'(?m)^Period: 8192$')      # tools_recording's interval
        self.assertIn('pid:[%d]' % s.pid, raw)
        self.assertRegex(raw, r'thread:\[\d+\]')
        self.assertRegex(raw, r'domain:\[(obj|mem|raw)\]')
        self.assertRegex(raw, r'Comment: values are unbiased estimates')
        self.assertRegex(raw, r'(?m)^alloc_objects/count alloc_space/bytes '
                              r'inuse_objects/count inuse_space/bytes\[dflt\]$')

    def test_sums_equal_the_readers_totals_for_several_sessions(self):
        """The property: at any time T of any session, inuse_space sums to the Reader's
        live total and alloc_space to the allocated total (public SQL view) up to T, and
        over a range to what was allocated in it."""
        con = sqlite3.connect('file:%s?mode=ro' % self.db, uri=True)
        self.addCleanup(con.close)

        def allocated(s, lo_ns, hi_ns):
            return con.execute('SELECT COALESCE(SUM(est_bytes), 0) FROM allocations WHERE'
                               ' session_id = ? AND ts_ns > ? AND ts_ns <= ?',
                               (s.session_id, lo_ns, hi_ns)).fetchone()[0]

        checked = 0
        for name in ('demo.py', 'spike.py', 'leak.py', 'steady.py'):
            s = self.sessions[name]
            with hr.read(self.db, s.session_id) as r:
                d = r.duration
                peak = r.peak()[0]
                for spec in ('0.25', '%.6f' % (0.5 * d), 'peak', 'end'):
                    t = r.resolve_time(spec)
                    _, p = self.export(self.db, '--session', s.session_id, '--at', spec)
                    self.assertEqual(p.total('inuse_space'), r.live_bytes_at(t), (name, spec))
                    self.assertEqual(p.total('alloc_space'),
                                     allocated(s, 0, s.started_ns + round(t * 1e9)),
                                     (name, spec))
                    checked += 1
                    if spec == 'end':
                        self.assertEqual(p.total('alloc_space'),
                                         sum(b.est_bytes for b in r.size_histogram()))
                lo, hi = '%.6f' % (0.2 * d), '%.6f' % min(peak + 0.1, d)
                if float(hi) > float(lo):
                    _, p = self.export(self.db, '--session', s.session_id, '--between', lo, hi)
                    lo_ns = s.started_ns + round(float(lo) * 1e9)
                    hi_ns = s.started_ns + round(float(hi) * 1e9)
                    self.assertEqual(p.total('alloc_space'), allocated(s, lo_ns, hi_ns), name)
                    self.assertEqual(p.total('inuse_space'), r.live_bytes_at(float(hi)))
                    checked += 1
        self.assertGreaterEqual(checked, 18)


def _epoch(ns):
    return '%d.%09d' % divmod(ns, 10**9)


if __name__ == '__main__':
    unittest.main()
