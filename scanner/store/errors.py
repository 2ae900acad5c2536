"""The entry log's typed errors, and which failed SQLite writes count as the disk failing."""
from __future__ import annotations

import sqlite3

from scanner.base.errors import CheckpointError


class EntryLogError(CheckpointError):
    """The entry log refused an operation (unknown entry, sync conflict, unusable file...)."""

    code = "log_error"


class EntryLogWriteError(EntryLogError):
    """A commit failed (disk full, I/O error, lock timeout). ``queued``: the entry is kept in the
    retry queue and will be committed when the disk comes back; False only when the queue is full
    (then the entry was NOT recorded and the caller must not admit the person)."""

    code = "write_failed"

    def __init__(self, message: str, *, code: str, entry_id: str, queued: bool) -> None:
        super().__init__(message, code=code)
        self.entry_id = entry_id
        self.queued = queued


def write_error_code(exc: sqlite3.Error) -> str | None:
    """The health/problem code of a failed write, or None if it is not a storage failure."""
    if isinstance(exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError,
                        sqlite3.NotSupportedError, sqlite3.DataError)):
        return None
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith("SQLITE_FULL"):
        return "disk_full"
    if name.startswith("SQLITE_IOERR"):
        return "io_error"
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return "db_busy"
    return "write_failed"
