"""The SQLite backend of the server's storage (the default): one file, WAL, synchronous=FULL, one
connection used under a lock, each write one BEGIN IMMEDIATE transaction."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from scanner.errors import CheckpointError

from .. import protocol
from ..batch import ParsedBatch
from . import chain
from .storage import (
    SEEN_COLUMNS,
    SOURCES,
    BundleMeta,
    ChainEvent,
    Device,
    DeviceStatus,
    Ingested,
    PurgeResult,
    SeenEntry,
    ServerError,
    Stats,
    Storage,
    revoked_device,
    unknown_device,
)

log = logging.getLogger(__name__)

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
# Version 2 (issue 7): retention. ``entries`` stays the count ever stored (so ``missing`` stays right),
# ``purged`` counts those removed; gaps are looked for only above ``purged_seq``.
MIGRATE_2 = """
ALTER TABLE devices ADD COLUMN purged INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN purged_seq INTEGER NOT NULL DEFAULT 0;
"""

_INSERT_ENTRY = ("INSERT OR IGNORE INTO entries (device_id, seq, entry_id, checkpoint_id, direction, at_ms, "
                 "clock, source, source_id, decision, reason, format, card_id, issuer, kid, kind, ref_entry_id, "
                 "sealed, prev_hash, hash, batch_id, received_ms) VALUES "
                 "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")


class SQLiteStorage(Storage):
    def __init__(self, path: str | os.PathLike, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        if not self.path.parent.exists():
            raise CheckpointError(f"{self.path.parent}: no such directory", code="db_url")
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
            raise CheckpointError(f"{self.path}: {exc}", code="db_unusable") from None
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

    # ------------------------------------------------------------ meta

    def get_meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as conn:
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                         "SET value = excluded.value", (key, value))

    # ------------------------------------------------------------ enrollment

    def add_tokens(self, hashes: list[str], checkpoint_id: str, expires_ms: int, now_ms: int) -> None:
        with self._tx() as conn:
            conn.executemany("INSERT INTO tokens (token_hash, checkpoint_id, created_ms, expires_ms) "
                             "VALUES (?, ?, ?, ?)", [(h, checkpoint_id, now_ms, expires_ms) for h in hashes])

    def enroll(self, token_hash: str, device_id: str, public_key: bytes, now_ms: int) -> Device:
        with self._tx() as conn:
            row = conn.execute("SELECT checkpoint_id, expires_ms, device_id, public_key FROM tokens "
                               "WHERE token_hash = ?", (token_hash,)).fetchone()
            if row is None:
                raise ServerError("unknown enrollment token", code=protocol.E_TOKEN_INVALID, status=403)
            checkpoint_id, expires_ms, used_by, used_key = row
            if used_by is not None:
                if used_key != public_key:
                    raise ServerError("this token has already enrolled another device",
                                      code=protocol.E_TOKEN_USED, status=409)
            elif now_ms > expires_ms:
                raise ServerError("enrollment token expired", code=protocol.E_TOKEN_EXPIRED, status=403)
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

    def device(self, device_id: str) -> Device | None:
        rows = self._read("SELECT device_id, checkpoint_id, public_key, enrolled_ms, revoked_ms FROM devices "
                          "WHERE device_id = ?", (device_id,))
        return Device(*rows[0]) if rows else None

    def revoke_device(self, device_id: str, now_ms: int) -> bool:
        with self._tx() as conn:
            cur = conn.execute("UPDATE devices SET revoked_ms = ? WHERE device_id = ? AND revoked_ms IS NULL",
                               (now_ms, device_id))
            return cur.rowcount == 1

    def devices(self) -> list[DeviceStatus]:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN")
            try:
                rows = conn.execute(
                    "SELECT d.device_id, d.checkpoint_id, d.public_key, d.enrolled_ms, d.revoked_ms, d.held_seq, "
                    "d.entries, h.received_ms, h.doc, "
                    "(SELECT count(*) FROM chain_events c WHERE c.device_id = d.device_id AND c.kind != 'conflict'), "
                    "(SELECT count(*) FROM conflicts f WHERE f.device_id = d.device_id), d.purged "
                    "FROM devices d LEFT JOIN heartbeats h ON h.device_id = d.device_id").fetchall()
            finally:
                conn.execute("COMMIT")
        out = []
        for r in rows:
            dev = Device(*r[:5])
            out.append(DeviceStatus(dev, r[7], json.loads(r[8]) if r[8] else None, r[5], r[6] - r[11],
                                    max(0, r[5] - r[6]), r[9], r[10]))
        return out

    # ------------------------------------------------------------ batches

    def ingest(self, batch: ParsedBatch, source: str, now_ms: int) -> Ingested:
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}")
        info = batch.info
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
            conn.executemany(_INSERT_ENTRY, [
                (e.device_id, e.seq, e.entry_id, e.checkpoint_id, e.direction, e.at_ms, e.clock, e.source,
                 e.source_id, e.decision, e.reason, e.format, e.card_id, e.issuer, e.kid, e.kind,
                 e.ref_entry_id, e.sealed, e.prev_hash, e.hash, info.batch_id, now_ms)
                for e in batch.entries])
            stored = conn.total_changes - before
            duplicates = info.count - stored
            if duplicates:
                self._record_conflicts(conn, batch, now_ms)
            below = conn.execute("SELECT hash FROM entries WHERE device_id = ? AND seq = ?",
                                 (info.device_id, info.first_seq - 1)).fetchone()
            above = conn.execute("SELECT prev_hash FROM entries WHERE device_id = ? AND seq = ?",
                                 (info.device_id, info.last_seq + 1)).fetchone()
            for p in chain.check(batch.entries, below[0] if below else None, above[0] if above else None):
                conn.execute("INSERT OR IGNORE INTO chain_events (device_id, kind, seq, detail, at_ms) "
                             "VALUES (?, ?, ?, ?, ?)", (info.device_id, p.kind, p.seq, p.detail, now_ms))
                log.warning("device %s: chain %s at seq %d", info.device_id, p.kind, p.seq)
            conn.execute("UPDATE devices SET held_seq = max(held_seq, ?), entries = entries + ? "
                         "WHERE device_id = ?", (info.last_seq, stored, info.device_id))
            held = conn.execute("SELECT held_seq FROM devices WHERE device_id = ?", (info.device_id,)).fetchone()[0]
            ack = protocol.Ack(info.batch_id, info.first_seq, info.last_seq, info.count, stored, duplicates, held)
            conn.execute("INSERT INTO batches (device_id, batch_id, first_seq, last_seq, count, stored, duplicates, "
                         "held_seq, source, received_ms, size) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                         (info.device_id, info.batch_id, info.first_seq, info.last_seq, info.count, stored,
                          duplicates, held, source, now_ms, batch.size))
            self._bump(conn, "batch_deliveries")
            self._bump(conn, "duplicates_dropped", duplicates)
            self._bump(conn, f"source_{source}")
            return Ingested(ack, stored, duplicates)

    def _record_conflicts(self, conn: sqlite3.Connection, batch: ParsedBatch, now_ms: int) -> None:
        """Entries whose seq is already held with another hash: kept aside and reported."""
        info = batch.info
        stored = dict(conn.execute("SELECT seq, hash FROM entries WHERE device_id = ? AND seq BETWEEN ? AND ?",
                                   (info.device_id, info.first_seq, info.last_seq)))
        from scanner.entry import to_export_dict
        for e in batch.entries:
            if stored.get(e.seq, e.hash) != e.hash:
                conn.execute("INSERT OR IGNORE INTO conflicts (device_id, seq, hash, entry_id, batch_id, "
                             "received_ms, row, sealed) VALUES (?,?,?,?,?,?,?,?)",
                             (e.device_id, e.seq, e.hash, e.entry_id, info.batch_id, now_ms,
                              json.dumps(to_export_dict(e)), e.sealed))
                conn.execute("INSERT OR IGNORE INTO chain_events (device_id, kind, seq, detail, at_ms) "
                             "VALUES (?, 'conflict', ?, ?, ?)",
                             (e.device_id, e.seq, f"seq {e.seq} delivered again with different content", now_ms))
                log.warning("device %s: conflicting entry at seq %d", e.device_id, e.seq)

    def acks_after(self, device_id: str, after_seq: int, limit: int) -> list[tuple[str, int, int]]:
        return [tuple(r) for r in self._read(
            "SELECT batch_id, first_seq, last_seq FROM batches WHERE device_id = ? AND last_seq > ? "
            "ORDER BY last_seq, first_seq LIMIT ?", (device_id, after_seq, limit))]

    def held_seq(self, device_id: str) -> int:
        rows = self._read("SELECT held_seq FROM devices WHERE device_id = ?", (device_id,))
        return rows[0][0] if rows else 0

    def gaps(self, device_id: str, limit: int = 100) -> list[tuple[int, int]]:
        floor = self._read("SELECT purged_seq FROM devices WHERE device_id = ?", (device_id,))
        floor = floor[0][0] if floor else 0
        rows = self._read(
            "SELECT prev + 1, seq - 1 FROM (SELECT seq, coalesce(lag(seq) OVER (ORDER BY seq), ?) AS prev "
            "FROM entries WHERE device_id = ? AND seq > ?) WHERE seq > prev + 1 ORDER BY seq LIMIT ?",
            (floor, device_id, floor, limit))
        return [tuple(r) for r in rows]

    def chain_events(self, device_id: str | None = None, limit: int = 100) -> list[ChainEvent]:
        if device_id is None:
            rows = self._read("SELECT device_id, kind, seq, detail, at_ms FROM chain_events "
                              "ORDER BY at_ms, device_id, seq LIMIT ?", (limit,))
        else:
            rows = self._read("SELECT device_id, kind, seq, detail, at_ms FROM chain_events WHERE device_id = ? "
                              "ORDER BY seq LIMIT ?", (device_id, limit))
        return [ChainEvent(*r) for r in rows]

    def entry_hashes(self, device_id: str) -> dict[int, bytes]:
        return dict(self._read("SELECT seq, hash FROM entries WHERE device_id = ?", (device_id,)))

    # ------------------------------------------------------------ tracing and retention

    def visits(self, card_id: str, since_ms: int, until_ms: int, limit: int) -> list[SeenEntry]:
        return [SeenEntry(*r) for r in self._read(
            f"SELECT {SEEN_COLUMNS} FROM entries WHERE card_id = ? AND at_ms >= ? AND at_ms < ? "
            "ORDER BY at_ms, device_id, seq LIMIT ?", (card_id, since_ms, until_ms, limit))]

    def seen_at(self, checkpoint_id: str, from_ms: int, to_ms: int, limit: int) -> list[SeenEntry]:
        return [SeenEntry(*r) for r in self._read(
            f"SELECT {SEEN_COLUMNS} FROM entries WHERE checkpoint_id = ? AND at_ms BETWEEN ? AND ? "
            "ORDER BY at_ms, device_id, seq LIMIT ?", (checkpoint_id, from_ms, to_ms, limit))]

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

    # ------------------------------------------------------------ heartbeats

    def record_heartbeat(self, device_id: str, doc: dict, now_ms: int) -> bool:
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO heartbeats (device_id, received_ms, hb_seq, doc) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (device_id) DO UPDATE SET received_ms = excluded.received_ms, "
                "hb_seq = excluded.hb_seq, doc = excluded.doc WHERE excluded.hb_seq > heartbeats.hb_seq",
                (device_id, now_ms, doc["hb_seq"], json.dumps(doc, ensure_ascii=False)))
            return cur.rowcount == 1

    # ------------------------------------------------------------ bundles

    def publish_bundle(self, meta: BundleMeta, data: bytes, gz: bytes, deltas: dict[int, bytes]) -> None:
        with self._tx() as conn:
            top = conn.execute("SELECT max(version) FROM bundles").fetchone()[0]
            if top is not None and meta.version <= top:
                raise ServerError(f"bundle version {meta.version} is not above the published {top}",
                                  code="bundle_rollback", status=409)
            conn.execute("INSERT INTO bundles (version, digest, issued_at, expires_at, published_ms, size, data, gz) "
                         "VALUES (?,?,?,?,?,?,?,?)", (meta.version, meta.digest, meta.issued_at, meta.expires_at,
                                                     meta.published_ms, meta.size, data, gz))
            conn.executemany("INSERT INTO deltas (from_version, to_version, data) VALUES (?, ?, ?)",
                             [(v, meta.version, d) for v, d in deltas.items()])

    def latest_bundle(self) -> BundleMeta | None:
        rows = self._read("SELECT version, digest, issued_at, expires_at, published_ms, size FROM bundles "
                          "ORDER BY version DESC LIMIT 1")
        return BundleMeta(*rows[0]) if rows else None

    def bundle_versions(self) -> list[BundleMeta]:
        return [BundleMeta(*r) for r in self._read(
            "SELECT version, digest, issued_at, expires_at, published_ms, size FROM bundles ORDER BY version")]

    def bundle_data(self, version: int, gz: bool = False) -> bytes | None:
        rows = self._read(f"SELECT {'gz' if gz else 'data'} FROM bundles WHERE version = ?", (version,))
        return rows[0][0] if rows else None

    def delta(self, from_version: int, to_version: int) -> bytes | None:
        rows = self._read("SELECT data FROM deltas WHERE from_version = ? AND to_version = ?",
                          (from_version, to_version))
        return rows[0][0] if rows else None

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
