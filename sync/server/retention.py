"""Retention on the central server: entries (and with them their sealed holder details) older than
the period are removed (PostgreSQL drops whole day partitions), the holder details kept with
conflicting deliveries too, and the deletion goes into the audit trail (docs/console.md#retention).
Run daily by `checkpoint server purge` (systemd/checkpoint-retention.timer)."""
from __future__ import annotations

from dataclasses import dataclass

from scanner.base.timeutil import DAY_MS
from sync.server.console import audit
from sync.server.console.store import ConsoleStore
from sync.server.model import PurgeResult, Storage

DEFAULT_DAYS = 30  # as the seeds' practice: entries are kept 30 days


@dataclass(frozen=True, slots=True)
class Retention:
    result: PurgeResult
    conflict_blobs: int  # sealed holder details removed from kept conflicts
    record: audit.Record

    def to_dict(self) -> dict:
        return {**self.result.to_dict(), "conflict_blobs": self.conflict_blobs, "audit_seq": self.record.seq}


def apply(storage: Storage, days: int, *, now_ms: int, actor: str = "system:retention") -> Retention:
    """Remove what is older than ``days`` days and record it in the audit trail."""
    cutoff = now_ms - days * DAY_MS
    store = ConsoleStore(storage)
    result = storage.purge(cutoff)
    blobs = store.clear_conflict_blobs(cutoff)
    detail = (f"days={days} entries={result.entries} partitions={len(result.partitions)} "
              f"skipped={len(result.skipped)} conflict_blobs={blobs}"
              + (f" dropped={','.join(sorted(result.partitions))}" if result.partitions else ""))
    record = store.append(audit.Event(actor, audit.RETENTION, target=f"before {cutoff}", detail=detail), now_ms)
    return Retention(result, blobs, record)
