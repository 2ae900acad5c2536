"""What scripts/install.sh puts on a Pi, checked with the real tools: `systemd-analyze verify` and
`security` on every unit, systemd-sysusers and systemd-tmpfiles in a scratch root, the udev rules
(generated, parsed, and run through `udevadm test`), the install script staged in a directory, and
the daemon under MemoryDenyWriteExecute (which the unit sets)."""
from __future__ import annotations

import grp
import os
import re
import shutil
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from support.cameras import write_shots
from support.config import standalone, write_config
from support.paths import ROOT
from support.pki import make_pki
from support.units import runnable_unit
from support.waiting import WAIT

from scanner.appliance import udev
from scanner.demo.video import Shot

UNITS = sorted((ROOT / "systemd").glob("*.service"))
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed here")


@needs_analyze
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify(unit, tmp_path):
    r = subprocess.run([ANALYZE, "verify", str(runnable_unit(unit, tmp_path))], capture_output=True, text=True,
                       timeout=WAIT, check=False)
    assert r.returncode == 0 and r.stderr == "" and r.stdout == "", r.stdout + r.stderr


@needs_analyze
def test_security_exposure_is_low_and_documented(tmp_path):
    r = subprocess.run([ANALYZE, "security", "--offline=true", str(ROOT / "systemd" / "checkpoint.service")],
                       capture_output=True, text=True, timeout=WAIT, check=False)
    m = re.search(r"Overall exposure level for checkpoint\.service: (\d+\.\d)", r.stdout)
    assert m, r.stdout + r.stderr
    exposure = float(m.group(1))
    assert exposure < 2.0
    doc = (ROOT / "docs" / "provisioning.md").read_text(encoding="utf-8")
    assert f"exposure **{m.group(1)}**" in doc, "update the figure in docs/provisioning.md"
    for setting in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                    "RestrictAddressFamilies=", "SystemCallFilter=", "CapabilityBoundingSet=", "Type=notify",
                    "WatchdogSec=", "Restart=always", "StateDirectory=checkpoint", "ConfigurationDirectory=checkpoint",
                    "SupplementaryGroups=video input gpio dialout"):
        assert setting in (ROOT / "systemd" / "checkpoint.service").read_text()


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
                    reason="systemd-sysusers/systemd-tmpfiles not installed here")
def test_install_script_staged_in_a_directory(tmp_path):
    dest = tmp_path / "root"
    r = subprocess.run(["sh", str(ROOT / "scripts" / "install.sh"), "--destdir", str(dest), "--no-venv",
                        "--prefix", "/opt/cp"], capture_output=True, text=True, timeout=WAIT, check=False)
    assert r.returncode == 0, r.stderr
    passwd = {line.split(":")[0]: line.split(":") for line in (dest / "etc" / "passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":")[3].split(",") for line in
              (dest / "etc" / "group").read_text().splitlines()}
    user = passwd["checkpoint"]
    assert user[6] == "/usr/sbin/nologin" and user[5] == "/var/lib/checkpoint"
    for group in ("video", "input", "gpio", "dialout"):
        assert "checkpoint" in groups[group]
    state = (dest / "var" / "lib" / "checkpoint").stat()
    assert stat.S_IMODE(state.st_mode) == 0o700 and str(state.st_uid) == user[2]
    unit = (dest / "etc" / "systemd" / "system" / "checkpoint.service").read_text()
    assert "ExecStart=/opt/cp/.venv/bin/checkpoint run --config /etc/checkpoint/checkpoint.toml" in unit
    assert (dest / "etc" / "udev" / "rules.d" / "70-checkpoint-readers.rules").read_text() == udev.rules()
    assert (dest / "opt" / "cp" / "scanner" / "appliance" / "daemon.py").exists()
    assert not (dest / "opt" / "cp" / ".git").exists()
    assert os.readlink(dest / "usr" / "local" / "bin" / "checkpoint") == "/opt/cp/.venv/bin/checkpoint"
    r2 = subprocess.run(["sh", str(ROOT / "scripts" / "install.sh"), "--destdir", str(dest), "--no-venv",
                         "--prefix", "/opt/cp"], capture_output=True, text=True, timeout=WAIT, check=False)
    assert r2.returncode == 0, r2.stderr  # again: harmless
    assert [line for line in (dest / "etc" / "passwd").read_text().splitlines() if line.startswith("checkpoint:")] \
        == [":".join(user)]


# ---------------------------------------------------------------- udev

def test_the_rules_file_is_generated_from_the_list():
    assert (ROOT / "udev" / "70-checkpoint-readers.rules").read_text() == udev.rules(), \
        "run `checkpoint udev-rules > udev/70-checkpoint-readers.rules`"
    extra = udev.rules(["ABCD:0123"])
    assert 'ATTRS{idVendor}=="abcd", ATTRS{idProduct}=="0123"' in extra
    with pytest.raises(udev.UdevError):
        udev.rules(["abcd"])
    with pytest.raises(udev.UdevError):
        udev.rules(group="bad group")
    doc = (ROOT / "docs" / "provisioning.md").read_text(encoding="utf-8")
    for vendor, product, _ in udev.KNOWN_READERS:  # the documented list is the list
        assert f"`{vendor}:{product}`" in doc


_KEY = (r'(?:ACTION|SUBSYSTEM|SUBSYSTEMS|KERNEL|ATTRS\{\w+\}|ENV\{\w+\}|GROUP|MODE|SYMLINK|GOTO|LABEL)')
_PAIR = re.compile(rf'^{_KEY}(==|!=|\+=|=)"[^"]*"$')


def test_every_rule_parses():
    """A parser-level check of the rules (udev's own syntax: KEY op "value", comma separated)."""
    for line in udev.rules(["1234:5678"]).splitlines():
        if not line or line.startswith("#"):
            continue
        for pair in re.split(r",\s+", line):
            m = _PAIR.match(pair)
            assert m, (pair, line)
            key, op = pair.split(m.group(1))[0], m.group(1)
            if key in ("GROUP", "MODE", "SYMLINK", "GOTO", "LABEL") or key.startswith("ENV{ID_MM") \
                    or (key.startswith("ENV{CHECKPOINT") and op == "="):
                assert op in ("=", "+=")
            else:
                assert op in ("==", "!=")
    labels = re.findall(r'LABEL="(\w+)"', udev.rules())
    assert set(re.findall(r'GOTO="(\w+)"', udev.rules())) <= set(labels)


@pytest.mark.skipif(shutil.which("udevadm") is None, reason="udevadm is not installed here (apt install udev)")
@pytest.mark.skipif(os.geteuid() != 0 or not os.access("/run", os.W_OK), reason="needs root to add runtime rules")
def test_udevadm_reads_the_rules_without_complaint():
    rules_dir = Path("/run/udev/rules.d")
    rules_dir.mkdir(parents=True, exist_ok=True)
    path = rules_dir / f"70-checkpoint-test-{uuid.uuid4().hex[:8]}.rules"
    try:  # the service's group exists on an installed device; here a group that exists stands in for it
        group = grp.getgrnam("checkpoint").gr_name
    except KeyError:
        group = "dialout"
    path.write_text(udev.rules(["1234:5678"], group=group))
    try:
        device = next((p for p in ("/sys/class/net/lo", "/sys/class/mem/null", "/sys/devices/virtual/mem/null")
                       if os.path.exists(p)), None)
        if device is None:
            pytest.skip("no sysfs device to run `udevadm test` on")
        r = subprocess.run(["udevadm", "test", "--action=add", device], capture_output=True, text=True,
                           timeout=WAIT, check=False)
        out = r.stdout + r.stderr
        assert f"Reading rules file: {path}" in out, out[-2000:]
        mine = [line for line in out.splitlines() if path.name in line and "Reading rules file" not in line]
        assert mine == [], mine  # udev found nothing to complain about in our file
    finally:
        path.unlink()


# ---------------------------------------------------------------- MemoryDenyWriteExecute

MDWE = """
import ctypes, runpy, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN (Linux 6.3)
    sys.exit(77)
sys.argv = ["checkpoint"] + sys.argv[1:]
runpy.run_module("scanner", run_name="__main__")
"""


def test_the_daemon_runs_under_memory_deny_write_execute(tmp_path):
    """checkpoint.service sets MemoryDenyWriteExecute=yes: no writable and executable memory, ever.
    The kernel's own W^X switch (PR_SET_MDWE) enforces the same for a real `--once` run here."""
    pki = make_pki(tmp_path / "pki")
    video = write_shots(tmp_path / "cam.avi", [Shot(pki.card(), 1.0), Shot(None, 0.2)])
    state = tmp_path / "state"
    config = write_config(tmp_path / "c.toml", standalone(state, pki, camera=[{"device": str(video), "kind": "file"}]))
    r = subprocess.run([sys.executable, "-c", MDWE, "run", "--config", str(config), "--once"], capture_output=True,
                       text=True, timeout=WAIT, cwd=ROOT, check=False)
    if r.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "decision=accept reason=ok" in r.stderr


# ---------------------------------------------------------------- the central server's units

CENTRAL = ("checkpoint-opener.service", "checkpoint-console.service")


@needs_analyze
@pytest.mark.parametrize("name", CENTRAL)
def test_central_units_are_hardened_and_their_exposure_documented(name):
    r = subprocess.run([ANALYZE, "security", "--offline=true", str(ROOT / "systemd" / name)],
                       capture_output=True, text=True, timeout=WAIT, check=False)
    m = re.search(rf"Overall exposure level for {re.escape(name)}: (\d+\.\d)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) < 2.0
    who = name.split("-")[1].split(".")[0]
    assert f"{who} **{m.group(1)}**" in (ROOT / "docs" / "console.md").read_text(encoding="utf-8"), \
        "update the figure in docs/console.md"


def _settings(name: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (ROOT / "systemd" / name).read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def test_the_console_runs_as_another_user_than_the_opener_and_cannot_see_the_key():
    opener, console = _settings("checkpoint-opener.service"), _settings("checkpoint-console.service")
    assert opener["User"] == ["checkpoint-opener"] and console["User"] == ["checkpoint-console"]
    key_dir = "/var/lib/" + opener["StateDirectory"][0]
    assert opener["StateDirectoryMode"] == ["0700"] and f"--keys {key_dir}" in opener["ExecStart"][0]
    assert f"-{key_dir}" in console["InaccessiblePaths"]
    assert "--allow checkpoint-console" in opener["ExecStart"][0]  # SO_PEERCRED: the console's user only
    socket = re.search(r"--socket (\S+)", opener["ExecStart"][0]).group(1)
    assert f"--opener {socket}" in console["ExecStart"][0] and "--keys" not in console["ExecStart"][0]
    assert "PrivateUsers" not in opener  # the console's uid must reach the opener as itself
    for unit in (opener, console):
        assert unit["LimitCORE"] == ["0"] and unit["NoNewPrivileges"] == ["yes"]
    users = (ROOT / "systemd" / "checkpoint-server.sysusers").read_text()
    assert "u checkpoint-opener " in users and "u checkpoint-console " in users
