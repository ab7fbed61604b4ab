"""Real recordings for the tools tests: a heapprofd in a temporary directory and the example
programs of examples/ profiled through the installed agent (HEAPPROF_SOCKET start-up hook).

Every process started here is killed on timeout and reaped by the caller's cleanup; files
live in the caller's TemporaryDirectory.
"""
import os
import select
import signal
import subprocess
import sys
import time

PYTHON = os.environ.get('HEAPPROF_PYTHON', sys.executable)
SOURCE_ROOT = os.environ.get('HEAPPROF_SOURCE_ROOT', os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))))
BUILD_ROOT = os.environ.get('HEAPPROF_BUILD_ROOT', '')
EXAMPLES = os.path.join(SOURCE_ROOT, 'examples')
START_TIMEOUT = 20
CHILD_TIMEOUT = 60


def heapprofd_path():
    return os.environ.get('HEAPPROFD') or os.path.join(BUILD_ROOT, 'daemon', 'heapprofd')


def marked_line(example, mark):
    """Line number of the line of examples/<example> carrying '# <mark>'."""
    with open(os.path.join(EXAMPLES, example)) as f:
        for n, line in enumerate(f, 1):
            if line.rstrip().endswith('# ' + mark):
                return n
    raise AssertionError('no "# %s" line in examples/%s' % (mark, example))


class Daemon:
    """heapprofd writing <tmpdir>/rec.sqlite, listening on <tmpdir>/rec.sock."""

    def __init__(self, tmpdir, timeline_ms=50):
        self.db = os.path.join(tmpdir, 'rec.sqlite')
        self.socket = os.path.join(tmpdir, 'rec.sock')
        self.proc = subprocess.Popen(
            [heapprofd_path(), '--db', self.db, '--socket', self.socket,
             '--timeline-interval', str(timeline_ms)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT
        line = b''
        while time.monotonic() < deadline and b'\n' not in line:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                line += chunk
        if b'heapprofd: listening on' not in line:
            self.stop()
            raise AssertionError('heapprofd did not start: %r %r'
                                 % (line, self.proc.stderr.read()))

    def env(self, interval=8192):
        env = {k: v for k, v in os.environ.items() if not k.startswith('HEAPPROF_')}
        env.pop('PYTHONPATH', None)
        env.update(HEAPPROF_SOCKET=self.socket, HEAPPROF_INTERVAL=str(interval))
        return env

    def record(self, example, *args, interval=8192):
        """Runs examples/<example> profiled; returns its stdout."""
        p = subprocess.run([PYTHON, os.path.join(EXAMPLES, example)] + [str(a) for a in args],
                           env=self.env(interval), capture_output=True, text=True,
                           timeout=CHILD_TIMEOUT, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise AssertionError('%s failed (%d): %s' % (example, p.returncode, p.stderr))
        return p.stdout

    def start(self, example, *args, interval=8192):
        """Starts examples/<example> profiled; the caller waits for or kills it."""
        return subprocess.Popen([PYTHON, os.path.join(EXAMPLES, example)] +
                                [str(a) for a in args], env=self.env(interval),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def stop(self):
        """SIGTERM (heapprofd stores everything received), SIGKILL after a deadline."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError('timed out after %g s waiting for %s' % (timeout, what))
