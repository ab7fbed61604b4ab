"""Open heapprof databases from Python: the readers' side of schema/hp_schema.c.

Installed as ``heapprof._db``. Tools and the Reader open recordings through
:func:`open_db`, which refuses anything that is not a heapprof database of a version this
package understands, with a one-line :class:`DatabaseError` for users, and opens read-only
(``file:...?mode=ro``) so a reader can never modify a recording, even while heapprofd is
still writing it (WAL mode: readers and the writer do not block each other).

The application id and schema version are read from the ``schema.sql`` installed beside
this module (the same file heapprofd embeds), so they are spelled in one place only. The
public views are documented in schema/README.md.
"""

import os
import re
import sqlite3
import urllib.parse

__all__ = ["DatabaseError", "open_db", "create_db", "schema_sql", "APPLICATION_ID",
           "SCHEMA_VERSION", "OLDEST_VERSION"]

_SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema.sql")
# The first 16 bytes of every SQLite 3 database file.
_SQLITE_MAGIC = b"SQLite format 3\x00"
# Primary result codes (sqlite3.h) that mean the file's content is not a database.
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
# How long a statement waits for the writer's lock before failing with "database is locked".
_BUSY_TIMEOUT_S = 5.0


class DatabaseError(Exception):
    """A database cannot be used; str() is one line for users naming the file and why."""


def schema_sql():
    """The text of schema.sql installed with this package."""
    try:
        with open(_SCHEMA_PATH, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise DatabaseError(f"{_SCHEMA_PATH}: cannot read the heapprof schema: "
                            f"{e.strerror}") from None


def _pragma_constant(text, name):
    m = re.search(r"^\s*PRAGMA\s+%s\s*=\s*(\d+)\s*;" % name, text, re.MULTILINE | re.IGNORECASE)
    if m is None:
        raise DatabaseError(f"{_SCHEMA_PATH}: no 'PRAGMA {name} = N;' line in the schema")
    return int(m.group(1))


_SCHEMA_TEXT = schema_sql()
APPLICATION_ID = _pragma_constant(_SCHEMA_TEXT, "application_id")
SCHEMA_VERSION = _pragma_constant(_SCHEMA_TEXT, "user_version")
# The oldest schema version readers accept as it is (HP_SCHEMA_OLDEST_VERSION in
# schema/hp_schema.h; heapprofd migrates such a database when it records into it). A
# version 1 database has no threads or markers views: check for a view before using it
# (schema/README.md, "Versions").
OLDEST_VERSION = 1


def _uri(path, mode):
    # Percent-encode so that '?', '#' and '%' in file names stay part of the name.
    return "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=" + mode


def _check_file(path):
    """Existence, type and SQLite header, checked without SQLite so messages are exact."""
    try:
        with open(path, "rb") as f:
            head = f.read(100)
    except FileNotFoundError:
        raise DatabaseError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DatabaseError(f"{path}: is a directory, not a database file") from None
    except OSError as e:
        raise DatabaseError(f"{path}: cannot read: {e.strerror}") from None
    # A 0-byte file is an empty SQLite database, not a heapprof one; so is a short one.
    if len(head) < 100 or not head.startswith(_SQLITE_MAGIC):
        raise DatabaseError(f"{path}: not a heapprof database (not an SQLite file)")


def _verify(conn, path):
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as e:
        # Only "not a database" and "malformed" say something about the file's content;
        # anything else (locked, no access to the -shm file) is a problem reading it.
        code = getattr(e, "sqlite_errorcode", 0) & 0xff
        if code in (_SQLITE_NOTADB, _SQLITE_CORRUPT):
            raise DatabaseError(f"{path}: not a heapprof database (not a valid SQLite file: "
                                f"{e})") from None
        raise DatabaseError(f"{path}: cannot read: {e}") from None
    if app_id != APPLICATION_ID:
        raise DatabaseError(f"{path}: not a heapprof database (application_id "
                            f"0x{app_id & 0xffffffff:08x}, expected 0x{APPLICATION_ID:08x})")
    if version > SCHEMA_VERSION:
        raise DatabaseError(f"{path}: written by a newer heapprof (schema version {version}, "
                            f"this heapprof reads up to {SCHEMA_VERSION}); upgrade heapprof")
    if version < OLDEST_VERSION:
        raise DatabaseError(f"{path}: heapprof database of unsupported schema version "
                            f"{version} (expected {OLDEST_VERSION} to {SCHEMA_VERSION})")


def open_db(path, readonly=True):
    """Opens an existing heapprof database and returns an sqlite3.Connection.

    readonly=True (the default) opens with ``?mode=ro``: the connection can never write
    to the file. readonly=False opens it read-write (never creating it). Raises
    DatabaseError for a missing file, a file that is not SQLite, another application's
    database, or a heapprof database of a schema version outside OLDEST_VERSION ..
    SCHEMA_VERSION (an older one is opened as it is, not migrated).
    """
    path = os.fspath(path)
    _check_file(path)
    try:
        conn = sqlite3.connect(_uri(path, "ro" if readonly else "rw"), uri=True,
                               timeout=_BUSY_TIMEOUT_S)
    except sqlite3.Error as e:
        raise DatabaseError(f"{path}: cannot open: {e}") from None
    try:
        _verify(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def create_db(path):
    """Creates a new heapprof database at path from schema.sql and returns a read-write
    connection (autocommit mode, WAL). Refuses to overwrite an existing non-empty file."""
    path = os.fspath(path)
    try:
        if os.path.getsize(path) > 0:
            raise DatabaseError(f"{path}: already exists; refusing to overwrite it")
    except FileNotFoundError:
        pass
    except OSError as e:
        raise DatabaseError(f"{path}: cannot create: {e.strerror}") from None
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise DatabaseError(f"{path}: cannot create the database: directory {parent} "
                            f"does not exist")
    try:
        conn = sqlite3.connect(_uri(path, "rwc"), uri=True, timeout=_BUSY_TIMEOUT_S,
                               isolation_level=None)
    except sqlite3.Error as e:
        raise DatabaseError(f"{path}: cannot create: {e}") from None
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        # One transaction: a failure leaves an empty file, never half a schema.
        conn.executescript("BEGIN IMMEDIATE;\n" + _SCHEMA_TEXT + "\nCOMMIT;")
    except sqlite3.Error as e:
        conn.close()
        raise DatabaseError(f"{path}: cannot create the schema: {e}") from None
    return conn
