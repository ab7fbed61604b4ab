"""End to end: a program that ends with os._exit() or posix._exit() -- which skip atexit --
still sends its last events and GOODBYE, in the main process and in fork children
(issue 13 item 3: mypy ends this way, and its session ended 'disconnected' with the
blocks it freed just before the exit listed as never freed)."""
import os
import subprocess
import unittest

from agent_e2e_util import PYTHON, DaemonTestCase, line_of, run_python, write_program

SITES = '''
import os, posix, sys
def kept():
    out = []
    for _ in range(80):
        out.append(bytearray(100000))                        # SITE_KEPT
    return out
def freed():
    out = []
    for _ in range(200):
        out.append(bytearray(100000))                        # SITE_FREED
    return out
'''

# Keeps 8 MB, frees 20 MB just before leaving through the exit named by argv[1].
EXITS = SITES + '''
keep = kept()
tmp = freed()
del tmp
print(os.getpid(), flush=True)
{"os": os._exit, "posix": posix._exit}[sys.argv[1]](3)
'''

# The same in a fork child, which leaves through posix._exit.
FORK_EXITS = SITES + '''
pid = os.fork()
if pid == 0:
    keep = kept()
    tmp = freed()
    del tmp
    posix._exit(3)
_, status = os.waitpid(pid, 0)
print(pid, os.waitstatus_to_exitcode(status), flush=True)
'''


class ExitWithoutAtexit(DaemonTestCase):

    def check_session(self, path, pid):
        self.daemon.stop()
        rows = {row[1]: row for row in self.daemon.query(
            'SELECT session_id, pid, status, events_received, events_dropped FROM sessions')}
        sid, _, status, received, dropped = rows[pid]
        # GOODBYE arrived, after the final counters: nothing was lost on the way out.
        self.assertEqual(status, 'exited')
        self.assertEqual(dropped, 0)
        self.assertGreater(received, 0)
        # Interval 4096 samples every 100 kB buffer: the freed site's 200 are all recorded
        # and all freed, the kept site's 80 all live (the lists' own arrays, resized at
        # the same lines, are left out).
        def buffers(function, marker):
            return self.daemon.query(
                'SELECT COUNT(*), COALESCE(SUM(a.freed_ns IS NOT NULL), 0) FROM allocations a '
                'JOIN stack_frames sf ON sf.stack_id = a.stack_id AND sf.depth = 0 '
                'JOIN frames f ON f.frame_id = sf.frame_id WHERE a.session_id = ? AND '
                'f.function = ? AND f.lineno = ? AND a.size = 100001',
                (sid, function, line_of(path, marker)))[0]
        self.assertEqual(buffers('freed', 'SITE_FREED'), (200, 200))
        self.assertEqual(buffers('kept', 'SITE_KEPT'), (80, 0))
        # `heapprof leaks` lists the kept site and not the freed one.
        leaks = subprocess.run([PYTHON, '-m', 'heapprof', 'leaks', '--db', self.daemon.db,
                                '--session', str(sid)],
                               capture_output=True, text=True, timeout=60)
        self.assertEqual(leaks.returncode, 0, leaks.stderr)
        self.assertIn('%s:%d' % (os.path.basename(path), line_of(path, 'SITE_KEPT')),
                      leaks.stdout)
        self.assertNotIn('%s:%d' % (os.path.basename(path), line_of(path, 'SITE_FREED')),
                         leaks.stdout)

    def run_exit(self, how):
        path = write_program(self.tmp, 'exits.py', EXITS)
        r = run_python(path, args=[how], env=self.profiled_env(HEAPPROF_INTERVAL=4096))
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertEqual(r.stderr, '')
        self.check_session(path, int(r.stdout))

    def test_os_exit_in_the_main_process(self):
        self.run_exit('os')

    def test_posix_exit_in_the_main_process(self):
        self.run_exit('posix')

    def test_posix_exit_in_a_fork_child(self):
        path = write_program(self.tmp, 'forkexit.py', FORK_EXITS)
        r = run_python(path, env=self.profiled_env(HEAPPROF_INTERVAL=4096))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr, '')
        child, status = map(int, r.stdout.split())
        self.assertEqual(status, 3)
        self.check_session(path, child)

    def test_exit_still_refuses_what_it_always_refused(self):
        """The stop comes after the argument check: a bad status raises as before and
        the program goes on profiled."""
        r = run_python('import os, heapprof\n'
                       'try:\n    os._exit("x")\nexcept TypeError:\n    pass\n'
                       'print(heapprof.is_profiling(), os._exit is __import__("posix")._exit,'
                       ' os._exit.__name__)\n', env=self.profiled_env())
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.split(), ['True', 'True', '_exit'])


if __name__ == '__main__':
    unittest.main()
