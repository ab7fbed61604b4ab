"""End to end: `python -m heapprof run` (private heapprofd, summary, exit status passed
through, database written; -m module; --socket) and `python -m heapprof stats`."""
import glob
import os
import re
import sqlite3
import tempfile
import unittest

from agent_e2e_util import (Daemon, clean_env, heapprofd_path, run_python, write_program)

PROGRAM = '''
import sys
def grow():
    keep = []
    for _ in range(200):
        keep.append(bytearray(100000))
    return keep
k = grow()
print("args", sys.argv[1:])
sys.exit(4)
'''


FORKING_PROGRAM = '''
import os
print("pid", os.getpid(), flush=True)
keep = [bytearray(100000) for _ in range(100)]
child = os.fork()
if child == 0:
    more = [bytearray(100000) for _ in range(300)]
    os._exit(0)
os.waitpid(child, 0)
'''


class Runner(unittest.TestCase):

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix='hp-agent-run-')
        self.tmp = self._tmp.name
        self.addCleanup(self._tmp.cleanup)
        self.env = clean_env(HEAPPROFD=heapprofd_path())

    def heapprof(self, *args, env=None):
        return run_python('-m', args=['heapprof'] + list(args), env=env or self.env,
                          cwd=self.tmp)

    def test_run_script_end_to_end(self):
        path = write_program(self.tmp, 'app.py', PROGRAM)
        db = os.path.join(self.tmp, 'out.sqlite')
        r = self.heapprof('run', '-o', db, '--interval', '8192', path, 'x', '-o', 'y')
        self.assertEqual(r.returncode, 4, r.stderr)
        self.assertEqual(r.stdout, "args ['x', '-o', 'y']\n")   # program's own options
        self.assertIn('peak heap ~', r.stderr)
        self.assertIn('grow (%s:' % path, r.stderr)               # the top site
        self.assertIn('database: %s' % db, r.stderr)
        con = sqlite3.connect(db)
        try:
            rows = con.execute('SELECT status, sample_interval_bytes FROM sessions').fetchall()
            est = con.execute('SELECT SUM(est_bytes) FROM allocations').fetchone()[0]
        finally:
            con.close()
        self.assertEqual(rows, [('exited', 8192)])
        self.assertGreater(est, 200 * 100000 * 0.9)

    def test_run_report_describes_the_programs_own_session(self):
        # The child forks: two sessions; the report must be of the program, not the child.
        path = write_program(self.tmp, 'app.py', FORKING_PROGRAM)
        db = os.path.join(self.tmp, 'rep.sqlite')
        r = self.heapprof('run', '-o', db, '--report', path)
        self.assertEqual(r.returncode, 0, r.stderr)
        html = os.path.join(self.tmp, 'rep.html')
        self.assertIn('report: %s' % html, r.stderr)
        con = sqlite3.connect(db)
        try:
            sessions = dict(con.execute('SELECT pid, session_id FROM sessions').fetchall())
        finally:
            con.close()
        self.assertEqual(len(sessions), 2, sessions)
        with open(html) as f:
            text = f.read()
        parent_pid = int(r.stdout.split()[1])
        self.assertIn(parent_pid, sessions)
        pids = {int(p) for p in re.findall(r'"pid":\s*(\d+)', text)}
        self.assertEqual(pids, {parent_pid})
        r = self.heapprof('run', '--report', '--socket', '/nonexistent.sock', path)
        self.assertEqual(r.returncode, 2)
        self.assertIn('--report needs the private heapprofd', r.stderr)

    def test_run_default_db_name_and_module(self):
        write_program(self.tmp, 'appmod.py', PROGRAM)
        r = self.heapprof('run', '-m', 'appmod', 'z', env=dict(self.env, PYTHONPATH=self.tmp))
        self.assertEqual(r.returncode, 4, r.stderr)
        self.assertEqual(r.stdout, "args ['z']\n")
        dbs = glob.glob(os.path.join(self.tmp, 'heapprof-*.sqlite'))
        self.assertEqual(len(dbs), 1, os.listdir(self.tmp))
        self.assertIn('database: %s' % dbs[0], r.stderr)

    def test_run_with_socket_of_running_daemon(self):
        daemon = Daemon(self.tmp)
        self.addCleanup(daemon.kill)
        path = write_program(self.tmp, 'app.py', PROGRAM)
        r = self.heapprof('run', '--socket', daemon.socket, path)
        self.assertEqual(r.returncode, 4, r.stderr)
        daemon.stop()
        self.assertEqual(daemon.query('SELECT COUNT(*) FROM sessions')[0][0], 1)

    def test_run_usage_errors_are_one_line(self):
        for args, words in ((['run'], 'no program given'),
                            (['run', 'missing.py'], "can't open file"),
                            (['run', '--interval', 'x', 'a.py'], 'not a whole number'),
                            (['run', '--bogus', 'a.py'], 'unknown option --bogus'),
                            (['run', '--rates', '{1: 5}', 'a.py'], 'outside (0, 1]')):
            r = self.heapprof(*args)
            self.assertEqual(r.returncode, 2, (args, r.stderr))
            self.assertEqual(len(r.stderr.splitlines()), 1, r.stderr)
            self.assertIn(words, r.stderr)

    def test_run_and_stats_help(self):
        r = self.heapprof('run', '--help')
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('usage: python -m heapprof run', r.stdout)
        # `heapprof stats --help` is the CLI's (it also reads databases); the runner's own
        # help is what `stats PROGRAM --help`-style callers reach through stats_main.
        r = run_python('import sys; from heapprof.runner import stats_main; '
                       'sys.exit(stats_main(["--help"]))', env=self.env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('usage: python -m heapprof stats', r.stdout)

    def test_no_heapprofd_found(self):
        path = write_program(self.tmp, 'app.py', PROGRAM)
        env = clean_env(HEAPPROFD=os.path.join(self.tmp, 'no-such-heapprofd'))
        r = self.heapprof('run', path, env=env)
        self.assertEqual(r.returncode, 2)
        self.assertEqual(len(r.stderr.splitlines()), 1, r.stderr)
        self.assertIn('cannot start heapprofd', r.stderr)

    def test_stats_prints_histogram_and_passes_status(self):
        path = write_program(self.tmp, 'app.py', PROGRAM)
        r = self.heapprof('stats', path, 'q')
        self.assertEqual(r.returncode, 4, r.stderr)
        self.assertEqual(r.stdout, "args ['q']\n")
        self.assertIn('size range (bytes)', r.stderr)
        # The 200 blocks of 100000 bytes (plus bytearray's terminating byte) land in the
        # 65536-131071 class: at least 200 counted there, with their bytes.
        row = [l for l in r.stderr.splitlines() if l.startswith('65536-131071 ')]
        self.assertEqual(len(row), 1, r.stderr)
        count, bytes_ = int(row[0].split()[1]), int(row[0].split()[3])
        self.assertGreaterEqual(count, 200)
        self.assertGreaterEqual(bytes_, 200 * 100000)


if __name__ == '__main__':
    unittest.main()
