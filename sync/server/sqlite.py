"""The SQLite backend of the server's storage (the default): one file, WAL, synchronous=FULL, one
connection used under a lock, each write one BEGIN IMMEDIATE transaction."""
from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from scanner.base.errors import CheckpointError, sqlite_words
from scanner.base.i18n import text
from sync.server import chain
from sync.server.model import (
    SOURCES,
    Device,
    Ingested,
    PurgeResult,
    Stats,
    revoked_device,
    unknown_device,
)
from sync.server.sqlstorage import ENTRY_COLUMNS, SQLStorage, entry_row
from sync.wire import protocol
from sync.wire.batch import ParsedBatch

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY, checkpoint_id TEXT NOT NULL, created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL, device_id TEXT, public_key BLOB, used_ms INTEGER) STRICT;
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY, checkpoint_id TEXT NOT NULL, public_key BLOB NOT NULL UNIQUE,
    enrolled_ms INTEGER NOT NULL, revoked_ms INTEGER, held_seq INTEGER NOT NULL DEFAULT 0,
    entries INTEGER NOT NULL DEFAULT 0) STRICT;
CREATE TABLE IF NOT EXISTS entries (
    device_id TEXT NOT NULL, seq INTEGER NOT NULL, entry_id TEXT NOT NULL, checkpoint_id TEXT NOT NULL,
    direction TEXT NOT NULL, at_ms INTEGER NOT NULL, clock TEXT NOT NULL, source TEXT NOT NULL,
    source_id TEXT NOT NULL, decision TEXT NOT NULL, reason TEXT NOT NULL, format TEXT, card_id TEXT,
    issuer TEXT, kid TEXT, kind TEXT, ref_entry_id TEXT, sealed BLOB, prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL, batch_id TEXT NOT NULL, received_ms INTEGER NOT NULL,
    PRIMARY KEY (device_id, seq)) STRICT, WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_card ON entries (card_id, at_ms) WHERE card_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS entries_checkpoint ON entries (checkpoint_id, at_ms);
CREATE TABLE IF NOT EXISTS batches (
    device_id TEXT NOT NULL, batch_id TEXT NOT NULL, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    count INTEGER NOT NULL, stored INTEGER NOT NULL, duplicates INTEGER NOT NULL, held_seq INTEGER NOT NULL,
    source TEXT NOT NULL, received_ms INTEGER NOT NULL, size INTEGER NOT NULL,
    PRIMARY KEY (device_id, batch_id)) STRICT;
CREATE INDEX IF NOT EXISTS batches_last ON batches (device_id, last_seq);
CREATE TABLE IF NOT EXISTS conflicts (
    device_id TEXT NOT NULL, seq INTEGER NOT NULL, hash BLOB NOT NULL, entry_id TEXT NOT NULL,
    batch_id TEXT NOT NULL, received_ms INTEGER NOT NULL, row TEXT NOT NULL, sealed BLOB,
    PRIMARY KEY (device_id, seq, hash)) STRICT;
CREATE TABLE IF NOT EXISTS chain_events (
    device_id TEXT NOT NULL, kind TEXT NOT NULL, seq INTEGER NOT NULL, detail TEXT NOT NULL,
    at_ms INTEGER NOT NULL, PRIMARY KEY (device_id, kind, seq)) STRICT;
CREATE TABLE IF NOT EXISTS heartbeats (
    device_id TEXT PRIMARY KEY, received_ms INTEGER NOT NULL, hb_seq INTEGER NOT NULL, doc TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS bundles (
    version INTEGER PRIMARY KEY, digest TEXT NOT NULL, issued_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
    published_ms INTEGER NOT NULL, size INTEGER NOT NULL, data BLOB NOT NULL, gz BLOB NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS deltas (
    from_version INTEGER NOT NULL, to_version INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (from_version, to_version)) STRICT;
"""
# Version 2: retention. ``entries`` stays the count ever stored (so ``missing`` stays right),
# ``purged`` counts those removed; gaps are looked for only above ``purged_seq``.
MIGRATE_2 = """
ALTER TABLE devices ADD COLUMN purged INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN purged_seq INTEGER NOT NULL DEFAULT 0;
"""

_INSERT_ENTRY = (f"INSERT OR IGNORE INTO entries ({', '.join(ENTRY_COLUMNS)}) "
                 f"VALUES ({', '.join('?' * len(ENTRY_COLUMNS))})")


class SQLiteStorage(SQLStorage):
    def __init__(self, path: str | os.PathLike, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        if not self.path.parent.exists():
            raise CheckpointError(f"{self.path.parent}: no such directory", code="db_url",
                                  text=text("os_error.at", path=str(self.path.parent),
                                            what=text("os_error.no_such_file")))
        new = not self.path.exists()
        if new:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.close(fd)
        self._lock = threading.RLock()
        try:
            conn = sqlite3.connect(str(self.path), timeout=busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise CheckpointError(f"{self.path} was written by a newer server (schema {version})",
                                      code="db_schema")
            if version < SCHEMA_VERSION:
                conn.execute("BEGIN IMMEDIATE")
                version = conn.execute("PRAGMA user_version").fetchone()[0]  # another process may have done it
                steps = [(1, SCHEMA), (2, MIGRATE_2)]
                for target, script in steps:
                    if version < target:
                        for stmt in script.split(";"):
                            if stmt.strip():
                                conn.execute(stmt)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise CheckpointError(f"{self.path}: {exc}", code="db_unusable",
                                  text=sqlite_words(exc, self.path)) from None
        self._conn = conn

    # ------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @staticmethod
    def _bump(conn: sqlite3.Connection, name: str, n: int = 1) -> None:
        if n:
            conn.execute("INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) "
                         "DO UPDATE SET value = value + excluded.value", (name, n))

    # ------------------------------------------------------------ enrollment

    def enroll(self, token_hash: str, device_id: str, public_key: bytes, now_ms: int) -> Device:
        with self._tx() as conn:
            row = conn.execute("SELECT checkpoint_id, expires_ms, device_id, public_key FROM tokens "
                               "WHERE token_hash = ?", (token_hash,)).fetchone()
            checkpoint_id, used_by = self._check_token(row, public_key, now_ms)
            existing = conn.execute("SELECT device_id, checkpoint_id, public_key, enrolled_ms, revoked_ms "
                                    "FROM devices WHERE device_id = ?", (device_id,)).fetchone()
            if existing is not None and existing[4] is not None:
                raise revoked_device(device_id)
            if existing is None:
                conn.execute("INSERT INTO devices (device_id, checkpoint_id, public_key, enrolled_ms) "
                             "VALUES (?, ?, ?, ?)", (device_id, checkpoint_id, public_key, now_ms))
                existing = (device_id, checkpoint_id, public_key, now_ms, None)
            elif existing[1] != checkpoint_id:  # an enrolled device given a token of another checkpoint
                conn.execute("UPDATE devices SET checkpoint_id = ? WHERE device_id = ?", (checkpoint_id, device_id))
                existing = (device_id, checkpoint_id, public_key, existing[3], None)
            if used_by is None:
                conn.execute("UPDATE tokens SET device_id = ?, public_key = ?, used_ms = ? WHERE token_hash = ?",
                             (device_id, public_key, now_ms, token_hash))
            return Device(*existing)

    # ------------------------------------------------------------ batches

    def ingest(self, batch: ParsedBatch, source: str, now_ms: int) -> Ingested:
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}")
        info = batch.info
        altered = chain.altered(batch.rows)
        with self._tx() as conn:
            dev = conn.execute("SELECT revoked_ms FROM devices WHERE device_id = ?", (info.device_id,)).fetchone()
            if dev is None:
                raise unknown_device(info.device_id)
            if dev[0] is not None:
                raise revoked_device(info.device_id)
            seen = conn.execute("SELECT batch_id, first_seq, last_seq, count, stored, duplicates, held_seq "
                                "FROM batches WHERE device_id = ? AND batch_id = ?",
                                (info.device_id, info.batch_id)).fetchone()
            if seen is not None:  # the same batch again: nothing stored, the first answer
                self._bump(conn, "batch_deliveries")
                self._bump(conn, "batches_replayed")
                self._bump(conn, "duplicates_dropped", info.count)
                self._bump(conn, f"source_{source}")
                return Ingested(protocol.Ack(*seen), 0, info.count, True)
            before = conn.total_changes
            conn.executemany(_INSERT_ENTRY, [entry_row(r, info.batch_id, now_ms) for r in batch.rows])
            stored = conn.total_changes - before
            duplicates = info.count - stored
            if duplicates:  # entries already held: those with other content are conflicts
                self._record_conflicts(conn, batch, dict(conn.execute(
                    "SELECT seq, hash FROM entries WHERE device_id = ? AND seq BETWEEN ? AND ?",
                    (info.device_id, info.first_seq, info.last_seq))), now_ms)
            below = conn.execute("SELECT hash FROM entries WHERE device_id = ? AND seq = ?",
                                 (info.device_id, info.first_seq - 1)).fetchone()
            above = conn.execute("SELECT prev_hash FROM entries WHERE device_id = ? AND seq = ?",
                                 (info.device_id, info.last_seq + 1)).fetchone()
            self._record_chain(conn, batch, below[0] if below else None, above[0] if above else None, now_ms,
                               altered)
            conn.execute("UPDATE devices SET held_seq = max(held_seq, ?), entries = entries + ? "
                         "WHERE device_id = ?", (info.last_seq, stored, info.device_id))
            held = conn.execute("SELECT held_seq FROM devices WHERE device_id = ?", (info.device_id,)).fetchone()[0]
            ack = protocol.Ack(info.batch_id, info.first_seq, info.last_seq, info.count, stored, duplicates, held)
            self._record_batch(conn, batch, stored, duplicates, held, source, now_ms)
            self._bump(conn, "batch_deliveries")
            self._bump(conn, "duplicates_dropped", duplicates)
            self._bump(conn, f"source_{source}")
            return Ingested(ack, stored, duplicates)

    def gaps(self, device_id: str, limit: int = 100) -> list[tuple[int, int]]:
        purged = self._read("SELECT purged_seq FROM devices WHERE device_id = ?", (device_id,))
        floor = purged[0][0] if purged else 0
        rows = self._read(
            "SELECT prev + 1, seq - 1 FROM (SELECT seq, coalesce(lag(seq) OVER (ORDER BY seq), ?) AS prev "
            "FROM entries WHERE device_id = ? AND seq > ?) WHERE seq > prev + 1 ORDER BY seq LIMIT ?",
            (floor, device_id, floor, limit))
        return [tuple(r) for r in rows]

    def purge(self, cutoff_ms: int) -> PurgeResult:
        with self._tx() as conn:
            per_device = conn.execute(
                "SELECT device_id, count(*), max(seq) FROM entries WHERE at_ms < ? AND received_ms < ? "
                "GROUP BY device_id", (cutoff_ms, cutoff_ms)).fetchall()
            if not per_device:
                return PurgeResult(0)
            conn.execute("DELETE FROM entries WHERE at_ms < ? AND received_ms < ?", (cutoff_ms, cutoff_ms))
            conn.executemany("UPDATE devices SET purged = purged + ?, purged_seq = max(purged_seq, ?) "
                             "WHERE device_id = ?", [(n, top, dev) for dev, n, top in per_device])
            return PurgeResult(sum(n for _, n, _ in per_device))

    # ------------------------------------------------------------ stats

    def stats(self) -> Stats:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN")
            try:
                devices, revoked, entries, purged = conn.execute(
                    "SELECT count(*), count(revoked_ms), coalesce(sum(entries), 0), coalesce(sum(purged), 0) "
                    "FROM devices").fetchone()
                batches = conn.execute("SELECT count(*) FROM batches").fetchone()[0]
                counters = dict(conn.execute("SELECT name, value FROM counters"))
                conflicts = conn.execute("SELECT count(*) FROM conflicts").fetchone()[0]
                problems = conn.execute("SELECT count(*) FROM chain_events WHERE kind != 'conflict'").fetchone()[0]
                unused = conn.execute("SELECT count(*) FROM tokens WHERE device_id IS NULL").fetchone()[0]
                version = conn.execute("SELECT max(version) FROM bundles").fetchone()[0]
            finally:
                conn.execute("COMMIT")
        by_source = {s: counters.get(f"source_{s}", 0) for s in SOURCES}
        return Stats(devices, revoked, entries - purged, batches, counters.get("batch_deliveries", 0),
                     counters.get("batches_replayed", 0), counters.get("duplicates_dropped", 0), conflicts,
                     problems, unused, version, by_source, purged)
