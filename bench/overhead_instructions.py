#!/usr/bin/env python3
"""Agent overhead in instructions: the workloads of bench/overhead.py run under valgrind's
callgrind, plain and under heapprof, and compared by the instructions they execute.

    python bench/overhead_instructions.py [--scale 0.1] [--intervals 65536]
                                          [--workloads churn,big_buffers,...] [--jobs 2]
                                          [--extra LABEL=VAR=VAL[,VAR=VAL...] ...]
                                          [--keep DIR]

Run it with the Python that has heapprof installed (e.g. the venv's); heapprofd is found as
$HEAPPROFD, beside that Python, or on PATH, and valgrind on PATH.

Why. bench/overhead.py measures wall time, which is what users pay, but on a small shared
machine plain runs of the same workload vary by far more than a 5% overhead target between
rounds. An instruction count does not depend on the load of the machine: the same program
with the same input executes the same instructions. This bench is the deterministic
companion for telling whether a change to the agent made the overhead bigger or smaller;
it says nothing about cache misses, lock contention or the daemon taking a core away.

What is measured. Each workload of bench/overhead_workloads.py runs once per configuration
as `valgrind --tool=callgrind python overhead_workloads.py NAME` (the row `startup`, if asked
for, is `python -c pass`: interpreter start, and for heapprof the import, connecting to the
daemon, the sender thread and the exit flush). The count is the whole process's instructions
(callgrind's `totals`), start-up and final flush included. Valgrind runs the threads of a
program one at a time, so the counts include heapprof's sender thread: what the agent costs
on all threads together, not the time the program waited. Profiled runs stream to a real
heapprofd that this bench starts on an empty database in a temporary directory (heapprofd
itself runs natively and is not counted). --scale defaults to 0.1: valgrind runs a program
some 50 times slower than native, so most runs take 10-20 s, big_buffers (some 14 billion
instructions, nearly all of them filling buffers) 3-4 minutes, big_heap (which builds its
million-object cache at every scale: 6.4 billion) a few minutes, and the defaults about 10
minutes on 2 cores. The work per iteration is the same at every scale, so the ratios change
little with it, apart from the fixed start-up cost weighing more at small scales.
PYTHONHASHSEED is fixed at 0 so that string hashing, and with it dict and set layouts, is
the same in every run; bytecode is compiled beforehand (PYTHONDONTWRITEBYTECODE is removed,
as users run it) and every workload runs once natively first, so no run pays for writing
.pyc files that the next one would not.

What stays not quite deterministic: the sampler's random gaps are seeded from the clock,
so which allocations are sampled differs between runs, and with it how deep the stacks
walked are and what glibc's malloc (which serves the sampled blocks) spends; what the
sender thread does depends on timing (how full its ring is when it wakes, how often it
backs off), and so do adaptive rates (HEAPPROF_ON_FULL=adapt). So a heapprof column varies
a little between two runs of the bench: within 0.05% of the total for most workloads, 0.5%
for stdlib (mostly in glibc's _int_malloc). Plain repeats to the instruction, threads
nearly (thread switches).

The table. Per workload: plain's instructions in millions, then per heapprof configuration
its instructions and their ratio to plain. The second table gives, per heapprof
configuration, the agent's self instructions: the self cost (not inclusive; read from the
callgrind file) of every function whose object file is heapprof's _agent*.so, hooks and
sender thread alike, and that count's share of the configuration's added instructions
(the rest of the overhead is spent in libc and libpython on the agent's behalf: glibc's
malloc behind the sampled blocks, memcpy, system calls, the import of the heapprof
package). The share can pass 100%: the program's own code can run a little fewer
instructions under heapprof than plain (seen in pymalloc's free and calloc paths; compare
the two runs with --keep and callgrind_annotate). Below come the events
heapprofd recorded per configuration; a configuration whose runs did not all reach heapprofd
is marked WARNING (its programs ran unprofiled, so their counts mean nothing). Whatever a run
printed on stderr is shown as a note; a failing run stops the bench.

Columns:
  --intervals        heapprof at these sampling intervals (HEAPPROF_INTERVAL), "hp I=..."
  --extra LABEL=VAR=VAL[,VAR=VAL...]
                     (repeatable) a heapprof column "hp LABEL" run with these extra environment
                     variables, as in bench/overhead.py, e.g.
                     --extra "I=64K adapt=HEAPPROF_INTERVAL=65536,HEAPPROF_ON_FULL=adapt"."""
import argparse
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

WORKLOADS = (['startup'] + list(overhead_workloads.WORKLOADS) +
             list(overhead_workloads.OPTIONAL_WORKLOADS))   # the optional ones when named
DEFAULT_SCALE = 0.1
AGENT_OBJECT = re.compile(r'(^|/)_agent[^/]*\.so$')


def parse_callgrind(path):
    """(instructions in all, {object file: self instructions}) of a callgrind output file.

    Read from the file itself, not from callgrind_annotate, which leaves the object out of
    the lines of code inlined from another source file (msgpack's pack_template.h in the
    agent's encoder), so that a sum over its lines would miss part of the agent."""
    objects, by_object = {}, {}
    total = summary = None
    current = None          # the object file of the function the cost lines belong to
    skip_next = False       # the cost line after calls= is the call's inclusive cost
    npos = 1                # position columns before the costs ("positions: line")
    with open(path, errors='replace') as f:
        for line in f:
            c = line[:1]
            if c.isdigit() or c in '+-*':
                if skip_next:
                    skip_next = False
                    continue
                fields = line.split()
                if len(fields) > npos:
                    by_object[current] = by_object.get(current, 0) + int(fields[npos])
            elif line.startswith('ob='):
                m = re.match(r'ob=(?:\((\d+)\))?\s*(.*)$', line.rstrip('\n'))
                if m.group(1) and not m.group(2):
                    current = objects.get(m.group(1), '?')
                else:
                    current = m.group(2)
                    if m.group(1):
                        objects[m.group(1)] = current
            elif line.startswith('cob='):
                # Only names the callee's object; define its id for later ob= lines.
                m = re.match(r'cob=\((\d+)\)\s+(.+)$', line.rstrip('\n'))
                if m:
                    objects[m.group(1)] = m.group(2)
            elif line.startswith('calls='):
                skip_next = True
            elif line.startswith('positions:'):
                npos = len(line.split()) - 1
            elif line.startswith('events:') and line.split()[1:2] != ['Ir']:
                raise SystemExit('%s: expected Ir as the first event, got %s'
                                 % (path, line.strip()))
            elif line.startswith('totals:'):
                total = int(line.split()[1])
            elif line.startswith('summary:'):
                summary = int(line.split()[1])
    if total is None:
        total = summary
    if total is None:
        raise SystemExit('%s: no totals: or summary: line (callgrind output cut short?)' % path)
    return total, by_object


def run_callgrind(argv, env, outfile):
    """(instructions, agent self instructions, stderr text) of one program under callgrind."""
    cmd = ['valgrind', '-q', '--tool=callgrind', '--callgrind-out-file=' + outfile] + argv
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.decode(errors='replace').strip()
    if proc.returncode != 0:
        raise SystemExit('benchmark run failed with status %d (%s): %s'
                         % (proc.returncode, ' '.join(cmd), err))
    total, by_object = parse_callgrind(outfile)
    agent = sum(n for ob, n in by_object.items() if ob and AGENT_OBJECT.search(ob))
    return total, agent, err


def mega(n):
    """Millions of instructions, with about three significant digits for small counts."""
    return '%.*fM' % (2 if n < 1e7 else 1 if n < 1e8 else 0, n / 1e6)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                 epilog=__doc__.split('\n\n', 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--scale', type=str, default=str(DEFAULT_SCALE), metavar='S',
                    help='multiplies the workloads\' loop counts (default %(default)s: some '
                    'seconds per run under valgrind)')
    ap.add_argument('--intervals', default='65536',
                    help='heapprof sampling intervals to run (1 = every allocation; '
                    'default %(default)s); empty for none')
    ap.add_argument('--workloads', default=','.join(overhead_workloads.WORKLOADS),
                    help='rows to run (default: %%(default)s; also known: %s)'
                    % ', '.join([WORKLOADS[0]] + list(overhead_workloads.OPTIONAL_WORKLOADS)))
    ap.add_argument('--extra', action='append', default=[], metavar='LABEL=VAR=VAL[,VAR=VAL...]',
                    help='a heapprof column with extra environment variables (repeatable)')
    ap.add_argument('--jobs', type=int, default=2, metavar='N',
                    help='runs under valgrind at the same time (default 2; the counts do not '
                    'depend on it)')
    ap.add_argument('--keep', metavar='DIR',
                    help='keep the callgrind output files in DIR (created if missing), named '
                    'WORKLOAD.CONFIG.callgrind, for callgrind_annotate')
    args = ap.parse_args()
    if args.jobs < 1:
        raise SystemExit('--jobs must be at least 1')
    try:
        scale = overhead_workloads.parse_scale(args.scale)
    except ValueError as e:
        raise SystemExit('--scale: %s' % e)
    extras = [overhead.parse_extra(spec) for spec in args.extra]
    intervals = overhead.parse_intervals(args.intervals)
    workloads = [w for w in args.workloads.split(',') if w]
    if not workloads:
        raise SystemExit('--workloads: give at least one (known: %s)' % ', '.join(WORKLOADS))
    for w in workloads:
        if w not in WORKLOADS:
            raise SystemExit('--workloads: unknown %r (known: %s)' % (w, ', '.join(WORKLOADS)))

    # (name, environment) per configuration; every one but plain is profiled.
    configs = [('plain', None)]
    configs += [('hp I=%s' % overhead.interval_name(i), {'HEAPPROF_INTERVAL': str(i)})
                for i in intervals]
    configs += [('hp %s' % label, env) for label, env in extras]
    names = [c[0] for c in configs]
    if len(set(names)) != len(names):
        raise SystemExit('two columns have the same name; give --extra distinct labels')
    if not shutil.which('valgrind'):
        raise SystemExit('valgrind not found on PATH; install the valgrind package')
    daemon_exe = overhead.find_heapprofd() if len(configs) > 1 else None
    if len(configs) > 1 and not (daemon_exe and os.access(daemon_exe, os.X_OK)):
        raise SystemExit('heapprofd not found%s (set HEAPPROFD to its path)'
                         % (' at %s' % daemon_exe if daemon_exe else ''))
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)

    base = {k: v for k, v in os.environ.items()
            if not k.startswith('HEAPPROF_') and k != 'PYTHONDONTWRITEBYTECODE'}
    base[overhead_workloads.SCALE_VAR] = repr(scale)
    base['PYTHONHASHSEED'] = '0'
    script = os.path.join(HERE, 'overhead_workloads.py')
    subprocess.run([sys.executable, '-c', 'import compileall, os, heapprof; '
                    'compileall.compile_dir(os.path.dirname(heapprof.__file__), quiet=1)'],
                   env=base, check=True)
    py_compile.compile(script)

    def argv_of(name, w):
        tag = '%s%s@%s' % (overhead.TAG, name, w)
        if w == 'startup':
            return [sys.executable, '-c', 'pass', tag]
        return [sys.executable, script, w, tag]

    results = {}    # (workload, config) -> (instructions, agent self instructions)
    notes = {}      # (config, stderr text) -> times seen
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix='hp-bench-cg-') as tmp:
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
            # Warm-up, natively: whatever a first run would cache is cached before counting.
            for w in workloads:
                subprocess.run(argv_of('warm-up', w)[:-1], env=base, check=True,
                               stdout=subprocess.DEVNULL)
            outdir = args.keep or tmp

            def one(job):
                w, name, env = job
                out = os.path.join(outdir, '%s.%s.callgrind' % (w, re.sub(r'[^\w=.-]+', '_',
                                                                             name)))
                return job, run_callgrind(argv_of(name, w), env, out)

            pool = concurrent.futures.ThreadPoolExecutor(args.jobs)
            try:
                # A failing run stops the bench: the runs not started yet are cancelled.
                for done, ((w, name, _), (ins, agent, err)) in enumerate(pool.map(one, jobs)):
                    results[(w, name)] = (ins, agent)
                    if err:
                        notes[(name, err)] = notes.get((name, err), 0) + 1
                    print('%d/%d %s %s: %s (%.0f s)' % (done + 1, len(jobs), w, name, mega(ins),
                                                      time.monotonic() - started),
                          file=sys.stderr)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        finally:
            status = daemon.stop() if daemon else 0
        if status != 0:
            raise SystemExit('heapprofd exited with status %s: %s' % (status, daemon.log_tail()))
        sessions = daemon.sessions() if daemon else []

    print('Python %s, scale %g, PYTHONHASHSEED=0; instructions of the whole process under '
          'callgrind (valgrind %s),' % (sys.version.split()[0], scale, valgrind_version()))
    print('all threads together: valgrind serialises threads, so heapprof\'s sender thread '
          'is counted in the heapprof columns; M = 10^6 instructions')
    hp_names = names[1:]
    width = max(16, max(len(n) for n in names) + 2)
    print('%-14s' % 'workload' + ''.join('%*s' % (width, n) for n in names))
    for w in workloads:
        plain = results[(w, 'plain')][0]
        cells = [mega(plain)] + ['%s %.3fx' % (mega(results[(w, n)][0]),
                                               results[(w, n)][0] / plain) for n in hp_names]
        print('%-14s' % w + ''.join('%*s' % (width, c) for c in cells))
    if not hp_names:
        return
    print()
    print('Agent self instructions (functions in heapprof\'s _agent*.so, all threads) and their '
          'share of the added instructions')
    print('%-14s' % 'workload' + ''.join('%*s' % (width, n) for n in hp_names))
    for w in workloads:
        plain = results[(w, 'plain')][0]
        cells = []
        for n in hp_names:
            ins, agent = results[(w, n)]
            added = ins - plain
            share = '%.0f%%' % (100.0 * agent / added) if added > 0 else 'n/a'
            cells.append('%s %s' % (mega(agent), share))
        print('%-14s' % w + ''.join('%*s' % (width, c) for c in cells))
    print()
    print('Events per heapprof configuration (dropped: not recorded)')
    for n in hp_names:
        mine = [s for s in sessions if s[0] == n]
        rec = sum(s[3] for s in mine)
        drop = sum(s[4] for s in mine)
        note = ''
        if len(mine) != len(workloads):
            note += '; WARNING: only %d of %d runs reached heapprofd' % (len(mine),
                                                                        len(workloads))
        odd = sum(1 for s in mine if s[2] != 'exited')
        if odd:
            note += '; WARNING: %d sessions did not end cleanly (status not exited)' % odd
        print('  %-*s recorded %s, dropped %s%s' % (width, n, overhead.human(rec),
                                                   overhead.human(drop), note))
    for (name, err), count in sorted(notes.items()):
        print('note: %s printed (%d run%s): %s' % (name, count, '' if count == 1 else 's',
                                                   err.splitlines()[0]))


def valgrind_version():
    try:
        out = subprocess.run(['valgrind', '--version'], stdout=subprocess.PIPE, text=True)
        return out.stdout.strip().replace('valgrind-', '')
    except OSError:
        return '?'


if __name__ == '__main__':
    main()
