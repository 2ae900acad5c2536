"""What the console and the opener agree on: the largest request on the opener's socket, its
refusal, the case number and reason required before any holder detail is opened, and a case's id
and hours."""
from __future__ import annotations

import re

from scanner.base.errors import CheckpointError

MAX_REQUEST_BYTES = 16 * 1024 * 1024
MAX_CASE_HOURS = 24  # a case's holder details stay open at most this long after its approval
_CASE_ID = re.compile(r"[0-9a-f]{32}", re.ASCII)


class OpenerError(CheckpointError):
    """A refused request; ``code`` goes back to the client."""

    code = "opener"


def check_case(case_number: object, reason: object) -> tuple[str, str]:
    """A case number (2 to 64 characters, one line) and a reason (10 to 500 characters, one line,
    said in words): both are required before any holder detail is opened."""
    if not isinstance(case_number, str) or not 2 <= len(case_number.strip()) <= 64 \
            or any(ord(c) < 32 or ord(c) == 127 for c in case_number):
        raise OpenerError("a case number (2 to 64 characters, one line) is required", code="case_required")
    if not isinstance(reason, str) or not 10 <= len(reason.strip()) <= 500 \
            or any(ord(c) < 32 or ord(c) == 127 for c in reason):
        raise OpenerError("a reason (10 to 500 characters, one line) is required", code="reason_required")
    return case_number.strip(), reason.strip()


def check_case_id(case_id: object) -> str:
    """A case's id as the console makes it (32 lowercase hex digits)."""
    if not isinstance(case_id, str) or not _CASE_ID.fullmatch(case_id):
        raise OpenerError("a case id (32 hex digits) is required", code="case_id_required")
    return case_id


def check_hours(hours: object) -> int:
    if not isinstance(hours, int) or isinstance(hours, bool) or not 1 <= hours <= MAX_CASE_HOURS:
        raise OpenerError(f"hours must be 1 to {MAX_CASE_HOURS}", code="bad_request")
    return hours
