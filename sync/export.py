"""Offline sync for sites with no link: the device writes its pending entries as signed batch files
to a directory (a USB stick); the server imports them with the same checks and deduplication as a
push. The device learns the acknowledgement at its next contact (the server's batch list).

Files: DIR/checkpoint-batches/<device_id>/<first_seq>-<last_seq>-<batch_id>.ckb, each exactly the
bytes a push would send (docs/sync-protocol.md#offline-export).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.entrylog import EntryLog
from scanner.errors import CheckpointError

from . import identity, protocol
from .agent import build_next, now_ms
from .batch import BatchError, open_batch, read_header
from .state import DeviceConfig, StateFile
from .trustupdate import atomic_write

EXPORT_SUBDIR = "checkpoint-batches"
SUFFIX = ".ckb"


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
    Entries stay pending on the device until the server acknowledges them."""
    config = DeviceConfig.load(Path(state_dir))
    key: ed25519.Ed25519PrivateKey = identity.load(state_dir)
    files_ = StateFile(state_dir)
    quarantined = files_.load().quarantine_ranges()
    out = Path(to_dir) / EXPORT_SUBDIR / config.device_id
    out.mkdir(parents=True, exist_ok=True)
    written, entries, first, last, cursor = [], 0, None, None, 0
    while True:
        sb = build_next(entry_log, key, config.device_id, cursor, min(batch_size, protocol.MAX_BATCH_ENTRIES),
                        quarantined, now_ms())
        if sb is None:
            break
        info = sb.info
        path = out / f"{info.first_seq:012d}-{info.last_seq:012d}-{info.batch_id}{SUFFIX}"
        atomic_write(path, sb.data, 0o600)  # a stick pulled out mid-write leaves no half file
        written.append(str(path))
        entries += info.count
        first = info.first_seq if first is None else first
        last = info.last_seq
        cursor = info.last_seq
    with files_.lock():
        state = files_.load()
        state.exported = (state.exported + [{"dir": str(out), "batches": len(written), "entries": entries,
                                             "first_seq": first, "last_seq": last, "at_ms": now_ms()}])[-20:]
        files_.save(state)
    return ExportResult(str(out), tuple(written), entries, first, last)


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
    enrolled, not revoked, signature, bounds; then deduplicated). Bad files are listed, not fatal."""
    from .server.storage import ServerError

    result = ImportResult()
    root = Path(path)
    if not root.exists():
        raise CheckpointError(f"{root}: no such directory", code="import_missing")
    for file in sorted(root.rglob(f"*{SUFFIX}")):
        if not file.is_file():
            continue
        result.files += 1
        try:
            if file.stat().st_size > protocol.MAX_BATCH_BYTES:
                raise BatchError("file larger than a batch can be", code=protocol.E_TOO_LARGE)
            data = file.read_bytes()
            info = read_header(data)
            device = storage.device(info.device_id)
            if device is None:
                raise BatchError(f"device {info.device_id} is not enrolled", code=protocol.E_UNKNOWN_DEVICE)
            if device.revoked_ms is not None:
                raise BatchError(f"device {info.device_id} is revoked", code=protocol.E_DEVICE_REVOKED)
            parsed = open_batch(data, ed25519.Ed25519PublicKey.from_public_bytes(device.public_key))
            done = storage.ingest(parsed, "import", now_ms() if now is None else now)
        except (BatchError, ServerError) as exc:
            result.refused.append((str(file), exc.code, str(exc)[:300]))
            continue
        except OSError as exc:
            result.refused.append((str(file), "unreadable", exc.strerror or str(exc)))
            continue
        result.batches += 1
        result.entries += done.ack.count
        result.stored += done.stored
        result.duplicates += done.duplicates
    return result
