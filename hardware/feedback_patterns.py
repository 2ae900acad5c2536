"""Feedback patterns as data: frames of every output, and (value, seconds) steps per output.

Pure values, no I/O: hardware/feedback_player.py plays them, hardware/feedback.py picks them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from scanner.cards.verdict import Shown, Verdict

Step = tuple[float, float]  # (value, seconds): LED brightness 0..1, or buzzer frequency in Hz (0 = silent)
OUTPUTS = ("green", "red", "amber", "buzzer")


@dataclass(frozen=True, slots=True)
class Outputs:
    """One frame of every output: LED levels 0..1, buzzer frequency (0 = silent), gate open or not."""

    green: float = 0.0
    red: float = 0.0
    amber: float = 0.0
    buzzer_hz: float = 0.0
    gate_open: bool = False


OFF = Outputs()


def _check_steps(name: str, output: str, steps: tuple[Step, ...]) -> None:
    for step in steps:
        if len(step) != 2:
            raise ValueError(f"pattern {name!r}: {output} step {step!r} is not (value, seconds)")
        value, seconds = step
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"pattern {name!r}: {output} step lasts {seconds!r} s (must be > 0)")
        if output == "buzzer":
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"pattern {name!r}: buzzer frequency {value!r} Hz is not >= 0")
        elif not 0 <= value <= 1:
            raise ValueError(f"pattern {name!r}: {output} level {value!r} is not within 0..1")


@dataclass(frozen=True, slots=True)
class Pattern:
    """What each output does over time, as (value, seconds) steps; an output is off after its last step.

    A ``repeat`` pattern loops each output's steps for as long as it is shown (state patterns); any
    other pattern ends when its longest output ends, and the device goes back to its state.
    """

    name: str
    green: tuple[Step, ...] = ()
    red: tuple[Step, ...] = ()
    amber: tuple[Step, ...] = ()
    buzzer: tuple[Step, ...] = ()
    repeat: bool = False

    def __post_init__(self) -> None:
        for output in OUTPUTS:
            steps = tuple(tuple(s) for s in getattr(self, output))
            object.__setattr__(self, output, steps)
            _check_steps(self.name, output, steps)

    def tracks(self) -> dict[str, tuple[Step, ...]]:
        """The non-empty outputs and their steps."""
        return {o: getattr(self, o) for o in OUTPUTS if getattr(self, o)}

    @property
    def duration(self) -> float:
        """Seconds until the longest output ends (one period for a repeat pattern)."""
        return max((sum(s for _, s in steps) for steps in self.tracks().values()), default=0.0)


def steady(seconds: float, level: float = 1.0) -> tuple[Step, ...]:
    """An LED lit for ``seconds``."""
    return ((level, seconds),)


def blink(on_s: float, off_s: float) -> tuple[Step, ...]:
    """One blink period (for a repeat pattern): on, then off."""
    return ((1.0, on_s), (0.0, off_s))


def beeps(n: int, hz: float, on_s: float, gap_s: float) -> tuple[Step, ...]:
    """``n`` beeps of ``on_s`` at ``hz``, separated by ``gap_s`` of silence."""
    steps: list[Step] = []
    for i in range(n):
        if i:
            steps.append((0.0, gap_s))
        steps.append((hz, on_s))
    return tuple(steps)


@dataclass(frozen=True, slots=True)
class Timings:
    """The knobs of the default patterns (seconds and Hz); see Patterns.default."""

    verdict_s: float = 1.5          # how long green/red/amber stays lit after a verdict
    beep_s: float = 0.1             # one short beep
    beep_gap_s: float = 0.1         # silence between beeps
    fast_blink_s: float = 0.15      # device error: on and off for this long each
    slow_blink_s: float = 1.0       # degraded: on and off for this long each
    chirp_s: float = 0.05           # staff button: direction changed
    accept_hz: float = 1760.0       # high: welcome
    reject_hz: float = 440.0        # low: stop
    duplicate_hz: float = 880.0
    chirp_hz: float = 2640.0
    alarm_every_s: float = 10.0     # error alarm (when enabled): two beeps this often until acknowledged


@dataclass(frozen=True, slots=True)
class Patterns:
    """Every pattern a feedback device plays. ``error_alarm`` (None = off) replaces ``error`` until
    staff acknowledge it with the button."""

    accept: Pattern
    reject: Pattern
    duplicate: Pattern
    error: Pattern
    degraded: Pattern
    idle: Pattern
    toggle_in: Pattern
    toggle_out: Pattern
    error_alarm: Pattern | None = None

    @classmethod
    def default(cls, t: Timings = Timings(), *, alarm: bool = False) -> Patterns:
        """accept = green + one short beep; reject = red + three; duplicate = amber + two; error =
        amber fast blink; degraded = amber slow blink; the button chirps once for "in", twice for "out"."""
        fast = blink(t.fast_blink_s, t.fast_blink_s)
        alarm_beeps = beeps(2, t.reject_hz, t.beep_s, t.beep_gap_s)
        quiet = t.alarm_every_s - sum(s for _, s in alarm_beeps)
        return cls(
            accept=Pattern("accept", green=steady(t.verdict_s),
                           buzzer=beeps(1, t.accept_hz, t.beep_s, t.beep_gap_s)),
            reject=Pattern("reject", red=steady(t.verdict_s),
                           buzzer=beeps(3, t.reject_hz, t.beep_s, t.beep_gap_s)),
            duplicate=Pattern("duplicate", amber=steady(t.verdict_s),
                              buzzer=beeps(2, t.duplicate_hz, t.beep_s, t.beep_gap_s)),
            error=Pattern("error", amber=fast, repeat=True),
            degraded=Pattern("degraded", amber=blink(t.slow_blink_s, t.slow_blink_s), repeat=True),
            idle=Pattern("idle", repeat=True),
            toggle_in=Pattern("toggle_in", buzzer=beeps(1, t.chirp_hz, t.chirp_s, t.chirp_s)),
            toggle_out=Pattern("toggle_out", buzzer=beeps(2, t.chirp_hz, t.chirp_s, t.chirp_s)),
            error_alarm=(Pattern("error_alarm", amber=fast, buzzer=alarm_beeps + ((0.0, quiet),),
                                 repeat=True) if alarm and quiet > 0 else None),
        )

    def all(self) -> tuple[Pattern, ...]:
        return tuple(p for p in (self.accept, self.reject, self.duplicate, self.error, self.degraded,
                                 self.idle, self.toggle_in, self.toggle_out, self.error_alarm)
                     if p is not None)

    def for_verdict(self, verdict: Verdict) -> Pattern:
        """accept, duplicate (a genuine card scanned again, decided by the entry log, or already
        inside the site by another gate) or reject."""
        return {Shown.ACCEPT: self.accept, Shown.DUPLICATE: self.duplicate}.get(verdict.shown, self.reject)
