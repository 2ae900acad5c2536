"""Holder details sealed to the server key: only that key opens them, for that entry, untampered."""
from __future__ import annotations

import hashlib
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scanner import sealing
from scanner.sealing import SealError
from scanner.verdict import Holder

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


def test_documented_format_opens_with_plain_primitives(server):
    """docs/entry-log.md#sealed-holder-details, re-implemented from the text: what the server runs."""
    blob = sealing.seal(HOLDER, server.public_key(), ENTRY_ID)
    server_pub = server.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert blob[0] == 1
    assert blob[1:9] == hashlib.sha256(server_pub).digest()[:8]
    eph_pub = blob[9:41]
    shared = server.exchange(X25519PublicKey.from_public_bytes(eph_pub))
    okm = HKDF(hashes.SHA256(), 44, salt=eph_pub + server_pub, info=b"checkpoint-edge seal v1").derive(shared)
    plain = AESGCM(okm[:32]).decrypt(okm[32:44], blob[41:], blob[:41] + ENTRY_ID.encode())
    assert len(plain) % 64 == 0
    assert json.loads(plain) == {"n": HOLDER.name, "b": HOLDER.birth_date, "i": HOLDER.id_masked}


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
    assert len(short) == len(longer) == 1 + 8 + 32 + 64 + 16


def test_other_key_or_other_entry_cannot_open(server):
    blob = sealing.seal(HOLDER, server.public_key(), ENTRY_ID)
    with pytest.raises(SealError, match="different server key"):
        sealing.open(blob, X25519PrivateKey.generate(), ENTRY_ID)
    with pytest.raises(SealError, match="altered|another entry"):
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
