"""Provisioning against a real reference server on 127.0.0.1: the state directory and its modes,
the final config, idempotence, a root pin that does not match; enrollment QR codes; and zero-touch
enrollment: a device without provisioning reads the QR through an input and goes on scanning and
syncing, without a restart; the running daemon takes sync's state from the agent, not its file."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading

import inotify_simple
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.config import write_config
from support.paths import ROOT
from support.pki import make_pki
from support.servers import ServerThread
from support.waiting import WAIT, wait_for

from scanner.appliance.config import check_file, load
from scanner.appliance.daemon import Appliance
from scanner.appliance.provisioning import ProvisioningError, provision_appliance
from scanner.base.timeutil import now_ms
from scanner.cards import keys
from scanner.cards.bundle import BundleKey, make_bundle
from scanner.store.entrylog import EntryLog
from sync.server.bundles import publish
from sync.server.puller import pull_device
from sync.wire import enrollcode as enroll


@pytest.fixture
def server(tmp_path):
    (tmp_path / "server").mkdir()
    srv = ServerThread(tmp_path / "server" / "central.db").start()
    yield srv
    srv.stop()


@pytest.fixture
def published(server, tmp_path):
    """A root, an issuer and the bundle trusting it, published on the server."""
    root = server.root  # the operator's root: it vouches for the server and signs the bundles
    pki = make_pki(tmp_path / "pki")
    pub = pki.key.public_key()
    data = make_bundle(root, version=1, issued_at=now_ms() // 1000 - 60, expires_at=now_ms() // 1000 + 86400,
                       keys=[BundleKey(keys.kid_of(pub), "EdDSA", "VN-HUE", pub)])
    publish(server.storage, data, now_ms=now_ms(), root=root.public_key())
    return root, pki


def test_enroll_codes_round_trip_and_refuse_what_is_unsafe():
    code = enroll.EnrollCode("https://server.example.vn:8443", "tok_EN-0123456789abcdef", "ab" * 32)
    text = code.text()
    assert text.startswith("CKENROLL:v=1&s=https%3A%2F%2Fserver.example.vn") and enroll.parse(text) == code
    assert enroll.parse(enroll.EnrollCode("http://127.0.0.1:9", "tok_EN-0123456789").text()).root_sha256 is None
    for bad in ("CKENROLL:v=1&s=http%3A%2F%2Fserver.example.vn&t=tok_EN-0123456789",  # http off loopback
                "CKENROLL:v=2&s=https%3A%2F%2Fa.vn&t=tok_EN-0123456789",
                "CKENROLL:v=1&s=https%3A%2F%2Fa.vn&t=short",
                "CKENROLL:v=1&s=https%3A%2F%2Fa.vn&t=tok_EN-0123456789&t=again",
                "CKENROLL:v=1&s=https%3A%2F%2Fa.vn&t=tok_EN-0123456789&x=1",
                "CKENROLL:v=1&s=https%3A%2F%2Fa.vn&t=bad%20token%20chars!",
                "CKENROLL:v=1&s=https%3A%2F%2Fa.vn&t=tok_EN-0123456789&r=XYZ",
                "CKENROLL:" + "v=1&" * 400, "CKENROLL:", "CKENROLL:%%%"):
        with pytest.raises(enroll.EnrollCodeError):
            enroll.parse(bad)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_enroll_parser_only_raises_its_error(tail):
    try:
        enroll.parse("CKENROLL:" + tail)
    except enroll.EnrollCodeError:
        pass


def test_provision_appliance_state_config_and_idempotence(server, published, tmp_path):
    _root, _ = published
    state, conf = tmp_path / "state", tmp_path / "etc" / "checkpoint.toml"
    token = server.token("cho-dong")
    res = provision_appliance(server.url, token, config_path=conf, state_dir=state, dev=str(tmp_path / "nodev"),
                              trust_root=server.root_pub)
    assert (res.checkpoint_id, res.config, res.bundle_version) == ("cho-dong", "written", 1)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for name in ("device.key", "device.json", "trust-root.pem", "bundle.json", "server-credential.json"):
        mode = stat.S_IMODE((state / name).stat().st_mode)
        assert mode & 0o007 == 0, (name, oct(mode))
    assert stat.S_IMODE((state / "device.key").stat().st_mode) == 0o600
    assert check_file(conf) == [] and load(conf).sync.server == server.url
    conf.write_text(conf.read_text() + "\n[log]\nretention_days = 30\n")  # the technician's edit survives
    again = provision_appliance(server.url, token, config_path=conf, state_dir=state)
    assert (again.device_id, again.config, again.key_created) == (res.device_id, "kept", False)
    assert load(conf).log.retention_days == 30
    conf.write_text("[device]\nwrong = 1\n")
    with pytest.raises(ProvisioningError, match=r"device\.wrong: unknown key"):
        provision_appliance(server.url, token, config_path=conf, state_dir=state)


def test_a_root_pin_that_does_not_match_sends_nothing(server, published, tmp_path):
    state = tmp_path / "state"
    with pytest.raises(ProvisioningError) as err:
        provision_appliance(server.url, server.token(), state_dir=state, root_sha256="0" * 64,
                            trust_root=server.root_pub)
    assert err.value.code == "root_mismatch"
    assert not (state / "device.json").exists() and not (state / "trust-root.pem").exists()
    assert server.storage.stats().tokens_unused == 1  # the server was not even asked


def test_zero_touch_enrollment_from_a_scanned_qr(server, published, tmp_path):
    root, pki = published
    r = subprocess.run([sys.executable, "-m", "scanner", "server", "enroll-qr", "--db", str(server.db),
                        "--server-url", server.url, "--checkpoint", "ward-7", "--json", "--png",
                        str(tmp_path / "q.png")],
                       capture_output=True, text=True, cwd=ROOT, timeout=WAIT, check=False)
    assert r.returncode == 0, r.stderr
    qr = json.loads(r.stdout)
    assert enroll.parse(qr["text"]).server == server.url and (tmp_path / "q.png").stat().st_size > 0
    pinned = enroll.EnrollCode(server.url, enroll.parse(qr["text"]).token, enroll.root_fingerprint(root.public_key()))
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    w = os.open(fifo, os.O_RDWR)
    state = tmp_path / "state"
    config = load(write_config(tmp_path / "c.toml", {
        "device": {"state_dir": str(state)}, "sync": {"builder": "inline", "interval_s": 1},
        "enroll": {"trust_root": str(server.root_pub)},
        "api": {"enabled": False}, "feedback": {"pin_factory": "mock"},
        "stdin": [{"name": "desk", "path": str(fifo)}]}))
    app = Appliance(config)
    heard = []
    got = threading.Condition()

    def listen(event):
        with got:
            heard.append(event)
            got.notify_all()

    def wait_event(pred):
        with got:
            assert got.wait_for(lambda: any(pred(e) for e in heard), WAIT), [e.kind for e in heard]

    app.hub.listen(listen)
    app.start()
    threading.Thread(target=app.supervise, daemon=True).start()
    try:
        assert app.mode == "unprovisioned" and app.health()["degraded"][-1] == "not_provisioned"
        os.write(w, (pki.card() + "\n").encode())  # not provisioned yet: ignored, not logged
        wait_event(lambda e: e.kind == "error" and e.data["code"] == "not_provisioned")
        os.write(w, (pinned.text() + "\n").encode())
        wait_event(lambda e: e.kind == "enrolled")
        assert app.mode == "provisioned" and app.core.checkpoint_id == "ward-7"
        # a card, and an enrollment QR again (another text: the same one within the cooldown is one scan)
        os.write(w, (pki.card(name="Vũ Thị Hoa") + "\n" + qr["text"] + "\n").encode())
        wait_event(lambda e: e.kind == "verdict" and e.data["reason"] == "ok")
        wait_event(lambda e: e.kind == "error" and e.data["code"] == "already_provisioned")

        def synced():
            held = server.storage.entry_hashes(app.core.device_id)
            with EntryLog(state / "entries.db", create=False) as log:
                local = {e.seq: e.hash for e in log.entries()}
            return local and held == local
        wait_for(synced, "the server holding every entry")
    finally:
        os.close(w)
        app.request_stop()
        app.shutdown()
    with EntryLog(state / "entries.db", create=False) as log:
        assert [e.reason for e in log.entries()] == ["ok"]  # the scans before enrollment were not logged
    assert (state / "device.json").exists() and not (tmp_path / "etc").exists()


def test_the_server_pulls_through_the_daemons_api(server, published, tmp_path):
    """A site where only the server can open connections: sync push off, the server pulls from the
    running appliance's API (sync/pull.py, mounted by the daemon), every entry exactly once."""
    _root, pki = published
    state = tmp_path / "state"
    provision_appliance(server.url, server.token("vpn-site"), state_dir=state, trust_root=server.root_pub)
    lines = tmp_path / "lines.txt"
    lines.write_text("".join(pki.card(name=f"Người {i}") + "\n" for i in range(3)))
    config = load(write_config(tmp_path / "c.toml", {
        "device": {"state_dir": str(state)}, "sync": {"enabled": False}, "api": {"listen": "127.0.0.1:0"},
        "feedback": {"pin_factory": "mock"}, "stdin": [{"name": "desk", "path": str(lines)}]}))
    app = Appliance(config, once=True)
    app.start()
    try:
        app.supervise()  # returns when the three lines are logged
        assert app.logged == 3 and app.core.agent is None
        res = pull_device(server.storage, app.api.url, key=server.pull_key)
        assert res.error is None and res.complete and (res.entries, res.stored) == (3, 3), res
    finally:
        app.shutdown()
    with EntryLog(state / "entries.db", create=False) as log:
        local = {e.seq: e.hash for e in log.entries()}
        assert log.pending(0, 1) == []  # the device took the server's acknowledgement
    assert server.storage.entry_hashes(app.core.device_id) == local


def test_the_running_daemon_asks_sync_for_its_state_and_never_reads_its_file(server, published, tmp_path):
    """The health, the status page and the doctor inside the daemon take sync's state from the
    agent (the file is the agent's own, written by it alone while the daemon runs)."""
    _root, _pki = published
    state = tmp_path / "state"
    provision_appliance(server.url, server.token("ward-8"), state_dir=state, trust_root=server.root_pub)
    config = load(write_config(tmp_path / "c.toml", {
        "device": {"state_dir": str(state)}, "sync": {"builder": "inline", "interval_s": 1},
        "api": {"enabled": False}, "feedback": {"pin_factory": "mock"}}))
    app = Appliance(config)
    app.start()
    threading.Thread(target=app.supervise, daemon=True).start()
    try:
        wait_for(lambda: app.core.agent.snapshot().last_success_ms is not None, "the agent's first contact")
        watch = inotify_simple.INotify()
        watch.add_watch(state, inotify_simple.flags.OPEN)
        try:
            doctor = {c["name"]: c for c in app.doctor()["checks"]}
            status = app.status()
            opened = [ev.name for ev in watch.read(timeout=0)]
        finally:
            watch.close()
        assert doctor["sync"]["status"] == "pass" and status["sync"]["enabled"]
        assert "sync-state.json" not in opened, opened
    finally:
        app.request_stop()
        app.shutdown()
