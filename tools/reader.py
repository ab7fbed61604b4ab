"""heapprof.reader — the Python API over a recorded heapprof database.

Last stage of the pipeline (agent -> proto -> daemon -> schema -> tools). Everything here is
SQL over the public views documented in schema/README.md (sessions, frames, stack_frames,
allocations, timeline, and the extensions session_settings and sampling_changes); the
storage tables are never named, so the daemon may change them.

Times given to and returned by a Reader are float seconds from the session's start, except
in the methods whose names end in _ns: those take and return integer nanoseconds since the
epoch, like the *_ns columns and Session fields, for callers that bin time exactly (the HTML
report), and do not refuse instants outside the session. Byte figures are estimates: each
sampled allocation carries est_bytes, the unbiased number of bytes it stands for, and sums of
est_bytes estimate the true totals. Each estimate comes with its standard error (the *_se
fields, and Estimate): see "Standard errors" in tools/README.md for the derivation.

    r = heapprof.read('prof.sqlite')          # newest root session (see default_session)
    t, peak_bytes = r.peak()
    for s in r.top_sites(t):
        print(s.filename, s.lineno, s.self_bytes)
"""
import bisect
import collections
import itertools
import json
import linecache
import sqlite3

from heapprof import _db

__all__ = ['read', 'sessions', 'default_session', 'end_unknown_reason', 'Reader', 'ReaderError',
           'NoSessionsError', 'Session', 'Frame', 'SiteStat', 'LeakSite', 'SizeBucket', 'Totals',
           'AllocSite', 'FlowGraph', 'NO_STACK_LABEL', 'StackTotal', 'Estimate', 'Marker',
           'Z95', 'variance_sql']

NS = 1_000_000_000
# Stack id NULL in the allocations view: no Python stack (e.g. raw domain without the GIL).
NO_STACK_LABEL = '[no Python stack]'
# Allocation domains (the allocations view's domain column), and the names
# Reader.restrict_domains() accepts for groups of them: 'python' is what the interpreter
# allocates through PEP 445, 'native' what C extensions and their libraries get from the
# malloc family and anonymous mmap.
DOMAINS = ('raw', 'mem', 'obj', 'native')
DOMAIN_GROUPS = {'python': ('raw', 'mem', 'obj')}
# Bound on ids in one IN (...) list: SQLite's default limit on host parameters is 32766.
_CHUNK = 900
# Past this share of a session's allocations, live-at-T queries read the allocations freed
# after T (through an index on freed_ns, when there is one) rather than those made before T:
# about where the two plans cost the same (bench/README.md, "Reader").
_FREED_SCAN_FROM = 0.75
# 'AS MATERIALIZED' appeared in SQLite 3.35; older libraries choose by themselves.
_MATERIALIZED = 'MATERIALIZED' if sqlite3.sqlite_version_info >= (3, 35) else ''
# Sums of est_bytes use TOTAL(), a float, and become Python ints: SUM() fails with "integer
# overflow" past this, and a stored est_bytes may be near it (schema/README.md).
_INT64_MAX = (1 << 63) - 1
# The normal quantile of a two-sided 95% interval: estimate +- Z95 * standard error.
Z95 = 1.959963984540054
# The variance a sampled allocation adds to a sum of est_bytes, estimated from that sample
# alone: e * (e - s) for est_bytes e and size s (tools/README.md, "Standard errors"). REAL,
# so that sums of squares of large estimates do not overflow. 0 when e <= s (recorded
# with probability 1).
_VAR = 'CAST(est_bytes AS REAL) * MAX(est_bytes - size, 0)'


def variance_sql():
    """The SQL expression, over the columns of the allocations view, of one sample's
    estimated variance contribution: sum it like est_bytes."""
    return _VAR


class Estimate(collections.namedtuple('Estimate', ['value', 'se'])):
    """An estimated figure (bytes or a count) and its standard error; margin is the half
    width of its 95% interval (normal approximation), low and high its ends (low may be
    below 0: a caller clips it for a figure that cannot be negative)."""
    __slots__ = ()

    @property
    def margin(self):
        return Z95 * self.se

    @property
    def low(self):
        return self.value - self.margin

    @property
    def high(self):
        return self.value + self.margin


Marker = collections.namedtuple('Marker', ['t', 'ts_ns', 'label'])
Marker.__doc__ = """A marker the program set with heapprof.mark(label): t seconds from the
session's start (ts_ns since the epoch)."""


class ReaderError(ValueError):
    """A request the database cannot answer; str() is one line meant for users."""


class NoSessionsError(ReaderError):
    """The database holds no session yet (heapprofd is waiting for its first program)."""


Session = collections.namedtuple('Session', [
    'session_id', 'pid', 'ppid', 'argv', 'executable', 'python_version', 'started_ns',
    'ended_ns', 'sample_interval_bytes', 'status', 'events_received', 'events_dropped',
    'last_ns', 'sample_buckets', 'max_stack_depth', 'error', 'interval_changes'])
Session.__doc__ = """One recorded process. argv is a list; ended_ns is None while running;
last_ns is the end, or for a running session the latest recorded event. sample_buckets is
[[max_size, rate], ...] when sample_interval_bytes is 0 (size-bucket sampling), else None;
error says why a 'protocol_error' session was closed. The last three come from the
session_settings view (or, in a database whose views predate it, from the end of the
sessions view), and are None when neither has them. interval_changes is a tuple of
(ts_ns, sample_interval_bytes), one per change of the sampling interval in the order they
happened (an agent recording with --on-full adapt raises it when heapprofd cannot keep
up; the sampling_changes view), empty when it never changed; sample_interval_bytes stays
the interval the session started with, final_interval_bytes is the one it ended with."""
Session.duration = property(lambda s: (s.last_ns - s.started_ns) / NS)
# What a session's status says about its end. 'exited' sent everything; 'running' is
# still recording (its figures hold "so far"). Any other status, including one this build
# does not know, ended before its final flush or stopped recording early: allocations freed
# after that look live, so what was still allocated at its end is unknown.
_END_UNKNOWN = {
    'disconnected': 'it stopped without its final flush',
    'protocol_error': 'heapprofd cut its stream off on bad data',
    'hooks_replaced': 'its allocator hooks were replaced, so recording ended early',
}


def end_unknown_reason(status):
    """Why what was still allocated at the end of a session with this status is unknown
    (one phrase, e.g. 'it stopped without its final flush'), or None when it is known."""
    if status in ('exited', 'running'):
        return None
    return _END_UNKNOWN.get(status, 'a status this heapprof does not know')


Session.end_unknown_reason = property(lambda s: end_unknown_reason(s.status))
Session.end_known = property(lambda s: end_unknown_reason(s.status) is None)
Session.final_interval_bytes = property(
    lambda s: s.interval_changes[-1][1] if s.interval_changes else s.sample_interval_bytes)

Frame = collections.namedtuple('Frame', ['frame_id', 'function', 'filename', 'lineno', 'line'])
Frame.__doc__ = 'One frame of a stack; line is the source text, or None when unreadable.'

SiteStat = collections.namedtuple('SiteStat', [
    'frame_id', 'function', 'filename', 'lineno', 'self_bytes', 'self_count', 'cum_bytes',
    'cum_count', 'samples', 'self_se', 'cum_se'], defaults=(0.0, 0.0))
SiteStat.__doc__ = """Live memory attributed to one code location (a frame) at one time.
self: allocations made at this line (innermost frame); cumulative: allocations made while this
line was on the stack. *_count are estimated allocation counts; samples is the number of
sampled allocations behind the self figures; *_se the standard errors of the byte figures.
frame_id is None for NO_STACK_LABEL."""

LeakSite = collections.namedtuple('LeakSite', [
    'frame_id', 'function', 'filename', 'lineno', 'bytes', 'count', 'samples', 'first_t',
    'last_t', 'se'], defaults=(0.0,))
LeakSite.__doc__ = """Allocations made at one site (innermost frame) and never freed:
estimated bytes and count, sampled allocations, first and last allocation time (s), and
the standard error of bytes."""

SizeBucket = collections.namedtuple('SizeBucket', ['lo', 'hi', 'samples', 'est_count',
                                                   'est_bytes'])
SizeBucket.__doc__ = 'Sampled allocations with lo <= size <= hi (requested bytes).'

Totals = collections.namedtuple('Totals', ['samples', 'allocated_bytes', 'unfreed_samples',
                                           'unfreed_bytes', 'allocated_se', 'unfreed_se'],
                                defaults=(0.0, 0.0))
Totals.__doc__ = """A session's sampled allocations: how many, the estimated bytes they stand
for, and of those the ones with no recorded free (still live at the end, when the session's
end is known: see Session.end_known); *_se are the standard errors of the byte figures."""

AllocSite = collections.namedtuple('AllocSite', ['frame_id', 'function', 'filename', 'lineno',
                                                 'allocated_bytes', 'unfreed_bytes',
                                                 'allocated_se', 'unfreed_se'],
                                   defaults=(0.0, 0.0))
AllocSite.__doc__ = """Estimated bytes allocated over the whole session at one site (innermost
frame), and of those the bytes with no recorded free; *_se their standard errors."""

FlowGraph = collections.namedtuple('FlowGraph', ['times', 'totals', 'nodes', 'edges'])
FlowGraph.__doc__ = """Live memory at several times as a caller->callee graph.
times: the times (s); totals: live bytes at each time; nodes: {frame_id: (Frame, [cum bytes
per time], [self bytes per time])}; edges: {(caller_id, callee_id): [bytes per time]}.
frame_id None is the pseudo-frame NO_STACK_LABEL."""

StackTotal = collections.namedtuple('StackTotal', [
    'stack_id', 'thread_id', 'domain', 'alloc_bytes', 'alloc_count', 'inuse_bytes',
    'inuse_count'])
StackTotal.__doc__ = """Estimates for one stack (and thread and domain, when asked for) over
a time range: alloc_* of the allocations made in the range, inuse_* of those live at its end.
*_bytes sum est_bytes (int); *_count sum est_bytes / size (float, not rounded). stack_id is
None for allocations without a Python stack; thread_id and domain are None unless grouped by.
See Reader.stack_totals."""


def _session_from_row(row, last_ns, changes=()):
    (session_id, pid, ppid, argv, exe, pyver, started, ended, interval, status, received,
     dropped) = row[:12]
    extra = dict(zip(_SESSION_EXTRA, row[12:]))
    try:
        argv = json.loads(argv)
        if not isinstance(argv, list):
            argv = [argv]
    except (TypeError, ValueError):
        argv = [argv]
    argv = [a if isinstance(a, str) else json.dumps(a) for a in argv]
    buckets = extra.get('sample_buckets')
    if buckets is not None:
        try:
            buckets = json.loads(buckets)
        except ValueError:
            buckets = None
        if not isinstance(buckets, list):
            buckets = None
    return Session(session_id, pid, ppid, argv, exe, pyver, started, ended, interval, status,
                   received, dropped, last_ns, buckets, extra.get('max_stack_depth'),
                   extra.get('error'), tuple(changes))


_SESSION_COLUMNS = ('session_id, pid, ppid, argv, executable, python_version, started_ns, '
                    'ended_ns, sample_interval_bytes, status, events_received, events_dropped')
# heapprof's extra session columns, from the session_settings view. Databases written by an
# earlier build of schema version 1 (until heapprofd opens them again) lack that view and
# have some of these at the end of the sessions view instead; a reader cannot add views.
_SESSION_EXTRA = ('sample_buckets', 'max_stack_depth', 'error')


def _session_columns(con):
    """The '... FROM ...' of a SELECT of session rows: the standard columns, then the
    extras (NULL where this database lacks one); callers append WHERE/ORDER BY on
    unqualified standard columns."""
    have_settings = con.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'view'"
                                " AND name = 'session_settings'").fetchone()[0] > 0
    if have_settings:
        return ('%s, %s FROM sessions LEFT JOIN session_settings USING (session_id)'
                % (_SESSION_COLUMNS, ', '.join(_SESSION_EXTRA)))
    have = {r[1] for r in con.execute('PRAGMA table_info(sessions)')}
    return '%s FROM sessions' % ', '.join(
        [_SESSION_COLUMNS] + [c if c in have else 'NULL AS ' + c for c in _SESSION_EXTRA])


def _has_view(con, name):
    return con.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'view' AND name = ?",
                       (name,)).fetchone()[0] > 0


def _interval_changes(con, session_id=None):
    """{session_id: [(ts_ns, sample_interval_bytes)]} in the order of the changes, for one
    session or all. A database written before heapprofd recorded changes has no
    sampling_changes view (schema/README.md, "Versions"), and no changes to tell."""
    if not _has_view(con, 'sampling_changes'):
        return {}
    sql = 'SELECT session_id, ts_ns, sample_interval_bytes FROM sampling_changes'
    args = ()
    if session_id is not None:
        sql += ' WHERE session_id = ?'
        args = (session_id,)
    out = collections.defaultdict(list)
    for session_id, ts, interval in con.execute(sql + ' ORDER BY session_id, change_no', args):
        out[session_id].append((ts, interval))
    return out


def _last_ns(con, session_id, started_ns, ended_ns):
    """The end of a session; while it runs, its latest recorded instant. Never before its
    start or its last allocation (a wall clock set back while the program ran can store an
    end before them)."""
    a = con.execute('SELECT MAX(ts_ns) FROM allocations WHERE session_id = ?',
                    (session_id,)).fetchone()[0]
    t = None
    if ended_ns is None:
        t = con.execute('SELECT MAX(ts_ns) FROM timeline WHERE session_id = ?',
                        (session_id,)).fetchone()[0]
    return max(x for x in (started_ns, ended_ns, a, t) if x is not None)


def _load_sessions(con):
    rows = con.execute('SELECT %s ORDER BY session_id' % _session_columns(con)).fetchall()
    changes = _interval_changes(con)
    return [_session_from_row(r, _last_ns(con, r[0], r[6], r[7]), changes.get(r[0], ()))
            for r in rows]


def _is_root(s, by_pid):
    """True when no other session is s's parent: one whose pid is s's ppid and which was
    running when s started (pids are reused, so a same-pid session at another time is not)."""
    for p in by_pid.get(s.ppid, ()):
        if p is s:
            continue
        end = p.ended_ns if p.ended_ns is not None else float('inf')
        if p.started_ns <= s.started_ns <= end:
            return False
    return True


def default_session(all_sessions):
    """The session shown when none is named: the newest ROOT session, i.e. the newest one
    started by a process that is not itself recorded in the database. `heapprof run app.py`
    with multiprocessing records app.py plus its children (resource_tracker, spawn workers),
    which start later; the newest session overall would be one of those helpers. None when
    there are no sessions; the newest session if (oddly) none is a root."""
    if not all_sessions:
        return None
    by_pid = collections.defaultdict(list)
    for s in all_sessions:
        by_pid[s.pid].append(s)
    roots = [s for s in all_sessions if _is_root(s, by_pid)] or list(all_sessions)
    return max(roots, key=lambda s: (s.started_ns, s.session_id))


def default_session_note(path, all_sessions, chosen):
    """The one line telling a user which of several sessions a command shows, or None when
    the database holds only one."""
    if len(all_sessions) < 2:
        return None
    return ('%s holds %d sessions; showing %d (pid %d, %s) (choose with --session)'
            % (path, len(all_sessions), chosen.session_id, chosen.pid,
               ' '.join(map(str, chosen.argv))[:60] or '?'))


def sessions(path):
    """All sessions recorded in the database at path, oldest first."""
    con = _db.open_db(path, readonly=True)
    try:
        return _load_sessions(con)
    finally:
        con.close()


def read(path, session=None):
    """A Reader over one session of the database at path (when session is None, the newest
    root session: see default_session)."""
    return Reader(path, session)


def _frame_label(fr):
    if fr is None:
        return NO_STACK_LABEL
    return '%s (%s:%d)' % (fr.function, fr.filename, fr.lineno)


class Reader:
    """Read-only view of one session. Cheap to create; holds one SQLite connection."""

    def __init__(self, path, session=None):
        self.path = path
        # Set when session is None and the database holds several: the line naming the
        # session chosen (see default_session_note).
        self.default_note = None
        # Opened without a writer, the connection sees no later writes: refresh() opens
        # it again once heapprofd has the file (see heapprof._db.open_db).
        self._sees_writes = _db.writer_present(path)
        self._con = _db.open_db(path, readonly=True)
        try:
            self._columns = _session_columns(self._con)
            self.metadata = self._pick_session(session)
        except BaseException:
            self._con.close()
            raise
        self.session_id = self.metadata.session_id
        self._stacks = {}     # stack_id -> tuple of frame ids, innermost first
        self._frames = {}     # frame_id -> Frame
        self._indexes = {}    # leading columns -> whether an index has them
        self._domain_sql = ''   # restrict_domains(): an AND clause over domain, and its
        self._domain_args = ()  # parameters
        self.domains = ()       # the domains counted, () for all
        self._bucket_ns = False  # aggregates' bucket width; None: none (see _agg_bucket)
        self._site_ns = False    # site aggregate's bucket width; None: none (_site_bucket)
        self._unfreed = None     # (domains, _unfreed_by_stack()) of an ended session
        self._peak_found = None  # _peak_search() of an ended session

    # ---------------------------------------------------------------- lifecycle
    def close(self):
        self._con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _pick_session(self, session):
        con = self._con
        if session is None:
            all_sessions = _load_sessions(con)
            chosen = default_session(all_sessions)
            if chosen is None:
                raise NoSessionsError('%s holds no recorded sessions yet' % self.path)
            # For callers that tell users which session they see (heapprof.cli).
            self.default_note = default_session_note(self.path, all_sessions, chosen)
            return chosen
        else:
            try:
                session = int(session)
            except (TypeError, ValueError):
                raise ReaderError('session must be a number, not %r' % (session,)) from None
            row = con.execute('SELECT %s WHERE session_id = ?' % self._columns,
                              (session,)).fetchone()
            if row is None:
                ids = [r[0] for r in con.execute('SELECT session_id FROM sessions'
                                                 ' ORDER BY session_id')]
                known = ', '.join(map(str, ids[:20])) + (', ...' if len(ids) > 20 else '')
                raise ReaderError('session %d is not in %s (sessions: %s)'
                                  % (session, self.path, known or 'none'))
        return _session_from_row(row, _last_ns(con, row[0], row[6], row[7]),
                                 _interval_changes(con, row[0]).get(row[0], ()))

    def refresh(self):
        """Re-reads the session's metadata (status, end, counters) of a session still recording."""
        if not self._sees_writes and _db.writer_present(self.path):
            con = _db.open_db(self.path, readonly=True)
            self._con.close()
            self._con, self._sees_writes = con, True
        self.metadata = self._pick_session(self.session_id)
        return self.metadata

    # ---------------------------------------------------------------- time
    @property
    def duration(self):
        """Seconds from the start to the end (or, while recording, to the latest event)."""
        return self.metadata.duration

    def recorded_until(self):
        """Seconds from the start to the session's last recorded allocation or free (0.0
        without any). After it, a session whose end is unknown (Session.end_known) may
        have freed what still looks live."""
        _, last_alloc, last_free = self._event_bounds()
        last = max((x for x in (last_alloc, last_free) if x is not None),
                   default=self.metadata.started_ns)
        return max(0.0, self._t(last))

    def span_ns(self):
        """(first_ns, last_ns): the instants the session's records cover. From its start,
        or its first allocation when that is earlier, to the latest of its end, its last
        allocation and its last free; a running session with no allocation yet ends at its
        last timeline interval. Timeline intervals do not widen it otherwise: heapprofd
        aligns them to its own clock, so the first may start before the session."""
        meta = self.metadata
        first_alloc, last_alloc, last_free = self._event_bounds()
        first = min(x for x in (meta.started_ns, first_alloc) if x is not None)
        ends = [x for x in (meta.ended_ns, last_alloc, last_free) if x is not None]
        if ends:
            last = max(ends)
        else:
            last = self._con.execute('SELECT MAX(ts_ns) FROM timeline WHERE session_id = ?',
                                     (self.session_id,)).fetchone()[0] or first
        return first, max(last, first)

    def _event_bounds(self):
        """(first allocation, last allocation, last free) of the session in ns, each None
        when there is none."""
        # Three subqueries: each MIN or MAX alone is one index look-up, where one SELECT
        # of all three reads every row of the session.
        return self._con.execute(
            'SELECT (SELECT MIN(ts_ns) FROM allocations WHERE session_id = :s),'
            ' (SELECT MAX(ts_ns) FROM allocations WHERE session_id = :s),'
            ' (SELECT MAX(freed_ns) FROM allocations WHERE session_id = :s)',
            {'s': self.session_id}).fetchone()

    def _ns(self, t):
        """Absolute ns for t seconds from the start, refusing times outside the session."""
        try:
            t = float(t)
        except (TypeError, ValueError):
            raise ReaderError('time must be a number of seconds, not %r' % (t,)) from None
        # Half a microsecond of slack: times printed with 6 decimals must round-trip.
        if not (-5e-7 <= t <= self.duration + 5e-7) or t != t:
            raise ReaderError('time %g s is outside session %d, which runs from 0 to %.3f s'
                              % (t, self.session_id, self.duration))
        ns = self.metadata.started_ns + int(round(t * NS))
        return min(max(ns, self.metadata.started_ns), self.metadata.last_ns)

    def _t(self, ns):
        return (ns - self.metadata.started_ns) / NS

    def resolve_time(self, spec):
        """Seconds for a user's time: a number of seconds, 'peak' or 'end' (or 'start'), or
        'marker:LABEL', the first marker with that label (heapprof.mark)."""
        if isinstance(spec, str) and spec.strip().lower().startswith('marker:'):
            return self.marker_time(spec.strip()[len('marker:'):])
        if isinstance(spec, str):
            word = spec.strip().lower()
            if word == 'peak':
                return self.peak()[0]
            if word == 'end':
                return self.duration
            if word == 'start':
                return 0.0
            try:
                spec = float(word.rstrip('s'))
            except ValueError:
                raise ReaderError("time must be seconds from the start, 'peak' or 'end', not %r "
                                  "(or marker:LABEL)" % spec) from None
        self._ns(spec)
        return float(spec)

    # ---------------------------------------------------------------- markers
    def markers(self):
        """[Marker]: the markers the program set with heapprof.mark(label), in time order
        (the order they were set, for equal times). Empty for a database whose schema
        predates markers (version 1)."""
        if not _has_view(self._con, 'markers'):
            return []
        return [Marker(self._t(ts), ts, label) for ts, label in self._con.execute(
            'SELECT ts_ns, label FROM markers WHERE session_id = ? ORDER BY ts_ns',
            (self.session_id,))]

    def marker_time(self, label):
        """Seconds from the start to the first marker with this label (clamped into the
        session); ReaderError naming the labels there are when there is none."""
        found = self.markers()
        for m in found:
            if m.label == label:
                return min(max(m.t, 0.0), self.duration)
        names = []
        for m in found:
            if m.label not in names:
                names.append(m.label)
        known = ', '.join(repr(n) for n in names[:10]) + (', ...' if len(names) > 10 else '')
        raise ReaderError('no marker %r in session %d (markers: %s)'
                          % (label, self.session_id, known or 'none'))

    # ---------------------------------------------------------------- sampling
    def sampling_changes(self):
        """[(t, sample_interval_bytes)]: each change of the session's sampling interval, in
        the order they happened, t in seconds from the start; the interval holds from t on.
        Empty when the interval never changed. It starts as metadata.sample_interval_bytes.
        An agent recording with --on-full adapt doubles its interval when heapprofd cannot
        keep up; every sample's est_bytes is right for the interval it was taken at, so the
        estimates stay unbiased, only rougher after a change (fewer samples)."""
        return [(self._t(ts), interval)
                for ts, interval in _interval_changes(self._con, self.session_id)
                .get(self.session_id, ())]

    def interval_at(self, t):
        """The mean sampling interval in bytes in force at t seconds from the start (0 for
        size-bucket sampling)."""
        self._ns(t)
        interval = self.metadata.sample_interval_bytes
        for ct, ci in self.sampling_changes():
            if ct > t:
                break
            interval = ci
        return interval

    # ---------------------------------------------------------------- timeline and peak
    def timeline(self):
        """[(t, live_bytes)]: the estimated live heap per timeline interval (the highest level
        reached within the interval that starts at t)."""
        rows = self._con.execute('SELECT ts_ns, live_bytes FROM timeline WHERE session_id = ?'
                                 ' ORDER BY ts_ns', (self.session_id,)).fetchall()
        return [(self._t_clamped(ts), b) for ts, b in rows]

    def _t_clamped(self, ns):
        # heapprofd aligns intervals to multiples of its interval, so the first one may start
        # before the session did; the series starts at 0.
        return max(0.0, self._t(ns))

    def timeline_ns(self, start_ns, end_ns, points):
        """The recorded timeline over [start_ns, end_ns] as [(ts_ns, live_bytes)] in time
        order, one point per bucket: `points` equal buckets, plus one at end_ns for the
        intervals that start at or after it. A point is the highest level of the bucket's
        intervals, at that interval's start clamped into the range. When the last point is
        before end_ns, one more gives the level at end_ns (the last interval's closing
        level), so that a plot runs to the end. Empty when heapprofd wrote no timeline."""
        span = max(end_ns - start_ns, 1)
        # A bare column beside one MAX() aggregate takes its value from the row with the
        # maximum (SQLite's documented rule): the start of the highest interval.
        rows = self._con.execute(
            'SELECT (MIN(MAX(ts_ns, :t0), :t1) - :t0) * :n / :span AS b,'
            ' MIN(MAX(ts_ns, :t0), :t1), MAX(live_bytes)'
            ' FROM timeline WHERE session_id = :session GROUP BY b ORDER BY b',
            {'t0': start_ns, 't1': end_ns, 'n': points, 'span': span,
             'session': self.session_id}).fetchall()
        out = [(ts, b) for _, ts, b in rows]
        if out and out[-1][0] < end_ns:
            end_bytes = self._timeline_end_bytes()
            out.append((end_ns, out[-1][1] if end_bytes is None else end_bytes))
        return out

    def _timeline_end_bytes(self):
        """The level at the end of the last timeline interval, from timeline_detail; None
        when the database has neither that view nor the column at the end of timeline
        (both are extensions of the public timeline, schema/README.md)."""
        view = 'timeline_detail' if _has_view(self._con, 'timeline_detail') else 'timeline'
        try:
            row = self._con.execute('SELECT end_bytes FROM %s WHERE session_id = ?'
                                    ' ORDER BY ts_ns DESC LIMIT 1' % view,
                                    (self.session_id,)).fetchone()
        except sqlite3.OperationalError:
            return None
        return None if row is None else row[0]

    def peak(self):
        """(t, live_bytes) of the highest estimated live heap: the level of the timeline's
        highest interval, at the instant within it where the sampled allocations and frees
        of that interval reach their highest running level. (0.0, 0) without a timeline."""
        found = self._peak_search()
        if found is None:
            return 0.0, 0
        _, timeline_bytes, instant_ns, _ = found
        instant_ns = min(max(instant_ns, self.metadata.started_ns), self.metadata.last_ns)
        return self._t(instant_ns), timeline_bytes

    def peak_ns(self):
        """(ts_ns, live_bytes): the peak instant as peak() finds it, not clamped into the
        session (a timeline interval may start before the session did), and the level
        there: the timeline's, or the level the sampled allocations and frees reach when
        that is higher (a timeline that missed some of them). None without a timeline."""
        found = self._peak_search()
        if found is None:
            return None
        interval_ns, timeline_bytes, instant_ns, rise = found
        # Live just before the interval: allocated before it and not freed before it.
        before = self._live_bytes_ns(interval_ns - 1)
        return instant_ns, max(timeline_bytes, before + rise)

    def _peak_search(self):
        """(interval_ns, timeline_bytes, instant_ns, rise) for the timeline interval with the
        highest level (the earliest of equals): where it starts, its level, the instant in
        it where the running level of its sampled allocations and frees is highest, and how
        far that is above the level at its start (0: never above; the instant is then its
        start). None without a timeline."""
        # An ended session's peak cannot move: found once (the report asks twice).
        if self._peak_found is not None:
            return self._peak_found
        found = self._peak_search_read()
        if self.metadata.ended_ns is not None:
            self._peak_found = found
        return found

    def _peak_search_read(self):
        con, session = self._con, self.session_id
        row = con.execute('SELECT ts_ns, live_bytes FROM timeline WHERE session_id = ?'
                          ' ORDER BY live_bytes DESC, ts_ns LIMIT 1', (session,)).fetchone()
        if row is None:
            return None
        a, timeline_bytes = row
        nxt = con.execute('SELECT MIN(ts_ns) FROM timeline WHERE session_id = ? AND ts_ns > ?',
                          (session, a)).fetchone()[0]
        b = nxt if nxt is not None else self.metadata.last_ns + 1
        events = [(ts, est) for ts, est in con.execute(
            'SELECT ts_ns, est_bytes FROM allocations WHERE session_id = ? AND ts_ns >= ?'
            ' AND ts_ns < ?', (session, a, b))]
        events += [(fr, -est) for fr, est in con.execute(
            'SELECT freed_ns, est_bytes FROM allocations WHERE session_id = ? AND freed_ns >= ?'
            ' AND freed_ns < ? AND ts_ns < ?', (session, a, b, b))]
        # Frees before allocations at the same instant: an allocation is live at [ts, freed).
        events.sort(key=lambda e: (e[0], e[1] > 0))
        best_ns, best, level = a, 0, 0
        for ts, d in events:
            level += d
            if level > best:
                best, best_ns = level, ts
        return a, timeline_bytes, best_ns, best

    def live_levels_ns(self):
        """[(ts_ns, live_bytes)] at every instant at which the session recorded a sampled
        allocation or free, in time order: the estimated live heap just after it. The exact
        step function that timeline() samples per interval; it reads every allocation, so
        prefer timeline() for long sessions."""
        con, session = self._con, self.session_id
        events = con.execute('SELECT ts_ns, est_bytes FROM allocations WHERE session_id = ?',
                             (session,)).fetchall()
        events += con.execute('SELECT freed_ns, -est_bytes FROM allocations WHERE session_id = ?'
                              ' AND freed_ns IS NOT NULL', (session,)).fetchall()
        events.sort()
        out, level, i, n = [], 0, 0, len(events)
        while i < n:
            ts = events[i][0]
            while i < n and events[i][0] == ts:
                level += events[i][1]
                i += 1
            out.append((ts, level))
        return out

    def restrict_domains(self, domains):
        """From now on the snapshots (snapshot_at, live_bytes_at, top_sites, flame,
        flame_stacks) and leaks() count only allocations of these domains: names of DOMAINS
        or DOMAIN_GROUPS; None or empty: all. The timeline, peak and totals stay the whole
        heap's, so that 'peak' names the same instant whatever the domain."""
        names = []
        for d in domains or ():
            d = d.strip().lower()
            group = DOMAIN_GROUPS.get(d, (d,))
            for g in group:
                if g not in DOMAINS:
                    raise ReaderError('unknown domain %r: expected one of %s' % (
                        d, ', '.join(DOMAINS + tuple(DOMAIN_GROUPS))))
                if g not in names:
                    names.append(g)
        if not names or len(names) == len(DOMAINS):
            self._domain_sql, self._domain_args = '', ()
            self.domains = ()
        else:
            self._domain_sql = ' AND domain IN (%s)' % ', '.join('?' * len(names))
            self._domain_args = tuple(names)
            self.domains = tuple(names)

    # ---------------------------------------------------------------- snapshots
    def _live_sql(self, cols, ns, since_ns=None):
        """(sql, params): a SELECT of cols over the allocations live at ns (and, with
        since_ns, made after since_ns).

        Live at ns means ts_ns <= ns < freed_ns (or never freed). Early in a session the
        (session_id, ts_ns) index reaches them in few rows; late in a long session that range
        covers nearly every row, while the allocations freed after ns are few: when an index
        on freed_ns exists (see bench/README.md, "Reader"), read them through it instead."""
        session = self.session_id
        dom, dargs = self._domain_sql, self._domain_args
        if since_ns is not None:
            return ('SELECT %s FROM allocations WHERE session_id = ? AND ts_ns > ?'
                    ' AND ts_ns <= ? AND (freed_ns IS NULL OR freed_ns > ?)%s' % (cols, dom),
                    (session, since_ns, ns, ns) + dargs)
        if self._has_freed_index() and self._fraction_before(ns) > _FREED_SCAN_FROM:
            return ('SELECT %s FROM allocations WHERE session_id = ? AND freed_ns > ?'
                    ' AND +ts_ns <= ?%s UNION ALL SELECT %s FROM allocations WHERE session_id = ?'
                    ' AND freed_ns IS NULL AND +ts_ns <= ?%s' % (cols, dom, cols, dom),
                    (session, ns, ns) + dargs + (session, ns) + dargs)
        return ('SELECT %s FROM allocations WHERE session_id = ? AND ts_ns <= ?'
                ' AND (freed_ns IS NULL OR freed_ns > ?)%s' % (cols, dom),
                (session, ns, ns) + dargs)

    def _has_index(self, columns):
        """Whether the database has an index starting with these columns (the optional read
        indexes of bench/README.md, "Reader"); the plans differ with and without."""
        if columns not in self._indexes:
            self._indexes[columns] = self._con.execute(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND sql LIKE ?",
                ('%%(%s%%' % columns,)).fetchone()[0] > 0
        return self._indexes[columns]

    def _has_freed_index(self):
        return self._has_index('session_id, freed_ns')

    def _fraction_before(self, ns):
        """Rough share of the session's allocations recorded up to ns, from alloc ids (which
        grow in arrival order); three index look-ups."""
        q = ('SELECT alloc_id FROM allocations WHERE session_id = ? AND ts_ns <= ?'
             ' ORDER BY ts_ns DESC LIMIT 1')
        session = self.session_id
        first = self._con.execute('SELECT alloc_id FROM allocations WHERE session_id = ?'
                                  ' ORDER BY ts_ns LIMIT 1', (session,)).fetchone()
        last = self._con.execute(q, (session, _INT64_MAX)).fetchone()
        at = self._con.execute(q, (session, ns)).fetchone()
        if first is None or at is None or last[0] <= first[0]:
            return 0.0
        return (at[0] - first[0]) / (last[0] - first[0])

    def _live_by_stack(self, ns, since_ns=None):
        """{stack_id: (est bytes, est count, samples, variance of est bytes)} live at the
        instant ns (and made after since_ns)."""
        if since_ns is None and self._can_use_aggregates():
            return self._live_by_stack_agg(ns)
        sql, params = self._live_sql(
            'stack_id, est_bytes, CAST(est_bytes AS REAL) / MAX(size, 1) AS n, %s AS v' % _VAR,
            ns, since_ns)
        # '+stack_id': grouping must not pick an index on stack_id, which would visit every
        # allocation of the session in stack order.
        rows = self._con.execute('SELECT stack_id, TOTAL(est_bytes), TOTAL(n), COUNT(*),'
                                 ' TOTAL(v) FROM (%s) GROUP BY +stack_id' % sql, params)
        return {sid: (int(b), c, n, v) for sid, b, c, n, v in rows}

    def snapshot_at(self, t):
        """{stack_id: estimated live bytes} at t seconds from the start. Key None collects the
        allocations recorded without a Python stack."""
        return self.snapshot_at_ns(self._ns(t))

    def snapshot_at_ns(self, ts_ns):
        """snapshot_at() at the instant ts_ns: {stack_id: estimated live bytes} of the
        allocations made at or before ts_ns and not freed by then."""
        return {sid: v[0] for sid, v in self._live_by_stack(ts_ns).items()}

    def live_bytes_at(self, t):
        """Estimated live bytes at t (the sum of snapshot_at(t))."""
        return self._live_bytes_ns(self._ns(t))

    def _live_bytes_ns(self, ns):
        return self._live_estimate_ns(ns).value

    def _live_estimate_ns(self, ns, since_ns=None):
        if since_ns is None and self._can_use_aggregates():
            live = self._live_by_stack_agg(ns).values()
            return Estimate(sum(v[0] for v in live), sum(v[3] for v in live) ** 0.5)
        sql, params = self._live_sql('est_bytes, size', ns, since_ns)
        b, v = self._con.execute('SELECT TOTAL(est_bytes), TOTAL(%s) FROM (%s)' % (_VAR, sql),
                                 params).fetchone()
        return Estimate(int(b), v ** 0.5)

    def live_at(self, t, since=None):
        """Estimate of the live bytes at t (seconds from the start), with its standard
        error; with since, of those allocated after since (seconds) and still live at t."""
        ns = self._ns(t)
        return self._live_estimate_ns(ns, self._since_ns(since, t, ns))

    def allocated_between(self, since, t):
        """Estimate of the bytes allocated after since and up to t (seconds from the start;
        since None: from the start), freed since or not, with its standard error."""
        ns = self._ns(t)
        since_ns = self._since_ns(since, t, ns)
        b, v = self._con.execute(
            'SELECT TOTAL(est_bytes), TOTAL(%s) FROM allocations WHERE session_id = ?'
            ' AND ts_ns > ? AND ts_ns <= ?' % _VAR,
            (self.session_id, -_INT64_MAX - 1 if since_ns is None else since_ns,
             ns)).fetchone()
        return Estimate(int(b), v ** 0.5)

    def _since_ns(self, since, t, ns):
        if since is None:
            return None
        since_ns = self._ns(since)
        if since_ns > ns:
            raise ReaderError('a range must start before it ends, not at %g s when it '
                              'ends at %g s' % (since, t))
        return since_ns

    # ---------------------------------------------------------------- aggregates
    # heapprofd keeps sums per stack and time bucket, and per size class, in the
    # transactions of the rows they sum (schema/README.md, "Aggregates"); a session that
    # has them is answered from them, others (older recordings) from the rows. Both give
    # the same figures: bytes and samples exactly, estimated counts up to the order of
    # float summation.
    def _agg_bucket(self):
        """The session's aggregate bucket width in ns, or None when it has none."""
        if self._bucket_ns is False:
            self._bucket_ns = None
            if _has_view(self._con, 'aggregated_sessions'):
                row = self._con.execute('SELECT bucket_ns FROM aggregated_sessions'
                                        ' WHERE session_id = ?', (self.session_id,)).fetchone()
                if row is not None and row[0] > 0:
                    self._bucket_ns = row[0]
        return self._bucket_ns

    def _can_use_aggregates(self):
        """Whether live-at-T answers come from the aggregates: they need the rows of one
        bucket, among them those freed in it, which only an index on freed_ns reaches
        without reading the session (heapprofd builds it when it stops). The aggregates
        are per stack, not per domain: a snapshot restricted to domains reads the rows."""
        return (self._agg_bucket() is not None and self._has_freed_index()
                and not self.domains)

    def _read_txn(self):
        """A context in which several SELECTs see one state of a database being recorded
        (heapprofd commits rows and their aggregates together)."""
        return _ReadTxn(self._con)

    def _live_by_stack_agg(self, ns):
        """_live_by_stack(ns) from the aggregates and the rows of the half bucket between ns
        and its nearer bucket edge. From the edge before ns: the buckets before it, plus
        the allocations made from the edge to ns and live at ns, minus the earlier ones
        freed from the edge to ns. From the edge after: the buckets up to it, minus the
        allocations made after ns and before it that are still live there, plus the ones
        made by ns and freed after ns and before it."""
        width, session = self._agg_bucket(), self.session_id
        edge = ns - ns % width
        rows = ('SELECT stack_id, TOTAL(est_bytes), TOTAL(CAST(est_bytes AS REAL) /'
                ' MAX(size, 1)), COUNT(*), TOTAL(%s) FROM allocations'
                ' WHERE session_id = ? AND ' % _VAR)
        if ns - edge <= width // 2:
            terms = ((1, rows + 'ts_ns >= ? AND ts_ns <= ? AND (freed_ns IS NULL OR'
                      ' freed_ns > ?) GROUP BY +stack_id', (session, edge, ns, ns)),
                     (-1, rows + 'freed_ns >= ? AND freed_ns <= ? AND +ts_ns < ?'
                      ' GROUP BY +stack_id', (session, edge, ns, edge)))
        else:
            edge += width
            terms = ((-1, rows + 'ts_ns > ? AND ts_ns < ? AND (freed_ns IS NULL OR'
                      ' freed_ns >= ?) GROUP BY +stack_id', (session, ns, edge, edge)),
                     (1, rows + 'freed_ns > ? AND freed_ns < ? AND +ts_ns <= ?'
                      ' GROUP BY +stack_id', (session, ns, edge, ns)))
        acc = {}
        with self._read_txn():
            for sid, b, c, k, v in self._con.execute(
                    'SELECT stack_id, TOTAL(alloc_bytes) - TOTAL(freed_bytes),'
                    ' TOTAL(alloc_count) - TOTAL(freed_count),'
                    ' TOTAL(alloc_samples) - TOTAL(freed_samples),'
                    ' TOTAL(alloc_var) - TOTAL(freed_var) FROM stack_buckets'
                    ' WHERE session_id = ? AND bucket_ns < ? GROUP BY stack_id',
                    (session, edge)):
                acc[sid] = [b, c, k, v]
            for sign, sql, args in terms:
                for sid, b, c, k, v in self._con.execute(sql, args):
                    e = acc.setdefault(sid, [0.0, 0.0, 0.0, 0.0])
                    e[0] += sign * b
                    e[1] += sign * c
                    e[2] += sign * k
                    e[3] += sign * v
        # Variances are float sums and differences: one can come out a hair below 0.
        return {sid: (int(b), c, int(k), max(v, 0.0)) for sid, (b, c, k, v) in acc.items()
                if k > 0}

    # ---------------------------------------------------------------- steps
    def stack_step_deltas_ns(self, start_ns, step_ns, steps):
        """Live bytes per stack at the instants start_ns + i * step_ns (i < steps), as
        changes: {stack_id: {i: bytes}}, where a stack's live bytes at step i are the sum
        of its changes at steps 0..i. An allocation counts from the first step at or after
        it (step 0 for one made before start_ns) to the first step at or after its free.
        Two grouped passes over the session, however many steps; stacks with no allocation
        before the last step are left out."""
        per_stack = {}
        # The range on ts_ns, which every row meets, makes SQLite read the session through
        # the (session_id, ts_ns) index, in the order the rows were written, rather than
        # through an index on stack_id or freed_ns, which visits the table in random order.
        q = ('SELECT stack_id, MAX(0, ({col} - :t0 + :dt - 1) / :dt) AS i, TOTAL(est_bytes)'
             ' FROM allocations WHERE session_id = :session AND ts_ns >= :oldest {extra}'
             ' GROUP BY stack_id, i')
        args = {'t0': start_ns, 'dt': step_ns, 'session': self.session_id,
                'oldest': -_INT64_MAX - 1}
        for stack_id, i, b in self._con.execute(q.format(col='ts_ns', extra=''), args):
            b, i = int(b), int(i)       # i is REAL when a stored time overflowed the SQL
            if i < steps:
                changes = per_stack.setdefault(stack_id, {})
                changes[i] = changes.get(i, 0) + b
        for stack_id, i, b in self._con.execute(
                q.format(col='freed_ns', extra='AND +freed_ns IS NOT NULL'), args):
            b, i = int(b), int(i)
            if i < steps and stack_id in per_stack:
                changes = per_stack[stack_id]
                changes[i] = changes.get(i, 0) - b
        return per_stack

    def bucket_steps_ns(self, first_ns, last_ns, points):
        """(start_ns, step_ns, steps) for stack_step_deltas_ns whose steps are all bucket
        ends of the aggregates, about `points` of them (fewer when the session has fewer
        buckets) from before first_ns to at or after last_ns, so that stack_step_deltas_agg_ns
        answers them; None when the session has no aggregates. Step 0 comes before
        first_ns (nothing of the session is live there) by less than a step."""
        width = self._agg_bucket()
        if width is None:
            return None
        step = max(1, -(-(last_ns - first_ns) // max(1, points - 1)))
        step = -(-step // width) * width
        start = first_ns - first_ns % width + width - step - 1
        return start, step, -(-(last_ns - start) // step) + 1

    def stack_step_deltas_agg_ns(self, start_ns, step_ns, steps):
        """stack_step_deltas_ns(start_ns, step_ns, steps) from the aggregates, for steps at
        bucket ends (start_ns + 1 and step_ns multiples of the bucket width, as
        bucket_steps_ns gives): every allocation and free of a bucket then counts from the
        same step, the first at or after the bucket's last instant. None when the session
        has no aggregates or the steps are not bucket ends."""
        width = self._agg_bucket()
        if width is None or (start_ns + 1) % width or step_ns % width:
            return None
        per_stack, frees = {}, []
        for sid, b, ab, an, fb, fn in self._con.execute(
                'SELECT stack_id, bucket_ns, alloc_bytes, alloc_samples, freed_bytes,'
                ' freed_samples FROM stack_buckets WHERE session_id = ?', (self.session_id,)):
            i = max(0, -(-(b + width - 1 - start_ns) // step_ns))
            if i >= steps:
                continue
            if an:
                changes = per_stack.setdefault(sid, {})
                changes[i] = changes.get(i, 0) + int(ab)
            if fn:
                frees.append((sid, i, int(fb)))
        for sid, i, fb in frees:
            if sid in per_stack:
                changes = per_stack[sid]
                changes[i] = changes.get(i, 0) - fb
        return per_stack

    # ---------------------------------------------------------------- stacks and frames
    def _load_stacks(self, stack_ids):
        need = [s for s in stack_ids if s is not None and s not in self._stacks]
        found = collections.defaultdict(list)
        for i in range(0, len(need), _CHUNK):
            part = need[i:i + _CHUNK]
            q = ('SELECT stack_id, depth, frame_id FROM stack_frames WHERE stack_id IN (%s)'
                 % ','.join('?' * len(part)))
            for sid, depth, fid in self._con.execute(q, part):
                found[sid].append((depth, fid))
        for sid in need:
            self._stacks[sid] = tuple(f for _, f in sorted(found.get(sid, ())))
        self._load_frames({f for s in need for f in self._stacks[s]})

    def _load_frames(self, frame_ids):
        need = [f for f in frame_ids if f not in self._frames]
        for i in range(0, len(need), _CHUNK):
            part = need[i:i + _CHUNK]
            q = ('SELECT frame_id, function, filename, lineno FROM frames WHERE frame_id IN (%s)'
                 % ','.join('?' * len(part)))
            for fid, fn, filename, lineno in self._con.execute(q, part):
                self._frames[fid] = Frame(fid, fn, filename, lineno, None)
        for f in need:
            if f not in self._frames:   # a stack naming an unknown frame: show it, not crash
                self._frames[f] = Frame(f, '<frame %d>' % f, '<unknown>', 0, None)

    def _site_frame(self, frame_id):
        """The Frame of a loaded frame id; None is the pseudo-frame NO_STACK_LABEL."""
        fr = self._frames.get(frame_id) if frame_id is not None else None
        return fr if fr is not None else Frame(None, NO_STACK_LABEL, '', 0, None)

    def _frames_of(self, stack_id):
        """Frames of a stack, innermost first (empty for None)."""
        if stack_id is None:
            return ()
        if stack_id not in self._stacks:
            self._load_stacks([stack_id])
        return tuple(self._frames[f] for f in self._stacks[stack_id])

    def frames_of_stacks(self, stack_ids):
        """{stack_id: tuple of Frame, innermost (the allocating line) first} for many stacks
        at once (line is None: no source is read). None maps to an empty tuple."""
        ids = list(stack_ids)
        self._load_stacks(ids)
        return {sid: self._frames_of(sid) for sid in ids}

    def trace(self, stack_id):
        """The frames of one stack, innermost (the allocating line) first, each with its source
        line when the file is readable here."""
        if stack_id is None:
            return []
        exists = self._con.execute('SELECT 1 FROM stack_frames WHERE stack_id = ? LIMIT 1',
                                   (stack_id,)).fetchone()
        if exists is None:
            raise ReaderError('stack %r is not in %s' % (stack_id, self.path))
        out = []
        for fr in self._frames_of(stack_id):
            text = linecache.getline(fr.filename, fr.lineno).strip() if fr.lineno > 0 else ''
            out.append(fr._replace(line=text or None))
        return out

    # ---------------------------------------------------------------- sites
    def top_sites(self, t, n=20, by='self', since=None):
        """Sites (frames) holding the most live memory at t, by 'self' or 'cumulative' bytes.
        With since (seconds, before t): only what was allocated after since and is still
        live at t (what a phase between two markers left behind)."""
        if by not in ('self', 'cumulative'):
            raise ReaderError("order must be 'self' or 'cumulative', not %r" % (by,))
        ns = self._ns(t)
        live = self._live_by_stack(ns, self._since_ns(since, t, ns))
        self._load_stacks(list(live))
        acc = {}   # frame_id -> [self_b, self_c, cum_b, cum_c, samples, self_var, cum_var]
        for sid, (b, c, k, v) in live.items():
            frames = self._stacks.get(sid, ()) if sid is not None else ()
            leaf = frames[0] if frames else None
            e = acc.setdefault(leaf, [0, 0.0, 0, 0.0, 0, 0.0, 0.0])
            e[0] += b
            e[1] += c
            e[4] += k
            e[5] += v
            for fid in set(frames) or (None,):
                e = acc.setdefault(fid, [0, 0.0, 0, 0.0, 0, 0.0, 0.0])
                e[2] += b
                e[3] += c
                e[6] += v
        out = []
        for fid, (sb, sc, cb, cc, k, sv, cv) in acc.items():
            fr = self._site_frame(fid)
            out.append(SiteStat(fid, fr.function, fr.filename, fr.lineno, sb, round(sc), cb,
                                round(cc), k, sv ** 0.5, cv ** 0.5))
        key = (lambda s: (-s.self_bytes, -s.cum_bytes)) if by == 'self' else \
              (lambda s: (-s.cum_bytes, -s.self_bytes))
        out.sort(key=lambda s: key(s) + (s.filename, s.lineno, s.function))
        if by == 'self':
            out = [s for s in out if s.self_bytes > 0]
        return out if n is None else out[:n]

    def leaks(self, n=None):
        """Sites whose sampled allocations were never freed (still live at the end of the
        recording), largest first."""
        rows = self._unfreed_by_stack()
        self._load_stacks([r[0] for r in rows])
        acc = {}
        for sid, b, c, k, lo, hi, v in rows:
            frames = self._stacks.get(sid, ()) if sid is not None else ()
            leaf = frames[0] if frames else None
            e = acc.setdefault(leaf, [0, 0.0, 0, lo, hi, 0.0])
            e[0] += b
            e[1] += c
            e[2] += k
            e[3] = min(e[3], lo)
            e[4] = max(e[4], hi)
            e[5] += v
        out = []
        for fid, (b, c, k, lo, hi, v) in acc.items():
            fr = self._site_frame(fid)
            out.append(LeakSite(fid, fr.function, fr.filename, fr.lineno, int(b), round(c), k,
                                self._t(lo), self._t(hi), v ** 0.5))
        out.sort(key=lambda s: (-s.bytes, s.filename, s.lineno, s.function))
        return out if n is None else out[:n]

    def unfreed_stacks(self):
        """[(stack_id, est_bytes, samples)]: per stack, the sampled allocations with no
        recorded free (never freed, when the session's end is known: Session.end_known),
        in stack id order with None (no Python stack) first."""
        rows = [(sid, int(b), k) for sid, b, _, k, _, _, _ in self._unfreed_by_stack()]
        return sorted(rows, key=lambda r: (r[0] is not None, r[0] or 0))

    def _unfreed_by_stack(self):
        """[(stack_id, est bytes (float), est count, samples, first ts_ns, last ts_ns,
        variance of est bytes)] of the allocations with no recorded free, per stack. With
        the aggregates, the sums come from them (what was allocated minus what was freed),
        and only the first and last times from the rows, through the index on freed_ns."""
        # Kept for the next call (the report asks twice) while nothing can change them:
        # the session's end is stored and the domains are the same.
        key = (self._domain_sql, self._domain_args)
        if self._unfreed is not None and self._unfreed[0] == key:
            return self._unfreed[1]
        rows = self._unfreed_by_stack_read()
        if self.metadata.ended_ns is not None:
            self._unfreed = (key, rows)
        return rows

    def _unfreed_by_stack_read(self):
        if self._can_use_aggregates():
            with self._read_txn():
                sums = {sid: (b, c, k, max(v, 0.0)) for sid, b, c, k, v in self._con.execute(
                    'SELECT stack_id, TOTAL(alloc_bytes) - TOTAL(freed_bytes),'
                    ' TOTAL(alloc_count) - TOTAL(freed_count),'
                    ' TOTAL(alloc_samples) - TOTAL(freed_samples),'
                    ' TOTAL(alloc_var) - TOTAL(freed_var) FROM stack_buckets'
                    ' WHERE session_id = ? GROUP BY stack_id', (self.session_id,))}
                times = self._con.execute(
                    'SELECT stack_id, MIN(ts_ns), MAX(ts_ns) FROM allocations'
                    ' WHERE session_id = ? AND freed_ns IS NULL GROUP BY +stack_id',
                    (self.session_id,)).fetchall()
            return [(sid, sums[sid][0], sums[sid][1], int(sums[sid][2]), lo, hi, sums[sid][3])
                    for sid, lo, hi in times]
        return self._con.execute(
            'SELECT stack_id, TOTAL(est_bytes), TOTAL(CAST(est_bytes AS REAL) / MAX(size, 1)),'
            ' COUNT(*), MIN(ts_ns), MAX(ts_ns), TOTAL(%s) FROM allocations WHERE session_id = ?'
            ' AND freed_ns IS NULL%s GROUP BY +stack_id' % (_VAR, self._domain_sql),
            (self.session_id,) + self._domain_args).fetchall()

    def allocation_count(self):
        """The number of sampled allocations the session recorded."""
        if self._agg_bucket() is not None:
            return int(self._con.execute('SELECT TOTAL(alloc_samples) FROM stack_buckets'
                                         ' WHERE session_id = ?', (self.session_id,)).fetchone()[0])
        return self._con.execute('SELECT COUNT(*) FROM allocations WHERE session_id = ?',
                                 (self.session_id,)).fetchone()[0]

    def totals(self):
        """Totals of the session's sampled allocations (see Totals)."""
        if self._agg_bucket() is not None:
            n, b, un, ub, v, uv = self._con.execute(
                'SELECT TOTAL(alloc_samples), TOTAL(alloc_bytes),'
                ' TOTAL(alloc_samples) - TOTAL(freed_samples),'
                ' TOTAL(alloc_bytes) - TOTAL(freed_bytes), TOTAL(alloc_var),'
                ' TOTAL(alloc_var) - TOTAL(freed_var) FROM stack_buckets'
                ' WHERE session_id = ?', (self.session_id,)).fetchone()
            n = int(n)
        else:
            n, b, un, ub, v, uv = self._con.execute(
                'SELECT COUNT(*), TOTAL(est_bytes), TOTAL(freed_ns IS NULL),'
                ' TOTAL(CASE WHEN freed_ns IS NULL THEN est_bytes END), TOTAL({v}),'
                ' TOTAL(CASE WHEN freed_ns IS NULL THEN {v} END) FROM allocations'
                ' WHERE session_id = ?'.format(v=_VAR), (self.session_id,)).fetchone()
        # A difference of float sums can come out a hair below 0.
        return Totals(n, int(b), int(un), int(ub), max(v, 0.0) ** 0.5, max(uv, 0.0) ** 0.5)

    def allocated_sites(self, n=None):
        """Sites (innermost frames) by the estimated bytes allocated there over the whole
        session, largest first, with the bytes of those that have no recorded free."""
        if self._agg_bucket() is not None:
            rows = self._con.execute(
                'SELECT stack_id, TOTAL(alloc_bytes), TOTAL(alloc_bytes) - TOTAL(freed_bytes),'
                ' TOTAL(alloc_var), MAX(TOTAL(alloc_var) - TOTAL(freed_var), 0)'
                ' FROM stack_buckets WHERE session_id = ? GROUP BY stack_id',
                (self.session_id,)).fetchall()
        else:
            rows = self._con.execute(
                'SELECT stack_id, TOTAL(est_bytes),'
                ' TOTAL(CASE WHEN freed_ns IS NULL THEN est_bytes END), TOTAL({v}),'
                ' TOTAL(CASE WHEN freed_ns IS NULL THEN {v} END) FROM allocations'
                ' WHERE session_id = ? GROUP BY +stack_id'.format(v=_VAR),
                (self.session_id,)).fetchall()
        self._load_stacks([r[0] for r in rows])
        acc = collections.defaultdict(lambda: [0, 0, 0.0, 0.0])
        for sid, b, unfreed, v, uv in rows:
            frames = self._stacks.get(sid, ()) if sid is not None else ()
            e = acc[frames[0] if frames else None]
            e[0] += int(b)
            e[1] += int(unfreed)
            e[2] += v
            e[3] += uv
        out = []
        for fid, (b, unfreed, v, uv) in acc.items():
            fr = self._site_frame(fid)
            out.append(AllocSite(fid, fr.function, fr.filename, fr.lineno, b, unfreed,
                                 v ** 0.5, uv ** 0.5))
        out.sort(key=lambda s: (-s.allocated_bytes, s.filename, s.lineno, s.function))
        return out if n is None else out[:n]

    def _match_sites(self, site):
        """Frame ids at a 'file:line' site; the file may be given by a path suffix."""
        if not isinstance(site, str) or ':' not in site:
            raise ReaderError("a site is written file:line (e.g. app.py:42), not %r" % (site,))
        filename, _, line = site.rpartition(':')
        try:
            lineno = int(line)
        except ValueError:
            raise ReaderError("a site is written file:line (e.g. app.py:42), not %r"
                              % (site,)) from None
        ids = [fid for fid, fn in self._con.execute(
            'SELECT frame_id, filename FROM frames WHERE lineno = ?', (lineno,))
            if fn == filename or fn.endswith('/' + filename)]
        if not ids:
            raise ReaderError('no recorded frame at %s in %s' % (site, self.path))
        return ids

    def site_series(self, sites):
        """{site: [(t, bytes)]} for each 'file:line' site: the estimated live bytes allocated
        while that line was on the stack (cumulative), at the timeline's times, as the
        highest level within each interval (the same meaning as timeline())."""
        times = [ts for ts, in self._con.execute(
            'SELECT ts_ns FROM timeline WHERE session_id = ? ORDER BY ts_ns',
            (self.session_id,))]
        out = {}
        for site in sites:
            fids = self._match_sites(site)
            series = self._site_series_agg(fids, times)
            if series is not None:
                out[site] = [(self._t_clamped(ts), b) for ts, b in series]
                continue
            stacks = set()
            for i in range(0, len(fids), _CHUNK):
                part = fids[i:i + _CHUNK]
                stacks.update(s for s, in self._con.execute(
                    'SELECT DISTINCT stack_id FROM stack_frames WHERE frame_id IN (%s)'
                    % ','.join('?' * len(part)), part))
            # Net level change per instant, summed and ordered by SQLite: far cheaper than
            # sorting allocations and frees in Python. The CTE is materialized so the site's
            # allocations are read once (through an index on stack_id when there is one) and
            # the frees are not looked up through an index on freed_ns over the whole session.
            stacks = sorted(stacks)
            # Without an index on stack_id, a plain scan of the table beats walking the
            # (session_id, ts_ns) index over the whole session ('+' hides that index).
            sid_col = 'session_id' if self._has_index('session_id, stack_id') else '+session_id'
            chunks = []
            for i in range(0, len(stacks), _CHUNK):
                part = stacks[i:i + _CHUNK]
                chunks.append(self._con.execute(
                    'WITH a AS %s (SELECT ts_ns, freed_ns, est_bytes FROM allocations'
                    ' WHERE %s = ? AND stack_id IN (%s)) SELECT t, TOTAL(d) FROM'
                    ' (SELECT ts_ns AS t, est_bytes AS d FROM a UNION ALL SELECT freed_ns,'
                    ' -est_bytes FROM a WHERE freed_ns IS NOT NULL) GROUP BY t ORDER BY t'
                    % (_MATERIALIZED, sid_col, ','.join('?' * len(part))),
                    [self.session_id] + part).fetchall())
            if len(chunks) == 1:
                events = [(ts, int(d)) for ts, d in chunks[0]]
            else:
                merged = collections.Counter()
                for rows in chunks:
                    for ts, d in rows:
                        merged[ts] += int(d)
                events = sorted(merged.items())
            out[site] = [(self._t_clamped(ts), b)
                         for ts, b in _max_per_interval(events, times)]
        return out

    def _site_bucket(self):
        """The width of the session's site buckets when its site aggregate is complete
        (heapprofd stored its end) and its buckets are whole timeline intervals; else
        None, and the series are read from the rows."""
        if self._site_ns is False:
            self._site_ns = None
            if _has_view(self._con, 'site_sessions'):
                row = self._con.execute('SELECT bucket_ns, done_ns FROM site_sessions'
                                        ' WHERE session_id = ?', (self.session_id,)).fetchone()
                if row is not None and row[0] > 0 and row[1] == _INT64_MAX:
                    off = self._con.execute(
                        'SELECT COUNT(*) FROM timeline WHERE session_id = ? AND ts_ns % ? <> 0',
                        (self.session_id, row[0])).fetchone()[0]
                    if off == 0:
                        self._site_ns = row[0]
        return self._site_ns

    def _site_series_agg(self, fids, times):
        """[(ts_ns, highest level)] at times from the site aggregate, or None when it
        cannot answer: the frames are not all on one line (a file given by a suffix that
        several files end with), or the session has no complete aggregate. A line's level
        before a bucket is the sum of the nets of the buckets before it; the highest within
        a run of buckets is the highest of level + high_bytes over its buckets, and the
        level at its start when no change comes at that instant (a bucket without a row,
        or whose high_bytes counts its start)."""
        if self._site_bucket() is None:
            return None
        keys = set()
        for i in range(0, len(fids), _CHUNK):
            part = fids[i:i + _CHUNK]
            keys.update(k for k, in self._con.execute(
                'SELECT (SELECT MIN(g.frame_id) FROM frames g WHERE g.filename = f.filename'
                ' AND g.lineno = f.lineno) FROM frames f WHERE f.frame_id IN (%s)'
                % ','.join('?' * len(part)), part))
        if len(keys) != 1:
            return None
        rows = self._con.execute(
            'SELECT bucket_ns, net_bytes, high_bytes FROM agg_site WHERE session_id = ?'
            ' AND frame_id = ? ORDER BY bucket_ns', (self.session_id, keys.pop())).fetchall()
        out, level, i, n = [], 0, 0, len(rows)
        for k, start in enumerate(times):
            while i < n and rows[i][0] < start:
                level += rows[i][1]
                i += 1
            best = None if i < n and rows[i][0] == start else level
            end = times[k + 1] if k + 1 < len(times) else None
            while i < n and (end is None or rows[i][0] < end):
                high = level + rows[i][2]
                best = high if best is None or high > best else best
                level += rows[i][1]
                i += 1
            out.append((start, level if best is None else best))
        return out

    # ---------------------------------------------------------------- histogram
    def size_histogram(self):
        """Sampled allocations by requested size, in power-of-two buckets: 0, 1, 2-3, 4-7,
        ..., [2**(k-1), 2**k - 1], the size classes of `heapprof stats PROGRAM` (the agent's
        hp_stats.h); empty buckets between the smallest and largest are kept."""
        if self._agg_bucket() is not None:
            rows = self._con.execute(
                'SELECT size_class, samples, est_count, est_bytes FROM size_classes'
                ' WHERE session_id = ? AND samples > 0 ORDER BY size_class',
                (self.session_id,)).fetchall()
        else:
            rows = self._con.execute(
                'SELECT %s AS b, COUNT(*), TOTAL(CAST(est_bytes AS REAL) / MAX(size, 1)),'
                ' TOTAL(est_bytes) FROM allocations WHERE +session_id = ? GROUP BY b'
                ' ORDER BY b' % _size_bucket_sql(0, 64), (self.session_id,)).fetchall()
        if not rows:
            return []
        got = {b: (n, c, e) for b, n, c, e in rows}
        out = []
        for k in range(rows[0][0], rows[-1][0] + 1):
            lo = 0 if k == 0 else 1 << (k - 1)
            hi = (1 << k) - 1
            n, c, e = got.get(k, (0, 0.0, 0))
            out.append(SizeBucket(lo, hi, n, round(c), int(e)))
        return out

    # ---------------------------------------------------------------- flame and flow
    def flame(self, t):
        """Folded stacks at t: {'outer;...;inner': estimated live bytes}; each frame is
        'function (file:line)'. The values sum to the snapshot's total."""
        live = self.snapshot_at(t)
        self._load_stacks(list(live))
        out = collections.Counter()
        for sid, b in live.items():
            frames = self._frames_of(sid)
            if frames:
                key = ';'.join(_frame_label(f).replace(';', ',') for f in reversed(frames))
            else:
                key = NO_STACK_LABEL
            out[key] += b
        return dict(out)

    def flame_stacks(self, t):
        """[(frames outermost first, bytes)] at t: flame data with Frame objects."""
        live = self.snapshot_at(t)
        self._load_stacks(list(live))
        return [(tuple(reversed(self._frames_of(sid))), b) for sid, b in
                sorted(live.items(), key=lambda kv: -kv[1])]

    def flow(self, times):
        """Caller->callee graph of live memory at each of times (seconds); see FlowGraph."""
        times = [float(t) for t in times]
        if not times:
            raise ReaderError('flow needs at least one time')
        nodes, edges, totals = {}, {}, []
        k = len(times)
        for i, t in enumerate(times):
            live = self.snapshot_at(t)
            self._load_stacks(list(live))
            totals.append(sum(live.values()))
            for sid, b in live.items():
                fids = self._stacks.get(sid, ()) if sid is not None else ()
                if not fids:
                    fids = (None,)
                for j, fid in enumerate(fids):
                    if fid not in nodes:
                        fr = self._site_frame(fid)
                        nodes[fid] = (fr, [0] * k, [0] * k)
                    if j == 0:
                        nodes[fid][2][i] += b
                for fid in set(fids):
                    nodes[fid][1][i] += b
                for pair in {(fids[j + 1], fids[j]) for j in range(len(fids) - 1)}:
                    edges.setdefault(pair, [0] * k)[i] += b
        return FlowGraph(times, totals, nodes, edges)

    # ---------------------------------------------------------------- per-stack totals
    _GROUP_COLUMNS = {'thread': 'thread_id', 'domain': 'domain'}

    def stack_totals(self, t, since=None, by=()):
        """[StackTotal]: per stack, the estimated bytes and allocations made in the range
        (since, t] and those live at t (seconds from the start; since None: from the very
        start, so that alloc_* cover the whole session up to t). by names what else to
        group by: 'thread' and/or 'domain'. The inuse_bytes sum to live_bytes_at(t), and
        with since None at the end of the session the alloc_bytes sum to every sampled
        allocation's est_bytes. Rows with nothing allocated in the range and nothing live
        at t are left out. This is what heapprof.pprof exports."""
        unknown = [b for b in by if b not in self._GROUP_COLUMNS]
        if unknown:
            raise ReaderError('cannot group by %r: choose from %s'
                              % (unknown[0], ', '.join(sorted(self._GROUP_COLUMNS))))
        ns = self._ns(t)
        cols = [self._GROUP_COLUMNS[b] if b in by else 'NULL'
                for b in ('thread', 'domain')]
        keys = 'stack_id, %s AS g1, %s AS g2' % tuple(cols)
        count = 'CAST(est_bytes AS REAL) / MAX(size, 1)'
        where = 'session_id = ? AND ts_ns <= ?'
        params = [self.session_id, ns]
        if since is not None:
            since_ns = self._ns(since)
            if since_ns > ns:
                raise ReaderError('a range must start before it ends, not at %g s when it '
                                  'ends at %g s' % (since, t))
            where += ' AND ts_ns > ?'
            params.append(since_ns)
        acc = {}
        # '+stack_id': see _live_by_stack.
        for sid, g1, g2, b, c in self._con.execute(
                'SELECT %s, TOTAL(est_bytes), TOTAL(%s) FROM allocations WHERE %s'
                ' GROUP BY +stack_id, g1, g2' % (keys, count, where), params):
            acc[(sid, g1, g2)] = [int(b), c, 0, 0.0]
        live_sql, live_params = self._live_sql('%s, est_bytes, %s AS n' % (keys, count), ns)
        for sid, g1, g2, b, c in self._con.execute(
                'SELECT stack_id, g1, g2, TOTAL(est_bytes), TOTAL(n) FROM (%s)'
                ' GROUP BY +stack_id, g1, g2' % live_sql, live_params):
            e = acc.setdefault((sid, g1, g2), [0, 0.0, 0, 0.0])
            e[2], e[3] = int(b), c
        return [StackTotal(sid, g1, g2, *v) for (sid, g1, g2), v in acc.items()
                if v[0] or v[2]]


class _ReadTxn:
    """BEGIN ... COMMIT around several SELECTs, unless a transaction is open already."""

    def __init__(self, con):
        self._con, self._own = con, False

    def __enter__(self):
        if not self._con.in_transaction:
            self._con.execute('BEGIN')
            self._own = True

    def __exit__(self, *exc):
        if self._own:
            self._con.execute('COMMIT')


def _max_per_interval(events, times):
    """[(t_k, highest level within [t_k, t_k+1))] for a step function given as (ns, net
    delta) events, one per instant, in time order; an event at ns applies from ns on.
    Levels come from itertools.accumulate and each interval's maximum from one slice, so
    the per-event work runs in C (a site can have a million events)."""
    if not events:
        return [(start, 0) for start in times]
    ts = [e[0] for e in events]
    levels = list(itertools.accumulate(e[1] for e in events))
    out = []
    for k, start in enumerate(times):
        lo = bisect.bisect_right(ts, start)          # events up to start are applied
        best = levels[lo - 1] if lo else 0
        hi = bisect.bisect_left(ts, times[k + 1]) if k + 1 < len(times) else len(ts)
        if hi > lo:
            best = max(best, max(levels[lo:hi]))
        out.append((start, best))
    return out


def _size_bucket_sql(lo, hi):
    """SQL for the bucket k in [lo, hi] with 2**(k-1) <= size < 2**k (the bit length of
    size; 0 for 0), as a binary search (six comparisons a row instead of up to 64)."""
    if lo == hi:
        return str(lo)
    mid = (lo + hi) // 2
    return 'CASE WHEN size < %d THEN %s ELSE %s END' % (
        1 << mid, _size_bucket_sql(lo, mid), _size_bucket_sql(mid + 1, hi))
