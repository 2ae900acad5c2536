"""The entry log's SQLite file: schema and migrations, the connection's settings, the column lists.

WAL, a busy timeout, ``synchronous`` FULL or NORMAL, incremental auto-vacuum, secure delete, an
optional size cap, and mode 0600 for every file of the database. Migrations are sqlite-utils'
(its public API only); a file written by a newer version is refused. docs/entry-log.md#schema-and-migrations.
"""
from __future__ import annotations

import logging
import operator
import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

from sqlite_utils import Database, Migrations

from scanner.base.paths import default_state_dir
from scanner.store.entry import (
    COMPUTED_FIELDS,
    ENTRY_FIELDS,
    STORED_FIELDS,
    SYNC_FIELDS,
    Anchor,
    Entry,
)
from scanner.store.errors import EntryLogError
from scanner.store.synced import BATCH_OF_SEQ

log = logging.getLogger(__name__)

DEFAULT_DB_NAME = "entries.db"
SYNC_MODES = ("FULL", "NORMAL")
_NO_PAGE_LIMIT = 0xFFFFFFFE  # SQLite clamps this to its compiled-in maximum


def default_db_path() -> Path:
    """$CHECKPOINT_STATE_DIR/entries.db, else /var/lib/checkpoint/entries.db."""
    return default_state_dir() / DEFAULT_DB_NAME


# ---------------------------------------------------------------- migrations

MIGRATIONS = Migrations("checkpoint-entry-log")
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


MIGRATION_NAMES = tuple(_names)
SCHEMA_VERSION = len(MIGRATION_NAMES)

# ---------------------------------------------------------------- columns

# SELECT {COLUMNS} FROM entries gives rows for Entry(*row) (a computed field comes back as NULL: Entry fills it
# in; the batch comes from the acknowledged runs)
_EXPRESSIONS = {**dict.fromkeys(COMPUTED_FIELDS, "NULL"), **dict.fromkeys(SYNC_FIELDS, BATCH_OF_SEQ)}
COLUMNS = ", ".join(_EXPRESSIONS.get(name, name) for name in ENTRY_FIELDS)
INSERT_SQL = (f"INSERT INTO entries ({', '.join(STORED_FIELDS)}) "
              f"VALUES ({', '.join('?' * len(STORED_FIELDS))})")
entry_row: Callable[[Entry], tuple] = operator.attrgetter(*STORED_FIELDS)  # the INSERT_SQL parameters of an entry


def read_anchor(conn: sqlite3.Connection) -> Anchor:
    """Where the chain kept in the file starts (see retention)."""
    row = conn.execute("SELECT seq, hash, purged FROM chain_anchor WHERE id = 1").fetchone()
    return Anchor() if row is None else Anchor(row[0], row[1], row[2])


# ---------------------------------------------------------------- the connection


def connect(path: Path, *, create: bool, busy_timeout_s: float, synchronous: str,
            max_db_bytes: int | None, autocheckpoint: bool = True) -> sqlite3.Connection:
    """Open (or create, mode 0600 in a 0700 directory) the log file, configured and migrated."""
    if not path.exists():
        if not create:
            raise EntryLogError(f"no entry log at {path}", code="no_log")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise EntryLogError(f"cannot create {path}: {exc.strerror}", code="no_log") from None
        os.close(fd)
    conn = sqlite3.connect(str(path), timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
    try:
        configure(conn, path, busy_timeout_s=busy_timeout_s, synchronous=synchronous, max_db_bytes=max_db_bytes,
                  autocheckpoint=autocheckpoint)
        migrate(conn, path)
        fix_file_modes(path)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise EntryLogError(f"{path}: {exc}", code="log_unusable") from None
    except BaseException:
        conn.close()
        raise
    return conn


def reconnect(path: Path, *, busy_timeout_s: float, synchronous: str,
              max_db_bytes: int | None, autocheckpoint: bool = True) -> sqlite3.Connection:
    """A fresh, configured connection to a log that is already there (after an I/O error, or for
    the idle checkpoints)."""
    conn = sqlite3.connect(str(path), timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
    try:
        configure(conn, path, busy_timeout_s=busy_timeout_s, synchronous=synchronous, max_db_bytes=max_db_bytes,
                  autocheckpoint=autocheckpoint)
    except BaseException:
        conn.close()
        raise
    return conn


def configure(conn: sqlite3.Connection, path: Path, *, busy_timeout_s: float, synchronous: str,
              max_db_bytes: int | None, autocheckpoint: bool = True) -> None:
    """The log's settings on a connection; ``autocheckpoint`` False: its commits never checkpoint
    the WAL (EntryLog.checkpoint_when_idle does)."""
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
    if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes effect on a new file
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise EntryLogError(f"{path}: cannot switch to WAL (journal_mode {mode})", code="log_unusable")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute(f"PRAGMA wal_autocheckpoint = {1000 if autocheckpoint else 0}")
    conn.execute("PRAGMA secure_delete = ON")  # purged entries are overwritten, not just unlinked
    conn.execute("PRAGMA foreign_keys = OFF")
    apply_page_limit(conn, max_db_bytes)


def apply_page_limit(conn: sqlite3.Connection, max_db_bytes: int | None) -> None:
    """Cap the file at ``max_db_bytes`` (None: no cap); a write beyond it fails like a full disk."""
    if max_db_bytes is None:
        conn.execute(f"PRAGMA max_page_count = {_NO_PAGE_LIMIT}")
    else:
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {max(1, max_db_bytes // page)}")


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Apply the missing migrations in one BEGIN IMMEDIATE transaction (one process migrates; the
    others wait, then find it done); refuse a file with a migration unknown here."""
    db = Database(conn, execute_plugins=False, recursive_triggers=False)
    applied = [m.name for m in MIGRATIONS.applied(db)]
    unknown = [n for n in applied if n not in MIGRATION_NAMES]
    if unknown:
        raise EntryLogError(f"{path} was written by a newer version (schema migration "
                            f"{unknown[0]!r} unknown here)", code="schema_too_new")
    if not MIGRATIONS.pending(db):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        MIGRATIONS.apply(db)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def fix_file_modes(path: Path) -> None:
    """db, -wal and -shm: mode 0600 and the database file's owner (SQLite copies both, but a
    file left by an older version or created by root must not stay readable or root-owned)."""
    owner = path.stat()
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = Path(str(path) + suffix)
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(p, stat.S_IMODE(st.st_mode) & 0o600)
        if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (owner.st_uid, owner.st_gid):
            os.chown(p, owner.st_uid, owner.st_gid)


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already done so after an I/O error."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.warning("entry log: rollback after a failed write: %s", exc)
