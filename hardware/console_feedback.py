"""Simulated feedback: the LEDs, buzzer and relay as one live line in the terminal.

Used by the demo, and as the fallback when GPIO is unavailable (not a Pi, no permission, pin in
use). On a TTY the line is rewritten in place (``\\r``) on every change, e.g.
``● green  ○ red  ○ amber  ♪ beep  ⇧ relay   accept · in``; on a pipe or file one plain line is
written each time a new pattern starts, so a log is not flooded by blinking.
"""
from __future__ import annotations

import os
import sys
import threading
from typing import TextIO

from hardware.feedback import Callbacks, EntryId, Outputs, PatternFeedback, Patterns
from scanner.base.i18n import t
from scanner.cards.verdict import Verdict

_COLORS = {"green": "32", "red": "31", "amber": "33"}
_DETAILED = ("reject", "duplicate")


def render(frame: Outputs, label: str, *, direction: str | None = None, detail: str | None = None,
           lang: str | None = None, color: bool = False) -> str:
    """One line for a frame: lit LEDs ●, dark ○, ♪ while the buzzer sounds, ⇧ while the gate is open."""
    parts = []
    for name in ("green", "red", "amber"):
        lit = getattr(frame, name) > 0
        mark = "●" if lit else "○"
        if lit and color:
            mark = f"\x1b[{_COLORS[name]}m{mark}\x1b[0m"
        parts.append(f"{mark} {t('feedback.' + name, lang)}")
    parts.append(f"{'♪' if frame.buzzer_hz > 0 else '·'} {t('feedback.beep', lang)}")
    parts.append(f"{'⇧' if frame.gate_open else '·'} {t('feedback.relay', lang)}")
    status = t(f"feedback.{label}", lang)
    if detail:
        status += f" ({detail})"
    if direction:
        status += f" · {t('feedback.' + direction, lang)}"
    return "  ".join(parts) + "   " + status


class ConsoleLine:
    """Writes rendered frames to a stream: in place on a TTY, one line per new pattern otherwise."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None,
                 color: bool | None = None, lang: str | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.tty = _isatty(self.stream) if tty is None else tty
        self.color = (self.tty and "NO_COLOR" not in os.environ) if color is None else color
        self.lang = lang
        self._lock = threading.Lock()
        self._last_label: str | None = None
        self._live = False
        self.last = ""

    def __call__(self, frame: Outputs, label: str, *, direction: str | None = None,
                 detail: str | None = None) -> None:
        line = render(frame, label, direction=direction, detail=detail, lang=self.lang, color=self.color)
        with self._lock:
            self.last = render(frame, label, direction=direction, detail=detail, lang=self.lang)
            if self.tty:
                width = _columns(self.stream)
                if width and len(self.last) >= width:  # a wrapped line could not be rewritten in place
                    line = self.last[:max(1, width - 2)] + "…"
                self.stream.write(f"\r{line}\x1b[K")
                self._live = True
            elif label != self._last_label:
                self.stream.write(line + "\n")
            else:
                return
            self._last_label = label
            self.stream.flush()

    def end(self) -> None:
        """Finish the live line (a TTY keeps the last state visible)."""
        with self._lock:
            if self._live:
                self.stream.write("\n")
                self.stream.flush()
                self._live = False


def _columns(stream: TextIO) -> int | None:
    """The width of the terminal ``stream`` writes to, or None when it cannot be known."""
    try:
        return os.get_terminal_size(stream.fileno()).columns or None
    except (AttributeError, ValueError, OSError):
        return None


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


class ConsoleFeedback(PatternFeedback):
    """The feedback device without hardware: the same patterns and timing, shown on a console line.

    ``gate_pulse_s``/``passage_timeout_s`` simulate a gate and its passage sensor (call
    ``passage()`` for a person walking through); leave them None when there is no real gate.
    """

    kind = "console"

    def __init__(self, patterns: Patterns | None = None, *, stream: TextIO | None = None,
                 tty: bool | None = None, color: bool | None = None, lang: str | None = None,
                 gate_pulse_s: float | None = None, passage_timeout_s: float | None = None,
                 direction: str = "in", callbacks: Callbacks | None = None,
                 fallback_reason: str | None = None) -> None:
        self.line = ConsoleLine(stream, tty=tty, color=color, lang=lang)
        self.fallback_reason = fallback_reason
        self._detail: str | None = None
        super().__init__(patterns, gate_pulse_s=gate_pulse_s, passage_timeout_s=passage_timeout_s,
                         direction=direction, callbacks=callbacks, name="console-feedback")

    def show(self, verdict: Verdict, entry_id: EntryId | None = None) -> None:
        self._detail = None if verdict.accepted else t(f"reason.{verdict.reason}", self.line.lang)
        super().show(verdict, entry_id)

    def _write(self, frame: Outputs, label: str) -> None:
        self.line(frame, label, direction=self.direction,
                  detail=self._detail if label in _DETAILED else None)

    def _release(self) -> None:
        self.line.end()
