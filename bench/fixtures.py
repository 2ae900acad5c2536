"""Keys, cards and trust bundles for the benchmarks (built fresh in every run, never stored)."""
from __future__ import annotations

import os
import time

from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from scanner.cards import keys as keymod
from scanner.cards.bundle import BundleKey, make_bundle
from scanner.cards.issuer import CardSpec, issue
from scanner.cards.verdict import Holder

ISSUER = "Sở Y tế TP. Hồ Chí Minh"
HOLDER = Holder(name="Nguyễn Thị Thanh Hương", birth_date="1987-03-15", id_masked="079******1234",
                status="đã tiêm đủ", last_dose="2021-11-20")
DAY = 86400


def now() -> int:
    return int(time.time())


def issuer_key(alg: str):
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(alg)


def bundle_key(private_key) -> BundleKey:
    pub = private_key.public_key()
    return BundleKey(keymod.kid_of(pub), keymod.alg_of(pub), ISSUER, pub, frozenset({"CK1"}))


def card_text(private_key, at: int, *, card_id: bytes | None = None) -> str:
    """A realistic CK1 card (uncompressed, as issued by default) valid around ``at``."""
    spec = CardSpec(ISSUER, HOLDER, issued_at=at - 30 * DAY, expires_at=at + 335 * DAY,
                    card_id=card_id if card_id is not None else os.urandom(16))
    return issue(spec, private_key)


def revoked_ids(count: int, seed: int = 7) -> list[bytes]:
    """``count`` distinct random 16-byte card ids (deterministic for a seed)."""
    import random
    rng = random.Random(seed)
    blob = rng.randbytes(16 * count)
    return [blob[i:i + 16] for i in range(0, len(blob), 16)]


def bundle_file(root: ed25519.Ed25519PrivateKey, keys: list[BundleKey], revoked: list[bytes],
                at: int) -> bytes:
    """A signed bundle file in the exact format the issuer tools produce."""
    return make_bundle(root, version=1, issued_at=at, expires_at=at + 30 * DAY, keys=keys,
                       revoked_cards=revoked)
