"""heapprof._svg — SVG drawings with the standard library only: the time plot of `heapprof
plot -o X.svg` and the flame graph of `heapprof flame -o X.svg`.

Both are static files (no script: any viewer or browser shows them, and a hostile frame
name stays text); hovering a box or a step shows its <title>. Callers pass figures that
are already aggregated; nothing here reads a database.
"""
import hashlib
import math
import re
from xml.sax.saxutils import escape

from heapprof import _fmt

FONT = 'font-family="Helvetica, Arial, sans-serif"'
# Markers (heapprof.mark): a gray no series uses.
MARKER_COLOR = '#555555'
# One color per plotted series (the total first).
SERIES_COLORS = ('#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b',
                 '#e377c2', '#17becf', '#bcbd22', '#7f7f7f')
PLOT_WIDTH, PANEL_HEIGHT = 960, 320
FLAME_WIDTH, FLAME_ROW = 1200, 17
CHAR_PX = 6.6                   # mean width of a character at font-size 11
MIN_BOX_PX = 0.3                # narrower frames are drawn as part of their caller
_NOT_XML = re.compile('[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]')


def _text(s):
    """s as XML character data; characters XML 1.0 cannot hold become U+FFFD."""
    return escape(_NOT_XML.sub('\ufffd', str(s)))


def _document(width, height, body, title):
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
            'viewBox="0 0 %d %d" %s font-size="11">\n<title>%s</title>\n'
            '<rect width="100%%" height="100%%" fill="white"/>\n%s</svg>\n'
            % (width, height, width, height, FONT, _text(title), ''.join(body)))


# ------------------------------------------------------------------ time plot
def _nice_ticks(hi, n=5):
    """Round tick values from 0 to at least hi, about n of them."""
    if hi <= 0:
        return [0, 1]
    raw = hi / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    count = int(math.ceil(hi / step - 1e-9))
    return [k * step for k in range(count + 1)]


def _thin(points, t0, t1, width):
    """At most four (t, v) points per pixel column of a step series, keeping each column's
    first, lowest, highest and last value in time order: the drawn shape stays the same
    while a long session's file stays small."""
    if len(points) <= 4 * width:
        return points
    span = (t1 - t0) or 1.0
    columns = {}
    for i, p in enumerate(points):
        columns.setdefault(int((p[0] - t0) / span * width), []).append(i)
    keep = set()
    for idx in columns.values():
        keep.update((idx[0], idx[-1], min(idx, key=lambda i: points[i][1]),
                     max(idx, key=lambda i: points[i][1])))
    return [points[i] for i in sorted(keep)]


def _panel(body, top, series, y_max, y_label, t_max, x_label, first_color=0, markers=()):
    """One plot panel at vertical offset top: step series [(label, [(t, v)])], each
    value holding from its t to the next (the last to t_max); markers [(t, label)] as
    dashed vertical lines, labelled along them."""
    left, right, height = 84, PLOT_WIDTH - 24, PANEL_HEIGHT - 64
    bottom = top + height
    y_ticks = _nice_ticks(y_max)
    y_hi = y_ticks[-1] or 1
    x_ticks = _nice_ticks(t_max, 8)
    x_hi = x_ticks[-1] or 1

    def x(t):
        return left + (right - left) * t / x_hi

    def y(v):
        return bottom - height * v / y_hi
    for v in y_ticks:
        body.append('<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#ddd"/>'
                    '<text x="%.1f" y="%.1f" text-anchor="end">%g</text>\n'
                    % (left, right, y(v), y(v), left - 6, y(v) + 4, v))
    for t in x_ticks:
        body.append('<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#999"/>'
                    '<text x="%.1f" y="%.1f" text-anchor="middle">%g</text>\n'
                    % (x(t), x(t), bottom, bottom + 5, x(t), bottom + 18, t))
    body.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#444"/>\n'
                % (left, top, right - left, height))
    body.append('<text x="16" y="%.1f" text-anchor="middle" transform="rotate(-90 16 %.1f)">'
                '%s</text>\n' % (top + height / 2, top + height / 2, _text(y_label)))
    if x_label:
        body.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>\n'
                    % ((left + right) / 2, bottom + 36, _text(x_label)))
    for t, label in markers:
        if not 0 <= t <= x_hi:
            continue
        body.append('<g class="marker"><title>%s (%.3f s)</title>'
                    '<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="%s" '
                    'stroke-dasharray="4 3"/><text x="%.1f" y="%d" font-size="10" fill="%s" '
                    'transform="rotate(-90 %.1f %d)">%s</text></g>\n'
                    % (_text(label), t, x(t), x(t), top, bottom, MARKER_COLOR, x(t) - 3,
                       top + 4, MARKER_COLOR, x(t) - 3, top + 4, _text(label[:40])))
    for i, (label, points) in enumerate(series):
        color = SERIES_COLORS[(first_color + i) % len(SERIES_COLORS)]
        points = _thin(points, 0.0, x_hi, right - left)
        if not points:
            continue
        path = ['M%.1f %.1f' % (x(points[0][0]), y(points[0][1]))]
        path.extend('H%.1f V%.1f' % (x(t), y(v)) for t, v in points[1:])
        path.append('H%.1f' % x(t_max))
        body.append('<path d="%s" fill="none" stroke="%s" stroke-width="1.5">'
                    '<title>%s</title></path>\n' % (' '.join(path), color, _text(label)))
        body.append('<rect x="%d" y="%d" width="12" height="3" fill="%s"/>'
                    '<text x="%d" y="%d">%s</text>\n'
                    % (left + 10, top + 12 + 15 * i, color, left + 28, top + 16 + 15 * i,
                       _text(label)))


def plot(title, t_max, total, sites, markers=()):
    """The time plot as SVG text. total: [(t, live bytes)]; sites: [(label, [(t, bytes)],
    [(t, fraction of the total)])]. With sites, a second panel shows their fractions.
    markers: [(t, label)] the program set (heapprof.mark), drawn across every panel."""
    peak = max([v for _, v in total] + [v for _, pts, _ in sites for _, v in pts] + [0])
    scale, unit = next(u for u in ((1 << 30, 'GiB'), (1 << 20, 'MiB'), (1 << 10, 'KiB'),
                                   (1, 'B')) if peak >= u[0] or u[0] == 1)
    body = ['<text x="84" y="20" font-size="13">%s</text>\n' % _text(title)]
    series = [('total', total)] + [(label, pts) for label, pts, _ in sites]
    series = [(label, [(t, v / scale) for t, v in pts]) for label, pts in series]
    _panel(body, 32, series, peak / scale, 'estimated live heap (%s)' % unit, t_max,
           None if sites else 'seconds from the session start', markers=markers)
    height = 32 + PANEL_HEIGHT
    if sites:
        _panel(body, height, [(label, fr) for label, _, fr in sites], 1.0,
               'fraction of the live heap', t_max, 'seconds from the session start',
               first_color=1, markers=markers)
        height += PANEL_HEIGHT
    return _document(PLOT_WIDTH, height, body, title)


# ------------------------------------------------------------------ flame graph
def _flame_color(name):
    """A warm color fixed by the frame's name, so a frame keeps it from graph to graph."""
    h = int.from_bytes(hashlib.blake2s(name.encode('utf-8', 'replace'), digest_size=4)
                       .digest(), 'little')
    return 'hsl(%d,%d%%,%d%%)' % (h % 50 + 5, 65 + (h >> 8) % 25, 55 + (h >> 16) % 12)


def flame(title, stacks):
    """A flame graph as SVG text: the root at the bottom, each box as wide as the bytes
    allocated while its frame was on the stack, callees above their caller, siblings in
    name order. stacks: [(frames, bytes)], frames outermost first as (name, where)
    pairs (where: 'file:line', or '' for a pseudo-frame)."""
    root = [0, {}]                          # [bytes, {(name, where): child}]
    depth = 0
    for frames, b in stacks:
        if b <= 0:
            continue
        node = root
        node[0] += b
        for key in frames:
            node = node[1].setdefault(key, [0, {}])
            node[0] += b
        depth = max(depth, len(frames))
    total = root[0]
    top = 44
    height = top + (depth + 1) * FLAME_ROW + 24
    body = ['<text x="10" y="20" font-size="13">%s</text>\n'
            '<text x="10" y="36" fill="#555">width: estimated live bytes; hover a box for '
            'its frame and bytes</text>\n' % _text(title)]
    scale = (FLAME_WIDTH - 20) / total if total else 0.0

    def box(name, where, b, x, level):
        w = b * scale
        y = top + (depth - level) * FLAME_ROW
        tip = '%s%s\n%s, %s of the total' % (name, ' (%s)' % where if where else '',
                                             _fmt.human_bytes(b), _fmt.percent(b, total)
                                             .strip())
        label = ''
        fits = int((w - 6) / CHAR_PX)
        if fits >= 3:
            label = name if len(name) <= fits else name[:fits - 2] + '..'
        body.append('<g><title>%s</title><rect x="%.2f" y="%d" width="%.2f" height="%d" '
                    'fill="%s" stroke="white" stroke-width="0.5"/>%s</g>\n'
                    % (_text(tip), x, y, w, FLAME_ROW - 1,
                       '#bbb' if level == 0 else _flame_color(name),
                       '<text x="%.2f" y="%d">%s</text>' % (x + 3, y + 12, _text(label))
                       if label else ''))

    box('all', '', total, 10.0, 0)
    # Iterative, outermost first: a deep recursion must not exhaust Python's stack.
    pending = [(root, 10.0, 0)]
    while pending:
        node, x, level = pending.pop()
        for (name, where), child in sorted(node[1].items()):
            if child[0] * scale >= MIN_BOX_PX:
                box(name, where, child[0], x, level + 1)
                pending.append((child, x, level + 1))
            x += child[0] * scale
    body.append('<text x="10" y="%d" fill="#555">total %s</text>\n'
                % (height - 8, _fmt.human_bytes(total)))
    return _document(FLAME_WIDTH, height, body, title)
