"""Holder details sealed to the central server's X25519 key, so only the server can read them.

X25519 with a fresh ephemeral key per entry, HKDF-SHA256, AES-256-GCM (all from `cryptography`).
The byte format is specified in docs/entry-log.md#sealed-holder-details; `open` is what the
server runs. The device holds only the server's public key: a stolen device cannot open its log.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import CheckpointError
from .verdict import Holder

VERSION = 1
INFO = b"checkpoint-edge seal v1"
KEY_ID_LEN = 8
PUB_LEN = 32
TAG_LEN = 16
HEADER_LEN = 1 + KEY_ID_LEN + PUB_LEN  # version, key id, ephemeral public key
PAD_TO = 64  # plaintext is padded to a multiple of this, so names of similar length look alike
MAX_BLOB = 4096  # far above any real card (names are at most 80 characters)


class SealError(CheckpointError):
    """A sealed blob that cannot be opened: wrong key, truncated, altered or not ours."""

    code = "seal_invalid"


def key_id(public_key: X25519PublicKey) -> bytes:
    """First 8 bytes of SHA-256 over the raw 32-byte public key (which server key to use)."""
    return hashlib.sha256(_raw(public_key)).digest()[:KEY_ID_LEN]


def _raw(public_key: X25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _context(context: bytes | str) -> bytes:
    return context.encode("utf-8") if isinstance(context, str) else bytes(context)


def _derive(shared: bytes, eph_pub: bytes, server_pub: bytes) -> tuple[bytes, bytes]:
    okm = HKDF(algorithm=hashes.SHA256(), length=44, salt=eph_pub + server_pub, info=INFO).derive(shared)
    return okm[:32], okm[32:]


def _plaintext(holder: Holder) -> bytes:
    doc = {"n": holder.name, "b": holder.birth_date, "i": holder.id_masked}
    data = json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return data + b" " * (-len(data) % PAD_TO)


def seal(holder: Holder, server_public_key: X25519PublicKey, context: bytes | str) -> bytes:
    """The holder's name, birth date and masked id, readable only with the server's private key.

    ``context`` (the entry id) is authenticated with the blob, so a blob moved to another entry
    does not open.
    """
    eph = X25519PrivateKey.generate()
    eph_pub = _raw(eph.public_key())
    server_pub = _raw(server_public_key)
    key, nonce = _derive(eph.exchange(server_public_key), eph_pub, server_pub)
    header = bytes([VERSION]) + key_id(server_public_key) + eph_pub
    return header + AESGCM(key).encrypt(nonce, _plaintext(holder), header + _context(context))


def open(blob: bytes, server_private_key: X25519PrivateKey, context: bytes | str) -> Holder:  # noqa: A001
    """The Holder sealed in ``blob`` for ``context``; SealError if it cannot be opened."""
    blob = bytes(blob)
    if len(blob) < HEADER_LEN + TAG_LEN or len(blob) > MAX_BLOB:
        raise SealError(f"sealed blob of {len(blob)} bytes is not a v{VERSION} blob")
    if blob[0] != VERSION:
        raise SealError(f"sealed blob version {blob[0]} is not supported")
    server_public = server_private_key.public_key()
    if blob[1:1 + KEY_ID_LEN] != key_id(server_public):
        raise SealError("sealed to a different server key")
    header = blob[:HEADER_LEN]
    eph_pub = header[1 + KEY_ID_LEN:]
    try:
        shared = server_private_key.exchange(X25519PublicKey.from_public_bytes(eph_pub))
    except ValueError:
        raise SealError("invalid ephemeral key in sealed blob") from None
    key, nonce = _derive(shared, eph_pub, _raw(server_public))
    try:
        plain = AESGCM(key).decrypt(nonce, blob[HEADER_LEN:], header + _context(context))
    except InvalidTag:
        raise SealError("sealed blob altered, or sealed for another entry") from None
    try:
        doc = json.loads(plain.decode("utf-8"))
        name, birth, masked = doc["n"], doc["b"], doc["i"]
    except (UnicodeDecodeError, ValueError, TypeError, KeyError):
        raise SealError("sealed content is not holder details") from None
    if not isinstance(name, str) or not isinstance(birth, str) or not (masked is None or isinstance(masked, str)):
        raise SealError("sealed content is not holder details")
    return Holder(name, birth, masked)


open_sealed = open  # for callers that prefer not to shadow the builtin


def generate_server_key() -> X25519PrivateKey:
    """A new server key pair (the server keeps the private half; devices get the public one)."""
    return X25519PrivateKey.generate()


def public_key_pem(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(data: bytes | str | Path) -> X25519PublicKey:
    """The server's X25519 public key from PEM bytes, raw 32 bytes, or a PEM file path."""
    if isinstance(data, (str, Path)):
        data = Path(data).read_bytes()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SealError(f"a sealing key must be an X25519 public key (PEM or raw), not {type(data).__name__}")
    data = bytes(data)
    if len(data) == PUB_LEN:
        return X25519PublicKey.from_public_bytes(data)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise SealError("not a PEM public key") from None
    if not isinstance(key, X25519PublicKey):
        raise SealError("the sealing key must be an X25519 public key")
    return key
