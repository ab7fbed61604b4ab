"""heapprof._fmt — terminal formatting shared by the heapprof subcommands.

Human units, aligned tables and the one honest label every figure table carries: the bytes
and counts are estimates from sampled allocations, not exact measurements.
"""
import datetime
import os

ESTIMATE_NOTE = ('note: figures are estimates from sampled allocations '
                 '(each sample stands for its est_bytes); \u00b1 is the half width of '
                 'their 95% interval')


def drop_warning(meta, what):
    """Lines warning that a session lost events, or [] when it lost none. meta is a
    reader.Session; what names the figures most affected ('live' or 'never freed').

    A dropped allocation is missing from every figure, and a dropped free leaves its
    allocation looking live until the end: so live and never-freed figures can be too
    high as well as too low."""
    dropped = meta.events_dropped or 0
    if dropped <= 0:
        return []
    total = dropped + (meta.events_received or 0)
    return ['warning: %s of %s events (%s) were dropped because the program\'s send buffer '
            'was full: figures are incomplete, and "%s" may include allocations whose free '
            'was dropped' % (human_count(dropped), human_count(total),
                             percent(dropped, total).strip(), what),
            'warning: to record without drops, run again with `heapprof run --on-full adapt` '
            '(raises the interval instead: unbiased) or `--on-full block` (waits: keeps '
            'everything), or a larger --interval']


def end_unknown(meta):
    """"session 3 ended 'disconnected' (it stopped without its final flush)" for a session
    whose end was not recorded (reader.Session.end_known), else None."""
    why = meta.end_unknown_reason
    if why is None:
        return None
    return "session %d ended '%s' (%s)" % (meta.session_id, meta.status, why)


def wall_time(ns):
    """Local date and time of ns since the epoch; a stored value no calendar holds (e.g.
    a negative one) is shown as its number."""
    try:
        return datetime.datetime.fromtimestamp(ns / 1e9).strftime('%Y-%m-%d %H:%M:%S')
    except (ValueError, OverflowError, OSError):
        return '%d ns' % ns


def interval_change(meta):
    """(verb, when) of a session whose agent changed its sampling interval (on-full adapt):
    'raised' when it ended higher than it started, else 'changed', and '3 times, first at
    +0.12 s'; None when it never changed. meta is a reader.Session."""
    changes = meta.interval_changes
    if not changes:
        return None
    verb = 'raised' if meta.final_interval_bytes > meta.sample_interval_bytes else 'changed'
    return verb, '%d time%s, first at +%.2f s' % (
        len(changes), '' if len(changes) == 1 else 's',
        (changes[0][0] - meta.started_ns) / 1e9)


def sampling(meta):
    """How a session was sampled, for headers: 'every 4.0 KiB', and for a session whose
    agent adapted its interval (on-full adapt) where it ended and since when. meta is a
    reader.Session."""
    def one(n):
        if n == 1:
            return 'every allocation'
        return 'every %s' % human_bytes(n) if n else 'by size buckets'
    text = one(meta.sample_interval_bytes)
    changes = meta.interval_changes
    if changes:
        text += ', raised to %s by the end (%d change%s from +%.2f s)' % (
            one(meta.final_interval_bytes), len(changes), '' if len(changes) == 1 else 's',
            (changes[0][0] - meta.started_ns) / 1e9)
    return text


def human_bytes(n):
    """1536 -> '1.5 KiB'; negative values keep their sign."""
    if n is None:
        return '-'
    sign = '-' if n < 0 else ''
    n = abs(float(n))
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
        if n < 1024 or unit == 'TiB':
            return '%s%d %s' % (sign, n, unit) if unit == 'B' else '%s%.1f %s' % (sign, n, unit)
        n /= 1024
    return '%s%.1f PiB' % (sign, n)


def margin(se):
    """'\u00b11.2 MiB': the half width of the 95% interval of an estimate whose standard
    error is se (reader.Z95); '\u00b10 B' for a figure that sampling did not blur."""
    from heapprof.reader import Z95
    return '\u00b1%s' % human_bytes(Z95 * se)


_UNITS = {'': 1, 'b': 1, 'k': 1 << 10, 'kb': 1 << 10, 'kib': 1 << 10, 'm': 1 << 20,
          'mb': 1 << 20, 'mib': 1 << 20, 'g': 1 << 30, 'gb': 1 << 30, 'gib': 1 << 30,
          't': 1 << 40, 'tb': 1 << 40, 'tib': 1 << 40}


def parse_bytes(text):
    """Bytes of '24 MB', '1.5GiB', '4096' or '512k'; KB, MB, GB, TB are powers of 1024
    like KiB, MiB, GiB, TiB (as memory limits usually mean). ValueError saying what is
    accepted."""
    t = str(text).strip()
    i = len(t)
    while i and t[i - 1].isalpha():
        i -= 1
    number, unit = t[:i].strip(), t[i:].lower()
    try:
        value = float(number)
    except ValueError:
        value = None
    if value is None or unit not in _UNITS or not value >= 0 or value == float('inf'):
        raise ValueError('expected a size like 24MB, 1.5 GiB or 4096 (bytes), not %r' % text)
    return int(round(value * _UNITS[unit]))


def size_range(lo, hi):
    """A size class: '128 B - 255 B', or '1 B' when it holds one size."""
    if lo == hi:
        return human_bytes(lo)
    return '%s - %s' % (human_bytes(lo), human_bytes(hi))


def human_count(n):
    if n is None:
        return '-'
    n = float(n)
    for unit in ('', 'k', 'M', 'G'):
        if abs(n) < 1000 or unit == 'G':
            return ('%d' % n) if unit == '' else '%.1f%s' % (n, unit)
        n /= 1000
    return '%.1fT' % n


def human_seconds(t):
    return '%.3f s' % t


def percent(part, whole):
    return '%5.1f%%' % (100.0 * part / whole) if whole else '    -'


def site_name(filename, lineno, function, width=None):
    """'function (file:line)', shortened from the left of the path to fit width."""
    if not filename:
        text = function
    else:
        text = '%s (%s:%d)' % (function, short_path(filename), lineno)
    if width and len(text) > width:
        text = '...' + text[-(width - 3):]
    return text


def short_path(path):
    """A path relative to the working directory when it is under it, else as recorded."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if not rel.startswith('..') else path


def table(headers, rows, align=None):
    """Lines of an aligned table; align is a string of 'l'/'r' per column (default: first
    column left, the rest right)."""
    cols = len(headers)
    align = align or ('l' + 'r' * (cols - 1))
    cells = [list(map(str, headers))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(cols)]

    def fmt(r):
        parts = [r[i].ljust(widths[i]) if align[i] == 'l' else r[i].rjust(widths[i])
                 for i in range(cols)]
        return '  '.join(parts).rstrip()
    out = [fmt(cells[0]), '  '.join('-' * w for w in widths)]
    out.extend(fmt(r) for r in cells[1:])
    return out
