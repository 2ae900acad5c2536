"""scanner.cards.revocation.RevocationSet: a sorted, bucket-indexed set of 16-byte card ids."""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scanner.cards.revocation import RevocationSet

A = bytes(range(16))
B = bytes(range(1, 17))
ZERO = b"\x00" * 16
ONES = b"\xff" * 16


def test_empty():
    s = RevocationSet()
    assert len(s) == 0
    assert not s
    assert list(s) == []
    assert A not in s
    assert ZERO not in s


def test_membership():
    s = RevocationSet([A, B])
    assert len(s) == 2
    assert A in s and B in s
    assert ZERO not in s
    assert A[:-1] + b"\x10" not in s  # differs in the last byte only
    assert b"\x01" + A[1:] not in s  # differs in the first byte only


def test_dedup_and_sorted_iteration():
    ids = [B, A, B, ZERO, ONES, A, ONES]
    s = RevocationSet(ids)
    assert len(s) == 4
    assert list(s) == sorted(set(ids))


def test_accepts_any_iterable():
    s = RevocationSet(x for x in (A, B))
    assert list(s) == [A, B]


@pytest.mark.parametrize("bad", [b"", A[:15], A + b"\x00", bytearray(A), "0" * 16, 5, None])
def test_constructor_rejects_non_16_byte_ids(bad):
    with pytest.raises(ValueError):
        RevocationSet([A, bad])


@pytest.mark.parametrize("probe", [A[:15], A + b"\x00", bytearray(A), memoryview(A), A.hex(), None, 0, b""])
def test_contains_other_types_is_false(probe):
    assert probe not in RevocationSet([A])


def test_edge_ids_all_zero_and_all_ff():
    s = RevocationSet([ZERO, ONES])
    assert ZERO in s and ONES in s
    assert b"\x00" * 15 + b"\x01" not in s
    assert b"\xff" * 15 + b"\xfe" not in s
    assert b"\xff\xff" + b"\x00" * 14 not in s  # same (last) bucket as ONES
    assert list(s) == [ZERO, ONES]


def test_only_last_bucket():
    ids = [b"\xff\xff" + bytes([i]) * 14 for i in range(0, 256, 17)]
    s = RevocationSet(ids)
    assert all(i in s for i in ids)
    assert b"\xff\xff" + b"\x01" * 14 not in s
    assert b"\xff\xfe" + b"\x00" * 14 not in s


def test_skewed_bucket_many_ids_same_prefix():
    prefix = b"\x12\x34"
    ids = [prefix + (i * 7919).to_bytes(14, "big") for i in range(5000)]
    s = RevocationSet(ids + [ZERO, ONES])
    assert len(s) == 5002
    for i in ids:
        assert i in s
    for i in range(5000):
        probe = prefix + (i * 7919 + 1).to_bytes(14, "big")
        assert probe not in s
    # neighbours of the crowded bucket
    assert b"\x12\x33" + b"\xff" * 14 not in s
    assert b"\x12\x35" + b"\x00" * 14 not in s
    assert list(s) == sorted(ids + [ZERO, ONES])


def test_ids_differing_only_after_first_8_bytes():
    # the sort uses two 64-bit halves: the low half must decide when the high halves are equal
    high = b"\xab" * 8
    ids = [high + (n).to_bytes(8, "big") for n in (2**64 - 1, 0, 2**63, 1, 2**63 - 1)]
    s = RevocationSet(ids)
    assert list(s) == sorted(ids)
    assert all(i in s for i in ids)
    assert high + (2).to_bytes(8, "big") not in s


def test_large_random_set():
    ids = [os.urandom(16) for _ in range(20_000)]
    s = RevocationSet(ids)
    assert len(s) == len(set(ids))
    assert all(i in s for i in ids[::97])
    assert sum(os.urandom(16) in s for _ in range(2000)) == 0
    assert list(s) == sorted(set(ids))


# --------------------------------------------------------------------------- from_hex

def test_from_hex():
    s = RevocationSet.from_hex([A.hex(), B.hex(), A.hex()])
    assert list(s) == [A, B]


def test_from_hex_empty():
    assert len(RevocationSet.from_hex([])) == 0


@pytest.mark.parametrize("bad", [
    "", "00" * 15, "00" * 17, "0" * 31, "0" * 33, "zz" * 16, "0x" + "00" * 15, "g" + "0" * 31,
    "é" * 32, 12, None, b"00" * 16, ["00" * 16],
])
def test_from_hex_rejects(bad):
    with pytest.raises(ValueError) as info:
        RevocationSet.from_hex([A.hex(), bad, B.hex()])
    assert "32 hex digits" in str(info.value)


def test_from_hex_names_the_bad_id():
    with pytest.raises(ValueError, match="xyz"):
        RevocationSet.from_hex([A.hex(), "xyz" + "0" * 29])


# (found while writing these tests: from_hex relied on bytes.fromhex, which skips ASCII whitespace,
# so 32-character strings with spaces passed and the ids were shifted or dropped)
@pytest.mark.parametrize("ids", [
    [" " * 32],  # was: an empty set
    ["  " + "ab" * 15] * 16,  # was: 15 misaligned ids
    ["  " + bytes([i]).hex() * 15 for i in range(16)],  # was: 15 ids, none of them the ones written
    [A.hex(), "\t" * 32, B.hex()],  # was: the blank entry dropped without a word
    [A.hex()[:16] + " " + A.hex()[17:]],
], ids=["spaces", "misaligned", "shifted", "blank-entry", "inner-space"])
def test_from_hex_rejects_whitespace(ids):
    with pytest.raises(ValueError):
        RevocationSet.from_hex(ids)


# --------------------------------------------------------------------------- from_blob

def test_from_blob():
    s = RevocationSet.from_blob(B + A + B + ZERO)
    assert list(s) == [ZERO, A, B]
    assert len(RevocationSet.from_blob(b"")) == 0
    with pytest.raises(ValueError):
        RevocationSet.from_blob(A + b"\x00")


def test_sorted_input_with_adjacent_duplicates_is_deduplicated():
    # sorted input may skip the sort; duplicates must still go
    s = RevocationSet.from_blob(ZERO + A + A + B + ONES + ONES)
    assert list(s) == [ZERO, A, B, ONES]
    assert len(s) == 4
    s = RevocationSet([ZERO, A, B])
    assert list(s) == [ZERO, A, B]


def test_match_straddling_two_records_is_not_membership():
    # ids in one bucket are searched with bytes.find: a hit across two records must not count
    p = b"\x77\x77"
    x, y, a = b"\x50" * 6, b"\x30" * 6, b"\x10" * 6
    probe = p + x + p + y  # the 16 bytes we look up
    r1 = p + a + probe[:8]  # ends with the first half of the probe
    r2 = probe[8:] + b"\xee" * 8  # starts with the second half
    assert r1 < r2 < probe
    without = RevocationSet([r1, r2])
    assert r1 + r2 == b"".join(without)
    assert (r1 + r2).find(probe) == 8  # the probe is there, across the record boundary
    assert probe not in without
    with_probe = RevocationSet([r1, r2, probe])
    assert probe in with_probe  # an aligned match after a misaligned one
    assert r1 in with_probe and r2 in with_probe
    # and the same in a crowded bucket (binary search first, then the scan)
    filler = [p + bytes([i]) + b"\x00" * 13 for i in range(0x60, 0xF0)]
    crowded = RevocationSet(filler + [r1, r2])
    assert probe not in crowded
    assert probe in RevocationSet(filler + [r1, r2, probe])


# --------------------------------------------------------------------------- union

def test_union():
    a = RevocationSet([A, ZERO])
    b = RevocationSet([B, ZERO])
    u = a.union(b)
    assert list(u) == sorted({A, B, ZERO})
    assert len(u) == 3
    # originals unchanged
    assert list(a) == sorted([A, ZERO])
    assert list(b) == sorted([B, ZERO])


def test_union_with_empty():
    a = RevocationSet([A])
    e = RevocationSet()
    assert list(a.union(e)) == [A]
    assert list(e.union(a)) == [A]
    assert list(e.union(e)) == []


# --------------------------------------------------------------------------- model test

prefixes = st.sampled_from([b"\x00\x00", b"\xff\xff", b"\x12\x34", b"\x12\x35", b"\x00\x01"])
card_ids = st.one_of(
    st.binary(min_size=16, max_size=16),
    st.builds(lambda p, rest: p + rest, prefixes, st.binary(min_size=14, max_size=14)),
    st.builds(lambda p, b: p + bytes([b]) * 14, prefixes, st.integers(0, 255)),
    st.sampled_from([ZERO, ONES, A, B]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(card_ids, max_size=60), st.lists(card_ids, max_size=30))
def test_model_against_python_set(members, probes):
    s = RevocationSet(members)
    model = set(members)
    assert len(s) == len(model)
    assert list(s) == sorted(model)
    for p in members + probes:
        assert (p in s) == (p in model)
    assert list(RevocationSet.from_hex([m.hex() for m in members])) == sorted(model)


@settings(max_examples=200, deadline=None)
@given(st.lists(card_ids, max_size=30), st.lists(card_ids, max_size=30), st.lists(card_ids, max_size=20))
def test_union_model(left, right, probes):
    u = RevocationSet(left).union(RevocationSet(right))
    model = set(left) | set(right)
    assert list(u) == sorted(model)
    assert len(u) == len(model)
    for p in left + right + probes:
        assert (p in u) == (p in model)


@settings(max_examples=300, deadline=None)
@given(st.lists(card_ids, max_size=60), st.lists(card_ids, max_size=30), st.booleans())
def test_adopted_buffer_model(members, probes, presorted):
    """A set that keeps the parser's buffer as its storage (no copy) answers as a Python set, sorted
    input or not, and hands out bytes like any other."""
    model = set(members)
    ids = sorted(model) if presorted else members
    s = RevocationSet.adopt(bytearray(b"".join(ids)))
    assert len(s) == len(model)
    assert list(s) == sorted(model) and all(type(x) is bytes for x in s)
    for p in members + probes:
        assert (p in s) == (p in model)
    u = s.union(RevocationSet(probes))
    assert list(u) == sorted(model | set(probes))


def test_adopt_rejects_a_partial_id():
    with pytest.raises(ValueError):
        RevocationSet.adopt(bytearray(A + b"\x00"))
