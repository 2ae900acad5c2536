"""The trust store the verifier consults: issuer keys by kid, revoked kids and revoked cards.

It is immutable, so a daemon can swap in a new one atomically when a bundle arrives. Keys come
from PEM/DER public keys or certificates (trusted for any issuer) and from signed bundles.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding

from . import keys as keymod
from .bundle import Bundle, BundleKey, open_bundle
from .errors import KeyFileError, TrustError
from .revocation import RevocationSet


@dataclass(frozen=True, slots=True)
class TrustStore:
    """Everything the offline verifier trusts; build it with ``TrustStore.build``."""

    by_kid: Mapping[bytes, tuple[BundleKey, ...]] = field(default_factory=lambda: MappingProxyType({}))
    revoked_cards: RevocationSet = field(default_factory=RevocationSet)
    revoked_kids: frozenset[bytes] = frozenset()
    bundles: tuple[Bundle, ...] = ()

    @classmethod
    def build(cls, keys: Iterable[BundleKey] = (), bundles: Iterable[Bundle] = ()) -> TrustStore:
        """Combine loose keys and bundles; revocations from every bundle apply to every key."""
        bundles = tuple(bundles)
        by_kid: dict[bytes, list[BundleKey]] = {}
        for key in list(keys) + [k for b in bundles for k in b.keys]:
            by_kid.setdefault(key.kid, []).append(key)
        revoked = RevocationSet()
        for b in bundles:
            revoked = revoked.union(b.revoked_cards)
        kids = frozenset().union(*(b.revoked_kids for b in bundles))
        return cls(MappingProxyType({k: tuple(v) for k, v in by_kid.items()}), revoked, kids, bundles)

    def lookup(self, kid: bytes) -> tuple[BundleKey, ...]:
        """Keys with this kid (usually one; kids are 8 bytes, so collisions are possible)."""
        return self.by_kid.get(kid, ())

    @property
    def key_count(self) -> int:
        return sum(len(v) for v in self.by_kid.values())

    @property
    def version(self) -> int | None:
        """The highest bundle version in the store (None without bundles)."""
        return max((b.version for b in self.bundles), default=None)

    @property
    def expires_at(self) -> int | None:
        """When the earliest bundle expires (None without bundles)."""
        return min((b.expires_at for b in self.bundles), default=None)


def key_from_file(path: str | os.PathLike, issuer: str | None = None,
                  formats: frozenset[str] | None = None) -> list[BundleKey]:
    """Keys from a PEM/DER public key or certificate file (by default for any issuer and format).

    A certificate's notAfter becomes the key's not_after.
    """
    out = []
    for public_key, cert in keymod.load_public_keys(path):
        not_after = None
        der = None
        if cert is not None:
            not_after = int(cert.not_valid_after_utc.timestamp())
            der = cert.public_bytes(Encoding.DER)
        out.append(BundleKey(keymod.kid_of(public_key), keymod.alg_of(public_key), issuer,
                             public_key, formats, not_after, der))
    return out


def load_root(path: str | os.PathLike) -> ed25519.Ed25519PublicKey:
    """The provisioned root key that signs bundles (PEM Ed25519 public key)."""
    found = keymod.load_public_keys(path)
    if len(found) != 1 or not isinstance(found[0][0], ed25519.Ed25519PublicKey):
        raise KeyFileError(f"{path}: a trust root must be one Ed25519 public key")
    return found[0][0]


def is_bundle_file(data: bytes) -> bool:
    """A bundle is JSON (starts with '{'); key files are PEM or DER."""
    return data.lstrip()[:1] == b"{"


def load_trust(paths: Sequence[str | os.PathLike], roots: Sequence[ed25519.Ed25519PublicKey] = ()
               ) -> TrustStore:
    """Build a store from key, certificate and bundle files; bundles need a root to check against."""
    loose: list[BundleKey] = []
    bundles: list[Bundle] = []
    for p in paths:
        path = Path(p)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"{path}: {exc.strerror or exc}") from None
        if is_bundle_file(data):
            if not roots:
                raise TrustError(f"{path} is a trust bundle: give the root key it is signed with "
                                 "(--trust-root)", code="bundle_no_root")
            try:
                bundles.append(open_bundle(data, roots))
            except TrustError as exc:
                raise TrustError(f"{path}: {exc}", code=exc.code) from None
        else:
            loose.extend(key_from_file(path))
    return TrustStore.build(loose, bundles)
