#!/usr/bin/env python3
"""heapprofd ingestion benchmark: events/s stored, database bytes per event, peak RSS.

    python3 bench/ingest.py --build BUILDDIR [--clients 8] [--sizes 250000,1000000,4000000]

For each N, starts a fresh heapprofd on a temporary socket and database, runs
ingest_load (K concurrent agents, N events each: allocations and their frees over a
few stacks), and measures the time from the first byte until every session is
committed as ended with all its events (polling the public `sessions` view), so the
rate counts stored events, not merely received ones. The daemon's peak RSS is VmHWM
from /proc; bytes/event is database + WAL size over the events stored. The daemon's
CPU time (all threads) per event is printed too: on a shared machine it is the figure
that other processes disturb least."""
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


def run_one(build, clients, n, batch, extra):
    heapprofd = os.path.join(build, "daemon", "heapprofd")
    load = os.path.join(build, "bench", "ingest_load")
    with tempfile.TemporaryDirectory(prefix="hp-ingest-") as tmp:
        db, sock = os.path.join(tmp, "bench.sqlite"), os.path.join(tmp, "hp.sock")
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
            d.send_signal(signal.SIGTERM)
            d.wait(60)
            size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp)
                       if f.startswith("bench.sqlite"))
        finally:
            if d.poll() is None:
                d.kill()
                d.wait()
            d.stdout.close()
    total = clients * n
    return total, sent_s, elapsed, size / total, hwm, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=os.environ.get("HEAPPROF_BUILD_ROOT", "build"))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--sizes", default="125000,500000,2000000",
                    help="events per client, comma-separated")
    ap.add_argument("--batch", type=int, default=8192, help="events per EVENTS message")
    ap.add_argument("--daemon-arg", action="append", default=[],
                    help="extra heapprofd argument (repeatable)")
    a = ap.parse_args()
    print("heapprofd ingestion: %d concurrent clients, %d events per EVENTS message"
          % (a.clients, a.batch))
    print("%10s %8s %9s %15s %11s %11s %13s %13s" % (
        "events", "send s", "stored s", "events/s stored", "DB B/event", "peak RSS MiB",
        "daemon CPU s", "CPU ns/event"))
    for n in [int(x) for x in a.sizes.split(",")]:
        total, sent_s, elapsed, bpe, hwm, cpu = run_one(a.build, a.clients, n, a.batch,
                                                        a.daemon_arg)
        print("%10d %8.2f %9.2f %15.0f %11.1f %12.1f %13.2f %13.0f"
              % (total, sent_s, elapsed, total / elapsed, bpe, hwm / 1024.0, cpu,
                 cpu * 1e9 / total))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
