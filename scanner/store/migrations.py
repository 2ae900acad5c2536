"""The entry log's schema migrations, sqlite-utils' Migrations (its public API only). Imported only
when a file lacks one (scanner.store.schema.migrate): sqlite-utils loads NumPy and click, which a
process that only opens an up-to-date log does without. Their names and order: schema.MIGRATION_NAMES.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Callable

from sqlite_utils import Database, Migrations

MIGRATIONS = Migrations("checkpoint-entry-log")  # schema.MIGRATION_SET
_names: list[str] = []


def _migration(name: str) -> Callable:
    """Register a migration, in order, and keep its name (sqlite-utils lists only pending and
    applied ones: a file's unknown migrations are found against this list)."""
    def register(fn: Callable[[Database], None]) -> Callable[[Database], None]:
        _names.append(name)
        return MIGRATIONS(name=name)(fn)
    return register


# Schema v1, as first shipped. Never edit a migration once released: add a new one.
V1_DDL = """
CREATE TABLE entries (
    seq INTEGER PRIMARY KEY,
    entry_id TEXT NOT NULL UNIQUE,
    device_id TEXT NOT NULL,
    checkpoint_id TEXT NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    at_ms INTEGER NOT NULL,
    clock TEXT NOT NULL,
    source TEXT NOT NULL,
    source_id TEXT NOT NULL,
    decision TEXT NOT NULL,
    reason TEXT NOT NULL,
    format TEXT,
    card_id TEXT,
    issuer TEXT,
    kid TEXT,
    sealed BLOB,
    batch_id TEXT,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
) STRICT;
CREATE INDEX entries_card ON entries (card_id, at_ms) WHERE card_id IS NOT NULL;
CREATE INDEX entries_checkpoint ON entries (checkpoint_id, at_ms);
CREATE INDEX entries_unsynced ON entries (seq) WHERE batch_id IS NULL;
"""


@_migration("m001_entries")
def _m001_entries(db: Database) -> None:
    db.executescript(V1_DDL)


@_migration("m002_followups_and_anchor")
def _m002_followups_and_anchor(db: Database) -> None:
    """Follow-up entries ("granted, did not pass") and the chain anchor kept by retention."""
    db.table("entries").add_column("kind", str)
    db.table("entries").add_column("ref_entry_id", str)
    db.execute("CREATE INDEX entries_ref ON entries (ref_entry_id) WHERE ref_entry_id IS NOT NULL")
    db.execute("""
        CREATE TABLE chain_anchor (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq INTEGER NOT NULL,
            hash BLOB NOT NULL,
            purged INTEGER NOT NULL,
            at_ms INTEGER NOT NULL
        ) STRICT""")


@_migration("m003_synced_runs")
def _m003_synced_runs(db: Database) -> None:
    """What the server holds moves from a column of every entry to its acknowledged runs and their
    merged spans (scanner/store/synced.py): marking a batch writes two rows, not every entry."""
    db.executescript("""
        CREATE TABLE synced_runs (
            first_seq INTEGER PRIMARY KEY,
            last_seq INTEGER NOT NULL CHECK (last_seq >= first_seq),
            batch_id TEXT NOT NULL
        ) STRICT;
        CREATE TABLE synced_spans (
            first_seq INTEGER PRIMARY KEY,
            last_seq INTEGER NOT NULL CHECK (last_seq >= first_seq)
        ) STRICT;
        INSERT INTO synced_runs (first_seq, last_seq, batch_id)
            SELECT min(seq), max(seq), batch_id FROM (
                SELECT seq, batch_id, seq - row_number() OVER (PARTITION BY batch_id ORDER BY seq) AS island
                FROM entries WHERE batch_id IS NOT NULL)
            GROUP BY batch_id, island;
        INSERT INTO synced_spans (first_seq, last_seq)
            SELECT min(seq), max(seq) FROM (
                SELECT seq, seq - row_number() OVER (ORDER BY seq) AS island FROM entries WHERE batch_id IS NOT NULL)
            GROUP BY island;
        DROP INDEX entries_unsynced;
        ALTER TABLE entries DROP COLUMN batch_id;
    """)



NAMES = tuple(_names)


def apply(conn: sqlite3.Connection, version: int) -> None:
    """Apply the pending migrations in one BEGIN IMMEDIATE transaction and set user_version."""
    db = Database(conn, execute_plugins=False, recursive_triggers=False)
    if not MIGRATIONS.pending(db):  # another process did it meanwhile
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        MIGRATIONS.apply(db)
        conn.execute(f"PRAGMA user_version = {version}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
