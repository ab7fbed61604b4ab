"""`heapprof top --follow` on a recording in progress, through a pseudo-terminal (suite 'tools').

A real heapprofd records examples/leak.py (whose heap grows steadily) while the live view
runs in a pty: the figures must change between redraws, and the view must exit by itself
when the session ends, or at once on Ctrl-C, without a traceback.
"""
import os
import pty
import re
import select
import signal
import subprocess
import tempfile
import time
import unittest

import tools_recording as rec

from heapprof import _db
from heapprof import reader as hr

SCRIPT = os.path.join(os.path.dirname(rec.PYTHON), 'heapprof')
CLEAR = '\x1b[H\x1b[2J'


class LiveView:
    """`heapprof top --follow` in a pty; read() collects its output until it exits."""

    def __init__(self, db, refresh=0.3):
        pid, fd = pty.fork()
        if pid == 0:    # child: becomes the pty's session leader, Ctrl-C reaches it
            try:
                os.execv(SCRIPT, [SCRIPT, 'top', '--db', db, '--follow', '--refresh',
                                  str(refresh), '-n', '5'])
            finally:
                os._exit(127)
        self.pid, self.fd, self.out, self.status = pid, fd, b'', None

    def pump(self, timeout):
        """Reads for up to timeout seconds; False once the child closed the pty."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:         # EIO: the child exited and the slave side is closed
            chunk = b''
        self.out += chunk
        return bool(chunk)

    def frames(self):
        return [f for f in self.out.decode('utf-8', 'replace').split(CLEAR) if f.strip()]

    def wait_exit(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pump(0.1):
            pass
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
            time.sleep(0.05)
        return None

    def close(self):
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except ProcessLookupError:
                pass
        os.close(self.fd)


def live_figures(frames):
    return [m.group(1) for f in frames for m in [re.search(r'live heap: (\S+ \S+)', f)] if m]


class FollowTest(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory(prefix='hp-tools-live-')
        self.addCleanup(tmp.cleanup)
        self.daemon = rec.Daemon(tmp.name)
        self.addCleanup(self.daemon.stop)

    def start_program(self, requests):
        prog = self.daemon.start('leak.py', requests)

        def reap():
            if prog.poll() is None:
                prog.kill()
            prog.communicate()
        self.addCleanup(reap)

        def running_session():
            try:
                ss = hr.sessions(self.daemon.db)
            except _db.DatabaseError:
                return None
            return ss and ss[-1].status == 'running' and ss[-1].events_received >= 0
        rec.wait_for(running_session, 20, 'the recording to start')
        return prog

    def test_redraws_with_changing_figures_and_exits_when_the_session_ends(self):
        prog = self.start_program(400)      # ~2-3 s of steady growth
        view = LiveView(self.daemon.db)
        self.addCleanup(view.close)
        status = view.wait_exit(60)
        self.assertEqual(prog.wait(timeout=30), 0)
        self.assertEqual(status, 0, view.out[-2000:])
        frames = view.frames()
        text = view.out.decode('utf-8', 'replace')
        self.assertNotIn('Traceback', text)
        self.assertGreaterEqual(len(frames), 3, text[-2000:])
        figures = live_figures(frames)
        self.assertGreaterEqual(len(set(figures)), 2, figures)
        self.assertIn('(live, every 0.3s; Ctrl-C quits)', frames[0])
        self.assertRegex(frames[-1], r'session \d+ ended: exited')
        self.assertRegex(frames[-1], r'handle_request \(.*leak\.py:%d\)'
                         % rec.marked_line('leak.py', 'LEAK_LINE'))

    def test_waits_for_the_first_program_to_connect(self):
        rec.wait_for(lambda: os.path.exists(self.daemon.db), 20, 'heapprofd to create the db')
        view = LiveView(self.daemon.db)
        self.addCleanup(view.close)
        rec.wait_for(lambda: view.pump(0.1) and b'waiting for a program' in view.out, 30,
                     'the waiting message')
        self.assertEqual(view.frames(), [view.out.decode()])   # no table drawn yet
        prog = self.daemon.start('leak.py', 100)
        self.addCleanup(lambda: prog.poll() is None and prog.kill())
        status = view.wait_exit(60)
        self.assertEqual(prog.wait(timeout=30), 0)
        prog.communicate()
        self.assertEqual(status, 0, view.out[-2000:])
        self.assertRegex(view.frames()[-1], r'session \d+ ended: exited')
        self.assertIn('handle_request', view.frames()[-1])

    def test_readers_see_live_data_and_leave_no_files_behind(self):
        # Issue 13 item 9: readers open the database read-only without creating files;
        # while heapprofd writes, they share its -wal and see its commits.
        prog = self.start_program(400)
        seen = []

        def growing():
            with hr.read(self.daemon.db) as r:
                seen.append(r.live_bytes_at(r.duration))
                return len(set(seen)) >= 3 and r.metadata.status == 'running'
        rec.wait_for(growing, 30, 'three different live figures while recording')
        p = subprocess.run([SCRIPT, 'sessions', '--db', self.daemon.db], capture_output=True,
                           text=True, timeout=30)
        self.assertRegex(p.stdout, r'\brunning\b')
        self.assertEqual(prog.wait(timeout=60), 0)
        self.daemon.stop()
        d = os.path.dirname(self.daemon.db)
        name = os.path.basename(self.daemon.db)
        self.assertEqual([f for f in os.listdir(d) if f.startswith(name)], [name])
        for cmd in (['top'], ['leaks'], ['sessions']):
            p = subprocess.run([SCRIPT] + cmd + ['--db', self.daemon.db], capture_output=True,
                               text=True, timeout=30)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual([f for f in os.listdir(d) if f.startswith(name)], [name], cmd)

    def test_ctrl_c_exits_quietly(self):
        self.start_program(4000)            # far longer than the test
        view = LiveView(self.daemon.db)
        self.addCleanup(view.close)
        rec.wait_for(lambda: view.pump(0.1) and len(view.frames()) >= 2, 30, 'two redraws')
        os.write(view.fd, b'\x03')          # Ctrl-C on the terminal
        status = view.wait_exit(10)
        self.assertEqual(status, 0, view.out[-2000:])
        self.assertNotIn('Traceback', view.out.decode('utf-8', 'replace'))
        self.assertNotIn('KeyboardInterrupt', view.out.decode('utf-8', 'replace'))


if __name__ == '__main__':
    unittest.main()
