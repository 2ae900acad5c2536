"""The trust store the verifier consults: issuer keys by kid, revoked kids and revoked cards.

It is immutable, so a daemon can swap in a new one atomically when a bundle arrives. Keys come
from PEM/DER public keys or certificates (trusted for any issuer), from signed bundles and from
SMART Health Cards JWKS files; SHC revocation lists (CRL files) add revoked rids
(docs/health-certificates.md#shc-trust).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding

from scanner.base.errors import KeyFileError, TrustError, os_error_words, words_at
from scanner.cards import jwks as jwksmod
from scanner.cards import keys as keymod
from scanner.cards import trustfile, x509util
from scanner.cards.bundle import Bundle, BundleKey, bundle_parts, is_streamed, open_bundle, open_parts
from scanner.cards.revocation import RevocationSet

_USABLE_CACHE_SIZE = 256


@dataclass(frozen=True, slots=True)
class TrustStore:
    """Everything the offline verifier trusts; build it with ``TrustStore.build``."""

    by_kid: Mapping[bytes, tuple[BundleKey, ...]] = field(default_factory=lambda: MappingProxyType({}))
    revoked_cards: RevocationSet = field(default_factory=RevocationSet)
    revoked_kids: frozenset[bytes] = frozenset()
    bundles: tuple[Bundle, ...] = ()
    # SHC revocation by rid: issuer kid -> rid -> None (revoked) or time (revoked if nbf before it)
    revoked_rids: Mapping[bytes, Mapping[str, int | None]] = field(
        default_factory=lambda: MappingProxyType({}))
    notes: tuple[str, ...] = ()  # keys that were skipped while loading, and why (for a warning)
    # (kid, alg, format) -> the keys a card of that format and alg may be signed with: worked out once
    # per kid, not on every scan (the store never changes, so neither does the answer)
    _usable: dict[tuple[bytes, str, str], tuple[BundleKey, ...]] = field(
        default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, keys: Iterable[BundleKey] = (), bundles: Iterable[Bundle] = (),
              crls: Iterable[jwksmod.Crl] = (), notes: Iterable[str] = ()) -> TrustStore:
        """Combine loose keys, bundles and SHC CRLs; revocations from every bundle apply to every key.

        A key with an X.509 certificate is also found by the EU DCC kid (SHA-256 of the
        certificate's DER, first 8 bytes), whatever kid it was listed under.
        """
        bundles = tuple(bundles)
        by_kid: dict[bytes, list[BundleKey]] = {}
        for key in list(keys) + [k for b in bundles for k in b.keys]:
            by_kid.setdefault(key.kid, []).append(key)
            if key.x509_der is not None:
                alias = x509util.hc1_kid(key.x509_der)
                if alias != key.kid:
                    by_kid.setdefault(alias, []).append(key)
        revoked = RevocationSet()
        for b in bundles:
            revoked = revoked.union(b.revoked_cards)
        kids = frozenset().union(*(b.revoked_kids for b in bundles))
        rids: dict[bytes, dict[str, int | None]] = {}
        for crl in crls:
            table = rids.setdefault(crl.kid, {})
            for rid, until in crl.rids.items():
                table[rid] = jwksmod.merge_rid(table, rid, until)
        return cls(MappingProxyType({k: tuple(v) for k, v in by_kid.items()}), revoked, kids, bundles,
                   MappingProxyType({k: MappingProxyType(v) for k, v in rids.items()}), tuple(notes))

    def lookup(self, kid: bytes) -> tuple[BundleKey, ...]:
        """Keys with this kid (usually one; kids are 8 bytes, so collisions are possible)."""
        return self.by_kid.get(kid, ())

    def usable(self, kid: bytes, alg: str, fmt: str) -> tuple[BundleKey, ...]:
        """Keys with this kid, of this alg and trusted for cards of format ``fmt``."""
        found = self._usable.get((kid, alg, fmt))
        if found is None:
            found = tuple(k for k in self.by_kid.get(kid, ())
                          if k.alg == alg and (k.formats is None or fmt in k.formats))
            if len(self._usable) >= _USABLE_CACHE_SIZE:  # bounded: kids come from hostile cards
                self._usable.clear()
            self._usable[(kid, alg, fmt)] = found
        return found

    @property
    def key_count(self) -> int:
        """Distinct keys (a certificate indexed under two kids counts once)."""
        return len({id(k) for v in self.by_kid.values() for k in v})

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
    try:
        found = x509util.load_public_keys(path)
    except KeyFileError as strict_error:
        # a certificate that is not strict DER: read it as OpenSSL would (scanner/cards/x509util.py)
        try:
            certs = x509util.read_certificates(Path(path).read_bytes())
        except (KeyFileError, OSError):
            raise strict_error from None
        return [BundleKey(keymod.kid_of(c.public_key), keymod.alg_of(c.public_key), issuer,
                          c.public_key, formats, c.not_after, c.der) for c in certs]
    for public_key, cert in found:
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
    found = x509util.load_public_keys(path)
    if len(found) != 1 or not isinstance(found[0][0], ed25519.Ed25519PublicKey):
        raise KeyFileError(f"{path}: a trust root must be one Ed25519 public key")
    return found[0][0]


def is_bundle_file(data: bytes) -> bool:
    """A bundle is JSON (starts with '{') or a format-2 bundle (its magic); key files are PEM or DER."""
    return is_streamed(data) or data.lstrip()[:1] == b"{"


def load_trust(paths: Sequence[str | os.PathLike], roots: Sequence[ed25519.Ed25519PublicKey] = (),
               bundles: Sequence[Bundle] = ()) -> TrustStore:
    """Build a store from key, certificate, bundle, JWKS and SHC CRL files (and ``bundles`` opened
    already); bundles need a root to check against. Keys of a JWKS that cannot be used are skipped
    and named in ``notes``."""
    loose: list[BundleKey] = []
    bundles = list(bundles)
    crls: list[jwksmod.Crl] = []
    notes: list[str] = []
    for p in paths:
        path = Path(p)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"{path}: {exc.strerror or exc}", text=os_error_words(exc, path)) from None
        kind = jwksmod.sniff(data) if is_bundle_file(data) and not is_streamed(data) else None
        if kind is not None:
            try:
                if kind == "jwks":
                    found = jwksmod.parse_jwks(data)
                    loose.extend(found.keys)
                    notes.extend(f"{path}: {problem} (key ignored)" for problem in found.problems)
                else:
                    crls.append(jwksmod.parse_crl(data))
            except KeyFileError as exc:
                raise KeyFileError(f"{path}: {exc}") from None
        elif is_bundle_file(data):
            if not roots:
                raise TrustError(f"{path} is a trust bundle: give the root key it is signed with "
                                 "(--trust-root)", code="bundle_no_root")
            try:
                if is_streamed(data):
                    bundles.append(open_bundle(data, roots))
                else:
                    parts = bundle_parts(data)
                    del data  # a large bundle's file is not kept while its payload is parsed
                    bundles.append(open_parts(*parts, roots))
                    del parts
            except TrustError as exc:
                raise TrustError(f"{path}: {exc}", code=exc.code, text=words_at(exc, path)) from None
        else:
            loose.extend(key_from_file(path))
    return TrustStore.build(loose, bundles, crls, notes)


def load_device_trust(state_dir: str | os.PathLike, root_paths: Iterable[str | os.PathLike] = (),
                      files: Iterable[str | os.PathLike] = ()) -> TrustStore:
    """The trust of an appliance: the root pinned at provisioning (STATE/trust-root.pem, if any) and
    ``root_paths``; the installed bundle (STATE/bundle.json, if any) and the key ``files``."""
    state = Path(state_dir)
    roots = [load_root(state / "trust-root.pem")] if (state / "trust-root.pem").exists() else []
    roots += [load_root(p) for p in root_paths]
    installed = state / "bundle.json"
    bundles = []
    if installed.exists():  # through its checked file (scanner/cards/trustfile.py): not parsed again
        try:
            bundles.append(trustfile.open_checked(installed, roots))
        except TrustError as exc:
            raise TrustError(f"{installed}: {exc}", code=exc.code, text=words_at(exc, installed)) from None
    return load_trust(list(files), roots, bundles)
