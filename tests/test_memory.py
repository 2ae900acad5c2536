"""What the appliance keeps in memory: OpenCV only in a process that uses a camera, zeroconf only
in a gate of a site."""
from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import requests
from support.appliance import Daemon, wait_inputs_ok
from support.config import standalone, write_config
from support.inputs import Fifo
from support.paths import ROOT
from support.pki import make_pki
from support.waiting import HTTP_TIMEOUT, WAIT

from scanner.base.lazy import lazy_module


def _maps_opencv(pid: int, marker: str = "/cv2/") -> bool:
    """True if OpenCV's native library (or another whose path holds ``marker``) is mapped into process ``pid``."""
    with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as fh:
        return any(marker in line for line in fh)


def test_a_daemon_without_a_camera_never_loads_opencv(tmp_path):
    pki = make_pki(tmp_path / "pki")
    fifo = Fifo(tmp_path / "in.fifo")
    config = write_config(tmp_path / "c.toml", standalone(tmp_path / "state", pki,
                                                          stdin=[{"name": "desk", "path": str(fifo.path)}]))
    d = Daemon(config)
    try:
        url = wait_inputs_ok(d)
        fifo.send(pki.card())
        d.wait_line(r"verdict source=stdin:desk decision=accept reason=ok ")
        for page in ("/api/v1/status", "/", "/status"):  # the kiosk and its status page too
            requests.get(url + page, timeout=HTTP_TIMEOUT)
        assert not _maps_opencv(d.proc.pid)
        assert not _maps_opencv(d.proc.pid, "/zeroconf/")  # no [site]: no mDNS library (~6 MB)
    finally:
        d.stop()
        fifo.close()


def test_opencv_loads_at_its_first_use(tmp_path):
    image = tmp_path / "white.png"
    cv2.imwrite(str(image), np.full((40, 60), 255, dtype=np.uint8))
    code = ("import os, sys; from hardware import decode; "
            "before = any('/cv2/' in l for l in open('/proc/self/maps')); "
            f"gray = decode.read_gray({str(image)!r}); "
            "after = any('/cv2/' in l for l in open('/proc/self/maps')); "
            "print(before, after, gray.shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True).stdout
    assert out.split() == ["False", "True", "(40,", "60)"]


def test_a_lazy_module_that_is_not_installed_is_refused_at_once():
    with pytest.raises(ModuleNotFoundError):
        lazy_module("no_such_module_anywhere")


def test_zeroconf_loads_when_a_gate_looks_for_its_site(tmp_path):
    code = ("from sync.site import discovery; "
            "before = any('/zeroconf/' in l for l in open('/proc/self/maps')); "
            "version = discovery.ip_version('0.0.0.0'); "
            "after = any('/zeroconf/' in l for l in open('/proc/self/maps')); "
            "print(before, after, version.name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True).stdout
    assert out.split() == ["False", "True", "V4Only"]
