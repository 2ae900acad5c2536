"""Provisioning from the SD card's boot partition (scanner/appliance/firstboot.py, `checkpoint image`): the
files go into the configuration directory all together or not at all, checked in place exactly as
`checkpoint config check` checks them; a crash at any step is undone at the next boot; a refused
set is shown on the LEDs (MockFactory pins) and on the kiosk page (a real HTTP server); and an
enrollment file enrolls the device against a real server on 127.0.0.1."""
from __future__ import annotations

import html
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin
from support.config import write_config
from support.paths import ROOT
from support.pki import make_pki
from support.servers import ServerThread, free_port
from support.units import runnable_unit
from support.waiting import WAIT, wait_for

from hardware.feedback import DeviceState
from hardware.gpio_feedback import open_feedback
from scanner.appliance import firstboot
from scanner.appliance.config import check_file, load
from scanner.appliance.daemon import Appliance
from scanner.appliance.enrollfile import RETRY_S, EnrollFileInput
from scanner.base.timeutil import now_ms
from scanner.cards import keys
from scanner.cards.bundle import BundleKey, make_bundle
from sync.server.bundles import publish
from sync.wire import enrollcode as enroll


def card_dir(path: Path, files: dict[str, bytes | str]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (path / name).write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def snapshot(config_dir: Path) -> dict[str, bytes]:
    """The configuration directory's files (the journal must be gone whenever this is taken)."""
    assert not (config_dir / firstboot.JOURNAL_NAME).exists()
    return {p.name: p.read_bytes() for p in sorted(config_dir.iterdir()) if p.is_file()}


def root_pem() -> tuple[object, bytes]:
    root = keys.generate("EdDSA")
    return root, keys.public_pem(root.public_key())


def venue_toml(config_dir: Path, *, name: str = "Chợ Đông", trust_root: bool = True, extra: str = "") -> str:
    text = f'[device]\nname = "{name}"\n\n[sync]\nserver = "https://checkpoint.example.gov.vn"\n\n'
    if trust_root:
        text += f'[enroll]\ntrust_root = "{config_dir / firstboot.TRUST_ROOT_NAME}"\n\n'
    text += "[feedback]\npin_factory = \"mock\"\n[feedback.green]\npin = 17\n[feedback.red]\npin = 27\n" + extra
    return text


@pytest.fixture
def config_dir(tmp_path):
    d = tmp_path / "etc-checkpoint"
    d.mkdir()
    return d


def test_a_card_set_is_installed_whole_and_only_once(tmp_path, config_dir):
    root, pem = root_pem()
    code = enroll.EnrollCode("https://checkpoint.example.gov.vn", "tok_EN-0123456789abcdef",
                             enroll.root_fingerprint(root.public_key()))
    boot = card_dir(tmp_path / "boot", {"checkpoint.toml": venue_toml(config_dir), "trust-root.pem": pem,
                                        "enroll.txt": code.text() + "\r\n", "config.txt": "arm_64bit=1\n"})
    result = firstboot.apply_card(boot, config_dir)
    assert result.outcome == "applied" and set(result.installed) == {"checkpoint.toml", "trust-root.pem", "enroll.txt"}
    files = snapshot(config_dir)
    assert set(files) == {"checkpoint.toml", "trust-root.pem", "enroll.txt", firstboot.RECORD_NAME}
    assert files["trust-root.pem"] == pem and load(config_dir / "checkpoint.toml").device.name == "Chợ Đông"
    assert stat.S_IMODE((config_dir / "enroll.txt").stat().st_mode) == 0o640  # the token: not for everyone
    assert stat.S_IMODE((config_dir / "checkpoint.toml").stat().st_mode) == 0o644
    assert firstboot.apply_card(boot, config_dir).outcome == "unchanged"
    assert snapshot(config_dir) == files
    # the card without the trust root and the code: they go too, the new config comes in
    (boot / "trust-root.pem").unlink()
    (boot / "enroll.txt").unlink()
    (boot / "checkpoint.toml").write_text(venue_toml(config_dir, name="Cổng B", trust_root=False), encoding="utf-8")
    result = firstboot.apply_card(boot, config_dir)
    assert result.outcome == "applied" and set(result.removed) == {"trust-root.pem", "enroll.txt"}
    assert set(snapshot(config_dir)) == {"checkpoint.toml", firstboot.RECORD_NAME}
    # no files on the card: what is installed stays
    for p in boot.iterdir():
        p.unlink()
    assert firstboot.apply_card(boot, config_dir).outcome == "none"
    assert load(config_dir / "checkpoint.toml").device.name == "Cổng B"


def test_a_broken_config_is_refused_with_the_config_check_lines_and_nothing_changes(tmp_path, config_dir):
    good = card_dir(tmp_path / "good", {"checkpoint.toml": venue_toml(config_dir, trust_root=False)})
    firstboot.apply_card(good, config_dir)
    before = snapshot(config_dir)
    broken = venue_toml(config_dir, trust_root=False, extra="[feedback.amber]\npin = 17\n[scan]\ncooldown = 3\n")
    boot = card_dir(tmp_path / "boot", {"checkpoint.toml": broken})
    with pytest.raises(firstboot.CardConfigError) as err:
        firstboot.apply_card(boot, config_dir)
    assert snapshot(config_dir) == before
    # the lines are those of `checkpoint config check` on that file where it would have been
    (config_dir / "checkpoint.toml").write_text(broken, encoding="utf-8")
    expected = check_file(config_dir / "checkpoint.toml")
    assert len(expected) == 2 and err.value.problems == expected
    assert any("GPIO17 is also used by" in line for line in expected)
    # not UTF-8, not TOML: one line each, nothing changes
    (config_dir / "checkpoint.toml").write_bytes(before["checkpoint.toml"])
    for data in (b"\xff\xfe[device]\n", b"[device\nname = 1\n"):
        (boot / "checkpoint.toml").write_bytes(data)
        with pytest.raises(firstboot.CardConfigError) as err:
            firstboot.apply_card(boot, config_dir)
        assert len(err.value.problems) == 1 and snapshot(config_dir) == before


def test_the_files_must_fit_together(tmp_path, config_dir):
    _, pem = root_pem()
    other, _ = root_pem()
    wrong_root = enroll.EnrollCode("https://checkpoint.example.gov.vn", "tok_EN-0123456789abcdef",
                                   enroll.root_fingerprint(other.public_key()))
    cases = {
        "trust root unused": ({"checkpoint.toml": venue_toml(config_dir, trust_root=False), "trust-root.pem": pem},
                              "does not use it"),
        "trust root alone": ({"trust-root.pem": pem}, "without a checkpoint.toml"),
        "not a key": ({"checkpoint.toml": venue_toml(config_dir),
                       "trust-root.pem": b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"},
                      "trust-root.pem"),
        "code for another root": ({"checkpoint.toml": venue_toml(config_dir), "trust-root.pem": pem,
                                   "enroll.txt": wrong_root.text()}, "another trust root"),
        "not a code": ({"enroll.txt": "https://checkpoint.example.gov.vn/enroll?t=1"}, "enroll.txt"),
        "enrollment off": ({"checkpoint.toml": venue_toml(config_dir, trust_root=False, extra="[enroll]\nqr = false\n"),
                            "enroll.txt": wrong_root.text()}, "enrollment is off"),
    }
    for label, (files, words) in cases.items():
        boot = card_dir(tmp_path / label.replace(" ", "-"), files)
        with pytest.raises(firstboot.CardConfigError) as err:
            firstboot.apply_card(boot, config_dir)
        assert any(words in line for line in err.value.problems), (label, err.value.problems)
        assert snapshot(config_dir) == {}, label


def test_the_card_is_read_without_following_links_or_reading_too_much(tmp_path, config_dir):
    secret = tmp_path / "secret.toml"
    secret.write_text(venue_toml(config_dir, trust_root=False), encoding="utf-8")
    boot = card_dir(tmp_path / "boot", {})
    (boot / "checkpoint.toml").symlink_to(secret)
    with pytest.raises(firstboot.CardConfigError) as err:
        firstboot.apply_card(boot, config_dir)
    assert "symbolic link" in err.value.problems[0]
    (boot / "checkpoint.toml").unlink()
    (boot / "checkpoint.toml").write_bytes(b"#" * (firstboot.MAX_BYTES["checkpoint.toml"] + 1))
    with pytest.raises(firstboot.CardConfigError) as err:
        firstboot.apply_card(boot, config_dir)
    assert "larger than" in err.value.problems[0] and snapshot(config_dir) == {}


class PowerCut(BaseException):
    """Raised by the fault injection: the process ends here (nothing catches a BaseException)."""


def test_a_crash_at_any_step_leaves_the_old_set_or_the_new_one(tmp_path, config_dir, monkeypatch):
    _, pem = root_pem()
    old_card = card_dir(tmp_path / "old", {"checkpoint.toml": venue_toml(config_dir, name="old"),
                                           "trust-root.pem": pem})
    firstboot.apply_card(old_card, config_dir)
    old = snapshot(config_dir)
    new_card = card_dir(tmp_path / "new", {"checkpoint.toml": venue_toml(config_dir, name="new", trust_root=False),
                                           "enroll.txt": "CKENROLL:v=1&s=https%3A%2F%2Fa.example&t=tok_EN-0123456789"})
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    firstboot.apply_card(new_card, scratch)
    new = snapshot(scratch)
    steps = 0
    outcomes = set()
    while True:
        calls = {"n": 0}
        real = {name: getattr(os, name) for name in ("rename", "unlink", "fsync", "link", "rmdir")}

        def counted(name, at=steps, calls=calls, real=real):
            def call(*args, **kwargs):
                calls["n"] += 1
                if calls["n"] > at:
                    raise PowerCut(name)
                return real[name](*args, **kwargs)
            return call

        for name in real:
            monkeypatch.setattr(os, name, counted(name))
        try:
            firstboot.apply_card(new_card, config_dir)
            finished = True
        except PowerCut:
            finished = False
        finally:
            for name, fn in real.items():
                monkeypatch.setattr(os, name, fn)
        firstboot.recover(config_dir)  # the next boot, before anything else
        state = snapshot(config_dir)
        assert state in (old, new), f"after {steps} steps: {sorted(state)}"
        outcomes.add("old" if state == old else "new")
        if finished:
            break
        # the next boot applies the card again: the new set in the end; then back to the old one
        firstboot.apply_card(new_card, config_dir)
        assert snapshot(config_dir) == new
        firstboot.apply_card(old_card, config_dir)
        assert snapshot(config_dir) == old
        steps += 1
    assert steps > 10 and outcomes == {"old", "new"}


def test_cli_refuses_and_the_error_service_shows_it_on_the_page(tmp_path, config_dir):
    boot = card_dir(tmp_path / "boot", {"checkpoint.toml": venue_toml(
        config_dir, trust_root=False, extra='[device.x]\n[api]\nlisten = "0.0.0.0:8080"\n[scan]\n"<script>" = 1\n')})
    errors = tmp_path / "run" / "errors.json"
    errors.parent.mkdir()
    r = subprocess.run([sys.executable, "-m", "scanner", "image", "apply-card", "--boot", str(boot),
                        "--config-dir", str(config_dir), "--errors", str(errors), "--lang", "en"],
                       capture_output=True, text=True, cwd=ROOT, timeout=WAIT, check=False)
    assert r.returncode == 2 and "NOT installed" in r.stderr, r.stderr
    report = json.loads(errors.read_text(encoding="utf-8"))
    lines = [line.removeprefix("checkpoint: error: ") for line in r.stderr.splitlines()
             if line.startswith("checkpoint:")]
    assert report["problems"] == lines and len(lines) >= 2 and snapshot(config_dir) == {}
    assert report["feedback"] == {"pin_factory": "mock", "green": {"pin": 17}, "red": {"pin": 27}}
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "scanner", "image", "show-error", "--errors", str(errors),
                             "--listen", f"127.0.0.1:{port}"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        page = None
        deadline = time.monotonic() + WAIT
        while page is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
                    page = resp.read().decode("utf-8")
                    headers = resp.headers
            except OSError:
                time.sleep(0.2)
        assert page is not None
        assert "Cấu hình trên thẻ nhớ chưa được cài" in page and "not installed" in page
        assert "&lt;script&gt;" in page and "<script>" not in page  # every problem escaped
        assert all(html.escape(line) in page for line in lines)
        assert "default-src 'none'" in headers["Content-Security-Policy"]
    finally:
        proc.terminate()
        assert proc.wait(WAIT) == 0
    assert "showing" in proc.stderr.read()


def test_the_leds_alternate_red_and_green_while_the_card_is_refused():
    report = {"problems": ["x"], "feedback": {"green": {"pin": 17}, "red": {"pin": 27}, "amber": {"pin": 22},
                                              "relay": {"pin": 23}}}
    factory = MockFactory(pin_class=MockPWMPin)
    device = open_feedback(firstboot.error_feedback(report), pin_factory=factory)
    try:
        device.set_state(DeviceState.ERROR)
        seen = set()
        deadline = time.monotonic() + WAIT
        while len(seen) < 2 and time.monotonic() < deadline:
            red, green = factory.pin(27).state, factory.pin(17).state
            assert not (red and green)  # in turn, never together
            assert factory.pin(22).state == 0 and factory.pin(23).state == 0  # no amber, the gate stays shut
            if red or green:
                seen.add("red" if red else "green")
            time.sleep(0.02)
        assert seen == {"red", "green"}
    finally:
        device.close()
    assert firstboot.error_feedback({"problems": ["x"], "feedback": None}) is None


def test_an_enrollment_file_enrolls_the_device_like_a_scanned_qr(tmp_path):
    (tmp_path / "server").mkdir()
    srv = ServerThread(tmp_path / "server" / "central.db").start()
    try:
        root = srv.root  # the operator's root: it vouches for the server and signs the bundles
        pki = make_pki(tmp_path / "pki")
        pub = pki.key.public_key()
        data = make_bundle(root, version=1, issued_at=now_ms() // 1000 - 60, expires_at=now_ms() // 1000 + 86400,
                           keys=[BundleKey(keys.kid_of(pub), "EdDSA", "VN-HUE", pub)])
        publish(srv.storage, data, now_ms=now_ms(), root=root.public_key())
        code = enroll.EnrollCode(srv.url, srv.token("ward-9"), enroll.root_fingerprint(root.public_key()))
        etc = tmp_path / "etc"
        etc.mkdir()
        (etc / "trust-root.pem").write_bytes(srv.root_pub.read_bytes())
        (etc / "enroll.txt").write_text(code.text() + "\n", encoding="utf-8")
        state = tmp_path / "state"
        config = load(write_config(etc / "checkpoint.toml", {
            "device": {"state_dir": str(state)}, "sync": {"builder": "inline", "interval_s": 1},
            "enroll": {"trust_root": str(etc / "trust-root.pem")},
            "api": {"enabled": False}, "feedback": {"pin_factory": "mock"},
            "stdin": [{"name": "none", "path": "/dev/null"}]}))
        app = Appliance(config)
        enrolled = threading.Event()
        app.hub.listen(lambda e: e.kind == "enrolled" and enrolled.set())
        app.start()
        threading.Thread(target=app.supervise, daemon=True).start()
        try:
            assert enrolled.wait(WAIT) and app.mode == "provisioned" and app.core.checkpoint_id == "ward-9"
            inputs = [i for i in app.pipeline.inputs() if isinstance(i, EnrollFileInput)]
            assert len(inputs) == 1
            # it ends once the device is enrolled, not only when it next looks (RETRY_S later)
            wait_for(lambda: inputs[0].health().state == "finished", "the enrollment file's end", timeout=RETRY_S / 2)
        finally:
            app.request_stop()
            app.shutdown()
        assert (state / "device.json").exists()
        # provisioned now: the file is no input any more
        app = Appliance(config)
        app.start()
        try:
            assert not [i for i in app.pipeline.inputs() if isinstance(i, EnrollFileInput)]
        finally:
            app.request_stop()
            app.shutdown()
    finally:
        srv.stop()


IMAGE_UNITS = ("checkpoint-firstboot.service", "checkpoint-config-error.service", "checkpoint-growdata.service")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_the_image_units_verify(tmp_path):
    units = ROOT / "image" / "rootfs" / "etc" / "systemd" / "system"
    for name in IMAGE_UNITS:
        unit = runnable_unit(units / name, tmp_path)
        text = unit.read_text()
        for exe in ("/usr/local/sbin/checkpoint-growdata",):  # the image's own script, not installed here
            text = text.replace(exe, str(ROOT / "image" / "rootfs" / exe.lstrip("/")))
        unit.write_text(text)
        r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=WAIT,
                           check=False)
        problems = [line for line in (r.stdout + r.stderr).splitlines()
                    if line.strip() and "checkpoint.service" not in line and "checkpoint-kiosk.service" not in line]
        assert r.returncode == 0 and not problems, r.stdout + r.stderr
    firstboot_unit = (units / "checkpoint-firstboot.service").read_text()
    assert "RequiredBy=checkpoint.service" in firstboot_unit
    assert "OnFailure=checkpoint-config-error.service" in firstboot_unit
