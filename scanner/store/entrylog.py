"""The entry log: every scan committed durably to SQLite before its verdict is shown.

One SQLite file in the device's state directory (WAL, busy timeout, synchronous=FULL by default),
schema managed by sqlite-utils migrations, a per-device hash chain, anti-passback, occupancy,
retention with a chain anchor, a disk-space alarm, and a bounded retry queue for commits that
fail. Spec: docs/entry-log.md.
"""
from __future__ import annotations

import base64
import contextlib
import datetime as dt
import logging
import operator
import os
import shutil
import sqlite3
import stat
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from sqlite_utils import Database, Migrations

from hardware.scan import DIRECTIONS, Scan
from scanner.base.errors import CheckpointError, Reason
from scanner.cards.verdict import Verdict, reject
from scanner.store import clock as clockmod
from scanner.store import sealing
from scanner.store.entry import (
    COMPUTED_FIELDS,
    ENTRY_FIELDS,
    FOLLOWUP_KINDS,
    STORED_FIELDS,
    Anchor,
    ChainReport,
    Entry,
    entry_hash,
    verify_chain,
)

log = logging.getLogger(__name__)

DEFAULT_DB_NAME = "entries.db"
DEFAULT_STATE_DIR = "/var/lib/checkpoint"
HOLDER_MODES = ("sealed", "none")
NO_SEALING_KEY = "no sealing key configured"  # holder_details_note when "sealed" was asked for without a key
MARK_CHUNK = 500  # entries marked synced per write transaction (~1 ms here): see mark_synced
SYNC_MODES = ("FULL", "NORMAL")
MIB = 1024 * 1024
DAY_MS = 86_400_000
_NO_PAGE_LIMIT = 0xFFFFFFFE  # SQLite clamps this to its compiled-in maximum


class EntryLogError(CheckpointError):
    """The entry log refused an operation (unknown entry, sync conflict, unusable file...)."""

    code = "log_error"


class EntryLogWriteError(EntryLogError):
    """A commit failed (disk full, I/O error, lock timeout). ``queued``: the entry is kept in the
    retry queue and will be committed when the disk comes back; False only when the queue is full
    (then the entry was NOT recorded and the caller must not admit the person)."""

    code = "write_failed"

    def __init__(self, message: str, *, code: str, entry_id: str, queued: bool) -> None:
        super().__init__(message, code=code)
        self.entry_id = entry_id
        self.queued = queued


# ---------------------------------------------------------------- schema

MIGRATIONS = Migrations("checkpoint-entry-log")

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


@MIGRATIONS(name="m001_entries")
def _m001_entries(db: Database) -> None:
    db.executescript(V1_DDL)


@MIGRATIONS(name="m002_followups_and_anchor")
def _m002_followups_and_anchor(db: Database) -> None:
    """Follow-up entries ("granted, did not pass") and the chain anchor kept by retention."""
    db["entries"].add_column("kind", str)
    db["entries"].add_column("ref_entry_id", str)
    db.execute("CREATE INDEX entries_ref ON entries (ref_entry_id) WHERE ref_entry_id IS NOT NULL")
    db.execute("""
        CREATE TABLE chain_anchor (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq INTEGER NOT NULL,
            hash BLOB NOT NULL,
            purged INTEGER NOT NULL,
            at_ms INTEGER NOT NULL
        ) STRICT""")


SCHEMA_VERSION = len(MIGRATIONS._migrations)
MIGRATION_NAMES = tuple(m.name for m in MIGRATIONS._migrations)

# SELECT {COLUMNS} gives rows for Entry(*row) (a computed field comes back as NULL: Entry fills it in)
COLUMNS = ", ".join("NULL" if name in COMPUTED_FIELDS else name for name in ENTRY_FIELDS)
# The last admission of a card at a checkpoint in a direction, not cancelled by a follow-up.
# `+e.checkpoint_id`: probe the card's index (a handful of rows), never the checkpoint's (every scan
# there in the window: SQLite picked that one, tests/test_entrylog.py checks the plan)
PASSBACK_SQL = (
    "SELECT e.at_ms FROM entries e WHERE e.card_id = ? AND e.at_ms >= ? AND e.at_ms <= ? "
    "AND +e.checkpoint_id = ? AND e.direction = ? AND e.kind IS NULL AND e.decision = 'accept' "
    "AND NOT EXISTS (SELECT 1 FROM entries f WHERE f.ref_entry_id = e.entry_id "
    "AND f.kind = 'did_not_pass') ORDER BY e.at_ms DESC LIMIT 1")
INSERT_SQL = (f"INSERT INTO entries ({', '.join(STORED_FIELDS)}) "
              f"VALUES ({', '.join('?' * len(STORED_FIELDS))})")
entry_row: Callable[[Entry], tuple] = operator.attrgetter(*STORED_FIELDS)  # the INSERT_SQL parameters of an entry


def default_db_path() -> Path:
    """$CHECKPOINT_STATE_DIR/entries.db, else /var/lib/checkpoint/entries.db."""
    return Path(os.environ.get("CHECKPOINT_STATE_DIR") or DEFAULT_STATE_DIR) / DEFAULT_DB_NAME


# ---------------------------------------------------------------- value types


@dataclass(frozen=True, slots=True)
class RecordResult:
    """The final verdict (possibly turned into ``duplicate``) and the committed entry."""

    verdict: Verdict
    entry: Entry
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Health:
    """``state``: "ok", "warning" (e.g. low disk) or "error" (commits failing; entries queued).

    ``problems`` are stable codes: disk_full, io_error, db_busy, write_failed, log_queue_full,
    low_disk.
    """

    state: str
    problems: tuple[str, ...] = ()
    queued: int = 0
    free_bytes: int | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Totals:
    """One day at one checkpoint (or all, when ``checkpoint_id`` is None)."""

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
class PurgeResult:
    purged: int
    anchor_seq: int
    cutoff_ms: int
    kept_unsynced: int
    dry_run: bool = False


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


@dataclass(frozen=True, slots=True)
class _Draft:
    """An entry before it has a seq and a place in the chain (what the retry queue holds)."""

    entry_id: str
    at_ms: int
    clock: str
    direction: str | None
    source: str | None
    source_id: str | None
    verdict: Verdict | None = None
    card_id: str | None = None
    sealed: bytes | None = None
    kind: str | None = None
    ref_entry_id: str | None = None


def _refused(draft: _Draft, code: str, detail: str) -> _Draft:
    """A scan whose commit failed (``code``: disk_full, io_error, db_busy, write_failed) as the
    refusal the caller shows instead of its verdict; the card's facts are kept. Follow-ups unchanged."""
    v = draft.verdict
    if v is None or draft.kind is not None:
        return draft
    return replace(draft, verdict=reject(Reason(code), f"entry log could not commit: {detail}", v.format,
                                         v.kid, v.card))


def _b64(raw: bytes | None) -> str | None:
    return None if raw is None else base64.b64encode(raw).decode("ascii")


def _write_error_code(exc: sqlite3.Error) -> str | None:
    """The health/problem code of a failed write, or None if it is not a storage failure."""
    if isinstance(exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError,
                        sqlite3.NotSupportedError, sqlite3.DataError)):
        return None
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith("SQLITE_FULL"):
        return "disk_full"
    if name.startswith("SQLITE_IOERR"):
        return "io_error"
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return "db_busy"
    return "write_failed"


# ---------------------------------------------------------------- the log


class EntryLog:
    """The device's entry log in one SQLite file (see docs/entry-log.md).

    Thread-safe: one connection per instance, used under a lock. Several instances (threads or
    processes: scanner, sync, status) can share one file; every write is a short
    ``BEGIN IMMEDIATE`` transaction and readers never block writers (WAL).
    """

    def __init__(self, path: str | os.PathLike, *, device_id: str | None = None,
                 checkpoint_id: str | None = None, sealing_key=None, holder_details: str = "sealed",
                 synchronous: str = "FULL", busy_timeout_s: float = 10.0,
                 passback_window_s: float = 120.0, retention_days: int = 21,
                 min_free_bytes: int = 100 * MIB, max_db_bytes: int | None = None,
                 retry_queue_max: int = 1000, clock: Callable[[], str] | None = None,
                 tz: dt.tzinfo | None = None, create: bool = True) -> None:
        if holder_details not in HOLDER_MODES:
            raise ValueError(f"holder_details must be one of {HOLDER_MODES}")
        synchronous = synchronous.upper()
        if synchronous not in SYNC_MODES:
            raise ValueError(f"synchronous must be one of {SYNC_MODES}")
        if passback_window_s < 0 or retention_days < 0 or retry_queue_max < 1:
            raise ValueError("negative window/retention or empty retry queue")
        self.path = Path(path)
        self.device_id = device_id
        self.checkpoint_id = checkpoint_id
        if sealing_key is not None and not isinstance(sealing_key, X25519PublicKey):
            sealing_key = sealing.load_public_key(sealing_key)  # PEM, raw 32 bytes or a file
        self.sealing_key = sealing_key
        self._sealer = sealing.Sealer(sealing_key) if sealing_key is not None else None
        if holder_details == "sealed" and sealing_key is None:
            self.holder_details, self.holder_details_note = "none", NO_SEALING_KEY
        else:
            self.holder_details, self.holder_details_note = holder_details, ""
        self.synchronous = synchronous
        self.busy_timeout_s = busy_timeout_s
        self.passback_window_ms = int(passback_window_s * 1000)
        self.retention_days = retention_days
        self.min_free_bytes = min_free_bytes
        self.retry_queue_max = retry_queue_max
        self._clock = clock if clock is not None else clockmod.CachedState()  # the kernel's, read once a second
        self.tz = tz
        self._lock = threading.RLock()
        self._queue: deque[_Draft] = deque()
        self._flushed = threading.Condition(self._lock)
        self._write_problem: str | None = None
        self._write_detail = ""
        self._free_bytes: int | None = None
        self._disk_checked = 0.0
        self._max_db_bytes = max_db_bytes
        self._conn = self._open(create)
        self._check_disk(force=True)

    # ------------------------------------------------------------ opening

    def _open(self, create: bool) -> sqlite3.Connection:
        path = self.path
        if not path.exists():
            if not create:
                raise EntryLogError(f"no entry log at {path}", code="no_log")
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise EntryLogError(f"cannot create {path}: {exc.strerror}", code="no_log") from None
            os.close(fd)
        conn = sqlite3.connect(str(path), timeout=self.busy_timeout_s, isolation_level=None,
                               check_same_thread=False)
        try:
            self._configure(conn)
            self._migrate(conn)
            self._fix_file_modes()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise EntryLogError(f"{path}: {exc}", code="log_unusable") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _configure(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes effect on a new file
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise EntryLogError(f"{self.path}: cannot switch to WAL (journal_mode {mode})", code="log_unusable")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("PRAGMA secure_delete = ON")  # purged entries are overwritten, not just unlinked
        conn.execute("PRAGMA foreign_keys = OFF")
        self._apply_page_limit(conn)

    def _apply_page_limit(self, conn: sqlite3.Connection) -> None:
        if self._max_db_bytes is None:
            conn.execute(f"PRAGMA max_page_count = {_NO_PAGE_LIMIT}")
        else:
            page = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {max(1, self._max_db_bytes // page)}")

    def set_max_db_bytes(self, limit: int | None) -> None:
        """Cap the database file size (None: no cap). Writes beyond it fail like a full disk."""
        with self._lock:
            self._max_db_bytes = limit
            self._apply_page_limit(self._conn)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        db = Database(conn, execute_plugins=False, recursive_triggers=False)
        known = set(MIGRATION_NAMES)
        applied = [m.name for m in MIGRATIONS.applied(db)]
        unknown = [n for n in applied if n not in known]
        if unknown:
            raise EntryLogError(f"{self.path} was written by a newer version (schema migration "
                                f"{unknown[0]!r} unknown here)", code="schema_too_new")
        if len(applied) == len(known):
            return
        conn.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then find it done
        try:
            MIGRATIONS.apply(db)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _fix_file_modes(self) -> None:
        """db, -wal and -shm: mode 0600 and the database file's owner (SQLite copies both, but a
        file left by an older version or created by root must not stay readable or root-owned)."""
        owner = self.path.stat()
        for suffix in ("", "-wal", "-shm", "-journal"):
            p = Path(str(self.path) + suffix)
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            if stat.S_IMODE(st.st_mode) & 0o077:
                os.chmod(p, stat.S_IMODE(st.st_mode) & 0o600)
            if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (owner.st_uid, owner.st_gid):
                os.chown(p, owner.st_uid, owner.st_gid)

    def set_sealing_key(self, sealing_key: X25519PublicKey) -> None:
        """Seal later entries to this key (the device installed a new server credential); entries
        already written keep theirs. A log that stored no details for want of a key starts to."""
        with self._lock:
            old, self._sealer = self._sealer, sealing.Sealer(sealing_key)  # before the mode: never sealed to None
            self.sealing_key = sealing_key
            if self.holder_details_note == NO_SEALING_KEY:
                self.holder_details, self.holder_details_note = "sealed", ""
        if old is not None:
            old.rotate()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        if self._sealer is not None:
            self._sealer.rotate()  # drop the session key with the log

    def __enter__(self) -> EntryLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ small reads

    def schema_version(self) -> int:
        with self._lock:
            return self._conn.execute("PRAGMA user_version").fetchone()[0]

    def anchor(self) -> Anchor:
        with self._lock:
            return self._anchor(self._conn)

    @staticmethod
    def _anchor(conn: sqlite3.Connection) -> Anchor:
        row = conn.execute("SELECT seq, hash, purged FROM chain_anchor WHERE id = 1").fetchone()
        return Anchor() if row is None else Anchor(row[0], row[1], row[2])

    def _select(self, where: str = "", params: tuple = (), tail: str = "") -> list[Entry]:
        sql = f"SELECT {COLUMNS} FROM entries {where} {tail}"
        with self._lock:
            return [Entry(*row) for row in self._conn.execute(sql, params)]

    def get(self, entry_id: str) -> Entry | None:
        rows = self._select("WHERE entry_id = ?", (entry_id,))
        return rows[0] if rows else None

    def tail(self, n: int = 20) -> list[Entry]:
        """The last ``n`` entries, oldest first."""
        rows = self._select(tail="ORDER BY seq DESC LIMIT ?", params=(max(0, n),))
        rows.reverse()
        return rows

    def entries(self, since_ms: int | None = None, until_ms: int | None = None, *,
                chunk: int = 2000) -> Iterator[Entry]:
        """Every entry (``since_ms`` <= at_ms < ``until_ms``) in seq order, streamed in chunks so
        that no read transaction stays open between them."""
        conds, base = ["seq > ?"], []
        if since_ms is not None:
            conds.append("at_ms >= ?")
            base.append(since_ms)
        if until_ms is not None:
            conds.append("at_ms < ?")
            base.append(until_ms)
        where = "WHERE " + " AND ".join(conds)
        after = 0
        while True:
            rows = self._select(where, (after, *base), f"ORDER BY seq LIMIT {int(chunk)}")
            yield from rows
            if len(rows) < chunk:
                return
            after = rows[-1].seq

    def entries_for_card(self, card_id: str, since_ms: int | None = None,
                         until_ms: int | None = None) -> list[Entry]:
        """All entries of one card (hex id), in time order: the tracing question, asked locally."""
        lo = -(1 << 62) if since_ms is None else since_ms
        hi = 1 << 62 if until_ms is None else until_ms
        return self._select("WHERE card_id = ? AND at_ms >= ? AND at_ms < ?", (card_id.lower(), lo, hi),
                            "ORDER BY at_ms, seq")

    def entries_at(self, checkpoint_id: str, since_ms: int, until_ms: int) -> list[Entry]:
        """All entries at one checkpoint with since_ms <= at_ms < until_ms, in time order."""
        return self._select("WHERE checkpoint_id = ? AND at_ms >= ? AND at_ms < ?",
                            (checkpoint_id, since_ms, until_ms), "ORDER BY at_ms, seq")

    # ------------------------------------------------------------ recording

    def record(self, scan: Scan, verdict: Verdict, *, direction: str | None = None) -> RecordResult:
        """Commit the entry for one verified scan, durably, BEFORE anyone is shown the verdict.

        Anti-passback: an accepted card already admitted at this checkpoint in this direction
        within the window becomes a reject with reason ``duplicate`` (card facts kept) and is
        logged as such. Raises EntryLogWriteError if the commit fails; the entry then waits in the
        retry queue (``health()`` says "error") unless that queue is full.
        """
        draft = self._draft_scan(scan, verdict, direction)
        entry, final, duplicate = self._submit(draft)
        return RecordResult(final, entry, duplicate)

    def record_followup(self, entry_id: str, kind: str = "did_not_pass", *,
                        at: float | None = None) -> Entry:
        """A follow-up entry about an earlier one (e.g. "granted, did not pass"): a new link in the
        chain, never an update of the original. Idempotent: a second call returns the first."""
        if kind not in FOLLOWUP_KINDS:
            raise ValueError(f"unknown follow-up kind {kind!r}")
        at_s = time.time() if at is None else at
        draft = _Draft(str(uuid.uuid4()), round(at_s * 1000), self._clock_state(), None, None, None,
                       kind=kind, ref_entry_id=entry_id)
        with self._lock:
            if not any(d.entry_id == entry_id for d in self._queue) and self._surely_missing(entry_id):
                raise EntryLogError(f"no entry {entry_id} to follow up", code="unknown_entry")
        entry, _, _ = self._submit(draft)
        return entry

    def _surely_missing(self, entry_id: str) -> bool:
        """True if the entry is certainly not in the file (False when the file cannot be read now:
        then the follow-up is queued and its commit decides)."""
        try:
            row = self._conn.execute("SELECT 1 FROM entries WHERE entry_id = ?", (entry_id,)).fetchone()
        except sqlite3.Error:
            return False
        return row is None

    def _clock_state(self) -> str:
        st = self._clock()
        return st if st in clockmod.STATES else clockmod.UNKNOWN

    def _draft_scan(self, scan: Scan, verdict: Verdict, direction: str | None) -> _Draft:
        if self.device_id is None or self.checkpoint_id is None:
            raise EntryLogError("device_id and checkpoint_id must be configured to record entries",
                                code="log_not_configured")
        direction = direction or scan.direction
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        entry_id = str(uuid.uuid4())
        card = verdict.card
        sealed = None
        if card is not None and self.holder_details == "sealed":
            sealed = self._sealer.seal(card.holder, entry_id)
        return _Draft(entry_id, round(scan.at * 1000), self._clock_state(), direction, scan.source,
                      scan.source_id, verdict, card.card_id.hex() if card is not None else None, sealed)

    def _submit(self, draft: _Draft) -> tuple[Entry, Verdict | None, bool]:
        with self._lock:
            if self._queue:
                try:
                    self._flush_locked()
                except EntryLogWriteError as exc:
                    self._enqueue(draft, exc.code, str(exc))
            try:
                return self._commit(draft)
            except sqlite3.Error as exc:
                code = _write_error_code(exc)
                if code is None:
                    raise
                self._enqueue(draft, code, str(exc))

    def _enqueue(self, draft: _Draft, code: str, detail: str) -> None:
        """Keep the draft for the retry loop and raise the typed error (never a silent drop). A
        scan is kept as what its person was shown: refused, with the failure as the reason."""
        self._write_problem, self._write_detail = code, detail
        draft = _refused(draft, code, detail)
        if len(self._queue) >= self.retry_queue_max:
            self._write_problem = "log_queue_full"
            log.error("entry log: retry queue full (%d); entry %s NOT recorded (%s)",
                      len(self._queue), draft.entry_id, code)
            raise EntryLogWriteError(f"entry log retry queue full ({len(self._queue)}): entry NOT "
                                     f"recorded; last error: {detail}", code="log_queue_full",
                                     entry_id=draft.entry_id, queued=False)
        self._queue.append(draft)
        log.error("entry log: commit failed (%s); entry %s queued for retry (%d waiting)",
                  code, draft.entry_id, len(self._queue))
        raise EntryLogWriteError(f"entry log commit failed ({code}): {detail}; entry kept for retry",
                                 code=code, entry_id=draft.entry_id, queued=True)

    def _commit(self, d: _Draft) -> tuple[Entry, Verdict | None, bool]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if d.kind is None:
                entry_fields, verdict, duplicate = self._scan_fields(conn, d)
            else:
                existing = conn.execute(f"SELECT {COLUMNS} FROM entries WHERE ref_entry_id = ? AND kind = ?",
                                        (d.ref_entry_id, d.kind)).fetchone()
                if existing is not None:
                    conn.execute("ROLLBACK")
                    return Entry(*existing), None, False
                entry_fields, verdict, duplicate = self._followup_fields(conn, d), None, False
            last = conn.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
            if last is None:
                a = self._anchor(conn)
                last = (a.seq, a.hash)
            entry = Entry(last[0] + 1, prev_hash=last[1], sealed=d.sealed, **entry_fields)
            object.__setattr__(entry, "hash", entry_hash(entry))  # frozen: set once, before anyone sees it
            conn.execute(INSERT_SQL, entry_row(entry))
            conn.execute("COMMIT")
        except BaseException:
            self._rollback(conn)
            raise
        self._check_disk()
        return entry, verdict, duplicate

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error as exc:  # SQLite may already have rolled back after an I/O error
                log.warning("entry log: rollback after a failed write: %s", exc)

    def _scan_fields(self, conn: sqlite3.Connection, d: _Draft) -> tuple[dict, Verdict, bool]:
        v = d.verdict
        duplicate = False
        if v.accepted and d.card_id is not None and self.passback_window_ms > 0:
            w = self.passback_window_ms
            row = conn.execute(PASSBACK_SQL, (d.card_id, d.at_ms - w, d.at_ms + w, self.checkpoint_id,
                                              d.direction)).fetchone()
            if row is not None:
                duplicate = True
                ago = (d.at_ms - row[0]) / 1000
                v = reject(Reason.DUPLICATE, f"admitted {d.direction} at this checkpoint {ago:.0f} s ago "
                           f"(anti-passback window {w // 1000} s)", v.format, v.kid, v.card)
        card = v.card
        return ({
            "entry_id": d.entry_id, "device_id": self.device_id, "checkpoint_id": self.checkpoint_id,
            "direction": d.direction, "at_ms": d.at_ms, "clock": d.clock, "source": d.source,
            "source_id": d.source_id, "decision": str(v.decision), "reason": str(v.reason),
            "format": v.format, "card_id": d.card_id, "issuer": card.issuer if card is not None else None,
            "kid": _b64(card.kid if card is not None else v.kid),
        }, v, duplicate)

    def _followup_fields(self, conn: sqlite3.Connection, d: _Draft) -> dict:
        row = conn.execute(f"SELECT {COLUMNS} FROM entries WHERE entry_id = ?", (d.ref_entry_id,)).fetchone()
        if row is None:
            raise EntryLogError(f"no entry {d.ref_entry_id} to follow up", code="unknown_entry")
        o = Entry(*row)
        if o.is_followup:
            raise EntryLogError("a follow-up cannot be followed up", code="unknown_entry")
        if d.kind == "did_not_pass" and not o.accepted:
            raise EntryLogError(f"entry {o.entry_id} was not accepted; nothing to cancel", code="not_admitted")
        return {
            "entry_id": d.entry_id, "device_id": self.device_id or o.device_id,
            "checkpoint_id": o.checkpoint_id, "direction": o.direction, "at_ms": d.at_ms,
            "clock": d.clock, "source": o.source, "source_id": o.source_id, "decision": o.decision,
            "reason": o.reason, "format": o.format, "card_id": o.card_id, "issuer": o.issuer,
            "kid": o.kid, "kind": d.kind, "ref_entry_id": o.entry_id,
        }

    # ------------------------------------------------------------ retry queue

    def queued(self) -> int:
        with self._lock:
            return len(self._queue)

    def flush_pending(self) -> int:
        """Commit the queued entries, oldest first; returns how many. Raises EntryLogWriteError
        (and keeps the rest queued) if the disk still fails."""
        with self._lock:
            return self._flush_locked()

    def _flush_locked(self) -> int:
        n = 0
        while self._queue:
            draft = self._queue[0]
            try:
                self._commit(draft)
            except sqlite3.Error as exc:
                code = _write_error_code(exc)
                if code is None:
                    raise
                self._write_problem, self._write_detail = code, str(exc)
                if code == "io_error":
                    self._reconnect()
                raise EntryLogWriteError(f"entry log retry failed ({code}): {exc}", code=code,
                                         entry_id=draft.entry_id, queued=True) from None
            except EntryLogError as exc:  # e.g. the original of a follow-up is gone: report it loudly
                log.error("entry log: queued %s %s cannot be committed: %s", draft.kind or "entry",
                          draft.entry_id, exc)
            self._queue.popleft()
            n += 1
        self._write_problem, self._write_detail = None, ""
        self._flushed.notify_all()
        return n

    def _reconnect(self) -> None:
        """After an I/O error SQLite may need a fresh file handle (e.g. a remounted card)."""
        try:
            conn = sqlite3.connect(str(self.path), timeout=self.busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            self._configure(conn)
        except (sqlite3.Error, EntryLogError) as exc:
            log.warning("entry log: reopening %s failed: %s", self.path, exc)
            return
        old, self._conn = self._conn, conn
        old.close()

    def wait_flushed(self, timeout: float | None = None) -> bool:
        """Block until the retry queue is empty (True) or ``timeout`` passes (False)."""
        with self._flushed:
            return self._flushed.wait_for(lambda: not self._queue, timeout)

    def retry_loop(self, stop: threading.Event, interval_s: float = 1.0) -> None:
        """Run until ``stop`` is set: flush the retry queue and re-check the disk every interval.
        Meant for a thread of the daemon: ``threading.Thread(target=log.retry_loop, args=(ev,))``."""
        while not stop.wait(interval_s):
            self._check_disk(force=True)
            if self.queued():
                try:
                    self.flush_pending()
                except EntryLogWriteError as exc:
                    log.warning("entry log: still failing (%s); %d entries waiting", exc.code, self.queued())

    # ------------------------------------------------------------ health

    def _check_disk(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._disk_checked < 5.0:
            return
        self._disk_checked = now
        try:
            self._free_bytes = shutil.disk_usage(self.path.parent).free
        except OSError as exc:
            log.warning("entry log: cannot read free disk space: %s", exc)
            self._free_bytes = None

    def health(self) -> Health:
        """ok / warning (free disk below the threshold) / error (commits failing, entries queued)."""
        with self._lock:
            self._check_disk(force=True)
            problems = []
            if self._write_problem is not None:
                problems.append(self._write_problem)
            low = self._free_bytes is not None and self._free_bytes < self.min_free_bytes
            if low:
                problems.append("low_disk")
            if self._write_problem is not None or self._queue:
                state = "error"
            elif low:
                state = "warning"
            else:
                state = "ok"
            detail = self._write_detail
            if low and not detail:
                detail = f"free disk {self._free_bytes // MIB} MiB < {self.min_free_bytes // MIB} MiB"
            return Health(state, tuple(problems), len(self._queue), self._free_bytes, detail)

    # ------------------------------------------------------------ sync side

    def pending(self, after_seq: int = 0, limit: int = 500) -> list[Entry]:
        """Entries not yet in a sync batch with seq > ``after_seq``, in seq order (with the sealed
        blobs: this is what the sync side uploads)."""
        return self._select("WHERE batch_id IS NULL AND seq > ?", (after_seq,),
                            f"ORDER BY seq LIMIT {max(0, int(limit))}")

    def backlog(self) -> tuple[int, int | None]:
        """(entries not yet synced, at_ms of the oldest of them): cheap enough for a health check
        every few seconds (both answered from the partial index of unsynced entries)."""
        with self._lock:
            n = self._conn.execute("SELECT count(*) FROM entries WHERE batch_id IS NULL").fetchone()[0]
            row = self._conn.execute("SELECT at_ms FROM entries WHERE batch_id IS NULL ORDER BY seq LIMIT 1"
                                     ).fetchone()
        return n, row[0] if row else None

    def mark_synced(self, batch_id: str, first_seq: int, last_seq: int) -> int:
        """Record that the server has the contiguous run first_seq..last_seq in ``batch_id``.

        Idempotent (marking the same run with the same batch again changes nothing, returns 0).
        Refuses (EntryLogError "sync_conflict") a run with missing entries or entries already in
        another batch, marking nothing. Returns how many entries were newly marked. Writes in
        transactions of at most MARK_CHUNK entries, so a scan's commit never waits behind the
        marking of a whole batch (5,000 entries: 10-18 ms here); a crash between two of them
        leaves the rest pending until the next contact marks them from the server's batch list.
        The marks are committed with synchronous=NORMAL: they need no fsync of their own (the next
        scan's commit or checkpoint makes them durable), and one lost to a power cut is learned
        again from that same list.
        """
        if not batch_id or not isinstance(batch_id, str):
            raise ValueError("batch_id must be non-empty text")
        if first_seq < 1 or last_seq < first_seq:
            raise ValueError("need 1 <= first_seq <= last_seq")
        with self._lock:
            self._check_run(self._conn, batch_id, first_seq, last_seq)  # the whole run first: all or nothing
        marked = 0
        for lo in range(first_seq, last_seq + 1, MARK_CHUNK):
            hi = min(last_seq, lo + MARK_CHUNK - 1)
            with self._lock:
                conn = self._conn
                conn.execute("PRAGMA synchronous = NORMAL")
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        self._check_run(conn, batch_id, lo, hi)  # unchanged since? (another process may mark)
                        cur = conn.execute("UPDATE entries SET batch_id = ? WHERE seq BETWEEN ? AND ? "
                                           "AND batch_id IS NULL", (batch_id, lo, hi))
                        conn.execute("COMMIT")
                    except BaseException:
                        self._rollback(conn)
                        raise
                finally:
                    conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            marked += cur.rowcount
        return marked

    @staticmethod
    def _check_run(conn: sqlite3.Connection, batch_id: str, first_seq: int, last_seq: int) -> None:
        n, unsynced, same = conn.execute(
            "SELECT count(*), total(batch_id IS NULL), total(batch_id = ?) FROM entries "
            "WHERE seq BETWEEN ? AND ?", (batch_id, first_seq, last_seq)).fetchone()
        if n != last_seq - first_seq + 1:
            raise EntryLogError(f"seq {first_seq}..{last_seq}: {last_seq - first_seq + 1 - n} entries "
                                "missing", code="sync_conflict")
        if int(unsynced) + int(same) != n:
            raise EntryLogError(f"seq {first_seq}..{last_seq}: some entries are already in another "
                                "batch", code="sync_conflict")

    # ------------------------------------------------------------ counting

    def day_bounds(self, now: float | None = None) -> tuple[int, int, str]:
        """[start, end) of the local day containing ``now`` in epoch ms, and its date."""
        now = time.time() if now is None else now
        local = dt.datetime.fromtimestamp(now, self.tz) if self.tz else dt.datetime.fromtimestamp(now).astimezone()
        day = local.date()
        start = dt.datetime.combine(day, dt.time(0), tzinfo=local.tzinfo)
        end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=local.tzinfo)
        if self.tz is None:  # re-resolve the offset at each midnight (DST)
            start = dt.datetime.combine(day, dt.time(0)).astimezone()
            end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0)).astimezone()
        return int(start.timestamp() * 1000), int(end.timestamp() * 1000), day.isoformat()

    def totals(self, checkpoint_id: str | None = None, *, now: float | None = None,
               all_checkpoints: bool = False) -> Totals:
        """Today's (local day) totals at ``checkpoint_id`` (default: this device's checkpoint)."""
        cp = None if all_checkpoints else (checkpoint_id or self.checkpoint_id)
        start, end, day = self.day_bounds(now)
        where = "at_ms >= ? AND at_ms < ?" + (" AND checkpoint_id = ?" if cp is not None else "")
        params: tuple = (start, end) + ((cp,) if cp is not None else ())
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN")  # one snapshot for all the counts
            try:
                rows = conn.execute(f"SELECT kind, decision, reason, count(*) FROM entries WHERE {where} "
                                    "GROUP BY kind, decision, reason", params).fetchall()
                admitted = dict(conn.execute(
                    f"SELECT e.direction, count(*) FROM entries e WHERE {where.replace('at_ms', 'e.at_ms').replace('checkpoint_id', 'e.checkpoint_id')} "
                    "AND e.kind IS NULL AND e.decision = 'accept' AND NOT EXISTS (SELECT 1 FROM entries f "
                    "WHERE f.ref_entry_id = e.entry_id AND f.kind = 'did_not_pass') GROUP BY e.direction",
                    params).fetchall())
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
            else:
                rejected += n
                if reason == "duplicate":
                    duplicates += n
        a_in, a_out = admitted.get("in", 0), admitted.get("out", 0)
        return Totals(cp, day, scans, accepted, rejected, duplicates, a_in, a_out, did_not_pass,
                      max(0, a_in - a_out), dict(sorted(by_reason.items())))

    def occupancy(self, checkpoint_id: str | None = None, *, now: float | None = None) -> int:
        """People inside now: admitted in − admitted out today (local day), never negative.
        Entries cancelled by a "did_not_pass" follow-up and duplicates do not count."""
        return self.totals(checkpoint_id, now=now).occupancy

    def checkpoints(self, since_ms: int | None = None) -> list[str]:
        with self._lock:
            if since_ms is None:
                return [r[0] for r in self._conn.execute("SELECT DISTINCT checkpoint_id FROM entries ORDER BY 1")]
            return [r[0] for r in self._conn.execute(
                "SELECT DISTINCT checkpoint_id FROM entries WHERE at_ms >= ? ORDER BY 1", (since_ms,))]

    # ------------------------------------------------------------ retention

    def purge(self, retention_days: int | None = None, *, now: float | None = None,
              dry_run: bool = False) -> PurgeResult:
        """Delete SYNCED entries older than the retention; unsynced entries are never deleted.

        Only a prefix of the chain is deleted (up to the first entry that is unsynced or recent),
        and the hash of the last deleted entry is kept as the chain anchor, so the rest still
        verifies (docs/entry-log.md#retention).
        """
        days = self.retention_days if retention_days is None else retention_days
        if days < 0:
            raise ValueError("retention_days must be >= 0")
        now = time.time() if now is None else now
        cutoff = int(now * 1000) - days * DAY_MS
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN" if dry_run else "BEGIN IMMEDIATE")
            try:
                stop = conn.execute("SELECT seq FROM entries WHERE batch_id IS NULL OR at_ms >= ? "
                                    "ORDER BY seq LIMIT 1", (cutoff,)).fetchone()
                if stop is None:
                    last = conn.execute("SELECT max(seq) FROM entries").fetchone()[0]
                    stop_seq = (last or 0) + 1
                else:
                    stop_seq = stop[0]
                victim = conn.execute("SELECT seq, hash FROM entries WHERE seq < ? ORDER BY seq DESC LIMIT 1",
                                      (stop_seq,)).fetchone()
                unsynced = conn.execute("SELECT count(*) FROM entries WHERE batch_id IS NULL").fetchone()[0]
                anchor = self._anchor(conn)
                if victim is None:
                    conn.execute("ROLLBACK")
                    return PurgeResult(0, anchor.seq, cutoff, unsynced, dry_run)
                n = conn.execute("SELECT count(*) FROM entries WHERE seq < ?", (stop_seq,)).fetchone()[0]
                if dry_run:
                    conn.execute("ROLLBACK")
                    return PurgeResult(n, victim[0], cutoff, unsynced, True)
                conn.execute("DELETE FROM entries WHERE seq < ?", (stop_seq,))
                conn.execute("INSERT INTO chain_anchor (id, seq, hash, purged, at_ms) VALUES (1, ?, ?, ?, ?) "
                             "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, "
                             "purged = excluded.purged, at_ms = excluded.at_ms",
                             (victim[0], victim[1], anchor.purged + n, int(now * 1000)))
                conn.execute("COMMIT")
            except BaseException:
                self._rollback(conn)
                raise
            # give the space back and drop the deleted rows from the WAL as well
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            conn.execute("PRAGMA incremental_vacuum").fetchall()
            log.info("entry log: purged %d synced entries older than %d days (anchor seq %d)", n, days, victim[0])
            return PurgeResult(n, victim[0], cutoff, unsynced)

    # ------------------------------------------------------------ verification, stats

    def verify(self) -> ChainReport:
        """Check the whole chain kept in the file: continuity from the anchor, links and hashes."""
        with self._lock:
            anchor = self._anchor(self._conn)
        report = verify_chain(self.entries(), anchor)
        if not report.ok and self.anchor() != anchor:  # a purge ran meanwhile: check again from its anchor
            report = verify_chain(self.entries(), self.anchor())
        return report

    def integrity_check(self) -> str:
        with self._lock:
            return "; ".join(r[0] for r in self._conn.execute("PRAGMA integrity_check"))

    def stats(self, *, now: float | None = None) -> Stats:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN")
            try:
                n, first, last, oldest, newest, sealed = conn.execute(
                    "SELECT count(*), min(seq), max(seq), min(at_ms), max(at_ms), count(sealed) FROM entries"
                ).fetchone()
                unsynced = conn.execute("SELECT count(*) FROM entries WHERE batch_id IS NULL").fetchone()[0]
                anchor = self._anchor(conn)
                version = conn.execute("PRAGMA user_version").fetchone()[0]
            finally:
                conn.execute("COMMIT")
            start, _, _ = self.day_bounds(now)
            today = tuple(self.totals(cp, now=now) for cp in self.checkpoints(start))
            size = 0
            for suffix in ("", "-wal"):
                with contextlib.suppress(FileNotFoundError):
                    size += os.path.getsize(str(self.path) + suffix)
            health = self.health()
        return Stats(str(self.path), version, size, health.free_bytes, n, unsynced, n - unsynced, first, last,
                     oldest, newest, sealed, n - sealed, self.holder_details, self.holder_details_note,
                     anchor.seq, anchor.purged, self.synchronous, health, today)
