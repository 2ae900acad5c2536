"""Base45 (RFC 9285): vectors, invalid input, and properties against a reference implementation."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scanner.cards import base45
from scanner.cards.base45 import ALPHABET, Base45Error

RFC_VECTORS = [
    (b"AB", "BB8"),
    (b"Hello!!", "%69 VD92EX0"),
    (b"base-45", "UJCLQE7W581"),
    (b"ietf!", "QED8WEX0"),
]


def reference_decode(text: str) -> bytes:
    """Straightforward RFC 9285 section 4.2 decoder, used as the oracle."""
    values = []
    for ch in text:
        idx = ALPHABET.find(ch)
        if idx < 0 or len(ch.encode("utf-8")) != 1:
            raise ValueError("bad char")
        values.append(idx)
    if len(values) % 3 == 1:
        raise ValueError("bad length")
    out = bytearray()
    for i in range(0, len(values), 3):
        chunk = values[i:i + 3]
        if len(chunk) == 3:
            n = chunk[0] + chunk[1] * 45 + chunk[2] * 45 * 45
            if n > 0xFFFF:
                raise ValueError("group too big")
            out += n.to_bytes(2, "big")
        else:
            n = chunk[0] + chunk[1] * 45
            if n > 0xFF:
                raise ValueError("pair too big")
            out.append(n)
    return bytes(out)


@pytest.mark.parametrize("raw, text", RFC_VECTORS)
def test_rfc9285_encode(raw, text):
    assert base45.encode(raw) == text


@pytest.mark.parametrize("raw, text", RFC_VECTORS)
def test_rfc9285_decode(raw, text):
    assert base45.decode(text) == raw


def test_alphabet_is_rfc9285_table():
    assert ALPHABET == "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
    assert len(ALPHABET) == 45


@pytest.mark.parametrize("raw, text", [
    (b"", ""),
    (b"\x00", "00"),
    (b"\xff", "U5"),  # 255 = 30 + 5*45
    (b"\x00\x00", "000"),
    (b"\xff\xff", "FGW"),  # 65535 = 15 + 16*45 + 32*2025
    (b"\x00\x00\x00", "00000"),
])
def test_edges_round_trip(raw, text):
    assert base45.encode(raw) == text
    assert base45.decode(text) == raw


@pytest.mark.parametrize("text", [
    "bb8",  # lowercase is not in the alphabet
    "BB8a",
    "BB!",
    "B\nB",
    "BB8\x00",
    "ÀB8",  # non-ASCII
    "\u0660\u0661",  # Arabic-Indic digits
    "A",  # length % 3 == 1
    "BB8A",
    "BB8BB8B",
    "GGW",  # 16 + 16*45 + 32*2025 = 65536 > 65535
    ":::",  # 44 + 44*45 + 44*2025 = 91124
    "BB8GGW",  # a bad group after a good one
    "V5",  # 31 + 5*45 = 256 > 255
    "::",  # last pair 2024 > 255
    "BB8::",
])
def test_invalid_rejected(text):
    with pytest.raises(Base45Error):
        base45.decode(text)


def test_base45error_is_valueerror():
    assert issubclass(Base45Error, ValueError)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_round_trip(raw):
    text = base45.encode(raw)
    assert set(text) <= set(ALPHABET)
    assert len(text) == 3 * (len(raw) // 2) + 2 * (len(raw) % 2)
    assert base45.decode(text) == raw
    assert reference_decode(text) == raw


base45ish = st.text(alphabet=st.sampled_from(ALPHABET + "abc!\n\u00e9"), max_size=60)


@settings(max_examples=300, deadline=None)
@given(st.one_of(base45ish, st.text(max_size=30), st.text(alphabet=ALPHABET, max_size=60)))
def test_decode_matches_reference(text):
    """Either both reject, or both accept with the same bytes (and then encoding is canonical)."""
    try:
        expected = reference_decode(text)
    except ValueError:
        with pytest.raises(Base45Error):
            base45.decode(text)
        return
    assert base45.decode(text) == expected
    assert base45.encode(expected) == text
