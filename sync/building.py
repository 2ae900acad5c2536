"""Which pending entries make the next batch, and building it. Light on purpose: the batch builder
process (sync/builder.py) imports this and not the sync loop, its HTTP client, the trust code or
cryptography (it assembles batches; the daemon signs them)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from scanner.store.entry import Entry
from scanner.store.entrylog import EntryLog
from sync.wire import batch as batchmod

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ed25519


def next_run(entries: Sequence[Entry], quarantined: Sequence[tuple[int, int]]) -> tuple[list[Entry], int | None]:
    """The contiguous run at the start of ``entries`` (pending, seq order) that touches no
    quarantined range; or ([], skip_to) when the first entry lies in a quarantined range."""
    if not entries:
        return [], None
    first = entries[0].seq
    for lo, hi in quarantined:
        if lo <= first <= hi:
            return [], hi
    stop = min((lo for lo, _ in quarantined if lo > first), default=None)
    run = [entries[0]]
    for e in entries[1:]:
        if e.seq != run[-1].seq + 1 or (stop is not None and e.seq >= stop):
            break
        run.append(e)
    return run, None


def build_next(log_: EntryLog, key: ed25519.Ed25519PrivateKey, device_id: str, after_seq: int, limit: int,
               quarantined: Sequence[tuple[int, int]], created_ms: int,
               step: Callable[[], None] | None = None, version: int = batchmod.FORMAT_VERSION
               ) -> batchmod.SignedBatch | None:
    """The next batch of pending entries after ``after_seq`` (at most ``limit``) in batch format
    ``version``, signed with ``key``, or None."""
    unsigned = assemble_next(log_, device_id, after_seq, limit, quarantined, created_ms, step, version)
    return None if unsigned is None else batchmod.sign(unsigned, key)


def assemble_next(log_: EntryLog, device_id: str, after_seq: int, limit: int,
                  quarantined: Sequence[tuple[int, int]], created_ms: int,
                  step: Callable[[], None] | None = None, version: int = batchmod.FORMAT_VERSION
                  ) -> batchmod.UnsignedBatch | None:
    """build_next's batch before its signature, or None."""
    cursor = after_seq
    while True:
        entries = log_.pending(cursor, limit)
        run, skip_to = next_run(entries, quarantined)
        if skip_to is not None:
            cursor = skip_to
            continue
        if not run:
            return None
        return batchmod.assemble(run, device_id=device_id, created_ms=created_ms, step=step, version=version)
