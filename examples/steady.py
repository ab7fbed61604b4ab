"""A steady state: a fixed working set of 100 buffers of 16 KiB, replaced round-robin.

The live heap stays level (about 1.6 MiB from the working set) while allocations keep
happening, so the time plot is flat and `heapprof leaks` shows nothing large.

    HEAPPROF_SOCKET=/tmp/heapprofd.sock python examples/steady.py
    heapprof plot -o steady.png
"""
import sys
import time


def serve(seconds):
    ring = [None] * 100
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        ring[i % len(ring)] = bytearray(16 * 1024)  # STEADY_LINE
        i += 1
        if i % 50 == 0:
            time.sleep(0.005)
    return i


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 1.5
    print('allocated %d buffers' % serve(seconds), flush=True)


if __name__ == '__main__':
    main()
