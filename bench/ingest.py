#!/usr/bin/env python3
"""heapprofd ingestion benchmark: events/s stored, database bytes per event, peak RSS.

    python3 bench/ingest.py --build BUILDDIR [--clients 8] [--sizes 250000,1000000,4000000]
                            [--page-sizes 4096,16384] [--daemon-arg=--no-index]

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
and keeps its page size)."""
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


def cpu_seconds(pid):
    """User + system CPU time of the whole process (all threads) so far."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def run_one(build, clients, n, batch, extra, page_size):
    heapprofd = os.path.join(build, "daemon", "heapprofd")
    load = os.path.join(build, "bench", "ingest_load")
    with tempfile.TemporaryDirectory(prefix="hp-ingest-") as tmp:
        db, sock = os.path.join(tmp, "bench.sqlite"), os.path.join(tmp, "hp.sock")
        if page_size:
            con = sqlite3.connect(db)
            con.execute("PRAGMA page_size = %d" % page_size)
            con.execute("PRAGMA journal_mode = WAL")   # writes the header: an empty database
            con.close()
        d = subprocess.Popen([heapprofd, "--db", db, "--socket", sock, "--log-level", "warn"]
                             + extra, stdout=subprocess.PIPE)
        try:
            line = d.stdout.readline().decode()
            if not line.startswith("heapprofd: listening on"):
                sys.exit("heapprofd did not start")
            t0 = time.monotonic()
            p = subprocess.run([load, "--socket", sock, "--clients", str(clients), "--events",
                                str(n), "--batch", str(batch)], stdout=subprocess.PIPE,
                               check=True, timeout=600)
            sent_s = float(p.stdout.decode().split()[0])
            deadline = time.monotonic() + 600
            while not stored(db, clients, n):
                if time.monotonic() > deadline or d.poll() is not None:
                    sys.exit("heapprofd did not store the events")
                time.sleep(0.005)
            elapsed = time.monotonic() - t0
            hwm = vm_hwm_kib(d.pid)
            cpu = cpu_seconds(d.pid)
            t_stop = time.monotonic()
            d.send_signal(signal.SIGTERM)
            d.wait(600)
            stop_s = time.monotonic() - t_stop
            con = sqlite3.connect(db)
            real_page = con.execute("PRAGMA page_size").fetchone()[0]
            con.close()
            size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp)
                       if f.startswith("bench.sqlite"))
        finally:
            if d.poll() is None:
                d.kill()
                d.wait()
            d.stdout.close()
    total = clients * n
    return total, sent_s, elapsed, size / total, hwm, cpu, stop_s, real_page


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
    a = ap.parse_args()
    pages = [int(x) for x in a.page_sizes.split(",") if x] or [0]
    print("heapprofd ingestion: %d concurrent clients, %d events per EVENTS message"
          % (a.clients, a.batch))
    print("%10s %6s %8s %9s %15s %11s %11s %13s %13s %7s" % (
        "events", "page", "send s", "stored s", "events/s stored", "DB B/event", "peak RSS MiB",
        "daemon CPU s", "CPU ns/event", "stop s"))
    for n in [int(x) for x in a.sizes.split(",")]:
        for page in pages:
            total, sent_s, elapsed, bpe, hwm, cpu, stop_s, real_page = run_one(
                a.build, a.clients, n, a.batch, a.daemon_arg, page)
            print("%10d %6d %8.2f %9.2f %15.0f %11.1f %12.1f %13.2f %13.0f %7.2f"
                  % (total, real_page, sent_s, elapsed, total / elapsed, bpe, hwm / 1024.0,
                     cpu, cpu * 1e9 / total, stop_s))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
