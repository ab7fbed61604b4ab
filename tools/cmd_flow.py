"""heapprof flow — a flow graph of live memory (graphviz dot), at one time or compared across
several: each box is a code location, with one colored cell per time giving the live bytes
allocated while it was on the stack; arrows go from caller to callee.

The extension of the output chooses the format: .dot or .gv writes graphviz text (and
renders it beside, to SVG by default, when graphviz's `dot` is installed); .svg, .png or .pdf
is rendered by `dot` directly, which must then be installed.
"""
import html
import os
import shutil
import subprocess

from heapprof import _fmt
from heapprof.cli import UsageError, add_at_option, add_db_options, open_reader, write_output

# One color per compared time (ColorBrewer Set3, readable under black text).
PALETTE = ('#8dd3c7', '#ffffb3', '#bebada', '#fb8072', '#80b1d3', '#fdb462', '#b3de69',
           '#fccde5', '#d9d9d9', '#bc80bd')
MAX_TIMES = len(PALETTE)
DOT_TIMEOUT_S = 120
TEXT_FORMATS = ('.dot', '.gv')
IMAGE_FORMATS = ('.svg', '.png', '.pdf')


def register(subparsers):
    p = subparsers.add_parser('flow', help='flow graph (graphviz dot) at one or more times',
                              description=' '.join(__doc__.split('\n\n')[0].split()[3:]))
    add_db_options(p)
    add_at_option(p, default='peak', multiple=True)
    p.add_argument('-o', '--output', required=True, metavar='FILE',
                   help="output file: .dot or .gv (graphviz text; '-': stdout), or .svg, "
                        ".png or .pdf (rendered by graphviz `dot`)")
    p.add_argument('--min-share', type=float, default=0.01, metavar='FRACTION',
                   help='hide locations below this fraction of the live heap at every time '
                        '(default: 0.01)')
    p.add_argument('--render', default='svg', metavar='FORMAT',
                   help="with a .dot output, the format `dot` also renders beside it "
                        "(default: svg; 'none' to skip)")
    p.set_defaults(func=run)


def _node_name(fid):
    return 'nostack' if fid is None else 'f%d' % fid


def to_dot(graph, labels, title, min_share):
    k = len(graph.times)
    shares = lambda vals: [v / graph.totals[i] if graph.totals[i] else 0.0  # noqa: E731
                           for i, v in enumerate(vals)]
    keep = {fid for fid, (_, cum, _) in graph.nodes.items()
            if max(shares(cum)) >= min_share and max(cum) > 0}
    out = ['digraph heapprof_flow {',
           '  graph [rankdir=TB, fontname="Helvetica", label=%s, labelloc=t];'
           % _quote(title),
           '  node [shape=plaintext, fontname="Helvetica", fontsize=10];',
           '  edge [fontname="Helvetica", fontsize=9, color="#555555"];']
    legend = ''.join('<TR><TD BGCOLOR="%s">%s</TD><TD>%s live</TD></TR>'
                     % (PALETTE[i], html.escape(labels[i]), _fmt.human_bytes(graph.totals[i]))
                     for i in range(k))
    out.append('  legend [label=<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0">'
               '<TR><TD COLSPAN="2"><B>times compared</B></TD></TR>%s</TABLE>>];' % legend)
    for fid in sorted(keep, key=lambda f: (f is None, f or 0)):
        fr, cum, self_b = graph.nodes[fid]
        where = '' if not fr.filename else '<BR/>%s:%d' % (
            html.escape(_fmt.short_path(fr.filename)), fr.lineno)
        cells = ''.join('<TD BGCOLOR="%s">%s<BR/>%s</TD>'
                        % (PALETTE[i], _fmt.human_bytes(cum[i]),
                           _fmt.percent(cum[i], graph.totals[i]).strip())
                        for i in range(k))
        out.append('  %s [label=<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0">'
                   '<TR><TD COLSPAN="%d"><B>%s</B>%s</TD></TR><TR>%s</TR></TABLE>>];'
                   % (_node_name(fid), k, html.escape(fr.function), where, cells))
    for (caller, callee), vals in sorted(graph.edges.items(),
                                         key=lambda e: (_node_name(e[0][0]), _node_name(e[0][1]))):
        if caller not in keep or callee not in keep:
            continue
        top = max(shares(vals))
        if top < min_share:
            continue
        label = ' / '.join(_fmt.human_bytes(v) for v in vals)
        out.append('  %s -> %s [label=%s, penwidth=%.2f];'
                   % (_node_name(caller), _node_name(callee), _quote(label), 1 + 5 * top))
    out.append('}')
    return '\n'.join(out) + '\n'


def _quote(s):
    return '"%s"' % s.replace('\\', '\\\\').replace('"', '\\"')


def render(text, fmt, out, what):
    """Renders dot text with graphviz into out; False without `dot`. what names the
    input in errors."""
    exe = shutil.which('dot')
    if exe is None:
        return False
    try:
        proc = subprocess.run([exe, '-T' + fmt, '-o', out], input=text, capture_output=True,
                              text=True, timeout=DOT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise UsageError('graphviz dot took over %d s to render %s' % (DOT_TIMEOUT_S, what))
    if proc.returncode != 0:
        msg = (proc.stderr.strip().splitlines() or ['exit status %d' % proc.returncode])[0]
        raise UsageError('graphviz dot could not render %s: %s' % (what, msg))
    return True


def _check_output(out):
    """The output's kind ('text' or 'image'), refusing an extension no format has, and an
    image when graphviz is missing (before any work)."""
    if out == '-':
        return 'text'
    ext = os.path.splitext(out)[1].lower()
    if ext in TEXT_FORMATS:
        return 'text'
    if ext not in IMAGE_FORMATS:
        raise UsageError('%s: flow writes .dot or .gv (graphviz text), or .svg, .png or .pdf '
                         '(rendered by graphviz `dot`)' % out)
    if shutil.which('dot') is None:
        raise UsageError('%s: rendering %s needs graphviz `dot`, which is not installed '
                         '(Debian: graphviz); write .dot instead' % (out, ext[1:].upper()))
    return 'image'


def run(args):
    kind = _check_output(args.output)
    specs = args.at or ['peak']
    if len(specs) > MAX_TIMES:
        raise UsageError('flow compares at most %d times, not %d' % (MAX_TIMES, len(specs)))
    if not 0 <= args.min_share < 1:
        raise UsageError('--min-share must be a fraction between 0 and 1')
    with open_reader(args) as r:
        times = [r.resolve_time(s) for s in specs]
        labels = ['%.3f s%s' % (t, ' (%s)' % s if s.strip().lower() in ('peak', 'end') else '')
                  for t, s in zip(times, specs)]
        graph = r.flow(times)
        meta = r.metadata
        title = ('heapprof flow: session %d (pid %d); live bytes estimated from sampled '
                 'allocations' % (meta.session_id, meta.pid))
        text = to_dot(graph, labels, title, args.min_share)
    if kind == 'image':
        if not render(text, os.path.splitext(args.output)[1][1:].lower(), args.output,
                      'the flow graph'):
            raise UsageError('graphviz `dot` went away while drawing %s' % args.output)
        print('wrote %s: live memory at %s' % (args.output, ', '.join(labels)))
        return 0
    write_output(args.output, text)
    if args.output == '-':
        return 0
    print('wrote %s: live memory at %s' % (args.output, ', '.join(labels)))
    if args.render.lower() != 'none':
        out = os.path.splitext(args.output)[0] + '.' + args.render
        if not render(text, args.render, out, args.output):
            print('graphviz `dot` is not installed: render it elsewhere with '
                  '`dot -T%s %s`' % (args.render, args.output))
        else:
            print('rendered %s' % out)
    return 0
