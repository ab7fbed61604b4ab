"""heapprofd --pprof-dir DIR --pprof-every SECONDS while recording (suite 'daemon', 'pprof').

A real heapprofd exports a profile of each recording session every second, with the real
exporter (the installed `heapprof`), while a real example program is profiled: files appear,
named by host, pid and time, each readable by `go tool pprof`; their ranges tile, so the
alloc_space of a session's files adds up to everything it allocated. heapprofd runs with
HEAPPROF_SOCKET pointing at itself: the exporter must not profile itself into it.
"""
import glob
import os
import re
import signal
import sqlite3
import subprocess
import tempfile
import time
import unittest

import pprof_decode
import tools_recording as rec
from test_pprof_export import go_pprof


def heapprofd(*args, env=None):
    return subprocess.run([rec.heapprofd_path()] + list(args), capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL, env=env)


class PprofEveryTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix='hp-pprof-every-')
        self.addCleanup(self.tmp.cleanup)
        self.out = os.path.join(self.tmp.name, 'profiles')
        os.mkdir(self.out)

    def start_daemon(self):
        db = os.path.join(self.tmp.name, 'rec.sqlite')
        sock = os.path.join(self.tmp.name, 'rec.sock')
        env = {k: v for k, v in os.environ.items() if not k.startswith('HEAPPROF_')}
        env['HEAPPROF_SOCKET'] = sock
        # Append mode, as agent_e2e_util.Daemon's log (a seek to read it must not move
        # where heapprofd writes).
        self.log = open(os.path.join(self.tmp.name, 'heapprofd.log'), 'a+')
        self.addCleanup(self.log.close)
        p = subprocess.Popen([rec.heapprofd_path(), '--db', db, '--socket', sock,
                              '--pprof-dir', self.out, '--pprof-every', '1',
                              '--log-level', 'debug'],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.log,
                             env=env)
        self.addCleanup(self.kill, p)
        line = p.stdout.readline()
        self.assertIn(b'listening on', line)
        return p, db, sock

    def kill(self, p):
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()

    def stop(self, p):
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(timeout=30), 0)

    def test_profiles_appear_while_recording_and_add_up(self):
        p, db, sock = self.start_daemon()
        env = {k: v for k, v in os.environ.items() if not k.startswith('HEAPPROF_')}
        env.update(HEAPPROF_SOCKET=sock, HEAPPROF_INTERVAL='8192')
        prog = subprocess.Popen([rec.PYTHON, os.path.join(rec.EXAMPLES, 'steady.py'), '6'],
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        self.addCleanup(lambda: prog.poll() is None and prog.kill())
        # Profiles appear while the program still runs: the first file is older than the
        # session's end (its time, not this test's look at the program, which a loaded
        # machine can delay past the program's exit).
        first = rec.wait_for(lambda: glob.glob(os.path.join(self.out, '*.pb.gz')), 20,
                             'a profile while recording')
        first_written_ns = os.stat(first[0]).st_mtime_ns
        self.assertEqual(prog.wait(timeout=60), 0, prog.stderr.read())
        prog.stderr.close()
        con = sqlite3.connect('file:%s?mode=ro' % db, uri=True)
        self.addCleanup(con.close)
        rows = rec.wait_for(lambda: con.execute(
            "SELECT session_id, pid, started_ns, ended_ns FROM sessions WHERE status <> "
            "'running'").fetchall(), 20, 'the session to end')
        # Only the program's session: the exporter did not profile itself.
        self.assertEqual(con.execute('SELECT COUNT(*) FROM sessions').fetchone()[0], 1)
        sid, pid, started, ended = rows[0]
        self.assertLess(first_written_ns, ended, 'the first profile came after the session')

        def decoded():
            out = []
            for path in sorted(glob.glob(os.path.join(self.out, '*.pb.gz'))):
                with open(path, 'rb') as f:
                    out.append((path, pprof_decode.decode(f.read())))
            return out

        # Wait for the profile whose range reaches the session's end.
        rec.wait_for(lambda: any(pr.time_nanos + pr.duration_nanos == ended
                                 for _, pr in decoded()), 30, 'the last profile')
        self.stop(p)
        files = decoded()
        self.assertIn(first[0], [f for f, _ in files])
        self.assertGreaterEqual(len(files), 3)
        host = r'[A-Za-z0-9.-]+'
        for path, _ in files:
            self.assertRegex(os.path.basename(path),
                             r'^heapprof-%s-%d-%d-\d{8}T\d{6}\.\d{3}Z\.pb\.gz$' % (host, pid, sid))
        # Each one readable by a real pprof client.
        for path, prof in files:
            raw = go_pprof('-raw', path)
            self.assertIn('inuse_space/bytes[dflt]', raw)
            self.assertRegex(raw, r'(?m)^Period: 8192$')
        # The ranges tile from the session's start to its end...
        ranges = sorted((pr.time_nanos, pr.time_nanos + pr.duration_nanos) for _, pr in files)
        self.assertEqual(ranges[0][0], started)
        self.assertEqual(ranges[-1][1], ended)
        for (a0, a1), (b0, b1) in zip(ranges, ranges[1:]):
            self.assertEqual(b0, a1)
        # ... so alloc_space adds up to everything the session allocated, and each
        # inuse_space is the live heap at its range's end.
        total = con.execute('SELECT SUM(est_bytes) FROM allocations WHERE session_id = ?',
                            (sid,)).fetchone()[0]
        self.assertEqual(sum(pr.total('alloc_space') for _, pr in files), total)
        for _, pr in files:
            end = pr.time_nanos + pr.duration_nanos
            live = con.execute('SELECT COALESCE(SUM(est_bytes), 0) FROM allocations WHERE'
                               ' session_id = ? AND ts_ns <= ? AND (freed_ns IS NULL OR'
                               ' freed_ns > ?)', (sid, end, end)).fetchone()[0]
            self.assertEqual(pr.total('inuse_space'), live)
        # No temporary file left; heapprofd's summary line.
        self.assertEqual([n for n in os.listdir(self.out) if not n.endswith('.pb.gz')], [])
        self.log.seek(0)
        log = self.log.read()
        self.assertRegex(log, r'pprof: \d+ exports started, \d+ periods skipped, 0 failed')
        self.assertNotIn('Traceback', log)

    def test_stop_leaves_no_exporter_behind(self):
        """SIGTERM once exports have run: heapprofd exits 0 and none of its exporters is
        left (check_pprof tests ending one that is still running)."""
        p, db, sock = self.start_daemon()
        def log():
            with open(self.log.name) as f:
                return f.read()
        rec.wait_for(lambda: re.search(r'pprof export \(pid (\d+)\) of the range', log()),
                     20, 'an export')
        self.stop(p)
        text = log()
        for pid in re.findall(r'pprof export \(pid (\d+)\) of the range', text):
            with self.assertRaises(ProcessLookupError):
                os.kill(int(pid), 0)
        self.assertIn('stopped', text)

    def test_usage_errors(self):
        db = os.path.join(self.tmp.name, 'never.sqlite')
        for args, code, pattern in (
                (['--pprof-every', '0', '--pprof-dir', self.out], 2,
                 r"--pprof-every: '0' is not a number of seconds from 1 to 86400"),
                (['--pprof-every', '5'], 2, r'--pprof-every needs --pprof-dir DIR'),
                (['--pprof-dir', os.path.join(self.tmp.name, 'nope')], 1,
                 r'--pprof-dir .*nope: No such file or directory'),
                (['--pprof-dir', rec.heapprofd_path()], 1,
                 r'--pprof-dir .*heapprofd: not a directory')):
            r = heapprofd('--db', db, '--socket', os.path.join(self.tmp.name, 's.sock'), *args)
            self.assertEqual(r.returncode, code, r.stderr)
            self.assertRegex(r.stderr, pattern)
            self.assertFalse(os.path.exists(db))
        self.assertIn('--pprof-dir DIR', heapprofd('--help').stdout)


if __name__ == '__main__':
    unittest.main()
