"""End to end: what the agent does with the program's code objects.

- Names that are not valid UTF-8 (a program in a directory whose name is not UTF-8, code
  compiled with lone surrogates in its filename and qualname) are recorded by the rule
  s.encode('utf-8', 'surrogateescape').decode('utf-8', 'replace'), and naming them never
  raises or collects inside an allocator hook: a gc.callbacks entry asks the agent, at
  every collection, whether it started inside a hook (with gc thresholds of 1, any
  allocation of a container inside a hook, such as the exception object of a failed
  encoding, starts one).
- Code compiled and dropped 300,000 times is never kept alive by the agent (every code
  object dies), the agent's tables and the process's memory stay bounded, and every
  sample still has its own code's stack although new code objects keep reusing the
  addresses of dead ones."""
import json
import os
import unittest

from agent_e2e_util import DaemonTestCase, clean_env, line_of, run_python, write_program

NAMES_PROGRAM = '''
import gc, json, os, sys
from heapprof import _agent

in_hook = []
collections = [0]
def watch(phase, info):
    if phase == 'start':
        collections[0] += 1
        if _agent._in_hook():
            in_hook.append(info.get('generation'))
gc.callbacks.append(watch)
gc.set_threshold(1, 1, 1)

import helper

def run():
    keep = []
    for i in range(3000):
        keep.append([helper.make(5000 + i % 7)])           # SITE_MAIN
    return keep

keep = run()
code = compile("def f(n):\\n    return bytearray(n)\\n", "gen\\udcff\\ud800.py", "exec")
ns = {}
exec(code, ns)
f = ns["f"]
# An escaped valid UTF-8 pair (c3 a9: e-acute) comes back whole; a high surrogate cannot.
f.__code__ = f.__code__.replace(co_qualname="q\\ud800x\\udcc3\\udca9")
for i in range(3000):
    keep.append([f(6000)])
gc.set_threshold(700, 10, 10)
print(json.dumps({"in_hook": len(in_hook), "collections": collections[0]}))
'''

HELPER = '''
def make(n):
    return bytearray(n)                                    # SITE_HELPER
'''

CODES_PROGRAM = '''
import gc, json, resource, sys, weakref
N = int(sys.argv[1]); K = 97; BASE = 20000
dead = [0]
refs = set()
def died(ref):
    dead[0] += 1
    refs.discard(ref)
ns = {}
for i in range(N):
    k = i % K
    src = "\\n" * (k % 13) + "x = bytearray(%d); y = %d\\n" % (BASE + k, i)
    code = compile(src, "gen%d.py" % (k % 7), "exec")
    refs.add(weakref.ref(code, died))
    exec(code, ns)                                         # SITE_EXEC
    del code
agent = sys.modules.get("heapprof._agent")
print(json.dumps({"dead": dead[0], "stats": agent._stack_stats() if agent else None,
                  "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
'''


def replaced(s):
    """The rule the agent stores names by."""
    return s.encode('utf-8', 'surrogateescape').decode('utf-8', 'replace')


class Names(DaemonTestCase):

    def test_names_that_are_not_utf8_are_replaced_without_work_in_the_hook(self):
        # A directory whose name is not UTF-8: every code object of the program, and
        # sys.argv[0], carry lone surrogates (U+DCFF, U+DCFE).
        bdir = os.path.join(os.fsencode(self.tmp), b'dir\xff\xfe')
        os.mkdir(bdir)
        tdir = os.fsdecode(bdir)
        path = write_program(tdir, 'prog.py', NAMES_PROGRAM)
        helper = write_program(tdir, 'helper.py', HELPER)
        r = run_python(path, env=self.profiled_env(HEAPPROF_INTERVAL=4096), timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr, '')
        out = json.loads(r.stdout)
        self.assertGreater(out['collections'], 1000)     # the watch was running
        self.assertEqual(out['in_hook'], 0)               # none started inside a hook
        sessions = self.sessions()
        self.assertEqual(len(sessions), 1, sessions)
        self.assertEqual(json.loads(sessions[0][3])[0], replaced(path))   # argv[0]
        self.assertIn('\ufffd\ufffd', replaced(path))
        frames = set(self.daemon.query('SELECT function, filename, lineno FROM frames'))
        self.assertIn(('make', replaced(helper), line_of(helper, 'SITE_HELPER')), frames)
        self.assertIn(('run', replaced(path), line_of(path, 'SITE_MAIN')), frames)
        self.assertIn(('q\ufffdx\u00e9', 'gen\ufffd\ufffd.py', 2), frames)
        self.assertNotIn('?', {f[0] for f in frames} | {f[1] for f in frames})


class CodeLifetime(DaemonTestCase):

    N = 300000

    def test_code_compiled_again_and_again_is_freed_and_keeps_its_stacks(self):
        path = write_program(self.tmp, 'codes.py', CODES_PROGRAM)
        plain = run_python(path, args=[str(self.N)], env=clean_env(), timeout=300)
        self.assertEqual(plain.returncode, 0, plain.stderr)
        r = run_python(path, args=[str(self.N)], env=self.profiled_env(), timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr, '')
        out = json.loads(r.stdout)
        # No code object outlives the program's last reference to it.
        self.assertEqual(out['dead'], self.N)
        stats = out['stats']
        self.assertTrue(stats['caches_on'])
        self.assertGreater(stats['code_flushes'], 0)    # dead code left the caches
        # Frames are interned by content: 97 distinct (file, line) sites and the
        # driver's own, not one per code object.
        self.assertLess(stats['frames'], 400)
        self.assertLess(stats['stacks'], 400)
        # The agent's memory, ring included, is a bounded few MiB over the plain run.
        extra_mib = (out['maxrss_kib'] - json.loads(plain.stdout)['maxrss_kib']) / 1024
        self.assertLess(extra_mib, 32)
        sessions = self.sessions()
        self.assertEqual(len(sessions), 1, sessions)
        # Every block x = bytearray(BASE + k) made by the compiled code (its caller: the
        # exec line) has the stack of the code that made it: file gen{k % 7}.py, line
        # 1 + k % 13, whichever dead code object's address that code reused.
        rows = self.daemon.query(
            'SELECT a.size, f0.function, f0.filename, f0.lineno, COUNT(*) FROM allocations a '
            'JOIN stack_frames s0 ON s0.stack_id = a.stack_id AND s0.depth = 0 '
            'JOIN frames f0 ON f0.frame_id = s0.frame_id '
            'JOIN stack_frames s1 ON s1.stack_id = a.stack_id AND s1.depth = 1 '
            'JOIN frames f1 ON f1.frame_id = s1.frame_id '
            "WHERE a.size BETWEEN 20001 AND 20097 AND f1.function = '<module>' "
            'AND f1.filename = ? AND f1.lineno = ? GROUP BY 1, 2, 3, 4',
            (path, line_of(path, 'SITE_EXEC')))
        samples = 0
        for size, function, filename, lineno, count in rows:
            k = size - 20001
            self.assertEqual((function, filename, lineno),
                             ('<module>', 'gen%d.py' % (k % 7), 1 + k % 13), 'size %d' % size)
            samples += count
        # p = 1 - exp(-20000/65536) = 0.26 of 300,000 blocks.
        self.assertGreater(samples, 50000)


if __name__ == '__main__':
    unittest.main()
