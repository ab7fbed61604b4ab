"""Allocation-heavy workloads for bench/overhead.py. Each runs as its own process:
    python overhead_workloads.py NAME
and prints nothing; the bench measures the whole process (wall time, peak RSS)."""
import ast
import json
import re
import sys
import threading


def churn():
    """Object churn: short-lived tuples, dicts, lists, small strings (a service loop)."""
    total = 0
    for i in range(900000):
        d = {'id': i, 'name': 'item%d' % i, 'tags': [i, i + 1, (i, 'x')]}
        total += len(d['name']) + len(d['tags'])
    return total


def big_buffers():
    """Big buffers: 64 KiB .. 4 MiB bytearrays created, filled, dropped."""
    n = 0
    for i in range(6000):
        b = bytearray(65536 << (i % 7))
        b[-1] = 1
        n += len(b)
    return n


def slow_leak():
    """A slow leak among churn: 1 object in 50 is kept forever."""
    leaked = []
    for i in range(750000):
        obj = [i, str(i), {'k': i}]
        if i % 50 == 0:
            leaked.append(obj)
    return len(leaked)


def threads():
    """Four threads churning objects concurrently (GIL-bound, like a threaded server)."""
    def work():
        for i in range(200000):
            d = {'a': [i] * 4, 'b': str(i)}
            del d
    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def stdlib():
    """Real stdlib work: parse Python source, JSON round trips, regular expressions."""
    import inspect
    src = inspect.getsource(json.decoder) + inspect.getsource(json.encoder)
    for _ in range(30):
        ast.dump(ast.parse(src))
    doc = {'items': [{'id': i, 'name': 'n%d' % i, 'vals': list(range(10))} for i in range(2000)]}
    for _ in range(40):
        json.loads(json.dumps(doc))
    pat = re.compile(r'(\w+)@(\w+)\.com')
    text = ' '.join('user%d@host%d.com' % (i, i) for i in range(20000))
    for _ in range(20):
        pat.findall(text)


WORKLOADS = {f.__name__: f for f in (churn, big_buffers, slow_leak, threads, stdlib)}

if __name__ == '__main__':
    WORKLOADS[sys.argv[1]]()
