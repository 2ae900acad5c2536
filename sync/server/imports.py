"""Offline sync, the server's half: import the signed batch files a device wrote to a directory (a
USB stick; sync/export.py) with the same checks and deduplication as a push. Nothing on the stick
is trusted: symlinks are never followed, FIFOs and devices never opened, hard-linked, oversize and
forged files refused and listed (docs/sync-protocol.md#offline-export).
"""
from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.base.errors import CheckpointError
from scanner.base.fsutil import SYMLINK, Dir, UnsafePathError
from scanner.base.timeutil import now_ms
from sync.server.model import ServerError, Storage
from sync.wire import protocol
from sync.wire.batch import FILE_SUFFIX, BatchError, open_batch, read_header

MAX_DEPTH = 8  # DIR/checkpoint-batches/<device_id>/ is 2 deep; room for an operator's own layout


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import found: files seen, batches and entries taken (stored new or already held),
    and the files refused as (file, code, message)."""

    files: int = 0
    batches: int = 0
    entries: int = 0
    stored: int = 0
    duplicates: int = 0
    refused: list[tuple[str, str, str]] = field(default_factory=list)

    def __add__(self, other: ImportResult) -> ImportResult:
        return ImportResult(self.files + other.files, self.batches + other.batches, self.entries + other.entries,
                            self.stored + other.stored, self.duplicates + other.duplicates,
                            self.refused + other.refused)

    def to_dict(self) -> dict:
        return {"files": self.files, "batches": self.batches, "entries": self.entries, "stored": self.stored,
                "duplicates": self.duplicates, "refused": [list(r) for r in self.refused]}


def import_dir(storage: Storage, path: str | os.PathLike, *, now: int | None = None) -> ImportResult:
    """Import every *.ckb file under ``path`` into the server's storage (same checks as a push:
    enrolled, not revoked, signature, bounds; then deduplicated). Bad files are listed, not fatal:
    symlinks (never followed), FIFOs and devices (never opened), hard-linked and oversize files
    are refused like forged ones. ``path`` itself is used as named."""
    files = batches = entries = stored = duplicates = 0
    refused: list[tuple[str, str, str]] = []
    try:
        top = Dir.open(path)
    except (FileNotFoundError, NotADirectoryError):
        raise CheckpointError(f"{path}: no such directory", code="import_missing") from None
    with top:
        for d, name in _batch_names(top, 0, refused):
            files += 1
            try:
                data = d.read(name, protocol.MAX_BATCH_BYTES)
                info = read_header(data)
                device = storage.device(info.device_id)
                if device is None:
                    raise BatchError(f"device {info.device_id} is not enrolled", code=protocol.E_UNKNOWN_DEVICE)
                if device.revoked_ms is not None:
                    raise BatchError(f"device {info.device_id} is revoked", code=protocol.E_DEVICE_REVOKED)
                parsed = open_batch(data, ed25519.Ed25519PublicKey.from_public_bytes(device.public_key))
                done = storage.ingest(parsed, "import", now_ms() if now is None else now)
            except (BatchError, ServerError, UnsafePathError) as exc:
                refused.append((d.shown(name), exc.code, str(exc)[:300]))
                continue
            except OSError as exc:
                refused.append((d.shown(name), "unreadable", exc.strerror or str(exc)))
                continue
            batches += 1
            entries += done.ack.count
            stored += done.stored
            duplicates += done.duplicates
    return ImportResult(files, batches, entries, stored, duplicates, refused)


def import_dirs(storage: Storage, paths: Iterable[str | os.PathLike], *, now: int | None = None) -> ImportResult:
    """import_dir for each of ``paths`` in turn, totalled (`checkpoint server import DIR...`)."""
    total = ImportResult()
    for path in paths:
        total += import_dir(storage, path, now=now)
    return total


def _batch_names(d: Dir, depth: int, refused: list) -> Iterator[tuple[Dir, str]]:
    """(directory, name) of every *.ckb entry below ``d``, depth first in name order. A symlink
    is never entered (and listed as refused); so is a directory deeper than MAX_DEPTH."""
    try:
        names = d.names()
    except OSError as exc:
        refused.append((d.path, "unreadable", exc.strerror or str(exc)))
        return
    for name in names:
        try:
            mode = d.lstat(name).st_mode
        except OSError as exc:
            refused.append((d.shown(name), "unreadable", exc.strerror or str(exc)))
            continue
        if stat.S_ISDIR(mode):
            if depth >= MAX_DEPTH:
                refused.append((d.shown(name), "too_deep", f"more than {MAX_DEPTH} directories deep: not searched"))
                continue
            try:
                sub = d.subdir(name)
            except UnsafePathError as exc:  # swapped for a symlink since the lstat
                refused.append((d.shown(name), exc.code, str(exc)))
                continue
            except OSError as exc:
                refused.append((d.shown(name), "unreadable", exc.strerror or str(exc)))
                continue
            with sub:
                yield from _batch_names(sub, depth + 1, refused)
        elif name.endswith(FILE_SUFFIX):
            yield d, name  # Dir.read refuses what is not a regular file
        elif stat.S_ISLNK(mode):
            refused.append((d.shown(name), SYMLINK, f"{d.shown(name)} is a symbolic link: not followed"))
