"""Valid chained log entries, made as EntryLog makes them but fast: for backlogs too large to record
one by one, and for the central side's own tests."""
from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

from scanner.base.timeutil import now_ms
from scanner.store import sealing
from scanner.store.entry import Entry, chain_hash, hash_fields
from scanner.store.entrylog import EntryLog
from scanner.store.schema import INSERT_SQL, entry_row
from support.waiting import WAIT


def bulk_fill(log: EntryLog, n: int, *, sealed: bytes | None = None, start_ms: int | None = None) -> None:
    """Append ``n`` valid, chained entries (as EntryLog would write them) in one transaction, for
    backlogs too large to record one by one in a test. Cards vary; holder details as given."""
    last = log.tail(1)
    seq, prev = (last[0].seq, last[0].hash) if last else (0, bytes(32))
    at = start_ms or now_ms() - n * 1000
    rows = []
    for i in range(n):
        e = Entry(seq=seq + 1, entry_id=str(uuid.uuid4()), device_id=log.device_id,
                  checkpoint_id=log.checkpoint_id, direction="in", at_ms=at + i * 1000, clock="synced",
                  source="camera", source_id="cam0", decision="accept", reason="ok", format="CK1",
                  card_id=os.urandom(16).hex(), issuer="VN-HUE", kid="AAECAwQFBgc=", prev_hash=prev,
                  sealed=sealed)
        e = replace(e, hash=chain_hash(prev, hash_fields(e)))
        rows.append(entry_row(e))
        seq, prev = e.seq, e.hash
    conn = sqlite3.connect(str(log.path), isolation_level=None, timeout=WAIT)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(INSERT_SQL, rows)
        conn.execute("COMMIT")
    finally:
        conn.close()


def chain_entries(device_id: str, checkpoint_id: str, times_ms, cards, *, first_seq: int = 1,
                  prev_hash: bytes = bytes(32), holders=None, seal_to=None, decision: str = "accept") -> list:
    """Valid chained entries of one device (as EntryLog would make them) at the given times with
    the given card ids; ``holders`` (Holder or None per entry) sealed to ``seal_to`` (an X25519
    public key) when given."""
    out, prev, seq = [], prev_hash, first_seq
    for i, (at, card) in enumerate(zip(times_ms, cards, strict=True)):
        entry_id = str(uuid.uuid4())
        holder = holders[i] if holders is not None else None
        sealed = sealing.seal(holder, seal_to, entry_id) if holder is not None and seal_to is not None else None
        e = Entry(seq=seq, entry_id=entry_id, device_id=device_id, checkpoint_id=checkpoint_id, direction="in",
                  at_ms=at, clock="synced", source="camera", source_id="cam0", decision=decision,
                  reason="ok" if decision == "accept" else "expired", format="CK1", card_id=card, issuer="VN-HUE",
                  kid="AAECAwQFBgc=", prev_hash=prev, sealed=sealed)
        e = replace(e, hash=chain_hash(prev, hash_fields(e)))
        out.append(e)
        prev, seq = e.hash, seq + 1
    return out


T = TypeVar("T")


def vm_steps(log: EntryLog, fn: Callable[[], T], *, in_transaction: bool = False) -> tuple[T, int]:
    """``fn()`` and how many SQLite virtual-machine steps it took on the log's connection (counted
    in hundreds by a progress handler): the work of its queries, not a time. ``in_transaction``:
    only the steps taken inside an explicit transaction (a write's, while it holds the lock)."""
    steps = [0]
    conn = log._conn

    def count() -> int:
        if not in_transaction or conn.in_transaction:
            steps[0] += 1
        return 0
    conn.set_progress_handler(count, 100)
    try:
        return fn(), steps[0]
    finally:
        conn.set_progress_handler(None, 0)
