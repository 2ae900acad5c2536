"""Signed trust bundles: issuer keys and revocations, signed by the provisioned root (Ed25519).

Two file formats (docs/card-format.md#trust-bundle). Format 1: JSON {"payload": b64(B), "sig":
b64(sig over B), "kid": b64(root kid)}, B being UTF-8 JSON {"version", "issued_at", "expires_at",
"keys", "revoked_cards", "revoked_kids"}. Format 2 (streamed): a magic, then a HEAD part holding
such a JSON envelope whose payload carries the count and SHA-256 of the revoked ids instead of the
ids, then an IDS part of the ids as raw sorted 16-byte records, read and hashed in chunks
(StreamReader), so a million revocations are never held whole. Opening checks the signature before
looking inside B; a bundle that fails any check is refused as a whole (TrustError with a stable code).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
import struct
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import IO, TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.base import i18n
from scanner.base.errors import KeyFileError, TrustError
from scanner.base.lazy import lazy_module
from scanner.cards import keys as keymod
from scanner.cards import x509util
from scanner.cards.revocation import ID_SIZE, RevocationSet

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy_module("numpy")  # loaded at its first use: ~13 MB a process without a camera may never need

MAX_BUNDLE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class BundleKey:
    """One issuer key of a bundle. ``issuer`` None means any issuer (only from PEM files, not bundles)."""

    kid: bytes
    alg: str
    issuer: str | None
    public_key: keymod.PublicKey
    formats: frozenset[str] | None = None
    not_after: int | None = None
    x509_der: bytes | None = None

    def to_json(self) -> dict:
        entry: dict = {"kid": _b64(self.kid), "alg": self.alg, "issuer": self.issuer}
        if self.x509_der is not None:
            entry["x509"] = _b64(self.x509_der)
        else:
            entry["spki"] = _b64(keymod.spki_der(self.public_key))
        if self.formats is not None:
            entry["formats"] = sorted(self.formats)
        if self.not_after is not None:
            entry["not_after"] = self.not_after
        return entry


@dataclass(frozen=True, slots=True)
class Bundle:
    """The verified content of a trust bundle."""

    version: int
    issued_at: int
    expires_at: int
    keys: tuple[BundleKey, ...]
    revoked_cards: RevocationSet
    revoked_kids: frozenset[bytes]
    root_kid: bytes
    digest: str  # SHA-256 of the signed payload, hex: identifies this exact bundle

    def expired(self, now: float) -> bool:
        return now > self.expires_at


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _malformed(message: str, key: str, **params: object) -> TrustError:
    """A bundle refused for its form: ``message`` for the log, the catalogue's [trust_error] ``key`` for people."""
    return TrustError(message, code="bundle_malformed", text=i18n.text("trust_error." + key, **params))


def _rollback(version: int, current: int) -> TrustError:
    """A bundle not newer than the one installed (no rollback)."""
    return TrustError(f"bundle version {version} is not newer than {current} (rollback refused)",
                      code="bundle_rollback", text=i18n.text("trust_error.rollback", version=version, current=current))


def _unb64(text: object, what: str) -> bytes:
    if type(text) is _Decoded:  # the payload, already decoded by the fast path of open_bundle
        return text.value if isinstance(text.value, bytes) else bytes(text.value)
    if type(text) is not str:
        raise _malformed(f"bundle: {what} is not a base64 string", "not_base64", field=what)
    try:
        return _strict_b64(text)
    except (binascii.Error, ValueError):
        raise _malformed(f"bundle: {what} is not valid base64", "not_base64", field=what) from None


def _strict_b64(data) -> bytes:
    """Standard base64 with nothing but alphabet and final padding (base64.b64decode(validate=True)
    in Python >= 3.11); takes str, bytes or a memoryview without copying it first."""
    return binascii.a2b_base64(data, strict_mode=True)


def _int(obj: dict, name: str) -> int:
    value = obj.get(name)
    if type(value) is not int or value < 0:
        raise _malformed(f"bundle: {name!r} must be a non-negative integer", "not_int", field=name)
    return value


def _optional_int(obj: dict, name: str) -> int | None:
    return None if obj.get(name) is None else _int(obj, name)


def root_kid(root: ed25519.Ed25519PublicKey) -> bytes:
    """The kid of a root key (same rule as issuer keys)."""
    return keymod.kid_of(root)


def open_bundle(data: bytes, roots: Sequence[ed25519.Ed25519PublicKey], *,
                min_version: int | None = None) -> Bundle:
    """Verify and parse a bundle file's bytes against the provisioned root key(s).

    ``min_version``: refuse a bundle whose version is not above it (no rollback).
    """
    if is_streamed(data):
        return _open_streamed_bytes(data, roots, min_version)
    payload, signature, kid = bundle_parts(data)
    return open_parts(payload, signature, kid, roots, min_version=min_version)


def bundle_parts(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(payload, sig, kid) of a bundle file, decoded, nothing verified yet; a caller that drops the
    file's bytes then does not hold them while the payload is checked and parsed (tens of MB
    for a million revocations)."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise _malformed("bundle file is larger than 256 MiB", "too_large")
    outer = _loads_with_big_value(data, "payload", _base64_string)
    if outer is None:
        try:
            outer = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise _malformed("bundle file is not JSON", "not_json") from None
    if type(outer) is not dict or not {"payload", "sig", "kid"} <= outer.keys():
        raise _malformed("bundle file must be a JSON object with payload, sig and kid", "not_envelope")
    return _unb64(outer["payload"], "payload"), _unb64(outer["sig"], "sig"), _unb64(outer["kid"], "kid")


def open_parts(payload: bytes | bytearray, signature: bytes, kid: bytes, roots: Sequence[ed25519.Ed25519PublicKey], *,
               min_version: int | None = None) -> Bundle:
    """open_bundle after bundle_parts: the root's signature over the payload, then its content."""
    _verify(payload, signature, kid, roots)
    bundle = _parse_payload(payload, kid)
    if min_version is not None and bundle.version <= min_version:
        raise _rollback(bundle.version, min_version)
    return bundle


def _verify(payload: bytes | bytearray, signature: bytes, kid: bytes,
            roots: Sequence[ed25519.Ed25519PublicKey]) -> None:
    """The root with ``kid`` among ``roots`` signed ``payload``, else TrustError."""
    if not roots:
        raise TrustError("no trust root given to check the bundle against", code="bundle_no_root")
    root = next((r for r in roots if root_kid(r) == kid), None)
    if root is None:
        raise TrustError("bundle is signed by a root this device does not trust "
                         f"(kid {_b64(kid)})", code="bundle_wrong_root",
                         text=i18n.text("trust_error.wrong_root", kid=_b64(kid)))
    try:
        root.verify(signature, payload)
    except InvalidSignature:
        raise TrustError("bundle signature does not verify against the trust root",
                         code="bundle_bad_signature") from None


def _json_object(payload: bytes | bytearray) -> dict:
    """A bundle payload parsed as the JSON object it must be, else TrustError (bundle_malformed)."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _malformed("bundle payload is not UTF-8 JSON", "payload_not_json") from None
    if type(body) is not dict:
        raise _malformed("bundle payload must be a JSON object", "payload_not_json")
    return body


def _parse_payload(payload: bytes | bytearray, kid: bytes) -> Bundle:
    body = _loads_with_big_value(payload, "revoked_cards", _hex_id_array) or _json_object(payload)
    if "format" in body or "revoked_cards_sha256" in body:  # a format-2 head taken out of its file
        raise TrustError("bundle payload is not in format 1", code="bundle_format")
    version, issued_at, expires_at, parsed, revoked_kids = _common(body)
    cards = body.get("revoked_cards", [])
    if type(cards) not in (list, _Decoded):
        raise _malformed("bundle: revocation lists must be lists", "not_list", field="revoked_cards")
    try:
        if type(cards) is _Decoded:  # already checked: each id 32 hex digits
            value = cards.value
            revoked_cards = (RevocationSet.adopt(value) if isinstance(value, bytearray)
                             else RevocationSet.from_blob(value))
        else:
            revoked_cards = RevocationSet.from_hex(cards)
    except ValueError as exc:
        raise _malformed(f"bundle: {exc}", "revoked_ids") from None
    return Bundle(version, issued_at, expires_at, parsed, revoked_cards, revoked_kids, kid,
                  hashlib.sha256(payload).hexdigest())


def _common(body: dict) -> tuple[int, int, int, tuple[BundleKey, ...], frozenset[bytes]]:
    """The values both formats' payloads hold: version, issued_at, expires_at, keys, revoked kids."""
    version = _int(body, "version")
    issued_at = _int(body, "issued_at")
    expires_at = _int(body, "expires_at")
    raw_keys = body.get("keys", [])
    if type(raw_keys) is not list:
        raise _malformed("bundle: 'keys' must be a list", "not_list", field="keys")
    parsed = parse_keys(raw_keys)
    kids = body.get("revoked_kids", [])
    if type(kids) is not list:
        raise _malformed("bundle: revocation lists must be lists", "not_list", field="revoked_kids")
    return version, issued_at, expires_at, parsed, frozenset(_unb64(k, "revoked kid") for k in kids)


def parse_keys(entries: list) -> tuple[BundleKey, ...]:
    """The issuer keys of a bundle's "keys" list (each as BundleKey.to_json writes it)."""
    return tuple(_parse_key(entry, i) for i, entry in enumerate(entries))


def _parse_key(entry: object, i: int) -> BundleKey:
    where = f"keys[{i}]"
    if type(entry) is not dict:
        raise _malformed(f"bundle: {where} is not an object", "not_object", field=where)
    kid = _unb64(entry.get("kid"), f"{where}.kid")
    alg = entry.get("alg")
    if alg not in keymod.ALGS:
        raise _malformed(f"bundle: {where}.alg must be one of {', '.join(keymod.ALGS)}", "bad_alg",
                         field=f"{where}.alg", algs=", ".join(keymod.ALGS))
    issuer = entry.get("issuer")
    if type(issuer) is not str or not issuer:
        raise _malformed(f"bundle: {where}.issuer must be a non-empty string", "no_issuer", field=f"{where}.issuer")
    x509_der = None
    try:
        if "x509" in entry:
            x509_der = _unb64(entry["x509"], f"{where}.x509")
            public_key = x509util.read_certificate(x509_der).public_key  # lenient, as OpenSSL reads
        else:
            public_key = keymod.public_key_from_spki(_unb64(entry.get("spki"), f"{where}.spki"))
        if keymod.alg_of(public_key) != alg:
            raise _malformed(f"bundle: {where} is a {keymod.alg_of(public_key)} key but says alg {alg}",
                             "alg_mismatch", field=where, kind=keymod.alg_of(public_key), alg=alg)
    except KeyFileError as exc:
        raise TrustError(f"bundle: {where}: {exc}", code="bundle_malformed",
                         text=i18n.text("trust_error.key", field=where, what=exc.text or str(exc))) from None
    formats = entry.get("formats")
    if formats is not None:
        if type(formats) is not list or not all(type(f) is str for f in formats):
            raise _malformed(f"bundle: {where}.formats must be a list of strings", "not_list", field=f"{where}.formats")
        formats = frozenset(formats)
    not_after = _optional_int(entry, "not_after")
    return BundleKey(kid, alg, issuer, public_key, formats, not_after, x509_der)


# Fast path for large bundles. A province-wide bundle is mostly one value: the base64 payload in
# the file, the list of revoked card ids in the payload. json.loads would turn a million ids into a
# million str objects (and the file into two copies of the payload as text) before any of it is
# checked; instead that one value is checked and decoded straight from the bytes with NumPy, and
# the rest of the document, with the value replaced by "[]", is parsed by the json module.
#
# The fast path only ever *accepts* a document json.loads accepts, with the same result: the value
# is taken only if it is a complete JSON value of the exact expected shape (canonical layout, as
# make_bundle writes it), and only if the json module confirms it is the value of that key in the
# top-level object (the last one, if the key is repeated). Anything else returns None and the
# caller runs the plain json.loads path, which then decides everything, errors included.

class _Decoded:
    """A JSON value the fast path has already checked and decoded (bytes)."""

    __slots__ = ("value",)

    def __init__(self, value: bytes | bytearray) -> None:
        self.value = value


_WS = re.compile(r"[ \t\n\r]*")  # JSON whitespace, as the json module skips it


def _skip_ws(text: str, i: int) -> int:
    """The index past the JSON whitespace at ``i`` (the pattern matches everywhere, if only "")."""
    m = _WS.match(text, i)
    return m.end() if m is not None else i
_JSON = json.JSONDecoder()
_WS_BYTES = b" \t\n\r"
_ID_HEX = 32
_ID_ROW = _ID_HEX + 3  # '"' + 32 hex digits + '"' + ',' (the last one ends with ']' instead)
_ROWS_A_CHUNK = 1 << 15
_QUOTE, _COMMA = 16, 17
_id_chars = bytearray([255]) * 256  # hex digit -> its value, '"' and ',' -> codes, else 255
for _i, _c in enumerate(b"0123456789abcdef"):
    _id_chars[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _id_chars[_c] = 10 + _i  # bytes.fromhex takes upper case too
_id_chars[ord('"')] = _QUOTE
_id_chars[ord(",")] = _COMMA
_ID_CHARS = bytes(_id_chars)


def _loads_with_big_value(doc: bytes | bytearray, key: str,
                          parse_value: Callable[[bytes | bytearray, int], tuple[bytes | bytearray, int] | None]
                          ) -> dict | None:
    """json.loads(doc) for a JSON object, with the top-level ``key`` value as _Decoded, or None."""
    if type(doc) not in (bytes, bytearray) or json.detect_encoding(doc) != "utf-8":  # as json.loads decodes it
        return None
    marker = b'"' + key.encode("ascii") + b'":'
    at = doc.find(marker)
    if at < 0:
        return None
    start = at + len(marker)
    while doc[start:start + 1] and doc[start] in _WS_BYTES:
        start += 1
    parsed = parse_value(doc, start)
    if parsed is None:
        return None
    value, end = parsed
    try:  # both cuts are next to ASCII punctuation, so they never split a UTF-8 sequence
        head = doc[:start].decode("utf-8", "surrogatepass")
        text = head + "[]" + doc[end:].decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None
    found = _object_value_starts(text)
    if found is None:
        return None
    obj, starts = found
    if starts.get(key) != len(head):
        return None
    obj[key] = _Decoded(value)
    return obj


def _object_value_starts(text: str) -> tuple[dict, dict[str, int]] | None:
    """Parse ``text`` as json.loads parses a top-level JSON object (same grammar, whitespace and
    last-duplicate-wins rule, each value by the json module) and also say where each key's
    (last) value starts; None if it is not exactly one JSON object."""
    try:
        i = _skip_ws(text, 0)
        if text[i:i + 1] != "{":
            return None
        i = _skip_ws(text, i + 1)
        pairs = []
        starts = {}
        if text[i:i + 1] == "}":
            i += 1
        else:
            while True:
                if text[i:i + 1] != '"':
                    return None
                key, i = _JSON.raw_decode(text, i)
                i = _skip_ws(text, i)
                if text[i:i + 1] != ":":
                    return None
                i = _skip_ws(text, i + 1)
                starts[key] = i
                value, i = _JSON.raw_decode(text, i)
                pairs.append((key, value))
                i = _skip_ws(text, i)
                c = text[i:i + 1]
                i += 1
                if c == "}":
                    break
                if c != ",":
                    return None
                i = _skip_ws(text, i)
        if _skip_ws(text, i) != len(text):
            return None
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return None
    return dict(pairs), starts


def _base64_string(doc: bytes | bytearray, start: int) -> tuple[bytes, int] | None:
    """A JSON string of strict base64 at ``start``: (decoded bytes, end) or None.

    A string without escapes is its own text, and strict base64 has no '\\' or '"', so the first
    '"' after the opening one ends it and the decoded bytes are what _unb64 would return.
    """
    if doc[start:start + 1] != b'"':
        return None
    close = doc.find(b'"', start + 1)
    if close < 0:
        return None
    try:
        value = _strict_b64(memoryview(doc)[start + 1:close])  # no copy of the text
    except (binascii.Error, ValueError):
        return None
    return value, close + 1


def _hex_id_array(doc: bytes | bytearray, start: int) -> tuple[bytearray, int] | None:
    """A JSON array of 32-hex-digit strings in make_bundle's compact layout ["…","…"] at
    ``start``: (the ids as concatenated bytes, end) or None.

    Such an array holds no ']' before its end, so the first ']' ends it; its length must then be a
    whole number of 35-byte rows '"' 32 hex digits '"' ',' (the last ']'), each checked with NumPy.
    """
    if doc[start:start + 1] != b"[":
        return None
    if doc[start + 1:start + 2] == b"]":
        return bytearray(), start + 2
    close = doc.find(b"]", start)
    if close < 0 or (close - start) % _ID_ROW:
        return None
    count = (close - start) // _ID_ROW
    buffer = bytearray(count * (_ID_HEX // 2))  # the ids' storage from here on (RevocationSet.adopt)
    out = np.frombuffer(buffer, dtype=np.uint8).reshape(count, _ID_HEX // 2)
    for i in range(0, count, _ROWS_A_CHUNK):  # in chunks, to keep temporary copies small
        n = min(_ROWS_A_CHUNK, count - i)
        first = start + 1 + i * _ID_ROW
        rows = np.frombuffer(doc[first:first + n * _ID_ROW].translate(_ID_CHARS), dtype=np.uint8)
        rows = rows.reshape(n, _ID_ROW)
        commas = rows[:-1, -1] if i + n == count else rows[:, -1]  # the very last is doc[close]
        if (rows[:, 0] != _QUOTE).any() or (rows[:, -2] != _QUOTE).any() or (commas != _COMMA).any():
            return None
        digits = rows[:, 1:_ID_HEX + 1]
        if digits.max() > 15:
            return None
        np.left_shift(digits[:, 0::2], 4, out=out[i:i + n])
        out[i:i + n] |= digits[:, 1::2]
    del out
    return buffer, close + 1


def make_bundle(root_private: ed25519.Ed25519PrivateKey, *, version: int, issued_at: int,
                expires_at: int, keys: Iterable[BundleKey], revoked_cards: Iterable[bytes] = (),
                revoked_kids: Iterable[bytes] = (), fmt: int = 1) -> bytes:
    """Build and sign a bundle file (issuer side) in format ``fmt`` (1 or 2); returns the file's bytes."""
    if not isinstance(root_private, ed25519.Ed25519PrivateKey):
        raise TrustError("the bundle root key must be an Ed25519 private key", code="bundle_root_key")
    if fmt == STREAMED:
        return b"".join(streamed_pieces(root_private, version=version, issued_at=issued_at, expires_at=expires_at,
                                        keys=keys, revoked_cards=revoked_cards, revoked_kids=revoked_kids))
    if fmt != 1:
        raise TrustError(f"bundle format {fmt} is not 1 or 2", code="bundle_format")
    body = {
        "version": version,
        "issued_at": issued_at,
        "expires_at": expires_at,
        "keys": [k.to_json() for k in keys],
        "revoked_cards": sorted({c.hex() for c in revoked_cards}),
        "revoked_kids": sorted({_b64(k) for k in revoked_kids}),
    }
    payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return _envelope(root_private, payload)


def _envelope(root_private: ed25519.Ed25519PrivateKey, payload: bytes) -> bytes:
    """The JSON envelope of a signed payload: the whole file in format 1, the HEAD part in format 2."""
    outer = {"payload": _b64(payload), "sig": _b64(root_private.sign(payload)),
             "kid": _b64(root_kid(root_private.public_key()))}
    return (json.dumps(outer, indent=1) + "\n").encode("ascii")


# ---------------------------------------------------------------- format 2: streamed
#
# MAGIC2, then parts, each a 4-byte tag, a 64-bit little-endian length and that many bytes: first
# HEAD (the JSON envelope of a signed payload {"format": 2, "version", "issued_at", "expires_at",
# "keys", "revoked_cards_count", "revoked_cards_sha256", "revoked_kids"}), then IDS (the revoked
# card ids, 16 bytes each, strictly increasing, exactly revoked_cards_count of them, whose SHA-256
# the payload names), then nothing. The ids are checked chunk by chunk as they are read.

STREAMED = 2
MAGIC2 = b"CKBUNDL\x02"
PART = struct.Struct("<4sQ")  # tag, length
HEAD_TAG = b"HEAD"
IDS_TAG = b"IDS\x00"
MAX_HEAD_BYTES = 4 * 1024 * 1024
CHUNK_BYTES = 1 << 20  # ids read, hashed and checked at a time (65,536 ids)
_BUCKETS = 1 << 16


def is_streamed(data: bytes | bytearray) -> bool:
    """True if ``data`` (a file's first bytes or more) starts like a format-2 bundle."""
    return bytes(data[:len(MAGIC2)]) == MAGIC2


@dataclass(frozen=True, slots=True)
class StreamHead:
    """A format-2 bundle's verified head: its content without the ids (``bundle.revoked_cards``
    empty), how many ids its IDS part must hold and their SHA-256."""

    bundle: Bundle
    count: int
    ids_sha256: bytes


def open_head(part: bytes, roots: Sequence[ed25519.Ed25519PublicKey], *,
              min_version: int | None = None) -> StreamHead:
    """Verify and parse a HEAD part (the root's signature first)."""
    payload, signature, kid = bundle_parts(part)
    _verify(payload, signature, kid, roots)
    body = _json_object(payload)
    if body.get("format") != STREAMED or "revoked_cards" in body:
        raise TrustError("bundle head is not in format 2", code="bundle_format")
    count = _int(body, "revoked_cards_count")
    digest = body.get("revoked_cards_sha256")
    if type(digest) is not str or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise TrustError("bundle: 'revoked_cards_sha256' must be 64 lowercase hex digits", code="bundle_malformed")
    if count * ID_SIZE > MAX_BUNDLE_BYTES:
        raise TrustError(f"bundle: {count} revoked ids are more than a bundle may hold", code="bundle_part_oversized")
    version, issued_at, expires_at, keys, revoked_kids = _common(body)
    if min_version is not None and version <= min_version:
        raise _rollback(version, min_version)
    bundle = Bundle(version, issued_at, expires_at, keys, RevocationSet(), revoked_kids, kid,
                    hashlib.sha256(payload).hexdigest())
    return StreamHead(bundle, count, bytes.fromhex(digest))


def _read_exact(fh: IO[bytes], n: int, what: str) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise TrustError(f"bundle file ends inside its {what}", code="bundle_truncated")
    return data


def _part(fh: IO[bytes], tag: bytes, limit: int) -> int:
    """Read the header of the next part, which must be ``tag`` and at most ``limit`` bytes long."""
    found, size = PART.unpack(_read_exact(fh, PART.size, f"{tag.decode().strip(chr(0))} part header"))
    if found != tag:
        raise TrustError(f"bundle part {found!r} where {tag!r} belongs", code="bundle_part_order")
    if size > limit:
        raise TrustError(f"bundle part {tag!r} of {size} bytes is larger than {limit}", code="bundle_part_oversized")
    return size


class StreamReader:
    """A format-2 bundle read from a binary file: the head is verified on construction (``head``),
    then ``ids()`` yields the IDS part in checked chunks (strictly increasing; at the end the SHA-256
    and that nothing follows), and ``index()`` gives their prefix index. TrustError on any fault: a
    caller writes the chunks somewhere it can throw away until the last one has passed."""

    def __init__(self, fh: IO[bytes], roots: Sequence[ed25519.Ed25519PublicKey], *,
                 min_version: int | None = None) -> None:
        self._fh = fh
        if not is_streamed(_read_exact(fh, len(MAGIC2), "magic")):
            raise TrustError("not a format-2 bundle file", code="bundle_malformed")
        self.head = open_head(_read_exact(fh, _part(fh, HEAD_TAG, MAX_HEAD_BYTES), "HEAD part"), roots,
                              min_version=min_version)
        size = _part(fh, IDS_TAG, MAX_BUNDLE_BYTES)
        if size != self.head.count * ID_SIZE:
            raise TrustError(f"bundle IDS part of {size} bytes, the head says {self.head.count} ids",
                             code="bundle_part_oversized" if size > self.head.count * ID_SIZE else "bundle_truncated")
        self._counts: array | None = None

    def ids(self) -> Iterator[bytes]:
        counts = array("I", bytes(4 * _BUCKETS))
        h = hashlib.sha256()
        left, last = self.head.count * ID_SIZE, b""
        while left:
            chunk = _read_exact(self._fh, min(left, CHUNK_BYTES), "IDS part")
            h.update(chunk)
            last = check_ids(chunk, last, counts)
            left -= len(chunk)
            yield chunk
        if h.digest() != self.head.ids_sha256:
            raise TrustError("bundle IDS part does not match the SHA-256 its head names", code="bundle_ids_digest")
        if self._fh.read(1):
            raise TrustError("bundle file goes on after its last part", code="bundle_part_order")
        self._counts = counts

    def index(self) -> array:
        """The 65,537 bucket starts of the ids (after ids() ran to its end)."""
        if self._counts is None:
            raise TrustError("bundle ids not read to their end", code="bundle_truncated")
        return bucket_starts(self._counts)


def check_ids(chunk: bytes, last: bytes, counts: array) -> bytes:
    """Check that ``chunk`` (whole 16-byte ids) is strictly increasing and above ``last`` (the id
    before it, b"" for none), add its ids to the per-bucket ``counts``; return its last id."""
    ids = [chunk[i:i + ID_SIZE] for i in range(0, len(chunk), ID_SIZE)]
    if not ids:
        return last
    if not (last < ids[0] and all(map(bytes.__lt__, ids, islice(ids, 1, None)))):
        raise TrustError("bundle revoked ids are not strictly increasing", code="bundle_ids_unsorted")
    for (hi, lo), n in Counter(zip(chunk[0::ID_SIZE], chunk[1::ID_SIZE])).items():
        counts[hi << 8 | lo] += n
    return ids[-1]


def bucket_starts(counts: array) -> array:
    """The prefix index (65,537 starts) from the 65,536 bucket counts."""
    index = array("I", [0]) * (_BUCKETS + 1)
    total = 0
    for b, n in enumerate(counts):
        total += n
        index[b + 1] = total
    return index


def _open_streamed_bytes(data: bytes, roots: Sequence[ed25519.Ed25519PublicKey], min_version: int | None) -> Bundle:
    """open_bundle of a format-2 file held in memory (a server, the issuer tools): its ids kept in one buffer."""
    if len(data) > MAX_BUNDLE_BYTES + MAX_HEAD_BYTES + len(MAGIC2) + 2 * PART.size:
        raise TrustError("bundle file is larger than 256 MiB", code="bundle_part_oversized")
    reader = StreamReader(io.BytesIO(data), roots, min_version=min_version)
    ids = bytearray(reader.head.count * ID_SIZE)
    at = 0
    for chunk in reader.ids():
        ids[at:at + len(chunk)] = chunk
        at += len(chunk)
    head = reader.head.bundle
    return Bundle(head.version, head.issued_at, head.expires_at, head.keys,
                  RevocationSet.mapped(ids, reader.index()) if ids else RevocationSet(), head.revoked_kids,
                  head.root_kid, head.digest)


def streamed_pieces(root_private: ed25519.Ed25519PrivateKey, *, version: int, issued_at: int, expires_at: int,
                    keys: Iterable[BundleKey], revoked_cards: Iterable[bytes] = (),
                    revoked_kids: Iterable[bytes] = ()) -> Iterator[bytes]:
    """A format-2 bundle file in pieces (issuer side)."""
    ids = sorted(set(revoked_cards))
    if any(type(c) is not bytes or len(c) != ID_SIZE for c in ids):
        raise TrustError("a revoked card id must be 16 bytes", code="bundle_malformed")
    h = hashlib.sha256()
    for i in range(0, len(ids), CHUNK_BYTES // ID_SIZE):
        h.update(b"".join(ids[i:i + CHUNK_BYTES // ID_SIZE]))
    body = {"format": STREAMED, "version": version, "issued_at": issued_at, "expires_at": expires_at,
            "keys": [k.to_json() for k in keys], "revoked_cards_count": len(ids),
            "revoked_cards_sha256": h.hexdigest(), "revoked_kids": sorted({_b64(k) for k in revoked_kids})}
    head = _envelope(root_private, json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    yield MAGIC2 + PART.pack(HEAD_TAG, len(head)) + head + PART.pack(IDS_TAG, len(ids) * ID_SIZE)
    for i in range(0, len(ids), CHUNK_BYTES // ID_SIZE):
        yield b"".join(ids[i:i + CHUNK_BYTES // ID_SIZE])
