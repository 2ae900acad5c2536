"""A root-signed envelope: the form of every file the operator's trust root signs for sync, ``{FIELD:
base64 payload, "kid": base64 root key id, "sig": base64 Ed25519 signature of DOMAIN + payload}``
(the server credential, a site credential, a site's revocation list), each kind with a domain of its
own, so that no signature is ever taken for another kind's. One check for all of them.
"""
from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.base.errors import CheckpointError
from scanner.cards.bundle import root_kid


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of envelope: its payload's field, its signature's domain, its size cap, its name in
    messages, and how it is refused (``error`` with code ``{code}_malformed``, ``{code}_wrong_root``
    or ``{code}_bad_signature``)."""

    field: str
    domain: bytes
    max_bytes: int
    name: str
    error: type[CheckpointError]
    code: str

    def malformed(self, why: str) -> CheckpointError:
        return self.error(f"{self.name}: {why}", code=f"{self.code}_malformed")


def seal(kind: Kind, root_private: ed25519.Ed25519PrivateKey, payload: bytes) -> dict[str, str]:
    """The envelope of ``payload`` signed by the root (its caller writes it out as JSON)."""
    return {kind.field: base64.b64encode(payload).decode("ascii"),
            "kid": base64.b64encode(root_kid(root_private.public_key())).decode("ascii"),
            "sig": base64.b64encode(root_private.sign(kind.domain + payload)).decode("ascii")}


def _b64(kind: Kind, value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise kind.malformed(f"{what} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise kind.malformed(f"{what} is not base64") from None


def open_envelope(kind: Kind, data: object, roots: Sequence[ed25519.Ed25519PublicKey]) -> tuple[bytes, bytes]:
    """(payload, root kid) of ``data`` if it is an envelope of ``kind`` signed by one of ``roots``;
    else ``kind.error`` with its reason code."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > kind.max_bytes:
        raise kind.malformed(f"not a {kind.name} (or larger than {kind.max_bytes // 1024} KiB)")
    try:
        outer = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise kind.malformed("not JSON") from None
    if not isinstance(outer, dict) or set(outer) != {kind.field, "kid", "sig"}:
        raise kind.malformed(f"not a {kind.name} file")
    payload = _b64(kind, outer[kind.field], kind.field)
    kid, sig = _b64(kind, outer["kid"], "kid"), _b64(kind, outer["sig"], "sig")
    root = next((r for r in roots if root_kid(r) == kid), None)
    if root is None:
        raise kind.error(f"the {kind.name} is not signed by the expected trust root", code=f"{kind.code}_wrong_root")
    try:
        root.verify(sig, kind.domain + payload)
    except InvalidSignature:
        raise kind.error(f"the {kind.name}'s signature does not verify", code=f"{kind.code}_bad_signature") from None
    return payload, kid


def payload_fields(kind: Kind, payload: bytes, fields: Sequence[str]) -> dict:
    """The payload as a JSON object with exactly ``fields`` (sorted), else malformed."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise kind.malformed("payload is not JSON") from None
    if not isinstance(body, dict) or sorted(body) != list(fields):
        raise kind.malformed(f"payload must have exactly the fields {', '.join(fields)}")
    return body
