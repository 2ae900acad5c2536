"""Publishing trust bundles on the server (from the issuer tools' output) and choosing what a device
gets: not modified, a delta from its version, or the full bundle."""
from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.base.errors import TrustError
from scanner.cards import keys as keymod
from scanner.cards.bundle import open_bundle
from sync.server.model import BundleMeta, Storage
from sync.wire.delta import make_delta

log = logging.getLogger(__name__)

ROOT_META = "root_public_key"
MAX_DELTA_BASES = 20  # deltas are made from this many earlier versions; older devices get the full bundle


def root_of(storage: Storage) -> ed25519.Ed25519PublicKey | None:
    pem = storage.get_meta(ROOT_META)
    if pem is None:
        return None
    key = keymod.public_key_from_spki(_spki(pem))
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise TrustError("the stored trust root is not an Ed25519 key", code="bundle_wrong_root")
    return key


def _spki(pem: str) -> bytes:
    return serialization.load_pem_public_key(pem.encode("ascii")).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def publish(storage: Storage, data: bytes, *, now_ms: int, root: ed25519.Ed25519PublicKey | None = None,
            root_private: ed25519.Ed25519PrivateKey | None = None) -> tuple[BundleMeta, list[int]]:
    """Check a bundle file against the server's root (set by the first publish) and publish it as
    the current one; with the root's private key, also deltas from recent earlier versions.
    Returns the bundle's metadata and the versions a delta was made from."""
    stored = root_of(storage)
    if root_private is not None:
        derived = root_private.public_key()
        if root is not None and keymod.spki_der(root) != keymod.spki_der(derived):
            raise TrustError("--root and --root-key are not one key pair", code="bundle_wrong_root")
        root = derived
    if root is None:
        root = stored
    if root is None:
        raise TrustError("no trust root: give the root public key the first time a bundle is published",
                         code="bundle_no_root")
    if stored is not None and keymod.spki_der(stored) != keymod.spki_der(root):
        raise TrustError("this server already publishes bundles of another root", code="bundle_wrong_root")
    latest = storage.latest_bundle()
    bundle = open_bundle(data, [root], min_version=latest.version if latest else None)
    deltas: dict[int, bytes] = {}
    if root_private is not None:
        for meta in storage.bundle_versions()[-MAX_DELTA_BASES:]:
            old = storage.bundle_data(meta.version)
            delta = make_delta(root_private, old, data) if old is not None else None
            if delta is not None:
                deltas[meta.version] = delta
            else:
                log.info("no delta from bundle version %d (not in the canonical layout)", meta.version)
    meta = BundleMeta(bundle.version, bundle.digest, bundle.issued_at, bundle.expires_at, now_ms, len(data))
    storage.publish_bundle(meta, data, gzip.compress(data, 6, mtime=0), deltas)
    if stored is None:
        storage.set_meta(ROOT_META, root.public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii"))
    return meta, sorted(deltas)


@dataclass(frozen=True, slots=True)
class TrustAnswer:
    """``kind``: "not_modified", "delta" or "full"."""

    kind: str
    version: int
    data: bytes = b""
    gzipped: bool = False


def answer(storage: Storage, have_version: int | None, have_digest: str | None, *, full: bool,
           gzip_ok: bool) -> TrustAnswer | None:
    """What to send a device that has ``have_version`` (None: nothing published yet)."""
    latest = storage.latest_bundle()
    if latest is None:
        return None
    if have_version == latest.version and have_digest == latest.digest:
        return TrustAnswer("not_modified", latest.version)
    if not full and have_version is not None and have_version < latest.version:
        delta = storage.delta(have_version, latest.version)
        if delta is not None:
            return TrustAnswer("delta", latest.version, delta)
    data = storage.bundle_data(latest.version, gz=gzip_ok)
    if data is None:  # pruned between the two reads: as if nothing were published
        return None
    return TrustAnswer("full", latest.version, data, gzip_ok)
