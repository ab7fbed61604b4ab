"""heapprof report: one self-contained, interactive HTML file for a recorded session.

This sits at the end of the pipeline (agent -> proto -> daemon -> schema -> tools) and
asks the database everything through heapprof.reader, the one module of the tools that
speaks SQL. It never embeds raw events: a session of a million sampled allocations is
reduced here to

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

from heapprof import _db
from heapprof import _fmt
from heapprof import reader

# Limits on what the HTML embeds; named once here, checked on the command line.
DEFAULT_STEPS = 200          # uniform moments at which live bytes per stack are kept
AGGREGATE_STEPS_FROM = 1_000_000  # sampled allocations from which steps are bucket ends
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

NO_STACK_FRAME = (reader.NO_STACK_LABEL, "<native>", 0)
# Frame index of the "[other stacks]" pseudo-frame in the embedded stacks (report.js).
OTHER_FRAME = -1


class ReportError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


# ------------------------------------------------------------------ aggregation

def _timeline_from_levels(levels, t0, t1):
    """The plotted timeline and the peak from the level after every event (the Reader's
    live_levels_ns), for a short session or one whose timeline heapprofd never wrote
    (e.g. it stopped early): ([(ts_ns, bytes)], (peak ts_ns, peak bytes) or None)."""
    level, peak, peak_ts = 0, 0, None
    span = max(t1 - t0, 1)
    buckets = {}
    for ts, level in levels:
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


def _series(deltas, nsteps):
    """A stack's live bytes at every step, from its changes {step: bytes}."""
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
    try:
        with reader.read(db_path, session) as r:
            if r.default_note:
                print(f"heapprof report: {r.default_note}", file=sys.stderr)
            return _report_data(r, db_path, steps, top_stacks, timeline, fold_share)
    except (_db.DatabaseError, reader.ReaderError) as e:
        raise ReportError(str(e)) from None
    except sqlite3.DatabaseError as e:
        raise ReportError(f"cannot read {db_path}: {e}") from None


def _report_data(r, db_path, nsteps, top_k, timeline_from, fold_share):
    meta = r.metadata
    t0, t1 = r.span_ns()
    n_allocs = r.allocation_count()
    timeline, peak, timeline_source = _plotted_timeline(r, t0, t1, n_allocs, timeline_from)

    # Uniform steps over the session, plus the peak's instant so that the flame graph
    # of the highest moment is exact rather than the nearest step's. The steps read every
    # allocation twice; a session with many has them from its aggregates instead, at
    # bucket ends (every bucket's end when the session has fewer buckets than steps).
    steps = r.bucket_steps_ns(t0, t1, nsteps) if n_allocs >= AGGREGATE_STEPS_FROM else None
    if steps is not None:
        start, dt, nsteps = steps
        deltas = r.stack_step_deltas_agg_ns(start, dt, nsteps)
    else:
        start = t0
        dt = max(1, -(-(t1 - t0) // (nsteps - 1)))
        deltas = r.stack_step_deltas_ns(t0, dt, nsteps)
    # Step 0 of bucket steps comes before the session: it shows at its start.
    step_ts = [max(t0, start + i * dt) for i in range(nsteps)]
    at_peak = r.snapshot_at_ns(peak[0]) if peak else {}

    totals = [0] * nsteps
    for d in deltas.values():
        for i, b in d.items():
            totals[i] += b
    totals = list(itertools.accumulate(totals))
    peak_total = sum(at_peak.values())
    keep, series, folded = _choose_stacks(deltas, at_peak, totals, peak_total, nsteps,
                                          top_k, fold_share)

    # Leaks: sampled allocations never freed, grouped by allocation site (innermost frame).
    leak_rows = r.unfreed_stacks()
    leaks_unknown = _leaks_unknown(meta, leak_rows)
    if leaks_unknown:
        leak_rows = []      # blocks freed after the recording stopped are no leaks
    table = _FrameTable(r.frames_of_stacks(set(keep) | set(folded) |
                                           {row[0] for row in leak_rows}))

    stacks = []
    for stack_id in keep:
        stacks.append(dict(_packed(series[stack_id]), id=stack_id, f=table.stack(stack_id),
                           p=at_peak.get(stack_id, 0)))
    # Each folded stack becomes an "[other stacks]" box under the deepest caller it shares
    # with a kept stack, so the callers' figures stay whole; those sharing none are summed
    # at the top as "other".
    kept_paths = [table.paths.get(k, ()) for k in keep if k is not None]
    other, other_peak = [0] * nsteps, 0
    rest = [0] * nsteps
    for prefix, (d, folded_peak, n) in sorted(_fold(folded, table.paths, kept_paths, deltas,
                                                    at_peak).items()):
        ser = _series(d, nsteps)
        rest = [x + v for x, v in zip(rest, ser)]
        if not prefix:
            other, other_peak = ser, folded_peak
            continue
        stacks.append(dict(_packed(ser), id=None,
                           f=[table.index(f) for f in prefix] + [OTHER_FRAME],
                           p=folded_peak, folded=n))
    rest_peak = peak_total - sum(at_peak.get(k, 0) for k in keep)
    share, at_step = _folded_share(rest, totals, rest_peak, peak_total)
    fold = {"share_limit": fold_share, "kept": len(keep), "folded_stacks": len(folded),
            "max_share": share,
            "max_share_t": None if at_step is None or share <= 0 else
            round((step_ts[at_step] - t0) * 1e-9, 9),
            "peak_share": rest_peak / peak_total if peak_total > 0 else 0.0}
    leaks = _leak_sites(leak_rows, table,
                        {s.frame_id: s.se for s in r.leaks()} if leak_rows else {})

    warnings = _warnings(meta, leaks_unknown, n_allocs)
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
    peak_data = None
    if peak:
        peak_data = {"t": (max(peak[0], t0) - t0) * ns, "bytes": peak[1],
                     "stack_bytes": peak_total, "other": other_peak,
                     # The standard error of the live bytes at that instant.
                     "se": r.live_at(r.peak()[0]).se}
    return {
        "format": 1,
        "generated": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S UTC"),
        "db": str(db_path),
        "session": {
            "id": meta.session_id, "pid": meta.pid, "ppid": meta.ppid, "argv": meta.argv,
            "executable": meta.executable, "python_version": meta.python_version,
            "started": _iso(meta.started_ns), "ended": _iso(meta.ended_ns),
            "duration_s": ((meta.ended_ns if meta.ended_ns is not None else t1)
                           - meta.started_ns) * ns,
            "sample_interval_bytes": meta.sample_interval_bytes, "status": meta.status,
            "events_received": meta.events_received or 0,
            "events_dropped": meta.events_dropped or 0,
            "allocations": n_allocs, "sample_buckets": meta.sample_buckets,
            "max_stack_depth": meta.max_stack_depth, "error": meta.error,
        },
        "warnings": warnings,
        "timeline": {"source": timeline_source,
                     "t": [round((ts - t0) * ns, 9) for ts, _ in timeline],
                     "bytes": [b for _, b in timeline]},
        "peak": peak_data,
        # heapprof.mark(label) calls, drawn on the time plot (seconds like the timeline's).
        "z95": reader.Z95,
        "markers": [{"t": round((m.ts_ns - t0) * ns, 9), "label": m.label}
                    for m in r.markers()],
        "steps": {"t": [round((ts - t0) * ns, 9) for ts in step_ts], "total": totals,
                  "other": other},
        "frames": table.rows,
        "stacks": stacks,
        "leaks": leaks,
        "leaks_unknown": leaks_unknown,
        "limits": {"steps": nsteps, "top_stacks": top_k, "leak_sites": MAX_LEAK_SITES},
        "fold": fold,
    }


def _plotted_timeline(r, t0, t1, n_allocs, timeline_from):
    """(points [(ts_ns, bytes)], peak (ts_ns, bytes) or None, source) of the time plot:
    heapprofd's recorded intervals, or the level after every event (timeline_from)."""
    timeline = r.timeline_ns(t0, t1, TIMELINE_POINTS) if timeline_from != "events" else []
    if timeline_from == "auto" and len(timeline) < FINE_TIMELINE_POINTS and \
            n_allocs <= FINE_TIMELINE_MAX_ALLOCS:
        # A short run has few daemon intervals (a staircase); its events are cheap to
        # sweep and give the level at every allocation and free instead.
        timeline = []
    if timeline:
        return timeline, r.peak_ns(), "timeline"
    points, peak = _timeline_from_levels(r.live_levels_ns(), t0, t1)
    return points, peak, "events"


class _FrameTable:
    """The frames the page names, each once, in the order first used, and stacks as
    lists of indexes into them, root first."""

    def __init__(self, frames_of_stacks):
        # {stack_id: [frame_id, ...] root first}; stacks with no frames are left out.
        self.paths = {stack_id: [f.frame_id for f in reversed(frames)]
                      for stack_id, frames in frames_of_stacks.items() if frames}
        self._names = {f.frame_id: (f.function, f.filename, f.lineno)
                       for frames in frames_of_stacks.values() for f in frames}
        self._index = {}
        self.rows = []

    def index(self, frame_id):
        """The index of a frame in rows, adding it on first use."""
        if frame_id not in self._index:
            self._index[frame_id] = len(self.rows)
            self.rows.append(list(self._names[frame_id]))
        return self._index[frame_id]

    def stack(self, stack_id):
        """A stack as frame indexes, root first; one without frames is NO_STACK_FRAME."""
        path = self.paths.get(stack_id) if stack_id is not None else None
        if path:
            return [self.index(f) for f in path]
        if NO_STACK_FRAME not in self._index:
            self._index[NO_STACK_FRAME] = len(self.rows)
            self.rows.append(list(NO_STACK_FRAME))
        return [self._index[NO_STACK_FRAME]]


def _leak_sites(leak_rows, table, se_by_frame):
    """The Leaks tab: the largest sites (innermost frame index) by bytes never freed, each
    with its count, the standard error of its bytes (se_by_frame: {innermost frame id:
    se}, Reader.leaks()) and its largest call paths. leak_rows: (stack_id, bytes,
    samples)."""
    sites = {}
    for stack_id, b, n in leak_rows:
        path = table.stack(stack_id)
        site = path[-1]
        leaf = (table.paths.get(stack_id) or [None])[-1]
        e = sites.setdefault(site, {"site": site, "bytes": 0, "count": 0, "stacks": [],
                                    "se": se_by_frame.get(leaf, 0.0)})
        e["bytes"] += b
        e["count"] += n
        e["stacks"].append((b, path))
    leaks = sorted(sites.values(), key=lambda e: -e["bytes"])[:MAX_LEAK_SITES]
    for e in leaks:
        e["stacks"] = [p for _, p in sorted(e["stacks"], key=lambda x: -x[0])
                       [:LEAK_STACKS_PER_SITE]]
    return leaks


def _warnings(meta, leaks_unknown, n_allocs):
    """The warnings that head the page: what makes the session's figures incomplete or
    rougher than they look."""
    warnings = []
    recv, dropped = meta.events_received or 0, meta.events_dropped or 0
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
    change = _fmt.interval_change(meta)
    if change:
        verb, when = change
        warnings.append(
            f"heapprofd could not keep up, so the agent {verb} its sampling interval from "
            f"{meta.sample_interval_bytes:,} to {meta.final_interval_bytes:,} bytes ({when}). "
            f"Estimates stay unbiased (each sample's est_bytes is right for the interval it "
            f"was taken at), but after each change they rest on fewer samples.")
    if meta.status == "running" and meta.ended_ns is None:
        warnings.append("The session was still running when this report was written: "
                        "it covers the events recorded so far, and \"never freed\" means "
                        "\"not freed yet\".")
    elif leaks_unknown:
        why = f": {meta.error}" if meta.error else ""
        warnings.append(f"The session ended abnormally ({meta.status}{why}): "
                        f"{meta.end_unknown_reason}. Events after the break "
                        f"are missing, so frees may be missing too, and what was still "
                        f"allocated at its end is unknown (see Leaks).")
    if n_allocs == 0:
        warnings.append("No sampled allocations were recorded in this session.")
    return warnings


def _leaks_unknown(meta, leak_rows):
    """The Leaks tab's explanation for a session whose end was not recorded (it ended
    without its final flush, or stopped recording early), or None when its end is known.
    leak_rows: (stack_id, est bytes, samples) of the allocations with no recorded free."""
    why = meta.end_unknown_reason
    if why is None:
        return None
    n = sum(r[2] for r in leak_rows)
    return (f"What was still allocated at the end is unknown: the session ended "
            f"'{meta.status}' ({why}). {_fmt.human_bytes(sum(r[1] for r in leak_rows))} in "
            f"{n:,} sampled allocations have no recorded free; any of them may have been "
            f"freed after the recording stopped, so none is listed as a leak.")


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
