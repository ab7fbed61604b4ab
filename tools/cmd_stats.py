"""heapprof stats — the allocation size histogram.

`heapprof stats --db prof.sqlite` reads it from the recorded samples; `heapprof stats app.py
args...` runs a program with every allocation counted (heapprof.runner, from the agent).
"""
from heapprof import _fmt
from heapprof.cli import add_db_options, open_reader


def register(subparsers):
    p = subparsers.add_parser(
        'stats', help='allocation size histogram (from --db, or by running PROGRAM)',
        description='Allocation size histogram. With --db: from the sampled allocations of a '
                    'recording. Without --db: `heapprof stats PROGRAM [ARGS...]` runs the '
                    'program counting every allocation (see heapprof.runner).')
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
            size = '%s - %s' % (_fmt.human_bytes(b.lo), _fmt.human_bytes(b.hi))
            bar = '#' * int(round(30 * b.est_bytes / top))
            rows.append((size, b.samples, _fmt.human_count(b.est_count),
                         _fmt.human_bytes(b.est_bytes), _fmt.percent(b.est_bytes, total), bar))
        print('\n'.join(_fmt.table(('size', 'samples', 'est.count', 'est.bytes', '%bytes', ''),
                                   rows, align='rrrrrl')))
    return 0
