"""A small agent written in Python for the sampling-change tests: it speaks heapprof's
wire protocol (proto/PROTOCOL.md) to a real heapprofd over its Unix socket.

The frames are built here from the specification, with a minimal msgpack encoder
(the Python side uses the standard library only), so the daemon decodes exactly what an
agent would send: HELLO, FRAME_DEF, STACK_DEF, EVENTS, COUNTERS, GOODBYE (protocol
version 2)."""
import os
import socket
import struct

MAGIC = "heapprof"
PROTO_VERSION = 2
HELLO, FRAME_DEF, STACK_DEF, EVENTS, COUNTERS, GOODBYE, THREAD_DEF, MARKER = range(1, 9)


def pack(value):
    """msgpack encoding of ints, str, bool, float and lists/tuples (smallest forms)."""
    if value is True:
        return b"\xc3"
    if value is False:
        return b"\xc2"
    if isinstance(value, int):
        if 0 <= value < 0x80:
            return bytes([value])
        if 0 <= value <= 0xff:
            return b"\xcc" + struct.pack(">B", value)
        if 0 <= value <= 0xffff:
            return b"\xcd" + struct.pack(">H", value)
        if 0 <= value <= 0xffffffff:
            return b"\xce" + struct.pack(">I", value)
        if 0 <= value < 1 << 64:
            return b"\xcf" + struct.pack(">Q", value)
        if -32 <= value < 0:
            return struct.pack(">b", value)
        return b"\xd3" + struct.pack(">q", value)
    if isinstance(value, float):
        return b"\xcb" + struct.pack(">d", value)
    if isinstance(value, str):
        raw = value.encode()
        if len(raw) < 32:
            return bytes([0xa0 | len(raw)]) + raw
        if len(raw) <= 0xff:
            return b"\xd9" + struct.pack(">B", len(raw)) + raw
        return b"\xda" + struct.pack(">H", len(raw)) + raw
    if isinstance(value, (list, tuple)):
        head = bytes([0x90 | len(value)]) if len(value) < 16 else \
            b"\xdc" + struct.pack(">H", len(value))
        return head + b"".join(pack(v) for v in value)
    raise TypeError("cannot pack %r" % (value,))


def frame(*fields):
    payload = pack(list(fields))
    return struct.pack(">I", len(payload)) + payload


class Agent:
    """One connection to heapprofd, one session. Times are CLOCK_MONOTONIC-like ns that
    start at mono0; heapprofd turns them into wall time with HELLO's start_wall."""

    def __init__(self, sock_path, tag, interval, buckets=(), start_wall=None,
                 mono0=10_000_000_000):
        self.start_wall = start_wall if start_wall is not None else \
            1_700_000_000 * 1_000_000_000
        self.mono0 = mono0
        self.interval = interval
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(sock_path)
        self.send(HELLO, MAGIC, PROTO_VERSION, os.getpid(), os.getppid(),
                  ["adapt-agent", tag], "/usr/bin/python3", "3.11.2", self.start_wall,
                  self.mono0, interval, 64, [list(b) for b in buckets])

    def send(self, *fields):
        self.sock.sendall(frame(*fields))

    def mono(self, ms):
        return self.mono0 + ms * 1_000_000

    def wall(self, ms):
        """Wall-clock ns heapprofd stores for agent time mono(ms)."""
        return self.start_wall + ms * 1_000_000

    def define_stack(self, stack_id=1):
        self.send(FRAME_DEF, 1, "work", "app.py", 12)
        self.send(FRAME_DEF, 2, "<module>", "app.py", 30)
        self.send(STACK_DEF, stack_id, False, [1, 2])

    def allocs(self, ms, sizes, est=None, stack_id=1, first_address=0x10000):
        """EVENTS: one allocation per size, all at mono(ms), each standing for est bytes
        (None: its size, as when every allocation is recorded)."""
        evs = [[0, 0, 7, 2, first_address + 64 * i, size, size if est is None else est,
                stack_id]
               for i, size in enumerate(sizes)]
        self.send(EVENTS, self.mono(ms), evs)

    def counters(self, ms, interval, dropped=0, sent=0):
        self.send(COUNTERS, self.mono(ms), dropped, interval, sent)

    def goodbye(self, ms, dropped=0, end_reason=0):
        self.send(GOODBYE, self.mono(ms), dropped, end_reason)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
