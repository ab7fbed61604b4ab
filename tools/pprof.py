"""heapprof.pprof — heap profiles in pprof's format, for go tool pprof and continuous profilers.

The format is profile.proto (https://github.com/google/pprof/blob/main/proto/profile.proto),
gzipped. A heapprof profile has the four sample types of Go's heap profiles, in Go's order:
alloc_objects/count, alloc_space/bytes (allocations made in the profile's time range),
inuse_objects/count, inuse_space/bytes (live at its end); inuse_space is the default. Each
sample is one stack (per label set, with --label), each location one Python line (function,
file, line number), the sampling interval is the period (space/bytes). The values are
heapprof's estimates (sums of est_bytes, and of est_bytes / size for counts), not raw
sample counts: the profile's comments say so, and pprof must not scale them again.

Data comes through the Reader (Reader.stack_totals, frames_of_stacks); the bytes through
heapprof._protobuf.
"""
import gzip
import os

from heapprof import _protobuf
from heapprof import reader as _reader

SAMPLE_TYPES = (('alloc_objects', 'count'), ('alloc_space', 'bytes'),
                ('inuse_objects', 'count'), ('inuse_space', 'bytes'))
DEFAULT_SAMPLE_TYPE = 'inuse_space'
LABELS = ('thread', 'pid', 'domain')
ESTIMATE_COMMENT = ('values are unbiased estimates from sampled allocations (heapprof: each '
                    'sample counts for its est_bytes bytes and est_bytes/size allocations), '
                    'not raw sample counts; they need no further scaling')

# profile.proto field numbers (perftools.profiles, proto3).
_PROFILE_SAMPLE_TYPE, _PROFILE_SAMPLE, _PROFILE_MAPPING, _PROFILE_LOCATION = 1, 2, 3, 4
_PROFILE_FUNCTION, _PROFILE_STRING_TABLE = 5, 6
_PROFILE_TIME_NANOS, _PROFILE_DURATION_NANOS, _PROFILE_PERIOD_TYPE, _PROFILE_PERIOD = 9, 10, 11, 12
_PROFILE_COMMENT, _PROFILE_DEFAULT_SAMPLE_TYPE = 13, 14
_VALUE_TYPE_TYPE, _VALUE_TYPE_UNIT = 1, 2
_SAMPLE_LOCATION_ID, _SAMPLE_VALUE, _SAMPLE_LABEL = 1, 2, 3
_LABEL_KEY, _LABEL_STR, _LABEL_NUM = 1, 2, 3
_MAPPING_ID, _MAPPING_FILENAME = 1, 5
_MAPPING_HAS_FUNCTIONS, _MAPPING_HAS_FILENAMES, _MAPPING_HAS_LINE_NUMBERS = 7, 8, 9
_LOCATION_ID, _LOCATION_MAPPING_ID, _LOCATION_LINE = 1, 2, 4
_LINE_FUNCTION_ID, _LINE_LINE = 1, 2
_FUNCTION_ID, _FUNCTION_NAME, _FUNCTION_FILENAME = 1, 2, 4


class Builder:
    """One profile.proto Profile with heapprof's sample types, its string table, functions
    and locations de-duplicated as the format intends (ids are 1, 2, ... in order of first
    use; string 0 is "")."""

    def __init__(self):
        self._strings = {'': 0}
        self._functions = {}    # (name, filename) -> id
        self._locations = {}    # (function id, line) -> id
        self._w_functions = _protobuf.Writer()
        self._w_locations = _protobuf.Writer()
        self._w_samples = _protobuf.Writer()
        self.samples = 0

    def string(self, text):
        """The string table index of text, adding it when new."""
        i = self._strings.get(text)
        if i is None:
            i = self._strings[text] = len(self._strings)
        return i

    def location(self, function, filename, line):
        """The id of the location of one Python line (its function is added as needed)."""
        fkey = (function, filename)
        fid = self._functions.get(fkey)
        if fid is None:
            fid = self._functions[fkey] = len(self._functions) + 1
            f = _protobuf.Writer()
            f.int(_FUNCTION_ID, fid)
            # No system_name: pprof would demangle it into the name, and '<module>'
            # demangles to nothing.
            f.int(_FUNCTION_NAME, self.string(function))
            f.int(_FUNCTION_FILENAME, self.string(filename))
            self._w_functions.message(_PROFILE_FUNCTION, f)
        lkey = (fid, line)
        lid = self._locations.get(lkey)
        if lid is None:
            lid = self._locations[lkey] = len(self._locations) + 1
            loc = _protobuf.Writer()
            loc.int(_LOCATION_ID, lid)
            loc.int(_LOCATION_MAPPING_ID, 1)
            ln = _protobuf.Writer()
            ln.int(_LINE_FUNCTION_ID, fid)
            ln.int(_LINE_LINE, line)
            loc.message(_LOCATION_LINE, ln)
            self._w_locations.message(_PROFILE_LOCATION, loc)
        return lid

    def sample(self, location_ids, values, labels=()):
        """One sample: location ids leaf first, the four values in SAMPLE_TYPES order, and
        labels as (key, value) pairs (an int value is a numeric label, a str a string one)."""
        s = _protobuf.Writer()
        s.packed(_SAMPLE_LOCATION_ID, location_ids)
        s.packed(_SAMPLE_VALUE, values)
        for key, value in labels:
            lab = _protobuf.Writer()
            lab.int(_LABEL_KEY, self.string(key))
            if isinstance(value, str):
                lab.int(_LABEL_STR, self.string(value))
            else:
                lab.int(_LABEL_NUM, value)
            s.message(_SAMPLE_LABEL, lab)
        self._w_samples.message(_PROFILE_SAMPLE, s)
        self.samples += 1

    def encode(self, time_nanos, duration_nanos, period, comments, mapping_file):
        """The serialized Profile (not compressed). mapping_file names the one mapping
        every location belongs to (the interpreter): it says the profile is symbolized
        already (functions, file names, line numbers), so pprof looks up no binary."""
        p = _protobuf.Writer()
        for name, unit in SAMPLE_TYPES:
            vt = _protobuf.Writer()
            vt.int(_VALUE_TYPE_TYPE, self.string(name))
            vt.int(_VALUE_TYPE_UNIT, self.string(unit))
            p.message(_PROFILE_SAMPLE_TYPE, vt)
        body = self._w_samples.getvalue()
        m = _protobuf.Writer()
        m.int(_MAPPING_ID, 1)
        m.int(_MAPPING_FILENAME, self.string(mapping_file))
        m.int(_MAPPING_HAS_FUNCTIONS, 1)
        m.int(_MAPPING_HAS_FILENAMES, 1)
        m.int(_MAPPING_HAS_LINE_NUMBERS, 1)
        tail = _protobuf.Writer()
        tail.message(_PROFILE_MAPPING, m)
        tail_bytes = (tail.getvalue() + self._w_locations.getvalue() +
                      self._w_functions.getvalue())
        meta = _protobuf.Writer()
        meta.int(_PROFILE_TIME_NANOS, time_nanos)
        meta.int(_PROFILE_DURATION_NANOS, duration_nanos)
        pt = _protobuf.Writer()
        pt.int(_VALUE_TYPE_TYPE, self.string('space'))
        pt.int(_VALUE_TYPE_UNIT, self.string('bytes'))
        meta.message(_PROFILE_PERIOD_TYPE, pt)
        meta.int(_PROFILE_PERIOD, period)
        for c in comments:
            meta.int(_PROFILE_COMMENT, self.string(c))
        meta.int(_PROFILE_DEFAULT_SAMPLE_TYPE, self.string(DEFAULT_SAMPLE_TYPE))
        # Every string is interned by now; the table goes in index order.
        strings = _protobuf.Writer()
        for text in self._strings:      # dicts keep insertion order: index order
            strings.string(_PROFILE_STRING_TABLE, text)
        return p.getvalue() + body + tail_bytes + strings.getvalue() + meta.getvalue()


def _frame_location(b, fr):
    if fr is None:
        return b.location(_reader.NO_STACK_LABEL, '', 0)
    return b.location(fr.function, fr.filename, fr.lineno)


def describe_range(since, t):
    if since is None:
        return 'alloc_objects/alloc_space: allocations made from the start to %.3f s; ' \
               'inuse_objects/inuse_space: live at %.3f s' % (t, t)
    return 'alloc_objects/alloc_space: allocations made after %.3f s up to %.3f s; ' \
           'inuse_objects/inuse_space: live at %.3f s' % (since, t, t)


def profile(r, t, since=None, labels=()):
    """(gzipped profile.proto bytes, number of samples) for the Reader r's session: the
    allocations made in (since, t] (since None: from the start) and those live at t, times
    in seconds from the session's start. labels: any of LABELS, added to every sample."""
    bad = [x for x in labels if x not in LABELS]
    if bad:
        raise _reader.ReaderError('unknown label %r: choose from %s' % (bad[0], ', '.join(LABELS)))
    meta = r.metadata
    totals = r.stack_totals(t, since, by=[x for x in ('thread', 'domain') if x in labels])
    frames = r.frames_of_stacks({s.stack_id for s in totals})
    b = Builder()
    # Largest first, so that a reader of -raw sees what matters at the top; ties by stack.
    totals.sort(key=lambda s: (-s.inuse_bytes, -s.alloc_bytes, s.stack_id or 0,
                               s.thread_id or 0, s.domain or ''))
    for s in totals:
        locs = [_frame_location(b, fr) for fr in frames[s.stack_id]] or \
               [_frame_location(b, None)]
        lab = []
        if 'thread' in labels:
            lab.append(('thread', s.thread_id))
        if 'pid' in labels:
            lab.append(('pid', meta.pid))
        if 'domain' in labels:
            lab.append(('domain', s.domain or 'unknown'))
        b.sample(locs, [round(s.alloc_count), s.alloc_bytes, round(s.inuse_count),
                        s.inuse_bytes], lab)
    start_ns = meta.started_ns + (0 if since is None else int(round(since * _reader.NS)))
    end_ns = meta.started_ns + int(round(t * _reader.NS))
    interval = r.interval_at(t)
    comments = [
        'heapprof heap profile of session %d (pid %d: %s) in %s'
        % (meta.session_id, meta.pid, ' '.join(meta.argv), os.path.basename(r.path)),
        ESTIMATE_COMMENT,
        describe_range(since, t) + ' (seconds after the session started)',
        _sampling_comment(r, interval),
    ]
    if meta.events_dropped:
        comments.append('warning: %d events were dropped while recording: figures are '
                        'incomplete' % meta.events_dropped)
    raw = b.encode(start_ns, end_ns - start_ns, interval, comments,
                   meta.executable or 'python')
    return gzip.compress(raw, compresslevel=6, mtime=0), b.samples


def _sampling_comment(r, interval):
    meta = r.metadata
    if interval == 1:
        text = 'every allocation recorded (period 1)'
    elif interval == 0:
        text = ('size-bucket sampling %s (period 0: no single interval)'
                % (meta.sample_buckets,))
    else:
        text = 'Poisson sampling, one sample per %d bytes allocated on average (the period)' \
               % interval
    if meta.interval_changes:
        text += '; the interval changed %d time(s) during the session (on-full adapt), ' \
                'estimates stay unbiased' % len(meta.interval_changes)
    return text
