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
from scanner.base.fsutil import AtomicFile, Dir
from scanner.cards import trustfile
from scanner.cards.bundle import MAX_BUNDLE_BYTES, Bundle, is_streamed, open_bundle, root_kid
from scanner.cards.trust import load_root
from sync.wire import delta as deltamod

BUNDLE_NAME = "bundle.json"  # either format (scanner/cards/bundle.py), the name kept from format 1
DOWNLOAD_NAME = "bundle.json.new"  # a bundle received or made from a delta, until it is checked and in place
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


def download_path(state_dir: str | os.PathLike) -> Path:
    """Where a new bundle file is put until install_file has checked it (written atomically there)."""
    return Path(state_dir) / DOWNLOAD_NAME


def install_file(state_dir: str | os.PathLike, download: str | os.PathLike, roots: Sequence[ed25519.Ed25519PublicKey],
                 *, min_version: int | None) -> Bundle:
    """install() for a bundle file at ``download`` in the state directory. A format-2 file is checked
    as it is read, its ids going straight into its checked file (never held whole); then the checked
    file is put in place, then the file itself is renamed over the installed one, so a swap cut off
    between the two leaves the old bundle serving. On any failure TrustError; the old bundle stays."""
    path = Path(state_dir) / BUNDLE_NAME
    try:
        with open(download, "rb") as fh:
            if not is_streamed(fh.read(8)):
                fh.seek(0)
                data = fh.read(MAX_BUNDLE_BYTES + 1)
                fh.close()
                return install(state_dir, data, roots, min_version=min_version)
            fh.seek(0)
            checked = trustfile.path_for(path)
            source = trustfile.check_streamed(fh, roots, checked, min_version=min_version)
        with Dir.open(Path(state_dir)) as directory:
            os.rename(Path(download).name, BUNDLE_NAME, src_dir_fd=directory.fd, dst_dir_fd=directory.fd)
            os.fsync(directory.fd)
    finally:
        Path(download).unlink(missing_ok=True)
    bundle = trustfile.read(checked, source, {root_kid(r) for r in roots})
    if bundle is None:
        raise TrustError(f"{checked} was replaced while the bundle was installed", code="trustfile_corrupt")
    return bundle


def install_streamed_delta(state_dir: str | os.PathLike, current: Bundle, delta: deltamod.StreamedDelta,
                           roots: Sequence[ed25519.Ed25519PublicKey]) -> Bundle:
    """Apply a v2 delta to the installed format-2 bundle ``current``: bundle M's file is written
    as the installed file is read (sync.wire.delta.apply_streamed), then installed by install_file."""
    download = download_path(state_dir)
    try:
        with open(Path(state_dir) / BUNDLE_NAME, "rb") as old, AtomicFile.at(download, 0o644) as out:
            deltamod.apply_streamed(old, current, delta, roots, out)
    except OSError as exc:
        raise deltamod.DeltaError(f"current bundle file unreadable ({exc.strerror})") from None
    return install_file(state_dir, download, roots, min_version=current.version)
