"""QR readers → texts: serial / USB CDC-ACM readers (pyserial), stdin, and the checks every read passes.

A read becomes a `Scan` only if it could be a code: a line longer than any QR code holds, binary
or control characters, or a card whose text left the card alphabet on the way (wrong keyboard
layout, dropped characters) is discarded, logged escaped and without its content, and reported
with a hint for the technician; the reader keeps reading. Keyboard-wedge (HID) readers are in
`hardware.readers_hid`. Setting readers up: docs/readers.md.
"""
from __future__ import annotations

import errno
import logging
import os
import select
import sys
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import BinaryIO

import serial

from hardware import keymaps
from hardware.inputs import InputThread, SourceReason, SourceState
from scanner.base.backoff import Backoff
from scanner.base.safetext import escape
from scanner.cards import formats
from scanner.cards.base45 import ALPHABET as BASE45_ALPHABET
from scanner.cards.verifier import MAX_TEXT

log = logging.getLogger(__name__)

MAX_LINE_BYTES = MAX_TEXT * 4
"""A serial line longer than this many bytes (4 bytes per character at most in UTF-8) is discarded."""

BASE45_PREFIXES = formats.schemes(base45_body=True)
"""Card formats whose body is base45 (checked character by character and for its length)."""
OTHER_PREFIXES = formats.schemes(base45_body=False)
"""The other card formats (SMART Health Cards: digits)."""

_BASE45 = frozenset(BASE45_ALPHABET)
_TERMINATORS = {"auto": None, "cr": "\r", "lf": "\n", "crlf": "\r\n", "enter": "\n", "tab": "\t"}


def parse_terminator(value: str) -> str | None:
    """A config's terminator/suffix: a name (auto, cr, lf, crlf, enter, tab) or literal text; None = CR or LF."""
    if value in _TERMINATORS:
        return _TERMINATORS[value]
    if not value:
        raise ValueError("terminator must not be empty (use auto, cr, lf, crlf, enter, tab or literal text)")
    return value.encode("utf-8").decode("unicode_escape") if "\\" in value else value


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a read was discarded: a SourceReason code, a hint for the technician, a content-free sample."""

    code: str
    hint: str
    sample: str


def _sample(text: str, bad: str = "") -> str:
    """Length, the first 4 characters and the unexpected ones, escaped: never the read itself."""
    head = escape(text[:4])
    out = f"{len(text)} chars, starts {head!r}"
    if bad:
        out += f", unexpected {escape(''.join(sorted(set(bad)))[:16])!r}"
    return out


@cache
def _mangled_prefixes() -> dict[str, tuple[str, str]]:
    """How each card prefix reads when the reader's layout and the configured one differ:
    text → (reader, configured)."""
    out: dict[str, tuple[str, str]] = {}
    for prefix in BASE45_PREFIXES + OTHER_PREFIXES:
        for sent in keymaps.LAYOUTS:
            events = keymaps.keystrokes(prefix, sent)[:-2]  # without the final Enter
            for read_as in keymaps.LAYOUTS:
                if read_as == sent:
                    continue
                t = keymaps.KeyTranslator(read_as)
                got = "".join(t.feed(c, v) for c, v in events)
                if got and got != prefix:
                    out.setdefault(got, (sent, read_as))
    return out


def check_read(text: str, *, keyboard_layout: str | None = None, cards: bool = True) -> Problem | None:
    """None if ``text`` may be a code; else why it must be discarded (see the module docstring).

    ``keyboard_layout`` is the configured layout of a keyboard-wedge reader (the hints differ);
    ``cards=False`` checks only length and binary content (stdin: a damaged card text typed or
    piped in gets its `malformed` verdict instead).
    """
    if len(text) > MAX_TEXT:
        return Problem(SourceReason.TOO_LONG,
                       f"longer than a QR code can hold ({MAX_TEXT}): the reader's suffix (Enter/CR) is "
                       "missing or not configured, so codes run together", _sample(text))
    bad = "".join(ch for ch in text if ch != "\t" and (unicodedata.category(ch) in ("Cc", "Cs") or ch == "\ufffd"))
    if bad:
        return Problem(SourceReason.GARBAGE,
                       "binary or control characters: wrong baud rate, or a prefix/suffix or framing "
                       "the reader adds that is not configured", _sample(text, bad))
    if not cards:
        return None
    hid = keyboard_layout is not None
    for prefix in BASE45_PREFIXES:
        if text.startswith(prefix):
            body = text[len(prefix):]
            bad = "".join(ch for ch in body if ch not in _BASE45)
            if bad:
                hint = (f"characters outside the card alphabet: the reader's keyboard layout differs from "
                        f"the configured one ({keyboard_layout}), or Caps Lock is on" if hid else
                        "characters outside the card alphabet: the reader changes the text (character set, "
                        "case conversion)")
                return Problem(SourceReason.GARBLED_READ, hint, _sample(text, bad))
            if len(body) % 3 == 1:
                hint = ("a character was lost: the reader types faster than the host reads; raise its "
                        "inter-character delay, or switch it to serial (USB CDC) mode" if hid else
                        "a character was lost on the line: check the baud rate and cable")
                return Problem(SourceReason.GARBLED_READ, hint, _sample(text))
            return None
    for prefix in BASE45_PREFIXES + OTHER_PREFIXES:
        if text[:len(prefix)].upper() == prefix.upper() and not text.startswith(prefix):
            return Problem(SourceReason.GARBLED_READ,
                           "the card prefix arrived in the wrong case: Caps Lock or the reader's case "
                           "conversion is on", _sample(text))
    for mangled, (sent, read_as) in _mangled_prefixes().items():
        if text.startswith(mangled):
            hint = (f"this reads like a card typed for the {sent.upper()} keyboard layout and read as "
                    f"{read_as.upper()}: set the reader's layout, or configure layout = \"{sent}\"")
            if not hid or read_as == keyboard_layout:
                return Problem(SourceReason.GARBLED_READ, hint, _sample(text))
    return None


class LineAssembler:
    """Characters in, complete reads out: ends a read at the terminator, drops over-long and stale ones.

    ``terminator`` None means CR or LF (a CR LF pair ends one read; empty reads are skipped).
    ``timeout``: a read with no new character for this many seconds is dropped (half-typed).
    Results are (text, None) for a read and (partial, Problem) for a dropped one.
    """

    def __init__(self, terminator: str | None = None, *, timeout: float = 0.5, max_len: int = MAX_TEXT) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0 seconds")
        self.terminator = terminator
        self.timeout = timeout
        self.max_len = max_len
        self._buf: list[str] = []
        self._size = 0
        self._last = 0.0
        self._discarding = False

    def feed(self, chars: str, now: float) -> list[tuple[str, Problem | None]]:
        out: list[tuple[str, Problem | None]] = []
        if not chars:
            return out
        stale = self.expire(now)
        if stale is not None:
            out.append(stale)
        self._last = now
        term = self.terminator
        for ch in chars:
            if term is None and ch in "\r\n":
                self._finish(out)
                continue
            self._buf.append(ch)
            self._size += 1
            if term is not None and self._size >= len(term) and "".join(self._buf[-len(term):]) == term:
                del self._buf[-len(term):]
                self._size -= len(term)
                self._finish(out)
                continue
            if self._size > self.max_len + (len(term) if term else 0):
                if not self._discarding:
                    text = "".join(self._buf)
                    out.append((text, check_read(text) or Problem(SourceReason.TOO_LONG, "too long", "")))
                self._discarding = True
                self._buf.clear()
                self._size = 0
        return out

    def _finish(self, out: list) -> None:
        text = "".join(self._buf)
        self._buf.clear()
        self._size = 0
        if self._discarding:
            self._discarding = False
            return
        if text:
            out.append((text, None))

    def expire(self, now: float) -> tuple[str, Problem] | None:
        """The half-typed read, dropped, if nothing arrived for ``timeout`` seconds; else None."""
        if (self._buf or self._discarding) and now - self._last >= self.timeout:
            text = "".join(self._buf)
            self._buf.clear()
            self._size = 0
            was_discarding, self._discarding = self._discarding, False
            if was_discarding:
                return None
            return text, Problem(SourceReason.TIMEOUT,
                                 "a read without its terminator (Enter/CR): the reader's suffix is off or "
                                 "not the configured one, or the code was cut short", _sample(text))
        return None

    @property
    def pending(self) -> bool:
        return bool(self._buf) or self._discarding


class ReaderInput(InputThread):
    """Common part of the readers: check each read, then hand it on or report it."""

    layout_for_hints: str | None = None
    card_checks = True

    def _deliver(self, text: str, problem: Problem | None = None) -> None:
        problem = problem or check_read(text, keyboard_layout=self.layout_for_hints, cards=self.card_checks)
        if problem is not None:
            self._report(problem.code, problem.hint, problem.sample)
        else:
            self._emit(text)


# ---------------------------------------------------------------- serial / USB CDC-ACM

@dataclass(frozen=True, slots=True)
class SerialReaderConfig:
    """A serial or USB CDC-ACM reader: ``port`` (best a /dev/serial/by-id/ path), ``baud``, ``terminator``.

    ``terminator``: auto (CR or LF), cr, lf, crlf, or literal text; ``timeout``: seconds after
    which a read missing its terminator is dropped.
    """

    port: str
    name: str | None = None
    baud: int = 9600
    terminator: str = "auto"
    timeout: float = 0.5
    direction: str | None = None

    def __post_init__(self) -> None:
        if not self.port.strip():
            raise ValueError("serial port must not be empty")
        if not 50 <= self.baud <= 4_000_000:
            raise ValueError(f"baud rate {self.baud!r} out of range")
        if not 0 < self.timeout <= 60:
            raise ValueError("timeout must be between 0 and 60 seconds")
        parse_terminator(self.terminator)

    @property
    def source_id(self) -> str:
        return self.name or self.port


def _serial_error_code(exc: BaseException) -> str:
    err = getattr(exc, "errno", None)
    if err in (errno.ENOENT, errno.ENODEV, errno.ENXIO, errno.EIO):
        return SourceReason.DEVICE_MISSING
    if err in (errno.EACCES, errno.EPERM):
        return SourceReason.PERMISSION_DENIED
    if err == errno.EBUSY or "exclusively" in str(exc) or "lock" in str(exc).lower():
        return SourceReason.DEVICE_BUSY
    return SourceReason.DEVICE_ERROR


class SerialReader(ReaderInput):
    """A line-terminated serial reader; reopened with backoff when it disappears (unplugged)."""

    kind = "serial"

    def __init__(self, config: SerialReaderConfig, *, backoff: Backoff | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(config.source_id, direction=config.direction, clock=clock)
        self.config = config
        self._backoff = backoff or Backoff()

    def run(self) -> None:
        cfg = self.config
        while not self._stop.is_set():
            try:
                port = serial.Serial(cfg.port, cfg.baud, timeout=0.1, exclusive=True)
            except (serial.SerialException, OSError, ValueError) as exc:
                self.status.set(SourceState.REOPENING, _serial_error_code(exc), _strip_port(str(exc), cfg.port))
                if not self._sleep(self._backoff.next()):
                    return
                continue
            self.status.set(SourceState.OK)
            self._backoff.reset()
            try:
                self._read(port)
            except (serial.SerialException, OSError) as exc:
                self.status.set(SourceState.REOPENING, _serial_error_code(exc) if getattr(exc, "errno", None)
                                else SourceReason.DEVICE_MISSING, _strip_port(str(exc), cfg.port))
                if not self._sleep(self._backoff.next()):
                    return
            finally:
                port.close()

    def _read(self, port) -> None:
        cfg = self.config
        terminator = parse_terminator(cfg.terminator)
        lines = ByteLines(terminator, timeout=cfg.timeout)
        while not self._stop.is_set():
            data = port.read(max(1, port.in_waiting))
            now = time.monotonic()
            if data:
                for text, problem in lines.feed(data, now):
                    self._deliver(text, problem)
            else:
                stale = lines.expire(now)
                if stale is not None:
                    self._deliver(*stale)


def _strip_port(message: str, port: str) -> str:
    return message.replace(port, "port").strip() or "error"


class ByteLines:
    """Bytes in (serial, stdin), checked text lines out: UTF-8 strictly, lines bounded before decoding."""

    def __init__(self, terminator: str | None, *, timeout: float = 0.5) -> None:
        self._lines = LineAssembler(terminator, timeout=timeout, max_len=MAX_LINE_BYTES)
        self._pending = b""

    def feed(self, data: bytes, now: float) -> list[tuple[str, Problem | None]]:
        # bytes are mapped 1:1 onto code points so the assembler bounds bytes; decoded per line below
        out = []
        for raw, problem in self._lines.feed(data.decode("latin-1"), now):
            out.append(self._decode(raw, problem))
        return out

    def expire(self, now: float) -> tuple[str, Problem] | None:
        stale = self._lines.expire(now)
        if stale is None:
            return None
        text, problem = self._decode(*stale)
        return text, problem or Problem(SourceReason.TIMEOUT, "", "")

    @staticmethod
    def _decode(raw: str, problem: Problem | None) -> tuple[str, Problem | None]:
        data = raw.encode("latin-1")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("utf-8", "replace")
            return text, problem or Problem(SourceReason.GARBAGE,
                                            "bytes that are not UTF-8 text: wrong baud rate or character set",
                                            _sample(text, "\ufffd"))
        if problem is not None and problem.code == SourceReason.TOO_LONG:
            problem = Problem(problem.code, problem.hint, f"{len(data)}+ bytes")
        return text, problem


# ---------------------------------------------------------------- stdin

class StdinReader(ReaderInput):
    """One code per line from a byte stream (stdin by default): the demo's and scripts' reader."""

    kind = "stdin"
    finite = True
    card_checks = False

    def __init__(self, stream: BinaryIO | None = None, *, name: str = "stdin", direction: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(name, direction=direction, clock=clock)
        self._stream = stream if stream is not None else sys.stdin.buffer

    def run(self) -> None:
        self.status.set(SourceState.OK)
        lines = ByteLines(None, timeout=3600.0)
        try:
            fd = self._stream.fileno()
        except (OSError, AttributeError, ValueError):
            fd = None
        while not self._stop.is_set():
            if fd is not None:
                ready, _, _ = select.select([fd], [], [], 0.1)
                if not ready:
                    continue
                data = os.read(fd, 65536)
            else:
                data = self._stream.read(65536)
            if not data:
                break
            for text, problem in lines.feed(data, time.monotonic()):
                self._deliver(text, problem)
        else:
            return
        leftover = lines.expire(float("inf"))  # a last line without its newline still counts
        if leftover is not None:
            text, problem = leftover
            self._deliver(text, None if problem.code == SourceReason.TIMEOUT else problem)
        self.status.set(SourceState.FINISHED, SourceReason.END_OF_STREAM)
