"""The audit trail: append-only records, each holding the hash of the one before it, so that a
changed, removed or inserted record breaks the chain from there on (docs/console.md#audit-trail).

A record says who did what, when, for which case and reason, to what, and for how many holders.
``verify`` recomputes the chain; anchors (record numbers and hashes the opener process wrote and
keeps in a file of its own) also catch a chain rewritten whole from some record on.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

GENESIS = bytes(32)

# Stable action codes (the auditor filters by them; docs/console.md lists what each records).
LOGIN_OK = "login_ok"
LOGIN_FAILED = "login_failed"
LOGIN_LOCKED = "login_locked"
LOGOUT = "logout"
ACCOUNT_ADD = "account_add"
ACCOUNT_ROLE = "account_role"
ACCOUNT_DISABLE = "account_disable"
ACCOUNT_PASSWORD = "account_password"
TRACE = "trace"
CASE_OPEN = "case_open"
OPEN_REQUESTED = "open_requested"  # the opener took a tracer's request to open a case
OPEN_APPROVED = "open_approved"  # the opener took a second officer's approval of it
HOLDERS_OPENED = "holders_opened"
OPEN_REFUSED = "open_refused"
EXPORT = "export"
DEVICE_REVOKE = "device_revoke"
BUNDLE_PUBLISH = "bundle_publish"
ENROLL_CODES = "enroll_codes"
RETENTION = "retention"
ACTIONS = (LOGIN_OK, LOGIN_FAILED, LOGIN_LOCKED, LOGOUT, ACCOUNT_ADD, ACCOUNT_ROLE, ACCOUNT_DISABLE,
           ACCOUNT_PASSWORD, TRACE, CASE_OPEN, OPEN_REQUESTED, OPEN_APPROVED, HOLDERS_OPENED, OPEN_REFUSED,
           EXPORT, DEVICE_REVOKE, BUNDLE_PUBLISH, ENROLL_CODES, RETENTION)


@dataclass(frozen=True, slots=True)
class Event:
    """What is to be recorded (the store gives it its number, time and place in the chain)."""

    actor: str  # an account name, or "cli:USER" / "system:retention" / "opener" for the processes
    action: str
    case_number: str | None = None
    reason: str | None = None
    target: str | None = None  # a card id, device id, account name, bundle version, export kind
    holders: int = 0  # how many holders' details this step opened or carried
    detail: str = ""  # counts and codes only, never a holder's detail


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    at_ms: int
    actor: str
    action: str
    case_number: str | None
    reason: str | None
    target: str | None
    holders: int
    detail: str
    prev_hash: bytes
    hash: bytes


def record_hash(prev_hash: bytes, seq: int, at_ms: int, e: Event) -> bytes:
    """SHA-256 over the previous hash and the record's fields as canonical JSON."""
    body = json.dumps([seq, at_ms, e.actor, e.action, e.case_number, e.reason, e.target, e.holders, e.detail],
                      ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(prev_hash + body).digest()


def event_of(r: Record) -> Event:
    return Event(r.actor, r.action, r.case_number, r.reason, r.target, r.holders, r.detail)


@dataclass(frozen=True, slots=True)
class Check:
    """The result of ``verify``: ``ok``, how many records were checked, and where the chain breaks
    (``bad_seq``, with a stable ``problem`` code: altered, missing, anchor_mismatch, anchor_missing)."""

    ok: bool
    records: int
    bad_seq: int | None = None
    problem: str | None = None


def verify(records: Iterable[Record], anchors: Iterable[tuple[int, bytes]] = ()) -> Check:
    """Recompute the chain over ``records`` (in seq order, from the first) and compare it with
    ``anchors`` ((seq, hash) pairs kept elsewhere)."""
    want = dict(anchors)
    prev, expected_seq, count = GENESIS, 1, 0
    seen: dict[int, bytes] = {}
    for r in records:
        if r.seq != expected_seq:
            return Check(False, count, expected_seq, "missing")
        if r.prev_hash != prev or record_hash(prev, r.seq, r.at_ms, event_of(r)) != r.hash:
            return Check(False, count, r.seq, "altered")
        if r.seq in want:
            seen[r.seq] = r.hash
            if want[r.seq] != r.hash:
                return Check(False, count, r.seq, "anchor_mismatch")
        prev, expected_seq, count = r.hash, expected_seq + 1, count + 1
    for seq in sorted(want):
        if seq not in seen:
            return Check(False, count, seq, "anchor_missing")
    return Check(True, count)
