"""systemd units made checkable on this machine (systemd-analyze verify)."""
from __future__ import annotations

import os
import re
from pathlib import Path


def runnable_unit(unit: Path, tmp_path: Path) -> Path:
    """The unit as written, except that executables not installed on this machine (the venv under
    /opt, cage, chromium) point to stand-ins, so verify checks everything else."""
    text = unit.read_text()
    for exe in sorted(set(re.findall(r"(?m)(?:^Exec\w+=[-@!+:]*|\s)(/[\w./-]+)", text))):
        if exe.startswith(("/usr/bin/", "/opt/", "/bin/")) and not os.access(exe, os.X_OK):
            stand_in = tmp_path / "bin" / exe.strip("/").replace("/", "_")
            stand_in.parent.mkdir(exist_ok=True)
            stand_in.write_text("#!/bin/sh\n")
            stand_in.chmod(0o755)
            text = text.replace(exe, str(stand_in))
    out = tmp_path / unit.name
    out.write_text(text)
    return out
