#!/usr/bin/env python3
"""Agent overhead benchmark: allocation-heavy workloads run side by side as plain Python,
under heapprof at several sampling intervals (1 = record everything), and under
`python -X tracemalloc=1` and `=25`; prints wall time and peak RSS as ratios to plain.

    python bench/overhead.py [--reps N] [--intervals 1,16384,65536,262144] [--workloads a,b]
                             [--also LABEL=PYTHON ...]

--also adds the same heapprof columns run by another Python with another heapprof build
installed (e.g. a venv holding the previous commit), so that two builds are compared side
by side in one run, under the same load, against the same daemon.

Run it with the Python that has heapprof installed (e.g. the venv's); heapprofd is found as
$HEAPPROFD, beside that Python, or on PATH. Every configuration of a workload runs once
per round, rounds interleaved, and the median per configuration is reported, so drift on
a shared machine hits all columns alike. Profiled runs stream to one real heapprofd (its
CPU time is not counted; on a loaded machine it competes for the cores)."""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = ['churn', 'big_buffers', 'slow_leak', 'threads', 'stdlib']


def find_heapprofd():
    env = os.environ.get('HEAPPROFD')
    if env:
        return env
    beside = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), 'heapprofd')
    return beside if os.access(beside, os.X_OK) else shutil.which('heapprofd')


def run_once(argv, env):
    """Wall seconds and peak RSS (KiB) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors='replace')
    proc.stderr.close()
    if proc.returncode != 0 or err.strip():
        raise SystemExit('benchmark run failed (%s): %s' % (' '.join(argv), err.strip()))
    return wall, ru.ru_maxrss


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--reps', type=int, default=3, help='rounds (median reported)')
    ap.add_argument('--intervals', default='1,16384,65536,262144',
                    help='heapprof sampling intervals to run (1 = every allocation)')
    ap.add_argument('--workloads', default=','.join(WORKLOADS))
    ap.add_argument('--no-tracemalloc', action='store_true')
    ap.add_argument('--also', action='append', default=[], metavar='LABEL=PYTHON',
                    help='also run the heapprof columns with this Python (another build)')
    args = ap.parse_args()
    others = []
    for spec in args.also:
        label, sep, exe = spec.partition('=')
        if not sep or not label or not os.access(exe, os.X_OK):
            raise SystemExit('--also %r: expected LABEL=PYTHON with an executable PYTHON' % spec)
        others.append((label, exe))
    intervals = [int(x) for x in args.intervals.split(',') if x]
    workloads = [w for w in args.workloads.split(',') if w]

    # As users run it: byte-compiled modules (the package is compiled once below).
    base = {k: v for k, v in os.environ.items()
            if not k.startswith('HEAPPROF_') and k != 'PYTHONDONTWRITEBYTECODE'}
    for exe in [sys.executable] + [o[1] for o in others]:
        subprocess.run([exe, '-c', 'import compileall, os, heapprof; '
                        'compileall.compile_dir(os.path.dirname(heapprof.__file__), quiet=1)'],
                       env=base, check=True)
    script = os.path.join(HERE, 'overhead_workloads.py')
    configs = [('plain', sys.executable, [], {})]
    daemon = None
    tmp = tempfile.TemporaryDirectory(prefix='hp-bench-')
    try:
        if intervals:
            exe = find_heapprofd()
            if not exe:
                raise SystemExit('heapprofd not found (set HEAPPROFD)')
            sock = os.path.join(tmp.name, 'd.sock')
            daemon = subprocess.Popen([exe, '--db', os.path.join(tmp.name, 'bench.sqlite'),
                                       '--socket', sock], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
            line = daemon.stdout.readline()
            if 'listening on' not in line:
                raise SystemExit('heapprofd did not start: %s' % line.strip())
            for i in intervals:
                iname = '1 (all)' if i == 1 else ('%dK' % (i // 1024) if i % 1024 == 0 else i)
                env = {'HEAPPROF_SOCKET': sock, 'HEAPPROF_INTERVAL': str(i)}
                configs.append(('hp I=%s' % iname, sys.executable, [], env))
                for label, exe in others:
                    configs.append(('%s I=%s' % (label, iname), exe, [], env))
        if not args.no_tracemalloc:
            configs.append(('tracemalloc=1', sys.executable, ['-X', 'tracemalloc=1'], {}))
            configs.append(('tracemalloc=25', sys.executable, ['-X', 'tracemalloc=25'], {}))

        results = {}   # (workload, config) -> [(wall, rss)]
        for rnd in range(args.reps):
            for w in workloads:
                for name, exe, xopts, extra in configs:
                    env = dict(base, **extra)
                    argv = [exe] + xopts + [script, w]
                    results.setdefault((w, name), []).append(run_once(argv, env))
            print('round %d/%d done' % (rnd + 1, args.reps), file=sys.stderr)
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=120)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        tmp.cleanup()

    names = [c[0] for c in configs]
    print('Python %s, %d rounds, median wall time (s) and ratio to plain; peak RSS ratio'
          % (sys.version.split()[0], args.reps))
    width = max(14, max(len(n) for n in names) + 2)
    print('%-12s' % 'workload' + ''.join('%*s' % (width, n) for n in names))
    for w in workloads:
        plain_t = statistics.median(r[0] for r in results[(w, 'plain')])
        plain_m = statistics.median(r[1] for r in results[(w, 'plain')])
        cells, rss = [], []
        for n in names:
            t = statistics.median(r[0] for r in results[(w, n)])
            m = statistics.median(r[1] for r in results[(w, n)])
            cells.append('%*s' % (width, '%.2fs %.2fx' % (t, t / plain_t)))
            rss.append('%*s' % (width, '%.2fx' % (m / plain_m)))
        print('%-12s' % w + ''.join(cells))
        print('%-12s' % '  peak RSS' + ''.join(rss))


if __name__ == '__main__':
    main()
