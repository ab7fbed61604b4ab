"""Allocation-heavy workloads for bench/overhead.py. Each runs as its own process:
    python overhead_workloads.py NAME [TAG ...]
and prints nothing; the bench measures the whole process (wall time, CPU time, peak RSS).
Arguments after NAME are ignored: the bench passes a tag naming the configuration, so that
the daemon's `sessions` view (argv) tells the configurations apart.

HEAPPROF_BENCH_SCALE (default 1) multiplies every loop count. At 1 each workload runs
about 1.2 s as plain Python on the development machine (2 cores, Python 3.11): long
enough that the fixed costs of a process (interpreter start, heapprof's connect and exit
flush; bench/overhead.py shows them in its `startup` row) and a few milliseconds of
scheduler noise no longer decide the ratios, as they did at 0.1-0.4 s. The work per
iteration is the same at every scale; only how long the program runs changes."""
import ast
import json
import os
import re
import sys
import threading

SCALE_VAR = 'HEAPPROF_BENCH_SCALE'
DEFAULT_SCALE = 1.0
SCALE = DEFAULT_SCALE   # set from the environment when run as a program


def parse_scale(text):
    """The scale as a float > 0, or ValueError with a message naming the limit."""
    try:
        scale = float(text)
    except ValueError:
        raise ValueError('%r is not a number' % text) from None
    if not scale > 0 or scale > 1000:   # `not >` also refuses NaN
        raise ValueError('%r is outside (0, 1000]' % text)
    return scale


def scaled(count):
    """A loop count of the 1.2 s workload, times the scale; at least one iteration."""
    return max(1, round(count * SCALE))


def churn():
    """Object churn: short-lived tuples, dicts, lists, small strings (a service loop)."""
    total = 0
    for i in range(scaled(4000000)):
        d = {'id': i, 'name': 'item%d' % i, 'tags': [i, i + 1, (i, 'x')]}
        total += len(d['name']) + len(d['tags'])
    return total


def big_buffers():
    """Big buffers: 64 KiB .. 4 MiB bytearrays created, filled, dropped."""
    n = 0
    for i in range(scaled(115000)):
        b = bytearray(65536 << (i % 7))
        b[-1] = 1
        n += len(b)
    return n


def slow_leak():
    """A slow leak among churn: 1 object in 50 is kept forever."""
    leaked = []
    for i in range(scaled(9000000)):
        obj = [i, str(i), {'k': i}]
        if i % 50 == 0:
            leaked.append(obj)
    return len(leaked)


def threads():
    """Four threads churning objects concurrently (GIL-bound, like a threaded server)."""
    count = scaled(2000000)

    def work():
        for i in range(count):
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
    for _ in range(scaled(90)):
        ast.dump(ast.parse(src))
    doc = {'items': [{'id': i, 'name': 'n%d' % i, 'vals': list(range(10))} for i in range(2000)]}
    for _ in range(scaled(120)):
        json.loads(json.dumps(doc))
    pat = re.compile(r'(\w+)@(\w+)\.com')
    text = ' '.join('user%d@host%d.com' % (i, i) for i in range(20000))
    for _ in range(scaled(60)):
        pat.findall(text)


class Entry:
    """A cache entry of big_heap: a small object with a reference to its value."""
    __slots__ = ('key', 'value', 'hits')

    def __init__(self, key, value):
        self.key = key
        self.value = value
        self.hits = 0


def big_heap():
    """A long-lived large heap: a cache of a million small objects (entries, their strings
    and ints: some 210 MiB that every full collection walks), built once, then a request
    loop that reads entries, replaces 1 value in 4 and answers with a short-lived dict.
    The cache's size is the point, so the scale leaves it at a million and changes the
    requests only."""
    size = 1000000
    cache = {}
    for i in range(size):
        cache[i] = Entry(i, 'value-%d' % i)
    n = 0
    for j in range(scaled(1000000)):
        e = cache[(j * 7919) % size]
        e.hits += 1
        if j % 4 == 0:
            e.value = 'value-%d-%d' % (e.key, j)
        reply = {'key': e.key, 'value': e.value, 'hits': e.hits}
        n += len(reply['value'])
    return n


WORKLOADS = {f.__name__: f for f in (churn, big_buffers, slow_leak, threads, stdlib, big_heap)}

if __name__ == '__main__':
    if len(sys.argv) < 2 or sys.argv[1] not in WORKLOADS:
        sys.exit('usage: overhead_workloads.py {%s} [TAG ...]' % ','.join(WORKLOADS))
    try:
        SCALE = parse_scale(os.environ.get(SCALE_VAR, str(DEFAULT_SCALE)))
    except ValueError as e:
        sys.exit('%s: %s' % (SCALE_VAR, e))
    WORKLOADS[sys.argv[1]]()
