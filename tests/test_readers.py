"""hardware.readers: serial readers on real pty pairs (unplug and replug), stdin, and the read checks."""
from __future__ import annotations

import io
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.inputs import Collector, Pty
from support.waiting import WAIT

from hardware.inputs import SourceReason, SourceState
from hardware.readers import (
    MAX_TEXT,
    ByteLines,
    LineAssembler,
    SerialReader,
    SerialReaderConfig,
    StdinReader,
    check_read,
    parse_terminator,
)
from scanner.base.backoff import Backoff
from scanner.cards import formats
from scanner.cards.base45 import ALPHABET

CARD = "CK1:" + "6BFOXN*TS0BI$ZD4N9:9S6RCVN5+O30K3/XIV0W23NTDEXWK G2EP4J0BGJLF%"  # 60 base45 characters


# ------------------------------------------------------------------ check_read: what may become a scan

def test_every_card_character_passes():
    text = "CK1:" + ALPHABET * 3
    assert len(text[4:]) % 3 == 0
    assert check_read(text) is None
    assert check_read(text, keyboard_layout="us") is None


def test_other_codes_pass_to_the_verifier():
    """A QR code that is not a card is the verifier's business (unsupported_format), not a garbled read."""
    for text in ("https://example.org/x?y=1", "WIFI:S:cafe;T:WPA;P:secret;;", "Nguyễn Văn An",
                 "shc:/5676290952432060346029"):
        assert check_read(text) is None


@pytest.mark.parametrize("text, code", [
    ("CK1:ABC$%;", SourceReason.GARBLED_READ),  # ';' is not base45: a layout mix-up
    ("CK1:abcd", SourceReason.GARBLED_READ),  # lower case: caps lock / case conversion
    ("ck1:ABCD", SourceReason.GARBLED_READ),
    ("CK1:ABCD", SourceReason.GARBLED_READ),  # 4 = 3n+1 characters: one was lost
    ("CK1>ABC", SourceReason.GARBLED_READ),  # a DE-layout reader read as US
    ("CK1ÖABC", SourceReason.GARBLED_READ),  # a US-layout reader read as DE (below: configured "de")
    ("CK1:AB\x00C", SourceReason.GARBAGE),
    ("\x1b[31mred", SourceReason.GARBAGE),
    ("text\ufffdbroken", SourceReason.GARBAGE),
    ("A" * (MAX_TEXT + 1), SourceReason.TOO_LONG),
])
def test_discarded_reads(text, code):
    problem = check_read(text, keyboard_layout="de" if "Ö" in text else "us")
    assert problem is not None and problem.code == code and problem.hint


def test_problem_sample_never_holds_the_read():
    secret = "CK1:" + "NGUYEN VAN AN " * 3 + ";"
    problem = check_read(secret)
    assert "NGUYEN" not in problem.sample and "CK1:" in problem.sample and "';'" in problem.sample


def test_layout_hint_names_the_layouts():
    problem = check_read("CK1>ABC", keyboard_layout="us")
    assert "DE" in problem.hint and 'layout = "de"' in problem.hint


def test_the_read_checks_know_every_registered_card_format():
    """The readers take the card prefixes from the formats' registry: each format's texts are
    recognised (wrong case, and a non-base45 body where the body is base45)."""
    registered = [formats.for_text(f"{p}0") for p in ("CK1:", "HC1:", "shc:/")]
    assert {f.scheme for f in registered} == set(formats.schemes())
    for fmt in registered:
        assert fmt.scheme.startswith(fmt.prefix)
        wrong_case = fmt.scheme.swapcase() + ("ABC" if fmt.base45_body else "56")
        assert check_read(wrong_case).code == SourceReason.GARBLED_READ
        assert (check_read(fmt.scheme + "AB;") is not None) == fmt.base45_body


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_check_read_never_raises(text):
    problem = check_read(text)
    assert problem is None or problem.code in {SourceReason.GARBLED_READ, SourceReason.GARBAGE, SourceReason.TOO_LONG}


# ------------------------------------------------------------------ line assembly

def test_lines_end_at_cr_or_lf_and_crlf_is_one_end():
    lines = LineAssembler(None)
    assert lines.feed("ONE\r\nTWO\nTH", 0.0) == [("ONE", None), ("TWO", None)]
    assert lines.feed("REE\r", 0.1) == [("THREE", None)]


def test_literal_terminator():
    lines = LineAssembler(parse_terminator("#END"))
    assert lines.feed("CK1:A B#ENDCK1:C#E", 0) == [("CK1:A B", None)]
    assert lines.feed("ND", 0) == [("CK1:C", None)]


def test_half_typed_read_times_out():
    lines = LineAssembler("\n", timeout=0.5)
    assert lines.feed("CK1:HALF", 10.0) == []
    assert lines.expire(10.4) is None
    text, problem = lines.expire(10.5)
    assert text == "CK1:HALF" and problem.code == SourceReason.TIMEOUT
    assert lines.feed("CK1:NEXT\n", 11.0) == [("CK1:NEXT", None)]


def test_stale_read_is_dropped_when_the_next_one_starts():
    lines = LineAssembler("\n", timeout=0.5)
    lines.feed("CK1:CUT", 0.0)
    out = lines.feed("CK1:FRESH\n", 5.0)
    assert [(t, p.code if p else None) for t, p in out] == [("CK1:CUT", SourceReason.TIMEOUT), ("CK1:FRESH", None)]


def test_over_long_line_is_discarded_once_and_reading_goes_on():
    lines = LineAssembler(None, max_len=10)
    out = lines.feed("X" * 25 + "\nOK\n", 0)
    assert [(p.code if p else None) for _, p in out] == [SourceReason.TOO_LONG, None]
    assert out[1][0] == "OK"


def test_byte_lines_reject_invalid_utf8_and_bound_bytes():
    lines = ByteLines(None)
    out = lines.feed(b"\xff\xfe\x00bin\r\nNguy\xe1\xbb\x85n\n", 0)
    assert out[0][1].code == SourceReason.GARBAGE
    assert out[1] == ("Nguyễn", None)


@pytest.mark.parametrize("name, value", [("auto", None), ("cr", "\r"), ("crlf", "\r\n"), ("tab", "\t"),
                                         ("enter", "\n"), ("\\r\\n", "\r\n"), ("#", "#")])
def test_parse_terminator(name, value):
    assert parse_terminator(name) == value


# ------------------------------------------------------------------ serial readers on pty pairs

def _link(path, target: str) -> None:
    """Point ``path`` at ``target`` atomically, as udev does with /dev/serial/by-id links."""
    tmp = path.with_name(path.name + ".new")
    os.symlink(target, tmp)
    os.replace(tmp, path)


@pytest.fixture
def serial_reader(tmp_path):
    pytest.importorskip("serial")
    pty = Pty()
    link = tmp_path / "usb-Reader_1234-if00"
    _link(link, pty.slave_path)
    reader = SerialReader(SerialReaderConfig(str(link), name="desk", baud=115200, direction="out"),
                          backoff=Backoff(0.01, 2, 0.1))
    got = Collector()
    reader.start(got.submit, got.report)
    assert reader.status.wait_for(lambda h: h.state is SourceState.OK, WAIT)
    yield reader, pty, link, got
    reader.stop()
    assert reader.join(WAIT)


def test_serial_reader_reads_lines(serial_reader):
    _reader, pty, _, got = serial_reader
    pty.send(CARD.encode() + b"\r\n")
    pty.send(b"CK1:SECOND\r")
    assert got.wait(lambda c: len(c.scans) == 2)
    assert got.texts() == [CARD, "CK1:SECOND"]
    scan = got.scans[0]
    assert (scan.source, scan.source_id, scan.direction) == ("serial", "desk", "out")


def test_serial_garbage_is_discarded_and_reading_goes_on(serial_reader):
    reader, pty, _, got = serial_reader
    pty.send(b"\x00\x01\xff\xfe\x80garbage\r\n")
    pty.send(b"A" * (4 * MAX_TEXT + 100) + b"\r\n")
    pty.send(b"CK1:AB;CD\r\n")
    pty.send(CARD.encode() + b"\n")
    assert got.wait(lambda c: c.texts() == [CARD] and len(c.issues) == 3)
    assert [i.code for i in got.issues] == [SourceReason.GARBAGE, SourceReason.TOO_LONG, SourceReason.GARBLED_READ]
    assert all(i.source == "serial" and i.hint for i in got.issues)
    assert reader.health().issues == 3 and reader.health().state is SourceState.OK


def test_serial_reader_unplugged_and_replugged(serial_reader):
    reader, pty, link, got = serial_reader
    pty.send(b"CK1:BEFORE\r\n")
    assert got.wait(lambda c: "CK1:BEFORE" in c.texts())
    pty.unplug()
    assert reader.status.wait_for(lambda h: h.state is SourceState.REOPENING
                                  and h.reason == SourceReason.DEVICE_MISSING, WAIT)
    again = Pty()  # plugged back in: a new tty, the by-id link follows it
    _link(link, again.slave_path)
    assert reader.status.wait_for(lambda h: h.state is SourceState.OK and h.reopens == 1, WAIT)
    again.send(b"CK1:AFTER\r\n")
    assert got.wait(lambda c: "CK1:AFTER" in c.texts())
    again.unplug()


def test_serial_port_missing_at_start(tmp_path):
    pytest.importorskip("serial")
    reader = SerialReader(SerialReaderConfig(str(tmp_path / "ttyACM7")), backoff=Backoff(0.01, 2, 0.05))
    reader.start(Collector().submit, Collector().report)
    try:
        assert reader.status.wait_for(lambda h: h.state is SourceState.REOPENING
                                      and h.reason == SourceReason.DEVICE_MISSING, WAIT)
        assert str(tmp_path) not in reader.health().detail
    finally:
        reader.stop()
        assert reader.join(WAIT)


def test_serial_half_line_times_out(serial_reader):
    _reader, pty, _, got = serial_reader
    pty.send(b"CK1:NO TERMINATOR")
    assert got.wait(lambda c: len(c.issues) == 1)
    assert got.issues[0].code == SourceReason.TIMEOUT and got.texts() == []


@pytest.mark.parametrize("kwargs", [dict(port=""), dict(port="/dev/ttyACM0", baud=1),
                                    dict(port="/dev/ttyACM0", terminator=""), dict(port="x", timeout=0)])
def test_bad_serial_config(kwargs):
    with pytest.raises(ValueError):
        SerialReaderConfig(**kwargs)


# ------------------------------------------------------------------ stdin

def test_stdin_reader_from_a_pipe():
    r, w = os.pipe()
    reader = StdinReader(os.fdopen(r, "rb", buffering=0))
    got = Collector()
    reader.start(got.submit, got.report)
    with os.fdopen(w, "wb") as fh:
        fh.write(b"CK1:ONE\r\n\nCK1:TWO\n")
        fh.flush()
        assert got.wait(lambda c: len(c.scans) == 2)
        fh.write(b"\x00\x00\nCK1:LAST WITHOUT NEWLINE")
    assert reader.join(WAIT)
    assert got.texts() == ["CK1:ONE", "CK1:TWO", "CK1:LAST WITHOUT NEWLINE"]
    assert [i.code for i in got.issues] == [SourceReason.GARBAGE]
    assert reader.health().state is SourceState.FINISHED
    assert got.scans[0].source == "stdin"


def test_stdin_reader_from_a_stream_without_fileno():
    """stdin checks only for binary and length: a damaged card piped in gets its `malformed` verdict."""
    reader = StdinReader(io.BytesIO(b"CK1:A\nCK1:B;\n"), name="script")
    got = Collector()
    reader.start(got.submit, got.report)
    assert reader.join(WAIT)
    assert got.texts() == ["CK1:A", "CK1:B;"] and got.scans[0].source_id == "script"


def test_stdin_reader_stops_on_request_while_waiting():
    r, w = os.pipe()
    reader = StdinReader(os.fdopen(r, "rb", buffering=0))
    reader.start(Collector().submit, Collector().report)
    assert reader.status.wait_for(lambda h: h.state is SourceState.OK, WAIT)
    reader.stop()
    assert reader.join(WAIT)
    os.close(w)
