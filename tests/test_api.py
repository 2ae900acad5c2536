"""The local HTTP API over real HTTP on 127.0.0.1, served by a running appliance: health, status,
doctor, the event stream (the holder's name only in the live verdict, forgotten after the display
time), staff actions, and who may call (loopback, Host header, same origin, token off loopback)."""
from __future__ import annotations

import threading

import pytest
import requests
from support.appliance import events, lan_address
from support.config import standalone, write_config
from support.inputs import Fifo
from support.pki import NAME, make_pki
from support.waiting import HTTP_TIMEOUT as T

from scanner.appliance.config import load
from scanner.appliance.daemon import Appliance


def start(tmp_path, pki, **extra):
    fifo = Fifo(tmp_path / "in.fifo")
    tables = standalone(tmp_path / "state", pki, stdin=[{"name": "desk", "path": str(fifo.path)}], **extra)
    app = Appliance(load(write_config(tmp_path / "c.toml", tables)))
    app.start()
    threading.Thread(target=app.supervise, daemon=True).start()
    return app, fifo


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    pki = make_pki(tmp / "pki")
    app, fifo = start(tmp, pki, api={"listen": "127.0.0.1:0", "display_s": 1.0})
    yield app, fifo, pki
    fifo.close()
    app.request_stop()
    app.shutdown()


def test_health_status_and_doctor(running):
    app, _fifo, _pki = running
    base = app.api.url
    h = requests.get(base + "/api/v1/health", timeout=T)
    assert h.status_code == 200 and h.json()["state"] in ("ok", "degraded") and h.headers["cache-control"] == "no-store"
    s = requests.get(base + "/api/v1/status", timeout=T).json()
    assert s["mode"] == "standalone" and s["device"]["checkpoint"] == "gate-test" and s["direction"] in ("in", "out")
    assert s["inputs"][0]["kind"] == "stdin" and s["config"]["api_token"] is False
    assert s["trust"]["keys"] == 1 and s["feedback"]["kind"] == "gpio"
    d = requests.get(base + "/api/v1/doctor", timeout=T).json()
    names = [c["name"] for c in d["checks"]]
    assert names[:3] == ["config", "state_dir", "provisioned"] and "reader:desk" in names and "database" in names
    assert all(c["status"] in ("pass", "warn", "fail") for c in d["checks"])


def test_a_verdict_reaches_the_stream_with_the_holder_then_is_forgotten(running):
    app, fifo, pki = running
    base = app.api.url
    stream = events(base + "/api/v1/events")
    first = [next(stream), next(stream)]
    assert {k for k, _ in first} == {"state", "direction"}
    fifo.send(pki.card(name=NAME, birth="1987-06-05"))
    kind, data = next(stream)
    while kind != "verdict":
        kind, data = next(stream)
    assert data["decision"] == "accept" and data["reason"] == "ok" and data["format"] == "CK1"
    assert data["holder"] == {"name": NAME, "birth_year": "1987"} and data["source"] == "stdin"
    assert data["seq"] >= 1 and data["display_s"] == 1.0
    kind, data = next(stream)
    while kind != "clear":
        kind, data = next(stream)
    assert app.hub.current() is None
    fresh = events(base + "/api/v1/events")
    assert {next(fresh)[0], next(fresh)[0]} == {"state", "direction"}  # no verdict: the name is gone
    for path in ("/api/v1/status", "/api/v1/health", "/api/v1/doctor"):
        text = requests.get(base + path, timeout=T).text
        assert NAME not in text and "1987-06-05" not in text  # nothing personal from the log, ever
    assert app.logged >= 1


def test_staff_actions_and_refusals(running):
    app, _fifo, _pki = running
    base = app.api.url
    stream = events(base + "/api/v1/events")
    before = app.feedback.direction
    r = requests.post(base + "/api/v1/direction", json={}, timeout=T)
    assert r.status_code == 200 and r.json()["direction"] != before
    kind, data = next(stream)
    while not (kind == "direction" and data["by"] == "staff"):
        kind, data = next(stream)
    assert data["direction"] != before
    assert requests.post(base + "/api/v1/direction", json={"direction": before},
                         timeout=T).json() == {"direction": before}
    assert requests.post(base + "/api/v1/direction", json={"direction": before},
                         timeout=T).json() == {"direction": before}
    assert requests.post(base + "/api/v1/silence", json={}, timeout=T).json() == {"silenced": True}
    kind, _ = next(stream)
    while kind != "silence":
        kind, _ = next(stream)
    bad = [
        (requests.post(base + "/api/v1/direction", json={"direction": "up"}, timeout=T), 400, "bad_direction"),
        (requests.post(base + "/api/v1/direction", data=b"[1]", headers={"Content-Type": "application/json"},
                       timeout=T), 400, "bad_request"),
        (requests.post(base + "/api/v1/silence", data=b"x", headers={"Content-Type": "text/plain"}, timeout=T), 415,
         "json_required"),
        (requests.post(base + "/api/v1/silence", json={}, headers={"Origin": "http://evil.example"}, timeout=T), 403,
         "cross_origin"),
        (requests.get(base + "/api/v1/status", headers={"Host": "evil.example"}, timeout=T), 403, "bad_host"),
        (requests.get(base + "/api/v1/nothing", timeout=T), 404, "not_found"),
        (requests.post(base + "/api/v1/health", json={}, timeout=T), 405, "method_not_allowed"),
    ]
    for resp, status, code in bad:
        assert (resp.status_code, resp.json()["error"]) == (status, code)


def test_a_token_is_needed_from_other_machines(tmp_path):
    lan = lan_address()
    if lan is None:
        pytest.skip("this machine has no non-loopback IPv4 address to call the API from")
    pki = make_pki(tmp_path / "pki")
    token = "lan-token-0123456789"
    app, fifo = start(tmp_path, pki, api={"listen": "0.0.0.0:0", "token": token})
    try:
        port = app.api.port
        url = f"http://{lan}:{port}/api/v1/status"
        r = requests.get(url, timeout=T)
        assert r.status_code == 401 and r.json()["error"] == "token_required"
        assert requests.get(url, headers={"Authorization": "Bearer wrong-token-000000"}, timeout=T).status_code == 401
        ok = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=T)
        assert ok.status_code == 200 and token not in ok.text and ok.json()["config"]["api_token"] is True
        stream = events(f"http://{lan}:{port}/api/v1/events?token={token}")
        assert next(stream)[0] in ("state", "direction")
        assert requests.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=T).status_code == 200  # this machine
    finally:
        fifo.close()
        app.request_stop()
        app.shutdown()
