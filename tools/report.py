"""heapprof report: one self-contained, interactive HTML file for a recorded session.

This sits at the end of the pipeline (agent -> proto -> daemon -> schema -> tools) and
reads only the public SQL views documented in schema/README.md (sessions, frames,
stack_frames, allocations, timeline, and the extensions session_settings and
timeline_detail). It never embeds raw events: a session of a million
sampled allocations is reduced here to

  * the timeline of the estimated live heap, down-sampled to at most TIMELINE_POINTS
    points by taking the highest level in each bucket (so spikes keep their height);
  * live bytes per stack at a bounded number of moments ("steps", uniform over the
    session, plus the exact moment of the peak), for the stacks that hold the most
    bytes (until the rest hold at most --fold-share of any moment); the rest folded
    under their deepest kept caller, so the totals still add up (_choose_stacks);
  * the stacks as lists of frame indexes, and the frame table;
  * what was never freed, grouped by allocation site.

The browser side (report/report.js) builds flame graphs, tables and growth rankings
from those arrays, so the file stays a few hundred KiB whatever the session's size.

Entry points: `write_report(db_path, out_path, session=None)` (None: the newest root
session, as chosen by heapprof.reader.default_session) for `heapprof run
--report`, and `register(subparsers)` for the `heapprof report` subcommand.
"""

import argparse
import datetime
import itertools
import json
import os
import sqlite3
import sys
from pathlib import Path

from heapprof import reader

# Limits on what the HTML embeds; named once here, checked on the command line.
DEFAULT_STEPS = 200          # uniform moments at which live bytes per stack are kept
MAX_STEPS = 1000
DEFAULT_TOP_STACKS = 5000    # at most this many stacks kept whole; the rest are folded
MAX_TOP_STACKS = 20000
DEFAULT_FOLD_SHARE = 0.02    # stacks are kept until the folded rest holds at most this
MAX_FOLD_SHARE = 0.5         # share of the live heap at every kept moment
TIMELINE_POINTS = 4000       # points in the plotted timeline after down-sampling
FINE_TIMELINE_POINTS = 1000  # "auto": fewer recorded intervals than this, and at most
FINE_TIMELINE_MAX_ALLOCS = 200_000  # this many allocations: plot from the events
MAX_LEAK_SITES = 200         # rows of the leaks tab
LEAK_STACKS_PER_SITE = 3     # example call paths shown per leaking site
SQL_CHUNK = 500              # ids per "IN (...)" list, below SQLite's variable limit

NO_STACK_FRAME = ("[no Python stack]", "<native>", 0)
# Frame index of the "[other stacks]" pseudo-frame in the embedded stacks (report.js).
OTHER_FRAME = -1


class ReportError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


# ------------------------------------------------------------------ database access

def _open_readonly(db_path):
    """Opens a heapprof database read-only through heapprof._db, which verifies it; a
    recording in progress is never disturbed (WAL: readers do not block the daemon)."""
    from heapprof import _db
    try:
        return _db.open_db(db_path)
    except _db.DatabaseError as e:
        raise ReportError(str(e)) from None


def _chunks(seq, n=SQL_CHUNK):
    seq = list(seq)
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def _has_view(con, name):
    return con.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'view' AND name = ?",
                       (name,)).fetchone()[0] > 0


def _pick_session(con, db_path, session):
    # The extras (sample_buckets, max_stack_depth, error) come from session_settings. A
    # database written by an earlier build of schema version 1 lacks that view and has
    # some of them at the end of sessions: SELECT * and columns by name cover both.
    if _has_view(con, "session_settings"):
        sql = ("SELECT * FROM sessions LEFT JOIN session_settings USING (session_id)"
               " ORDER BY started_ns, session_id")
    else:
        sql = "SELECT * FROM sessions ORDER BY started_ns, session_id"
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description]
    rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    if not rows:
        raise ReportError(f"{db_path} holds no sessions")
    ids = [r["session_id"] for r in rows]
    if session is None:
        # The newest root session: the program the user ran, not one of its child
        # processes (the same choice as every other heapprof command).
        all_sessions = reader._load_sessions(con)
        chosen = reader.default_session(all_sessions)
        s = next(r for r in rows if r["session_id"] == chosen.session_id)
        note = reader.default_session_note(db_path, all_sessions, chosen)
        if note:
            print(f"heapprof report: {note}", file=sys.stderr)
    else:
        match = [r for r in rows if r["session_id"] == session]
        if not match:
            raise ReportError(f"session {session} not found in {db_path} "
                              f"(sessions: {', '.join(map(str, ids))})")
        s = match[0]
    s["id"] = s["session_id"]
    try:
        argv = json.loads(s["argv"])
        if not isinstance(argv, list):
            argv = [str(argv)]
    except (TypeError, ValueError):
        argv = [str(s["argv"])]
    s["argv"] = [str(a) for a in argv]
    return s


# ------------------------------------------------------------------ aggregation

def _session_span(con, s):
    """First and last instant the report covers, in ns: the session's start (or its first
    event, if earlier) to its end (or, while running or after a crash, its last event).
    Timeline intervals are not used: the daemon aligns them to its own clock, so the
    first may start before the session and the last after it."""
    sid = s["id"]
    lo, hi_a, hi_f = con.execute(
        "SELECT MIN(ts_ns), MAX(ts_ns), MAX(freed_ns) FROM allocations WHERE session_id = ?",
        (sid,)).fetchone()
    t0 = min(x for x in (s["started_ns"], lo) if x is not None)
    ends = [x for x in (s["ended_ns"], hi_a, hi_f) if x is not None]
    t1 = max(ends) if ends else t0
    if s["ended_ns"] is None and not ends:
        # A running session with no events yet: cover up to its last timeline point.
        t1 = con.execute("SELECT MAX(ts_ns) FROM timeline WHERE session_id = ?",
                         (sid,)).fetchone()[0] or t0
    return t0, max(t1, t0)


def _timeline(con, sid, t0, t1):
    """Down-sampled (ts_ns, live_bytes) from the timeline view, highest level per bucket,
    interval starts clamped into [t0, t1], ending with a point at t1; empty when the
    daemon wrote no timeline (then the caller sweeps the events)."""
    span = max(t1 - t0, 1)
    rows = con.execute(
        "SELECT (MIN(MAX(ts_ns, :t0), :t1) - :t0) * :n / :span AS b,"
        " MIN(MAX(ts_ns, :t0), :t1), MAX(live_bytes)"
        " FROM timeline WHERE session_id = :sid GROUP BY b ORDER BY b",
        {"t0": t0, "t1": t1, "n": TIMELINE_POINTS, "span": span, "sid": sid}).fetchall()
    points = [(r[1], r[2]) for r in rows]
    if points and points[-1][0] < t1:
        # The level at the end: the last interval's closing level, from timeline_detail
        # (or, in a database whose views predate it, from the end of timeline).
        view = "timeline_detail" if _has_view(con, "timeline_detail") else "timeline"
        try:
            end = con.execute(f"SELECT end_bytes FROM {view} WHERE session_id = ?"
                              " ORDER BY ts_ns DESC LIMIT 1", (sid,)).fetchone()[0]
        except sqlite3.OperationalError:
            end = points[-1][1]
        points.append((t1, end))
    return points


def _events(con, sid, lo=None, hi=None):
    """Allocation (+est_bytes) and free (-est_bytes) events of a session within [lo, hi),
    sorted by time."""
    cond_a, cond_f, args = "", "", {"sid": sid}
    if lo is not None:
        cond_a = " AND ts_ns >= :lo AND ts_ns < :hi"
        cond_f = " AND freed_ns >= :lo AND freed_ns < :hi"
        args.update(lo=lo, hi=hi)
    ev = con.execute(
        "SELECT ts_ns, est_bytes FROM allocations WHERE session_id = :sid" + cond_a,
        args).fetchall()
    ev += con.execute(
        "SELECT freed_ns, -est_bytes FROM allocations WHERE session_id = :sid"
        " AND freed_ns IS NOT NULL" + cond_f, args).fetchall()
    ev.sort()
    return ev


def _levels(events, level=0):
    """Yields (ts, live bytes after every event at ts) for time-sorted events. Events at
    one instant count together, as in the per-stack snapshot of that instant."""
    i, n = 0, len(events)
    while i < n:
        ts = events[i][0]
        while i < n and events[i][0] == ts:
            level += events[i][1]
            i += 1
        yield ts, level


def _live_at(con, sid, ts):
    return int(con.execute(
        "SELECT TOTAL(est_bytes) FROM allocations WHERE session_id = ?"
        " AND ts_ns < ? AND (freed_ns IS NULL OR freed_ns >= ?)", (sid, ts, ts)).fetchone()[0])


def _find_peak(con, sid):
    """Exact (peak_ts, peak_bytes): the timeline names the interval with the highest level,
    and the events inside that interval pin down the instant."""
    rows = con.execute(
        "SELECT ts_ns, live_bytes FROM timeline WHERE session_id = ?"
        " ORDER BY live_bytes DESC, ts_ns LIMIT 1", (sid,)).fetchone()
    p_ts, p_bytes = rows
    nxt = con.execute("SELECT MIN(ts_ns) FROM timeline WHERE session_id = ? AND ts_ns > ?",
                      (sid, p_ts)).fetchone()[0]
    if nxt is None:
        # The last interval runs to the last event.
        last = con.execute(
            "SELECT MAX(MAX(ts_ns), COALESCE(MAX(freed_ns), 0)) FROM allocations"
            " WHERE session_id = ?", (sid,)).fetchone()[0]
        nxt = max(p_ts, last or p_ts) + 1
    level = best = _live_at(con, sid, p_ts)
    best_ts = p_ts
    for t, level in _levels(_events(con, sid, p_ts, nxt), level):
        if level > best:
            best, best_ts = level, t
    # The timeline's level is authoritative for the plot; the instant comes from events.
    return best_ts, max(p_bytes, best)


def _timeline_from_events(con, sid, t0, t1):
    """Builds the plotted timeline and the peak from the events, for a session whose
    timeline the daemon never wrote (e.g. it stopped early)."""
    level, peak, peak_ts = 0, 0, None
    span = max(t1 - t0, 1)
    buckets = {}
    for ts, level in _levels(_events(con, sid)):
        b = (ts - t0) * TIMELINE_POINTS // span
        cur = buckets.get(b)
        if cur is None:
            buckets[b] = [ts, level]
        elif level > cur[1]:
            cur[1] = level
        if level > peak or peak_ts is None:
            peak, peak_ts = level, ts
    points = [(v[0], v[1]) for _, v in sorted(buckets.items())]
    # Anchor the plot at the session's start and end.
    if not points or points[0][0] > t0:
        points.insert(0, (t0, 0))
    if points[-1][0] < t1:
        points.append((t1, level if peak_ts is not None else 0))
    return points, (peak_ts, peak) if peak_ts is not None else None


def _step_deltas(con, sid, t0, dt, nsteps):
    """Per stack, {step index: delta bytes}. An allocation made at ts is live at step
    i (instant t0 + i*dt) from i = ceil((ts - t0)/dt) until its free's ceil index."""
    per_stack = {}
    alloc_total = {}
    q = ("SELECT stack_id, MAX(0, ({col} - :t0 + :dt - 1) / :dt) AS i, TOTAL(est_bytes)"
         " FROM allocations WHERE session_id = :sid {extra} GROUP BY stack_id, i")
    args = {"t0": t0, "dt": dt, "sid": sid}
    for stack_id, i, b in con.execute(q.format(col="ts_ns", extra=""), args):
        b, i = int(b), int(i)       # i is REAL when a stored time overflowed the SQL
        alloc_total[stack_id] = alloc_total.get(stack_id, 0) + b
        if i < nsteps:
            per_stack.setdefault(stack_id, {})
            per_stack[stack_id][i] = per_stack[stack_id].get(i, 0) + b
    for stack_id, i, b in con.execute(
            q.format(col="freed_ns", extra="AND freed_ns IS NOT NULL"), args):
        b, i = int(b), int(i)
        if i < nsteps and stack_id in per_stack:
            d = per_stack[stack_id]
            d[i] = d.get(i, 0) - b
    return per_stack, alloc_total


def _series(deltas, nsteps):
    dense = [0] * nsteps
    for i, b in deltas.items():
        dense[i] += b
    return list(itertools.accumulate(dense))


def _choose_stacks(deltas, at_peak, totals, peak_total, nsteps, top_k, fold_share):
    """Which stacks the report keeps whole: (kept ids, {kept id: series}, folded ids).

    Stacks go in order of the most bytes they hold at any kept moment (the steps and
    the peak), and are kept until the rest hold at most fold_share of the live heap at
    every kept moment, or top_k are kept. Folding by bytes, not by a count of stacks,
    keeps what a long tail of small stacks holds from vanishing into "other". Stacks
    that hold nothing at any kept moment are neither kept nor folded."""
    levels = []
    for stack_id in set(deltas) | set(at_peak):
        level = max(max(_series(deltas.get(stack_id, {}), nsteps)), at_peak.get(stack_id, 0))
        if level > 0:
            levels.append((-level, stack_id is None, stack_id or 0, stack_id))
    levels.sort()
    rest, rest_peak = list(totals), peak_total
    kept, series = [], {}
    for n, (_, _, _, stack_id) in enumerate(levels):
        if len(kept) >= top_k or _folded_share(rest, totals, rest_peak, peak_total)[0] \
                <= fold_share:
            return kept, series, [e[3] for e in levels[n:]]
        ser = series[stack_id] = _series(deltas.get(stack_id, {}), nsteps)
        rest = [r - v for r, v in zip(rest, ser)]
        rest_peak -= at_peak.get(stack_id, 0)
        kept.append(stack_id)
    return kept, series, []


def _packed(series):
    """A stack's bytes per step for the page: {"v": [bytes per step]}, or when shorter
    {"r": [bytes, repeat, bytes, repeat, ...]} (a stack holds the same bytes for long
    stretches, so thousands of stacks cost little)."""
    runs = []
    for v, group in itertools.groupby(series):
        runs += [v, sum(1 for _ in group)]
    return {"r": runs} if len(runs) < len(series) else {"v": series}


def _folded_share(rest, totals, rest_peak, peak_total):
    """(highest share of the live heap that rest holds at a kept moment, that moment's
    step index or None for the peak), over moments with a live heap."""
    shares = [(r / t, i) for i, (r, t) in enumerate(zip(rest, totals)) if t > 0]
    if peak_total > 0:
        shares.append((rest_peak / peak_total, None))
    return max(shares, key=lambda x: x[0], default=(0.0, None))


def _fold(folded, paths, kept_paths, deltas, at_peak):
    """Folds each folded stack into the deepest frame path it shares with a kept stack:
    {path prefix (frame ids, root first): [step deltas, bytes at the peak, stacks]}. The
    empty prefix collects the stacks that share no frame with a kept one."""
    trie = {}
    for path in kept_paths:
        node = trie
        for f in path:
            node = node.setdefault(f, {})
    groups = {}
    for stack_id in folded:
        path = paths.get(stack_id, ()) if stack_id is not None else ()
        node, depth = trie, 0
        while depth < len(path) and path[depth] in node:
            node = node[path[depth]]
            depth += 1
        g = groups.setdefault(tuple(path[:depth]), [{}, 0, 0])
        for i, b in deltas.get(stack_id, {}).items():
            g[0][i] = g[0].get(i, 0) + b
        g[1] += at_peak.get(stack_id, 0)
        g[2] += 1
    return groups


def _live_by_stack_at(con, sid, ts):
    return {stack_id: int(b) for stack_id, b in con.execute(
        "SELECT stack_id, TOTAL(est_bytes) FROM allocations WHERE session_id = ?"
        " AND ts_ns <= ? AND (freed_ns IS NULL OR freed_ns > ?) GROUP BY stack_id",
        (sid, ts, ts))}


def _stack_frames(con, stack_ids):
    """{stack_id: [frame_id, ...] root first}; a NULL stack gets no frames here."""
    frames = {}
    ids = [s for s in stack_ids if s is not None]
    for chunk in _chunks(ids):
        marks = ",".join("?" * len(chunk))
        for stack_id, depth, frame_id in con.execute(
                f"SELECT stack_id, depth, frame_id FROM stack_frames"
                f" WHERE stack_id IN ({marks})", chunk):
            frames.setdefault(stack_id, []).append((depth, frame_id))
    # depth 0 is the innermost frame; a flame graph wants the root first.
    return {k: [f for _, f in sorted(v, reverse=True)] for k, v in frames.items()}


def _frame_rows(con, frame_ids):
    rows = {}
    for chunk in _chunks(frame_ids):
        marks = ",".join("?" * len(chunk))
        for fid, fn, filename, lineno in con.execute(
                f"SELECT frame_id, function, filename, lineno FROM frames"
                f" WHERE frame_id IN ({marks})", chunk):
            rows[fid] = (fn, filename, lineno)
    return rows


def _sampling_changes(con, sid):
    """[(ts_ns, sample_interval_bytes)] of the session's interval changes (on-full adapt),
    in order; [] for a database written before heapprofd recorded them (no view)."""
    if not con.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'view'"
                       " AND name = 'sampling_changes'").fetchone()[0]:
        return []
    return con.execute("SELECT ts_ns, sample_interval_bytes FROM sampling_changes"
                       " WHERE session_id = ? ORDER BY change_no", (sid,)).fetchall()


def build_data(db_path, session=None, steps=DEFAULT_STEPS, top_stacks=DEFAULT_TOP_STACKS,
               timeline="auto", fold_share=DEFAULT_FOLD_SHARE):
    """Everything the HTML embeds, as a JSON-ready dict (see module docstring)."""
    if not 2 <= steps <= MAX_STEPS:
        raise ReportError(f"--steps {steps} is outside 2..{MAX_STEPS}")
    if timeline not in ("auto", "recorded", "events"):
        raise ReportError(f"timeline {timeline!r} is not one of auto, recorded, events")
    if not 1 <= top_stacks <= MAX_TOP_STACKS:
        raise ReportError(f"--top-stacks {top_stacks} is outside 1..{MAX_TOP_STACKS}")
    if not 0 <= fold_share <= MAX_FOLD_SHARE:
        raise ReportError(f"--fold-share {fold_share:g} is outside 0..{MAX_FOLD_SHARE:g}")
    con = _open_readonly(db_path)
    try:
        return _build(con, db_path, session, steps, top_stacks, timeline, fold_share)
    except sqlite3.DatabaseError as e:
        raise ReportError(f"cannot read {db_path}: {e}") from None
    finally:
        con.close()


def _build(con, db_path, session, nsteps, top_k, timeline_from, fold_share):
    s = _pick_session(con, db_path, session)
    sid = s["id"]
    t0, t1 = _session_span(con, s)
    n_allocs = con.execute("SELECT COUNT(*) FROM allocations WHERE session_id = ?",
                           (sid,)).fetchone()[0]

    timeline = _timeline(con, sid, t0, t1) if timeline_from != "events" else []
    if timeline_from == "auto" and len(timeline) < FINE_TIMELINE_POINTS and \
            n_allocs <= FINE_TIMELINE_MAX_ALLOCS:
        # A short run has few daemon intervals (a staircase); its events are cheap to
        # sweep and give the level at every allocation and free instead.
        timeline = []
    if timeline:
        peak = _find_peak(con, sid)
        timeline_source = "timeline"
    else:
        timeline, peak = _timeline_from_events(con, sid, t0, t1)
        timeline_source = "events"

    # Uniform steps over the session, plus the peak's instant so that the flame graph
    # of the highest moment is exact rather than the nearest step's.
    dt = max(1, -(-(t1 - t0) // (nsteps - 1)))
    step_ts = [t0 + i * dt for i in range(nsteps)]
    deltas, alloc_total = _step_deltas(con, sid, t0, dt, nsteps)
    at_peak = _live_by_stack_at(con, sid, peak[0]) if peak else {}

    totals = [0] * nsteps
    for d in deltas.values():
        for i, b in d.items():
            totals[i] += b
    totals = list(itertools.accumulate(totals))
    peak_total = sum(at_peak.values())
    keep, series, folded = _choose_stacks(deltas, at_peak, totals, peak_total, nsteps,
                                          top_k, fold_share)

    # Leaks: sampled allocations never freed, grouped by allocation site (innermost frame).
    leak_rows = con.execute(
        "SELECT stack_id, TOTAL(est_bytes), COUNT(*) FROM allocations WHERE session_id = ?"
        " AND freed_ns IS NULL GROUP BY stack_id", (sid,)).fetchall()
    leak_rows = [(stack_id, int(b), n) for stack_id, b, n in leak_rows]
    leaks_unknown = _leaks_unknown(s, leak_rows)
    if leaks_unknown:
        leak_rows = []      # blocks freed after the recording stopped are no leaks
    leak_stack_ids = [r[0] for r in leak_rows]
    frames_of = _stack_frames(con, set(keep) | set(folded) | set(leak_stack_ids))

    frame_ids = sorted({f for fl in frames_of.values() for f in fl})
    frame_rows = _frame_rows(con, frame_ids)
    frame_index = {}
    frames = []

    def fidx(frame_id):
        if frame_id not in frame_index:
            frame_index[frame_id] = len(frames)
            frames.append(list(frame_rows.get(frame_id, ("?", "?", 0))))
        return frame_index[frame_id]

    def stack_path(stack_id):
        fl = frames_of.get(stack_id) if stack_id is not None else None
        if not fl:
            key = ("nostack",)
            if key not in frame_index:
                frame_index[key] = len(frames)
                frames.append(list(NO_STACK_FRAME))
            return [frame_index[key]]
        return [fidx(f) for f in fl]

    stacks = []
    for stack_id in keep:
        stacks.append(dict(_packed(series[stack_id]), id=stack_id, f=stack_path(stack_id),
                           p=at_peak.get(stack_id, 0)))
    # Each folded stack becomes an "[other stacks]" box under the deepest caller it shares
    # with a kept stack, so the callers' figures stay whole; those sharing none are summed
    # at the top as "other".
    kept_paths = [frames_of.get(k, ()) for k in keep if k is not None]
    other, other_peak = [0] * nsteps, 0
    rest = [0] * nsteps
    for prefix, (d, pk, n) in sorted(_fold(folded, frames_of, kept_paths, deltas,
                                           at_peak).items()):
        ser = _series(d, nsteps)
        rest = [r + v for r, v in zip(rest, ser)]
        if not prefix:
            other, other_peak = ser, pk
            continue
        stacks.append(dict(_packed(ser), id=None, f=[fidx(f) for f in prefix] + [OTHER_FRAME],
                           p=pk, folded=n))
    rest_peak = peak_total - sum(at_peak.get(k, 0) for k in keep)
    share, at_step = _folded_share(rest, totals, rest_peak, peak_total)
    fold = {"share_limit": fold_share, "kept": len(keep), "folded_stacks": len(folded),
            "max_share": share,
            "max_share_t": None if at_step is None or share <= 0 else
            round((step_ts[at_step] - t0) * 1e-9, 9),
            "peak_share": rest_peak / peak_total if peak_total > 0 else 0.0}

    sites = {}
    for stack_id, b, n in leak_rows:
        path = stack_path(stack_id)
        site = path[-1]
        e = sites.setdefault(site, {"site": site, "bytes": 0, "count": 0, "stacks": []})
        e["bytes"] += b
        e["count"] += n
        e["stacks"].append((b, path))
    leaks = sorted(sites.values(), key=lambda e: -e["bytes"])[:MAX_LEAK_SITES]
    for e in leaks:
        e["stacks"] = [p for _, p in sorted(e["stacks"], key=lambda x: -x[0])
                       [:LEAK_STACKS_PER_SITE]]

    warnings = []
    recv, dropped = s["events_received"] or 0, s["events_dropped"] or 0
    if dropped > 0:     # any drop makes the figures incomplete; say so plainly
        pct = 100.0 * dropped / max(recv + dropped, 1)
        warnings.append(
            f"{dropped:,} of {recv + dropped:,} events ({pct:.2g}%) were dropped by the "
            f"profiled process (its send buffer was full): every figure below is "
            f"incomplete. Dropped allocations are missing, and an allocation whose free "
            f"was dropped looks live to the end, so \"never freed\" (Leaks) may include "
            f"memory that was freed. To record without drops, run again with "
            f"`heapprof run --on-full adapt` (raises the interval instead: unbiased), "
            f"`--on-full block` (waits: keeps everything) or a larger --interval.")
    changes = _sampling_changes(con, sid)
    if changes:
        first, final, start = changes[0][0], changes[-1][1], s["sample_interval_bytes"]
        verb = "raised" if final > start else "changed"
        plural = "" if len(changes) == 1 else "s"
        warnings.append(
            f"heapprofd could not keep up, so the agent {verb} its sampling interval from "
            f"{start:,} to {final:,} bytes ({len(changes)} time{plural}, first at "
            f"+{(first - s['started_ns']) / 1e9:.2f} s). "
            f"Estimates stay unbiased (each sample's est_bytes is right for the interval it "
            f"was taken at), but after each change they rest on fewer samples.")
    if s["status"] == "running" and s["ended_ns"] is None:
        warnings.append("The session was still running when this report was written: "
                        "it covers the events recorded so far, and \"never freed\" means "
                        "\"not freed yet\".")
    elif leaks_unknown:
        why = f": {s['error']}" if s.get("error") else ""
        warnings.append(f"The session ended abnormally ({s['status']}{why}): "
                        f"{reader.end_unknown_reason(s['status'])}. Events after the break "
                        f"are missing, so frees may be missing too, and what was still "
                        f"allocated at its end is unknown (see Leaks).")
    if n_allocs == 0:
        warnings.append("No sampled allocations were recorded in this session.")
    if fold["max_share"] > fold_share:
        when = "at the peak" if fold["max_share_t"] is None else \
            f"at {fold['max_share_t']:.3f} s"
        warnings.append(
            f"The flame graph and the tables keep the {len(keep):,} stacks that hold the "
            f"most whole (--top-stacks {top_k}); the {len(folded):,} smaller ones, folded "
            f"into \"[other stacks]\" under their callers, still hold "
            f"{100 * fold['max_share']:.1f}% of the live heap {when}, more than "
            f"{100 * fold_share:g}% (--fold-share): raise --top-stacks to see them whole.")

    ns = 1e-9
    pk = None
    if peak:
        pk = {"t": (max(peak[0], t0) - t0) * ns, "bytes": peak[1], "stack_bytes": peak_total,
              "other": other_peak}
    return {
        "format": 1,
        "generated": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S UTC"),
        "db": str(db_path),
        "session": {
            "id": sid, "pid": s["pid"], "ppid": s["ppid"], "argv": s["argv"],
            "executable": s["executable"], "python_version": s["python_version"],
            "started": _iso(s["started_ns"]), "ended": _iso(s["ended_ns"]),
            "duration_s": ((s["ended_ns"] if s["ended_ns"] is not None else t1)
                           - s["started_ns"]) * ns,
            "sample_interval_bytes": s["sample_interval_bytes"], "status": s["status"],
            "events_received": recv, "events_dropped": dropped,
            "allocations": n_allocs, "sample_buckets": _buckets(s.get("sample_buckets")),
            "max_stack_depth": s.get("max_stack_depth"), "error": s.get("error"),
        },
        "warnings": warnings,
        "timeline": {"source": timeline_source,
                     "t": [round((ts - t0) * ns, 9) for ts, _ in timeline],
                     "bytes": [b for _, b in timeline]},
        "peak": pk,
        "steps": {"t": [round((ts - t0) * ns, 9) for ts in step_ts], "total": totals,
                  "other": other},
        "frames": frames,
        "stacks": stacks,
        "leaks": leaks,
        "leaks_unknown": leaks_unknown,
        "limits": {"steps": nsteps, "top_stacks": top_k, "leak_sites": MAX_LEAK_SITES},
        "fold": fold,
    }


def _leaks_unknown(s, leak_rows):
    """The Leaks tab's explanation for a session whose end was not recorded (it ended
    without its final flush, or stopped recording early), or None when its end is known.
    leak_rows: (stack_id, est bytes, samples) of the allocations with no recorded free."""
    why = reader.end_unknown_reason(s["status"])
    if why is None:
        return None
    from heapprof import _fmt
    n = sum(r[2] for r in leak_rows)
    return (f"What was still allocated at the end is unknown: the session ended "
            f"'{s['status']}' ({why}). {_fmt.human_bytes(sum(r[1] for r in leak_rows))} in "
            f"{n:,} sampled allocations have no recorded free; any of them may have been "
            f"freed after the recording stopped, so none is listed as a leak.")


def _buckets(text):
    """sample_buckets as [[max_size, rate], ...], or None when absent or unreadable."""
    if not text:
        return None
    try:
        b = json.loads(text)
    except ValueError:
        return None
    return b if isinstance(b, list) else None


def _iso(ns):
    if ns is None:
        return None
    try:
        return datetime.datetime.fromtimestamp(ns / 1e9, datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"
    except (ValueError, OverflowError, OSError):
        return f"{ns} ns since the epoch"      # no calendar holds it


# ------------------------------------------------------------------ HTML

def _asset_dirs():
    """Installed: heapprof/report_assets/ holds everything. Source tree: tools/report/
    and tools/vendor/uplot/."""
    here = Path(__file__).resolve().parent
    return [here / "report_assets", here / "report", here / "vendor" / "uplot"]


def _asset(name):
    for d in _asset_dirs():
        p = d / name
        if p.is_file():
            return p.read_text(encoding="utf-8")
    raise ReportError(f"report asset {name} is missing from the heapprof installation "
                      f"(looked in {', '.join(str(d) for d in _asset_dirs())})")


def _json_for_script(obj):
    # "<", ">" and "&" escaped so that no "</script>" or "<!--" can end the data block.
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(data):
    template = _asset("template.html")
    title = f"heapprof report: session {data['session']['id']}"
    argv = " ".join(data["session"]["argv"])
    if argv:
        title += " - " + argv
    licence = _asset("uPlot.LICENSE") if _has_asset("uPlot.LICENSE") else _asset("LICENSE")
    parts = {
        "<!--HP:TITLE-->": _html_escape(title[:200]),
        "/*HP:UPLOT_CSS*/": _asset("uPlot.min.css"),
        "/*HP:CSS*/": _asset("report.css"),
        "/*HP:UPLOT_JS*/": _asset("uPlot.iife.min.js"),
        "/*HP:JS*/": _asset("report.js"),
        "/*HP:DATA*/": _json_for_script(data),
        "<!--HP:LICENCES-->": "<!--\nuPlot 1.6.32, inlined below, is under this licence:\n"
                              + licence.replace("--", "- -") + "-->",
    }
    out = template
    for k, v in parts.items():
        if k not in out:
            raise ReportError(f"report template lacks the {k} marker")
        out = out.replace(k, v, 1)
    return out


def _has_asset(name):
    return any((d / name).is_file() for d in _asset_dirs())


def _html_escape(s):
    return (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


def write_report(db_path, out_path, session=None, steps=DEFAULT_STEPS,
                 top_stacks=DEFAULT_TOP_STACKS, timeline="auto",
                 fold_share=DEFAULT_FOLD_SHARE):
    """Writes the one-file HTML report of `session` (default: the most recent) of the
    database at db_path to out_path. Raises ReportError with a one-line message on bad
    input. The file is written to a temporary name and renamed, so a reader never sees
    half a report."""
    data = build_data(db_path, session, steps, top_stacks, timeline, fold_share)
    html = render_html(data)
    out = Path(out_path)
    if out.is_dir():
        raise ReportError(f"output {out_path} is a directory; give a file name")
    if not out.parent.is_dir():
        raise ReportError(f"cannot write {out_path}: directory {out.parent} does not exist")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(html, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise ReportError(f"cannot write {out_path}: {e.strerror}") from None


# ------------------------------------------------------------------ command line

def _positive_int(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _fraction(text):
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _add_arguments(p):
    p.add_argument("--timeline", choices=("auto", "recorded", "events"), default="auto",
                   help="what the time plot shows: the daemon's recorded intervals, the "
                        "level after every allocation and free (exact, slower for big "
                        "sessions), or auto: events for short sessions (default)")
    p.add_argument("--db", metavar="PATH",
                   help="heapprof database (default: the newest heapprof-*.sqlite in the "
                        "current directory)")
    p.add_argument("--session", type=_positive_int, default=None,
                   help="session id (default: the newest root session, i.e. not a child "
                        "process of another recorded session)")
    p.add_argument("-o", "--output", default="report.html",
                   help="HTML file to write (default: report.html)")
    p.add_argument("--steps", type=_positive_int, default=DEFAULT_STEPS,
                   help=f"moments kept for flame graphs (2..{MAX_STEPS}, "
                        f"default {DEFAULT_STEPS})")
    p.add_argument("--top-stacks", type=_positive_int, default=DEFAULT_TOP_STACKS,
                   help=f"at most this many stacks kept whole, those holding the most bytes "
                        f"(1..{MAX_TOP_STACKS}, default {DEFAULT_TOP_STACKS}); the rest are "
                        f"folded into '[other stacks]' under their callers")
    p.add_argument("--fold-share", type=_fraction, default=DEFAULT_FOLD_SHARE,
                   metavar="FRACTION",
                   help=f"stacks are kept whole until the folded rest holds at most this "
                        f"share of the live heap at every kept moment (0..{MAX_FOLD_SHARE:g}, "
                        f"default {DEFAULT_FOLD_SHARE:g}); the report says how much is folded")


def run(args):
    """Runs the subcommand from parsed arguments; returns the exit status."""
    try:
        from heapprof.cli import UsageError, db_path
        try:
            db = db_path(args)
        except UsageError as e:
            raise ReportError(str(e)) from None
        write_report(db, args.output, args.session, args.steps, args.top_stacks,
                     args.timeline, args.fold_share)
    except ReportError as e:
        print(f"heapprof report: {e}", file=sys.stderr)
        return 1
    print(f"heapprof report: wrote {args.output}", file=sys.stderr)
    return 0


def register(subparsers):
    """Adds `report` to the `heapprof` command line (called by heapprof.cli)."""
    p = subparsers.add_parser(
        "report", help="write a one-file interactive HTML report of a session",
        description="Write a self-contained interactive HTML report (timeline, flame "
                    "graphs, top sites, growth, leaks) of one recorded session.")
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def main(argv=None):
    p = argparse.ArgumentParser(prog="heapprof report", description=(
        "Write a self-contained interactive HTML report of one recorded session."))
    _add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
