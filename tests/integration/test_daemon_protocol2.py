"""heapprofd and protocol version 2 (proto/PROTOCOL.md): thread names, markers, native
allocations, reattributed blocks, the GOODBYE end reason, the loss a stream's end
without GOODBYE reveals, and the refusal of a version 1 agent.

A real heapprofd, driven by the codec-built test client (hp_testclient)."""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import (SharedDaemonTest, finished_session, query, run_client,  # noqa: E402
                            session)

MS = 1_000_000


class Protocol2(SharedDaemonTest):
    def test_thread_names_markers_native_and_reattribute(self):
        [s] = run_client(self.d.sock, "protocol2", "p2", events=100)
        row = finished_session(self.d.db, "p2")
        sid = row["session_id"]
        self.assertEqual(row["status"], "exited")
        self.assertEqual(row["events_received"], s["events"])
        threads = query(self.d.db, "SELECT thread_id, name FROM threads WHERE session_id = ?"
                        " ORDER BY thread_id", (sid,))
        self.assertEqual([(t["thread_id"], t["name"]) for t in threads],
                         [(1, "MainThread"), (2, "worker-2")])
        markers = query(self.d.db, "SELECT ts_ns - ? AS t, label FROM markers"
                        " WHERE session_id = ? ORDER BY ts_ns", (row["started_ns"], sid))
        self.assertEqual([(m["t"], m["label"]) for m in markers],
                         [(5 * MS, "phase 1"), (6 * MS, "phase 2")])
        native = query(self.d.db, "SELECT size, est_bytes, thread_id, stack_id FROM allocations"
                       " WHERE session_id = ? AND domain = 'native'", (sid,))
        self.assertEqual(native, [{"size": 1 << 20, "est_bytes": 1 << 20, "thread_id": 2,
                                   "stack_id": None}])
        # The object at 0x6000 lived twice: until the reattribute at 9 ms, then (same
        # domain, size and estimate) under the other stack, by thread 2, still live.
        lives = query(self.d.db, "SELECT a.ts_ns - ? AS t, a.freed_ns - ? AS freed,"
                      " a.thread_id, a.domain, a.size, a.est_bytes, st.depth"
                      " FROM allocations a JOIN stacks st USING (stack_id)"
                      " WHERE a.session_id = ? AND a.address = 24576 ORDER BY a.alloc_id",
                      (row["started_ns"], row["started_ns"], sid))
        self.assertEqual(lives, [
            {"t": 8 * MS, "freed": 9 * MS, "thread_id": 1, "domain": "obj", "size": 64,
             "est_bytes": 64, "depth": 2},
            {"t": 9 * MS, "freed": None, "thread_id": 2, "domain": "obj", "size": 64,
             "est_bytes": 64, "depth": 3},
        ])
        # The reattribute of 0x7000, where nothing was live, stored nothing.
        self.assertEqual(query(self.d.db, "SELECT count(*) AS n FROM allocations"
                               " WHERE session_id = ? AND address = 28672", (sid,))[0]["n"], 0)
        self.d.wait_log("session %d (pid " % sid)
        self.assertRegex(self.d.log(), r"session %d \(pid \d+\) ended: exited, %d events, 0 "
                         r"dropped, [1-9]\d* unpaired frees" % (sid, s["events"]))

    def test_goodbye_with_hooks_replaced_ends_the_session_so(self):
        run_client(self.d.sock, "normal", "hooks", events=200, extra=("--end-reason", "1"))
        row = finished_session(self.d.db, "hooks")
        self.assertEqual(row["status"], "hooks_replaced")
        self.assertEqual(row["events_received"], 200)
        self.d.wait_log("session %d (pid " % row["session_id"])
        self.d.wait_log("recording ended early: the program replaced or removed heapprof's "
                        "allocator hooks (hooks_replaced)")

    def test_events_sent_but_never_received_are_counted_as_dropped(self):
        [s] = run_client(self.d.sock, "unsent", "unsent", events=500)
        row = finished_session(self.d.db, "unsent")
        self.assertEqual(row["status"], "disconnected")
        self.assertEqual(row["events_received"], 500)
        # The agent's own 3, and the 100 its last COUNTERS says it sent beyond those.
        self.assertEqual(row["events_dropped"], 103)
        self.d.wait_log("the stream ended without GOODBYE; 100 events the agent sent never "
                        "arrived (counted in events_dropped)")

    def test_a_version_1_agent_is_refused_naming_both_versions(self):
        run_client(self.d.sock, "bad-version", "v1", extra=("--version", "1"))
        self.d.wait_log("protocol version 1 is not supported (this heapprof speaks version 2)")
        self.assertIsNone(session(self.d.db, "v1"))
        self.assertTrue(self.d.alive())


if __name__ == "__main__":
    unittest.main()
