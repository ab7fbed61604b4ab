"""End to end: `python -m heapprof run` (private heapprofd, summary, exit status passed
through, database written; -m module; --socket; Ctrl-C goes to the program, not to the
daemon; no empty database left behind) and `python -m heapprof stats`."""
import glob
import json
import os
import re
import signal
import sqlite3
import subprocess
import tempfile
import unittest

from agent_e2e_util import (PYTHON, Daemon, clean_env, heapprofd_path, line_of, run_python,
                            write_program)

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


# Waits for Ctrl-C (bounded: a missed SIGINT ends it with 9, not a hung test).
INTERRUPTIBLE = """
import sys, time
keep = [bytearray(100000) for _ in range(200)]     # SITE_KEEP
deadline = time.monotonic() + 40
try:
    print("ready", flush=True)             # inside: the SIGINT may come right after it
    while time.monotonic() < deadline:
        time.sleep(0.01)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(3)
sys.exit(9)
"""


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
        # The summary read the database without leaving -wal/-shm files beside it.
        self.assertEqual([f for f in os.listdir(self.tmp) if f.startswith('out.')],
                         ['out.sqlite'])
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
        # Issue 13 item 4: the session's argv names the module ("-m", "z" said nothing).
        con = sqlite3.connect(dbs[0])
        try:
            argv = json.loads(con.execute('SELECT argv FROM sessions').fetchone()[0])
        finally:
            con.close()
        self.assertEqual(argv, ['-m', 'appmod', 'z'])
        r = self.heapprof('sessions', '--db', dbs[0])
        self.assertRegex(r.stdout, r' -m appmod z\n')

    def test_the_module_and_command_of_python_itself_are_recorded(self):
        # The same through the start-up hook alone: python -m MODULE / -c CODE, in the
        # forms Python accepts.
        write_program(self.tmp, 'appmod.py', PROGRAM)
        daemon = Daemon(self.tmp)
        self.addCleanup(daemon.kill)
        env = dict(self.env, PYTHONPATH=self.tmp, HEAPPROF_SOCKET=daemon.socket)
        runs = ((['-m', 'appmod', 'a', '-m'], ['-m', 'appmod', 'a', '-m']),
                (['-mappmod', 'b'], ['-m', 'appmod', 'b']),
                (['-B', '-m', 'appmod'], ['-m', 'appmod']),
                (['-Bm', 'appmod', '-c'], ['-m', 'appmod', '-c']),
                (['-c', 'import sys; x = bytearray(100000); sys.exit(4)', 'q'],
                 ['-c', 'import sys; x = bytearray(100000); sys.exit(4)', 'q']))
        for args, _ in runs:
            p = subprocess.run([PYTHON] + args, env=env, cwd=self.tmp, capture_output=True,
                               text=True, timeout=60)
            self.assertEqual(p.returncode, 4, (args, p.stderr))
        daemon.stop()
        got = [json.loads(a) for a, in daemon.query('SELECT argv FROM sessions '
                                                    'ORDER BY session_id')]
        self.assertEqual(got, [want for _, want in runs])

    def test_run_refuses_what_the_program_could_not_be_profiled_with(self):
        # Issue 13 item 6: each of these ran the program unprofiled, deleted the database
        # and exited 0, naming a variable the user never set.
        path = write_program(self.tmp, 'app.py', PROGRAM)
        listener_dir = tempfile.mkdtemp(dir=self.tmp)
        stale = os.path.join(listener_dir, 'stale.sock')
        import socket
        sk = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sk.bind(stale)          # a socket file nobody listens on (a daemon that died)
        sk.close()
        from heapprof import _agent
        depth_max = _agent.MAX_STACK_DEPTH
        cases = (
            (['--max-depth', '9999'], {}, '--max-depth 9999 is outside 1..%d' % depth_max),
            (['--max-depth=0'], {}, '--max-depth 0 is outside 1..%d' % depth_max),
            (['--interval', '%d' % (1 << 41)], {}, '--interval %d is outside' % (1 << 41)),
            ([], {'HEAPPROF_INTERVAL': 'abc'}, "HEAPPROF_INTERVAL 'abc' is not a whole number"),
            ([], {'HEAPPROF_MAX_DEPTH': '99999'}, 'HEAPPROF_MAX_DEPTH 99999 is outside'),
            ([], {'HEAPPROF_ON_FULL': 'wait'}, "HEAPPROF_ON_FULL 'wait': expected"),
            ([], {'HEAPPROF_RATES': '{128: 2}'}, 'HEAPPROF_RATES: sample rates: rate 2'),
            ([], {'HEAPPROF_FREELISTS': 'maybe'},
             "HEAPPROF_FREELISTS='maybe': expected 1 or 0"),
            (['--rates', '128:0.5'], {'HEAPPROF_ON_FULL': 'adapt'},
             'HEAPPROF_ON_FULL=adapt doubles a sampling interval; with --rates'),
            (['--socket', '/nonexistent/heapprofd.sock'], {},
             '--socket /nonexistent/heapprofd.sock: No such file or directory'),
            (['--socket', path], {}, '--socket %s is not a socket' % path),
            (['--socket', stale], {}, '--socket %s: cannot connect: Connection refused' % stale),
        )
        for opts, env, words in cases:
            with self.subTest(opts=opts, env=env):
                r = self.heapprof('run', *opts, path, env=dict(self.env, **env))
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertEqual(r.stdout, '')                  # the program never ran
                lines = r.stderr.splitlines()
                self.assertEqual(len(lines), 1, r.stderr)
                self.assertTrue(lines[0].startswith('heapprof run: '), lines[0])
                self.assertIn(words, lines[0])
                self.assertEqual(glob.glob(os.path.join(self.tmp, '*.sqlite')), [])

    def test_ctrl_c_reaches_the_program_and_the_session_is_complete(self):
        # Review item 1: SIGINT was ignored in the child (SIG_IGN survives exec) and
        # stopped the daemon (same process group). Ctrl-C is a SIGINT to the terminal's
        # foreground process group: killpg on a group of our own is the same thing.
        path = write_program(self.tmp, 'loop.py', INTERRUPTIBLE)
        db = os.path.join(self.tmp, 'int.sqlite')
        proc = subprocess.Popen([PYTHON, '-m', 'heapprof', 'run', '-o', db,
                                 '--interval', '1', path], env=self.env, cwd=self.tmp,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            self.assertEqual(proc.stdout.readline(), 'ready\n')
            os.killpg(proc.pid, signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.assertEqual(proc.returncode, 3, err)      # the program's own status
        self.assertEqual(out, 'interrupted\n')
        self.assertNotIn('heapprofd exited', err)
        self.assertIn('database: %s' % db, err)
        con = sqlite3.connect(db)
        try:
            status = con.execute('SELECT status FROM sessions').fetchall()
            n, size = con.execute(
                "SELECT COUNT(*), SUM(a.size) FROM allocations a "
                "JOIN stack_frames sf ON sf.stack_id = a.stack_id AND sf.depth = 0 "
                "JOIN frames f ON f.frame_id = sf.frame_id "
                "WHERE f.lineno = ? AND f.filename = ?",   # <listcomp> on 3.11, inlined on 3.12+
                (line_of(path, 'SITE_KEEP'), path)).fetchone()
        finally:
            con.close()
        self.assertEqual(status, [('exited',)])
        # Interval 1 records every block: all 200 data buffers are there.
        self.assertGreaterEqual(n, 200)
        self.assertGreaterEqual(size, 200 * 100000)

    def test_hangup_and_terminate_end_the_program_and_stop_the_daemon(self):
        # The daemon runs in its own session (so that Ctrl-C misses it): a terminal
        # hangup (SIGHUP to the group) or `kill RUNNER` (SIGTERM to the runner alone)
        # must still end with the program's status and a cleanly stopped daemon, never
        # a heapprofd left running after the runner.
        path = write_program(self.tmp, 'loop.py', INTERRUPTIBLE)
        for sig, to_group in ((signal.SIGHUP, True), (signal.SIGTERM, False)):
            db = os.path.join(self.tmp, 'sig%d.sqlite' % sig)
            proc = subprocess.Popen([PYTHON, '-m', 'heapprof', 'run', '-o', db, path],
                                    env=self.env, cwd=self.tmp, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)
            try:
                self.assertEqual(proc.stdout.readline(), 'ready\n')
                if to_group:
                    os.killpg(proc.pid, sig)
                else:
                    proc.send_signal(sig)
                out, err = proc.communicate(timeout=60)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            self.assertEqual(proc.returncode, 128 + sig, err)   # killed by the signal
            self.assertNotIn('heapprofd exited', err)
            self.assertIn('database: %s' % db, err)            # summarised after the stop
            con = sqlite3.connect(db)
            try:
                self.assertEqual(con.execute('SELECT COUNT(*) FROM sessions').fetchone()[0], 1)
            finally:
                con.close()
            # The daemon released the database (its lock file goes at a clean exit).
            self.assertFalse(os.path.exists(db + '.lock'))

    def test_run_missing_module_leaves_no_database(self):
        # Review item 15: the empty heapprof-<ts>.sqlite became the next default --db.
        r = self.heapprof('run', '-m', 'heapprof_no_such_module_xyz')
        self.assertNotEqual(r.returncode, 0)
        self.assertEqual(len(r.stderr.splitlines()), 1, r.stderr)
        self.assertIn("no module named 'heapprof_no_such_module_xyz'", r.stderr)
        self.assertEqual(glob.glob(os.path.join(self.tmp, 'heapprof-*')), [])

    def test_database_without_sessions_is_removed_only_then(self):
        # The run's last resort when no session arrived at all: a real daemon's empty
        # database is removed with its side files; one with a session is kept.
        from heapprof import runner
        empty_dir = os.path.join(self.tmp, 'empty')
        os.mkdir(empty_dir)
        daemon = Daemon(empty_dir)
        self.addCleanup(daemon.kill)
        daemon.stop()
        self.assertTrue(os.path.exists(daemon.db))
        self.assertTrue(runner._remove_if_no_session(daemon.db))
        self.assertEqual([f for f in os.listdir(empty_dir) if f.startswith('heap.sqlite')], [])
        path = write_program(self.tmp, 'app.py', PROGRAM)
        db = os.path.join(self.tmp, 'kept.sqlite')
        r = self.heapprof('run', '-o', db, path)
        self.assertEqual(r.returncode, 4, r.stderr)
        self.assertFalse(runner._remove_if_no_session(db))
        self.assertTrue(os.path.exists(db))

    def test_summary_warns_that_drops_can_hide_frees(self):
        # Review item 3: a dropped FREE makes a block look allocated for ever; the
        # summary says so when the session dropped events, and only then. The scripted
        # client's 'normal' session reports 3 drops in its GOODBYE, 'many-frames' none.
        import io
        from heapprof import runner
        client = os.path.join(os.environ.get('HEAPPROF_BUILD_ROOT', ''), 'tests',
                              'integration', 'hp_testclient')
        daemon = Daemon(self.tmp)
        self.addCleanup(daemon.kill)
        for scenario in ('normal', 'many-frames'):
            r = subprocess.run([client, '--socket', daemon.socket, '--scenario', scenario,
                                '--tag', scenario, '--events', '10', '--defs', '5'],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
        daemon.stop()
        out = io.StringIO()
        runner.summarize(daemon.db, out)
        lines = out.getvalue().splitlines()
        heads = [i for i, l in enumerate(lines) if l.startswith('session ')]
        self.assertEqual(len(heads), 2, lines)
        first = lines[heads[0]:heads[1]]
        second = lines[heads[1]:]
        self.assertIn(', 3 events dropped', first[0])
        notes = [l for l in first if 'may include blocks whose free was lost' in l]
        self.assertEqual(len(notes), 1, lines)
        self.assertIn('--on-full block', notes[0])
        self.assertFalse([l for l in second if 'free was lost' in l], lines)

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
        self.assertIn('--no-freelists', r.stdout)
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
        self.assertIn('count%', r.stderr)
        # The 200 blocks of 100000 bytes (plus bytearray's terminating byte) land in the
        # 65536-131071 class: at least 200 counted there, with their bytes. Sizes and
        # bytes in the human units of `heapprof stats --db` (review 2 item 5).
        row = [l for l in r.stderr.splitlines() if l.startswith('64.0 KiB - 128.0 KiB ')]
        self.assertEqual(len(row), 1, r.stderr)
        cells = row[0][len('64.0 KiB - 128.0 KiB '):].split()
        count, value, unit = int(cells[0]), float(cells[2]), cells[3]
        self.assertGreaterEqual(count, 200)
        self.assertEqual(unit, 'MiB', row[0])
        self.assertGreaterEqual(value, round(200 * 100000 / 2**20, 1))
        total = [l for l in r.stderr.splitlines() if l.startswith('total ')]
        self.assertEqual(len(total), 1, r.stderr)
        self.assertRegex(total[0], r' \d+\.\d (KiB|MiB|GiB)$')

    def test_stats_of_a_program_and_of_its_recording_use_the_same_size_classes(self):
        # Issue 13 item 10: `stats PROGRAM` counted [128, 255] where `stats --db` counted
        # [129, 256], so the two tables never lined up.
        path = write_program(self.tmp, 'app.py', PROGRAM)

        def classes(text):
            return {m.group(1) for m in re.finditer(
                r'^\s*(\d+(?:\.\d)? \w+(?: - \d+(?:\.\d)? \w+)?)\s{2,}\d', text, re.M)}
        counted = classes(self.heapprof('stats', path).stderr)
        db = os.path.join(self.tmp, 'classes.sqlite')
        self.assertEqual(self.heapprof('run', '-o', db, '--interval', '1', path).returncode, 4)
        r = self.heapprof('stats', '--db', db)
        self.assertEqual(r.returncode, 0, r.stderr)
        sampled = classes(r.stdout)
        # Both hold the 100000-byte buffers and small objects of every size.
        same = {'64.0 KiB - 128.0 KiB', '16 B - 31 B', '32 B - 63 B', '64 B - 127 B',
                '128 B - 255 B', '256 B - 511 B', '512 B - 1023 B'}
        self.assertLessEqual(same, counted)
        self.assertLessEqual(same, sampled)

    def test_run_refuses_interval_with_rates(self):
        # Review 2 item 3: the rates silently replaced the interval.
        path = write_program(self.tmp, 'app.py', PROGRAM)
        r = self.heapprof('run', '--interval', '4096', '--rates', '128:0.5', path)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertEqual(r.stdout, '')
        lines = r.stderr.splitlines()
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertIn('--interval 4096 and --rates 128:0.5 are both set', lines[0])
        self.assertEqual(glob.glob(os.path.join(self.tmp, '*.sqlite')), [])

    def test_run_refuses_adapt_with_rates(self):
        # Review 3 item 5: the program's agent refused it and ran unprofiled.
        path = write_program(self.tmp, 'app.py', PROGRAM)
        r = self.heapprof('run', '--on-full', 'adapt', '--rates', '128:0.5', path)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertEqual(r.stdout, '')
        lines = r.stderr.splitlines()
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertIn('--on-full adapt doubles a sampling interval', lines[0])
        self.assertEqual(glob.glob(os.path.join(self.tmp, '*.sqlite')), [])


if __name__ == '__main__':
    unittest.main()
