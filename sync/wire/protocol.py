"""The sync protocol's fixed parts: versioned paths, headers, media types, error codes, limits and
the request signature. Both sides import these; docs/sync-protocol.md is the specification.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scanner.base.errors import CheckpointError
from scanner.base.lazy import lazy_module

if TYPE_CHECKING:
    from cryptography import exceptions as crypto_errors
    from cryptography.hazmat.primitives.asymmetric import ed25519
else:  # loaded at the first signature: the batch builder process reads the limits only and never needs OpenSSL
    crypto_errors = lazy_module("cryptography.exceptions")

VERSION = 1
PREFIX = f"/v{VERSION}"
ENROLL = f"{PREFIX}/enroll"
BATCHES = f"{PREFIX}/batches"
ACKS = f"{PREFIX}/acks"
TRUST = f"{PREFIX}/trust"
HEARTBEAT = f"{PREFIX}/heartbeat"
HEALTH = f"{PREFIX}/health"
CREDENTIAL = f"{PREFIX}/credential"  # the server's root-signed credential (sync/credential.py)

TIME_HEADER = "X-Checkpoint-Time"  # the server's clock when it answered, epoch ms, on every response
RECEIVED_HEADER = "X-Checkpoint-Received"  # the server's clock when the request arrived (NTP-style offset)
# the batch formats the server reads, e.g. "1,2", on every response; a server without it reads format 1 only
FORMATS_HEADER = "X-Checkpoint-Batch-Formats"


def parse_formats(value: str | None) -> tuple[int, ...]:
    """The batch formats a FORMATS_HEADER value names (format 1 when absent or unreadable: every
    server reads it)."""
    found = sorted({int(p) for p in (value or "").split(",") if p.strip().isdigit() and len(p.strip()) < 4})
    return tuple(found) or (1,)


BUNDLE_VERSION_HEADER = "X-Checkpoint-Bundle-Version"
AUTH_HEADER = "Authorization"
AUTH_SCHEME = "CK-Sig"  # request signature v1: over the body, checkable only once the body is read
AUTH_SCHEME_V2 = "CK-Sig2"  # v2: over the body's hash named in the header, checked before the body is read
REQUEST_AUTH_VERSION = 2  # the newest request signature this side speaks (/v1/health says it)
AUTH_WINDOW_MS = 5 * 60_000  # a v2 header's ts must be this close to the server's clock; each nonce works once

BATCH_TYPE = "application/vnd.checkpoint.batch"
BUNDLE_TYPE = "application/vnd.checkpoint.bundle+json"
DELTA_TYPE = "application/vnd.checkpoint.bundle-delta+json"

# Limits (both sides enforce them).
MAX_BATCH_BYTES = 16 * 1024 * 1024  # one signed batch on the wire
MAX_BATCH_ENTRIES = 20_000
MAX_JSON_BYTES = 64 * 1024  # enroll / heartbeat request bodies, and JSON answers
LEGACY_MAX_BATCH_BYTES = 1024 * 1024  # default cap of a batch sent without a v2 header (old devices)
MAX_BUNDLE_DOWNLOAD = 256 * 1024 * 1024  # as scanner.cards.bundle.MAX_BUNDLE_BYTES
MAX_ACKS = 1000  # batches per /acks answer

# Error codes in {"error": CODE, "message": ...} answers (stable).
E_MALFORMED = "batch_malformed"  # the batch itself is bad: quarantine it, go on with the next
E_TOO_LARGE = "batch_too_large"  # 413: send smaller batches
E_UNKNOWN_DEVICE = "unknown_device"  # 401
E_BAD_SIGNATURE = "bad_signature"  # 401
E_DEVICE_REVOKED = "device_revoked"  # 403
E_TOKEN_INVALID = "token_invalid"  # 403
E_TOKEN_EXPIRED = "token_expired"  # 403
E_TOKEN_USED = "token_used"  # 409: the token enrolled another key
E_BAD_REQUEST = "bad_request"  # 400: a malformed request that is not a batch
E_BUSY = "busy"  # 503 + Retry-After
E_INTERNAL = "internal"  # 500
E_NO_BUNDLE = "no_bundle"  # 404: nothing published yet
E_NO_CREDENTIAL = "no_credential"  # 404: the operator has not published the server's credential
E_STALE_REQUEST = "stale_request"  # 401: a v2 header's ts is off the server's clock; sign again with its time
E_REPLAYED = "replayed_request"  # 401: a v2 header (its nonce) was used before
E_BODY_TIMEOUT = "body_timeout"  # 408: the body came too slowly (deadline or minimum rate)
E_LENGTH_REQUIRED = "length_required"  # 411: a body without Content-Length
E_REQUEST_TOO_LARGE = "request_too_large"  # 413: a request body (not a batch) over its limit
E_TOO_MANY = "too_many_requests"  # 429 + Retry-After: this device or address already has its share in progress

BATCH_BAD_CODES = frozenset({E_MALFORMED})
AUTH_CODES = frozenset({E_UNKNOWN_DEVICE, E_BAD_SIGNATURE, E_DEVICE_REVOKED})
RETRY_CODES = frozenset({E_STALE_REQUEST, E_REPLAYED})  # 401s that are not the device's standing: retry later

_REQ_DOMAIN = b"CKREQ1"
_REQ_DOMAIN_V2 = b"CKREQ2"


class ProtocolError(CheckpointError):
    """A message that does not follow the protocol (either direction)."""

    code = "protocol"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: object, what: str, max_len: int = 1 << 20) -> bytes:
    if not isinstance(text, str) or len(text) > max_len:
        raise ProtocolError(f"{what} must be base64 text")
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"{what} is not valid base64") from None


def signing_input(method: str, path_qs: str, ts_ms: int, body: bytes) -> bytes:
    """What a device signs for a v1 request: domain, method, path with query, its time, body hash."""
    return b"\n".join((_REQ_DOMAIN, method.upper().encode("ascii"), path_qs.encode("utf-8"),
                       str(int(ts_ms)).encode("ascii"), hashlib.sha256(body).hexdigest().encode("ascii")))


def auth_header(device_id: str, key: ed25519.Ed25519PrivateKey, method: str, path_qs: str,
                ts_ms: int, body: bytes) -> str:
    """A v1 request signature (CK-Sig): what devices before v2 send; the enrollment request uses it."""
    sig = key.sign(signing_input(method, path_qs, ts_ms, body))
    return f"{AUTH_SCHEME} device={device_id},ts={int(ts_ms)},sig={b64(sig)}"


def signing_input_v2(method: str, path_qs: str, device_id: str, ts_ms: int, nonce: str, body_sha256: str) -> bytes:
    """What a device signs for a v2 request: domain, method, path with query, its id, the server's
    time as the device knows it, a nonce, and the hex SHA-256 of the body it will send."""
    return b"\n".join((_REQ_DOMAIN_V2, method.upper().encode("ascii"), path_qs.encode("utf-8"),
                       device_id.encode("ascii"), str(int(ts_ms)).encode("ascii"), nonce.encode("ascii"),
                       body_sha256.encode("ascii")))


def auth_header_v2(device_id: str, key: ed25519.Ed25519PrivateKey, method: str, path_qs: str, ts_ms: int,
                   body: bytes, nonce: str | None = None, body_sha256: str | None = None) -> str:
    """A v2 request signature (CK-Sig2) over the body's hash: the server checks it before reading the
    body. ``ts_ms`` is the server's clock as the device knows it; a fresh nonce unless one is given;
    ``body_sha256``: the body's hex SHA-256 if the caller has it already (a body sent again)."""
    nonce = nonce or secrets.token_hex(16)
    digest = body_sha256 or hashlib.sha256(body).hexdigest()
    sig = key.sign(signing_input_v2(method, path_qs, device_id, ts_ms, nonce, digest))
    return f"{AUTH_SCHEME_V2} device={device_id},ts={int(ts_ms)},nonce={nonce},sha256={digest},sig={b64(sig)}"


_AUTH = re.compile(rf"{AUTH_SCHEME} device=([A-Za-z0-9_-]{{1,64}}),ts=(-?\d{{1,16}}),sig=([A-Za-z0-9+/=]{{1,128}})",
                   re.ASCII)
_AUTH_V2 = re.compile(rf"{AUTH_SCHEME_V2} device=([A-Za-z0-9_-]{{1,64}}),ts=(\d{{1,16}}),nonce=([0-9a-f]{{32}}),"
                      r"sha256=([0-9a-f]{64}),sig=([A-Za-z0-9+/=]{1,128})", re.ASCII)


@dataclass(frozen=True, slots=True)
class RequestAuth:
    """A parsed request signature header; ``version`` 1 (CK-Sig) or 2 (CK-Sig2, with ``nonce`` and
    the ``body_sha256`` the body must have)."""

    device_id: str
    ts_ms: int
    signature: bytes
    version: int = 1
    nonce: str | None = None
    body_sha256: str | None = None


def parse_auth(value: str | None) -> RequestAuth:
    """The parts of an Authorization header; ProtocolError if it is neither CK-Sig nor CK-Sig2."""
    m = _AUTH_V2.fullmatch(value or "")
    if m:
        return RequestAuth(m.group(1), int(m.group(2)), unb64(m.group(5), "signature"), 2, m.group(3), m.group(4))
    m = _AUTH.fullmatch(value or "")
    if not m:
        raise ProtocolError("missing or malformed Authorization header")
    return RequestAuth(m.group(1), int(m.group(2)), unb64(m.group(3), "signature"))


def check_header(auth: RequestAuth, public_key: ed25519.Ed25519PublicKey, method: str, path_qs: str) -> bool:
    """A v2 header's signature, before any of the body is read (the body must then hash to
    ``auth.body_sha256``). False for a v1 header: it can only be checked with the body."""
    if auth.version != 2 or auth.nonce is None or auth.body_sha256 is None:
        return False
    try:
        public_key.verify(auth.signature, signing_input_v2(method, path_qs, auth.device_id, auth.ts_ms,
                                                           auth.nonce, auth.body_sha256))
    except crypto_errors.InvalidSignature:
        return False
    return True


def check_request(auth: RequestAuth, public_key: ed25519.Ed25519PublicKey, method: str, path_qs: str,
                  body: bytes) -> bool:
    """A request signature (either version) over the whole request, body included."""
    if auth.version == 2:
        return hashlib.sha256(body).hexdigest() == auth.body_sha256 and check_header(auth, public_key, method,
                                                                                      path_qs)
    try:
        public_key.verify(auth.signature, signing_input(method, path_qs, auth.ts_ms, body))
    except crypto_errors.InvalidSignature:
        return False
    return True


def device_id_for(public_raw: bytes) -> str:
    """A device's id: "d-" + the first 12 bytes of SHA-256 over its raw Ed25519 public key (hex).
    Derived from the key, so enrolling the same key again always gives the same id."""
    return "d-" + hashlib.sha256(public_raw).digest()[:12].hex()


@dataclass(frozen=True, slots=True)
class Ack:
    """The server's answer to a batch: it has committed entries first_seq..last_seq of the device.

    ``held_seq`` is the highest sequence number the server holds for the device; ``stored`` and
    ``duplicates`` split ``count`` into entries new to the server and entries it already had
    (a replayed batch is answered with the answer of its first delivery).
    """

    batch_id: str
    first_seq: int
    last_seq: int
    count: int
    stored: int
    duplicates: int
    held_seq: int

    def to_dict(self) -> dict:
        return {"batch_id": self.batch_id, "first_seq": self.first_seq, "last_seq": self.last_seq,
                "count": self.count, "stored": self.stored, "duplicates": self.duplicates,
                "held_seq": self.held_seq}

    @classmethod
    def from_dict(cls, d: object) -> Ack:
        if not isinstance(d, dict):
            raise ProtocolError("an acknowledgement must be an object")
        try:
            vals = [d["batch_id"]] + [d[k] for k in ("first_seq", "last_seq", "count", "stored",
                                                     "duplicates", "held_seq")]
        except KeyError as exc:
            raise ProtocolError(f"acknowledgement without {exc.args[0]}") from None
        if not isinstance(vals[0], str) or not all(type(v) is int and v >= 0 for v in vals[1:]):
            raise ProtocolError("acknowledgement fields have the wrong types")
        if not 1 <= vals[1] <= vals[2]:
            raise ProtocolError("acknowledgement range is empty")
        return cls(*vals)


# Heartbeat: what a device reports with each contact; the server keeps the latest per device.
HEARTBEAT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "hb_seq": int,  # grows with every heartbeat: the server ignores a replayed older one
    "device_time_ms": int,
    "software_version": str,
    "queue_depth": int,  # unsynced entries
    "oldest_unsynced_age_s": (int, float, type(None)),
    "last_acked_seq": int,
    "trust_version": (int, type(None)),
    "trust_age_s": (int, float, type(None)),  # since the bundle was issued
    "clock_offset_ms": (int, type(None)),  # server time minus device time, at the last contact
    "inputs": dict,  # input name -> "up" | "down"
    "disk_free_bytes": (int, type(None)),
    "alarms": list,  # stable codes: batch_quarantined, sync_auth_failed, trust_update_failed, ...
    "last_error": (str, type(None)),
}


def check_heartbeat(doc: object) -> dict:
    """The heartbeat fields of ``doc``, type-checked and bounded; ProtocolError otherwise."""
    if not isinstance(doc, dict):
        raise ProtocolError("a heartbeat must be an object")
    out: dict[str, Any] = {}
    for name, types in HEARTBEAT_FIELDS.items():
        if name not in doc:
            raise ProtocolError(f"heartbeat without {name}")
        value = doc[name]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ProtocolError(f"heartbeat {name} has the wrong type")
        if isinstance(value, str) and len(value) > 500:
            raise ProtocolError(f"heartbeat {name} is too long")
        out[name] = value
    inputs = out["inputs"]
    if len(inputs) > 64 or not all(isinstance(k, str) and len(k) <= 64 and v in ("up", "down")
                                   for k, v in inputs.items()):
        raise ProtocolError("heartbeat inputs must map up to 64 names to up/down")
    alarms = out["alarms"]
    if len(alarms) > 32 or not all(isinstance(a, str) and len(a) <= 64 for a in alarms):
        raise ProtocolError("heartbeat alarms must be up to 32 short codes")
    return out
