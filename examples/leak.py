"""A leak at a known line.

handle_request() makes temporary objects that are freed, and also appends a 32 KiB buffer to a
module-level cache that nothing ever clears: 200 requests leak about 6.4 MiB from one line.

    HEAPPROF_SOCKET=/tmp/heapprofd.sock python examples/leak.py
    heapprof leaks              # the _cache.append line tops the list
"""
import sys
import time

_cache = []


def handle_request(i):
    scratch = [str(i) * 64 for _ in range(100)]
    _cache.append(bytearray(32 * 1024))  # LEAK_LINE
    return len(scratch)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    for i in range(n):
        handle_request(i)
        time.sleep(0.005)
    print('leaked %d buffers' % len(_cache), flush=True)


if __name__ == '__main__':
    main()
