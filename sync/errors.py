"""The base of the device's sync errors (a stable ``code``), apart from the HTTP client that raises
most of them, so the batch builder process can raise one without loading requests."""
from __future__ import annotations

from scanner.base.errors import CheckpointError


class SyncError(CheckpointError):
    """Base of the client's errors; ``code`` is stable."""

    code = "sync_error"
