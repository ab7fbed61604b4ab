"""heapprof.runner — `python -m heapprof run` and `python -m heapprof stats PROGRAM`.

run: profile a program from its first line with a private heapprofd (or a given socket),
then print a short summary. The program runs as a child process with HEAPPROF_SOCKET
set, so the start-up hook (heapprof.pth) profiles it, and multiprocessing children too.

stats: run the program in this process with every allocation counted by size class (no
daemon, no sampling) and print the size histogram, to help choose a sampling interval.
"""
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

RUN_USAGE = """\
usage: python -m heapprof run [-o PATH] [--socket S] [--interval N] [--max-depth N]
                              [--rates R] [--on-full drop|block|adapt]
                              [--no-native] [--no-freelists] [--report[=HTML]]
                              (-m MODULE | SCRIPT) [args...]

Profile a Python program and print where its memory went.

  -o, --output PATH   database to write (default: heapprof-<timestamp>.sqlite); ignored
                      with --socket, where the running heapprofd decides
  --socket S          stream to an already running heapprofd instead of starting one
  --interval N        mean bytes between samples (default: the agent's; 1 = every allocation)
  --max-depth N       Python frames kept per sample
  --rates R           the original heapprof's size-bucket rates, e.g. "{128: 1e-4, 8192: 0.1}"
  --on-full MODE      when the send buffer is full: drop (default) or block, or adapt:
                      double the sampling interval (estimates stay unbiased)
  --no-native         do not sample C extensions' malloc/calloc/realloc/mmap (domain
                      native), only the interpreter's own allocations (HEAPPROF_NATIVE=0)
  --no-freelists      a block that a CPython free list hands out again keeps the line that
                      first allocated it, instead of moving to the line reusing it; saves
                      a call per object created and destroyed (HEAPPROF_FREELISTS=0;
                      changes something on CPython 3.13+ only)
  --report[=HTML]     also write the interactive HTML report (default: the database's
                      name with .html); not with --socket
  -m MODULE           run a module, like python -m
  -h, --help          show this help

Settings not given as options come from the HEAPPROF_* variables (README.md, "Settings").
The program's exit status is passed through, except that heapprof run exits with 2 when
it cannot profile: before the program runs, for a bad option or HEAPPROF_* variable, or
a --socket with no heapprofd behind it; after it ran, when no session reached heapprofd
(unless the program's own status is not 0).
"""

STATS_USAGE = """\
usage: python -m heapprof stats (-m MODULE | SCRIPT) [args...]

Run a Python program with every allocation counted (no daemon, no sampling) and print
the allocation size histogram (size range, count, bytes) to stderr, to help choose a
sampling interval. The program's exit status is passed through.
"""

DAEMON_START_TIMEOUT = 15.0
DAEMON_STOP_TIMEOUT = 60.0


class UsageError(Exception):
    pass


def _refuse_unsupported_python():
    """The program would run unprofiled: say so before anything starts."""
    from heapprof import unsupported_reason
    reason = unsupported_reason()
    if reason:
        raise UsageError(reason)


def _parse(argv, options):
    """Options (name -> takes a value) up to the program; returns (opts, module, rest)."""
    opts, i = {}, 0
    while i < len(argv):
        a = argv[i]
        if a in ('-h', '--help'):
            opts['help'] = True
            return opts, None, []
        if a == '-m':
            if i + 1 >= len(argv):
                raise UsageError('-m needs a module name')
            return opts, argv[i + 1], argv[i + 2:]
        if a == '--':
            i += 1
            break
        if a == '--report':         # the options that stand without a value
            opts['report'] = True
            i += 1
            continue
        if a in ('--no-native', '--no-freelists') and a in options:
            opts[options[a]] = '0'
            i += 1
            continue
        if not a.startswith('-') or a == '-':
            break
        name, eq, value = a.partition('=')
        if name not in options:
            raise UsageError('unknown option %s' % name)
        if not eq:
            if i + 1 >= len(argv):
                raise UsageError('%s needs a value' % name)
            value = argv[i + 1]
            i += 1
        opts[options[name]] = value
        i += 1
    rest = argv[i:]
    if not rest:
        raise UsageError('no program given (a script or -m MODULE)')
    return opts, None, rest


def _program_env(opts, environ):
    """The program's environment: environ with the settings of opts (parsed options)
    as HEAPPROF_* variables. Everything the program's agent would refuse (and then run
    the program unprofiled) is refused here, naming the option as the user wrote it, or
    the variable the user set."""
    import heapprof
    env = dict(environ)
    try:
        if 'interval' in opts and 'rates' in opts:
            raise UsageError('--interval %s and --rates %s are both set: give one'
                             % (opts['interval'], opts['rates']))
        # An option replaces the environment's setting of the other kind too; otherwise
        # the program would see both and refuse to profile.
        if 'interval' in opts:
            env.pop('HEAPPROF_RATES', None)
            env['HEAPPROF_INTERVAL'] = str(heapprof._int_setting(
                '--interval', opts['interval'], None, 1, heapprof.MAX_INTERVAL))
        if 'max_depth' in opts:
            env['HEAPPROF_MAX_DEPTH'] = str(heapprof._int_setting(
                '--max-depth', opts['max_depth'], None, 1, heapprof._native().MAX_STACK_DEPTH))
        if 'rates' in opts:
            env.pop('HEAPPROF_INTERVAL', None)
            try:
                heapprof._parse_rates(opts['rates'])
            except heapprof.OptionError as e:
                raise UsageError(str(e).replace('sample rates', '--rates', 1)) from None
            env['HEAPPROF_RATES'] = opts['rates']
        if 'on_full' in opts:
            if opts['on_full'] not in ('drop', 'block', 'adapt'):
                raise UsageError("--on-full %r: expected drop, block or adapt"
                                 % opts['on_full'])
            env['HEAPPROF_ON_FULL'] = opts['on_full']
        if 'native' in opts:
            env['HEAPPROF_NATIVE'] = opts['native']
        if 'freelists' in opts:
            env['HEAPPROF_FREELISTS'] = opts['freelists']
        if env.get('HEAPPROF_ON_FULL') == 'adapt' and env.get('HEAPPROF_RATES'):
            raise UsageError('%s doubles a sampling interval; with %s (size-bucket rates) '
                             'use drop or block'
                             % ('--on-full adapt' if 'on_full' in opts
                                else 'HEAPPROF_ON_FULL=adapt',
                                '--rates' if 'rates' in opts else 'HEAPPROF_RATES'))
        # What is left to check comes from the user's own HEAPPROF_* variables.
        heapprof._resolve('-', None, None, None, None, environ=env)
    except heapprof.OptionError as e:
        raise UsageError(str(e)) from None
    return env


def _check_socket(path):
    """Refuses a --socket nobody listens on: the program would run unprofiled."""
    import socket
    import stat
    try:
        st = os.stat(path)
    except OSError as e:
        raise UsageError('--socket %s: %s (is heapprofd running?)'
                         % (path, e.strerror or e)) from None
    if not stat.S_ISSOCK(st.st_mode):
        raise UsageError('--socket %s is not a socket' % path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(path)
    except OSError as e:
        raise UsageError('--socket %s: cannot connect: %s (is heapprofd running?)'
                         % (path, e.strerror or e)) from None
    finally:
        s.close()


def find_heapprofd():
    """$HEAPPROFD, else heapprofd beside this interpreter (a venv's bin/), else PATH."""
    env = os.environ.get('HEAPPROFD')
    if env:
        return env
    beside = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), 'heapprofd')
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which('heapprofd')


def _start_daemon(exe, db, sock):
    # Its own session: Ctrl-C in the terminal goes to the foreground process group,
    # i.e. the program (and us); the daemon must keep recording until we stop it.
    try:
        proc = subprocess.Popen([exe, '--db', db, '--socket', sock], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    except OSError as e:
        raise UsageError('cannot start heapprofd %s: %s' % (exe, e.strerror or e)) from None
    deadline = time.monotonic() + DAEMON_START_TIMEOUT
    lines = []
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip('\n'))
            if 'listening on' in line:
                return proc, lines
    finally:
        sel.close()
    proc.kill()
    proc.wait()
    detail = lines[-1] if lines else 'no output'
    raise UsageError('heapprofd did not start (%s)' % detail)


def _drain(proc):
    """Keeps reading the daemon's output (so it never blocks on a full pipe) into a list."""
    import threading
    out = []

    def pump():
        for line in proc.stdout:
            out.append(line.rstrip('\n'))
    t = threading.Thread(target=pump, daemon=True)
    t.start()
    return t, out


def _adapted_line(meta):
    """The line saying that the agent changed its sampling interval (--on-full adapt)
    because heapprofd could not keep up; meta is a reader.Session with interval changes."""
    from heapprof import _fmt
    verb, when = _fmt.interval_change(meta)
    return ('heapprof: heapprofd could not keep up; the sampling interval was %s from %d to '
            '%d bytes (%s); estimates stay unbiased'
            % (verb, meta.sample_interval_bytes, meta.final_interval_bytes, when))


def summarize(db, out=sys.stdout, top=5):
    """Prints, per session, the peak and final estimated heap and the top allocation sites,
    through heapprof.reader (the one place that reads the database)."""
    from heapprof import _fmt
    from heapprof import reader
    hb = _fmt.human_bytes
    sessions = reader.sessions(db)
    if not sessions:
        out.write('heapprof: no session was recorded\n')
    for meta in sessions:
        with reader.read(db, meta.session_id) as r:
            totals = r.totals()
            peak = max([b for _, b in r.timeline()] + [totals.unfreed_bytes])
            if meta.end_known:
                at_exit = 'at exit ~%s still allocated' % hb(totals.unfreed_bytes)
            else:
                # Blocks freed after the recording stopped look unfreed.
                at_exit = 'at exit: unknown (%s)' % meta.end_unknown_reason
            dropped = meta.events_dropped
            out.write('session %d (pid %d, parent %d, %s): peak heap ~%s, %s; %d samples '
                      'standing for %s allocated%s\n'
                      % (meta.session_id, meta.pid, meta.ppid, meta.status, hb(peak), at_exit,
                         totals.samples, hb(totals.allocated_bytes),
                         ', %d events dropped' % dropped if dropped else ''))
            if dropped:
                # A lost FREE leaves its block looking allocated for ever. A session that
                # adapted already ran with --on-full adapt: only block keeps everything.
                out.write('  note: with events dropped, "still allocated" (and blocks never '
                          'freed) may include blocks whose free was lost; rerun with '
                          '%s, or a larger --interval\n'
                          % ('--on-full block' if meta.interval_changes
                             else '--on-full adapt or --on-full block'))
            if meta.interval_changes:
                out.write('  %s\n' % _adapted_line(meta))
            native = _native_line(r, meta)
            if native:
                out.write('  %s\n' % native)
            sites = r.allocated_sites(top)
            if sites:
                out.write('  top allocation sites (estimated bytes allocated / %s):\n'
                          % ('still live' if meta.end_known else 'no recorded free'))
                for s in sites:
                    where = ' (%s:%d)' % (s.filename, s.lineno) if s.filename else ''
                    out.write('    %10s %10s  %s%s\n' % (hb(s.allocated_bytes),
                                                       hb(s.unfreed_bytes), s.function, where))
    out.write('database: %s\n' % db)


def _native_line(r, meta):
    """What native code (C extensions' malloc family and anonymous mmap) allocated, held at
    the peak and left allocated, or None when the session recorded none of it."""
    from heapprof import _fmt
    hb = _fmt.human_bytes
    allocated = sum(s.alloc_bytes for s in r.stack_totals(r.duration, by=('domain',))
                    if s.domain == 'native')
    if not allocated:
        return None
    r.restrict_domains(['native'])
    try:
        at_peak = r.live_bytes_at(r.peak()[0])
        unfreed = sum(b for _, b, _ in r.unfreed_stacks())
    finally:
        r.restrict_domains(None)
    line = "native (C extensions' malloc/mmap): ~%s allocated, ~%s of it live at the peak" \
        % (hb(allocated), hb(at_peak))
    if meta.end_known:
        line += ', ~%s at exit' % hb(unfreed)
    return line


def _remove_if_no_session(db):
    """Removes a database this run created when no session reached it (the program
    could not start), so that a later command's default database is not an empty one.
    True if removed."""
    from heapprof import _db
    from heapprof import reader
    try:
        if reader.sessions(db):
            return False
    except (_db.DatabaseError, sqlite3.Error):
        return False
    for path in (db, db + '-wal', db + '-shm', db + '-journal'):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    return True


def _module_missing(module):
    """True when `python -m module` would fail with "No module named": the top-level
    package is found the way the child will look for it (the current directory first,
    then this interpreter's path). Nothing is imported or run."""
    import importlib.util
    top = module.partition('.')[0]
    if not top or top in sys.builtin_module_names:
        return False
    saved = sys.path[:]
    sys.path.insert(0, os.getcwd())
    try:
        return importlib.util.find_spec(top) is None
    except (ImportError, ValueError):
        return False          # let the program say what is wrong
    finally:
        sys.path[:] = saved


def _exit_status(returncode):
    return 128 - returncode if returncode < 0 else returncode


def run_main(argv):
    """python -m heapprof run ...; returns the program's exit status."""
    try:
        opts, module, rest = _parse(argv, {
            '-o': 'output', '--output': 'output', '--socket': 'socket',
            '--interval': 'interval', '--max-depth': 'max_depth', '--rates': 'rates',
            '--on-full': 'on_full', '--report': 'report', '--no-native': 'native',
            '--no-freelists': 'freelists'})
        if opts.get('help'):
            sys.stdout.write(RUN_USAGE)
            return 0
        _refuse_unsupported_python()
        env = _program_env(opts, os.environ)
        cmd = [sys.executable] + (['-m', module] + rest if module else rest)
        if module is None and not os.path.exists(rest[0]):
            raise UsageError("can't open file %r: no such file" % rest[0])
        if module is not None and _module_missing(module):
            raise UsageError('no module named %r' % module)
        if opts.get('report') and opts.get('socket'):
            raise UsageError('--report needs the private heapprofd: the daemon behind '
                             '--socket is still recording when the program ends')
        if opts.get('socket'):
            _check_socket(opts['socket'])
    except UsageError as e:
        sys.stderr.write('heapprof run: %s\n' % e)
        return 2

    if opts.get('socket'):
        env['HEAPPROF_SOCKET'] = opts['socket']
        return _run_child(cmd, env)

    exe = find_heapprofd()
    if not exe:
        sys.stderr.write('heapprof run: heapprofd not found (looked for $HEAPPROFD, %s, PATH)\n'
                         % os.path.join(os.path.dirname(sys.executable), 'heapprofd'))
        return 2
    db = os.path.abspath(opts.get('output') or
                         'heapprof-%s.sqlite' % time.strftime('%Y%m%d-%H%M%S'))
    created = not os.path.exists(db)
    with tempfile.TemporaryDirectory(prefix='heapprof-') as tmp:
        sock = os.path.join(tmp, 'heapprofd.sock')
        try:
            daemon, early = _start_daemon(exe, db, sock)
        except (UsageError, OSError) as e:
            sys.stderr.write('heapprof run: %s\n' % e)
            return 2
        pump, lines = _drain(daemon)
        try:
            env['HEAPPROF_SOCKET'] = sock
            status = _run_child(cmd, env)
        finally:
            # A second Ctrl-C must not cut the daemon's shutdown short (it would leave the
            # database without its read indexes and print a traceback).
            old = signal.signal(signal.SIGINT, _ignore_sigint)
            try:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(timeout=DAEMON_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()
                pump.join(timeout=5)
            finally:
                signal.signal(signal.SIGINT, old)
        if daemon.returncode != 0:
            sys.stderr.write('heapprof run: heapprofd exited with status %d%s\n'
                             % (daemon.returncode, (': ' + lines[-1]) if lines else ''))
    if created and _remove_if_no_session(db):
        sys.stderr.write('heapprof run: no session was recorded, so the program ran '
                         'unprofiled; removed the empty %s\n' % db)
        return status or 2
    from heapprof import _db
    try:
        summarize(db, sys.stderr)
    except (_db.DatabaseError, sqlite3.Error) as e:
        sys.stderr.write('heapprof run: cannot summarise %s: %s\n' % (db, e))
    if opts.get('report'):
        _write_report(db, opts['report'])
    return status


def _write_report(db, report):
    """Writes the HTML report of the program's own session (the one whose parent is this
    process, not one of its children's); a failure is reported, and the program's exit
    status still passes through."""
    from heapprof import _db
    from heapprof import reader
    from heapprof import report as _report
    out = os.path.splitext(db)[0] + '.html' if report is True else report
    try:
        own = [s for s in reader.sessions(db) if s.ppid == os.getpid()]
    except (_db.DatabaseError, sqlite3.Error):
        own = []
    session = max(own, key=lambda s: s.started_ns).session_id if own else None
    try:
        _report.write_report(db, out, session=session)
    except _report.ReportError as e:
        sys.stderr.write('heapprof run: no report: %s\n' % e)
        return
    sys.stderr.write('report: %s\n' % out)


def _ignore_sigint(signum, frame):
    pass


def _run_child(cmd, env):
    # Ctrl-C (SIGINT) and a terminal hangup (SIGHUP) go to the whole foreground process
    # group: the program gets them itself; we wait for it to finish, then stop the
    # daemon (in its own session, so untouched) and summarise. Do-nothing handlers, not
    # SIG_IGN: an ignored signal stays ignored across exec, so the program would never
    # see its Ctrl-C; a handler is reset to the default there. A SIGTERM sent to us
    # alone (kill PID) is passed on to the program, so that the daemon is still stopped
    # cleanly instead of outliving us.
    child = None

    def forward(signum, frame):
        if child is not None:
            child.send_signal(signum)
    handlers = {signal.SIGINT: _ignore_sigint, signal.SIGHUP: _ignore_sigint,
                signal.SIGTERM: forward}
    old = {sig: signal.signal(sig, h) for sig, h in handlers.items()}
    try:
        child = subprocess.Popen(cmd, env=env)
        return _exit_status(child.wait())
    except OSError as e:
        sys.stderr.write('heapprof run: cannot run %s: %s\n' % (cmd[0], e.strerror or e))
        return 127
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def print_histogram(rows, out):
    """rows: [(lo, hi, count, bytes)] as heapprof._agent.stats_snapshot() returns.
    Sizes and bytes in the same human units (KiB/MiB) as `heapprof stats --db`."""
    from heapprof import _fmt
    total_n = sum(r[2] for r in rows)
    total_b = sum(r[3] for r in rows)
    out.write('heapprof stats: allocation sizes (every allocation counted)\n')
    table = []
    cum = 0
    for lo, hi, n, b in rows:
        cum += b
        table.append((_fmt.size_range(lo, hi), n, _fmt.percent(n, total_n), _fmt.human_bytes(b),
                      _fmt.percent(b, total_b), _fmt.percent(cum, total_b)))
    table.append(('total', total_n, '', _fmt.human_bytes(total_b), '', ''))
    out.write('\n'.join(_fmt.table(('size', 'count', 'count%', 'bytes', 'bytes%', 'cum%'),
                                   table)) + '\n')
    if total_n:
        out.write('mean allocation %s. With a sampling interval of I bytes, about '
                  '%d/I allocations are sampled (e.g. I=64 KiB: %s samples).\n'
                  % (_fmt.human_bytes(total_b / total_n), total_b,
                     _fmt.human_count(total_b // 65536)))


def stats_main(argv):
    """python -m heapprof stats PROGRAM ...; returns the program's exit status."""
    try:
        opts, module, rest = _parse(argv, {})
        if opts.get('help'):
            sys.stdout.write(STATS_USAGE)
            return 0
        _refuse_unsupported_python()
        if module is None and not os.path.exists(rest[0]):
            raise UsageError("can't open file %r: no such file" % rest[0])
        if opts.get('report') and opts.get('socket'):
            raise UsageError('--report needs the private heapprofd: the daemon behind '
                             '--socket is still recording when the program ends')
    except UsageError as e:
        sys.stderr.write('heapprof stats: %s\n' % e)
        return 2
    import runpy
    from heapprof import _agent  # the extension module
    saved_argv = sys.argv[:]
    status = 0
    _agent.stats_enable(True)
    try:
        if module:
            sys.argv = [module] + rest
            runpy.run_module(module, run_name='__main__', alter_sys=True)
        else:
            sys.argv = rest[:]
            sys.path.insert(0, os.path.dirname(os.path.abspath(rest[0])))
            runpy.run_path(rest[0], run_name='__main__')
    except SystemExit as e:
        code = e.code
        if code is None:
            status = 0
        elif isinstance(code, int):
            status = code
        else:
            sys.stderr.write('%s\n' % code)
            status = 1
    except BaseException:
        import traceback
        traceback.print_exc()
        status = 1
    finally:
        _agent.stats_enable(False)
        sys.argv = saved_argv
        try:
            sys.stdout.flush()
        except Exception:  # noqa: BLE001
            pass
        print_histogram(_agent.stats_snapshot(), sys.stderr)
    return status
