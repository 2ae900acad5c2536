"""The thread that plays feedback patterns: one frame of all outputs at a time, never blocking the caller.

Every step lasts at least its configured time, counted from when its frame was actually written
(so a beep or a gate pulse is never cut short by a late thread); a new pattern replaces the one in
progress at once. The gate pulse runs beside the patterns and is not cut short by a later verdict:
a controller may need the whole pulse, and the person who was let in must be able to pass.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from hardware.feedback_patterns import OFF, OUTPUTS, Outputs, Pattern

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 5.0


class _Track:
    """One output's steps and where it is in them; ``due`` is None until its frame is written."""

    __slots__ = ("due", "idx", "repeat", "steps")

    def __init__(self, steps: tuple, repeat: bool) -> None:
        self.steps = steps
        self.repeat = repeat
        self.idx = 0
        self.due: float | None = None

    @property
    def finished(self) -> bool:
        return self.idx >= len(self.steps)

    @property
    def value(self) -> float:
        return self.steps[self.idx][0] if self.idx < len(self.steps) else 0.0


class Player:
    """Plays a background pattern (the device state, repeating) and transient patterns over it."""

    def __init__(self, write: Callable[[Outputs, str], None], *, background: Pattern,
                 safe: Outputs | None = None, name: str = "feedback") -> None:
        self._write = write
        self._safe = OFF if safe is None else safe
        self._cond = threading.Condition()
        self._background = background
        self._active = background
        self._transient = False
        self._tracks: dict[str, _Track] = {}
        self._pending: Pattern | None = None
        self._restart = True
        self._gate_request: float | None = None
        self._gate_open = False
        self._gate_due: float | None = None
        self._busy = True  # a frame is decided but not yet written and timed
        self._frames = 0
        self._closing = False
        self._fault: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"{name}-player", daemon=True)
        self._thread.start()

    # -- called from any thread; all return at once ----------------------------------------------

    def play(self, pattern: Pattern, *, gate_pulse_s: float | None = None) -> None:
        """Start ``pattern`` now, replacing a transient one in progress; optionally open the gate."""
        with self._cond:
            if self._closing or self._fault is not None:
                return
            self._pending = pattern
            if gate_pulse_s is not None:
                self._gate_request = max(self._gate_request or 0.0, gate_pulse_s)
            self._cond.notify_all()

    def set_background(self, pattern: Pattern) -> None:
        """Show ``pattern`` (repeating) whenever no transient pattern plays."""
        with self._cond:
            if pattern == self._background:
                return
            self._background = pattern
            if not self._transient and self._pending is None:
                self._restart = True
            self._cond.notify_all()

    @property
    def fault(self) -> str | None:
        return self._fault

    def wait_idle(self, timeout: float) -> bool:
        """Wait until only the background plays, the gate is closed and the current frame is out."""
        def idle() -> bool:
            return (self._frames > 0 and not self._busy and not self._transient and not self._restart
                    and self._pending is None and self._gate_request is None and not self._gate_open)
        with self._cond:
            self._cond.wait_for(lambda: idle() or self._fault is not None or self._closing, timeout)
            return idle()

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds (checked after every frame written)."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def close(self, safe: Outputs | None = None) -> None:
        """Stop the thread and write the safe frame (also when the thread is stuck or failed)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(JOIN_TIMEOUT_S)
            if self._thread.is_alive():
                log.error("feedback: pattern thread did not stop within %.0f s; writing the safe "
                          "state anyway", JOIN_TIMEOUT_S)
        self._write_safe(self._safe if safe is None else safe)

    # -- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while True:
                        if self._closing:
                            return
                        now = time.monotonic()
                        started = self._advance(now)
                        if started is not None:
                            break
                        due = self._next_due()
                        self._cond.wait(None if due is None else max(0.0, due - now))
                    frame = self._frame()
                    label = self._active.name
                    tracks, gate_s = started
                self._write(frame, label)
                written = time.monotonic()
                with self._cond:
                    for track in tracks:
                        track.due = written + track.steps[track.idx][1]
                    if gate_s is not None:
                        self._gate_due = written + gate_s
                    self._busy = False
                    self._frames += 1
                    self._cond.notify_all()
        except Exception as exc:  # noqa: BLE001 - the outputs failed (device unplugged, closed under us): stop safely
            self._fault = f"{type(exc).__name__}: {exc}"
            log.error("feedback: writing the outputs failed (%s); feedback stopped", self._fault)
            self._write_safe(self._safe)
            with self._cond:
                self._cond.notify_all()

    def _write_safe(self, safe: Outputs) -> None:
        try:
            self._write(safe, "off")
        except Exception as exc:  # noqa: BLE001 - nothing more can be done from software; say so once
            log.error("feedback: could not write the safe state (%s: %s)", type(exc).__name__, exc)

    def _start(self, pattern: Pattern, transient: bool) -> list[_Track]:
        self._active = pattern
        self._transient = transient
        self._tracks = {name: _Track(steps, pattern.repeat) for name, steps in pattern.tracks().items()}
        return list(self._tracks.values())

    def _advance(self, now: float) -> tuple[list[_Track], float | None] | None:
        """Move every output whose step is over; None when the frame is unchanged."""
        changed = False
        started: list[_Track] = []
        if self._pending is not None:
            started = self._start(self._pending, transient=True)
            self._pending = None
            self._restart = False
            changed = True
        elif self._restart:
            started = self._start(self._background, transient=False)
            self._restart = False
            changed = True
        else:
            for track in self._tracks.values():
                if track.due is not None and track.due <= now:
                    track.idx += 1
                    track.due = None
                    if track.finished and track.repeat:
                        track.idx = 0
                    if not track.finished:
                        started.append(track)
                    changed = True
            if self._transient and all(t.finished for t in self._tracks.values()):
                started = self._start(self._background, transient=False)
                changed = True
        gate_s = None
        if self._gate_request is not None:
            if self._gate_open:
                self._gate_due = max(self._gate_due or now, now + self._gate_request)
            else:
                self._gate_open = True
                gate_s = self._gate_request
                changed = True
            self._gate_request = None
        elif self._gate_open and self._gate_due is not None and self._gate_due <= now:
            self._gate_open = False
            self._gate_due = None
            changed = True
        if not changed:
            return None
        self._busy = True
        return started, gate_s

    def _next_due(self) -> float | None:
        dues = [t.due for t in self._tracks.values() if t.due is not None]
        if self._gate_open and self._gate_due is not None:
            dues.append(self._gate_due)
        return min(dues, default=None)

    def _frame(self) -> Outputs:
        tracks = self._tracks
        green, red, amber, buzzer_hz = (tracks[o].value if o in tracks else 0.0 for o in OUTPUTS)
        return Outputs(green, red, amber, buzzer_hz, gate_open=self._gate_open)
