"""`--domain` on top, leaks and flame, and Reader.restrict_domains() (issue 11), over the
hand-built spike and leak databases of tools_scenarios.py with one site's allocations moved
to the native domain (suite 'tools'). Expected figures come from the scenarios."""
import os
import sqlite3
import subprocess
import sys
import tempfile
import unittest

import tools_scenarios as sc

from heapprof.reader import ReaderError
from heapprof.reader import read as hr_read

PY = os.environ.get('HEAPPROF_PYTHON', sys.executable)
SCRIPT = os.path.join(os.path.dirname(PY), 'heapprof')
MiB = 1024 * 1024


def heapprof(*args):
    return subprocess.run([SCRIPT] + list(args), capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def make_native(path, scenario, stack):
    """Moves the allocations of one scenario stack to domain 3 (native)."""
    con = sqlite3.connect(path)
    try:
        con.execute('UPDATE alloc SET domain = 3 WHERE session_id = ? AND stack_id = ?',
                    (scenario.session_id, scenario.db_stack_id(stack)))
        con.commit()
    finally:
        con.close()


class DomainTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix='hp-tools-domain-')
        cls.spike = sc.spike()
        cls.leak = sc.leak()
        cls.spike_db = sc.write_db(os.path.join(cls.tmp.name, 'spike.sqlite'), cls.spike)
        cls.leak_db = sc.write_db(os.path.join(cls.tmp.name, 'leak.sqlite'), cls.leak)
        make_native(cls.spike_db, cls.spike, cls.spike.marks['spike_stack'])
        make_native(cls.leak_db, cls.leak, cls.leak.marks['leak_stack'])

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def ok(self, *args):
        p = heapprof(*args)
        self.assertEqual(p.returncode, 0, 'heapprof %s\n%s%s' % (args, p.stdout, p.stderr))
        return p.stdout

    def test_reader_snapshot_split_by_domain(self):
        t = self.spike.marks['peak_lo']
        live = self.spike.live_at(t)
        spike_st = self.spike.marks['spike_stack']
        with hr_read(self.spike_db) as r:
            everything = r.live_bytes_at(t)
            r.restrict_domains(['native'])
            self.assertEqual(r.domains, ('native',))
            native = r.live_bytes_at(t)
            self.assertEqual(r.snapshot_at(t), {self.spike.db_stack_id(spike_st): live[spike_st]})
            r.restrict_domains(['python'])
            python = r.live_bytes_at(t)
            r.restrict_domains(None)
            self.assertEqual(r.live_bytes_at(t), everything)
        self.assertEqual(native, 100 * 100 * 1024)
        self.assertEqual(native + python, sum(live.values()))
        self.assertEqual(everything, sum(live.values()))

    def test_reader_refuses_unknown_domain(self):
        with hr_read(self.spike_db) as r:
            with self.assertRaises(ReaderError):
                r.restrict_domains(['gpu'])

    def test_top_native_at_peak(self):
        out = self.ok('top', '--db', self.spike_db, '--at', 'peak', '--domain', 'native')
        self.assertIn('live heap of domain native: 9.8 MiB', out)
        self.assertIn('make_spike', out)
        self.assertNotIn('churn', out)
        out = self.ok('top', '--db', self.spike_db, '--at', 'peak', '--domain', 'python')
        self.assertNotIn('make_spike', out)
        self.assertIn('churn', out)
        out = self.ok('top', '--db', self.spike_db, '--at', 'peak', '--domain', 'native',
                      '--domain', 'python')
        self.assertIn('make_spike', out)
        self.assertIn('churn', out)

    def test_leaks_native(self):
        out = self.ok('leaks', '--db', self.leak_db, '--domain', 'native')
        self.assertRegex(out, r'3\.8 MiB ±\S+ \S+ of domain native never freed')
        self.assertIn('leak.py:17', out)
        self.assertNotIn('leak.py:9', out)
        out = self.ok('leaks', '--db', self.leak_db, '--domain', 'python')
        self.assertNotIn('leak.py:17', out)
        self.assertIn('leak.py:9', out)

    def test_flame_native(self):
        out = self.ok('flame', '--db', self.spike_db, '--at', 'peak', '--domain', 'native',
                      '-o', '-')
        lines = out.splitlines()
        self.assertEqual(len(lines), 1, out)
        self.assertIn('make_spike', lines[0])
        self.assertEqual(int(lines[0].rsplit(' ', 1)[1]), 100 * 100 * 1024)

    def test_bad_domain_is_a_usage_error(self):
        p = heapprof('top', '--db', self.spike_db, '--domain', 'gpu')
        self.assertEqual(p.returncode, 2)
        self.assertIn('--domain', p.stderr)
        self.assertNotIn('Traceback', p.stderr)

    def test_help_names_domain(self):
        for cmd in ('top', 'leaks', 'flame'):
            self.assertIn('--domain', self.ok(cmd, '--help'))


if __name__ == '__main__':
    unittest.main()
