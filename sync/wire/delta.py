"""The trust-bundle delta format: the server makes a signed delta from bundle N to bundle M, the
device applies it to the N it holds. Format: docs/sync-protocol.md#trust-updates.

A delta takes bundle N (exactly as scanner.cards.bundle.make_bundle wrote it) to bundle M: keys removed
and added, revoked cards and kids removed and added, and the root's signature over M's payload.
The device rebuilds M's payload byte for byte, so what it installs is the genuine root-signed
bundle M, checked by scanner.cards.bundle.open_bundle like any other.

Between two format-2 (streamed) bundles the delta (v 2) carries M's signed HEAD part as it is and the
card ids removed and added; the device merges them into N's ids chunk by chunk as it reads N's
file, writing M's file as it goes (apply_streamed): neither list is ever held whole.
"""
from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.base.errors import TrustError
from scanner.base.lazy import lazy_module
from scanner.cards.bundle import (
    HEAD_TAG,
    IDS_TAG,
    MAGIC2,
    MAX_HEAD_BYTES,
    PART,
    Bundle,
    StreamReader,
    bundle_parts,
    is_streamed,
    open_bundle,
    open_head,
    open_parts,
    root_kid,
)
from scanner.cards.revocation import ID_SIZE

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy_module("numpy")  # loaded at its first use: ~13 MB a process without a camera may never need

DELTA_TYPE = "checkpoint-bundle-delta"
DELTA_FORMAT = 1
DELTA_STREAMED = 2
MAX_DELTA_BYTES = 64 * 1024 * 1024

_CARDS_OPEN = b',"revoked_cards":['
_KIDS_OPEN = b'],"revoked_kids":'
_ROW = 35  # '"' + 32 hex digits + '"' + ','
_SLICE = 1 << 16  # rows checked at a time (bounded temporaries)


@functools.cache
def _hex_table() -> np.ndarray:
    """True at the byte values of the lowercase hex digits (made at first use, as NumPy is loaded)."""
    table = np.zeros(256, dtype=bool)
    table[list(b"0123456789abcdef")] = True
    return table


class DeltaError(TrustError):
    """A delta that cannot be used (malformed, wrong base, bad signature): fetch the full bundle."""

    code = "delta_invalid"


# ---------------------------------------------------------------- canonical payloads


@dataclass(frozen=True, slots=True)
class Parts:
    """A bundle payload taken apart: head values, revoked card ids as sorted hex rows, kids."""

    version: int
    issued_at: int
    expires_at: int
    keys: list
    cards: np.ndarray  # dtype S32: lowercase hex, strictly increasing
    kids: list


def _payload_buffer(p: Parts) -> bytearray:
    """The payload make_bundle writes for these values (compact JSON, fixed key order), built in
    one buffer: the card rows are written into it in place (no copies of a large list)."""
    head = json.dumps({"version": p.version, "issued_at": p.issued_at, "expires_at": p.expires_at,
                       "keys": p.keys}, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    kids = json.dumps(p.kids, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    n = len(p.cards)
    first = len(head) - 1 + len(_CARDS_OPEN)
    rows_len = n * _ROW - 1 if n else 0
    out = bytearray(first + rows_len + len(_KIDS_OPEN) + len(kids) + 1)
    out[:first] = head[:-1] + _CARDS_OPEN
    if n:
        rows = np.frombuffer(out, dtype=np.uint8, count=n * _ROW - 1, offset=first)
        body = rows[:(n - 1) * _ROW].reshape(n - 1, _ROW)
        digits = np.frombuffer(p.cards.data, dtype=np.uint8).reshape(n, 32)
        body[:, 0] = ord('"')
        body[:, 1:33] = digits[:-1]
        body[:, 33] = ord('"')
        body[:, 34] = ord(",")
        last = rows[(n - 1) * _ROW:]
        last[0] = ord('"')
        last[1:33] = digits[-1]
        last[33] = ord('"')
    out[first + rows_len:] = _KIDS_OPEN + kids + b"}"
    return out


def join_payload(p: Parts) -> bytes:
    """The payload bytes make_bundle writes for these values (compact JSON, fixed key order)."""
    return bytes(_payload_buffer(p))


def _strictly_increasing(cards: np.ndarray) -> bool:
    return len(cards) < 2 or bool((cards[1:] > cards[:-1]).all())


def split_payload(payload: bytes | bytearray) -> Parts:
    """Take a canonical payload apart; DeltaError if it is not exactly in make_bundle's layout."""
    start = payload.find(_CARDS_OPEN)
    end = payload.find(_KIDS_OPEN, start + 1) if start >= 0 else -1
    if start < 0 or end < 0:
        raise DeltaError("bundle payload is not in the canonical layout")
    try:
        head = json.loads(payload[:start] + b"}")
        tail = json.loads(b"{" + payload[end + 2:])
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise DeltaError("bundle payload is not in the canonical layout") from None
    if not isinstance(head, dict) or list(head) != ["version", "issued_at", "expires_at", "keys"] \
            or not isinstance(tail, dict) or list(tail) != ["revoked_kids"]:
        raise DeltaError("bundle payload is not in the canonical layout")
    first = start + len(_CARDS_OPEN)
    size = end - first
    if size:  # checked in place and in slices: a province's list is tens of MB
        if (size + 1) % _ROW:
            raise DeltaError("revoked card list is not in the canonical layout")
        n = (size + 1) // _ROW
        flat = np.frombuffer(payload, dtype=np.uint8, count=size, offset=first)
        body = flat[:(n - 1) * _ROW].reshape(n - 1, _ROW)
        last = flat[(n - 1) * _ROW:]
        digits = np.empty((n, 32), dtype=np.uint8)
        digits[:-1] = body[:, 1:33]
        digits[-1] = last[1:33]
        ok = last[0] == ord('"') and last[33] == ord('"')
        for i in range(0, n, _SLICE):
            rows = body[i:i + _SLICE]
            ok = ok and not ((rows[:, 0] != ord('"')).any() or (rows[:, 33] != ord('"')).any()
                             or (rows[:, 34] != ord(",")).any()) and bool(_hex_table()[digits[i:i + _SLICE]].all())
        if not ok:
            raise DeltaError("revoked card list is not in the canonical layout")
        cards = digits.view("S32").reshape(-1)
    else:
        cards = np.empty(0, dtype="S32")
    if not _strictly_increasing(cards):
        raise DeltaError("revoked card list is not sorted")
    parts = Parts(head["version"], head["issued_at"], head["expires_at"], head["keys"], cards,
                  tail["revoked_kids"])
    # the card rows were checked above; the rest must re-serialise to exactly the same bytes
    empty = join_payload(Parts(parts.version, parts.issued_at, parts.expires_at, parts.keys,
                               np.empty(0, dtype="S32"), parts.kids))
    if empty != payload[:start + len(_CARDS_OPEN)] + payload[end:]:
        raise DeltaError("bundle payload is not in the canonical layout")
    return parts


def file_parts(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(payload, sig, kid) of a bundle file, without checking anything."""
    try:
        return bundle_parts(data)
    except TrustError:
        raise DeltaError("not a bundle file") from None


def bundle_file(payload: bytes | bytearray, sig: bytes, kid: bytes) -> bytes:
    """A bundle file in make_bundle's layout (json.dumps(indent=1) of the three base64 strings, which
    need no escaping), joined as bytes: no text copies of a large payload."""
    return b"".join(bundle_file_pieces(payload, sig, kid))


_PIECE = 3 << 18  # payload bytes encoded at a time (a multiple of 3: the pieces' base64 joins up exactly)


def bundle_file_pieces(payload: bytes | bytearray, sig: bytes, kid: bytes) -> Iterator[bytes]:
    """bundle_file in pieces of at most 1 MiB, to write or hash without holding the whole file."""
    yield b'{\n "payload": "'
    view = memoryview(payload)
    for i in range(0, len(view), _PIECE):
        yield base64.b64encode(view[i:i + _PIECE])
    yield b'",\n "sig": "' + base64.b64encode(sig) + b'",\n "kid": "' + base64.b64encode(kid) + b'"\n}\n'


# ---------------------------------------------------------------- deltas


@dataclass(frozen=True, slots=True)
class Delta:
    from_version: int
    from_digest: str
    version: int
    issued_at: int
    expires_at: int
    keys_removed: list
    keys_added: list
    cards_removed: np.ndarray
    cards_added: np.ndarray
    kids_removed: list
    kids_added: list
    bundle_sig: bytes
    root_kid: bytes


def apply_parts(old: Parts, d: Delta) -> Parts:
    """The parts of bundle M from those of N and the delta N -> M. The changed rows are found by
    binary search (both lists are sorted) and the kept runs copied once into the new array: no
    temporary copies of a province's list."""
    keys = [k for k in old.keys if k not in d.keys_removed] + list(d.keys_added)
    cards = old.cards
    at = np.searchsorted(cards, d.cards_removed)
    found = at < len(cards)
    found[found] = cards[at[found]] == d.cards_removed[found]
    gone = at[found]  # rows of N that M drops, increasing
    added = d.cards_added
    where = np.searchsorted(cards, added)  # the row of N each added card goes before
    out = np.empty(len(cards) - len(gone) + len(added), dtype=cards.dtype)
    # events in N's row order: ("copy up to row r, skip it") for a removal, ("copy up to r, add") for an addition
    events = sorted([(int(r), 1, 0) for r in gone] + [(int(r), 0, i) for i, r in enumerate(where)])
    src = dst = 0
    for row, removal, i in events:
        n = row - src
        out[dst:dst + n] = cards[src:row]
        dst, src = dst + n, row
        if removal:
            src += 1
        else:
            out[dst] = added[i]
            dst += 1
    out[dst:] = cards[src:]
    if not _strictly_increasing(out):
        raise DeltaError("delta adds a card that is already revoked")
    kids = sorted((set(old.kids) - set(d.kids_removed)) | set(d.kids_added))
    return Parts(d.version, d.issued_at, d.expires_at, keys, out, kids)


def _hex_list(cards: np.ndarray) -> list[str]:
    return [c.decode("ascii") for c in cards.tolist()]


def make_delta(root_private: ed25519.Ed25519PrivateKey, old_file: bytes, new_file: bytes) -> bytes | None:
    """The signed delta from bundle file ``old_file`` to ``new_file`` (both signed by this root),
    or None if the new payload cannot be rebuilt exactly from the old one (then only full)."""
    if is_streamed(old_file) or is_streamed(new_file):
        return _make_streamed_delta(root_private, old_file, new_file) if is_streamed(old_file) == is_streamed(
            new_file) else None  # from one format to the other: the full bundle only
    old_payload, _, _ = file_parts(old_file)
    new_payload, new_sig, kid = file_parts(new_file)
    root_pub = root_private.public_key()
    if kid != root_kid(root_pub):
        raise TrustError("the new bundle is not signed by this root", code="bundle_wrong_root")
    try:
        root_pub.verify(new_sig, new_payload)
        old, new = split_payload(old_payload), split_payload(new_payload)
    except InvalidSignature:
        raise TrustError("the new bundle's signature does not verify", code="bundle_bad_signature") from None
    except DeltaError:
        return None
    if new.version <= old.version:
        return None
    removed = [k for k in old.keys if k not in new.keys]
    added = [k for k in new.keys if k not in old.keys]
    if [k for k in old.keys if k not in removed] + added != new.keys:
        removed, added = list(old.keys), list(new.keys)  # order changed: replace them all
    body = {
        "type": DELTA_TYPE, "v": DELTA_FORMAT,
        "from_version": old.version, "from_digest": hashlib.sha256(old_payload).hexdigest(),
        "version": new.version, "issued_at": new.issued_at, "expires_at": new.expires_at,
        "keys_removed": removed, "keys_added": added,
        "revoked_cards_removed": _hex_list(np.setdiff1d(old.cards, new.cards, assume_unique=True)),
        "revoked_cards_added": _hex_list(np.setdiff1d(new.cards, old.cards, assume_unique=True)),
        "revoked_kids_removed": sorted(set(old.kids) - set(new.kids)),
        "revoked_kids_added": sorted(set(new.kids) - set(old.kids)),
        "bundle_sig": base64.b64encode(new_sig).decode("ascii"),
    }
    payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    outer = {"delta": base64.b64encode(payload).decode("ascii"),
             "sig": base64.b64encode(root_private.sign(payload)).decode("ascii"),
             "kid": base64.b64encode(kid).decode("ascii")}
    data = (json.dumps(outer, indent=1) + "\n").encode("ascii")
    delta = open_delta(data, [root_pub])
    if join_payload(apply_parts(old, delta)) != new_payload:
        return None
    return data


def _cards_array(values: object, what: str) -> np.ndarray:
    if not isinstance(values, list) or not all(isinstance(v, str) and len(v) == 32 for v in values):
        raise DeltaError(f"delta: {what} must be a list of 32-hex-digit ids")
    if not values:
        return np.empty(0, dtype="S32")
    raw = "".join(values).encode("ascii", "replace")
    arr = np.frombuffer(raw, dtype=np.uint8)
    if not _hex_table()[arr].all():
        raise DeltaError(f"delta: {what} must be lowercase hex")
    cards = np.frombuffer(raw, dtype="S32").copy()
    if not _strictly_increasing(cards):
        raise DeltaError(f"delta: {what} must be sorted")
    return cards


def open_delta(data: bytes, roots: Sequence[ed25519.Ed25519PublicKey]) -> Delta:
    """Verify a v1 delta file against the root(s) and parse it; DeltaError if anything is off."""
    d = open_any_delta(data, roots)
    if not isinstance(d, Delta):
        raise DeltaError("not a v1 bundle delta")
    return d


def open_any_delta(data: bytes, roots: Sequence[ed25519.Ed25519PublicKey]) -> Delta | StreamedDelta:
    """Verify a delta file (v1 or v2) against the root(s) and parse it; DeltaError if anything is off."""
    if len(data) > MAX_DELTA_BYTES:
        raise DeltaError("delta file too large")
    try:
        outer = json.loads(data)
        payload = base64.b64decode(outer["delta"], validate=True)
        sig = base64.b64decode(outer["sig"], validate=True)
        kid = base64.b64decode(outer["kid"], validate=True)
    except (ValueError, UnicodeDecodeError, TypeError, KeyError, RecursionError, binascii.Error):
        raise DeltaError("not a delta file") from None
    root = next((r for r in roots if root_kid(r) == kid), None)
    if root is None:
        raise DeltaError("delta signed by a root this device does not trust")
    try:
        root.verify(sig, payload)
    except InvalidSignature:
        raise DeltaError("delta signature does not verify against the trust root") from None
    try:
        b = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise DeltaError("delta payload is not JSON") from None
    if isinstance(b, dict) and b.get("type") == DELTA_TYPE and b.get("v") == DELTA_STREAMED:
        return _streamed_delta(b)
    if not isinstance(b, dict) or b.get("type") != DELTA_TYPE or b.get("v") != DELTA_FORMAT:
        raise DeltaError("not a v1 bundle delta")
    for name in ("from_version", "version", "issued_at", "expires_at"):
        if type(b.get(name)) is not int or b[name] < 0:
            raise DeltaError(f"delta: {name} must be a non-negative integer")
    lists = ("keys_removed", "keys_added", "revoked_kids_removed", "revoked_kids_added")
    if not all(isinstance(b.get(n), list) for n in lists):
        raise DeltaError("delta: lists missing")
    if not all(isinstance(k, dict) for k in b["keys_removed"] + b["keys_added"]):
        raise DeltaError("delta: keys must be objects")
    if not all(isinstance(k, str) for k in b["revoked_kids_removed"] + b["revoked_kids_added"]):
        raise DeltaError("delta: kids must be strings")
    if not isinstance(b.get("from_digest"), str) or not isinstance(b.get("bundle_sig"), str):
        raise DeltaError("delta: from_digest / bundle_sig missing")
    try:
        bundle_sig = base64.b64decode(b["bundle_sig"], validate=True)
    except (ValueError, binascii.Error):
        raise DeltaError("delta: bundle_sig is not base64") from None
    return Delta(b["from_version"], b["from_digest"], b["version"], b["issued_at"], b["expires_at"],
                 b["keys_removed"], b["keys_added"], _cards_array(b.get("revoked_cards_removed"), "removed cards"),
                 _cards_array(b.get("revoked_cards_added"), "added cards"), b["revoked_kids_removed"],
                 b["revoked_kids_added"], bundle_sig, kid)


def apply_delta(current_file: bytes | os.PathLike, current: Bundle, delta_file: bytes,
                roots: Sequence[ed25519.Ed25519PublicKey]) -> tuple[bytes, Bundle]:
    """Bundle M's file (and its verified content) from the current bundle N (its file, or the path
    to read it from) and a delta N -> M: apply_delta_parts, the file joined."""
    new = apply_delta_parts(current_file, current, delta_file, roots)
    return bundle_file(new.payload, new.sig, new.kid), new.bundle


_PAYLOAD_OPEN = b'{\n "payload": "'  # where make_bundle's layout puts the payload: at the very start


def _payload_of_file(path: Path) -> bytes | bytearray:
    """The decoded payload of the bundle file at ``path``, read and decoded 1 MiB at a time (the
    file and the payload are never both held). Nothing is checked but the base64: the caller
    compares the payload's digest. A file not in make_bundle's layout is read whole instead."""
    with open(path, "rb") as fh:
        if fh.read(len(_PAYLOAD_OPEN)) != _PAYLOAD_OPEN:
            fh.seek(0)
            return file_parts(fh.read())[0]
        payload = bytearray()
        while True:
            piece = fh.read(_PIECE // 3 * 4)  # whole base64 quanta, up to the closing quote
            end = piece.find(b'"')
            if end >= 0:
                piece = piece[:end]
            try:
                payload += binascii.a2b_base64(piece, strict_mode=True)
            except binascii.Error:
                raise DeltaError("current bundle file is not a bundle") from None
            if end >= 0:
                return payload
            if not piece:
                raise DeltaError("current bundle file is cut short")


@dataclass(frozen=True, slots=True)
class Applied:
    """Bundle M as a delta made it: its payload, signature and root kid (the file's parts), and its
    content as the root's signature over that payload verified it."""

    payload: bytearray
    sig: bytes
    kid: bytes
    bundle: Bundle


def apply_delta_parts(current_file: bytes | os.PathLike, current: Bundle, delta_file: bytes,
                      roots: Sequence[ed25519.Ed25519PublicKey]) -> Applied:
    """Bundle M from the current bundle N (its file, or the path to read it from: then its bytes are
    let go once decoded) and a delta N -> M, without M's file: the caller writes it in pieces
    (bundle_file_pieces), so M's file and a second copy of its payload are never held.

    Checks the delta's root signature and its base (version and payload digest of N), rebuilds
    M's payload, and opens it with open_parts(min_version=N): the root's own signature over M
    decides. Each large value is let go as soon as the next one is made.
    """
    d = open_delta(delta_file, roots)
    if d.from_version != current.version or d.from_digest != current.digest:
        raise DeltaError(f"delta is for version {d.from_version}, this device has {current.version}")
    if isinstance(current_file, bytes):
        payload: bytes | bytearray = file_parts(current_file)[0]
        del current_file
    else:
        try:
            payload = _payload_of_file(Path(current_file))
        except OSError:
            raise DeltaError("current bundle file unreadable") from None
    if hashlib.sha256(payload).hexdigest() != current.digest:
        raise DeltaError("current bundle file does not match its digest")
    old = split_payload(payload)
    del payload  # the rows are copied out of it
    new = apply_parts(old, d)
    del old
    new_payload = _payload_buffer(new)
    del new
    return Applied(new_payload, d.bundle_sig, d.root_kid,
                   open_parts(new_payload, d.bundle_sig, d.root_kid, roots,
                              min_version=current.version))


# ---------------------------------------------------------------- deltas between streamed bundles


@dataclass(frozen=True, slots=True)
class StreamedDelta:
    """A v2 delta: from bundle N (version, payload digest) to M, whose signed HEAD part it carries,
    and the card ids (16 bytes each, sorted) M drops and adds."""

    from_version: int
    from_digest: str
    head: bytes
    cards_removed: list[bytes]
    cards_added: list[bytes]


def _id_list(values: object, what: str) -> list[bytes]:
    """Sorted distinct 32-hex-digit ids as 16-byte values; DeltaError otherwise."""
    if not isinstance(values, list) or not all(isinstance(v, str) and len(v) == 32 for v in values):
        raise DeltaError(f"delta: {what} must be a list of 32-hex-digit ids")
    try:
        ids = [bytes.fromhex(v) for v in values]
    except ValueError:
        raise DeltaError(f"delta: {what} must be hex") from None
    if any(len(i) != ID_SIZE for i in ids) or not all(map(bytes.__lt__, ids, ids[1:])):
        raise DeltaError(f"delta: {what} must be sorted 32-hex-digit ids")
    return ids


def _streamed_delta(b: dict) -> StreamedDelta:
    if type(b.get("from_version")) is not int or b["from_version"] < 0 or not isinstance(b.get("from_digest"), str):
        raise DeltaError("delta: from_version / from_digest missing")
    try:
        head = base64.b64decode(b.get("head") or "", validate=True)
    except (ValueError, TypeError, binascii.Error):
        raise DeltaError("delta: head is not base64") from None
    if not head or len(head) > MAX_HEAD_BYTES:
        raise DeltaError("delta: head missing or too large")
    return StreamedDelta(b["from_version"], b["from_digest"], head,
                         _id_list(b.get("revoked_cards_removed"), "removed cards"),
                         _id_list(b.get("revoked_cards_added"), "added cards"))


def _head_part(data: bytes) -> bytes:
    """The HEAD part of a format-2 bundle file held in memory."""
    tag, size = PART.unpack_from(data, len(MAGIC2))
    if tag != HEAD_TAG:
        raise DeltaError("not a format-2 bundle file")
    at = len(MAGIC2) + PART.size
    return data[at:at + size]


def _hex_rows(ids: np.ndarray) -> list[str]:
    """Sorted 16-byte ids (dtype S16) as hex, each whole (tobytes keeps trailing zero bytes)."""
    raw = ids.tobytes()
    return [raw[i:i + ID_SIZE].hex() for i in range(0, len(raw), ID_SIZE)]


def _make_streamed_delta(root_private: ed25519.Ed25519PrivateKey, old_file: bytes, new_file: bytes) -> bytes | None:
    root_pub = root_private.public_key()
    old = open_bundle(old_file, [root_pub])
    new = open_bundle(new_file, [root_pub])  # the new bundle is checked whole (the server holds it anyway)
    if new.version <= old.version:
        return None
    # both id lists sorted and distinct: as 16-byte strings NumPy compares them as bytes (no Python object an id)
    old_ids = np.frombuffer(old.revoked_cards.blob(), dtype="S16")
    new_ids = np.frombuffer(new.revoked_cards.blob(), dtype="S16")
    body = {
        "type": DELTA_TYPE, "v": DELTA_STREAMED, "from_version": old.version, "from_digest": old.digest,
        "head": base64.b64encode(_head_part(new_file)).decode("ascii"),
        "revoked_cards_removed": _hex_rows(np.setdiff1d(old_ids, new_ids, assume_unique=True)),
        "revoked_cards_added": _hex_rows(np.setdiff1d(new_ids, old_ids, assume_unique=True)),
    }
    del old_ids, new_ids
    payload = json.dumps(body, separators=(",", ":")).encode("ascii")
    kid = root_kid(root_pub)
    data = (json.dumps({"delta": base64.b64encode(payload).decode("ascii"),
                        "sig": base64.b64encode(root_private.sign(payload)).decode("ascii"),
                        "kid": base64.b64encode(kid).decode("ascii")}, indent=1) + "\n").encode("ascii")
    out = io.BytesIO()
    d = open_any_delta(data, [root_pub])
    assert isinstance(d, StreamedDelta)
    apply_streamed(io.BytesIO(old_file), old, d, [root_pub], out)
    return data if out.getvalue() == new_file else None


def apply_streamed(old: IO[bytes], current: Bundle, d: StreamedDelta, roots: Sequence[ed25519.Ed25519PublicKey],
                   out: IO[bytes]) -> None:
    """Write bundle M's file to ``out`` from the installed format-2 bundle N (its file open as ``old``,
    its content ``current``) and the v2 delta N -> M: M's head is checked (root signature, version
    above N's) before anything is written; N's ids are read and checked (their digest too) a chunk at a
    time and merged with the delta's; M's ids must come out exactly as many and with the SHA-256 its
    signed head names. DeltaError if not (``out`` then holds a part: the caller throws it away)."""
    if d.from_version != current.version or d.from_digest != current.digest:
        raise DeltaError(f"delta is for version {d.from_version}, this device has {current.version}")
    try:
        head = open_head(d.head, roots, min_version=current.version)
        reader = StreamReader(old, roots)
    except TrustError as exc:
        raise DeltaError(f"delta: {exc}") from None
    if reader.head.bundle.digest != current.digest:
        raise DeltaError("current bundle file does not match its digest")
    out.write(MAGIC2 + PART.pack(HEAD_TAG, len(d.head)) + d.head + PART.pack(IDS_TAG, head.count * ID_SIZE))
    h = hashlib.sha256()
    removed, added = d.cards_removed, d.cards_added
    r = a = written = 0

    def put(ids: list[bytes]) -> None:
        nonlocal written
        data = b"".join(ids)
        written += len(data)
        if written > head.count * ID_SIZE:
            raise DeltaError("delta makes more revoked ids than the new bundle's head says")
        h.update(data)
        out.write(data)

    prev = b""
    try:
        for chunk in reader.ids():
            ids = [chunk[i:i + ID_SIZE] for i in range(0, len(chunk), ID_SIZE)]
            last = ids[-1]
            gone = set()
            while r < len(removed) and removed[r] <= last:
                gone.add(removed[r])
                r += 1
            start = a
            while a < len(added) and added[a] <= last:
                a += 1
            if gone or a > start:
                ids = sorted([i for i in ids if i not in gone] + added[start:a])
            if ids and not (prev < ids[0] and all(map(bytes.__lt__, ids, ids[1:]))):
                raise DeltaError("delta adds a card that is already revoked")
            if ids:
                prev = ids[-1]
            put(ids)
    except TrustError as exc:
        raise DeltaError(f"current bundle file: {exc}") from None
    put(added[a:])
    if written != head.count * ID_SIZE or h.digest() != head.ids_sha256:
        raise DeltaError("the ids the delta makes do not match the new bundle's signed head")
