"""Where the benchmarks put files that must be on the real disk: $CHECKPOINT_BENCH_DIR, else
bench/out/ (/tmp may be a tmpfs, where an fsync costs nothing and a durable commit would look free);
and $CHECKPOINT_BENCH_FAST_DIR, a fast disk for the entry log's goal (a real filesystem whose fsync
is cheap) when the machine's own disk is slow."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def bench_dir(prefix: str, *, fast: bool = False) -> Path:
    """A fresh directory under the benchmarks' directory (the caller deletes it); ``fast``: under
    $CHECKPOINT_BENCH_FAST_DIR when it is set."""
    base = Path((fast and os.environ.get("CHECKPOINT_BENCH_FAST_DIR")) or os.environ.get("CHECKPOINT_BENCH_DIR")
                or Path(__file__).resolve().parent / "out")
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=base))


def fs_type(path: Path) -> str:
    """The filesystem type and mount point holding ``path`` (from /proc/mounts)."""
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts", encoding="utf-8") as fh:
            mounts = [line.split() for line in fh]
    except OSError:
        return "unknown (no /proc/mounts)"
    for parts in mounts:
        if len(parts) >= 3 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
            best, kind = parts[1], parts[2]
    return f"{kind} ({best or '?'})"
