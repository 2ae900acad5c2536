"""Admission: whether the person at the gate may pass, decided once from the card's verdict and
the conditions it was judged under.

One pure function, `admit`, applies the rules in order: a reject stands as it is; a trust bundle
older than its limit (or past its own expiry) and a clock not confirmed for longer than its limit
each fail *open* (the accept stands, flagged degraded: amber) or *closed* (a reject with reason
``trust_expired`` / ``clock_unconfirmed``, the card's facts kept) as the policy says; then an
accepted card already admitted at this checkpoint in this direction within the anti-passback
window becomes a ``duplicate``; last, for a gate of a site (``Conditions.site``, from the
site's shared view across gates), an entry of a card already inside the site becomes
``already_inside``, and while the gate is cut off from the others (isolated) or the site is at
its capacity an entry fails open or closed as the site's policy says. The entry log looks up
that earlier admission and calls `admit` inside the transaction that records the result, so the
decision and the lookup are one step. docs/entry-log.md#admission,
docs/configuration.md#degraded-mode, docs/site.md#admission.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, fields

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
SITE_ISOLATED = "site_isolated"  # a gate of a site that hears none of the others
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
class SiteLast:
    """A card's last admission anywhere on the site today, from the site's shared view."""

    device_id: str
    gate: str
    direction: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class Site:
    """What the site's shared view says for one scan: the card's last admission on the site, the
    site's occupancy against its capacity (None: no limit), and whether this gate is isolated and
    what it then does on entries (``OPEN``: admit, flagged; ``CLOSED``: refuse)."""

    last: SiteLast | None = None
    occupancy: int = 0
    capacity: int | None = None
    isolated: bool = False
    when_isolated: str = OPEN


@dataclass(frozen=True, slots=True)
class Conditions:
    """What a verdict is judged under besides the card: the time (epoch s), the policy, the trust
    bundle's age, the clock's status (None: not judged, as for a log used without the
    appliance's clock guard) and, for a gate of a site, the site's view (None: a gate on its own).
    The defaults degrade nothing."""

    now: float
    policy: Policy = Policy()  # frozen values: one default instance serves every Conditions
    trust: TrustAge = TrustAge()
    clock: ClockStatus | None = None
    site: Site | None = None

    def flags(self) -> tuple[str, ...]:
        """The degraded flags that go with a verdict judged now."""
        found = flags(self.policy, self.trust, self.clock, self.now)
        return found + (SITE_ISOLATED,) if self.site is not None and self.site.isolated else found


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
    flags it was decided with, the earlier admission that made it a duplicate (its id, and
    when, where and which way it was: what the kiosk shows), and the site's admission that made
    it ``already_inside`` (where and when the card entered)."""

    verdict: Verdict
    flags: tuple[str, ...] = ()
    duplicate_of: str | None = None
    previous: Previous | None = None
    inside: SiteLast | None = None

    @property
    def admitted(self) -> bool:
        return self.verdict.accepted

    @property
    def duplicate(self) -> bool:
        return self.duplicate_of is not None


# Admission's slot setters, in field order (one name each: a new field fails here first). The verdict that
# stands is recorded through them (a scan's hot path: the frozen __init__ sets each field with
# object.__setattr__, twice the cost)
_set_verdict, _set_flags, _set_duplicate_of, _set_previous, _set_inside = (
    getattr(Admission, f.name).__set__ for f in fields(Admission))
_new_object = object.__new__


def _standing(verdict: Verdict, found: tuple[str, ...]) -> Admission:
    """What Admission(verdict, found) makes: the verdict stands, no earlier admission (the test of the
    rules compares the two)."""
    a = _new_object(Admission)
    _set_verdict(a, verdict)
    _set_flags(a, found)
    _set_duplicate_of(a, None)
    _set_previous(a, None)
    _set_inside(a, None)
    return a


def admit(verdict: Verdict, direction: str, conditions: Conditions, previous: Previous | None = None) -> Admission:
    """The one admission decision for a verified card (see the module's docstring for the rules).

    ``previous``: the card's last admission here in ``direction`` within the window, or None.
    """
    found = conditions.flags()
    if not verdict.accepted:
        return _standing(verdict, found)
    p = conditions.policy
    if p.when_stale == CLOSED or p.when_unconfirmed == CLOSED:  # else no limit can refuse it
        refusal = _degraded_refusal(verdict, conditions)
        if refusal is not None:
            return Admission(refusal, found)
    site = conditions.site
    if previous is not None and not _passed_since(previous, direction, site):
        ago = conditions.now - previous.at_ms / 1000
        return Admission(reject(Reason.DUPLICATE, f"admitted {direction} at this checkpoint {ago:.0f} s ago "
                                f"(anti-passback window {previous.window_ms // 1000} s)", verdict.format,
                                verdict.kid, verdict.card), found, previous.entry_id, previous)
    if site is not None and direction == "in":
        refusal = _site_refusal(verdict, site)
        if refusal is not None:
            return Admission(refusal, found, inside=site.last if refusal.reason is Reason.ALREADY_INSIDE else None)
    return _standing(verdict, found)


def _passed_since(previous: Previous, direction: str, site: Site | None) -> bool:
    """Whether the site saw the card pass the other way after ``previous`` (an exit at another
    gate): then a new entry here is no duplicate."""
    last = site.last if site is not None else None
    return last is not None and last.direction != direction and last.at_ms > previous.at_ms


def _site_refusal(verdict: Verdict, site: Site) -> Verdict | None:
    """The reject an accepted entry becomes on the site's view: already inside, or (failing
    closed) an isolated gate, or a site at its capacity."""
    last = site.last
    if last is not None and last.direction == "in":
        at = time.strftime("%H:%M", time.localtime(last.at_ms / 1000))
        return reject(Reason.ALREADY_INSIDE, f"already inside, entered at {last.gate} at {at}", verdict.format,
                      verdict.kid, verdict.card)
    if site.isolated and site.when_isolated == CLOSED:
        return reject(Reason.SITE_ISOLATED, "this gate hears none of the site's other gates and the site's policy "
                      "fails closed", verdict.format, verdict.kid, verdict.card)
    if site.capacity is not None and site.occupancy >= site.capacity:
        return reject(Reason.SITE_FULL, f"the site is full ({site.occupancy} inside, capacity {site.capacity})",
                      verdict.format, verdict.kid, verdict.card)
    return None


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
