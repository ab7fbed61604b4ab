/* hp_pystr.h — a Python str's code points as UTF-8 for the wire, inside an allocator hook.
 *
 * Frame names (qualname, filename) and argv are sent as msgpack str and stored as SQLite
 * TEXT, so they must be valid UTF-8; a Python str need not be: a filename from a path that
 * is not valid UTF-8 holds lone surrogates U+DC80..U+DCFF (the surrogateescape error
 * handler), and code can hold any lone surrogate. The rule, Python's own spelling of it:
 *
 *     s.encode('utf-8', 'surrogateescape').decode('utf-8', 'replace')
 *
 * i.e. escaped bytes turn back into the bytes they stand for, and every maximal subpart of
 * an invalid sequence becomes U+FFFD; surrogates that escape no byte become U+FFFD too.
 *
 * Pure C on the str's code points (PyUnicode_KIND/DATA/GET_LENGTH): no allocation, no
 * Python call, no failure, so the hooks may call it under the GIL. */
#ifndef HP_PYSTR_H
#define HP_PYSTR_H

#include <stddef.h>

/* Encodes n code points of `kind` bytes each (1, 2 or 4: PyUnicode_KIND) into out by the
 * rule above, stopping before a character that would not fit whole into cap bytes, so the
 * result is always valid UTF-8. Returns the bytes written; 0 for any other kind. */
size_t hp_pystr_encode(const void *data, unsigned kind, size_t n, char *out, size_t cap);

#endif /* HP_PYSTR_H */
