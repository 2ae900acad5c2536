"""An enrollment code left in a file (the SD card's enroll.txt, installed next to the config by
scanner/appliance/firstboot.py) as an input: a device that is not provisioned reads it like a scanned
enrollment QR, and again every ``retry_s`` while enrollment has not succeeded (the network may come
up late). It stops once the device is provisioned (the daemon stops it as soon as an enrollment
succeeds). docs/raspberry-pi.md#what-runs-at-boot.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from hardware.inputs import InputThread, SourceReason, SourceState
from scanner.appliance.config import Config
from scanner.base.fsutil import Dir, UnsafePathError
from sync.wire import enrollcode

RETRY_S = 60.0
FILE_NAME = "enroll.txt"


def enroll_file_for(config: Config) -> Path | None:
    """The enrollment file of ``config``: enroll.txt beside its file, if there is one."""
    if config.path is None:
        return None
    path = Path(config.path).parent / FILE_NAME
    return path if path.exists() else None


class EnrollFileInput(InputThread):
    """Hands the file's enrollment code to the pipeline until ``provisioned()`` says it worked."""

    kind = "manual"

    def __init__(self, path: str | Path, provisioned: Callable[[], bool], *, retry_s: float = RETRY_S,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(f"file:{path}", clock=clock)
        self.path = Path(path)
        self.provisioned = provisioned
        self.retry_s = retry_s

    def run(self) -> None:
        self.status.set(SourceState.OK)
        while not self.provisioned():
            try:
                with Dir.open(self.path.parent) as d:
                    text = d.read(self.path.name, enrollcode.MAX_TEXT + 64).decode("utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:  # UnsafePathError is an OSError
                code = exc.code if isinstance(exc, UnsafePathError) else "unreadable"
                self._report(code, f"{self.path}: {getattr(exc, 'strerror', None) or exc}")
                self.status.set(SourceState.FAILED, SourceReason.DEVICE_ERROR, str(self.path))
                return
            if enrollcode.is_enroll_text(text):
                self._emit(text)
            else:
                self._report(SourceReason.BAD_CONFIG, f"{self.path} does not hold a CKENROLL: code")
                self.status.set(SourceState.FAILED, SourceReason.BAD_CONFIG, str(self.path))
                return
            if not self._sleep(self.retry_s):
                break
        if self.provisioned():
            self.status.set(SourceState.FINISHED)
