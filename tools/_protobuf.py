"""heapprof._protobuf — the few pieces of the protobuf wire format that heapprof writes.

Encoding only, standard library only: varints, field keys, length-delimited fields (bytes,
strings, sub-messages) and packed repeated varints, as the protobuf encoding guide
describes them (https://protobuf.dev/programming-guides/encoding/). heapprof.pprof builds
profile.proto messages with it; nothing here knows about profiles.

A message is built inside out: fill a Writer for the sub-message, then add it to its parent
with message(). Fields are written in the order of the calls, which decoders accept.
"""

_VARINT = 0
_LEN = 2
_U64 = 1 << 64


def varint(n):
    """The varint encoding of an int64 or uint64 (a negative int64 takes ten bytes, as
    proto's int64 fields require)."""
    if n < 0:
        if n < -(1 << 63):
            raise ValueError('%d does not fit in an int64' % n)
        n += _U64
    elif n >= _U64:
        raise ValueError('%d does not fit in a uint64' % n)
    out = bytearray()
    while n > 0x7f:
        out.append((n & 0x7f) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class Writer:
    """The bytes of one message, appended field by field."""

    __slots__ = ('_buf',)

    def __init__(self):
        self._buf = bytearray()

    def int(self, field, value):
        """An int64/uint64/bool field. Zero is left out, as proto3 does for scalars."""
        if value:
            self._buf += varint(field << 3 | _VARINT)
            self._buf += varint(value)

    def bytes(self, field, data):
        """A length-delimited field, always written (an element of a repeated string or
        bytes field counts even when empty)."""
        self._buf += varint(field << 3 | _LEN)
        self._buf += varint(len(data))
        self._buf += data

    def string(self, field, text):
        # proto3 strings are UTF-8; a lone surrogate (an undecodable file name) becomes '?'.
        self.bytes(field, text.encode('utf-8', 'replace'))

    def message(self, field, sub):
        """A sub-message field (sub is a Writer), always written, even when empty."""
        self.bytes(field, sub._buf)

    def packed(self, field, values):
        """A repeated int64/uint64 field in packed form (proto3's default); nothing when
        values is empty."""
        if values:
            self.bytes(field, b''.join(varint(v) for v in values))

    def getvalue(self):
        return bytes(self._buf)
