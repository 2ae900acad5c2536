"""Typed errors and the stable reason codes shared by the CLI, the log and the screen.

Reason codes are part of the external contract (docs/card-format.md#reason-codes): never rename one.
"""
from __future__ import annotations

import errno
import os
from enum import StrEnum

from scanner.base.i18n import Text, known, t, text
from scanner.base.safetext import escape


class Reason(StrEnum):
    """Why a card was accepted or rejected (stable strings)."""

    OK = "ok"
    UNSUPPORTED_FORMAT = "unsupported_format"
    MALFORMED = "malformed"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    REVOKED = "revoked"
    # decided by the entry log, not the stateless verifier (the card itself is genuine)
    DUPLICATE = "duplicate"
    # decided by the appliance's degraded-mode policy when set to fail closed (docs/configuration.md#degraded-mode)
    TRUST_EXPIRED = "trust_expired"
    CLOCK_UNCONFIRMED = "clock_unconfirmed"
    # decided by the entry log on the site's shared view across gates (docs/site.md#admission)
    ALREADY_INSIDE = "already_inside"
    SITE_ISOLATED = "site_isolated"
    SITE_FULL = "site_full"
    # decided by the entry log: its commit failed, so the person was refused ("do not admit") and the
    # entry, kept for retry, records that refusal when it is committed later (docs/entry-log.md)
    DISK_FULL = "disk_full"
    IO_ERROR = "io_error"
    DB_BUSY = "db_busy"
    WRITE_FAILED = "write_failed"


class CheckpointError(Exception):
    """Base of every error the appliance raises on purpose; ``code`` is stable, ``str()`` is English
    (for logs), ``text`` what a person reads (the catalogue's words) when the error has them."""

    code = "error"
    text: Text | None = None

    def __init__(self, message: str, *, code: str | None = None, text: Text | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if text is not None:
            self.text = text


# an OSError's errno as a stable code; its words are the catalogue's [os_error]
OS_ERRORS = {
    errno.ENOENT: "no_such_file", errno.EACCES: "permission_denied", errno.EPERM: "permission_denied",
    errno.ENOSPC: "disk_full", errno.EDQUOT: "disk_full", errno.EROFS: "read_only",
    errno.EISDIR: "is_a_directory", errno.ENOTDIR: "not_a_directory", errno.EEXIST: "exists",
    errno.ENOTEMPTY: "not_empty", errno.ELOOP: "symlink", errno.ENAMETOOLONG: "name_too_long",
    errno.EIO: "io_error", errno.EBUSY: "busy", errno.ENODEV: "no_device", errno.ENXIO: "no_device",
    errno.ECONNREFUSED: "connection_refused", errno.ETIMEDOUT: "timed_out", errno.EADDRINUSE: "address_in_use",
    errno.EADDRNOTAVAIL: "address_not_available", errno.EMFILE: "too_many_files", errno.ENFILE: "too_many_files",
}


def os_error_code(exc: OSError) -> str:
    """The stable code of an OSError (its errno's), "os_error" for one without a known errno."""
    return OS_ERRORS.get(exc.errno or 0, "os_error")


def os_error_words(exc: OSError, path: object = None) -> Text:
    """An OSError in the catalogue's words, after the path it names (``path``, else its own)."""
    words = text("os_error." + os_error_code(exc))
    where = path if path is not None else exc.filename
    if where is None or where == "":
        return words
    return text("os_error.at", path=escape(os.fsdecode(where) if isinstance(where, str | bytes) else str(where)),
                what=words)


# SQLite's result codes (sqlite3.Error.sqlite_errorname) as the catalogue's [db_error]
_SQLITE = (("SQLITE_NOTADB", "not_a_database"), ("SQLITE_CORRUPT", "corrupt"), ("SQLITE_CANTOPEN", "cannot_open"),
           ("SQLITE_READONLY", "read_only"), ("SQLITE_FULL", "disk_full"), ("SQLITE_IOERR", "io_error"),
           ("SQLITE_BUSY", "busy"), ("SQLITE_LOCKED", "busy"), ("SQLITE_PERM", "permission_denied"),
           ("SQLITE_AUTH", "permission_denied"))


def sqlite_words(exc: Exception, path: object) -> Text:
    """A database that cannot be used, in the catalogue's words by SQLite's result code, after its path."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    key = next((k for prefix, k in _SQLITE if name.startswith(prefix)), "unusable")
    return text("os_error.at", path=escape(str(path)), what=text("db_error." + key))


def code_words(code: str | None) -> Text | None:
    """What a stable error code means, in the catalogue's [error] words, else a sync error's
    ([sync_error]: the protocol's codes); None: it has none. The screens that know only an error's
    code (sync status, the status page) say it with these."""
    key = next((f"{section}.{code}" for section in ("error", "sync_error") if code and known(f"{section}.{code}")),
               None)
    return text(key) if key else None


def words(exc: BaseException) -> Text | None:
    """A CheckpointError's words for people: its own text, else its code's (None: neither)."""
    if not isinstance(exc, CheckpointError):
        return None
    return exc.text if exc.text is not None else code_words(exc.code)


def words_at(exc: BaseException, path: object) -> Text | None:
    """An error's words after the path it concerns (None: it has no words)."""
    said = words(exc)
    return None if said is None else text("os_error.at", path=escape(str(path)), what=said)


def error_text(exc: BaseException, lang: str | None = None) -> str:
    """An error as a person reads it, with its stable code beside the words: a CheckpointError's
    catalogue words (its own, else its code's; else its English message), an OSError by its errno
    with the path(s) it names kept."""
    if isinstance(exc, CheckpointError):
        said = words(exc)
        return f"{said(lang)} ({exc.code})" if said is not None else str(exc)
    if isinstance(exc, OSError):
        code = os_error_code(exc)
        said_os = f"{t('os_error.' + code, lang)} ({code})"
        paths = " → ".join(os.fsdecode(p) if isinstance(p, str | bytes) else str(p)
                           for p in (exc.filename, exc.filename2) if p not in (None, ""))
        return f"{escape(paths)}: {said_os}" if paths else said_os
    return str(exc)


class UsageError(CheckpointError):
    """Bad command-line use or an unreadable input file (CLI exit status 2)."""

    code = "usage"


class KeyFileError(CheckpointError):
    """A key or certificate file that cannot be read or is of an unsupported kind."""

    code = "key_unreadable"


class TrustError(CheckpointError):
    """A trust bundle refused as a whole (bad signature, wrong root, rollback, malformed)."""

    code = "bundle_invalid"


class CardRejected(CheckpointError):
    """Raised inside a card format to reject a card; turned into a Verdict, never escapes verify()."""

    def __init__(self, reason: Reason, detail: str, kid: bytes | None = None) -> None:
        super().__init__(detail, code=str(reason))
        self.reason = reason
        self.detail = detail
        self.kid = kid
