"""The entry log: every scan committed durably to SQLite before its verdict is shown.

`EntryLog` is the facade over one SQLite file in the device's state directory: it records scans
and follow-ups in a per-device hash chain, each scan with the admission decided inside the same
transaction (``admission``: degraded mode, anti-passback), answers the sync side and the reads,
and hands the rest to its parts: the file and its migrations (``schema``), the retry queue
(``retry``), disk space and health (``disk``), totals and stats (``reports``) and retention
(``retention``). Spec: docs/entry-log.md.
"""
from __future__ import annotations

import binascii
import contextlib
import datetime as dt
import logging
import operator
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, Self, TypeVar

from scanner.base.lazy import lazy_module
from scanner.base.timeutil import DAY_MS
from scanner.cards.scan import DIRECTIONS, Scan
from scanner.cards.verdict import Verdict
from scanner.store import clock as clockmod
from scanner.store import disk, reports, retention, schema, synced
from scanner.store.admission import Admission, Conditions, Previous, admit
from scanner.store.disk import MIB, Health
from scanner.store.entry import (
    FOLLOWUP_KINDS,
    LINK_FIELDS,
    Anchor,
    ChainReport,
    Entry,
    link,
    new_entry_sha256,
    sealed_digest,
    verify_chain,
)
from scanner.store.errors import EntryLogError, EntryLogWriteError, write_error_code
from scanner.store.reports import Stats, Totals
from scanner.store.retention import PurgeResult
from scanner.store.retry import Draft, FollowupDraft, RetryQueue, ScanDraft
from scanner.store.schema import (
    COLUMNS,
    INSERT_SQL,
    SYNC_MODES,
    entry_row,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    from scanner.store import sealing
else:  # loaded with the first sealing key: a process that only reads the log (the batch builder) needs no OpenSSL
    sealing = lazy_module("scanner.store.sealing")

# the log's public API: EntryLog and the types its methods take, return and raise
__all__ = ["EntryLog", "EntryLogError", "EntryLogWriteError", "Health", "PurgeResult", "RecordResult", "Stats",
           "Totals"]

log = logging.getLogger(__name__)
D = TypeVar("D", ScanDraft, FollowupDraft)
R = TypeVar("R")

HOLDER_MODES = ("sealed", "none")
# "auto": SQLite checkpoints the WAL inside the commit that takes it past 1000 pages (whichever
# connection's that is); "idle": never inside a commit, the owner calls checkpoint_when_idle
CHECKPOINT_MODES = ("auto", "idle")
CHECKPOINT_COMMITS = 200  # an idle checkpoint after this many commits of this log (~1000 pages, SQLite's own)
# The page cache of a connection to the log, KiB. SQLite's default (2 MiB) fills slowly as the log grows, a
# new high-water mark whenever a stretch without other writers lets it (each of their commits empties it):
# a daemon growing for hours. A scan touches a handful of pages (the upper levels of the table and its
# indexes, the latest leaves), which 1 MiB holds, reached within the first minutes; the connections that
# read the log now and then (the sync agent's, the batch builder's, the idle checkpoints') keep less.
CACHE_KIB = 1024
SIDE_CACHE_KIB = 256
CHECKPOINT_QUIET_S = 0.02  # ... while no commit of it is in flight and none ended this recently (between scans)
CHECKPOINT_MAX_COMMITS = 1600  # ... or, between scans or not, after this many
RESTART_WAIT_S = 0.05  # the longest the checkpoint waits for the lane's commit to end (the tick must go on)
# A checkpoint that finds the WAL this long since it last started over (frames of 4 KB pages, ~16 MB)
# finishes with the lane held between two scans: SQLite starts a WAL over only at a write that begins
# after a checkpoint has copied every commit, which under back-to-back scans never happens otherwise
WAL_RESTART_FRAMES = 4000
# The lane's log has its WAL file written (zeros) this far ahead at open: a commit then writes over
# blocks the file system holds already, and its fsync waits for no kernel worker to turn newly
# allocated blocks into written ones (docs/benchmarks.md#sync). ~16 MB, the length it starts over at.
WAL_AHEAD_BYTES = WAL_RESTART_FRAMES * (4096 + 24)
NO_SEALING_KEY = "no sealing key configured"  # holder_details_note when "sealed" was asked for without a key

# The write transactions of one log file in this process (the lane's log, the sync agent's own, the
# supervisor's purge) queue on one lock: the one waiting is woken the moment the other ends. Left to
# SQLite's busy handler it would sleep 1 ms, then 2, then 5, however short the other's transaction:
# the scan lane's tail during an upload. Other processes' writers still meet the busy handler.
_WRITERS: dict[str, threading.RLock] = {}
_WRITERS_GUARD = threading.Lock()


def _writer_lock(path: Path) -> threading.RLock:
    """The lock of this process's write transactions on the file at ``path`` (one per real path)."""
    key = os.path.realpath(path)
    with _WRITERS_GUARD:
        return _WRITERS.setdefault(key, threading.RLock())


WRITER_BUSY = "database is locked (by another writer in this process)"


def _take(writer: threading.RLock, timeout_s: float) -> None:
    """Wait for ``writer`` as long as SQLite's busy handler would wait for the file's lock."""
    if not writer.acquire(timeout=timeout_s):
        raise sqlite3.OperationalError(WRITER_BUSY)

# The last admission of a card at a checkpoint in a direction, not cancelled by a follow-up.
# `+e.checkpoint_id`: probe the card's index (a handful of rows), never the checkpoint's (every scan
# there in the window: SQLite picked that one, tests/test_entrylog.py checks the plan)
PASSBACK_SQL = (
    "SELECT e.entry_id, e.at_ms FROM entries e WHERE e.card_id = ? AND e.at_ms >= ? AND e.at_ms <= ? "
    "AND +e.checkpoint_id = ? AND e.direction = ? AND e.kind IS NULL AND e.decision = 'accept' "
    "AND NOT EXISTS (SELECT 1 FROM entries f WHERE f.ref_entry_id = e.entry_id "
    "AND f.kind = 'did_not_pass') ORDER BY e.at_ms DESC LIMIT 1")
# changes when another connection has committed to the file since this one last looked (SQLite's count)
DATA_VERSION_SQL = "PRAGMA data_version"


@dataclass(frozen=True, slots=True)
class RecordResult:
    """The admission decided for a scan and the entry that records it."""

    admission: Admission
    entry: Entry

    @property
    def verdict(self) -> Verdict:
        """The final verdict: what is shown (an accept may have become a reject, e.g. ``duplicate``)."""
        return self.admission.verdict

    @property
    def duplicate(self) -> bool:
        return self.admission.duplicate

    @property
    def flags(self) -> tuple[str, ...]:
        """The degraded flags the verdict was decided with."""
        return self.admission.flags


def new_entry_id() -> str:
    """A random (version 4) UUID as text, as str(uuid.uuid4()) writes it, without making a UUID
    object (a scan's hot path)."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


_link_values = operator.itemgetter(*LINK_FIELDS)  # a dict of a new entry's fields as `link` takes them
_CLOCK_STATES = frozenset(clockmod.STATES)
_new_object = object.__new__
_new_tuple = tuple.__new__
_b64 = binascii.b2a_base64  # base64.b64encode's C part
# RecordResult's slot setters: a scan's result is filled through them (its frozen __init__ sets each
# field with object.__setattr__)
_set_admission, _set_entry = (getattr(RecordResult, name).__set__ for name in ("admission", "entry"))


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
                 tz: dt.tzinfo | None = None, create: bool = True, wal_checkpoints: str = "auto",
                 cache_kib: int | None = CACHE_KIB) -> None:
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
        if sealing_key is not None:
            sealing_key = sealing.load_public_key(sealing_key)  # a key, PEM, raw 32 bytes or a file
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
        self._clock = clock if clock is not None else clockmod.CachedState()  # the kernel's, read once a second
        self.tz = tz
        self._lock = threading.RLock()
        self._writer = _writer_lock(self.path)  # taken inside self._lock, never the other way round
        self._retry = RetryQueue(retry_queue_max, self._lock)
        self._disk = disk.DiskSpace(self.path.parent)
        self._max_db_bytes = max_db_bytes
        self._head: tuple[int, bytes] | None = None  # seq and hash of the last entry this log committed
        self._data_version: int | None = None  # DATA_VERSION_SQL in this log's last write transaction
        self._committed_at = 0.0  # monotonic time of this log's last scan commit
        if wal_checkpoints not in CHECKPOINT_MODES:
            raise ValueError(f"wal_checkpoints must be one of {CHECKPOINT_MODES}")
        self.wal_checkpoints = wal_checkpoints
        self.cache_kib = cache_kib  # this connection's page cache, KiB (None: SQLite's default)
        self._checkpointer: sqlite3.Connection | None = None  # the idle checkpoints' own connection
        self._checkpoint_lock = threading.Lock()
        self._commits = 0  # this log's commits since its last idle checkpoint
        self._restart_due = False  # the WAL is long and a reader kept it from starting over: try again next tick
        self._in_flight = False  # a commit of this log is under way
        self._conn = schema.connect(self.path, create=create, busy_timeout_s=busy_timeout_s,
                                    synchronous=synchronous, max_db_bytes=max_db_bytes,
                                    autocheckpoint=wal_checkpoints == "auto", cache_kib=cache_kib)
        self._disk.check(force=True)
        if wal_checkpoints == "idle":
            self._write_wal_ahead()

    @property
    def retry_queue_max(self) -> int:
        return self._retry.max_len

    def set_max_db_bytes(self, limit: int | None) -> None:
        """Cap the database file size (None: no cap). Writes beyond it fail like a full disk."""
        with self._lock:
            self._max_db_bytes = limit
            schema.apply_page_limit(self._conn, limit)

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

    def release_memory(self) -> None:
        """Free this connection's page cache (SQLite's shrink_memory): for a process that reads the
        log now and then and should hold nothing of it in between (the batch builder)."""
        with self._lock:
            self._conn.execute("PRAGMA shrink_memory")

    def close(self) -> None:
        with self._checkpoint_lock:
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None
        with self._lock:
            self._conn.close()
        if self._sealer is not None:
            self._sealer.rotate()  # drop the session key with the log

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ small reads

    def schema_version(self) -> int:
        with self._lock:
            return self._conn.execute("PRAGMA user_version").fetchone()[0]

    def anchor(self) -> Anchor:
        with self._lock:
            return schema.read_anchor(self._conn)

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

    def record(self, scan: Scan, verdict: Verdict, *, direction: str | None = None,
               conditions: Conditions | None = None) -> RecordResult:
        """Decide the admission of one verified scan and commit its entry, durably, in one
        transaction, BEFORE anyone is shown the verdict.

        ``conditions``: the policy, trust age and clock status the verdict is judged under (fail
        open or closed; default: none degrade it, judged at the scan's time). Anti-passback: an
        accepted card already admitted at this checkpoint in this direction within the window
        becomes a reject with reason ``duplicate`` (card facts kept) and is logged as such.
        Raises EntryLogWriteError if the commit fails; the entry then waits in the retry queue
        (``health()`` says "error") unless that queue is full.
        """
        if self.device_id is None or self.checkpoint_id is None:
            raise EntryLogError("device_id and checkpoint_id must be configured to record entries",
                                code="log_not_configured")
        direction = direction or scan.direction
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        # the draft, made before the write lock (a scan's hot path: no method per step)
        entry_id = new_entry_id()
        card = verdict.card
        sealed = digest = None
        if card is not None and self.holder_details == "sealed" and self._sealer is not None:
            sealed = self._sealer.seal(card.holder, entry_id)
            digest = sealed_digest(sealed, new_entry_sha256)
        clock = self._clock()
        draft = _new_tuple(ScanDraft, (  # what ScanDraft(...) makes, without its __new__ in Python
            entry_id, self.device_id, self.checkpoint_id, direction, round(scan.at * 1000),
            clock if clock in _CLOCK_STATES else clockmod.UNKNOWN, scan.source, scan.source_id, verdict,
            conditions or Conditions(scan.at), card.card_id.hex() if card is not None else None, sealed, digest))
        with self._lock:
            if self._retry.drafts:  # queued ones first
                return self._submit(draft, self._commit_scan)
            # what _submit does when nothing is queued, written out (a scan's hot path: a frame less)
            self._in_flight = True
            try:
                return self._commit_scan(draft)
            except sqlite3.Error as exc:
                self._keep(draft, exc)
            finally:
                self._in_flight = False

    def record_followup(self, entry_id: str, kind: str = "did_not_pass", *,
                        at: float | None = None) -> Entry:
        """A follow-up entry about an earlier one (e.g. "granted, did not pass"): a new link in the
        chain, never an update of the original. Idempotent: a second call returns the first."""
        if kind not in FOLLOWUP_KINDS:
            raise ValueError(f"unknown follow-up kind {kind!r}")
        at_s = time.time() if at is None else at
        clock = self._clock()
        draft = FollowupDraft(new_entry_id(), round(at_s * 1000), clock if clock in _CLOCK_STATES else clockmod.UNKNOWN,
                              kind, entry_id)
        with self._lock:
            if not self._retry.holds(entry_id) and self._surely_missing(entry_id):
                raise EntryLogError(f"no entry {entry_id} to follow up", code="unknown_entry")
        return self._submit(draft, self._commit_followup)

    def _surely_missing(self, entry_id: str) -> bool:
        """True if the entry is certainly not in the file (False when the file cannot be read now:
        then the follow-up is queued and its commit decides)."""
        try:
            row = self._conn.execute("SELECT 1 FROM entries WHERE entry_id = ?", (entry_id,)).fetchone()
        except sqlite3.Error:
            return False
        return row is None

    def _submit(self, draft: D, commit: Callable[[D], R]) -> R:
        """Commit ``draft`` after the queued ones, or keep it in the retry queue and raise (`record`
        writes this out for a scan when nothing is queued)."""
        with self._lock:
            self._in_flight = True
            try:
                if self._retry.drafts:
                    try:
                        self._flush_locked()
                    except EntryLogWriteError as exc:
                        self._retry.keep(draft, exc.code, str(exc))
                try:
                    return commit(draft)
                except sqlite3.Error as exc:
                    self._keep(draft, exc)
            finally:
                self._in_flight = False

    def _keep(self, draft: Draft, exc: sqlite3.Error) -> NoReturn:
        """A draft whose commit failed: kept in the retry queue if the failure is a write error that
        can pass (RetryQueue.keep then raises), else ``exc`` raised as it is."""
        code = write_error_code(exc)
        if code is None:
            raise exc
        self._retry.keep(draft, code, str(exc))

    def _commit(self, d: Draft) -> object:
        """Commit a draft of either kind (what the retry queue calls)."""
        return self._commit_scan(d) if isinstance(d, ScanDraft) else self._commit_followup(d)

    def _commit_scan(self, d: ScanDraft) -> RecordResult:
        """One transaction: check the head kept in memory, look up the card's previous admission,
        decide, link, insert. A scan's hot path, written out in one method: right after an fsync
        (cold caches) each method call costs about a microsecond."""
        conn = self._conn
        writer = self._writer
        if not writer.acquire(timeout=self.busy_timeout_s):  # what _take does
            raise sqlite3.OperationalError(WRITER_BUSY)
        try:
            conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            writer.release()
            raise
        try:
            version = conn.execute(DATA_VERSION_SQL).fetchone()[0]  # what _check_head does
            if version != self._data_version:
                self._head, self._data_version = None, version
            # the card's last admission here in this direction within the anti-passback window (only
            # looked up for an accepted card, and not when the window is off)
            verdict, w, previous = d.verdict, self.passback_window_ms, None
            if w > 0 and verdict.accepted and d.card_id is not None:
                row = conn.execute(PASSBACK_SQL, (d.card_id, d.at_ms - w, d.at_ms + w, d.checkpoint_id,
                                                  d.direction)).fetchone()
                if row is not None:
                    previous = Previous(row[0], row[1], d.checkpoint_id, d.direction, w)
            decided = admit(verdict, d.direction, d.conditions, previous)
            verdict = decided.verdict
            card = verdict.card
            kid = card.kid if card is not None else verdict.kid
            values = d[:8] + (  # LINK_FIELDS, in order
                str(verdict.decision), str(verdict.reason), verdict.format, d.card_id,
                card.issuer if card is not None else None,
                None if kid is None else _b64(kid, newline=False).decode("ascii"), None, None)
            head = self._head
            entry = None
            if head is not None:  # what _append does first
                entry = link(head[0], head[1], values, d.sealed, d.sealed_sha256)
                try:
                    conn.execute(INSERT_SQL, entry_row(entry))
                except sqlite3.IntegrityError:
                    entry = self._head = None
            if entry is None:
                entry = self._append(conn, values, d.sealed)
            conn.execute("COMMIT")
        except BaseException:
            self._head = self._data_version = None
            schema.rollback(conn)
            raise
        finally:
            writer.release()
        self._head = entry.seq, entry.hash
        self._commits += 1
        self._committed_at = time.monotonic()
        result = _new_object(RecordResult)  # filled through its slots: what RecordResult(decided, entry) makes
        _set_admission(result, decided)
        _set_entry(result, entry)
        return result

    def _commit_followup(self, d: FollowupDraft) -> Entry:
        """One transaction: the follow-up already there (idempotent), or a new link after the original."""
        with self._write() as conn:
            self._check_head(conn)
            existing = conn.execute(f"SELECT {COLUMNS} FROM entries WHERE ref_entry_id = ? AND kind = ?",
                                    (d.ref_entry_id, d.kind)).fetchone()
            if existing is not None:
                return Entry(*existing)
            entry = self._append(conn, _link_values(self._followup_fields(conn, d)), None)
        self._head = entry.seq, entry.hash
        self._commits += 1
        return entry

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A BEGIN IMMEDIATE transaction on the log's connection: committed when the block ends,
        rolled back if it raises; this process's other writers of the file wait on its lock meanwhile."""
        conn, writer = self._conn, self._writer
        _take(writer, self.busy_timeout_s)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                self._head = self._data_version = None
                schema.rollback(conn)
                raise
        finally:
            writer.release()

    def _check_head(self, conn: sqlite3.Connection) -> None:
        """Inside a write transaction: drop the head kept in memory when another connection has
        committed since this log's last write. Its appends after the head make the insert hit their
        seq, but a purge may then have deleted them and left that seq free: an entry written there
        would follow the old head, before the anchor (a broken chain)."""
        version = conn.execute(DATA_VERSION_SQL).fetchone()[0]
        if version != self._data_version:
            self._head, self._data_version = None, version

    def _append(self, conn: sqlite3.Connection, values: tuple, sealed: bytes | None) -> Entry:
        """Insert the next link of the chain with ``values`` (LINK_FIELDS, in order): after the head
        this log wrote last (kept in memory: one query less per scan), or, if another connection has
        appended since (the insert then hits its seq), after the last entry in the file or the anchor."""
        head = self._head
        if head is not None:
            entry = link(head[0], head[1], values, sealed)
            try:
                conn.execute(INSERT_SQL, entry_row(entry))
                return entry
            except sqlite3.IntegrityError:
                self._head = None
        last = conn.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        if last is None:
            a = schema.read_anchor(conn)
            last = (a.seq, a.hash)
        entry = link(last[0], last[1], values, sealed)
        conn.execute(INSERT_SQL, entry_row(entry))
        return entry

    def _followup_fields(self, conn: sqlite3.Connection, d: FollowupDraft) -> dict:
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
            return len(self._retry)

    def flush_pending(self) -> int:
        """Commit the queued entries, oldest first; returns how many. Raises EntryLogWriteError
        (and keeps the rest queued) if the disk still fails."""
        with self._lock:
            return self._flush_locked()

    def _flush_locked(self) -> int:
        return self._retry.flush(self._commit, self._reconnect)

    def _reconnect(self) -> None:
        """After an I/O error SQLite may need a fresh file handle (e.g. a remounted card)."""
        try:
            conn = schema.reconnect(self.path, busy_timeout_s=self.busy_timeout_s, synchronous=self.synchronous,
                                    max_db_bytes=self._max_db_bytes, autocheckpoint=self.wal_checkpoints == "auto",
                                    cache_kib=self.cache_kib)
        except (sqlite3.Error, EntryLogError) as exc:
            log.warning("entry log: reopening %s failed: %s", self.path, exc)
            return
        old, self._conn = self._conn, conn
        self._head = self._data_version = None  # data_version is counted per connection
        old.close()

    def wait_flushed(self, timeout: float | None = None) -> bool:
        """Block until the retry queue is empty (True) or ``timeout`` passes (False)."""
        return self._retry.wait_empty(timeout)

    def retry_loop(self, stop: threading.Event, interval_s: float = 1.0) -> None:
        """Run until ``stop`` is set: flush the retry queue and re-check the disk every interval.
        Meant for a thread of the daemon: ``threading.Thread(target=log.retry_loop, args=(ev,))``."""
        while not stop.wait(interval_s):
            self._disk.check(force=True)
            if self.queued():
                try:
                    self.flush_pending()
                except EntryLogWriteError as exc:
                    log.warning("entry log: still failing (%s); %d entries waiting", exc.code, self.queued())

    # ------------------------------------------------------------ checkpoints

    def checkpoint_when_idle(self) -> int | None:
        """Copy the WAL into the database (a PASSIVE checkpoint on a connection of its own: it never
        waits for a writer or a reader, and the lane's commits go on meanwhile) once this log has
        committed CHECKPOINT_COMMITS entries since the last one, while none of its commits is in
        flight and none ended in the last CHECKPOINT_QUIET_S (the lane is between scans); or after
        CHECKPOINT_MAX_COMMITS whatever the lane does. With synchronous=NORMAL the WAL is synced
        only at checkpoints, so there CHECKPOINT_COMMITS is the limit either way: what a power cut
        can lose stays what it was with SQLite's own checkpoints. A WAL past WAL_RESTART_FRAMES
        is made to start over (_restart_wal), so it stays bounded under back-to-back scans too. The
        WAL is never truncated, so after a checkpoint the lane's commits overwrite it in place (an
        fsync of a file that grows also commits its new size). For a log opened with
        ``wal_checkpoints="idle"``, called from a thread other than the scan lane's (the appliance's
        supervisor, every tick). Returns the pages copied, or None when none was due."""
        commits = self._commits
        if not self._restart_due:
            if commits < CHECKPOINT_COMMITS:
                return None
            hard = CHECKPOINT_COMMITS if self.synchronous == "NORMAL" else CHECKPOINT_MAX_COMMITS
            if commits < hard and (self._in_flight or time.monotonic() - self._committed_at < CHECKPOINT_QUIET_S):
                return None
        with self._checkpoint_lock:
            self._commits = 0  # what is committed from now on is for the next one
            try:
                if self._checkpointer is None:
                    self._checkpointer = schema.reconnect(self.path, busy_timeout_s=self.busy_timeout_s,
                                                          synchronous=self.synchronous,
                                                          max_db_bytes=self._max_db_bytes, autocheckpoint=False,
                                                          cache_kib=SIDE_CACHE_KIB)
                _, frames, copied = self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if frames >= WAL_RESTART_FRAMES:
                    return self._restart_wal(self._checkpointer)
                self._restart_due = False
                return copied
            except sqlite3.Error as exc:  # the next tick tries again; the WAL keeps every commit meanwhile
                self._commits += commits
                log.warning("entry log: checkpoint failed: %s", exc)
                return None

    def _write_wal_ahead(self) -> None:
        """Write zeros into the WAL file from its end up to WAL_AHEAD_BYTES, inside a write transaction
        (no writer of any process appends meanwhile; readers never read past the frames they were
        given). SQLite takes a frame only with its salt and checksum, so the zeros are no frames.
        Not where it would leave less than min_free_bytes free, nor where it cannot (a full disk, a
        WAL that is not a plain file): the log goes on as before."""
        wal, size = f"{self.path}-wal", WAL_AHEAD_BYTES
        try:
            with self._lock, self._write():
                fd = os.open(wal, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO: no wait
                try:
                    st = os.fstat(fd)
                    end = st.st_size
                    if not stat.S_ISREG(st.st_mode):
                        raise OSError(f"{wal} is not a plain file")
                    free = self._disk.check(force=True)
                    if end >= size or free is None or free - (size - end) < self.min_free_bytes:
                        return
                    zeros = bytes(min(MIB, max(0, size - end)))
                    while end < size:
                        end += os.pwrite(fd, zeros[:size - end], end)
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
        except (OSError, sqlite3.Error) as exc:
            log.info("entry log: the WAL is not written ahead (%s)", exc)

    def _restart_wal(self, conn: sqlite3.Connection) -> int:
        """Let the WAL start over. SQLite does that at the first write that begins after a checkpoint
        has copied every commit; under back-to-back scans the lane's next commit has always begun
        before a PASSIVE one ends, and the WAL and its index (-shm, mapped by every connection)
        would grow for as long as the rush lasts. So a second PASSIVE checkpoint copies what the
        lane committed during the first, then a RESTART one the last few commits with the lane (and
        this process's other writers of the file) held between two scans (a copy of a few pages and two syncs),
        waiting for nothing else: a commit that holds the lock past RESTART_WAIT_S (waiting for
        another writer), another writer, or a reader still in the WAL makes it give up, and the
        next tick tries again. Returns the pages copied."""
        copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[2]
        if not self._lock.acquire(timeout=RESTART_WAIT_S):  # a commit waiting for another writer: next tick
            self._restart_due = True
            return copied
        try:
            # this process's other writers of the file (the sync agent's log) held off too
            if not self._writer.acquire(timeout=RESTART_WAIT_S):
                self._restart_due = True
                return copied
            try:
                conn.execute("PRAGMA busy_timeout = 0")
                busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            finally:
                self._writer.release()
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        finally:
            self._lock.release()
        self._restart_due = bool(busy)
        if busy:
            log.debug("entry log: the WAL could not start over (%d of %d pages copied)", copied, frames)
        return copied

    # ------------------------------------------------------------ health

    def health(self) -> Health:
        """ok / warning (free disk below the threshold) / error (commits failing, entries queued)."""
        with self._lock:
            free = self._disk.check(force=True)
            return disk.health(self._retry.problem, self._retry.detail, len(self._retry), free,
                               self.min_free_bytes)

    # ------------------------------------------------------------ sync side

    def pending(self, after_seq: int = 0, limit: int = 500) -> list[Entry]:
        """Entries the server does not hold yet with seq > ``after_seq``, in seq order (with the
        sealed blobs: this is what the sync side uploads)."""
        out: list[Entry] = []
        limit = max(0, int(limit))
        with self._lock:
            for lo, hi in synced.gaps(self._conn, after_seq):
                if len(out) >= limit:
                    break
                out += self._select("WHERE seq BETWEEN ? AND ?", (lo, hi if hi is not None else 1 << 62),
                                    f"ORDER BY seq LIMIT {limit - len(out)}")
        return out

    def backlog(self) -> tuple[int, int | None]:
        """(entries not yet synced, at_ms of the oldest of them): cheap enough for a health check
        every few seconds (what is pending lies in the few gaps between acknowledged spans)."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                return synced.unsynced(self._conn)
            finally:
                self._conn.execute("COMMIT")

    def mark_synced(self, batch_id: str, first_seq: int, last_seq: int) -> int:
        """Record that the server has the contiguous run first_seq..last_seq in ``batch_id``.

        Idempotent (marking the same run with the same batch again changes nothing and returns 0, from
        a read: no write transaction).
        Refuses (EntryLogError "sync_conflict") a run with missing entries or entries already in
        another batch, marking nothing. Returns how many entries were newly marked. The run's rows are
        counted before the write transaction; that one writes the run and its span
        (scanner/store/synced.py) after a few b-tree probes, whatever the run's size, so a scan's commit
        never waits behind the marking. It commits with synchronous=NORMAL: it
        needs no fsync of its own (the next scan's commit or checkpoint makes it durable), and a
        mark lost to a power cut is learned again from the server's batch list.
        """
        if not batch_id or not isinstance(batch_id, str):
            raise ValueError("batch_id must be non-empty text")
        if first_seq < 1 or last_seq < first_seq:
            raise ValueError("need 1 <= first_seq <= last_seq")
        with self._lock:
            conn = self._conn
            if synced.marked_by(conn, batch_id, first_seq, last_seq):  # marked already: nothing to write
                return 0
            synced.check_present(conn, first_seq, last_seq)  # the run's rows counted before the write lock is taken
            if self.synchronous != "NORMAL":
                conn.execute("PRAGMA synchronous = NORMAL")
            try:
                with self._write() as conn:
                    return synced.mark(conn, batch_id, first_seq, last_seq)
            finally:
                if self.synchronous != "NORMAL":
                    conn.execute(f"PRAGMA synchronous = {self.synchronous}")

    # ------------------------------------------------------------ counting

    def day_bounds(self, now: float | None = None) -> tuple[int, int, str]:
        """[start, end) of the local day containing ``now`` in epoch ms, and its date."""
        return reports.day_bounds(now, self.tz)

    def totals(self, checkpoint_id: str | None = None, *, now: float | None = None,
               all_checkpoints: bool = False) -> Totals:
        """Today's (local day) totals at ``checkpoint_id`` (default: this device's checkpoint)."""
        cp = None if all_checkpoints else (checkpoint_id or self.checkpoint_id)
        start, end, day = self.day_bounds(now)
        with self._lock:
            return reports.totals(self._conn, cp, start, end, day)

    def occupancy(self, checkpoint_id: str | None = None, *, now: float | None = None) -> int:
        """People inside now: admitted in − admitted out today (local day), never negative.
        Entries cancelled by a "did_not_pass" follow-up and duplicates do not count."""
        return self.totals(checkpoint_id, now=now).occupancy

    def checkpoints(self, since_ms: int | None = None) -> list[str]:
        with self._lock:
            return reports.checkpoints(self._conn, since_ms)

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
        with self._lock:
            _take(self._writer, self.busy_timeout_s)
            try:
                result = retention.purge(self._conn, int(now * 1000) - days * DAY_MS, int(now * 1000),
                                         dry_run=dry_run)
            finally:
                self._writer.release()
        if result.purged and not dry_run:
            log.info("entry log: purged %d synced entries older than %d days (anchor seq %d)", result.purged, days,
                     result.anchor_seq)
            if self.wal_checkpoints == "idle":  # the purge gave the WAL's space back
                self._write_wal_ahead()
        return result

    # ------------------------------------------------------------ verification, stats

    def verify(self) -> ChainReport:
        """Check the whole chain kept in the file: continuity from the anchor, links and hashes."""
        anchor = self.anchor()
        report = verify_chain(self.entries(), anchor)
        if not report.ok and self.anchor() != anchor:  # a purge ran meanwhile: check again from its anchor
            report = verify_chain(self.entries(), self.anchor())
        return report

    def integrity_check(self) -> str:
        with self._lock:
            return "; ".join(r[0] for r in self._conn.execute("PRAGMA integrity_check"))

    def stats(self, *, now: float | None = None) -> Stats:
        with self._lock:
            c = reports.counts(self._conn)
            start, _, _ = self.day_bounds(now)
            today = tuple(self.totals(cp, now=now) for cp in self.checkpoints(start))
            size = 0
            for suffix in ("", "-wal"):
                with contextlib.suppress(FileNotFoundError):
                    size += os.path.getsize(str(self.path) + suffix)
            health = self.health()
        return Stats(str(self.path), c.schema_version, size, health.free_bytes, c.entries, c.unsynced,
                     c.entries - c.unsynced, c.first_seq, c.last_seq, c.oldest_at_ms, c.newest_at_ms, c.sealed,
                     c.entries - c.sealed, self.holder_details, self.holder_details_note, c.anchor.seq,
                     c.anchor.purged, self.synchronous, health, today)
