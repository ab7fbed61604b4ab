"""`pip install --no-build-isolation .` into a user's existing environment (suite 'tools'):
a venv made with --system-site-packages from Debian's /usr/bin/python3, which sees the
user's packages (numpy, matplotlib from Debian). The install must give working entry
points (bin/heapprof executable, with the venv's interpreter on its first line, and
bin/heapprofd), and profile a program that imports numpy (issue 13 item 5), seeing numpy's
arrays where they are made (issue 11: native allocations).

Needs Debian's python3-venv, python3-pip, python3-mesonpy, python3-numpy and
python3-matplotlib (`./setup.sh test` installs them). pip reads no index (--no-index):
everything comes from the source tree and the system.
"""
import os
import re
import shutil
import subprocess
import tempfile
import unittest

SOURCE_ROOT = os.environ.get('HEAPPROF_SOURCE_ROOT', os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))))
DEBIAN_PYTHON = '/usr/bin/python3'
NEEDED = ('venv', 'pip', 'mesonpy', 'numpy', 'matplotlib')
TIMEOUT = 600

PROGRAM = '''
import sys
import numpy as np
keep = [np.arange(20000) for _ in range(100)]
names = [str(i) * 10 for i in range(20000)]
print("sum", int(sum(int(a.sum()) for a in keep)), len(names))
sys.exit(3)
'''


# Issue 11: numpy's data buffers come from malloc/calloc in numpy's own extension, never
# through PEP 445. A leak of arrays at one line, a short spike of a large zeroed array
# (whose calloc numpy makes with the GIL released) at another.
NUMPY_PROGRAM = '''
import sys, time
import numpy as np
keep = []
def leak(n):
    for _ in range(n):
        a = np.empty(1 << 17)                      # LEAK_LINE: 1 MiB each
        a.fill(1.0)
        keep.append(a)
def spike():
    big = np.zeros((4096, 2048))                   # SPIKE_LINE: 64 MiB
    big += 1.0
    time.sleep(0.2)
    return float(big.sum())
leak(40)
total = spike()
leak(10)
print(sum(a.nbytes for a in keep), int(total))
import tracemalloc
if tracemalloc.is_tracing():                       # run with -X tracemalloc: its peak
    print(tracemalloc.get_traced_memory()[1])
'''

UNITS = {'B': 1, 'KiB': 1 << 10, 'MiB': 1 << 20, 'GiB': 1 << 30}


def site_bytes(table, site):
    """The first byte figure (self, or never freed) of the row of a top/leaks table whose
    site ends with site."""
    for line in table.splitlines():
        if line.rstrip().endswith(site):
            value, unit = line.split()[1:3]
            return float(value) * UNITS[unit]
    raise AssertionError('%s not in:\n%s' % (site, table))


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL, **kw)


class PipInstallTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        missing = [m for m in NEEDED if run([DEBIAN_PYTHON, '-c', 'import ' + m]).returncode]
        if missing:
            raise AssertionError('%s lacks %s: run ./setup.sh test, which installs the Debian '
                                 'packages this test needs' % (DEBIAN_PYTHON, ', '.join(missing)))
        cls.tmp = tempfile.TemporaryDirectory(prefix='hp-tools-install-')
        d = cls.tmp.name
        # A copy of the source, so that the build writes nothing into the tree under test.
        cls.src = os.path.join(d, 'src')
        shutil.copytree(SOURCE_ROOT, cls.src, ignore=shutil.ignore_patterns(
            'build*', '.venv', '.git', 'artifacts', '__pycache__', '*.sqlite*', '.mesonpy*',
            'heapprof-demo.*'))
        cls.venv = os.path.join(d, 'venv')
        r = run([DEBIAN_PYTHON, '-m', 'venv', '--system-site-packages', cls.venv])
        if r.returncode:
            raise AssertionError('venv: %s' % r.stderr)
        cls.bin = os.path.join(cls.venv, 'bin')
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(('HEAPPROF_', 'PYTHON', 'PIP_'))}
        cls.env = env
        cls.pip = run([os.path.join(cls.bin, 'pip'), 'install', '--no-build-isolation',
                       '--no-index', cls.src], env=env, cwd=d)
        if cls.pip.returncode:
            raise AssertionError('pip install failed:\n%s\n%s' % (cls.pip.stdout[-4000:],
                                                                  cls.pip.stderr[-4000:]))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def heapprof(self, *args, cwd=None):
        return run([os.path.join(self.bin, 'heapprof')] + list(args), env=self.env,
                   cwd=cwd or self.tmp.name)

    def test_entry_points_are_executable_and_run_the_venvs_python(self):
        script = os.path.join(self.bin, 'heapprof')
        self.assertTrue(os.access(script, os.X_OK), oct(os.stat(script).st_mode))
        with open(script) as f:
            self.assertEqual(f.readline().strip(), '#!' + os.path.join(self.bin, 'python3'))
        self.assertTrue(os.access(os.path.join(self.bin, 'heapprofd'), os.X_OK))
        r = self.heapprof('--help')
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('report', r.stdout)
        r = run([os.path.join(self.bin, 'heapprofd'), '--help'], env=self.env)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_profiles_a_program_that_imports_numpy(self):
        d = tempfile.mkdtemp(dir=self.tmp.name)
        prog = os.path.join(d, 'np_prog.py')
        with open(prog, 'w') as f:
            f.write(PROGRAM)
        db = os.path.join(d, 'np.sqlite')
        r = self.heapprof('run', '-o', db, '--interval', '4096', prog, cwd=d)
        self.assertEqual(r.returncode, 3, r.stderr)            # the program's own status
        self.assertEqual(r.stdout, 'sum %d 20000\n' % (100 * sum(range(20000))))
        self.assertIn('(pid ', r.stderr)
        self.assertIn('database: %s' % db, r.stderr)
        self.assertEqual([f for f in os.listdir(d) if f.startswith('np.sqlite')], ['np.sqlite'])
        # numpy came from the system's packages, and its import was profiled.
        r = self.heapprof('top', '--db', db, '--at', 'end', '-n', '200', '--by', 'cumulative')
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r'/dist-packages/numpy/')
        self.assertIn('np_prog.py:', r.stdout)
        r = self.heapprof('sessions', '--db', db, '--json')
        self.assertRegex(r.stdout, r'"status": "exited"')
        self.assertIn('"argv": [\n   "%s"\n  ]' % prog, r.stdout)
        # matplotlib, also the system's, draws the PNG.
        png = os.path.join(d, 'heap.png')
        r = self.heapprof('plot', '--db', db, '-o', png)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(png, 'rb') as f:
            self.assertEqual(f.read(8), b'\x89PNG\r\n\x1a\n')

    def test_numpy_arrays_are_seen_at_their_lines(self):
        d = tempfile.mkdtemp(dir=self.tmp.name)
        prog = os.path.join(d, 'np_arrays.py')
        with open(prog, 'w') as f:
            f.write(NUMPY_PROGRAM)
        lines = NUMPY_PROGRAM.splitlines()
        leak_line = 1 + next(i for i, t in enumerate(lines) if 'LEAK_LINE' in t)
        spike_line = 1 + next(i for i, t in enumerate(lines) if 'SPIKE_LINE' in t)
        db = os.path.join(d, 'np.sqlite')
        r = self.heapprof('run', '-o', db, prog, cwd=d)
        self.assertEqual(r.returncode, 0, r.stderr)
        kept, total = (int(w) for w in r.stdout.split())
        self.assertEqual(kept, 50 << 20)
        self.assertEqual(total, 4096 * 2048)
        # Blocks of 1 MiB at the default 64 KiB interval are sampled with probability
        # 1 - exp(-16) and each stands for its size: the estimate is within 5%.
        r = self.heapprof('leaks', '--db', db, '-n', '5')
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = [t for t in r.stdout.splitlines() if t[:1].isdigit()]
        self.assertTrue(rows[0].endswith('np_arrays.py:%d)' % leak_line), r.stdout)
        leaked = site_bytes(r.stdout, 'np_arrays.py:%d)' % leak_line)
        self.assertGreater(leaked, 0.95 * kept)
        self.assertLess(leaked, 1.05 * kept)
        # At the peak the spike's 64 MiB is live beside the 40 arrays leaked by then.
        r = self.heapprof('top', '--db', db, '--at', 'peak', '-n', '5')
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = [t for t in r.stdout.splitlines() if t[:1].isdigit()]
        self.assertTrue(rows[0].endswith('np_arrays.py:%d)' % spike_line), r.stdout)
        self.assertIn('spike (', rows[0])
        spiked = site_bytes(r.stdout, 'np_arrays.py:%d)' % spike_line)
        self.assertGreater(spiked, 0.95 * (64 << 20))
        self.assertLess(spiked, 1.05 * (64 << 20))
        at_peak = site_bytes(r.stdout, 'np_arrays.py:%d)' % leak_line)
        self.assertGreater(at_peak, 0.95 * (40 << 20))
        self.assertLess(at_peak, 1.05 * (40 << 20))
        # tracemalloc, which numpy tells about its buffers (PyTraceMalloc_Track), finds the
        # same peak within the estimate's tolerance (the small objects' sampling noise is
        # well under 1% of it; 10% allows for what the two count differently).
        m = re.search(r'live heap: ([0-9.]+) (B|KiB|MiB|GiB)', r.stdout)
        heapprof_peak = float(m.group(1)) * UNITS[m.group(2)]
        t = run([os.path.join(self.bin, 'python'), '-X', 'tracemalloc', prog], env=self.env,
                cwd=d)
        self.assertEqual(t.returncode, 0, t.stderr)
        tracemalloc_peak = int(t.stdout.split()[2])
        self.assertGreater(heapprof_peak, 0.9 * tracemalloc_peak)
        self.assertLess(heapprof_peak, 1.1 * tracemalloc_peak)
        # They are native allocations, not the interpreter's.
        r = self.heapprof('top', '--db', db, '--at', 'peak', '-n', '5', '--domain', 'python')
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn('np_arrays.py:%d)' % spike_line, r.stdout)
        r = self.heapprof('run', '-o', os.path.join(d, 'off.sqlite'), '--no-native', prog, cwd=d)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.heapprof('leaks', '--db', os.path.join(d, 'off.sqlite'), '-n', '50')
        self.assertEqual(r.returncode, 0, r.stderr)
        # Without native sampling the line keeps only the 50 array objects (~5 KiB, which
        # the 64 KiB interval samples now and then, each sample standing for ~64 KiB),
        # never their 50 MiB of data.
        if 'np_arrays.py:%d)' % leak_line in r.stdout:
            self.assertLess(site_bytes(r.stdout, 'np_arrays.py:%d)' % leak_line), 0.05 * kept)

    def test_the_start_up_hook_profiles_the_venvs_python(self):
        # HEAPPROF_SOCKET works for the interpreter heapprof is installed for.
        d = tempfile.mkdtemp(dir=self.tmp.name)
        db, sock = os.path.join(d, 'hook.sqlite'), os.path.join(d, 'hook.sock')
        daemon = subprocess.Popen([os.path.join(self.bin, 'heapprofd'), '--db', db, '--socket',
                                   sock], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, env=self.env)
        try:
            self.assertIn('listening on', daemon.stdout.readline())
            r = run([os.path.join(self.bin, 'python'), '-c', 'import numpy; x = [0] * 100000'],
                    env=dict(self.env, HEAPPROF_SOCKET=sock))
            self.assertEqual(r.returncode, 0, r.stderr)
        finally:
            daemon.terminate()
            daemon.communicate(timeout=60)
        self.assertEqual(daemon.returncode, 0)
        r = self.heapprof('sessions', '--db', db, '--json')
        self.assertIn('"-c"', r.stdout)
        self.assertIn('"exited"', r.stdout)


if __name__ == '__main__':
    unittest.main()
