"""heapprof sessions — the table of sessions recorded in a database (or, with --json, the
same facts as JSON for scripts)."""
import json

from heapprof import _fmt
from heapprof import reader as _reader
from heapprof.cli import add_db_options, db_path


def register(subparsers):
    p = subparsers.add_parser('sessions', help='list the sessions recorded in a database',
                              description='List the sessions (profiled processes) in a database.')
    add_db_options(p, session=False)
    p.add_argument('--json', action='store_true',
                   help='print the sessions as a JSON array of objects (the columns of the '
                        'sessions and session_settings views, plus duration_s, '
                        'interval_changes and end_known) instead of a table')
    p.set_defaults(func=run)


def _interval(n, buckets=None):
    if n == 1:
        return 'every alloc'
    if n == 0:
        return 'by size: ' + ','.join('%s@%g' % (_fmt.human_bytes(m).replace(' ', ''), r)
                                      for m, r in (buckets or [])) if buckets else 'by size'
    return 'every ' + _fmt.human_bytes(n)


def _sampling(s):
    """The sampling column: the interval, or for a session whose agent adapted it (on-full
    adapt) where it started and where it ended: 'every alloc -> 4.0 KiB'."""
    text = _interval(s.sample_interval_bytes, s.sample_buckets)
    if s.interval_changes:
        text += ' -> ' + _fmt.human_bytes(s.final_interval_bytes)
    return text


def adapted_note(s):
    """One line saying that (and when) a session's sampling interval was changed, or None."""
    change = _fmt.interval_change(s)
    if change is None:
        return None
    return ('session %d: heapprofd could not keep up, so the agent %s its sampling interval '
            'from %s to %s (%s); estimates stay unbiased, with fewer samples after each change'
            % (s.session_id, change[0], _fmt.human_bytes(s.sample_interval_bytes),
               _fmt.human_bytes(s.final_interval_bytes), change[1]))


def as_json(rows):
    """The sessions as JSON text: one object per session, oldest first."""
    out = []
    for s in rows:
        d = {k: v for k, v in s._asdict().items() if k != 'last_ns'}
        d['interval_changes'] = [list(c) for c in s.interval_changes]
        d['duration_s'] = s.duration
        d['end_known'] = s.end_known
        out.append(d)
    return json.dumps(out, indent=1) + '\n'


def run(args):
    path = db_path(args)
    rows = _reader.sessions(path)
    if args.json:
        print(as_json(rows), end='')
        return 0
    if not rows:
        print('%s holds no sessions yet' % path)
        return 0
    table = []
    for s in rows:
        cmd = ' '.join(s.argv)
        if len(cmd) > 50:
            cmd = cmd[:47] + '...'
        table.append((s.session_id, s.pid, s.ppid, s.status, _fmt.wall_time(s.started_ns),
                      '%.2f s' % s.duration, _sampling(s),
                      _fmt.human_count(s.events_received), _fmt.human_count(s.events_dropped),
                      cmd))
    print('\n'.join(_fmt.table(
        ('session', 'pid', 'ppid', 'status', 'started', 'duration', 'sampling', 'events',
         'dropped', 'command'), table, align='rrrllrlrrl')))
    for s in rows:
        note = ['session %d: %s' % (s.session_id, s.status)]
        if s.error:
            note.append(s.error)
        if not s.end_known:
            note.append('%s; what was still allocated at its end is unknown'
                        % s.end_unknown_reason)
        if len(note) > 1:
            print(': '.join(note))
    for s in rows:
        note = adapted_note(s)
        if note:
            print(note)
    if any(s.events_dropped for s in rows):
        print('note: sessions with dropped events have incomplete figures, and a dropped '
              'free makes its allocation look never freed; record with `heapprof run '
              '--on-full adapt` (unbiased sampling) or `--on-full block` (everything), or '
              'a larger --interval, to avoid drops')
    return 0
