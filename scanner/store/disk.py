"""Free disk space next to the entry log, and the log's health from it and the last write failure.

The low-disk warning comes before writes fail; the space is read with ``shutil.disk_usage`` on
every health check and each tick of the retry loop (never on a scan's commit: nothing there reads it).
docs/entry-log.md#failures-retry-queue-and-health.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Health:
    """``state``: "ok", "warning" (e.g. low disk) or "error" (commits failing; entries queued).

    ``problems`` are stable codes: disk_full, io_error, db_busy, write_failed, log_queue_full,
    low_disk.
    """

    state: str
    problems: tuple[str, ...] = ()
    queued: int = 0
    free_bytes: int | None = None
    detail: str = ""


def health(write_problem: str | None, write_detail: str, queued: int, free_bytes: int | None,
           min_free_bytes: int) -> Health:
    """ok / warning (free disk below the threshold) / error (commits failing, entries queued)."""
    problems = []
    if write_problem is not None:
        problems.append(write_problem)
    low = free_bytes is not None and free_bytes < min_free_bytes
    if low:
        problems.append("low_disk")
    if write_problem is not None or queued:
        state = "error"
    elif low:
        state = "warning"
    else:
        state = "ok"
    detail = write_detail
    if low and not detail and free_bytes is not None:
        detail = f"free disk {free_bytes // MIB} MiB < {min_free_bytes // MIB} MiB"
    return Health(state, tuple(problems), queued, free_bytes, detail)


class DiskSpace:
    """The free space of the filesystem holding ``directory``, read at most every ``interval_s``
    unless forced (None when it cannot be read)."""

    def __init__(self, directory: str | os.PathLike, interval_s: float = 5.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.directory = directory
        self.interval_s = interval_s
        self._monotonic = monotonic
        self.free_bytes: int | None = None
        self._checked = 0.0

    def check(self, force: bool = False) -> int | None:
        now = self._monotonic()
        if force or now - self._checked >= self.interval_s:
            self._checked = now
            try:
                self.free_bytes = shutil.disk_usage(self.directory).free
            except OSError as exc:
                log.warning("entry log: cannot read free disk space: %s", exc)
                self.free_bytes = None
        return self.free_bytes
