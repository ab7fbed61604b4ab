"""End to end: the recorded Python stacks are exactly the program's, on every supported
CPython: plain calls, a class whose __init__ call CPython 3.13 specialises (and then runs
through a hidden clean-up frame), generators driven by a for loop, by list() from C, by
yield from and resumed from another function, sort keys called from C, coroutines driven
by hand and by asyncio tasks, async generators. Interpreter-made frames (3.12+'s C-entry
frames, 3.13's _Py_InitCleanup) never show.

Every site allocates blocks of its own size (60001, 60002, ...); at an interval of 8 KiB
each such block is sampled with p = 1 - exp(-60000/8192) > 0.999, so every site is
recorded, and each size names the one stack it must have."""
import json
import os
import unittest

from agent_e2e_util import DaemonTestCase, line_of, run_python, write_program

PROGRAM = '''
import asyncio, dis, json, sys

keep = []

class Node:
    def __init__(self, n):
        self.buf = bytearray(n)                       # SITE_INIT

def make_nodes():
    out = []
    for _ in range(3000):
        out.append(Node(60001))                       # SITE_MAKE
    return out

def numbers(size):
    for _ in range(40):
        yield bytearray(size)                         # SITE_GEN

def drive_for():
    out = []
    for b in numbers(60002):                          # SITE_FOR
        out.append(b)
    return out

def drive_list():
    return list(numbers(60003))                       # SITE_LIST

def delegate(size):
    yield from numbers(size)                          # SITE_YIELD_FROM

def drive_yield_from():
    return list(delegate(60004))                      # SITE_LIST2

def key(x):
    keep.append(bytearray(60005))                     # SITE_KEY
    return -x

def drive_sorted():
    return sorted(range(40), key=key)                 # SITE_SORTED

async def leaf(size):
    return bytearray(size)                            # SITE_LEAF

async def branch(size):
    return await leaf(size)                           # SITE_AWAIT

def drive_coro():
    out = []
    for _ in range(40):
        c = branch(60006)
        try:
            c.send(None)                              # SITE_SEND
        except StopIteration as e:
            out.append(e.value)
    return out

async def worker():
    out = []
    for _ in range(40):
        out.append(await branch(60007))               # SITE_TASK
        await asyncio.sleep(0)
    return out

async def main_task():
    return await asyncio.gather(worker(), worker())

async def agen(size):
    for _ in range(40):
        yield bytearray(size)                         # SITE_AGEN

async def consume_agen():
    out = []
    async for b in agen(60008):                       # SITE_ASYNC_FOR
        out.append(b)
    return out

def drive_agen():
    c = consume_agen()
    try:
        c.send(None)                                  # SITE_SEND2
    except StopIteration as e:
        return e.value

def resume_again(g):
    return next(g)                                    # SITE_NEXT2

def resume_elsewhere():
    g = numbers(60009)
    first = next(g)                                   # SITE_NEXT1
    return first, resume_again(g)                     # SITE_AGAIN

keep.append(make_nodes())                             # SITE_M_MAKE
keep.append(drive_for())                              # SITE_M_FOR
keep.append(drive_list())                             # SITE_M_LIST
keep.append(drive_yield_from())                       # SITE_M_YF
keep.append(drive_sorted())                           # SITE_M_SORTED
keep.append(drive_coro())                             # SITE_M_CORO
keep.append(asyncio.run(main_task()))                 # SITE_M_ASYNCIO
keep.append(drive_agen())                             # SITE_M_AGEN
keep.append(resume_elsewhere())                       # SITE_M_RESUME

# Whether the calls of Node were specialised to CALL_ALLOC_AND_ENTER_INIT (3.13+), which
# runs __init__ above a _Py_InitCleanup frame; None where CPython has no such instruction.
known = set(getattr(dis, '_specialized_opmap', {}))
spec = None
if 'CALL_ALLOC_AND_ENTER_INIT' in known:
    spec = any(i.opname == 'CALL_ALLOC_AND_ENTER_INIT'
               for i in dis.get_instructions(make_nodes, adaptive=True))
print(json.dumps({'init_specialised': spec, 'asyncio': asyncio.__file__}))
'''

STACK_SQL = '''
    SELECT a.size, (SELECT json_group_array(json_array(f.function, f.filename, f.lineno))
                    FROM (SELECT f.function, f.filename, f.lineno FROM stack_frames sf
                          JOIN frames f ON f.frame_id = sf.frame_id
                          WHERE sf.stack_id = a.stack_id ORDER BY sf.depth) f)
    FROM allocations a WHERE a.session_id = ? AND a.size BETWEEN 60002 AND 60010
'''


class Stacks(DaemonTestCase):

    def record(self):
        path = write_program(self.tmp, 'stacks.py', PROGRAM)
        r = run_python(path, env=self.profiled_env(HEAPPROF_INTERVAL=8192), timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr, '')
        info = json.loads(r.stdout)
        sessions = self.sessions()
        self.assertEqual(len(sessions), 1, sessions)
        self.assertEqual(sessions[0][5], 0)      # nothing dropped: every site is there
        stacks = {}
        for size, frames in self.daemon.query(STACK_SQL, (sessions[0][0],)):
            stacks.setdefault(size, set()).add(tuple(tuple(f) for f in json.loads(frames)))
        return path, sessions[0][0], info, stacks

    def test_exact_stacks_of_calls_generators_and_coroutines(self):
        path, sid, info, stacks = self.record()

        def at(function, marker):
            return (function, path, line_of(path, marker))

        def module(marker):
            return at('<module>', marker)
        # bytearray(n) asks for n + 1 bytes.
        expected = {
            60002: (at('numbers', 'SITE_GEN'), at('drive_for', 'SITE_FOR'), module('SITE_M_FOR')),
            # list() calls the generator from C: 3.12+ put a C-entry frame between.
            60003: (at('numbers', 'SITE_GEN'), at('drive_list', 'SITE_LIST'),
                    module('SITE_M_LIST')),
            60004: (at('numbers', 'SITE_GEN'), at('delegate', 'SITE_YIELD_FROM'),
                    at('drive_yield_from', 'SITE_LIST2'), module('SITE_M_YF')),
            60005: (at('key', 'SITE_KEY'), at('drive_sorted', 'SITE_SORTED'),
                    module('SITE_M_SORTED')),
            60006: (at('leaf', 'SITE_LEAF'), at('branch', 'SITE_AWAIT'),
                    at('drive_coro', 'SITE_SEND'), module('SITE_M_CORO')),
            60008: (at('agen', 'SITE_AGEN'), at('consume_agen', 'SITE_ASYNC_FOR'),
                    at('drive_agen', 'SITE_SEND2'), module('SITE_M_AGEN')),
        }
        for size, stack in expected.items():
            self.assertEqual(stacks.get(size + 1), {stack}, 'size %d' % size)
        # A generator resumed from two places: each sample has the stack it was resumed on.
        self.assertEqual(stacks.get(60010), {
            (at('numbers', 'SITE_GEN'), at('resume_elsewhere', 'SITE_NEXT1'),
             module('SITE_M_RESUME')),
            (at('numbers', 'SITE_GEN'), at('resume_again', 'SITE_NEXT2'),
             at('resume_elsewhere', 'SITE_AGAIN'), module('SITE_M_RESUME'))})
        # asyncio tasks: the coroutine chain, then only the event loop's own frames (the
        # task step is C), down to asyncio.run's caller.
        tasks = stacks.get(60008)
        self.assertEqual(len(tasks), 1, tasks)
        (task_stack,) = tasks
        self.assertEqual(task_stack[:3], (at('leaf', 'SITE_LEAF'), at('branch', 'SITE_AWAIT'),
                                          at('worker', 'SITE_TASK')))
        self.assertEqual(task_stack[-1], module('SITE_M_ASYNCIO'))
        loop_dir = os.path.dirname(info['asyncio'])
        middle = task_stack[3:-1]
        self.assertTrue(middle, task_stack)
        for function, filename, lineno in middle:
            self.assertEqual(os.path.dirname(filename), loop_dir, task_stack)
        self.assertIn('BaseEventLoop.run_until_complete', {f[0] for f in middle})

    def test_specialised_init_calls_show_no_hidden_frame(self):
        path, sid, info, stacks = self.record()
        if info['init_specialised'] is not None:
            # CPython 3.13+: the calls were specialised, so __init__ ran above the
            # _Py_InitCleanup frame that the stack walk must skip.
            self.assertTrue(info['init_specialised'])
        line = line_of(path, 'SITE_INIT')
        rows = self.daemon.query(
            'SELECT a.stack_id, COUNT(*) FROM allocations a JOIN stack_frames sf ON '
            'sf.stack_id = a.stack_id AND sf.depth = 0 JOIN frames f ON f.frame_id = '
            'sf.frame_id WHERE a.session_id = ? AND f.lineno = ? AND a.size = 60002 '
            'GROUP BY a.stack_id', (sid, line))
        self.assertEqual(len(rows), 1, rows)         # one stack for all 3000 calls
        self.assertGreater(rows[0][1], 2900)
        frames = self.daemon.query(
            'SELECT f.function, f.filename, f.lineno FROM stack_frames sf JOIN frames f ON '
            'f.frame_id = sf.frame_id WHERE sf.stack_id = ? ORDER BY sf.depth', (rows[0][0],))
        self.assertEqual(frames, [('Node.__init__', path, line),
                                  ('make_nodes', path, line_of(path, 'SITE_MAKE')),
                                  ('<module>', path, line_of(path, 'SITE_M_MAKE'))])
        # Nowhere in the recording a frame the interpreter made for itself.
        made = self.daemon.query(
            "SELECT function, filename FROM frames WHERE "
            "function = '<interpreter trampoline>' OR filename = '<interpreter trampoline>' "
            "OR (function = '__init__' AND filename = '__init__')")
        self.assertEqual(made, [])


if __name__ == '__main__':
    unittest.main()
