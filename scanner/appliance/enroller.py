"""Zero-touch enrollment off the verdict lane: one enrollment at a time, on its own thread.

Enrolling talks to a server (up to its timeouts), so the lane only hands the code over and goes
on, and the watchdog, which watches the lane, never fires for a slow server. Cards read meanwhile
are held here (not in the lane) and handed back when the enrollment ends, to be checked as the
device then is, as if they had been read just after it. The kiosk shows "enrolling" and then the
result (scanner/appliance/web).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from scanner.base.errors import CheckpointError
from scanner.cards.scan import Scan
from sync.wire.enrollcode import EnrollCode

log = logging.getLogger(__name__)

Result = TypeVar("Result")

MAX_HELD = 64  # scans held while enrolling, at most (more are answered at once)


class Enroller(Generic[Result]):
    """Runs ``enroll(code)`` on a thread named "enroll", then, once it is free again, ``report(scan,
    result or error, the scans held meanwhile)``. A code handed over while one runs is refused
    (``submit`` is False)."""

    def __init__(self, enroll: Callable[[EnrollCode], Result],
                 report: Callable[[Scan, Result | CheckpointError, list[Scan]], None]) -> None:
        self._enroll = enroll
        self._report = report
        self._lock = threading.Lock()
        self._busy = False
        self._held: list[Scan] = []
        self._thread: threading.Thread | None = None

    def submit(self, code: EnrollCode, scan: Scan) -> bool:
        with self._lock:
            if self._busy:
                return False
            self._busy = True
            self._thread = threading.Thread(target=self._run, args=(code, scan), name="enroll", daemon=True)
        self._thread.start()
        return True

    def busy(self) -> bool:
        with self._lock:
            return self._busy

    def hold(self, scan: Scan) -> bool:
        """Keep a scan read while an enrollment runs, for its end; False when none runs (or too many wait)."""
        with self._lock:
            if not self._busy or len(self._held) >= MAX_HELD:
                return False
            self._held.append(scan)
            return True

    def join(self, timeout: float) -> bool:
        """Wait for an enrollment in progress; True when none is left running."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    def _run(self, code: EnrollCode, scan: Scan) -> None:
        outcome: Result | CheckpointError
        try:
            outcome = self._enroll(code)
        except CheckpointError as exc:
            outcome = exc
        except Exception:  # a bug: the device stays unprovisioned and says so
            log.exception("enrollment: internal error")
            outcome = CheckpointError("internal error while enrolling", code="enroll_internal")
        finally:
            with self._lock:  # free before the result is shown: the next code shown is taken
                self._busy = False
                held, self._held = self._held, []
        self._report(scan, outcome, held)
