"""heapprof.cli — the `heapprof` command line (also `python -m heapprof`).

One subcommand per module (heapprof.cmd_*), each exposing register(subparsers) that adds its
parser and sets func. `run` and `stats PROGRAM` belong to the agent (heapprof.runner) and get
their raw arguments; `report` belongs to heapprof.report and is listed when it is installed.

Errors a user can cause (a missing or foreign database, an unknown session, a time outside the
session, an unwritable output) end with one line on stderr and a non-zero status, never a
traceback.
"""
import argparse
import glob
import os
import sqlite3
import sys

from heapprof import _db
from heapprof import reader as _reader

PROG = 'heapprof'
# Modules providing subcommands, in the order --help lists them.
_COMMANDS = ('sessions', 'top', 'leaks', 'plot', 'flame', 'flow', 'stats', 'export', 'diff')


class UsageError(Exception):
    """A bad command line that argparse cannot see; str() is one line."""


# ------------------------------------------------------------------ shared options
def add_db_options(parser, session=True):
    parser.add_argument('--db', metavar='PATH',
                        help='heapprof database (default: the newest heapprof-*.sqlite in the '
                             'current directory)')
    if session:
        parser.add_argument('--session', metavar='ID',
                            help='session id (default: the newest root session, i.e. not '
                                 'a child process of another recorded session; see '
                                 '`heapprof sessions`)')


def add_at_option(parser, default='peak', multiple=False):
    what = ("seconds from the session start, 'peak', 'end' or marker:LABEL (the first "
            "marker the program set with heapprof.mark(LABEL))")
    if multiple:
        parser.add_argument('--at', metavar='T', action='append',
                            help='a time to show (%s); repeat to compare several times '
                                 '(default: %s)' % (what, default))
    else:
        parser.add_argument('--at', metavar='T', default=default,
                            help='the time to show (%s; default: %s)' % (what, default))


def add_domain_option(parser):
    """--domain: count only some allocation domains (Reader.restrict_domains)."""
    parser.add_argument('--domain', action='append', metavar='D',
                        choices=_reader.DOMAINS + tuple(_reader.DOMAIN_GROUPS),
                        help="only allocations of domain D: native (C extensions' malloc "
                             "family and anonymous mmap), python (the interpreter's: raw, "
                             "mem and obj), or one of raw, mem, obj; repeat for several "
                             "(default: all)")


def db_path(args):
    if args.db:
        return args.db
    found = sorted(glob.glob('heapprof-*.sqlite'), key=os.path.getmtime)
    if not found:
        raise UsageError('no --db given and no heapprof-*.sqlite in the current directory')
    return found[-1]


def open_reader(args):
    """The Reader of --db/--session. Without --session, when the database holds several
    sessions, one line on stderr names the one shown (the newest root session)."""
    r = _reader.read(db_path(args), getattr(args, 'session', None))
    if r.default_note:
        sys.stderr.write('%s: %s\n' % (PROG, r.default_note))
    r.restrict_domains(getattr(args, 'domain', None))
    return r


def write_output(path, text):
    """Writes text to path ('-' is stdout)."""
    if path == '-':
        sys.stdout.write(text)
        return
    with open(path, 'w', encoding='utf-8') as f:
        f.write(text)


# ------------------------------------------------------------------ agent commands
def _runner(name):
    try:
        from heapprof import runner
    except ImportError as e:
        raise UsageError('this subcommand needs heapprof.runner from the heapprof agent, which '
                         'cannot be imported here (%s)' % e) from None
    return getattr(runner, name)


def _stats_runs_program(args):
    """True when `stats` was given a program to run rather than a recording to read.

    A recording is named by --db/--session, a program by SCRIPT or -m MODULE (everything
    after it is the program's). Both at once is refused here with one line, rather than
    leaving argparse to call the program an unrecognized argument."""
    recording = None    # the first --db/--session option seen
    i = 0
    while i < len(args):
        a = args[i]
        if a in ('-h', '--help'):
            return False
        name = a.partition('=')[0]
        if name in ('--db', '--session'):
            recording = recording or name
            i += 1 if '=' in a else 2
            continue
        if a in ('-m', '--', '-') or not a.startswith('-'):
            if recording:
                raise UsageError('stats: use either %s (the histogram of a recording) or '
                                 'PROGRAM (run it counting every allocation), not both'
                                 % recording)
            return True
        i += 1
    return False


def _register_agent_commands(sub):
    p = sub.add_parser('run', add_help=False,
                       help='run a Python program under the profiler (see `heapprof run --help`)',
                       description='Run a program profiled; all arguments go to heapprof.runner.')
    p.add_argument('args', nargs=argparse.REMAINDER)


def _register_report(sub):
    try:
        from heapprof import report
    except ModuleNotFoundError as e:
        if e.name in ('heapprof.report', 'heapprof'):
            return      # not installed: not listed
        err = e
    except Exception as e:      # noqa: BLE001 - a broken report must not break `heapprof top`
        err = e
    else:
        report.register(sub)
        return
    p = sub.add_parser('report', help='HTML report (unavailable: see `heapprof report`)')

    def broken(args, err=err):
        raise UsageError('the report module failed to load: %s' % err)
    p.set_defaults(func=broken)


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        description='Analyse heapprof recordings: where did the memory go, and when? '
                    'All byte figures are estimates from sampled allocations.')
    sub = parser.add_subparsers(title='commands', metavar='COMMAND')
    import importlib
    _register_agent_commands(sub)
    for name in _COMMANDS:
        importlib.import_module('heapprof.cmd_' + name).register(sub)
    _register_report(sub)
    for p in sub.choices.values():
        p.set_defaults(_subparser=p)
    return parser


def main(argv=None):
    """Runs the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == 'run':
            return _runner('run_main')(argv[1:])
        if argv and argv[0] == 'stats' and _stats_runs_program(argv[1:]):
            return _runner('stats_main')(argv[1:])
        parser = build_parser()
        # Unknown options are reported with the usage of the subcommand they were given
        # to, not the top-level one (which says nothing about them).
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            getattr(args, '_subparser', parser).error('unrecognized arguments: %s'
                                                  % ' '.join(unknown))
        if not hasattr(args, 'func'):
            parser.print_help(sys.stderr)
            return 2
        return args.func(args) or 0
    except (UsageError, _reader.ReaderError, _db.DatabaseError) as e:
        return _fail(str(e))
    except sqlite3.Error as e:
        return _fail('database error: %s' % e)
    except OSError as e:
        if isinstance(e, BrokenPipeError):
            # The reader of our output went away (e.g. `| head`): not an error of ours.
            _silence_stdout()
            return 0
        where = e.filename if e.filename else 'I/O'
        return _fail('%s: %s' % (where, e.strerror or e))
    except KeyboardInterrupt:
        sys.stderr.write('\n')
        return 130


def _fail(message):
    sys.stderr.write('%s: %s\n' % (PROG, message))
    return 1


def _silence_stdout():
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


if __name__ == '__main__':
    sys.exit(main())
