"""tests/summarize.py, the closing summary of `./setup.sh test`: one block per build
headed by its label (the CPython version), supported versions the machine lacks named
as absent (never counted as passed), and the exit status."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

SCRIPT = os.path.join(os.environ.get('HEAPPROF_SOURCE_ROOT',
                                     os.path.join(os.path.dirname(__file__), '..', '..')),
                      'tests', 'summarize.py')


def testlog(directory, build, results):
    """A meson testlog.json under directory/build/meson-logs: results [(name, result)]."""
    logs = os.path.join(directory, build, 'meson-logs')
    os.makedirs(logs)
    path = os.path.join(logs, 'testlog.json')
    with open(path, 'w') as f:
        for name, result in results:
            f.write(json.dumps({'name': name, 'result': result,
                                'stdout': 'Ran 3 tests in 0.1s\n', 'stderr': ''}) + '\n')
    return path


class Summary(unittest.TestCase):

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix='hp-summary-')
        self.addCleanup(self._tmp.cleanup)
        self.tmp = self._tmp.name

    def run_summary(self, *args):
        return subprocess.run([sys.executable, SCRIPT] + list(args), capture_output=True,
                              text=True, timeout=60)

    def test_blocks_per_version_and_absent_versions(self):
        main = testlog(self.tmp, 'build', [('heapprof:e2e+agent / test_e2e_stacks', 'OK'),
                                           ('heapprof:unit+agent / check_pystr', 'OK')])
        other = testlog(self.tmp, 'build-py3.12', [('heapprof:e2e+agent / test_e2e_code',
                                                    'OK')])
        r = self.run_summary('CPython 3.11.7=' + main, 'CPython 3.12.1=' + other,
                             '--absent', 'CPython 3.13 (no python3.13 on PATH or in pyenv)')
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertIn('  CPython 3.11.7 (build)', lines)
        self.assertIn('  CPython 3.12.1 (build-py3.12)', lines)
        i = lines.index('  CPython 3.12.1 (build-py3.12)')
        self.assertTrue(lines[i + 1].split()[:3] == ['e2e', '1', 'passed'], lines)
        self.assertIn('  CPython 3.13 (no python3.13 on PATH or in pyenv): absent, not tested',
                      lines)
        self.assertEqual(lines[-1], '3 passed, 0 failed; absent: CPython 3.13')

    def test_a_failure_anywhere_fails_the_run(self):
        main = testlog(self.tmp, 'build', [('heapprof:e2e+agent / test_e2e_stacks', 'OK')])
        other = testlog(self.tmp, 'build-py3.13', [('heapprof:e2e+agent / test_e2e_fork',
                                                    'FAIL')])
        r = self.run_summary('CPython 3.11.7=' + main, 'CPython 3.13.0=' + other)
        self.assertEqual(r.returncode, 1)
        self.assertIn('  FAILED: CPython 3.13.0 (build-py3.13): heapprof:e2e+agent / '
                      'test_e2e_fork (FAIL)', r.stdout.splitlines())

    def test_nothing_ran_fails_even_when_all_is_absent(self):
        empty = testlog(self.tmp, 'build', [])
        r = self.run_summary(empty, '--absent', 'CPython 3.12 (none)')
        self.assertEqual(r.returncode, 1)
        self.assertIn('no test ran', r.stderr)
        self.assertIn('  build (build)', r.stdout.splitlines())   # label defaults to the dir


if __name__ == '__main__':
    unittest.main()
