"""heapprof report: the aggregated data and the command line, over databases built here
through schema/schema.sql (a spike + leak scenario whose figures are known exactly).

The browser half (the page really renders and reacts) is test_report_browser.py, which
reuses make_db() from this file.

Runs the installed package: HEAPPROF_PYTHON -m heapprof.report / heapprof.cli.
"""
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest

SOURCE_ROOT = os.environ.get("HEAPPROF_SOURCE_ROOT",
                             os.path.join(os.path.dirname(__file__), "..", ".."))
PYTHON = os.environ.get("HEAPPROF_PYTHON", sys.executable)
T0 = 1_700_000_000_000_000_000          # session start, ns since the epoch
MiB, KiB = 1 << 20, 1 << 10
S = 1_000_000_000                        # one second in ns


def ns(seconds):
    return T0 + int(round(seconds * S))


# Frames as (function, filename, lineno); stacks innermost first, like stack_frames.depth.
MOD = ("<module>", "app.py", 1)
# A file name that would run script, load an image or end the data block if any of it
# reached the page unescaped (checked here and in the browser).
HOSTILE = "</script><img src=x onerror=\"console.error('escaped')\">app.py"
MAIN = ("main", HOSTILE, 12)
LOAD = ("load_config", "config.py", 20)
SPIKE = ("build_index", "indexer.py", 30)
LEAK = ("remember", "cache.py", 42)
N_NOISE = 30


def noise_frame(k):
    return (f"helper_{k}", "util.py", 100 + k)


def scenario():
    """(stack, alloc_s, freed_s or None, est_bytes) for the spike + leak program:
    2 MiB of configuration live for the whole run, a 20 MiB index built at 2.0-2.9 s and
    dropped at 3.55 s (the spike), 100 KiB remembered every 0.1 s from 1.0 s to 9.0 s and
    never freed (the leak), and 30 short-lived small allocations from distinct helpers
    (more stacks than a small --top-stacks keeps)."""
    ev = [((LOAD, MAIN, MOD), 0.5, 9.9, 2 * MiB)]
    ev += [((SPIKE, MAIN, MOD), 2.0 + 0.1 * k, 3.55 + 0.01 * k, 2 * MiB) for k in range(10)]
    ev += [((LEAK, MAIN, MOD), 1.0 + 0.1 * k, None, 100 * KiB) for k in range(81)]
    ev += [((noise_frame(k), MAIN, MOD), 0.23 + 0.3 * k, 0.28 + 0.3 * k, 4 * KiB * (k + 1))
           for k in range(N_NOISE)]
    return ev


def live_at(events, t_ns):
    """Brute force: estimated live bytes per stack at instant t (allocated at or before t,
    not freed by t)."""
    out = {}
    for stack, a, f, b in events:
        if ns(a) <= t_ns and (f is None or ns(f) > t_ns):
            out[stack] = out.get(stack, 0) + b
    return out


def exact_peak(events):
    pts = sorted({ns(a) for _, a, _, _ in events})
    best = max(pts, key=lambda t: (sum(live_at(events, t).values()), -t))
    return best, sum(live_at(events, best).values())


def make_db(path, *, timeline=True, dropped=0, sessions=1, empty=False, status="exited",
            error=None, nostack=False):
    """Builds a heapprof database at path through schema.sql holding `sessions` copies of
    the scenario (the last one is the newest). Returns the scenario's events."""
    with open(os.path.join(SOURCE_ROOT, "schema", "schema.sql"), encoding="utf-8") as f:
        schema = f.read()
    events = [] if empty else scenario()
    con = sqlite3.connect(path)
    try:
        con.executescript(schema)
        frame_id, stack_id = {}, {}
        for stack, _, _, _ in events:
            for fr in stack:
                if fr not in frame_id:
                    frame_id[fr] = len(frame_id) + 1
                    con.execute("INSERT INTO frame (id, function, filename, lineno)"
                                " VALUES (?, ?, ?, ?)", (frame_id[fr],) + fr)
            if stack not in stack_id:
                sid = stack_id[stack] = len(stack_id) + 1
                con.execute("INSERT INTO stack (id, hash, depth, truncated) VALUES (?,?,?,0)",
                            (sid, hash(stack) & 0x7fffffff, len(stack)))
                con.executemany("INSERT INTO stack_frame (stack_id, depth, frame_id)"
                                " VALUES (?, ?, ?)",
                                [(sid, d, frame_id[fr]) for d, fr in enumerate(stack)])
        n_events = len(events) + sum(1 for e in events if e[2] is not None)
        for k in range(sessions):
            sid = k + 1
            base = -(sessions - 1 - k) * 100 * S    # earlier sessions start earlier
            start = T0 + base
            con.execute(
                "INSERT INTO session (id, pid, ppid, argv, executable, python_version,"
                " started_ns, ended_ns, sample_interval_bytes, max_stack_depth, status,"
                " events_received, events_dropped) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (sid, 4242 + k, 1, json.dumps(["python3", "app.py", "--size", "big"]),
                 "/usr/bin/python3", "3.11.7", start,
                 None if status == "running" else start + 10 * S, 65536, 64, status,
                 n_events - dropped, dropped))
            rows = []
            for i, (stack, a, f, b) in enumerate(events):
                rows.append((sid, ns(a) + base, 1, 1, 0x1000 + i * 64, b, b, stack_id[stack],
                             None if f is None else ns(f) + base))
            con.executemany(
                "INSERT INTO alloc (session_id, ts_ns, thread_id, domain, address, size,"
                " est_bytes, stack_id, freed_ns) VALUES (?,?,?,?,?,?,?,?,?)", rows)
            if timeline:
                con.executemany(
                    "INSERT INTO timeline_point (session_id, ts_ns, live_bytes, live_count,"
                    " end_bytes) VALUES (?,?,?,?,?)",
                    [(sid, t + base, hi, n, end) for t, hi, n, end in timeline_of(events)])
        if nostack:
            # A raw-domain allocation made without the GIL has no Python stack.
            con.execute("INSERT INTO alloc (session_id, ts_ns, thread_id, domain, address,"
                        " size, est_bytes, stack_id, freed_ns) VALUES (?,?,2,0,7,?,?,NULL,NULL)",
                        (sessions, ns(5.0), MiB, MiB))
        if error is not None:
            con.execute("UPDATE session SET error = ?", (error,))
        con.commit()
    finally:
        con.close()
    return events


def timeline_of(events, step=100_000_000):
    """What the daemon writes: per 100 ms interval, the highest live level within it."""
    deltas = sorted([(ns(a), b, 1) for _, a, _, b in events] +
                    [(ns(f), -b, -1) for _, _, f, b in events if f is not None],
                    key=lambda d: (d[0], -d[1]))
    out, level, count, i = [], 0, 0, 0
    for t in range(T0, T0 + 10 * S + 1, step):
        hi, hi_n = level, count
        while i < len(deltas) and deltas[i][0] < t + step:
            level += deltas[i][1]
            count += deltas[i][2]
            if level > hi:
                hi, hi_n = level, count
            i += 1
        out.append((t, hi, hi_n, level))
    return out


def run_report(*args, timeout=60):
    return subprocess.run([PYTHON, "-m", "heapprof.report", *args], capture_output=True,
                          text=True, timeout=timeout)


def series(stack):
    """A stack's bytes per step, from "v" or from its runs "r" ([bytes, repeat, ...])."""
    if "v" in stack:
        return stack["v"]
    r = stack["r"]
    return [v for k in range(0, len(r), 2) for v in [r[k]] * r[k + 1]]


def embedded_data(html):
    m = re.search(r'<script id="hp-data" type="application/json">(.*?)</script>', html, re.S)
    assert m, "no data block in the report"
    return json.loads(m.group(1))


class ReportData(unittest.TestCase):
    """The numbers the page is built from, checked against brute force."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="hp-report-test-")
        cls.db = os.path.join(cls.tmp.name, "prof.sqlite")
        cls.events = make_db(cls.db)
        cls.out = os.path.join(cls.tmp.name, "report.html")
        r = run_report("--db", cls.db, "-o", cls.out, "--timeline", "recorded")
        if r.returncode != 0:
            raise AssertionError(f"heapprof report failed: {r.stderr}")
        with open(cls.out, encoding="utf-8") as f:
            cls.html = f.read()
        cls.data = embedded_data(cls.html)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_peak_is_the_exact_instant_and_level(self):
        self.assertEqual(self.data["timeline"]["source"], "timeline")
        t, b = exact_peak(self.events)
        self.assertAlmostEqual(self.data["peak"]["t"], (t - T0) / S, places=6)
        self.assertEqual(self.data["peak"]["bytes"], b)
        self.assertEqual(self.data["peak"]["stack_bytes"], b)
        # The spike is what makes the peak: 20 MiB of the index are live then.
        self.assertGreater(b, 22 * MiB)

    def test_step_totals_match_brute_force(self):
        steps = self.data["steps"]
        self.assertEqual(len(steps["t"]), 200)
        for i in range(0, 200, 7):
            t_ns = T0 + int(round(steps["t"][i] * S))
            self.assertEqual(steps["total"][i], sum(live_at(self.events, t_ns).values()),
                             f"step {i} at {steps['t'][i]} s")

    def test_stacks_and_other_add_up_at_every_moment(self):
        d = self.data
        for i in range(len(d["steps"]["t"])):
            s = sum(series(st)[i] for st in d["stacks"]) + d["steps"]["other"][i]
            self.assertEqual(s, d["steps"]["total"][i])
        # Each noise helper is alone at some moment, holding all of the live heap: to
        # fold at most 2% everywhere, all 33 stacks stay whole; nothing is folded.
        self.assertEqual(len(d["stacks"]), 3 + N_NOISE)
        self.assertEqual(max(d["steps"]["other"]), 0)
        self.assertEqual((d["fold"]["kept"], d["fold"]["folded_stacks"]), (3 + N_NOISE, 0))
        self.assertEqual(d["fold"]["max_share"], 0)

    def test_stacks_are_root_first_frame_lists(self):
        d = self.data
        names = {tuple(tuple(d["frames"][fi]) for fi in st["f"]) for st in d["stacks"]}
        self.assertIn((MOD, MAIN, LEAK), names)
        self.assertIn((MOD, MAIN, SPIKE), names)

    def test_leaks_name_the_leaking_site_first(self):
        leaks = self.data["leaks"]
        self.assertEqual(len(leaks), 1)
        top = leaks[0]
        self.assertEqual(tuple(self.data["frames"][top["site"]]), LEAK)
        self.assertEqual(top["bytes"], 81 * 100 * KiB)
        self.assertEqual(top["count"], 81)

    def test_session_facts(self):
        s = self.data["session"]
        self.assertEqual(s["argv"], ["python3", "app.py", "--size", "big"])
        self.assertEqual(s["pid"], 4242)
        self.assertEqual(s["python_version"], "3.11.7")
        self.assertAlmostEqual(s["duration_s"], 10.0)
        self.assertEqual(s["sample_interval_bytes"], 65536)
        self.assertEqual(s["events_dropped"], 0)
        self.assertEqual(self.data["warnings"], [])

    def test_html_is_self_contained(self):
        html = self.html
        self.assertNotRegex(html, r"<script[^>]+src=")
        self.assertNotRegex(html, r"<link\b")
        self.assertNotRegex(html, r"(?i)@import|url\(\s*['\"]?https?:")
        self.assertIn("default-src 'none'", html)      # the page may not fetch anything
        self.assertNotIn("<img", html)                    # frame names stay data
        self.assertEqual(html.count("</script>"), 3)      # data, uPlot, report.js
        self.assertIn("uPlot", html)                      # the library is inlined
        self.assertIn("Permission is hereby granted", html)   # with its licence
        # Aggregates only: the report of 33 stacks stays small.
        self.assertLess(len(html.encode()), 400 * 1024)


class ReportLimits(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="hp-report-test-")
        self.addCleanup(self.tmp.cleanup)
        self.db = os.path.join(self.tmp.name, "prof.sqlite")
        self.out = os.path.join(self.tmp.name, "r.html")

    def data(self, *args):
        r = run_report("--db", self.db, "-o", self.out, *args)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(self.out, encoding="utf-8") as f:
            return embedded_data(f.read()), r

    def test_top_stacks_folds_the_rest_under_their_callers(self):
        events = make_db(self.db)
        d, _ = self.data("--top-stacks", "2", "--steps", "50")
        self.assertEqual(len(d["steps"]["t"]), 50)
        whole = [st for st in d["stacks"] if st["id"] is not None]
        kept = {tuple(tuple(d["frames"][fi]) for fi in st["f"])[-1] for st in whole}
        # The two stacks that ever hold the most bytes: the index and the leak.
        self.assertEqual(kept, {SPIKE, LEAK})
        # Everything else shares <module> and main with them: it is folded there, as one
        # "[other stacks]" box, and nothing is left without a caller.
        folded = [st for st in d["stacks"] if st["id"] is None]
        self.assertEqual(len(folded), 1)
        self.assertEqual([tuple(d["frames"][fi]) for fi in folded[0]["f"][:-1]], [MOD, MAIN])
        self.assertEqual(folded[0]["f"][-1], -1)
        self.assertEqual(max(d["steps"]["other"]), 0)
        seen = set()        # the other stacks live at some kept moment: these are folded
        for i in range(50):
            t_ns = T0 + int(round(d["steps"]["t"][i] * S))
            live = live_at(events, t_ns)
            rest = {st: v for st, v in live.items() if st[0] not in (SPIKE, LEAK)}
            seen.update(rest)
            self.assertEqual(series(folded[0])[i], sum(rest.values()))
        at_peak = live_at(events, T0 + int(round(d["peak"]["t"] * S)))
        seen.update(st for st in at_peak if st[0] not in (SPIKE, LEAK))
        self.assertEqual(folded[0]["folded"], len(seen))
        # The report says how much is folded, and that it is more than --fold-share.
        self.assertEqual(d["fold"]["kept"], 2)
        self.assertEqual(d["fold"]["folded_stacks"], len(seen))
        self.assertEqual(d["fold"]["max_share"], 1.0)    # config alone, before the leak
        self.assertRegex(" ".join(d["warnings"]), r'the \d+ smaller ones, folded into '
                         r'"\[other stacks\]" under their callers, still hold 100\.0% of the '
                         r'live heap at \d\.\d+ s, more than 2% \(--fold-share\)')

    def test_without_a_timeline_the_events_give_the_same_peak(self):
        events = make_db(self.db, timeline=False)
        d, _ = self.data()
        t, b = exact_peak(events)
        self.assertEqual(d["timeline"]["source"], "events")
        self.assertAlmostEqual(d["peak"]["t"], (t - T0) / S, places=6)
        self.assertEqual(d["peak"]["bytes"], b)
        self.assertEqual(max(d["timeline"]["bytes"]), b)

    def test_short_session_plots_every_event_and_agrees_on_the_peak(self):
        events = make_db(self.db)
        d, _ = self.data()                        # --timeline auto
        t, b = exact_peak(events)
        self.assertEqual(d["timeline"]["source"], "events")
        # Finer than the 101 recorded 100 ms intervals; each point is the highest level
        # at or after its instant within its bucket, never below the level there.
        tl = d["timeline"]
        self.assertGreater(len(tl["t"]), 140)
        for t_s, v in zip(tl["t"], tl["bytes"]):
            self.assertGreaterEqual(v, sum(live_at(events, T0 + int(round(t_s * S))).values()))
        self.assertEqual(max(tl["bytes"]), b)
        self.assertAlmostEqual(d["peak"]["t"], (t - T0) / S, places=6)
        self.assertEqual(d["peak"]["bytes"], b)

    def test_drops_and_a_running_session_are_warned_about(self):
        make_db(self.db, dropped=37, status="running")
        d, _ = self.data()
        text = " ".join(d["warnings"])
        self.assertIn("37 of", text)
        self.assertIn("incomplete", text)
        self.assertIn("\"never freed\" (Leaks) may include memory that was freed", text)
        self.assertIn("`heapprof run --on-full adapt` (raises the interval instead: unbiased), "
                      "`--on-full block` (waits: keeps everything) or a larger --interval", text)
        self.assertIn("still running", text)

    def test_views_of_an_earlier_build_are_read_too(self):
        # Until heapprofd reopens it, a database of an earlier build of schema version 1
        # has the extras at the end of sessions/timeline and no extension views. The
        # report reads the error, the stack depth and the level at the end from either.
        for old in (False, True):
            with self.subTest(old_views=old):
                if os.path.exists(self.db):
                    os.unlink(self.db)
                make_db(self.db, status="protocol_error", error="bad frame")
                con = sqlite3.connect(self.db)
                # The recorded timeline stops at 9 s; its last interval ended at 12345 B.
                con.execute("DELETE FROM timeline_point WHERE ts_ns > ?", (T0 + 9 * S,))
                con.execute("UPDATE timeline_point SET end_bytes = 12345 WHERE ts_ns = ?",
                            (T0 + 9 * S,))
                if old:
                    con.executescript(
                        "DROP VIEW sessions; DROP VIEW session_settings; DROP VIEW timeline;"
                        " DROP VIEW timeline_detail;"
                        " CREATE VIEW sessions AS SELECT id AS session_id, pid, ppid, argv,"
                        " executable, python_version, started_ns, ended_ns,"
                        " sample_interval_bytes, status, events_received, events_dropped,"
                        " sample_buckets, max_stack_depth, error FROM session;"
                        " CREATE VIEW timeline AS SELECT session_id, ts_ns, live_bytes,"
                        " live_count, end_bytes FROM timeline_point;")
                con.commit()
                con.close()
                d, _ = self.data("--timeline", "recorded")
                self.assertEqual(d["session"]["error"], "bad frame")
                self.assertEqual(d["session"]["max_stack_depth"], 64)
                self.assertIn("protocol_error: bad frame", " ".join(d["warnings"]))
                self.assertEqual(d["timeline"]["t"][-1], 10.0)
                self.assertEqual(d["timeline"]["bytes"][-1], 12345)

    def test_abnormal_end_is_explained(self):
        make_db(self.db, status="protocol_error", error="frame of 9 MiB exceeds the 4 MiB limit")
        d, _ = self.data()
        text = " ".join(d["warnings"])
        self.assertIn("protocol_error", text)
        self.assertIn("frame of 9 MiB exceeds the 4 MiB limit", text)
        self.assertEqual(d["session"]["error"], "frame of 9 MiB exceeds the 4 MiB limit")

    def test_newest_session_by_default_and_session_flag(self):
        make_db(self.db, sessions=3)
        d, r = self.data()
        self.assertEqual(d["session"]["id"], 3)
        self.assertIn("3 sessions", r.stderr)
        self.assertIn("--session", r.stderr)
        d, _ = self.data("--session", "1")
        self.assertEqual(d["session"]["id"], 1)
        self.assertEqual(d["session"]["pid"], 4242)

    def test_default_is_the_program_not_its_child_processes(self):
        # Sessions 2 and 3 are children of session 1 (ppid = its pid, started while it
        # ran), like multiprocessing's resource_tracker and workers: the default is 1.
        make_db(self.db, sessions=3)
        con = sqlite3.connect(self.db)
        con.execute("UPDATE session SET ended_ns = ? WHERE id = 1", (T0 + 20 * S,))
        con.execute("UPDATE session SET ppid = 4242 WHERE id IN (2, 3)")
        con.commit()
        con.close()
        d, r = self.data()
        self.assertEqual((d["session"]["id"], d["session"]["pid"]), (1, 4242))
        notes = [ln for ln in r.stderr.splitlines() if "sessions" in ln]
        self.assertEqual(len(notes), 1, r.stderr)
        self.assertRegex(notes[0], r"^heapprof report: .*prof\.sqlite holds 3 sessions; "
                                   r"showing 1 \(pid 4242, .*\) \(choose with --session\)$")
        d, r = self.data("--session", "3")
        self.assertEqual(d["session"]["id"], 3)
        self.assertNotIn("sessions", r.stderr)

    def test_allocations_without_a_stack_are_shown_as_such(self):
        make_db(self.db, nostack=True)
        d, _ = self.data()
        nostack = [st for st in d["stacks"]
                   if [d["frames"][fi][0] for fi in st["f"]] == ["[no Python stack]"]]
        self.assertEqual(len(nostack), 1)
        self.assertEqual(series(nostack[0])[-1], MiB)
        sites = {d["frames"][leak["site"]][0]: leak["bytes"] for leak in d["leaks"]}
        self.assertEqual(sites["[no Python stack]"], MiB)
        self.assertEqual(sites["remember"], 81 * 100 * KiB)

    def test_empty_session_still_gives_a_report(self):
        make_db(self.db, empty=True)
        d, _ = self.data()
        self.assertEqual(d["stacks"], [])
        self.assertEqual(d["leaks"], [])
        self.assertIn("No sampled allocations", " ".join(d["warnings"]))


class ReportErrors(unittest.TestCase):
    """Bad input: one line naming the thing, status 2, no traceback, no file written."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="hp-report-test-")
        self.addCleanup(self.tmp.cleanup)
        self.db = os.path.join(self.tmp.name, "prof.sqlite")
        self.out = os.path.join(self.tmp.name, "r.html")

    def fails(self, *args, want):
        r = run_report(*args)
        self.assertNotEqual(r.returncode, 0)
        self.assertNotIn("Traceback", r.stderr)
        lines = r.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertIn(want, lines[0])
        self.assertFalse(os.path.exists(self.out))
        return lines[0]

    def test_missing_database(self):
        self.fails("--db", self.db, "-o", self.out, want="prof.sqlite")

    def test_not_a_heapprof_database(self):
        with open(self.db, "w") as f:
            f.write("hello\n" * 100)
        self.fails("--db", self.db, "-o", self.out, want="not a heapprof database")
        os.unlink(self.db)
        con = sqlite3.connect(self.db)
        con.execute("CREATE TABLE t (x)")
        con.commit()
        con.close()
        self.fails("--db", self.db, "-o", self.out, want="not a heapprof database")

    def test_unknown_session(self):
        make_db(self.db, sessions=2)
        line = self.fails("--db", self.db, "--session", "9", "-o", self.out,
                          want="session 9 is not in")
        self.assertIn("1, 2", line)

    def test_limits_are_named(self):
        make_db(self.db)
        self.fails("--db", self.db, "--steps", "100000", "-o", self.out, want="2..1000")
        self.fails("--db", self.db, "--top-stacks", "0", "-o", self.out, want="1..20000")
        self.fails("--db", self.db, "--fold-share", "0.9", "-o", self.out, want="0..0.5")

    def test_unwritable_output(self):
        make_db(self.db)
        self.fails("--db", self.db, "-o", os.path.join(self.tmp.name, "no", "r.html"),
                   want="does not exist")


def make_tail_db(path, n_small=3000):
    """A peak like sphinx's: one 20 MiB stack, and n_small distinct small stacks (under 30
    parse_k callers) that together hold a third of it, all live from 2 s to 8 s."""
    ev = [((SPIKE, MAIN, MOD), 1.0, 9.0, 20 * MiB)]
    for k in range(n_small):
        node = (f"node_{k}", "tree.py", 1000 + k)
        parse = (f"parse_{k % 30}", "parser.py", 10 + k % 30)
        ev.append(((node, parse, MAIN, MOD), 2.0 + k * 1e-6, 8.0, 3 * KiB + k))
    with open(os.path.join(SOURCE_ROOT, "schema", "schema.sql"), encoding="utf-8") as f:
        schema = f.read()
    con = sqlite3.connect(path)
    try:
        con.executescript(schema)
        frame_id, rows = {}, []
        for stack_id, (stack, a, f, b) in enumerate(ev, 1):
            for fr in stack:
                if fr not in frame_id:
                    frame_id[fr] = len(frame_id) + 1
                    con.execute("INSERT INTO frame (id, function, filename, lineno)"
                                " VALUES (?, ?, ?, ?)", (frame_id[fr],) + fr)
            con.execute("INSERT INTO stack (id, hash, depth, truncated) VALUES (?,?,?,0)",
                        (stack_id, stack_id, len(stack)))
            con.executemany("INSERT INTO stack_frame (stack_id, depth, frame_id)"
                            " VALUES (?, ?, ?)",
                            [(stack_id, d, frame_id[fr]) for d, fr in enumerate(stack)])
            rows.append((ns(a), 0x1000 + 64 * stack_id, b, b, stack_id, ns(f)))
        con.execute("INSERT INTO session (id, pid, ppid, argv, executable, python_version,"
                    " started_ns, ended_ns, sample_interval_bytes, max_stack_depth, status,"
                    " events_received, events_dropped) VALUES (1, 7, 1, '[\"sphinx\"]',"
                    " 'python3', '3.11.7', ?, ?, 65536, 64, 'exited', ?, 0)",
                    (T0, T0 + 10 * S, 2 * len(rows)))
        con.executemany("INSERT INTO alloc (session_id, ts_ns, thread_id, domain, address,"
                        " size, est_bytes, stack_id, freed_ns) VALUES (1,?,1,1,?,?,?,?,?)",
                        rows)
        con.commit()
    finally:
        con.close()
    return ev


class ReportFolding(unittest.TestCase):
    """Issue 13 item 11: the flame graph folded a third of sphinx's peak into "[other
    stacks]" (the top 400 stacks by count were kept). Stacks are now kept by bytes until
    the folded rest holds at most --fold-share of the live heap at every kept moment, the
    rest is folded under its callers, and the report says how much is folded."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="hp-report-fold-")
        cls.db = os.path.join(cls.tmp.name, "tail.sqlite")
        cls.events = make_tail_db(cls.db)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def data(self, *args):
        out = os.path.join(self.tmp.name, "fold.html")
        r = run_report("--db", self.db, "-o", out, *args)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(out, encoding="utf-8") as f:
            html = f.read()
        return embedded_data(html), len(html.encode())

    def check_adds_up(self, d):
        for i, t in enumerate(d["steps"]["t"]):
            live = sum(live_at(self.events, T0 + int(round(t * S))).values())
            self.assertEqual(d["steps"]["total"][i], live)
            self.assertEqual(sum(series(st)[i] for st in d["stacks"]) + d["steps"]["other"][i],
                             live)

    def test_folded_stacks_hold_at_most_a_few_percent(self):
        d, size = self.data()
        self.check_adds_up(d)
        fold = d["fold"]
        self.assertLessEqual(fold["max_share"], 0.02)
        self.assertLessEqual(fold["peak_share"], 0.02)
        self.assertGreater(fold["folded_stacks"], 0)       # the smallest are still folded
        self.assertEqual(fold["kept"] + fold["folded_stacks"], 3001)
        for i, total in enumerate(d["steps"]["total"]):
            folded = sum(series(st)[i] for st in d["stacks"] if st["id"] is None)
            self.assertLessEqual(folded + d["steps"]["other"][i], 0.02 * total + 1)
        self.assertEqual([w for w in d["warnings"] if "fold" in w], [])
        # Thousands of stacks that hold the same bytes for long stretches stay small.
        self.assertLess(size, 1500 * 1024)

    def test_beyond_top_stacks_the_rest_is_folded_under_its_callers_and_said(self):
        d, _ = self.data("--top-stacks", "100")
        self.check_adds_up(d)
        self.assertEqual(d["fold"]["kept"], 100)
        self.assertEqual(max(d["steps"]["other"]), 0)      # nothing without a caller
        folded = [st for st in d["stacks"] if st["id"] is None]
        callers = {d["frames"][st["f"][-2]][0] for st in folded}
        self.assertEqual(callers, {f"parse_{k}" for k in range(30)})
        self.assertEqual(sum(st["folded"] for st in folded), 2901)
        share = d["fold"]["max_share"]
        self.assertGreater(share, 0.2)
        self.assertIn(f"still hold {100 * share:.1f}% of the live heap", " ".join(d["warnings"]))


class ReportWhileRecording(unittest.TestCase):
    """A report of a recording in progress: heapprofd keeps writing (WAL) while we read."""

    def test_report_during_a_real_recording(self):
        heapprofd = os.environ.get("HEAPPROFD") or os.path.join(
            os.environ.get("HEAPPROF_BUILD_ROOT", ""), "daemon", "heapprofd")
        with tempfile.TemporaryDirectory(prefix="hp-report-live-") as tmp:
            db, out = os.path.join(tmp, "live.sqlite"), os.path.join(tmp, "live.html")
            proc = subprocess.Popen(
                [PYTHON, "-m", "heapprof", "run", "-o", db,
                 os.path.join(SOURCE_ROOT, "examples", "steady.py"), "6"],
                cwd=tmp, env=dict(os.environ, HEAPPROFD=heapprofd), start_new_session=True,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                deadline = time.monotonic() + 20
                n = 0
                while n < 50:
                    self.assertIsNone(proc.poll(), "the recording ended before we could read it")
                    self.assertLess(time.monotonic(), deadline, "no allocations recorded in 20 s")
                    time.sleep(0.1)
                    n = _count_allocations(db)
                r = run_report("--db", db, "-o", out)
                self.assertIsNone(proc.poll(), "the recording ended during the report")
                self.assertEqual(r.returncode, 0, r.stderr)
                with open(out, encoding="utf-8") as f:
                    d = embedded_data(f.read())
                self.assertEqual(d["session"]["status"], "running")
                self.assertIn("still running", " ".join(d["warnings"]))
                self.assertGreaterEqual(d["session"]["allocations"], 50)
                # The recording goes on undisturbed and ends cleanly.
                _, err = proc.communicate(timeout=60)
                self.assertEqual(proc.returncode, 0, err.decode(errors="replace"))
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)


def _count_allocations(db):
    if not os.path.exists(db):
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT COUNT(*) FROM allocations").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0        # not created yet


class ReportCommandLine(unittest.TestCase):
    def test_heapprof_cli_dispatches_report(self):
        with tempfile.TemporaryDirectory(prefix="hp-report-test-") as tmp:
            db, out = os.path.join(tmp, "p.sqlite"), os.path.join(tmp, "r.html")
            make_db(db)
            r = subprocess.run([PYTHON, "-m", "heapprof.cli", "report", "--db", db, "-o", out],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(out, encoding="utf-8") as f:
                self.assertEqual(embedded_data(f.read())["session"]["id"], 1)

    def test_write_report_function(self):
        with tempfile.TemporaryDirectory(prefix="hp-report-test-") as tmp:
            db, out = os.path.join(tmp, "p.sqlite"), os.path.join(tmp, "r.html")
            make_db(db, sessions=2)
            code = ("import sys; from heapprof.report import write_report; "
                    "write_report(sys.argv[1], sys.argv[2], session=1)")
            r = subprocess.run([PYTHON, "-c", code, db, out], capture_output=True, text=True,
                               timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(out, encoding="utf-8") as f:
                self.assertEqual(embedded_data(f.read())["session"]["id"], 1)


if __name__ == "__main__":
    unittest.main()
