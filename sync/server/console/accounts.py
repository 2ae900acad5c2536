"""Staff accounts: argon2id password hashes (argon2-cffi), a TOTP second factor (pyotp, RFC 6238,
each code good once), and a lock after repeated failures. The first administrator is made with
`checkpoint server user add`; the rest by an administrator in the console. Every change is audited.
"""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

import argon2
import pyotp

from scanner.base.errors import CheckpointError
from sync.server.console import audit, roles
from sync.server.console.store import Account, ConsoleStore

MIN_PASSWORD = 12
MAX_PASSWORD = 256
MAX_FAILURES = 5  # failed logins (password or code) before the account is locked
LOCK_MS = 15 * 60_000
TOTP_ISSUER = "checkpoint-edge"
_USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,31}", re.ASCII)
_HASHER = argon2.PasswordHasher()  # argon2id, 64 MiB, 3 passes: the library's (RFC 9106) defaults
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))  # an unknown account costs as much as a known one


class AccountError(CheckpointError):
    code = "account"


def check_username(name: str) -> str:
    if not _USERNAME.fullmatch(name):
        raise AccountError("an account name is 2 to 32 of a-z 0-9 . _ - (starting with a letter or digit)",
                           code="account_name")
    return name


def check_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise AccountError(f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters", code="account_password")
    return password


def hash_password(password: str) -> str:
    return _HASHER.hash(check_password(password))


def new_password() -> str:
    """A random password for a new or reset account (shown once)."""
    return secrets.token_urlsafe(15)


@dataclass(frozen=True, slots=True)
class NewSecrets:
    """What the person of a new or reset account must be given, once: the password and the TOTP
    secret (as its otpauth:// URI, for an authenticator app's QR)."""

    username: str
    password: str
    totp_secret: str

    @property
    def totp_uri(self) -> str:
        return pyotp.TOTP(self.totp_secret).provisioning_uri(name=self.username, issuer_name=TOTP_ISSUER)


def add(store: ConsoleStore, username: str, role: str, scope: tuple[str, ...], *, actor: str, now_ms: int,
        password: str | None = None) -> NewSecrets:
    """A new account with a new TOTP secret (and ``password``, or a random one)."""
    check_username(username)
    scope = roles.check_role(role, scope)
    password = password if password is not None else new_password()
    secret = pyotp.random_base32()
    store.add_account(username, role, scope, hash_password(password), secret, now_ms)
    store.append(audit.Event(actor, audit.ACCOUNT_ADD, target=username, detail=f"role={role} scope={len(scope)}"),
                 now_ms)
    return NewSecrets(username, password, secret)


def _existing(store: ConsoleStore, username: str) -> Account:
    account = store.account(username)
    if account is None:
        raise AccountError(f"no account {username[:40]!r}", code="account_unknown")
    return account


def set_role(store: ConsoleStore, username: str, role: str, scope: tuple[str, ...], *, actor: str,
             now_ms: int) -> None:
    _existing(store, username)
    scope = roles.check_role(role, scope)
    store.set_role(username, role, scope, now_ms)
    store.drop_sessions_of(username)  # the new role applies from the next login
    store.append(audit.Event(actor, audit.ACCOUNT_ROLE, target=username, detail=f"role={role} scope={len(scope)}"),
                 now_ms)


def set_disabled(store: ConsoleStore, username: str, disabled: bool, *, actor: str, now_ms: int) -> None:
    _existing(store, username)
    store.set_disabled(username, disabled, now_ms)
    if disabled:
        store.drop_sessions_of(username)
    store.append(audit.Event(actor, audit.ACCOUNT_DISABLE, target=username, detail=f"disabled={int(disabled)}"),
                 now_ms)


def reset(store: ConsoleStore, username: str, *, actor: str, now_ms: int, password: str | None = None,
          new_totp: bool = True) -> NewSecrets:
    """A new password (given or random) and, with ``new_totp``, a new TOTP secret; the account's
    sessions end and its lock is lifted."""
    _existing(store, username)
    password = password if password is not None else new_password()
    secret = pyotp.random_base32() if new_totp else None
    store.set_password(username, hash_password(password), secret, now_ms)
    store.drop_sessions_of(username)
    store.append(audit.Event(actor, audit.ACCOUNT_PASSWORD, target=username, detail=f"new_totp={int(new_totp)}"),
                 now_ms)
    return NewSecrets(username, password, secret or "")


# ---------------------------------------------------------------- logging in


@dataclass(frozen=True, slots=True)
class LoginStep:
    """The outcome of a login step: ``ok``, else a stable ``code`` (bad_credentials, locked,
    disabled, bad_code)."""

    ok: bool
    code: str = "ok"
    account: Account | None = None


def check_password_step(store: ConsoleStore, username: str, password: str, *, now_ms: int) -> LoginStep:
    """The first factor. Unknown accounts cost the same argon2 work as known ones; a locked or
    disabled account is refused without its password being checked; failures are counted and
    audited, and the fifth in a row locks the account."""
    account = store.account(username) if _USERNAME.fullmatch(username) else None
    found = store.secrets(username) if account is not None else None
    if account is None or found is None:
        _verify(_DUMMY_HASH, password)
        store.append(audit.Event(username[:40] if _USERNAME.fullmatch(username) else "?", audit.LOGIN_FAILED,
                                 detail="unknown"), now_ms)
        return LoginStep(False, "bad_credentials")
    if account.disabled:
        store.append(audit.Event(username, audit.LOGIN_FAILED, detail="disabled"), now_ms)
        return LoginStep(False, "bad_credentials")
    if account.locked_until_ms > now_ms:
        store.append(audit.Event(username, audit.LOGIN_FAILED, detail="locked"), now_ms)
        return LoginStep(False, "locked")
    if not _verify(found.password_hash, password):
        return _failed(store, username, now_ms, "password")
    if _HASHER.check_needs_rehash(found.password_hash):
        store.set_password(username, _HASHER.hash(password), None, now_ms)
    return LoginStep(True, account=account)


def check_code_step(store: ConsoleStore, username: str, code: str, *, now_ms: int) -> LoginStep:
    """The second factor: a TOTP code of the account's secret, for this 30 s step or the one before
    or after (clock drift), never one used before."""
    account = store.account(username)
    found = store.secrets(username)
    if account is None or found is None or account.disabled:
        return LoginStep(False, "bad_credentials")
    if account.locked_until_ms > now_ms:
        return LoginStep(False, "locked")
    step = totp_step(found.totp_secret, code.strip(), now_ms)
    if step is None or not store.use_totp_step(username, step):
        return _failed(store, username, now_ms, "code")
    return LoginStep(True, account=store.account(username))


def totp_step(secret: str, code: str, now_ms: int) -> int | None:
    """The time step whose code ``code`` is (this one, the one before or after), or None."""
    if not (len(code) == 6 and code.isdigit()):
        return None
    totp = pyotp.TOTP(secret)
    now_s = now_ms // 1000
    for drift in (0, -1, 1):
        at = now_s + drift * totp.interval
        if secrets.compare_digest(totp.at(at), code):
            return totp.timecode(at)
    return None


def _failed(store: ConsoleStore, username: str, now_ms: int, what: str) -> LoginStep:
    failures, locked = store.record_failure(username, now_ms, MAX_FAILURES, LOCK_MS)
    store.append(audit.Event(username, audit.LOGIN_LOCKED if locked else audit.LOGIN_FAILED,
                             detail=f"{what} failures={failures if not locked else MAX_FAILURES}"), now_ms)
    return LoginStep(False, "locked" if locked else ("bad_code" if what == "code" else "bad_credentials"))


def _verify(hashed: str, password: str) -> bool:
    try:
        return _HASHER.verify(hashed, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False
