"""Inputs → one queue → one worker: the scan pipeline (cameras, USB/serial readers, stdin).

Every input (hardware/inputs.py) runs in its own thread(s) and hands `Scan`s to `Pipeline.submit`,
which never blocks: it folds repeats (the same text from the same source within the cooldown is
one scan; a text already waiting or being handled is not queued again) and queues the rest. One
worker thread (real time where asked and allowed: runtime.prioritise_lane) hands each scan to
``handle`` (the appliance's verdict lane, scanner/appliance/lane.py), so the entry log can commit
before feedback shows the verdict, while capture and reader threads go on. `Pipeline.verifying` is
the plain form: verify, then ``sink(scan, verdict)``.
Specification: docs/readers.md, docs/decoding.md.
"""
from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

from hardware.inputs import Input, ReadIssue, SourceHealth
from scanner.appliance import runtime
from scanner.base.safetext import escape
from scanner.cards.scan import Scan
from scanner.cards.trust import TrustStore
from scanner.cards.verdict import Verdict
from scanner.cards.verifier import verify as verify_text

log = logging.getLogger(__name__)

DEFAULT_COOLDOWN = 3.0
"""Seconds: the same card text from the same source within this window (after it was last seen) is one scan."""


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


def _cooldown_key(scan: Scan) -> tuple[bytes, str, str]:
    """What the cooldown knows a scan by: a 16-byte digest of its text, and its source."""
    digest = hashlib.blake2b(scan.text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return digest, scan.source, scan.source_id


Handle = Callable[[Scan], None]
Sink = Callable[[Scan, Verdict], None]
Verify = Callable[[str, Any, float], Verdict]


class Pipeline:
    """One queue and one worker for all inputs; see the module docstring."""

    def __init__(self, handle: Handle, *, cooldown: float = DEFAULT_COOLDOWN, queue_size: int = 256,
                 on_issue: Callable[[ReadIssue], None] | None = None,
                 monotonic: Callable[[], float] = time.monotonic, lane_priority: int = 0) -> None:
        """``lane_priority``: the worker thread's SCHED_FIFO priority (0: a normal thread; the
        appliance's comes from `[scan] lane_priority`, see runtime.prioritise_lane)."""
        if cooldown < 0:
            raise ValueError("cooldown must be >= 0 seconds")
        self._handle = handle
        self._busy_since: float | None = None
        self._on_issue = on_issue
        self.cooldown = cooldown
        self._mono = monotonic
        # a C queue: its hand-off to the waiting worker costs less than queue.Queue's Python locking
        self._queue: queue.SimpleQueue[Scan | None] = queue.SimpleQueue()
        self._queue_size = queue_size
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending: set[str] = set()  # texts queued or being handled (at most one verdict in flight each)
        # (digest of the text, kind, id) -> (the input's clock, this pipeline's monotonic clock) when
        # last read; up to 4,096 of them: a digest keeps no card's text (a few hundred bytes) alive
        self._last_seen: dict[tuple[bytes, str, str], tuple[float, float]] = {}
        self._inputs: list[Input] = []
        self._worker: threading.Thread | None = None
        self._running = False
        self._lane_priority = lane_priority
        self.lane: runtime.LanePriority | None = None  # how the worker thread runs, once it has started
        self._verdicts = self._folded = self._dropped = self._sink_errors = self._issues = 0

    @classmethod
    def verifying(cls, trust: TrustStore | Callable[[], TrustStore], sink: Sink, *, verify: Verify = verify_text,
                  clock: Callable[[], float] = time.time, **kw: Any) -> Pipeline:
        """A pipeline whose worker verifies each scan against ``trust`` (a store, or a function giving
        the one in use) and hands ``sink(scan, verdict)`` the result (`checkpoint scan`, benchmarks)."""
        current = trust if callable(trust) else (lambda: trust)

        def handle(scan: Scan) -> None:
            sink(scan, verify(scan.text, current(), clock()))
        return cls(handle, **kw)

    # ------------------------------------------------------------------ inputs' side (never blocks)

    def add(self, inp: Input) -> Input:
        """Add an input; it starts with the pipeline (or at once, if the pipeline runs)."""
        self._inputs.append(inp)
        if self._running:
            inp.start(self.submit, self.report)
        return inp

    def submit(self, scan: Scan, seen: float | None = None) -> bool:
        """Queue a scan unless it is a repeat; True if queued. Called from input threads; never blocks.
        ``seen`` is the input's own clock in seconds for the cooldown (a file played at a pace: its
        media time, so a busy machine that plays it late does not turn one hold into two scans);
        without it, this pipeline's monotonic clock."""
        now = self._mono()
        at = now if seen is None else seen
        key = _cooldown_key(scan)
        with self._lock:
            last = self._last_seen.get(key)
            self._last_seen[key] = (at, now)
            if (last is not None and at - last[0] < self.cooldown) or scan.text in self._pending:
                self._folded += 1
                return False
            if len(self._last_seen) > 4096:
                self._forget(now)
            try:
                self._enqueue(scan)
            except queue.Full:
                self._dropped += 1
                log.error("scan queue full: dropped a scan from %s %s", scan.source, escape(scan.source_id))
                del self._last_seen[key]
                return False
            self._pending.add(scan.text)
            return True

    def resubmit(self, scan: Scan) -> bool:
        """Queue again a scan the handler held back (no cooldown: it was read once); never blocks."""
        with self._lock:
            try:
                self._enqueue(scan)
            except queue.Full:
                self._dropped += 1
                log.error("scan queue full: dropped a held scan from %s %s", scan.source, escape(scan.source_id))
                return False
            self._pending.add(scan.text)
            return True

    def _enqueue(self, scan: Scan) -> None:
        """Queue a scan for the worker (with the lock held); queue.Full when ``queue_size`` are waiting."""
        if self._queue.qsize() >= self._queue_size:
            raise queue.Full
        self._queue.put(scan)

    def _forget(self, now: float) -> None:
        """Drop cooldown entries that have run out (bounds memory under a flood of distinct texts)."""
        for k in [k for k, (_, t) in self._last_seen.items() if now - t >= self.cooldown]:
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

    def start(self) -> Self:
        if self._running:
            return self
        self._running = True
        self._worker = threading.Thread(target=self._work, name="verdicts", daemon=True)
        self._worker.start()
        for inp in self._inputs:
            inp.start(self.submit, self.report)
        return self

    def _work(self) -> None:
        self.lane = lane = runtime.prioritise_lane(self._lane_priority)
        if lane.realtime:
            log.info("runtime: verdict lane SCHED_FIFO priority %d", lane.priority)
        while True:
            scan = self._queue.get()
            if scan is None:
                return
            self._busy_since = self._mono()
            try:
                self._handle(scan)
            except Exception:  # the lane must go on; the handler's bug is logged for the developers
                log.exception("verdict lane failed for a scan from %s %s", scan.source, escape(scan.source_id))
                with self._lock:
                    self._sink_errors += 1
            finally:
                self._busy_since = None
                with self._lock:
                    self._pending.discard(scan.text)
                    # the cooldown runs from the verdict: each clock moved on by the time it took
                    key, now = _cooldown_key(scan), self._mono()
                    at, then = self._last_seen.get(key, (now, now))
                    self._last_seen[key] = (at + now - then, now)
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

    def __enter__(self) -> Self:
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
