"""End to end: the Python API (start/stop/is_profiling/profile), size-bucket sampling,
and drops that are counted and reported, never silent."""
import os
import signal
import subprocess
import unittest

from agent_e2e_util import PYTHON, DaemonTestCase, clean_env, line_of, run_python, write_program

API_PROGRAM = '''
import sys, heapprof
sock = sys.argv[1]
before = [bytearray(40000) for _ in range(50)]
print("before", heapprof.is_profiling())
with heapprof.profile(socket=sock, sample_interval=1):
    print("inside", heapprof.is_profiling())
    inside = []
    for _ in range(100):
        inside.append(bytearray(40000))       # SITE_INSIDE
    del before                                 # allocated before: frees send nothing
print("after", heapprof.is_profiling())
print("again", heapprof.start(socket=sock, sample_interval=1), heapprof.is_profiling())
heapprof.stop()
heapprof.stop()                                # idempotent
print("missing", heapprof.start(socket=sock + ".nope"))
try:
    heapprof.start(socket=sock, sample_interval=0)
except ValueError as e:
    print("bad", e)
'''

BUCKETS = '''
keep = []
for _ in range(300):
    keep.append(bytearray(50000))              # SITE_BIG
small = [str(i) for i in range(50000)]
'''

FLOOD = '''
import sys
print("go", flush=True)
keep = []
for i in range(300000):
    keep.append(str(i))
print("done", flush=True)
sys.exit(9)
'''


class Api(DaemonTestCase):

    def big_at(self, sid, line, min_size):
        """(count, est_bytes, live est_bytes) of allocations of at least min_size bytes
        whose innermost frame is the module's line."""
        return self.daemon.query(
            'SELECT COUNT(*), COALESCE(SUM(a.est_bytes), 0), COALESCE(SUM(CASE WHEN '
            'a.freed_ns IS NULL THEN a.est_bytes ELSE 0 END), 0) FROM allocations a '
            'JOIN stack_frames sf ON sf.stack_id = a.stack_id AND sf.depth = 0 '
            'JOIN frames f ON f.frame_id = sf.frame_id WHERE a.session_id = ? AND '
            "f.function = '<module>' AND f.lineno = ? AND a.size >= ?",
            (sid, line, min_size))[0]

    def test_start_stop_context_manager(self):
        path = write_program(self.tmp, 'api.py', API_PROGRAM)
        r = run_python(path, args=[self.daemon.socket], env=clean_env())
        self.assertEqual(r.returncode, 0, r.stderr)
        out = r.stdout.splitlines()
        self.assertEqual(out[:4], ['before False', 'inside True', 'after False', 'again True True'])
        self.assertEqual(out[4], 'missing False')
        self.assertTrue(out[5].startswith('bad sample interval 0 is outside 1..'), out[5])
        err = r.stderr.splitlines()
        self.assertEqual(len(err), 1, r.stderr)
        self.assertIn('cannot reach heapprofd at %s.nope' % self.daemon.socket, err[0])
        sessions = self.sessions()
        self.assertEqual([s[4] for s in sessions], ['exited', 'exited'])
        # heapprof.sessions()/read() are thin wrappers over heapprof.reader.
        r = run_python('import heapprof, sys; s = heapprof.sessions(sys.argv[1]); '
                       'print(len(s), type(heapprof.read(sys.argv[1])).__name__)',
                       args=[self.daemon.db], env=clean_env())
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.split(), ['2', 'Reader'])
        line = line_of(path, 'SITE_INSIDE')
        # Interval 1: every block (a bytearray's buffer has room for a trailing NUL; the
        # object headers and the list's growth at the same line are smaller).
        n, est, live = self.big_at(sessions[0][0], line, 40000)
        self.assertEqual(n, 100)
        self.assertEqual(est, 100 * 40001)
        self.assertEqual(live, 100 * 40001)            # still referenced when stopped
        # Frees of the 50 blocks from before start() were not reported as anything.
        frees = self.daemon.query('SELECT COUNT(*) FROM allocations WHERE session_id = ? AND '
                                  'size = 40000 AND freed_ns IS NOT NULL', (sessions[0][0],))
        self.assertEqual(frees[0][0], 0)

    def test_size_bucket_rates(self):
        path = write_program(self.tmp, 'b.py', BUCKETS)
        r = run_python(path, env=self.profiled_env(HEAPPROF_RATES='{128: 0.001, 8192: 0.5}'))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr, '')
        sessions = self.sessions()
        sid = sessions[0][0]
        interval = self.daemon.query('SELECT sample_interval_bytes FROM sessions')[0][0]
        self.assertEqual(interval, 0)                  # bucket mode
        # Blocks above the last bucket are always sampled, est = size.
        n, est, live = self.big_at(sid, line_of(path, 'SITE_BIG'), 8193)
        self.assertEqual(n, 300)
        self.assertEqual(est, 300 * 50001)
        # Small strings: rate 0.001, each sample stands for size / 0.001.
        rows = self.daemon.query('SELECT size, est_bytes FROM allocations WHERE session_id = ? '
                                 'AND size <= 128 LIMIT 20', (sid,))
        self.assertTrue(rows)
        for size, est in rows:
            self.assertEqual(est, round(size / 0.001))

    def test_interval_with_rates_is_refused_naming_both(self):
        # Review 2 item 3: an interval from the environment was silently replaced by
        # sample_rates; the check looked only at the sample_interval argument.
        code = ('import heapprof, sys\n'
                'for kw in ({}, {"sample_interval": 8192}):\n'
                '    try:\n'
                '        heapprof.start(socket=sys.argv[1], sample_rates={128: 0.5}, **kw)\n'
                '        print("started")\n'
                '    except ValueError as e:\n'
                '        print("refused", e)\n'
                'print("profiling", heapprof.is_profiling())\n')
        r = run_python(code, args=[self.daemon.socket],
                       env=clean_env(HEAPPROF_INTERVAL='4096'))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr, '')
        self.assertEqual(r.stdout.splitlines(), [
            'refused HEAPPROF_INTERVAL=4096 and sample_rates are both set: give an interval '
            'or rates, not both',
            'refused sample_interval=8192 and sample_rates are both set: give an interval '
            'or rates, not both',
            'profiling False'])

    def test_drops_are_counted_and_reported(self):
        # A stopped daemon cannot read: the agent's ring fills and, in drop mode, the
        # program goes on while every lost record is counted and reported at the end.
        path = write_program(self.tmp, 'flood.py', FLOOD)
        os.kill(self.daemon.proc.pid, signal.SIGSTOP)
        try:
            child = subprocess.Popen([PYTHON, path], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     env=self.profiled_env(HEAPPROF_INTERVAL=1))
            try:
                self.assertEqual(child.stdout.readline().strip(), 'go')
                self.assertEqual(child.stdout.readline().strip(), 'done')
            finally:
                os.kill(self.daemon.proc.pid, signal.SIGCONT)
            out, err = child.communicate(timeout=60)
        finally:
            os.kill(self.daemon.proc.pid, signal.SIGCONT)
            if child.poll() is None:
                child.kill()
                child.wait()
        self.assertEqual(child.returncode, 9, err)
        sessions = self.sessions()
        self.assertEqual(len(sessions), 1)
        sid, _, _, _, status, dropped = sessions[0]
        self.assertEqual(status, 'exited')
        self.assertGreater(dropped, 0)
        received = self.daemon.query('SELECT COUNT(*) FROM allocations WHERE session_id = ?',
                                     (sid,))[0][0]
        # 300000 strings plus the list's growth were allocated and each was recorded or
        # counted as dropped.
        self.assertGreaterEqual(received + dropped, 300000)


if __name__ == '__main__':
    unittest.main()
