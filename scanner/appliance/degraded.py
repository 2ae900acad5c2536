"""Degraded-mode policy: what a stale trust bundle or an unconfirmed clock does to a verdict.

Pure functions over small values. A trust bundle older than its limit (or past its own expiry)
and a clock not confirmed for longer than its limit each either fail *open* (the accept stands,
flagged degraded: amber) or fail *closed* (the accept becomes a reject with reason
``trust_expired`` / ``clock_unconfirmed``, the card's facts kept for the log). Rejects are never
changed. Other conditions only flag the device degraded. docs/configuration.md#degraded-mode.
"""
from __future__ import annotations

from dataclasses import dataclass

from scanner.appliance.clockguard import ClockStatus
from scanner.base.errors import Reason
from scanner.cards.verdict import Verdict, reject

OPEN, CLOSED = "open", "closed"

# degraded flags (stable codes: status page, events, heartbeat alarms)
TRUST_STALE = "trust_stale"
CLOCK_UNCONFIRMED = "clock_unconfirmed"
CLOCK_BEHIND = "clock_behind"
SYNC_BACKLOG = "sync_backlog"
LOW_DISK = "low_disk"
NOT_PROVISIONED = "not_provisioned"
NO_CREDENTIAL = "no_credential"  # provisioned, but no valid root-signed server credential: holder details not kept


@dataclass(frozen=True, slots=True)
class Policy:
    trust_max_age_s: float = 168 * 3600
    when_stale: str = OPEN
    clock_max_unconfirmed_s: float = 72 * 3600
    when_unconfirmed: str = OPEN
    backlog_max: int = 5000
    backlog_max_age_s: float = 24 * 3600

    @classmethod
    def from_config(cls, config) -> Policy:
        return cls(config["trust"]["max_age_h"] * 3600, config["trust"]["when_stale"],
                   config["clock"]["max_unconfirmed_h"] * 3600, config["clock"]["when_unconfirmed"],
                   config["sync"]["backlog_max"], config["sync"]["backlog_max_age_h"] * 3600)


@dataclass(frozen=True, slots=True)
class TrustAge:
    """The installed trust bundle's times (None without a bundle: loose keys do not age)."""

    issued_at: int | None = None
    expires_at: int | None = None
    version: int | None = None


def trust_stale(policy: Policy, trust: TrustAge, now: float) -> bool:
    if trust.issued_at is None:
        return False
    return now - trust.issued_at > policy.trust_max_age_s or (trust.expires_at is not None and now > trust.expires_at)


def clock_overdue(policy: Policy, clock: ClockStatus, now: float) -> bool:
    """Not confirmed for longer than the limit (or never)."""
    return clock.unconfirmed_for(now) > policy.clock_max_unconfirmed_s


def flags(policy: Policy, trust: TrustAge, clock: ClockStatus, now: float, *, backlog: int = 0,
          oldest_pending_ms: int | None = None) -> tuple[str, ...]:
    """Why the device is degraded right now (empty: it is not)."""
    out = []
    if trust_stale(policy, trust, now):
        out.append(TRUST_STALE)
    if not clock.confirmed or clock_overdue(policy, clock, now):
        out.append(CLOCK_UNCONFIRMED)
    if clock.behind:
        out.append(CLOCK_BEHIND)
    if backlog > policy.backlog_max or (oldest_pending_ms is not None
                                        and now * 1000 - oldest_pending_ms > policy.backlog_max_age_s * 1000):
        out.append(SYNC_BACKLOG)
    return tuple(out)


def apply(policy: Policy, verdict: Verdict, trust: TrustAge, clock: ClockStatus, now: float) -> Verdict:
    """The verdict the device acts on: an accept turned into a reject where a limit is passed and
    the policy says to fail closed; otherwise the verdict as it was."""
    if not verdict.accepted:
        return verdict
    if policy.when_stale == CLOSED and trust_stale(policy, trust, now):
        return reject(Reason.TRUST_EXPIRED, f"trust bundle v{trust.version} is older than the device's limit "
                      f"({policy.trust_max_age_s / 3600:g} h) or expired", verdict.format, verdict.kid, verdict.card)
    if policy.when_unconfirmed == CLOSED and clock_overdue(policy, clock, now):
        return reject(Reason.CLOCK_UNCONFIRMED, "the device clock has not been confirmed by NTP or the server "
                      f"for longer than {policy.clock_max_unconfirmed_s / 3600:g} h", verdict.format,
                      verdict.kid, verdict.card)
    return verdict
