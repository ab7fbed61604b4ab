#!/usr/bin/env python3
"""Agent overhead benchmark: allocation-heavy workloads run side by side as plain Python,
under heapprof at several sampling intervals (1 = record everything), and under
`python -X tracemalloc=1` and `=25`; prints wall time, CPU time and peak RSS as ratios to plain.

    python bench/overhead.py [--python PYTHON] [--reps 7 | --pairs 15] [--seed N] [--scale S]
                             [--intervals 1,16384,65536,262144]
                             [--workloads startup,churn,...]
                             [--tracemalloc 1,25 | --no-tracemalloc]
                             [--extra LABEL=VAR=VAL[,VAR=VAL...] ...] [--also LABEL=PYTHON ...]
                             [--pin PROGRAM_CPUS:DAEMON_CPUS] [--discard] [--ratio-to COLUMN]
                             [--target 1.02]

--python names the interpreter that runs every column, plain, heapprof and tracemalloc
alike (default: the one running this script); it must have heapprof installed (e.g. a
venv's: .venv/bin/python for the main build, .venv-py3.12/bin/python for CPython 3.12 as
setup.sh test builds it). heapprofd is found as $HEAPPROFD, beside that Python, or on
PATH.

What is measured. Each workload of bench/overhead_workloads.py runs as its own process, start-up
and the final flush included; wall time, CPU time (user + system of the child, from wait4) and
peak RSS are taken. --scale (HEAPPROF_BENCH_SCALE of the workloads) multiplies their loop counts;
the default makes each run about 1.2 s plain, so that the fixed cost of a process does not
decide the ratios. That fixed cost is shown on its own in the first row, `startup`: `python -c
pass` in every configuration (interpreter start; for heapprof the import, connecting to the
daemon, the sender thread and the exit flush), run --startup-runs times per round; its `added
ms` line is what every profiled process pays once.

Noise. Every configuration of a workload runs once per round, back to back, in an order
drawn at random each round (--seed makes it repeatable; so no configuration always follows
the one that kept the daemon busy, or always runs first after a pause); before each run the
bench waits until heapprofd is idle (its CPU time stops growing), so a run does not compete
with the daemon still storing the previous run's events. Each round starts a fresh heapprofd
on an empty database (removed after the round), so no round writes into a bigger database
than another. `--pairs N` is the method for small effects: N rounds of just plain and
heapprof at its default interval ("hp default"; --extra/--also add columns), so that each
round is one interleaved pair; use 15 or more.

Each round's run is compared with that round's plain run: the per-pair ratio. The first
line of a cell is the median wall time and the median per-pair ratio; `Q1-Q3` and
`min-max` its quartiles and range over the rounds (for the plain column: each round's plain
time over the median plain time, i.e. the noise of plain itself). `median CI` is a 95%
distribution-free confidence interval of the median ratio (order statistics of the
binomial: the k-th smallest and k-th largest ratio; with fewer than 6 pairs there is none,
`-`); `slower` counts the pairs in which heapprof's run took longer, with the two-sided
sign test's p (how likely so lopsided a count is if heapprof changed nothing). A change is
real when its CI excludes 1.00 (equivalently p < 0.05); two builds differ when their CIs
do not overlap. The line named after --target (default `1.02x?`) judges each column
against that ratio: `met` when the whole CI is at or under it, `over` when the whole CI is
above it, else `under?..H` or `over?L..`: the median is under (over) the target, but the
CI reaches H (L) on the other side, so the run cannot tell; a quieter machine or more pairs
can. `CPU time` is the median per-pair ratio of the program's own CPU time
(user + system, sender thread included, from wait4) and its 95% CI: wall time is the
target, but when heapprofd or another job takes a core away from the program, CPU time
shows what the program itself paid. `peak RSS` is the ratio of the medians (the plain
column gives plain's peak RSS in MiB). heapprofd's own CPU is not counted in any of these.

After the table, one line per heapprof configuration gives the events heapprofd recorded and
the events dropped (summed over the `sessions` view of each round's database; every run's argv
carries a tag naming its configuration), and per workload the share of events dropped: drops
mean a record-everything column did not record everything. A column whose runs did not all
reach heapprofd is marked WARNING there (its programs ran unprofiled, so its times mean
nothing); whatever a run printed on stderr is shown below as a note (a failing run stops the
bench).

Columns:
  --intervals        heapprof at these sampling intervals (HEAPPROF_INTERVAL), "hp I=..."
  --extra LABEL=VAR=VAL[,VAR=VAL...]
                     (repeatable) a heapprof column "hp LABEL" run with these extra environment
                     variables, e.g. --extra "I=1 block=HEAPPROF_INTERVAL=1,HEAPPROF_ON_FULL=block"
                     or "I=1 adapt=HEAPPROF_INTERVAL=1,HEAPPROF_ON_FULL=adapt". Variables are
                     passed through as given; without HEAPPROF_INTERVAL heapprof's default applies.
                     A value may contain commas when the text after the comma is not NAME=...
                     (HEAPPROF_RATES=1024:0.5,65536:1 works); the label ends at the last
                     '=NAME=' before the first such comma.
  --also LABEL=PYTHON
                     (repeatable) the heapprof columns (intervals and extras) again, run by
                     another Python with another heapprof build installed (e.g. a venv holding
                     the previous commit): two builds side by side, under the same load.
  --ratio-to COLUMN  compare every run with COLUMN's run of the same round instead of
                     plain's, e.g. --also base=OLDVENV/bin/python --ratio-to "base default":
                     the two builds' per-pair ratio, instead of comparing two ratios to
                     plain that each carry plain's noise too.
  --tracemalloc N[,N...]
                     `python -X tracemalloc=N` columns, N frames kept (default 1,25)
  --no-tracemalloc   leave out the tracemalloc columns (they are slow).

The daemon:
  --pin P:D          bind every run (plain too) to CPUs P and heapprofd to CPUs D (e.g. 0:1),
                     so that the daemon's work is always on the other core.
  --discard          profiled runs send to a server that reads and drops the stream instead
                     of heapprofd: what sending costs the program without the daemon's work
                     (its cache and memory traffic on the other core). No events are counted."""
import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import overhead_workloads  # noqa: E402  (beside this file; for its scale and names)

WORKLOADS = ['startup'] + list(overhead_workloads.WORKLOADS)
OPTIONAL_WORKLOADS = list(overhead_workloads.OPTIONAL_WORKLOADS)   # only when named
TAG = 'hp-bench-config='          # argv tag of every run: the configuration's name
IDLE_WINDOW = 0.1                  # heapprofd is idle when its CPU grew <= 1 tick in this window
IDLE_TIMEOUT = 60.0                # give up waiting for an idle daemon after this (and say so)
CLK_TCK = os.sysconf('SC_CLK_TCK') if hasattr(os, 'sysconf') else 100


def find_heapprofd(python=sys.executable):
    env = os.environ.get('HEAPPROFD')
    if env:
        return env
    beside = os.path.join(os.path.dirname(os.path.abspath(python)), 'heapprofd')
    return beside if os.access(beside, os.X_OK) else shutil.which('heapprofd')


def parse_intervals(text, option='--intervals'):
    """'1,65536' -> [1, 65536]; '' -> []. SystemExit with a one-line message otherwise."""
    try:
        intervals = [int(x) for x in text.split(',') if x]
    except ValueError:
        raise SystemExit('%s %r: expected numbers separated by commas' % (option, text))
    if any(i < 1 for i in intervals):
        raise SystemExit('%s: every number must be at least 1' % option)
    return intervals


def parse_extra(spec):
    """'LABEL=VAR=VAL[,VAR=VAL...]' -> (label, {VAR: VAL}); SystemExit with the reason."""
    parts = re.split(r',(?=[A-Za-z_][A-Za-z0-9_]*=)', spec)
    m = re.match(r'^(.+)=([A-Za-z_][A-Za-z0-9_]*)=(.*)$', parts[0], re.S)
    if not m:
        raise SystemExit('--extra %r: expected LABEL=VAR=VAL[,VAR=VAL...]' % spec)
    label, env = m.group(1), {m.group(2): m.group(3)}
    for p in parts[1:]:
        var, _, val = p.partition('=')
        env[var] = val
    if 'HEAPPROF_SOCKET' in env:
        raise SystemExit('--extra %r: HEAPPROF_SOCKET is the bench\'s own daemon; leave it out'
                         % spec)
    return label, env


def interval_name(i):
    return '1 (all)' if i == 1 else ('%dK' % (i // 1024) if i % 1024 == 0 else str(i))


def load_average():
    try:
        return '%.2f' % os.getloadavg()[0]
    except OSError:
        return '?'


class Daemon:
    """One heapprofd on a fresh database in DIRECTORY, for one round."""

    def __init__(self, exe, directory, cpus=None):
        self.db = os.path.join(directory, 'bench.sqlite')
        self.sock = os.path.join(directory, 'd.sock')
        self.log = os.path.join(directory, 'heapprofd.log')
        # No read indexes at shutdown: nobody queries these databases beyond `sessions`.
        with open(self.log, 'w') as log:
            self.proc = subprocess.Popen(
                [exe, '--db', self.db, '--socket', self.sock, '--no-index', '--log-level', 'warn'],
                stdout=subprocess.PIPE, stderr=log, text=True, preexec_fn=pinned(cpus))
        line = self.proc.stdout.readline()
        if 'listening on' not in line:
            self.stop()
            raise SystemExit('heapprofd did not start: %s %s' % (line.strip(), self.log_tail()))
        self.stat = '/proc/%d/stat' % self.proc.pid

    def log_tail(self):
        try:
            with open(self.log) as f:
                return ' '.join(f.read().split('\n')[-5:]).strip()
        except OSError:
            return ''

    def cpu_ticks(self):
        """utime + stime of heapprofd in clock ticks, or None where /proc is missing."""
        try:
            with open(self.stat) as f:
                fields = f.read().rsplit(')', 1)[1].split()
            return int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            return None

    def wait_idle(self):
        """Wait until heapprofd has stored what earlier runs sent; seconds waited."""
        t0 = time.monotonic()
        last = self.cpu_ticks()
        while last is not None and time.monotonic() - t0 < IDLE_TIMEOUT:
            time.sleep(IDLE_WINDOW)
            now = self.cpu_ticks()
            if now is None or now - last <= 1:
                break
            last = now
        if self.proc.poll() is not None:
            raise SystemExit('heapprofd exited (status %s): %s' % (self.proc.returncode,
                                                                    self.log_tail()))
        return time.monotonic() - t0

    def stop(self):
        """Stop heapprofd (it stores everything received first); its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        return self.proc.returncode

    def sessions(self):
        """[(config, workload, status, received, dropped)] of the runs this daemon saw."""
        rows = []
        con = sqlite3.connect('file:%s?mode=ro' % self.db, uri=True)
        try:
            for argv, status, rec, drop in con.execute(
                    'SELECT argv, status, events_received, events_dropped FROM sessions'):
                tags = [a for a in json.loads(argv) if a.startswith(TAG)]
                if tags:
                    config, _, workload = tags[0][len(TAG):].rpartition('@')
                    rows.append((config, workload, status, rec, drop))
        finally:
            con.close()
        return rows


def pinned(cpus):
    """A preexec_fn that binds the child to CPUS (a set of CPU numbers), or None."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def parse_pin(text):
    """'0:1' -> ({0}, {1}): the programs' CPUs and heapprofd's. SystemExit otherwise."""
    try:
        prog, daemon = ({int(c) for c in part.split(',')} for part in text.split(':'))
    except ValueError:
        raise SystemExit('--pin %r: expected PROGRAM_CPUS:DAEMON_CPUS, e.g. 0:1' % text)
    avail = os.sched_getaffinity(0)
    if not prog <= avail or not daemon <= avail:
        raise SystemExit('--pin %r: this process may run on CPUs %s only'
                         % (text, ','.join(map(str, sorted(avail)))))
    return prog, daemon


# A stand-in for heapprofd that accepts agents and reads and drops what they send (the
# stream is one-way: proto/PROTOCOL.md), so that the bench can tell what the daemon's work
# on the other core costs the program from what sending costs it.
DISCARD_SERVER = r'''
import os, selectors, socket, sys
path = sys.argv[1]
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(64)
srv.setblocking(False)
sel = selectors.DefaultSelector()
sel.register(srv, selectors.EVENT_READ)
print('discard: listening on %s' % path, flush=True)
buf = bytearray(1 << 20)
accepted = 0
while True:
    for key, _ in sel.select():
        if key.fileobj is srv:
            try:
                conn, _ = srv.accept()
            except BlockingIOError:
                continue
            conn.setblocking(False)
            sel.register(conn, selectors.EVENT_READ)
            accepted += 1
            with open(path + '.accepted', 'w') as f:
                f.write(str(accepted))
            continue
        try:
            n = key.fileobj.recv_into(buf)
        except BlockingIOError:
            continue
        except OSError:
            n = 0
        if n == 0:
            sel.unregister(key.fileobj)
            key.fileobj.close()
'''


class Discarder(Daemon):
    """DISCARD_SERVER in place of heapprofd, for one round: no database, no sessions."""

    def __init__(self, directory, cpus=None):
        self.db = None
        self.sock = os.path.join(directory, 'd.sock')
        self.log = os.path.join(directory, 'discard.log')
        with open(self.log, 'w') as log:
            self.proc = subprocess.Popen([sys.executable, '-c', DISCARD_SERVER, self.sock],
                                         stdout=subprocess.PIPE, stderr=log, text=True,
                                         preexec_fn=pinned(cpus))
        line = self.proc.stdout.readline()
        if 'listening on' not in line:
            self.stop()
            raise SystemExit('discarding server did not start: %s %s'
                             % (line.strip(), self.log_tail()))
        self.stat = '/proc/%d/stat' % self.proc.pid

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        return 0

    def sessions(self):
        return []

    def accepted(self):
        """Connections accepted so far."""
        try:
            with open(self.sock + '.accepted') as f:
                return int(f.read())
        except (OSError, ValueError):
            return 0


def run_once(argv, env, cpus=None):
    """(wall s, CPU s, peak RSS KiB, stderr text) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=pinned(cpus))
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors='replace').strip()
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit('benchmark run failed with status %d (%s): %s'
                         % (proc.returncode, ' '.join(argv), err))
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss, err


def fmt_time(seconds, startup):
    return '%.1fms' % (seconds * 1e3) if startup else '%.2fs' % seconds


def binom_cdf(k, n):
    """P(X <= k) for X ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(0, k + 1)) / 2.0 ** n if k >= 0 else 0.0


def median_ci(xs, level=0.95):
    """(low, high): a distribution-free confidence interval of the median of xs, at least
    LEVEL, from order statistics (the k-th smallest and k-th largest); None below 6 values,
    where no such interval reaches 95%."""
    s = sorted(xs)
    n = len(s)
    k = 0
    while k + 1 <= n // 2 and binom_cdf(k, n) <= (1 - level) / 2:
        k += 1          # P(median < s[k]) = binom_cdf(k - 1, n) stays within the tail
    if k == 0:
        return None
    return s[k - 1], s[n - k]


def sign_test(ratios):
    """(pairs with ratio > 1, pairs with a ratio other than 1, two-sided p of the sign test)."""
    up = sum(1 for r in ratios if r > 1)
    down = sum(1 for r in ratios if r < 1)
    n = up + down
    if n == 0:
        return 0, 0, 1.0
    return up, n, min(1.0, 2 * binom_cdf(min(up, down), n))


def verdict(ratios, target):
    """What a run says of a ratio target (e.g. 1.02 for "at most 2% slower"), from the
    median per-pair ratio and its CI (median_ci): 'met' when the whole CI is at or under
    the target, 'over' when the whole CI is above it; otherwise the run cannot tell:
    'under?..H' (the median at or under the target, the CI reaching up to H) or
    'over?L..' (the median over it, the CI reaching down to L). '-' below 6 pairs, where
    there is no CI."""
    ci = median_ci(ratios)
    if ci is None:
        return '-'
    low, high = ci
    if high <= target:
        return 'met'
    if low > target:
        return 'over'
    if statistics.median(ratios) <= target:
        return 'under?..%.3f' % high
    return 'over?%.3f..' % low


def quartiles(xs):
    """(Q1, Q3) of xs (inclusive method; a single value is its own quartiles)."""
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method='inclusive')
    return q[0], q[2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                 epilog=__doc__.split('\n\n', 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--python', default=sys.executable, metavar='PYTHON',
                    help='interpreter with heapprof installed that runs every column '
                    '(default: this one, %(default)s)')
    ap.add_argument('--reps', type=int, default=7, help='rounds (default 7; medians reported)')
    ap.add_argument('--pairs', type=int, default=None, metavar='N',
                    help='N rounds of plain against heapprof at its default interval only '
                    '(no --intervals or tracemalloc columns unless given): interleaved pairs '
                    'for small effects; use 15 or more')
    ap.add_argument('--pin', metavar='PROGRAM_CPUS:DAEMON_CPUS',
                    help='bind every run to PROGRAM_CPUS and heapprofd to DAEMON_CPUS '
                    '(e.g. 0:1: the daemon on the other core, as taskset would)')
    ap.add_argument('--discard', action='store_true',
                    help='profiled runs send to a server that reads and drops the stream '
                    'instead of heapprofd (what sending costs without the daemon\'s work)')
    ap.add_argument('--seed', type=int, default=None,
                    help='seed of the random order of each round (default: drawn, and printed)')
    ap.add_argument('--scale', type=str, default=None, metavar='S',
                    help='multiplies the workloads\' loop counts (default %g: about 1.2 s '
                    'per workload plain)' % overhead_workloads.DEFAULT_SCALE)
    ap.add_argument('--intervals', default=None,
                    help='heapprof sampling intervals to run (1 = every allocation; default '
                    '1,16384,65536,262144, none with --pairs); empty for none')
    ap.add_argument('--workloads', default=','.join(WORKLOADS),
                    help='rows to run (default: %%(default)s; also: %s, which need numpy '
                    'in --python)' % ', '.join(OPTIONAL_WORKLOADS))
    ap.add_argument('--startup-runs', type=int, default=5, metavar='N',
                    help='runs of `python -c pass` per configuration and round (median '
                    'taken; default 5)')
    ap.add_argument('--tracemalloc', default=None, metavar='N[,N...]',
                    help='tracemalloc columns: frames kept by -X tracemalloc=N (default '
                    '1,25; none with --pairs)')
    ap.add_argument('--no-tracemalloc', action='store_true',
                    help='leave out the tracemalloc columns')
    ap.add_argument('--extra', action='append', default=[], metavar='LABEL=VAR=VAL[,VAR=VAL...]',
                    help='a heapprof column with extra environment variables (repeatable)')
    ap.add_argument('--also', action='append', default=[], metavar='LABEL=PYTHON',
                    help='also run the heapprof columns with this Python (another build)')
    ap.add_argument('--target', type=float, default=1.02, metavar='RATIO',
                    help='the per-pair ratio each column is judged against, on the line '
                    'named after it (default %(default)g: the `1.02x?` line, at most 2%% '
                    'slower than the reference)')
    ap.add_argument('--ratio-to', default='plain', metavar='COLUMN',
                    help='the column each run is compared with, run of the same round '
                    '(default plain; e.g. "base default" with --also base=...: two builds '
                    'compared pair by pair)')
    args = ap.parse_args()
    pairs = args.pairs is not None
    if pairs:
        args.reps = args.pairs
        if args.intervals is None:
            args.intervals = ''
        if args.tracemalloc is None:
            args.no_tracemalloc = True
    if args.intervals is None:
        args.intervals = '1,16384,65536,262144'
    if args.tracemalloc is None:
        args.tracemalloc = '1,25'
    if args.reps < 1 or args.startup_runs < 1:
        raise SystemExit('--reps, --pairs and --startup-runs must be at least 1')
    pin = parse_pin(args.pin) if args.pin else (None, None)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    order_rng = random.Random(seed)
    python = shutil.which(args.python)
    if not python:
        raise SystemExit('--python %r: no such executable' % args.python)
    version = subprocess.run([python, '-c', 'import platform; print(platform.python_version())'],
                             capture_output=True, text=True).stdout.strip()
    if not version:
        raise SystemExit('--python %r: does not run' % args.python)
    try:
        scale = overhead_workloads.parse_scale(
            args.scale if args.scale is not None else str(overhead_workloads.DEFAULT_SCALE))
    except ValueError as e:
        raise SystemExit('--scale: %s' % e)
    others = []
    for spec in args.also:
        label, sep, exe = spec.partition('=')
        if not sep or not label or not os.access(exe, os.X_OK):
            raise SystemExit('--also %r: expected LABEL=PYTHON with an executable PYTHON' % spec)
        others.append((label, exe))
    extras = [parse_extra(spec) for spec in args.extra]
    intervals = parse_intervals(args.intervals)
    tm_frames = [] if args.no_tracemalloc else parse_intervals(args.tracemalloc, '--tracemalloc')
    workloads = [w for w in args.workloads.split(',') if w]
    for w in workloads:
        if w not in WORKLOADS + OPTIONAL_WORKLOADS:
            raise SystemExit('--workloads: unknown %r (known: %s)'
                             % (w, ', '.join(WORKLOADS + OPTIONAL_WORKLOADS)))

    # As users run it: byte-compiled modules (pip compiles what it installs; so does setup.sh).
    base = {k: v for k, v in os.environ.items()
            if not k.startswith('HEAPPROF_') and k != 'PYTHONDONTWRITEBYTECODE'}
    base[overhead_workloads.SCALE_VAR] = repr(scale)
    for exe in [python] + [o[1] for o in others]:
        subprocess.run([exe, '-c', 'import compileall, os, heapprof; '
                        'compileall.compile_dir(os.path.dirname(heapprof.__file__), quiet=1)'],
                       env=base, check=True)

    # (name, python, interpreter options, environment, profiled by heapprof?)
    configs = [('plain', python, [], {}, False)]
    hp_columns = [('default', {})] if pairs else []
    hp_columns += [('I=%s' % interval_name(i), {'HEAPPROF_INTERVAL': str(i)}) for i in intervals]
    hp_columns += extras
    for label, env in hp_columns:
        configs.append(('hp %s' % label, python, [], env, True))
        for olabel, exe in others:
            configs.append(('%s %s' % (olabel, label), exe, [], env, True))
    for frames in tm_frames:
        configs.append(('tracemalloc=%d' % frames, python, ['-X', 'tracemalloc=%d' % frames],
                        {}, False))
    names = [c[0] for c in configs]
    if args.ratio_to not in names:
        raise SystemExit('--ratio-to %r names no column; the columns are: %s'
                         % (args.ratio_to, ', '.join(names)))
    if len(set(names)) != len(names):
        raise SystemExit('two columns have the same name; give --extra/--also distinct labels')
    daemon_exe = None
    if any(c[4] for c in configs):
        daemon_exe = find_heapprofd(python)
        if not daemon_exe:
            raise SystemExit('heapprofd not found (set HEAPPROFD)')

    script = os.path.join(HERE, 'overhead_workloads.py')
    results = {}     # (workload, config) -> [(wall, cpu, rss)], one per round
    warnings = {}    # (config, stderr text) -> times seen
    sessions = []    # (config, workload, status, received, dropped)
    idle_wait = 0.0
    accepted = 0     # connections the discarding server saw (--discard)
    load_before = load_average()
    started = time.monotonic()
    for rnd in range(args.reps):
        with tempfile.TemporaryDirectory(prefix='hp-bench-') as tmp:
            daemon = None
            if daemon_exe:
                daemon = (Discarder(tmp, pin[1]) if args.discard
                          else Daemon(daemon_exe, tmp, pin[1]))
            try:
                for w in workloads:
                    # A random order each round; within a round plain runs once per workload.
                    order = list(configs)
                    order_rng.shuffle(order)
                    runs = args.startup_runs if w == 'startup' else 1
                    per_round = {}
                    for _ in range(runs):
                        for name, exe, xopts, extra, profiled in order:
                            env = dict(base, **extra)
                            if profiled:
                                env['HEAPPROF_SOCKET'] = daemon.sock
                            tag = '%s%s@%s' % (TAG, name, w)
                            if w == 'startup':
                                argv = [exe] + xopts + ['-c', 'pass', tag]
                            else:
                                argv = [exe] + xopts + [script, w, tag]
                            if daemon:
                                idle_wait += daemon.wait_idle()
                            wall, cpu, rss, err = run_once(argv, env, pin[0])
                            per_round.setdefault(name, []).append((wall, cpu, rss))
                            if err:
                                warnings[(name, err)] = warnings.get((name, err), 0) + 1
                    for name, samples in per_round.items():
                        results.setdefault((w, name), []).append(
                            tuple(statistics.median(s[i] for s in samples) for i in range(3)))
            finally:
                if daemon:
                    status = daemon.stop()
            if daemon and args.discard:
                accepted += daemon.accepted()
            elif daemon:
                if status != 0:
                    raise SystemExit('heapprofd exited with status %s: %s'
                                     % (status, daemon.log_tail()))
                sessions += daemon.sessions()
        print('round %d/%d done (%.0f s)' % (rnd + 1, args.reps, time.monotonic() - started),
              file=sys.stderr)

    print('Python %s, scale %g, %d rounds (startup: median of %d runs per round), order seed %d%s; '
          'load average %s before, %s after; waited %.1f s in all for an idle heapprofd '
          'before runs' % (version, scale, args.reps, args.startup_runs, seed,
                           (', pinned %s' % args.pin if args.pin else '') +
                           (', daemon discarding' if args.discard else ''), load_before,
                           load_average(), idle_wait))
    print('Cells: median wall time, median per-pair ratio to %s; Q1-Q3, min-max: that ratio '
          'over the rounds; median CI: its 95%% interval; slower: pairs with ratio > 1 and the '
          'sign test\'s p; %gx?: met (the whole CI at or under %g), over (the whole CI above '
          'it), or, when the run cannot tell, under?..H (the median under, the CI up to H) or '
          'over?L.. (the median over, the CI down to L); CPU time: the program\'s user+sys '
          'ratio, median and 95%% interval; peak RSS: ratio of medians'
          % (args.ratio_to, args.target, args.target))
    width = max(14, max(len(n) for n in names) + 2)
    print('%-16s' % 'workload' + ''.join('%*s' % (width, n) for n in names))
    for w in workloads:
        startup = w == 'startup'
        ref = results[(w, args.ratio_to)]  # plain, unless --ratio-to names another
        ref_wall = statistics.median(r[0] for r in ref)
        ref_rss = statistics.median(r[2] for r in ref)
        lines = {k: [] for k in ('time', 'iqr', 'range', 'ci', 'sign', 'target', 'added',
                                 'cpu', 'cpuci', 'rss')}
        for n in names:
            rows = results[(w, n)]
            wall = statistics.median(r[0] for r in rows)
            cpu_ratios = []
            if n == args.ratio_to:
                ratios = [r[0] / ref_wall for r in rows]
                ratio, cpu_ratio = 1.0, 1.0
            else:
                ratios = [r[0] / p[0] for r, p in zip(rows, ref)]
                ratio = statistics.median(ratios)
                cpu_ratios = [r[1] / p[1] for r, p in zip(rows, ref) if p[1]]
                cpu_ratio = statistics.median(cpu_ratios) if cpu_ratios else float('nan')
            added = statistics.median(r[0] - p[0] for r, p in zip(rows, ref))
            rss = statistics.median(r[2] for r in rows)
            ci = median_ci(ratios) if n != args.ratio_to else None
            cpu_ci = median_ci(cpu_ratios) if cpu_ratios else None
            up, nonzero, p_sign = sign_test(ratios)
            lines['time'].append('%s %.3fx' % (fmt_time(wall, startup), ratio))
            lines['iqr'].append('%.3f-%.3f' % quartiles(ratios))
            lines['range'].append('%.2f-%.2f' % (min(ratios), max(ratios)))
            lines['ci'].append('%.3f-%.3f' % ci if ci else '-')
            lines['sign'].append('%d/%d p=%.2f' % (up, nonzero, p_sign)
                                 if n != args.ratio_to else '-')
            lines['target'].append(verdict(ratios, args.target) if n != args.ratio_to else '-')
            lines['added'].append('%+.1f' % (added * 1e3))
            lines['cpu'].append('%.3fx' % cpu_ratio)
            lines['cpuci'].append('%.3f-%.3f' % cpu_ci if cpu_ci else '-')
            lines['rss'].append('%.2fx' % (rss / ref_rss) if n != args.ratio_to
                                else '%.1fMiB' % (ref_rss / 1024))
        labels = [('time', w), ('iqr', '  Q1-Q3'), ('range', '  min-max'),
                  ('ci', '  median CI'), ('sign', '  slower'), ('cpu', '  CPU time'),
                  ('cpuci', '  CPU CI'), ('rss', '  peak RSS')]
        if startup:
            labels.insert(5, ('added', '  added ms'))
        else:   # a fixed cost of some 2 ms over a 15 ms process is judged in ms, not here
            labels.insert(5, ('target', '  %gx?' % args.target))
        for key, label in labels:
            print('%-16s' % label + ''.join('%*s' % (width, c) for c in lines[key]))

    if daemon_exe and args.discard:
        print()
        expected = args.reps * sum(args.startup_runs if w == 'startup' else 1 for w in workloads)
        expected *= sum(1 for c in configs if c[4])
        print('Profiled runs sent to a server that discards (--discard): %d of %d runs '
              'connected%s' % (accepted, expected, '' if accepted == expected else
                               ' (WARNING: the others ran unprofiled)'))
    elif daemon_exe:
        print()
        print('Events per heapprof configuration (all rounds and rows; dropped: not recorded)')
        expected = args.reps * sum(args.startup_runs if w == 'startup' else 1 for w in workloads)
        for name, _, _, _, profiled in configs:
            if not profiled:
                continue
            mine = [s for s in sessions if s[0] == name]
            rec = sum(s[3] for s in mine)
            drop = sum(s[4] for s in mine)
            by_w = []
            for w in workloads:
                wr = sum(s[3] for s in mine if s[1] == w)
                wd = sum(s[4] for s in mine if s[1] == w)
                if w != 'startup':
                    by_w.append('%s %.0f%%' % (w, 100.0 * wd / (wr + wd) if wr + wd else 0))
            odd = sum(1 for s in mine if s[2] != 'exited')
            note = ''
            if len(mine) != expected:
                note += '; WARNING: only %d of %d runs reached heapprofd' % (len(mine), expected)
            if odd:
                note += '; WARNING: %d sessions did not end cleanly (status not exited)' % odd
            if drop:
                note = '; dropped by workload: %s%s' % (', '.join(by_w), note)
            print('  %-*s recorded %s, dropped %s (%.1f%%)%s'
                  % (width, name, human(rec), human(drop),
                     100.0 * drop / (rec + drop) if rec + drop else 0, note))
    for (name, err), count in sorted(warnings.items()):
        print('note: %s printed (%d run%s): %s' % (name, count, '' if count == 1 else 's',
                                                   err.splitlines()[0]))


def human(n):
    for unit, div in (('G', 1e9), ('M', 1e6), ('k', 1e3)):
        if n >= div:
            return '%.1f%s' % (n / div, unit)
    return str(n)


if __name__ == '__main__':
    main()
