"""Admission: whether the person at the gate may pass, decided once from the card's verdict and
the conditions it was judged under.

One pure function, `admit`, applies the rules in order: a reject stands as it is; a trust bundle
older than its limit (or past its own expiry) and a clock not confirmed for longer than its limit
each fail *open* (the accept stands, flagged degraded: amber) or *closed* (a reject with reason
``trust_expired`` / ``clock_unconfirmed``, the card's facts kept) as the policy says; then an
accepted card already admitted at this checkpoint in this direction within the anti-passback
window becomes a ``duplicate``. The entry log looks up that earlier admission and calls `admit`
inside the transaction that records the result, so the decision and the lookup are one step.
A later input (say a site-wide view across gates) is one more argument and one more rule here.
docs/entry-log.md#admission, docs/configuration.md#degraded-mode.
"""
from __future__ import annotations

from dataclasses import dataclass

from scanner.base.errors import Reason
from scanner.cards.verdict import Verdict, reject
from scanner.store.clock import ClockStatus

OPEN, CLOSED = "open", "closed"

# Degraded flags (stable codes: status page, events, heartbeat alarms). The first three come from
# the conditions of a verdict; the others from the device's state (sync, disk, provisioning).
TRUST_STALE = "trust_stale"
CLOCK_UNCONFIRMED = "clock_unconfirmed"
CLOCK_BEHIND = "clock_behind"
SYNC_BACKLOG = "sync_backlog"
LOW_DISK = "low_disk"
NOT_PROVISIONED = "not_provisioned"
NO_CREDENTIAL = "no_credential"  # provisioned, but no valid root-signed server credential: holder details not kept


@dataclass(frozen=True, slots=True)
class Policy:
    """The limits and what passing them does (``OPEN`` or ``CLOSED``); docs/configuration.md#degraded-mode."""

    trust_max_age_s: float = 168 * 3600
    when_stale: str = OPEN
    clock_max_unconfirmed_s: float = 72 * 3600
    when_unconfirmed: str = OPEN
    backlog_max: int = 5000
    backlog_max_age_s: float = 24 * 3600


@dataclass(frozen=True, slots=True)
class TrustAge:
    """The installed trust bundle's times (None without a bundle: loose keys do not age)."""

    issued_at: int | None = None
    expires_at: int | None = None
    version: int | None = None


def trust_stale(policy: Policy, trust: TrustAge, now: float) -> bool:
    """Older than the policy's limit, or past the bundle's own expiry."""
    if trust.issued_at is None:
        return False
    return now - trust.issued_at > policy.trust_max_age_s or (trust.expires_at is not None and now > trust.expires_at)


def clock_overdue(policy: Policy, clock: ClockStatus, now: float) -> bool:
    """Not confirmed for longer than the limit (or never)."""
    return clock.unconfirmed_for(now) > policy.clock_max_unconfirmed_s


def flags(policy: Policy, trust: TrustAge, clock: ClockStatus | None, now: float, *, backlog: int = 0,
          oldest_pending_ms: int | None = None) -> tuple[str, ...]:
    """Why the device is degraded right now (empty: it is not); ``clock`` None is not judged."""
    out = []
    if trust_stale(policy, trust, now):
        out.append(TRUST_STALE)
    if clock is not None:
        if not clock.confirmed or clock_overdue(policy, clock, now):
            out.append(CLOCK_UNCONFIRMED)
        if clock.behind:
            out.append(CLOCK_BEHIND)
    if backlog > policy.backlog_max or (oldest_pending_ms is not None
                                        and now * 1000 - oldest_pending_ms > policy.backlog_max_age_s * 1000):
        out.append(SYNC_BACKLOG)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Conditions:
    """What a verdict is judged under besides the card: the time (epoch s), the policy, the trust
    bundle's age and the clock's status (None: not judged, as for a log used without the
    appliance's clock guard). The defaults degrade nothing."""

    now: float
    policy: Policy = Policy()  # frozen values: one default instance serves every Conditions
    trust: TrustAge = TrustAge()
    clock: ClockStatus | None = None

    def flags(self) -> tuple[str, ...]:
        """The degraded flags that go with a verdict judged now."""
        return flags(self.policy, self.trust, self.clock, self.now)


@dataclass(frozen=True, slots=True)
class Previous:
    """The card's last admission at this checkpoint in this direction within the anti-passback
    window (``window_ms``, in both directions of time), not cancelled by a follow-up."""

    entry_id: str
    at_ms: int
    checkpoint_id: str
    direction: str
    window_ms: int


@dataclass(frozen=True, slots=True)
class Admission:
    """The decision: the verdict the device acts on (what is shown and logged), the degraded
    flags it was decided with, and the earlier admission that made it a duplicate."""

    verdict: Verdict
    flags: tuple[str, ...] = ()
    duplicate_of: str | None = None

    @property
    def admitted(self) -> bool:
        return self.verdict.accepted

    @property
    def duplicate(self) -> bool:
        return self.duplicate_of is not None


def admit(verdict: Verdict, direction: str, conditions: Conditions, previous: Previous | None = None) -> Admission:
    """The one admission decision for a verified card (see the module's docstring for the rules).

    ``previous``: the card's last admission here in ``direction`` within the window, or None.
    """
    found = conditions.flags()
    if not verdict.accepted:
        return Admission(verdict, found)
    refusal = _degraded_refusal(verdict, conditions)
    if refusal is not None:
        return Admission(refusal, found)
    if previous is not None:
        ago = conditions.now - previous.at_ms / 1000
        return Admission(reject(Reason.DUPLICATE, f"admitted {direction} at this checkpoint {ago:.0f} s ago "
                                f"(anti-passback window {previous.window_ms // 1000} s)", verdict.format,
                                verdict.kid, verdict.card), found, previous.entry_id)
    return Admission(verdict, found)


def _degraded_refusal(verdict: Verdict, c: Conditions) -> Verdict | None:
    """The reject an accepted verdict becomes where a limit is passed and the policy fails closed."""
    p = c.policy
    if p.when_stale == CLOSED and trust_stale(p, c.trust, c.now):
        return reject(Reason.TRUST_EXPIRED, f"trust bundle v{c.trust.version} is older than the device's limit "
                      f"({p.trust_max_age_s / 3600:g} h) or expired", verdict.format, verdict.kid, verdict.card)
    if p.when_unconfirmed == CLOSED and c.clock is not None and clock_overdue(p, c.clock, c.now):
        return reject(Reason.CLOCK_UNCONFIRMED, "the device clock has not been confirmed by NTP or the server "
                      f"for longer than {p.clock_max_unconfirmed_s / 3600:g} h", verdict.format, verdict.kid,
                      verdict.card)
    return None
