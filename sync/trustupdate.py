"""Trust-bundle updates on the device: not modified, a full bundle, or a signed delta
(sync.wire.delta); each checked (root signature, version) before an atomic swap (write, fsync,
rename), the old bundle kept on any failure. Format: docs/sync-protocol.md#trust-updates.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.base.errors import TrustError
from scanner.base.fsutil import AtomicFile
from scanner.cards import trustfile
from scanner.cards.bundle import Bundle, open_bundle
from scanner.cards.trust import load_root
from sync.wire import delta as deltamod

BUNDLE_NAME = "bundle.json"
ROOT_NAME = "trust-root.pem"


def load_roots(state_dir: str | os.PathLike) -> list[ed25519.Ed25519PublicKey]:
    """The pinned trust root(s) of this device (state dir trust-root.pem); [] if none yet."""
    path = Path(state_dir) / ROOT_NAME
    if not path.exists():
        return []
    return [load_root(path)]


def current(state_dir: str | os.PathLike, roots: Sequence[ed25519.Ed25519PublicKey]
            ) -> tuple[bytes, Bundle] | None:
    """The installed bundle's bytes and content, or None if there is none (TrustError if bad)."""
    path = Path(state_dir) / BUNDLE_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return data, open_bundle(data, roots)


def installed(state_dir: str | os.PathLike, roots: Sequence[ed25519.Ed25519PublicKey]) -> Bundle | None:
    """current() without the file's bytes: the installed bundle's content (verified), or None; read
    from its checked file (scanner/cards/trustfile.py) when that matches, so a trust check that
    finds nothing new never parses the bundle."""
    try:
        return trustfile.open_checked(Path(state_dir) / BUNDLE_NAME, roots)
    except FileNotFoundError:
        return None


def install(state_dir: str | os.PathLike, data: bytes, roots: Sequence[ed25519.Ed25519PublicKey], *,
            min_version: int | None, verified: Bundle | None = None) -> Bundle:
    """Verify ``data`` (root signature; version above ``min_version``) and only then swap it in
    atomically. On any failure the installed bundle is untouched and TrustError is raised.
    ``verified``: the result of open_bundle(data, roots, min_version=...) already done by the
    caller, so a large bundle is not checked twice."""
    bundle = verified if verified is not None else open_bundle(data, roots, min_version=min_version)
    _check_newer(bundle, min_version)
    return _swap(state_dir, bundle, lambda: (data,))


def install_applied(state_dir: str | os.PathLike, applied: deltamod.Applied, *, min_version: int | None) -> Bundle:
    """install() for a bundle a delta made (verified by sync.wire.delta.apply_delta_parts): its file
    is written in pieces from the payload, never held whole beside it."""
    _check_newer(applied.bundle, min_version)
    return _swap(state_dir, applied.bundle,
                 lambda: deltamod.bundle_file_pieces(applied.payload, applied.sig, applied.kid))


def _check_newer(bundle: Bundle, min_version: int | None) -> None:
    if min_version is not None and bundle.version <= min_version:
        raise TrustError(f"bundle version {bundle.version} is not newer than {min_version} "
                         "(rollback refused)", code="bundle_rollback")


def _swap(state_dir: str | os.PathLike, bundle: Bundle, pieces: Callable[[], Iterable[bytes]]) -> Bundle:
    """Put the verified ``bundle``, whose file is ``pieces()`` joined, in place: its checked file
    first, then the bundle file (each written atomically). A swap cut off between the two leaves the
    checked file made from another bundle file than the one in place, so it is not used and the old
    bundle, still in place, is opened and serves."""
    h = hashlib.sha256()
    for piece in pieces():
        h.update(piece)
    path = Path(state_dir) / BUNDLE_NAME
    trustfile.write(trustfile.path_for(path), bundle, h.digest())
    with AtomicFile.at(path, 0o644) as fh:
        for piece in pieces():
            fh.write(piece)
    return bundle
