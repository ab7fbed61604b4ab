"""End to end: the Reader's 95% intervals cover the truth about 95% of the time, over
repeated real recordings of one known program (a real heapprofd, a real Python).

One process records the same workload 1 + SESSIONS times: once at interval 1 (every
allocation: the truth at each site), then SESSIONS times sampled at 64 KiB. For each
sampled session, each figure (live bytes per site at a marker, never-freed bytes per site,
allocated bytes per site) is compared with the truth through its standard error. Two
checks, either of which fails when the standard error is wrong by a factor of 2: the
share of intervals that hold the truth (95% expected; a standard error half as large
covers ~67%), and the root mean square of (estimate - truth) / se (1 expected; 2 or 0.5
when wrong by 2x).
"""
import math
import unittest

from agent_e2e_util import DaemonTestCase, clean_env, line_of, run_python, write_program

from heapprof import reader as hr

SESSIONS = 20

PROGRAM = '''
import sys, time, heapprof
sock, sessions = sys.argv[1], int(sys.argv[2])

def workload():
    a = [None] * 150
    b = [None] * 1500
    c = [None] * 40
    for i in range(150):
        a[i] = bytearray(30000)               # SITE_A
    for i in range(1500):
        b[i] = bytearray(1500)                # SITE_B
    for i in range(40):
        c[i] = bytearray(200000)              # SITE_C
    heapprof.mark("full")
    # Recording everything stamps events with the coarse clock (one tick, up to 4 ms):
    # frees in the marker's tick would share its stamp and count as before it.
    time.sleep(0.02)
    del a
    return b, c

for k in range(1 + sessions):
    heapprof.start(socket=sock, sample_interval=1 if k == 0 else 65536)
    kept = workload()
    heapprof.stop()                           # b and c are still allocated at the end
    del kept
'''


class Intervals(DaemonTestCase):

    def figures(self, db, sid, lines):
        """{(kind, site): Estimate} of one session."""
        out = {}
        with hr.read(db, sid) as r:
            t = r.resolve_time('marker:full')
            for s in r.top_sites(t, n=None):
                if s.lineno in lines.values() and s.function == 'workload':
                    out[('live', s.lineno)] = hr.Estimate(s.self_bytes, s.self_se)
            for s in r.leaks():
                if s.lineno in (lines['b'], lines['c']) and s.function == 'workload':
                    out[('never freed', s.lineno)] = hr.Estimate(s.bytes, s.se)
            for s in r.allocated_sites():
                if s.lineno == lines['a'] and s.function == 'workload':
                    out[('allocated', s.lineno)] = hr.Estimate(s.allocated_bytes,
                                                               s.allocated_se)
        return out

    def test_intervals_cover_the_truth(self):
        path = write_program(self.tmp, 'known.py', PROGRAM)
        lines = {k: line_of(path, 'SITE_' + k.upper()) for k in 'abc'}
        r = run_python(path, args=[self.daemon.socket, str(SESSIONS)], env=clean_env(),
                       timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        sessions = self.sessions()
        self.assertEqual(len(sessions), 1 + SESSIONS)
        self.assertTrue(all(s[4] == 'exited' and s[5] == 0 for s in sessions), sessions)
        db = self.daemon.db
        truth = self.figures(db, sessions[0][0], lines)
        self.assertEqual(len(truth), 6, truth)
        for key, est in truth.items():
            self.assertEqual(est.se, 0.0, key)          # every block recorded: exact
        # The truth is what the program allocated there: 150 x 30000-byte buffers, etc.
        self.assertGreaterEqual(truth[('live', lines['a'])].value, 150 * 30000)
        self.assertLess(truth[('live', lines['a'])].value, 150 * 30200)
        z = []
        for sid in [s[0] for s in sessions[1:]]:
            got = self.figures(db, sid, lines)
            for key, want in truth.items():
                est = got.get(key, hr.Estimate(0, 0.0))
                diff = est.value - want.value
                if est.se > 0:
                    z.append(diff / est.se)
                else:
                    z.append(0.0 if diff == 0 else math.inf)
        covered = sum(1 for x in z if abs(x) <= hr.Z95)
        rms = math.sqrt(sum(min(x * x, 100.0) for x in z) / len(z))
        report = 'covered %d of %d, rms z %.2f, z: %s' % (
            covered, len(z), rms, ' '.join('%.1f' % x for x in z))
        print(report)
        self.assertEqual(len(z), 6 * SESSIONS)
        # 95% expected: 114 of 120 (figures come in correlated pairs; sd about 3.4).
        self.assertGreaterEqual(covered / len(z), 0.85, report)
        self.assertGreaterEqual(rms, 0.65, report)
        self.assertLessEqual(rms, 1.5, report)


if __name__ == '__main__':
    unittest.main()
