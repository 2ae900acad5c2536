"""A checked trust bundle, kept beside the bundle file: what opening the bundle found (version,
dates, keys, revoked kids) and its revoked card ids as a sorted, indexed array that a process maps
from the file instead of parsing the bundle again. A format-2 bundle's ids are written here chunk by
chunk as they are read and checked (check_streamed), so no process holds them whole.

Opening a bundle of a million revocations means a 44 MB file, its 35 MB payload and NumPy in the
process that does it; a daemon that maps this file holds none of them (its ids are clean file
pages the kernel can reclaim), and a bundle swap costs the daemon almost nothing. The file is
bound to the bundle file it was made from by that file's SHA-256, and to itself by a SHA-256 over
all of it: a file made from another bundle, cut short or altered is not used (the bundle is then
opened and checked again, and this file made anew). It is written only after the bundle passed
every check (root signature, version), next to the bundle in the same directory; whoever can
replace it there can replace the pinned root as well. Layout: docs/card-format.md#checked-bundle.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import mmap
import os
import struct
import sys
from array import array
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO

from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.base.errors import KeyFileError, TrustError
from scanner.base.fsutil import AtomicFile
from scanner.cards.bundle import (
    Bundle,
    StreamReader,
    bundle_parts,
    is_streamed,
    open_bundle,
    open_parts,
    parse_keys,
    root_kid,
)
from scanner.cards.revocation import ID_SIZE, RevocationSet

log = logging.getLogger(__name__)

MAGIC = b"CKTRUST\x02"  # \x01 had the index before the ids: such a file is made anew
# magic, the bundle file's SHA-256, head length, id count, index offset, ids offset
_HEADER = struct.Struct("<8s32sQQQQ")
_BUCKETS = 1 << 16
_INDEX_BYTES = 4 * (_BUCKETS + 1)
_DIGEST = 32
_READ = 1 << 20  # the bundle file is hashed in pieces of 1 MiB (never held whole)


def file_sha256(path: str | os.PathLike) -> bytes:
    """The SHA-256 of a file, read in pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_READ):
            h.update(chunk)
    return h.digest()


def _align(offset: int) -> int:
    """``offset`` rounded up to where a map of the file may start (mmap's allocation granularity)."""
    g = mmap.ALLOCATIONGRANULARITY
    return -(-offset // g) * g


def write(path: str | os.PathLike, bundle: Bundle, source_sha256: bytes) -> None:
    """Write the checked file of ``bundle`` (opened and verified from a file whose SHA-256 is
    ``source_sha256``) atomically at ``path``."""
    cards = bundle.revoked_cards
    _write(path, bundle, len(cards), source_sha256, [cards.blob()], cards.index)


def _write(path: str | os.PathLike, bundle: Bundle, count: int, source_sha256: bytes, pieces: Iterable,
           index_of: Callable[[], array]) -> None:
    """The checked file of ``bundle`` whose ``count`` ids come in ``pieces`` (in order), written
    front to back and hashed as it goes; ``index_of()`` is asked for their index after the last piece.
    An exception from ``pieces`` leaves nothing behind."""
    head = json.dumps({
        "version": bundle.version, "issued_at": bundle.issued_at, "expires_at": bundle.expires_at,
        "keys": [k.to_json() for k in bundle.keys],
        "revoked_kids": sorted(base64.b64encode(k).decode("ascii") for k in bundle.revoked_kids),
        "root_kid": base64.b64encode(bundle.root_kid).decode("ascii"), "digest": bundle.digest,
    }, separators=(",", ":"), sort_keys=True).encode("ascii")
    ids_at = _align(_HEADER.size + len(head))
    index_at = ids_at + count * ID_SIZE
    h = hashlib.sha256()
    with AtomicFile.at(path, 0o644) as fh:
        def put(data) -> None:
            h.update(data)
            fh.write(data)
        put(_HEADER.pack(MAGIC, source_sha256, len(head), count, index_at, ids_at))
        put(head)
        put(bytes(ids_at - _HEADER.size - len(head)))
        written = 0
        for piece in pieces:
            put(piece)
            written += len(piece)
        if written != count * ID_SIZE:
            raise TrustError(f"{path}: {written} bytes of ids written, {count * ID_SIZE} expected",
                             code="trustfile_corrupt")
        index = array("I", index_of())
        if sys.byteorder != "little":
            index.byteswap()
        put(index.tobytes())
        fh.write(h.digest())


def _digest_of(fd: int, end: int) -> bytes:
    """SHA-256 of the file's first ``end`` bytes, read in pieces (not mapped: a map would make the
    pages count in this process while the old bundle's are still mapped)."""
    h = hashlib.sha256()
    at = 0
    while at < end:
        piece = os.pread(fd, min(_READ, end - at), at)
        if not piece:
            break
        h.update(piece)
        at += len(piece)
    return h.digest()


def read(path: str | os.PathLike, source_sha256: bytes, root_kids: set[bytes]) -> Bundle | None:
    """The bundle of the checked file at ``path`` if it was made from the file whose SHA-256 is
    ``source_sha256`` and signed by one of ``root_kids``; None if there is none, or it belongs to
    another bundle file or root (open the bundle then). TrustError(trustfile_corrupt) if it is
    damaged."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TrustError(f"{path}: {exc.strerror}", code="trustfile_corrupt") from None
    try:
        size = os.fstat(fd).st_size
        if size < _HEADER.size + _DIGEST:
            raise TrustError(f"{path} is cut short", code="trustfile_corrupt")
        whole = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        try:
            magic, source, head_len, count, index_at, ids_at = _HEADER.unpack_from(whole)
            if magic != MAGIC:
                raise TrustError(f"{path} is not a checked trust file", code="trustfile_corrupt")
            if source != source_sha256:
                return None  # made from another bundle file (a swap cut off between the two files)
            end = index_at + _INDEX_BYTES
            if (size != end + _DIGEST or ids_at < _HEADER.size + head_len or index_at != ids_at + count * ID_SIZE
                    or ids_at % mmap.ALLOCATIONGRANULARITY):
                raise TrustError(f"{path} has a bad layout", code="trustfile_corrupt")
            if _digest_of(fd, end) != whole[end:]:
                raise TrustError(f"{path} does not match its own digest", code="trustfile_corrupt")
            head = json.loads(whole[_HEADER.size:_HEADER.size + head_len])
            index = array("I")
            index.frombytes(whole[index_at:index_at + _INDEX_BYTES])
        finally:
            whole.close()
        if sys.byteorder != "little":
            index.byteswap()
        root = base64.b64decode(head["root_kid"], validate=True)
        if root not in root_kids:
            return None  # the roots changed since: the bundle is checked again against the ones now
        ids = mmap.mmap(fd, count * ID_SIZE, access=mmap.ACCESS_READ, offset=ids_at) if count else None
        revoked = RevocationSet.mapped(ids, index) if ids is not None else RevocationSet()
        return Bundle(head["version"], head["issued_at"], head["expires_at"], parse_keys(head["keys"]), revoked,
                      frozenset(base64.b64decode(k, validate=True) for k in head["revoked_kids"]), root,
                      head["digest"])
    except (ValueError, KeyError, TypeError, binascii.Error, KeyFileError, TrustError) as exc:
        if isinstance(exc, TrustError) and exc.code == "trustfile_corrupt":
            raise
        raise TrustError(f"{path}: unreadable ({exc})", code="trustfile_corrupt") from None
    finally:
        os.close(fd)


def path_for(bundle_path: str | os.PathLike) -> Path:
    """Where the checked file of the bundle file at ``bundle_path`` is kept (beside it)."""
    p = Path(bundle_path)
    return p.with_name(p.name + ".checked")


def open_checked(bundle_path: str | os.PathLike, roots: Sequence[ed25519.Ed25519PublicKey]) -> Bundle:
    """The bundle file at ``bundle_path``, from its checked file when that was made from this very
    file and root; else opened and verified whole (TrustError if it fails a check), and its checked
    file written for the next time."""
    if not roots:
        raise TrustError("no trust root given to check the bundle against", code="bundle_no_root")
    checked = path_for(bundle_path)
    try:
        found = read(checked, file_sha256(bundle_path), {root_kid(r) for r in roots})
    except TrustError as exc:
        log.warning("%s; the bundle is checked again", exc)
        found = None
    if found is not None:
        return found
    with open(bundle_path, "rb") as fh:
        if is_streamed(fh.read(8)):
            fh.seek(0)
            return _checked_streamed(fh, roots, checked)
    data = Path(bundle_path).read_bytes()
    source = hashlib.sha256(data).digest()
    parts = bundle_parts(data)
    del data  # a large bundle's file is not kept while its payload is parsed
    bundle = open_parts(*parts, roots)
    del parts
    try:
        write(checked, bundle, source)
    except OSError as exc:
        log.warning("cannot keep the checked trust file %s (%s); the bundle is checked whole each time", checked,
                    exc.strerror)
    return bundle


def check_streamed(fh: IO[bytes], roots: Sequence[ed25519.Ed25519PublicKey], checked: str | os.PathLike, *,
                   min_version: int | None = None) -> bytes:
    """Check the format-2 bundle file open as ``fh`` (from its start) and write its checked file at
    ``checked`` while its ids are read: TrustError, and nothing written, if any check fails. Returns
    the bundle file's SHA-256 (the checked file is bound to it)."""
    h = hashlib.sha256()
    while piece := fh.read(_READ):
        h.update(piece)
    fh.seek(0)
    source = h.digest()
    reader = StreamReader(fh, roots, min_version=min_version)
    _write(checked, reader.head.bundle, reader.head.count, source, reader.ids(), reader.index)
    return source


def _checked_streamed(fh: IO[bytes], roots: Sequence[ed25519.Ed25519PublicKey], checked: Path) -> Bundle:
    """open_checked of a format-2 bundle whose checked file is missing or stale: made anew as the
    bundle is read; where it cannot be written, the bundle is opened in memory."""
    try:
        source = check_streamed(fh, roots, checked)
    except OSError as exc:
        log.warning("cannot keep the checked trust file %s (%s); the bundle is checked whole each time", checked,
                    exc.strerror)
        fh.seek(0)
        return open_bundle(fh.read(), roots)
    found = read(checked, source, {root_kid(r) for r in roots})
    if found is None:
        raise TrustError(f"{checked} was replaced while it was made", code="trustfile_corrupt")
    return found
