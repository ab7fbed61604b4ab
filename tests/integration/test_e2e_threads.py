"""End to end: thread ids are kernel thread ids, so sequential threads stay apart, and
threads get their names: the kernel's (set by native code) and Python's (issue 12 item
12: 200 sequential threads were recorded as 5 pthread_self() values, without names)."""
import subprocess
import unittest

from agent_e2e_util import PYTHON, DaemonTestCase, write_program

THREADS = '''
import _thread, ctypes, os, threading
import heapprof
keep = []

def work():
    keep.append(bytearray(200000))

for _ in range(200):                # one after the other: pthread_self() values repeat
    t = threading.Thread(target=work)
    t.start()
    t.join()

# A thread only the kernel names (as native libraries do), alive until the stop.
named = threading.Event()
done = threading.Event()
def kernel_named():
    ctypes.CDLL(None).prctl(15, b"hp-kname", 0, 0, 0)      # PR_SET_NAME
    keep.append(bytearray(300000))
    named.set()
    done.wait()
_thread.start_new_thread(kernel_named, ())

# A Python thread with a name, alive at the stop.
ready = threading.Event()
def python_named():
    keep.append(bytearray(400000))
    ready.set()
    done.wait()
worker = threading.Thread(target=python_named, name="worker-A")
worker.start()
named.wait()
ready.wait()
keep.append(bytearray(500000))
print(worker.native_id, threading.get_native_id(), flush=True)
heapprof.stop()
done.set()
worker.join()
'''


class ThreadIdsAndNames(DaemonTestCase):

    def test_kernel_ids_and_names(self):
        path = write_program(self.tmp, 'threads.py', THREADS)
        proc = subprocess.Popen([PYTHON, path], env=self.profiled_env(HEAPPROF_INTERVAL=4096),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.assertEqual(proc.returncode, 0, err)
        self.assertEqual(err, '')
        worker_tid, main_tid = map(int, out.split())
        sid, = [row[0] for row in self.sessions()]
        q = self.daemon.query

        def tids_of(size):
            return [row[0] for row in q('SELECT DISTINCT thread_id FROM allocations '
                                        'WHERE session_id = ? AND size = ?', (sid, size))]
        # 200 threads, 200 ids (interval 4096 samples every 200 kB block).
        self.assertEqual(len(tids_of(200001)), 200)
        names = dict(q('SELECT thread_id, name FROM threads WHERE session_id = ?', (sid,)))
        kernel_tid, = tids_of(300001)
        self.assertEqual(names.get(kernel_tid), 'hp-kname')
        self.assertEqual(tids_of(400001), [worker_tid])
        self.assertEqual(names.get(worker_tid), 'worker-A')
        self.assertEqual(tids_of(500001), [main_tid])
        self.assertEqual(main_tid, proc.pid)
        self.assertEqual(names.get(main_tid), 'MainThread')
        # The 200 short-lived threads inherited the process's kernel name and ended
        # before the stop: they have no name of their own to record.
        self.assertFalse(set(tids_of(200001)) & set(names))


if __name__ == '__main__':
    unittest.main()
