"""What the console and the opener agree on: the largest request on the opener's socket, its
refusal, and the case number and reason required before any holder detail is opened."""
from __future__ import annotations

from scanner.base.errors import CheckpointError

MAX_REQUEST_BYTES = 16 * 1024 * 1024


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
