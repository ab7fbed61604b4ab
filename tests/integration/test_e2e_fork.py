"""End to end: os.fork() and multiprocessing children (fork and spawn) are profiled as
their own sessions with ppid = the parent's pid, and their allocations are recorded --
also when the child leaves through os._exit(), and spawn children of a program that
called heapprof.start(socket=...) without HEAPPROF_SOCKET in its environment."""
import json
import os
import re
import unittest

from agent_e2e_util import (DaemonTestCase, clean_env, line_of, run_python, site,
                             write_program)

FORK_PROGRAM = '''
import os, sys

def child_work():
    keep = []
    for _ in range(300):
        keep.append(bytearray(30000))      # SITE_CHILD
    return keep

def parent_work():
    keep = []
    for _ in range(300):
        keep.append(bytearray(30000))      # SITE_PARENT
    return keep

p = parent_work()
pid = os.fork()
if pid == 0:
    k = child_work()
    print("child", os.getpid(), flush=True)
    sys.exit(0)      # normal exit: atexit stops the session
_, status = os.waitpid(pid, 0)
print("parent", os.getpid(), os.waitstatus_to_exitcode(status), flush=True)
'''

MP_PROGRAM = '''
import multiprocessing as mp, os, sys

def child_work(q):
    keep = []
    for _ in range(300):
        keep.append(bytearray(30000))      # SITE_MP
    q.put(os.getpid())

if __name__ == "__main__":
    ctx = mp.get_context(sys.argv[1])
    q = ctx.Queue()
    p = ctx.Process(target=child_work, args=(q,))
    p.start()
    child = q.get(timeout=60)
    p.join(60)
    print(os.getpid(), child, p.exitcode, flush=True)
'''


FORK_STORM = '''
import os, sys, threading
stop = False
def churn():
    # Keeps the sender busy (interval 1) while the main thread forks.
    while not stop:
        x = [str(i) for i in range(200)]
t = threading.Thread(target=churn)
t.start()
pids = []
for i in range(20):
    pid = os.fork()
    if pid == 0:
        keep = [bytearray(1000) for _ in range(100)]
        sys.exit(0)
    pids.append(pid)
codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]
stop = True
t.join()
print(codes.count(0), len(set(pids)))
'''

OS_EXIT_PROGRAM = '''
import os
pid = os.fork()
if pid == 0:
    keep = []
    for _ in range(300):
        keep.append(bytearray(30000))      # SITE_EXIT
    os._exit(3)                            # skips atexit
_, status = os.waitpid(pid, 0)
print(os.getpid(), pid, os.waitstatus_to_exitcode(status), flush=True)
'''

API_SPAWN_PROGRAM = '''
import multiprocessing as mp, os, sys
import heapprof

def child_work(q):
    keep = []
    for _ in range(300):
        keep.append(bytearray(30000))      # SITE_SPAWN
    q.put(os.getpid())

if __name__ == "__main__":
    assert "HEAPPROF_SOCKET" not in os.environ
    heapprof.start(socket=sys.argv[1], sample_interval=4096, on_full="block")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=child_work, args=(q,))
    p.start()
    child = q.get(timeout=60)
    p.join(60)
    heapprof.stop()
    print(os.getpid(), child, p.exitcode, flush=True)
    print(sorted(k for k in os.environ if k.startswith("HEAPPROF_")),
          os.environ.get("HEAPPROF_INTERVAL"), flush=True)
'''


TWIN_CHILDREN = '''
import os
def work():
    keep = []
    for i in range(20000):
        keep.append(bytearray(1000 + i))       # SITE_TWIN
    return keep
pids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        work()
        os._exit(0)
    pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
print("ok")
'''


def pids_out(text):
    return re.sub(r'pid=\d+', 'pid=N', text)


class ForkChildren(DaemonTestCase):

    def test_fork_children_sample_independently(self):
        """Review 3 item 8: the forking thread's sampler state was copied into every
        child, so twin children sampled exactly the same blocks (fully correlated
        errors). Each block's size names its iteration; ~300 of 20000 are sampled
        (64 KiB interval, 21-41 MB), so two independent draws never pick the same set."""
        path = write_program(self.tmp, 'twins.py', TWIN_CHILDREN)
        r = run_python(path, env=self.profiled_env())
        self.assertEqual(r.returncode, 0, r.stderr)
        sessions = self.sessions()
        pids = {row[1] for row in sessions}
        children = [row[0] for row in sessions if row[2] in pids]
        self.assertEqual(len(children), 2, sessions)
        line = line_of(path, 'SITE_TWIN')
        sets = []
        for sid in children:
            sizes = self.daemon.query(
                'SELECT a.size FROM allocations a JOIN stack_frames sf ON sf.stack_id = '
                'a.stack_id AND sf.depth = 0 JOIN frames f ON f.frame_id = sf.frame_id '
                'WHERE a.session_id = ? AND f.lineno = ? AND a.size >= 1000', (sid, line))
            sets.append({row[0] for row in sizes})
            self.assertGreater(len(sets[-1]), 100)
        self.assertTrue(sets[0] != sets[1],
                        'both children sampled the same %d blocks' % len(sets[0]))

    def test_fork_storm_while_sender_busy_never_hangs(self):
        # A fork can land while the sender thread is inside malloc, send() or the
        # encoder: the child must neither deadlock nor inherit a half-used ring.
        path = write_program(self.tmp, 'storm.py', FORK_STORM)
        r = run_python(path, env=self.profiled_env(HEAPPROF_INTERVAL=1), timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.split(), ['20', '20'])
        # The program forks while a thread of its own runs: 3.12+ warns about that once,
        # and heapprof must neither add nor hide anything.
        plain = run_python(path, env=clean_env(), timeout=120)
        self.assertEqual(pids_out(r.stderr), pids_out(plain.stderr))
        sessions = self.sessions()
        self.assertEqual(len(sessions), 21)
        parent = sessions[0]
        children = [s for s in sessions if s[2] == parent[1]]
        self.assertEqual(len(children), 20)
        self.assertTrue(all(s[4] == 'exited' for s in sessions), sessions)

    def check_child_session(self, path, marker, function, parent_pid, child_pid):
        sessions = self.sessions()
        by_pid = {s[1]: s for s in sessions}
        self.assertIn(parent_pid, by_pid, sessions)
        self.assertIn(child_pid, by_pid, sessions)
        child = by_pid[child_pid]
        self.assertEqual(child[2], parent_pid)           # ppid set
        self.assertNotEqual(child[0], by_pid[parent_pid][0])
        line = line_of(path, marker)
        n, est, size, freed, live = site(self.daemon, child[0], function, line)
        # 300 blocks of 30000 bytes at the default 64 KiB interval: p = 0.37 each,
        # about 110 samples; the estimate's sd is ~8% of the 9 MB: 35% is > 4 sd.
        self.assertGreater(n, 50)
        self.assertAlmostEqual(est / (300 * 30000), 1.0, delta=0.35)
        # The parent's session has none of the child's allocations.
        self.assertEqual(site(self.daemon, by_pid[parent_pid][0], function, line)[0], 0)
        return by_pid

    def test_os_fork(self):
        path = write_program(self.tmp, 'forker.py', FORK_PROGRAM)
        r = run_python(path, env=self.profiled_env())
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr, '')
        lines = dict(l.split(' ', 1) for l in r.stdout.splitlines())
        child_pid = int(lines['child'])
        parent_pid, status = map(int, lines['parent'].split())
        self.assertEqual(status, 0)
        by_pid = self.check_child_session(path, 'SITE_CHILD', 'child_work', parent_pid,
                                          child_pid)
        self.assertEqual(by_pid[child_pid][4], 'exited')   # GOODBYE from the child's atexit
        # The parent's own site is in the parent's session only.
        pline = line_of(path, 'SITE_PARENT')
        self.assertGreater(site(self.daemon, by_pid[parent_pid][0], 'parent_work', pline)[0], 50)
        self.assertEqual(site(self.daemon, by_pid[child_pid][0], 'parent_work', pline)[0], 0)

    def test_sender_thread_never_makes_a_fork_warn(self):
        """CPython 3.12+ warns (DeprecationWarning) at every os.fork() in a process with
        more than one OS thread, counting heapprof's sender: a program without threads of
        its own was warned. With every warning shown, profiled, it must print nothing."""
        path = write_program(self.tmp, 'forker.py', FORK_PROGRAM)
        for _ in range(2):
            r = run_python('-W', args=['always::DeprecationWarning', path],
                           env=self.profiled_env())
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stderr, '')
            self.assertIn('child', r.stdout)

    def test_os_exit_child_keeps_all_its_events(self):
        # Review item 4: os._exit() skips atexit, so the child's last events were lost
        # and its session ended 'disconnected'.
        path = write_program(self.tmp, 'exiter.py', OS_EXIT_PROGRAM)
        r = run_python(path, env=self.profiled_env(HEAPPROF_INTERVAL=1))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr, '')
        parent_pid, child_pid, status = map(int, r.stdout.split())
        self.assertEqual(status, 3)                  # the child's own status
        by_pid = {s[1]: s for s in self.sessions()}
        child = by_pid[child_pid]
        self.assertEqual(child[2], parent_pid)
        self.assertEqual(child[4], 'exited')
        # Interval 1 records every block: all 300 buffers, the last ones included.
        n, est, size, freed, live = site(self.daemon, child[0], '<module>',
                                         line_of(path, 'SITE_EXIT'))
        self.assertGreaterEqual(n, 300)
        self.assertGreaterEqual(size, 300 * 30000)
        self.assertEqual(by_pid[parent_pid][4], 'exited')

    def test_spawn_child_profiled_after_api_start(self):
        # Review item 5: start(socket=...) did not reach spawn children, which only see
        # the environment. The child gets the parent's settings; stop() takes them back.
        path = write_program(self.tmp, 'apispawn.py', API_SPAWN_PROGRAM)
        r = run_python(path, args=[self.daemon.socket], env=clean_env(HEAPPROF_INTERVAL=999))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr, '')
        first, second = r.stdout.splitlines()
        parent_pid, child_pid, exitcode = map(int, first.split())
        self.assertEqual(exitcode, 0)
        # After stop() only what the program had before is left.
        self.assertEqual(second, "['HEAPPROF_INTERVAL'] 999")
        self.daemon.stop()
        rows = {pid: (sid, ppid, interval) for sid, pid, ppid, interval in self.daemon.query(
            'SELECT session_id, pid, ppid, sample_interval_bytes FROM sessions')}
        self.assertIn(child_pid, rows, rows)
        sid, ppid, interval = rows[child_pid]
        self.assertEqual(ppid, parent_pid)
        self.assertEqual(interval, 4096)
        self.assertEqual(rows[parent_pid][2], 4096)
        n, est, size, freed, live = site(self.daemon, sid, 'child_work',
                                         line_of(path, 'SITE_SPAWN'))
        # 300 blocks of 30000 bytes at 4096: p = 0.9991 each; est sd is well under 1%.
        self.assertGreaterEqual(n, 290)
        self.assertAlmostEqual(est / (300 * 30000), 1.0, delta=0.1)

    def run_mp(self, method):
        path = write_program(self.tmp, 'mpprog.py', MP_PROGRAM)
        r = run_python(path, args=[method], env=self.profiled_env())
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr, '')
        parent_pid, child_pid, exitcode = map(int, r.stdout.split())
        self.assertEqual(exitcode, 0)
        return self.check_child_session(path, 'SITE_MP', 'child_work', parent_pid, child_pid)

    def test_multiprocessing_fork(self):
        self.run_mp('fork')

    def test_multiprocessing_spawn(self):
        by_pid = self.run_mp('spawn')
        # A spawn child is a fresh interpreter started from the inherited HEAPPROF_SOCKET.
        argvs = [json.loads(s[3]) for s in by_pid.values()]
        self.assertTrue(any('--multiprocessing-fork' in a for a in argvs), argvs)


if __name__ == '__main__':
    unittest.main()
