"""Inputs → one queue → verdicts: the scan pipeline (cameras, USB/serial readers, stdin).

Every input runs in its own thread(s) and hands `Scan`s to `Pipeline.submit`, which never blocks:
it folds repeats (the same text from the same source within the cooldown is one scan; a text
already waiting or being verified is not queued again) and queues the rest. One worker thread
verifies each scan (`scanner.cards.verifier.verify`) and calls the caller's ``sink(scan, verdict)``
synchronously, so the entry log can commit before feedback shows the verdict, while capture and
reader threads go on. An optional ``prepare`` hook runs on the worker before verification and may
hold a scan back or replace it (the daemon assembles multi-part SMART Health Cards there). Inputs
report their state (`SourceHealth`) for the health check.
Specification: issue 3, docs/readers.md, docs/decoding.md.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from hardware.scan import Scan
from scanner.base.safetext import escape
from scanner.cards.trust import TrustStore
from scanner.cards.verdict import Verdict
from scanner.cards.verifier import verify as verify_text

log = logging.getLogger(__name__)

DEFAULT_COOLDOWN = 3.0
"""Seconds: the same card text from the same source within this window (after it was last seen) is one scan."""


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


@dataclass(frozen=True, slots=True)
class PipelineHealth:
    """The pipeline as the health check sees it."""

    running: bool
    sources: tuple[SourceHealth, ...]
    queued: int
    in_flight: int
    verdicts: int
    folded: int
    dropped: int
    sink_errors: int
    issues: int


class Input(Protocol):
    """What the pipeline needs from an input: start it with the two callbacks, stop it, ask its health."""

    kind: str
    source_id: str
    finite: bool  # ends by itself (a file, stdin); a camera or reader runs until stopped

    def start(self, submit: Callable[[Scan], bool], report: Callable[[ReadIssue], None]) -> None: ...

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
    finite = False

    def __init__(self, source_id: str, *, direction: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.source_id = source_id
        self.direction = direction
        self._clock = clock
        self.status = SourceStatus(self.kind, source_id, clock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._submit: Callable[[Scan], bool] | None = None
        self._reporter: Callable[[ReadIssue], None] | None = None

    def start(self, submit: Callable[[Scan], bool], report: Callable[[ReadIssue], None]) -> None:
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

    def _emit(self, text: str) -> bool:
        """Hand one read to the pipeline (never blocks); True if it was queued as a new scan."""
        at = self._clock()
        self.status.scanned(at)
        submit = self._submit
        return submit(Scan(text, self.kind, self.source_id, at, self.direction)) if submit else False

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


Sink = Callable[[Scan, Verdict], None]
Prepare = Callable[[Scan], "Scan | None"]


class Pipeline:
    """One queue and one verifying worker for all inputs; see the module docstring."""

    def __init__(self, trust: TrustStore | Callable[[], TrustStore], sink: Sink, *,
                 cooldown: float = DEFAULT_COOLDOWN, queue_size: int = 256,
                 on_issue: Callable[[ReadIssue], None] | None = None,
                 verify: Callable[[str, TrustStore, float], Verdict] = verify_text,
                 prepare: Prepare | None = None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if cooldown < 0:
            raise ValueError("cooldown must be >= 0 seconds")
        self._trust = trust if callable(trust) else (lambda: trust)
        self._sink = sink
        self._verify = verify
        self._prepare = prepare  # on the worker, before verification: may hold a scan back (None)
        self._busy_since: float | None = None
        self._on_issue = on_issue
        self.cooldown = cooldown
        self._clock, self._mono = clock, monotonic
        self._queue: queue.Queue[Scan | None] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending: set[str] = set()  # texts queued or being verified (at most one verdict in flight each)
        self._last_seen: dict[tuple[str, str, str], float] = {}  # (text, kind, id) -> monotonic time
        self._inputs: list[Input] = []
        self._worker: threading.Thread | None = None
        self._running = False
        self._verdicts = self._folded = self._dropped = self._sink_errors = self._issues = 0

    # ------------------------------------------------------------------ inputs' side (never blocks)

    def add(self, inp: Input) -> Input:
        """Add an input; it starts with the pipeline (or at once, if the pipeline runs)."""
        self._inputs.append(inp)
        if self._running:
            inp.start(self.submit, self.report)
        return inp

    def submit(self, scan: Scan) -> bool:
        """Queue a scan unless it is a repeat; True if queued. Called from input threads; never blocks."""
        now = self._mono()
        key = (scan.text, scan.source, scan.source_id)
        with self._lock:
            last = self._last_seen.get(key)
            self._last_seen[key] = now
            if (last is not None and now - last < self.cooldown) or scan.text in self._pending:
                self._folded += 1
                return False
            if len(self._last_seen) > 4096:
                self._forget(now)
            try:
                self._queue.put_nowait(scan)
            except queue.Full:
                self._dropped += 1
                log.error("scan queue full: dropped a scan from %s %s", scan.source, escape(scan.source_id))
                del self._last_seen[key]
                return False
            self._pending.add(scan.text)
            return True

    def _forget(self, now: float) -> None:
        """Drop cooldown entries that have run out (bounds memory under a flood of distinct texts)."""
        for k in [k for k, t in self._last_seen.items() if now - t >= self.cooldown]:
            del self._last_seen[k]

    def report(self, issue: ReadIssue) -> None:
        """An input discarded a read; counted, and passed to ``on_issue`` (called in the input's thread)."""
        with self._lock:
            self._issues += 1
        if self._on_issue is not None:
            try:
                self._on_issue(issue)
            except Exception:  # the reporter is the caller's code; the input must keep reading
                log.exception("on_issue handler failed")

    # ------------------------------------------------------------------ the worker

    def start(self) -> Pipeline:
        if self._running:
            return self
        self._running = True
        self._worker = threading.Thread(target=self._work, name="verdicts", daemon=True)
        self._worker.start()
        for inp in self._inputs:
            inp.start(self.submit, self.report)
        return self

    def _work(self) -> None:
        while True:
            scan = self._queue.get()
            if scan is None:
                return
            self._busy_since = self._mono()
            try:
                ready = self._prepare(scan) if self._prepare is not None else scan
                if ready is not None:  # None: held back (e.g. one part of a multi-part card)
                    verdict = self._verify(ready.text, self._trust(), self._clock())
                    self._sink(ready, verdict)
            except Exception:  # the lane must go on; the sink's bug is logged for the developers
                log.exception("verdict sink failed for a scan from %s %s", scan.source, escape(scan.source_id))
                with self._lock:
                    self._sink_errors += 1
            finally:
                self._busy_since = None
                with self._lock:
                    self._pending.discard(scan.text)
                    self._last_seen[(scan.text, scan.source, scan.source_id)] = self._mono()
                    self._verdicts += 1
                    self._idle.notify_all()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the inputs, let the worker finish what is queued, and stop it."""
        for inp in self._inputs:
            inp.stop()
        for inp in self._inputs:
            if not inp.join(timeout):
                log.warning("%s input %s did not stop within %.0f s", inp.kind, escape(inp.source_id), timeout)
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout)
            self._worker = None
        self._running = False

    def __enter__(self) -> Pipeline:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is queued or being verified (True), or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
            return True

    def wait_finished(self, timeout: float | None = None, poll: float = 0.05) -> bool:
        """Block until every finite input has ended and its scans are verified (for `--once`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for inp in self._inputs:
            if not inp.finite:
                continue
            while not inp.join(poll):
                if deadline is not None and time.monotonic() >= deadline:
                    return False
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self.wait_idle(left if left is not None else 1e9)

    def inputs(self) -> tuple[Input, ...]:
        return tuple(self._inputs)

    def busy_for(self) -> float | None:
        """Seconds the worker has been on its current scan (None when idle): a hung sink shows here."""
        since = self._busy_since
        return None if since is None else max(0.0, self._mono() - since)

    def worker_alive(self) -> bool:
        worker = self._worker
        return worker is not None and worker.is_alive()

    def health(self) -> PipelineHealth:
        with self._lock:
            return PipelineHealth(self._running, tuple(inp.health() for inp in self._inputs),
                                  self._queue.qsize(), len(self._pending), self._verdicts, self._folded,
                                  self._dropped, self._sink_errors, self._issues)
