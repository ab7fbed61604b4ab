"""heapprof top — the allocation sites holding the most live memory at one time.

With --follow it is a live view: while heapprofd is still recording the session, it redraws
the top sites and the current live heap every second (the database is in WAL mode, so reading
never blocks the recording), and exits when the session ends or on Ctrl-C. On a terminal
each redraw replaces the last; into a pipe they follow each other.
"""
import sys
import time

from heapprof import _fmt
from heapprof import reader as _reader
from heapprof.cli import add_at_option, add_db_options, add_domain_option, open_reader

CLEAR = '\x1b[H\x1b[2J'


def register(subparsers):
    p = subparsers.add_parser('top', help='top allocation sites at a time (self and cumulative)',
                              description='Top allocation sites by estimated live bytes at a '
                                          'time: self (allocated at that line) and cumulative '
                                          '(allocated while that line was on the stack).')
    add_db_options(p)
    add_domain_option(p)
    # No default in argparse: --follow must tell an explicit --at from the default.
    add_at_option(p, default='peak')
    p.set_defaults(at=None)
    p.add_argument('--between', nargs=2, metavar=('A', 'B'),
                   help='what was allocated after time A and is still live at time B (each '
                        "seconds, 'peak', 'end' or marker:LABEL): what a phase between two "
                        'markers left behind; not with --at')
    p.add_argument('-n', '--limit', type=int, default=20, metavar='N',
                   help='sites to show (default: 20)')
    p.add_argument('--by', choices=('self', 'cumulative'), default='self',
                   help='order by self or cumulative bytes (default: self)')
    p.add_argument('--follow', action='store_true',
                   help='live view of a session still recording: redraw every second until '
                        'it ends (Ctrl-C quits); always shows the latest moment, so not with '
                        '--at')
    p.add_argument('--refresh', type=float, default=1.0, metavar='SECONDS',
                   help='redraw period of --follow (default: 1)')
    p.set_defaults(func=run)


def _describe(meta):
    cmd = ' '.join(meta.argv)
    if len(cmd) > 60:
        cmd = cmd[:57] + '...'
    return 'session %d (pid %d, %s)' % (meta.session_id, meta.pid, cmd)


def _domains_label(r):
    return ' of domain %s' % ', '.join(r.domains) if r.domains else ''


def render(r, t, label, limit, by, width=100, since=None):
    """Lines of the top table at t seconds (with since: of what was allocated after since
    and is still live at t)."""
    sites = r.top_sites(t, n=None, by=by, since=since)
    total = sum(s.self_bytes for s in sites)
    total_se = sum(s.self_se ** 2 for s in sites) ** 0.5
    samples = sum(s.samples for s in sites)
    meta = r.metadata
    if since is None:
        head = 'heapprof top: %s at %.3f s%s' % (_describe(meta), t, label)
        what = 'live heap'
    else:
        head = 'heapprof top: %s, allocated after %.3f s and live at %.3f s%s' % (
            _describe(meta), since, t, label)
        what = 'left behind'
    lines = [head,
             '%s%s: %s %s in %s sampled allocations (sampling %s)'
             % (what, _domains_label(r), _fmt.human_bytes(total), _fmt.margin(total_se), _fmt.human_count(samples),
                _fmt.sampling(meta)),
             _fmt.ESTIMATE_NOTE]
    lines.extend(_fmt.drop_warning(meta, 'live'))
    ended = _fmt.end_unknown(meta)
    if ended:
        until = r.recorded_until()
        if t > until:
            lines.append('warning: %s: nothing was recorded after %.3f s, so allocations '
                         'freed later still count as live here' % (ended, until))
    if not sites:
        lines.append('no live sampled allocations at this time')
        return lines
    rows = []
    for i, s in enumerate(sites[:limit], 1):
        rows.append((i, _fmt.human_bytes(s.self_bytes), _fmt.margin(s.self_se),
                     _fmt.percent(s.self_bytes, total),
                     _fmt.human_count(s.self_count), _fmt.human_bytes(s.cum_bytes),
                     _fmt.margin(s.cum_se), _fmt.percent(s.cum_bytes, total),
                     _fmt.site_name(s.filename, s.lineno, s.function, width=width)))
    lines.extend(_fmt.table(('#', 'self', '95%', 'self%', 'est.count', 'cumulative', '95%',
                             'cum%', 'site'), rows, align='rrrrrrrrl'))
    return lines


def run(args):
    if args.limit < 1:
        from heapprof.cli import UsageError
        raise UsageError('--limit must be at least 1, not %d' % args.limit)
    if args.follow:
        if args.at is not None:
            from heapprof.cli import UsageError
            raise UsageError('--follow always shows the latest moment; use --at without '
                             '--follow to see time %s' % args.at)
        if args.between is not None:
            from heapprof.cli import UsageError
            raise UsageError('--follow always shows the latest moment; use --between '
                             'without --follow')
        return follow(args)
    if args.between is not None:
        if args.at is not None:
            from heapprof.cli import UsageError
            raise UsageError('--between A B names its own times; not with --at')
        with open_reader(args) as r:
            since, t = (r.resolve_time(x) for x in args.between)
            label = ' (%s .. %s)' % tuple(args.between)
            print('\n'.join(render(r, t, label, args.limit, args.by, since=since)))
        return 0
    at = 'peak' if args.at is None else args.at
    with open_reader(args) as r:
        t = r.resolve_time(at)
        word = at.strip().lower()
        label = ' (%s)' % at.strip() if word in ('peak', 'end') or \
            word.startswith('marker:') else ''
        print('\n'.join(render(r, t, label, args.limit, args.by)))
    return 0


def follow(args):
    """Redraws until the session is no longer 'running'; Ctrl-C exits quietly."""
    if args.refresh <= 0:
        from heapprof.cli import UsageError
        raise UsageError('--refresh must be a positive number of seconds')
    out = sys.stdout
    try:
        r = _wait_for_session(args, out)
    except KeyboardInterrupt:
        out.write('\n')
        return 0
    # Into a pipe or a file, redraws follow each other, a blank line apart: the escapes
    # that clear a terminal would be noise there.
    clear = CLEAR if out.isatty() else None
    drawn = False
    with r:
        try:
            while True:
                meta = r.refresh()
                t = r.duration
                live = ' (live, every %gs; Ctrl-C quits)' % args.refresh \
                    if meta.status == 'running' else ' (session %s)' % meta.status
                lines = render(r, t, live, args.limit, args.by)
                out.write((clear or ('\n' if drawn else '')) + '\n'.join(lines) + '\n')
                drawn = True
                out.flush()
                if meta.status != 'running':
                    why = meta.end_unknown_reason
                    out.write('session %d ended: %s%s\n' % (meta.session_id, meta.status,
                                                            ' (%s)' % why if why else ''))
                    out.flush()
                    return 0
                time.sleep(args.refresh)
        except KeyboardInterrupt:
            out.write('\n')
            out.flush()
            return 0


def _wait_for_session(args, out):
    """The Reader, once the database holds a session: heapprofd may be waiting for its first
    program when the live view starts."""
    waiting = False
    while True:
        try:
            return open_reader(args)
        except _reader.NoSessionsError:
            if not waiting:
                out.write('waiting for a program to connect to heapprofd (Ctrl-C quits)...\n')
                out.flush()
                waiting = True
            time.sleep(args.refresh)
