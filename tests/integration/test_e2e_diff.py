"""End to end: `heapprof diff` as a CI gate over repeated real recordings (a real
heapprofd, real Python processes, the installed `heapprof` command).

A program keeps a steady 3 MB (one block, sampled with certainty) and, at one site, N
blocks of 4000 bytes; the head version keeps 2N there. N is chosen so that the growth is
about twice the half width of its 95% interval at the default 64 KiB interval (the test
measures that ratio). Over RUNS pairs, `--fail-over 1.5MB` must flag the growth (2.8 MiB,
naming that site) nearly every time, and flag pairs of the unchanged program almost never.
The site's estimate has a standard error of ~0.43 MB per recording, so a difference of two
has ~0.6 MB: the growth passes both the significance test and the limit with probability
~96%, while an unchanged pair exceeds 1.5 MB with ~1% (the limit sits above the noise of
one site, as README.md, "Using heapprof in CI", advises); the bounds below fail with a
probability under 1%.
"""
import json
import os
import statistics
import subprocess
import unittest

from agent_e2e_util import PYTHON, DaemonTestCase, clean_env, line_of, run_python, write_program

RUNS = 10

PROGRAM = '''
import sys
factor = int(sys.argv[1])
steady = [bytearray(3000000)]                              # SITE_STEADY
grown = [bytearray(4000) for _ in range(720 * factor)]    # SITE_GROW
print(len(steady) + len(grown))
'''


def heapprof(*args):
    return subprocess.run([PYTHON, '-m', 'heapprof'] + list(args), capture_output=True,
                          text=True, timeout=120, env=clean_env())


class Diff(DaemonTestCase):

    def test_growth_flagged_unchanged_not(self):
        path = write_program(self.tmp, 'app.py', PROGRAM)
        grow_line = line_of(path, 'SITE_GROW')
        steady_line = line_of(path, 'SITE_STEADY')
        env = self.profiled_env()
        # Sessions 1..2*RUNS: the base program; then RUNS of the head (2x at SITE_GROW).
        for factor, runs in ((1, 2 * RUNS), (2, RUNS)):
            for _ in range(runs):
                r = run_python(path, args=[str(factor)], env=env)
                self.assertEqual(r.returncode, 0, r.stderr)
        sessions = self.sessions()
        self.assertEqual(len(sessions), 3 * RUNS)
        self.assertTrue(all(s[4] == 'exited' and s[5] == 0 for s in sessions), sessions)
        db = self.daemon.db
        grown, unchanged, ratios = [], [], []
        for i in range(RUNS):
            base, head = '%s:%d' % (db, 2 * i + 1), '%s:%d' % (db, 2 * RUNS + 1 + i)
            p = heapprof('diff', base, head, '--fail-over', '1.5MB', '--format', 'json')
            self.assertIn(p.returncode, (0, 1), p.stderr)
            out = json.loads(p.stdout)
            site = [s for s in out['sites'] if s['lineno'] == grow_line][0]
            ratios.append(site['peak']['change'] / site['peak']['margin_95'])
            # A failure is one line naming the site and the growth; or, when no single
            # site's growth is over the limit but the program's total is (it holds the
            # site's growth plus every other site's noise), the total.
            if p.returncode == 1:
                self.assertEqual(len(p.stderr.splitlines()), 1, p.stderr)
                if out['fail_over']['site'] is None:
                    self.assertIn('(all sites together) grew by', p.stderr)
                else:
                    self.assertIn('app.py:%d' % grow_line, p.stderr)
                self.assertRegex(p.stderr, r'grew by \+\d')
                self.assertTrue(out['fail_over']['failed'])
            grown.append(p.returncode == 1)
            p = heapprof('diff', '%s:%d' % (db, 2 * i + 1), '%s:%d' % (db, 2 * i + 2),
                         '--fail-over', '1.5MB')
            self.assertIn(p.returncode, (0, 1), p.stderr)
            unchanged.append(p.returncode == 1)
        report = 'growth flagged %s; unchanged flagged %s; change / margin %s' % (
            grown, unchanged, ['%.2f' % x for x in ratios])
        print(report)
        # The growth is about twice its interval's half width (2.0 by design).
        self.assertTrue(1.4 <= statistics.median(ratios) <= 2.8, report)
        self.assertGreaterEqual(sum(grown), RUNS - 2, report)
        self.assertLessEqual(sum(unchanged), 2, report)

        # The text table: the grown site first, its change marked significant; the steady
        # site unchanged. Its block is 46 intervals long, so every recording samples it and
        # estimates it exactly. (Blocks sampled with p = 0.99 would not do: one missed in
        # ten is a 0.3 MB step, beyond the normal interval of a sum of such blocks.) With
        # no change it ranks below every noisy site, hence the --limit.
        p = heapprof('diff', '%s:1' % db, '%s:%d' % (db, 2 * RUNS + 1), '--limit', '1000')
        self.assertEqual(p.returncode, 0, p.stderr)
        rows = [l for l in p.stdout.splitlines() if l[:1].isdigit()]
        self.assertIn('app.py:%d' % grow_line, rows[0])
        steady = [l for l in rows if 'app.py:%d' % steady_line in l]
        self.assertEqual(len(steady), 1, p.stdout)
        self.assertNotIn('*', steady[0], p.stdout)
        # Percentages are of the base's total: 2.8 MB is well over 10% of a ~6 MB heap,
        # never over 1000%.
        flagged = [i for i, g in enumerate(grown) if g]
        i = flagged[0] if flagged else 0
        base, head = '%s:%d' % (db, 2 * i + 1), '%s:%d' % (db, 2 * RUNS + 1 + i)
        p = heapprof('diff', base, head, '--fail-over', '10%')
        self.assertEqual(p.returncode, 1 if flagged else p.returncode, p.stderr)
        p = heapprof('diff', base, head, '--fail-over', '1000%')
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stderr, '')

    def test_bad_arguments_are_one_line(self):
        for args, pattern in (
                (['diff', 'nope.sqlite', 'nope.sqlite'], 'nope.sqlite'),
                (['diff', 'a', 'b', '--fail-over', 'lots'], "--fail-over 'lots'"),
                (['diff', 'a', 'b', '--fail-over=-3%'], "--fail-over '-3%'")):
            p = heapprof(*args)
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertEqual(len(p.stderr.splitlines()), 1, p.stderr)
            self.assertIn(pattern, p.stderr)


if __name__ == '__main__':
    unittest.main()
