"""heapprof leaks — sites whose allocations were never freed, largest first."""
from heapprof import _fmt
from heapprof.cli import UsageError, add_db_options, open_reader


def register(subparsers):
    p = subparsers.add_parser('leaks', help='sites whose allocations were never freed',
                              description='Allocation sites whose sampled allocations were never '
                                          'freed during the recording, largest first.')
    add_db_options(p)
    p.add_argument('-n', '--limit', type=int, default=20, metavar='N',
                   help='sites to show (default: 20)')
    p.set_defaults(func=run)


def run(args):
    if args.limit < 1:
        raise UsageError('--limit must be at least 1, not %d' % args.limit)
    with open_reader(args) as r:
        meta = r.metadata
        sites = r.leaks()
        total = sum(s.bytes for s in sites)
        when = 'so far (the session is still recording)' if meta.status == 'running' else \
            'by the end of the recording (%.3f s)' % r.duration
        print('heapprof leaks: session %d (pid %d): %s never freed %s'
              % (meta.session_id, meta.pid, _fmt.human_bytes(total), when))
        print(_fmt.ESTIMATE_NOTE)
        for line in _fmt.drop_warning(meta, 'never freed'):
            print(line)
        if not sites:
            print('no sampled allocation was left unfreed')
            return 0
        rows = [(i, _fmt.human_bytes(s.bytes), _fmt.percent(s.bytes, total),
                 _fmt.human_count(s.count), s.samples, '%.3f' % s.first_t, '%.3f' % s.last_t,
                 _fmt.site_name(s.filename, s.lineno, s.function, width=100))
                for i, s in enumerate(sites[:args.limit], 1)]
        print('\n'.join(_fmt.table(('#', 'never freed', '%', 'est.count', 'samples',
                                    'first (s)', 'last (s)', 'site'), rows, align='rrrrrrrl')))
    return 0
