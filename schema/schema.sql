-- heapprof database schema, version 2.
--
-- The public, stable interface is the set of VIEWS at the end of this file
-- (sessions, frames, stack_frames, allocations, timeline, and the heapprof extensions
-- stacks, session_settings, timeline_detail, sampling_changes, threads, markers);
-- schema/README.md documents them. The tables are storage, designed for fast batched
-- ingestion by heapprofd, and may change from one user_version to the next.
--
-- All timestamps are integer nanoseconds since the Unix epoch.
-- application_id 0x68707266 is 'hprf'. Bump user_version on any storage change and
-- teach schema/hp_schema.c to refuse (or migrate) older and newer versions: heapprofd
-- migrates a version 1 database to this version when it opens it (hp_schema.c,
-- migrate_v1), and refuses newer ones.
PRAGMA application_id = 1752199782;
PRAGMA user_version = 2;

CREATE TABLE IF NOT EXISTS session (
  id                    INTEGER PRIMARY KEY,
  pid                   INTEGER NOT NULL,
  ppid                  INTEGER NOT NULL,
  argv                  TEXT    NOT NULL,             -- JSON array of strings
  executable            TEXT    NOT NULL,
  python_version        TEXT    NOT NULL,
  started_ns            INTEGER NOT NULL,
  ended_ns              INTEGER,                      -- NULL while running
  sample_interval_bytes INTEGER NOT NULL,             -- 1: every allocation; 0: size buckets
  sample_buckets        TEXT,                         -- JSON [[max_size, rate], ...] or NULL
  max_stack_depth       INTEGER NOT NULL,
  status                TEXT    NOT NULL DEFAULT 'running'
                        CHECK (status IN ('running', 'exited', 'disconnected', 'protocol_error',
                                          'hooks_replaced')),
  error                 TEXT,                         -- why a protocol_error session was closed
  events_received       INTEGER NOT NULL DEFAULT 0,
  events_dropped        INTEGER NOT NULL DEFAULT 0,
  argv_omitted          INTEGER NOT NULL DEFAULT 0    -- argv entries not stored (over the bound)
);

-- Frames and stacks are interned across sessions: one row per distinct value.
CREATE TABLE IF NOT EXISTS frame (
  id       INTEGER PRIMARY KEY,
  function TEXT    NOT NULL,
  filename TEXT    NOT NULL,
  lineno   INTEGER NOT NULL,
  UNIQUE (filename, lineno, function)
);

CREATE TABLE IF NOT EXISTS stack (
  id        INTEGER PRIMARY KEY,
  hash      INTEGER NOT NULL,   -- hash of (truncated, frame ids); collisions compared in full
  depth     INTEGER NOT NULL,
  truncated INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS stack_by_hash ON stack (hash);

CREATE TABLE IF NOT EXISTS stack_frame (
  stack_id INTEGER NOT NULL,
  depth    INTEGER NOT NULL,    -- 0 is the innermost frame, where the allocation happened
  frame_id INTEGER NOT NULL,
  PRIMARY KEY (stack_id, depth)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS stack_frame_by_frame ON stack_frame (frame_id);

-- One row per sampled allocation. freed_ns is filled in when its free arrives.
CREATE TABLE IF NOT EXISTS alloc (
  id         INTEGER PRIMARY KEY,
  session_id INTEGER NOT NULL,
  ts_ns      INTEGER NOT NULL,
  thread_id  INTEGER NOT NULL,
  domain     INTEGER NOT NULL,  -- 0 raw, 1 mem, 2 obj, 3 native
  address    INTEGER NOT NULL,
  size       INTEGER NOT NULL,
  est_bytes  INTEGER NOT NULL,
  stack_id   INTEGER,           -- NULL: no Python stack (e.g. raw domain without the GIL)
  freed_ns   INTEGER
);
CREATE INDEX IF NOT EXISTS alloc_by_session_ts ON alloc (session_id, ts_ns);

-- Estimated live heap per timeline interval: the highest level reached within the
-- interval (so short spikes keep their true height) and the level at its end.
CREATE TABLE IF NOT EXISTS timeline_point (
  session_id INTEGER NOT NULL,
  ts_ns      INTEGER NOT NULL,  -- start of the interval
  live_bytes INTEGER NOT NULL,  -- highest estimated live bytes within the interval
  live_count INTEGER NOT NULL,  -- estimated live allocations at that highest point
  end_bytes  INTEGER NOT NULL,  -- estimated live bytes at the end of the interval
  PRIMARY KEY (session_id, ts_ns)
) WITHOUT ROWID;

-- One row per change of a session's sampling interval, in the order heapprofd received
-- them (id). An agent recording with the on-full policy 'adapt' raises its interval when
-- its send buffer runs full, instead of dropping events, and reports each change with a
-- COUNTERS message (proto/PROTOCOL.md 2.5). The session's starting interval is
-- session.sample_interval_bytes; a row is written only when a COUNTERS' interval differs
-- from the session's current one. ts_ns is when the agent changed it (wall clock).
--
-- This table was added within schema version 1 (schema/README.md, "Versions"): a
-- database written before it has none until heapprofd opens it again, which creates it
-- here, and readers treat its absence as "no change". hp_schema.c therefore does not
-- count a table whose statement carries the marker below as one a version 1 database
-- must have. Keep the marker inside the statement: SQLite stores the statement's text.
CREATE TABLE IF NOT EXISTS sampling_change ( -- heapprof: added within version 1
  id                    INTEGER PRIMARY KEY,
  session_id            INTEGER NOT NULL,
  ts_ns                 INTEGER NOT NULL,
  sample_interval_bytes INTEGER NOT NULL      -- the mean interval from ts_ns on
);
CREATE INDEX IF NOT EXISTS sampling_change_by_session ON sampling_change (session_id, id);

-- Tables added in version 2 carry the marker below in their statement: a version 1
-- database lacks them until heapprofd migrates it, and is not damaged for that
-- (hp_schema.c does not require them of a version 1 database).
--
-- The name of each named thread of a session (THREAD_DEF, proto/PROTOCOL.md 2.7); the
-- latest name an agent sent for a thread replaces earlier ones.
CREATE TABLE IF NOT EXISTS thread_name ( -- heapprof: added in version 2
  session_id INTEGER NOT NULL,
  thread_id  INTEGER NOT NULL,  -- as in alloc.thread_id: the kernel thread id
  name       TEXT    NOT NULL,
  PRIMARY KEY (session_id, thread_id)
) WITHOUT ROWID;

-- Timestamped markers a program set with heapprof.mark(label) (MARKER, PROTOCOL.md 2.8),
-- in the order heapprofd received them (id).
CREATE TABLE IF NOT EXISTS marker ( -- heapprof: added in version 2
  id         INTEGER PRIMARY KEY,
  session_id INTEGER NOT NULL,
  ts_ns      INTEGER NOT NULL,
  label      TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS marker_by_session_ts ON marker (session_id, ts_ns);

-- Aggregates heapprofd keeps while it records, so that readers answer snapshots, top
-- sites, flame graphs and the size histogram of long sessions without reading every
-- allocation (schema/README.md, "Aggregates"). heapprofd writes them in the same
-- transaction as the alloc rows they sum, so they always equal a GROUP BY over those
-- rows, also after a kill. They were added within version 2, as sampling_change was
-- within version 1: a version 2 database written before them has none until heapprofd
-- opens it again, and the sessions recorded before that have no aggregates (no
-- agg_session row): readers then read the rows. hp_schema.c does not require a table
-- carrying the marker below, whatever the version.
--
-- One row per session recorded with aggregates: the width of its buckets. A bucket is
-- [k * bucket_ns, (k + 1) * bucket_ns) since the Unix epoch.
CREATE TABLE IF NOT EXISTS agg_session ( -- heapprof: added within version 2
  session_id INTEGER PRIMARY KEY,
  bucket_ns  INTEGER NOT NULL
);

-- Per session, stack and bucket: the alloc rows whose ts_ns lies in the bucket (alloc_*)
-- and those whose freed_ns lies in it (freed_*). *_bytes sum est_bytes, *_count sum
-- est_bytes / MAX(size, 1) (a REAL), *_samples count rows, *_var sum each row's variance
-- share est_bytes * MAX(est_bytes - size, 0) (a REAL). stack_id 0: NULL in alloc.
-- Live bytes of a stack at a bucket's start are the sum of alloc_bytes - freed_bytes
-- over the buckets before it.
CREATE TABLE IF NOT EXISTS agg_stack ( -- heapprof: added within version 2
  session_id    INTEGER NOT NULL,
  bucket_ns     INTEGER NOT NULL,
  stack_id      INTEGER NOT NULL,
  alloc_bytes   INTEGER NOT NULL,
  alloc_count   REAL    NOT NULL,
  alloc_samples INTEGER NOT NULL,
  freed_bytes   INTEGER NOT NULL,
  freed_count   REAL    NOT NULL,
  freed_samples INTEGER NOT NULL,
  alloc_var     REAL    NOT NULL,
  freed_var     REAL    NOT NULL,
  PRIMARY KEY (session_id, bucket_ns, stack_id)
) WITHOUT ROWID;

-- Per session and size class (the bit length of size: 0 for 0, k for 2^(k-1) .. 2^k - 1):
-- the session's alloc rows of that class.
CREATE TABLE IF NOT EXISTS agg_size ( -- heapprof: added within version 2
  session_id INTEGER NOT NULL,
  size_class INTEGER NOT NULL,
  samples    INTEGER NOT NULL,
  est_count  REAL    NOT NULL,
  est_bytes  INTEGER NOT NULL,
  PRIMARY KEY (session_id, size_class)
) WITHOUT ROWID;

-- The site aggregate. One row per session recorded with it: the width of its buckets
-- (heapprofd's timeline interval, so that they are the timeline's intervals) and the
-- time before which its buckets are written (INT64_MAX once the session's end is
-- stored). A session whose site aggregate heapprofd gave up has no row.
CREATE TABLE IF NOT EXISTS agg_site_session ( -- heapprof: added within version 2
  session_id INTEGER PRIMARY KEY,
  bucket_ns  INTEGER NOT NULL,
  done_ns    INTEGER NOT NULL
);

-- Per session, source line and bucket, over the alloc rows whose stack has that line
-- (each row once, however often the line is on its stack): net_bytes, the change of
-- their live bytes over the bucket (est_bytes at ts_ns, minus est_bytes at freed_ns),
-- and high_bytes, the highest level they reach in the bucket relative to the level at
-- its start (the start itself included unless a change comes at that very instant;
-- frees before allocations at one instant). A line is keyed by the smallest frame id
-- with its filename and lineno. A line with no row in a bucket did not change in it.
CREATE TABLE IF NOT EXISTS agg_site ( -- heapprof: added within version 2
  session_id INTEGER NOT NULL,
  frame_id   INTEGER NOT NULL,
  bucket_ns  INTEGER NOT NULL,
  net_bytes  INTEGER NOT NULL,
  high_bytes INTEGER NOT NULL,
  PRIMARY KEY (session_id, frame_id, bucket_ns)
) WITHOUT ROWID;

-- ---------------------------------------------------------------- public views
-- Views are dropped and created again each time heapprofd opens a database, so that a
-- database of this version written with older view definitions gets the current ones
-- (views hold no data; the tables above are kept as they are). IF NOT EXISTS after
-- the DROP is redundant, kept so that every CREATE here has the same form (check_schema
-- looks for it in the embedded text).
--
-- sessions, frames, stack_frames, allocations and timeline have exactly the columns of
-- the public interface, in its order. stacks, session_settings, timeline_detail,
-- sampling_changes, threads and markers are heapprof extensions (schema/README.md), and
-- so are aggregated_sessions, stack_buckets, stack_live, size_classes, site_sessions and
-- site_buckets, the aggregates.
DROP VIEW IF EXISTS sessions;
CREATE VIEW IF NOT EXISTS sessions AS
  SELECT id AS session_id, pid, ppid, argv, executable, python_version, started_ns,
         ended_ns, sample_interval_bytes, status, events_received, events_dropped
  FROM session;

DROP VIEW IF EXISTS session_settings;
CREATE VIEW IF NOT EXISTS session_settings AS
  SELECT id AS session_id, sample_buckets, max_stack_depth, error, argv_omitted FROM session;

DROP VIEW IF EXISTS frames;
CREATE VIEW IF NOT EXISTS frames AS
  SELECT id AS frame_id, function, filename, lineno FROM frame;

DROP VIEW IF EXISTS stack_frames;
CREATE VIEW IF NOT EXISTS stack_frames AS
  SELECT stack_id, depth, frame_id FROM stack_frame;

DROP VIEW IF EXISTS stacks;
CREATE VIEW IF NOT EXISTS stacks AS
  SELECT id AS stack_id, depth, truncated FROM stack;

DROP VIEW IF EXISTS allocations;
CREATE VIEW IF NOT EXISTS allocations AS
  SELECT session_id, id AS alloc_id, ts_ns, thread_id,
         CASE domain WHEN 0 THEN 'raw' WHEN 1 THEN 'mem' WHEN 2 THEN 'obj' ELSE 'native' END
           AS domain,
         address, size, est_bytes, stack_id, freed_ns
  FROM alloc;

DROP VIEW IF EXISTS timeline;
CREATE VIEW IF NOT EXISTS timeline AS
  SELECT session_id, ts_ns, live_bytes, live_count FROM timeline_point;

DROP VIEW IF EXISTS timeline_detail;
CREATE VIEW IF NOT EXISTS timeline_detail AS
  SELECT session_id, ts_ns, live_bytes, live_count, end_bytes FROM timeline_point;

-- change_no numbers a session's changes 1, 2, ... in the order they were received, which
-- also orders changes with equal timestamps (a coarse clock can give two the same tick).
DROP VIEW IF EXISTS sampling_changes;
CREATE VIEW IF NOT EXISTS sampling_changes AS
  SELECT c.session_id,
         ROW_NUMBER() OVER w AS change_no,
         c.ts_ns,
         COALESCE(LAG(c.sample_interval_bytes) OVER w, s.sample_interval_bytes)
           AS previous_interval_bytes,
         c.sample_interval_bytes
  FROM sampling_change c JOIN session s ON s.id = c.session_id
  WINDOW w AS (PARTITION BY c.session_id ORDER BY c.id);

DROP VIEW IF EXISTS threads;
CREATE VIEW IF NOT EXISTS threads AS
  SELECT session_id, thread_id, name FROM thread_name;

DROP VIEW IF EXISTS markers;
CREATE VIEW IF NOT EXISTS markers AS
  SELECT session_id, ts_ns, label FROM marker;

DROP VIEW IF EXISTS aggregated_sessions;
CREATE VIEW IF NOT EXISTS aggregated_sessions AS
  SELECT session_id, bucket_ns FROM agg_session;

DROP VIEW IF EXISTS stack_buckets;
CREATE VIEW IF NOT EXISTS stack_buckets AS
  SELECT session_id, bucket_ns, NULLIF(stack_id, 0) AS stack_id, alloc_bytes, alloc_count,
         alloc_samples, freed_bytes, freed_count, freed_samples, alloc_var, freed_var
  FROM agg_stack;

-- Live bytes of each stack at the end of each bucket in which it changed.
DROP VIEW IF EXISTS stack_live;
CREATE VIEW IF NOT EXISTS stack_live AS
  SELECT g.session_id, g.bucket_ns + a.bucket_ns AS end_ns, NULLIF(g.stack_id, 0) AS stack_id,
         SUM(g.alloc_bytes - g.freed_bytes) OVER w AS live_bytes,
         SUM(g.alloc_samples - g.freed_samples) OVER w AS live_samples
  FROM agg_stack g JOIN agg_session a USING (session_id)
  WINDOW w AS (PARTITION BY g.session_id, g.stack_id ORDER BY g.bucket_ns);

DROP VIEW IF EXISTS size_classes;
CREATE VIEW IF NOT EXISTS size_classes AS
  SELECT session_id, size_class,
         CASE WHEN size_class = 0 THEN 0 ELSE 1 << (size_class - 1) END AS min_size,
         CASE WHEN size_class >= 63 THEN 9223372036854775807 ELSE (1 << size_class) - 1 END
           AS max_size, samples, est_count, est_bytes
  FROM agg_size;

DROP VIEW IF EXISTS site_sessions;
CREATE VIEW IF NOT EXISTS site_sessions AS
  SELECT session_id, bucket_ns, done_ns FROM agg_site_session;

-- Each line's live bytes at the start of the bucket (before_bytes) and the highest they
-- reach in it, for every bucket in which they changed.
DROP VIEW IF EXISTS site_buckets;
CREATE VIEW IF NOT EXISTS site_buckets AS
  SELECT g.session_id, g.bucket_ns, f.filename, f.lineno, g.frame_id,
         SUM(g.net_bytes) OVER w - g.net_bytes AS before_bytes,
         SUM(g.net_bytes) OVER w - g.net_bytes + g.high_bytes AS high_bytes,
         SUM(g.net_bytes) OVER w AS end_bytes
  FROM agg_site g JOIN frame f ON f.id = g.frame_id
  WINDOW w AS (PARTITION BY g.session_id, g.frame_id ORDER BY g.bucket_ns);
