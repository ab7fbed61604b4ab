"""End to end: what happens around the allocator hooks. A sampled small allocation never
fails because the raw allocator refused it (issue 12 item 9); hooks that someone else
removed (tracemalloc stopped after starting before heapprof) end the session as
'hooks_replaced', with one line, instead of recording nothing and leaving blocks freed
afterwards looking leaked (item 10)."""
import os
import unittest

from agent_e2e_util import (BUILD_ROOT, DaemonTestCase, clean_env, line_of, run_python,
                             write_program)

FAILMALLOC = os.path.join(BUILD_ROOT, 'tests', 'integration', 'libhp_failmalloc.so')

RAW_REFUSES = '''
import ctypes
set_failing = ctypes.CDLL(None).hp_failmalloc_set

def work(n):
    keep = []
    for i in range(n):
        keep.append((i, str(i) * 3))
    return keep

# The first round interns the stacks while the raw allocator still serves; in the second
# libc refuses this thread every request of at most 512 bytes.
for n, failing in ((100, 0), (2000, 1)):
    set_failing(failing)
    kept = work(n)
    set_failing(0)
print("ok", len(kept), flush=True)
'''

REMOVED_BY_TRACEMALLOC = '''
import sys, time, tracemalloc
import heapprof
tracemalloc.start()                 # before heapprof: heapprof's hooks go on top of it
heapprof.start(socket=sys.argv[1], sample_interval=4096)
big = [bytearray(100000) for _ in range(230)]      # 23 MB, recorded
tracemalloc.stop()                  # puts back the allocators it found: ours are gone
time.sleep(float(sys.argv[2]))
del big                             # freed where no hook sees it
before_stop = time.time_ns()
print(heapprof.is_profiling(), heapprof.stop(), before_stop, flush=True)
'''

ON_TOP_OF_HEAPPROF = '''
import sys, time, tracemalloc
import heapprof
heapprof.start(socket=sys.argv[1], sample_interval=4096)
tracemalloc.start()                 # after heapprof: it calls our hooks
big = [bytearray(100000) for _ in range(50)]
time.sleep(1.5)                     # the sender looks while tracemalloc is on top
tracemalloc.stop()                  # puts ours back
del big
print(heapprof.is_profiling(), heapprof.stop(), flush=True)
'''


# Blocks of known sizes, each from one domain: a list's item array (PyMem_Malloc), grown
# item arrays (PyMem_Realloc), bytes (PyObject_Calloc).
DOMAINS = '''
def mem_site(n):
    return [[None] * 40 for _ in range(n)]        # MEM_SITE: 320-byte item arrays

def realloc_site(n):
    keep = []
    for _ in range(n):
        items = []
        for j in range(17):
            items.append(j)                          # REALLOC_SITE: item arrays grown
        keep.append(items)
    return keep

def obj_site(n):
    return [bytes(300) for _ in range(n)]          # OBJ_SITE: 333-byte bytes objects

kept = mem_site(500), realloc_site(500), obj_site(500)
print("ok", flush=True)
'''

DOMAIN_SQL = '''
    SELECT a.domain, COUNT(*)
    FROM allocations a
    JOIN stack_frames sf ON sf.stack_id = a.stack_id AND sf.depth = 0
    JOIN frames f ON f.frame_id = sf.frame_id
    WHERE a.session_id = ? AND f.lineno = ? AND a.size = ?
    GROUP BY a.domain
'''


def run_ok_session(test, path, **env):
    """Runs path profiled with the HEAPPROF_* settings in env, checks that it printed "ok"
    and that nothing was dropped, stops the daemon and returns the session's id."""
    r = run_python(path, env=test.profiled_env(**env))
    test.assertEqual(r.returncode, 0, r.stderr)
    test.assertEqual(r.stdout.split(), ['ok'])
    test.daemon.stop()
    (sid, dropped), = test.daemon.query('SELECT session_id, events_dropped FROM sessions')
    test.assertEqual(dropped, 0)
    return sid


class Domains(DaemonTestCase):

    def test_mem_and_obj_requests_are_recorded_in_their_own_domain(self):
        """The mem and obj domains share one hook per function, which finds its domain
        in the context CPython passes: a list's item array must be recorded as mem, a
        bytes object as obj, whether allocated, grown or zeroed."""
        path = write_program(self.tmp, 'domains.py', DOMAINS)
        sid = run_ok_session(self, path, HEAPPROF_INTERVAL=1, HEAPPROF_ON_FULL='block')
        # 17 appends grow an empty list's capacity 0 -> 4 -> 8 -> 16 -> 24 items.
        for marker, size, domain in (('MEM_SITE', 320, 'mem'), ('REALLOC_SITE', 192, 'mem'),
                                     ('OBJ_SITE', 333, 'obj')):
            with self.subTest(marker):
                rows = dict(self.daemon.query(DOMAIN_SQL, (sid, line_of(path, marker), size)))
                self.assertEqual(set(rows), {domain}, rows)
                self.assertGreaterEqual(rows[domain], 500)


# Small item arrays grown by appends (PyMem_Realloc), then all dropped.
GROWN_AND_DROPPED = '''
def grow(n):
    keep = []
    for _ in range(n):
        items = []
        for j in range(30):
            items.append(j)                          # GROW: 32- to 256-byte item arrays
        keep.append(items)
    return keep

for _ in range(10):
    del grow(20000)[:]
print("ok", flush=True)
'''


class SampledReallocs(DaemonTestCase):

    def test_small_reallocs_of_sampled_blocks_report_their_frees(self):
        """With CPython's allocators the mem/obj realloc hook does not look its block up:
        a sampled small block lives in the raw allocator, so pymalloc hands its realloc
        to PyMem_RawRealloc, whose hook reports the free. Every sampled block that a
        later append moved must be seen freed, or it would look leaked."""
        path = write_program(self.tmp, 'grown.py', GROWN_AND_DROPPED)
        sid = run_ok_session(self, path, HEAPPROF_INTERVAL=4096, HEAPPROF_ON_FULL='block')
        (sampled, live), = self.daemon.query(
            '''SELECT COUNT(*), TOTAL(a.freed_ns IS NULL) FROM allocations a
               JOIN stack_frames sf ON sf.stack_id = a.stack_id AND sf.depth = 0
               JOIN frames f ON f.frame_id = sf.frame_id
               WHERE a.session_id = ? AND f.lineno = ? AND a.domain = ?''',
            (sid, line_of(path, 'GROW'), 'mem'))
        self.assertGreater(sampled, 5000)     # 6M bytes reallocated, one sample per 4 KiB
        self.assertEqual(live, 0)


class RawAllocatorRefuses(DaemonTestCase):

    def test_sampled_small_allocation_falls_back_and_counts_a_drop(self):
        """Item 9: with CPython's allocators a sampled small object is served by the raw
        allocator (so that its free reaches the hooks); when that failed, the hook
        returned NULL and the program got a MemoryError that pymalloc would not have
        raised. Now the block comes from pymalloc, unrecorded, and the sample is counted
        as dropped."""
        self.assertTrue(os.path.exists(FAILMALLOC), FAILMALLOC)
        path = write_program(self.tmp, 'refused.py', RAW_REFUSES)
        r = run_python(path, env=self.profiled_env(HEAPPROF_INTERVAL=1,
                                                    LD_PRELOAD=FAILMALLOC))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.split(), ['ok', '2000'])
        self.assertEqual(r.stderr, '')
        self.daemon.stop()
        (status, dropped), = self.daemon.query('SELECT status, events_dropped FROM sessions')
        self.assertEqual(status, 'exited')
        # Interval 1 samples every allocation: at least each loop's tuple was refused.
        self.assertGreaterEqual(dropped, 2000)


CALLOC_OVERFLOW = '''
import ctypes
api = ctypes.pythonapi
for name in ('PyMem_RawCalloc', 'PyMem_Calloc', 'PyObject_Calloc'):
    f = getattr(api, name)
    f.restype, f.argtypes = ctypes.c_void_p, [ctypes.c_size_t, ctypes.c_size_t]
    # Products that wrap to 0, 4 and 16: small, were the overflow not seen.
    refused = [f(2**63, 2), f(2**62 + 1, 4), f(2**60 + 1, 16)]
    ok = f(3, 5)
    api.PyMem_RawFree.argtypes = api.PyMem_Free.argtypes = [ctypes.c_void_p]
    api.PyObject_Free.argtypes = [ctypes.c_void_p]
    getattr(api, name.replace('Calloc', 'Free'))(ok)
    print(name, refused == [None] * 3, ok is not None)
'''


class CallocOverflow(DaemonTestCase):

    def test_overflowing_calloc_is_refused_at_every_interval(self):
        """The mem/obj calloc fast path takes the product as it wraps (no overflow test):
        the real calloc must still refuse the request, whether the countdown lets it
        through the fast path (default interval) or every request is sampled (1)."""
        path = write_program(self.tmp, 'overflow.py', CALLOC_OVERFLOW)
        for interval in ('1', '65536'):
            with self.subTest(interval=interval):
                r = run_python(path, env=self.profiled_env(HEAPPROF_INTERVAL=interval))
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(r.stdout.split(),
                                 [w for n in ('PyMem_RawCalloc', 'PyMem_Calloc',
                                              'PyObject_Calloc') for w in (n, 'True', 'True')])


class HooksReplaced(DaemonTestCase):

    def run_removed(self, sleep, profiling_at_stop):
        path = write_program(self.tmp, 'removed.py', REMOVED_BY_TRACEMALLOC)
        r = run_python(path, args=[self.daemon.socket, str(sleep)], env=clean_env())
        self.assertEqual(r.returncode, 0, r.stderr)
        profiling, stopped, before_stop = r.stdout.split()
        self.assertEqual((profiling, stopped), (profiling_at_stop, 'True'))
        self.assertEqual(r.stderr.splitlines(), [
            'heapprof: the allocator hooks were replaced or removed by someone else (e.g. '
            'tracemalloc.stop()); recording ended here, the session ends as hooks_replaced'])
        self.daemon.stop()
        rows = self.daemon.query('SELECT status, ended_ns FROM sessions')
        self.assertEqual(len(rows), 1)
        self.assertEqual(rows[0][0], 'hooks_replaced')
        return rows[0][1], int(before_stop)

    def test_found_by_the_sender_while_running(self):
        """Item 10: the 23 MB freed after tracemalloc.stop() looked never freed, in a
        session that said 'exited'. The sender looks about once a second: the session
        ends there, as 'hooks_replaced', before the program's stop."""
        ended_ns, before_stop = self.run_removed(1.5, 'False')
        self.assertLess(ended_ns, before_stop)

    def test_found_at_the_stop(self):
        """Removed less than a second before the stop: the stop finds it."""
        self.run_removed(0, 'True')

    def test_hooks_on_top_of_ours_are_not_a_replacement(self):
        """tracemalloc started after heapprof chains to our hooks: nothing is said, the
        session records on and ends 'exited'."""
        path = write_program(self.tmp, 'ontop.py', ON_TOP_OF_HEAPPROF)
        r = run_python(path, args=[self.daemon.socket], env=clean_env())
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.split(), ['True', 'True'])
        self.assertEqual(r.stderr, '')
        self.daemon.stop()
        self.assertEqual(self.daemon.query('SELECT status FROM sessions'), [('exited',)])


if __name__ == '__main__':
    unittest.main()
