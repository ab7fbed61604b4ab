"""End to end: HEAPPROF_SOCKET profiles a real program from start-up into a real heapprofd;
known sites show up with the right estimates, frees are paired, threads are recorded,
and the program's output and exit status are unchanged."""
import os
import unittest

from agent_e2e_util import (DaemonTestCase, clean_env, line_of, run_python, site,
                            write_program)

PROGRAM = '''
import sys, threading

class Maker:
    def blocks(self, n, size):
        out = []
        for _ in range(n):
            out.append(bytearray(size))               # SITE_KEEP
        return out

def churn(n, size):
    for _ in range(n):
        b = bytearray(size)                           # SITE_CHURN
        del b

def worker(i, out):
    mine = []
    for _ in range(200):
        mine.append(bytes(20000))                     # SITE_THREAD
    out.append(mine)
    barrier.wait()   # all four alive at once: distinct thread ids

barrier = threading.Barrier(4)

kept = Maker().blocks(400, 50000)
churn(2000, 50000)
out = []
threads = [threading.Thread(target=worker, args=(i, out)) for i in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print("done", len(kept), len(out))
sys.stdout.flush()
sys.exit(3)
'''


SUB_INTERPRETERS = '''
try:
    import _interpreters as subs            # 3.13
except ImportError:
    import _xxsubinterpreters as subs       # 3.11, 3.12 (isolated, own GIL, on 3.12)
for _ in range(3):
    interp = subs.create()
    subs.run_string(interp, "x = [bytearray(200) for _ in range(20000)]")
    subs.destroy(interp)
print("ok")
'''


class ProfileFromStartup(DaemonTestCase):

    def run_program(self, interval):
        path = write_program(self.tmp, 'prog.py', PROGRAM)
        plain = run_python(path, env=clean_env())
        prof = run_python(path, env=self.profiled_env(HEAPPROF_INTERVAL=interval))
        self.assertEqual(plain.returncode, 3, plain.stderr)
        self.assertEqual(prof.returncode, 3, prof.stderr)
        self.assertEqual(prof.stdout, plain.stdout)
        self.assertEqual(prof.stderr, '')
        sessions = self.sessions()
        self.assertEqual(len(sessions), 1, sessions)
        sid, pid, ppid, argv, status, dropped = sessions[0]
        self.assertEqual(status, 'exited')
        self.assertEqual(ppid, os.getpid())
        self.assertIn('prog.py', argv)
        self.assertEqual(dropped, 0)
        return path, sid

    def test_sub_interpreters_run_quietly_in_the_profiled_process(self):
        """Each sub-interpreter runs site.py, and so the start-up hook, again; it said
        'already profiling ... runs unprofiled' once per sub-interpreter although the
        process was being profiled (review 3)."""
        path = write_program(self.tmp, 'subs.py', SUB_INTERPRETERS)
        r = run_python(path, env=self.profiled_env())
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, 'ok\n')
        self.assertEqual(r.stderr, '')
        sessions = self.sessions()
        self.assertEqual(len(sessions), 1, sessions)
        self.assertEqual(sessions[0][4], 'exited')

    def test_known_sites_estimates_frees_and_threads(self):
        # Interval 8 KiB: a 50000-byte block is sampled with p = 1 - exp(-50000/8192)
        # = 0.998, so the estimates are nearly exact (sd < 0.2% of each site's total);
        # 5% tolerances are many standard deviations wide.
        path, sid = self.run_program(8192)
        keep = line_of(path, 'SITE_KEEP')
        n, est, size, freed, live = site(self.daemon, sid, 'Maker.blocks', keep)
        self.assertGreater(n, 390)
        self.assertAlmostEqual(est / (400 * 50000), 1.0, delta=0.05)
        # Kept alive in a global until exit: stop() (atexit) runs before they are freed.
        self.assertAlmostEqual(live / (400 * 50000), 1.0, delta=0.05)

        churn = line_of(path, 'SITE_CHURN')
        n, est, size, freed, live = site(self.daemon, sid, 'churn', churn)
        self.assertAlmostEqual(est / (2000 * 50000), 1.0, delta=0.05)
        self.assertEqual(freed, n)          # every sampled block was freed and paired
        self.assertEqual(live, 0)

        line = line_of(path, 'SITE_THREAD')
        rows = self.daemon.query(
            'SELECT a.thread_id, SUM(a.est_bytes) FROM allocations a '
            'JOIN stack_frames sf ON sf.stack_id = a.stack_id AND sf.depth = 0 '
            'JOIN frames f ON f.frame_id = sf.frame_id '
            'WHERE a.session_id = ? AND f.function = ? AND f.lineno = ? GROUP BY a.thread_id',
            (sid, 'worker', line))
        self.assertEqual(len(rows), 4, rows)   # four threads, each its own thread id
        total = sum(r[1] for r in rows)
        # 800 blocks of 20000 bytes, p = 0.91 each: sd ~1% of the total.
        self.assertAlmostEqual(total / (4 * 200 * 20000), 1.0, delta=0.08)

        # Stacks are innermost first and end in the module.
        deepest = self.daemon.query(
            'SELECT f.function FROM allocations a '
            'JOIN stack_frames sf ON sf.stack_id = a.stack_id '
            'JOIN frames f ON f.frame_id = sf.frame_id '
            'WHERE a.session_id = ? AND a.stack_id IN (SELECT a2.stack_id FROM allocations a2 '
            '  JOIN stack_frames s2 ON s2.stack_id = a2.stack_id AND s2.depth = 0 '
            '  JOIN frames f2 ON f2.frame_id = s2.frame_id WHERE f2.lineno = ? '
            "  AND f2.function = 'Maker.blocks' LIMIT 1) "
            'GROUP BY sf.depth ORDER BY sf.depth', (sid, keep))
        names = [r[0] for r in deepest]
        self.assertEqual(names[0], 'Maker.blocks')
        self.assertIn('<module>', names)

    def test_default_interval_estimates_within_sampling_error(self):
        # At the default interval (64 KiB) a 50000-byte block is sampled with p = 0.53
        # and stands for 94 KB; over the 2000 churned blocks (100 MB) the estimate's sd is
        # sqrt(2000 * 50000^2 * (1-p)/p) = 2.1 MB = 2.1%: 12% is over 5 sd.
        path, sid = self.run_program(65536)
        churn = line_of(path, 'SITE_CHURN')
        n, est, size, freed, live = site(self.daemon, sid, 'churn', churn)
        self.assertAlmostEqual(est / (2000 * 50000), 1.0, delta=0.12)
        self.assertEqual(freed, n)


class StartupHookInert(unittest.TestCase):

    def test_no_env_var_no_import(self):
        r = run_python('import sys; print("heapprof" in sys.modules, '
                       '"heapprof._agent" in sys.modules)', env=clean_env())
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), 'False False')
        self.assertEqual(r.stderr, '')

    def test_env_var_imports_agent_at_startup(self):
        # A socket nobody listens on: the hook runs, says so in one line, and the
        # program goes on unprofiled.
        r = run_python('import sys; print("heapprof._agent" in sys.modules)',
                       env=clean_env(HEAPPROF_SOCKET='/nonexistent/heapprofd.sock'))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), 'True')


if __name__ == '__main__':
    unittest.main()
