"""Keyboard-wedge readers: key maps, translation and timeouts on synthetic evdev event streams, uinput."""
from __future__ import annotations

import pytest
from support.inputs import Collector
from support.waiting import WAIT

from hardware import keymaps
from hardware.inputs import SourceReason, SourceState
from hardware.keymaps import KeyTranslator, keystrokes
from hardware.readers import check_read
from hardware.readers_hid import HidReader, HidReaderConfig, KeyEvents, uinput_available
from scanner.base.backoff import Backoff
from scanner.cards.base45 import ALPHABET

evdev = pytest.importorskip("evdev")
ecodes = evdev.ecodes

CARD_CHARS = "CK1:HC1:shc:/" + ALPHABET
CARD = "CK1:" + ("NCFOXN*TS0BI$ZD4N9:9S6RCVN5+O30K3/XIV0W23NTDEXWK G2EP4J0BGJLF%-" * 5)[:296]  # 300 characters


def stream(events: list[tuple[int, int]], start: float = 1000.0, gap: float = 0.002) -> list:
    """Real evdev.InputEvent objects for (code, value) key events, with SYN/MSC events between, as a reader sends."""
    out, t = [], start
    for code, value in events:
        sec, usec = int(t), int(round((t % 1) * 1e6))
        out.append(evdev.InputEvent(sec, usec, ecodes.EV_MSC, ecodes.MSC_SCAN, 0x70000 + code))
        out.append(evdev.InputEvent(sec, usec, ecodes.EV_KEY, code, value))
        out.append(evdev.InputEvent(sec, usec, ecodes.EV_SYN, ecodes.SYN_REPORT, 0))
        t += gap
    return out


def typed(text: str, reader_layout: str = "us", host_layout: str = "us", **kw) -> list:
    keys = KeyEvents(host_layout)
    return keys.feed(stream(keystrokes(text, reader_layout, **kw)))


def test_key_codes_match_the_kernel():
    for name in ("KEY_ESC", "KEY_BACKSPACE", "KEY_TAB", "KEY_ENTER", "KEY_LEFTCTRL", "KEY_LEFTSHIFT",
                 "KEY_RIGHTSHIFT", "KEY_LEFTALT", "KEY_SPACE", "KEY_CAPSLOCK", "KEY_NUMLOCK", "KEY_RIGHTCTRL",
                 "KEY_RIGHTALT", "KEY_102ND", "KEY_KPASTERISK", "KEY_KPMINUS", "KEY_KPPLUS", "KEY_KPDOT",
                 "KEY_KPENTER", "KEY_KPSLASH", "KEY_KPEQUAL", "KEY_KPCOMMA"):
        assert getattr(keymaps, name) == getattr(ecodes, name), name
    for code, digit in keymaps.KEYPAD_DIGITS.items():
        assert code == getattr(ecodes, f"KEY_KP{digit}")
    rows = ("`1234567890-=", "qwertyuiop[]\\", "asdfghjkl;'", " zxcvbnm,./")
    names = {"`": "GRAVE", "-": "MINUS", "=": "EQUAL", "[": "LEFTBRACE", "]": "RIGHTBRACE", "\\": "BACKSLASH",
             ";": "SEMICOLON", "'": "APOSTROPHE", ",": "COMMA", ".": "DOT", "/": "SLASH", " ": "102ND"}
    for codes, chars in zip(keymaps._ROW_CODES, rows):
        for code, ch in zip(codes, chars):
            assert code == getattr(ecodes, "KEY_" + names.get(ch, ch.upper())), ch


@pytest.mark.parametrize("layout", sorted(keymaps.LAYOUTS))
@pytest.mark.parametrize("keypad", [False, True])
def test_every_card_character_survives_the_hid_path(layout, keypad):
    assert typed(CARD_CHARS, layout, layout, keypad=keypad) == [(CARD_CHARS, None)]


def test_a_300_character_card_types_through():
    out = typed(CARD)
    assert out == [(CARD, None)]
    assert check_read(CARD, keyboard_layout="us") is None


def test_shift_4_and_keypad_slash():
    e = ecodes
    keys = KeyEvents("us")
    events = [(e.KEY_LEFTSHIFT, 1), (e.KEY_4, 1), (e.KEY_4, 0), (e.KEY_LEFTSHIFT, 0),  # $
              (e.KEY_RIGHTSHIFT, 1), (e.KEY_5, 1), (e.KEY_5, 0), (e.KEY_RIGHTSHIFT, 0),  # %
              (e.KEY_KPSLASH, 1), (e.KEY_KPSLASH, 0), (e.KEY_KPASTERISK, 1), (e.KEY_KPASTERISK, 0),
              (e.KEY_KPMINUS, 1), (e.KEY_KPPLUS, 1), (e.KEY_KPDOT, 1), (e.KEY_KP7, 1),
              (e.KEY_KPENTER, 1), (e.KEY_KPENTER, 0)]
    assert keys.feed(stream(events)) == [("$%/*-+.7", None)]


def test_caps_lock_from_the_reader_and_autorepeat_ignored():
    e = ecodes
    events = [(e.KEY_CAPSLOCK, 1), (e.KEY_CAPSLOCK, 0), (e.KEY_C, 1), (e.KEY_C, 2), (e.KEY_C, 0),
              (e.KEY_LEFTSHIFT, 1), (e.KEY_K, 1), (e.KEY_K, 0), (e.KEY_LEFTSHIFT, 0),
              (e.KEY_CAPSLOCK, 1), (e.KEY_CAPSLOCK, 0), (e.KEY_1, 1), (e.KEY_ENTER, 1)]
    assert KeyEvents("us").feed(stream(events)) == [("Ck1", None)]


def test_alt_keypad_codes_type_any_character():
    e = ecodes
    events = [(e.KEY_LEFTALT, 1), (e.KEY_KP3, 1), (e.KEY_KP3, 0), (e.KEY_KP6, 1), (e.KEY_KP6, 0),
              (e.KEY_LEFTALT, 0),  # 36 = '$' (code page 437)
              (e.KEY_LEFTALT, 1), (e.KEY_KP0, 1), (e.KEY_KP1, 1), (e.KEY_KP2, 1), (e.KEY_KP8, 1),
              (e.KEY_LEFTALT, 0),  # 0128 = '€' (Windows-1252)
              (e.KEY_ENTER, 1)]
    assert KeyEvents("us").feed(stream(events)) == [("$€", None)]
    assert typed("Nguyễn €", "us") == [("Nguyễn €", None)]  # what a US layout cannot type goes as Alt codes


def test_suffix_other_than_enter():
    keys = KeyEvents("us", suffix="tab")
    assert keys.feed(stream(keystrokes("CK1:ABC\tCK1:DEF\t", "us")[:-2])) == [("CK1:ABC", None), ("CK1:DEF", None)]


def test_half_typed_code_times_out_on_the_next_key():
    keys = KeyEvents("us", timeout=0.5)
    first = stream(keystrokes("CK1:HALF", "us")[:-2], start=1000.0)
    assert keys.feed(first) == []
    out = keys.feed(stream(keystrokes("CK1:ABC", "us"), start=1002.0))
    assert [(t, p.code if p else None) for t, p in out] == [("CK1:HALF", SourceReason.TIMEOUT), ("CK1:ABC", None)]


def test_half_typed_code_expires_while_idle():
    keys = KeyEvents("us", timeout=0.5)
    keys.feed(stream(keystrokes("CK1:HA", "us")[:-2], start=1000.0))
    assert keys.expire(1000.2) is None
    text, problem = keys.expire(1001.0)
    assert text == "CK1:HA" and problem.code == SourceReason.TIMEOUT and "terminator" in problem.hint


@pytest.mark.parametrize("reader, configured", [("de", "us"), ("us", "de"), ("fr", "us"), ("us", "fr"), ("uk", "de")])
def test_wrong_layout_is_a_garbled_read_with_a_hint(reader, configured):
    out = typed(CARD, reader, configured)
    assert len(out) == 1
    text, _ = out[0]
    assert text != CARD
    problem = check_read(text, keyboard_layout=configured)
    assert problem is not None and problem.code == SourceReason.GARBLED_READ
    assert "layout" in problem.hint


def test_us_and_uk_agree_on_every_card_character():
    """A UK-layout reader read as US (or back) still gives the card: no card character differs."""
    assert typed(CARD, "uk", "us") == [(CARD, None)]


def test_unknown_layout():
    with pytest.raises(ValueError, match="unknown keyboard layout"):
        KeyTranslator("dvorak")
    with pytest.raises(ValueError):
        HidReaderConfig("/dev/input/event3", layout="xx")


def test_vendor_product_config():
    assert HidReaderConfig("0C2E:0b61").vendor_product == (0x0C2E, 0x0B61)
    assert HidReaderConfig("/dev/input/by-id/usb-reader-event-kbd").vendor_product is None


@pytest.mark.parametrize("device", ["/dev/input/by-id/usb-Nope_Reader-event-kbd", "ffff:fffe"])
def test_missing_reader_is_retried_and_reported(device):
    reader = HidReader(HidReaderConfig(device), backoff=Backoff(0.01, 2, 0.05))
    reader.start(Collector().submit, Collector().report)
    try:
        assert reader.status.wait_for(lambda h: h.state is SourceState.REOPENING and h.reopens == 1, WAIT)
        assert reader.health().reason in (SourceReason.DEVICE_MISSING, SourceReason.PERMISSION_DENIED)
    finally:
        reader.stop()
        assert reader.join(WAIT)


def test_real_uinput_keyboard():
    """A virtual keyboard through the kernel: grabbed, translated, unplugged (closed) and plugged again."""
    ok, why = uinput_available()
    if not ok:
        pytest.skip(f"no uinput on this machine: {why}")
    caps = {ecodes.EV_KEY: sorted({c for c, _ in keystrokes(CARD_CHARS, "us", keypad=True)})}

    def plug():  # udev may still be making the node: the reader retries with backoff anyway
        return evdev.UInput(caps, name="checkpoint-test-reader", vendor=0x1234, product=0x5678)

    ui = plug()
    reader = HidReader(HidReaderConfig("1234:5678"), backoff=Backoff(0.02, 2, 0.2))
    got = Collector()
    reader.start(got.submit, got.report)
    try:
        assert reader.status.wait_for(lambda h: h.state is SourceState.OK, WAIT)
        for code, value in keystrokes(CARD, "us"):
            ui.write(ecodes.EV_KEY, code, value)
            ui.syn()
        assert got.wait(lambda c: CARD in c.texts())
        ui.close()  # unplugged
        assert reader.status.wait_for(lambda h: h.state is SourceState.REOPENING, WAIT)
        ui = plug()
        assert reader.status.wait_for(lambda h: h.state is SourceState.OK and h.reopens >= 1, WAIT)
    finally:
        reader.stop()
        reader.join(WAIT)
        ui.close()
