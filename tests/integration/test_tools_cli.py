"""The `heapprof` command line over hand-built spike / leak / steady databases (suite 'tools').

Runs the installed console script (beside HEAPPROF_PYTHON) and `python -m heapprof` as real
processes. Expected figures come from the scenarios or from direct SQL over the public views.
"""
import contextlib
import csv
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import unittest

import tools_scenarios as sc

from heapprof import _db
from heapprof import cli
from heapprof.reader import read as hr_read

PY = os.environ.get('HEAPPROF_PYTHON', sys.executable)
SCRIPT = os.path.join(os.path.dirname(PY), 'heapprof')
TIMEOUT = 60


def human(n):
    """The CLI's unit formatting, restated so a change in it is noticed here."""
    n = float(n)
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if n < 1024:
            return '%d %s' % (n, unit) if unit == 'B' else '%.1f %s' % (n, unit)
        n /= 1024
    return '%.1f TiB' % n


def heapprof(*args, cwd=None):
    return subprocess.run([SCRIPT] + list(args), capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=cwd, stdin=subprocess.DEVNULL)


class CliTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix='hp-tools-cli-')
        d = cls.dir = cls.tmp.name
        cls.spike = sc.spike()
        cls.leak = sc.leak()
        cls.spike_db = sc.write_db(os.path.join(d, 'spike.sqlite'), cls.spike)
        cls.leak_db = sc.write_db(os.path.join(d, 'leak.sqlite'), cls.leak)
        cls.steady_db = sc.write_db(os.path.join(d, 'steady.sqlite'), sc.steady())
        cls.both = sc.write_db(os.path.join(d, 'both.sqlite'), sc.spike(1), sc.leak(2))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def ok(self, *args, cwd=None):
        p = heapprof(*args, cwd=cwd)
        self.assertEqual(p.returncode, 0, 'heapprof %s\nstdout: %s\nstderr: %s'
                         % (' '.join(args), p.stdout, p.stderr))
        self.assertNotIn('Traceback', p.stderr)
        return p

    def fails(self, *args, pattern, in_process=False):
        """A user error: non-zero exit, exactly one line on stderr, no traceback. The big
        error matrix runs in-process (heapprof.cli.main) to stay fast; the rest as processes."""
        if in_process:
            err, out = io.StringIO(), io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                try:
                    code = cli.main(list(args))
                except SystemExit as e:
                    code = e.code
            p = subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
        else:
            p = heapprof(*args)
        self.assertNotEqual(p.returncode, 0, 'heapprof %s succeeded' % ' '.join(args))
        self.assertNotIn('Traceback', p.stderr)
        lines = p.stderr.splitlines()
        self.assertEqual(len(lines), 1, 'stderr of heapprof %s: %r' % (' '.join(args), p.stderr))
        self.assertRegex(lines[0], r'^heapprof: ')
        self.assertRegex(lines[0], pattern)
        return p

    # ------------------------------------------------------------ entry points and help
    def test_console_script_runs_the_interpreter_it_was_built_for(self):
        with open(SCRIPT) as f:
            self.assertEqual(f.readline().strip(), '#!' + PY)
        self.assertTrue(os.access(SCRIPT, os.X_OK))

    def test_every_subcommand_has_help(self):
        p = self.ok('--help')
        for cmd in ('sessions', 'top', 'leaks', 'plot', 'flame', 'flow', 'stats', 'run'):
            self.assertIn(cmd, p.stdout)
        for cmd in ('sessions', 'top', 'leaks', 'plot', 'flame', 'flow', 'stats'):
            p = self.ok(cmd, '--help')
            self.assertIn('--db', p.stdout)
            if cmd in ('top', 'flame', 'flow'):
                self.assertIn('--at', p.stdout)
            if cmd != 'sessions':
                self.assertIn('--session', p.stdout)

    def test_python_dash_m_heapprof_is_the_same_cli(self):
        p = subprocess.run([PY, '-m', 'heapprof', 'sessions', '--db', self.both],
                           capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout, self.ok('sessions', '--db', self.both).stdout)

    def test_run_and_stats_program_go_to_the_agent_runner(self):
        """`run ...` and `stats PROGRAM` pass their raw arguments to heapprof.runner; `stats`
        with --db reads the database (tested below)."""
        p = self.ok('run', '--help')
        self.assertIn('SCRIPT', p.stdout)
        prog = os.path.join(self.dir, 'tiny.py')
        with open(prog, 'w') as f:
            f.write('import sys\nx = [bytes(100) for _ in range(1000)]\n'
                    'print("args", sys.argv[1:])\n')
        p = self.ok('stats', prog, '--db', 'not-ours')
        self.assertIn("args ['--db', 'not-ours']", p.stdout)
        self.assertIn('every allocation counted', p.stdout + p.stderr)

    def test_no_subcommand_prints_usage_and_fails(self):
        p = heapprof()
        self.assertEqual(p.returncode, 2)
        self.assertIn('usage:', p.stderr)

    # ------------------------------------------------------------ sessions
    def test_sessions_table(self):
        out = self.ok('sessions', '--db', self.both).stdout.splitlines()
        self.assertRegex(out[0], r'^session\s+pid\s+ppid\s+status')
        self.assertRegex(out[2], r'^\s*1\s+1000\s+1\s+exited\s.*3\.00 s\s+every 4\.0 KiB'
                                 r'.*spike\.py --flag')
        self.assertRegex(out[3], r'^\s*2\s+2000\s+1\s+exited\s.*leak\.py --flag')
        self.assertEqual(len(out), 4)

    def test_default_session_is_the_program_not_its_child_processes(self):
        family = sc.family_db(os.path.join(self.dir, 'family.sqlite'))
        note = (r'^heapprof: .*family\.sqlite holds 3 sessions; showing 1 \(pid 1000, '
                r'spike\.py --flag\) \(choose with --session\)\n$')
        for cmd in (['top'], ['leaks'], ['flame', '-o', '-'], ['stats']):
            p = self.ok(*cmd, '--db', family)
            self.assertRegex(p.stderr, note, cmd)       # exactly one line
            if cmd[0] != 'flame':
                self.assertIn('session 1 (pid 1000', p.stdout, cmd)
        self.assertIn('make_spike', self.ok('top', '--db', family).stdout)
        # --session wins, silently.
        p = self.ok('leaks', '--db', family, '--session', '2')
        self.assertEqual(p.stderr, '')
        self.assertIn('session 2 (pid 2000', p.stdout)
        self.assertIn('handle_request', p.stdout)
        # A database with one session says nothing about choosing.
        self.assertEqual(self.ok('top', '--db', self.spike_db).stderr, '')

    def test_db_defaults_to_newest_heapprof_file_in_cwd(self):
        with tempfile.TemporaryDirectory() as d:
            p = heapprof('sessions', cwd=d)
            self.assertEqual(p.returncode, 1)
            self.assertIn('no --db given', p.stderr)
            shutil.copy(self.leak_db, os.path.join(d, 'heapprof-20260101-000000.sqlite'))
            out = self.ok('leaks', cwd=d).stdout
            self.assertIn('handle_request', out)

    # ------------------------------------------------------------ top
    def _top_rows(self, out):
        """[(self text, site text)] of a top table."""
        rows = []
        for line in out.splitlines():
            m = re.match(r'^\s*(\d+)\s+(\S+ \S+)\s+\u00b1\S+ \S+\s+(\S+%)\s+(\S+)\s+(\S+ \S+)'
                         r'\s+\u00b1\S+ \S+\s+(\S+%)\s+(.*)$', line)
            if m:
                rows.append((m.group(2), m.group(5), m.group(7)))
        return rows

    def test_top_at_peak_names_the_spike(self):
        p = self.ok('top', '--db', self.spike_db, '--at', 'peak')
        self.assertIn('estimates from sampled allocations', p.stdout)
        t = float(re.search(r' at (\S+) s \(peak\)', p.stdout.splitlines()[0]).group(1))
        self.assertGreaterEqual(t, round(self.spike.marks['peak_lo'], 3))
        self.assertLess(t, self.spike.marks['peak_hi'])
        rows = self._top_rows(p.stdout)
        self.assertIn('make_spike (%s:22)' % sc.SPIKE_FILE, rows[0][2])

    def test_top_agrees_with_direct_sql(self):
        t = 1.5
        p = self.ok('top', '--db', self.spike_db, '--at', str(t), '-n', '50')
        rows = self._top_rows(p.stdout)
        con = _db.open_db(self.spike_db)
        ns = self.spike.ns(t)
        want = con.execute(
            'SELECT f.function, f.filename, f.lineno, SUM(a.est_bytes) AS b FROM allocations a'
            ' JOIN stack_frames sf ON sf.stack_id = a.stack_id AND sf.depth = 0'
            ' JOIN frames f ON f.frame_id = sf.frame_id WHERE a.session_id = 1'
            ' AND a.ts_ns <= ? AND (a.freed_ns IS NULL OR a.freed_ns > ?)'
            ' GROUP BY f.frame_id ORDER BY b DESC', (ns, ns)).fetchall()
        total = con.execute(
            'SELECT SUM(est_bytes) FROM allocations WHERE session_id = 1 AND ts_ns <= ?'
            ' AND (freed_ns IS NULL OR freed_ns > ?)', (ns, ns)).fetchone()[0]
        con.close()
        self.assertEqual(len(rows), len(want))
        for (self_text, _, site), (fn, filename, lineno, b) in zip(rows, want):
            self.assertEqual(self_text, human(b))
            self.assertIn('%s (%s:%d)' % (fn, filename, lineno), site)
        self.assertIn('live heap: %s' % human(total), p.stdout)

    def test_top_cumulative_and_limits(self):
        p = self.ok('top', '--db', self.spike_db, '--at', '1.5', '--by', 'cumulative', '-n', '2')
        rows = self._top_rows(p.stdout)
        self.assertEqual(len(rows), 2)
        self.assertIn('main (%s:40)' % sc.SPIKE_FILE, rows[0][2])
        self.assertEqual(rows[0][1], human(sum(self.spike.live_at(1.5).values()) - 4096))
        p = self.ok('top', '--db', self.both, '--session', '1', '--at', '0.5')
        self.assertIn('session 1 (pid 1000', p.stdout)

    # ------------------------------------------------------------ leaks
    def test_leaks_top_row_is_the_leaking_line(self):
        out = self.ok('leaks', '--db', self.leak_db).stdout
        rows = [l for l in out.splitlines() if re.match(r'^\s*\d+\s', l)]
        # Every leaked block of the scenario was sampled with probability 1: no blur.
        self.assertRegex(rows[0], r'^\s*1\s+3\.8 MiB\s+\u00b10 B\s+99\.9%\s+60\s+60\s+0\.010\s+'
                                  r'2\.960\s+'
                                  r'handle_request \(' + re.escape(sc.LEAK_FILE) + r':17\)$')
        self.assertEqual(len(rows), 2)
        self.assertIn('estimates from sampled allocations', out)

    def test_dropped_events_are_explained_by_top_and_leaks(self):
        path = os.path.join(self.dir, 'dropped.sqlite')
        sc.write_db(path, sc.leak())
        con = sqlite3.connect(path)
        con.execute('UPDATE session SET events_received = 3000, events_dropped = 1000')
        con.commit()
        con.close()
        incomplete = ('warning: 1.0k of 4.0k events (25.0%) were dropped because the '
                      "program's send buffer was full: figures are incomplete, and ")
        advice = ('warning: to record without drops, run again with `heapprof run --on-full '
                  'adapt` (raises the interval instead: unbiased) or `--on-full block` '
                  '(waits: keeps everything), or a larger --interval')
        for cmd, what in (('leaks', 'never freed'), ('top', 'live')):
            with self.subTest(cmd=cmd):
                lines = self.ok(cmd, '--db', path).stdout.splitlines()
                self.assertIn(incomplete + '"%s" may include allocations whose free was '
                              'dropped' % what, lines)
                self.assertIn(advice, lines)
                # Without drops there is no warning.
                out = self.ok(cmd, '--db', self.leak_db).stdout
                self.assertNotIn('warning', out)
        out = self.ok('sessions', '--db', path).stdout
        self.assertIn('--on-full block', out)
        self.assertNotIn('--on-full', self.ok('sessions', '--db', self.leak_db).stdout)

    # ------------------------------------------------------------ flame
    def test_flame_folded_parses_and_totals_equal_the_snapshot(self):
        out = os.path.join(self.dir, 'f.folded')
        self.ok('flame', '--db', self.spike_db, '--at', '1.5', '-o', out)
        total, stacks = 0, {}
        with open(out) as f:
            for line in f:
                m = re.match(r'^(.+) (\d+)$', line.rstrip('\n'))
                self.assertIsNotNone(m, 'bad folded line %r' % line)
                frames = m.group(1).split(';')
                self.assertTrue(all(frames))
                stacks[m.group(1)] = int(m.group(2))
                total += int(m.group(2))
        self.assertEqual(total, sum(self.spike.live_at(1.5).values()))
        self.assertEqual(stacks['main (%s:40);make_spike (%s:22)'
                                % (sc.SPIKE_FILE, sc.SPIKE_FILE)], 100 * 100 * 1024)

    def test_flame_speedscope_json(self):
        out = os.path.join(self.dir, 'f.speedscope.json')
        self.ok('flame', '--db', self.spike_db, '--at', '1.5', '-o', out)
        with open(out) as f:
            doc = json.load(f)
        self.assertEqual(doc['$schema'], 'https://www.speedscope.app/file-format-schema.json')
        prof = doc['profiles'][0]
        self.assertEqual(prof['type'], 'sampled')
        self.assertEqual(prof['unit'], 'bytes')
        self.assertEqual(len(prof['samples']), len(prof['weights']))
        self.assertEqual(sum(prof['weights']), sum(self.spike.live_at(1.5).values()))
        self.assertEqual(prof['endValue'], sum(prof['weights']))
        nframes = len(doc['shared']['frames'])
        self.assertTrue(all(0 <= i < nframes for s in prof['samples'] for i in s))
        names = [[doc['shared']['frames'][i]['name'] for i in s] for s in prof['samples']]
        self.assertIn(['main', 'make_spike'], names)       # root first
        # --format wins over the extension.
        out2 = os.path.join(self.dir, 'f2.json')
        self.ok('flame', '--db', self.spike_db, '--at', '1.5', '--format', 'folded', '-o', out2)
        with open(out2) as f:
            self.assertFalse(f.read().startswith('{'))

    # ------------------------------------------------------------ flow
    def test_flow_dot_accepted_by_graphviz_or_checked_structurally(self):
        """Always checks the dot text's structure; also renders it with graphviz `dot` when
        it is installed (the test prints which checks ran)."""
        out = os.path.join(self.dir, 'flow.dot')
        p = self.ok('flow', '--db', self.spike_db, '--at', '1.0', '--at', 'peak', '--at', 'end',
                    '-o', out)
        with open(out) as f:
            text = f.read()
        self.assertTrue(text.startswith('digraph heapprof_flow {'))
        self.assertTrue(text.rstrip().endswith('}'))
        self.assertEqual(text.count('{'), text.count('}'))
        self.assertEqual(text.count('<TABLE'), text.count('</TABLE>'))
        nodes = set(re.findall(r'^  (f\d+|nostack) \[label=<', text, re.M))
        edges = re.findall(r'^  (f\d+|nostack) -> (f\d+|nostack) \[', text, re.M)
        self.assertTrue(edges)
        for a, b in edges:
            self.assertIn(a, nodes)
            self.assertIn(b, nodes)
        self.assertIn('make_spike', text)
        # One colored cell per compared time in every box.
        spike_line = [l for l in text.splitlines() if '<B>make_spike</B>' in l][0]
        self.assertEqual(len(re.findall(r'<TD BGCOLOR=', spike_line)), 3)
        self.assertIn('9.8 MiB<BR/>99.7%', spike_line)   # 100 x 100 KiB at the peak
        if shutil.which('dot'):
            svg = os.path.join(self.dir, 'flow.svg')
            self.assertIn('rendered %s' % svg, p.stdout)
            with open(svg) as f:
                self.assertIn('<svg', f.read())
            r = subprocess.run(['dot', '-Tsvg', out], capture_output=True, text=True,
                               timeout=TIMEOUT)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stderr, '')
            sys.stderr.write('[flow: structure checked and rendered by graphviz] ')
        else:
            self.assertIn('graphviz `dot` is not installed', p.stdout)
            sys.stderr.write('[flow: graphviz absent, structure checked only] ')

    def test_flow_says_which_times_it_wrote(self):
        out = os.path.join(self.dir, 'one.dot')
        p = self.ok('flow', '--db', self.spike_db, '--render', 'none', '-o', out)
        with hr_read(self.spike_db) as r:
            peak = r.peak()[0]
        self.assertEqual(p.stdout, 'wrote %s: live memory at %.3f s (peak)\n' % (out, peak))
        p = self.ok('flow', '--db', self.spike_db, '--render', 'none', '-o', out,
                    '--at', '0.5', '--at', 'end')
        self.assertEqual(p.stdout, 'wrote %s: live memory at 0.500 s, 3.000 s (end)\n' % out)

    def test_flow_refuses_too_many_times(self):
        self.fails('flow', '--db', self.spike_db, '-o', os.path.join(self.dir, 'x.dot'),
                   *sum((['--at', str(i * 0.1)] for i in range(11)), []),
                   pattern='at most 10 times')

    # ------------------------------------------------------------ plot
    def _read_csv(self, path):
        with open(path, newline='') as f:
            return list(csv.reader(f))

    def test_plot_csv_with_a_site(self):
        out = os.path.join(self.dir, 'plot.csv')
        self.ok('plot', '--db', self.spike_db, '-o', out, '--site', 'spike.py:22')
        rows = self._read_csv(out)
        self.assertEqual(rows[0], ['t_seconds', 'total_live_bytes', 'spike.py:22 bytes',
                                   'spike.py:22 fraction'])
        body = rows[1:]
        self.assertEqual(len(body), len(self.spike.timeline_rows()))
        self.assertEqual(max(int(r[1]) for r in body), 100 * 100 * 1024 + 6 * 4096 + 8192)
        at15 = min(body, key=lambda r: abs(float(r[0]) - 1.5))
        self.assertEqual(int(at15[2]), 100 * 100 * 1024)
        self.assertAlmostEqual(float(at15[3]), 100 * 100 * 1024 / int(at15[1]), places=5)

    # ------------------------------------------------------------ stats
    def test_stats_histogram_from_db(self):
        out = self.ok('stats', '--db', self.spike_db).stdout
        self.assertIn('estimates from sampled allocations', out)
        row = [l for l in out.splitlines() if l.strip().startswith('256 B - 511 B')][0]
        self.assertRegex(row, r'256 B - 511 B\s+300\s+4\.8k\s+1\.2 MiB')
        row = [l for l in out.splitlines() if '64.0 KiB - 128.0 KiB' in l][0]
        self.assertRegex(row, r'\s100\s+100\s+9\.8 MiB\s+')

    # ------------------------------------------------------------ errors
    def test_errors_are_one_line_with_non_zero_exit(self):
        d = self.dir
        text = os.path.join(d, 'notes.txt')
        with open(text, 'w') as f:
            f.write('not a database\n' * 20)
        other = os.path.join(d, 'other.sqlite')
        con = sqlite3.connect(other)
        con.execute('CREATE TABLE t(x)')
        con.commit()
        con.close()
        missing = os.path.join(d, 'missing.sqlite')
        # The same cases as real processes, once each.
        self.fails('top', '--db', missing, pattern='missing.sqlite: no such file')
        self.fails('leaks', '--db', text, pattern='not a heapprof database')
        self.fails('flame', '-o', '-', '--db', self.spike_db, '--at', '99',
                   pattern='outside session 1')
        self.fails('stats', '--db', self.both, '--session', '9', pattern='session 9 is not in')
        for cmd in (['sessions'], ['top'], ['leaks'], ['stats'], ['flame', '-o', '-'],
                    ['flow', '-o', '-'], ['plot', '-o', os.path.join(d, 'x.csv')]):
            self.fails(*cmd, '--db', missing, pattern='missing.sqlite: no such file',
                       in_process=True)
            self.fails(*cmd, '--db', text, pattern='not a heapprof database', in_process=True)
            self.fails(*cmd, '--db', other, pattern='not a heapprof database', in_process=True)
        for cmd in (['top'], ['flame', '-o', '-'], ['flow', '-o', '-']):
            self.fails(*cmd, '--db', self.spike_db, '--at', '99', in_process=True,
                       pattern=r'time 99 s is outside session 1, which runs from 0 to 3\.000 s')
            self.fails(*cmd, '--db', self.spike_db, '--at', '-1', pattern='outside session 1',
                       in_process=True)
            self.fails(*cmd, '--db', self.spike_db, '--at', 'soon', in_process=True,
                       pattern="time must be seconds from the start, 'peak' or 'end'")
        for cmd in (['top'], ['leaks'], ['stats'], ['flame', '-o', '-'], ['flow', '-o', '-'],
                    ['plot', '-o', os.path.join(d, 'x.csv')]):
            self.fails(*cmd, '--db', self.both, '--session', '9', in_process=True,
                       pattern=r'session 9 is not in .*both\.sqlite \(sessions: 1, 2\)')
            self.fails(*cmd, '--db', self.both, '--session', 'x', in_process=True,
                       pattern='session must be a number')
        self.fails('plot', '--db', self.spike_db, '-o', os.path.join(d, 'p.svg'), '--site',
                   'nowhere.py:3', pattern='no recorded frame at nowhere.py:3')
        self.fails('plot', '--db', self.spike_db, '-o', os.path.join(d, 'p.gif'),
                   pattern=r'\.svg or \.csv, or \.png or \.pdf')
        self.fails('flame', '--db', self.spike_db, '-o',
                   os.path.join(d, 'no', 'such', 'dir', 'f.folded'),
                   pattern='No such file or directory')
        self.fails('top', '--db', self.spike_db, '-n', '0', pattern='--limit must be at least 1')

    def test_contradictory_options_are_refused_in_one_line(self):
        p = self.fails('top', '--db', self.spike_db, '--follow', '--at', '0.5',
                       pattern=r'--follow always shows the latest moment; use --at without '
                               r'--follow to see time 0\.5$')
        self.assertEqual(p.stdout, '')
        prog = os.path.join(self.dir, 'never_run.py')
        marker = os.path.join(self.dir, 'never_run.ran')
        with open(prog, 'w') as f:
            f.write('open(%r, "w").close()\n' % marker)
        for args, opt in ((['--db', self.spike_db, prog], '--db'),
                          (['--db=' + self.spike_db, '-m', 'json.tool'], '--db'),
                          (['--session', '1', prog, '--db', 'x'], '--session'),
                          (['--db', self.spike_db, '--', prog], '--db')):
            with self.subTest(args=args):
                self.fails('stats', *args, pattern=r'^heapprof: stats: use either %s \(the '
                           r'histogram of a recording\) or PROGRAM \(run it counting every '
                           r'allocation\), not both$' % opt)
        self.assertFalse(os.path.exists(marker), 'the program ran')

    def test_unknown_option_is_a_usage_error(self):
        p = heapprof('top', '--db', self.spike_db, '--bogus')
        self.assertEqual(p.returncode, 2)
        self.assertNotIn('Traceback', p.stderr)
        self.assertIn('unrecognized arguments: --bogus', p.stderr)
        # With the usage of the subcommand it was given to (issue 13 item 10), not the
        # top-level one, which says nothing about the options.
        for cmd in ('top', 'sessions', 'leaks', 'stats'):
            p = heapprof(cmd, '--db', self.spike_db, '--bogus')
            self.assertEqual(p.returncode, 2)
            self.assertTrue(p.stderr.startswith('usage: heapprof %s [-h]' % cmd), p.stderr)
            self.assertIn('heapprof %s: error: unrecognized arguments: --bogus' % cmd, p.stderr)

    def test_stats_usage_shows_both_forms(self):
        usage = self.ok('stats', '--help').stdout.split('\n\n')[0]
        self.assertIn('heapprof stats [-h] [--db PATH] [--session ID]', usage)
        self.assertIn('heapprof stats PROGRAM [ARGS...]', usage)

    def test_sessions_json(self):
        doc = json.loads(self.ok('sessions', '--db', self.both, '--json').stdout)
        self.assertEqual([s['session_id'] for s in doc], [1, 2])
        first = doc[0]
        self.assertEqual(first['argv'], ['spike.py', '--flag'])
        self.assertEqual((first['pid'], first['ppid'], first['status']), (1000, 1, 'exited'))
        self.assertEqual(first['started_ns'], sc.START_NS)
        self.assertAlmostEqual(first['duration_s'], 3.0)
        self.assertEqual(first['sample_interval_bytes'], 4096)
        self.assertEqual(first['interval_changes'], [])
        self.assertIs(first['end_known'], True)

    def test_follow_into_a_pipe_writes_no_terminal_escapes(self):
        # The session has ended: one table, then the end line, and no clear-screen codes.
        p = self.ok('top', '--db', self.spike_db, '--follow')
        self.assertNotIn('\x1b', p.stdout)
        self.assertTrue(p.stdout.startswith('heapprof top: session 1 (pid 1000'), p.stdout)
        self.assertTrue(p.stdout.endswith('session 1 ended: exited\n'), p.stdout)

    # ------------------------------------------------------------ read-only (issue 13 item 9)
    def test_readers_leave_no_files_beside_the_database(self):
        """A read-only connection to a WAL database creates -wal and -shm files and cannot
        remove them; every command used to leave them beside the recording."""
        with tempfile.TemporaryDirectory() as d:
            db = shutil.copy(self.spike_db, os.path.join(d, 'rec.sqlite'))
            out = os.path.join(d, 'out')
            os.mkdir(out)
            for cmd in (['sessions'], ['top'], ['leaks'], ['stats'], ['flame', '-o', '-'],
                        ['flow', '-o', os.path.join(out, 'f.dot'), '--render', 'none'],
                        ['plot', '-o', os.path.join(out, 'p.csv')],
                        ['report', '-o', os.path.join(out, 'r.html')]):
                self.ok(*cmd, '--db', db)
                self.assertEqual(sorted(os.listdir(d)), ['out', 'rec.sqlite'], cmd)
            # A file with an SQLite header and garbage after it is refused, and nothing
            # appears beside it either.
            bad = os.path.join(d, 'bad.sqlite')
            with open(self.spike_db, 'rb') as f:
                head = f.read(100)
            with open(bad, 'wb') as f:
                f.write(head + b'\x5a' * 8000)
            for cmd in (['sessions'], ['top'], ['report', '-o', os.path.join(out, 'b.html')]):
                p = heapprof(*cmd, '--db', bad)
                self.assertNotEqual(p.returncode, 0, cmd)
                self.assertEqual(sorted(os.listdir(d)), ['bad.sqlite', 'out', 'rec.sqlite'], cmd)

    def test_broken_pipe_is_quiet(self):
        p = subprocess.run('"%s" top --db "%s" -n 50 | head -c 10 > /dev/null' % (
            SCRIPT, self.spike_db), shell=True, capture_output=True, text=True, timeout=TIMEOUT)
        self.assertNotIn('Traceback', p.stderr)
        self.assertNotIn('BrokenPipe', p.stderr)


if __name__ == '__main__':
    unittest.main()
