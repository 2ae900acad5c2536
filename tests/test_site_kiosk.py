"""The kiosk and the status page of a gate of a site, in a real headless Chromium, against two
`checkpoint run` daemons that talk over loopback (static peers): the site's occupancy on the
kiosk follows an entry at the other gate, a card already inside by the other gate gets the amber
"already admitted" screen (not a refusal), the status page lists the peer, and when the other gate
is gone the kiosk says the gate is isolated (badge, strip, the site box)."""
from __future__ import annotations

import os
import time

import pytest
import requests
from support.appliance import Daemon, Fifo
from support.config import standalone, write_config
from support.paths import ROOT
from support.pki import make_pki
from support.servers import free_port
from support.waiting import HTTP_TIMEOUT as T
from support.waiting import WAIT

from bench import browser
from scanner.cards import keys
from sync.site import credential as sitecred
from sync.wire import identity

pytestmark = pytest.mark.skipif(browser.unavailable() is not None, reason=str(browser.unavailable()))

SITE = "cho-dong-ba"


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    """Where screenshots go: docs/screenshots with CHECKPOINT_SCREENSHOTS=1 (as the kiosk's tests)."""
    return ROOT / "docs" / "screenshots" if os.environ.get("CHECKPOINT_SCREENSHOTS") else tmp_path_factory.mktemp("s")


def text(chrome, element_id: str) -> str:
    return chrome.execute_script(f"return document.getElementById('{element_id}').textContent;")


def open_kiosk(chrome, url: str) -> None:
    browser.set_viewport(chrome, 800, 480)
    chrome.get(url + "/")
    browser.wait_js(chrome, "document.body.dataset.ready === 'true' && document.body.dataset.connected === 'true'",
                    WAIT, "the kiosk page to start and connect")


@pytest.fixture(scope="module")
def chrome():
    driver = browser.launch(800, 480)
    yield driver
    browser.close(driver)


def gate(tmp, name, pki, root, root_pem, secret, port, peer_port):
    state = tmp / name
    key, _ = identity.load_or_create(state)
    (state / sitecred.FILE_NAME).write_bytes(sitecred.issue(root, site_id=SITE, device_key=key.public_key(),
                                                            issued_at=int(time.time()) - 60))
    fifo = Fifo(tmp / f"{name}.fifo")
    tables = standalone(state, pki, stdin=[{"name": "desk", "path": str(fifo.path), "direction": "in"}],
                        site={"site_id": SITE, "secret_file": str(secret), "listen": f"127.0.0.1:{port}",
                              "peers": [f"127.0.0.1:{peer_port}"], "discovery": False, "heartbeat_s": 0.3,
                              "peer_timeout_s": 2.0, "capacity": 250})
    tables["device"]["checkpoint_id"] = name
    tables["trust"]["roots"] = [str(root_pem)]
    d = Daemon(write_config(tmp / f"{name}.toml", tables))
    return d, d.wait_line(r"api (http://127\.0\.0\.1:\d+)").group(1), fifo, identity.device_id(key)


def test_the_kiosk_shows_the_site_and_that_the_gate_is_isolated(tmp_path, root_key, chrome, shots):
    pki = make_pki(tmp_path / "pki")
    root_pem = tmp_path / "root.pem"
    root_pem.write_bytes(keys.public_pem(root_key.public_key()))
    secret = tmp_path / "site.secret"
    secret.write_bytes(b"0123456789abcdef0123456789abcdef")
    pa, pb = free_port(), free_port()
    a, url_a, fifo_a, _ = gate(tmp_path, "gate-A", pki, root_key, root_pem, secret, pa, pb)
    b, _, fifo_b, id_b = gate(tmp_path, "gate-B", pki, root_key, root_pem, secret, pb, pa)
    try:
        open_kiosk(chrome, url_a)
        browser.wait_js(chrome, "!document.getElementById('site-box').hidden && "
                        "document.getElementById('site-occupancy').textContent === '0 / 250'", WAIT, "the site box")
        browser.wait_js(chrome, "document.querySelector('[data-badge=site]')?.dataset.level === 'ok'", WAIT,
                        "the site badge: both gates")
        fifo_b.send(pki.card(card_id=b"\x11" * 16))
        b.wait_line(r"verdict source=stdin:desk decision=accept")
        browser.wait_js(chrome, "document.getElementById('site-occupancy').textContent === '1 / 250'", WAIT,
                        "the entry at gate B counted on gate A's kiosk")
        assert text(chrome, "site-sub") == "2 cổng đang kết nối"
        fifo_a.send(pki.card(card_id=b"\x11" * 16))  # the same card at gate A: already inside, by gate B
        a.wait_line(r"verdict source=stdin:desk decision=reject reason=already_inside")
        browser.wait_js(chrome, "document.body.dataset.view === 'duplicate'", WAIT,
                        "the amber 'already admitted' screen on A's kiosk, not a refusal")
        assert text(chrome, "word") == "ĐÃ CHO QUA"
        assert text(chrome, "reason").startswith("Đã ở trong khu vực: vào qua gate-B lúc ")
        assert chrome.execute_script("return document.querySelector('#symbol use').getAttribute('href')") == "#i-dup"
        browser.screenshot(chrome, shots / "kiosk-site-already-inside.png")
        assert text(chrome, "occupancy") in ("–", "0")  # this gate's own count is not the site's

        browser.set_viewport(chrome, 1000, 1400)
        chrome.get(url_a + "/status")
        browser.wait_js(chrome, "document.body.dataset.loaded === 'true'", WAIT, "the status page")
        peers = chrome.execute_script("return [...document.querySelectorAll('#peers-body tr')]"
                                      ".map(r => [r.dataset.peer, r.dataset.level])")
        assert peers == [[id_b, "ok"]]
        checks = dict(chrome.execute_script(
            "return [...document.querySelectorAll('#checks-body tr')].map(r => [r.dataset.check, r.dataset.level])"))
        assert checks["site"] == "ok"

        b.stop()  # gate B gone: A hears nobody
        open_kiosk(chrome, url_a)
        browser.wait_js(chrome, "document.getElementById('site-box').dataset.isolated === 'true'", WAIT,
                        "the kiosk to say the gate is isolated")
        assert text(chrome, "site-sub") == "Mất liên lạc với các cổng khác"
        browser.wait_js(chrome, "document.body.dataset.state === 'degraded' && "
                        "document.querySelector('[data-badge=site]').dataset.level === 'bad'", WAIT, "amber, badge")
        assert "site_isolated" in requests.get(url_a + "/api/v1/health", timeout=T).json()["degraded"]
        browser.screenshot(chrome, shots / "kiosk-site-isolated.png")
        assert browser.js_errors(chrome) == []
    finally:
        a.stop()
        b.stop()
        fifo_a.close()
        fifo_b.close()
