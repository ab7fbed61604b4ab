#!/usr/bin/env python3
"""Agent overhead in cache misses: the workloads of bench/overhead.py run under valgrind's
cachegrind with its cache simulation, plain and under heapprof, compared by instructions,
L1 instruction-cache misses, L1 data-cache misses and last-level misses, with the
functions whose L1 instruction misses changed most.

    python bench/overhead_cache.py [--python PYTHON] [--scale 0.1] [--intervals I[,I...]]
                                   [--workloads churn,slow_leak,big_heap] [--jobs 2]
                                   [--extra LABEL=VAR=VAL[,VAR=VAL...] ...] [--top 15]
                                   [--keep DIR]

Why. bench/overhead_instructions.py counts instructions, which do not depend on the load
of the machine, but a hook that adds 3% instructions can add more wall time: its code
takes cache lines in a loop whose instructions already fill the 32 KiB L1 instruction
cache, so that the interpreter's own hot code misses more often (each miss served from L2
costs some 10-15 cycles). Cachegrind simulates the caches of one core deterministically:
the same program with the same input has the same misses, whatever else the machine runs.
It does not simulate the branch predictor, the µop cache, prefetchers or the other core
(heapprofd, the sender thread's wake-ups as such); see bench/README.md.

What is measured. As in bench/overhead_instructions.py (whose notes on start-up, warm-up,
PYTHONHASHSEED=0 and what stays not quite deterministic apply here too): each workload runs
once per configuration as `valgrind --tool=cachegrind --cache-sim=yes PYTHON
overhead_workloads.py NAME`, the whole process counted, heapprof's sender thread included
(valgrind runs one thread at a time on one simulated core), profiled runs streaming to a
real heapprofd that runs natively. The caches are fixed, not taken from the host, so that
two machines give the same figures: I1 and D1 32 KiB 8-way with 64-byte lines (this
machine's AMD EPYC, and most x86 cores of the last decade), LL 32 MiB 16-way; --I1, --D1,
--LL change them (cachegrind's SIZE,ASSOC,LINE).

The tables. Per workload and configuration: instructions (Ir), I1 misses (instruction
fetches that missed L1), D1 misses (data reads and writes that missed L1), LL misses
(instruction and data misses of the last level), each with its ratio to plain, and `model
cycles`: Ir + 12 x (I1 + D1 misses) + 150 x LL misses, a rough single-core cost model
(L2 latency about 12 cycles, memory about 150) that says how much the misses weigh beside
the instructions; it is no measurement. Then per profiled configuration and workload the
functions whose I1 misses grew (or shrank) most against plain, with their instructions'
change: the agent's own functions (those defined in heapprof's _agent*.so) are the hooks'
footprint; the interpreter's functions whose misses grew are the code the hooks evict.

Columns:
  (default)          heapprof at its default interval, "hp default"
  --intervals        heapprof at these sampling intervals (HEAPPROF_INTERVAL) as well
  --extra LABEL=VAR=VAL[,VAR=VAL...]
                     (repeatable) a heapprof column "hp LABEL" with these extra environment
                     variables, as in bench/overhead.py."""
import argparse
import collections
import concurrent.futures
import os
import py_compile
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import overhead  # noqa: E402  (beside this file: heapprofd, --extra and the daemon as it does)
import overhead_workloads  # noqa: E402
from overhead_instructions import valgrind_version  # noqa: E402

WORKLOADS = ['startup'] + list(overhead_workloads.WORKLOADS)
DEFAULT_SCALE = 0.1
DEFAULT_WORKLOADS = 'churn,slow_leak,big_heap'
CACHES = {'I1': '32768,8,64', 'D1': '32768,8,64', 'LL': '33554432,16,64'}
EVENTS = ('Ir', 'I1mr', 'ILmr', 'Dr', 'D1mr', 'DLmr', 'Dw', 'D1mw', 'DLmw')
L2_CYCLES, MEMORY_CYCLES = 12, 150   # the cost model of the table (see above)


def parse_cachegrind(path):
    """({event: total}, {function: {event: count}}) of a cachegrind output file.

    A function's counts are summed over every source file it appears under (code inlined
    from a header is listed under the header's file with the function that holds it)."""
    events = None
    per_fn = collections.defaultdict(lambda: [0] * len(EVENTS))
    summary = None
    fn = None
    with open(path, errors='replace') as f:
        for line in f:
            c = line[:1]
            if c.isdigit():
                fields = line.split()
                row = per_fn[fn]
                for i, v in enumerate(fields[1:]):
                    row[index[i]] += int(v)
            elif line.startswith('fn='):
                fn = line[3:].rstrip('\n')
            elif line.startswith('events:'):
                events = line.split()[1:]
                try:
                    index = [EVENTS.index(e) for e in events]
                except ValueError:
                    raise SystemExit('%s: unexpected events %s (run with --cache-sim=yes)'
                                     % (path, ' '.join(events)))
            elif line.startswith('summary:'):
                summary = [int(v) for v in line.split()[1:]]
    if events is None or summary is None:
        raise SystemExit('%s: no events: or summary: line (cachegrind output cut short?)' % path)
    totals = [0] * len(EVENTS)
    for i, v in enumerate(summary):
        totals[index[i]] = v
    as_dict = lambda row: dict(zip(EVENTS, row))  # noqa: E731
    return as_dict(totals), {name: as_dict(row) for name, row in per_fn.items()}


def derived(t):
    """The table's figures of one run's totals."""
    d1 = t['D1mr'] + t['D1mw']
    ll = t['ILmr'] + t['DLmr'] + t['DLmw']
    model = t['Ir'] + L2_CYCLES * (t['I1mr'] + d1) + MEMORY_CYCLES * ll
    return {'Ir': t['Ir'], 'I1': t['I1mr'], 'D1': d1, 'LL': ll, 'cycles': model}


def agent_functions(python):
    """Names of the functions defined in heapprof's _agent*.so of PYTHON (empty if nm fails)."""
    so = subprocess.run([python, '-c', 'import heapprof._agent as a; print(a.__file__)'],
                        capture_output=True, text=True).stdout.strip()
    if not so or not shutil.which('nm'):
        return set()
    out = subprocess.run(['nm', '--defined-only', so], capture_output=True, text=True).stdout
    return {f[2].split('.')[0] for f in (line.split() for line in out.splitlines())
            if len(f) == 3 and f[1] in 'tTwW'}


def human(n):
    """Millions with three significant digits, or thousands below a million."""
    if abs(n) >= 1e8:
        return '%.0fM' % (n / 1e6)
    if abs(n) >= 1e6:
        return '%.*fM' % (2 if abs(n) < 1e7 else 1, n / 1e6)
    return '%.0fk' % (n / 1e3)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                 epilog=__doc__.split('\n\n', 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--python', default=sys.executable, metavar='PYTHON',
                    help='interpreter with heapprof installed that runs every column '
                    '(default: this one, %(default)s)')
    ap.add_argument('--scale', type=str, default=str(DEFAULT_SCALE), metavar='S',
                    help='multiplies the workloads\' loop counts (default %(default)s)')
    ap.add_argument('--intervals', default='',
                    help='also heapprof at these sampling intervals (default: none, only '
                    'heapprof\'s default interval)')
    ap.add_argument('--no-default', action='store_true',
                    help='leave out the "hp default" column')
    ap.add_argument('--workloads', default=DEFAULT_WORKLOADS,
                    help='rows to run (default: %%(default)s; known: %s)' % ', '.join(WORKLOADS))
    ap.add_argument('--extra', action='append', default=[], metavar='LABEL=VAR=VAL[,VAR=VAL...]',
                    help='a heapprof column with extra environment variables (repeatable)')
    ap.add_argument('--top', type=int, default=15, metavar='N',
                    help='functions listed per profiled run (default %(default)s)')
    ap.add_argument('--jobs', type=int, default=2, metavar='N',
                    help='runs under valgrind at the same time (default 2; the counts do not '
                    'depend on it)')
    for cache, spec in CACHES.items():
        ap.add_argument('--' + cache, default=spec, metavar='SIZE,ASSOC,LINE',
                        help='the simulated %s cache (default %s)' % (cache, spec))
    ap.add_argument('--keep', metavar='DIR',
                    help='keep the cachegrind output files in DIR (created if missing), named '
                    'WORKLOAD.CONFIG.cachegrind, for cg_annotate and cg_diff')
    args = ap.parse_args()
    if args.jobs < 1 or args.top < 0:
        raise SystemExit('--jobs must be at least 1 and --top at least 0')
    python = shutil.which(args.python)
    if not python:
        raise SystemExit('--python %r: no such executable' % args.python)
    try:
        scale = overhead_workloads.parse_scale(args.scale)
    except ValueError as e:
        raise SystemExit('--scale: %s' % e)
    configs = [('plain', None)]
    if not args.no_default:
        configs.append(('hp default', {}))
    configs += [('hp I=%s' % overhead.interval_name(i), {'HEAPPROF_INTERVAL': str(i)})
                for i in overhead.parse_intervals(args.intervals)]
    configs += [('hp %s' % label, env) for label, env in map(overhead.parse_extra, args.extra)]
    names = [c[0] for c in configs]
    if len(set(names)) != len(names):
        raise SystemExit('two columns have the same name; give --extra distinct labels')
    workloads = [w for w in args.workloads.split(',') if w]
    if not workloads:
        raise SystemExit('--workloads: give at least one (known: %s)' % ', '.join(WORKLOADS))
    for w in workloads:
        if w not in WORKLOADS:
            raise SystemExit('--workloads: unknown %r (known: %s)' % (w, ', '.join(WORKLOADS)))
    if not shutil.which('valgrind'):
        raise SystemExit('valgrind not found on PATH; install the valgrind package')
    daemon_exe = overhead.find_heapprofd(python) if len(configs) > 1 else None
    if len(configs) > 1 and not (daemon_exe and os.access(daemon_exe, os.X_OK)):
        raise SystemExit('heapprofd not found%s (set HEAPPROFD to its path)'
                         % (' at %s' % daemon_exe if daemon_exe else ''))
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    version = subprocess.run([python, '-c', 'import platform; print(platform.python_version())'],
                             capture_output=True, text=True).stdout.strip()
    ours = agent_functions(python)

    base = {k: v for k, v in os.environ.items()
            if not k.startswith('HEAPPROF_') and k != 'PYTHONDONTWRITEBYTECODE'}
    base[overhead_workloads.SCALE_VAR] = repr(scale)
    base['PYTHONHASHSEED'] = '0'
    script = os.path.join(HERE, 'overhead_workloads.py')
    subprocess.run([python, '-c', 'import compileall, os, heapprof; '
                    'compileall.compile_dir(os.path.dirname(heapprof.__file__), quiet=1); '
                    'import py_compile; py_compile.compile(%r)' % script],
                   env=base, check=True)
    caches = ['--%s=%s' % (c, getattr(args, c)) for c in CACHES]

    def argv_of(name, w):
        tag = '%s%s@%s' % (overhead.TAG, name, w)
        if w == 'startup':
            return [python, '-c', 'pass', tag]
        return [python, script, w, tag]

    results = {}    # (workload, config) -> (totals, per function)
    notes = {}      # (config, stderr text) -> times seen
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix='hp-bench-cache-') as tmp:
        daemon = overhead.Daemon(daemon_exe, tmp) if daemon_exe else None
        try:
            jobs = []
            for w in workloads:
                for name, extra in configs:
                    env = dict(base)
                    if extra is not None:
                        env.update(extra)
                        env['HEAPPROF_SOCKET'] = daemon.sock
                    jobs.append((w, name, env))
            for w in workloads:   # warm-up, natively (see overhead_instructions.py)
                subprocess.run(argv_of('warm-up', w)[:-1], env=base, check=True,
                               stdout=subprocess.DEVNULL)
            outdir = args.keep or tmp

            def one(job):
                w, name, env = job
                out = os.path.join(outdir, '%s.%s.cachegrind'
                                   % (w, re.sub(r'[^\w=.-]+', '_', name)))
                cmd = (['valgrind', '-q', '--tool=cachegrind', '--cache-sim=yes'] + caches +
                       ['--cachegrind-out-file=' + out] + argv_of(name, w))
                proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE)
                # Cachegrind says it found an L3 even when --LL is given: not a note.
                err = '\n'.join(line for line in proc.stderr.decode(errors='replace').splitlines()
                                if 'L3 cache found' not in line).strip()
                if proc.returncode != 0:
                    raise SystemExit('benchmark run failed with status %d (%s): %s'
                                     % (proc.returncode, ' '.join(cmd), err))
                return job, parse_cachegrind(out), err

            pool = concurrent.futures.ThreadPoolExecutor(args.jobs)
            try:
                for done, ((w, name, _), res, err) in enumerate(pool.map(one, jobs)):
                    results[(w, name)] = res
                    if err:
                        notes[(name, err)] = notes.get((name, err), 0) + 1
                    print('%d/%d %s %s: %s instructions (%.0f s)'
                          % (done + 1, len(jobs), w, name, human(res[0]['Ir']),
                             time.monotonic() - started), file=sys.stderr)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        finally:
            status = daemon.stop() if daemon else 0
        if status != 0:
            raise SystemExit('heapprofd exited with status %s: %s' % (status, daemon.log_tail()))
        sessions = daemon.sessions() if daemon else []

    print('Python %s (%s), scale %g, PYTHONHASHSEED=0; whole process under cachegrind '
          '(valgrind %s), %s' % (version, python, scale, valgrind_version(), ' '.join(caches)))
    print('Cells: count (ratio to plain). I1: L1 instruction misses; D1: L1 data misses (reads '
          '+ writes); LL: last-level misses; model cycles: Ir + %d x (I1 + D1) + %d x LL'
          % (L2_CYCLES, MEMORY_CYCLES))
    cols = ('Ir', 'I1', 'D1', 'LL', 'cycles')
    width = max(12, max(len(n) for n in names) + 1)
    print('%-12s%-*s' % ('workload', width, 'config') +
          ''.join('%18s' % (c if c != 'cycles' else 'model cycles') for c in cols))
    for w in workloads:
        plain = derived(results[(w, 'plain')][0])
        for n in names:
            d = derived(results[(w, n)][0])
            cells = []
            for c in cols:
                cells.append(human(d[c]) if n == 'plain' else
                             '%s %6.3fx' % (human(d[c]), d[c] / plain[c] if plain[c] else 0))
            print('%-12s%-*s' % (w if n == 'plain' else '', width, n) +
                  ''.join('%18s' % c for c in cells))
    for n in names[1:]:
        for w in workloads:
            pfn = results[(w, 'plain')][1]
            hfn = results[(w, n)][1]
            zero = dict.fromkeys(EVENTS, 0)
            diff = []
            for fn in set(pfn) | set(hfn):
                a, b = pfn.get(fn, zero), hfn.get(fn, zero)
                diff.append((b['I1mr'] - a['I1mr'], b['Ir'] - a['Ir'], fn))
            total = sum(d[0] for d in diff)
            agent_i1 = sum(d[0] for d in diff if d[2] in ours)
            print()
            print('%s, %s: I1 misses %+d in all (the agent\'s own functions %+d, the rest %+d); '
                  'top %d functions by the change of their I1 misses'
                  % (w, n, total, agent_i1, total - agent_i1, args.top))
            print('  %12s %14s  %s' % ('I1 misses', 'instructions', 'function'))
            diff.sort(key=lambda d: -abs(d[0]))
            for i1, ir, fn in diff[:args.top]:
                print('  %+12d %+14d  %s%s' % (i1, ir, fn, '  [agent]' if fn in ours else ''))
    if daemon_exe:
        print()
        print('Events per heapprof configuration (dropped: not recorded)')
        for n in names[1:]:
            mine = [s for s in sessions if s[0] == n]
            note = ''
            if len(mine) != len(workloads):
                note = '; WARNING: only %d of %d runs reached heapprofd' % (len(mine),
                                                                           len(workloads))
            print('  %-*s recorded %s, dropped %s%s'
                  % (width, n, overhead.human(sum(s[3] for s in mine)),
                     overhead.human(sum(s[4] for s in mine)), note))
    for (name, err), count in sorted(notes.items()):
        print('note: %s printed (%d run%s): %s' % (name, count, '' if count == 1 else 's',
                                                   err.splitlines()[0]))


if __name__ == '__main__':
    main()
