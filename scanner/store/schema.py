"""The entry log's SQLite file: schema and migrations, the connection's settings, the column lists.

WAL, a busy timeout, ``synchronous`` FULL or NORMAL, incremental auto-vacuum, secure delete, an
optional size cap, and mode 0600 for every file of the database. Migrations are sqlite-utils'
(its public API only, scanner/store/migrations.py, loaded when a file needs one); a file written by a
newer version is refused. docs/entry-log.md#schema-and-migrations.
"""
from __future__ import annotations

import logging
import operator
import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from scanner.base.errors import os_error_words, sqlite_words
from scanner.base.i18n import text
from scanner.base.lazy import lazy_module
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

if TYPE_CHECKING:
    from scanner.store import migrations
else:  # loaded when a file needs a migration: sqlite-utils (NumPy and click with it) cost every process ~10 MB
    migrations = lazy_module("scanner.store.migrations")

log = logging.getLogger(__name__)

DEFAULT_DB_NAME = "entries.db"
SYNC_MODES = ("FULL", "NORMAL")
_NO_PAGE_LIMIT = 0xFFFFFFFE  # SQLite clamps this to its compiled-in maximum


def default_db_path() -> Path:
    """$CHECKPOINT_STATE_DIR/entries.db, else /var/lib/checkpoint/entries.db."""
    return default_state_dir() / DEFAULT_DB_NAME


# ---------------------------------------------------------------- migrations

# The entry log's migrations, in order: their steps are in scanner/store/migrations.py (sqlite-utils), which
# is imported only when a file needs one; an up-to-date file is checked with plain sqlite3.
MIGRATION_SET = "checkpoint-entry-log"
MIGRATION_NAMES = ("m001_entries", "m002_followups_and_anchor", "m003_synced_runs")
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
            max_db_bytes: int | None, autocheckpoint: bool = True, cache_kib: int | None = None) -> sqlite3.Connection:
    """Open (or create, mode 0600 in a 0700 directory) the log file, configured and migrated."""
    if not path.exists():
        if not create:
            raise EntryLogError(f"no entry log at {path}", code="no_log",
                                text=text("store_error.no_log", path=str(path)))
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise EntryLogError(f"cannot create {path}: {exc.strerror}", code="no_log",
                                text=text("store_error.cannot_create", what=os_error_words(exc, path))) from None
        os.close(fd)
    conn = sqlite3.connect(str(path), timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
    try:
        configure(conn, path, busy_timeout_s=busy_timeout_s, synchronous=synchronous, max_db_bytes=max_db_bytes,
                  autocheckpoint=autocheckpoint, cache_kib=cache_kib)
        migrate(conn, path)
        fix_file_modes(path)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise EntryLogError(f"{path}: {exc}", code="log_unusable", text=sqlite_words(exc, path)) from None
    except BaseException:
        conn.close()
        raise
    return conn


def reconnect(path: Path, *, busy_timeout_s: float, synchronous: str,
              max_db_bytes: int | None, autocheckpoint: bool = True, cache_kib: int | None = None
              ) -> sqlite3.Connection:
    """A fresh, configured connection to a log that is already there (after an I/O error, or for
    the idle checkpoints)."""
    conn = sqlite3.connect(str(path), timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
    try:
        configure(conn, path, busy_timeout_s=busy_timeout_s, synchronous=synchronous, max_db_bytes=max_db_bytes,
                  autocheckpoint=autocheckpoint, cache_kib=cache_kib)
    except BaseException:
        conn.close()
        raise
    return conn


def configure(conn: sqlite3.Connection, path: Path, *, busy_timeout_s: float, synchronous: str,
              max_db_bytes: int | None, autocheckpoint: bool = True, cache_kib: int | None = None) -> None:
    """The log's settings on a connection; ``autocheckpoint`` False: its commits never checkpoint
    the WAL (EntryLog.checkpoint_when_idle does); ``cache_kib``: its page cache (None: SQLite's
    default, 2 MiB)."""
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
    if cache_kib is not None:
        conn.execute(f"PRAGMA cache_size = {-int(cache_kib)}")  # negative: KiB, not pages
    apply_page_limit(conn, max_db_bytes)


def apply_page_limit(conn: sqlite3.Connection, max_db_bytes: int | None) -> None:
    """Cap the file at ``max_db_bytes`` (None: no cap); a write beyond it fails like a full disk."""
    if max_db_bytes is None:
        conn.execute(f"PRAGMA max_page_count = {_NO_PAGE_LIMIT}")
    else:
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {max(1, max_db_bytes // page)}")


def applied_migrations(conn: sqlite3.Connection) -> list[str]:
    """The names of the migrations applied to the file, in order (sqlite-utils' table, read as is)."""
    table = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlite_migrations'"
    if conn.execute(table).fetchone() is None:
        return []
    return [r[0] for r in conn.execute("SELECT name FROM _sqlite_migrations WHERE migration_set = ? ORDER BY rowid",
                                       (MIGRATION_SET,))]


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Apply the missing migrations in one BEGIN IMMEDIATE transaction (one process migrates; the
    others wait, then find it done); refuse a file with a migration unknown here. A file that has
    them all is left alone without loading sqlite-utils (nor NumPy, which it imports)."""
    applied = applied_migrations(conn)
    unknown = [n for n in applied if n not in MIGRATION_NAMES]
    if unknown:
        raise EntryLogError(f"{path} was written by a newer version (schema migration "
                            f"{unknown[0]!r} unknown here)", code="schema_too_new")
    if set(applied) == set(MIGRATION_NAMES):
        return
    migrations.apply(conn, SCHEMA_VERSION)


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
