"""Time in milliseconds: one helper for the whole project."""
from __future__ import annotations

import ast
import time
from pathlib import Path

from scanner.base.timeutil import DAY_MS, now_ms

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("scanner", "sync", "hardware", "bench", "tests")


def test_now_ms_is_the_wall_clock_in_whole_milliseconds():
    before = time.time_ns() // 1_000_000
    got = now_ms()
    after = time.time_ns() // 1_000_000
    assert type(got) is int and before <= got <= after
    assert DAY_MS == 24 * 3600 * 1000


def _copies(path: Path) -> list[str]:
    """Definitions of a now-in-ms helper and ``time.time_ns() // 1_000_000`` written out in one file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.lstrip("_") == "now_ms":
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} def {node.name}")
        elif (isinstance(node, ast.BinOp) and isinstance(node.op, ast.FloorDiv)
              and isinstance(node.left, ast.Call) and ast.unparse(node.left.func) == "time.time_ns"
              and isinstance(node.right, ast.Constant) and node.right.value == 1_000_000):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    return found


def test_now_ms_is_written_once():
    """Every module takes the time in ms from scanner.base.timeutil; no copy of it anywhere else."""
    own = ROOT / "scanner" / "base" / "timeutil.py"
    copies = [c for pkg in PACKAGES for path in sorted((ROOT / pkg).rglob("*.py"))
              if path != own and path.name != Path(__file__).name for c in _copies(path)]
    assert copies == []
    assert _copies(own)  # the check finds the one definition
