"""Offline sync for sites with no link, the device's half: it writes its pending entries as signed
batch files to a directory (a USB stick); the server imports them (sync/server/imports.py) with the
same checks and deduplication as a push. The device learns the acknowledgement at its next contact
(the server's batch list).

Files: DIR/checkpoint-batches/<device_id>/<first_seq>-<last_seq>-<batch_id>.ckb, each exactly the
bytes a push would send (docs/sync-protocol.md#offline-export).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.base.fsutil import Dir
from scanner.base.timeutil import now_ms
from scanner.store.entrylog import EntryLog
from sync.agent import build_next
from sync.state import DeviceConfig, StateFile
from sync.wire import identity, protocol

EXPORT_SUBDIR = "checkpoint-batches"
DIR_MODE = 0o700  # the batch files are 0600 anyway


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What an export wrote: the directory, the batch files, and the entries and seq range they hold."""

    dir: str
    files: tuple[str, ...]
    entries: int
    first_seq: int | None
    last_seq: int | None

    def to_dict(self) -> dict:
        """The report of `checkpoint sync export --json` (the number of files, not their names)."""
        return {"dir": self.dir, "files": len(self.files), "entries": self.entries, "first_seq": self.first_seq,
                "last_seq": self.last_seq}


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
            name = info.file_name
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
