"""End to end: the program is never hurt by the profiler. No daemon: one stderr line,
same output and status. Daemon killed mid-run: one stderr line, the program finishes
with its own status. Daemon alive but not reading (SIGSTOP): the exit waits a bounded
time, once per program (not once per fork child), one line says what was lost; a daemon
that only pauses costs block mode nothing. Bad settings: one line naming the setting,
unprofiled."""
import os
import re
import signal
import subprocess
import tempfile
import time
import unittest

from agent_e2e_util import (PYTHON, Daemon, clean_env, run_python, write_program)

PROGRAM = '''
import sys
total = 0
for i in range(20000):
    total += len(bytearray(1000 + i % 100))
print("total", total)
sys.exit(7)
'''

MIDRUN = '''
import os, sys, time
flag = sys.argv[1]
keep = [bytearray(5000) for _ in range(1000)]
print("ready", flush=True)
deadline = time.monotonic() + 30
while not os.path.exists(flag) and time.monotonic() < deadline:
    time.sleep(0.01)
n = 0
for i in range(200000):      # keeps sampling after the daemon is gone
    n += len(bytearray(100 + i % 50))
print("finished", n, flush=True)
sys.exit(5)
'''

# Records everything, so that a daemon that stops reading fills the socket and the ring.
STALLED = '''
import os, sys, time
flag = sys.argv[1]
keep = [bytearray(5000) for _ in range(1000)]
print("ready", flush=True)
deadline = time.monotonic() + 30
while not os.path.exists(flag) and time.monotonic() < deadline:
    time.sleep(0.01)
n = 0
for i in range(300000):
    n += len(bytearray(100 + i % 50))
print("finished", n, flush=True)
sys.exit(6)
'''


# Five fork children one after the other, each recording more than a socket buffers,
# each leaving normally (atexit stops its session).
FORKS_AT_STOPPED_DAEMON = '''
import os, sys, time
flag = sys.argv[1]
print("ready", flush=True)
deadline = time.monotonic() + 30
while not os.path.exists(flag) and time.monotonic() < deadline:
    time.sleep(0.01)
codes = []
for k in range(5):
    pid = os.fork()
    if pid == 0:
        n = 0
        for i in range(60000):
            n += len(bytearray(100 + i % 50))
        sys.exit(0)
    codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print("codes", *codes, flush=True)
'''


class Failures(unittest.TestCase):

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix='hp-agent-fail-')
        self.tmp = self._tmp.name
        self.addCleanup(self._tmp.cleanup)

    def test_daemon_not_running(self):
        path = write_program(self.tmp, 'p.py', PROGRAM)
        plain = run_python(path, env=clean_env())
        sock = os.path.join(self.tmp, 'nobody.sock')
        prof = run_python(path, env=clean_env(HEAPPROF_SOCKET=sock))
        self.assertEqual(plain.returncode, 7)
        self.assertEqual(prof.returncode, 7)
        self.assertEqual(prof.stdout, plain.stdout)
        lines = prof.stderr.splitlines()
        self.assertEqual(len(lines), 1, prof.stderr)
        self.assertTrue(lines[0].startswith('heapprof: cannot reach heapprofd at ' + sock),
                        lines[0])
        self.assertIn('unprofiled', lines[0])

    def test_bad_settings_are_one_line(self):
        # The user set a variable, so the line names the variable (review item 11).
        for env, words in (({'HEAPPROF_INTERVAL': 'lots'}, "HEAPPROF_INTERVAL 'lots' is not"),
                           ({'HEAPPROF_MAX_DEPTH': '100000'},
                            'HEAPPROF_MAX_DEPTH 100000 is outside 1..'),
                           ({'HEAPPROF_ON_FULL': 'wait'},
                            "HEAPPROF_ON_FULL 'wait': expected 'drop', 'block' or 'adapt'"),
                           ({'HEAPPROF_RATES': '{128: 2.0}'}, 'HEAPPROF_RATES: sample rates'),
                           ({'HEAPPROF_FREELISTS': 'maybe'},
                            "freelists HEAPPROF_FREELISTS='maybe': expected 1 or 0"),
                           # Review 2 item 3: an interval from the environment was
                           # silently replaced by the rates.
                           ({'HEAPPROF_INTERVAL': '4096', 'HEAPPROF_RATES': '128:0.5'},
                            'HEAPPROF_INTERVAL=4096 and HEAPPROF_RATES are both set')):
            path = write_program(self.tmp, 'p.py', PROGRAM)
            prof = run_python(path, env=clean_env(HEAPPROF_SOCKET='/nonexistent.sock', **env))
            self.assertEqual(prof.returncode, 7)
            lines = prof.stderr.splitlines()
            self.assertEqual(len(lines), 1, prof.stderr)
            self.assertIn(words, lines[0])

    def test_daemon_killed_mid_run(self):
        daemon = Daemon(self.tmp)
        self.addCleanup(daemon.kill)
        path = write_program(self.tmp, 'mid.py', MIDRUN)
        flag = os.path.join(self.tmp, 'go')
        child = subprocess.Popen([PYTHON, path, flag], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True,
                                 env=clean_env(HEAPPROF_SOCKET=daemon.socket,
                                               HEAPPROF_INTERVAL=1))
        try:
            self.assertEqual(child.stdout.readline().strip(), 'ready')
            daemon.proc.send_signal(signal.SIGKILL)
            daemon.proc.wait(timeout=30)
            open(flag, 'w').close()
            out, err = child.communicate(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        self.assertEqual(child.returncode, 5, err)
        self.assertIn('finished', out)
        lines = err.splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertIn('lost the connection to heapprofd', lines[0])
        self.assertIn('the program continues', lines[0])

    def run_with_stopped_daemon(self, timeout, program=STALLED, pause=None, **env):
        """Runs program (argv[1]: a flag file to wait for) recording every allocation:
        once it says 'ready', SIGSTOPs heapprofd and creates the flag. pause: SIGCONT
        that many seconds later, while the program runs; else only once it has ended.
        Returns (daemon, child, out, err); the daemon is resumed whatever happened."""
        daemon = Daemon(self.tmp)
        self.addCleanup(daemon.kill)
        path = write_program(self.tmp, 'stalled.py', program)
        flag = os.path.join(self.tmp, 'go')
        child = subprocess.Popen([PYTHON, path, flag], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True,
                                 env=clean_env(HEAPPROF_SOCKET=daemon.socket,
                                               HEAPPROF_INTERVAL=1, **env))
        stopped = False
        try:
            self.assertEqual(child.stdout.readline().strip(), 'ready')
            daemon.proc.send_signal(signal.SIGSTOP)
            stopped = True
            open(flag, 'w').close()
            if pause is not None:
                time.sleep(pause)
                daemon.proc.send_signal(signal.SIGCONT)
                stopped = False
            out, err = child.communicate(timeout=timeout)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            if stopped:
                daemon.proc.send_signal(signal.SIGCONT)
        return daemon, child, out, err

    def test_stopped_daemon_does_not_hang_the_exit(self):
        # Review item 2: a SIGSTOPped heapprofd (alive, reading nothing) blocked the
        # sender's send() and the atexit join for ever. Now the exit gives it 5 s
        # without progress. Generous: this only catches a hang.
        daemon, child, out, err = self.run_with_stopped_daemon(90)
        self.assertEqual(child.returncode, 6, err)
        self.assertIn('finished', out)
        lines = err.splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertIn('heapprofd at %s took no data for 5 s' % daemon.socket, lines[0])
        lost = re.search(r'; (\d+) events lost', lines[0])
        self.assertIsNotNone(lost, lines[0])
        self.assertGreater(int(lost.group(1)), 0)
        # Woken up, the daemon reads up to the shut-down stream and ends the session
        # without a GOODBYE: the database says the session is incomplete.
        daemon.stop()
        rows = daemon.query('SELECT status, events_received, events_dropped FROM sessions')
        self.assertEqual(len(rows), 1)
        status, received, dropped = rows[0]
        self.assertEqual(status, 'disconnected')
        # Issue 12 item 7: the loss is counted. The final COUNTERS went out before the
        # drain, into room the data left in the socket, with the events committed and
        # the ring's drops: every allocation of the loop (a bytearray object and its
        # buffer, 300000 times) was either received or counted as dropped. Before, the
        # database counted only what the last periodic COUNTERS knew, a small part.
        self.assertGreaterEqual(dropped, int(lost.group(1)))
        self.assertGreaterEqual(received + dropped, 2 * 300000)

    def test_stopped_daemon_in_block_mode_does_not_hold_the_program(self):
        # Review 2 item 1: in block mode every event waited for ring space, so a
        # SIGSTOPped heapprofd held the program at ~1 event/s (300000 events: days).
        # Now the first wait in which heapprofd took nothing for 5 s gives up: later
        # events are dropped (counted) with one line, and the program finishes with its
        # own status. Generous: 5 s of waiting, the run, the 5 s bound at exit.
        daemon, child, out, err = self.run_with_stopped_daemon(60, HEAPPROF_ON_FULL='block')
        self.assertEqual(child.returncode, 6, err)
        self.assertIn('finished', out)
        lines = err.splitlines()
        said = [l for l in lines if 'heapprofd took no data for 5 s' in l]
        self.assertEqual(said, ['heapprof: heapprofd took no data for 5 s; dropping events '
                                'until it does (block mode)'], err)
        # The only other line is the stop's report of what the stuck daemon did not take.
        rest = [l for l in lines if l not in said]
        self.assertEqual(len(rest), 1, err)
        self.assertIn('took no data for 5 s; ', rest[0])
        self.assertIn('events lost', rest[0])
        daemon.stop()

    def test_block_mode_waits_through_a_daemon_pause(self):
        """Issue 12 item 8: block mode gave up after 1 s without ring space, so a healthy
        heapprofd that paused (a large commit, a checkpoint) lost events of a user who
        asked for all of them. A pause of 2.5 s now costs nothing: every event arrives,
        none is counted as dropped, and nothing is said."""
        # The program allocates into the paused daemon, which resumes 2.5 s later.
        daemon, child, out, err = self.run_with_stopped_daemon(120, pause=2.5,
                                                               HEAPPROF_ON_FULL='block')
        self.assertEqual(child.returncode, 6, err)
        self.assertIn('finished', out)
        self.assertEqual(err, '')
        daemon.stop()
        rows = daemon.query('SELECT status, events_dropped FROM sessions')
        self.assertEqual(rows, [('exited', 0)])
        # 300000 buffers of bytearray(100..149), i.e. 101..150 bytes, each recorded.
        n = daemon.query('SELECT COUNT(*) FROM allocations WHERE size BETWEEN 101 AND 150')
        self.assertGreaterEqual(n[0][0], 300000)

    def test_stopped_daemon_holds_a_program_once_not_per_fork_child(self):
        """Issue 12 item 8: a stopped heapprofd held every fork child 5 s at its exit (5
        sequential children: 27 s instead of 1.2 s). The first process that gives up on
        it tells the others (they share a page): each later one gives up at once and
        says why, so only one line says it waited the full 5 s."""
        # Generous: 5 s once, plus the run; the old 5 s per process took 30 s.
        daemon, child, out, err = self.run_with_stopped_daemon(
            60, program=FORKS_AT_STOPPED_DAEMON)
        self.assertEqual(child.returncode, 0, err)
        self.assertEqual(out.split()[1:], ['0'] * 5)
        lines = err.splitlines()
        waited = [l for l in lines if 'took no data for 5 s' in l]
        at_once = [l for l in lines if 'is taking no data (another process of this program '
                                       'gave up on it)' in l]
        self.assertEqual(len(waited), 1, err)
        self.assertGreaterEqual(len(at_once), 4, err)
        self.assertEqual(len(waited) + len(at_once), len(lines), err)
        daemon.stop()


if __name__ == '__main__':
    unittest.main()
