"""Reader benchmark: how long the analysis queries take on a large recorded session.

Builds (once, cached under bench/out/) a database with N sampled allocations written through
the storage tables the way heapprofd writes them, then times every Reader operation a user
waits for and prints a table. The issue's bar: a snapshot or a time series never takes more
than a second on a 10-million-allocation session.

    python bench/reader.py [--rows 10000000] [--repeat 3] [--rebuild] [--report]
    python bench/reader.py --db prof.sqlite [--session N] [--repeat 3]

Each operation is timed on three files: the rows only, with the read indexes heapprofd
builds at shutdown, and with those and the aggregates heapprofd keeps while recording.

Run it with the interpreter the heapprof package is installed into (the venv's python).
The synthetic workload: 60 s of allocations from 2,000 stacks over 400 frames, most freed
within ~50 ms, a slowly growing set kept for seconds, 1% never freed, and a spike at 30 s.
"""
import argparse
import heapq
import os
import random
import shutil
import sqlite3
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_ROOT = os.path.dirname(HERE)
NS = 1_000_000_000
START_NS = 1_700_000_000 * NS
DURATION_NS = 60 * NS
TIMELINE_STEP_NS = 100_000_000
# What the Reader would like schema.sql to add (see bench/README.md, "Reader").
PROPOSED_INDEXES = """
CREATE INDEX IF NOT EXISTS alloc_by_session_freed ON alloc (session_id, freed_ns);
CREATE INDEX IF NOT EXISTS alloc_by_session_stack ON alloc (session_id, stack_id);
"""


def _schema_sql():
    with open(os.path.join(SOURCE_ROOT, 'schema', 'schema.sql'), encoding='utf-8') as f:
        return f.read()


def build(path, rows, seed=1):
    """Writes a synthetic session of `rows` allocations to path (replacing it)."""
    for suffix in ('', '-wal', '-shm', '.tmp'):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    tmp = path + '.tmp'
    rng = random.Random(seed)
    db = sqlite3.connect(tmp)
    db.executescript(_schema_sql())
    db.execute('PRAGMA journal_mode=WAL')
    db.execute('PRAGMA synchronous=OFF')
    nframes, nstacks = 400, 2000
    db.executemany('INSERT INTO frame(id, function, filename, lineno) VALUES (?,?,?,?)',
                   [(i, 'func_%d' % i, '/app/mod_%d.py' % (i % 40), 10 + i)
                    for i in range(1, nframes + 1)])
    stack_rows, sf_rows = [], []
    for s in range(1, nstacks + 1):
        depth = rng.randint(3, 12)
        frames = [rng.randint(1, nframes) for _ in range(depth)]
        stack_rows.append((s, s * 2654435761 % (1 << 62), depth, 0))
        sf_rows.extend((s, d, f) for d, f in enumerate(frames))
    db.executemany('INSERT INTO stack(id, hash, depth, truncated) VALUES (?,?,?,?)', stack_rows)
    db.executemany('INSERT INTO stack_frame(stack_id, depth, frame_id) VALUES (?,?,?)', sf_rows)
    db.execute("INSERT INTO session(id, pid, ppid, argv, executable, python_version, started_ns,"
               " ended_ns, sample_interval_bytes, max_stack_depth, status, events_received,"
               " events_dropped) VALUES (1, 4242, 1, '[\"bench.py\"]', '/usr/bin/python3',"
               " '3.11.7', ?, ?, 4096, 64, 'exited', ?, 0)",
               (START_NS, START_NS + DURATION_NS, rows * 2))
    step = DURATION_NS / rows
    nsteps = DURATION_NS // TIMELINE_STEP_NS + 1
    delta = [0] * (nsteps + 1)      # level change per timeline step, for the timeline rows
    batch = []
    spike_lo, spike_hi = START_NS + 30 * NS, START_NS + 31 * NS
    for i in range(rows):
        ts = START_NS + int(i * step)
        size = int(rng.lognormvariate(5, 1.5)) + 1
        est = max(size, 4096)
        r = rng.random()
        if r < 0.01:
            freed = None
        elif r < 0.06:
            freed = ts + int(rng.expovariate(1 / (5 * NS)))
        else:
            freed = ts + int(rng.expovariate(1 / (50_000_000)))
        if spike_lo <= ts < spike_hi and r > 0.5:
            freed = spike_hi + int(rng.random() * 10_000_000)
            est *= 4
        if freed is not None and freed > START_NS + DURATION_NS:
            freed = None
        stack = rng.randint(1, nstacks)
        batch.append((i + 1, 1, ts, 1, 1, 0x10000 + i * 16, size, est, stack, freed))
        delta[(ts - START_NS) // TIMELINE_STEP_NS] += est
        if freed is not None:
            delta[(freed - START_NS) // TIMELINE_STEP_NS] -= est
        if len(batch) == 100_000:
            db.executemany('INSERT INTO alloc VALUES (?,?,?,?,?,?,?,?,?,?)', batch)
            batch.clear()
    db.executemany('INSERT INTO alloc VALUES (?,?,?,?,?,?,?,?,?,?)', batch)
    # Timeline rows: the level at the end of each step (the daemon stores the maximum within the
    # step; for this benchmark only the row count matters).
    level, tl = 0, []
    for k in range(nsteps):
        level += delta[k]
        tl.append((1, START_NS + k * TIMELINE_STEP_NS, level, 0, level))
    db.executemany('INSERT INTO timeline_point VALUES (?,?,?,?,?)', tl)
    db.commit()
    db.execute('PRAGMA wal_checkpoint(TRUNCATE)')
    db.close()
    os.replace(tmp, path)


def _size_class_sql():
    """The bit length of size (0 for 0): agg_size's size_class."""
    return 'CASE WHEN size <= 0 THEN 0 %s ELSE 63 END' % ' '.join(
        'WHEN size < %d THEN %d' % (1 << k, k) for k in range(1, 63))


def add_aggregates(path):
    """Adds the aggregates heapprofd keeps while recording (schema/README.md, "Aggregates")
    to the database at path, computed from its rows: what heapprofd would have written
    (tests/unit/check_store_agg.c and test_daemon_faults check that the two agree)."""
    db = sqlite3.connect(path)
    db.executescript("""
      INSERT INTO agg_session(session_id, bucket_ns) SELECT id, 1000000000 FROM session;
      INSERT INTO agg_stack SELECT s, b, k, SUM(ab), SUM(ac), SUM(an), SUM(fb), SUM(fc), SUM(fn),
             SUM(av), SUM(fv)
      FROM (SELECT session_id s, ts_ns - ts_ns %% 1000000000 b, coalesce(stack_id, 0) k,
                   TOTAL(est_bytes) ab, TOTAL(CAST(est_bytes AS REAL) / MAX(size, 1)) ac,
                   COUNT(*) an, 0 fb, 0 fc, 0 fn,
                   TOTAL(CAST(est_bytes AS REAL) * MAX(est_bytes - size, 0)) av, 0 fv
            FROM alloc GROUP BY 1, 2, 3
            UNION ALL
            SELECT session_id, freed_ns - freed_ns %% 1000000000, coalesce(stack_id, 0), 0, 0, 0,
                   TOTAL(est_bytes), TOTAL(CAST(est_bytes AS REAL) / MAX(size, 1)), COUNT(*), 0,
                   TOTAL(CAST(est_bytes AS REAL) * MAX(est_bytes - size, 0))
            FROM alloc WHERE freed_ns IS NOT NULL GROUP BY 1, 2, 3)
      GROUP BY 1, 2, 3;
      INSERT INTO agg_size SELECT session_id, %s, COUNT(*),
             TOTAL(CAST(est_bytes AS REAL) / MAX(size, 1)), TOTAL(est_bytes)
      FROM alloc GROUP BY 1, 2;
    """ % _size_class_sql())
    add_site_aggregates(db, TIMELINE_STEP_NS)
    db.commit()
    db.close()


def add_site_aggregates(db, width):
    """The site aggregate (agg_site, agg_site_session) of every session, computed from the
    rows as daemon/store_site.c does (site_mismatches in tests/integration/daemon_harness.py
    checks heapprofd's against the same computation): each row's changes in time order,
    frees before allocations at one instant, applied to every distinct line of its stack."""
    lines = {}
    for sid, key in db.execute(
            'SELECT DISTINCT sf.stack_id, (SELECT MIN(g.id) FROM frame g WHERE'
            ' g.filename = f.filename AND g.lineno = f.lineno)'
            ' FROM stack_frame sf JOIN frame f ON f.id = sf.frame_id'):
        lines.setdefault(sid, []).append(key)
    for session, in db.execute('SELECT id FROM session').fetchall():
        allocs = db.execute('SELECT ts_ns, 1, est_bytes, stack_id FROM alloc WHERE session_id = ?'
                            ' AND stack_id IS NOT NULL ORDER BY ts_ns', (session,))
        frees = db.execute('SELECT freed_ns, 0, -est_bytes, stack_id FROM alloc'
                           ' WHERE session_id = ? AND freed_ns IS NOT NULL'
                           ' AND stack_id IS NOT NULL ORDER BY freed_ns', (session,))
        state, rows = {}, []
        for t, _, d, stack in heapq.merge(allocs, frees):
            b = t - t % width
            for line in lines.get(stack, ()):
                st = state.get(line)
                if st is None or st[0] != b:
                    if st is not None and (st[1] or st[2]):
                        rows.append((session, line, st[0], st[1], st[2]))
                    st = state[line] = [b, 0, -(1 << 63) if t == b else 0]
                st[1] += d
                if st[1] > st[2]:
                    st[2] = st[1]
        rows.extend((session, line, st[0], st[1], st[2]) for line, st in state.items()
                    if st[1] or st[2])
        db.executemany('INSERT INTO agg_site VALUES (?,?,?,?,?)', rows)
        db.execute('INSERT INTO agg_site_session VALUES (?,?,?)', (session, width, (1 << 63) - 1))


def _time(fn, repeat):
    best = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--rows', type=int, default=10_000_000)
    ap.add_argument('--repeat', type=int, default=3)
    ap.add_argument('--rebuild', action='store_true')
    ap.add_argument('--build-only', action='store_true')
    ap.add_argument('--report', action='store_true',
                    help="also time the HTML report's data (heapprof.report.build_data), "
                         'a client of the Reader that reads the whole session')
    ap.add_argument('--db', help='time a recording made by heapprofd instead (its newest root'
                    ' session, or --session): from its aggregates, and from a copy without'
                    ' them (as an older heapprof wrote it)')
    ap.add_argument('--session', type=int)
    ap.add_argument('--skip-rows', action='store_true',
                    help='time only the files with indexes and with aggregates')
    ap.add_argument('--skip-indexed', action='store_true',
                    help='do not time the file with indexes either: only the aggregates')
    args = ap.parse_args(argv)
    if args.db:
        return main_recording(args)
    out = os.path.join(HERE, 'out')
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, 'reader-%d.sqlite' % args.rows)
    if args.rebuild or not os.path.exists(path):
        t0 = time.perf_counter()
        print('building %s (%d allocations)...' % (path, args.rows), file=sys.stderr)
        build(path, args.rows)
        print('built in %.1f s' % (time.perf_counter() - t0), file=sys.stderr)
    if args.build_only:
        return 0

    indexed = path.replace('.sqlite', '-indexed.sqlite')
    if args.rebuild or not os.path.exists(indexed):
        print('adding the proposed indexes in a copy: %s' % indexed, file=sys.stderr)
        shutil.copyfile(path, indexed)
        db = sqlite3.connect(indexed)
        db.executescript(PROPOSED_INDEXES)
        db.close()
    aggregated = path.replace('.sqlite', '-aggregates.sqlite')
    if args.rebuild or not os.path.exists(aggregated):
        print('adding the aggregates to a copy of the indexed one: %s' % aggregated,
              file=sys.stderr)
        shutil.copyfile(indexed, aggregated + '.tmp')
        add_aggregates(aggregated + '.tmp')
        os.replace(aggregated + '.tmp', aggregated)
    skip_rows = args.skip_rows or args.skip_indexed
    results = [None if skip_rows else run_ops(path, args.repeat, args.report),
               None if args.skip_indexed else run_ops(indexed, args.repeat, args.report),
               run_ops(aggregated, args.repeat, args.report)]
    for k in (0, 1):
        if results[k] is None:
            results[k] = [(name, float('nan')) for name, _ in results[2]]
    print('heapprof Reader on %d sampled allocations (best of %d, SQLite %s)'
          % (args.rows, args.repeat, sqlite3.sqlite_version))
    print('%-40s %14s %14s %14s' % ('operation (seconds)', 'rows only', '+ indexes',
                                    '+ aggregates'))
    print('-' * 85)
    for (name, a), (_, b), (_, c) in zip(*results):
        print('%-40s %14.3f %14.3f %14.3f' % (name, a, b, c))
    print('+ indexes: ' + ' '.join(PROPOSED_INDEXES.split()))
    print('+ aggregates: the indexed file with the aggregates heapprofd keeps (schema/README.md)')
    return 0


def main_recording(args):
    """The operations on a real recording, with and without its aggregates."""
    import heapprof.reader as hr
    rows = os.path.join(os.path.dirname(os.path.abspath(args.db)),
                        'rows-' + os.path.basename(args.db))
    if args.rebuild or not os.path.exists(rows):
        print('copying without the aggregates: %s' % rows, file=sys.stderr)
        shutil.copyfile(args.db, rows + '.tmp')
        db = sqlite3.connect(rows + '.tmp')
        db.execute('DROP VIEW IF EXISTS aggregated_sessions')
        db.execute('DROP VIEW IF EXISTS site_sessions')
        db.commit()
        db.close()
        os.replace(rows + '.tmp', rows)
    with hr.read(args.db, args.session) as r:
        session, d = r.session_id, r.duration
        samples = r.allocation_count()
    times = (0.02 * d, 0.5 * d, 0.98 * d, [d / 6, d / 2, 5 * d / 6])
    times = tuple(round(x, 2) if not isinstance(x, list) else [round(y, 2) for y in x]
                  for x in times)
    results = [run_ops(rows, args.repeat, args.report, session, times),
               run_ops(args.db, args.repeat, args.report, session, times)]
    print('heapprof Reader on session %d of %s: %d sampled allocations over %.1f s'
          ' (best of %d, SQLite %s)' % (session, os.path.basename(args.db), samples, d,
                                        args.repeat, sqlite3.sqlite_version))
    print('%-40s %14s %14s' % ('operation (seconds)', 'rows', 'aggregates'))
    print('-' * 70)
    for (name, a), (_, b) in zip(*results):
        print('%-40s %14.3f %14.3f' % (name, a, b))
    return 0


def run_ops(path, repeat, report=False, session=None, times=None):
    """[(operation, best seconds)] on one session of path. times: (early, middle, late,
    [three flow times]) in seconds; the synthetic session's when None."""
    import heapprof.reader as hr
    r = hr.read(path, session)
    early, mid, late, flow_times = times or (1.0, 30.5, 59.0, [10.0, 30.5, 50.0])
    def fresh(method):
        with hr.read(path, session) as f:
            return method(f)

    site = r.top_sites(mid, n=1)[0]
    site_key = '%s:%d' % (site.filename, site.lineno)
    ops = [
        ('open + metadata', lambda: hr.read(path, session).close()),
        ('timeline (total live bytes series)', lambda: r.timeline()),
        # A Reader keeps an ended session's peak and unfreed sums once read: a fresh one
        # for each run of these, so that every run reads them.
        ('peak', lambda: fresh(hr.Reader.peak)),
        ('snapshot_at(%g s)' % early, lambda: r.snapshot_at(early)),
        ('snapshot_at(%g s)' % mid, lambda: r.snapshot_at(mid)),
        ('snapshot_at(%g s)' % late, lambda: r.snapshot_at(late)),
        ('snapshot_at(end)', lambda: r.snapshot_at(r.duration)),
        ('site_series(1 site, whole session)', lambda: r.site_series([site_key])),
        ('top_sites(%g s, self+cumulative)' % mid, lambda: r.top_sites(mid)),
        ('flame(%g s) folded' % mid, lambda: r.flame(mid)),
        ('flow(%s s)' % ', '.join('%g' % x for x in flow_times), lambda: r.flow(flow_times)),
        ('leaks()', lambda: fresh(hr.Reader.leaks)),
        ('size_histogram()', lambda: r.size_histogram()),
    ]
    if report:
        from heapprof import report as hp_report
        ops.append(('report data (build_data)', lambda: hp_report.build_data(path)))
    out = []
    for name, fn in ops:
        out.append((name, _time(fn, repeat)))
        print('  %s: %-40s %.3f' % (os.path.basename(path), name, out[-1][1]), file=sys.stderr)
    r.close()
    return out


if __name__ == '__main__':
    sys.exit(main())
