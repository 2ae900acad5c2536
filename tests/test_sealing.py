"""Holder details sealed to the server key: only that key opens them, for that entry, untampered."""
from __future__ import annotations

import hashlib
import json
import threading

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scanner.cards.verdict import Holder
from scanner.store import sealing
from scanner.store.sealing import SealError

HOLDER = Holder("Nguyễn Thị Thanh Hương", "1987-03-15", "079******1234", status="đã tiêm", last_dose="2021-11-20")
ENTRY_ID = "6f1c1d2e-8a4b-4c6d-9e0f-112233445566"


@pytest.fixture(scope="module")
def server():
    return X25519PrivateKey.generate()


def test_round_trip_keeps_name_birth_date_and_masked_id_only(server):
    blob = sealing.seal(HOLDER, server.public_key(), ENTRY_ID)
    assert sealing.open(blob, server, ENTRY_ID) == Holder(HOLDER.name, HOLDER.birth_date, HOLDER.id_masked)
    # nothing readable in the blob
    for text in (HOLDER.name, HOLDER.birth_date, HOLDER.id_masked, "1987", "Hương"):
        assert text.encode("utf-8") not in blob


def _raw(pub) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_documented_format_opens_with_plain_primitives(server):
    """docs/entry-log.md#sealed-holder-details (version 2), re-implemented from the text."""
    blob = sealing.seal(HOLDER, server.public_key(), ENTRY_ID)
    server_pub = _raw(server.public_key())
    assert blob[0] == 2
    assert blob[1:9] == hashlib.sha256(server_pub).digest()[:8]
    eph_pub, nonce = blob[9:41], blob[41:53]
    shared = server.exchange(X25519PublicKey.from_public_bytes(eph_pub))
    key = HKDF(hashes.SHA256(), 32, salt=eph_pub + server_pub, info=b"checkpoint-edge seal v2").derive(shared)
    plain = AESGCM(key).decrypt(nonce, blob[53:], blob[:53] + ENTRY_ID.encode())
    assert len(plain) % 64 == 0
    assert json.loads(plain) == {"n": HOLDER.name, "b": HOLDER.birth_date, "i": HOLDER.id_masked}


def _seal_v1(holder: Holder, server_pub: X25519PublicKey, entry_id: str) -> bytes:
    """A version-1 blob built from the documented text (what devices before v2 wrote)."""
    eph = X25519PrivateKey.generate()
    eph_pub, spub = _raw(eph.public_key()), _raw(server_pub)
    okm = HKDF(hashes.SHA256(), 44, salt=eph_pub + spub,
               info=b"checkpoint-edge seal v1").derive(eph.exchange(server_pub))
    header = b"\x01" + hashlib.sha256(spub).digest()[:8] + eph_pub
    data = json.dumps({"n": holder.name, "b": holder.birth_date, "i": holder.id_masked},
                      ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
    data += b" " * (-len(data) % 64)
    return header + AESGCM(okm[:32]).encrypt(okm[32:44], data, header + entry_id.encode())


def test_version_1_blobs_from_older_devices_still_open(server):
    blob = _seal_v1(HOLDER, server.public_key(), ENTRY_ID)
    assert (len(blob) - (1 + 8 + 32) - 16) % 64 == 0
    assert sealing.open(blob, server, ENTRY_ID).name == HOLDER.name
    with pytest.raises(SealError):
        sealing.open(blob, server, "another-entry")
    bad = bytearray(blob)
    bad[-1] ^= 1
    with pytest.raises(SealError):
        sealing.open(bytes(bad), server, ENTRY_ID)


def test_a_session_shares_one_ephemeral_key_with_fresh_nonces(server):
    sealer = sealing.Sealer(server.public_key())
    blobs = [sealer.seal(HOLDER, f"entry-{i}") for i in range(50)]
    assert len({b[9:41] for b in blobs}) == 1 and sealer.sessions == 1
    assert len({b[41:53] for b in blobs}) == 50  # random nonces, never reused
    for i, b in enumerate(blobs):
        assert sealing.open(b, server, f"entry-{i}").name == HOLDER.name
        with pytest.raises(SealError):  # the shared key does not let a blob move to another entry
            sealing.open(b, server, f"entry-{i + 1}")


def test_session_ends_after_max_blobs_max_age_or_rotate(server):
    now = [100.0]
    sealer = sealing.Sealer(server.public_key(), max_blobs=3, max_age_s=60, clock=lambda: now[0])
    eph = [sealer.seal(HOLDER, "e")[9:41] for _ in range(7)]
    assert eph[0] == eph[1] == eph[2] != eph[3] == eph[4] == eph[5] != eph[6]
    assert sealer.sessions == 3
    now[0] += 59.9
    assert sealer.seal(HOLDER, "e")[9:41] == eph[6]
    now[0] += 0.2  # the session of eph[6] began at 100.0: now 60.1 s old
    fresh = sealer.seal(HOLDER, "e")[9:41]
    assert fresh != eph[6] and sealer.sessions == 4
    now[0] -= 30  # a clock that steps back never stretches a session
    stepped = sealer.seal(HOLDER, "e")[9:41]
    assert stepped != fresh and sealer.sessions == 5
    sealer.rotate()
    assert sealer.seal(HOLDER, "e")[9:41] != stepped and sealer.sessions == 6


def test_sealer_is_thread_safe(server):
    sealer = sealing.Sealer(server.public_key(), max_blobs=7)
    out: list[tuple[str, bytes]] = []
    lock = threading.Lock()

    def work(t):
        for i in range(40):
            ctx = f"{t}-{i}"
            b = sealer.seal(HOLDER, ctx)
            with lock:
                out.append((ctx, b))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(out) == 160
    assert len({b[41:53] for _, b in out}) == 160
    per_session: dict[bytes, int] = {}
    for ctx, b in out:
        assert sealing.open(b, server, ctx).name == HOLDER.name
        per_session[b[9:41]] = per_session.get(b[9:41], 0) + 1
    assert max(per_session.values()) <= 7 and sealer.sessions == len(per_session)


def test_sealer_rejects_nonsense_limits(server):
    with pytest.raises(ValueError):
        sealing.Sealer(server.public_key(), max_blobs=0)
    with pytest.raises(ValueError):
        sealing.Sealer(server.public_key(), max_age_s=0)


def test_masked_id_may_be_absent(server):
    h = Holder("An", "1990", None)
    assert sealing.open(sealing.seal(h, server.public_key(), "x"), server, "x") == h


def test_every_seal_uses_a_fresh_ephemeral_key(server):
    a = sealing.seal(HOLDER, server.public_key(), ENTRY_ID)
    b = sealing.seal(HOLDER, server.public_key(), ENTRY_ID)
    assert a[9:41] != b[9:41] and a != b


def test_length_hides_the_name_length(server):
    short = sealing.seal(Holder("An", "1990-01-01", None), server.public_key(), ENTRY_ID)
    longer = sealing.seal(Holder("Nguyễn Văn An Bình", "1990-01-01", None), server.public_key(), ENTRY_ID)
    assert len(short) == len(longer) == 1 + 8 + 32 + 12 + 64 + 16


def test_other_key_or_other_entry_cannot_open(server):
    blob = sealing.seal(HOLDER, server.public_key(), ENTRY_ID)
    with pytest.raises(SealError, match="different server key"):
        sealing.open(blob, X25519PrivateKey.generate(), ENTRY_ID)
    with pytest.raises(SealError, match=r"altered|another entry"):
        sealing.open(blob, server, "00000000-0000-0000-0000-000000000000")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_tampered_blob_is_a_clean_error(server, data):
    blob = bytearray(sealing.seal(HOLDER, server.public_key(), ENTRY_ID))
    how = data.draw(st.sampled_from(["flip", "truncate", "extend", "replace"]))
    if how == "flip":
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
    elif how == "extend":
        blob += data.draw(st.binary(min_size=1, max_size=64))
    else:
        blob = bytearray(data.draw(st.binary(max_size=300)))
    with pytest.raises(SealError):
        sealing.open(bytes(blob), server, ENTRY_ID)


def test_low_order_ephemeral_key_is_refused(server):
    blob = bytearray(sealing.seal(HOLDER, server.public_key(), ENTRY_ID))
    blob[9:41] = bytes(32)  # the all-zero point: shared secret would be zero
    with pytest.raises(SealError):
        sealing.open(bytes(blob), server, ENTRY_ID)


def test_load_public_key_pem_raw_and_wrong_type(tmp_path, server):
    pem = sealing.public_key_pem(server.public_key())
    path = tmp_path / "server.pub"
    path.write_bytes(pem)
    raw = server.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    for src in (pem, raw, path, str(path)):
        assert sealing.key_id(sealing.load_public_key(src)) == sealing.key_id(server.public_key())
    ed_pem = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(SealError, match="X25519"):
        sealing.load_public_key(ed_pem)
    with pytest.raises(SealError):
        sealing.load_public_key(b"not a key at all, definitely")


_texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=90)


@settings(max_examples=300, deadline=None)
@given(_texts, _texts, st.none() | _texts)
def test_plaintext_is_the_documented_json(name, birth, masked):
    """The holder's plaintext written directly is byte for byte what the JSON encoder writes
    (sorted keys, no spaces, UTF-8, escapes included), padded to 64."""
    data = json.dumps({"n": name, "b": birth, "i": masked}, ensure_ascii=False, sort_keys=True,
                      separators=(",", ":")).encode()
    assert sealing._plaintext(Holder(name, birth, masked)) == data + b" " * (-len(data) % 64)
