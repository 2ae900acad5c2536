"""What the server holds, kept beside the entries: one row per acknowledged run (its batch id and
first..last seq) and the runs merged into spans. An entry no span covers is pending.

Marking a batch of 5,000 entries writes two small rows, not 5,000 updated entries, so the sync
side holds the log's write lock for microseconds and adds a page or two to the WAL that the next
scan's commit syncs. The functions run inside the caller's transaction on the log's connection.
docs/entry-log.md#sync-side.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from scanner.store.errors import EntryLogError

# An entry's batch: the run with the greatest first_seq <= seq, if it reaches seq (runs never overlap;
# first_seq is the rowid, so this is one b-tree probe).
BATCH_OF_SEQ = ("(SELECT CASE WHEN r.last_seq >= entries.seq THEN r.batch_id END FROM synced_runs r "
                "WHERE r.first_seq <= entries.seq ORDER BY r.first_seq DESC LIMIT 1)")


# the first (ASC) or last (DESC) entry with seq in [?, ?]: one probe of the entries' b-tree
_EDGE_SQL = "SELECT seq, at_ms FROM entries WHERE seq BETWEEN ? AND ? ORDER BY seq {order} LIMIT 1"


def gaps(conn: sqlite3.Connection, after_seq: int) -> Iterator[tuple[int, int | None]]:
    """The runs of seq after ``after_seq`` that no span covers, in order: (lo, hi), the last one
    (lo, None) and open-ended. Spans are few (one, plus one per gap left by a refused batch)."""
    lo = after_seq + 1
    for first, last in conn.execute("SELECT first_seq, last_seq FROM synced_spans WHERE last_seq >= ? "
                                    "ORDER BY first_seq", (lo,)).fetchall():
        if first > lo:
            yield lo, first - 1
        lo = max(lo, last + 1)
    yield lo, None


def unsynced(conn: sqlite3.Connection) -> tuple[int, int | None]:
    """(entries not yet synced, at_ms of the oldest of them). Each gap is counted from its first and
    last entry, two b-tree probes: the chain's seqs have no holes (a purge removes a prefix), so a
    backlog of 100,000 costs what one of 10 does, where counting its rows read every one of them
    (tens of ms of SQLite holding a read snapshot, on the scan process's CPU). A row deleted by hand
    from the middle of a gap is still counted (the chain's check reports it)."""
    n, oldest = 0, None
    for lo, hi in gaps(conn, 0):
        top = hi if hi is not None else 1 << 62
        first = conn.execute(_EDGE_SQL.format(order="ASC"), (lo, top)).fetchone()
        if first is None:
            continue
        n += conn.execute(_EDGE_SQL.format(order="DESC"), (lo, top)).fetchone()[0] - first[0] + 1
        if oldest is None:
            oldest = first[1]
    return n, oldest


def first_unsynced(conn: sqlite3.Connection) -> int | None:
    """The seq of the oldest entry not yet synced (None: none)."""
    for lo, hi in gaps(conn, 0):
        row = conn.execute("SELECT seq FROM entries WHERE seq >= ? ORDER BY seq LIMIT 1", (lo,)).fetchone()
        if row is not None and (hi is None or row[0] <= hi):
            return row[0]
    return None


def check_present(conn: sqlite3.Connection, first_seq: int, last_seq: int) -> None:
    """Raise EntryLogError "sync_conflict" unless every entry first_seq..last_seq is in the file. It
    counts the run's rows (a batch's 5,000 take a few ms): run it before the write transaction of
    `mark`, so that the write lock is not held meanwhile."""
    size = last_seq - first_seq + 1
    n = conn.execute("SELECT count(*) FROM entries WHERE seq BETWEEN ? AND ?", (first_seq, last_seq)).fetchone()[0]
    if n != size:
        raise EntryLogError(f"seq {first_seq}..{last_seq}: {size - n} entries missing", code="sync_conflict")


def mark(conn: sqlite3.Connection, batch_id: str, first_seq: int, last_seq: int) -> int:
    """Record that the server holds the entries first_seq..last_seq in ``batch_id``; returns how many
    were not marked before. Idempotent; raises EntryLogError "sync_conflict" (writing nothing) if an
    entry of the run is missing or already in another batch. Inside the write transaction, after
    `check_present`: here the run's two ends are probed again (rows between them are never deleted
    but by a purge of a synced prefix, and this run is not synced), so the lock is held for a few
    b-tree probes whatever the run's size."""
    ends = conn.execute("SELECT count(*) FROM entries WHERE seq IN (?, ?)", (first_seq, last_seq)).fetchone()[0]
    if ends != (1 if first_seq == last_seq else 2):
        raise EntryLogError(f"seq {first_seq}..{last_seq}: entries missing", code="sync_conflict")
    size = last_seq - first_seq + 1
    overlap = _overlap(conn, first_seq, last_seq)
    if any(b != batch_id for _, _, b in overlap):
        raise EntryLogError(f"seq {first_seq}..{last_seq}: some entries are already in another batch",
                            code="sync_conflict")
    covered = _covered(overlap, first_seq, last_seq)
    if covered == size:
        return 0
    lo, hi = first_seq, last_seq
    for f, l_, _ in overlap:  # the same batch marked in part before: one run for all of it
        lo, hi = min(lo, f), max(hi, l_)
        conn.execute("DELETE FROM synced_runs WHERE first_seq = ?", (f,))
    conn.execute("INSERT INTO synced_runs (first_seq, last_seq, batch_id) VALUES (?, ?, ?)", (lo, hi, batch_id))
    _merge_span(conn, lo, hi)
    return size - covered


def marked_by(conn: sqlite3.Connection, batch_id: str, first_seq: int, last_seq: int) -> bool:
    """True if every entry first_seq..last_seq is already marked as in ``batch_id`` (a read: marking
    it again, as a contact's catch-up with the server's batch list does for the batches it has just
    sent, needs no write transaction)."""
    overlap = _overlap(conn, first_seq, last_seq)
    return (all(b == batch_id for _, _, b in overlap)
            and _covered(overlap, first_seq, last_seq) == last_seq - first_seq + 1)


def _overlap(conn: sqlite3.Connection, first_seq: int, last_seq: int) -> list[tuple[int, int, str]]:
    """The acknowledged runs that share an entry with first_seq..last_seq (runs never overlap: the
    one starting at or before first_seq, and those starting inside)."""
    return conn.execute(
        "SELECT first_seq, last_seq, batch_id FROM synced_runs WHERE first_seq <= ? AND first_seq >= "
        "coalesce((SELECT max(first_seq) FROM synced_runs WHERE first_seq <= ?), ?) AND last_seq >= ?",
        (last_seq, first_seq, first_seq, first_seq)).fetchall()


def _covered(overlap: list[tuple[int, int, str]], first_seq: int, last_seq: int) -> int:
    """How many of first_seq..last_seq the runs ``overlap`` (from _overlap) cover."""
    return sum(min(hi, last_seq) - max(lo, first_seq) + 1 for lo, hi, _ in overlap)


def _merge_span(conn: sqlite3.Connection, lo: int, hi: int) -> None:
    for f, l_ in conn.execute("SELECT first_seq, last_seq FROM synced_spans WHERE first_seq <= ? AND last_seq >= ?",
                              (hi + 1, lo - 1)).fetchall():
        lo, hi = min(lo, f), max(hi, l_)
        conn.execute("DELETE FROM synced_spans WHERE first_seq = ?", (f,))
    conn.execute("INSERT INTO synced_spans (first_seq, last_seq) VALUES (?, ?)", (lo, hi))


def trim(conn: sqlite3.Connection, anchor_seq: int) -> None:
    """Forget runs and spans at or below the chain's anchor (their entries were purged)."""
    for table in ("synced_runs", "synced_spans"):
        conn.execute(f"DELETE FROM {table} WHERE last_seq <= ?", (anchor_seq,))
        conn.execute(f"UPDATE {table} SET first_seq = ? WHERE first_seq <= ?", (anchor_seq + 1, anchor_seq))


def unsynced_in_file(conn: sqlite3.Connection) -> tuple[int, int | None] | None:
    """`unsynced` on a connection of its own (a read-only look, such as the doctor's); None for a
    file older than the acknowledged runs (EntryLog upgrades it when it next opens it)."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'synced_spans'").fetchone() is None:
        return None
    return unsynced(conn)
