"""Console sessions: a random token in a cookie (Secure, HttpOnly, SameSite=Strict, ``__Host-``),
only its SHA-256 kept server-side; a new token at each login step (no fixation); a CSRF token per
session checked on every form; an idle timeout and a maximum age; and a per-address limit on login
attempts."""
from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass

from sync.server.console.store import ConsoleStore, SessionRow

COOKIE = "__Host-ck-console"  # the __Host- prefix: Secure, Path=/, no Domain (no sibling host can set it)
PRE_COOKIE = "__Host-ck-login"  # before login: ties the login form to this browser (login CSRF)
PLAIN_COOKIE = "ck-console"  # the same without TLS (loopback development only: --insecure-http)
PLAIN_PRE_COOKIE = "ck-login"
TOTP_STAGE, FULL_STAGE = "totp", "full"
TOTP_STAGE_MS = 5 * 60_000  # the code must follow the password within this
MAX_CODE_TRIES = 3  # wrong codes in one pending login before it is dropped


@dataclass(frozen=True, slots=True)
class Policy:
    idle_ms: int = 15 * 60_000
    max_age_ms: int = 10 * 3_600_000
    secure: bool = True  # TLS: __Host- cookies with Secure

    @property
    def cookie(self) -> str:
        return COOKIE if self.secure else PLAIN_COOKIE

    @property
    def pre_cookie(self) -> str:
        return PRE_COOKIE if self.secure else PLAIN_PRE_COOKIE


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def start(store: ConsoleStore, username: str, stage: str, now_ms: int) -> tuple[str, SessionRow]:
    """A new session (a new token, never one the browser brought): (token for the cookie, row)."""
    token = secrets.token_urlsafe(32)
    row = SessionRow(token_hash(token), username, stage, secrets.token_urlsafe(24), now_ms, now_ms, 0)
    store.add_session(row)
    return token, row


def current(store: ConsoleStore, token: str | None, policy: Policy, now_ms: int) -> SessionRow | None:
    """The live session of ``token``: None if unknown, idle too long, too old, or a pending login
    past its time (those are deleted)."""
    if not token or len(token) > 100:
        return None
    key = token_hash(token)
    row = store.session(key)
    if row is None:
        return None
    limit_idle = TOTP_STAGE_MS if row.stage == TOTP_STAGE else policy.idle_ms
    if now_ms - row.last_ms > limit_idle or now_ms - row.created_ms > policy.max_age_ms:
        store.drop_session(key)
        return None
    if now_ms - row.last_ms > 15_000:  # keep writes few: the idle clock moves in 15 s steps
        store.touch_session(key, now_ms)
    return row


def csrf_ok(row: SessionRow | None, given: str | None) -> bool:
    return row is not None and bool(given) and secrets.compare_digest(row.csrf.encode(), str(given).encode())


class AttemptLimiter:
    """At most ``limit`` login attempts per client address within ``window_s`` (in memory, per
    process): spraying passwords over many accounts from one place is slowed down as well."""

    def __init__(self, limit: int = 20, window_s: float = 300.0) -> None:
        self.limit, self.window_s = limit, window_s
        self._seen: dict[str, deque] = {}
        self._lock = threading.Lock()

    def allow(self, peer: str) -> bool:
        now = time.monotonic()
        with self._lock:
            if len(self._seen) > 10_000:  # forget quiet addresses
                self._seen = {k: v for k, v in self._seen.items() if v and now - v[-1] < self.window_s}
            q = self._seen.setdefault(peer, deque())
            while q and now - q[0] > self.window_s:
                q.popleft()
            if len(q) >= self.limit:
                return False
            q.append(now)
            return True
