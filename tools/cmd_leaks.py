"""heapprof leaks — sites whose allocations were never freed, largest first.

Only for a session whose end was recorded: one that ended without its final flush (or
stopped recording early) cannot tell a leak from a block freed after it stopped.
"""
from heapprof import _fmt
from heapprof.cli import UsageError, add_db_options, add_domain_option, open_reader


def register(subparsers):
    p = subparsers.add_parser('leaks', help='sites whose allocations were never freed',
                              description='Allocation sites whose sampled allocations were never '
                                          'freed during the recording, largest first.')
    add_db_options(p)
    add_domain_option(p)
    p.add_argument('-n', '--limit', type=int, default=20, metavar='N',
                   help='sites to show (default: 20)')
    p.set_defaults(func=run)


def run(args):
    if args.limit < 1:
        raise UsageError('--limit must be at least 1, not %d' % args.limit)
    with open_reader(args) as r:
        meta = r.metadata
        if not meta.end_known:
            return _end_unknown(r)
        sites = r.leaks()
        total = sum(s.bytes for s in sites)
        total_se = sum(s.se ** 2 for s in sites) ** 0.5
        when = 'so far (the session is still recording)' if meta.status == 'running' else \
            'by the end of the recording (%.3f s)' % r.duration
        print('heapprof leaks: session %d (pid %d): %s %s%s never freed %s'
              % (meta.session_id, meta.pid, _fmt.human_bytes(total), _fmt.margin(total_se),
                 ' of domain %s' % ', '.join(r.domains) if r.domains else '', when))
        print(_fmt.ESTIMATE_NOTE)
        for line in _fmt.drop_warning(meta, 'never freed'):
            print(line)
        if not sites:
            print('no sampled allocation was left unfreed')
            return 0
        rows = [(i, _fmt.human_bytes(s.bytes), _fmt.margin(s.se), _fmt.percent(s.bytes, total),
                 _fmt.human_count(s.count), s.samples, '%.3f' % s.first_t, '%.3f' % s.last_t,
                 _fmt.site_name(s.filename, s.lineno, s.function, width=100))
                for i, s in enumerate(sites[:args.limit], 1)]
        print('\n'.join(_fmt.table(('#', 'never freed', '95%', '%', 'est.count', 'samples',
                                    'first (s)', 'last (s)', 'site'), rows,
                                   align='rrrrrrrrl')))
    return 0


def _end_unknown(r):
    """A session that ended without its final flush: its unfreed allocations include blocks
    freed after the recording stopped, so they are not reported as leaks."""
    meta, totals = r.metadata, r.totals()
    print('heapprof leaks: session %d (pid %d) ended \'%s\' (%s): what was still allocated at '
          'its end is unknown, so no leaks are reported'
          % (meta.session_id, meta.pid, meta.status, meta.end_unknown_reason))
    print('note: %s in %s sampled allocations have no recorded free; any of them may have '
          'been freed after %.3f s, the last recorded event. `heapprof top --at T` shows what '
          'was live at a time T of the recording.'
          % (_fmt.human_bytes(totals.unfreed_bytes), _fmt.human_count(totals.unfreed_samples),
             r.recorded_until()))
    return 0
