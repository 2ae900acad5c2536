"""The Entry value type: chain hash as specified, chain checks, and export formats that round-trip."""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import struct
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scanner.store import entry as E
from scanner.store.entry import (
    GENESIS,
    Anchor,
    Entry,
    ExportFormatError,
    chain_hash,
    read_export,
    verify_chain,
)

# ---------------------------------------------------------------- strategies

text = st.text(max_size=40)  # any Unicode, control and bidi characters included
uuids = st.uuids(version=4).map(str)


@st.composite
def entries(draw) -> Entry:
    card = draw(st.none() | st.binary(min_size=16, max_size=16).map(bytes.hex))
    sealed = draw(st.none() | st.binary(min_size=1, max_size=64))
    kind = draw(st.sampled_from([None, "did_not_pass"]))
    e = Entry(
        seq=draw(st.integers(1, 2**62)), entry_id=draw(uuids), device_id=draw(text),
        checkpoint_id=draw(text), direction=draw(st.sampled_from(["in", "out"])),
        at_ms=draw(st.integers(E.MIN_AT_MS, E.MAX_AT_MS)),
        clock=draw(st.sampled_from(["synced", "unsynced", "unknown"])),
        source=draw(st.sampled_from(["camera", "usb", "serial", "stdin", "manual"])), source_id=draw(text),
        decision=draw(st.sampled_from(E.DECISIONS)), reason=draw(st.sampled_from(E.REASONS)),
        format=draw(st.none() | text), card_id=card, issuer=draw(st.none() | text),
        kid=draw(st.none() | st.binary(max_size=32).map(lambda b: base64.b64encode(b).decode())),
        kind=kind, ref_entry_id=draw(uuids) if kind else None, batch_id=draw(st.none() | text),
        prev_hash=draw(st.binary(min_size=32, max_size=32)), sealed=sealed,
    )
    return dataclasses.replace(e, hash=e.computed_hash())


def without_blob(e: Entry) -> Entry:
    return dataclasses.replace(e, sealed=None, sealed_sha256=e.sealed_sha256)


# ---------------------------------------------------------------- hash


def _spec_hash(prev: bytes, fields: dict) -> bytes:
    """docs/entry-log.md#hash-chain, written out independently."""
    buf = b"CKE1" + prev
    for name in sorted(k for k, v in fields.items() if v is not None):
        v = str(fields[name]).encode()
        buf += bytes([len(name)]) + name.encode() + struct.pack(">I", len(v)) + v
    return hashlib.sha256(buf).digest()


def sample(**kw) -> Entry:
    base = dict(seq=1, entry_id="6f1c1d2e-8a4b-4c6d-9e0f-112233445566", device_id="dev-1",
                checkpoint_id="chợ Đông Ba", direction="in", at_ms=1_750_000_000_123, clock="synced",
                source="camera", source_id="cam0", decision="accept", reason="ok", format="CK1",
                card_id="00112233445566778899aabbccddeeff", issuer="VN-HUE", kid="6AwL2Xfu7BE=")
    base.update(kw)
    e = Entry(**base)
    return dataclasses.replace(e, hash=e.computed_hash())


def test_hash_matches_the_spec_and_a_fixed_vector():
    e = sample()
    fields = {"seq": 1, "entry_id": e.entry_id, "device_id": "dev-1", "checkpoint_id": "chợ Đông Ba",
              "direction": "in", "at_ms": 1_750_000_000_123, "clock": "synced", "source": "camera",
              "source_id": "cam0", "decision": "accept", "reason": "ok", "format": "CK1",
              "card_id": e.card_id, "issuer": "VN-HUE", "kid": "6AwL2Xfu7BE="}
    assert e.hash == _spec_hash(GENESIS, fields)
    # a fixed vector, so that a change of encoding cannot pass unnoticed (the server depends on it)
    assert e.hash.hex() == "cc6a9cbae7aa2fef003b82e028e5119143a15ba9dd87dcb8d558b022eb226438"


def test_batch_id_and_the_blob_itself_are_not_hashed_but_its_digest_is():
    e = sample(sealed=b"\x01" * 100)
    assert dataclasses.replace(e, batch_id="b-7").computed_hash() == e.hash
    assert dataclasses.replace(e, sealed=None, sealed_sha256=e.sealed_sha256).computed_hash() == e.hash
    other = dataclasses.replace(e, sealed=b"\x02" * 100, sealed_sha256=None)
    assert other.sealed_sha256 != e.sealed_sha256
    assert other.computed_hash() != e.hash


@given(st.lists(entries(), min_size=1, max_size=8), st.integers(1, 3))
@settings(max_examples=100, deadline=None)
def test_column_hashes_are_each_entrys_hash(items, times):
    items = items * times  # values repeated in a column are encoded once: that path too
    for some in (items[:1] * times, items):  # one entry repeated: every column holds one value
        columns = [[getattr(e, name) for e in some] for name in E.HASHED_FIELDS]
        assert E.column_hashes([e.prev_hash for e in some], columns) == [e.hash for e in some]
    items.append(sample(checkpoint_id="ệ" * 400, source_id="x" * 1023, kid=None))  # a length of >= 1024 bytes
    columns = [[getattr(e, name) for e in items] for name in E.HASHED_FIELDS]
    assert E.column_hashes([e.prev_hash for e in items], columns) == [e.hash for e in items]
    with pytest.raises(ValueError):
        E.column_hashes([bytes(31)] * len(items), columns)


@given(entries(), st.sampled_from(["checkpoint_id", "direction", "at_ms", "decision", "reason", "card_id",
                                   "seq", "source_id", "prev_hash"]))
@settings(max_examples=100, deadline=None)
def test_any_change_to_a_hashed_field_changes_the_hash(e, name):
    new = {"checkpoint_id": e.checkpoint_id + "x", "direction": "out" if e.direction == "in" else "in",
           "at_ms": e.at_ms ^ 1, "decision": "reject" if e.decision == "accept" else "accept",
           "reason": "revoked" if e.reason != "revoked" else "ok",
           "card_id": "ff" * 16 if e.card_id != "ff" * 16 else None,
           "seq": e.seq + 1, "source_id": e.source_id + "!",
           "prev_hash": bytes(32) if e.prev_hash != bytes(32) else b"\x01" * 32}
    assert dataclasses.replace(e, **{name: new[name]}).computed_hash() != e.hash


def test_optional_none_fields_are_left_out_so_old_entries_keep_their_hash():
    e = sample()
    assert "kind" not in e.hash_fields() and "ref_entry_id" not in e.hash_fields()
    assert chain_hash(GENESIS, {**e.hash_fields(), "kind": None}) == e.hash


@given(entries(), st.text(min_size=1020, max_size=1100) | text)
@settings(max_examples=200, deadline=None)
def test_the_hash_of_any_text_is_the_specs(e, source_id):
    """Any Unicode (the hash assembles its input as Latin-1 text) and values past 1023 bytes."""
    e = dataclasses.replace(e, source_id=source_id)
    assert e.computed_hash() == _spec_hash(e.prev_hash, {n: getattr(e, n) for n in E.HASHED_FIELDS})


@given(st.binary(max_size=5000))
@settings(max_examples=200, deadline=None)
def test_a_new_entry_is_hashed_with_cpythons_own_sha256_to_the_same_digests(data):
    """link and record hash a new entry with CPython's SHA-256 (cheaper than OpenSSL's for one small
    input right after an fsync); the digests are SHA-256's, as the readers' OpenSSL makes them."""
    assert E.new_entry_sha256 is not hashlib.sha256
    assert E.new_entry_sha256(data).digest() == hashlib.sha256(data).digest()
    assert E.sealed_digest(data, E.new_entry_sha256) == E.sealed_digest(data) == hashlib.sha256(data).hexdigest()
    prev = hashlib.sha256(data).digest()
    values = (data.hex(), len(data), None, data.decode("latin-1"))
    assert E.values_hash(prev, values, E.new_entry_sha256) == E.values_hash(prev, values)


@given(entries())
@settings(max_examples=200, deadline=None)
def test_link_makes_the_entry_the_constructor_makes(e):
    made = E.link(e.seq - 1, e.prev_hash, tuple(getattr(e, n) for n in E.LINK_FIELDS), e.sealed)
    want = dataclasses.replace(e, batch_id=None)
    assert made == want and made.hash == want.computed_hash() and made.sealed == e.sealed
    assert made.sealed_sha256 == (None if e.sealed is None else hashlib.sha256(e.sealed).hexdigest())
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.hash = b""  # type: ignore[misc]
    if e.sealed is not None:  # the blob's digest made ahead (a scan makes it before the write lock): the same entry
        assert E.link(e.seq - 1, e.prev_hash, tuple(getattr(e, n) for n in E.LINK_FIELDS), e.sealed,
                      E.sealed_digest(e.sealed)) == want


# ---------------------------------------------------------------- chain


START = Anchor()  # the empty log's anchor


def chain(n: int, start: Anchor = START) -> list[Entry]:
    out, prev = [], start.hash
    for i in range(n):
        e = sample(seq=start.seq + 1 + i, entry_id=str(uuid.uuid4()), prev_hash=prev, at_ms=1_750_000_000_000 + i)
        out.append(e)
        prev = e.hash
    return out


def test_verify_chain_finds_gaps_relinks_and_alterations():
    c = chain(6)
    assert verify_chain(c, Anchor()).ok
    r = verify_chain(c[:2] + c[3:], Anchor())
    assert (r.ok, r.bad_seq, r.problem, r.checked) == (False, 4, "gap", 2)
    altered = c[:4] + [dataclasses.replace(c[4], reason="revoked")] + c[5:]
    assert verify_chain(altered, Anchor()).problem == "altered" and verify_chain(altered).bad_seq == 5
    # rehashed after the change: its successor no longer links
    fixed = dataclasses.replace(altered[4], hash=altered[4].computed_hash())
    r = verify_chain(c[:4] + [fixed] + c[5:], Anchor())
    assert (r.problem, r.bad_seq) == ("relinked", 6)
    assert verify_chain(c[1:], Anchor()).problem == "gap"  # the first one deleted, no anchor for it
    assert verify_chain(c[1:]).ok  # an export starting in the middle is checked from where it starts
    assert verify_chain(c[2:], Anchor(2, c[1].hash, 2)).ok
    assert verify_chain([c[1], c[0]]).problem == "order"


# ---------------------------------------------------------------- export


@given(st.lists(entries(), max_size=8), st.sampled_from(E.FORMATS))
@settings(max_examples=150, deadline=None)
def test_export_round_trips(items, fmt):
    out = io.StringIO()
    assert E.write_export(items, out, fmt) == len(items)
    data = out.getvalue()
    back = list(read_export(io.StringIO(data, newline=""), fmt))
    assert back == [without_blob(e) for e in items]
    for b, e in zip(back, items):
        assert b.sealed is None and b.hash == e.hash and b.computed_hash() == e.hash
    # one record per line, and no raw control or bidi characters reach a terminal
    lines = data.splitlines()
    assert len(lines) == len(items) + (1 if fmt == "csv" else 0)
    assert not any(c in data for c in "\x00\x1b\r\u202e\u2028\x85")


def test_csv_defuses_spreadsheet_formulas():
    e = sample(source_id="=HYPERLINK(\"x\")", issuer="+1", device_id="@dev", checkpoint_id="-cp")
    data = E.export_text([e], "csv")
    row = data.splitlines()[1]
    assert ",=" not in row and ",+" not in row and ",@" not in row and ",-" not in row
    assert list(read_export(io.StringIO(data), "csv")) == [e]


@pytest.mark.parametrize("cell", ["", "'", "''", "a\\b", "=x", "'=x", "\x1b[31m", "\u202eabc", "\\u0041"])
def test_csv_cell_codec(cell):
    assert E.csv_value(E.csv_cell(cell)) == cell
    assert E.csv_value(E.csv_cell(None)) is None


@given(st.lists(st.text(max_size=300), max_size=5), st.sampled_from(E.FORMATS))
@settings(max_examples=300, deadline=None)
def test_garbage_imports_fail_cleanly(lines, fmt):
    try:
        back = list(read_export(lines, fmt))
    except ExportFormatError:
        return
    assert all(isinstance(b, Entry) for b in back)


@given(entries(), st.data())
@settings(max_examples=200, deadline=None)
def test_mutated_export_lines_fail_cleanly_or_parse(e, data):
    line = E.export_text([e], "jsonl")
    i = data.draw(st.integers(0, len(line) - 1))
    mutated = line[:i] + data.draw(st.text(max_size=3)) + line[i + 1:]
    try:
        back = list(read_export([mutated], "jsonl"))
    except ExportFormatError:
        return
    for b in back:  # whatever parses is a well-formed entry; the chain check tells if it was altered
        assert isinstance(b, Entry)


@pytest.mark.parametrize("patch, match", [
    ({"seq": 0}, "seq"), ({"seq": True}, "seq"), ({"direction": "up"}, "direction"),
    ({"clock": "maybe"}, "clock"), ({"reason": "nope"}, "reason"), ({"at": "2025-06-15 15:06:40Z"}, "time"),
    ({"at": "2025-02-30T00:00:00.000Z"}, "date"), ({"card_id": "XYZ"}, "card_id"), ({"kid": "!!"}, "base64"),
    ({"holder": "sealed", "sealed_sha256": None}, "sealed_sha256"), ({"hash": "00"}, "hash"),
    ({"entry_id": "not-a-uuid"}, "UUID"), ({"extra": 1}, "fields"),
])
def test_malformed_records_are_refused(patch, match):
    d = E.to_export_dict(sample())
    d.update(patch)
    with pytest.raises(ExportFormatError, match=match):
        E.from_export_dict(d)


def test_iso_ms_round_trips_at_the_edges():
    for ms in (0, 1, 999, 1_750_000_000_123, E.MAX_AT_MS):
        assert E.parse_iso_ms(E.iso_ms(ms)) == ms
    assert E.iso_ms(1_750_000_000_123) == "2025-06-15T15:06:40.123Z"
