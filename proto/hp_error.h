/* hp_error.h — the one error list of heapprof, shared by agent, daemon and codec.
 *
 * Functions return 0 (or a count) on success and a negative -HP_E* code on failure.
 * System errors are converted to -errno right at the system call and pass through
 * unchanged; hp_strerror() names both kinds. Modelled on libuv's UV_ERRNO_MAP. */
#ifndef HP_ERROR_H
#define HP_ERROR_H

/* Codes start at 1000 so that they never collide with -errno values. */
#define HP_ERRNO_MAP(X) \
  X(ENOMEM, 1000, "out of memory") \
  X(ETRUNC, 1001, "message is truncated") \
  X(ETOOBIG, 1002, "frame exceeds the maximum frame size") \
  X(ETYPE, 1003, "field has the wrong type") \
  X(ERANGE, 1004, "field value is out of range") \
  X(ELEN, 1005, "field is longer than its limit") \
  X(EMSGTYPE, 1006, "unknown message type") \
  X(EVERSION, 1007, "unsupported protocol version") \
  X(EMAGIC, 1008, "not a heapprof stream (bad magic)") \
  X(ETRAILING, 1009, "bytes left over after the message") \
  X(EPARSE, 1010, "malformed msgpack") \
  X(EFULL, 1011, "buffer is full") \
  X(EORDER, 1012, "message out of order") \
  X(EUNDEF, 1013, "reference to an undefined id") \
  X(EDUP, 1014, "id defined twice") \
  X(ESCHEMA, 1015, "database is not a heapprof database") \
  X(ENEWER, 1016, "database was written by a newer heapprof") \
  X(ESQLITE, 1017, "SQLite error") \
  X(EINVAL, 1018, "invalid argument") \
  X(ECLOSED, 1019, "connection closed")

typedef enum {
#define HP_ERROR_ENUM_(name, code, msg) HP_##name = (code),
  HP_ERRNO_MAP(HP_ERROR_ENUM_)
#undef HP_ERROR_ENUM_
} hp_errno;

/* Message for a negative code: heapprof's own, or strerror() for -errno.
 * The returned string is static (or thread-local for unknown codes). */
const char *hp_strerror(int err);

#endif /* HP_ERROR_H */
