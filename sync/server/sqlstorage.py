"""What the SQLite and PostgreSQL backends do alike: the storage methods whose SQL is the same on
both (written with ``?`` placeholders; the PostgreSQL backend turns them into ``%s``), and the
rows an ingest writes. Dialect-specific work (schema, ingest's locking and lookups, gaps,
retention, stats) stays in sync/server/sqlite.py and sync/server/postgres.py.
"""
from __future__ import annotations

import abc
import contextlib
import json
import logging
from collections.abc import Mapping
from typing import Any

from scanner.store.entry import Entry, to_export_dict
from sync.server import chain
from sync.server.model import (
    SEEN_COLUMNS,
    BundleMeta,
    ChainEvent,
    Device,
    DeviceStatus,
    SeenEntry,
    ServerError,
    Storage,
)
from sync.wire import protocol
from sync.wire.batch import RECEIVED_FIELDS, ParsedBatch

log = logging.getLogger(__name__)

DEVICES_SQL = (
    "SELECT d.device_id, d.checkpoint_id, d.public_key, d.enrolled_ms, d.revoked_ms, d.held_seq, "
    "d.entries, h.received_ms, h.doc, "
    "(SELECT count(*) FROM chain_events c WHERE c.device_id = d.device_id AND c.kind != 'conflict'), "
    "(SELECT count(*) FROM conflicts f WHERE f.device_id = d.device_id), d.purged "
    "FROM devices d LEFT JOIN heartbeats h ON h.device_id = d.device_id ORDER BY d.device_id")
BUNDLE_META_COLUMNS = "version, digest, issued_at, expires_at, published_ms, size"


# The server's ``entries`` columns (both backends): an entry's stored fields, then the batch that
# brought it and when.
ENTRY_COLUMNS = RECEIVED_FIELDS + ("batch_id", "received_ms")
_SEQ, _HASH = RECEIVED_FIELDS.index("seq"), RECEIVED_FIELDS.index("hash")


def entry_row(row: tuple, batch_id: str, received_ms: int) -> tuple:
    """The ENTRY_COLUMNS values of a received row (sync.wire.batch.ParsedBatch.rows)."""
    return (*row, batch_id, received_ms)


class SQLStorage(Storage):
    """The shared methods. A backend gives ``_read`` (rows of one query) and ``_tx`` (one write
    transaction, yielding an object with ``execute``/``executemany`` that returns a cursor), both
    taking ``?`` placeholders."""

    @abc.abstractmethod
    def _read(self, sql: str, params: tuple = ()) -> list[tuple]: ...

    @abc.abstractmethod
    def _tx(self) -> contextlib.AbstractContextManager[Any]: ...

    def _lock_bundles(self, tx: Any) -> None:
        """Serialise bundle publishing within ``tx`` where the transaction alone does not."""

    # ------------------------------------------------------------ meta and enrollment

    def get_meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as tx:
            tx.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                       "SET value = excluded.value", (key, value))

    def add_tokens(self, hashes: list[str], checkpoint_id: str, expires_ms: int, now_ms: int) -> None:
        with self._tx() as tx:
            tx.executemany("INSERT INTO tokens (token_hash, checkpoint_id, created_ms, expires_ms) "
                           "VALUES (?, ?, ?, ?)", [(h, checkpoint_id, now_ms, expires_ms) for h in hashes])

    @staticmethod
    def _check_token(row: tuple | None, public_key: bytes, now_ms: int) -> tuple[str, str | None]:
        """(checkpoint_id, the device that used it or None) of a tokens row (checkpoint_id,
        expires_ms, device_id, public_key) that may enroll ``public_key``: unused and not expired,
        or used by this same key (enrolling again is harmless). ServerError otherwise."""
        if row is None:
            raise ServerError("unknown enrollment token", code=protocol.E_TOKEN_INVALID, status=403)
        checkpoint_id, expires_ms, used_by, used_key = row
        if used_by is not None:
            if used_key != public_key:
                raise ServerError("this token has already enrolled another device",
                                  code=protocol.E_TOKEN_USED, status=409)
        elif now_ms > expires_ms:
            raise ServerError("enrollment token expired", code=protocol.E_TOKEN_EXPIRED, status=403)
        return checkpoint_id, used_by

    def device(self, device_id: str) -> Device | None:
        rows = self._read("SELECT device_id, checkpoint_id, public_key, enrolled_ms, revoked_ms FROM devices "
                          "WHERE device_id = ?", (device_id,))
        return Device(*rows[0]) if rows else None

    def revoke_device(self, device_id: str, now_ms: int) -> bool:
        with self._tx() as tx:
            cur = tx.execute("UPDATE devices SET revoked_ms = ? WHERE device_id = ? AND revoked_ms IS NULL",
                             (now_ms, device_id))
            return cur.rowcount == 1

    def devices(self) -> list[DeviceStatus]:
        out = []
        for r in self._read(DEVICES_SQL):
            out.append(DeviceStatus(Device(*r[:5]), r[7], json.loads(r[8]) if r[8] else None, r[5], r[6] - r[11],
                                    max(0, r[5] - r[6]), r[9], r[10]))
        return out

    # ------------------------------------------------------------ what an ingest records

    @staticmethod
    def _record_conflicts(tx: Any, batch: ParsedBatch, held: Mapping[int, bytes], now_ms: int) -> None:
        """Entries whose seq is already ``held`` with another hash: kept aside and reported."""
        if not held:  # the usual case: the batch is all new (no row to compare)
            return
        info = batch.info
        entries: tuple[Entry, ...] = ()
        for i, r in enumerate(batch.rows):
            if held.get(r[_SEQ], r[_HASH]) != r[_HASH]:
                entries = entries or batch.entries
                e = entries[i]
                tx.execute("INSERT INTO conflicts (device_id, seq, hash, entry_id, batch_id, received_ms, row, "
                           "sealed) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                           (e.device_id, e.seq, e.hash, e.entry_id, info.batch_id, now_ms,
                            json.dumps(to_export_dict(e)), e.sealed))
                tx.execute("INSERT INTO chain_events (device_id, kind, seq, detail, at_ms) VALUES "
                           "(?, 'conflict', ?, ?, ?) ON CONFLICT DO NOTHING",
                           (e.device_id, e.seq, f"seq {e.seq} delivered again with different content", now_ms))
                log.warning("device %s: conflicting entry at seq %d", e.device_id, e.seq)

    @staticmethod
    def _record_chain(tx: Any, batch: ParsedBatch, below: bytes | None, above: bytes | None, now_ms: int,
                      altered: chain.ChainProblem | None) -> None:
        """Chain problems of the batch against its stored neighbours, and ``altered`` (chain.altered
        of its rows, found before the transaction): sync/server/chain.py."""
        device_id = batch.info.device_id
        for p in chain.check(batch.rows, below, above, altered):
            tx.execute("INSERT INTO chain_events (device_id, kind, seq, detail, at_ms) VALUES (?, ?, ?, ?, ?) "
                       "ON CONFLICT DO NOTHING", (device_id, p.kind, p.seq, p.detail, now_ms))
            log.warning("device %s: chain %s at seq %d", device_id, p.kind, p.seq)

    @staticmethod
    def _record_batch(tx: Any, batch: ParsedBatch, stored: int, duplicates: int, held: int, source: str,
                      now_ms: int) -> None:
        info = batch.info
        tx.execute("INSERT INTO batches (device_id, batch_id, first_seq, last_seq, count, stored, duplicates, "
                   "held_seq, source, received_ms, size) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                   (info.device_id, info.batch_id, info.first_seq, info.last_seq, info.count, stored,
                    duplicates, held, source, now_ms, batch.size))

    # ------------------------------------------------------------ reading batches and chains

    def acks_after(self, device_id: str, after_seq: int, limit: int) -> list[tuple[str, int, int]]:
        return [tuple(r) for r in self._read(
            "SELECT batch_id, first_seq, last_seq FROM batches WHERE device_id = ? AND last_seq > ? "
            "ORDER BY last_seq, first_seq LIMIT ?", (device_id, after_seq, limit))]

    def held_seq(self, device_id: str) -> int:
        rows = self._read("SELECT held_seq FROM devices WHERE device_id = ?", (device_id,))
        return rows[0][0] if rows else 0

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

    # ------------------------------------------------------------ tracing

    def visits(self, card_id: str, since_ms: int, until_ms: int, limit: int) -> list[SeenEntry]:
        return [SeenEntry(*r) for r in self._read(
            f"SELECT {SEEN_COLUMNS} FROM entries WHERE card_id = ? AND at_ms >= ? AND at_ms < ? "
            "ORDER BY at_ms, device_id, seq LIMIT ?", (card_id, since_ms, until_ms, limit))]

    def seen_at(self, checkpoint_id: str, from_ms: int, to_ms: int, limit: int) -> list[SeenEntry]:
        return [SeenEntry(*r) for r in self._read(
            f"SELECT {SEEN_COLUMNS} FROM entries WHERE checkpoint_id = ? AND at_ms BETWEEN ? AND ? "
            "ORDER BY at_ms, device_id, seq LIMIT ?", (checkpoint_id, from_ms, to_ms, limit))]

    # ------------------------------------------------------------ heartbeats

    def record_heartbeat(self, device_id: str, doc: dict, now_ms: int) -> bool:
        with self._tx() as tx:
            cur = tx.execute(
                "INSERT INTO heartbeats (device_id, received_ms, hb_seq, doc) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (device_id) DO UPDATE SET received_ms = excluded.received_ms, "
                "hb_seq = excluded.hb_seq, doc = excluded.doc WHERE excluded.hb_seq > heartbeats.hb_seq",
                (device_id, now_ms, doc["hb_seq"], json.dumps(doc, ensure_ascii=False)))
            return cur.rowcount == 1

    # ------------------------------------------------------------ bundles

    def publish_bundle(self, meta: BundleMeta, data: bytes, gz: bytes, deltas: dict[int, bytes]) -> None:
        with self._tx() as tx:
            self._lock_bundles(tx)
            top = tx.execute("SELECT max(version) FROM bundles").fetchone()[0]
            if top is not None and meta.version <= top:
                raise ServerError(f"bundle version {meta.version} is not above the published {top}",
                                  code="bundle_rollback", status=409)
            tx.execute("INSERT INTO bundles (version, digest, issued_at, expires_at, published_ms, size, data, gz) "
                       "VALUES (?,?,?,?,?,?,?,?)", (meta.version, meta.digest, meta.issued_at, meta.expires_at,
                                                   meta.published_ms, meta.size, data, gz))
            tx.executemany("INSERT INTO deltas (from_version, to_version, data) VALUES (?, ?, ?)",
                           [(v, meta.version, d) for v, d in deltas.items()])

    def latest_bundle(self) -> BundleMeta | None:
        rows = self._read(f"SELECT {BUNDLE_META_COLUMNS} FROM bundles ORDER BY version DESC LIMIT 1")
        return BundleMeta(*rows[0]) if rows else None

    def bundle_versions(self) -> list[BundleMeta]:
        return [BundleMeta(*r) for r in self._read(f"SELECT {BUNDLE_META_COLUMNS} FROM bundles ORDER BY version")]

    def bundle_data(self, version: int, gz: bool = False) -> bytes | None:
        rows = self._read(f"SELECT {'gz' if gz else 'data'} FROM bundles WHERE version = ?", (version,))
        return rows[0][0] if rows else None

    def delta(self, from_version: int, to_version: int) -> bytes | None:
        rows = self._read("SELECT data FROM deltas WHERE from_version = ? AND to_version = ?",
                          (from_version, to_version))
        return rows[0][0] if rows else None


class QmarkCursor:
    """A DB-API cursor whose ``execute``/``executemany`` take ``?`` placeholders, for a driver that
    wants ``%s`` (psycopg). The shared SQL holds no literal ``%`` and no ``?`` other than these."""

    __slots__ = ("cur",)

    def __init__(self, cur: Any) -> None:
        self.cur = cur

    def execute(self, sql: str, params: tuple = ()) -> Any:
        return self.cur.execute(sql.replace("?", "%s"), params)

    def executemany(self, sql: str, rows: list) -> None:
        self.cur.executemany(sql.replace("?", "%s"), rows)
