"""Linux key codes → characters for USB keyboard-wedge QR readers, per keyboard layout.

A wedge reader "types" a code as key presses for the layout it is set to (US by default); the
appliance grabs the reader exclusively and translates the key codes itself, so the host's own
keyboard setting plays no part. Shift, Caps Lock, AltGr and the keypad are tracked, and Alt+keypad
codes (a reader's "Alt mode", which types any character whatever the layout) are understood.
`keystrokes` is the inverse: the key presses a reader would send, for the simulated reader and
the tests. Layouts, and which reader settings to choose: docs/readers.md.

Key codes are the kernel's (linux/input-event-codes.h), written out here so that this module
needs no evdev; tests/test_readers_hid.py checks them against evdev.ecodes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# linux/input-event-codes.h
KEY_ESC, KEY_BACKSPACE, KEY_TAB, KEY_ENTER = 1, 14, 15, 28
KEY_LEFTCTRL, KEY_LEFTSHIFT, KEY_RIGHTSHIFT, KEY_LEFTALT, KEY_SPACE, KEY_CAPSLOCK = 29, 42, 54, 56, 57, 58
KEY_NUMLOCK, KEY_RIGHTCTRL, KEY_RIGHTALT, KEY_102ND = 69, 97, 100, 86
KEY_KPASTERISK, KEY_KPMINUS, KEY_KPPLUS, KEY_KPDOT, KEY_KPENTER, KEY_KPSLASH = 55, 74, 78, 83, 96, 98
KEY_KPEQUAL, KEY_KPCOMMA = 117, 121
KEYPAD_DIGITS = {82: 0, 79: 1, 80: 2, 81: 3, 75: 4, 76: 5, 77: 6, 71: 7, 72: 8, 73: 9}  # KEY_KP0..KEY_KP9

# The main block, row by row, as kernel key codes (US key positions).
_ROW_CODES = (
    (41, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13),  # ` 1 2 ... 0 - =
    (16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 43),  # q w e r t y u i o p [ ] backslash
    (30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40),  # a s d f g h j k l ; '
    (86, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53),  # 102nd z x c v b n m , . /
)

ENTER = "\n"
"""What Enter and keypad Enter produce."""


def _layout(rows: tuple[tuple[str, str, str], ...]) -> dict[int, tuple[str, str, str]]:
    """Key code → (plain, shifted, AltGr) from one (plain, shifted, altgr) string triple per row.

    The strings hold one character per key of the row in _ROW_CODES; a space stands for "nothing"
    except on keys where the character *is* a space (there are none in the main block).
    """
    table: dict[int, tuple[str, str, str]] = {}
    for codes, (plain, shifted, altgr) in zip(_ROW_CODES, rows):
        if not (len(plain) == len(shifted) == len(altgr) == len(codes)):
            raise ValueError("layout row of the wrong length")
        for code, p, s, a in zip(codes, plain, shifted, altgr):
            table[code] = (p.strip(), s.strip(), a.strip())
    return table


_US = _layout((
    ("`1234567890-=", "~!@#$%^&*()_+", "             "),
    ("qwertyuiop[]\\", "QWERTYUIOP{}|", "             "),
    ("asdfghjkl;'", 'ASDFGHJKL:"', "           "),
    (" zxcvbnm,./", " ZXCVBNM<>?", "           "),
))
_UK = _layout((
    ("`1234567890-=", "¬!\"£$%^&*()_+", "¦   €        "),
    ("qwertyuiop[]#", "QWERTYUIOP{}~", "  é          "),
    ("asdfghjkl;'", "ASDFGHJKL:@", "á          "),
    ("\\zxcvbnm,./", "|ZXCVBNM<>?", "           "),
))
_DE = _layout((
    ("^1234567890ß´", "°!\"§$%&/()=?`", "  ²³   {[]}\\ "),
    ("qwertzuiopü+#", "QWERTZUIOPÜ*'", "@ €        ~ "),
    ("asdfghjklöä", "ASDFGHJKLÖÄ", "           "),
    ("<yxcvbnm,.-", ">YXCVBNM;:_", "|      µ   "),
))
_FR = _layout((
    ("²&é\"'(-è_çà)=", " 1234567890°+", "  ~#{[|`\\^@]}"),
    ("azertyuiop^$*", "AZERTYUIOP¨£µ", "  €        ¤ "),
    ("qsdfghjklmù", "QSDFGHJKLM%", "           "),
    ("<wxcvbn,;:!", ">WXCVBN?./§", "           "),
))

LAYOUTS: dict[str, dict[int, tuple[str, str, str]]] = {"us": _US, "uk": _UK, "de": _DE, "fr": _FR}
"""Layout name → main-block table. Vietnamese keyboards use the US layout (Telex is an input method)."""

_KEYPAD = {KEY_KPSLASH: "/", KEY_KPASTERISK: "*", KEY_KPMINUS: "-", KEY_KPPLUS: "+", KEY_KPEQUAL: "=",
           KEY_KPCOMMA: ","}
_KEYPAD_DOT = {"us": ".", "uk": ".", "de": ",", "fr": "."}
_SHIFTS = (KEY_LEFTSHIFT, KEY_RIGHTSHIFT)
_CTRLS = (KEY_LEFTCTRL, KEY_RIGHTCTRL)


def check_layout(layout: str) -> str:
    """The layout's canonical name; ValueError for one this module does not know."""
    key = layout.strip().lower()
    if key not in LAYOUTS:
        raise ValueError(f"unknown keyboard layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    return key


def _alt_code(digits: str) -> str:
    """The character of an Alt+keypad code: leading 0 → Windows-1252, else code page 437; above 255 → Unicode."""
    n = int(digits)
    if n > 0x10FFFF:
        return ""
    if n > 255:
        return chr(n)
    try:
        return bytes([n]).decode("cp1252" if digits.startswith("0") else "cp437")
    except UnicodeDecodeError:
        return ""


@dataclass
class KeyTranslator:
    """Turns one device's key events (code, value: 1 press, 0 release, 2 repeat) into text.

    State (modifiers, Caps Lock, Num Lock, a pending Alt code) belongs to one device; `reset` it
    when the device is reopened.
    """

    layout: str = "us"
    shift: set[int] = field(default_factory=set)
    ctrl: set[int] = field(default_factory=set)
    alt: bool = False
    altgr: bool = False
    caps: bool = False
    numlock: bool = True
    alt_digits: str = ""

    def __post_init__(self) -> None:
        self.layout = check_layout(self.layout)
        self._table = LAYOUTS[self.layout]

    def reset(self) -> None:
        self.shift.clear()
        self.ctrl.clear()
        self.alt = self.altgr = self.caps = False
        self.numlock = True
        self.alt_digits = ""

    def feed(self, code: int, value: int) -> str:
        """The text one key event produces ("" for modifiers, releases and unknown keys)."""
        if code in _SHIFTS:
            (self.shift.add if value else self.shift.discard)(code)
            return ""
        if code in _CTRLS:
            (self.ctrl.add if value else self.ctrl.discard)(code)
            return ""
        if code == KEY_LEFTALT:
            self.alt = value != 0
            if not self.alt and self.alt_digits:
                digits, self.alt_digits = self.alt_digits, ""
                return _alt_code(digits)
            return ""
        if code == KEY_RIGHTALT:
            self.altgr = value != 0
            return ""
        if value != 1:  # releases; auto-repeat is never a reader's intent
            return ""
        if code == KEY_CAPSLOCK:
            self.caps = not self.caps
            return ""
        if code == KEY_NUMLOCK:
            self.numlock = not self.numlock
            return ""
        if code in KEYPAD_DIGITS:
            if self.alt:
                self.alt_digits = (self.alt_digits + str(KEYPAD_DIGITS[code]))[-7:]
                return ""
            return str(KEYPAD_DIGITS[code]) if self.numlock else ""
        if code in (KEY_ENTER, KEY_KPENTER):
            return ENTER
        if code == KEY_TAB:
            return "\t"
        if code == KEY_SPACE:
            return " "
        if code in _KEYPAD:
            return _KEYPAD[code]
        if code == KEY_KPDOT:
            return _KEYPAD_DOT[self.layout] if self.numlock else ""
        chars = self._table.get(code)
        if chars is None:
            return ""
        plain, shifted, altgr = chars
        if self.altgr or (self.alt and self.ctrl):  # AltGr, or Ctrl+Alt as Windows treats it
            return altgr
        if self.ctrl:
            return chr(ord(plain.upper()) & 0x1F) if plain.isascii() and plain.isalpha() else ""
        upper = bool(self.shift)
        if self.caps and plain.isalpha():
            upper = not upper
        return shifted if upper else plain


def keystrokes(text: str, layout: str = "us", *, keypad: bool = False) -> list[tuple[int, int]]:
    """The (code, value) key events a reader set to ``layout`` sends to type ``text``, then Enter.

    ``keypad=True`` types digits and / * - + on the keypad, as some readers do. A character the
    layout cannot type is sent as an Alt+keypad code (cp1252 with a leading 0, else Unicode).
    """
    table = LAYOUTS[check_layout(layout)]
    reverse: dict[str, tuple[int, str]] = {}
    for code, (plain, shifted, altgr) in sorted(table.items()):
        for ch, mod in ((plain, ""), (shifted, "shift"), (altgr, "altgr")):
            if ch and ch not in reverse:
                reverse[ch] = (code, mod)
    keypad_keys = {v: k for k, v in _KEYPAD.items()}
    keypad_keys.update({str(d): c for c, d in KEYPAD_DIGITS.items()})
    events: list[tuple[int, int]] = []
    for ch in text:
        if ch == " ":
            events += [(KEY_SPACE, 1), (KEY_SPACE, 0)]
        elif ch == "\t":
            events += [(KEY_TAB, 1), (KEY_TAB, 0)]
        elif ch == "\n":
            events += [(KEY_ENTER, 1), (KEY_ENTER, 0)]
        elif keypad and ch in keypad_keys:
            events += [(keypad_keys[ch], 1), (keypad_keys[ch], 0)]
        elif ch in reverse:
            code, mod = reverse[ch]
            hold = {"shift": KEY_LEFTSHIFT, "altgr": KEY_RIGHTALT}.get(mod)
            if hold:
                events.append((hold, 1))
            events += [(code, 1), (code, 0)]
            if hold:
                events.append((hold, 0))
        else:
            try:
                digits = "0" + str(ch.encode("cp1252")[0])
            except UnicodeEncodeError:
                digits = str(ord(ch))
            events.append((KEY_LEFTALT, 1))
            for d in digits:
                kp = keypad_keys[d]
                events += [(kp, 1), (kp, 0)]
            events.append((KEY_LEFTALT, 0))
    events += [(KEY_ENTER, 1), (KEY_ENTER, 0)]
    return events
