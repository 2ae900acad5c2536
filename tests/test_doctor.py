"""`checkpoint doctor`: the checks against real parts (a video file as camera, missing readers,
a real entry log, trust files), the table and JSON, the exit status, and the report taken from a
running daemon over its API."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from support.appliance import Daemon
from support.cameras import write_shots
from support.config import standalone, write_config
from support.paths import ROOT
from support.pki import make_pki
from support.waiting import WAIT

from scanner.appliance import doctor
from scanner.appliance.config import load
from scanner.demo.video import Shot


def run_doctor(*args: str, lang: str = "en") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scanner", "doctor", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=WAIT, check=False, env={**os.environ, "CHECKPOINT_LANG": lang})


def test_checks_pass_warn_and_fail_with_fixes(tmp_path):
    pki = make_pki(tmp_path / "pki")
    video = write_shots(tmp_path / "cam.avi", [Shot(pki.card(), 0.3)])
    state = tmp_path / "state"
    tables = standalone(state, pki, camera=[{"name": "front", "device": str(video), "kind": "file"}],
                        serial=[{"name": "entry", "port": str(tmp_path / "no-such-tty")}],
                        hid=[{"name": "exit", "device": str(tmp_path / "no-such-event")}])
    config = write_config(tmp_path / "c.toml", tables)
    r = run_doctor("--config", str(config), "--local", "--json")
    assert r.returncode == 1, r.stderr  # the readers are missing
    report = json.loads(r.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["camera:front"]["status"] == "pass" and "640x480" in checks["camera:front"]["detail"]
    assert checks["reader:entry"]["status"] == "fail" and "plug the reader in" in checks["reader:entry"]["fix"]
    assert checks["reader:exit"]["status"] == "fail"
    assert checks["state_dir"]["status"] == "fail"  # never started: no state directory yet
    assert checks["provisioned"]["status"] == "pass" and "standalone" in checks["provisioned"]["detail"]
    assert checks["gpio"]["status"] == "pass" and checks["trust"]["status"] == "pass"
    assert checks["server"]["detail"] == "sync disabled" and checks["database"]["status"] == "warn"
    assert checks["clock"]["status"] in ("pass", "warn")
    table = run_doctor("--config", str(config), "--local")
    assert table.returncode == 1
    assert any(line.startswith("FAIL  reader:entry") for line in table.stdout.splitlines())
    assert "fix: plug the reader in" in table.stdout


def test_a_good_device_passes_and_a_bad_config_fails(tmp_path):
    pki = make_pki(tmp_path / "pki")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    lines = tmp_path / "lines.txt"
    lines.write_text("")
    config = write_config(tmp_path / "c.toml", standalone(state, pki, stdin=[{"path": str(lines)}]))
    report = doctor.run(load(config))
    assert report.ok and report.worst in ("pass", "warn"), doctor.table(report)
    bad = tmp_path / "bad.toml"
    bad.write_text("[device]\nnope = 1\n")
    r = run_doctor("--config", str(bad))
    assert r.returncode == 1 and "FAIL  config" in r.stdout and "device.nope: unknown key" in r.stdout


def test_the_report_comes_from_the_running_daemon(tmp_path):
    pki = make_pki(tmp_path / "pki")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    lines = tmp_path / "lines.txt"
    lines.write_text(pki.card() + "\n")
    config = write_config(tmp_path / "c.toml", standalone(tmp_path / "state", pki, api={"listen": f"127.0.0.1:{port}"},
                                                          stdin=[{"name": "desk", "path": str(lines)}]))
    d = Daemon(config)
    try:
        d.wait_line(r"verdict source=stdin:desk decision=accept")
        r = run_doctor("--config", str(config))
        assert r.stdout.startswith("(from the running daemon)"), r.stdout + r.stderr
        assert "reader:desk" in r.stdout and "finished" in r.stdout
        assert r.returncode == 0, r.stdout
    finally:
        d.signal(15)
        d.wait()
