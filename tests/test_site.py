"""The site's pure parts: the root-signed site credential, the signed datagram (forged, replayed,
stranger, skewed and malformed ones refused), the keyed card hash, the shared view's merge (a
grow-only union keyed by (device, seq): fuzzed for order independence and exact counts) and the
admission rules it feeds (already inside, an exit elsewhere, isolated, full)."""
from __future__ import annotations

import base64
import dataclasses
import json
import subprocess
import sys
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st
from support.appliance import Daemon
from support.config import standalone, write_config
from support.paths import ROOT
from support.pki import make_pki

from scanner.appliance import config as cfg
from scanner.base.errors import Reason
from scanner.cards import keys, verifier
from scanner.store.admission import CLOSED, OPEN, SITE_ISOLATED, Conditions, Previous, Site, SiteLast, admit
from sync.site import credential as sitecred
from sync.site.message import MAGIC, Inbox, SiteEvent, SiteMessageError, card_key, encode, sign_event
from sync.site.view import SiteView, counts, merge
from sync.wire import identity

NOW = 1_750_000_000
NOW_MS = NOW * 1000
SITE = "market-dong-ba"


def member(root, site=SITE, **kw):
    key = ed25519.Ed25519PrivateKey.generate()
    cred = sitecred.open_credential(sitecred.issue(root, site_id=site, device_key=key.public_key(),
                                                   issued_at=NOW - 60, **kw), [root.public_key()])
    return key, cred


@pytest.fixture(scope="module")
def gates(root_key):
    return [member(root_key) for _ in range(3)]


# ---------------------------------------------------------------- credential

def test_credential_opens_only_under_its_root(root_key, other_root_key):
    key = ed25519.Ed25519PrivateKey.generate()
    data = sitecred.issue(root_key, site_id=SITE, device_key=key.public_key(), issued_at=NOW, expires_at=NOW + 10)
    cred = sitecred.open_credential(data, [root_key.public_key()])
    assert cred.site_id == SITE and cred.valid_at(NOW) and not cred.valid_at(NOW + 10)
    with pytest.raises(sitecred.SiteCredentialError) as e:
        sitecred.open_credential(data, [other_root_key.public_key()])
    assert e.value.code == "site_credential_wrong_root"
    outer = json.loads(data)
    body = json.loads(base64.b64decode(outer["credential"]))
    body["site_id"] = "stadium"
    outer["credential"] = base64.b64encode(json.dumps(body).encode()).decode()
    with pytest.raises(sitecred.SiteCredentialError) as e:
        sitecred.open_credential(json.dumps(outer).encode(), [root_key.public_key()])
    assert e.value.code == "site_credential_bad_signature"


def test_own_credential_checked_for_site_and_key(tmp_path, root_key):
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / sitecred.FILE_NAME
    path.write_bytes(sitecred.issue(root_key, site_id=SITE, device_key=key.public_key(), issued_at=NOW))
    roots = [root_key.public_key()]
    assert sitecred.load(path, roots, site_id=SITE, device_key=key, now=NOW).site_id == SITE
    for kw, code in (({"site_id": "other"}, "site_credential_wrong_site"),
                     ({"device_key": ed25519.Ed25519PrivateKey.generate()}, "site_credential_wrong_device")):
        with pytest.raises(sitecred.SiteCredentialError) as e:
            sitecred.load(path, roots, **{"site_id": SITE, "device_key": key, "now": NOW, **kw})
        assert e.value.code == code
    with pytest.raises(sitecred.SiteCredentialError) as e:
        sitecred.load(tmp_path / "none.json", roots, site_id=SITE, device_key=key, now=NOW)
    assert e.value.code == "site_credential_missing"


@given(st.binary(max_size=600))
@settings(max_examples=200, deadline=None)
def test_credential_garbage_is_a_clean_refusal(root_key, raw):
    with pytest.raises(sitecred.SiteCredentialError):
        sitecred.open_credential(raw, [root_key.public_key()])


# ---------------------------------------------------------------- messages

EV = SiteEvent("d-x", 3, NOW_MS, "gate-1", "in", "accept", "ab" * 16)


def send(gate, n=1, at=NOW_MS, **kw):
    key, cred = gate
    return encode(key, cred, kind=kw.pop("kind", "events"), n=n, at_ms=at, clock="confirmed", **kw)


def inbox(root, gate, skew_ms=5000):
    return Inbox([root.public_key()], SITE, gate[1].device_id, max_skew_ms=skew_ms)


def test_message_round_trip_and_replay(root_key, gates):
    a, b = gates[0], gates[1]
    box = inbox(root_key, b)
    ev = SiteEvent(a[1].device_id, 3, NOW_MS, "gate-1", "in", "accept", "ab" * 16)
    data = send(a, n=10, events=[ev])
    msg = box.open(data, NOW_MS + 20)
    assert msg.sender == a[1].device_id and msg.events == (ev,) and msg.kind == "events"
    for replay in (data, send(a, n=10, events=[ev]), send(a, n=9)):
        with pytest.raises(SiteMessageError) as e:
            box.open(replay, NOW_MS + 30)
        assert e.value.code == "site_replayed"
    assert box.open(send(a, n=11, kind="have", first=1, last=3), NOW_MS).last == 3


def test_events_are_the_senders_own(root_key, gates):
    """An event claiming another gate's device is the sender's: a member cannot speak for another."""
    a, b = gates[0], gates[1]
    msg = inbox(root_key, b).open(send(a, events=[EV]), NOW_MS)
    assert msg.events[0].device == a[1].device_id


def test_events_passed_on_must_be_signed_by_their_own_gate(root_key, gates):
    """C passes A's events on to B with A's credential: B takes them as A's when A signed each one;
    an event C made up or altered in A's name is forged, and a revoked A's events are refused."""
    a, b, c = gates[0], gates[1], gates[2]
    signed = sign_event(a[0], SITE, SiteEvent(a[1].device_id, 4, NOW_MS, "gate-1", "in", "accept", "ab" * 16))
    box = inbox(root_key, b)
    msg = box.open(send(c, n=1, events=[signed], origin=a[1].data), NOW_MS)
    assert msg.sender == c[1].device_id and msg.events == (signed,) and msg.events[0].device == a[1].device_id
    assert msg.origin is not None and msg.origin.device_id == a[1].device_id
    made_up = sign_event(c[0], SITE, signed)  # signed by C, not by A
    altered = dataclasses.replace(signed, direction="out")
    unsigned = dataclasses.replace(signed, sig=None)
    for n, bad in enumerate((made_up, altered, unsigned), start=2):
        with pytest.raises(SiteMessageError) as e:
            box.open(send(c, n=n, events=[bad], origin=a[1].data), NOW_MS)
        assert e.value.code == "site_forged"
    assert box.revoke(sitecred.issue_revocations(root_key, site_id=SITE, version=1, issued_at=NOW,
                                                 revoked=[a[1].device_id])) is not None
    with pytest.raises(SiteMessageError) as e:
        box.open(send(c, n=9, events=[signed], origin=a[1].data), NOW_MS)
    assert e.value.code == "site_revoked"


def test_forged_stranger_skewed_and_own_messages_refused(root_key, other_root_key, gates):
    a, b = gates[0], gates[1]
    box = inbox(root_key, b)
    good = send(a, n=5, events=[EV])
    tampered = bytearray(good)
    tampered[-30] ^= 1
    stranger = member(other_root_key)  # a valid device of another operator: its credential is not ours
    other_site = member(root_key, site="stadium")
    # a's credential, another key
    borrowed = encode(stranger[0], a[1], kind="events", n=6, at_ms=NOW_MS, clock="confirmed")
    for data, code in ((bytes(tampered), ("site_forged", "site_message_malformed")),
                       (borrowed, ("site_forged",)),
                       (send(stranger), ("site_stranger",)),
                       (send(other_site), ("site_stranger",)),
                       (send(a, n=7, at=NOW_MS + 60_000), ("site_clock_skew",)),
                       (send(b, n=8), ("site_own",)),
                       (b"hello", ("site_message_malformed",)),
                       (MAGIC + bytes(64) + b"{}", ("site_message_malformed",))):
        with pytest.raises(SiteMessageError) as e:
            box.open(data, NOW_MS)
        assert e.value.code in code
    assert box.open(good, NOW_MS).events  # the refusals did not burn a's counter


def test_expired_member_is_a_stranger(root_key, gates):
    old = member(root_key, expires_at=NOW - 1)
    with pytest.raises(SiteMessageError) as e:
        inbox(root_key, gates[1]).open(send(old), NOW_MS)
    assert e.value.code == "site_stranger"


@given(st.binary(max_size=300), st.integers(0, 400))
@settings(max_examples=300, deadline=None)
def test_mutated_datagrams_never_open_or_crash(root_key, gates, noise, at):
    data = bytearray(send(gates[0], n=1, events=[EV]))
    at %= len(data)
    data[at:at + len(noise)] = noise
    box = inbox(root_key, gates[1])
    try:
        box.open(bytes(data), NOW_MS)
    except SiteMessageError:
        return
    assert bytes(data) == send(gates[0], n=1, events=[EV]) or data[len(MAGIC) + 64:] == \
        send(gates[0], n=1, events=[EV])[len(MAGIC) + 64:]  # only an unchanged signed payload opens


def test_card_key_is_per_site_and_day():
    k = card_key(b"s" * 32, SITE, "2026-12-06", "5a" * 16)
    assert len(k) == 32 and k == card_key(b"s" * 32, SITE, "2026-12-06", "5a" * 16)
    assert len({k, card_key(b"s" * 32, "stadium", "2026-12-06", "5a" * 16),
                card_key(b"s" * 32, SITE, "2026-12-07", "5a" * 16),
                card_key(b"t" * 32, SITE, "2026-12-06", "5a" * 16)}) == 4


# ---------------------------------------------------------------- the shared view

DEVICES = ("d-a", "d-b", "d-c")
events_st = st.builds(
    SiteEvent, st.sampled_from(DEVICES), st.integers(1, 12), st.integers(NOW_MS, NOW_MS + 50),
    st.sampled_from(("g1", "g2")), st.sampled_from(("in", "out")), st.sampled_from(("accept", "reject")),
    st.sampled_from((None, "aa" * 16, "bb" * 16)), st.one_of(st.none(), st.integers(1, 12)))
views_st = st.lists(events_st, max_size=25).map(lambda evs: {e.key: e for e in reversed(evs)})


@given(views_st, views_st, views_st)
@settings(max_examples=300, deadline=None)
def test_merge_is_a_semilattice(a, b, c):
    assert merge(a, b) == merge(b, a)
    assert merge(merge(a, b), c) == merge(a, merge(b, c))
    assert merge(a, a) == a and merge(merge(a, b), b) == merge(a, b)


@given(st.lists(events_st, max_size=40), st.randoms(use_true_random=False))
@settings(max_examples=300, deadline=None)
def test_view_in_any_order_with_repeats_counts_exactly_once(evs, rnd):
    """However the events arrive (shuffled, twice), the view ends as their merge, with the counts
    and each card's last admission of that merge."""
    want = {}
    for e in evs:
        want = merge(want, {e.key: e})
    arrivals = evs + evs
    rnd.shuffle(arrivals)
    view = SiteView()
    view.add(arrivals)
    assert view.snapshot() == want
    n_in, n_out, inside = counts(want.values())
    assert view.totals() == (n_in, n_out) and view.occupancy() == inside
    cancelled = {(e.device, e.cancels) for e in want.values() if e.cancels is not None}
    for card in ("aa" * 16, "bb" * 16):
        admitted = [e for e in want.values() if e.card == card and e.decision == "accept" and e.cancels is None
                    and e.key not in cancelled]
        best = max(admitted, key=lambda e: (e.at_ms, e.device, e.seq), default=None)
        assert view.last_admission(card) == best


def test_partition_then_merge_reconciles_counts():
    """Two sides admit on their own while cut off; after the merge both hold the same view and
    the site counts every admission once."""
    left, right = SiteView(), SiteView()
    shared = [SiteEvent("d-a", 1, NOW_MS, "g1", "in", "accept", "aa" * 16)]
    left.add(shared), right.add(shared)
    left.add([SiteEvent("d-a", 2, NOW_MS + 10, "g1", "in", "accept", "bb" * 16),
              SiteEvent("d-a", 3, NOW_MS + 20, "g1", "out", "accept", "aa" * 16)])
    right.add([SiteEvent("d-b", 1, NOW_MS + 15, "g2", "in", "accept", "cc" * 16),
               SiteEvent("d-b", 2, NOW_MS + 16, "g2", "in", "accept", "bb" * 16)])  # bb admitted on both sides
    assert (left.occupancy(), right.occupancy()) == (1, 3)
    left.add(right.snapshot().values()), right.add(left.snapshot().values())
    assert left.snapshot() == right.snapshot() and left.totals() == right.totals() == (4, 1)
    assert left.occupancy() == right.occupancy() == 2  # bb and cc inside, bb once
    assert left.missing("d-a", 1, 3, 10) == []
    assert SiteView().missing("d-a", 1, 3, 2) == [1, 2]


def test_view_keeps_only_the_day():
    view = SiteView(since_ms=NOW_MS)
    assert view.add([SiteEvent("d-a", 1, NOW_MS - 1, "g1", "in", "accept", "aa" * 16)]) == []
    assert view.occupancy() == 0
    assert view.missing("d-a", 1, 2, 10) == [2]  # the entry of yesterday is not asked for again


# ---------------------------------------------------------------- admission on the site's view

@pytest.fixture(scope="module")
def accepted(make_card, trust):
    v = verifier.verify(make_card(card_id=b"\x5a" * 16), trust, NOW)
    assert v.accepted
    return v


INSIDE = SiteLast("d-a", "gate-1", "in", NOW_MS - 600_000)
OUTSIDE = SiteLast("d-c", "gate-3", "out", NOW_MS - 10_000)


@pytest.mark.parametrize("site, direction, reason, flags", [
    (Site(), "in", Reason.OK, ()),
    (Site(INSIDE), "in", Reason.ALREADY_INSIDE, ()),
    (Site(INSIDE), "out", Reason.OK, ()),  # leaving is never refused
    (Site(OUTSIDE), "in", Reason.OK, ()),
    (Site(isolated=True, when_isolated=OPEN), "in", Reason.OK, (SITE_ISOLATED,)),
    (Site(isolated=True, when_isolated=CLOSED), "in", Reason.SITE_ISOLATED, (SITE_ISOLATED,)),
    (Site(isolated=True, when_isolated=CLOSED), "out", Reason.OK, (SITE_ISOLATED,)),
    (Site(occupancy=50, capacity=50), "in", Reason.SITE_FULL, ()),
    (Site(occupancy=49, capacity=50), "in", Reason.OK, ()),
    (Site(INSIDE, isolated=True, when_isolated=CLOSED), "in", Reason.ALREADY_INSIDE, (SITE_ISOLATED,)),
])
def test_site_rules(accepted, site, direction, reason, flags):
    got = admit(accepted, direction, Conditions(NOW, site=site))
    assert got.verdict.reason is reason and got.flags == flags
    assert got.inside == (site.last if reason is Reason.ALREADY_INSIDE else None)
    if reason is Reason.ALREADY_INSIDE:
        assert "already inside, entered at gate-1 at " in got.verdict.detail and got.verdict.card is accepted.card


def test_an_exit_elsewhere_ends_the_local_duplicate(accepted):
    """Entered here 30 s ago, left by gate 3 10 s ago: entering here again is no duplicate."""
    earlier = Previous("e-1", NOW_MS - 30_000, "gate-1", "in", 120_000)
    assert admit(accepted, "in", Conditions(NOW), earlier).duplicate
    assert admit(accepted, "in", Conditions(NOW, site=Site(OUTSIDE)), earlier).verdict.reason is Reason.OK
    stale_exit = SiteLast("d-c", "gate-3", "out", NOW_MS - 60_000)  # before the entry: still a duplicate
    assert admit(accepted, "in", Conditions(NOW, site=Site(stale_exit)), earlier).duplicate


def test_issuer_site_credential_from_the_command_line(tmp_path, root_key):
    """`issuer site-credential` with the device's public key (as `openssl pkey -pubout` prints it)."""
    device = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "root.key").write_bytes(keys.private_pem(root_key))
    (tmp_path / "device.pub").write_bytes(keys.public_pem(device.public_key()))
    run = [sys.executable, "-m", "scanner", "issuer", "site-credential", "--root-key", str(tmp_path / "root.key"),
           "--site", SITE, "--device-pub", str(tmp_path / "device.pub"), "--valid-days", "30", "-o",
           str(tmp_path / "cred.json")]
    r = subprocess.run(run, check=False, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    cred = sitecred.load(tmp_path / "cred.json", [root_key.public_key()], site_id=SITE, device_key=device,
                         now=time.time())
    assert cred.expires_at is not None and 29 * 86400 < cred.expires_at - time.time() <= 30 * 86400
    r = subprocess.run([*run[:8], "bad site!", *run[9:]], check=False, capture_output=True, text=True, cwd=ROOT,
                       timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("checkpoint: error:") and "Traceback" not in r.stderr


# ---------------------------------------------------------------- [site] in the configuration and at start


def test_site_table_is_checked_key_by_key(tmp_path):
    secret = tmp_path / "site.secret"
    secret.write_bytes(b"x" * 32)
    good = f'[site]\nsite_id = "{SITE}"\nsecret_file = "{secret}"\n'
    assert cfg.parse_text(good).site.listen == ("0.0.0.0", 7410)
    assert cfg.parse_text("").site is None  # no [site]: a gate on its own
    bad = (f'[site]\nsite_id = "cho dong"\nsecret_file = "{tmp_path / "none"}"\nwhen_isolated = "maybe"\n'
           'peers = ["gate-2"]\nheartbeat_s = 2.0\npeer_timeout_s = 3.0\ncapacity = -1\nlisten = "0.0.0.0"\nport = 1\n')
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse_text(bad)
    assert [p.key for p in err.value.problems] == [
        "site.port", "site.site_id", "site.secret_file", "site.listen", "site.peers", "site.when_isolated",
        "site.capacity", "site.peer_timeout_s"]  # every problem at once, each naming its key
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse_text(good + "heartbeat_s = 2.0\npeer_timeout_s = 3.0\n")
    assert [p.key for p in err.value.problems] == ["site.peer_timeout_s"]


def test_a_gate_without_its_site_credential_does_not_start(tmp_path, root_key):
    """One line with the reason code, exit status 1, nothing half-started."""
    pki = make_pki(tmp_path / "pki")
    root_pem = tmp_path / "root.pem"
    root_pem.write_bytes(keys.public_pem(root_key.public_key()))
    secret = tmp_path / "site.secret"
    secret.write_bytes(b"x" * 32)
    state = tmp_path / "state"
    tables = standalone(state, pki, site={"site_id": SITE, "secret_file": str(secret), "listen": "127.0.0.1:0",
                                          "discovery": False})
    tables["trust"]["roots"] = [str(root_pem)]
    d = Daemon(write_config(tmp_path / "c.toml", tables))
    assert d.wait() == 1
    assert "site_credential_missing" in d.log and "Traceback" not in d.log
    identity.load_or_create(state)
    other = ed25519.Ed25519PrivateKey.generate()  # a credential for another device's key
    (state / sitecred.FILE_NAME).write_bytes(sitecred.issue(root_key, site_id=SITE, device_key=other.public_key(),
                                                            issued_at=int(time.time())))
    d = Daemon(write_config(tmp_path / "c.toml", tables))
    assert d.wait() == 1 and "site_credential_wrong_device" in d.log
