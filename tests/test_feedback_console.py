"""hardware.console_feedback: the live line (in place on a real pty, plain lines on a pipe), and the
console device with the same patterns, reasons, simulated gate and passage."""
from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import termios
import threading

import pytest
from support.waiting import WAIT

from hardware.console_feedback import ConsoleFeedback, ConsoleLine, render
from hardware.feedback import OFF, Callbacks, DeviceState, Outputs, Patterns, Timings
from scanner.base.errors import Reason
from scanner.cards.verdict import Decision, Verdict, reject

T = Timings(verdict_s=0.05, beep_s=0.01, beep_gap_s=0.01, fast_blink_s=0.01, slow_blink_s=0.02, chirp_s=0.01)
ACCEPT = Verdict(Decision.ACCEPT, Reason.OK)


def test_render_english_and_vietnamese():
    frame = Outputs(green=1.0, buzzer_hz=1760.0, gate_open=True)
    assert render(frame, "accept", direction="in", lang="en") == \
        "● green  ○ red  ○ amber  ♪ beep  ⇧ relay   accept · in"
    assert render(OFF, "idle", lang="vi") == "○ xanh  ○ đỏ  ○ vàng  · bíp  · cổng   sẵn sàng"
    assert render(Outputs(red=1.0), "reject", detail="Card has expired", direction="out", lang="en") == \
        "○ green  ● red  ○ amber  · beep  · relay   reject (Card has expired) · out"


def test_render_colour_marks_only_lit_leds():
    line = render(Outputs(amber=1.0), "error", lang="en", color=True)
    assert "\x1b[33m●\x1b[0m amber" in line and "○ green" in line and line.count("\x1b[") == 2


def read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_live_line_rewrites_in_place_on_a_real_tty(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    master, slave = pty.openpty()
    try:
        with open(slave, "w", encoding="utf-8", closefd=False) as stream:
            line = ConsoleLine(stream, lang="en")
            assert line.tty and line.color
            line(Outputs(green=1.0), "accept")
            line(OFF, "idle")
            line(OFF, "idle")
            line.end()
        out = read_all(master).decode("utf-8")
    finally:
        os.close(master)
        os.close(slave)
    out = out.replace("\r\n", "\n")  # the pty's output processing turns \n into \r\n
    assert out.count("\r") == 3 and out.count("\x1b[K") == 3 and out.endswith("\n")
    assert "\x1b[32m●\x1b[0m green" in out and "ready" in out
    assert line.last == render(OFF, "idle", lang="en")


def test_on_a_narrow_terminal_the_live_line_never_wraps(monkeypatch):
    """A line wider than the terminal would wrap, and rewriting it in place would leave its first
    row behind, running into the next line: it is cut to the width instead."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 40, 0, 0))
    try:
        with open(slave, "w", encoding="utf-8", closefd=False) as stream:
            line = ConsoleLine(stream, lang="en")
            line(Outputs(red=1.0, buzzer_hz=440.0), "reject", detail="Card has expired", direction="out")
            line(OFF, "idle")
            line.end()
        out = read_all(master).decode("utf-8")
    finally:
        os.close(master)
        os.close(slave)
    shown = [re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", part) for part in out.replace("\r\n", "\n").split("\r") if part]
    assert len(shown) == 2 and all(len(s.rstrip("\n")) < 40 for s in shown), shown
    assert shown[0].startswith(render(Outputs(red=1.0, buzzer_hz=440.0), "reject", lang="en")[:20])


def test_no_color_is_respected_on_a_tty(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    master, slave = pty.openpty()
    try:
        with open(slave, "w", encoding="utf-8", closefd=False) as stream:
            assert ConsoleLine(stream).color is False
    finally:
        os.close(master)
        os.close(slave)


def test_plain_lines_one_per_pattern_on_a_pipe():
    out = io.StringIO()
    fb = ConsoleFeedback(Patterns.default(T), stream=out, lang="en")
    try:
        assert not fb.line.tty
        fb.set_state(DeviceState.ERROR)
        assert fb.wait_until(lambda: fb.line.last.startswith("○ green  ○ red  ○ amber"), WAIT)
        assert fb.wait_until(lambda: fb.line.last.startswith("○ green  ○ red  ● amber"), WAIT)
        assert fb.wait_until(lambda: fb.line.last.startswith("○ green  ○ red  ○ amber"), WAIT)
        fb.show(reject(Reason.EXPIRED, "expired at ..."))
        assert fb.wait_until(lambda: "reject" in fb.line.last, WAIT)
        assert fb.wait_until(lambda: "device error" in fb.line.last, WAIT)
        fb.set_state(DeviceState.OK)
        assert fb.wait_idle(WAIT)
    finally:
        fb.close()
    lines = out.getvalue().splitlines()
    assert [ln.split("   ")[1] for ln in lines] == [
        "ready · in", "device error · in", "reject (Card has expired) · in", "device error · in",
        "ready · in", "off · in"]


def test_console_feedback_simulates_gate_and_passage():
    passed: list[object] = []
    missed: list[object] = []
    out = io.StringIO()
    fb = ConsoleFeedback(Patterns.default(T), stream=out, lang="vi", gate_pulse_s=0.02, passage_timeout_s=60.0,
                         callbacks=Callbacks(on_passage=passed.append, on_no_passage=missed.append))
    try:
        fb.show(ACCEPT, entry_id=41)
        fb.show(ACCEPT, entry_id=42)
        assert fb.pending_passages == (41, 42)
        fb.passage()
        assert passed == [41] and fb.pending_passages == (42,)
        assert fb.wait_idle(WAIT)
    finally:
        fb.close()
    assert missed == []  # 42 was still waiting at close: left as granted, not reported
    assert "⇧ cổng   chấp nhận · vào" in out.getvalue()


def test_duplicate_shows_its_reason():
    out = io.StringIO()
    with ConsoleFeedback(Patterns.default(T), stream=out, lang="en") as fb:
        fb.show(reject(Reason.DUPLICATE, "again"))
        assert fb.wait_idle(WAIT)
    assert "● amber  ♪ beep  · relay   duplicate (Already scanned, not counted again) · in" in out.getvalue()


def test_a_broken_stream_is_a_fault_not_a_crash(caplog):
    class Broken(io.StringIO):
        fail = threading.Event()

        def write(self, text):
            if self.fail.is_set():
                raise BrokenPipeError(32, "Broken pipe")
            return super().write(text)

    out = Broken()
    fb = ConsoleFeedback(Patterns.default(T), stream=out, lang="en")
    try:
        assert fb.wait_idle(WAIT)
        Broken.fail.set()
        fb.show(ACCEPT)
        assert fb.wait_until(lambda: fb.fault is not None, WAIT)
        assert "BrokenPipeError" in fb.fault
        fb.show(ACCEPT)  # still returns at once, does nothing
    finally:
        fb.close()


@pytest.mark.parametrize("kw", [{"direction": "sideways"}, {"passage_timeout_s": 1.0}])
def test_console_feedback_checks_its_arguments(kw):
    with pytest.raises(ValueError):
        ConsoleFeedback(stream=io.StringIO(), **kw)
