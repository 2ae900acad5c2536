"""A device provisioned before the server has published a trust bundle: `provision` says so (or
waits with --wait-bundle), the device shows a fault instead of blaming the card (no verdict, no
red light), every surface (health API, status, doctor, `log stats`) gives the same readiness, and
the first bundle signed by its root is taken by itself, without a second provisioning."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import requests
from support.appliance import Lane
from support.paths import ROOT
from support.pki import make_pki
from support.servers import ServerThread
from support.waiting import HTTP_TIMEOUT as T
from support.waiting import WAIT, wait_for

from scanner.base.timeutil import now_ms
from scanner.cards import keys
from scanner.cards.bundle import BundleKey, make_bundle
from scanner.store.entrylog import EntryLog
from sync.agent import SyncAgent
from sync.provision import provision
from sync.server.bundles import publish
from sync.state import DeviceConfig, StateFile


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scanner", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=WAIT, env={**os.environ, "CHECKPOINT_LANG": "en", **(env or {})}, check=False)


def bundle_for(server: ServerThread, pki) -> bytes:
    pub = pki.key.public_key()
    return make_bundle(server.root, version=1, issued_at=now_ms() // 1000 - 60, expires_at=now_ms() // 1000 + 86400,
                       keys=[BundleKey(keys.kid_of(pub), "EdDSA", "VN-HUE", pub)])


def test_provision_warns_when_the_server_has_no_bundle_and_can_wait_for_it(tmp_path):
    (tmp_path / "server").mkdir()
    server = ServerThread(tmp_path / "server" / "central.db").start()
    pki = make_pki(tmp_path / "pki")
    try:
        base = ["provision", "--server", server.url, "--trust-root", str(server.root_pub)]
        r = cli(*base, "--token", server.token(), "--state-dir", str(tmp_path / "a"), "--json")
        assert r.returncode == 0, r.stderr
        assert "warning: the server has published no trust bundle yet" in r.stderr
        assert "takes the first bundle by itself" in r.stderr
        assert json.loads(r.stdout)["bundle"] == "none"
        r = cli(*base, "--token", server.token(), "--state-dir", str(tmp_path / "b"), "--wait-bundle", "1")
        assert r.returncode == 1 and "still has no trust bundle after 1 s" in r.stderr
        timer = threading.Timer(1.5, lambda: publish(server.storage, bundle_for(server, pki), now_ms=now_ms()))
        timer.start()
        r = cli(*base, "--token", server.token(), "--state-dir", str(tmp_path / "c"), "--wait-bundle", "50", "--json")
        timer.join()
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["bundle_version"] == 1 and "warning" not in r.stderr
    finally:
        server.stop()


def surfaces(lane: Lane, url: str) -> dict:
    """The readiness code every surface reports: health API, status page data, the daemon's doctor,
    `doctor --local` and `log stats` run beside it."""
    config = str(lane.config.path)
    doctor_local = json.loads(cli("doctor", "--local", "--json", "--config", config).stdout)
    stats = json.loads(cli("log", "stats", "--json", "--config", config).stdout)
    live = requests.get(url + "/api/v1/doctor", timeout=T).json()

    def ready_check(report):
        check = next(c for c in report["checks"] if c["name"] == "ready")
        return check["status"], check["detail"].split(" (")[0]
    return {
        "health": requests.get(url + "/api/v1/health", timeout=T).json()["readiness"]["code"],
        "status": requests.get(url + "/api/v1/status", timeout=T).json()["readiness"]["code"],
        "doctor": ready_check(live),
        "doctor_local": ready_check(doctor_local),
        "log_stats": stats["device"]["code"],
    }


def test_before_the_first_bundle_the_device_shows_a_fault_then_takes_the_bundle_by_itself(tmp_path):
    (tmp_path / "server").mkdir()
    server = ServerThread(tmp_path / "server" / "central.db").start()
    pki = make_pki(tmp_path / "pki")
    state = tmp_path / "state"
    res = provision(server.url, server.token(), state, trust_root=server.root_pub)
    assert res.bundle == "none"
    lane = Lane(tmp_path, {"device": {"state_dir": str(state)}, "sync": {"builder": "inline", "interval_s": 1},
                           "api": {"listen": "127.0.0.1:0"}}).start()
    try:
        url = lane.app.api.url
        wait_for(lambda: lane.app.health()["state"] != "starting", "the first health check")
        health = requests.get(url + "/api/v1/health", timeout=T).json()
        assert health["state"] == "error" and health["problems"] == ["no_trust"]
        assert health["readiness"]["message"]["vi"] == "Thiết bị chưa sẵn sàng: không có danh sách tin cậy"
        assert surfaces(lane, url) == {"health": "no_trust", "status": "no_trust",
                                       "doctor": ("fail", "Device not ready: no trust list"),
                                       "doctor_local": ("fail", "Device not ready: no trust list"),
                                       "log_stats": "no_trust"}
        text = cli("log", "stats", "--config", str(lane.config.path)).stdout
        assert "Device: Device not ready: no trust list" in text
        trust = next(c for c in requests.get(url + "/api/v1/doctor", timeout=T).json()["checks"]
                     if c["name"] == "trust")
        assert "provision" not in trust["fix"] and "takes the first one signed by its root by itself" in trust["fix"]
        # a genuine card: a device fault, never a verdict; the amber fault blink, never the red reject
        red, amber = lane.app.feedback.leds["red"].pin, lane.app.feedback.leds["amber"].pin
        red_before, amber_before = len(red.states), len(amber.states)
        lane.send(pki.card())
        event = lane.wait(lambda e: e.kind == "error")[0]
        assert event.data["code"] == "not_ready" and event.data["readiness"]["code"] == "no_trust"
        wait_for(lambda: sum(s.state for s in amber.states[amber_before:]) >= 2, "the amber fault blink")
        assert lane.kinds("verdict") == [] and not any(s.state for s in red.states[red_before:])
        assert lane.app.core.log.stats().entries == 0
        # the operator publishes the first bundle: taken at the next contact, no second provisioning
        publish(server.storage, bundle_for(server, pki), now_ms=now_ms())
        wait_for(lambda: lane.app.readiness().ready, "the device to take the bundle", timeout=WAIT)
        wait_for(lambda: lane.app.health()["readiness"]["ready"], "the health check to follow")
        assert surfaces(lane, url) == {"health": "ready", "status": "ready",
                                       "doctor": ("pass", "ready to check cards"),
                                       "doctor_local": ("pass", "ready to check cards"), "log_stats": "ready"}
        lane.send(pki.card(name="Vũ Thị Hoa"))
        assert lane.wait(lambda e: e.kind == "verdict")[0].data["reason"] == "ok"
    finally:
        lane.stop()


def test_a_stale_agent_state_does_not_wait_an_hour_for_the_first_bundle(tmp_path):
    """The sync agent asks for a bundle at every contact while it has none (not at the hourly trust
    interval), and a server without one is not an error that stops uploads."""
    (tmp_path / "server").mkdir()
    server = ServerThread(tmp_path / "server" / "central.db").start()
    pki = make_pki(tmp_path / "pki")
    try:
        state = tmp_path / "dev"
        provision(server.url, server.token(), state, trust_root=server.root_pub)
        dev = DeviceConfig.load(state)
        log = EntryLog(state / "entries.db", device_id=dev.device_id, checkpoint_id=dev.checkpoint_id,
                       holder_details="none")
        agent = SyncAgent(state, log, trust_interval_s=3600)
        first = agent.sync_once()
        assert first.error is None and first.trust == "none"
        publish(server.storage, bundle_for(server, pki), now_ms=now_ms())
        again = agent.sync_once()
        assert again.error is None and again.trust == "full"
        assert StateFile(state).load().trust_version == 1
        assert agent.sync_once().trust is None  # from now on, hourly
        agent.close()
        log.close()
    finally:
        server.stop()
