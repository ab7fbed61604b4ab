"""Shared helpers of the agent's end-to-end tests: a real heapprofd in a temporary
directory, real Python child processes, and plain SQL over the public views.

Every process started here is killed on timeout and reaped; every file lives in a
TemporaryDirectory that the test removes, even on failure."""
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

PYTHON = os.environ.get('HEAPPROF_PYTHON', sys.executable)
BUILD_ROOT = os.environ.get('HEAPPROF_BUILD_ROOT', '')
CHILD_TIMEOUT = 60


def heapprofd_path():
    return os.environ.get('HEAPPROFD') or os.path.join(BUILD_ROOT, 'daemon', 'heapprofd')


def clean_env(**extra):
    """The test's environment without any HEAPPROF_* setting, plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith('HEAPPROF_')}
    env.pop('PYTHONPATH', None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Daemon:
    """A real heapprofd writing tmpdir/heap.sqlite, listening on tmpdir/d.sock."""

    def __init__(self, tmpdir):
        self.db = os.path.join(tmpdir, 'heap.sqlite')
        self.socket = os.path.join(tmpdir, 'd.sock')
        # Append mode: the log's open file is shared with heapprofd, and a seek(0) to
        # read it would otherwise make heapprofd's next line overwrite the first one
        # ('listening on' lost under 'recording into', the start never seen).
        self.log = open(os.path.join(tmpdir, 'heapprofd.log'), 'a+')
        self.proc = subprocess.Popen([heapprofd_path(), '--db', self.db, '--socket', self.socket,
                                      '--timeline-interval', '20'],
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        # Generous: a loaded machine (the ASan, TSan and per-version builds of the test
        # command run side by side with other jobs) can take seconds to start a process.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self.log.seek(0)
            if 'listening on' in self.log.read():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        status = self.proc.poll()
        output = self.output()   # before kill(), which closes the log
        self.kill()
        raise AssertionError('heapprofd did not start (%s): %s' % (
            'still running after 60 s' if status is None else 'exit status %d' % status,
            output))

    def output(self):
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        """SIGTERM: heapprofd stores everything received, then exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError('heapprofd did not stop on SIGTERM')
        self.log.close()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if not self.log.closed:
            self.log.close()

    def query(self, sql, args=()):
        con = sqlite3.connect(self.db)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()


def run_python(code_or_path, args=(), env=None, timeout=CHILD_TIMEOUT, cwd=None):
    """code_or_path: a file, a -X style option (then args follow), or code for -c."""
    if os.path.exists(code_or_path) or code_or_path.startswith('-'):
        argv = [PYTHON, code_or_path]
    else:
        argv = [PYTHON, '-c', code_or_path]
    return subprocess.run(argv + list(args), env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def write_program(tmpdir, name, source):
    path = os.path.join(tmpdir, name)
    with open(path, 'w') as f:
        f.write(textwrap.dedent(source))
    return path


def line_of(path, marker):
    """1-based line number of the line containing marker."""
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if marker in line:
                return i
    raise AssertionError('%s not in %s' % (marker, path))


# SQL over the public views: allocations whose innermost frame is a given site.
SITE_SQL = '''
    SELECT COUNT(*), COALESCE(SUM(a.est_bytes), 0), COALESCE(SUM(a.size), 0),
           COALESCE(SUM(a.freed_ns IS NOT NULL), 0),
           COALESCE(SUM(CASE WHEN a.freed_ns IS NULL THEN a.est_bytes ELSE 0 END), 0)
    FROM allocations a
    JOIN stack_frames sf ON sf.stack_id = a.stack_id AND sf.depth = 0
    JOIN frames f ON f.frame_id = sf.frame_id
    WHERE a.session_id = ? AND f.function = ? AND f.lineno = ?
'''


def site(daemon, session_id, function, lineno):
    """(samples, est_bytes, size, freed, live_est_bytes) at function:lineno."""
    return daemon.query(SITE_SQL, (session_id, function, lineno))[0]


class DaemonTestCase(unittest.TestCase):
    """Each test gets self.tmp (a TemporaryDirectory path) and self.daemon."""

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix='hp-agent-e2e-')
        self.tmp = self._tmp.name
        self.addCleanup(self._tmp.cleanup)
        self.daemon = Daemon(self.tmp)
        self.addCleanup(self.daemon.kill)

    def profiled_env(self, **extra):
        return clean_env(HEAPPROF_SOCKET=self.daemon.socket, **extra)

    def sessions(self):
        self.daemon.stop()
        return self.daemon.query('SELECT session_id, pid, ppid, argv, status, events_dropped '
                                 'FROM sessions ORDER BY session_id')
