"""A device's state folder holding only its trust root, and a Python snippet run in a fresh
interpreter (what a process that never imported the test's modules loads): for the trust-file tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from scanner.cards import keys as keymod
from support.paths import ROOT
from support.waiting import WAIT
from sync import trustupdate


def device_state(tmp_path: Path, root_key) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    (state / trustupdate.ROOT_NAME).write_bytes(keymod.public_pem(root_key.public_key()))
    return state


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], check=False, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=WAIT)
