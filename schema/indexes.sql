-- heapprof read indexes: optional, built by heapprofd at clean shutdown (not while recording).
--
-- They make snapshots, leaks and per-site series fast on sessions of millions of
-- allocations (tools/reader.py detects them; bench/README.md, "Reader"), but maintaining
-- them while recording roughly halves ingestion, so heapprofd creates them only after
-- its final commit (daemon/README.md, `--no-index`). They are not part of the schema
-- version: a database with or without them has the same user_version. Every statement
-- is IF NOT EXISTS and each CREATE INDEX is its own transaction, so building them again,
-- or being killed while building them, leaves a valid database.
CREATE INDEX IF NOT EXISTS alloc_by_session_freed ON alloc (session_id, freed_ns);
CREATE INDEX IF NOT EXISTS alloc_by_session_stack ON alloc (session_id, stack_id);
