#!/usr/bin/env python3
"""Compares heapprofd builds at ingestion, in interleaved rounds: per-round ratios.

    python3 bench/ingest_ab.py --build BASE --build OTHER [--build ...] [--rounds 20]
                               [--load dense,clock,agent] [--sizes 500000] [--clients 4]

Run times on a shared machine are bimodal (the same run is fast or slow from one run to
the next), so one run per build says little. Each round runs every build once on each
load, in an order that alternates from round to round. The table gives, for every build
against each build before it on the command line, the per-round ratio of events/s stored
and of daemon CPU per event, as the median and interquartile range over the rounds. A
change is real when the IQR of its ratio stays clear of 1.0 over 15 rounds or more; CPU
per event is the steadier figure, since other processes disturb it least.

Loads:
  dense  bench/ingest_load (one binary drives every build), K agents of N events stamped
         200 ns apart (ingest.py's default)
  clock  the same, stamped by the monotonic clock as an agent stamps them (ingest.py
         --clock)
  agent  a real Python program, bench/overhead_workloads.py's churn, under the agent at
         sampling interval 1 (every allocation): it makes more events than heapprofd can
         store and drops the rest (counted), so the rate stored over the session's span
         is heapprofd's throughput. The agent is the one installed for --python
         (default .venv/bin/python) in every round: only heapprofd differs between builds.
Each daemon runs with --no-index (the read indexes are built after recording)."""
import argparse
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ingest  # noqa: E402  (run_one, cpu_seconds)
import overhead  # noqa: E402  (quartiles)

HERE = os.path.dirname(os.path.abspath(__file__))


def run_synthetic(build, args, clock):
    """(events/s, daemon CPU ns per event) of one ingest_load run."""
    r = ingest.run_one(build, args.clients, args.sizes, 8192, ["--no-index"], 0, 0, clock,
                       load=args.load_gen)
    total, elapsed, cpu = r[0], r[2], r[5]
    return total / elapsed, cpu / total * 1e9


def run_agent(build, args):
    """(events/s, daemon CPU ns per event) of the churn workload under the agent."""
    heapprofd = os.path.join(build, "daemon", "heapprofd")
    with tempfile.TemporaryDirectory(prefix="hp-ab-") as tmp:
        db, sock = os.path.join(tmp, "p.sqlite"), os.path.join(tmp, "hp.sock")
        d = subprocess.Popen([heapprofd, "--db", db, "--socket", sock, "--no-index",
                              "--log-level", "warn"], stdout=subprocess.PIPE)
        try:
            if not d.stdout.readline().decode().startswith("heapprofd: listening on"):
                sys.exit("heapprofd (%s) did not start" % build)
            env = dict(os.environ, HEAPPROF_SOCKET=sock, HEAPPROF_INTERVAL="1",
                       HEAPPROF_BENCH_SCALE=str(args.scale))
            subprocess.run([args.python, os.path.join(HERE, "overhead_workloads.py"), "churn"],
                           env=env, check=True, timeout=600)
            deadline = time.monotonic() + 600
            while True:
                con = sqlite3.connect(db, timeout=5)
                try:
                    row = con.execute("SELECT status, started_ns, ended_ns FROM sessions"
                                      ).fetchone()
                    if row is not None and row[0] != "running":
                        n = con.execute("SELECT count(*) + count(freed_ns) FROM alloc"
                                        ).fetchone()[0]
                        break
                finally:
                    con.close()
                if time.monotonic() > deadline or d.poll() is not None:
                    sys.exit("heapprofd (%s) did not end the session" % build)
                time.sleep(0.05)
            cpu = ingest.cpu_seconds(d.pid)
            d.send_signal(signal.SIGTERM)
            d.wait(600)
        finally:
            if d.poll() is None:
                d.kill()
                d.wait()
            d.stdout.close()
    span = (row[2] - row[1]) / 1e9
    return n / span, cpu / n * 1e9


def spread(xs):
    """(Q1, median, Q3) of xs, quartiles as bench/overhead.py reports them."""
    q1, q3 = overhead.quartiles(xs)
    return q1, statistics.median(xs), q3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", action="append", required=True,
                    help="a build directory (repeat; list the oldest first)")
    ap.add_argument("--rounds", type=int, default=20,
                    help="rounds; each runs every build once per load (default 20)")
    ap.add_argument("--load", default="dense,clock,agent",
                    help="comma-separated: dense, clock, agent (default all three)")
    ap.add_argument("--clients", type=int, default=4,
                    help="agents of the dense and clock loads (default 4)")
    ap.add_argument("--sizes", type=int, default=500000,
                    help="events per agent of the dense and clock loads (default 500000)")
    ap.add_argument("--scale", type=float, default=2.0,
                    help="HEAPPROF_BENCH_SCALE of the agent load (default 2: about 8 s)")
    ap.add_argument("--python", default=os.path.join(os.path.dirname(HERE), ".venv", "bin",
                                                     "python"),
                    help="the interpreter with heapprof installed, for the agent load")
    ap.add_argument("--load-gen", default=None,
                    help="the ingest_load binary every build is driven by (default: the "
                         "first build's that has one), so that only heapprofd differs")
    args = ap.parse_args()
    loads = args.load.split(",")
    for name in loads:
        if name not in ("dense", "clock", "agent"):
            ap.error("unknown load %r (dense, clock, agent)" % name)
    if args.rounds < 1 or args.clients < 1 or args.sizes < 1 or not args.scale > 0:
        ap.error("--rounds, --clients, --sizes and --scale must be positive")
    if len(args.build) < 2:
        ap.error("give at least two --build")
    for b in args.build:
        if not os.access(os.path.join(b, "daemon", "heapprofd"), os.X_OK):
            ap.error("%s has no daemon/heapprofd" % b)
    if args.load_gen is None:
        gens = [os.path.join(b, "bench", "ingest_load") for b in args.build]
        gens = [g for g in gens if os.access(g, os.X_OK)]
        if not gens and set(loads) - {"agent"}:
            ap.error("no build has bench/ingest_load: give --load-gen")
        args.load_gen = gens[0] if gens else None
    print("heapprofd at ingestion, %d interleaved rounds; builds: %s" % (
        args.rounds, ", ".join("%s=%s" % (chr(65 + i), b) for i, b in enumerate(args.build))))
    sys.stdout.flush()
    res = {(l, b): [] for l in loads for b in range(len(args.build))}
    t0 = time.monotonic()
    for r in range(args.rounds):
        for name in loads:
            order = list(range(len(args.build)))
            if r % 2:
                order.reverse()
            for b in order:
                build = args.build[b]
                if name == "agent":
                    res[(name, b)].append(run_agent(build, args))
                else:
                    res[(name, b)].append(run_synthetic(build, args, name == "clock"))
        done = r + 1
        line = "round %d/%d (%.0f s):" % (done, args.rounds, time.monotonic() - t0)
        for name in loads:
            line += "  %s " % name + " ".join(
                "%.2fM" % (res[(name, b)][-1][0] / 1e6) for b in range(len(args.build)))
        print(line)
        sys.stdout.flush()
    print()
    print("Per-round ratios of each build to each earlier one (events/s: above 1 is faster;"
          " CPU per event: below 1 is cheaper)")
    print("%-6s %-6s %22s %22s" % ("load", "builds", "events/s median (IQR)",
                                    "CPU/event median (IQR)"))
    for name in loads:
        for b in range(len(args.build)):
            rate = statistics.median(x[0] for x in res[(name, b)])
            print("%-6s %-6s %21.2fM" % (name, chr(65 + b), rate / 1e6))
        for b in range(1, len(args.build)):
            for a in range(b):
                runs, ref = res[(name, b)], res[(name, a)]
                rr = spread([x[0] / y[0] for x, y in zip(runs, ref)])
                cr = spread([x[1] / y[1] for x, y in zip(runs, ref)])
                print("%-6s %-6s %8.3f (%.3f-%.3f) %8.3f (%.3f-%.3f)" % (
                    name, "%s/%s" % (chr(65 + b), chr(65 + a)), rr[1], rr[0], rr[2], cr[1],
                    cr[0], cr[2]))

if __name__ == "__main__":
    main()
