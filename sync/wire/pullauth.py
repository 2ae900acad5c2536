"""Server pull on the wire: the device's pull endpoints, their error codes, and the signature the
server puts on each request (its pull key over the device's nonce; docs/sync-protocol.md#server-pull).
The device checks it (sync/pull.py); the server makes it (sync/server/puller.py).
"""
from __future__ import annotations

import base64
import hashlib
import re

from cryptography.hazmat.primitives.asymmetric import ed25519

from sync.wire import identity

PREFIX = "/sync/v1/pull"
INFO = f"{PREFIX}/info"
BATCH = f"{PREFIX}/batch"
ACK = f"{PREFIX}/ack"
REFUSED = f"{PREFIX}/refused"

AUTH_SCHEME = "CK-Pull"
DOMAIN = b"CKPULL1"
NO_NONCE = "-"
DEFAULT_LIMIT = 2000

E_UNAUTHORIZED = "pull_unauthorized"  # 401: no or bad credentials
E_NONCE = "pull_nonce"  # 401: unknown or expired nonce: GET /info again
E_DISABLED = "pull_disabled"  # 403: no server key and no token configured
E_NOT_PROVISIONED = "not_provisioned"  # 503: the device has no identity yet
E_ACK_MISMATCH = "ack_mismatch"  # 400: an acknowledgement that is not of this device's entries

_AUTH = re.compile(rf"{AUTH_SCHEME} key=([0-9a-f]{{16}}),nonce=([0-9a-f]{{32}}|-),sig=([A-Za-z0-9+/=]{{1,128}})",
                   re.ASCII)


def key_id(public_key: ed25519.Ed25519PublicKey) -> str:
    """16 hex digits naming a server pull key: SHA-256 of its raw public bytes, first 8 bytes."""
    return hashlib.sha256(identity.public_raw(public_key)).digest()[:8].hex()


def signing_input(device_id: str, nonce: str, method: str, path_qs: str, body: bytes) -> bytes:
    """What the server signs: domain, the device it talks to ("-" before it knows), the device's
    nonce ("-" only for /info), method, path with query, and the body's SHA-256."""
    return b"\n".join((DOMAIN, device_id.encode("ascii"), nonce.encode("ascii"), method.upper().encode("ascii"),
                       path_qs.encode("utf-8"), hashlib.sha256(body).hexdigest().encode("ascii")))


def auth_header(key: ed25519.Ed25519PrivateKey, device_id: str, nonce: str, method: str, path_qs: str,
                body: bytes) -> str:
    """The Authorization header of one pull request, signed with the server's pull key."""
    sig = key.sign(signing_input(device_id, nonce, method, path_qs, body))
    return f"{AUTH_SCHEME} key={key_id(key.public_key())},nonce={nonce},sig={base64.b64encode(sig).decode('ascii')}"


def parse_auth(value: str) -> tuple[str, str, str] | None:
    """(key id, nonce, base64 signature) of a signed pull request's header, or None if it is not one."""
    m = _AUTH.fullmatch(value)
    return (m[1], m[2], m[3]) if m else None
