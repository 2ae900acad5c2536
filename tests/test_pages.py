"""The browser pages' server side over real HTTP on 127.0.0.1, served by a running appliance: the
pages and their files (Content-Security-Policy, nothing inline), the texts from the one
translation file (every key the pages use exists in both languages), the kiosk's settings, the
camera preview as Motion-JPEG with the code outlined (and no encoding while nobody watches), the
verdict's publish time, versions on the status, and the token rule for the pages off loopback.
The pages themselves run in a real browser in tests/test_kiosk_browser.py."""
from __future__ import annotations

import re
import threading
import time

import cv2
import numpy as np
import pytest
import requests
from support.appliance import events, lan_address
from support.cameras import show
from support.config import standalone, write_config
from support.inputs import Fifo
from support.paths import ROOT
from support.pki import NAME, make_pki
from support.waiting import HTTP_TIMEOUT as T
from support.waiting import wait_for

from hardware.decode import DecodedCode
from scanner.appliance.config import load
from scanner.appliance.daemon import Appliance
from scanner.appliance.pages import TEXT_SECTIONS
from scanner.appliance.preview import Preview, encode_jpeg, scale_frame
from scanner.base import i18n
from scanner.base.errors import Reason
from scanner.store.admission import (
    CLOCK_BEHIND,
    CLOCK_UNCONFIRMED,
    LOW_DISK,
    NOT_PROVISIONED,
    SYNC_BACKLOG,
    TRUST_STALE,
)

WEB = ROOT / "scanner" / "appliance" / "web"


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pages")
    pki = make_pki(tmp / "pki")
    cam = tmp / "cam"
    cam.mkdir()
    show(cam, None)
    fifo = Fifo(tmp / "in.fifo")
    tables = standalone(tmp / "state", pki, stdin=[{"name": "desk", "path": str(fifo.path)}],
                        camera=[{"name": "door", "device": str(cam), "backend": "files", "kind": "file",
                                 "loop": True, "pace": 8}],
                        scan={"cooldown_s": 600}, kiosk={"occupancy": True, "lang": "en", "preview_fps": 8},
                        device={"state_dir": str(tmp / "state"), "checkpoint_id": "gate-test", "name": "Cổng chợ"})
    app = Appliance(load(write_config(tmp / "c.toml", tables)))
    app.start()
    threading.Thread(target=app.supervise, daemon=True).start()
    yield app, fifo, pki, cam
    fifo.close()
    app.request_stop()
    app.shutdown()


def test_pages_and_files_are_served_with_a_strict_policy(running):
    app = running[0]
    base = app.api.url
    for path, marker in (("/", b'id="verdict"'), ("/status", b'id="checks"')):
        r = requests.get(base + path, timeout=T)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html") and marker in r.content
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert r.headers["x-frame-options"] == "DENY" and r.headers["referrer-policy"] == "no-referrer"
        again = requests.get(base + path, headers={"If-None-Match": r.headers["etag"]}, timeout=T)
        assert again.status_code == 304
    for name, ctype in (("kiosk.js", "text/javascript"), ("common.js", "text/javascript"), ("kiosk.css", "text/css"),
                        ("status.js", "text/javascript"), ("status.css", "text/css")):
        r = requests.get(f"{base}/static/{name}", timeout=T)
        assert r.status_code == 200 and r.headers["content-type"].startswith(ctype)
        assert r.content == (WEB / name).read_bytes() and r.headers["x-content-type-options"] == "nosniff"
    for bad in ("/static/kiosk.html", "/static/nothing.js", "/static/..%2Fapi.py", "/static/../pages.py"):
        assert requests.get(base + bad, timeout=T).status_code == 404, bad


def test_the_pages_have_nothing_inline_and_load_nothing_from_elsewhere():
    for page in WEB.glob("*.html"):
        html = page.read_text(encoding="utf-8")
        scripts = re.findall(r"<script([^>]*)>", html)
        assert scripts and all('src="/static/' in s for s in scripts), page.name  # CSP: no inline script
        assert not re.search(r"\s(style|on[a-z]+)=", html), page.name  # no inline style or handler
    for f in WEB.iterdir():
        text = f.read_text(encoding="utf-8")
        assert not re.search(r"(https?:)?//(?!www\.w3\.org/2000/svg)[a-z0-9.-]+\.[a-z]{2,}", text), f.name
        assert "innerHTML" not in text and "eval(" not in text, f.name


def _keys_used() -> set[str]:
    """Every text key the pages name: data-t attributes, t("...") calls, and the families built
    from codes (decisions, reasons, degraded flags, states, check results, directions)."""
    used: set[str] = set()
    for f in WEB.iterdir():
        text = f.read_text(encoding="utf-8")
        used |= set(re.findall(r'data-t="([a-z_]+\.[a-z_]+)"', text))
        used |= set(re.findall(r'\bt\("([a-z_]+\.[a-z_]+)"', text))
    used |= {f"decision.{d}" for d in ("accept", "reject")}
    used |= {f"reason.{r}" for r in Reason}
    used |= {f"degraded.{f}" for f in (TRUST_STALE, CLOCK_UNCONFIRMED, CLOCK_BEHIND, SYNC_BACKLOG, LOW_DISK,
                                        NOT_PROVISIONED)}
    used |= {f"status_page.state_{s}" for s in ("ok", "degraded", "error", "starting")}
    used |= {f"status_page.{s}" for s in ("pass", "warn", "fail")} | {"kiosk.dir_in", "kiosk.dir_out"}
    return used


def test_every_text_the_pages_use_comes_from_the_translation_file_in_both_languages(running):
    doc = requests.get(running[0].api.url + "/api/v1/texts", timeout=T).json()
    assert doc["langs"] == ["vi", "en"]
    table = i18n._table()
    used = _keys_used()
    assert len(used) > 60
    for key in sorted(used):
        section, name = key.split(".")
        assert section in TEXT_SECTIONS, key
        entry = table[section].get(name)
        assert entry is not None and entry.get("vi") and entry.get("en"), f"{key} missing in translations.toml"
        assert doc["texts"]["vi"][key] == entry["vi"] and doc["texts"]["en"][key] == entry["en"]
    assert doc["texts"]["vi"]["reason.expired"] == "Thẻ đã hết hạn"
    # the scripts hold no sentence of their own (no Vietnamese text outside the translation file)
    for f in WEB.iterdir():
        assert not re.search(r"[ăâđêôơưàảãáạằẳẵắặầẩẫấậèẻẽéẹềểễếệìỉĩíịòỏõóọồổỗốộờởỡớợùủũúụừửữứựỳỷỹýỵ]",
                             f.read_text(encoding="utf-8"), re.IGNORECASE), f.name


def test_kiosk_settings_versions_and_the_verdicts_publish_time(running):
    app, fifo, pki, _ = running
    base = app.api.url
    k = requests.get(base + "/api/v1/kiosk", timeout=T).json()
    assert k == {"lang": "en", "langs": ["vi", "en"], "occupancy": True, "display_s": 5.0, "name": "Cổng chợ",
                 "preview": {"cameras": ["door"], "fps": 8.0}}
    st = requests.get(base + "/api/v1/status", timeout=T).json()
    assert st["versions"]["checkpoint-edge"] == st["version"] and st["versions"]["python"]
    assert st["config"]["kiosk"] == {"enabled": True, "lang": "en", "occupancy": True, "preview": True}
    stream = events(base + "/api/v1/events")
    before = time.time() * 1000
    fifo.send(pki.card(name=NAME))
    kind, data = next(stream)
    while kind != "verdict":
        kind, data = next(stream)
    assert before <= data["published_ms"] <= time.time() * 1000 and data["holder"]["name"] == NAME


def _mjpeg_frames(url: str, n: int):
    """The first ``n`` JPEG parts of a Motion-JPEG stream, decoded (BGR arrays)."""
    r = requests.get(url, stream=True, timeout=T)
    assert r.status_code == 200 and r.headers["content-type"] == "multipart/x-mixed-replace; boundary=frame"
    buf, out = b"", []
    chunks = r.iter_content(chunk_size=None)
    try:
        while len(out) < n:
            buf += next(chunks)
            while True:
                head = buf.find(b"Content-Length: ")
                if head < 0:
                    break
                end = buf.find(b"\r\n\r\n", head)
                if end < 0:
                    break
                size = int(buf[head + 16:buf.index(b"\r\n", head)])
                if len(buf) < end + 4 + size:
                    break
                jpeg = buf[end + 4:end + 4 + size]
                buf = buf[end + 4 + size:]
                out.append(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))
    finally:
        r.close()
    return out


def _green(img) -> int:
    b, g, r = img[..., 0].astype(int), img[..., 1].astype(int), img[..., 2].astype(int)
    return int(((g > 170) & (r < 130) & (b < 130)).sum())


def test_the_camera_preview_outlines_the_code_and_costs_nothing_unwatched(running):
    app, _, pki, cam = running
    base = app.api.url
    preview = app.preview
    # nobody watches: the camera goes on decoding, nothing is scaled, kept or encoded
    encoded = preview.encoded
    camera = next(i for i in app.pipeline.inputs() if i.kind == "camera")
    start = camera.frames
    wait_for(lambda: camera.frames >= start + 3, "the camera to deliver frames", interval=0.02)
    assert preview.encoded == encoded and not preview.watched("door") and preview.jpeg("door", 0) is None
    show(cam, pki.card(name="Preview Test"))

    def outlined() -> list | None:  # the card may take a frame or two to be in view
        frames = _mjpeg_frames(base + "/api/v1/preview/door", 2)
        return frames if _green(frames[-1]) > 150 else None
    frames = wait_for(outlined, "an outlined code in the preview", interval=0)
    img = frames[-1]
    assert img.shape[1] == 320 and img.shape[0] == 240  # scaled down to preview_width, 4:3 kept
    assert preview.encoded > encoded
    # the client went away: the stream ends, the picture is dropped
    wait_for(lambda: not preview.watched("door"), "the preview stream to end with its client", interval=0.05)
    show(cam, None)
    assert requests.get(base + "/api/v1/preview/nothing", timeout=T).status_code == 404


def test_scale_and_encode_map_the_corners():
    frame = np.full((480, 640), 128, np.uint8)
    code = DecodedCode("x", b"x", ((100, 100), (300, 100), (300, 300), (100, 300)))
    small, outlines = scale_frame(frame, 320, [code, DecodedCode("y", b"y", None)])
    assert small.shape == (240, 320) and outlines == (((50, 50), (150, 50), (150, 150), (50, 150)),)
    img = cv2.imdecode(np.frombuffer(encode_jpeg(small, outlines), np.uint8), cv2.IMREAD_COLOR)
    assert _green(img) > 200 and _green(img[60:140, 60:140]) == 0  # drawn on the edges, not inside
    plain = cv2.imdecode(np.frombuffer(encode_jpeg(small, ()), np.uint8), cv2.IMREAD_UNCHANGED)
    assert plain.ndim == 2  # no code: stays grayscale
    big, _ = scale_frame(np.zeros((100, 120), np.uint8), 320, [])
    assert big.shape == (100, 120)  # never scaled up
    p = Preview(fps=2, width=160)
    hook = p.add_camera("c")
    hook(frame, [code])  # unwatched: ignored
    assert p.jpeg("c", 0) is None and p.cameras() == ["c"]


def test_pages_need_the_token_from_other_machines_but_their_code_does_not(tmp_path):
    lan = lan_address()
    if lan is None:
        pytest.skip("this machine has no non-loopback IPv4 address to call the API from")
    pki = make_pki(tmp_path / "pki")
    token = "lan-token-0123456789"
    fifo = Fifo(tmp_path / "in.fifo")
    tables = standalone(tmp_path / "state", pki, stdin=[{"name": "desk", "path": str(fifo.path)}],
                        api={"listen": "0.0.0.0:0", "token": token})
    app = Appliance(load(write_config(tmp_path / "c.toml", tables)))
    app.start()
    try:
        base = f"http://{lan}:{app.api.port}"
        assert requests.get(base + "/", timeout=T).status_code == 401
        assert requests.get(base + "/api/v1/texts", timeout=T).status_code == 401
        assert requests.get(base + f"/?token={token}", timeout=T).status_code == 200
        assert requests.get(base + "/api/v1/kiosk", headers={"Authorization": f"Bearer {token}"},
                            timeout=T).json()["preview"]["cameras"] == []  # no camera
        assert requests.get(base + "/static/kiosk.js", timeout=T).status_code == 200  # public code
        assert requests.post(base + "/static/kiosk.js", timeout=T).status_code == 401
    finally:
        fifo.close()
        app.request_stop()
        app.shutdown()
