"""The site credential: the operator's trust root vouches that one device (its Ed25519 key) is a
gate of one site.

A peer is believed only with a credential signed by a root this device has pinned, for this
site, naming the key that signed the peer's message. Issued offline with the root's private key
(`checkpoint issuer site-credential`), kept in the state directory as ``site-credential.json``.
Format: docs/site.md#site-credential.
"""
from __future__ import annotations

import base64
import binascii
import json
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.base.errors import CheckpointError
from sync.wire import envelope
from sync.wire.identity import public_raw
from sync.wire.protocol import device_id_for

TYPE = "checkpoint-site-credential"
FORMAT = 1
DOMAIN = b"CKSITECRED1\n"  # signed with the payload: never a server credential's, a bundle's or a message's
MAX_BYTES = 4096
FILE_NAME = "site-credential.json"
FIELDS = ("device_key", "expires_at", "issued_at", "serial", "site_id", "type", "v")
_ID_CHARS = frozenset(string.ascii_letters + string.digits + "-_.")


class SiteCredentialError(CheckpointError):
    """A site credential that is missing, malformed, not signed by a pinned root, expired, for
    another site or for another device."""

    code = "site_credential_invalid"


KIND = envelope.Kind("credential", DOMAIN, MAX_BYTES, "site credential", SiteCredentialError, "site_credential")


@dataclass(frozen=True, slots=True)
class SiteCredential:
    """A verified credential: the site and the device key the root vouches for."""

    site_id: str
    device_key: ed25519.Ed25519PublicKey
    device_id: str  # derived from the key (sync.wire.protocol.device_id_for)
    serial: int
    issued_at: int
    expires_at: int | None
    root_kid: bytes
    data: bytes  # the file as signed: peers send it with their messages

    def valid_at(self, now: float) -> bool:
        return self.issued_at <= now + 300 and (self.expires_at is None or now < self.expires_at)


def check_site_id(site_id: object) -> str:
    """A site id: 1-64 letters, digits or -_. (it is also a DNS-SD TXT value)."""
    if not isinstance(site_id, str) or not 1 <= len(site_id) <= 64 or not set(site_id) <= _ID_CHARS:
        raise SiteCredentialError("site_id must be 1-64 letters, digits or -_.", code="site_credential_malformed")
    return site_id


def issue(root_private: ed25519.Ed25519PrivateKey, *, site_id: str, device_key: ed25519.Ed25519PublicKey,
          issued_at: int, expires_at: int | None = None, serial: int = 1) -> bytes:
    """A credential making the device with ``device_key`` a gate of ``site_id``, signed by the root."""
    body = {"device_key": base64.b64encode(public_raw(device_key)).decode("ascii"), "expires_at": expires_at,
            "issued_at": issued_at, "serial": serial, "site_id": check_site_id(site_id), "type": TYPE,
            "v": FORMAT}
    payload = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    data = json.dumps(envelope.seal(KIND, root_private, payload), separators=(",", ":")).encode("ascii")
    open_credential(data, [root_private.public_key()])  # what is issued must open
    return data


def _malformed(why: str) -> SiteCredentialError:
    return SiteCredentialError(f"site credential: {why}", code="site_credential_malformed")


def _b64(value: object, what: str, limit: int = 1024) -> bytes:
    if not isinstance(value, str) or len(value) > limit:
        raise _malformed(f"{what} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _malformed(f"{what} is not base64") from None


def _int(body: dict, name: str, *, nullable: bool = False) -> int | None:
    v = body[name]
    if v is None and nullable:
        return None
    if type(v) is not int or not 0 <= v < 2 ** 53:
        raise _malformed(f"{name} must be a non-negative integer")
    return v


def open_credential(data: bytes, roots: Sequence[ed25519.Ed25519PublicKey]) -> SiteCredential:
    """Verify a credential against the pinned root(s) and parse it; SiteCredentialError with a
    reason code if it is not a well-formed credential signed by one of them."""
    payload, kid = envelope.open_envelope(KIND, data, roots)
    body = envelope.payload_fields(KIND, payload, FIELDS)
    if body["type"] != TYPE or type(body["v"]) is not int or body["v"] != FORMAT:
        raise _malformed(f"not a {TYPE} of format {FORMAT}")
    serial, issued = _int(body, "serial"), _int(body, "issued_at")
    expires = _int(body, "expires_at", nullable=True)
    assert serial is not None and issued is not None  # not nullable
    if serial < 1:
        raise _malformed("serial must be at least 1")
    raw = _b64(body["device_key"], "device_key")
    if len(raw) != 32:
        raise _malformed("device_key must be 32 bytes (Ed25519)")
    key = ed25519.Ed25519PublicKey.from_public_bytes(raw)
    return SiteCredential(check_site_id(body["site_id"]), key, device_id_for(raw), serial, issued, expires, kid,
                          bytes(data))


def load(path: str | Path, roots: Sequence[ed25519.Ed25519PublicKey], *, site_id: str,
         device_key: ed25519.Ed25519PrivateKey, now: float) -> SiteCredential:
    """This device's own credential, checked: a pinned root, this site, this device's key, in date."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise SiteCredentialError(f"{path}: no site credential on this device",
                                  code="site_credential_missing") from None
    except OSError as exc:
        raise SiteCredentialError(f"{path}: {exc.strerror}", code="site_credential_unreadable") from None
    cred = open_credential(data, roots)
    if cred.site_id != site_id:
        raise SiteCredentialError(f"the site credential is for site {cred.site_id!r}, not {site_id!r}",
                                  code="site_credential_wrong_site")
    if public_raw(cred.device_key) != public_raw(device_key):
        raise SiteCredentialError("the site credential names another device's key", code="site_credential_wrong_device")
    if not cred.valid_at(now):
        if cred.expires_at is not None and now >= cred.expires_at:
            raise SiteCredentialError("the site credential has expired", code="site_credential_expired")
        raise SiteCredentialError("the site credential is not valid yet (issued later than this device's clock says "
                                  "it is now)", code="site_credential_not_yet_valid")
    return cred


# ---------------------------------------------------------------- revocations

REVOCATIONS_TYPE = "checkpoint-site-revocations"
REVOCATIONS_DOMAIN = b"CKSITEREV1\n"  # signed with the payload: never a credential's or a message's
REVOCATIONS_FILE_NAME = "site-revocations.json"
REVOCATIONS_MAX_BYTES = 16 * 1024  # it travels in one datagram between the gates
REVOCATIONS_MAX = 256
_REV_FIELDS = ("issued_at", "revoked", "site_id", "type", "v", "version")
REVOCATIONS_KIND = envelope.Kind("revocations", REVOCATIONS_DOMAIN, REVOCATIONS_MAX_BYTES, "site revocation list",
                                 SiteCredentialError, "site_revocations")


@dataclass(frozen=True, slots=True)
class Revocations:
    """A verified list of the site's gates (device ids) whose site credentials no longer count,
    whatever their expiry; a higher ``version`` replaces a lower one."""

    site_id: str
    version: int
    issued_at: int
    revoked: frozenset[str]
    data: bytes  # the file as signed: gates pass it on to each other


def issue_revocations(root_private: ed25519.Ed25519PrivateKey, *, site_id: str, version: int, issued_at: int,
                      revoked: Sequence[str]) -> bytes:
    """A list revoking the site credentials of the gates ``revoked`` (device ids), signed by the root."""
    body = {"issued_at": issued_at, "revoked": sorted(set(revoked)), "site_id": check_site_id(site_id),
            "type": REVOCATIONS_TYPE, "v": FORMAT, "version": version}
    payload = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    data = json.dumps(envelope.seal(REVOCATIONS_KIND, root_private, payload), separators=(",", ":")).encode("ascii")
    open_revocations(data, [root_private.public_key()], site_id=site_id)  # what is issued must open
    return data


def open_revocations(data: bytes, roots: Sequence[ed25519.Ed25519PublicKey], *, site_id: str) -> Revocations:
    """Verify a revocation list against the pinned root(s) for this site; SiteCredentialError with
    a reason code (``site_revocations_...``) otherwise."""
    def bad(why: str, code: str = "site_revocations_malformed") -> SiteCredentialError:
        return SiteCredentialError(f"site revocations: {why}", code=code)

    payload, _ = envelope.open_envelope(REVOCATIONS_KIND, data, roots)
    body = envelope.payload_fields(REVOCATIONS_KIND, payload, _REV_FIELDS)
    if body["type"] != REVOCATIONS_TYPE or type(body["v"]) is not int or body["v"] != FORMAT:
        raise bad(f"not a {REVOCATIONS_TYPE} of format {FORMAT}")
    version, issued = body["version"], body["issued_at"]
    if any(type(v) is not int or not 0 <= v < 2 ** 53 for v in (version, issued)):
        raise bad("version and issued_at must be non-negative integers")
    revoked = body["revoked"]
    if not isinstance(revoked, list) or len(revoked) > REVOCATIONS_MAX or not all(
            isinstance(d, str) and 1 <= len(d) <= 128 and d.isprintable() for d in revoked):
        raise bad(f"revoked must be a list of at most {REVOCATIONS_MAX} device ids")
    if body["site_id"] != site_id:
        raise bad(f"the list is for site {body['site_id']!r}, not {site_id!r}", "site_revocations_wrong_site")
    return Revocations(site_id, version, issued, frozenset(revoked), bytes(data))
