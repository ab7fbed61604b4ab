"""End to end: heapprof.mark(label) from a real program lands in the markers view of a
real heapprofd's database, in order, on the events' clock; without a session it returns
False and does nothing."""
import os
import signal
import subprocess
import unittest

from agent_e2e_util import (CHILD_TIMEOUT, PYTHON, DaemonTestCase, clean_env, line_of,
                            run_python, write_program)

PROGRAM = '''
import sys, threading, heapprof
sock, interval = sys.argv[1], int(sys.argv[2])
print("before", heapprof.mark("not profiling"))
try:
    heapprof.mark(b"bytes")
except TypeError:
    print("TypeError off")
heapprof.start(socket=sock, sample_interval=interval)
print("first", heapprof.mark("start"))
keep = []
for phase in ("one", "two", "three"):
    for _ in range(40):
        keep.append(bytearray(100000))        # SITE_PHASE
    heapprof.mark("after " + phase)
try:
    heapprof.mark(42)
except TypeError:
    print("TypeError on")
heapprof.mark("\\u00e9t\\u00e9 \\u2603")
heapprof.mark("x" * 4095 + "\\u00e9" + "y" * 10)   # cut at 4096 bytes: before the e-acute
t = threading.Thread(target=heapprof.mark, args=("from a thread",))
t.start(); t.join()
heapprof.mark("")
heapprof.stop()
print("after", heapprof.mark("stopped"))
'''


class Markers(DaemonTestCase):

    def record(self, interval):
        path = write_program(self.tmp, 'marks.py', PROGRAM)
        r = run_python(path, args=[self.daemon.socket, str(interval)], env=clean_env())
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.splitlines(), ['before False', 'TypeError off', 'first True',
                                                 'TypeError on', 'after False'])
        self.assertEqual(r.stderr, '')
        sessions = self.sessions()
        self.assertEqual(len(sessions), 1)
        return path, sessions[0][0]

    def check(self, interval):
        path, sid = self.record(interval)
        # In the order stored (a view has no rowid to order by; the table is scanned in
        # insertion order).
        rows = self.daemon.query('SELECT ts_ns, label FROM markers WHERE session_id = ?',
                                 (sid,))
        labels = [label for _, label in rows]
        self.assertEqual(labels, ['start', 'after one', 'after two', 'after three',
                                  '\u00e9t\u00e9 \u2603', 'x' * 4095, 'from a thread', ''])
        ts = [t for t, _ in rows]
        # Set one after another by the program: stored in that order, never going back.
        self.assertEqual(ts, sorted(ts))
        self.assertLess(ts[0], ts[3])
        started, ended = self.daemon.query('SELECT started_ns, ended_ns FROM sessions'
                                           ' WHERE session_id = ?', (sid,))[0]
        self.assertTrue(started <= ts[0] and ts[-1] <= ended, (started, ts, ended))
        # Marker and event times are one clock: each phase's sampled allocations fall
        # between the markers around it.
        line = line_of(path, 'SITE_PHASE')
        allocs = [t for t, in self.daemon.query(
            'SELECT a.ts_ns FROM allocations a JOIN stack_frames sf ON sf.stack_id = '
            'a.stack_id AND sf.depth = 0 JOIN frames f ON f.frame_id = sf.frame_id WHERE '
            'a.session_id = ? AND f.lineno = ? AND a.size >= 100000 ORDER BY a.ts_ns',
            (sid, line))]
        self.assertGreaterEqual(len(allocs), 60 if interval > 1 else 120)
        for t in allocs:
            self.assertTrue(ts[0] <= t <= ts[3], (ts[:4], t))
        if interval == 1:
            # Every allocation is recorded; on the coarse clock an allocation in the tick
            # of a marker may share its stamp, never be on the wrong side of it.
            self.assertEqual(len(allocs), 120)
            for k, m in enumerate(ts[1:3], 1):
                before = sum(1 for t in allocs if t < m)
                upto = sum(1 for t in allocs if t <= m)
                self.assertTrue(before <= 40 * k <= upto, (k, before, upto))
        else:
            counts = [sum(1 for t in allocs if lo < t <= hi) for lo, hi in zip(ts, ts[1:4])]
            self.assertEqual(sum(counts), len(allocs))
            self.assertTrue(all(c >= 20 for c in counts), counts)

    def test_markers_sampling(self):
        self.check(65536)

    def test_markers_recording_everything(self):
        # Interval 1 stamps events with the coarse clock; markers take the same clock.
        self.check(1)

    def test_mark_never_waits_for_a_stuck_daemon(self):
        # heapprofd stopped: the socket fills, the sender waits on it, markers pile up to
        # their bound and the rest are refused (False) at once; none is lost silently.
        path = write_program(self.tmp, 'stuck.py', STUCK_PROGRAM)
        p = subprocess.Popen([PYTHON, path, self.daemon.socket], env=clean_env(),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            self.assertEqual(p.stdout.readline().strip(), 'ready')
            os.kill(self.daemon.proc.pid, signal.SIGSTOP)
            try:
                p.stdin.write('go\n')
                p.stdin.flush()
                counts = p.stdout.readline().split()
            finally:
                os.kill(self.daemon.proc.pid, signal.SIGCONT)
            p.stdin.write('stop\n')
            p.stdin.flush()
            out, err = p.communicate(timeout=CHILD_TIMEOUT)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.assertEqual(p.returncode, 0, err)
        self.assertEqual(counts[0], 'marked', counts)
        queued, refused = int(counts[1]), int(counts[2])
        self.assertEqual(queued + refused, 20000)
        self.assertGreater(refused, 0)
        self.assertGreaterEqual(queued, 4096)
        sessions = self.sessions()
        self.assertEqual([s[4] for s in sessions], ['exited'])
        stored = self.daemon.query('SELECT COUNT(*) FROM markers WHERE session_id = ?',
                                   (sessions[0][0],))[0][0]
        self.assertEqual(stored, queued)


STUCK_PROGRAM = '''
import sys, heapprof
heapprof.start(socket=sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
label = "m" * 1000
results = [heapprof.mark(label) for _ in range(20000)]
print("marked", results.count(True), results.count(False), flush=True)
sys.stdin.readline()
heapprof.stop()
'''


if __name__ == '__main__':
    unittest.main()
