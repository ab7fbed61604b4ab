/* hp_utf8.h — text from agents made valid UTF-8 before heapprofd stores it.
 *
 * The protocol carries strings as bytes (PROTOCOL.md: "UTF-8 is expected but not
 * checked"), but SQLite TEXT that is not UTF-8 makes every reader that decodes it fail
 * (Python's sqlite3: "Could not decode to UTF-8 column"). So the store repairs argv,
 * executable, python_version, frame names, thread names and marker labels on their way
 * in. Pure functions; any thread. */
#ifndef HP_UTF8_H
#define HP_UTF8_H

#include <stddef.h>

/* Output bytes per input byte at most: an invalid byte becomes U+FFFD (3 bytes). */
#define HP_UTF8_MAX_GROWTH 3u

/* Copies the len bytes at src to dst (room for HP_UTF8_MAX_GROWTH * len bytes), each byte
 * that does not begin a well-formed sequence (RFC 3629: no overlong forms, no
 * surrogates, nothing past U+10FFFF), and each NUL, replaced by U+FFFD. Well-formed text
 * comes out byte for byte, so text is valid exactly when repairing it changes nothing.
 * Returns the bytes written; dst is not NUL-terminated. */
size_t hp_utf8_repair(char *dst, const char *src, size_t len);

#endif /* HP_UTF8_H */
