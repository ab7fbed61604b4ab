"""heapprof plot — the estimated live heap over time, and chosen file:line sites.

The extension of the output chooses the format: .svg (drawn by heapprof, always available),
.csv (the series: t_seconds, total_live_bytes, then <site> bytes and <site> fraction of the
total for each --site), or .png and .pdf, drawn by matplotlib when it is importable.

Markers the program set with heapprof.mark(label) are drawn as labelled vertical lines.
"""
import csv
import io
import os
import sys

from heapprof import _fmt
from heapprof import _svg
from heapprof.cli import UsageError, add_db_options, open_reader, write_output

MATPLOTLIB_FORMATS = ('.png', '.pdf')
FORMATS = ('.svg', '.csv') + MATPLOTLIB_FORMATS


def register(subparsers):
    p = subparsers.add_parser('plot', help='time plot of the live heap (SVG, CSV, PNG, PDF)',
                              description=' '.join(__doc__.split('\n\n')[1:3])
                              .replace('\n', ' '))
    add_db_options(p)
    p.add_argument('-o', '--output', required=True, metavar='FILE',
                   help='output file: .svg or .csv, or .png or .pdf (with matplotlib)')
    p.add_argument('--site', action='append', default=[], metavar='FILE:LINE',
                   help='also plot the live bytes allocated while FILE:LINE was on the stack, '
                        'and their fraction of the total (repeatable; FILE may be a path '
                        'suffix)')
    p.set_defaults(func=run)


def series(r, sites):
    """(header, rows) of the CSV: one row per timeline interval."""
    total = r.timeline()
    per_site = r.site_series(sites) if sites else {}
    header = ['t_seconds', 'total_live_bytes']
    for s in sites:
        header += ['%s bytes' % s, '%s fraction' % s]
    rows = []
    for k, (t, b) in enumerate(total):
        row = ['%.6f' % t, b]
        for s in sites:
            sb = per_site[s][k][1]
            row += [sb, '%.6f' % (min(sb / b, 1.0) if b > 0 else 0.0)]
        rows.append(row)
    return header, rows


def to_csv(header, rows):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator='\n')
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _plot(path, r, header, rows, sites):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    ts = [float(row[0]) for row in rows]
    mib = 1024.0 * 1024.0
    nplots = 2 if sites else 1
    fig, axes = plt.subplots(nplots, 1, figsize=(10, 4 * nplots), squeeze=False, sharex=True)
    ax = axes[0][0]
    ax.step(ts, [row[1] / mib for row in rows], where='post', label='total')
    for i, s in enumerate(sites):
        ax.step(ts, [row[2 + 2 * i] / mib for row in rows], where='post', label=s)
    ax.set_ylabel('estimated live heap (MiB)')
    ax.set_title('heapprof: session %d (pid %d), estimates from sampled allocations'
                 % (r.metadata.session_id, r.metadata.pid))
    for m in r.markers():
        for row in axes:
            row[0].axvline(m.t, color='#555555', linestyle='--', linewidth=0.8)
        ax.annotate(m.label[:40], (m.t, 1.0), xycoords=('data', 'axes fraction'),
                    rotation=90, va='top', ha='right', fontsize=8, color='#555555')
    ax.legend(loc='best')
    if sites:
        ax2 = axes[1][0]
        for i, s in enumerate(sites):
            ax2.step(ts, [float(row[3 + 2 * i]) for row in rows], where='post', label=s)
        ax2.set_ylabel('fraction of the live heap')
        ax2.set_ylim(0, 1)
        ax2.legend(loc='best')
    axes[-1][0].set_xlabel('seconds from the session start')
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def to_svg(r, header, rows, sites):
    """The plot drawn by heapprof itself (no matplotlib needed)."""
    ts = [float(row[0]) for row in rows]
    total = list(zip(ts, (row[1] for row in rows)))
    per_site = [(s, list(zip(ts, (row[2 + 2 * i] for row in rows))),
                 list(zip(ts, (float(row[3 + 2 * i]) for row in rows))))
                for i, s in enumerate(sites)]
    title = ('heapprof: session %d (pid %d), estimates from sampled allocations'
             % (r.metadata.session_id, r.metadata.pid))
    return _svg.plot(title, max(r.duration, ts[-1]), total, per_site,
                     markers=[(m.t, m.label) for m in r.markers()])


def _matplotlib_missing(out, ext):
    """Refuses an image only matplotlib draws, naming the formats that work here."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise UsageError('%s: %s plots need matplotlib, which %s cannot import (%s); write '
                         '.svg or .csv instead, or install matplotlib (Debian: '
                         'python3-matplotlib, for /usr/bin/python3)'
                         % (out, ext[1:].upper(), sys.executable, e)) from None


def run(args):
    out = args.output
    ext = os.path.splitext(out)[1].lower()
    if ext not in FORMATS:
        raise UsageError('%s: the plot format is chosen by the extension: .svg or .csv, or '
                         '.png or .pdf (with matplotlib)' % out)
    if ext in MATPLOTLIB_FORMATS:
        _matplotlib_missing(out, ext)
    with open_reader(args) as r:
        header, rows = series(r, args.site)
        if not rows:
            raise UsageError('session %d has no timeline points to plot yet'
                             % r.metadata.session_id)
        if ext == '.csv':
            write_output(out, to_csv(header, rows))
            print('wrote %s (%d points)' % (out, len(rows)))
            return 0
        if ext == '.svg':
            write_output(out, to_svg(r, header, rows, args.site))
        else:
            _plot(out, r, header, rows, args.site)
        print('wrote %s (%d points, peak %s)' % (out, len(rows),
                                                 _fmt.human_bytes(max(x[1] for x in rows))))
    return 0
