"""`pytest --heapprof` for real (suite 'tools'): Debian's python3-pytest, with heapprof
installed by `pip install --no-build-isolation .` into a venv of Debian's /usr/bin/python3
made with --system-site-packages (so it sees Debian's pytest), runs a small test suite
written here: limits that pass and fail, a real leak and garbage that only looks like one
until gc.collect(). The plugin comes in through the package's pytest11 entry point, as for
a user; pytest-xdist is not installed.
"""
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import textwrap
import time
import unittest

SOURCE_ROOT = os.environ.get('HEAPPROF_SOURCE_ROOT', os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))))
DEBIAN_PYTHON = '/usr/bin/python3'
NEEDED = ('venv', 'pip', 'mesonpy', 'pytest')
TIMEOUT = 600

SUITE = '''
import pytest

CACHE = []


def test_plain():
    data = [bytearray(10000) for _ in range(300)]          # 3 MB, freed
    assert len(data) == 300


@pytest.mark.limit_memory("24 MB")
def test_under_memory_limit():
    data = [bytearray(100000) for _ in range(80)]          # 8 MB
    assert len(data) == 80


@pytest.mark.limit_memory("24 MB")
def test_over_memory_limit():
    data = [bytearray(100000) for _ in range(400)]         # 40 MB  SITE_BIG
    assert len(data) == 400


@pytest.mark.limit_memory("24 MB")
def test_over_but_failing_anyway():
    data = [bytearray(100000) for _ in range(400)]
    assert len(data) == 0                                  # its own failure is reported


@pytest.mark.limit_leaks("1 MB")
def test_real_leak():
    CACHE.extend(bytearray(10000) for _ in range(500))     # 5 MB kept  SITE_LEAK


@pytest.mark.limit_leaks("1 MB")
def test_cycles_are_not_leaks():
    for _ in range(500):
        a = [bytearray(10000)]                             # 5 MB of garbage cycles
        a.append(a)


@pytest.mark.limit_leaks("1 MB")
def test_small_leak_under_the_limit():
    CACHE.extend(bytearray(10000) for _ in range(30))      # 300 KB kept
'''


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL, **kw)


def line_of(text, marker):
    for i, line in enumerate(text.splitlines(), 1):
        if marker in line:
            return i
    raise AssertionError(marker)


class PytestPluginTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        missing = [m for m in NEEDED if run([DEBIAN_PYTHON, '-c', 'import ' + m]).returncode]
        if missing:
            raise AssertionError('%s lacks %s: run ./setup.sh test, which installs the Debian '
                                 'packages this test needs' % (DEBIAN_PYTHON, ', '.join(missing)))
        cls.tmp = tempfile.TemporaryDirectory(prefix='hp-pytest-plugin-')
        d = cls.tmp.name
        src = os.path.join(d, 'src')
        shutil.copytree(SOURCE_ROOT, src, ignore=shutil.ignore_patterns(
            'build*', '.venv*', '.git', 'artifacts', '__pycache__', '*.sqlite*', '.mesonpy*',
            'heapprof-demo.*'))
        venv = os.path.join(d, 'venv')
        r = run([DEBIAN_PYTHON, '-m', 'venv', '--system-site-packages', venv])
        if r.returncode:
            raise AssertionError('venv: %s' % r.stderr)
        cls.python = os.path.join(venv, 'bin', 'python')
        cls.env = {k: v for k, v in os.environ.items()
                   if not k.startswith(('HEAPPROF_', 'PYTHON', 'PIP_', 'PYTEST_'))}
        r = run([os.path.join(venv, 'bin', 'pip'), 'install', '--no-build-isolation',
                 '--no-index', src], env=cls.env, cwd=d)
        if r.returncode:
            raise AssertionError('pip install failed:\n%s\n%s' % (r.stdout[-4000:],
                                                                  r.stderr[-4000:]))
        cls.suite_dir = os.path.join(d, 'suite')
        os.mkdir(cls.suite_dir)
        with open(os.path.join(cls.suite_dir, 'test_suite.py'), 'w') as f:
            f.write(textwrap.dedent(SUITE))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def pytest(self, *args):
        return run([self.python, '-m', 'pytest', '-p', 'no:cacheprovider', '-q'] + list(args),
                   env=self.env, cwd=self.suite_dir)

    def outcomes(self, out):
        """{test name: 'passed'|'failed'} from -rA's short summary."""
        return {m.group(2): m.group(1).lower() for m in
                re.finditer(r'^(PASSED|FAILED) test_suite\.py::(\w+)', out, re.M)}

    def test_debian_pytest_and_no_xdist(self):
        r = run([self.python, '-c', 'import pytest, sys; print(pytest.__file__)'], env=self.env)
        self.assertTrue(r.stdout.startswith('/usr/lib/python3/dist-packages/'), r.stdout)
        r = run([self.python, '-c', 'import xdist'], env=self.env)
        self.assertNotEqual(r.returncode, 0)

    def test_without_the_flag_nothing_changes(self):
        r = self.pytest('-rA', '--strict-markers')
        self.assertEqual(self.outcomes(r.stdout),
                         dict(self.all_passed(), test_over_but_failing_anyway='failed'),
                         r.stdout + r.stderr)
        self.assertNotIn('heapprof', r.stdout)
        self.assertEqual([f for f in os.listdir(self.suite_dir) if f.endswith('.sqlite')], [])
        # The options are there (the plugin is loaded through its entry point).
        r = self.pytest('--help')
        self.assertIn('--heapprof-fine-interval', r.stdout)

    def all_passed(self):
        return {name: 'passed' for name in re.findall(r'^def (test_\w+)', SUITE, re.M)}

    def test_limits_fail_exactly_when_over(self):
        db = os.path.join(self.tmp.name, 'run.sqlite')
        r = self.pytest('-rA', '--heapprof', '--heapprof-db', db, '--heapprof-top', '3')
        out = r.stdout + r.stderr
        self.assertEqual(r.returncode, 1, out)
        want = dict(self.all_passed(), test_over_memory_limit='failed',
                    test_over_but_failing_anyway='failed', test_real_leak='failed')
        self.assertEqual(self.outcomes(r.stdout), want, out)
        big, leak = line_of(SUITE, 'SITE_BIG'), line_of(SUITE, 'SITE_LEAK')
        # The memory limit: the estimate, its interval and the site that held it.
        m = re.search(r'the test held up to ([\d.]+) MiB \u00b1([\d.]+) (KiB|MiB), over its '
                      r'limit_memory of 24\.0 MiB', out)
        self.assertTrue(m, out)
        self.assertTrue(36 < float(m.group(1)) < 40, m.group(0))  # 400 x 100001 B = 38.1 MiB
        self.assertRegex(out, r'\n +3[6-9]\.\d MiB \u00b1[\d.]+ (KiB|MiB)  test_over_memory_limit'
                              r'\.<locals>\.<listcomp> \(test_suite\.py:%d\)' % big)
        # The leak: named with its line; the garbage cycles and the small leak pass.
        self.assertRegex(out, r'the test left [\d.]+ MiB \u00b1[\d.]+ KiB allocated at its end '
                              r'\(after gc\.collect\(\)\), over its limit_leaks of 1\.0 MiB')
        self.assertRegex(out, r'\n +4\.\d MiB \u00b1[\d.]+ KiB  test_real_leak\.<locals>\.'
                              r'<genexpr> \(test_suite\.py:%d\)' % leak)
        # A test that fails by itself is not also failed by heapprof.
        section = re.search(r'_+ test_over_but_failing_anyway _+\n(.*?)(?=\n_{3,} |\n={3,} )',
                            out, re.S).group(1)
        self.assertIn('assert 400 == 0', section)
        self.assertNotIn('over its limit_memory', section)
        # The summary: the three tests that allocated most, largest first.
        summary = out.split('heapprof: 3 tests that allocated most')[1]
        rows = [l for l in summary.splitlines() if ' allocated ' in l]
        self.assertEqual(len(rows), 3, summary)
        self.assertTrue(all('\u00b1' in row and 'held at end' in row for row in rows), rows)
        self.assertTrue(rows[0].endswith('::test_over_memory_limit') or
                        rows[0].endswith('::test_over_but_failing_anyway'), rows)
        self.assertIn('heapprof: 7 tests recorded in %s' % db, out)
        # One database; every test between its markers.
        con = sqlite3.connect(db)
        try:
            labels = [l for l, in con.execute('SELECT label FROM markers')]
            pids = {p for p, in con.execute('SELECT DISTINCT pid FROM sessions')}
        finally:
            con.close()
        self.assertEqual(len(pids), 1)
        for name in self.all_passed():
            self.assertIn('pytest start test_suite.py::%s' % name, labels)
            self.assertIn('pytest end test_suite.py::%s' % name, labels)

    def test_a_finer_interval_under_the_markers(self):
        db = os.path.join(self.tmp.name, 'intervals.sqlite')
        r = self.pytest('--heapprof', '--heapprof-db', db, '--heapprof-interval', '262144',
                        '--heapprof-fine-interval', '1024', '-k', 'plain or under_memory')
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        con = sqlite3.connect(db)
        try:
            rows = con.execute(
                "SELECT s.sample_interval_bytes, m.label FROM markers m JOIN sessions s"
                " USING (session_id) WHERE m.label LIKE 'pytest start %'").fetchall()
        finally:
            con.close()
        by_test = {}
        for interval, label in rows:
            by_test.setdefault(label.rsplit('::', 1)[1], set()).add(interval)
        self.assertEqual(by_test['test_plain'], {262144})
        # The outer marker is in the run's session, the inner one in the test's own.
        self.assertEqual(by_test['test_under_memory_limit'], {262144, 1024})

    def test_with_a_heapprofd_of_ones_own(self):
        # --heapprof-socket: the daemon keeps recording after the run; the plugin waits for
        # it to store each session it reads.
        d = tempfile.mkdtemp(dir=self.tmp.name)
        db, sock = os.path.join(d, 'own.sqlite'), os.path.join(d, 'd.sock')
        log = open(os.path.join(d, 'd.log'), 'a+')   # as agent_e2e_util.Daemon's log
        daemon = subprocess.Popen([os.path.join(os.path.dirname(self.python), 'heapprofd'),
                                   '--db', db, '--socket', sock], stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            for _ in range(2000):
                log.seek(0)
                if 'listening on' in log.read() or daemon.poll() is not None:
                    break
                time.sleep(0.01)
            r = self.pytest('-rA', '--heapprof', '--heapprof-socket', sock, '--heapprof-db', db,
                            '-k', 'plain or over_memory_limit or real_leak')
            out = r.stdout + r.stderr
            self.assertEqual(self.outcomes(r.stdout),
                             {'test_plain': 'passed', 'test_over_memory_limit': 'failed',
                              'test_real_leak': 'failed'}, out)
            self.assertIn('over its limit_memory of 24.0 MiB', out)
            self.assertIn('heapprof: 3 tests recorded in %s' % db, out)
            self.assertIsNone(daemon.poll())        # still recording: not the plugin's
        finally:
            daemon.terminate()
            daemon.wait(timeout=60)
            log.close()

    def test_bad_limits_and_options_are_usage_errors(self):
        bad = os.path.join(self.suite_dir, 'test_bad.py')
        with open(bad, 'w') as f:
            f.write('import pytest\n\n@pytest.mark.limit_memory("lots")\ndef test_x():\n'
                    '    pass\n')
        try:
            r = self.pytest('--heapprof', '--heapprof-db',
                            os.path.join(self.tmp.name, 'bad.sqlite'), 'test_bad.py')
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("limit_memory: expected a size like 24MB", r.stdout + r.stderr)
        finally:
            os.unlink(bad)
        r = self.pytest('--heapprof', '--heapprof-socket', '/nonexistent.sock')
        self.assertEqual(r.returncode, 4, r.stdout + r.stderr)     # pytest's usage error
        self.assertIn('--heapprof-socket needs --heapprof-db', r.stderr)


if __name__ == '__main__':
    unittest.main()
