"""Counts from the entry log: a local day's totals and occupancy, the checkpoints seen, and stats.

Pure reads over a connection the caller holds (under its lock); never holder data.
docs/entry-log.md#anti-passback-direction-and-occupancy.
"""
from __future__ import annotations

import datetime as dt
import sqlite3
import time
from dataclasses import asdict, dataclass, field

from scanner.store import synced
from scanner.store.disk import Health
from scanner.store.entry import Anchor
from scanner.store.schema import read_anchor

# entries that admitted someone: accepted scans not cancelled by a "did_not_pass" follow-up
_ADMITTED = ("e.kind IS NULL AND e.decision = 'accept' AND NOT EXISTS (SELECT 1 FROM entries f "
             "WHERE f.ref_entry_id = e.entry_id AND f.kind = 'did_not_pass')")


@dataclass(frozen=True, slots=True)
class Totals:
    """One day at one checkpoint (or all, when ``checkpoint_id`` is None). ``rejected`` are the
    refused scans; ``duplicates`` (already admitted) are not among them: scans = accepted +
    rejected + duplicates, on every surface (kiosk, status page, `log stats`)."""

    checkpoint_id: str | None
    day: str
    scans: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    admitted_in: int = 0
    admitted_out: int = 0
    did_not_pass: int = 0
    occupancy: int = 0
    by_reason: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Stats:
    """What `checkpoint log stats` shows: counts, never holder data."""

    path: str
    schema_version: int
    db_bytes: int
    free_bytes: int | None
    entries: int
    unsynced: int
    synced: int
    first_seq: int | None
    last_seq: int | None
    oldest_at_ms: int | None
    newest_at_ms: int | None
    holder_sealed: int
    holder_not_stored: int
    holder_details: str
    holder_details_note: str
    anchor_seq: int
    purged: int
    synchronous: str
    health: Health
    today: tuple[Totals, ...]

    def to_dict(self) -> dict:
        return asdict(self)


def day_bounds(now: float | None = None, tz: dt.tzinfo | None = None) -> tuple[int, int, str]:
    """[start, end) of the local day containing ``now`` in epoch ms, and its date (``tz``, else the
    system's zone, its offset resolved again at each midnight for DST)."""
    now = time.time() if now is None else now
    local = dt.datetime.fromtimestamp(now, tz) if tz else dt.datetime.fromtimestamp(now).astimezone()
    day = local.date()
    start = dt.datetime.combine(day, dt.time(0), tzinfo=local.tzinfo)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=local.tzinfo)
    if tz is None:
        start = dt.datetime.combine(day, dt.time(0)).astimezone()
        end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0)).astimezone()
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000), day.isoformat()


def totals(conn: sqlite3.Connection, checkpoint_id: str | None, start_ms: int, end_ms: int, day: str) -> Totals:
    """The figures of [start_ms, end_ms) at ``checkpoint_id`` (None: every checkpoint), from one snapshot."""
    where = "e.at_ms >= ? AND e.at_ms < ?" + (" AND e.checkpoint_id = ?" if checkpoint_id is not None else "")
    params: tuple = (start_ms, end_ms) + ((checkpoint_id,) if checkpoint_id is not None else ())
    conn.execute("BEGIN")  # one snapshot for all the counts
    try:
        rows = conn.execute(f"SELECT kind, decision, reason, count(*) FROM entries e WHERE {where} "
                            "GROUP BY kind, decision, reason", params).fetchall()
        admitted = dict(conn.execute(f"SELECT e.direction, count(*) FROM entries e WHERE {where} AND {_ADMITTED} "
                                     "GROUP BY e.direction", params).fetchall())
    finally:
        conn.execute("COMMIT")
    scans = accepted = rejected = duplicates = did_not_pass = 0
    by_reason: dict[str, int] = {}
    for kind, decision, reason, n in rows:
        if kind == "did_not_pass":
            did_not_pass += n
            continue
        if kind is not None:
            continue
        scans += n
        by_reason[reason] = by_reason.get(reason, 0) + n
        if decision == "accept":
            accepted += n
        elif reason == "duplicate":  # already admitted: its own count, not a refusal
            duplicates += n
        else:
            rejected += n
    a_in, a_out = admitted.get("in", 0), admitted.get("out", 0)
    return Totals(checkpoint_id, day, scans, accepted, rejected, duplicates, a_in, a_out, did_not_pass,
                  max(0, a_in - a_out), dict(sorted(by_reason.items())))


def checkpoints(conn: sqlite3.Connection, since_ms: int | None = None) -> list[str]:
    """The checkpoints with entries (since ``since_ms``), sorted."""
    if since_ms is None:
        return [r[0] for r in conn.execute("SELECT DISTINCT checkpoint_id FROM entries ORDER BY 1")]
    return [r[0] for r in conn.execute("SELECT DISTINCT checkpoint_id FROM entries WHERE at_ms >= ? ORDER BY 1",
                                       (since_ms,))]


@dataclass(frozen=True, slots=True)
class Counts:
    """The whole file's counts, from one snapshot."""

    entries: int
    first_seq: int | None
    last_seq: int | None
    oldest_at_ms: int | None
    newest_at_ms: int | None
    sealed: int
    unsynced: int
    anchor: Anchor
    schema_version: int


def counts(conn: sqlite3.Connection) -> Counts:
    conn.execute("BEGIN")
    try:
        n, first, last, oldest, newest, sealed = conn.execute(
            "SELECT count(*), min(seq), max(seq), min(at_ms), max(at_ms), count(sealed) FROM entries").fetchone()
        unsynced = synced.unsynced(conn)[0]
        anchor = read_anchor(conn)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.execute("COMMIT")
    return Counts(n, first, last, oldest, newest, sealed, unsynced, anchor, version)
