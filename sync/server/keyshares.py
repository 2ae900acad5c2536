"""The sealing key split into shares (Shamir's scheme, pycryptodome): any ``threshold`` of the
``count`` shares give the key back, fewer tell nothing about it. The officers keep one share each
(a file, or printed); the opener is started with enough of them and holds the key in memory only,
so no single person, disk or backup holds it whole (docs/console.md#splitting-the-key).

A share is one line: ``CKSHARE1:<threshold>:<index>:<key id hex>:<64 hex digits>``; the key id
(of the public half) lets the opener tell shares of another key, and check what they combine to.
"""
from __future__ import annotations

import re

from Crypto.Protocol.SecretSharing import Shamir
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from scanner.base.errors import CheckpointError
from scanner.store.sealing import key_id

PREFIX = "CKSHARE1"
_SHARE = re.compile(r"CKSHARE1:(\d{1,2}):(\d{1,2}):([0-9a-f]{2,64}):([0-9a-f]{64})", re.ASCII)
MAX_SHARES = 16  # pycryptodome's shares are indexed 1..255; a department needs few


class ShareError(CheckpointError):
    code = "key_share"


def split(key: X25519PrivateKey, threshold: int, count: int) -> list[str]:
    """``count`` shares of ``key``, any ``threshold`` of which rebuild it."""
    if not 2 <= threshold <= count <= MAX_SHARES:
        raise ShareError(f"need 2 <= threshold <= shares <= {MAX_SHARES}")
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    kid = key_id(key.public_key()).hex()
    halves = [Shamir.split(threshold, count, raw[:16]), Shamir.split(threshold, count, raw[16:])]
    return [f"{PREFIX}:{threshold}:{i1}:{kid}:{s1.hex()}{s2.hex()}"
            for (i1, s1), (i2, s2) in zip(*halves, strict=True) if i1 == i2]


def combine(texts: list[str]) -> X25519PrivateKey:
    """The key from at least ``threshold`` distinct shares of it; ShareError otherwise (too few,
    of different keys, malformed, or not combining to the key they name)."""
    parsed = {}
    for text in texts:
        m = _SHARE.fullmatch(text.strip())
        if not m:
            raise ShareError("not a key share (CKSHARE1:...)", code="key_share_malformed")
        threshold, index, kid, body = int(m[1]), int(m[2]), m[3], bytes.fromhex(m[4])
        parsed[index] = (threshold, kid, body)
    if not parsed:
        raise ShareError("no key shares given", code="key_share_too_few")
    thresholds = {t for t, _, _ in parsed.values()}
    kids = {k for _, k, _ in parsed.values()}
    if len(thresholds) != 1 or len(kids) != 1:
        raise ShareError("the shares are of different keys", code="key_share_mismatch")
    threshold, kid = thresholds.pop(), kids.pop()
    if len(parsed) < threshold:
        raise ShareError(f"{len(parsed)} distinct shares given, {threshold} needed", code="key_share_too_few")
    chosen = sorted(parsed.items())[:threshold]
    first = Shamir.combine([(i, body[:16]) for i, (_, _, body) in chosen])
    second = Shamir.combine([(i, body[16:]) for i, (_, _, body) in chosen])
    key = X25519PrivateKey.from_private_bytes(first + second)
    if key_id(key.public_key()).hex() != kid:
        raise ShareError("the shares do not combine to the key they name (a share is altered or of another "
                         "split)", code="key_share_mismatch")
    return key
