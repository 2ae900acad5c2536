"""Log lines for journald and terminals: one line per record, control characters escaped.

``<level>logger: message`` with the sd-daemon level prefix (journald turns it into the entry's
priority) when running under systemd (JOURNAL_STREAM is set), ``LEVEL logger: message`` otherwise.
Messages are already free of personal data by the code that logs them (card ids, entry ids and
codes only); escaping here makes sure that no text, trusted or not, can forge a second line. The
daemon's verdict lines are key=value pairs (``verdict source=camera:cam0 decision=accept ...``).
"""
from __future__ import annotations

import collections
import logging
import os
import sys
import time

from scanner.base.safetext import escape

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class LineFormatter(logging.Formatter):
    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text += " | " + self.formatException(record.exc_info)
        name = record.name.removeprefix("scanner.").removeprefix("hardware.")
        line = escape(f"{name}: {text}")
        if self.journal:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{line}"
        return f"{record.levelname} {line}"


class RecentErrors(logging.Handler):
    """The last warnings and errors (escaped, one line each) for the status page."""

    def __init__(self, size: int = 20) -> None:
        super().__init__(logging.WARNING)
        self.records: collections.deque = collections.deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records.append({"at": round(time.time(), 3), "level": record.levelname.lower(),
                                 "logger": record.name, "message": escape(record.getMessage())[:500]})
        except Exception:  # noqa: BLE001 - logging must never raise into the code that logs
            self.handleError(record)

    def list(self) -> list[dict]:
        return list(self.records)


def setup(level: int = logging.INFO, stream=None) -> RecentErrors:
    """Configure the root logger for the daemon; returns the recent-errors handler."""
    journal = bool(os.environ.get("JOURNAL_STREAM"))
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(LineFormatter(journal))
    recent = RecentErrors()
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.addHandler(recent)
    root.setLevel(level)
    for noisy in ("uvicorn", "uvicorn.error", "uvicorn.access", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return recent


def detach(stream) -> None:
    """Stop logging to ``stream`` (a file about to be closed)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logging.StreamHandler) and h.stream is stream:
            root.removeHandler(h)
