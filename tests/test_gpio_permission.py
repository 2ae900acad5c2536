"""A real "no permission on /dev/gpiochip0" on a machine made to look like a Raspberry Pi 4.

In a private mount namespace /proc/cpuinfo gets a Pi 4 revision line and /dev/gpiochip0 exists
but belongs to root (mode 600); the feedback device is then opened as user nobody. lgpio really
fails to open the chip, and open_feedback must log one line and fall back to the console. Needs
root and unshare (skipped otherwise, e.g. in a container without CAP_SYS_ADMIN).

Wherever the checkout lives (a `mktemp -d` clone is root's, mode 700: nobody cannot enter it),
the namespace shows it to nobody at /dev/checkout, a bind mount on the namespace's own tmpfs, and
the child imports this checkout's code from there (checked).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.paths import ROOT as REPO

CHECKOUT = "/dev/checkout"  # where the child sees REPO (SETUP)

CHILD = r"""
import io, json, logging, sys, warnings
from hardware.feedback_config import FeedbackConfig, LedConfig, RelayConfig
from hardware.gpio_feedback import open_feedback
from scanner.cards.verdict import Decision, Verdict
from scanner.base.errors import Reason

log = io.StringIO()
logging.basicConfig(level=logging.WARNING, stream=log, format="%(levelname)s %(name)s: %(message)s")
out = {}
for name in (None, "lgpio"):
    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        fb = open_feedback(FeedbackConfig(green=LedConfig(17), relay=RelayConfig(23), pin_factory=name),
                           stream=io.StringIO())
    fb.show(Verdict(Decision.ACCEPT, Reason.OK))
    idle = fb.wait_idle(30)
    fb.close()
    out[str(name)] = {"kind": fb.kind, "reason": fb.fallback_reason, "idle": idle,
                      "leaked": [str(w.message) for w in leaked]}
out["log"] = log.getvalue().splitlines()
out["code"] = [sys.modules[m].__file__ for m in ("hardware.gpio_feedback", "scanner.cards.verdict")]
print(json.dumps(out))
"""

SETUP = r"""
set -e
mount --make-rprivate /
mount --bind "$FAKE_CPUINFO" /proc/cpuinfo
mount -t tmpfs -o mode=755 tmpfs /dev
: > /dev/null && chmod 666 /dev/null
: > /dev/gpiochip0 && chmod 600 /dev/gpiochip0
mkdir /dev/checkout && mount --bind "$REPO" /dev/checkout
mkdir -m 700 /dev/private
cd "$WORKDIR"
exec setpriv --reuid=65534 --regid=65534 --clear-groups "$PYTHON" -c "$CHILD"
"""


def _can_unshare() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv"):
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    return probe.returncode == 0


def _python() -> str:
    """This interpreter as the child reaches it: through /dev/checkout when it is the checkout's venv."""
    try:
        return str(Path(CHECKOUT) / Path(sys.executable).relative_to(REPO))
    except ValueError:
        return sys.executable


def run_as_nobody(tmp_path: Path, child: str, workdir: str = CHECKOUT) -> subprocess.CompletedProcess:
    """Run ``child`` (python -c) as nobody in ``workdir`` of the namespace SETUP makes."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(Path("/proc/cpuinfo").read_text() +
                       "Revision\t: c03111\nModel\t: Raspberry Pi 4 Model B Rev 1.1\n")
    cpuinfo.chmod(0o644)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": CHECKOUT, "FAKE_CPUINFO": str(cpuinfo), "REPO": str(REPO), "WORKDIR": workdir,
           "PYTHON": _python(), "CHILD": child}
    return subprocess.run(["unshare", "-m", "sh", "-c", SETUP], cwd="/", env=env, capture_output=True,
                          text=True, timeout=120, check=False)


needs_namespace = pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare -m (mount namespaces)")


@needs_namespace
def test_no_permission_on_gpiochip_falls_back_to_console(tmp_path):
    if importlib.util.find_spec("lgpio") is None:  # not imported here: that would leave a FIFO in the cwd
        pytest.skip("lgpio (gpiozero's Pi 5 pin factory) is not installed")
    proc = run_as_nobody(tmp_path, CHILD)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(f.startswith(CHECKOUT + "/") for f in out["code"]), out["code"]  # this checkout's code
    default, lgpio = out["None"], out["lgpio"]
    # gpiozero's default chain: lgpio is refused the chip, the others have no way in either
    assert default["kind"] == "console" and default["idle"]
    assert "BadPinFactory" in default["reason"] and "lgpio: 'can not open gpiochip'" in default["reason"]
    # lgpio chosen by name: its own error
    assert lgpio["kind"] == "console" and lgpio["idle"]
    assert lgpio["reason"] == "error: 'can not open gpiochip'"
    assert default["leaked"] == [] and lgpio["leaked"] == []
    lines = out["log"]
    assert len(lines) == 2, lines  # one line per attempt, nothing else
    assert all(ln.startswith("WARNING hardware.gpio_feedback: feedback: GPIO unavailable") for ln in lines)


PRELOAD = r"""
import io, json, logging, os
log = io.StringIO()
logging.basicConfig(level=logging.WARNING, stream=log, format="%(levelname)s %(name)s: %(message)s")
from hardware.gpio_feedback import preload_lgpio
preload_lgpio()
print(json.dumps({"cwd": os.getcwd(), "log": log.getvalue().splitlines()}))
"""


@needs_namespace
def test_lgpio_preload_started_in_a_directory_it_cannot_enter_again(tmp_path):
    """`sudo -u checkpoint checkpoint run` from root's home: lgpio moves the process to LG_WD and
    the way back is closed. One warning and the process works in / (no relative path worked in
    the old directory either), not a PermissionError out of open_feedback."""
    if importlib.util.find_spec("lgpio") is None:
        pytest.skip("lgpio (gpiozero's Pi 5 pin factory) is not installed")
    proc = run_as_nobody(tmp_path, PRELOAD, workdir="/dev/private")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cwd"] == "/"
    assert out["log"] == [("WARNING hardware.gpio_feedback: feedback: cannot return to the working directory "
                          "/dev/private (Permission denied); working in / instead")]
