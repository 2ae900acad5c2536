"""The input contract: what a camera or reader is to the pipeline, and the base of every input.

An input runs in its own thread(s), hands each read to ``submit`` as a `Scan` (never blocking),
reports a discarded read as a `ReadIssue`, and keeps its state (`SourceHealth`, with a stable
`SourceReason` code) for the health check. `InputThread` is the common base (a lost device is
reopened with scanner.base.backoff). The pipeline that consumes them is scanner/appliance/pipeline.py.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from scanner.base.safetext import escape
from scanner.cards.scan import Scan

log = logging.getLogger(__name__)


class SourceState(StrEnum):
    """Where an input stands (stable strings for the health check)."""

    STARTING = "starting"
    OK = "ok"
    REOPENING = "reopening"  # lost or not there yet: retried with backoff
    FAILED = "failed"  # cannot work as configured (missing library, bad config): not retried
    FINISHED = "finished"  # a file or stdin came to its end
    STOPPED = "stopped"


class SourceReason:
    """Stable reason codes an input reports with its state or a read issue."""

    DEVICE_MISSING = "device_missing"
    PERMISSION_DENIED = "permission_denied"
    DEVICE_BUSY = "device_busy"
    DEVICE_ERROR = "device_error"
    NO_FRAMES = "no_frames"
    END_OF_STREAM = "end_of_stream"
    LIBRARY_MISSING = "library_missing"
    DECODER_UNAVAILABLE = "decoder_unavailable"
    BAD_CONFIG = "bad_config"
    # read issues (the input goes on reading)
    GARBLED_READ = "garbled_read"
    TOO_LONG = "too_long"
    GARBAGE = "garbage"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class SourceHealth:
    """A snapshot of one input: its state, why (a SourceReason code), and counters since start."""

    source: str
    source_id: str
    state: SourceState
    reason: str | None = None
    detail: str = ""
    since: float = 0.0
    reopens: int = 0
    scans: int = 0
    issues: int = 0
    last_scan_at: float | None = None


@dataclass(frozen=True, slots=True)
class ReadIssue:
    """A read that was discarded (garbled, binary, too long, half-typed), with a hint for the technician.

    ``sample`` never holds the read itself (a card's text encodes the holder's name): only its
    length, its first characters and the characters that should not be there, escaped.
    """

    source: str
    source_id: str
    code: str
    hint: str
    sample: str = ""
    at: float = 0.0


class Submit(Protocol):
    """Where an input hands its reads (the pipeline's ``submit``): True if queued as a new scan.
    ``seen`` is the input's own clock in seconds for the repeat cooldown (a file played at a pace
    gives its media time); without it the receiver uses its own monotonic clock."""

    def __call__(self, scan: Scan, seen: float | None = None, /) -> bool: ...


class Input(Protocol):
    """What the pipeline needs from an input: start it with the two callbacks, stop it, ask its health."""

    kind: str
    source_id: str

    @property
    def finite(self) -> bool:
        """Whether it ends by itself (a file, stdin); a camera or reader runs until stopped."""

    def start(self, submit: Submit, report: Callable[[ReadIssue], None]) -> None: ...

    def stop(self) -> None: ...

    def join(self, timeout: float | None = None) -> bool: ...

    def health(self) -> SourceHealth: ...


class SourceStatus:
    """Thread-safe state of one input, turned into `SourceHealth` snapshots."""

    def __init__(self, kind: str, source_id: str, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.kind, self.source_id = kind, source_id
        self._state = SourceState.STARTING
        self._reason: str | None = None
        self._detail = ""
        self._since = clock()
        self._reopens = self._scans = self._issues = 0
        self._last_scan: float | None = None
        self.changed = threading.Condition(self._lock)

    def set(self, state: SourceState, reason: str | None = None, detail: str = "") -> None:
        with self._lock:
            if state is SourceState.REOPENING and self._state is not SourceState.REOPENING:
                self._reopens += 1
            if (state, reason) != (self._state, self._reason):
                self._since = self._clock()
                if state is not SourceState.OK or self._state is not SourceState.STARTING:
                    log.info("%s %s: %s%s%s", self.kind, escape(self.source_id), state,
                             f" ({reason})" if reason else "", f": {escape(detail)}" if detail else "")
            self._state, self._reason, self._detail = state, reason, detail
            self.changed.notify_all()

    @property
    def state(self) -> SourceState:
        with self._lock:
            return self._state

    def scanned(self, at: float) -> None:
        with self._lock:
            self._scans += 1
            self._last_scan = at

    def issue(self) -> None:
        with self._lock:
            self._issues += 1

    def snapshot(self) -> SourceHealth:
        with self._lock:
            return SourceHealth(self.kind, self.source_id, self._state, self._reason, self._detail,
                                self._since, self._reopens, self._scans, self._issues, self._last_scan)

    def wait_for(self, predicate: Callable[[SourceHealth], bool], timeout: float) -> bool:
        """Block until ``predicate(snapshot)`` holds (True) or ``timeout`` passes (False); for tests and tools."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                snap = SourceHealth(self.kind, self.source_id, self._state, self._reason, self._detail,
                                    self._since, self._reopens, self._scans, self._issues, self._last_scan)
                if predicate(snap):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)


class InputThread:
    """Base of the inputs: one named daemon thread running ``run()``, a stop event, a status.

    Subclasses set ``kind``, ``source_id``, ``finite`` and implement ``run()``, which must return
    soon after ``self._stop`` is set; it calls ``self._emit(text)`` for every read and
    ``self._report(code, hint, sample)`` for a discarded one.
    """

    kind = "manual"

    @property
    def finite(self) -> bool:
        """Whether the input ends by itself (a file): `run --once` waits for its end."""
        return False

    def __init__(self, source_id: str, *, direction: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.source_id = source_id
        self.direction = direction
        self._clock = clock
        self.status = SourceStatus(self.kind, source_id, clock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._submit: Submit | None = None
        self._reporter: Callable[[ReadIssue], None] | None = None

    def start(self, submit: Submit, report: Callable[[ReadIssue], None]) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.kind} input {self.source_id!r} already started")
        self._submit, self._reporter = submit, report
        self._thread = threading.Thread(target=self._main, name=f"{self.kind}:{self.source_id}", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self.run()
        except Exception as exc:  # a bug in one input must not go unnoticed, nor stop the others
            log.exception("%s input %s crashed", self.kind, escape(self.source_id))
            self.status.set(SourceState.FAILED, SourceReason.DEVICE_ERROR, f"internal error: {type(exc).__name__}")
            return
        if self.status.state not in (SourceState.FINISHED, SourceState.FAILED):
            self.status.set(SourceState.STOPPED)

    def run(self) -> None:
        raise RuntimeError("InputThread.run must be overridden")

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def health(self) -> SourceHealth:
        return self.status.snapshot()

    def _emit(self, text: str, seen: float | None = None) -> bool:
        """Hand one read to the pipeline (never blocks); True if it was queued as a new scan. ``seen``:
        the input's own clock for the cooldown (see Submit)."""
        at = self._clock()
        self.status.scanned(at)
        submit = self._submit
        if submit is None:
            return False
        scan = Scan(text, self.kind, self.source_id, at, self.direction)
        return submit(scan) if seen is None else submit(scan, seen)

    def _report(self, code: str, hint: str, sample: str = "") -> None:
        self.status.issue()
        issue = ReadIssue(self.kind, self.source_id, code, hint, sample, self._clock())
        log.warning("%s %s: discarded read (%s): %s %s", self.kind, escape(self.source_id), code,
                    escape(hint), escape(sample))
        if self._reporter is not None:
            self._reporter(issue)

    def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` unless stopped first; True if the input should go on."""
        return not self._stop.wait(seconds)
