"""The console's tables, in the server's own database beside its entries (SQLite or PostgreSQL),
written through the server storage's connection: accounts, sessions, case openings and the audit
trail. The audit table refuses UPDATE and DELETE (a trigger on both backends); appends are
serialised (SQLite's write lock, a PostgreSQL advisory lock) so the chain has one order.
"""
from __future__ import annotations

from dataclasses import dataclass

from scanner.base.errors import CheckpointError
from sync.server.console import audit
from sync.server.model import Storage
from sync.server.sqlite import SQLiteStorage
from sync.server.sqlstorage import SQLStorage

LOCK_AUDIT = 0x43_4B_41_31  # PostgreSQL advisory lock id ("CKA1"), beside the server's own

_TABLES = """
CREATE TABLE IF NOT EXISTS console_accounts (
    username TEXT PRIMARY KEY, role TEXT NOT NULL, scope TEXT NOT NULL, password_hash TEXT NOT NULL,
    totp_secret TEXT NOT NULL, totp_step {INT} NOT NULL DEFAULT 0, disabled {INT} NOT NULL DEFAULT 0,
    failures {INT} NOT NULL DEFAULT 0, locked_until_ms {INT} NOT NULL DEFAULT 0, created_ms {INT} NOT NULL,
    changed_ms {INT} NOT NULL){STRICT};
CREATE TABLE IF NOT EXISTS console_sessions (
    token_hash TEXT PRIMARY KEY, username TEXT NOT NULL, stage TEXT NOT NULL, csrf TEXT NOT NULL,
    created_ms {INT} NOT NULL, last_ms {INT} NOT NULL, tries {INT} NOT NULL DEFAULT 0){STRICT};
CREATE TABLE IF NOT EXISTS console_cases (
    case_id TEXT PRIMARY KEY, username TEXT NOT NULL, case_number TEXT NOT NULL, reason TEXT NOT NULL,
    card_id TEXT NOT NULL, since_ms {INT} NOT NULL, until_ms {INT} NOT NULL, window_ms {INT} NOT NULL,
    created_ms {INT} NOT NULL, expires_ms {INT} NOT NULL){STRICT};
CREATE INDEX IF NOT EXISTS console_cases_user ON console_cases (username, created_ms);
CREATE TABLE IF NOT EXISTS console_audit (
    seq {INT} PRIMARY KEY, at_ms {INT} NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
    case_number TEXT, reason TEXT, target TEXT, holders {INT} NOT NULL, detail TEXT NOT NULL,
    prev_hash {BLOB} NOT NULL, hash {BLOB} NOT NULL){STRICT}
"""
# Added after the first release: made on every start if absent.
_LATER = """
CREATE TABLE IF NOT EXISTS console_approvals (
    case_id TEXT PRIMARY KEY, approver TEXT, approved_ms {INT} NOT NULL){STRICT};
CREATE INDEX IF NOT EXISTS console_audit_target ON console_audit (target, action)
"""
_SQLITE_GUARDS = (
    ("CREATE TRIGGER IF NOT EXISTS console_audit_no_update BEFORE UPDATE ON console_audit "
     "BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END"),
    ("CREATE TRIGGER IF NOT EXISTS console_audit_no_delete BEFORE DELETE ON console_audit "
     "BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END"),
)
_PG_GUARDS = (
    ("CREATE OR REPLACE FUNCTION console_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
     "$$ BEGIN RAISE EXCEPTION 'the audit trail is append-only'; END $$"),
    "DROP TRIGGER IF EXISTS console_audit_guard ON console_audit",
    ("CREATE TRIGGER console_audit_guard BEFORE UPDATE OR DELETE OR TRUNCATE ON console_audit "
     "FOR EACH STATEMENT EXECUTE FUNCTION console_audit_append_only()"),
)
_CASE_COLUMNS = ("c.case_id, c.username, c.case_number, c.reason, c.card_id, c.since_ms, c.until_ms, c.window_ms, "
                 "c.created_ms, c.expires_ms, a.approved_ms, a.approver")
_CASES = "console_cases c LEFT JOIN console_approvals a ON a.case_id = c.case_id"
_AUDIT_COLUMNS = "seq, at_ms, actor, action, case_number, reason, target, holders, detail, prev_hash, hash"
_ACCOUNT_COLUMNS = "username, role, scope, disabled, failures, locked_until_ms, created_ms, changed_ms"


@dataclass(frozen=True, slots=True)
class Account:
    """A staff account as pages show it (no secrets). ``scope``: the checkpoints of an officer."""

    username: str
    role: str
    scope: tuple[str, ...]
    disabled: bool
    failures: int
    locked_until_ms: int
    created_ms: int
    changed_ms: int


@dataclass(frozen=True, slots=True)
class Secrets:
    """What a login checks: the argon2 hash, the TOTP secret and the last TOTP time step used."""

    password_hash: str
    totp_secret: str
    totp_step: int


@dataclass(frozen=True, slots=True)
class SessionRow:
    token_hash: str
    username: str
    stage: str  # "totp" (password checked, code awaited) or "full"
    csrf: str
    created_ms: int
    last_ms: int
    tries: int


@dataclass(frozen=True, slots=True)
class Case:
    """An opening of holder details: one tracer, one case number and reason, one card's trace, until
    ``expires_ms``."""

    case_id: str
    username: str
    case_number: str
    reason: str
    card_id: str
    since_ms: int
    until_ms: int
    window_ms: int
    created_ms: int
    expires_ms: int  # until approved: when the request was made plus its hours
    approved_ms: int | None = None  # None: waiting for a second officer's approval
    approver: str | None = None  # who approved (None when the opener needs no approval)

    @property
    def hours(self) -> int:
        return max(1, (self.expires_ms - self.created_ms) // 3_600_000)


@dataclass(frozen=True, slots=True)
class CheckpointCount:
    checkpoint_id: str
    entered: int  # accepted, direction in
    left: int  # accepted, direction out
    refused: int  # every rejected entry

    @property
    def occupancy(self) -> int:
        return max(0, self.entered - self.left)


def _scope_text(scope: tuple[str, ...]) -> str:
    return "\n".join(scope)


def _account(row: tuple) -> Account:
    return Account(row[0], row[1], tuple(s for s in row[2].split("\n") if s), bool(row[3]), row[4], row[5], row[6],
                   row[7])


class ConsoleStore:
    """The console's tables on ``storage`` (a SQLite or PostgreSQL server storage), made if absent."""

    def __init__(self, storage: Storage) -> None:
        if not isinstance(storage, SQLStorage):
            raise CheckpointError("the console needs the server's SQL storage", code="console_storage")
        self.storage = storage
        self.sqlite = isinstance(storage, SQLiteStorage)
        self._init_schema()

    # ------------------------------------------------------------ plumbing

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self.storage._read(sql, params)

    def _tx(self):
        return self.storage._tx()

    def _init_schema(self) -> None:
        if self.sqlite:
            tables = _TABLES.format(INT="INTEGER", BLOB="BLOB", STRICT=" STRICT")
            guards: tuple[str, ...] = _SQLITE_GUARDS
        else:
            tables = _TABLES.format(INT="bigint", BLOB="bytea", STRICT="")
            guards = _PG_GUARDS
        present = self._read("SELECT count(to_regclass('console_audit'))"  # in this connection's schema
                             if not self.sqlite else
                             "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' "
                             "AND name = 'console_audit_no_delete'")[0][0]
        later = _LATER.format(INT="INTEGER" if self.sqlite else "bigint", STRICT=" STRICT" if self.sqlite else "")
        later_present = self._read("SELECT count(to_regclass('console_approvals'))" if not self.sqlite else
                                   "SELECT count(*) FROM sqlite_master WHERE name = 'console_approvals'")[0][0]
        if present and later_present:
            return
        with self._tx() as tx:
            if not self.sqlite:
                tx.execute("SELECT pg_advisory_xact_lock(?)", (LOCK_AUDIT,))
            for stmt in ("" if present else tables).split(";") + later.split(";"):
                if stmt.strip():
                    tx.execute(stmt)
            if not present:
                for stmt in guards:
                    tx.execute(stmt)

    # ------------------------------------------------------------ accounts

    def add_account(self, username: str, role: str, scope: tuple[str, ...], password_hash: str, totp_secret: str,
                    now_ms: int) -> None:
        with self._tx() as tx:
            if tx.execute("SELECT 1 FROM console_accounts WHERE username = ?", (username,)).fetchone():
                raise CheckpointError(f"account {username} exists", code="account_exists")
            tx.execute("INSERT INTO console_accounts (username, role, scope, password_hash, totp_secret, created_ms, "
                       "changed_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (username, role, _scope_text(scope), password_hash, totp_secret, now_ms, now_ms))

    def account(self, username: str) -> Account | None:
        rows = self._read(f"SELECT {_ACCOUNT_COLUMNS} FROM console_accounts WHERE username = ?", (username,))
        return _account(rows[0]) if rows else None

    def accounts(self) -> list[Account]:
        return [_account(r) for r in self._read(f"SELECT {_ACCOUNT_COLUMNS} FROM console_accounts ORDER BY username")]

    def secrets(self, username: str) -> Secrets | None:
        rows = self._read("SELECT password_hash, totp_secret, totp_step FROM console_accounts WHERE username = ?",
                          (username,))
        return Secrets(*rows[0]) if rows else None

    def _update(self, sql: str, params: tuple) -> bool:
        with self._tx() as tx:
            return tx.execute(sql, params).rowcount == 1

    def set_role(self, username: str, role: str, scope: tuple[str, ...], now_ms: int) -> bool:
        return self._update("UPDATE console_accounts SET role = ?, scope = ?, changed_ms = ? WHERE username = ?",
                            (role, _scope_text(scope), now_ms, username))

    def set_disabled(self, username: str, disabled: bool, now_ms: int) -> bool:
        return self._update("UPDATE console_accounts SET disabled = ?, changed_ms = ? WHERE username = ?",
                            (int(disabled), now_ms, username))

    def set_password(self, username: str, password_hash: str, totp_secret: str | None, now_ms: int) -> bool:
        """A new password (and, given, a new TOTP secret); clears failures and the lock."""
        if totp_secret is None:
            return self._update("UPDATE console_accounts SET password_hash = ?, failures = 0, locked_until_ms = 0, "
                                "changed_ms = ? WHERE username = ?", (password_hash, now_ms, username))
        return self._update("UPDATE console_accounts SET password_hash = ?, totp_secret = ?, totp_step = 0, "
                            "failures = 0, locked_until_ms = 0, changed_ms = ? WHERE username = ?",
                            (password_hash, totp_secret, now_ms, username))

    def record_failure(self, username: str, now_ms: int, max_failures: int, lock_ms: int) -> tuple[int, bool]:
        """Count a failed login; at ``max_failures`` the account is locked for ``lock_ms`` and the count
        starts again. (failures now, whether this failure locked it)."""
        with self._tx() as tx:
            row = tx.execute("SELECT failures FROM console_accounts WHERE username = ?", (username,)).fetchone()
            if row is None:
                return 0, False
            failures = row[0] + 1
            locked = failures >= max_failures
            tx.execute("UPDATE console_accounts SET failures = ?, locked_until_ms = ? WHERE username = ?",
                       (0, now_ms + lock_ms, username) if locked else (failures, 0, username))
            return failures, locked

    def use_totp_step(self, username: str, step: int) -> bool:
        """Mark TOTP time step ``step`` used; False if it (or a later one) was used before (a code is
        good once)."""
        return self._update("UPDATE console_accounts SET totp_step = ?, failures = 0, locked_until_ms = 0 "
                            "WHERE username = ? AND totp_step < ?", (step, username, step))

    # ------------------------------------------------------------ sessions

    def add_session(self, row: SessionRow) -> None:
        with self._tx() as tx:
            tx.execute("INSERT INTO console_sessions (token_hash, username, stage, csrf, created_ms, last_ms, tries) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)", (row.token_hash, row.username, row.stage, row.csrf,
                                                        row.created_ms, row.last_ms, row.tries))

    def session(self, token_hash: str) -> SessionRow | None:
        rows = self._read("SELECT token_hash, username, stage, csrf, created_ms, last_ms, tries FROM console_sessions "
                          "WHERE token_hash = ?", (token_hash,))
        return SessionRow(*rows[0]) if rows else None

    def touch_session(self, token_hash: str, now_ms: int) -> None:
        self._update("UPDATE console_sessions SET last_ms = ? WHERE token_hash = ?", (now_ms, token_hash))

    def count_try(self, token_hash: str) -> int:
        with self._tx() as tx:
            tx.execute("UPDATE console_sessions SET tries = tries + 1 WHERE token_hash = ?", (token_hash,))
            row = tx.execute("SELECT tries FROM console_sessions WHERE token_hash = ?", (token_hash,)).fetchone()
            return row[0] if row else 0

    def drop_session(self, token_hash: str) -> None:
        self._update("DELETE FROM console_sessions WHERE token_hash = ?", (token_hash,))

    def drop_sessions_of(self, username: str) -> None:
        with self._tx() as tx:
            tx.execute("DELETE FROM console_sessions WHERE username = ?", (username,))

    def drop_sessions_before(self, last_ms: int, created_ms: int) -> None:
        with self._tx() as tx:
            tx.execute("DELETE FROM console_sessions WHERE last_ms < ? OR created_ms < ?", (last_ms, created_ms))

    # ------------------------------------------------------------ case openings

    def add_case(self, c: Case) -> None:
        with self._tx() as tx:
            tx.execute("INSERT INTO console_cases (case_id, username, case_number, reason, card_id, since_ms, "
                       "until_ms, "
                       "window_ms, created_ms, expires_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (c.case_id, c.username, c.case_number, c.reason, c.card_id, c.since_ms, c.until_ms,
                        c.window_ms, c.created_ms, c.expires_ms))

    def case(self, case_id: str) -> Case | None:
        rows = self._read(f"SELECT {_CASE_COLUMNS} FROM {_CASES} WHERE c.case_id = ?", (case_id,))
        return Case(*rows[0]) if rows else None

    def cases_of(self, username: str, limit: int = 50) -> list[Case]:
        return [Case(*r) for r in self._read(
            f"SELECT {_CASE_COLUMNS} FROM {_CASES} WHERE c.username = ? ORDER BY c.created_ms DESC LIMIT ?",
            (username, limit))]

    def waiting_cases(self, since_ms: int, limit: int = 100) -> list[Case]:
        """Cases requested since ``since_ms`` and not approved yet, oldest first."""
        return [Case(*r) for r in self._read(
            f"SELECT {_CASE_COLUMNS} FROM {_CASES} WHERE a.case_id IS NULL AND c.created_ms >= ? "
            "ORDER BY c.created_ms LIMIT ?", (since_ms, limit))]

    def approve_case(self, case_id: str, approver: str | None, approved_ms: int) -> None:
        """Record the approval (as the opener granted it): the case runs its hours from now on."""
        with self._tx() as tx:
            tx.execute("INSERT INTO console_approvals (case_id, approver, approved_ms) VALUES (?, ?, ?)",
                       (case_id, approver, approved_ms))
            tx.execute("UPDATE console_cases SET expires_ms = ? + (expires_ms - created_ms) WHERE case_id = ?",
                       (approved_ms, case_id))

    # ------------------------------------------------------------ audit trail

    def append(self, event: audit.Event, now_ms: int) -> audit.Record:
        """Add ``event`` at the end of the chain (one transaction; concurrent appends queue)."""
        with self._tx() as tx:
            if not self.sqlite:
                tx.execute("SELECT pg_advisory_xact_lock(?)", (LOCK_AUDIT,))
            last = tx.execute("SELECT seq, hash FROM console_audit ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (last[0] + 1, bytes(last[1])) if last else (1, audit.GENESIS)
            digest = audit.record_hash(prev, seq, now_ms, event)
            tx.execute(f"INSERT INTO console_audit ({_AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (seq, now_ms, event.actor, event.action, event.case_number, event.reason, event.target,
                        event.holders, event.detail, prev, digest))
        return audit.Record(seq, now_ms, event.actor, event.action, event.case_number, event.reason, event.target,
                            event.holders, event.detail, prev, digest)

    @staticmethod
    def _record(row: tuple) -> audit.Record:
        seq, at_ms, actor, action, case_number, reason, target, holders, detail, prev_hash, digest = row
        return audit.Record(seq, at_ms, actor, action, case_number, reason, target, holders, detail,
                            bytes(prev_hash), bytes(digest))

    def audit_records(self, after_seq: int = 0, limit: int = 10_000) -> list[audit.Record]:
        return [self._record(r) for r in self._read(
            f"SELECT {_AUDIT_COLUMNS} FROM console_audit WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit))]

    def audit_all(self, batch: int = 10_000):
        """Every record in order, read in batches (for verification)."""
        after = 0
        while True:
            rows = self.audit_records(after, batch)
            yield from rows
            if len(rows) < batch:
                return
            after = rows[-1].seq

    def audit_of(self, target: str, action: str) -> list[audit.Record]:
        """The records of ``action`` on ``target`` (e.g. a case's request), in order."""
        return [self._record(r) for r in self._read(
            f"SELECT {_AUDIT_COLUMNS} FROM console_audit WHERE target = ? AND action = ? ORDER BY seq LIMIT 100",
            (target, action))]

    def audit_tail(self, limit: int, before_seq: int | None = None, action: str | None = None) -> list[audit.Record]:
        """The latest ``limit`` records (before ``before_seq``, of ``action``), newest first."""
        where: list[str] = []
        params: list[object] = []
        if before_seq is not None:
            where.append("seq < ?")
            params.append(before_seq)
        if action is not None:
            where.append("action = ?")
            params.append(action)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        return [self._record(r) for r in self._read(
            f"SELECT {_AUDIT_COLUMNS} FROM console_audit {clause}ORDER BY seq DESC LIMIT ?", (*params, limit))]

    # ------------------------------------------------------------ counts and retention

    def checkpoint_counts(self, checkpoints: tuple[str, ...] | None, since_ms: int, until_ms: int
                          ) -> list[CheckpointCount]:
        """Entries per checkpoint in [since_ms, until_ms): accepted in, accepted out, refused
        (``checkpoints`` None: all; each one is an indexed range on (checkpoint_id, at_ms))."""
        sql = ("SELECT checkpoint_id, "
               "sum(CASE WHEN decision = 'accept' AND direction = 'in' THEN 1 ELSE 0 END), "
               "sum(CASE WHEN decision = 'accept' AND direction = 'out' THEN 1 ELSE 0 END), "
               "sum(CASE WHEN decision != 'accept' THEN 1 ELSE 0 END) FROM entries WHERE at_ms >= ? AND at_ms < ?")
        if checkpoints is None:
            rows = self._read(sql + " GROUP BY checkpoint_id ORDER BY checkpoint_id", (since_ms, until_ms))
        else:
            rows = []
            for cp in sorted(set(checkpoints)):
                rows += self._read(sql + " AND checkpoint_id = ? GROUP BY checkpoint_id", (since_ms, until_ms, cp))
        return [CheckpointCount(r[0], int(r[1] or 0), int(r[2] or 0), int(r[3] or 0)) for r in rows]

    def clear_conflict_blobs(self, cutoff_ms: int) -> int:
        """Retention for the copies kept of conflicting deliveries: their sealed holder details older
        than ``cutoff_ms`` are removed (the rest of each conflict stays as evidence)."""
        with self._tx() as tx:
            return tx.execute("UPDATE conflicts SET sealed = NULL WHERE received_ms < ? AND sealed IS NOT NULL",
                              (cutoff_ms,)).rowcount
