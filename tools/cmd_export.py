"""heapprof export — a recording as a pprof heap profile, for go tool pprof and the
continuous-profiling services that read pprof (Pyroscope/Grafana, Parca, ...).

One session to one file (-o heap.pb.gz), at a time T (--at: allocations from the start to
T, live at T) or over a range (--between T1 T2: allocations after T1 up to T2, live at T2).
Or, with --dir, one file per session recording in a range of wall-clock time, named by host,
pid and time: what heapprofd --pprof-dir runs every --pprof-every seconds. Files are written
to a temporary name and renamed, so a collector never sees a partial profile.
"""
import decimal
import os
import signal
import socket
import sys
import time

from heapprof import pprof as _pprof
from heapprof import reader as _reader
from heapprof.cli import UsageError, add_db_options, db_path, open_reader

NS = _reader.NS
SUFFIX = '.pb.gz'
# Temporary files start with this, then the writer's pid: see _remove_stale_temps.
TMP_PREFIX = '.heapprof-tmp-'


def register(subparsers):
    p = subparsers.add_parser(
        'export', help='pprof heap profile (go tool pprof, Pyroscope, Parca, ...)',
        description='Export a recording as a gzipped pprof profile (profile.proto) with Go '
                    "heap profiles' four sample types: alloc_objects, alloc_space (allocations "
                    'made in the range), inuse_objects, inuse_space (live at its end; the '
                    'default). Values are estimates from the samples, as in every heapprof '
                    'figure.')
    p.add_argument('--format', choices=('pprof',), default='pprof',
                   help='output format (default and only one: pprof)')
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument('-o', '--output', metavar='FILE',
                     help="the profile to write, named *%s ('-': stdout, not a terminal)"
                          % SUFFIX)
    out.add_argument('--dir', metavar='DIR',
                     help='instead of -o: one profile per session recording between --since '
                          'and --until, written into DIR as heapprof-HOST-PID-SESSION-TIME%s '
                          '(TIME: --until, UTC); what heapprofd --pprof-dir runs' % SUFFIX)
    add_db_options(p)
    when = p.add_mutually_exclusive_group()
    when.add_argument('--at', metavar='T',
                      help="the time of the profile: seconds from the session start, 'peak', "
                           "'end' or marker:LABEL (default: peak); alloc_* cover the start "
                           "to T")
    when.add_argument('--between', nargs=2, metavar=('T1', 'T2'),
                      help='a range instead: alloc_* cover the allocations made after T1 up '
                           'to T2, inuse_* are live at T2')
    p.add_argument('--since', metavar='EPOCH',
                   help='with --dir: the range starts after this time, in seconds since the '
                        'Unix epoch (default: each session from its start, and only sessions '
                        'still recording)')
    p.add_argument('--until', metavar='EPOCH',
                   help='with --dir: the range ends at this time, in seconds since the Unix '
                        'epoch (default: now)')
    p.add_argument('--label', action='append', choices=_pprof.LABELS, default=[],
                   help='label each sample with the allocating thread, the process id or '
                        'the allocator domain; repeat for several (samples are then split '
                        'by label)')
    p.set_defaults(func=run)


def run(args):
    # A SIGTERM (heapprofd stopping) unwinds like an exception, so temporary files go.
    signal.signal(signal.SIGTERM, _terminate)
    if args.dir is not None:
        for opt, value in (('--session', args.session), ('--at', args.at),
                           ('--between', args.between)):
            if value is not None:
                raise UsageError('%s names a time or session of one recording; with --dir, '
                                 'use --since/--until (seconds since the epoch)' % opt)
        return export_dir(args)
    for opt, value in (('--since', args.since), ('--until', args.until)):
        if value is not None:
            raise UsageError('%s is for --dir; for one session use --at T or --between T1 T2'
                             % opt)
    return export_file(args)


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


# ------------------------------------------------------------------ one session, one file
def export_file(args):
    out = args.output
    if out != '-' and not out.endswith(SUFFIX):
        raise UsageError('-o %s: a pprof profile is gzipped protobuf; name it *%s '
                         '(e.g. -o heap%s)' % (out, SUFFIX, SUFFIX))
    if out == '-' and sys.stdout.isatty():
        raise UsageError('-o -: not writing a binary profile to a terminal; redirect it or '
                         'name a file')
    labels = _unique(args.label)
    with open_reader(args) as r:
        if args.between is not None:
            since, t = (r.resolve_time(x) for x in args.between)
            if since >= t:
                raise UsageError('--between %s %s: the range must start before it ends'
                                 % tuple(args.between))
        else:
            since, t = None, r.resolve_time(args.at or 'peak')
        data, samples = _pprof.profile(r, t, since, labels)
        if out == '-':
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            return 0
        _write_atomically(out, data)
        meta = r.metadata
    print('wrote %s: pprof heap profile of session %d (pid %d), %s; %d samples'
          % (out, meta.session_id, meta.pid, _pprof.describe_range(since, t), samples))
    print('view it with: go tool pprof -top %s' % out)
    return 0


def _unique(items):
    return tuple(dict.fromkeys(items))


def _write_atomically(path, data):
    """Writes data to a temporary file beside path (mode 0600, like the database), then
    renames it to path: a reader of the directory sees the whole file or none."""
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, '%s%d-%s' % (TMP_PREFIX, os.getpid(), name))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None   # name what the user named
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ------------------------------------------------------------------ --dir: every session
def _epoch_ns(opt, text):
    try:
        ns = int(decimal.Decimal(text) * NS)
    except (decimal.InvalidOperation, ValueError):
        raise UsageError('%s %s: not a time in seconds since the Unix epoch (e.g. %.3f)'
                         % (opt, text, time.time())) from None
    if ns <= 0:
        raise UsageError('%s %s: not a time in seconds since the Unix epoch (e.g. %.3f)'
                         % (opt, text, time.time()))
    return ns


def _host():
    """The host name, reduced to characters that are safe in a file name."""
    name = socket.gethostname() or 'localhost'
    return ''.join(c if c.isalnum() or c in '.-' else '_' for c in name)


def _remove_stale_temps(directory):
    """Removes the temporary files of writers that are gone (killed mid-write): the pid in
    the name is not a live process."""
    for name in os.listdir(directory):
        if not name.startswith(TMP_PREFIX):
            continue
        pid = name[len(TMP_PREFIX):].split('-', 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass
        except OSError:
            pass    # alive, another user's


def _in_range(s, since_ns, until_ns):
    """Whether session s recorded during (since_ns, until_ns]; without since_ns, whether it
    is recording now."""
    if s.started_ns > until_ns:
        return False
    if since_ns is None:
        return s.status == 'running'
    end = None if s.status == 'running' else (s.ended_ns or s.last_ns)
    return end is None or end > since_ns


def export_dir(args):
    directory = args.dir
    if not os.path.isdir(directory):
        raise UsageError('--dir %s: no such directory' % directory)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError('--dir %s: not writable' % directory)
    until_ns = _epoch_ns('--until', args.until) if args.until is not None else time.time_ns()
    since_ns = _epoch_ns('--since', args.since) if args.since is not None else None
    if since_ns is not None and since_ns >= until_ns:
        raise UsageError('--since %s --until %s: the range must start before it ends'
                         % (args.since, args.until))
    labels = _unique(args.label)
    path = db_path(args)
    _remove_stale_temps(directory)
    stamp = time.strftime('%Y%m%dT%H%M%S', time.gmtime(until_ns // NS)) + \
        '.%03dZ' % (until_ns % NS // 1_000_000)
    host = _host()
    failed = 0
    chosen = [s for s in _reader.sessions(path) if _in_range(s, since_ns, until_ns)]
    for s in chosen:
        name = 'heapprof-%s-%d-%d-%s%s' % (host, s.pid, s.session_id, stamp, SUFFIX)
        try:
            with _reader.read(path, s.session_id) as r:
                duration = r.duration
                t = min(max((until_ns - s.started_ns) / NS, 0.0), duration)
                since = None
                if since_ns is not None and since_ns > s.started_ns:
                    since = min((since_ns - s.started_ns) / NS, t)
                data, _ = _pprof.profile(r, t, since, labels)
            _write_atomically(os.path.join(directory, name), data)
        except _reader.ReaderError as e:
            failed += 1
            sys.stderr.write('heapprof: export of session %d: %s\n' % (s.session_id, e))
            continue
        print('wrote %s' % os.path.join(directory, name))
    if not chosen:
        print('no session of %s was recording in that range' % path)
    return 1 if failed else 0
