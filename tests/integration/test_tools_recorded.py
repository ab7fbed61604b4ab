"""The Reader and the CLI over real recordings of examples/spike.py, leak.py and steady.py
made by a real heapprofd and the installed agent (suite 'tools').

Figures are estimates from sampling (HEAPPROF_INTERVAL=8192 here), so amounts are checked
within generous bounds; places (file:line) and times are checked exactly.
"""
import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest

import tools_recording as rec

from heapprof import _db
from heapprof import reader as hr

SCRIPT = os.path.join(os.path.dirname(rec.PYTHON), 'heapprof')
MIB = 1024 * 1024


def run_cli(*args):
    p = subprocess.run([SCRIPT] + list(args), capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    if p.returncode != 0 or 'Traceback' in p.stderr:
        raise AssertionError('heapprof %s: %d\n%s%s' % (' '.join(args), p.returncode,
                                                         p.stdout, p.stderr))
    return p.stdout


class RecordedTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix='hp-tools-rec-')
        cls.addClassCleanup(cls.tmp.cleanup)
        daemon = rec.Daemon(cls.tmp.name)
        try:
            out = daemon.record('spike.py', 20)
            cls.spike_ns = [int(x) for x in re.search(r'spike_ns (\d+) (\d+)', out).groups()]
            daemon.record('leak.py', 200)
            daemon.record('steady.py', 1.5)
        finally:
            daemon.stop()
        cls.db = daemon.db
        by_name = {}
        for s in hr.sessions(cls.db):
            by_name[os.path.basename(s.argv[0])] = s
        cls.sessions = by_name

    def reader(self, example):
        return hr.read(self.db, self.sessions[example].session_id)

    def test_three_sessions_recorded_and_ended(self):
        self.assertEqual(sorted(self.sessions), ['leak.py', 'spike.py', 'steady.py'])
        for s in self.sessions.values():
            self.assertEqual(s.status, 'exited')
            self.assertGreater(s.events_received, 0)
        out = run_cli('sessions', '--db', self.db)
        for name in self.sessions:
            self.assertIn(name, out)

    def test_spike_peak_is_while_the_spike_is_held(self):
        line = rec.marked_line('spike.py', 'SPIKE_LINE')
        with self.reader('spike.py') as r:
            t, peak = r.peak()
            start = (self.spike_ns[0] - r.metadata.started_ns) / 1e9
            release = (self.spike_ns[1] - r.metadata.started_ns) / 1e9
            self.assertGreaterEqual(t, start)
            # The blocks are freed right after the second timestamp is taken.
            self.assertLessEqual(t, release + 0.05)
            top = r.top_sites(t, n=3)
            self.assertTrue(top[0].filename.endswith('examples/spike.py'), top[0])
            self.assertEqual(top[0].lineno, line)
            # 320 blocks of 64 KiB, each sampled almost surely at an 8 KiB interval.
            self.assertGreater(top[0].self_bytes, 0.8 * 20 * MIB)
            self.assertLess(top[0].self_bytes, 1.25 * 20 * MIB)
            self.assertGreaterEqual(peak, top[0].self_bytes)
            # Before and after the spike, its line holds nothing.
            self.assertEqual(sum(s.self_bytes for s in r.top_sites(max(0.0, start - 0.01), n=None)
                                 if s.lineno == line and s.filename == top[0].filename), 0)
        with self.reader('spike.py') as r:
            snap = r.snapshot_at(t)
            biggest = max((k for k in snap if k is not None), key=snap.get)
            frames = r.trace(biggest)
        # Innermost first, with the source text read back from examples/spike.py.
        self.assertEqual(frames[0].lineno, line)
        self.assertEqual(frames[0].line, 'return [bytearray(64 * 1024) for _ in range(mib * 16)]'
                                         '  # SPIKE_LINE')
        self.assertIn('make_spike', [f.function for f in frames])
        self.assertIn('main', [f.function for f in frames])
        out = run_cli('top', '--db', self.db, '--session',
                      str(self.sessions['spike.py'].session_id), '--at', 'peak')
        first = [l for l in out.splitlines() if re.match(r'^\s*1\s', l)][0]
        self.assertRegex(first, r'spike\.py:%d\)$' % line)

    def test_leak_line_tops_leaks(self):
        line = rec.marked_line('leak.py', 'LEAK_LINE')
        with self.reader('leak.py') as r:
            leaks = r.leaks()
        self.assertTrue(leaks[0].filename.endswith('examples/leak.py'))
        self.assertEqual(leaks[0].lineno, line)
        self.assertGreater(leaks[0].bytes, 0.7 * 200 * 32 * 1024)
        self.assertLess(leaks[0].bytes, 1.4 * 200 * 32 * 1024)
        out = run_cli('leaks', '--db', self.db, '--session',
                      str(self.sessions['leak.py'].session_id))
        first = [l for l in out.splitlines() if re.match(r'^\s*1\s', l)][0]
        self.assertRegex(first, r'handle_request \(.*examples/leak\.py:%d\)$' % line)

    def test_steady_state_is_level(self):
        line = rec.marked_line('steady.py', 'STEADY_LINE')
        with self.reader('steady.py') as r:
            d = r.duration
            for frac in (0.3, 0.5, 0.7):
                sites = r.top_sites(frac * d, n=None)
                ring = sum(s.self_bytes for s in sites if s.lineno == line and
                           s.filename.endswith('examples/steady.py'))
                # 100 buffers of 16 KiB live at any time (each sampled with p = 1 - e^-2).
                self.assertGreater(ring, 0.6 * 100 * 16 * 1024, frac)
                self.assertLess(ring, 1.5 * 100 * 16 * 1024, frac)
            ser = r.site_series(['examples/steady.py:%d' % line])
            mid = [b for t, b in list(ser.values())[0] if 0.3 * d <= t <= 0.7 * d]
            self.assertTrue(mid)
            self.assertLess(max(mid), 2 * min(mid))

    def test_flame_and_flow_of_a_recording(self):
        sid = str(self.sessions['spike.py'].session_id)
        with self.reader('spike.py') as r:
            t = r.peak()[0]
            snap_total = sum(r.snapshot_at(t).values())
        d = self.tmp.name
        run_cli('flame', '--db', self.db, '--session', sid, '--at', 'peak', '-o',
                os.path.join(d, 'spike.folded'))
        with open(os.path.join(d, 'spike.folded')) as f:
            total = sum(int(line.rsplit(' ', 1)[1]) for line in f)
        self.assertEqual(total, snap_total)
        run_cli('flame', '--db', self.db, '--session', sid, '-o', os.path.join(d, 'spike.json'))
        with open(os.path.join(d, 'spike.json')) as f:
            self.assertEqual(sum(json.load(f)['profiles'][0]['weights']), snap_total)
        out = run_cli('flow', '--db', self.db, '--session', sid, '--at', '0.1', '--at', 'peak',
                      '-o', os.path.join(d, 'spike.dot'))
        with open(os.path.join(d, 'spike.dot')) as f:
            self.assertIn('make_spike', f.read())
        if shutil.which('dot'):
            self.assertIn('rendered', out)

    def test_plot_csv_site_fraction_at_the_peak(self):
        line = rec.marked_line('spike.py', 'SPIKE_LINE')
        sid = str(self.sessions['spike.py'].session_id)
        out = os.path.join(self.tmp.name, 'spike.csv')
        run_cli('plot', '--db', self.db, '--session', sid, '-o', out, '--site',
                'spike.py:%d' % line)
        with open(out) as f:
            rows = [l.rstrip('\n').split(',') for l in f][1:]
        peak_row = max(rows, key=lambda r: int(r[1]))
        self.assertGreater(float(peak_row[3]), 0.9)
        self.assertLess(float(rows[0][3]), 0.1)


API_PROGRAM = """
import sys
import heapprof
assert heapprof.start(socket=sys.argv[1], sample_interval=1)
keep = [bytearray(1000) for _ in range(200)]
assert heapprof.stop()
"""


class ApiRecordingTest(unittest.TestCase):
    def test_profiles_started_by_the_api_hold_no_frames_of_heapprof(self):
        # Issue 13 item 10: start() exported HEAPPROF_* for child processes after the
        # session had started, and stop() put them back before it ended, so os.environ's
        # strings were profiled under _export_environment and _restore_environment.
        with tempfile.TemporaryDirectory(prefix='hp-tools-api-') as d:
            prog = os.path.join(d, 'api.py')
            with open(prog, 'w') as f:
                f.write(API_PROGRAM)
            daemon = rec.Daemon(d)
            try:
                env = {k: v for k, v in os.environ.items() if not k.startswith('HEAPPROF_')}
                p = subprocess.run([rec.PYTHON, prog, daemon.socket], env=env,
                                   capture_output=True, text=True, timeout=60)
                self.assertEqual(p.returncode, 0, p.stderr)
            finally:
                daemon.stop()
            # Every frame of every sampled stack, not only the allocating ones.
            con = _db.open_db(daemon.db)
            try:
                files = {f for f, in con.execute(
                    'SELECT DISTINCT f.filename FROM allocations a JOIN stack_frames sf'
                    ' ON sf.stack_id = a.stack_id JOIN frames f ON f.frame_id = sf.frame_id')}
            finally:
                con.close()
            self.assertIn(prog, files)          # the program's own allocations are there
            package = os.path.dirname(hr.__file__)
            self.assertEqual([f for f in files if f.startswith(package + os.sep)], [])


if __name__ == '__main__':
    unittest.main()
