"""The server credential: the operator's trust root vouches for one central server, by the URLs
devices reach it at, its X25519 sealing key and its Ed25519 pull key.

A device enrolls only with a server whose credential is signed by the root the device has pinned
and names the URL the device talks to; it seals holder details only to the key in that
credential, which it keeps and verifies again against the pinned root whenever it loads it.
Issued offline with the root's private key (`checkpoint issuer server-credential`), published by
the server (`checkpoint server credential publish`), kept by the device (sync/credential.py).
Format: docs/sync-protocol.md#server-credential.
"""
from __future__ import annotations

import base64
import binascii
import json
import string
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from scanner.base.errors import CheckpointError
from scanner.store import sealing
from sync.wire import envelope
from sync.wire.http import SyncConfigError, check_server_url

TYPE = "checkpoint-server-credential"
FORMAT = 1
MEDIA_TYPE = "application/vnd.checkpoint.server-credential+json"
DOMAIN = b"CKSRVCRED1\n"  # signed with the payload: a credential signature is never a bundle's or a delta's
MAX_BYTES = 16 * 1024
MAX_URLS = 8
FIELDS = ("issued_at", "pull_public_key", "sealing_public_key", "serial", "server_id", "type", "urls", "v")
_ID_CHARS = frozenset(string.ascii_letters + string.digits + "-_.:")


class CredentialError(CheckpointError):
    """A server credential that is missing, not signed by the pinned root, malformed, for another
    server, or older than the one installed."""

    code = "credential_invalid"


KIND = envelope.Kind("credential", DOMAIN, MAX_BYTES, "server credential", CredentialError, "credential")


@dataclass(frozen=True, slots=True)
class ServerCredential:
    """A verified credential: who the server is and which keys the root vouches for."""

    serial: int
    issued_at: int
    server_id: str
    urls: tuple[str, ...]  # canonical (canonical_url)
    sealing_key: X25519PublicKey
    pull_key: ed25519.Ed25519PublicKey | None
    root_kid: bytes
    data: bytes  # the file as signed and kept

    def names(self, url: str) -> bool:
        """Whether this credential is for the server at ``url``."""
        try:
            return canonical_url(url) in self.urls
        except CredentialError:
            return False

    def check_url(self, url: str) -> None:
        if not self.names(url):
            raise CredentialError(f"the server credential is for {', '.join(self.urls)}, not {url}",
                                  code="credential_wrong_server")

    def sealing_key_id(self) -> str:
        """The key id sealed blobs carry (scanner.store.sealing.key_id), in hex."""
        return sealing.key_id(self.sealing_key).hex()

    def summary(self) -> dict:
        """What status pages and `server credential publish --json` show (public data only)."""
        return {"server_id": self.server_id, "serial": self.serial, "urls": list(self.urls),
                "sealing_key": self.sealing_key_id(), "pull_key": self.pull_key is not None}


def _raw(key) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def canonical_url(url: str) -> str:
    """scheme://host:port/path, lower-case host, explicit port, no trailing slash: two spellings of
    one server compare equal; CredentialError for a URL a device may not use."""
    try:
        base = check_server_url(url)
        parts = urlsplit(base)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except (SyncConfigError, ValueError) as exc:
        raise CredentialError(f"server URL {url!r} cannot be used: {exc}", code="credential_malformed") from None
    if parts.username or parts.password:
        raise CredentialError(f"server URL {url!r} must not carry a user name", code="credential_malformed")
    host = parts.hostname or ""  # check_server_url refused a URL without one
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}:{port}{parts.path.rstrip('/')}"


def issue(root_private: ed25519.Ed25519PrivateKey, *, urls: Sequence[str], sealing_key: X25519PublicKey,
          pull_key: ed25519.Ed25519PublicKey | None = None, server_id: str | None = None, serial: int = 1,
          issued_at: int) -> bytes:
    """A credential file for the server at ``urls``, signed by the root (run where the root's
    private key is kept, offline)."""
    canon = [canonical_url(u) for u in urls]
    if not canon or len(canon) > MAX_URLS or len(set(canon)) != len(canon):
        raise CredentialError(f"a credential names 1 to {MAX_URLS} different server URLs", code="credential_malformed")
    if server_id is None:
        server_id = urlsplit(canon[0]).hostname
    body = {"issued_at": issued_at,
            "pull_public_key": base64.b64encode(_raw(pull_key)).decode("ascii") if pull_key is not None else None,
            "sealing_public_key": base64.b64encode(_raw(sealing_key)).decode("ascii"),
            "serial": serial, "server_id": server_id, "type": TYPE, "urls": canon, "v": FORMAT}
    payload = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    _parse(payload)  # what is issued must open
    data = (json.dumps(envelope.seal(KIND, root_private, payload), indent=1) + "\n").encode("ascii")
    open_credential(data, [root_private.public_key()])
    return data


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str) or len(value) > 4096:
        raise CredentialError(f"credential: {what} is not base64 text", code="credential_malformed")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise CredentialError(f"credential: {what} is not base64", code="credential_malformed") from None


def _parse(payload: bytes) -> dict:
    malformed = KIND.malformed
    body = envelope.payload_fields(KIND, payload, FIELDS)
    if body["type"] != TYPE or body["v"] != FORMAT or type(body["v"]) is not int:
        raise malformed(f"not a {TYPE} of format {FORMAT}")
    for name in ("serial", "issued_at"):
        if type(body[name]) is not int or not 0 <= body[name] < 2 ** 53:
            raise malformed(f"{name} must be a non-negative integer")
    if body["serial"] < 1:
        raise malformed("serial must be at least 1")
    sid = body["server_id"]
    if not isinstance(sid, str) or not 1 <= len(sid) <= 64 or not set(sid) <= _ID_CHARS:
        raise malformed("server_id must be 1-64 letters, digits or -_.:")
    urls = body["urls"]
    if not isinstance(urls, list) or not 1 <= len(urls) <= MAX_URLS or not all(isinstance(u, str) for u in urls):
        raise malformed(f"urls must be a list of 1 to {MAX_URLS} URLs")
    if any(canonical_url(u) != u for u in urls) or len(set(urls)) != len(urls):
        raise malformed("urls must be distinct and canonical (scheme://host:port/path)")
    seal = _b64(body["sealing_public_key"], "sealing_public_key")
    if len(seal) != 32:
        raise malformed("sealing_public_key must be 32 bytes (X25519)")
    if body["pull_public_key"] is not None and len(_b64(body["pull_public_key"], "pull_public_key")) != 32:
        raise malformed("pull_public_key must be 32 bytes (Ed25519) or null")
    return body


def open_credential(data: bytes, roots: Sequence[ed25519.Ed25519PublicKey]) -> ServerCredential:
    """Verify a credential file against the pinned root(s) and parse it; CredentialError if it is not
    a well-formed credential signed by one of them."""
    payload, kid = envelope.open_envelope(KIND, data, roots)
    body = _parse(payload)
    pull = body["pull_public_key"]
    return ServerCredential(
        body["serial"], body["issued_at"], body["server_id"], tuple(body["urls"]),
        X25519PublicKey.from_public_bytes(_b64(body["sealing_public_key"], "sealing_public_key")),
        ed25519.Ed25519PublicKey.from_public_bytes(_b64(pull, "pull_public_key")) if pull is not None else None,
        kid, bytes(data))
