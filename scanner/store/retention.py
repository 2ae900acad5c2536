"""Retention: delete synced entries older than the limit, a prefix of the chain at a time, keeping
the last deleted entry as the chain's anchor so that what stays still verifies.

Unsynced entries are never deleted. docs/entry-log.md#retention.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from scanner.store import synced
from scanner.store.schema import read_anchor, rollback


@dataclass(frozen=True, slots=True)
class PurgeResult:
    purged: int
    anchor_seq: int
    cutoff_ms: int
    kept_unsynced: int
    dry_run: bool = False


def purge(conn: sqlite3.Connection, cutoff_ms: int, now_ms: int, *, dry_run: bool = False) -> PurgeResult:
    """Delete the synced entries before the first one that is unsynced or at/after ``cutoff_ms``
    (or count them, ``dry_run``), move the anchor to the last one deleted, and give the space back."""
    conn.execute("BEGIN" if dry_run else "BEGIN IMMEDIATE")
    try:
        first_unsynced = synced.first_unsynced(conn)
        if first_unsynced is None:
            first_unsynced = (conn.execute("SELECT max(seq) FROM entries").fetchone()[0] or 0) + 1
        recent = conn.execute("SELECT seq FROM entries WHERE at_ms >= ? AND seq < ? ORDER BY seq LIMIT 1",
                              (cutoff_ms, first_unsynced)).fetchone()
        stop_seq = first_unsynced if recent is None else recent[0]
        victim = conn.execute("SELECT seq, hash FROM entries WHERE seq < ? ORDER BY seq DESC LIMIT 1",
                              (stop_seq,)).fetchone()
        unsynced = synced.unsynced(conn)[0]
        anchor = read_anchor(conn)
        if victim is None:
            conn.execute("ROLLBACK")
            return PurgeResult(0, anchor.seq, cutoff_ms, unsynced, dry_run)
        n = conn.execute("SELECT count(*) FROM entries WHERE seq < ?", (stop_seq,)).fetchone()[0]
        if dry_run:
            conn.execute("ROLLBACK")
            return PurgeResult(n, victim[0], cutoff_ms, unsynced, True)
        conn.execute("DELETE FROM entries WHERE seq < ?", (stop_seq,))
        synced.trim(conn, victim[0])
        conn.execute("INSERT INTO chain_anchor (id, seq, hash, purged, at_ms) VALUES (1, ?, ?, ?, ?) "
                     "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, "
                     "purged = excluded.purged, at_ms = excluded.at_ms",
                     (victim[0], victim[1], anchor.purged + n, now_ms))
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise
    # give the space back and drop the deleted rows from the WAL as well
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    conn.execute("PRAGMA incremental_vacuum").fetchall()
    return PurgeResult(n, victim[0], cutoff_ms, unsynced)
