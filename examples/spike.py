"""A memory spike at a known function.

make_spike() allocates about 20 MiB (argv[1] MiB) in 64 KiB blocks, holds them for half a
second and drops them, between two phases of small steady churn. It prints the wall-clock
times (ns since the epoch) around the spike so tests can check where heapprof puts the peak:
    spike_ns <before allocating> <before releasing>

    HEAPPROF_SOCKET=/tmp/heapprofd.sock python examples/spike.py
    heapprof top --at peak      # make_spike's line holds the memory
"""
import sys
import time


def churn(rounds):
    """Short-lived small objects: a steady background level."""
    for _ in range(rounds):
        junk = [bytes(256) for _ in range(200)]
        del junk
        time.sleep(0.01)


def make_spike(mib):
    return [bytearray(64 * 1024) for _ in range(mib * 16)]  # SPIKE_LINE


def main():
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    churn(30)
    start = time.time_ns()
    block = make_spike(mib)
    time.sleep(0.5)
    release = time.time_ns()
    del block
    print('spike_ns %d %d' % (start, release), flush=True)
    churn(30)


if __name__ == '__main__':
    main()
