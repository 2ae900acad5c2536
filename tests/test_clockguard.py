"""The clock guard (never earlier than the last time seen; confirmation by NTP or the server) and
the degraded-mode policy that acts on it and on the trust bundle's age."""
from __future__ import annotations

import json
import os

import pytest

from scanner import clock as clockmod
from scanner import degraded
from scanner.clockguard import ClockGuard, ClockStatus
from scanner.errors import Reason
from scanner.verdict import Decision, Verdict, reject

T0 = 1_750_000_000.0


class Clocks:
    """Settable wall and monotonic clocks and kernel NTP state for one guard."""

    def __init__(self, wall: float = T0) -> None:
        self.wall, self.mono, self.kernel = wall, 1000.0, clockmod.UNSYNCED

    def tick(self, seconds: float, *, wall_step: float = 0.0) -> None:
        self.mono += seconds
        self.wall += seconds + wall_step

    def guard(self, state_dir, **kw) -> ClockGuard:
        return ClockGuard(state_dir, wall=lambda: self.wall, mono=lambda: self.mono,
                          kernel=lambda: clockmod.ClockStatus(self.kernel), **kw)


def test_time_never_goes_back_and_goes_on_from_the_last_seen(tmp_path):
    c = Clocks()
    g = c.guard(tmp_path)
    assert g.now() == T0
    c.tick(10, wall_step=-3600)  # the clock steps back an hour
    assert g.now() == pytest.approx(T0 + 10)
    assert g.status().behind and g.entry_state() == clockmod.UNSYNCED
    c.tick(5)
    assert g.now() == pytest.approx(T0 + 15)  # goes on with the monotonic clock
    c.tick(1, wall_step=3600)  # NTP puts it right: wall clock in use again
    assert g.now() == pytest.approx(T0 + 16) and not g.status().behind


def test_the_last_time_seen_survives_a_restart(tmp_path):
    c = Clocks()
    g = c.guard(tmp_path)
    c.tick(100)
    g.save()
    doc = json.loads((tmp_path / "clock.json").read_text())
    assert doc["last_seen_ms"] == int((T0 + 100) * 1000) and oct(os.stat(tmp_path / "clock.json").st_mode)[-3:] == "600"
    booted = Clocks(wall=T0 - 86400 * 300)  # a Pi without a battery clock, power cut, no network
    g2 = booted.guard(tmp_path)
    assert g2.now() == pytest.approx(T0 + 100) and g2.status().behind
    booted.tick(7)
    assert g2.now() == pytest.approx(T0 + 107)


def test_floor_from_the_entry_log_and_garbage_state_file(tmp_path):
    (tmp_path / "clock.json").write_text("{not json")
    c = Clocks()
    g = c.guard(tmp_path, floor=T0 + 50)
    assert g.now() == pytest.approx(T0 + 50)


def test_confirmation_by_ntp_and_by_the_server(tmp_path):
    c = Clocks()
    g = c.guard(tmp_path, max_offset_s=10)
    st = g.refresh()
    assert not st.confirmed and st.unconfirmed_for(T0) == float("inf")
    st = g.refresh(server_offset_ms=25_000, server_checked_ms=1)  # 25 s off: not confirmed
    assert not st.confirmed and st.offset_ms == 25_000
    st = g.refresh(server_offset_ms=-800, server_checked_ms=2)
    assert st.confirmed and st.by == "server" and g.entry_state() == clockmod.SYNCED
    c.tick(60)
    c.kernel = clockmod.SYNCED
    st = g.refresh()
    assert st.by == "ntp" and st.confirmed_at == pytest.approx(T0 + 60) and st.kernel == clockmod.SYNCED
    g.save()
    g2 = Clocks(wall=T0 + 120).guard(tmp_path)
    assert not g2.status().confirmed and g2.status().confirmed_at == pytest.approx(T0 + 60)  # remembered, not assumed


def test_ntp_overrules_a_saved_time_from_the_future(tmp_path):
    (tmp_path / "clock.json").write_text(json.dumps({"last_seen_ms": int((T0 + 86400 * 30) * 1000)}))
    c = Clocks()
    g = c.guard(tmp_path)
    assert g.status().behind
    c.kernel = clockmod.SYNCED
    g.refresh()
    assert g.now() == T0 and not g.status().behind


# ---------------------------------------------------------------- the policy


def _accept(make_card, trust, now) -> Verdict:
    from scanner.verifier import verify
    v = verify(make_card(), trust, now)
    assert v.accepted
    return v


CONFIRMED = ClockStatus(True, False, T0, "ntp", None, clockmod.SYNCED)


def test_policy_fail_open_and_closed(make_card, trust, now):
    v = _accept(make_card, trust, now)
    fresh = degraded.TrustAge(now - 3600, now + 86400, 7)
    old = degraded.TrustAge(now - 10 * 86400, now + 86400, 7)
    open_ = degraded.Policy()
    closed = degraded.Policy(when_stale="closed", when_unconfirmed="closed")
    clock_ok = ClockStatus(True, False, now - 60, "ntp", None, clockmod.SYNCED)
    never = ClockStatus(False, False, None, None, None, clockmod.UNSYNCED)
    assert degraded.apply(closed, v, fresh, clock_ok, now) is v
    assert degraded.apply(open_, v, old, never, now) is v  # fail open: accepted, flagged
    assert set(degraded.flags(open_, old, never, now)) == {"trust_stale", "clock_unconfirmed"}
    r = degraded.apply(closed, v, old, clock_ok, now)
    assert (r.decision, r.reason, r.card) == (Decision.REJECT, Reason.TRUST_EXPIRED, v.card)
    r = degraded.apply(closed, v, fresh, never, now)
    assert (r.decision, r.reason) == (Decision.REJECT, Reason.CLOCK_UNCONFIRMED)
    recent = ClockStatus(False, False, now - 3600, "server", None, clockmod.UNSYNCED)  # restarted an hour ago
    assert degraded.apply(closed, v, fresh, recent, now) is v
    assert degraded.flags(closed, fresh, recent, now) == ("clock_unconfirmed",)
    expired_bundle = degraded.TrustAge(now - 3600, now - 60, 7)
    assert degraded.apply(closed, v, expired_bundle, clock_ok, now).reason is Reason.TRUST_EXPIRED
    assert degraded.apply(closed, v, degraded.TrustAge(), clock_ok, now) is v  # loose keys do not age
    bad = reject(Reason.BAD_SIGNATURE, "forged")
    assert degraded.apply(closed, bad, old, never, now) is bad  # rejects are never changed


def test_backlog_and_clock_behind_flags(now):
    p = degraded.Policy(backlog_max=10, backlog_max_age_s=3600)
    behind = ClockStatus(True, True, now, "ntp", None, clockmod.SYNCED)
    assert degraded.flags(p, degraded.TrustAge(), CONFIRMED, T0, backlog=11) == ("sync_backlog",)
    assert degraded.flags(p, degraded.TrustAge(), CONFIRMED, T0, oldest_pending_ms=int((T0 - 7200) * 1000)) == \
        ("sync_backlog",)
    assert degraded.flags(p, degraded.TrustAge(), behind, now) == ("clock_behind",)
