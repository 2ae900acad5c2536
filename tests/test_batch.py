"""Signed batches (sync/wire/batch.py): round trip with entries from a real entry log, signature over the
exact bytes, bounds, row validation, and a fuzz of the parser."""
from __future__ import annotations

import base64
import dataclasses
import json
import struct
import zlib

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scanner.cards import verifier
from scanner.cards.scan import Scan
from scanner.store import sealing
from scanner.store.entrylog import EntryLog
from sync.wire import batch as b
from sync.wire import identity, protocol

KEY = ed25519.Ed25519PrivateKey.generate()
DEV = identity.device_id(KEY)


@pytest.fixture(scope="module")
def entries(tmp_path_factory, make_card, trust, now):
    server = X25519PrivateKey.generate()
    log = EntryLog(tmp_path_factory.mktemp("b") / "e.db", device_id=DEV, checkpoint_id="chợ-đông",
                   sealing_key=server.public_key(), synchronous="NORMAL", passback_window_s=0)
    v = verifier.verify(make_card(name="Trần Thị Bích"), trust, now)
    bad = verifier.verify("not a card", trust, now)
    for i in range(40):
        log.record(Scan("x", "usb", "reader\u202e0", now + i, "in" if i % 3 else "out"), bad if i % 7 == 0 else v)
    first = log.pending(0, 1)[0]
    log.record_followup(first.entry_id) if first.accepted else None
    out = log.pending(0, 100)
    log.close()
    return out, server


def test_round_trip_keeps_every_field(entries):
    es, server = entries
    sb = b.build(es, KEY, device_id=DEV, created_ms=123)
    parsed = b.open_batch(sb.data, KEY.public_key())
    assert parsed.info == sb.info and parsed.info.count == len(es)
    for a, c in zip(es, parsed.entries):
        assert dataclasses.astuple(a) == dataclasses.astuple(c)  # every field, hashes and links
        assert a.sealed == c.sealed and a.computed_hash() == c.hash
    sealed = next(e for e in parsed.entries if e.sealed)
    assert sealing.open(sealed.sealed, server, sealed.entry_id).name == "Trần Thị Bích"


def test_batch_id_is_deterministic_and_names_the_run(entries):
    es, _ = entries
    one = b.build(es[:10], KEY, device_id=DEV, created_ms=1)
    two = b.build(es[:10], KEY, device_id=DEV, created_ms=2)
    other = b.build(es[:11], KEY, device_id=DEV, created_ms=1)
    assert one.info.batch_id == two.info.batch_id != other.info.batch_id


def test_runs_must_be_contiguous(entries):
    es, _ = entries
    with pytest.raises(ValueError):
        b.build(es[:3] + es[4:6], KEY, device_id=DEV, created_ms=1)
    with pytest.raises(ValueError):
        b.build([], KEY, device_id=DEV, created_ms=1)


@pytest.mark.parametrize("where", [5, 20, -70, -1])
def test_any_changed_byte_breaks_the_signature_or_the_format(entries, where):
    es, _ = entries
    data = bytearray(b.build(es, KEY, device_id=DEV, created_ms=1).data)
    data[where] ^= 0x01
    with pytest.raises(b.BatchError) as exc_info:
        b.open_batch(bytes(data), KEY.public_key())
    assert exc_info.value.code in (protocol.E_BAD_SIGNATURE, protocol.E_MALFORMED)


def test_another_key_does_not_verify(entries):
    es, _ = entries
    sb = b.build(es, KEY, device_id=DEV, created_ms=1)
    with pytest.raises(b.BatchError) as exc_info:
        b.open_batch(sb.data, ed25519.Ed25519PrivateKey.generate().public_key())
    assert exc_info.value.code == protocol.E_BAD_SIGNATURE


def _resign(header: dict, body: bytes, key=KEY) -> bytes:
    h = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    signed = b.MAGIC + struct.pack(">I", len(h)) + h + body
    return signed + key.sign(signed)


def _parts(data: bytes) -> tuple[dict, bytes]:
    (hlen,) = struct.unpack(">I", data[4:8])
    return json.loads(data[8:8 + hlen]), data[8 + hlen:-64]


def test_signed_but_inconsistent_batches_are_malformed(entries):
    es, _ = entries
    header, body = _parts(b.build(es[:5], KEY, device_id=DEV, created_ms=1).data)
    lie = dict(header, raw_len=header["raw_len"] - 1)
    with pytest.raises(b.BatchError, match="length"):
        b.open_batch(_resign(lie, body), KEY.public_key())
    bomb = zlib.compress(b"\n" * (50 * 1024 * 1024))  # a small body that inflates hugely
    with pytest.raises(b.BatchError):
        b.open_batch(_resign(header, bomb), KEY.public_key())
    rows = zlib.decompress(body).decode().splitlines()
    row = json.loads(rows[0])
    row[10] = "some_future_reason"
    rows[0] = json.dumps(row)
    raw = ("\n".join(rows) + "\n").encode()
    with pytest.raises(b.BatchError, match="reason"):
        b.open_batch(_resign(dict(header, raw_len=len(raw)), zlib.compress(raw)), KEY.public_key())


def test_header_bounds():
    with pytest.raises(b.BatchError):
        b.read_header(b"CKB1" + struct.pack(">I", 10**6) + b"x" * 100)
    with pytest.raises(b.BatchError) as exc_info:
        b.read_header(b"CKB1" + b"\0" * (protocol.MAX_BATCH_BYTES + 1))
    assert exc_info.value.code == protocol.E_TOO_LARGE


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600), flips=st.lists(st.integers(0, 10_000), max_size=4))
def test_fuzz_parser_only_raises_batch_errors(entries, data, flips):
    es, _ = entries
    good = bytearray(b.build(es[:3], KEY, device_id=DEV, created_ms=1).data)
    for f in flips:
        good[f % len(good)] ^= 0xFF
    for candidate in (data, bytes(good), b"CKB1" + data):
        try:
            b.open_batch(candidate, KEY.public_key())
        except b.BatchError:
            pass


def test_format_2_carries_the_same_rows_as_format_1(entries):
    """Format 2 (a MessagePack body, blobs and hashes as bytes) opens to exactly the rows format 1
    gives, under the same batch id; format 1 stays what build() writes unless told."""
    es, _ = entries
    one = b.build(es, KEY, device_id=DEV, created_ms=5)
    two = b.build(es, KEY, device_id=DEV, created_ms=5, version=2)
    assert one.info.version == 1 and two.info.version == 2 and _parts(two.data)[0]["v"] == 2
    p1, p2 = b.open_batch(one.data, KEY.public_key()), b.open_batch(two.data, KEY.public_key())
    assert p2.info == two.info and p2.info.batch_id == p1.info.batch_id
    assert p2.rows == p1.rows and any(r[-1] for r in p2.rows)  # sealed blobs among them
    for a, c in zip(es, p2.entries):
        assert dataclasses.astuple(a) == dataclasses.astuple(c)
    with pytest.raises(ValueError):
        b.build(es, KEY, device_id=DEV, created_ms=5, version=3)


def test_format_2_rows_are_checked_like_format_1(entries):
    es, _ = entries
    header, body = _parts(b.build(es[:5], KEY, device_id=DEV, created_ms=1, version=2).data)
    rows = msgspec.msgpack.decode(zlib.decompress(body))

    def signed(rows: list, **changes) -> bytes:
        raw = msgspec.msgpack.encode(rows)
        return _resign(dict(header, raw_len=len(raw), **changes), zlib.compress(raw))

    for i, value, problem in ((18, b"\x01" * 31, "hash"), (18, "ab" * 32, "hash"), (17, "c2VhbGVk", "sealed"),
                              (10, "some_future_reason", "reason"), (1, "not-a-uuid", "entry_id"),
                              (12, "abc", "card_id"), (12, "ABCD", "card_id"), (12, "0g", "card_id"),
                              (14, "not base64!", "kid")):
        bad = [list(r) for r in rows]
        bad[2][i] = value
        with pytest.raises(b.BatchError, match=problem) as exc_info:
            b.open_batch(signed(bad), KEY.public_key())
        assert exc_info.value.code == protocol.E_MALFORMED
    with pytest.raises(b.BatchError, match=r"header says|rows"):  # fewer rows than the header counts
        b.open_batch(signed(rows[:4]), KEY.public_key())
    packed = msgspec.msgpack.encode(rows)
    with pytest.raises(b.BatchError) as exc_info:  # a format 2 body under a format 1 header: refused, not guessed
        b.open_batch(_resign(dict(header, raw_len=len(packed), v=1), zlib.compress(packed)), KEY.public_key())
    assert exc_info.value.code == protocol.E_MALFORMED
    with pytest.raises(b.BatchError, match="version"):
        b.open_batch(signed(rows, v=7), KEY.public_key())


_UUID = "0b7e2f4c-9a1d-4e6b-8c3f-2d5a7e9b1c40"
# values put in a row's field (by ROW_FIELDS index): good ones and ones a check must refuse, among
# them ones that are good only when read whole (a line break inside an id, ids run together)
_MUTATIONS = {
    1: ["not-a-uuid", _UUID.upper(), _UUID + "\n", "\n" + _UUID[1:], _UUID[:35], "", _UUID[:18] + "\n" + _UUID[19:],
        _UUID + "\n" + _UUID, _UUID],
    2: ["other-device", DEV + "x"],
    12: [None, "abc", "ABCD", "0g", "ab" * 3, "a\nb", "ab\n", "00"],
    14: [None, "not base64!", "AAAA", "QUJD", "QUJ", "3q2+7wABAgM="],
    16: [None, _UUID, "x", _UUID + "\n", _UUID[:-1] + "G"],
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(st.tuples(st.integers(0, 5), st.sampled_from(sorted(_MUTATIONS)), st.integers(0, 20)) |
                        st.tuples(st.integers(0, 5), st.just(0), st.integers(-1, 1)), max_size=4))
def test_format_2_rows_are_accepted_and_refused_as_format_1(entries, changes):
    """Whatever is changed in a batch's rows (ids, card ids, key ids, order), format 2 (whose rows
    are checked column by column) takes exactly the rows format 1 takes, and refuses the others
    with the same words."""
    es, _ = entries
    header, body = _parts(b.build(es[:6], KEY, device_id=DEV, created_ms=1, version=2).data)
    rows = [list(r) for r in msgspec.msgpack.decode(zlib.decompress(body))]
    for i, field, pick in changes:
        rows[i][field] = rows[i][field] + pick if field == 0 else _MUTATIONS[field][pick % len(_MUTATIONS[field])]
    raw2 = msgspec.msgpack.encode(rows)
    raw1 = b"".join(json.dumps([*r[:17], None if r[17] is None else base64.b64encode(r[17]).decode(), r[18].hex()],
                               ensure_ascii=False, separators=(",", ":")).encode() + b"\n" for r in rows)

    def opened(raw: bytes, version: int):
        data = _resign(dict(header, raw_len=len(raw), v=version), zlib.compress(raw))
        try:
            return b.open_batch(data, KEY.public_key()).rows
        except b.BatchError as exc:
            return str(exc)

    assert opened(raw2, 2) == opened(raw1, 1)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.integers(0, 10_000), min_size=1, max_size=4))
def test_fuzz_format_2_parser_only_raises_batch_errors(entries, flips):
    es, _ = entries
    header, body = _parts(b.build(es[:3], KEY, device_id=DEV, created_ms=1, version=2).data)
    raw = bytearray(zlib.decompress(body))
    for f in flips:
        raw[f % len(raw)] ^= 0xFF
    try:
        b.open_batch(_resign(dict(header, raw_len=len(raw)), zlib.compress(bytes(raw))), KEY.public_key())
    except b.BatchError:
        pass


def _outcome(data: bytes):
    """The rows a batch opens to, or its refusal's reason code."""
    try:
        return b.open_batch(data, KEY.public_key()).rows
    except b.BatchError as exc:
        return exc.code


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(version=st.sampled_from([1, 2]), cut=st.integers(0, 64), tail=st.binary(max_size=6),
       flips=st.lists(st.integers(0, 100_000), max_size=3), lie=st.integers(-2, 2))
def test_the_servers_inflate_reads_bodies_as_zlib_does(entries, version, cut, tail, flips, lie):
    """ISA-L's inflate, with which the server opens batches, takes and refuses each signed body as
    zlib does: cut short, with bytes after its end, with bytes changed, with a length that lies. A
    refusal has the same reason code; its words may differ, because on a corrupt stream the two
    libraries can stop at different points (zlib: "not zlib data", ISA-L: "length differs")."""
    assert b._inflater is not zlib.decompressobj  # the server extra is installed where the tests run
    es, _ = entries
    header, body = _parts(b.build(es[:4], KEY, device_id=DEV, created_ms=1, version=version).data)
    changed = bytearray(body[:len(body) - cut] + tail)
    for f in flips:
        if changed:
            changed[f % len(changed)] ^= 0x5A
    data = _resign(dict(header, raw_len=header["raw_len"] + lie), bytes(changed))
    ours = _outcome(data)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(b, "_inflater", zlib.decompressobj)
        mp.setattr(b, "_InflateError", zlib.error)
        assert _outcome(data) == ours
