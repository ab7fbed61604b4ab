"""Hand-built heapprof databases for the tools tests: spike, leak and steady scenarios.

Written through the storage tables exactly as heapprofd writes them (schema/schema.sql via
heapprof._db.create_db), with a timeline computed the daemon's way (one row per interval in
which the level changed: the highest level within it, and the level at its end). Every
figure a test asserts can be derived from the Scenario's own list of allocations, which is
what `expected_*` do, independently of heapprof.reader.
"""
import collections
import json
import os
import sqlite3

from heapprof import _db

NS = 1_000_000_000
START_NS = 1_750_000_000 * NS
TIMELINE_STEP_NS = 100_000_000     # heapprofd's default --timeline-interval


class Scenario:
    """Frames, stacks and allocations of one session; times in seconds from its start."""

    def __init__(self, name, duration, session_id=1, pid=1000):
        self.name = name
        self.duration = duration
        self.session_id = session_id
        self.pid = pid
        self.frames = {}        # (function, filename, lineno) -> frame id
        self.stacks = {}        # tuple of frame ids (innermost first) -> stack id
        self.allocs = []        # (ts_s, size, est, stack_id or None, freed_s or None)
        self.start_ns = START_NS + (session_id - 1) * 3600 * NS

    def frame(self, function, filename, lineno):
        return self.frames.setdefault((function, filename, lineno), len(self.frames) + 1)

    def stack(self, *frames):
        """frames: (function, filename, lineno) tuples, innermost first."""
        ids = tuple(self.frame(*f) for f in frames)
        return self.stacks.setdefault(ids, len(self.stacks) + 1)

    def alloc(self, ts, size, est, stack, freed=None):
        self.allocs.append((ts, size, est, stack, freed))

    def ns(self, t):
        return self.start_ns + int(round(t * NS))

    # -------------------------------------------------------------- expectations
    def live_at(self, t):
        """{stack_id: est bytes} live at t (ts <= t < freed)."""
        out = collections.Counter()
        tn = self.ns(t)
        for ts, _, est, st, fr in self.allocs:
            if self.ns(ts) <= tn and (fr is None or self.ns(fr) > tn):
                out[st] += est
        return dict(out)

    def timeline_rows(self):
        """[(ts_ns, live_bytes, live_count, end_bytes)] as heapprofd's timeline writes them."""
        events = []
        for ts, _, est, _, fr in self.allocs:
            events.append((self.ns(ts), est, 1))
            if fr is not None:
                events.append((self.ns(fr), -est, -1))
        events.sort(key=lambda e: (e[0], e[1] > 0))
        rows, level, count = [], 0, 0
        by_step = collections.OrderedDict()
        for ns, d, c in events:
            by_step.setdefault((ns - self.start_ns) // TIMELINE_STEP_NS, []).append((d, c))
        for step, evs in by_step.items():
            best, best_count = level, count
            for d, c in evs:
                level += d
                count += c
                if level > best:
                    best, best_count = level, count
            rows.append([self.start_ns + step * TIMELINE_STEP_NS, best, best_count, level])
        # A drop at the end of an interval shows in the next one even if nothing happens there.
        out = []
        for i, r in enumerate(rows):
            out.append(tuple(r))
            nxt = rows[i + 1][0] if i + 1 < len(rows) else None
            step_next = r[0] + TIMELINE_STEP_NS
            if r[1] != r[3] and (nxt is None or nxt > step_next) and \
                    step_next <= self.ns(self.duration):
                out.append((step_next, r[3], 0, r[3]))
        return out

    # -------------------------------------------------------------- writing
    def write(self, con, status='exited'):
        """Writes this session into an open read-write connection (storage tables)."""
        cur = con.cursor()
        cur.execute('BEGIN')
        for (fn, filename, lineno), fid in self.frames.items():
            cur.execute('INSERT OR IGNORE INTO frame(id, function, filename, lineno)'
                        ' VALUES (?,?,?,?)', (fid + 1000 * (self.session_id - 1), fn, filename,
                                             lineno))
        for ids, sid in self.stacks.items():
            gid = sid + 1000 * (self.session_id - 1)
            cur.execute('INSERT INTO stack(id, hash, depth, truncated) VALUES (?,?,?,0)',
                        (gid, gid * 7919, len(ids)))
            cur.executemany('INSERT INTO stack_frame(stack_id, depth, frame_id) VALUES (?,?,?)',
                            [(gid, d, f + 1000 * (self.session_id - 1))
                             for d, f in enumerate(ids)])
        ended = self.ns(self.duration) if status != 'running' else None
        cur.execute('INSERT INTO session(id, pid, ppid, argv, executable, python_version,'
                    ' started_ns, ended_ns, sample_interval_bytes, max_stack_depth, status,'
                    ' events_received, events_dropped) VALUES (?,?,1,?,?,?,?,?,4096,64,?,?,0)',
                    (self.session_id, self.pid, json.dumps(['%s.py' % self.name, '--flag']),
                     '/usr/bin/python3', '3.11.7', self.start_ns, ended, status,
                     len(self.allocs) * 2))
        rows = []
        for i, (ts, size, est, st, fr) in enumerate(self.allocs):
            rows.append((self.session_id, self.ns(ts), 1, 1, 0x1000 + 16 * i, size, est,
                         None if st is None else st + 1000 * (self.session_id - 1),
                         None if fr is None else self.ns(fr)))
        cur.executemany('INSERT INTO alloc(session_id, ts_ns, thread_id, domain, address, size,'
                        ' est_bytes, stack_id, freed_ns) VALUES (?,?,?,?,?,?,?,?,?)', rows)
        cur.executemany('INSERT INTO timeline_point(session_id, ts_ns, live_bytes, live_count,'
                        ' end_bytes) VALUES (?,?,?,?,?)',
                        [(self.session_id,) + r for r in self.timeline_rows()])
        cur.execute('COMMIT')

    def db_stack_id(self, sid):
        return sid + 1000 * (self.session_id - 1)


def write_db(path, *scenarios):
    con = _db.create_db(path)
    try:
        for s in scenarios:
            s.write(con)
    finally:
        con.close()
    return path


# ------------------------------------------------------------------ the three scenarios
SPIKE_FILE = '/app/examples/spike.py'
LEAK_FILE = '/app/examples/leak.py'
STEADY_FILE = '/app/examples/steady.py'


def spike(session_id=1):
    """3 s: churn from work() all along; make_spike() allocates 10 MiB (100 x 100 KiB
    estimated) between 1.20 and 1.29 s and frees it all at 1.80 s. Peak: 1.29 s. A recursive
    walk() holds 8 KiB from 0.3 to 1.9 s; one allocation without a Python stack at 2.5 s."""
    s = Scenario('spike', 3.0, session_id=session_id)
    main = ('main', SPIKE_FILE, 40)
    work = s.stack(('churn', SPIKE_FILE, 12), main)
    spike_st = s.stack(('make_spike', SPIKE_FILE, 22), main)
    import_st = s.stack(('<module>', '/usr/lib/python3.11/json/decoder.py', 3),)
    s.alloc(0.0, 900, 4096, import_st)
    for k in range(300):
        t = k * 0.01
        s.alloc(t, 256, 4096, work, t + 0.05)
    for k in range(100):
        s.alloc(1.2 + k * 0.0009, 100 * 1024, 100 * 1024, spike_st, 1.8)
    s.alloc(2.5, 40, 4096, None, 2.6)
    # A recursive call: the same frame twice on one stack counts once in cumulative figures.
    rec = s.stack(('walk', SPIKE_FILE, 30), ('walk', SPIKE_FILE, 31), ('walk', SPIKE_FILE, 30),
                  main)
    s.alloc(0.3, 3000, 8192, rec, 1.9)
    s.marks = {'spike_stack': spike_st, 'work_stack': work, 'spike_line': 22,
               'peak_lo': 1.2 + 99 * 0.0009, 'peak_hi': 1.8}
    return s


def leak(session_id=1):
    """3 s: handle_request() leaks 64 KiB every 50 ms from line 17 (60 x 64 KiB never freed);
    scratch allocations are freed; a small import-time allocation is never freed either."""
    s = Scenario('leak', 3.0, session_id=session_id, pid=2000)
    req = ('handle_request', LEAK_FILE, 17)
    main = ('main', LEAK_FILE, 25)
    leak_st = s.stack(req, main)
    scratch = s.stack(('handle_request', LEAK_FILE, 16), main)
    import_st = s.stack(('<module>', LEAK_FILE, 9),)
    s.alloc(0.001, 512, 4096, import_st)
    for k in range(60):
        t = 0.01 + k * 0.05
        s.alloc(t, 64 * 1024, 64 * 1024, leak_st)
        s.alloc(t, 100, 8192, scratch, t + 0.02)
    s.marks = {'leak_stack': leak_st, 'leak_line': 17}
    return s


def steady(session_id=1):
    """3 s: a ring of 20 buffers (est 16 KiB each) replaced every 10 ms: level 320 KiB."""
    s = Scenario('steady', 3.0, session_id=session_id, pid=3000)
    st = s.stack(('serve', STEADY_FILE, 20), ('main', STEADY_FILE, 30))
    for k in range(290):
        t = k * 0.01
        s.alloc(t, 16 * 1024, 16 * 1024, st, t + 0.2 if t + 0.2 < 3.0 else None)
    s.marks = {'stack': st}
    return s


def source_env():
    return os.environ.get('HEAPPROF_SOURCE_ROOT', os.path.dirname(os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))))


def family_db(path):
    """A database like `heapprof run app.py` with multiprocessing writes: the program (spike,
    session 1, pid 1000) and two child processes that start later while it runs and so are
    newer sessions: session 2 (pid 2000, like the resource_tracker) and session 3 (pid 2001,
    a spawn worker), both with ppid 1000. The default session must be 1."""
    parent = spike(1)
    kids = [leak(2), steady(3)]
    for k, child in enumerate(kids):
        child.pid = 2000 + k
        child.start_ns = parent.start_ns + int((0.5 + k * 0.5) * NS)
    write_db(path, parent, *kids)
    con = sqlite3.connect(path)
    try:
        con.execute('UPDATE session SET ppid = 1000 WHERE id IN (2, 3)')
        con.commit()
    finally:
        con.close()
    return path
