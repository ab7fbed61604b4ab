"""End to end: native allocations (domain 'native', issue 11). A C extension built by the
test suite (hp_native_testext.c, lazy binding and full RELRO) allocates with every
function of the malloc family and maps anonymous memory from known Python lines; a real
heapprofd records a real profiled program. At interval 1 each call is seen once, with the
size asked for, domain 'native', its line and its free; nothing is counted again in a PEP
445 domain; the import slots are put back at stop(), also while threads allocate, and
across fork."""
import os
import sqlite3
import tempfile
import unittest

from agent_e2e_util import (BUILD_ROOT, DaemonTestCase, clean_env, heapprofd_path, line_of,
                            run_python, write_program)

EXT_DIR = os.path.join(BUILD_ROOT, 'tests', 'integration')
LIB = os.path.join(EXT_DIR, 'libhp_native_lib.so')

# The sites of EVERY_FUNCTION: marker -> (size asked for, freed by the program).
SITES = {
    'N_MALLOC': (100003, True),
    'N_CALLOC': (7 * 1001, True),
    'N_REALLOC_NEW': (5003, True),        # realloc(NULL, n): a new block, freed by the growth
    'N_REALLOC_GROW': (90001, True),
    'N_REALLOCARRAY': (11 * 13, True),
    'N_POSIX': (3001, True),
    'N_ALIGNED': (4096, True),
    'N_MEMALIGN': (2001, True),
    'N_VALLOC': (6001, True),
    'N_PVALLOC': (7001, True),
    'N_MMAP': (1 << 20, True),
    'N_LEAK': (12345, False),
}

EVERY_FUNCTION = '''
import sys
ext = __import__(sys.argv[1])            # imported after the start-up hook started heapprof
ext.counts()
a = ext.malloc(100003)                   # N_MALLOC
b = ext.calloc(7, 1001)                  # N_CALLOC
c = ext.realloc(None, 5003)              # N_REALLOC_NEW
c = ext.realloc(c, 90001)                # N_REALLOC_GROW
r = ext.reallocarray(None, 11, 13)       # N_REALLOCARRAY
d = ext.posix_memalign(64, 3001)         # N_POSIX
e = ext.aligned_alloc(128, 4096)         # N_ALIGNED
f = ext.memalign(256, 2001)              # N_MEMALIGN
g = ext.valloc(6001)                     # N_VALLOC
h = ext.pvalloc(7001)                    # N_PVALLOC
m = ext.mmap(1 << 20)                    # N_MMAP
leak = ext.malloc(12345)                 # N_LEAK
fm = ext.mmap_file(65536)                # N_FILE
asked, calls = ext.counts()
for p in (a, b, c, r, d, e, f, g, h):
    ext.free(p)                          # N_FREE
ext.munmap(m, 1 << 20)
ext.munmap(fm, 65536)
hooked = ext.malloc_slot_hooked()
print("asked", asked, calls, hooked)
'''

# Allocations whose innermost Python frame is path:line.
AT_LINE = '''
    SELECT a.domain, a.size, a.est_bytes, a.freed_ns IS NOT NULL
    FROM allocations a
    JOIN stack_frames sf ON sf.stack_id = a.stack_id AND sf.depth = 0
    JOIN frames f ON f.frame_id = sf.frame_id
    WHERE f.filename = ? AND f.lineno = ?
    ORDER BY a.alloc_id
'''


def ext_env(test, **extra):
    return test.profiled_env(PYTHONPATH=EXT_DIR, **extra)


class NativeEveryFunction(DaemonTestCase):

    def run_every_function(self, module):
        path = write_program(self.tmp, 'every.py', EVERY_FUNCTION)
        r = run_python(path, [module], env=ext_env(self, HEAPPROF_INTERVAL=1))
        self.assertEqual(r.returncode, 0, r.stderr)
        words = r.stdout.split()
        self.assertEqual(words[0], 'asked', r.stdout)
        asked, calls, hooked = int(words[1]), int(words[2]), words[3]
        self.assertEqual(hooked, 'True', 'the extension\'s malloc slot is not hooked')
        self.assertEqual(len(self.sessions()), 1)
        return path, asked, calls

    def check_every_function(self, module):
        path, asked, calls = self.run_every_function(module)
        seen_bytes = 0
        for marker, (size, freed) in SITES.items():
            rows = self.daemon.query(AT_LINE, (path, line_of(path, marker)))
            native = [r for r in rows if r[0] == 'native']
            with self.subTest(module=module, site=marker):
                self.assertEqual(len(native), 1, rows)
                self.assertEqual(native[0][1], size)
                self.assertEqual(native[0][2], size)          # interval 1: est = size
                self.assertEqual(bool(native[0][3]), freed)
                # Counted once: no PEP 445 allocation of that size at the line.
                self.assertEqual([r for r in rows if r[0] != 'native' and r[1] >= 1000], [])
            seen_bytes += native[0][1] if native else 0
        # realloc(NULL, n) then realloc(p, m): the extension asked for both.
        self.assertEqual(seen_bytes, asked)
        self.assertEqual(calls, len(SITES))
        # A file mapping is not a native allocation.
        rows = self.daemon.query(AT_LINE, (path, line_of(path, 'N_FILE')))
        self.assertEqual([r for r in rows if r[0] == 'native'], [])

    def test_every_function_lazy_binding(self):
        self.check_every_function('hp_native_testext')

    def test_every_function_full_relro(self):
        self.check_every_function('hp_native_testext_now')

    def test_interval_default_estimates(self):
        """At the default interval large blocks are sampled with est_bytes by the same
        sampler: the sum over 200 blocks of 256 KiB is within 10% of what was asked."""
        src = '''
        import sys, hp_native_testext as ext
        kept = [ext.malloc(262144) for _ in range(200)]      # N_BIG
        print(ext.counts()[0])
        '''
        path = write_program(self.tmp, 'big.py', src)
        r = run_python(path, env=ext_env(self))
        self.assertEqual(r.returncode, 0, r.stderr)
        asked = int(r.stdout.split()[0])
        self.sessions()
        rows = self.daemon.query(AT_LINE, (path, line_of(path, 'N_BIG')))
        est = sum(row[2] for row in rows if row[0] == 'native')
        self.assertGreater(est, 0.9 * asked)
        self.assertLess(est, 1.1 * asked)


LOADED_BEFORE = '''
import sys, heapprof, hp_native_testext as ext
from heapprof import _agent
before = ext.malloc_slot_hooked()
heapprof.start(socket=sys.argv[1], sample_interval=1, native=sys.argv[2] == '1')
during = ext.malloc_slot_hooked()
slots = _agent._native_slots()
p = ext.malloc(54321)                    # N_BEFORE
ext.free(p)
q = ext.malloc_nogil(43210)              # N_NOGIL
ext.free(q)
heapprof.stop()
print(before, during, slots > 0, ext.malloc_slot_hooked(), _agent._native_slots())
'''


class NativeStartStop(DaemonTestCase):

    def run_loaded_before(self, native):
        path = write_program(self.tmp, 'before.py', LOADED_BEFORE)
        env = ext_env(self)
        env.pop('HEAPPROF_SOCKET')
        r = run_python(path, [self.daemon.socket, native], env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.sessions()
        return path, r.stdout.split()

    def test_loaded_before_start_and_restored_at_stop(self):
        path, out = self.run_loaded_before('1')
        # Not hooked before start, hooked while profiling, nothing left after stop().
        self.assertEqual(out, ['False', 'True', 'True', 'False', '0'])
        rows = self.daemon.query(AT_LINE, (path, line_of(path, 'N_BEFORE')))
        self.assertEqual([(r[0], r[1], r[3]) for r in rows if r[1] >= 1000],
                         [('native', 54321, 1)])
        # With the GIL released around the call (as numpy's large calloc does): still the
        # thread's own Python stack.
        rows = self.daemon.query(AT_LINE, (path, line_of(path, 'N_NOGIL')))
        self.assertEqual([(r[0], r[1], r[3]) for r in rows if r[1] >= 1000],
                         [('native', 43210, 1)])

    def test_native_false(self):
        path, out = self.run_loaded_before('0')
        self.assertEqual(out, ['False', 'False', 'False', 'False', '0'])
        self.assertEqual(self.daemon.query(
            "SELECT COUNT(*) FROM allocations WHERE domain = 'native'"), [(0,)])

    def test_heapprof_native_0(self):
        path = write_program(self.tmp, 'every.py', EVERY_FUNCTION)
        r = run_python(path, ['hp_native_testext'],
                       env=ext_env(self, HEAPPROF_INTERVAL=1, HEAPPROF_NATIVE=0))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.strip().endswith('False'), r.stdout)
        self.sessions()
        self.assertEqual(self.daemon.query(
            "SELECT COUNT(*) FROM allocations WHERE domain = 'native'"), [(0,)])
        # The PEP 445 domains are recorded as ever.
        self.assertGreater(self.daemon.query("SELECT COUNT(*) FROM allocations")[0][0], 100)

    def test_bad_heapprof_native_is_named(self):
        r = run_python('print("ran")', env=ext_env(self, HEAPPROF_NATIVE='maybe'))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, 'ran\n')
        self.assertEqual(r.stderr.splitlines(),
                         ["heapprof: native HEAPPROF_NATIVE='maybe': expected 1 or 0; the "
                          "program runs unprofiled"])
        self.assertEqual(self.sessions(), [])

    def test_ctypes_dlopen_of_a_plain_library(self):
        src = '''
        import ctypes, sys
        lib = ctypes.PyDLL(sys.argv[1])          # dlopen() at run time, the GIL kept
        lib.hp_native_lib_malloc.restype = ctypes.c_void_p
        lib.hp_native_lib_free.argtypes = [ctypes.c_void_p]
        p = lib.hp_native_lib_malloc(77777)      # N_LIB
        lib.hp_native_lib_free(p)
        '''
        path = write_program(self.tmp, 'lib.py', src)
        r = run_python(path, [LIB], env=ext_env(self, HEAPPROF_INTERVAL=1))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.sessions()
        rows = self.daemon.query(AT_LINE, (path, line_of(path, 'N_LIB')))
        self.assertEqual([(r[0], r[1], r[3]) for r in rows if r[1] == 77777],
                         [('native', 77777, 1)])

    def test_library_unloaded_before_stop(self):
        """A library whose slots were rewritten is unloaded (dlclose) while profiling:
        it is forgotten, and stop() writes nothing into the memory it occupied."""
        src = '''
        import _ctypes, ctypes, sys, heapprof
        from heapprof import _agent
        heapprof.start(socket=sys.argv[2], sample_interval=1)
        before = _agent._native_slots()
        lib = ctypes.PyDLL(sys.argv[1])
        lib.hp_native_lib_malloc.restype = ctypes.c_void_p
        lib.hp_native_lib_free.argtypes = [ctypes.c_void_p]
        lib.hp_native_lib_free(lib.hp_native_lib_malloc(55555))       # N_UNLOAD
        loaded = _agent._native_slots()
        _ctypes.dlclose(lib._handle)
        del lib
        with open('/proc/self/maps') as f:
            gone = 'libhp_native_lib' not in f.read()
        after = _agent._native_slots()
        heapprof.stop()
        print(loaded > before, gone, after == before, _agent._native_slots())
        '''
        path = write_program(self.tmp, 'unload.py', src)
        env = ext_env(self)
        env.pop('HEAPPROF_SOCKET')
        r = run_python(path, [LIB, self.daemon.socket], env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.split(), ['True', 'True', 'True', '0'])
        self.sessions()
        rows = self.daemon.query(AT_LINE, (path, line_of(path, 'N_UNLOAD')))
        self.assertEqual([(r[0], r[1], r[3]) for r in rows if r[1] == 55555],
                         [('native', 55555, 1)])

    def test_stop_while_threads_allocate(self):
        """Threads allocate and free natively without the GIL while profiling starts and
        stops three times: no crash, every stop leaves nothing patched, and the threads'
        allocations are recorded, with no stack (C threads that never ran Python)."""
        src = '''
        import sys, time, heapprof, hp_native_testext as ext
        from heapprof import _agent
        ext.churn_start(4)
        out = []
        for i in range(3):
            heapprof.start(socket=sys.argv[1], sample_interval=4096, on_full='block')
            n = ext.churned()
            while ext.churned() < n + 200:
                time.sleep(0.01)
            heapprof.stop()
            out.append((ext.malloc_slot_hooked(), _agent._native_slots()))
            n = ext.churned()
            while ext.churned() < n + 200:
                time.sleep(0.01)
        ext.churn_stop()
        print(out)
        '''
        path = write_program(self.tmp, 'churn.py', src)
        env = ext_env(self)
        env.pop('HEAPPROF_SOCKET')
        r = run_python(path, [self.daemon.socket], env=env, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), str([(False, 0)] * 3))
        sessions = self.sessions()
        self.assertEqual([s[4] for s in sessions], ['exited'] * 3)
        for s in sessions:
            n, unfreed = self.daemon.query(
                "SELECT COUNT(*), TOTAL(freed_ns IS NULL) FROM allocations WHERE "
                "session_id = ? AND domain = 'native' AND stack_id IS NULL", (s[0],))[0]
            self.assertGreater(n, 200, s)
            # Every block is freed in the round that made it: only those alive when the
            # session stopped (4 threads x 8 blocks and 1 mapping), and one being sampled
            # by each thread at that moment, may lack their free ('block': none dropped).
            self.assertEqual(s[5], 0, s)
            self.assertLessEqual(unfreed, 4 * 10, s)

    def test_fork_while_native_calls_run(self):
        src = '''
        import os, sys, heapprof, hp_native_testext as ext
        ext.churn_start(3)
        codes = []
        for i in range(4):
            pid = os.fork()
            if pid == 0:
                ok = ext.malloc_slot_hooked()
                p = ext.malloc(65432)            # N_CHILD
                ext.free(p)
                heapprof.stop()
                ok = ok and not ext.malloc_slot_hooked()
                os._exit(0 if ok else 7)
            codes.append(os.waitpid(pid, 0)[1])
        ext.churn_stop()
        print(codes)
        '''
        path = write_program(self.tmp, 'fork.py', src)
        r = run_python(path, env=ext_env(self, HEAPPROF_INTERVAL=1), timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), str([0] * 4))
        sessions = self.sessions()
        self.assertEqual(len(sessions), 5)
        rows = self.daemon.query(AT_LINE, (path, line_of(path, 'N_CHILD')))
        self.assertEqual(sorted((r[0], r[1], r[3]) for r in rows if r[1] == 65432),
                         [('native', 65432, 1)] * 4)


class NativeRunner(unittest.TestCase):
    """`heapprof run` records native allocations by default; --no-native does not."""

    def run_count(self, *options):
        with tempfile.TemporaryDirectory(prefix='hp-native-run-') as tmp:
            path = write_program(tmp, 'app.py', '''
            import hp_native_testext as ext
            kept = [ext.malloc(1 << 20) for _ in range(20)]     # N_RUN
            ''')
            db = os.path.join(tmp, 'out.sqlite')
            env = clean_env(HEAPPROFD=heapprofd_path(), PYTHONPATH=EXT_DIR)
            r = run_python('-m', ['heapprof', 'run', '-o', db] + list(options) + [path],
                           env=env, cwd=tmp)
            self.assertEqual(r.returncode, 0, r.stderr)
            con = sqlite3.connect(db)
            try:
                return con.execute("SELECT COUNT(*) FROM allocations WHERE domain = 'native' "
                                   "AND size = ?", (1 << 20,)).fetchone()[0], r.stderr
            finally:
                con.close()

    def test_native_by_default(self):
        count, summary = self.run_count()
        self.assertEqual(count, 20)
        # The summary says what native code held: 20 MiB, all of it still at exit.
        self.assertIn("native (C extensions' malloc/mmap): ~20.0 MiB allocated, ~20.0 MiB of "
                      "it live at the peak, ~20.0 MiB at exit", summary)

    def test_no_native(self):
        count, summary = self.run_count('--no-native')
        self.assertEqual(count, 0)
        self.assertNotIn('native (', summary)

    def test_no_native_in_help(self):
        r = run_python('-m', ['heapprof', 'run', '--help'], env=clean_env())
        self.assertIn('--no-native', r.stdout + r.stderr)


if __name__ == '__main__':
    unittest.main()
