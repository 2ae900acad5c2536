"""Admission: the one policy (degraded mode fail open/closed, anti-passback), as a pure function over
real verdicts, and as the entry log applies it inside the transaction that records the entry."""
from __future__ import annotations

import threading

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from scanner.base.errors import Reason
from scanner.cards import verifier
from scanner.cards.scan import Scan
from scanner.cards.verdict import Decision, reject
from scanner.store import clock as clockmod
from scanner.store.admission import (
    CLOSED,
    OPEN,
    Admission,
    Conditions,
    Policy,
    Previous,
    TrustAge,
    admit,
    flags,
)
from scanner.store.clock import ClockStatus
from scanner.store.entrylog import EntryLog, EntryLogWriteError

NOW = 1_750_000_000  # conftest's verification time
HOUR = 3600
FRESH = TrustAge(NOW - HOUR, NOW + 86400, 7)
OLD = TrustAge(NOW - 10 * 86400, NOW + 86400, 7)  # older than the default 168 h
EXPIRED = TrustAge(NOW - HOUR, NOW - 60, 7)  # young, but past its own expiry
LOOSE = TrustAge()  # loose keys, no bundle: never stale
CLOCK_OK = ClockStatus(True, False, NOW - 60, "ntp", None, clockmod.SYNCED)
NEVER = ClockStatus(False, False, None, None, None, clockmod.UNSYNCED)
RECENT = ClockStatus(False, False, NOW - HOUR, "server", None, clockmod.UNSYNCED)  # restarted an hour ago
BEHIND = ClockStatus(True, True, NOW, "ntp", None, clockmod.SYNCED)
OPEN_P = Policy()
CLOSED_P = Policy(when_stale=CLOSED, when_unconfirmed=CLOSED)
EARLIER = Previous("5f0c4c9e-9f4e-4f55-a4a1-0c3f6f2d9b10", NOW * 1000 - 30_000, "gate", "in", 120_000)


@pytest.fixture(scope="module")
def accepted(make_card, trust):
    v = verifier.verify(make_card(card_id=b"\x5a" * 16), trust, NOW)
    assert v.accepted
    return v


@pytest.fixture(scope="module")
def expired(make_card, trust):
    """Authentic but expired: a reject that carries the card's facts."""
    v = verifier.verify(make_card(card_id=b"\x5b" * 16, issued_at=NOW - 30 * 86400, expires_at=NOW - 86400),
                        trust, NOW)
    assert v.reason is Reason.EXPIRED and v.card is not None
    return v


FORGED = reject(Reason.BAD_SIGNATURE, "forged")


# ---------------------------------------------------------------- the table

# (verdict, policy, trust, clock, previous) -> (decision, reason, flags, duplicate)
CASES = [
    ("accepted", OPEN_P, FRESH, CLOCK_OK, None, "accept", "ok", (), False),
    ("accepted", CLOSED_P, FRESH, CLOCK_OK, None, "accept", "ok", (), False),
    ("accepted", OPEN_P, OLD, NEVER, None, "accept", "ok", ("trust_stale", "clock_unconfirmed"), False),  # fail open
    ("accepted", CLOSED_P, OLD, CLOCK_OK, None, "reject", "trust_expired", ("trust_stale",), False),
    ("accepted", CLOSED_P, EXPIRED, CLOCK_OK, None, "reject", "trust_expired", ("trust_stale",), False),
    ("accepted", CLOSED_P, LOOSE, CLOCK_OK, None, "accept", "ok", (), False),  # loose keys do not age
    ("accepted", CLOSED_P, FRESH, NEVER, None, "reject", "clock_unconfirmed", ("clock_unconfirmed",), False),
    # not confirmed since this start, but an hour ago (within 72 h): flagged, still admitted
    ("accepted", CLOSED_P, FRESH, RECENT, None, "accept", "ok", ("clock_unconfirmed",), False),
    ("accepted", CLOSED_P, FRESH, BEHIND, None, "accept", "ok", ("clock_behind",), False),
    ("accepted", Policy(when_stale=CLOSED), FRESH, NEVER, None, "accept", "ok", ("clock_unconfirmed",), False),
    ("accepted", Policy(when_unconfirmed=CLOSED), OLD, CLOCK_OK, None, "accept", "ok", ("trust_stale",), False),
    # both limits passed and both closed: the trust bundle is named first
    ("accepted", CLOSED_P, OLD, NEVER, None, "reject", "trust_expired", ("trust_stale", "clock_unconfirmed"), False),
    ("accepted", OPEN_P, FRESH, CLOCK_OK, EARLIER, "reject", "duplicate", (), True),
    ("accepted", OPEN_P, OLD, NEVER, EARLIER, "reject", "duplicate", ("trust_stale", "clock_unconfirmed"), True),
    # a fail-closed refusal is not a duplicate: the limit is what the person is told
    ("accepted", CLOSED_P, OLD, CLOCK_OK, EARLIER, "reject", "trust_expired", ("trust_stale",), False),
    ("accepted", OPEN_P, FRESH, None, None, "accept", "ok", (), False),  # no clock guard: the clock is not judged
    ("accepted", CLOSED_P, FRESH, None, EARLIER, "reject", "duplicate", (), True),
    ("expired", CLOSED_P, OLD, NEVER, EARLIER, "reject", "expired", ("trust_stale", "clock_unconfirmed"), False),
    ("forged", CLOSED_P, OLD, NEVER, EARLIER, "reject", "bad_signature", ("trust_stale", "clock_unconfirmed"), False),
    ("forged", OPEN_P, FRESH, CLOCK_OK, None, "reject", "bad_signature", (), False),
]


@pytest.mark.parametrize("which, policy, trust_age, clock, previous, decision, reason, found, duplicate", CASES)
def test_admission_table(request, which, policy, trust_age, clock, previous, decision, reason, found, duplicate):
    v = FORGED if which == "forged" else request.getfixturevalue(which)
    a = admit(v, "in", Conditions(NOW, policy, trust_age, clock), previous)
    assert (str(a.verdict.decision), str(a.verdict.reason), a.flags, a.duplicate) == (decision, reason, found,
                                                                                       duplicate)
    assert a.admitted == (decision == "accept")
    assert a.duplicate_of == (previous.entry_id if duplicate else None)
    assert (a.verdict.card, a.verdict.format) == (v.card, v.format)  # the card's facts are kept for the log
    if decision == "accept" or which != "accepted":
        assert a.verdict is v  # never rewritten when it stands


def test_the_refusals_say_why(accepted):
    a = admit(accepted, "in", Conditions(NOW, CLOSED_P, OLD, CLOCK_OK))
    assert "v7" in a.verdict.detail and "168 h" in a.verdict.detail
    a = admit(accepted, "in", Conditions(NOW, CLOSED_P, FRESH, NEVER))
    assert "72 h" in a.verdict.detail
    a = admit(accepted, "out", Conditions(NOW, OPEN_P), Previous("x", NOW * 1000 - 30_000, "gate", "out", 120_000))
    assert a.verdict.detail == "admitted out at this checkpoint 30 s ago (anti-passback window 120 s)"


def test_device_flags_beyond_a_verdict(now):
    p = Policy(backlog_max=10, backlog_max_age_s=3600)
    assert flags(p, LOOSE, CLOCK_OK, NOW, backlog=11) == ("sync_backlog",)
    assert flags(p, LOOSE, CLOCK_OK, NOW, oldest_pending_ms=(NOW - 7200) * 1000) == ("sync_backlog",)
    assert flags(p, LOOSE, CLOCK_OK, NOW, oldest_pending_ms=(NOW - 600) * 1000) == ()
    assert flags(p, LOOSE, BEHIND, NOW) == ("clock_behind",)
    assert Conditions(NOW, p, LOOSE, BEHIND).flags() == ("clock_behind",)
    assert Conditions(NOW).flags() == ()  # the defaults degrade nothing


# ---------------------------------------------------------------- properties

clocks = st.none() | st.builds(
    ClockStatus, st.booleans(), st.booleans(), st.none() | st.floats(NOW - 10 * 86400, NOW + 60),
    st.sampled_from([None, "ntp", "server"]), st.none() | st.integers(-10**6, 10**6),
    st.sampled_from(clockmod.STATES))
trust_ages = st.builds(TrustAge, st.none() | st.integers(NOW - 30 * 86400, NOW + 3600),
                       st.none() | st.integers(NOW - 86400, NOW + 30 * 86400), st.none() | st.integers(1, 99))
policies = st.builds(Policy, st.floats(0, 400 * HOUR), st.sampled_from([OPEN, CLOSED]), st.floats(0, 400 * HOUR),
                     st.sampled_from([OPEN, CLOSED]), st.integers(0, 10_000), st.floats(0, 100 * HOUR))
previous = st.none() | st.builds(Previous, st.uuids().map(str), st.integers((NOW - 600) * 1000, (NOW + 600) * 1000),
                                 st.just("gate"), st.sampled_from(["in", "out"]),
                                 st.integers(1, 600).map(lambda s: s * 1000))


@settings(max_examples=400, deadline=None)
@given(which=st.sampled_from(["accepted", "expired", "forged"]), policy=policies, trust_age=trust_ages,
       clock=clocks, prev=previous, now=st.floats(NOW - 3600, NOW + 3600), direction=st.sampled_from(["in", "out"]))
def test_the_rules_in_order(accepted, expired, which, policy, trust_age, clock, prev, now, direction):
    v = {"accepted": accepted, "expired": expired, "forged": FORGED}[which]
    c = Conditions(now, policy, trust_age, clock)
    a = admit(v, direction, c, prev)
    assert a == admit(v, direction, c, prev) and isinstance(a, Admission)  # pure
    assert a.flags == c.flags()  # the flags depend on the conditions only
    # the limits, worked out here from the raw numbers
    stale = trust_age.issued_at is not None and (now - trust_age.issued_at > policy.trust_max_age_s or (
        trust_age.expires_at is not None and now > trust_age.expires_at))
    overdue = clock is not None and (clock.confirmed_at is None
                                     or max(0.0, now - clock.confirmed_at) > policy.clock_max_unconfirmed_s)
    if not v.accepted:
        expected = v.reason  # a reject is never changed
    elif stale and policy.when_stale == CLOSED:
        expected = Reason.TRUST_EXPIRED
    elif overdue and policy.when_unconfirmed == CLOSED:
        expected = Reason.CLOCK_UNCONFIRMED
    elif prev is not None:
        expected = Reason.DUPLICATE
    else:
        expected = Reason.OK
    assert a.verdict.reason is expected
    assert a.admitted == (expected is Reason.OK) and a.verdict.decision is (
        Decision.ACCEPT if expected is Reason.OK else Decision.REJECT)
    assert a.duplicate == (expected is Reason.DUPLICATE)
    assert (a.verdict.card, a.verdict.format, a.verdict.kid) == (v.card, v.format, v.kid)
    if expected is v.reason:  # the verdict stands: what the constructor makes (admit fills its slots)
        assert a.verdict is v and a == Admission(v, c.flags()) and (a.duplicate_of, a.previous, a.inside) == (
            None, None, None)
        with pytest.raises(AttributeError):
            a.flags = ()  # type: ignore[misc]
    assert ("trust_stale" in a.flags) == stale
    if clock is None:
        assert not {"clock_unconfirmed", "clock_behind"} & set(a.flags)


# ---------------------------------------------------------------- in the entry log


@pytest.fixture
def log(tmp_path):
    with EntryLog(tmp_path / "entries.db", device_id="dev-1", checkpoint_id="gate",
                  sealing_key=X25519PrivateKey.generate().public_key(), passback_window_s=120) as entry_log:
        yield entry_log


def scan(at: float) -> Scan:
    return Scan("CK1:...", "camera", "cam0", at)


def test_record_decides_and_logs_the_admission(log, accepted):
    """A fail-closed refusal is decided with the entry and logged as such; it admits nobody, so the
    same card with the limits met is then admitted, not a duplicate; the flags come with the result."""
    stale = Conditions(NOW, CLOSED_P, OLD, CLOCK_OK)
    r = log.record(scan(NOW), accepted, direction="in", conditions=stale)
    assert (r.verdict.reason, r.duplicate, r.flags) == (Reason.TRUST_EXPIRED, False, ("trust_stale",))
    assert (r.entry.decision, r.entry.reason, r.entry.card_id) == ("reject", "trust_expired", "5a" * 16)
    assert r.entry.sealed is not None  # an authentic card: the holder is sealed for tracing
    ok = log.record(scan(NOW + 5), accepted, direction="in", conditions=Conditions(NOW + 5, CLOSED_P, FRESH, CLOCK_OK))
    assert ok.admission.admitted and not ok.duplicate and ok.verdict is accepted
    dup = log.record(scan(NOW + 10), accepted, direction="in", conditions=Conditions(NOW + 10, OPEN_P, OLD, NEVER))
    assert dup.duplicate and dup.admission.duplicate_of == ok.entry.entry_id
    assert dup.flags == ("trust_stale", "clock_unconfirmed") and dup.entry.reason == "duplicate"
    assert "5 s ago" in dup.verdict.detail
    t = log.totals(now=NOW)
    assert (t.scans, t.accepted, t.duplicates, t.admitted_in, t.by_reason["trust_expired"]) == (3, 1, 1, 1, 1)


def test_record_without_conditions_degrades_nothing(log, accepted):
    r = log.record(scan(NOW), accepted, direction="in")
    assert r.admission == Admission(accepted, ())
    assert log.record(scan(NOW + 1), accepted, direction="in").admission.duplicate_of == r.entry.entry_id


def test_one_card_at_many_writers_is_admitted_once(tmp_path, accepted):
    """The passback lookup and the decision are one transaction: eight logs on one file (eight
    connections) recording the same card at the same moment admit it exactly once."""
    path = tmp_path / "shared.db"
    logs = [EntryLog(path, device_id="dev-1", checkpoint_id="gate", sealing_key=None) for _ in range(8)]
    start = threading.Barrier(len(logs))
    results, errors = [], []

    def write(entry_log: EntryLog) -> None:
        try:
            start.wait(30)
            results.append(entry_log.record(scan(NOW), accepted, direction="in",
                                            conditions=Conditions(NOW, OPEN_P, FRESH, CLOCK_OK)))
        except Exception as exc:  # noqa: BLE001 - a thread's failure is reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(entry_log,)) for entry_log in logs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == [] and len(results) == 8
        admitted = [r for r in results if r.admission.admitted]
        assert len(admitted) == 1
        assert {r.admission.duplicate_of for r in results if r.duplicate} == {admitted[0].entry.entry_id}
        assert logs[0].verify().ok and logs[0].totals(now=NOW).admitted_in == 1
    finally:
        for entry_log in logs:
            entry_log.close()


def test_a_queued_scan_keeps_its_refusal(tmp_path, accepted):
    """A scan whose commit failed is kept as the refusal its person was shown; committed later, the
    admission does not turn it back into an accept (or a duplicate)."""
    with EntryLog(tmp_path / "q.db", device_id="dev-1", checkpoint_id="gate", sealing_key=None) as q:
        pages, size = (q._conn.execute(f"PRAGMA {name}").fetchone()[0] for name in ("page_count", "page_size"))
        q.set_max_db_bytes(pages * size)
        for i in range(2000):  # fill the capped file with rejects until a commit fails
            try:
                q.record(scan(NOW - 100 + i * 0.01), FORGED, direction="in")
            except EntryLogWriteError:
                break
        else:
            raise AssertionError("the capped database never filled up")
        with pytest.raises(EntryLogWriteError) as exc:  # queued behind the first: refused too
            q.record(scan(NOW), accepted, direction="in", conditions=Conditions(NOW, OPEN_P, FRESH, CLOCK_OK))
        assert exc.value.queued and exc.value.code == "disk_full"
        q.set_max_db_bytes(None)
        assert q.flush_pending() == 2
        kept = q.get(exc.value.entry_id)
        assert (kept.decision, kept.reason, kept.card_id) == ("reject", "disk_full", "5a" * 16)
        later = q.record(scan(NOW + 1), accepted, direction="in")
        assert later.admission.admitted  # the refused scan admitted nobody
