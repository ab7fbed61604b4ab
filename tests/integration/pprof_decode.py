"""A test-side decoder of gzipped profile.proto files, written from the protobuf encoding
spec and profile.proto, independently of heapprof's encoder (heapprof._protobuf and
heapprof.pprof), so that the tests check the bytes rather than the encoder against itself.

decode(data) -> Profile with the fields heapprof writes, strings resolved.
"""
import collections
import gzip

Sample = collections.namedtuple('Sample', ['location_ids', 'values', 'labels'])
Location = collections.namedtuple('Location', ['id', 'mapping_id', 'lines'])   # [(fn id, line)]
Function = collections.namedtuple('Function', ['id', 'name', 'system_name', 'filename'])


class Profile:
    def __init__(self):
        self.sample_types = []      # [(type, unit)]
        self.samples = []
        self.mappings = []          # [dict]
        self.locations = {}         # id -> Location
        self.functions = {}         # id -> Function
        self.strings = []
        self.time_nanos = self.duration_nanos = self.period = 0
        self.period_type = None
        self.comments = []
        self.default_sample_type = None
        self.raw_location_count = self.raw_function_count = 0

    def column(self, name):
        """The index of a sample type by name."""
        return [t for t, _ in self.sample_types].index(name)

    def total(self, name):
        i = self.column(name)
        return sum(s.values[i] for s in self.samples)

    def frames(self, sample):
        """[(function, filename, line)] of a sample, leaf first."""
        out = []
        for lid in sample.location_ids:
            for fid, line in self.locations[lid].lines:
                f = self.functions[fid]
                out.append((f.name, f.filename, line))
        return out


def _varint(buf, i):
    shift = n = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7f) << shift
        if b < 0x80:
            return n, i
        shift += 7


def _int64(n):
    return n - (1 << 64) if n >= 1 << 63 else n


def _fields(buf):
    """(field number, wire type, value) of a message: an int for varints, bytes for
    length-delimited fields."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            v, i = bytes(buf[i:i + n]), i + n
        elif wire == 1:
            v, i = int.from_bytes(buf[i:i + 8], 'little'), i + 8
        elif wire == 5:
            v, i = int.from_bytes(buf[i:i + 4], 'little'), i + 4
        else:
            raise ValueError('wire type %d at byte %d' % (wire, i))
        yield field, wire, v


def _repeated_ints(wire, v):
    """A repeated varint field, packed (one length-delimited run) or not."""
    if wire == 0:
        return [v]
    out, i = [], 0
    while i < len(v):
        n, i = _varint(v, i)
        out.append(n)
    return out


def decode(data):
    raw = gzip.decompress(data)
    p = Profile()
    strings_at = []     # (setter) applied once the string table is complete
    s_types, samples, locations, functions, mappings = [], [], [], [], []
    for field, wire, v in _fields(raw):
        if field == 1:
            s_types.append(dict((f, x) for f, _, x in _fields(v)))
        elif field == 2:
            samples.append(v)
        elif field == 3:
            mappings.append(dict((f, x) for f, _, x in _fields(v)))
        elif field == 4:
            locations.append(v)
        elif field == 5:
            functions.append(dict((f, x) for f, _, x in _fields(v)))
        elif field == 6:
            p.strings.append(v.decode('utf-8'))
        elif field == 9:
            p.time_nanos = _int64(v)
        elif field == 10:
            p.duration_nanos = _int64(v)
        elif field == 11:
            p.period_type = dict((f, x) for f, _, x in _fields(v))
        elif field == 12:
            p.period = _int64(v)
        elif field == 13:
            strings_at.extend(_repeated_ints(wire, v))
        elif field == 14:
            p.default_sample_type = v
        else:
            raise ValueError('unexpected Profile field %d' % field)
    s = p.strings
    p.sample_types = [(s[t.get(1, 0)], s[t.get(2, 0)]) for t in s_types]
    p.comments = [s[i] for i in strings_at]
    p.default_sample_type = s[p.default_sample_type or 0]
    if p.period_type is not None:
        p.period_type = (s[p.period_type.get(1, 0)], s[p.period_type.get(2, 0)])
    p.mappings = [{'id': m.get(1, 0), 'filename': s[m.get(5, 0)],
                   'has_functions': bool(m.get(7)), 'has_filenames': bool(m.get(8)),
                   'has_line_numbers': bool(m.get(9))} for m in mappings]
    p.raw_function_count = len(functions)
    for f in functions:
        fn = Function(f.get(1, 0), s[f.get(2, 0)], s[f.get(3, 0)], s[f.get(4, 0)])
        p.functions[fn.id] = fn
    p.raw_location_count = len(locations)
    for v in locations:
        lid = mid = 0
        lines = []
        for field, wire, x in _fields(v):
            if field == 1:
                lid = x
            elif field == 2:
                mid = x
            elif field == 4:
                ln = dict((f, y) for f, _, y in _fields(x))
                lines.append((ln.get(1, 0), _int64(ln.get(2, 0))))
        p.locations[lid] = Location(lid, mid, lines)
    for v in samples:
        locs, values, labels = [], [], []
        for field, wire, x in _fields(v):
            if field == 1:
                locs.extend(_repeated_ints(wire, x))
            elif field == 2:
                values.extend(_int64(n) for n in _repeated_ints(wire, x))
            elif field == 3:
                lab = dict((f, y) for f, _, y in _fields(x))
                value = s[lab[2]] if 2 in lab else _int64(lab.get(3, 0))
                labels.append((s[lab.get(1, 0)], value))
        p.samples.append(Sample(locs, values, labels))
    return p
