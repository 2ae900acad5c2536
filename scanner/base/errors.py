"""Typed errors and the stable reason codes shared by the CLI, the log and the screen.

Reason codes are part of the external contract (docs/card-format.md#reason-codes): never rename one.
"""
from __future__ import annotations

from enum import StrEnum


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
    """Base of every error the appliance raises on purpose; ``code`` is stable, ``str()`` is English."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


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
