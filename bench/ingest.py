#!/usr/bin/env python3
"""heapprofd ingestion benchmark: events/s stored, database bytes per event, peak RSS.

    python3 bench/ingest.py --build BUILDDIR [--clients 8] [--sizes 250000,1000000,4000000]
                            [--page-sizes 4096,16384] [--daemon-arg=--no-index]
                            [--pprof-every 0,1] [--repeat 3]

For each N, starts a fresh heapprofd on a temporary socket and database, runs
ingest_load (K concurrent agents, N events each: allocations and their frees over a
few stacks), and measures the time from the first byte until every session is
committed as ended with all its events (polling the public `sessions` view), so the
rate counts stored events, not merely received ones. The daemon's peak RSS is VmHWM
from /proc; bytes/event is database + WAL size over the events stored. The daemon's
CPU time (all threads) per event is printed too: on a shared machine it is the figure
that other processes disturb least. "stop s" is the time from SIGTERM to exit, which
includes building the read indexes (daemon/README.md), and the database size is taken
after it. With --page-sizes, each size runs once per page size, side by side, on a
database pre-created empty with that page size (heapprofd claims an empty database
and keeps its page size). With --pprof-every, each size also runs once per period given
(0: without), heapprofd writing pprof profiles every that many seconds into a temporary
--pprof-dir while it ingests: "profiles" is the files written by the time every event is
stored, "skipped" the periods it skipped because an export was still running, "export
CPU s" the CPU time of the exports heapprofd has reaped by then (they are other
processes: not in the daemon's CPU). "WAL MiB" is the largest the -wal file grew while
ingesting (a reader's snapshot keeps SQLite from resetting it). --repeat runs the whole
table again."""
import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time


def vm_hwm_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid, children=False):
    """User + system CPU time of the whole process (all threads) so far; with children,
    that of its children it has waited for instead."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    i = 13 if children else 11
    return (int(fields[i]) + int(fields[i + 1])) / os.sysconf("SC_CLK_TCK")


def stored(db, clients, n):
    try:
        con = sqlite3.connect(db, timeout=5)
        try:
            row = con.execute("SELECT count(*), coalesce(sum(events_received), 0) FROM sessions"
                              " WHERE status <> 'running'").fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError:
        return False
    return row[0] == clients and row[1] == clients * n


def run_one(build, clients, n, batch, extra, page_size, pprof_every, clock=False, load=None):
    """One run of heapprofd from build; the load generator is build's unless given."""
    heapprofd = os.path.join(build, "daemon", "heapprofd")
    load = load or os.path.join(build, "bench", "ingest_load")
    with tempfile.TemporaryDirectory(prefix="hp-ingest-") as tmp:
        db, sock = os.path.join(tmp, "bench.sqlite"), os.path.join(tmp, "hp.sock")
        if page_size:
            con = sqlite3.connect(db)
            con.execute("PRAGMA page_size = %d" % page_size)
            con.execute("PRAGMA journal_mode = WAL")   # writes the header: an empty database
            con.close()
        profiles = os.path.join(tmp, "profiles")
        if pprof_every:
            os.mkdir(profiles)
            extra = extra + ["--pprof-dir", profiles, "--pprof-every", str(pprof_every)]
        log = open(os.path.join(tmp, "heapprofd.log"), "w+")
        d = subprocess.Popen([heapprofd, "--db", db, "--socket", sock, "--log-level", "warn"]
                             + extra, stdout=subprocess.PIPE, stderr=log)
        try:
            line = d.stdout.readline().decode()
            if not line.startswith("heapprofd: listening on"):
                sys.exit("heapprofd did not start")
            t0 = time.monotonic()
            p = subprocess.run([load, "--socket", sock, "--clients", str(clients), "--events",
                                str(n), "--batch", str(batch)] + (["--clock"] if clock else []),
                               stdout=subprocess.PIPE,
                               check=True, timeout=600)
            sent_s = float(p.stdout.decode().split()[0])
            deadline = time.monotonic() + 600
            wal_max = 0
            while not stored(db, clients, n):
                if time.monotonic() > deadline or d.poll() is not None:
                    sys.exit("heapprofd did not store the events")
                try:
                    wal_max = max(wal_max, os.path.getsize(db + "-wal"))
                except OSError:
                    pass
                time.sleep(0.005)
            elapsed = time.monotonic() - t0
            hwm = vm_hwm_kib(d.pid)
            cpu = cpu_seconds(d.pid)
            export_cpu = cpu_seconds(d.pid, children=True)
            written = len(os.listdir(profiles)) if pprof_every else 0
            t_stop = time.monotonic()
            d.send_signal(signal.SIGTERM)
            d.wait(600)
            stop_s = time.monotonic() - t_stop
            con = sqlite3.connect(db)
            real_page = con.execute("PRAGMA page_size").fetchone()[0]
            con.close()
            size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp)
                       if f.startswith("bench.sqlite"))
            log.seek(0)
            text = log.read()
            skipped = text.count("skipping this period")
            for line in text.splitlines():
                if "skipping this period" not in line:
                    sys.stderr.write(line + "\n")
        finally:
            if d.poll() is None:
                d.kill()
                d.wait()
            d.stdout.close()
            log.close()
    total = clients * n
    return (total, sent_s, elapsed, size / total, hwm, cpu, stop_s, real_page, written,
            skipped, export_cpu, wal_max)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=os.environ.get("HEAPPROF_BUILD_ROOT", "build"))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--sizes", default="125000,500000,2000000",
                    help="events per client, comma-separated")
    ap.add_argument("--batch", type=int, default=8192, help="events per EVENTS message")
    ap.add_argument("--daemon-arg", action="append", default=[],
                    help="extra heapprofd argument (repeatable)")
    ap.add_argument("--page-sizes", default="",
                    help="comma-separated SQLite page sizes to compare (default: the schema's)")
    ap.add_argument("--pprof-every", default="",
                    help="comma-separated --pprof-every periods in seconds to compare, 0 for "
                         "none (default: none)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of the whole table")
    ap.add_argument("--clock", action="store_true",
                    help="the load stamps events by the clock as it makes them, as an agent"
                         " does (default: 200 ns apart, far denser than they are stored)")
    a = ap.parse_args()
    pages = [int(x) for x in a.page_sizes.split(",") if x] or [0]
    periods = [int(x) for x in a.pprof_every.split(",") if x] or [0]
    print("heapprofd ingestion: %d concurrent clients, %d events per EVENTS message, stamped %s"
          % (a.clients, a.batch, "by the clock" if a.clock else "200 ns apart"))
    print("%10s %6s %8s %9s %15s %11s %11s %13s %13s %7s %8s %6s %8s %7s %12s" % (
        "events", "page", "send s", "stored s", "events/s stored", "DB B/event", "peak RSS MiB",
        "daemon CPU s", "CPU ns/event", "stop s", "WAL MiB", "pprof", "profiles", "skipped",
        "export CPU s"))
    for r in range(a.repeat):
        if a.repeat > 1:
            print("run %d" % (r + 1))
        for n in [int(x) for x in a.sizes.split(",")]:
            for page in pages:
                for every in periods:
                    (total, sent_s, elapsed, bpe, hwm, cpu, stop_s, real_page, written,
                     skipped, export_cpu, wal) = run_one(a.build, a.clients, n, a.batch,
                                                         a.daemon_arg, page, every, a.clock)
                    print("%10d %6d %8.2f %9.2f %15.0f %11.1f %12.1f %13.2f %13.0f %7.2f %8d"
                          " %6s %8d %7d %12.2f"
                          % (total, real_page, sent_s, elapsed, total / elapsed, bpe,
                             hwm / 1024.0, cpu, cpu * 1e9 / total, stop_s, wal >> 20,
                             "%ds" % every if every else "-", written, skipped, export_cpu))
                    sys.stdout.flush()


if __name__ == "__main__":
    main()
