"""`checkpoint scan` as a user runs it: real processes, video files, image folders, stdin, a pty reader."""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys

import cv2
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from support.cameras import card_frame, write_video
from support.inputs import Pty
from support.waiting import WAIT, wait_for

NOW = "1750000000"


def run(*args: str, stdin: str | None = None, timeout: float = 120):
    env = {**os.environ, "CHECKPOINT_LANG": "en"}
    return subprocess.run([sys.executable, "-m", "scanner", "scan", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def trust_args(tmp_path_factory, bundle_bytes, root_key):
    d = tmp_path_factory.mktemp("trust")
    (d / "bundle.json").write_bytes(bundle_bytes)
    (d / "root.pub").write_bytes(root_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return ["--trust", str(d / "bundle.json"), "--trust-root", str(d / "root.pub"), "--at", NOW]


def test_images_video_and_stdin_once_json(tmp_path, trust_args, make_card):
    a, b, c = make_card(name="An"), make_card(name="Binh"), make_card(name="Chi")
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "1.png"), card_frame(a))
    cv2.imwrite(str(folder / "2.png"), card_frame(None))
    video = write_video(tmp_path / "v.avi", [card_frame(b, "rotated")] * 4)
    r = run("--images", str(folder), "--video", str(video), "--stdin", "--json", "--once", *trust_args,
            stdin=c + "\nhello\n")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    got = {(d["source"], d["reason"], d["holder"]["name"] if d["holder"] else None) for d in lines}
    assert got == {("camera", "ok", "An"), ("camera", "ok", "Binh"), ("stdin", "ok", "Chi"),
                   ("stdin", "unsupported_format", None)}
    assert len(lines) == 4  # the video's four frames of one card are one scan
    assert all(isinstance(d["at"], float) and d["source_id"] for d in lines)


def test_human_line(tmp_path, trust_args, make_card):
    r = run("--stdin", *trust_args, stdin=make_card(name="Nguyễn Văn An") + "\n")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 1
    assert " stdin:stdin ✔ ACCEPTED · Valid card (ok) · Nguyễn Văn An" in r.stdout


def test_serial_reader_until_sigterm(trust_args, make_card):
    pytest.importorskip("serial")
    pty = Pty()
    proc = subprocess.Popen([sys.executable, "-m", "scanner", "scan", "--serial", pty.slave_path, "--json",
                             *trust_args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        card = make_card()
        os.set_blocking(pty.master, False)

        def verdict_line() -> str:  # resend until the reader has the port open
            try:
                os.write(pty.master, card.encode() + b"\r\n")
            except BlockingIOError:  # nobody reads the pty yet and its buffer is full
                pass
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            return proc.stdout.readline() if ready else ""
        line = wait_for(verdict_line, "a verdict line from the serial reader", interval=0)
        assert json.loads(line)["source"] == "serial" and json.loads(line)["reason"] == "ok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        pty.unplug()


def test_read_issues_on_stderr(trust_args):
    r = run("--stdin", *trust_args, stdin="\x00\x01 binary\n")
    assert r.returncode == 0
    assert r.stdout == ""
    assert "checkpoint: warning: stdin stdin: garbage:" in r.stderr and "\\u0000" in r.stderr


@pytest.mark.parametrize("args, message", [
    ((), "no input given"),
    (("--camera", "0", "--once"), "--once needs a file input"),
    (("--stdin", "--roi", "1,2"), "x,y,w,h"),
    (("--stdin", "--roi", "0.5,0,0.7,1"), "region of interest"),
    (("--hid", "/dev/input/event0", "--layout", "dvorak"), "unknown keyboard layout"),
    (("--stdin", "--size", "big"), "WIDTHxHEIGHT"),
])
def test_usage_errors(trust_args, args, message):
    r = run(*args, *trust_args, stdin="")
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_no_trust():
    r = run("--stdin", stdin="")
    assert r.returncode == 2 and "no trust given" in r.stderr


def test_every_input_failed(trust_args):
    r = run("--camera", "picamera2", *trust_args)
    assert r.returncode == 2
    assert "sudo apt install python3-picamera2" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == "checkpoint: error: every input failed (see the warnings above)"
