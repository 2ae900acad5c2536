"""The shared cast of a benchmark run: a root, two issuer keys and bundles of several sizes."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.cards.bundle import BundleKey

from . import fixtures


@dataclass(frozen=True)
class World:
    at: int
    root: ed25519.Ed25519PrivateKey
    ed_key: object
    es_key: object
    keys: tuple[BundleKey, ...]


@cache
def world() -> World:
    ed = fixtures.issuer_key("EdDSA")
    es = fixtures.issuer_key("ES256")
    return World(fixtures.now(), ed25519.Ed25519PrivateKey.generate(), ed, es,
                 (fixtures.bundle_key(ed), fixtures.bundle_key(es)))


@cache
def bundle_bytes(revoked: int) -> bytes:
    """A signed bundle file with the two issuer keys and ``revoked`` revoked card ids."""
    w = world()
    return fixtures.bundle_file(w.root, list(w.keys), fixtures.revoked_ids(revoked), w.at)
