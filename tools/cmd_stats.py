"""heapprof stats — the allocation size histogram.

`heapprof stats --db prof.sqlite` reads it from the recorded samples; `heapprof stats app.py
args...` runs a program with every allocation counted (heapprof.runner, from the agent).
"""
from heapprof import _fmt
from heapprof.cli import add_db_options, open_reader


def register(subparsers):
    p = subparsers.add_parser(
        'stats', help='allocation size histogram (from --db, or by running PROGRAM)',
        usage='%(prog)s [-h] [--db PATH] [--session ID]\n'
              '       %(prog)s PROGRAM [ARGS...]   (PROGRAM: SCRIPT or -m MODULE)',
        description='Allocation size histogram, in the size classes 0, 1, 2-3, 4-7, ... '
                    'With --db: from the sampled allocations of a recording (estimates). '
                    'With PROGRAM: runs it (a script, or -m MODULE, with its arguments) '
                    'counting every allocation, no daemon and no sampling, and prints the '
                    'exact histogram to stderr; the program\'s exit status is passed '
                    'through.')
    add_db_options(p)
    p.set_defaults(func=run)


def run(args):
    with open_reader(args) as r:
        buckets = r.size_histogram()
        meta = r.metadata
        total = sum(b.est_bytes for b in buckets)
        print('heapprof stats: session %d (pid %d): sizes of %s sampled allocations'
              % (meta.session_id, meta.pid, _fmt.human_count(sum(b.samples for b in buckets))))
        print(_fmt.ESTIMATE_NOTE)
        if not buckets:
            print('no sampled allocations')
            return 0
        top = max(b.est_bytes for b in buckets) or 1
        rows = []
        for b in buckets:
            size = _fmt.size_range(b.lo, b.hi)
            bar = '#' * int(round(30 * b.est_bytes / top))
            rows.append((size, b.samples, _fmt.human_count(b.est_count),
                         _fmt.human_bytes(b.est_bytes), _fmt.percent(b.est_bytes, total), bar))
        print('\n'.join(_fmt.table(('size', 'samples', 'est.count', 'est.bytes', '%bytes', ''),
                                   rows, align='rrrrrl')))
    return 0
