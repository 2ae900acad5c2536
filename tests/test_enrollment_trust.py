"""Zero-touch enrollment attacked with the operator's public files, and the server credential that
stops it (sync/credential.py): a stranger's own `checkpoint server run` (its own database and
sealing key) that republishes the operator's genuine bundle with --root root.pub, prints an
enrollment QR pinning that root but pointing at itself, and serves the operator's genuine
credential or one of its own, gets no device and no holder's name; the genuine server still
enrolls it. A device without a pinned root takes no QR at all; a sealing key planted in the
state directory is never used; credentials are checked for root, signature, URL and rollback."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st
from support.appliance import Lane
from support.devices import provision_device
from support.paths import ROOT
from support.pki import OPERATOR_ROOT, make_pki
from support.servers import ServerProcess, ServerThread
from support.waiting import WAIT, wait_for

from scanner.appliance import readiness
from scanner.appliance.doctor import check_credential
from scanner.base.timeutil import now_ms
from scanner.cards import keys, x509util
from scanner.cards.bundle import BundleKey, make_bundle
from scanner.store import sealing
from scanner.store.entrylog import EntryLog
from sync import credential
from sync.server.credentials import CREDENTIAL_META, publish
from sync.server.keys import X25519PrivateKey, load_private_key
from sync.server.storage import open_storage
from sync.wire import credential as credwire

NAMES = ["Nguyễn Văn An", "Trần Thị Bích", "Lê Văn Cường", "Phạm Minh Đức", "Hoàng Thị Em"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scanner", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=WAIT, check=False)


def enroll_qr(db, url: str, root_pub) -> str:
    r = cli("server", "enroll-qr", "--db", str(db), "--server-url", url, "--checkpoint", "cho-dong",
            "--root", str(root_pub), "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["text"]


def opened_by(state, key: X25519PrivateKey) -> list[str]:
    """The holders' names in the device's log that ``key`` opens."""
    names = []
    if not (state / "entries.db").exists():
        return names
    with EntryLog(state / "entries.db", create=False) as log:
        for e in log.entries():
            if e.sealed:
                try:
                    names.append(sealing.open(e.sealed, key, e.entry_id).name)
                except sealing.SealError:
                    pass
    return names


@pytest.fixture
def operator(tmp_path):
    """The operator's server (vouched for by its root), the genuine bundle published, and the public
    files anyone can copy: root.pub, bundle.json, the server's credential."""
    (tmp_path / "operator").mkdir()
    srv = ServerThread(tmp_path / "operator" / "central.db").start()
    pki = make_pki(tmp_path / "pki")
    pub = pki.key.public_key()
    bundle = tmp_path / "bundle.json"
    bundle.write_bytes(make_bundle(srv.root, version=1, issued_at=now_ms() // 1000 - 60,
                                   expires_at=now_ms() // 1000 + 86400,
                                   keys=[BundleKey(keys.kid_of(pub), "EdDSA", "VN-HUE", pub)]))
    r = cli("server", "bundle", "publish", "--db", str(srv.db), str(bundle), "--root", str(srv.root_pub))
    assert r.returncode == 0, r.stderr
    cred = tmp_path / "server-credential.json"
    cred.write_bytes(srv.storage.get_meta(CREDENTIAL_META).encode())
    srv.pki, srv.bundle, srv.credential = pki, bundle, cred
    yield srv
    srv.stop()


def test_a_strangers_server_with_every_public_file_gets_no_device_and_no_name(operator, tmp_path):
    (tmp_path / "stranger").mkdir()
    stranger = ServerProcess(tmp_path / "stranger" / "central.db", root=None).start()  # nobody vouches for it
    try:
        r = cli("server", "bundle", "publish", "--db", str(stranger.db), str(operator.bundle),
                "--root", str(operator.root_pub))
        assert r.returncode == 0, r.stderr  # the genuine bundle, republished
        lane = Lane(tmp_path, {"device": {"state_dir": str(tmp_path / "state")},
                               "sync": {"builder": "inline", "interval_s": 1},
                               "enroll": {"trust_root": str(operator.root_pub)}, "api": {"enabled": False}}).start()
        state = tmp_path / "state"

        def attempt(n: int) -> str:
            """Show the stranger's QR (pinning the operator's root); the code it was refused with."""
            lane.send(enroll_qr(stranger.db, stranger.url, operator.root_pub))
            event = lane.wait(lambda e: e.kind == "enrolled" or (e.kind == "error"
                                                                 and e.data["code"] != "not_provisioned"), n)[-1]
            assert event.kind == "error" and lane.app.mode == "unprovisioned", (event.kind, event.data)
            return event.data["code"]
        try:
            assert attempt(1) == "credential_missing"  # the stranger has no credential at all ...
            # ... so it serves the operator's genuine one (public: every device gets it), put in its database
            st = open_storage(str(stranger.db))
            st.set_meta(CREDENTIAL_META, operator.credential.read_text())
            assert attempt(2) == "credential_wrong_server"
            # ... or one of its own, for its URL and key, signed by a root of its own
            own_root = ed25519.Ed25519PrivateKey.generate()
            own_key = load_private_key(tmp_path / "stranger" / "sealing.key", X25519PrivateKey).public_key()
            st.set_meta(CREDENTIAL_META, credwire.issue(own_root, urls=[stranger.url], sealing_key=own_key,
                                                        issued_at=int(time.time())).decode())
            st.close()
            assert attempt(3) == "credential_wrong_root"
            assert lane.kinds("enrolled") == []
            assert sorted(p.name for p in state.iterdir() if p.name != "clock.json") == ["device.key"]
            lane.send(*(operator.pki.card(name=n) for n in NAMES))  # people arrive meanwhile: nothing logged
            lane.wait(lambda e: e.kind == "error" and e.data["code"] == "not_provisioned", len(NAMES))
            assert lane.kinds("verdict") == [] and not (state / "entries.db").exists()
            # the genuine QR: enrolled with the operator, the same people admitted, names sealed to its key
            lane.send(enroll_qr(operator.db, operator.url, operator.root_pub))
            lane.wait(lambda e: e.kind == "enrolled")
            lane.send(*(operator.pki.card(name=n) for n in NAMES))
            assert {e.data["reason"] for e in lane.wait(lambda e: e.kind == "verdict", len(NAMES))} == {"ok"}
            wait_for(lambda: len(operator.storage.entry_hashes(lane.app.core.device_id)) == len(NAMES),
                     "the operator's server holding every entry")
        finally:
            lane.stop()
        stranger_key = load_private_key(tmp_path / "stranger" / "sealing.key", X25519PrivateKey)
        assert opened_by(state, stranger_key) == []
        assert sorted(opened_by(state, operator.sealing_key)) == sorted(NAMES)
        held = open_storage(str(stranger.db))
        try:
            assert held.stats().entries == 0 and held.stats().batches == 0  # nothing uploaded to the stranger
        finally:
            held.close()
        # and the stranger's own server would not even publish the operator's credential: other key, other URL
        r = cli("server", "credential", "publish", "--db", str(stranger.db), str(operator.credential))
        assert r.returncode == 2 and "(credential_wrong_key)" in r.stderr and "KEYS/sealing.key" in r.stderr
    finally:
        stranger.stop()


def test_a_device_without_a_pinned_root_takes_no_enrollment_qr(operator, tmp_path):
    state = tmp_path / "state"
    lane = Lane(tmp_path, {"device": {"state_dir": str(state)}, "api": {"enabled": False}}).start()
    try:
        health = lane.app.health()
        assert health["state"] == "error" and health["problems"] == ["no_trust_root"]
        assert health["readiness"]["code"] == "no_trust_root"
        assert "gốc tin cậy" in health["readiness"]["message"]["vi"]
        qr = enroll_qr(operator.db, operator.url, operator.root_pub)  # even the genuine one
        lane.send(qr)
        event = lane.wait(lambda e: e.kind == "error")[0]
        assert event.data["code"] == "not_ready" and event.data["readiness"]["code"] == "no_trust_root"
        assert event.data["message"]["en"].startswith("Device not ready: no trust root")
        assert lane.app.mode == "unprovisioned" and lane.kinds("enrolled") == []
        assert operator.storage.stats().tokens_unused == 1  # the server was not even asked
    finally:
        lane.stop()
    assert not (state / "device.json").exists()
    r = cli("doctor", "--local", "--json", "--config", str(lane.config.path))
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["ready"]["status"] == "fail" and "--trust-root" in checks["ready"]["fix"]
    assert "--trust-root" in checks["provisioned"]["fix"]
    # provisioning from the command line needs the root too: never taken from the server
    r = cli("provision", "--server", operator.url, "--token", operator.token(), "--state-dir", str(state))
    assert r.returncode == 2 and "(no_trust_root)" in r.stderr and not (state / "device.json").exists()


def test_a_planted_sealing_key_or_forged_credential_is_never_used(operator, tmp_path):
    dev = provision_device(operator, tmp_path)
    dev.log.close()
    state = dev.state
    plain = {"device": {"state_dir": str(state)}, "sync": {"enabled": False}, "api": {"enabled": False}}
    thief = X25519PrivateKey.generate()
    # a key file where older versions looked for the server's key: never read
    (state / "sealing.pub").write_bytes(sealing.public_key_pem(thief.public_key()))
    lane = Lane(tmp_path, plain).start()
    try:
        lane.send(operator.pki.card(name=NAMES[0]))
        assert lane.wait(lambda e: e.kind == "verdict")[0].data["reason"] == "ok"
    finally:
        lane.stop()
    assert opened_by(state, thief) == [] and opened_by(state, operator.sealing_key) == [NAMES[0]]
    # a credential not signed by the pinned root, one whose payload was changed, none: nothing sealed
    genuine = (state / credential.FILE_NAME).read_bytes()
    other_root = ed25519.Ed25519PrivateKey.generate()
    forged = credwire.issue(other_root, urls=[operator.url], sealing_key=thief.public_key(), serial=9,
                            issued_at=int(time.time()))
    tampered = json.loads(genuine)
    tampered["credential"] = json.loads(forged)["credential"]  # the operator's signature over another payload
    for planted, code in ((forged, "credential_wrong_root"), (json.dumps(tampered).encode(),
                                                              "credential_bad_signature"),
                          (None, "credential_missing")):
        path = state / credential.FILE_NAME
        if planted is None:
            path.unlink()
        else:
            path.write_bytes(planted)
        lane = Lane(tmp_path, plain).start()
        try:
            assert lane.app.device.credential_error == code
            assert "no_credential" in lane.app.health()["degraded"]
            lane.send(operator.pki.card(name=NAMES[1]))
            assert lane.wait(lambda e: e.kind == "verdict")[0].data["reason"] == "ok"
        finally:
            lane.stop()
        assert check_credential(lane.config).status == "warn"
    with EntryLog(state / "entries.db", create=False) as log:
        stats = log.stats()
        assert stats.entries == 4 and stats.holder_sealed == 1  # the three since were sealed to no one
    assert opened_by(state, thief) == [] and opened_by(state, operator.sealing_key) == [NAMES[0]]


def test_credentials_refuse_other_roots_urls_tampering_and_rollback(operator, tmp_path):
    root = operator.root
    seal = X25519PrivateKey.generate().public_key()
    url = operator.url
    one = credwire.issue(root, urls=[url, "https://Central.Example.VN/"], sealing_key=seal, issued_at=1)
    cred = credwire.open_credential(one, [root.public_key()])
    assert cred.urls == (url, "https://central.example.vn:443")
    assert cred.names(url + "/") and cred.names("https://central.example.vn:443") and not cred.names(
        "https://central.example.vn:8443")
    with pytest.raises(credwire.CredentialError) as err:
        credwire.open_credential(one, [ed25519.Ed25519PrivateKey.generate().public_key()])
    assert err.value.code == "credential_wrong_root"
    for bad in (b"", b"{}", b"[1]", b"x" * 20000, one.replace(b'"sig": "', b'"sig": "AAAA'),
                json.dumps({"credential": "e30=", "kid": json.loads(one)["kid"],
                            "sig": json.loads(one)["sig"]}).encode()):
        with pytest.raises(credwire.CredentialError):
            credwire.open_credential(bad, [root.public_key()])
    with pytest.raises(credwire.CredentialError):  # plain http off loopback is never a server URL
        credwire.issue(root, urls=["http://central.example.vn"], sealing_key=seal, issued_at=1)
    # on the device: installed once, a newer serial replaces it, an older one or a twin does not
    state = tmp_path / "dev"
    dev = provision_device(operator, tmp_path)
    dev.log.close()
    roots = [root.public_key()]
    installed = credential.load(state).serial
    newer = credwire.issue(root, urls=[url], sealing_key=seal, serial=installed + 1, issued_at=2)
    assert credential.install(state, newer, roots, url)[1] is True
    twin = credwire.issue(root, urls=[url], sealing_key=operator.sealing_key.public_key(), serial=installed + 1,
                          issued_at=3)
    for refused in (one, twin):
        with pytest.raises(credwire.CredentialError) as err:
            credential.install(state, refused, roots, url)
        assert err.value.code in ("credential_rollback", "credential_wrong_server")
    assert credential.load(state).data == newer
    other = credwire.issue(root, urls=["https://elsewhere.example.vn"], sealing_key=seal, serial=99, issued_at=4)
    with pytest.raises(credwire.CredentialError) as err:
        credential.install(state, other, roots, url)
    assert err.value.code == "credential_wrong_server"
    # the server publishes only a credential for its own keys, and never an older one
    with pytest.raises(credwire.CredentialError) as err:
        publish(operator.storage, newer, sealing_public=operator.sealing_key.public_key(), pull_public=None)
    assert err.value.code == "credential_wrong_key"


def test_a_new_credential_from_the_server_is_checked_and_used_for_new_entries(operator, tmp_path):
    """A trust check brings the server's credential: verified against the pinned root before it is
    kept, and the running device seals to its key from then on."""
    dev = provision_device(operator, tmp_path)
    dev.log.close()
    state = dev.state
    lane = Lane(tmp_path, {"device": {"state_dir": str(state)}, "sync": {"builder": "inline", "interval_s": 1},
                           "api": {"enabled": False}}).start()
    try:
        lane.send(operator.pki.card(name=NAMES[0]))
        lane.wait(lambda e: e.kind == "verdict")
        # the operator re-issues the credential (say the server got a new address too) ...
        old = credential.load(state)
        newer = credwire.issue(operator.root, urls=[operator.url, "https://central.example.vn"],
                               sealing_key=operator.sealing_key.public_key(), pull_key=operator.pull_key.public_key(),
                               serial=old.serial + 1, issued_at=int(time.time()))
        publish(operator.storage, newer, sealing_public=operator.sealing_key.public_key(),
                pull_public=operator.pull_key.public_key())
        lane.app.core.agent.sync_once(trust=True)
        assert credential.load(state).serial == old.serial + 1
        # ... and a server that sends one its root never signed changes nothing, and says so
        operator.storage.set_meta(CREDENTIAL_META, credwire.issue(
            ed25519.Ed25519PrivateKey.generate(), urls=[operator.url],
            sealing_key=X25519PrivateKey.generate().public_key(),
            serial=50, issued_at=1).decode())
        lane.app.core.agent.sync_once(trust=True)
        assert credential.load(state).serial == old.serial + 1
        wait_for(lambda: "credential_refused" in lane.app.core.agent.files.load().alarms, "the alarm")
        lane.send(operator.pki.card(name=NAMES[1]))
        lane.wait(lambda e: e.kind == "verdict", 2)
    finally:
        lane.stop()
    assert sorted(opened_by(state, operator.sealing_key)) == sorted(NAMES[:2])


def test_readiness_is_one_function_of_the_facts():
    f = readiness.Facts
    assert readiness.assess(f("unprovisioned", False, 0)).code == "no_trust_root"
    assert readiness.assess(f("unprovisioned", True, 0)).code == "not_provisioned"
    assert readiness.assess(f("provisioned", True, 0)).code == "no_trust"
    assert readiness.assess(f("standalone", False, 0, "bundle_invalid: bad")).detail == "bundle_invalid: bad"
    assert readiness.assess(f("provisioned", True, 2)).ready
    r = readiness.assess(f("provisioned", True, 0)).to_dict()
    assert r["message"] == {"vi": "Thiết bị chưa sẵn sàng: không có danh sách tin cậy",
                            "en": "Device not ready: no trust list"}


def test_the_operator_vouches_for_a_server_from_the_command_line(tmp_path):
    """`server keys` → `issuer server-credential` (where the root is) → `server credential publish`:
    then devices provisioned with the root enroll; a credential of another root, for other keys or
    an older one is refused by the server already."""
    (tmp_path / "srv").mkdir()
    server = ServerThread(tmp_path / "srv" / "central.db", root=None).start()
    try:
        db = str(server.db)
        assert cli("issuer", "keygen", "--out", str(tmp_path / "root")).returncode == 0
        assert cli("issuer", "keygen", "--out", str(tmp_path / "other")).returncode == 0
        r = cli("server", "keys", "--db", db, "--out", str(tmp_path / "pub"))
        assert r.returncode == 0, r.stderr
        assert sealing.load_public_key(tmp_path / "pub" / "sealing.pub") is not None

        def issue(root: str, serial: int, *extra: str) -> str:
            out = tmp_path / f"cred-{root}-{serial}-{len(extra)}.json"
            r = cli("issuer", "server-credential", "--root-key", str(tmp_path / f"{root}.key"), "--server-url",
                    server.url, "--sealing-pub", str(tmp_path / "pub" / "sealing.pub"), "--pull-pub",
                    str(tmp_path / "pub" / "pull.pub"), "--server-id", "central-test", "--serial", str(serial),
                    "-o", str(out), *extra)
            assert r.returncode == 0, r.stderr
            return str(out)

        r = cli("server", "credential", "publish", "--db", db, issue("root", 1))
        assert r.returncode == 2 and "(credential_no_root)" in r.stderr  # the first time, --root names it
        r = cli("server", "credential", "publish", "--db", db, issue("root", 1), "--root", str(tmp_path / "root.pub"),
                "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["server_id"] == "central-test" and json.loads(r.stdout)["serial"] == 1
        r = cli("server", "credential", "publish", "--db", db, issue("other", 5))
        assert r.returncode == 2 and "(credential_wrong_root)" in r.stderr
        r = cli("server", "credential", "publish", "--db", db, issue("root", 1, "--server-url", "https://x.example.vn"))
        assert r.returncode == 2 and "(credential_rollback)" in r.stderr and "không lớn hơn số 1" in r.stderr
        r = cli("provision", "--server", server.url, "--token", server.token(), "--trust-root",
                str(tmp_path / "root.pub"), "--state-dir", str(tmp_path / "dev"), "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["server_id"] == "central-test"
        assert credential.load(tmp_path / "dev").sealing_key_id() == credwire.open_credential(
            (tmp_path / "cred-root-1-0.json").read_bytes(), [x509util.load_public_keys(tmp_path / "root.pub")[0][0]]
        ).sealing_key_id()
    finally:
        server.stop()


_GOOD = credwire.issue(OPERATOR_ROOT, urls=["https://central.example.vn"],
                       sealing_key=X25519PrivateKey.generate().public_key(), issued_at=1)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=400),
                 st.tuples(st.integers(0, len(_GOOD) - 1), st.binary(min_size=1, max_size=8)).map(
                     lambda cut: _GOOD[:cut[0]] + cut[1] + _GOOD[cut[0] + len(cut[1]):])))
def test_fuzz_credential_files_open_or_raise_their_error(data):
    """Any bytes, and the genuine file with a few bytes changed: a verified credential only when the
    signed payload is untouched, else CredentialError (never another exception)."""
    try:
        cred = credwire.open_credential(data, [OPERATOR_ROOT.public_key()])
    except credwire.CredentialError:
        return
    payload = (base64.b64decode(json.loads(d)["credential"]) for d in (data, _GOOD))
    assert next(payload) == next(payload) and cred.urls == ("https://central.example.vn:443",)
