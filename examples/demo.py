"""A small program with a memory story, for heapprof's quick start.

It loads "records" into a cache that is never emptied (a slow leak), parses a big
batch that is thrown away again (a spike), and keeps a steady working set in between.
`./setup.sh demo` profiles it and prints where its memory went."""
import time

CACHE = {}


def load_records(n):
    """The leak: every record stays in CACHE for the life of the program."""
    for i in range(n):
        CACHE[i] = ("record-%d" % i) * 8


def parse_batch(n):
    """The spike: a large temporary list, dropped when the function returns."""
    rows = [bytearray(1024) for _ in range(n)]
    return sum(len(r) for r in rows)


def steady_work(rounds):
    """A working set that is allocated and freed again and again."""
    total = 0
    for _ in range(rounds):
        buf = [str(i) for i in range(2000)]
        total += len(buf)
    return total


def main():
    for step in range(5):
        load_records(20000)
        steady_work(20)
        time.sleep(0.05)
        if step == 2:
            parse_batch(60000)
    print("demo: cached %d records" % len(CACHE))


if __name__ == "__main__":
    main()
