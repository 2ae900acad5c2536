"""The PostgreSQL backend of the server's storage (psycopg 3, a connection pool): the same behaviour
as SQLite (tests/test_server.py runs the same tests on both), for a province-sized fleet.

- Entries are partitioned by day of their time (``at_ms``, UTC days): ``entries_dYYYYMMDD``,
  created on demand for days from PAST_DAYS before today to FUTURE_DAYS after it; entries with a
  time outside that (a device clock that was never set) go to the default partition
  ``entries_other``. Retention drops whole day partitions (docs/scaling.md#partitioning).
- Exactly once by (device_id, seq) across partitions: every ingest locks its device's row
  (``SELECT ... FOR UPDATE``), so batches of one device are stored one after another while other
  devices' batches go in parallel. New entries above the highest held sequence number (the usual
  case) need no lookup; only overlapping runs are compared with what is stored.
- Group commit (a server's default, sync/server/groupcommit.py): batches of several devices that
  arrive together are stored in one transaction, their rows in one COPY, the devices' rows locked
  in device order; each is acknowledged after that commit, a batch seen before is answered with its
  first ack, and a batch the database refuses is refused alone (the others are stored again
  without it).
- Per-device counters live on the device's row (no hot row shared by all ingests).
- A database that cannot be reached raises StorageUnavailable (HTTP 503: devices retry), and so
  does one that stops answering on a connection already open (a primary frozen or cut off by a
  network partition: its kernel may keep the connection open for ever): a server gives every piece
  of work a deadline (``work_deadline_s``), past which the connection is cut (``_Deadlines``).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import operator
import os
import re
import socket
import threading
import time
from collections.abc import Iterable, Iterator

import psycopg
from psycopg import errors as pgerrors
from psycopg.types.string import BytesBinaryDumper
from psycopg_pool import ConnectionPool, PoolTimeout

from scanner.base import timeutil
from scanner.base.errors import CheckpointError
from scanner.base.timeutil import DAY_MS
from sync.server import chain
from sync.server.groupcommit import GroupCommit, GroupSettings, Pending
from sync.server.model import (
    SOURCES,
    Device,
    Ingested,
    PurgeResult,
    ServerError,
    Stats,
    StorageUnavailable,
    revoked_device,
    unknown_device,
)
from sync.server.sqlstorage import ENTRY_COLUMNS, QmarkCursor, SQLStorage
from sync.wire import protocol
from sync.wire.batch import BatchError, ParsedBatch

log = logging.getLogger(__name__)


def configure_connection(conn: psycopg.Connection) -> None:
    """A new pooled connection, and the benchmarks' COPY peers (so they pay what the server pays):
    the binary COPY of entries (its types set by name) dumps bytea values with psycopg's bytes
    dumper, in C, not with the one psycopg.dbapi20 registers for the bytea type (a Python method
    that also unwraps psycopg.Binary, never passed here): three values a row, a third of the COPY's cost."""
    conn.adapters.register_dumper(None, BytesBinaryDumper)


def _one(row: tuple | None) -> tuple:
    """The row of a query that always returns one (an aggregate, a row just upserted)."""
    if row is None:
        raise CheckpointError("the database returned no row where one is always expected", code="db_unusable")
    return row

SCHEMA_VERSION = 1
PAST_DAYS = 92  # entries up to this many days old get a day partition of their own ...
FUTURE_DAYS = 2  # ... and up to this many days ahead; others go to entries_other
LOCK_SCHEMA = 0x43_4B_53_31  # advisory lock ids ("CKS1", "CKP1", "CKB1")
LOCK_PARTITIONS = 0x43_4B_50_31
LOCK_BUNDLES = 0x43_4B_42_31
PARTITION_RE = re.compile(r"entries_d(\d{8})")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    token_hash text PRIMARY KEY, checkpoint_id text NOT NULL, created_ms bigint NOT NULL,
    expires_ms bigint NOT NULL, device_id text, public_key bytea, used_ms bigint);
CREATE TABLE IF NOT EXISTS devices (
    device_id text PRIMARY KEY, checkpoint_id text NOT NULL, public_key bytea NOT NULL UNIQUE,
    enrolled_ms bigint NOT NULL, revoked_ms bigint,
    held_seq bigint NOT NULL DEFAULT 0, held_hash bytea,
    entries bigint NOT NULL DEFAULT 0, purged bigint NOT NULL DEFAULT 0, purged_seq bigint NOT NULL DEFAULT 0,
    deliveries bigint NOT NULL DEFAULT 0, replayed bigint NOT NULL DEFAULT 0,
    duplicates_dropped bigint NOT NULL DEFAULT 0, src_push bigint NOT NULL DEFAULT 0,
    src_import bigint NOT NULL DEFAULT 0, src_pull bigint NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS entries (
    device_id text NOT NULL, seq bigint NOT NULL, entry_id text NOT NULL, checkpoint_id text NOT NULL,
    direction text NOT NULL, at_ms bigint NOT NULL, clock text NOT NULL, source text NOT NULL,
    source_id text NOT NULL, decision text NOT NULL, reason text NOT NULL, format text, card_id text,
    issuer text, kid text, kind text, ref_entry_id text, sealed bytea, prev_hash bytea NOT NULL,
    hash bytea NOT NULL, batch_id text NOT NULL, received_ms bigint NOT NULL,
    PRIMARY KEY (device_id, seq, at_ms)) PARTITION BY RANGE (at_ms);
CREATE TABLE IF NOT EXISTS entries_other PARTITION OF entries DEFAULT;
CREATE INDEX IF NOT EXISTS entries_card ON entries (card_id, at_ms) WHERE card_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS entries_checkpoint ON entries (checkpoint_id, at_ms);
CREATE TABLE IF NOT EXISTS batches (
    device_id text NOT NULL, batch_id text NOT NULL, first_seq bigint NOT NULL, last_seq bigint NOT NULL,
    count integer NOT NULL, stored integer NOT NULL, duplicates integer NOT NULL, held_seq bigint NOT NULL,
    source text NOT NULL, received_ms bigint NOT NULL, size integer NOT NULL,
    PRIMARY KEY (device_id, batch_id));
CREATE INDEX IF NOT EXISTS batches_last ON batches (device_id, last_seq);
CREATE TABLE IF NOT EXISTS conflicts (
    device_id text NOT NULL, seq bigint NOT NULL, hash bytea NOT NULL, entry_id text NOT NULL,
    batch_id text NOT NULL, received_ms bigint NOT NULL, row text NOT NULL, sealed bytea,
    PRIMARY KEY (device_id, seq, hash));
CREATE TABLE IF NOT EXISTS chain_events (
    device_id text NOT NULL, kind text NOT NULL, seq bigint NOT NULL, detail text NOT NULL,
    at_ms bigint NOT NULL, PRIMARY KEY (device_id, kind, seq));
CREATE TABLE IF NOT EXISTS heartbeats (
    device_id text PRIMARY KEY, received_ms bigint NOT NULL, hb_seq bigint NOT NULL, doc text NOT NULL);
CREATE TABLE IF NOT EXISTS bundles (
    version bigint PRIMARY KEY, digest text NOT NULL, issued_at bigint NOT NULL, expires_at bigint NOT NULL,
    published_ms bigint NOT NULL, size bigint NOT NULL, data bytea NOT NULL, gz bytea NOT NULL);
CREATE TABLE IF NOT EXISTS deltas (
    from_version bigint NOT NULL, to_version bigint NOT NULL, data bytea NOT NULL,
    PRIMARY KEY (from_version, to_version));
"""

# one group's devices' counters and its batches, each in one statement (columns as arrays)
GROUP_COUNTS = (
    "UPDATE devices d SET held_seq = v.held_seq, held_hash = v.held_hash, entries = d.entries + v.stored, "
    "deliveries = d.deliveries + 1, replayed = d.replayed + v.replayed, "
    "duplicates_dropped = d.duplicates_dropped + v.duplicates, src_push = d.src_push + v.push, "
    "src_import = d.src_import + v.imported, src_pull = d.src_pull + v.pulled "
    "FROM unnest(%s::text[], %s::bigint[], %s::bytea[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], "
    "%s::bigint[], %s::bigint[]) AS v(device_id, held_seq, held_hash, stored, replayed, duplicates, push, imported, "
    "pulled) WHERE d.device_id = v.device_id")
GROUP_BATCHES = (
    "INSERT INTO batches (device_id, batch_id, first_seq, last_seq, count, stored, duplicates, held_seq, source, "
    "received_ms, size) SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::integer[], "
    "%s::integer[], %s::integer[], %s::bigint[], %s::text[], %s::bigint[], %s::integer[])")
COPY_ENTRIES = f"COPY entries ({', '.join(ENTRY_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_SEQ, _AT_MS = ENTRY_COLUMNS.index("seq"), ENTRY_COLUMNS.index("at_ms")
_at_ms = operator.itemgetter(_AT_MS)


def day_of(at_ms: int) -> int:
    """The UTC day number (days since 1970-01-01) of an entry time."""
    return at_ms // DAY_MS


def partition_name(day: int) -> str:
    return "entries_d" + (dt.date(1970, 1, 1) + dt.timedelta(days=day)).strftime("%Y%m%d")


def partition_day(name: str) -> int | None:
    m = PARTITION_RE.fullmatch(name)
    if not m:
        return None
    return (dt.datetime.strptime(m.group(1), "%Y%m%d").date() - dt.date(1970, 1, 1)).days


class _Deadlines:
    """Cuts (shuts down the socket of) a connection still in use ``seconds`` after it was taken:
    the blocked libpq call then fails at once (psycopg.OperationalError, the connection broken and
    dropped by the pool). Without it a request would wait as long as the peer stays silent: a
    frozen postmaster's kernel, or a path that drops packets while the connection looks open."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._due: dict[int, tuple[float, psycopg.Connection]] = {}
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watch(self, conn: psycopg.Connection) -> Iterator[None]:
        key = id(conn)
        with self._lock:
            self._due[key] = (time.monotonic() + self.seconds, conn)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="db-deadlines", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._due.pop(key, None)

    def _run(self) -> None:
        while True:
            time.sleep(min(1.0, self.seconds / 4))
            now = time.monotonic()
            with self._lock:  # held while cutting: a connection is never given back to the pool meanwhile
                for key, (due, conn) in list(self._due.items()):
                    if due <= now:
                        del self._due[key]
                        self._cut(conn)

    def _cut(self, conn: psycopg.Connection) -> None:
        try:
            fd = -1 if conn.closed else conn.pgconn.socket
        except psycopg.Error:  # no socket any more: nothing to cut
            fd = -1
        if fd < 0:
            return
        log.warning("database connection cut: no answer within %.0f s", self.seconds)
        with socket.socket(fileno=os.dup(fd)) as sock:  # a duplicate: libpq's own descriptor stays valid
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError as exc:  # already disconnected: libpq sees that itself
                log.info("cutting a database connection: %s", exc)


class PostgresStorage(SQLStorage):
    def __init__(self, url: str, *, max_connections: int = 16, connect_timeout_s: float = 15.0,
                 now_ms=None, work_deadline_s: float | None = None, group: GroupSettings | None = None) -> None:
        """``work_deadline_s``: the longest one transaction or query may hold its connection before
        the connection is cut and the work fails as StorageUnavailable (None: no limit, for
        commands an operator runs and watches). ``group``: batches ingested at about the same time
        are stored in one transaction (sync/server/groupcommit.py); None: each in its own."""
        self.url = url
        self._deadlines: _Deadlines | None = None
        self._group = GroupCommit(self._store_group, group) if group is not None else None
        self._now_ms = now_ms or timeutil.now_ms
        self._days: set[int] = set()
        self._days_lock = threading.Lock()
        try:  # one plain connection first: fail fast, with libpq's reason, if the database is unusable
            psycopg.connect(url, connect_timeout=max(2, int(connect_timeout_s))).close()
        except psycopg.Error as exc:
            raise CheckpointError(f"cannot connect to the PostgreSQL database {_safe_url(url)}: {_pg_message(exc)}",
                                  code="db_unusable") from None
        # a request waits at most 10 s for a connection, then gets 503 (the device retries later)
        self.pool = ConnectionPool(url, min_size=1, max_size=max_connections, open=False, timeout=10.0,
                                   kwargs={"autocommit": True}, name="checkpoint", configure=configure_connection)
        try:
            self.pool.open(wait=True, timeout=connect_timeout_s)
        except PoolTimeout:
            self.pool.close()
            raise CheckpointError(f"cannot connect to the PostgreSQL database {_safe_url(url)}",
                                  code="db_unusable") from None
        try:
            self._init_schema()
            self._load_days()
            self._copy_types = self._column_types("entries", ENTRY_COLUMNS)
        except psycopg.Error as exc:
            self.pool.close()
            raise CheckpointError(f"PostgreSQL database {_safe_url(url)}: {_pg_message(exc)}",
                                  code="db_unusable") from None
        if work_deadline_s is not None:  # from here on: opening (schema, partitions) is not limited
            self._deadlines = _Deadlines(work_deadline_s)

    # ------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _cursor(self, *, tx: bool = True) -> Iterator[psycopg.Cursor]:
        """A cursor on a pooled connection, in one transaction (committed at the end) unless ``tx``
        is False. Connection failures become StorageUnavailable. A connection lost, cut at its
        deadline or found on a standby drains the pool: the others were opened to the same node, and
        each would make a request wait (a whole deadline, if that node is frozen) before failing
        in turn; the new ones find the writable node."""
        conn: psycopg.Connection | None = None
        try:
            with self.pool.connection() as conn, (self._deadlines.watch(conn) if self._deadlines
                                                  else contextlib.nullcontext()):
                if tx:
                    with conn.transaction(), conn.cursor() as cur:
                        yield cur
                else:
                    with conn.cursor() as cur:
                        yield cur
        except PoolTimeout:
            raise StorageUnavailable("no database connection free in time") from None
        except psycopg.OperationalError as exc:
            if isinstance(exc, pgerrors.LockNotAvailable):
                raise
            if conn is not None and conn.closed:  # lost (not a refusal on a working connection)
                self.pool.drain()
            raise StorageUnavailable(f"database unavailable: {_pg_message(exc)}") from None
        except pgerrors.ReadOnlySqlTransaction:  # a standby (or a primary being demoted): the writable one is elsewhere
            self.pool.drain()
            raise StorageUnavailable("database is read-only (a standby): writes go to the primary") from None

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of one query written with ``?`` placeholders (the shared SQL, sync/server/sqlstorage.py)."""
        with self._cursor(tx=False) as cur:
            return QmarkCursor(cur).execute(sql, params).fetchall()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[QmarkCursor]:
        """One transaction for the shared SQL (``?`` placeholders)."""
        with self._cursor() as cur:
            yield QmarkCursor(cur)

    def _lock_bundles(self, tx: QmarkCursor) -> None:
        tx.execute("SELECT pg_advisory_xact_lock(?)", (LOCK_BUNDLES,))

    def close(self) -> None:
        if self._group is not None:
            self._group.close()
        self.pool.close()

    def _current_version(self) -> int:
        with self._cursor(tx=False) as cur:
            try:
                row = cur.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            except pgerrors.UndefinedTable:
                return 0
        return int(row[0]) if row else 0

    def _init_schema(self) -> None:
        """Create or upgrade the schema; writes nothing when it is current (a read-only replica
        can be opened for tracing, docs/scaling.md#4-read-replicas)."""
        version = self._current_version()
        if version > SCHEMA_VERSION:
            raise CheckpointError(f"the database was written by a newer server (schema {version})", code="db_schema")
        if version == SCHEMA_VERSION:
            return
        with self._cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_SCHEMA,))
            cur.execute("CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL)")
            row = cur.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise CheckpointError(f"the database was written by a newer server (schema {version})",
                                      code="db_schema")
            if version < SCHEMA_VERSION:
                for stmt in SCHEMA.split(";"):
                    if stmt.strip():
                        cur.execute(stmt)
                cur.execute("INSERT INTO meta (key, value) VALUES ('schema_version', %s) ON CONFLICT (key) "
                            "DO UPDATE SET value = excluded.value", (str(SCHEMA_VERSION),))

    def _column_types(self, table: str, columns: Iterable[str]) -> list[str]:
        """The SQL types of ``columns`` of ``table``, as the table declares them (for binary COPY)."""
        with self._cursor(tx=False) as cur:
            types = dict(cur.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                                     "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                                     (table,)).fetchall())
        return [types[c] for c in columns]

    def _partitions(self, cur) -> list[str]:
        return [r[0] for r in cur.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'entries'::regclass ORDER BY c.relname").fetchall()]

    def _load_days(self) -> None:
        with self._cursor(tx=False) as cur:
            days = {d for d in map(partition_day, self._partitions(cur)) if d is not None}
        with self._days_lock:
            self._days = days

    def partitions(self) -> list[str]:
        """The entries table's partitions (day partitions and the default one)."""
        with self._cursor(tx=False) as cur:
            return self._partitions(cur)

    def ensure_partitions(self, days: Iterable[int]) -> list[str]:
        """Make the day partitions for ``days`` that lie in the window and do not exist yet (each in
        its own short transaction, serialised by an advisory lock; rows of that day waiting in the
        default partition move in). Returns the partitions created."""
        today = day_of(self._now_ms())
        with self._days_lock:
            wanted = sorted(d for d in set(days) - self._days if today - PAST_DAYS <= d <= today + FUTURE_DAYS)
        made = []
        for day in wanted:
            name, lo, hi = partition_name(day), day * DAY_MS, (day + 1) * DAY_MS
            with self._cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_PARTITIONS,))
                if _one(cur.execute("SELECT to_regclass(%s)", (name,)).fetchone())[0] is None:
                    cur.execute(f"CREATE TABLE {name} (LIKE entries INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
                    cur.execute(f"WITH moved AS (DELETE FROM entries_other WHERE at_ms >= %s AND at_ms < %s "
                                f"RETURNING *) INSERT INTO {name} SELECT * FROM moved", (lo, hi))
                    cur.execute(f"ALTER TABLE entries ATTACH PARTITION {name} FOR VALUES FROM ({lo}) TO ({hi})")
                    made.append(name)
            with self._days_lock:
                self._days.add(day)
        if made:
            log.info("created entry partitions %s", ", ".join(made))
        return made

    # ------------------------------------------------------------ enrollment

    def enroll(self, token_hash: str, device_id: str, public_key: bytes, now_ms: int) -> Device:
        with self._cursor() as cur:
            row = cur.execute("SELECT checkpoint_id, expires_ms, device_id, public_key FROM tokens "
                              "WHERE token_hash = %s FOR UPDATE", (token_hash,)).fetchone()
            checkpoint_id, used_by = self._check_token(row, public_key, now_ms)
            cur.execute("INSERT INTO devices (device_id, checkpoint_id, public_key, enrolled_ms) "
                        "VALUES (%s, %s, %s, %s) ON CONFLICT (device_id) DO NOTHING",
                        (device_id, checkpoint_id, public_key, now_ms))
            existing = _one(cur.execute("SELECT device_id, checkpoint_id, public_key, enrolled_ms, revoked_ms "
                                        "FROM devices WHERE device_id = %s FOR UPDATE", (device_id,)).fetchone())
            if existing[4] is not None:
                raise revoked_device(device_id)
            if existing[1] != checkpoint_id:  # an enrolled device given a token of another checkpoint
                cur.execute("UPDATE devices SET checkpoint_id = %s WHERE device_id = %s", (checkpoint_id, device_id))
            if used_by is None:
                cur.execute("UPDATE tokens SET device_id = %s, public_key = %s, used_ms = %s WHERE token_hash = %s",
                            (device_id, public_key, now_ms, token_hash))
            return Device(device_id, checkpoint_id, bytes(existing[2]), existing[3], None)

    # ------------------------------------------------------------ batches

    def ingest(self, batch: ParsedBatch, source: str, now_ms: int) -> Ingested:
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}")
        times = list(map(_at_ms, batch.rows))
        first, last = day_of(min(times)), day_of(max(times))
        self.ensure_partitions({first} if first == last else set(map(day_of, times)))
        item = Pending(batch, source, now_ms, chain.altered(batch.rows))
        if self._group is not None:
            return self._group.submit(item)
        self._store_group([item])  # group commit off: each batch its own transaction
        return item.outcome()

    def _store_group(self, items: list[Pending]) -> None:
        """Store ``items`` (at most one per device) in one transaction; each gets its result or
        its own refusal. A batch the database refuses (a value it cannot hold) fails the group's
        transaction: then each is stored alone, and only that one is refused."""
        try:
            with self._cursor() as cur:
                outcomes = self._group_tx(cur, items)
        except (pgerrors.DataError, pgerrors.IntegrityError) as exc:
            if len(items) > 1:
                for item in items:
                    self._store_group([item])
                return
            log.warning("batch %s of device %s refused by the database: %s", items[0].batch.info.batch_id,
                        items[0].device_id, _pg_message(exc))
            items[0].error = BatchError(f"the database refused a row of this batch: {_pg_message(exc)}",
                                        code=protocol.E_MALFORMED)
            return
        for item, out in zip(items, outcomes, strict=True):  # after the commit
            if isinstance(out, Ingested):
                item.result = out
            else:
                item.error = out

    def _group_tx(self, cur: psycopg.Cursor, items: list[Pending]) -> list[Ingested | ServerError]:
        """The work of one group's transaction: the devices' rows locked (in device order: no
        deadlock between groups), batches seen before answered with their first ack, the new rows
        of all in one COPY, the devices' counters and the batches recorded in one statement each."""
        infos = [item.batch.info for item in items]
        devices = [i.device_id for i in infos]
        if len(set(devices)) != len(devices):
            raise ValueError("a group holds at most one batch per device")
        held = {r[0]: r[1:] for r in cur.execute(
            "SELECT device_id, revoked_ms, held_seq, held_hash FROM devices WHERE device_id = ANY(%s) "
            "ORDER BY device_id FOR UPDATE", (sorted(devices),))}
        seen = {r[0]: r[1:] for r in cur.execute(
            "SELECT b.device_id, b.batch_id, b.first_seq, b.last_seq, b.count, b.stored, b.duplicates, b.held_seq "
            "FROM batches b JOIN unnest(%s::text[], %s::text[]) AS g(device_id, batch_id) "
            "ON b.device_id = g.device_id AND b.batch_id = g.batch_id", (devices, [i.batch_id for i in infos]))}
        tx = QmarkCursor(cur)
        outcomes: list[Ingested | ServerError] = []
        new_rows: list[tuple[tuple[tuple, ...] | list[tuple], str, int]] = []
        counts: list[tuple] = []  # per device: held_seq, held_hash, stored, replayed, duplicates, by source
        recorded: list[tuple] = []  # the batches rows
        for item, info in zip(items, infos, strict=True):
            dev = held.get(info.device_id)
            if dev is None:
                outcomes.append(unknown_device(info.device_id))
                continue
            if dev[0] is not None:
                outcomes.append(revoked_device(info.device_id))
                continue
            held_seq, held_hash = dev[1], (bytes(dev[2]) if dev[2] is not None else None)
            by_source = tuple(int(item.source == s) for s in SOURCES)
            first = seen.get(info.device_id)
            if first is not None:  # the same batch again: nothing stored, the first answer
                counts.append((info.device_id, held_seq, held_hash, 0, 1, info.count, *by_source))
                outcomes.append(Ingested(protocol.Ack(*first), 0, info.count, True))
                continue
            if info.first_seq > held_seq:  # the usual case: all new, nothing to compare
                existing: dict[int, bytes] = {}
            else:
                existing = {seq: bytes(h) for seq, h in cur.execute(
                    "SELECT seq, hash FROM entries WHERE device_id = %s AND seq BETWEEN %s AND %s",
                    (info.device_id, info.first_seq, info.last_seq))}
            rows = [r for r in item.batch.rows if r[_SEQ] not in existing] if existing else item.batch.rows
            if rows:
                new_rows.append((rows, info.batch_id, item.now_ms))
            stored = len(rows)
            duplicates = info.count - stored
            self._record_conflicts(tx, item.batch, existing, item.now_ms)
            below = above = None
            if info.first_seq > 1:
                if info.first_seq - 1 == held_seq:
                    below = held_hash
                elif info.first_seq - 1 < held_seq:
                    below = self._hash_at(cur, info.device_id, info.first_seq - 1)
            if info.last_seq < held_seq:
                above = self._prev_hash_at(cur, info.device_id, info.last_seq + 1)
            self._record_chain(tx, item.batch, below, above, item.now_ms, item.altered)
            top = max(held_seq, info.last_seq)
            top_hash = info.last_hash if info.last_seq > held_seq else held_hash
            counts.append((info.device_id, top, top_hash, stored, 0, duplicates, *by_source))
            recorded.append((info.device_id, info.batch_id, info.first_seq, info.last_seq, info.count, stored,
                             duplicates, top, item.source, item.now_ms, item.batch.size))
            outcomes.append(Ingested(protocol.Ack(info.batch_id, info.first_seq, info.last_seq, info.count,
                                                  stored, duplicates, top), stored, duplicates))
        if new_rows:
            with cur.copy(COPY_ENTRIES) as copy:
                copy.set_types(self._copy_types)
                write = copy.write_row
                for rows, batch_id, received_ms in new_rows:
                    tail = (batch_id, received_ms)  # the batch's columns, after each row's (one tuple join a row)
                    for r in rows:
                        write(r + tail)
        if counts:
            cur.execute(GROUP_COUNTS, [list(col) for col in zip(*counts, strict=True)])
        if recorded:
            cur.execute(GROUP_BATCHES, [list(col) for col in zip(*recorded, strict=True)])
        return outcomes

    @staticmethod
    def _hash_at(cur, device_id: str, seq: int) -> bytes | None:
        row = cur.execute("SELECT hash FROM entries WHERE device_id = %s AND seq = %s", (device_id, seq)).fetchone()
        return bytes(row[0]) if row else None

    @staticmethod
    def _prev_hash_at(cur, device_id: str, seq: int) -> bytes | None:
        row = cur.execute("SELECT prev_hash FROM entries WHERE device_id = %s AND seq = %s",
                          (device_id, seq)).fetchone()
        return bytes(row[0]) if row else None

    def gaps(self, device_id: str, limit: int = 100) -> list[tuple[int, int]]:
        rows = self._read(
            "WITH f AS (SELECT coalesce((SELECT purged_seq FROM devices WHERE device_id = ?), 0) AS floor) "
            "SELECT prev + 1, seq - 1 FROM (SELECT seq, coalesce(lag(seq) OVER (ORDER BY seq), "
            "(SELECT floor FROM f)) AS prev FROM entries WHERE device_id = ? AND seq > (SELECT floor FROM f)) s "
            "WHERE seq > prev + 1 ORDER BY seq LIMIT ?", (device_id, device_id, limit))
        return [tuple(r) for r in rows]

    def purge(self, cutoff_ms: int, *, lock_timeout_s: float = 10.0) -> PurgeResult:
        """Drop every day partition that ends at or before ``cutoff_ms`` and whose entries all arrived
        before it; delete such entries from the default partition. Dropping takes an exclusive lock
        on the entries table for a moment: waited for at most ``lock_timeout_s``, else the partition
        is left for the next run (``skipped``)."""
        dropped, skipped, removed = [], [], 0
        for name in self.partitions():
            day = partition_day(name)
            if day is None or (day + 1) * DAY_MS > cutoff_ms:
                continue
            try:
                with self._cursor() as cur:
                    cur.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_timeout_s * 1000)}ms",))
                    late = cur.execute(f"SELECT 1 FROM {name} WHERE received_ms >= %s LIMIT 1",
                                       (cutoff_ms,)).fetchone()
                    if late:
                        continue  # an entry of that day arrived recently: kept a full period after arrival
                    per_device = cur.execute(f"SELECT device_id, count(*), max(seq) FROM {name} "
                                             "GROUP BY device_id").fetchall()
                    self._count_purged(cur, per_device)
                    cur.execute(f"DROP TABLE {name}")
                    removed += sum(n for _, n, _ in per_device)
                    dropped.append(name)
            except pgerrors.LockNotAvailable:
                skipped.append(name)
                continue
            with self._days_lock:
                self._days.discard(day)
        with self._cursor() as cur:
            per_device = cur.execute(
                "WITH gone AS (DELETE FROM entries_other WHERE at_ms < %s AND received_ms < %s "
                "RETURNING device_id, seq) SELECT device_id, count(*), max(seq) FROM gone GROUP BY device_id",
                (cutoff_ms, cutoff_ms)).fetchall()
            self._count_purged(cur, per_device)
            removed += sum(n for _, n, _ in per_device)
        if dropped:
            log.info("retention dropped partitions %s", ", ".join(dropped))
        return PurgeResult(removed, tuple(dropped), tuple(skipped))

    @staticmethod
    def _count_purged(cur, per_device: list[tuple]) -> None:
        if per_device:
            cur.executemany("UPDATE devices SET purged = purged + %s, purged_seq = greatest(purged_seq, %s) "
                            "WHERE device_id = %s", [(n, top, dev) for dev, n, top in per_device])

    # ------------------------------------------------------------ stats

    def stats(self) -> Stats:
        with self._cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            (devices, revoked, entries, purged, deliveries, replayed, dropped, push, imp, pull) = _one(cur.execute(
                "SELECT count(*), count(revoked_ms), coalesce(sum(entries), 0), coalesce(sum(purged), 0), "
                "coalesce(sum(deliveries), 0), coalesce(sum(replayed), 0), coalesce(sum(duplicates_dropped), 0), "
                "coalesce(sum(src_push), 0), coalesce(sum(src_import), 0), coalesce(sum(src_pull), 0) "
                "FROM devices").fetchone())
            batches = _one(cur.execute("SELECT count(*) FROM batches").fetchone())[0]
            conflicts = _one(cur.execute("SELECT count(*) FROM conflicts").fetchone())[0]
            problems = _one(cur.execute("SELECT count(*) FROM chain_events WHERE kind != 'conflict'").fetchone())[0]
            unused = _one(cur.execute("SELECT count(*) FROM tokens WHERE device_id IS NULL").fetchone())[0]
            version = _one(cur.execute("SELECT max(version) FROM bundles").fetchone())[0]
        by_source = {"push": int(push), "import": int(imp), "pull": int(pull)}
        return Stats(devices, revoked, int(entries - purged), batches, int(deliveries), int(replayed), int(dropped),
                     conflicts, problems, unused, version, by_source, int(purged))


def _pg_message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _safe_url(url: str) -> str:
    """The URL without a password (for messages)."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)
