"""The kiosk screen and the status page in a real headless Chromium (Debian's chromium and
chromedriver, driven by selenium), against `checkpoint run` as a subprocess: provisioned by the
reference server on 127.0.0.1 (a real signed trust bundle; the server's time confirms the clock),
with a simulated camera (a folder whose one picture the test swaps, as a person holds up a card)
and a named pipe as a reader. A card shown to the camera gets its verdict on the page, holder and
all, and the holder is gone after the display time; a rejected card shows its reason, in Vietnamese
and, switched on the screen, in English; staff switch the direction from the screen; the page
reconnects by itself after the daemon restarts; the status page renders the doctor's checks and
an attacker's text in the recent errors as text. A second device, whose trust bundle is stale,
shows the degraded state, its error state, and the alarm silenced from the screen. A device
provisioned before its server published a trust bundle shows the device-fault screen and gives no
verdict until it takes the bundle by itself; one without a trust root says it needs a technician
and takes no enrollment QR; one enrolling says so until its server answers. Screenshots
at 800x480 are taken of each state; with CHECKPOINT_SCREENSHOTS=1 they are written to
docs/screenshots/ (the committed ones), else to the test's temporary directory."""
from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ed25519
from support.appliance import Daemon, HeldServer
from support.cameras import show
from support.config import write_config
from support.paths import ROOT
from support.pki import NAME, make_pki
from support.servers import ServerThread, free_port
from support.waiting import HTTP_TIMEOUT as T
from support.waiting import WAIT, wait_for
from support.words import foreign

from bench import browser, frames
from scanner.appliance.provisioning import provision_appliance
from scanner.base.timeutil import now_ms
from scanner.cards import keys
from scanner.cards.bundle import BundleKey, make_bundle
from sync.server.bundles import publish
from sync.wire.enrollcode import EnrollCode

pytestmark = pytest.mark.skipif(browser.unavailable() is not None, reason=str(browser.unavailable()))

EXPIRED_NAME = "Lê Văn Cường"
VI = {"accept": "CHẤP NHẬN", "reject": "TỪ CHỐI", "expired": "Thẻ đã hết hạn", "ok": "Thẻ hợp lệ"}


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    if os.environ.get("CHECKPOINT_SCREENSHOTS"):
        return ROOT / "docs" / "screenshots"
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def chrome():
    driver = browser.launch(800, 480)
    yield driver
    browser.close(driver)


@pytest.fixture(autouse=True)
def no_script_errors(chrome):
    """Every test also checks that the pages raised no script error."""
    browser.js_errors(chrome)
    yield
    assert browser.js_errors(chrome) == []


def _feedback_tables() -> dict:
    return {"feedback": {"pin_factory": "mock", "alarm": True}, "feedback.green": {"pin": 17},
            "feedback.red": {"pin": 27}, "feedback.amber": {"pin": 22}, "feedback.buzzer": {"pin": 18}}


class Site:
    """A provisioned device (subprocess) with its server, camera folder, reader pipe and fixed port."""

    def __init__(self, tmp: Path, *, bundle: bool = True) -> None:
        self.tmp = tmp
        (tmp / "server").mkdir()
        self.server = ServerThread(tmp / "server" / "central.db").start()
        self.pki = make_pki(tmp / "pki")
        if bundle:
            self.publish_bundle()
        provision_appliance(self.server.url, self.server.token("cho-dong"), state_dir=tmp / "state",
                            trust_root=self.server.root_pub)
        self.cam = tmp / "cam"
        self.cam.mkdir()
        show(self.cam, None)
        self.fifo = tmp / "in.fifo"
        os.mkfifo(self.fifo)
        self.fifo_fd = os.open(self.fifo, os.O_RDWR)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = write_config(tmp / "checkpoint.toml", {
            "device": {"state_dir": str(tmp / "state"), "name": "Cổng chợ Đông"},
            "scan": {"cooldown_s": 600},
            "sync": {"builder": "inline", "interval_s": 2},
            "api": {"listen": f"127.0.0.1:{self.port}", "display_s": 8},
            "kiosk": {"occupancy": True},
            **_feedback_tables(),
            "camera": [{"name": "camera", "device": str(self.cam), "backend": "files", "kind": "file",
                        "loop": True, "pace": 5}],
            "stdin": [{"name": "desk", "path": str(self.fifo)}],
        })
        self.daemon: Daemon | None = None

    def publish_bundle(self) -> None:
        """The operator's root (it vouches for the server too) signs a bundle trusting the issuer."""
        root = self.server.root
        pub = self.pki.key.public_key()
        now = now_ms() // 1000
        publish(self.server.storage, make_bundle(root, version=1, issued_at=now - 60, expires_at=now + 86400,
                                                 keys=[BundleKey(keys.kid_of(pub), "EdDSA", "VN-HUE", pub)]),
                now_ms=now_ms(), root=root.public_key())

    def start(self) -> None:
        self.daemon = Daemon(self.config)
        self.daemon.wait_line(rf"api http://127\.0\.0\.1:{self.port}")

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.signal(signal.SIGTERM)
            assert self.daemon.wait() == 0, self.daemon.log
            self.daemon = None

    def send(self, text: str) -> None:
        os.write(self.fifo_fd, (text + "\n").encode())

    def status(self) -> dict:
        return requests.get(self.url + "/api/v1/status", timeout=T).json()

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
        os.close(self.fifo_fd)
        self.server.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    s = Site(tmp_path_factory.mktemp("kiosk"))
    s.start()
    yield s
    s.close()


def text(chrome, element_id: str) -> str:
    return chrome.execute_script(f"return document.getElementById('{element_id}').textContent;")


def open_kiosk(chrome, url: str) -> None:
    browser.set_viewport(chrome, 800, 480)
    chrome.get(url + "/")
    browser.wait_js(chrome, "document.body.dataset.ready === 'true' && document.body.dataset.connected === 'true'",
                    WAIT, "the kiosk page to start and connect")


def view(chrome) -> str:
    return chrome.execute_script("return document.body.dataset.view;")


def outlined_preview(chrome) -> int:
    """Green outline pixels in the preview picture as the browser shows it."""
    return chrome.execute_script("""
        const img = document.getElementById('preview');
        if (!img.naturalWidth) return 0;
        const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
        const g = c.getContext('2d'); g.drawImage(img, 0, 0);
        const d = g.getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i + 1] > 170 && d[i] < 130 && d[i + 2] < 130) n++;
        return n;""")


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def settled(chrome, url: str) -> None:
    """Wait until the page shows today's counts as the device has them (after a verdict: the
    entry is committed before the event, the page asks for the counts just after it) and the
    preview shows the code it read outlined: what a person would see a moment after the scan."""
    today = requests.get(url + "/api/v1/status", timeout=T).json()["today"]
    browser.wait_js(chrome, f"document.getElementById('today').textContent === '{today['accepted']}' && "
                    f"document.getElementById('rejected').textContent.includes('{today['rejected']}')", WAIT,
                    "today's counts on the page")
    wait_for(lambda: outlined_preview(chrome) >= 100, "the preview to show the outlined code", interval=0.1)


def test_a_card_shown_to_the_camera_gets_its_verdict_on_the_page_then_the_holder_is_gone(site, chrome, shots):
    open_kiosk(chrome, site.url)
    browser.wait_js(chrome, "document.body.dataset.state === 'ok'", WAIT,
                    "the device to be healthy (clock confirmed by the server, trust fresh)")
    assert view(chrome) == "idle" and text(chrome, "word") == "SẴN SÀNG"
    assert chrome.execute_script("return document.documentElement.lang") == "vi"
    badges = ("JSON.stringify(Object.fromEntries([...document.querySelectorAll('.badge')]"
              ".map(b => [b.dataset.badge, b.dataset.level])))")
    want = '{"camera":"ok","reader":"ok","sync":"ok","trust":"ok","clock":"ok"}'
    browser.wait_js(chrome, f"{badges} === '{want}'", WAIT, "every health badge to be ok")
    admitted = int(site.status()["today"]["accepted"])

    show(site.cam, site.pki.card(name=NAME, birth="1987-06-05"))
    browser.wait_js(chrome, "document.body.dataset.view === 'accept'", WAIT, "the accept verdict")
    assert text(chrome, "word") == VI["accept"] and text(chrome, "name") == NAME
    assert text(chrome, "born") == "Năm sinh 1987" and text(chrome, "reason") == VI["ok"]
    browser.wait_js(chrome, f"document.getElementById('today').textContent === '{admitted + 1}'", WAIT,
                    "today's count to go up")
    settled(chrome, site.url)  # and the live preview shows the card with its outline
    assert view(chrome) == "accept", "the verdict went before the screenshot (display_s too short here?)"
    assert png_size(browser.screenshot(chrome, shots / "kiosk-accept.png")) == (800, 480)

    browser.wait_js(chrome, "document.body.dataset.view === 'idle'", WAIT, "the verdict to clear")
    show(site.cam, None)
    assert text(chrome, "name") == "" and text(chrome, "born") == ""
    assert NAME not in chrome.page_source and "1987" not in chrome.page_source  # the holder is gone


def test_a_rejected_card_shows_its_reason_in_vietnamese_and_english(site, chrome, shots):
    open_kiosk(chrome, site.url)
    show(site.cam, site.pki.card(name=EXPIRED_NAME, expired=True))
    browser.wait_js(chrome, "document.body.dataset.view === 'reject'", WAIT, "the reject verdict")
    assert text(chrome, "word") == VI["reject"] and text(chrome, "reason") == VI["expired"]
    assert text(chrome, "name") == EXPIRED_NAME
    settled(chrome, site.url)
    assert view(chrome) == "reject", "the verdict went before the screenshot (display_s too short here?)"
    assert png_size(browser.screenshot(chrome, shots / "kiosk-reject.png")) == (800, 480)
    chrome.find_element("id", "lang").click()
    browser.wait_js(chrome, "document.getElementById('reason').textContent === 'Card has expired'", WAIT, "English")
    assert text(chrome, "word") == "REJECTED" and chrome.execute_script("return document.documentElement.lang") == "en"
    chrome.find_element("id", "lang").click()
    browser.wait_js(chrome, f"document.getElementById('reason').textContent === '{VI['expired']}'", WAIT, "Vietnamese")
    show(site.cam, None)


def test_a_duplicate_says_already_admitted_when_and_where_in_amber_never_a_refusal(site, chrome, shots):
    """The same card again within the anti-passback window (here from the desk reader after the
    camera): its own amber screen, as the LED shows it, with the time and place of the admission."""
    open_kiosk(chrome, site.url)
    card = site.pki.card(name="Phạm Thị Dung")
    show(site.cam, card)
    browser.wait_js(chrome, "document.body.dataset.view === 'accept'", WAIT, "the first admission")
    first = int(chrome.execute_script("return document.body.dataset.seq"))
    site.send(card)
    browser.wait_js(chrome, f"Number(document.body.dataset.seq) > {first}", WAIT, "the second scan's verdict")
    assert view(chrome) == "duplicate"
    assert text(chrome, "word") == "ĐÃ CHO QUA" and text(chrome, "name") == "Phạm Thị Dung"
    reason = text(chrome, "reason")
    assert reason.startswith("Đã vào lúc ") and "tại Cổng chợ Đông" in reason, reason
    hhmm = chrome.execute_script("return new Date().toLocaleTimeString('vi-VN', {hour: '2-digit', minute: '2-digit'})")
    assert hhmm in reason or hhmm[:-1] in reason, (hhmm, reason)  # the time of the first scan (a minute may turn)
    shown = chrome.execute_script("""const s = getComputedStyle(document.getElementById('verdict'));
        return [s.backgroundColor, document.querySelector('#symbol use').getAttribute('href')];""")
    assert shown == ["rgb(242, 169, 0)", "#i-dup"], shown  # amber, as the LED; not the red octagon
    settled(chrome, site.url)
    assert view(chrome) == "duplicate", "the verdict went before the screenshot (display_s too short here?)"
    assert png_size(browser.screenshot(chrome, shots / "kiosk-duplicate.png")) == (800, 480)
    chrome.find_element("id", "lang").click()
    browser.wait_js(chrome, "document.getElementById('word').textContent === 'ALREADY ADMITTED'", WAIT, "English")
    assert text(chrome, "reason").startswith("Came in at ") and "at Cổng chợ Đông" in text(chrome, "reason")
    chrome.find_element("id", "lang").click()
    browser.wait_js(chrome, "document.body.dataset.view === 'idle'", WAIT, "the verdict to clear")
    show(site.cam, None)


def test_a_code_the_camera_sees_but_cannot_read_asks_the_person_to_move_it(site, chrome, shots):
    """A defocused card running out of the frame (bench/frames.py's simulated Pi camera): its finder
    patterns are found, it is not read, so the screen asks to move it further away, in Vietnamese and
    in English; the prompt comes back when the card is gone."""
    open_kiosk(chrome, site.url)
    browser.wait_js(chrome, "document.body.dataset.view === 'idle'", WAIT, "the idle screen")
    camera = frames.Camera(frames.card_text())
    cut = camera.shoot(frames.Pose(180.0, offset_mm=(105.0, 0.0)), frames.Look(defocus=1.0),
                       np.random.default_rng(2)).frame
    picture = site.tmp / "next.png"
    cv2.imwrite(str(picture), cut)
    os.replace(picture, site.cam / "frame.png")
    browser.wait_js(chrome, "document.body.dataset.aim === 'further'", WAIT, "the hint on the screen")
    assert view(chrome) == "idle" and text(chrome, "reason") == "Đưa mã ra xa camera hơn"
    assert png_size(browser.screenshot(chrome, shots / "kiosk-aim.png")) == (800, 480)
    chrome.find_element("id", "lang").click()
    browser.wait_js(chrome, "document.getElementById('reason').textContent === "
                    "'Move the code further from the camera'", WAIT, "the hint in English")
    chrome.find_element("id", "lang").click()
    show(site.cam, None)
    browser.wait_js(chrome, "document.body.dataset.aim === undefined", WAIT, "the hint to go")
    assert text(chrome, "reason") == "Mời đưa mã QR trước camera"


def test_staff_switch_the_direction_from_the_screen(site, chrome):
    open_kiosk(chrome, site.url)
    first = site.status()["direction"]
    other = "out" if first == "in" else "in"
    label = {"in": "VÀO", "out": "RA"}
    browser.wait_js(chrome, f"document.getElementById('direction-value').textContent === '{label[first]}'", WAIT)
    chrome.find_element("id", "direction").click()
    browser.wait_js(chrome, f"document.getElementById('direction').dataset.direction === '{other}'", WAIT,
                    "the new direction on the screen")
    assert text(chrome, "direction-value") == label[other] and site.status()["direction"] == other
    chrome.find_element("id", "direction").click()
    browser.wait_js(chrome, f"document.getElementById('direction').dataset.direction === '{first}'", WAIT)
    assert site.status()["direction"] == first


def test_the_page_reconnects_by_itself_after_the_daemon_restarts(site, chrome):
    open_kiosk(chrome, site.url)
    site.stop()
    browser.wait_js(chrome, "document.body.dataset.connected === 'false'", WAIT, "the page to notice")
    assert chrome.execute_script("return getComputedStyle(document.getElementById('offline')).display") != "none"
    assert text(chrome, "name") == ""
    site.start()
    browser.wait_js(chrome, "document.body.dataset.connected === 'true'", WAIT, "the page to reconnect")
    site.send(site.pki.card(name="Trần Thị Bích Ngọc"))
    browser.wait_js(chrome, "document.body.dataset.view === 'accept'", WAIT, "a verdict from the new daemon")
    assert text(chrome, "name") == "Trần Thị Bích Ngọc"


def test_the_status_page_renders_the_doctor_checks_and_escapes_what_it_shows(site, chrome, shots):
    site.send("<img src=x id=injected onerror=alert(1)>\x01")  # a reader sending garbage: a logged warning
    site.daemon.wait_line(r"discarded read", WAIT)
    browser.set_viewport(chrome, 1000, 1400)
    chrome.get(site.url + "/status")
    browser.wait_js(chrome, "document.body.dataset.loaded === 'true'", WAIT, "the status page")
    checks = chrome.execute_script(
        "return [...document.querySelectorAll('#checks-body tr')].map(r => [r.dataset.check, r.dataset.level])")
    names = [c[0] for c in checks]
    for name in ("config", "state_dir", "provisioned", "camera:camera", "reader:desk", "gpio", "database", "disk",
                 "clock", "trust", "server", "sync"):
        assert name in names, (name, names)
    assert dict(checks)["provisioned"] == "ok" and dict(checks)["server"] == "ok"
    assert "checkpoint-edge" in text(chrome, "versions-kv") and "cho-dong" in text(chrome, "overview-kv")
    errors = text(chrome, "errors-body")
    assert "discarded read" in errors and "'<img'" in errors  # the reader's markup shown as text ...
    assert chrome.execute_script("return document.querySelector('#errors-body img')") is None  # ... never as HTML
    browser.screenshot(chrome, shots / "status.png")
    browser.set_viewport(chrome, 800, 480)


def visible_text(chrome, leave_out: str = "") -> str:
    """What the page shows as text, less the elements of ``leave_out`` (a CSS selector)."""
    return chrome.execute_script("""const body = document.body.cloneNode(true);
        if (arguments[0]) body.querySelectorAll(arguments[0]).forEach((e) => e.remove());
        body.querySelectorAll('[hidden], script, style, svg').forEach((e) => e.remove());
        const w = document.createTreeWalker(body, NodeFilter.SHOW_TEXT); const out = [];
        while (w.nextNode()) out.push(w.currentNode.data);
        return out.join(' ');""", leave_out)


def test_the_kiosk_and_the_status_page_show_no_english_in_vietnamese(site, chrome):
    """Every word on the Vietnamese screens is from the catalogue's Vietnamese texts (besides the
    device's own ids and names). The status page's raw data for technicians (software versions,
    configuration keys, log lines, check ids, JSON links) is data, not text, and left out."""
    open_kiosk(chrome, site.url)
    show(site.cam, site.pki.card(name=NAME))
    browser.wait_js(chrome, "document.body.dataset.view !== 'idle'", WAIT, "a verdict")
    st = site.status()
    ids = [NAME, st["device"]["id"], "cho-dong", "Cổng chợ Đông", "camera", "desk", "EN"]
    shown = text(chrome, "name")
    kiosk = visible_text(chrome)
    ids += [shown, text(chrome, "name")]  # whichever holder's verdict is on the screen: data, not text
    assert not foreign(kiosk, ids), (foreign(kiosk, ids), kiosk)
    show(site.cam, None)
    chrome.get(site.url + "/status?lang=vi")
    browser.wait_js(chrome, "document.body.dataset.loaded === 'true'", WAIT, "the status page")
    page = visible_text(chrome, "#versions-kv, #config-kv, #errors-body, .name, .json, #lang, #json-status, "
                                "#json-doctor")
    found = foreign(page, ids + [st["version"], "English", "JSON"])
    assert not found, f"{found}: {' '.join(page.split())}"
    browser.set_viewport(chrome, 800, 480)


def test_a_refused_bundle_and_a_driver_error_are_vietnamese_on_the_status_page(chrome, tmp_path):
    """A trust bundle signed by a root the device does not trust, and a serial reader whose port is not
    there: the status page says both in the catalogue's words with their codes; the driver's own
    words are quoted after them, said to be the driver's (left out of the check: they are its data)."""
    port = free_port()
    pki, rogue = make_pki(tmp_path / "pki"), ed25519.Ed25519PrivateKey.generate()
    pub = pki.key.public_key()
    now = int(time.time())
    (tmp_path / "bundle.json").write_bytes(make_bundle(rogue, version=1, issued_at=now, expires_at=now + 86400,
                                                       keys=[BundleKey(keys.kid_of(pub), "EdDSA", "VN-HUE", pub)]))
    root = tmp_path / "root.pub"
    root.write_bytes(keys.public_pem(ed25519.Ed25519PrivateKey.generate().public_key()))
    config = write_config(tmp_path / "checkpoint.toml", {
        "device": {"state_dir": str(tmp_path / "state"), "checkpoint_id": "cho-dong", "lang": "vi"},
        "sync": {"enabled": False}, "trust": {"files": [str(tmp_path / "bundle.json")], "roots": [str(root)]},
        "api": {"listen": f"127.0.0.1:{port}"}, **_feedback_tables(),
        "serial": [{"name": "entry", "port": str(tmp_path / "no-tty")}]})
    daemon = Daemon(config)
    try:
        daemon.wait_line(rf"api http://127\.0\.0\.1:{port}")
        chrome.get(f"http://127.0.0.1:{port}/status?lang=vi")
        browser.wait_js(chrome, "document.body.dataset.loaded === 'true' && document.querySelector("
                        "'#checks-body tr[data-check=\"reader:entry\"]')", WAIT, "the status page and its checks")
        trust = text(chrome, "trust-kv")
        assert "(bundle_wrong_root)" in trust and "một gốc mà thiết bị này không tin cậy" in trust, trust
        reader = chrome.execute_script(
            "return document.querySelector('#checks-body tr[data-check=\"reader:entry\"]').textContent")
        driver = reader.partition("“")[2].rpartition("”")[0]  # the driver's own words, quoted
        assert "(device_missing)" in reader and driver, reader
        page = visible_text(chrome, "#versions-kv, #config-kv, #errors-body, .name, .json, #lang, #json-status, "
                                    "#json-doctor")
        st = requests.get(f"http://127.0.0.1:{port}/api/v1/status", timeout=T).json()
        found = foreign(page, [st["device"]["id"], st["version"], "cho-dong", "(bundle_wrong_root)", "(device_missing)",
                               driver, "entry", "(no_trust)", "English", "JSON"])
        assert not found, f"{found}: {' '.join(page.split())}"
    finally:
        daemon.stop()


def broken_words_and_cut_values(chrome) -> dict:
    """On the status page: the words split over two lines in its tables and lists ("came|ra"), and
    the values (today's counts...) that end outside the window or their card."""
    return chrome.execute_script("""
        const broken = [], cut = [];
        for (const cell of document.querySelectorAll('#inputs-body td, .kv dt, .kv dd, #checks-body td.result')) {
          const node = [...cell.childNodes].find((n) => n.nodeType === 3 && n.data.trim());
          if (!node) continue;
          const re = /\\S+/g; let m;
          while ((m = re.exec(node.data))) {
            const r = document.createRange(); r.setStart(node, m.index); r.setEnd(node, m.index + m[0].length);
            const lines = new Set([...r.getClientRects()].map((x) => Math.round(x.top)));
            if (lines.size > 1 && /^[\\p{L}]+[,.:;)]?$/u.test(m[0])) broken.push(m[0]);  // words; paths may wrap
          }
        }
        for (const dd of document.querySelectorAll('#today-kv dd, #today-kv dt')) {
          const r = dd.getBoundingClientRect(), card = dd.closest('.card').getBoundingClientRect();
          if (r.right > Math.min(window.innerWidth, card.right) + 0.5 || r.width === 0) cut.push(dd.textContent);
        }
        return {broken, cut};""")


def test_the_status_page_keeps_words_whole_and_counts_in_view_on_a_phone(site, chrome):
    """On a phone, the kiosk's 800x480 and a laptop: no word of the status page split over two
    lines, today's counts (the status page's and the kiosk's) wholly in view, no sideways scrolling.
    Each page opens at once after the other: the kiosk page's streams end as it is left (held open,
    they took the browser's six connections to the device, and the fourth page waited a minute)."""
    chrome.set_page_load_timeout(WAIT / 3)
    try:
        _status_and_kiosk_on_each_screen(site, chrome)
    finally:
        chrome.set_page_load_timeout(300)  # selenium's default
    browser.set_viewport(chrome, 800, 480)


def _status_and_kiosk_on_each_screen(site, chrome) -> None:
    for width, height, mobile in ((360, 740, True), (390, 844, True), (800, 480, False), (1280, 800, False)):
        browser.set_viewport(chrome, width, height, mobile=mobile)
        chrome.get(site.url + "/status")
        browser.wait_js(chrome, "document.body.dataset.loaded === 'true'", WAIT, "the status page")
        found = broken_words_and_cut_values(chrome)
        assert found == {"broken": [], "cut": []}, (width, found)
        overflow = chrome.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow}px wider than the screen ({width}px)"
        chrome.get(site.url + "/")  # the kiosk's own counts on the same screen
        browser.wait_js(chrome, "document.body.dataset.statusAt !== undefined", WAIT, "the kiosk's counts")
        cut = chrome.execute_script("""return ['today', 'rejected', 'occupancy'].filter((id) => {
            const el = document.getElementById(id), r = el.getBoundingClientRect();
            const box = el.closest('.count').getBoundingClientRect();
            return r.width === 0 || r.right > Math.min(window.innerWidth, box.right) + 0.5
              || el.scrollWidth > el.clientWidth + 1; });""")
        assert cut == [], (width, cut)


# ---------------------------------------------------------------- a device without a trust list


def test_without_a_trust_list_the_kiosk_shows_a_device_fault_never_a_verdict(chrome, tmp_path_factory, shots):
    """Provisioned before the server published a bundle: the fault screen, in Vietnamese and English; a
    genuine card read meanwhile gets no verdict (the screen says it was not checked); once the bundle is
    published the device takes it by itself and the same card is admitted."""
    site = Site(tmp_path_factory.mktemp("no-trust"), bundle=False)
    site.start()
    try:
        open_kiosk(chrome, site.url)
        browser.wait_js(chrome, "document.body.dataset.view === 'fault'", WAIT, "the device-fault screen")
        assert chrome.execute_script("return document.body.dataset.readiness") == "no_trust"
        assert text(chrome, "word") == "CHƯA SẴN SÀNG"
        assert text(chrome, "reason") == "Thiết bị chưa sẵn sàng: không có danh sách tin cậy"
        assert png_size(browser.screenshot(chrome, shots / "kiosk-not-ready.png")) == (800, 480)
        chrome.find_element("id", "lang").click()
        assert text(chrome, "word") == "NOT READY" and text(chrome, "reason") == "Device not ready: no trust list"
        chrome.find_element("id", "lang").click()
        site.send(site.pki.card(name=NAME))
        site.daemon.wait_line(r"not ready \(no_trust\): the scan from stdin:desk was not checked", WAIT)
        browser.wait_js(chrome, "!document.getElementById('toast').hidden && document.getElementById('toast')"
                        ".textContent.startsWith('Thẻ chưa được kiểm tra')", WAIT, "the not-checked notice")
        assert view(chrome) == "fault" and text(chrome, "name") == "" and "seq" not in chrome.execute_script(
            "return Object.keys(document.body.dataset)")  # no verdict ever reached the page
        site.publish_bundle()
        browser.wait_js(chrome, "document.body.dataset.view === 'idle'", WAIT, "the device to take the bundle")
        assert text(chrome, "word") == "SẴN SÀNG"
        site.send(site.pki.card(name=NAME))
        browser.wait_js(chrome, "document.body.dataset.view === 'accept'", WAIT, "the accept verdict")
        assert text(chrome, "name") == NAME
    finally:
        site.close()


def test_a_device_without_a_trust_root_says_it_needs_a_technician(chrome, tmp_path):
    """Not provisioned and no root to check a server with: the fault screen says why, and an
    enrollment QR shown to it is not taken."""
    os.mkfifo(tmp_path / "in.fifo")
    fd = os.open(tmp_path / "in.fifo", os.O_RDWR)
    port = free_port()
    config = write_config(tmp_path / "checkpoint.toml", {
        "device": {"state_dir": str(tmp_path / "state")}, "api": {"listen": f"127.0.0.1:{port}"},
        **_feedback_tables(), "stdin": [{"name": "desk", "path": str(tmp_path / "in.fifo")}]})
    daemon = Daemon(config)
    try:
        daemon.wait_line(rf"api http://127\.0\.0\.1:{port}")
        open_kiosk(chrome, f"http://127.0.0.1:{port}")
        browser.wait_js(chrome, "document.body.dataset.view === 'fault'", WAIT, "the device-fault screen")
        assert chrome.execute_script("return document.body.dataset.readiness") == "no_trust_root"
        assert text(chrome, "word") == "CHƯA SẴN SÀNG" and "chưa có gốc tin cậy" in text(chrome, "reason")
        os.write(fd, b"CKENROLL:v=1&s=http%3A%2F%2F127.0.0.1%3A9&t=tok_EN-0123456789\n")
        daemon.wait_line(r"not ready \(no_trust_root\)", WAIT)
        assert view(chrome) == "fault"
    finally:
        daemon.stop()
        os.close(fd)


def test_an_enrolling_device_says_so_until_the_server_answers(chrome, tmp_path, shots):
    """An enrollment QR shown to a device with a pinned root: the screen says "enrolling" while the
    server holds the answer, and what came of it once it answers (here: refused)."""
    server = HeldServer()
    os.mkfifo(tmp_path / "in.fifo")
    fd = os.open(tmp_path / "in.fifo", os.O_RDWR)
    port = free_port()
    pki = make_pki(tmp_path / "pki")
    config = write_config(tmp_path / "checkpoint.toml", {
        "device": {"state_dir": str(tmp_path / "state")}, "enroll": {"trust_root": str(pki.pub)},
        "api": {"listen": f"127.0.0.1:{port}"}, **_feedback_tables(),
        "stdin": [{"name": "desk", "path": str(tmp_path / "in.fifo")}]})
    daemon = Daemon(config)
    try:
        daemon.wait_line(rf"api http://127\.0\.0\.1:{port}")
        open_kiosk(chrome, f"http://127.0.0.1:{port}")
        os.write(fd, (EnrollCode(server.url, "tok_held-0123456789").text() + "\n").encode())
        assert server.asked.wait(WAIT), "the enrollment never reached the server"
        browser.wait_js(chrome, "document.body.dataset.view === 'enrolling'", WAIT, "the enrolling screen")
        assert text(chrome, "word") == "ĐANG ĐĂNG KÝ" and "máy chủ" in text(chrome, "reason")
        chrome.save_screenshot(str(shots / "kiosk-enrolling.png"))
        server.release.set()
        browser.wait_js(chrome, "document.body.dataset.view === 'idle'", WAIT, "the screen after the refusal")
        assert "Không đăng ký được" in text(chrome, "toast")
        daemon.wait_line(r"enrollment failed \(", WAIT)
    finally:
        daemon.stop()
        server.close()
        os.close(fd)


# ---------------------------------------------------------------- a degraded device


@pytest.fixture(scope="module")
def stale(tmp_path_factory):
    """A device without a server whose trust bundle is past its age limit (degraded, fail open)."""
    tmp = tmp_path_factory.mktemp("stale")
    root = keys.generate("EdDSA")
    keys.write_private_key(tmp / "root.key", root)
    (tmp / "root.pem").write_bytes(keys.public_pem(root.public_key()))
    pki = make_pki(tmp / "pki")
    pub = pki.key.public_key()
    now = int(time.time())
    (tmp / "bundle.json").write_bytes(make_bundle(root, version=3, issued_at=now - 3 * 86400,
                                                  expires_at=now + 30 * 86400,
                                                  keys=[BundleKey(keys.kid_of(pub), "EdDSA", "VN-HUE", pub)]))
    cam = tmp / "cam"
    cam.mkdir()
    show(cam, None)
    os.mkfifo(tmp / "in.fifo")
    fd = os.open(tmp / "in.fifo", os.O_RDWR)
    port = free_port()
    config = write_config(tmp / "checkpoint.toml", {
        "device": {"state_dir": str(tmp / "state"), "checkpoint_id": "cho-dong", "name": "Cổng chợ Đông"},
        "sync": {"enabled": False},
        "trust": {"files": [str(tmp / "bundle.json")], "roots": [str(tmp / "root.pem")], "max_age_h": 24},
        "api": {"listen": f"127.0.0.1:{port}", "display_s": 8},
        **_feedback_tables(),
        "camera": [{"name": "camera", "device": str(cam), "backend": "files", "kind": "file", "loop": True,
                    "pace": 5}],
        "stdin": [{"name": "desk", "path": str(tmp / "in.fifo")}],
    })
    daemon = Daemon(config)
    daemon.wait_line(rf"api http://127\.0\.0\.1:{port}")
    yield daemon, f"http://127.0.0.1:{port}", pki, cam, fd
    daemon.stop()
    os.close(fd)


def test_on_a_phone_the_page_reflows(stale, chrome, shots):
    _, url, _, _, _ = stale
    browser.set_viewport(chrome, 390, 844, mobile=True, scale=2)
    chrome.get(url + "/")
    browser.wait_js(chrome, "document.body.dataset.ready === 'true' && document.body.dataset.connected === 'true'",
                    WAIT)
    overflow = chrome.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than the phone"
    boxes = chrome.execute_script("""return ['verdict', 'direction'].map(id => {
        const r = document.getElementById(id).getBoundingClientRect(); return [r.left, r.right, r.top]; });""")
    (v_left, v_right, v_top), (_, d_right, d_top) = boxes
    assert v_left >= 0 and v_right <= 390 and d_right <= 390 and d_top > v_top  # stacked, all within the width
    browser.wait_js(chrome, "document.getElementById('preview').naturalWidth > 0", WAIT, "the preview")
    browser.screenshot(chrome, shots / "kiosk-phone.png")
    browser.set_viewport(chrome, 800, 480)


LONG_NAME = "Nguyễn Thị Hoàng Phương Thảo Tôn Nữ Minh Nguyệt Công Tằng Tôn Nữ Diệu Huyền Châu"[:80]


def fits(chrome) -> dict:
    """Where the verdict's word, name and reason are: each whole (not clipped) and inside the
    verdict area, above the "limited operation" strip."""
    return chrome.execute_script("""
        const box = (id) => document.getElementById(id).getBoundingClientRect();
        const main = document.querySelector('.verdict-main').getBoundingClientRect();
        const note = document.getElementById('note');
        const floor = note.hidden ? box('verdict').bottom : note.getBoundingClientRect().top;
        const out = {};
        for (const id of ['symbol', 'word', 'name', 'reason']) {
          const el = document.getElementById(id), r = box(id);
          out[id] = {inside: r.top >= main.top - 0.5 && r.bottom <= Math.min(main.bottom, floor) + 0.5 && r.height > 0,
                     whole: getComputedStyle(el).overflow === 'visible' || el.scrollHeight <= el.clientHeight + 1};
        }
        return out;""")


def test_a_long_name_with_the_strip_showing_leaves_verdict_name_and_reason_in_view(stale, chrome, shots):
    """An 80-character holder name (a four-word Vietnamese name wraps) at 800x480, with the
    "limited operation" strip showing: the verdict word, the whole name and the reason all fit."""
    _, url, pki, cam, _ = stale
    open_kiosk(chrome, url)
    browser.wait_js(chrome, "document.body.dataset.state === 'degraded'", WAIT, "the degraded state")
    assert len(LONG_NAME) == 80
    show(cam, pki.card(name=LONG_NAME, birth="1990-01-01"))
    browser.wait_js(chrome, "document.body.dataset.view === 'accept'", WAIT, "the accept verdict")
    assert chrome.execute_script("return !document.getElementById('note').hidden")  # the strip shows
    assert text(chrome, "name") == LONG_NAME
    where = fits(chrome)
    assert all(v["inside"] and v["whole"] for v in where.values()), where
    assert png_size(browser.screenshot(chrome, shots / "kiosk-long-name.png")) == (800, 480)
    browser.wait_js(chrome, "document.body.dataset.view === 'idle'", WAIT, "the verdict to clear")
    show(cam, None)


def test_a_degraded_device_says_why_and_staff_silence_its_alarm(stale, chrome, shots):
    daemon, url, pki, cam, _ = stale
    open_kiosk(chrome, url)
    browser.wait_js(chrome, "document.body.dataset.state === 'degraded'", WAIT, "the degraded state")
    browser.wait_js(chrome, "document.querySelector('[data-badge=trust]').dataset.level === 'warn'", WAIT,
                    "the trust badge to warn")
    show(cam, pki.card(name=NAME, birth="1987-06-05"))
    browser.wait_js(chrome, "document.body.dataset.view === 'accept'", WAIT, "the accept verdict")
    assert "danh sách tin cậy đã cũ" in text(chrome, "note-text")  # fails open: accepted, flagged
    assert chrome.execute_script("return !document.getElementById('note').hidden")
    settled(chrome, url)
    assert view(chrome) == "accept", "the verdict went before the screenshot (display_s too short here?)"
    assert png_size(browser.screenshot(chrome, shots / "kiosk-degraded.png")) == (800, 480)
    browser.wait_js(chrome, "document.body.dataset.view === 'idle'", WAIT, "the verdict to clear")

    shutil.rmtree(cam)  # the camera is unplugged: the device error state, the alarm sounds
    browser.wait_js(chrome, "document.body.dataset.state === 'error'", WAIT, "the error state")
    browser.wait_js(chrome, "!document.getElementById('silence').hidden", WAIT, "the silence button")
    assert view(chrome) == "error" and text(chrome, "word") == "LỖI THIẾT BỊ"
    browser.wait_js(chrome, "document.querySelector('[data-badge=camera]').dataset.level === 'bad'", WAIT,
                    "the camera badge to show it down")
    browser.screenshot(chrome, shots / "kiosk-error.png")
    chrome.find_element("id", "silence").click()
    browser.wait_js(chrome, "document.getElementById('toast').textContent === 'Đã tắt báo động' && "
                    "!document.getElementById('toast').hidden", WAIT, "the daemon's silence event")
    daemon.wait_line(r"alarm acknowledged by staff", WAIT)
    assert chrome.execute_script("return document.getElementById('silence').hidden")
