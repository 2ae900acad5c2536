"""Offline sync for sites with no link: the device writes its pending entries as signed batch files
to a directory (a USB stick); the server imports them with the same checks and deduplication as a
push. The device learns the acknowledgement at its next contact (the server's batch list).

Files: DIR/checkpoint-batches/<device_id>/<first_seq>-<last_seq>-<batch_id>.ckb, each exactly the
bytes a push would send (docs/sync-protocol.md#offline-export).
"""
from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.base.errors import CheckpointError
from scanner.base.fsutil import SYMLINK, Dir, UnsafePathError
from scanner.base.timeutil import now_ms
from scanner.store.entrylog import EntryLog
from sync.agent import build_next
from sync.state import DeviceConfig, StateFile
from sync.wire import identity, protocol
from sync.wire.batch import BatchError, open_batch, read_header

EXPORT_SUBDIR = "checkpoint-batches"
SUFFIX = ".ckb"
DIR_MODE = 0o700  # the batch files are 0600 anyway
MAX_DEPTH = 8  # DIR/checkpoint-batches/<device_id>/ is 2 deep; room for an operator's own layout


@dataclass(frozen=True, slots=True)
class ExportResult:
    dir: str
    files: tuple[str, ...]
    entries: int
    first_seq: int | None
    last_seq: int | None


def export_pending(state_dir: str | os.PathLike, entry_log: EntryLog, to_dir: str | os.PathLike, *,
                   batch_size: int = 5000) -> ExportResult:
    """Write every pending entry (except quarantined runs) as signed batch files under ``to_dir``.
    Entries stay pending on the device until the server acknowledges them. ``to_dir`` is used as
    named (made if missing); nothing below it is followed if it is a symlink (fsutil)."""
    config = DeviceConfig.load(Path(state_dir))
    key: ed25519.Ed25519PrivateKey = identity.load(state_dir)
    files_ = StateFile(state_dir)
    quarantined = files_.load().quarantine_ranges()
    shown = Path(to_dir) / EXPORT_SUBDIR / config.device_id
    written, entries, first, last, cursor = [], 0, None, None, 0
    with Dir.open(to_dir, create_mode=0o777) as top, top.subdir(EXPORT_SUBDIR, create_mode=DIR_MODE) as sub, \
            sub.subdir(config.device_id, create_mode=DIR_MODE) as out:
        while True:
            sb = build_next(entry_log, key, config.device_id, cursor, min(batch_size, protocol.MAX_BATCH_ENTRIES),
                            quarantined, now_ms())
            if sb is None:
                break
            info = sb.info
            name = f"{info.first_seq:012d}-{info.last_seq:012d}-{info.batch_id}{SUFFIX}"
            out.write(name, sb.data, 0o600)  # a stick pulled out mid-write leaves no half file
            written.append(str(shown / name))
            entries += info.count
            first = info.first_seq if first is None else first
            last = info.last_seq
            cursor = info.last_seq
    with files_.lock():
        state = files_.load()
        state.exported = (state.exported + [{"dir": str(shown), "batches": len(written), "entries": entries,
                                             "first_seq": first, "last_seq": last, "at_ms": now_ms()}])[-20:]
        files_.save(state)
    return ExportResult(str(shown), tuple(written), entries, first, last)


@dataclass
class ImportResult:
    files: int = 0
    batches: int = 0
    entries: int = 0
    stored: int = 0
    duplicates: int = 0
    refused: list = field(default_factory=list)  # (file, code, message)

    def to_dict(self) -> dict:
        return {"files": self.files, "batches": self.batches, "entries": self.entries, "stored": self.stored,
                "duplicates": self.duplicates, "refused": [list(r) for r in self.refused]}


def import_dir(storage, path: str | os.PathLike, *, now: int | None = None) -> ImportResult:
    """Import every *.ckb file under ``path`` into the server's storage (same checks as a push:
    enrolled, not revoked, signature, bounds; then deduplicated). Bad files are listed, not fatal:
    symlinks (never followed), FIFOs and devices (never opened), hard-linked and oversize files
    are refused like forged ones. ``path`` itself is used as named."""
    from sync.server.storage import ServerError

    result = ImportResult()
    try:
        top = Dir.open(path)
    except (FileNotFoundError, NotADirectoryError):
        raise CheckpointError(f"{path}: no such directory", code="import_missing") from None
    with top:
        for d, name in _batch_names(top, 0, result.refused):
            result.files += 1
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
                result.refused.append((d.shown(name), exc.code, str(exc)[:300]))
                continue
            except OSError as exc:
                result.refused.append((d.shown(name), "unreadable", exc.strerror or str(exc)))
                continue
            result.batches += 1
            result.entries += done.ack.count
            result.stored += done.stored
            result.duplicates += done.duplicates
    return result


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
        elif name.endswith(SUFFIX):
            yield d, name  # Dir.read refuses what is not a regular file
        elif stat.S_ISLNK(mode):
            refused.append((d.shown(name), SYMLINK, f"{d.shown(name)} is a symbolic link: not followed"))
