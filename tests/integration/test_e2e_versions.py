"""End to end: an interpreter the agent does not support (CPython 3.10 and older, 3.14+,
free-threaded builds) is refused with one line naming it and the supported versions, and
the program runs unprofiled; nothing else is printed and nothing breaks.

A real older CPython runs the installed package through its start-up hook when the
machine has one (pyenv's 3.10, 3.9...); versions no machine here has (3.14, a free-
threaded 3.13t) are presented to the package by changing sys.version_info / sys.abiflags
before site.py runs the start-up hook."""
import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import unittest

from agent_e2e_util import PYTHON, DaemonTestCase, clean_env

# The package's site-packages (PYTHON is the venv's interpreter with heapprof installed).
SITE = subprocess.run([PYTHON, '-c', 'import os, heapprof; '
                       'print(os.path.dirname(os.path.dirname(heapprof.__file__)))'],
                      capture_output=True, text=True, check=True).stdout.strip()
SUPPORTED = json.loads(subprocess.run(
    [PYTHON, '-c', 'import json; from heapprof._pythons import SUPPORTED; '
     'print(json.dumps(SUPPORTED))'], capture_output=True, text=True, check=True).stdout)
SUPPORTED_TEXT = 'CPython %s (with the GIL)' % ', '.join('%d.%d' % tuple(v) for v in SUPPORTED)

# Pretends to be another interpreter, then lets site.py process the package's directory
# (run with -S: nothing was processed before), whose heapprof.pth runs the start-up hook;
# then the "program".
PRETEND = '''
import collections, sys
version, abiflags, site_dir = sys.argv[1:4]
v = tuple(int(x) for x in version.split('.'))
sys.version_info = collections.namedtuple(
    'version_info', 'major minor micro releaselevel serial')(*v, 'final', 0)
sys.abiflags = abiflags
import site
site.addsitedir(site_dir)
print('program ran', 'heapprof._agent' in sys.modules)
'''

PRETEND_RUNNER = '''
import collections, sys
sys.version_info = collections.namedtuple(
    'version_info', 'major minor micro releaselevel serial')(3, 14, 0, 'final', 0)
from heapprof import runner
sys.exit(getattr(runner, sys.argv[1] + '_main')(sys.argv[2:]))
'''


def older_interpreters():
    """Real CPythons older than the oldest supported one on this machine."""
    oldest = min(tuple(v) for v in SUPPORTED)
    found = []
    roots = [os.environ.get('PYENV_ROOT'), os.path.expanduser('~/.pyenv')]
    for minor in range(oldest[1] - 1, 6, -1):
        name = 'python3.%d' % minor
        candidates = [shutil.which(name)]
        for root in filter(None, roots):
            candidates += sorted(glob.glob(os.path.join(root, 'versions', '3.%d.*' % minor,
                                                        'bin', name)))
        for c in candidates:
            # pyenv's shims exist for versions not selected here, and then fail.
            if c and subprocess.run([c, '-c', 'pass'], capture_output=True).returncode == 0:
                found.append(c)
    return found


class Refusal(DaemonTestCase):

    def expect_refusal(self, r, name):
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, 'program ran False\n')
        self.assertEqual(r.stderr, 'heapprof: %s is not supported; heapprof supports %s; the '
                         'program runs unprofiled\n' % (name, SUPPORTED_TEXT))

    def test_versions_no_machine_here_has_are_refused_at_start_up(self):
        for version, abiflags, name in [('3.14.0', '', 'CPython 3.14.0'),
                                        ('3.10.13', '', 'CPython 3.10.13'),
                                        ('3.13.0', 't', 'free-threaded CPython 3.13.0')]:
            r = subprocess.run([PYTHON, '-S', '-c', PRETEND, version, abiflags, SITE],
                               env=self.profiled_env(), capture_output=True, text=True,
                               timeout=60)
            self.expect_refusal(r, name)
        # Nobody connected: the daemon saw no session.
        self.assertEqual(self.sessions(), [])

    def test_a_real_older_cpython_runs_unprofiled(self):
        exes = older_interpreters()
        if not exes:
            self.skipTest('no CPython older than %d.%d on this machine' % tuple(min(SUPPORTED)))
        exe = exes[0]
        version = subprocess.run([exe, '-c', 'import platform; print(platform.python_version())'],
                                 capture_output=True, text=True, check=True).stdout.strip()
        # Its own site-packages holds no heapprof: add the installed package's directory,
        # whose heapprof.pth runs the start-up hook.
        code = ('import site, sys; site.addsitedir(%r); '
                "print('program ran', 'heapprof._agent' in sys.modules)" % SITE)
        r = subprocess.run([exe, '-c', code], env=self.profiled_env(), capture_output=True,
                           text=True, timeout=60)
        self.expect_refusal(r, 'CPython %s' % version)
        self.assertEqual(self.sessions(), [])

    def test_run_and_stats_refuse_before_starting_anything(self):
        prog = os.path.join(self.tmp, 'p.py')
        with open(prog, 'w') as f:
            f.write('print("ran")\n')
        for cmd in ('run', 'stats'):
            r = subprocess.run([PYTHON, '-c', PRETEND_RUNNER, cmd, prog], env=clean_env(),
                               capture_output=True, text=True, timeout=60, cwd=self.tmp)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertEqual(r.stdout, '')
            self.assertEqual(r.stderr, 'heapprof %s: CPython 3.14.0 is not supported; heapprof '
                             'supports %s\n' % (cmd, SUPPORTED_TEXT))
        self.assertEqual(os.listdir(self.tmp).count('p.py'), 1)
        self.assertFalse(glob.glob(os.path.join(self.tmp, 'heapprof-*.sqlite')))

    def test_this_interpreter_is_supported(self):
        r = subprocess.run([PYTHON, '-c', 'import heapprof, sys; '
                            'print(heapprof.unsupported_reason(), sys.version_info[:2])'],
                           env=clean_env(), capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith('None '), r.stdout)
        self.assertEqual(sysconfig.get_config_var('Py_GIL_DISABLED') or 0, 0)
        self.assertIn(list(sys.version_info[:2]), SUPPORTED)


if __name__ == '__main__':
    unittest.main()
