"""Holder details sealed to the central server's X25519 key, so only the server can read them.

X25519 with an ephemeral key per sealing session (a `Sealer`: at most 1024 blobs or 10 minutes,
never stored), HKDF-SHA256, AES-256-GCM with a random nonce per blob (all from `cryptography`).
The byte format is specified in docs/entry-log.md#sealed-holder-details; `open` is what the
server runs (it also opens version-1 blobs, one ephemeral key per blob). The device holds only the
server's public key: a stolen device cannot open its log.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from scanner.base.errors import CheckpointError
from scanner.cards.verdict import Holder
from scanner.store.entry import MAX_BLOB

VERSION = 2
INFO = {1: b"checkpoint-edge seal v1", 2: b"checkpoint-edge seal v2"}
KEY_ID_LEN = 8
PUB_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
HEADER_LEN_V1 = 1 + KEY_ID_LEN + PUB_LEN  # version, key id, ephemeral public key (nonce derived)
HEADER_LEN = HEADER_LEN_V1 + NONCE_LEN  # v2 adds the random nonce
SESSION_MAX_BLOBS = 1024  # random 96-bit nonces under one key: collision odds ~2^-77
SESSION_MAX_AGE_S = 600.0  # and no session key lives longer in memory than this
PAD_TO = 64  # plaintext is padded to a multiple of this, so names of similar length look alike


class SealError(CheckpointError):
    """A sealed blob that cannot be opened: wrong key, truncated, altered or not ours."""

    code = "seal_invalid"


def key_id(public_key: X25519PublicKey) -> bytes:
    """First 8 bytes of SHA-256 over the raw 32-byte public key (which server key to use)."""
    return _key_id_of_raw(_raw(public_key))


def _key_id_of_raw(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()[:KEY_ID_LEN]


def _raw(public_key: X25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _context(context: bytes | str) -> bytes:
    return context.encode("utf-8") if isinstance(context, str) else bytes(context)


def _derive(version: int, shared: bytes, eph_pub: bytes, server_pub: bytes) -> tuple[bytes, bytes | None]:
    """v1: AES key and nonce (the key is used once); v2: the session's AES key only. (A low-order
    ephemeral key never gets here: `exchange` refuses an all-zero shared secret with ValueError.)"""
    length = 44 if version == 1 else 32
    okm = HKDF(algorithm=hashes.SHA256(), length=length, salt=eph_pub + server_pub,
               info=INFO[version]).derive(shared)
    return okm[:32], (okm[32:] if version == 1 else None)


_JSON = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"))
_quote = json.encoder.encode_basestring  # what _JSON writes a string as (ensure_ascii=False)


def _plaintext(holder: Holder) -> bytes:
    """The holder's details as compact JSON with sorted keys, padded. Text fields (always, from a
    verifier) are written directly, the same bytes the encoder writes: a scan's hot path."""
    name, birth, masked = holder.name, holder.birth_date, holder.id_masked
    if type(name) is str and type(birth) is str and (masked is None or type(masked) is str):
        text = f'{{"b":{_quote(birth)},"i":{"null" if masked is None else _quote(masked)},"n":{_quote(name)}}}'
    else:
        text = _JSON.encode({"n": name, "b": birth, "i": masked})
    data = text.encode("utf-8")
    return data + b" " * (-len(data) % PAD_TO)


class Sealer:
    """Seals holder details to one server key, one X25519 exchange per session instead of per blob.

    A session (ephemeral key pair, derived AES key) serves at most ``max_blobs`` blobs or
    ``max_age_s`` seconds, whichever comes first; its private half is never stored, so the log
    file alone opens nothing. Thread-safe. Why: the exchange costs ~85 µs of a scan's commit,
    the AES-GCM of one blob a few µs (docs/entry-log.md#sealed-holder-details).
    """

    def __init__(self, server_public_key: X25519PublicKey, *, max_blobs: int = SESSION_MAX_BLOBS,
                 max_age_s: float = SESSION_MAX_AGE_S, clock=time.monotonic) -> None:
        if max_blobs < 1 or max_age_s <= 0:
            raise ValueError("a sealing session needs max_blobs >= 1 and max_age_s > 0")
        self._server = server_public_key
        self._server_raw = _raw(server_public_key)
        self._key_id = _key_id_of_raw(self._server_raw)
        self.max_blobs, self.max_age_s, self._clock = max_blobs, max_age_s, clock
        self._lock = threading.Lock()
        # header prefix, cipher, started, count of the blobs it sealed (itertools.count: next() is one
        # step under the GIL, so a blob takes its number without a lock)
        self._session: tuple[bytes, AESGCM, float, Iterator[int]] | None = None
        self.sessions = 0  # how many sessions so far (for tests and stats)

    def _new_session(self, now: float) -> tuple[bytes, AESGCM, float, Iterator[int]]:
        eph = X25519PrivateKey.generate()
        eph_pub = _raw(eph.public_key())
        key, _ = _derive(VERSION, eph.exchange(self._server), eph_pub, self._server_raw)
        self.sessions += 1
        return bytes([VERSION]) + self._key_id + eph_pub, AESGCM(key), now, itertools.count()

    def _session_for(self, now: float) -> tuple[bytes, AESGCM, float, Iterator[int]]:
        """A session with a blob left for this one, under the lock: the current one (if another
        thread renewed it meanwhile), else a new one."""
        with self._lock:
            s = self._session
            if s is None or not 0 <= now - s[2] < self.max_age_s or next(s[3]) >= self.max_blobs:
                s = self._session = self._new_session(now)
                next(s[3])
            return s

    def seal(self, holder: Holder, context: bytes | str) -> bytes:
        """The holder's name, birth date and masked id, readable only with the server's private key;
        ``context`` (the entry id) is authenticated with the blob, so it opens only for that entry.
        A scan's hot path: no lock while the session has blobs left and time (each blob takes a
        number of its session; a session whose numbers or time ran out is renewed under the lock)."""
        now = self._clock()
        s = self._session
        if s is None or not 0 <= now - s[2] < self.max_age_s or next(s[3]) >= self.max_blobs:
            s = self._session_for(now)
        nonce = os.urandom(NONCE_LEN)
        header = s[0] + nonce
        aad = header + (context.encode("utf-8") if type(context) is str else _context(context))
        return header + s[1].encrypt(nonce, _plaintext(holder), aad)

    def rotate(self) -> None:
        """End the current session now (its key is dropped; the next blob starts a new one)."""
        with self._lock:
            self._session = None


def seal(holder: Holder, server_public_key: X25519PublicKey, context: bytes | str) -> bytes:
    """One blob in a session of its own (a fresh ephemeral key); use a `Sealer` for many."""
    return Sealer(server_public_key, max_blobs=1).seal(holder, context)


class _KeyCache:
    """Server side: derived v2 session keys by (server key, ephemeral key), so the blobs of one
    session cost one X25519 exchange to open, not one each. Bounded; thread-safe."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._keys: OrderedDict[bytes, AESGCM] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, tag: bytes) -> AESGCM | None:
        with self._lock:
            c = self._keys.get(tag)
            if c is not None:
                self._keys.move_to_end(tag)
            return c

    def put(self, tag: bytes, cipher: AESGCM) -> None:
        with self._lock:
            self._keys[tag] = cipher
            while len(self._keys) > self.size:
                self._keys.popitem(last=False)


_server_keys = _KeyCache()


def open(blob: bytes, server_private_key: X25519PrivateKey, context: bytes | str) -> Holder:
    """The Holder sealed in ``blob`` (version 1 or 2) for ``context``; SealError if it cannot be opened."""
    blob = bytes(blob)
    version = blob[0] if blob else 0
    header_len = {1: HEADER_LEN_V1, 2: HEADER_LEN}.get(version, HEADER_LEN)
    if len(blob) < header_len + TAG_LEN or len(blob) > MAX_BLOB:
        raise SealError(f"sealed blob of {len(blob)} bytes is not a sealed blob")
    if version not in (1, 2):
        raise SealError(f"sealed blob version {version} is not supported")
    server_public = server_private_key.public_key()
    server_raw = _raw(server_public)
    if blob[1:1 + KEY_ID_LEN] != _key_id_of_raw(server_raw):
        raise SealError("sealed to a different server key")
    header = blob[:header_len]
    eph_pub = blob[1 + KEY_ID_LEN:HEADER_LEN_V1]
    nonce = header[HEADER_LEN_V1:]  # v2: in the header; v1: derived below
    tag = server_raw + eph_pub
    cipher = _server_keys.get(tag) if version == 2 else None
    if cipher is None:
        try:
            shared = server_private_key.exchange(X25519PublicKey.from_public_bytes(eph_pub))
        except ValueError:
            raise SealError("invalid ephemeral key in sealed blob") from None
        key, derived_nonce = _derive(version, shared, eph_pub, server_raw)
        cipher = AESGCM(key)
        if derived_nonce is not None:
            nonce = derived_nonce
    try:
        plain = cipher.decrypt(nonce, blob[header_len:], header + _context(context))
    except InvalidTag:
        raise SealError("sealed blob altered, or sealed for another entry") from None
    if version == 2:
        _server_keys.put(tag, cipher)  # only keys that opened a blob (no cache flooding with junk)
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


def load_public_key(data: X25519PublicKey | bytes | str | Path) -> X25519PublicKey:
    """The server's X25519 public key: itself, or from PEM bytes, raw 32 bytes, or a PEM file path."""
    if isinstance(data, X25519PublicKey):
        return data
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
