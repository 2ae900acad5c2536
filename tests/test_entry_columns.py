"""One registry of an entry's fields: every table, row, hash input and export record follows Entry."""
from __future__ import annotations

import dataclasses
import os
import sqlite3
import uuid

from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.store import entry as E
from scanner.store.entry import GENESIS, Entry
from scanner.store.entrylog import EntryLog
from scanner.store.retry import ScanDraft
from scanner.store.schema import COLUMNS, INSERT_SQL, entry_row
from sync.server import sqlstorage
from sync.server.sqlite import SQLiteStorage
from sync.wire.batch import build, open_batch

KEY = ed25519.Ed25519PrivateKey.generate()

# the spec's lists (docs/entry-log.md#hash-chain, #export), frozen: a change here is a format change
SPEC_HASHED = ("at_ms", "card_id", "checkpoint_id", "clock", "decision", "device_id", "direction", "entry_id",
               "format", "issuer", "kid", "kind", "reason", "ref_entry_id", "sealed_sha256", "seq", "source",
               "source_id")
SPEC_EXPORT = ("seq", "entry_id", "device_id", "checkpoint_id", "direction", "at", "clock", "source", "source_id",
               "decision", "reason", "format", "card_id", "issuer", "kid", "kind", "ref_entry_id", "holder",
               "sealed_sha256", "batch_id", "prev_hash", "hash")


def full_entry(seq: int = 7) -> Entry:
    """An entry with every field set (no None anywhere), hashed."""
    e = Entry(seq, str(uuid.uuid4()), "dev-1", "gate", "out", 1_750_000_000_123, "synced", "usb", "reader0",
              "reject", "duplicate", "CK1", "ab" * 16, "VN-HUE", "AAAAAAAAAAA=", "did_not_pass",
              str(uuid.uuid4()), batch_id="b-1", prev_hash=os.urandom(32), sealed=os.urandom(77))
    return dataclasses.replace(e, hash=e.computed_hash())


def test_every_field_list_derives_from_the_dataclass():
    names = tuple(f.name for f in dataclasses.fields(Entry))
    assert names == E.ENTRY_FIELDS
    assert set(E.STORED_FIELDS) | set(E.COMPUTED_FIELDS) | set(E.SYNC_FIELDS) == set(names)
    assert E.HASHED_FIELDS == SPEC_HASHED
    assert E.EXPORT_FIELDS == SPEC_EXPORT
    assert set(sqlstorage.ENTRY_COLUMNS) == set(E.STORED_FIELDS) | {"batch_id", "received_ms"}
    # the log's hot path takes a scan draft's first eight fields as the entry's first eight
    assert ScanDraft._fields[:8] == E.LINK_FIELDS[:8]


def test_the_device_table_keeps_every_stored_field(tmp_path):
    EntryLog(tmp_path / "entries.db").close()  # a new file, every migration applied
    conn = sqlite3.connect(tmp_path / "entries.db")
    assert {r[1] for r in conn.execute("PRAGMA table_info(entries)")} == set(E.STORED_FIELDS)
    e = full_entry()
    assert len(entry_row(e)) == INSERT_SQL.count("?")
    conn.execute(INSERT_SQL, entry_row(e))
    conn.execute("INSERT INTO synced_runs VALUES (?, ?, ?)", (e.seq, e.seq, e.batch_id))  # its batch, as marked
    back = Entry(*conn.execute(f"SELECT {COLUMNS} FROM entries").fetchone())
    assert back == e and back.sealed == e.sealed and back.sealed_sha256 == e.sealed_sha256
    conn.close()


def test_the_server_table_keeps_every_stored_field_and_when(tmp_path):
    storage = SQLiteStorage(tmp_path / "server.db")
    try:
        conn = sqlite3.connect(tmp_path / "server.db")
        assert {r[1] for r in conn.execute("PRAGMA table_info(entries)")} == set(sqlstorage.ENTRY_COLUMNS)
        e = dataclasses.replace(full_entry(), batch_id=None)
        (row,) = open_batch(build([e], KEY, device_id="dev-1", created_ms=1).data, KEY.public_key()).rows
        row = sqlstorage.entry_row(row, "batch-9", 1_750_000_009_000)
        assert dict(zip(sqlstorage.ENTRY_COLUMNS, row)) == {
            **{n: getattr(e, n) for n in E.STORED_FIELDS}, "batch_id": "batch-9", "received_ms": 1_750_000_009_000}
        conn.close()
    finally:
        storage.close()


def test_export_records_carry_every_field_but_the_blob():
    e = full_entry()
    d = E.to_export_dict(e)
    assert tuple(d) == E.EXPORT_FIELDS
    assert (d["at"], d["holder"], d["prev_hash"], d["hash"]) == (E.iso_ms(e.at_ms), "sealed", e.prev_hash.hex(),
                                                                   e.hash.hex())
    assert E.from_export_dict(d) == dataclasses.replace(e, sealed=None)
    assert E.from_export_dict(E.to_export_dict(dataclasses.replace(e, sealed=None, sealed_sha256=None,
                                                                   prev_hash=GENESIS))).holder == "none"
