"""heapprof.pytest_plugin — memory checks for a pytest run, activated by `pytest --heapprof`.

Installed with the package (entry point `pytest11`); without --heapprof it only declares
its two markers, so that a suite using them runs unchanged. With it, the whole run is
profiled into one database (a private heapprofd, as `heapprof run` starts, or the one at
--heapprof-socket), with a marker at the start and the end of each test:

    @pytest.mark.limit_memory("24 MB")   # the peak of what the test allocated and held
    @pytest.mark.limit_leaks("1 MB")     # what it allocated and still held at its end,
                                         # after a gc.collect()

A test under either marker is recorded in a session of its own, sampled at the finer
--heapprof-fine-interval (default 4 KiB), and fails when the estimate is over the limit;
the message gives the estimate with its 95% interval and the sites holding the most. At
the end, a summary lists the tests that allocated most (like --durations). The figures
come from the Reader API (heapprof.reader) once heapprofd has stored each session.
"""
import gc
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

import heapprof
from heapprof import _fmt
from heapprof import reader as _reader

# Under a limit marker the test's own session samples every this many bytes on average:
# 16 times finer than the default interval, so that a limit of a few MiB is decided
# from hundreds of samples (tools/README.md, "Standard errors").
DEFAULT_FINE_INTERVAL = 4096
# How long to wait for heapprofd to store a session that has ended (it commits in
# batches; daemon/README.md), before giving up on a limit's figures.
STORE_TIMEOUT = 30.0
DAEMON_START_TIMEOUT = 20.0
DAEMON_STOP_TIMEOUT = 60.0
START_MARK, END_MARK = 'pytest start ', 'pytest end '
TOP_SITES = 5


def pytest_addoption(parser):
    group = parser.getgroup('heapprof', 'heapprof memory checks')
    group.addoption('--heapprof', action='store_true', default=False,
                    help='profile the run with heapprof: markers per test, limit_memory and '
                         'limit_leaks, and a summary of the tests that allocated most')
    group.addoption('--heapprof-db', metavar='PATH', default=None,
                    help='the database (default: heapprof-pytest-<time>.sqlite here; with '
                         '--heapprof-socket, the database of that heapprofd)')
    group.addoption('--heapprof-socket', metavar='PATH', default=None,
                    help='record with the heapprofd at this socket instead of a private one '
                         '(then --heapprof-db must name its database)')
    group.addoption('--heapprof-interval', metavar='BYTES', type=int, default=None,
                    help='mean sampling interval of the run (default: HEAPPROF_INTERVAL, '
                         'else 64 KiB)')
    group.addoption('--heapprof-fine-interval', metavar='BYTES', type=int,
                    default=DEFAULT_FINE_INTERVAL,
                    help='mean sampling interval of the tests under limit_memory or '
                         'limit_leaks (default: %d)' % DEFAULT_FINE_INTERVAL)
    group.addoption('--heapprof-top', metavar='N', type=int, default=10,
                    help='tests listed in the summary of those that allocated most '
                         '(default: 10; 0: none)')


def pytest_configure(config):
    config.addinivalue_line(
        'markers', 'limit_memory(size): with --heapprof, fail when the peak of the memory the '
                   'test allocated and held exceeds size (e.g. "24 MB")')
    config.addinivalue_line(
        'markers', 'limit_leaks(size): with --heapprof, fail when more than size, allocated '
                   'by the test, is still allocated at its end (after gc.collect())')
    if config.getoption('heapprof'):
        config.pluginmanager.register(HeapprofPlugin(config), 'heapprof-plugin')


def _limit(item, name):
    """Bytes of the item's marker `name`, or None; a bad size is a usage error."""
    m = item.get_closest_marker(name)
    if m is None:
        return None
    if len(m.args) != 1 or m.kwargs:
        raise pytest.UsageError('%s: @pytest.mark.%s takes one size, e.g. "24 MB"'
                                % (item.nodeid, name))
    try:
        return _fmt.parse_bytes(m.args[0])
    except ValueError as e:
        raise pytest.UsageError('%s: @pytest.mark.%s: %s' % (item.nodeid, name, e)) from None


def _with_margin(est):
    return '%s %s' % (_fmt.human_bytes(est.value), _fmt.margin(est.se))


class HeapprofPlugin:
    """The state of one profiled pytest run."""

    def __init__(self, config):
        opt = config.getoption
        self.config = config
        self.interval = opt('heapprof_interval')
        self.fine_interval = opt('heapprof_fine_interval')
        self.top = opt('heapprof_top')
        self.socket = opt('heapprof_socket')
        self.db = opt('heapprof_db')
        if self.socket and not self.db:
            raise pytest.UsageError('--heapprof-socket needs --heapprof-db: the database of '
                                    'that heapprofd, where the figures are read')
        for name, v in (('--heapprof-interval', self.interval),
                        ('--heapprof-fine-interval', self.fine_interval)):
            if v is not None and v < 1:
                raise pytest.UsageError('%s must be at least 1, not %d' % (name, v))
        if self.top < 0:
            raise pytest.UsageError('--heapprof-top must be 0 or more, not %d' % self.top)
        self.db = os.path.abspath(self.db or 'heapprof-pytest-%s.sqlite'
                                  % time.strftime('%Y%m%d-%H%M%S'))
        self.daemon = None
        self.tmp = None
        self.pid = os.getpid()
        self.started_ns = None      # wall time before the run's first session
        self.failures = {}          # nodeid -> message: limits a test's call went over

    # ------------------------------------------------------------ the run's sessions
    def pytest_sessionstart(self, session):
        if heapprof.is_profiling():
            raise pytest.UsageError('--heapprof: this process is already profiled (e.g. '
                                    'HEAPPROF_SOCKET is set); run pytest --heapprof without it')
        if not self.socket:
            from heapprof import runner
            exe = runner.find_heapprofd()
            if not exe:
                raise pytest.UsageError('--heapprof: heapprofd not found (looked for '
                                        '$HEAPPROFD, beside %s, PATH)' % sys.executable)
            self.tmp = tempfile.TemporaryDirectory(prefix='heapprof-pytest-')
            self.socket = os.path.join(self.tmp.name, 'heapprofd.sock')
            self.daemon = self._start_daemon(exe)
        self.started_ns = time.time_ns()
        self._start(self.interval)

    def _start_daemon(self, exe):
        """A private heapprofd. Its output goes to a file, not a pipe: a thread reading a
        pipe would allocate in this process, inside the tests' figures."""
        log_path = os.path.join(self.tmp.name, 'heapprofd.log')
        with open(log_path, 'w') as log:
            try:
                proc = subprocess.Popen([exe, '--db', self.db, '--socket', self.socket],
                                        stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as e:
                raise pytest.UsageError('--heapprof: cannot start heapprofd %s: %s'
                                        % (exe, e.strerror or e)) from None
        deadline = time.monotonic() + DAEMON_START_TIMEOUT
        while True:
            with open(log_path) as f:
                text = f.read()
            if 'listening on' in text:
                return proc
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                last = text.strip().splitlines()[-1:] or ['no output']
                raise pytest.UsageError('--heapprof: heapprofd did not start (%s)' % last[0])
            time.sleep(0.01)

    def _start(self, interval):
        if not heapprof.start(socket=self.socket, sample_interval=interval):
            raise pytest.UsageError('--heapprof: cannot reach heapprofd at %s' % self.socket)

    def pytest_sessionfinish(self, session):
        heapprof.stop()
        if self.daemon is not None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=DAEMON_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
            self.daemon = None
        if self.tmp is not None:
            self.tmp.cleanup()
            self.tmp = None

    # ------------------------------------------------------------ per test
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        heapprof.mark(START_MARK + item.nodeid)
        yield
        heapprof.mark(END_MARK + item.nodeid)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        memory = _limit(item, 'limit_memory')
        leaks = _limit(item, 'limit_leaks')
        if memory is None and leaks is None:
            yield
            return
        # The test gets a session of its own at the finer interval: everything that
        # session records was allocated by the test (and this hook).
        heapprof.stop()
        started = time.time_ns()
        own = heapprof.start(socket=self.socket, sample_interval=self.fine_interval)
        if own:
            heapprof.mark(START_MARK + item.nodeid)
        outcome = yield
        # Nothing below may raise: the wrappers around this one would not finish (pytest's
        # output capture is one). The verdict goes into the call's report instead
        # (pytest_runtest_makereport).
        try:
            if own:
                if leaks is not None and outcome.excinfo is None:
                    gc.collect()
                heapprof.mark(END_MARK + item.nodeid)
                heapprof.stop()
            stopped = time.time_ns()
            heapprof.start(socket=self.socket, sample_interval=self.interval)
            if not own:
                message = ('heapprof: could not start this test\'s session at %s; its limits '
                           'were not checked' % self.socket)
            elif outcome.excinfo is not None:
                message = None      # its own failure says more; its traceback holds memory
            else:
                message = self._check(started, stopped, memory, leaks)
        except Exception as e:  # noqa: BLE001 - reported as the test's failure
            message = 'heapprof: the limits of this test could not be checked: %s' % e
        if message:
            self.failures[item.nodeid] = message

    def _check(self, started, stopped, memory, leaks):
        """The failure message of a test whose own session ran from started to stopped
        (wall ns), or None when it kept within its limits."""
        r = self._stored_session(started, stopped)
        if r is None:
            return ('heapprof: heapprofd did not store the session of this test within %g s; '
                    'its limits could not be checked' % STORE_TIMEOUT)
        with r:
            problems = []
            if memory is not None:
                t = r.peak()[0]
                est = r.live_at(t)
                if est.value > memory:
                    problems.append(self._memory_message(r, t, est, memory))
            if leaks is not None:
                if not r.metadata.end_known:
                    problems.append('heapprof: limit_leaks cannot be checked: session %d %s'
                                    % (r.session_id, r.metadata.end_unknown_reason))
                else:
                    sites = r.leaks()
                    t = r.totals()
                    est = _reader.Estimate(t.unfreed_bytes, t.unfreed_se)
                    if est.value > leaks:
                        problems.append(self._leak_message(r, sites, est, leaks))
        return '\n\n'.join(problems) or None

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        message = self.failures.pop(item.nodeid, None) if call.when == 'call' else None
        if message is not None:
            report = outcome.get_result()
            if report.passed:
                report.outcome = 'failed'
                report.longrepr = message

    def _stored_session(self, started_ns, stopped_ns):
        """The Reader of this process's session that started between started_ns and
        stopped_ns, once heapprofd has stored its end; None after STORE_TIMEOUT."""
        deadline = time.monotonic() + STORE_TIMEOUT
        while True:
            try:
                found = [s for s in _reader.sessions(self.db) if s.pid == self.pid and
                         started_ns <= s.started_ns <= stopped_ns]
            except _reader.ReaderError:
                found = []
            if found and found[0].status != 'running':
                return _reader.read(self.db, found[0].session_id)
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)

    def _interval_note(self, r):
        return ('estimates from samples every %s on average; \u00b1 is the half width of '
                'the 95%% interval' % _fmt.human_bytes(r.metadata.sample_interval_bytes))

    def _memory_message(self, r, t, est, limit):
        lines = ['heapprof: the test held up to %s, over its limit_memory of %s (%s)'
                 % (_with_margin(est), _fmt.human_bytes(limit), self._interval_note(r))]
        if est.low <= limit:
            lines.append('  (the limit is within the 95% interval: close to the limit)')
        lines.append('  held at the peak (%.3f s into the test), by site:' % t)
        for s in r.top_sites(t, n=TOP_SITES):
            lines.append('    %s %s  %s' % (_fmt.human_bytes(s.self_bytes),
                                            _fmt.margin(s.self_se),
                                            _fmt.site_name(s.filename, s.lineno, s.function)))
        return '\n'.join(lines)

    def _leak_message(self, r, sites, est, limit):
        lines = ['heapprof: the test left %s allocated at its end (after gc.collect()), over '
                 'its limit_leaks of %s (%s)' % (_with_margin(est), _fmt.human_bytes(limit),
                                                 self._interval_note(r))]
        if est.low <= limit:
            lines.append('  (the limit is within the 95% interval: close to the limit)')
        lines.append('  still allocated, by site:')
        for s in sites[:TOP_SITES]:
            lines.append('    %s %s  %s' % (_fmt.human_bytes(s.bytes), _fmt.margin(s.se),
                                            _fmt.site_name(s.filename, s.lineno, s.function)))
        return '\n'.join(lines)

    # ------------------------------------------------------------ summary
    def test_figures(self):
        """[(nodeid, allocated Estimate, held-at-end Estimate)] of every test recorded,
        from the markers of this run's sessions."""
        out = {}
        try:
            all_sessions = _reader.sessions(self.db)
        except _reader.ReaderError:
            return []
        mine = [s for s in all_sessions
                if s.pid == self.pid and s.started_ns >= (self.started_ns or 0)]
        # A heapprofd of its own (--heapprof-socket) may still be storing the last one.
        if mine and mine[-1].status == 'running':
            self._stored_session(mine[-1].started_ns, mine[-1].started_ns)
        for s in mine:
            # Each test's markers are in one session: a test under a limit marker has its
            # own (the outer pair is split between the run's sessions around it).
            with _reader.read(self.db, s.session_id) as r:
                starts = {}
                for m in r.markers():
                    if m.label.startswith(START_MARK):
                        starts.setdefault(m.label[len(START_MARK):], m.t)
                    elif m.label.startswith(END_MARK):
                        nodeid = m.label[len(END_MARK):]
                        a = starts.get(nodeid)
                        if a is None:
                            continue
                        t = min(max(m.t, a), r.duration)
                        out[nodeid] = (r.allocated_between(a, t), r.live_at(t, since=a))
        return [(k,) + v for k, v in out.items()]

    def pytest_terminal_summary(self, terminalreporter):
        tr = terminalreporter
        figures = self.test_figures()
        if self.top:
            figures.sort(key=lambda f: (-f[1].value, f[0]))
            shown = figures[:self.top]
            tr.write_sep('=', 'heapprof: %d tests that allocated most' % len(shown))
            for nodeid, alloc, held in shown:
                tr.write_line('%22s allocated %22s held at end  %s'
                              % (_with_margin(alloc), _with_margin(held), nodeid))
        tr.write_line('heapprof: %d tests recorded in %s (heapprof top/leaks/diff/report '
                      'read it; markers "%s<test>" and "%s<test>")'
                      % (len(figures), self.db, START_MARK, END_MARK))
