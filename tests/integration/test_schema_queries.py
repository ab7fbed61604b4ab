"""Runs every ```sql block of schema/README.md against a hand-made recording.

The recording is built through the storage tables from schema/schema.sql, with a scenario
small enough to work out by hand (the comments show the arithmetic). Each query in the
README is asserted by its heading against the exact expected rows, so a change to the
documented queries, the views or the schema that alters an answer fails here. The queries
run on a read-only connection, as users are told to open recordings.
"""
import math
import os
import re
import sqlite3
import tempfile
import unittest

SOURCE_ROOT = os.environ.get("HEAPPROF_SOURCE_ROOT",
                             os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SCHEMA_SQL = os.path.join(SOURCE_ROOT, "schema", "schema.sql")
README = os.path.join(SOURCE_ROOT, "schema", "README.md")

SEC = 1_000_000_000
S1 = 1_000_000 * SEC          # session 1 starts at t = 1e6 s since the epoch
S2 = S1 + 2 * SEC             # session 2 starts 2 s later and overlaps session 1


def t1(seconds):
    """Session 1 time: seconds since its start, in ns since the epoch."""
    return S1 + round(seconds * SEC)


def t2(seconds):
    return S2 + round(seconds * SEC)


# frame_id: (function, filename, lineno)
FRAMES = {
    1: ("main", "app.py", 10),
    2: ("load", "app.py", 20),
    3: ("parse", "lib.py", 5),
    4: ("helper", "lib.py", 50),
    5: ("<module>", "app.py", 1),
}
# stack_id: (truncated, frame ids innermost first)
STACKS = {
    1: (0, [2, 1, 5]),            # load app.py:20
    2: (0, [3, 2, 1, 5]),         # parse lib.py:5
    3: (0, [4, 1, 5]),            # helper lib.py:50
    4: (1, [3, 1]),               # parse lib.py:5, cut at max_stack_depth
}
RAW, MEM, OBJ, NATIVE = 0, 1, 2, 3
# (id, session, ts, domain, size, est_bytes, stack_id, freed)
ALLOCS = [
    (1, 1, t1(0.5), OBJ, 1000, 2048, 1, t1(1.5)),
    (2, 1, t1(1.2), OBJ, 100, 1024, 2, None),
    (3, 1, t1(1.8), OBJ, 200, 1024, 2, t1(6.0)),
    (4, 1, t1(2.5), MEM, 5000, 5000, 3, None),
    (5, 1, t1(3.1), MEM, 3000, 3072, 1, t1(4.0)),
    (6, 1, t1(3.7), OBJ, 50, 1024, 4, None),
    (7, 1, t1(4.5), RAW, 4000, 4000, None, t1(5.0)),
    (8, 1, t1(5.2), OBJ, 300, 1024, 2, None),
    (9, 1, t1(1.9), MEM, 10000, 10000, 1, t1(2.2)),
    # Session 2 overlaps session 1 in time: a query that forgets its session filter
    # would count these (b1 is live at session 1's 4.7 s).
    (10, 2, t2(0.1), OBJ, 64, 64, 1, None),
    (11, 2, t2(0.2), OBJ, 128, 128, 3, t2(0.3)),
    (12, 2, t2(0.4), NATIVE, 4096, 4096, None, None),
]
# Allocating thread (kernel thread id) of each allocation; the rest are 7001 (session 1)
# and 7002 (session 2), so session 2 reuses a thread id of session 1 for another thread.
THREAD_OF = {4: 7002, 5: 7002, 7: 7002}
# (session, thread_id, name)
THREADS = [
    (1, 7001, "MainThread"),
    (1, 7002, "loader"),
    (2, 7002, "worker-main"),
]
# (session, ts, label)
MARKERS = [
    (1, t1(2.0), "loaded"),
    (1, t1(4.7), "parsed"),
    (2, t2(0.5), "started"),
]
# Session 1's estimated live heap, event by event (est_bytes):
#   0.5 +2048 =2048 | 1.2 +1024 =3072 | 1.5 -2048 =1024 | 1.8 +1024 =2048 | 1.9 +10000 =12048
#   2.2 -10000 =2048 | 2.5 +5000 =7048 | 3.1 +3072 =10120 | 3.7 +1024 =11144
#   4.0 -3072 =8072 | 4.5 +4000 =12072 | 5.0 -4000 =8072 | 5.2 +1024 =9096 | 6.0 -1024 =8072
# One-second intervals: highest level (the level at the start counts), live count there
# (sum of est_bytes/size, rounded), level at the end. [7,8) is the drop row after [6,7).
TIMELINE = [
    # (session, ts, live_bytes, live_count, end_bytes)
    (1, t1(0), 2048, 2, 2048),
    (1, t1(1), 12048, 16, 12048),
    (1, t1(2), 12048, 16, 7048),
    (1, t1(3), 11144, 38, 11144),
    (1, t1(4), 12072, 38, 12072),
    (1, t1(5), 12072, 38, 9096),
    (1, t1(6), 9096, 40, 8072),
    (1, t1(7), 8072, 35, 8072),
    # Session 2: +64 at 0.1, +128 at 0.2, -128 at 0.3, +4096 (native) at 0.4.
    (2, t2(0), 4160, 2, 4160),
]

# The public views with exactly the names and columns of issue 2, in that order.
PUBLIC_VIEWS = {
    "sessions": ["session_id", "pid", "ppid", "argv", "executable", "python_version",
                 "started_ns", "ended_ns", "sample_interval_bytes", "status",
                 "events_received", "events_dropped"],
    "frames": ["frame_id", "function", "filename", "lineno"],
    "stack_frames": ["stack_id", "depth", "frame_id"],
    "allocations": ["session_id", "alloc_id", "ts_ns", "thread_id", "domain", "address",
                    "size", "est_bytes", "stack_id", "freed_ns"],
    "timeline": ["session_id", "ts_ns", "live_bytes", "live_count"],
}
# heapprof's extensions: what it records beyond the public views, in views of their own.
EXTENSION_VIEWS = {
    "stacks": ["stack_id", "depth", "truncated"],
    "session_settings": ["session_id", "sample_buckets", "max_stack_depth", "error",
                         "argv_omitted"],
    "timeline_detail": ["session_id", "ts_ns", "live_bytes", "live_count", "end_bytes"],
    "sampling_changes": ["session_id", "change_no", "ts_ns", "previous_interval_bytes",
                         "sample_interval_bytes"],
    "threads": ["session_id", "thread_id", "name"],
    "markers": ["session_id", "ts_ns", "label"],
    "aggregated_sessions": ["session_id", "bucket_ns"],
    "stack_buckets": ["session_id", "bucket_ns", "stack_id", "alloc_bytes", "alloc_count",
                      "alloc_samples", "freed_bytes", "freed_count", "freed_samples",
                      "alloc_var", "freed_var"],
    "stack_live": ["session_id", "end_ns", "stack_id", "live_bytes", "live_samples"],
    "size_classes": ["session_id", "size_class", "min_size", "max_size", "samples",
                     "est_count", "est_bytes"],
    "site_sessions": ["session_id", "bucket_ns", "done_ns"],
    "site_buckets": ["session_id", "bucket_ns", "filename", "lineno", "frame_id",
                     "before_bytes", "high_bytes", "end_bytes"],
}

# Session 1 (started at 1024 bytes) adapted its sampling interval twice within one clock
# tick at 3 s, then once more at 6.5 s; the order of storage (id) orders the equal times.
# (id, session, ts, sample_interval_bytes)
SAMPLING_CHANGES = [
    (1, 1, t1(3.0), 2048),
    (2, 1, t1(3.0), 4096),
    (3, 1, t1(6.5), 8192),
]

PARAMS = {
    "session": 1,
    "t_ns": t1(4.7),
    "filename": "lib.py",
    "lineno": 5,
    "stack_id": 2,
}

# Expected rows per README heading, for PARAMS on the scenario above.
EXPECTED = {
    "Sessions in this recording": [
        # est_allocated_bytes: 2048+1024+1024+5000+3072+1024+4000+1024+10000 = 28216
        (1, 100, "app.py", "exited", 10.0, 9, 28216, 0),
        (2, 200, "worker.py", "running", None, 3, 4288, 3),
    ],
    "(a) Top stacks by live bytes at time T": [
        # Live at 4.7 s: allocs 2, 3 (stack 2), 4 (stack 3), 6 (stack 4), 7 (no stack).
        # est_count: 5000/5000; 4000/4000; 1024/100 + 1024/200 = 15.36; 1024/50 = 20.48.
        (3, 5000, 1.0, 1, "helper", "lib.py:50"),
        (None, 4000, 1.0, 1, None, None),
        (2, 2048, 15.4, 2, "parse", "lib.py:5"),
        (4, 1024, 20.5, 1, "parse", "lib.py:5"),
    ],
    "(b) Allocated and never freed, by allocation site": [
        # Never freed in session 1: 4 (helper), 2, 6 and 8 (all parse lib.py:5).
        ("helper", "lib.py", 50, 5000, 1),
        ("parse", "lib.py", 5, 3072, 3),
    ],
    "(c) Allocation rate per second for one file:line": [
        # lib.py:5 allocates at 1.2, 1.8 (second 1), 3.7 (second 3) and 5.2 (second 5);
        # the session lasts 10 s, so seconds 0..9.
        (0, 0, 0), (1, 2048, 2), (2, 0, 0), (3, 1024, 1), (4, 0, 0),
        (5, 1024, 1), (6, 0, 0), (7, 0, 0), (8, 0, 0), (9, 0, 0),
    ],
    "(d) Total live bytes over time": [
        (ts, (ts - S1) / SEC, live, count)
        for (session, ts, live, count, _) in TIMELINE if session == 1
    ],
    "Level at the end of each interval (heapprof extension)": [
        ((ts - S1) / SEC, live, end, live - end)
        for (session, ts, live, _, end) in TIMELINE if session == 1
    ],
    "Sampling settings of every session (heapprof extension)": [
        (1, 1024, None, 64, "exited", None),
        (2, 1, None, 32, "running", None),
    ],
    "Live heap at each marker (heapprof extension)": [
        # At 2.0 s: allocs 2, 3 and 9 (1024 + 1024 + 10000); at 4.7 s as in query (a).
        (2.0, "loaded", 12048),
        (4.7, "parsed", 12072),
    ],
    "Left behind between two markers, with a 95% interval (heapprof extension)": [
        # Made in (2.0, 4.7] and live at 4.7: allocs 4 (helper, est = size), 7 (no stack,
        # freed at 5.0) and 6 (parse, 1024 for 50 bytes: variance 1024 * 974); alloc 5 was
        # freed at 4.0.
        ("helper", "lib.py:50", 5000, 0.0, 1),
        (None, None, 4000, 0.0, 1),
        ("parse", "lib.py:5", 1024, 1.96 * math.sqrt(1024 * 974), 1),
    ],
    "Allocated bytes by thread (heapprof extension)": [
        # 7001: allocs 1, 2, 3, 6, 8, 9; 7002: allocs 4, 5, 7.
        (7001, "MainThread", 16144, 6),
        (7002, "loader", 12072, 3),
    ],
    "Sampling interval changes (heapprof extension)": [
        (1, 3.0, 1024, 2048),
        (2, 3.0, 2048, 4096),
        (3, 6.5, 4096, 8192),
    ],
    "Starting and final sampling interval of every session (heapprof extension)": [
        (1, 1024, 8192, 3),
        (2, 1, 1, 0),
    ],
    "Peak moment": [
        # 12072 is reached in [4,5) and [5,6); the earliest wins.
        (t1(4), 4.0, 12072),
    ],
    "Exact peak moment from the allocations": [
        # The running level above peaks at 12072 when alloc 7 arrives at 4.5 s.
        (t1(4.5), 12072),
    ],
    "Full stack of one stack_id": [
        (0, "parse", "lib.py", 5, 0),
        (1, "load", "app.py", 20, 0),
        (2, "main", "app.py", 10, 0),
        (3, "<module>", "app.py", 1, 0),
    ],
    "Most allocated by site, freed or not": [
        # load: 2048+3072+10000, all freed; parse: 4x1024, alloc 3 freed; raw: 4000 freed.
        ("load", "app.py:20", 15120, 15120, 3),
        ("helper", "lib.py:50", 5000, 0, 1),
        ("parse", "lib.py:5", 4096, 1024, 4),
        (None, None, 4000, 4000, 1),
    ],
    "Live bytes at time T by allocator domain": [
        # Live at 4.7 s: 4 (mem 5000), 7 (raw 4000), 2, 3, 6 (obj 3 x 1024).
        ("mem", 5000, 1),
        ("raw", 4000, 1),
        ("obj", 3072, 3),
    ],
}


def build_recording(path):
    with open(SCHEMA_SQL, encoding="utf-8") as f:
        schema = f.read()
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.executescript("BEGIN;\n" + schema + "\nCOMMIT;")
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("BEGIN")
        con.execute(
            "INSERT INTO session (id, pid, ppid, argv, executable, python_version, started_ns,"
            " ended_ns, sample_interval_bytes, max_stack_depth, status, events_received,"
            " events_dropped) VALUES (1, 100, 1, '[\"app.py\", \"--fast\"]',"
            " '/usr/bin/python3', '3.11.7', ?, ?, 1024, 64, 'exited', 20, 0)",
            (S1, t1(10)))
        con.execute(
            "INSERT INTO session (id, pid, ppid, argv, executable, python_version, started_ns,"
            " ended_ns, sample_interval_bytes, max_stack_depth, status, events_received,"
            " events_dropped) VALUES (2, 200, 100, '[\"worker.py\"]', '/usr/bin/python3',"
            " '3.11.7', ?, NULL, 1, 32, 'running', 3, 3)", (S2,))
        for fid, (func, filename, lineno) in FRAMES.items():
            con.execute("INSERT INTO frame (id, function, filename, lineno) VALUES (?, ?, ?, ?)",
                        (fid, func, filename, lineno))
        for sid, (truncated, frame_ids) in STACKS.items():
            con.execute("INSERT INTO stack (id, hash, depth, truncated) VALUES (?, ?, ?, ?)",
                        (sid, hash(tuple(frame_ids)) & 0x7fffffff, len(frame_ids), truncated))
            for depth, fid in enumerate(frame_ids):
                con.execute("INSERT INTO stack_frame (stack_id, depth, frame_id) VALUES (?, ?, ?)",
                            (sid, depth, fid))
        for (aid, session, ts, domain, size, est, stack, freed) in ALLOCS:
            con.execute(
                "INSERT INTO alloc (id, session_id, ts_ns, thread_id, domain, address, size,"
                " est_bytes, stack_id, freed_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (aid, session, ts, THREAD_OF.get(aid, 7000 + session), domain,
                 0x7f0000001000 + 64 * aid, size, est, stack, freed))
        con.executemany("INSERT INTO timeline_point (session_id, ts_ns, live_bytes, live_count,"
                        " end_bytes) VALUES (?, ?, ?, ?, ?)", TIMELINE)
        con.executemany("INSERT INTO sampling_change (id, session_id, ts_ns,"
                        " sample_interval_bytes) VALUES (?, ?, ?, ?)", SAMPLING_CHANGES)
        con.executemany("INSERT INTO thread_name (session_id, thread_id, name)"
                        " VALUES (?, ?, ?)", THREADS)
        con.executemany("INSERT INTO marker (session_id, ts_ns, label) VALUES (?, ?, ?)",
                        MARKERS)
        con.execute("COMMIT")
    finally:
        con.close()


def readme_sql_blocks():
    """[(heading, sql)] for every ```sql block, with the nearest heading above it."""
    blocks = []
    heading = None
    block = None
    with open(README, encoding="utf-8") as f:
        for line in f:
            stripped = line.rstrip("\n")
            if block is not None:
                if stripped.strip() == "```":
                    blocks.append((heading, "\n".join(block)))
                    block = None
                else:
                    block.append(stripped)
            elif stripped.strip().startswith("```sql"):
                block = []
            elif stripped.startswith("#"):
                heading = stripped.lstrip("#").strip()
    if block is not None:
        raise AssertionError("README.md: unterminated ```sql block under %r" % heading)
    return blocks


def readme_view_columns():
    """{view: [columns]} from the '### `view`' tables of the README."""
    views = {}
    current = None
    with open(README, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"^###\s+`(\w+)`", line)
            if m:
                current = views.setdefault(m.group(1), [])
                continue
            if line.startswith("#"):
                current = None
                continue
            m = re.match(r"^\|\s*`(\w+)`\s*\|", line)
            if m and current is not None:
                current.append(m.group(1))
    return views


def same_rows(got, want):
    if len(got) != len(want):
        return False
    for g, w in zip(got, want):
        if len(g) != len(w):
            return False
        for a, b in zip(g, w):
            if isinstance(a, float) or isinstance(b, float):
                if a is None or b is None or not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9):
                    return False
            elif a != b or type(a) is not type(b):
                return False
    return True


class SchemaQueriesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory(prefix="hp-schema-queries-")
        cls.db_path = os.path.join(cls._tmp.name, "prof.sqlite")
        try:
            build_recording(cls.db_path)
            uri = "file:%s?mode=ro" % cls.db_path
            cls.con = sqlite3.connect(uri, uri=True)
        except BaseException:
            cls._tmp.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.con.close()
        cls._tmp.cleanup()

    def test_every_documented_query_is_checked(self):
        blocks = readme_sql_blocks()
        headings = [h for h, _ in blocks]
        self.assertGreaterEqual(len(blocks), len(EXPECTED),
                                "README.md has fewer ```sql blocks than documented queries")
        self.assertEqual(len(headings), len(set(headings)),
                         "each ```sql block needs its own heading: %r" % headings)
        self.assertEqual(sorted(headings), sorted(EXPECTED),
                         "README.md query headings and this test's expectations differ")

    def test_readme_queries_give_expected_answers(self):
        blocks = readme_sql_blocks()
        self.assertTrue(blocks)
        for heading, sql in blocks:
            with self.subTest(query=heading):
                self.assertIn(heading, EXPECTED, "no expected answer for this README query")
                try:
                    rows = self.con.execute(sql, PARAMS).fetchall()
                except sqlite3.Error as e:
                    self.fail("README query %r fails: %s\n%s" % (heading, e, sql))
                want = EXPECTED[heading]
                self.assertTrue(same_rows(rows, want),
                                "README query %r\n got: %r\nwant: %r" % (heading, rows, want))

    def test_queries_use_only_public_views(self):
        storage = {"session", "frame", "stack", "stack_frame", "alloc", "timeline_point",
                   "sampling_change", "thread_name", "marker"}
        for heading, sql in readme_sql_blocks():
            names = set(re.findall(r"\b(?:FROM|JOIN)\s+(\w+)", sql, re.IGNORECASE))
            with self.subTest(query=heading):
                self.assertFalse(names & storage, "queries storage tables %s" % (names & storage))

    def test_public_views_have_exactly_the_specified_columns(self):
        # The public interface (issue 2): these names, these columns, in this order.
        for view, columns in PUBLIC_VIEWS.items():
            with self.subTest(view=view):
                got = [r[1] for r in self.con.execute("PRAGMA table_info(%s)" % view)]
                self.assertEqual(got, columns)
        for view, columns in EXTENSION_VIEWS.items():
            with self.subTest(view=view):
                got = [r[1] for r in self.con.execute("PRAGMA table_info(%s)" % view)]
                self.assertEqual(got, columns)

    def test_extension_views_match_the_public_ones(self):
        # session_settings has one row per session, timeline_detail the rows of timeline.
        self.assertEqual(
            self.con.execute("SELECT session_id FROM sessions ORDER BY 1").fetchall(),
            self.con.execute("SELECT session_id FROM session_settings ORDER BY 1").fetchall())
        self.assertEqual(
            self.con.execute("SELECT * FROM timeline ORDER BY 1, 2").fetchall(),
            self.con.execute("SELECT session_id, ts_ns, live_bytes, live_count"
                             " FROM timeline_detail ORDER BY 1, 2").fetchall())
        self.assertEqual(
            self.con.execute("SELECT error, sample_buckets, max_stack_depth"
                             " FROM session_settings WHERE session_id = 2").fetchone(),
            (None, None, 32))

    def test_readme_documents_every_view_column(self):
        views = [r[0] for r in self.con.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'view' ORDER BY name")]
        self.assertEqual(views, sorted(list(PUBLIC_VIEWS) + list(EXTENSION_VIEWS)))
        documented = readme_view_columns()
        for view in views:
            columns = [r[1] for r in self.con.execute("PRAGMA table_info(%s)" % view)]
            with self.subTest(view=view):
                self.assertIn(view, documented, "README.md has no '### `%s`' section" % view)
                self.assertEqual(documented[view], columns,
                                 "README.md columns of %s differ from the view" % view)

    def test_scenario_is_consistent(self):
        # The expected answers rest on the hand-made timeline matching the allocations:
        # recompute each interval's maximum and end level from the allocation events.
        events = []
        for (_, session, ts, _, _, est, _, freed) in ALLOCS:
            if session == 1:
                events.append((ts, est))
                if freed is not None:
                    events.append((freed, -est))
        events.sort()
        level = 0
        for (_, ts, live, _, end) in [r for r in TIMELINE if r[0] == 1]:
            high = level
            for ets, delta in events:
                if ts <= ets < ts + SEC:
                    level += delta
                    high = max(high, level)
            self.assertEqual((high, level), (live, end), "interval at %d s" % ((ts - S1) // SEC))


if __name__ == "__main__":
    unittest.main()
