"""heapprof flame — a flame graph of live memory at one time.

Formats: an SVG flame graph (drawn by heapprof: open it in a browser), folded stacks
("outer;...;inner bytes" per line, for flamegraph.pl and speedscope) and speedscope's JSON
file format (a "sampled" profile weighted in bytes). The extension of the output chooses
(.svg, .folded or .txt, .json), or --format.
"""
import json
import os

from heapprof import _svg
from heapprof import reader as _reader
from heapprof.cli import (UsageError, add_at_option, add_db_options, add_domain_option,
                          open_reader, write_output)

# Output extension -> format; '-' (stdout) is folded.
EXTENSIONS = {'.svg': 'svg', '.folded': 'folded', '.txt': 'folded', '.json': 'speedscope'}


def register(subparsers):
    p = subparsers.add_parser('flame', help='flame graph at a time (SVG, folded, speedscope)',
                              description=__doc__.split('\n\n')[1].replace('\n', ' '))
    add_db_options(p)
    add_domain_option(p)
    add_at_option(p, default='peak')
    p.add_argument('-o', '--output', required=True, metavar='FILE',
                   help="output file: .svg, .folded or .txt, .json ('-': folded to stdout)")
    p.add_argument('--format', choices=('svg', 'folded', 'speedscope'),
                   help='output format whatever the extension (default: by the extension)')
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


def svg(r, t):
    meta = r.metadata
    title = ('heapprof flame: session %d (pid %d) at %.3f s, live bytes estimated from '
             'sampled allocations' % (meta.session_id, meta.pid, t))
    stacks = [(tuple((fr.function, '%s:%d' % (fr.filename, fr.lineno)) for fr in frames)
               or ((_reader.NO_STACK_LABEL, ''),), b) for frames, b in r.flame_stacks(t)]
    return _svg.flame(title, stacks)


def output_format(args):
    """The format --format or the output's extension asks for; refuses an extension
    that names none (an SVG file of folded text is no flame graph)."""
    if args.format:
        return args.format
    if args.output == '-':
        return 'folded'
    ext = os.path.splitext(args.output)[1].lower()
    if ext not in EXTENSIONS:
        raise UsageError('%s: flame writes .svg (a flame graph), .folded or .txt (folded '
                         'stacks) or .json (speedscope); or choose with --format'
                         % args.output)
    return EXTENSIONS[ext]


def run(args):
    fmt = output_format(args)
    with open_reader(args) as r:
        t = r.resolve_time(args.at)
        text = {'folded': folded, 'speedscope': speedscope, 'svg': svg}[fmt](r, t)
        write_output(args.output, text)
    if args.output != '-':
        print('wrote %s (%s flame graph at %.3f s)' % (args.output, fmt, t))
    return 0
