"""SMART Health Cards issuer keys and revocation lists: JWKS (RFC 7517) and SHC CRL files.

Spec: docs/health-certificates.md#shc-trust. Keys are EC P-256 / ES256; a key's kid must be its
RFC 7638 JWK thumbprint (SHA-256, base64url), which is also the kid the trust store indexes it by
(the 32 raw bytes). A JWKS is read key by key: keys that are not signing keys (``use`` other than
``sig``) are skipped, keys that claim to sign but break the rules (wrong curve or alg, a kid that
is not the thumbprint, a private part, an x5c certificate for another key) are refused one by one
with a reason (``problems``); a file that yields no usable key at all is a KeyFileError.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from scanner.base.errors import KeyFileError
from scanner.cards import x509util
from scanner.cards.bundle import BundleKey

MAX_FILE_BYTES = 1024 * 1024
MAX_KEYS = 1000
MAX_RIDS = 1_000_000
MAX_RID_LEN = 24  # SHC spec: a rid is at most 24 base64url characters
FORMATS = frozenset({"SHC"})

_B64URL = re.compile(r"[A-Za-z0-9_-]*\Z")
_RID = re.compile(r"([A-Za-z0-9_-]{1,24})(?:\.([0-9]{1,12}))?\Z")


class JwkError(ValueError):
    """One JWK that cannot be used as an SHC issuer key (the message says why)."""


_B64URL_VALUE = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}


def b64url_decode(text: object) -> bytes:
    """Strict unpadded base64url (RFC 7515 section 2); raise ValueError."""
    if type(text) is not str or not _B64URL.match(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    rest = len(text) % 4
    if rest and _B64URL_VALUE[text[-1]] & (0x0F if rest == 2 else 0x03):
        raise ValueError("non-canonical base64url")  # unused low bits set: two spellings of one value
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprint(jwk: Mapping[str, Any]) -> bytes:
    """RFC 7638 SHA-256 thumbprint of an EC, RSA or OKP public JWK (32 raw bytes)."""
    kty = jwk.get("kty")
    required = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}
    if kty not in required:
        raise JwkError(f"kty {kty!r} has no thumbprint rule")
    members = {}
    for name in required[kty]:
        if type(jwk.get(name)) is not str:
            raise JwkError(f"member {name!r} missing or not a string")
        members[name] = jwk[name]
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).digest()


def public_key_from_jwk(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    """The P-256 public key of an EC JWK; raise JwkError for anything else."""
    if jwk.get("kty") != "EC":
        raise JwkError(f"kty {jwk.get('kty')!r} is not EC")
    if jwk.get("crv") != "P-256":
        raise JwkError(f"curve {jwk.get('crv')!r} is not P-256 (SHC signs with ES256 only)")
    try:
        x = b64url_decode(jwk.get("x"))
        y = b64url_decode(jwk.get("y"))
    except ValueError as exc:
        raise JwkError(f"x/y: {exc}") from None
    if len(x) != 32 or len(y) != 32:
        raise JwkError("x and y must be 32 bytes each")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + x + y)
    except ValueError:
        raise JwkError("x, y is not a point on P-256") from None


def jwk_of(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The public JWK of a P-256 key with kid = thumbprint, use sig, alg ES256 (issuer side)."""
    numbers = public_key.public_numbers()
    jwk = {"kty": "EC", "crv": "P-256", "x": b64url_encode(numbers.x.to_bytes(32, "big")),
           "y": b64url_encode(numbers.y.to_bytes(32, "big"))}
    return {**jwk, "kid": b64url_encode(thumbprint(jwk)), "use": "sig", "alg": "ES256"}


@dataclass(frozen=True, slots=True)
class Jwks:
    """The usable SHC keys of a JWKS file and why the others were refused."""

    keys: tuple[BundleKey, ...]
    problems: tuple[str, ...] = ()


def _key_entries(jwk: Mapping[str, Any], issuer: str | None) -> list[BundleKey]:
    """BundleKey(s) of one signing JWK (one per issuer URL its x5c certificate names)."""
    if "d" in jwk:
        raise JwkError("holds a private key ('d'): a trust file must hold public keys only")
    alg = jwk.get("alg")
    if alg is not None and alg != "ES256":
        raise JwkError(f"alg {alg!r} is not ES256")
    public_key = public_key_from_jwk(jwk)
    kid_text = jwk.get("kid")
    digest = thumbprint(jwk)
    if kid_text != b64url_encode(digest):
        raise JwkError(f"kid {str(kid_text)[:60]!r} is not the key's JWK thumbprint")
    issuers: list[str | None] = [issuer]
    x5c = jwk.get("x5c")
    if x5c is not None:
        if type(x5c) is not list or not x5c or type(x5c[0]) is not str:
            raise JwkError("x5c must be a list of base64 certificates")
        try:
            cert = x509util.read_certificate(base64.b64decode(x5c[0], validate=True))
        except (binascii.Error, ValueError, KeyFileError) as exc:
            raise JwkError(f"x5c certificate unreadable: {exc}") from None
        if cert.public_key != public_key:
            raise JwkError("the x5c certificate is for another key")
        if issuer is None and cert.san_uris:
            issuers = list(dict.fromkeys(cert.san_uris))
    return [BundleKey(digest, "ES256", iss, public_key, FORMATS) for iss in issuers]


def parse_jwks(data: bytes | str | Mapping, issuer: str | None = None) -> Jwks:
    """Read a JWKS; ``issuer`` (the iss URL the keys belong to) binds every key to it when known,
    else a key's x5c certificate's URIs do, else the key is trusted for any issuer."""
    doc = _load_json(data, "JWKS")
    keys = doc.get("keys") if isinstance(doc, Mapping) else None
    if type(keys) is not list:
        raise KeyFileError("a JWKS must be a JSON object with a 'keys' list")
    if len(keys) > MAX_KEYS:
        raise KeyFileError(f"a JWKS may hold at most {MAX_KEYS} keys")
    out: list[BundleKey] = []
    problems: list[str] = []
    for i, jwk in enumerate(keys):
        if type(jwk) is not dict:
            problems.append(f"keys[{i}]: not an object")
            continue
        if jwk.get("use", "sig") != "sig":
            continue  # an encryption key: not for verifying cards
        try:
            out.extend(_key_entries(jwk, issuer))
        except JwkError as exc:
            problems.append(f"key {str(jwk.get('kid', i))[:60]!r}: {exc}")
    if not out:
        raise KeyFileError("no usable SHC signing key in the JWKS"
                           + (f" ({'; '.join(problems)})" if problems else ""))
    return Jwks(tuple(out), tuple(problems))


@dataclass(frozen=True, slots=True)
class Crl:
    """One SHC card revocation list: the rids revoked under one issuer key.

    ``rids`` maps a rid to None (revoked outright) or a time: cards with that rid whose ``nbf``
    is before the time are revoked (the issuer revoked what it issued until then).
    """

    kid: bytes
    ctr: int
    rids: Mapping[str, int | None] = field(default_factory=lambda: MappingProxyType({}))


def parse_crl(data: bytes | str | Mapping) -> Crl:
    """Read an SHC CRL file {"kid", "method": "rid", "ctr", "rids"}; raise KeyFileError."""
    doc = _load_json(data, "CRL")
    if not isinstance(doc, Mapping):
        raise KeyFileError("a CRL must be a JSON object")
    if doc.get("method") != "rid":
        raise KeyFileError(f"CRL method {str(doc.get('method'))[:40]!r} is not supported (only 'rid')")
    try:
        kid = b64url_decode(doc.get("kid"))
    except ValueError:
        raise KeyFileError("CRL kid is not base64url") from None
    ctr = doc.get("ctr")
    if type(ctr) is str and ctr.isdigit():  # the spec's example writes the counter as a string
        ctr = int(ctr)
    if type(ctr) is not int or ctr < 1:
        raise KeyFileError("CRL ctr must be a positive integer")
    rids = doc.get("rids")
    if type(rids) is not list or len(rids) > MAX_RIDS:
        raise KeyFileError(f"CRL rids must be a list of at most {MAX_RIDS}")
    out: dict[str, int | None] = {}
    for r in rids:
        m = _RID.match(r) if type(r) is str else None
        if m is None:
            raise KeyFileError(f"CRL rid {str(r)[:40]!r} is not base64url[.timestamp]")
        out[m.group(1)] = merge_rid(out, m.group(1), None if m.group(2) is None else int(m.group(2)))
    return Crl(kid, ctr, MappingProxyType(out))


def merge_rid(rids: Mapping[str, int | None], rid: str, until: int | None) -> int | None:
    """The entry for ``rid`` once ``until`` is added: outright (None) beats a time, later beats earlier."""
    if rid not in rids:
        return until
    old = rids[rid]
    if old is None or until is None:
        return None
    return max(old, until)


def sniff(data: bytes) -> str | None:
    """'jwks' or 'crl' if ``data`` is such a JSON document, else None (e.g. a trust bundle)."""
    if len(data) > MAX_FILE_BYTES:
        return None
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if type(doc) is not dict or "payload" in doc:
        return None
    if "keys" in doc:
        return "jwks"
    if "rids" in doc:
        return "crl"
    return None


def _load_json(data: bytes | str | Mapping | list, what: str) -> Any:
    if isinstance(data, (Mapping, list)):  # already parsed
        return data
    if len(data) > MAX_FILE_BYTES:
        raise KeyFileError(f"{what} file larger than 1 MiB")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise KeyFileError(f"{what} file is not JSON") from None
