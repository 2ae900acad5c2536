"""Base45 (RFC 9285), the QR alphanumeric encoding used by CK1 and EU DCC cards.

Decoding is on the hot path of every scan, so it works on all 3-character groups at once: the
digit values become one big integer with a 24-bit lane a group, and a few whole-integer operations
compute every group's value (no Python loop, and cheaper than NumPy for QR-sized inputs).
"""
from __future__ import annotations

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"

_INVALID = 255
_table = bytearray([_INVALID] * 256)
for _i, _c in enumerate(ALPHABET):
    _table[ord(_c)] = _i
_TABLE = bytes(_table)
_MASKS: dict[int, tuple[int, int]] = {}


class Base45Error(ValueError):
    """Text that is not valid base45."""


def encode(data: bytes) -> str:
    """Encode bytes as base45 text (RFC 9285 section 4)."""
    out = []
    a = ALPHABET
    for i in range(0, len(data) - 1, 2):
        n = data[i] * 256 + data[i + 1]
        n, c = divmod(n, 45)
        e, d = divmod(n, 45)
        out.append(a[c] + a[d] + a[e])
    if len(data) % 2:
        e, c = divmod(data[-1], 45)
        out.append(a[c] + a[e])
    return "".join(out)


def decode(text: str) -> bytes:
    """Decode base45 text; raise Base45Error for a bad character, length or value."""
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise Base45Error("character outside the base45 alphabet") from None
    values = raw.translate(_TABLE)
    if _INVALID in values:
        raise Base45Error("character outside the base45 alphabet")
    full, rest = divmod(len(values), 3)
    if rest == 1:
        raise Base45Error("length is 1 more than a multiple of 3")
    if full:
        low, high = _masks(full)
        # Lane i holds the digits c, d, e of group i (c in the top byte); its value is
        # c + 45 d + 2025 e <= 91124 < 2**24, so lanes never carry into each other.
        x = int.from_bytes(values[:3 * full] if rest else values, "big")
        n = (x >> 16 & low) + 45 * (x >> 8 & low) + 2025 * (x & low)
        if n & high:
            raise Base45Error("a 3-character group is over 65535")
        out = bytearray(n.to_bytes(3 * full, "big"))
        del out[::3]  # the top byte of every lane, now known to be zero
    else:
        out = bytearray()
    if rest == 2:
        n = values[-2] + 45 * values[-1]
        if n > 0xFF:
            raise Base45Error("the final 2-character group is over 255")
        out.append(n)
    return bytes(out)


def _masks(lanes: int) -> tuple[int, int]:
    """(0x0000FF, 0xFF0000) repeated in every 24-bit lane of a ``lanes``-lane integer."""
    masks = _MASKS.get(lanes)
    if masks is None:
        ones = int.from_bytes(b"\x00\x00\x01" * lanes, "big")
        masks = (ones * 0xFF, ones * 0xFF0000)
        if len(_MASKS) >= 64:
            _MASKS.clear()
        _MASKS[lanes] = masks
    return masks
