"""Every benchmark module imports: a bench that no longer imports after a move is found here, not
when someone needs its figures."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_MODULES = sorted(f"bench.{p.stem}" for p in (ROOT / "bench").glob("*.py") if p.stem != "__main__")

PROBE = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc(limit=1).strip().splitlines()[-1])
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_bench_module_imports():
    assert "bench.bench_fleet" in BENCH_MODULES
    done = subprocess.run([sys.executable, "-c", PROBE, *BENCH_MODULES], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, f"bench modules that do not import:\n{done.stdout}{done.stderr}"
