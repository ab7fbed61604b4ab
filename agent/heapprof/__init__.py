"""heapprof: a logging, sampling heap profiler for CPython.

    import heapprof
    heapprof.start(socket='/run/heapprofd.sock')   # or HEAPPROF_SOCKET=... python app.py
    ...
    heapprof.stop()                                  # implicit at exit

The native agent (heapprof._agent) samples allocations of all three PEP 445 domains, and
native code's malloc family (the import slots of loaded shared objects are redirected while
a session runs), and streams them to heapprofd, which writes a SQLite database;
heapprof.read() opens one.

Settings, by argument or environment variable:
    socket           HEAPPROF_SOCKET      heapprofd's Unix socket
    sample_interval  HEAPPROF_INTERVAL    mean bytes between samples (1 = every allocation)
    max_stack_depth  HEAPPROF_MAX_DEPTH   Python frames kept per sample
    on_full          HEAPPROF_ON_FULL     when the send buffer is full: 'drop' (default)
                                          events, 'block' the program until there is
                                          room, or 'adapt': double the sampling interval
                                          (Perfetto-style; estimates stay unbiased)
    sample_rates     HEAPPROF_RATES       the original heapprof's {max_size: rate, ...}
    native           HEAPPROF_NATIVE      also sample the malloc family and anonymous mmap
                                          of C extensions and their libraries (domain
                                          'native'); on unless 0 / False
    freelists        HEAPPROF_FREELISTS   move a block that a CPython free list hands out
                                          again to the line creating the new object, as
                                          tracemalloc does (a reference tracer called for
                                          every object); on unless 0 / False. CPython
                                          3.13+ only: 3.11 and 3.12 accept it and have no
                                          such hook (a reused block keeps its first line)

The agent runs on the CPython versions in heapprof._pythons (3.11, 3.12 and 3.13, with the
GIL); on any other interpreter start() and the start-up hook refuse with one line and the
program runs unprofiled. The Reader API works everywhere.

While a session runs, start() exports these variables (the resolved settings) so that
spawned children -- multiprocessing 'spawn', subprocesses running Python -- profile
themselves as their own sessions; stop() puts back what was there before. Fork children
start their own session at the fork. A profiled process that leaves through os._exit()
or posix._exit() (which skip atexit) stops its session first.
"""
import os
import sys
import _thread

__version__ = '0.1.0'

__all__ = ['start', 'stop', 'is_profiling', 'mark', 'profile', 'read', 'sessions',
           '__version__']

# The options of the running session, reused by fork children (which start their own
# session). Protected by _lock.
_lock = _thread.allocate_lock()
_ON_FULL = ('drop', 'block', 'adapt')     # indexed by the native agent's code for each
_options = None
_hooks_registered = False
# What the HEAPPROF_* variables were before start() exported the session's settings
# (None: nothing exported). Protected by _lock.
_saved_environ = None
# The largest mean sampling interval a setting may ask for (1 TiB).
MAX_INTERVAL = 1 << 40
_ENV_VARS = ('HEAPPROF_SOCKET', 'HEAPPROF_INTERVAL', 'HEAPPROF_MAX_DEPTH', 'HEAPPROF_ON_FULL',
             'HEAPPROF_RATES', 'HEAPPROF_NATIVE', 'HEAPPROF_FREELISTS')
# posix._exit as it was before _install_exit_hook() replaced it (None: not replaced in
# this process or the parent it was forked from).
_real_exit = None


class OptionError(ValueError):
    """A bad setting; str() is one line naming the setting and the limit."""


class UnsupportedPython(ImportError):
    """This interpreter cannot run the agent; str() is one line naming it and the
    supported ones."""


def unsupported_reason(version_info=None, abiflags=None):
    """None when this interpreter (or the one described) can run the agent, else the one
    line that says why not."""
    from heapprof._pythons import SUPPORTED
    v = sys.version_info if version_info is None else version_info
    flags = getattr(sys, 'abiflags', '') if abiflags is None else abiflags
    impl = 'CPython' if sys.implementation.name == 'cpython' else sys.implementation.name
    name = '%s %d.%d.%d' % (impl, v[0], v[1], v[2])
    supported = 'CPython %s (with the GIL)' % ', '.join('%d.%d' % s for s in SUPPORTED)
    if impl != 'CPython' or tuple(v[:2]) not in SUPPORTED:
        return '%s is not supported; heapprof supports %s' % (name, supported)
    if 't' in flags:
        return 'free-threaded %s is not supported; heapprof supports %s' % (name, supported)
    return None


_UNSUPPORTED = unsupported_reason()


def _native():
    if _UNSUPPORTED:
        raise UnsupportedPython(_UNSUPPORTED)
    from heapprof import _agent as agent
    return agent


def _parse_rates(value):
    """{128: 1e-4, 8192: 0.1} (dict, or its text, or '128:1e-4,8192:0.1') ->
    [(max_size, rate), ...] sorted by size."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith('{'):
            import ast
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                raise OptionError('sample rates %r: expected {max_size: rate, ...}' % text) from None
        else:
            pairs = {}
            for part in filter(None, (p.strip() for p in text.split(','))):
                size, sep, rate = part.partition(':')
                if not sep:
                    raise OptionError('sample rates %r: expected max_size:rate pairs' % text)
                try:
                    pairs[int(size)] = float(rate)
                except ValueError:
                    raise OptionError('sample rates %r: %r is not max_size:rate' % (text, part)) from None
            value = pairs
    if not isinstance(value, dict) or not value:
        raise OptionError('sample rates must be a non-empty {max_size: rate} mapping')
    out = []
    for size, rate in sorted(value.items()):
        if not isinstance(size, int) or size < 0:
            raise OptionError('sample rates: size %r is not a byte count' % (size,))
        try:
            rate = float(rate)
        except (TypeError, ValueError):
            raise OptionError('sample rates: rate %r for size %d is not a number' % (rate, size)) from None
        if not 0.0 < rate <= 1.0:
            raise OptionError('sample rates: rate %g for size %d is outside (0, 1]' % (rate, size))
        out.append((size, rate))
    limit = _native().MAX_BUCKETS
    if len(out) > limit:
        raise OptionError('sample rates: %d size buckets exceed the limit of %d' % (len(out), limit))
    return out


def _int_setting(name, value, env, lo, hi, environ=os.environ):
    if value is None:
        value = environ.get(env) or None
        if value is None:
            return None
        name = env          # the user set the variable: name it, not the argument
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise OptionError('%s %r is not a whole number' % (name, value)) from None
    if not lo <= n <= hi:
        raise OptionError('%s %d is outside %d..%d' % (name, n, lo, hi))
    return n


def _bool_setting(name, value, env, environ=os.environ):
    """True/False from the argument, else from environ[env] ('1'/'0', 'true'/'false',
    'yes'/'no', 'on'/'off'), else None."""
    if value is not None:
        return bool(value)
    text = environ.get(env)
    if not text:
        return None
    low = text.strip().lower()
    if low in ('1', 'true', 'yes', 'on'):
        return True
    if low in ('0', 'false', 'no', 'off'):
        return False
    raise OptionError('%s %s=%r: expected 1 or 0' % (name, env, text))


def _resolve(socket, sample_interval, max_stack_depth, on_full, sample_rates,
             environ=os.environ, native=None, freelists=None):
    """The session's settings from the arguments, else environ (HEAPPROF_*), else the
    defaults; OptionError names the argument or variable at fault."""
    agent = _native()
    socket = socket or environ.get('HEAPPROF_SOCKET') or None
    if not socket:
        raise OptionError('no heapprofd socket: pass socket= or set HEAPPROF_SOCKET')
    interval = _int_setting('sample interval', sample_interval, 'HEAPPROF_INTERVAL', 1,
                            MAX_INTERVAL, environ)
    depth = _int_setting('max stack depth', max_stack_depth, 'HEAPPROF_MAX_DEPTH', 1,
                         agent.MAX_STACK_DEPTH, environ)
    on_full_name = 'on_full'
    if not on_full and environ.get('HEAPPROF_ON_FULL'):
        on_full, on_full_name = environ['HEAPPROF_ON_FULL'], 'HEAPPROF_ON_FULL'
    on_full = on_full or 'drop'
    if on_full not in _ON_FULL:
        raise OptionError("%s %r: expected 'drop', 'block' or 'adapt'" % (on_full_name, on_full))
    rates = None
    rates_name = 'sample_rates'
    if sample_rates is not None:
        rates = _parse_rates(sample_rates)
    elif environ.get('HEAPPROF_RATES'):
        rates_name = 'HEAPPROF_RATES'
        try:
            rates = _parse_rates(environ['HEAPPROF_RATES'])
        except OptionError as e:
            raise OptionError('HEAPPROF_RATES: %s' % e) from None
    # The resolved interval, wherever it came from: rates would silently replace it.
    if rates is not None and interval is not None:
        interval_name = ('sample_interval' if sample_interval is not None
                         else 'HEAPPROF_INTERVAL')
        raise OptionError('%s=%d and %s are both set: give an interval or rates, not both'
                          % (interval_name, interval, rates_name))
    if rates is not None and on_full == 'adapt':
        raise OptionError("%s='adapt' doubles a sampling interval; with %s (size-bucket "
                          "rates) use 'drop' or 'block'" % (on_full_name, rates_name))
    native = _bool_setting('native', native, 'HEAPPROF_NATIVE', environ)
    freelists = _bool_setting('freelists', freelists, 'HEAPPROF_FREELISTS', environ)
    return {
        'socket': str(socket),
        'native': True if native is None else native,
        'freelists': True if freelists is None else freelists,
        'interval': interval if interval is not None else agent.DEFAULT_INTERVAL,
        'max_depth': depth if depth is not None else agent.DEFAULT_MAX_DEPTH,
        'on_full': on_full,
        'rates': rates,
    }


def _program_argv():
    """sys.argv as the program sees it, with the module of `python -m MODULE` (or the
    command of -c). At start-up (the .pth hook) sys.argv[0] is still '-m' or '-c': runpy
    puts the module's path there only later, and the name is left only in sys.orig_argv,
    which ends with the program's arguments."""
    argv = [str(a) for a in getattr(sys, 'argv', None) or []]
    orig = [str(a) for a in getattr(sys, 'orig_argv', None) or []]
    if not argv or argv[0] not in ('-m', '-c'):
        return argv
    n = len(argv) - 1
    letter = argv[0][1]
    if len(orig) < n + 2 or orig[len(orig) - n:] != argv[1:]:
        return argv
    value, before = orig[-n - 1], orig[-n - 2]
    if before.startswith('-') and not before.startswith('--') and before.endswith(letter):
        return [argv[0], value] + argv[1:]          # -m MODULE, -Bm MODULE
    if value.startswith('-') and letter in value[1:]:
        return [argv[0], value[value.index(letter, 1) + 1:]] + argv[1:]    # -mMODULE
    return argv


def _start_agent(opts):
    """Starts a session; False (after one stderr line) when heapprofd cannot be reached."""
    agent = _native()
    try:
        agent.start(opts['socket'], opts['interval'], opts['max_depth'],
                    _ON_FULL.index(opts['on_full']), opts['rates'], _program_argv(),
                    sys.executable or '', sys.version.split()[0], opts.get('native', True),
                    opts.get('freelists', True))
    except OSError as e:
        sys.stderr.write('heapprof: cannot reach heapprofd at %s (%s); the program runs '
                         'unprofiled\n' % (opts['socket'], e.strerror or e))
        return False
    return True


def _export_environment(opts):
    """A spawned child does not inherit the session: it starts its own through the
    start-up hook, which reads these variables. Caller holds _lock."""
    global _saved_environ
    if _saved_environ is None:
        _saved_environ = {k: os.environ.get(k) for k in _ENV_VARS}
    new = {'HEAPPROF_SOCKET': opts['socket'],
           'HEAPPROF_MAX_DEPTH': str(opts['max_depth']),
           'HEAPPROF_ON_FULL': opts['on_full'],
           'HEAPPROF_NATIVE': '1' if opts.get('native', True) else '0',
           'HEAPPROF_FREELISTS': '1' if opts.get('freelists', True) else '0'}
    if opts['rates']:
        new['HEAPPROF_RATES'] = ','.join('%d:%r' % (size, rate) for size, rate in opts['rates'])
    else:
        new['HEAPPROF_INTERVAL'] = str(opts['interval'])
    for k in _ENV_VARS:
        if k in new:
            os.environ[k] = new[k]
        else:
            os.environ.pop(k, None)   # e.g. an interval that the rates replaced


def _restore_environment():
    """Puts back the variables start() replaced. Caller holds _lock."""
    global _saved_environ
    if _saved_environ is None:
        return
    for k, v in _saved_environ.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    _saved_environ = None


def _install_exit_hook():
    """os._exit() and posix._exit() (one function) skip atexit: the events still
    buffered would be lost, the session would end 'disconnected' and blocks freed just
    before the exit would look never freed (mypy, and most fork children, end this way).
    Both names get one function that stops the session first, within the stop's usual
    bound, then exits. Installed once, by the first start(); a fork child inherits it.
    Code that took a reference to the function before that bypasses it."""
    global _real_exit
    if _real_exit is not None:
        return
    import posix
    real = posix._exit

    def _exit(status):
        import operator
        status = operator.index(status)      # refuse what the real one would, first
        try:
            # Not under _lock: a start or stop in another thread holds it at most the
            # agent's own bounds, and the native stop waits for that stop anyway.
            if 'heapprof._agent' in sys.modules:
                agent = _native()
                if agent.is_profiling():
                    agent.thread_names(_python_thread_names)
                agent.stop()
        except BaseException:  # noqa: BLE001 - the process is leaving anyway
            pass
        real(status)
    _exit.__name__ = real.__name__
    _exit.__qualname__ = real.__name__
    _exit.__doc__ = real.__doc__
    _exit.__wrapped__ = real
    _real_exit = real
    posix._exit = os._exit = _exit


def _python_thread_names():
    """[(native_id, name), ...] of the program's live threading.Thread objects, when it
    uses threading at all (not imported here)."""
    threading = sys.modules.get('threading')
    if threading is None:
        return []
    names = []
    for t in threading.enumerate():
        tid = getattr(t, 'native_id', None)
        if tid:
            names.append((tid, str(t.name)))
    return names


def _register_process_hooks():
    global _hooks_registered
    if _hooks_registered:
        return
    _hooks_registered = True
    import atexit
    atexit.register(stop)
    if hasattr(os, 'register_at_fork'):
        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


# CPython 3.12+ warns at os.fork() (DeprecationWarning, "This process (pid=N) is
# multi-threaded, use of fork() may lead to deadlocks in the child") when the process has
# more than one OS thread, counting heapprof's sender thread. That thread is fork-safe by
# design (the agent's pthread_atfork handlers: agent/README.md), so a program whose only
# other thread is heapprof's must not be warned. For such a fork, the front of
# warnings.filters holds a filter that ignores this
# warning once and then removes itself: 3.12 warns before the after-fork hooks run, 3.13
# after them, so no hook could take it out at the right time. A program with threads of
# its own is warned as it would be without heapprof.
_FORK_WARNING = (r'This process \(pid=\d+\) is multi-threaded, use of \w+\(\) may lead to '
                 r'deadlocks in the child\.')
_fork_filter = None


class _ForkWarningFilter:
    """The message pattern of the one-shot filter (warnings calls its match())."""

    def __init__(self):
        import re
        import warnings
        self._pattern = re.compile(_FORK_WARNING)
        self._filters = warnings.filters
        self.entry = ('ignore', self, DeprecationWarning, None, 0)
        self._filters.insert(0, self.entry)

    def match(self, text):
        if not self._pattern.match(text):
            return False
        self.remove()
        return True

    def remove(self):
        try:
            self._filters.remove(self.entry)
        except ValueError:
            pass                    # used, or the program replaced the filters


def _os_thread_count():
    try:
        return len(os.listdir('/proc/self/task'))
    except OSError:
        return 0


def _before_fork():
    global _fork_filter
    _end_fork_filter()              # one a fork did not use
    if is_profiling() and _os_thread_count() == 2:
        _fork_filter = _ForkWarningFilter()


def _end_fork_filter():
    global _fork_filter
    if _fork_filter is not None:
        _fork_filter.remove()
        _fork_filter = None


def _after_fork_in_child():
    """A fork child (os.fork, multiprocessing 'fork') gets its own session."""
    global _lock
    _lock = _thread.allocate_lock()      # the parent's may have been held by another thread
    _end_fork_filter()
    try:
        if not _native().child_needs_restart() or _options is None:
            return
        if _start_agent(_options):
            mp = sys.modules.get('multiprocessing.util')
            if mp is not None:
                # multiprocessing children leave through os._exit(), which skips atexit;
                # its exit function still runs finalizers, so GOODBYE is sent from there.
                mp.Finalize(None, stop, exitpriority=-100)
    except Exception as e:  # noqa: BLE001 - never break the child
        sys.stderr.write('heapprof: could not profile the fork child (%s)\n' % e)


def start(socket=None, sample_interval=None, max_stack_depth=None, on_full=None,
          sample_rates=None, native=None, freelists=None):
    """Starts profiling this process; returns True when profiling.

    native=False (or HEAPPROF_NATIVE=0) leaves C extensions' malloc family unobserved:
    only the interpreter's PEP 445 allocations are sampled.

    freelists=False (or HEAPPROF_FREELISTS=0) does not follow objects that CPython's free
    lists hand out again: a reused block keeps the line that first allocated it until it
    is freed, and the interpreter does not call heapprof for every object created and
    destroyed (a few percent of object-heavy code's instructions). It changes something
    on CPython 3.13+ only; 3.11 and 3.12 accept it and always behave so.

    Unset arguments come from the environment (see the module docstring), then the
    defaults. Bad settings raise ValueError. When heapprofd cannot be reached, one line
    goes to stderr and False is returned: the program goes on unprofiled."""
    global _options
    opts = _resolve(socket, sample_interval, max_stack_depth, on_full, sample_rates,
                    native=native, freelists=freelists)
    with _lock:
        if _native().is_profiling():
            raise RuntimeError('heapprof is already profiling this process')
        _register_process_hooks()
        # Exported before the session starts (and put back after it stops): the strings
        # os.environ allocates would otherwise be profiled under heapprof's own frames.
        _export_environment(opts)
        # Installed before the session starts too, for the same reason; without a session
        # the hook's stop is a no-op.
        _install_exit_hook()
        if not _start_agent(opts):
            _restore_environment()
            return False
        _options = opts
        return True


def _in_subinterpreter():
    """Whether this is not the main interpreter (the modules are CPython's own: 3.12's
    _xxsubinterpreters, 3.13's _interpreters)."""
    for name in ('_interpreters', '_xxsubinterpreters'):
        try:
            mod = __import__(name)
        except ImportError:
            continue
        return mod.get_current() != mod.get_main()
    return False


def _start_from_environment():
    try:
        # A sub-interpreter runs site.py, and so this hook, again: the process is already
        # profiled (the hooks are process-wide), so there is nothing to start or to say.
        # 3.12+'s isolated sub-interpreters cannot even load the agent (it is one per
        # process); they are profiled with the process all the same.
        try:
            if _native().is_profiling():
                return
        except UnsupportedPython:
            raise
        except ImportError:
            if _in_subinterpreter():
                return
            raise
        start()
    except (ValueError, RuntimeError, UnsupportedPython) as e:
        sys.stderr.write('heapprof: %s; the program runs unprofiled\n' % e)


def _stop_locked():
    global _options
    _options = None
    _end_fork_filter()
    # Nothing here allocates before the session has stopped (no import, no bound
    # method) but the thread names, which the agent collects with this thread's
    # allocations unprofiled: they would show under heapprof's own frames.
    agent = sys.modules.get('heapprof._agent')
    try:
        if agent is None:
            return 0
        if agent.is_profiling():
            try:
                # Python's names for the threads still alive; the sender has given every
                # thread it met its kernel name, if it had one of its own (agent/README.md).
                agent.thread_names(_python_thread_names)
            except Exception:  # noqa: BLE001 - names are a nicety; the stop must happen
                pass
        return agent.stop()
    finally:
        _restore_environment()


def stop():
    """Stops profiling (sends what is buffered and closes the session). Idempotent.
    Returns False when the session ended badly (the daemon went away or, at the stop,
    took nothing for 5 s: one line on stderr said so)."""
    _lock.acquire()             # not `with`: its bound __exit__ would be profiled
    try:
        return_code = _stop_locked()
    finally:
        _lock.release()
    return return_code == 0


def is_profiling():
    """True while a session is streaming to heapprofd."""
    return 'heapprof._agent' in sys.modules and _native().is_profiling()


def mark(label):
    """Records a timestamped marker with this label in the running session (the `markers`
    view; `heapprof top --at marker:LABEL`). Returns True when the marker was queued for
    heapprofd, False when this process is not profiling (or the marker could not be
    queued: 4096 pending, out of memory): code may call it unconditionally, it never
    blocks and costs a dictionary lookup when not profiling. Labels longer than 4096
    bytes of UTF-8 are cut there. A label that is not a str raises TypeError, profiling
    or not."""
    agent = sys.modules.get('heapprof._agent')
    if agent is None:
        if not isinstance(label, str):
            raise TypeError('heapprof.mark() label must be str, not %s'
                            % type(label).__name__)
        return False
    return agent.mark(label)


class profile:
    """Context manager (and decorator) profiling its body: `with heapprof.profile(socket=S):`.

    Takes start()'s arguments. If profiling was already on when entered, it is left on."""

    def __init__(self, socket=None, **kwargs):
        self._args = dict(kwargs, socket=socket)
        self._started = False

    def __enter__(self):
        self._started = False if is_profiling() else start(**self._args)
        return self

    def __exit__(self, *exc):
        if self._started:
            stop()
        return False

    def __call__(self, func):
        import functools

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with profile(**self._args):
                return func(*args, **kwargs)
        return wrapper


def read(path, session=None):
    """Opens a recording: heapprof.reader.read(path, session)."""
    from heapprof.reader import read as _read
    return _read(path, session)


def sessions(path):
    """The sessions recorded in a database: heapprof.reader.sessions(path)."""
    from heapprof.reader import sessions as _sessions
    return _sessions(path)
