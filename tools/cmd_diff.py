"""heapprof diff — what changed between two recordings, per allocation site, with confidence.

Compares a base recording A with a head recording B (each a database, or DB:SESSION) on
three figures per site (innermost frame: function, file and line): the live bytes at each
session's own peak, the bytes still allocated at its end, and the bytes allocated over the
whole session. Each change B - A comes with the 95% interval of the difference of two
independent estimates (standard errors add in quadrature: tools/README.md, "Standard
errors"); a change whose interval excludes 0 is significant. `--fail-over` turns it into
a CI gate. All figures come from the Reader API (top_sites, leaks, allocated_sites).
"""
import json
import os
import sys

from heapprof import _fmt
from heapprof import reader as _reader
from heapprof.cli import UsageError

# The figures compared, in the order shown: (key, what a user reads).
FIGURES = (('peak', 'live at peak'), ('end', 'still allocated at the end'),
           ('allocated', 'allocated in all'))


def register(subparsers):
    p = subparsers.add_parser(
        'diff', help='per-site changes between two recordings, with 95%% intervals',
        description='Compare recording B with recording A (each a database, or DB:SESSION; '
                    'default: the newest root session of each): per allocation site, the '
                    'change in live bytes at the peak, in bytes still allocated at the end '
                    'and in bytes allocated in all, largest first, each with its 95% '
                    'interval; * marks a significant change (its interval excludes 0).')
    p.add_argument('a', metavar='A', help='the base recording: DB or DB:SESSION')
    p.add_argument('b', metavar='B', help='the recording compared with it: DB or DB:SESSION')
    p.add_argument('-n', '--limit', type=int, default=20, metavar='N',
                   help='sites to show (default: 20)')
    p.add_argument('--fail-over', metavar='BYTES|PERCENT',
                   help='exit with status 1, and one line on stderr naming the site and the '
                        'growth, when a figure grew significantly by more than this, in all or '
                        'at one site: bytes (e.g. 10MB; KB, MB, GB are powers of 1024 like '
                        'KiB, MiB, GiB) or a percentage of the base\'s total of that figure '
                        '(e.g. 10%%)')
    p.add_argument('--format', choices=('text', 'json'), default='text',
                   help='text (default) or json (the same figures, for machines)')
    p.set_defaults(func=run)


def parse_recording(spec):
    """(path, session or None) of 'DB' or 'DB:SESSION'; an existing file wins over the
    split, so a path with a colon still works."""
    if os.path.exists(spec):
        return spec, None
    path, sep, session = spec.rpartition(':')
    if sep and path and session.strip().isdigit():
        return path, int(session)
    return spec, None


def parse_threshold(text):
    """('bytes', n) or ('percent', p) from '10MB', '1048576', '2.5 GiB' or '10%'."""
    t = text.strip()
    if t.endswith('%'):
        try:
            p = float(t[:-1])
        except ValueError:
            raise UsageError('--fail-over %r: a percentage is written like 10%%' % text) from None
        if not p >= 0:
            raise UsageError('--fail-over %r: the percentage must be 0 or more' % text)
        return 'percent', p
    try:
        return 'bytes', _fmt.parse_bytes(t)
    except ValueError as e:
        raise UsageError('--fail-over %r: %s' % (text, e)) from None


class Change:
    """One figure of one site (or of the totals) in A and B: the estimates, their change
    B - A, its standard error and whether its 95% interval excludes 0. a or b is None when
    that recording cannot say (its end is unknown)."""

    def __init__(self, a, b):
        self.a, self.b = a, b

    @property
    def known(self):
        return self.a is not None and self.b is not None

    @property
    def change(self):
        return self.b.value - self.a.value if self.known else None

    @property
    def se(self):
        return (self.a.se ** 2 + self.b.se ** 2) ** 0.5 if self.known else None

    @property
    def margin(self):
        return _reader.Z95 * self.se if self.known else None

    @property
    def significant(self):
        return self.known and abs(self.change) > self.margin

    def as_dict(self):
        if not self.known:
            return {'a': self.a and self.a.value, 'b': self.b and self.b.value, 'change': None}
        return {'a': self.a.value, 'a_se': self.a.se, 'b': self.b.value, 'b_se': self.b.se,
                'change': self.change, 'se': self.se, 'margin_95': self.margin,
                'significant': self.significant}


def site_figures(r):
    """{(filename, lineno, function): {'peak'|'end'|'allocated': Estimate}} and the totals
    {figure: Estimate} of one Reader; 'end' is None when the session's end is unknown."""
    sites = {}

    def put(key, figure, est):
        # Frames are told apart by more than their name and line (e.g. a code object made
        # again); a site is what a user reads: their estimates add, so do their variances.
        figs = sites.setdefault(key, {})
        old = figs.get(figure)
        if old is not None:
            est = _reader.Estimate(old.value + est.value, (old.se ** 2 + est.se ** 2) ** 0.5)
        figs[figure] = est
    t = r.peak()[0]
    for s in r.top_sites(t, n=None):
        put((s.filename, s.lineno, s.function), 'peak', _reader.Estimate(s.self_bytes, s.self_se))
    end_known = r.metadata.end_known
    if end_known:
        for s in r.leaks():
            put((s.filename, s.lineno, s.function), 'end', _reader.Estimate(s.bytes, s.se))
    for s in r.allocated_sites():
        put((s.filename, s.lineno, s.function), 'allocated',
            _reader.Estimate(s.allocated_bytes, s.allocated_se))
    totals = r.totals()
    zero = _reader.Estimate(0, 0.0)
    for figs in sites.values():
        for key, _ in FIGURES:
            figs.setdefault(key, zero if key != 'end' or end_known else None)
    return sites, {'peak': r.live_at(t),
                   'end': _reader.Estimate(totals.unfreed_bytes, totals.unfreed_se)
                   if end_known else None,
                   'allocated': _reader.Estimate(totals.allocated_bytes, totals.allocated_se)}


def compare(ra, rb):
    """(rows, totals): rows [(site key, {figure: Change})] largest change first (the
    largest of a site's three), totals {figure: Change}, for Readers of A and B."""
    sa, ta = site_figures(ra)
    sb, tb = site_figures(rb)
    zero = _reader.Estimate(0, 0.0)
    rows = []
    for key in set(sa) | set(sb):
        fa = sa.get(key)
        fb = sb.get(key)
        ch = {}
        for fig, _ in FIGURES:
            a = fa[fig] if fa is not None else (zero if ta[fig] is not None else None)
            b = fb[fig] if fb is not None else (zero if tb[fig] is not None else None)
            ch[fig] = Change(a, b)
        rows.append((key, ch))
    rows.sort(key=lambda kv: (-max(abs(c.change) for c in kv[1].values() if c.known),
                              kv[0]))
    return rows, {fig: Change(ta[fig], tb[fig]) for fig, _ in FIGURES}


def gate(rows, totals, threshold):
    """The significant growth over the threshold that exceeds it most, as (where, figure,
    Change, limit), where is a site key, or 'all' for the totals when no single site
    exceeds it (a CI log should name the site); None when nothing does."""
    kind, value = threshold

    def worst(candidates):
        found = None
        for where, fig, c in candidates:
            if not c.known or not c.significant or c.change <= 0:
                continue
            if kind == 'bytes':
                limit = value
            elif totals[fig].known:
                limit = totals[fig].a.value * value / 100.0
            else:
                continue
            if c.change > limit and (found is None or
                                     c.change - limit > found[2].change - found[3]):
                found = (where, fig, c, limit)
        return found
    return (worst((key, fig, ch[fig]) for key, ch in rows for fig, _ in FIGURES) or
            worst(('all', fig, totals[fig]) for fig, _ in FIGURES))


def _site_text(key, width=None):
    filename, lineno, function = key
    return _fmt.site_name(filename, lineno, function, width=width)


def _signed(n):
    return ('+' if n > 0 else '') + _fmt.human_bytes(n)


def _describe(path, r):
    meta = r.metadata
    cmd = ' '.join(meta.argv)
    if len(cmd) > 50:
        cmd = cmd[:47] + '...'
    return '%s session %d (pid %d, %s)' % (path, meta.session_id, meta.pid, cmd)


def _change_cell(c):
    if not c.known:
        return 'unknown', ''
    return _signed(c.change) + ('*' if c.significant else ''), _fmt.margin(c.se)


def render_text(pa, ra, pb, rb, rows, totals, limit):
    lines = ['heapprof diff: A = %s' % _describe(pa, ra),
             '               B = %s' % _describe(pb, rb)]
    head = []
    for fig, what in FIGURES:
        c = totals[fig]
        if not c.known:
            side = 'A' if c.a is None else 'B'
            head.append((what, '-', '-', 'unknown (%s: %s)' % (
                side, (ra if side == 'A' else rb).metadata.end_unknown_reason), ''))
            continue
        cell, margin = _change_cell(c)
        head.append((what, '%s %s' % (_fmt.human_bytes(c.a.value), _fmt.margin(c.a.se)),
                     '%s %s' % (_fmt.human_bytes(c.b.value), _fmt.margin(c.b.se)), cell, margin))
    lines.extend(_fmt.table(('in all', 'A', 'B', 'change', '95%'), head, align='lrrrr'))
    lines.append(_fmt.ESTIMATE_NOTE)
    lines.append('* marks a change whose 95% interval excludes 0 (significant); live at '
                 'peak is at each session\'s own peak')
    for m in (ra.metadata, rb.metadata):
        lines.extend(_fmt.drop_warning(m, 'still allocated'))
    if not rows:
        lines.append('no sampled allocation in either recording')
        return lines
    table = []
    for i, (key, ch) in enumerate(rows[:limit], 1):
        cells = [i]
        for fig, _ in FIGURES:
            cells.extend(_change_cell(ch[fig]))
        cells.append(_site_text(key, width=80))
        table.append(cells)
    lines.extend(_fmt.table(('#', 'live at peak', '95%', 'at end', '95%', 'allocated', '95%',
                             'site'), table, align='rrrrrrrl'))
    return lines


def render_json(pa, ra, pb, rb, rows, totals, failed, threshold):
    def session(path, r):
        m = r.metadata
        return {'path': path, 'session_id': m.session_id, 'pid': m.pid, 'argv': m.argv,
                'status': m.status, 'end_known': m.end_known,
                'sample_interval_bytes': m.sample_interval_bytes}
    out = {'a': session(pa, ra), 'b': session(pb, rb), 'z95': _reader.Z95,
           'totals': {fig: totals[fig].as_dict() for fig, _ in FIGURES},
           'sites': [dict({'filename': k[0], 'lineno': k[1], 'function': k[2]},
                          **{fig: ch[fig].as_dict() for fig, _ in FIGURES})
                     for k, ch in rows]}
    if threshold is not None:
        out['fail_over'] = {'threshold': {threshold[0]: threshold[1]},
                            'failed': failed is not None}
        if failed is not None:
            where, fig, c, limit = failed
            out['fail_over'].update(
                figure=fig, site=None if where == 'all' else
                {'filename': where[0], 'lineno': where[1], 'function': where[2]},
                change=c.change, margin_95=c.margin, limit=limit)
    return json.dumps(out, indent=1, sort_keys=True)


def failure_line(failed):
    where, fig, c, limit = failed
    what = dict(FIGURES)[fig]
    place = '(all sites together)' if where == 'all' else 'at %s' % _site_text(where)
    return ('heapprof diff: %s %s grew by %s %s (%s to %s), over the limit of %s'
            % (what, place, _signed(c.change), _fmt.margin(c.se), _fmt.human_bytes(c.a.value),
               _fmt.human_bytes(c.b.value), _fmt.human_bytes(limit)))


def run(args):
    if args.limit < 1:
        raise UsageError('--limit must be at least 1, not %d' % args.limit)
    threshold = parse_threshold(args.fail_over) if args.fail_over is not None else None
    pa, sa = parse_recording(args.a)
    pb, sb = parse_recording(args.b)
    with _reader.read(pa, sa) as ra, _reader.read(pb, sb) as rb:
        rows, totals = compare(ra, rb)
        failed = gate(rows, totals, threshold) if threshold is not None else None
        if args.format == 'json':
            print(render_json(pa, ra, pb, rb, rows, totals, failed, threshold))
        else:
            print('\n'.join(render_text(pa, ra, pb, rb, rows, totals, args.limit)))
    if failed is not None:
        sys.stdout.flush()
        sys.stderr.write(failure_line(failed) + '\n')
        return 1
    return 0
