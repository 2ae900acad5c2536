"""One-time enrollment tokens: random, shown once, stored only as their SHA-256."""
from __future__ import annotations

import hashlib
import secrets

TOKEN_BYTES = 24


def new_token() -> str:
    """A fresh token (URL-safe text, 32 characters): give it to the technician, never store it."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    """What the server keeps of a token."""
    return hashlib.sha256(b"checkpoint-enroll\n" + token.encode("utf-8")).hexdigest()


def issue_tokens(storage, checkpoint_id: str, count: int = 1, *, ttl_hours: float = 72.0,
                 now_ms: int) -> list[str]:
    """Make ``count`` one-time tokens for ``checkpoint_id``, valid ``ttl_hours``; store their hashes."""
    if not checkpoint_id or len(checkpoint_id) > 200 or count < 1 or ttl_hours <= 0:
        raise ValueError("need a checkpoint id, count >= 1 and ttl_hours > 0")
    tokens = [new_token() for _ in range(count)]
    storage.add_tokens([token_hash(t) for t in tokens], checkpoint_id, now_ms + int(ttl_hours * 3_600_000), now_ms)
    return tokens
