"""Enrollment QR codes made on the reference server: a one-time token of its storage
(sync/server/tokens.py) and the server's URL as a code a device reads (sync/wire/enrollcode.py).
"""
from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ed25519

from sync.server.model import Storage
from sync.server.tokens import issue_tokens
from sync.wire.enrollcode import EnrollCode, check_server, root_fingerprint


def create(storage: Storage, server_url: str, checkpoint_id: str, *, now_ms: int, ttl_hours: float = 72.0,
           root_public_key: ed25519.Ed25519PublicKey | None = None) -> EnrollCode:
    """A new one-time token for ``checkpoint_id`` on the server's ``storage`` as an enrollment code;
    pins the root when one is given."""
    server = check_server(server_url)
    token = issue_tokens(storage, checkpoint_id, 1, ttl_hours=ttl_hours, now_ms=now_ms)[0]
    root = root_fingerprint(root_public_key) if root_public_key is not None else None
    return EnrollCode(server, token, root)
