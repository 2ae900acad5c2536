"""Feedback devices: what the person at the gate sees and hears, and what opens the gate.

The daemon hands a feedback device each verdict (``show``) and the appliance's health
(``set_state``); the device turns them into LED, buzzer and relay patterns without ever blocking
the caller. ``FeedbackDevice`` is the narrow interface; ``PatternFeedback`` holds the behaviour
shared by the real device (hardware/gpio_feedback.py, gpiozero) and the simulated one
(hardware/console_feedback.py, a live line in the terminal). Wiring: docs/wiring.md.
"""
from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from enum import StrEnum
from typing import Self

from hardware.feedback_patterns import (
    OFF,
    OUTPUTS,
    Outputs,
    Pattern,
    Patterns,
    Step,
    Timings,
    beeps,
    blink,
    steady,
)
from hardware.feedback_player import Player
from hardware.passage import PassageMonitor
from scanner.cards.scan import DIRECTIONS
from scanner.cards.verdict import Verdict

__all__ = ["OFF", "OUTPUTS", "Callbacks", "DeviceState", "EntryId", "FeedbackDevice", "Outputs", "Pattern",
           "PatternFeedback", "Patterns", "Step", "Timings", "beeps", "blink", "steady"]

log = logging.getLogger(__name__)

EntryId = Hashable


class DeviceState(StrEnum):
    """The appliance's health as the feedback device shows it between verdicts."""

    OK = "ok"              # idle: nothing lit
    DEGRADED = "degraded"  # trust list stale, sync backlog over its limit, clock unsynced: amber slow blink
    ERROR = "error"        # camera/reader down, log cannot write: amber fast blink


@dataclass(frozen=True, slots=True)
class Callbacks:
    """Events a feedback device reports; each runs on a background thread and must return quickly.

    on_no_passage(entry_id): a gate opened for this entry but the passage sensor did not fire in time
    on_passage(entry_id | None): the sensor fired (None: nobody was expected, e.g. tailgating)
    on_direction(direction): staff toggled the direction ("in"/"out") with the button
    on_acknowledge(): staff acknowledged the alarm with the button
    """

    on_no_passage: Callable[[EntryId], object] | None = None
    on_passage: Callable[[EntryId | None], object] | None = None
    on_direction: Callable[[str], object] | None = None
    on_acknowledge: Callable[[], object] | None = None


class FeedbackDevice(ABC):
    """The narrow interface: show verdicts, show the appliance's state, close safely.

    ``show`` and ``set_state`` return at once; patterns play on a background thread.
    """

    kind: str = "feedback"

    @abstractmethod
    def show(self, verdict: Verdict, entry_id: EntryId | None = None) -> None:
        """Play the verdict's pattern now, pre-empting the one in progress (and open the gate on accept)."""

    @abstractmethod
    def set_state(self, state: DeviceState) -> None:
        """Show this state whenever no verdict pattern is playing."""

    @abstractmethod
    def close(self) -> None:
        """Every output to its safe state, then release the hardware. Idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PatternFeedback(FeedbackDevice):
    """Verdicts and states to patterns, played by a Player on its own thread; optional gate and
    passage confirmation; the staff button's actions. Subclasses write frames to their outputs."""

    def __init__(self, patterns: Patterns | None = None, *, gate_pulse_s: float | None = None,
                 passage_timeout_s: float | None = None, direction: str = "in",
                 callbacks: Callbacks | None = None, name: str = "feedback") -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {direction!r}")
        if passage_timeout_s is not None and gate_pulse_s is None:
            raise ValueError("passage confirmation needs a gate (relay)")
        self.patterns = patterns or Patterns.default()
        self.callbacks = callbacks or Callbacks()
        self.gate_pulse_s = gate_pulse_s
        self._lock = threading.Lock()
        self._state = DeviceState.OK
        self._acknowledged = False
        self._direction = direction
        self._closed = False
        self._passage = (PassageMonitor(passage_timeout_s, self._no_passage, self._passed, name=name)
                         if passage_timeout_s is not None else None)
        self._player = Player(self._write, background=self.patterns.idle, safe=self._safe_frame(),
                              name=name)

    # -- the interface -------------------------------------------------------------------------

    def show(self, verdict: Verdict, entry_id: EntryId | None = None) -> None:
        gate = self.gate_pulse_s if verdict.accepted else None
        if gate is not None and self._passage is not None and entry_id is not None:
            self._passage.expect(entry_id)  # before the gate opens, so a quick passer is not missed
        self._player.play(self.patterns.for_verdict(verdict), gate_pulse_s=gate)

    def set_state(self, state: DeviceState) -> None:
        state = DeviceState(state)
        with self._lock:
            if state is not self._state:
                self._acknowledged = False
            self._state = state
            self._player.set_background(self._background())  # under the lock: the last call wins

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            if self._passage is not None:
                pending = self._passage.close()
                if pending:
                    log.warning("feedback: closing with %d entries still awaiting passage "
                                "confirmation (left as granted): %s", len(pending),
                                ", ".join(map(str, pending)))
            self._player.close(self._safe_frame())
        finally:
            self._release()

    # -- staff and sensor actions (from the button and the passage sensor, or the demo) ---------

    @property
    def direction(self) -> str:
        return self._direction

    @property
    def state(self) -> DeviceState:
        return self._state

    def toggle_direction(self) -> str:
        """Switch between "in" and "out", chirp (once for in, twice for out) and report it."""
        with self._lock:
            self._direction = "out" if self._direction == "in" else "in"
            direction = self._direction
        self._player.play(self.patterns.toggle_in if direction == "in" else self.patterns.toggle_out)
        log.info("feedback: direction switched to %s by staff", direction)
        self._call("on_direction", direction)
        return direction

    def acknowledge(self) -> None:
        """Staff acknowledged the alarm: silence it (the error keeps blinking) and report it."""
        with self._lock:
            self._acknowledged = True
            self._player.set_background(self._background())
        log.info("feedback: alarm acknowledged by staff")
        self._call("on_acknowledge")

    def passage(self) -> None:
        """The passage sensor fired: confirms the oldest entry awaiting passage."""
        if self._passage is not None:
            self._passage.passed()

    # -- observation (the demo and tests wait on these instead of sleeping) --------------------

    @property
    def fault(self) -> str | None:
        """Why the outputs stopped working (one line), or None while they work."""
        return self._player.fault

    @property
    def pending_passages(self) -> tuple[EntryId, ...]:
        return self._passage.pending if self._passage is not None else ()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no verdict pattern or gate pulse is playing and the state's frame is out."""
        return self._player.wait_idle(timeout)

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds; it is checked after every frame written."""
        return self._player.wait_until(predicate, timeout)

    def wait_passages(self, timeout: float) -> bool:
        """Wait until no entry awaits passage confirmation."""
        return self._passage.wait_idle(timeout) if self._passage is not None else True

    # -- for subclasses ------------------------------------------------------------------------

    @abstractmethod
    def _write(self, frame: Outputs, label: str) -> None:
        """Set every output to ``frame`` (called on the player thread; must not block)."""

    def _release(self) -> None:
        """Release the hardware after the safe frame was written."""

    def _safe_frame(self) -> Outputs:
        return OFF

    def _background(self) -> Pattern:
        if self._state is DeviceState.ERROR:
            if self.patterns.error_alarm is not None and not self._acknowledged:
                return self.patterns.error_alarm
            return self.patterns.error
        if self._state is DeviceState.DEGRADED:
            return self.patterns.degraded
        return self.patterns.idle

    def _no_passage(self, entry_id: EntryId) -> None:
        log.info("feedback: entry %s: gate opened but nobody passed in time", entry_id)
        self._call("on_no_passage", entry_id)

    def _passed(self, entry_id: EntryId | None) -> None:
        if entry_id is None:
            log.warning("feedback: passage sensor fired while no entry was expected")
        self._call("on_passage", entry_id)

    def _call(self, name: str, *args: object) -> None:
        fn = getattr(self.callbacks, name)
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:  # a broken callback must not stop the gate or the sensor thread
            log.exception("feedback: callback %s failed", name)
