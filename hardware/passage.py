"""Passage confirmation: after a gate opens for an entry, did anybody walk through in time?

A turnstile rotation sensor or a door contact calls ``passed()``; each call confirms the oldest
entry still waiting (people pass in the order they were let in). An entry not confirmed within
``timeout_s`` is reported exactly once to ``on_no_passage(entry_id)``, so the entry log can record
"granted, did not pass" and the person is not counted inside. Wiring: docs/wiring.md.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 5.0


class PassageMonitor:
    """Entries waiting for the passage sensor, in order, each with its deadline; a thread reports
    the ones whose deadline passes. Every waiting entry ends exactly one way: passed or not."""

    def __init__(self, timeout_s: float, on_no_passage: Callable[[Hashable], object],
                 on_passage: Callable[[Hashable | None], object] | None = None, *,
                 name: str = "passage") -> None:
        if not (isinstance(timeout_s, int | float) and math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"passage timeout must be a positive number of seconds, not {timeout_s!r}")
        self.timeout_s = float(timeout_s)
        self._on_no_passage = on_no_passage
        self._on_passage = on_passage
        self._cond = threading.Condition()
        self._waiting: deque[tuple[float, Hashable]] = deque()
        self._reporting = 0  # timed-out entries popped but not yet reported
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"{name}-passage", daemon=True)
        self._thread.start()

    def expect(self, entry_id: Hashable) -> None:
        """A gate opens for ``entry_id`` now; a second call for an entry already waiting is ignored."""
        with self._cond:
            if self._closed:
                log.warning("passage: entry %s not watched: the monitor is closed", entry_id)
                return
            if any(e == entry_id for _, e in self._waiting):
                return
            self._waiting.append((time.monotonic() + self.timeout_s, entry_id))
            self._cond.notify_all()

    def passed(self) -> Hashable | None:
        """The sensor fired: confirm and return the oldest waiting entry (None if nobody was expected)."""
        with self._cond:
            entry_id = self._waiting.popleft()[1] if self._waiting else None
            self._cond.notify_all()
        self._report(self._on_passage, entry_id)
        return entry_id

    @property
    def pending(self) -> tuple[Hashable, ...]:
        with self._cond:
            return tuple(e for _, e in self._waiting)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no entry is waiting and every timeout has been reported."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._waiting and not self._reporting, timeout)

    def close(self) -> tuple[Hashable, ...]:
        """Stop watching; returns the entries still waiting (not reported either way: the caller
        decides, since nobody can tell yet whether they will pass)."""
        with self._cond:
            self._closed = True
            left = tuple(e for _, e in self._waiting)
            self._waiting.clear()
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(JOIN_TIMEOUT_S)
        return left

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    now = time.monotonic()
                    expired = []
                    while self._waiting and self._waiting[0][0] <= now:
                        expired.append(self._waiting.popleft()[1])
                    if expired:
                        self._reporting += len(expired)
                        break
                    self._cond.wait(self._waiting[0][0] - now if self._waiting else None)
            for entry_id in expired:
                self._report(self._on_no_passage, entry_id)
                with self._cond:
                    self._reporting -= 1
                    self._cond.notify_all()

    @staticmethod
    def _report(callback: Callable | None, entry_id: Hashable | None) -> None:
        if callback is None:
            return
        try:
            callback(entry_id)
        except Exception:  # keep watching the other entries; the failure is in the log
            log.exception("passage: reporting entry %s failed", entry_id)
