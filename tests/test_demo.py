"""`checkpoint demo` end to end: the whole appliance on built-in defaults, its pipeline in --once
mode; every scan gives its expected verdict and every entry logged reaches the server exactly
once. Also: the demo exits non-zero when a verdict differs or sync is incomplete."""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys

import pytest
import requests
from support.paths import ROOT
from support.terminal import Terminal
from support.waiting import HTTP_TIMEOUT, WAIT, wait_for

from bench import browser
from scanner.base.errors import Reason
from scanner.demo.main import _summary
from scanner.store.entrylog import EntryLog
from sync.server.storage import open_storage

NO_DESKTOP = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER")}


def test_the_demo_runs_the_appliance_and_every_entry_reaches_the_server_once(tmp_path):
    """Off a terminal, and asked to open a browser where there is none (no desktop session here)."""
    out = tmp_path / "d"
    r = subprocess.run([sys.executable, "-m", "scanner", "demo", "--out", str(out), "--lang", "en", "--speed", "4",
                        "--open"], capture_output=True, text=True, cwd=ROOT, timeout=WAIT * 3, check=False,
                       env=NO_DESKTOP)
    assert r.returncode == 0, r.stdout + r.stderr
    text = r.stdout
    assert "No browser could be started (no graphical session" in text and "until you press Ctrl-C" not in text
    assert "The kiosk is up only while the demo runs" in text  # it says how long the address works
    assert "Device enrolled itself from the QR" in text  # zero-touch, through the simulated camera
    assert "Summary: 10 scans · 10 entries logged · 10 entries acknowledged by the server" in text
    assert "All 10 scans gave the expected verdict; the server holds every entry exactly once." in text
    assert "/api/v1/status" in text and "(duplicate)" in text and "Trần Thị Bích Ngọc" in text
    # each scan says which case it shows, before its verdict
    verdicts = [line for line in text.splitlines() if " ✔ " in line or " ✘ " in line or " ↺ " in line]
    assert len(verdicts) == 10, verdicts
    # the card again says what the kiosk and the amber LED say: let in before (when, where), no refusal
    assert re.search(r" ↺ ALREADY ADMITTED · Came in at \d\d:\d\d at Demo gate, not counted again \(duplicate\)",
                     verdicts[-1]) and "REJECTED" not in verdicts[-1], verdicts[-1]
    for line, case in zip(verdicts, ("a valid card held up for 3 s", "an expired card", "a card not valid yet",
                                     "a revoked card", "forged: the name changed", "forged: signed with a key",
                                     "a valid card on a phone in dark mode", "an issuer not trusted",
                                     "a QR code that is no card", "the first card again"), strict=True):
        assert f"[{case}" in line, (case, line)
    assert len(list((out / "cards").glob("*.png"))) == 9 and (out / "camera.avi").stat().st_size > 0
    assert stat.S_IMODE((out / "keys" / "root.key").stat().st_mode) == 0o600
    # the files say the same as the summary: the server holds exactly the device's chain
    with EntryLog(out / "state" / "entries.db", create=False) as log:
        local = {e.seq: e.hash for e in log.entries()}
        reasons = [e.reason for e in log.entries()]
        assert log.pending(0, 1) == []
    storage = open_storage(str(out / "server" / "central.db"))
    try:
        (device,) = storage.devices()
        assert storage.entry_hashes(device.device.device_id) == local
        assert storage.stats().duplicates_dropped >= 0 and storage.stats().entries == 10
    finally:
        storage.close()
    assert reasons == ["ok", "expired", "not_yet_valid", "revoked", "bad_signature", "bad_signature", "ok",
                       "unknown_key", "unsupported_format", "duplicate"]
    for name in ("Nguyễn Văn An", "Trần Thị Bích Ngọc"):
        assert name not in r.stderr  # the log lines never carry names


def test_the_summary_fails_on_a_wrong_verdict_or_incomplete_sync():
    lines = []
    expected = [Reason.OK, Reason.EXPIRED]
    assert _summary(lines.append, lambda k, **kw: k, ["ok", "expired"], expected, 2, {1: b"a", 2: b"b"},
                    {1: b"a", 2: b"b"}, looping=False) == 0
    assert _summary(lines.append, lambda k, **kw: k, ["ok", "revoked"], expected, 2, {1: b"a", 2: b"b"},
                    {1: b"a", 2: b"b"}, looping=False) == 1
    assert _summary(lines.append, lambda k, **kw: k, ["ok"], expected, 1, {1: b"a"}, {1: b"a"}, looping=False) == 1
    assert _summary(lines.append, lambda k, **kw: k, ["ok", "expired"], expected, 2, {1: b"a"},
                    {1: b"a", 2: b"b"}, looping=False) == 1
    looped = ["ok", "expired", "duplicate", "expired"]  # a second round: genuine cards may be duplicates
    assert _summary(lines.append, lambda k, **kw: k, looped, expected, 4, {}, {}, looping=True) == 1  # not synced
    assert _summary(lines.append, lambda k, **kw: k, looped, expected, 0, {}, {}, looping=True) == 0
    assert _summary(lines.append, lambda k, **kw: k, ["ok"], expected, 0, {}, {},
                    looping=True) == 0  # stopped mid-round
    assert _summary(lines.append, lambda k, **kw: k, [], expected, 0, {}, {}, looping=True) == 1  # nothing at all


def test_on_a_terminal_the_kiosk_stays_up_until_ctrl_c_and_opens_in_the_browser(tmp_path):
    """Run by a person: the summary, then the kiosk still served (and shown by the browser --open
    started: a real headless Chromium, named by $BROWSER as a person names theirs) until Ctrl-C."""
    if browser.unavailable():
        pytest.fail(browser.unavailable())
    dom = tmp_path / "kiosk-dom.html"
    opener = tmp_path / "open-kiosk"
    opener.write_text(f"#!/bin/sh\nexec {browser.CHROMIUM[0]} --headless=new --no-sandbox --disable-gpu "
                      f"--user-data-dir={tmp_path / 'profile'} --dump-dom \"$1\" >{dom} 2>/dev/null\n")
    opener.chmod(0o755)
    term = Terminal([sys.executable, "-m", "scanner", "demo", "--lang", "en", "--speed", "4", "--open"],
                    env={**NO_DESKTOP, "BROWSER": str(opener)}, cwd=ROOT)
    try:
        shown = term.wait_for("until you press Ctrl-C", timeout=WAIT * 3)
        assert "All 10 scans gave the expected verdict" in shown and "Opened the kiosk in a browser." in shown
        assert "only while the demo runs" not in shown
        kiosk = re.search(r"The kiosk stays up at (http://127\.0\.0\.1:\d+)/ until", shown).group(1)
        assert term.proc.poll() is None
        page = requests.get(kiosk + "/", timeout=HTTP_TIMEOUT)  # after the summary: still served
        assert page.ok and "<title>checkpoint-edge</title>" in page.text
        wait_for(lambda: dom.exists() and "data-view=" in dom.read_text(encoding="utf-8"), "the browser's kiosk page")
        term.ctrl_c()
        assert term.finish() == 0, term.text()
        with pytest.raises(requests.ConnectionError):
            requests.get(kiosk + "/", timeout=HTTP_TIMEOUT)
        assert "Traceback" not in term.text()
    finally:
        term.close()
