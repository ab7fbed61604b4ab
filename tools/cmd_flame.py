"""heapprof flame — a flame graph of live memory at one time.

Formats: folded stacks ("outer;...;inner bytes" per line, for flamegraph.pl and speedscope)
and speedscope's JSON file format (a "sampled" profile weighted in bytes).
"""
import json

from heapprof import reader as _reader
from heapprof.cli import add_at_option, add_db_options, open_reader, write_output


def register(subparsers):
    p = subparsers.add_parser('flame', help='flame graph at a time (folded or speedscope JSON)',
                              description=__doc__.split('\n\n')[1].replace('\n', ' '))
    add_db_options(p)
    add_at_option(p, default='peak')
    p.add_argument('-o', '--output', required=True, metavar='FILE',
                   help="output file ('-': stdout)")
    p.add_argument('--format', choices=('folded', 'speedscope'),
                   help='output format (default: speedscope for .json, else folded)')
    p.set_defaults(func=run)


def folded(r, t):
    lines = ['%s %d' % (k, v) for k, v in sorted(r.flame(t).items()) if v > 0]
    return '\n'.join(lines) + ('\n' if lines else '')


def speedscope(r, t):
    """speedscope's file format (https://www.speedscope.app/file-format-schema.json)."""
    frames, index, samples, weights = [], {}, [], []
    for stack, b in r.flame_stacks(t):
        if b <= 0:
            continue
        ids = []
        for fr in stack or (None,):
            key = fr.frame_id if fr is not None else None
            if key not in index:
                index[key] = len(frames)
                if fr is None:
                    frames.append({'name': _reader.NO_STACK_LABEL})
                else:
                    frames.append({'name': fr.function, 'file': fr.filename, 'line': fr.lineno})
            ids.append(index[key])
        samples.append(ids)
        weights.append(b)
    meta = r.metadata
    name = 'heapprof session %d (pid %d) at %.3f s: live bytes (estimated)' % (
        meta.session_id, meta.pid, t)
    doc = {
        '$schema': 'https://www.speedscope.app/file-format-schema.json',
        'name': name,
        'exporter': 'heapprof',
        'activeProfileIndex': 0,
        'shared': {'frames': frames},
        'profiles': [{'type': 'sampled', 'name': name, 'unit': 'bytes', 'startValue': 0,
                      'endValue': sum(weights), 'samples': samples, 'weights': weights}],
    }
    return json.dumps(doc) + '\n'


def run(args):
    fmt = args.format or ('speedscope' if args.output.lower().endswith('.json') else 'folded')
    with open_reader(args) as r:
        t = r.resolve_time(args.at)
        text = folded(r, t) if fmt == 'folded' else speedscope(r, t)
        write_output(args.output, text)
    if args.output != '-':
        print('wrote %s (%s flame graph at %.3f s)' % (args.output, fmt, t))
    return 0
