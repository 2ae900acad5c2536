"""The code keeps the house's checks: comments and docstrings say what and why (never which issue
asked for it)."""
from __future__ import annotations

import re
from pathlib import Path

from support.paths import ROOT

FOLDERS = ("scanner", "sync", "hardware", "bench", "tests")
SUFFIXES = (".py", ".toml", ".html", ".js", ".css")
ISSUE_NUMBER = re.compile(r"\bissues?\s*#?\d+", re.IGNORECASE)


def sources() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*")
                  if p.suffix in SUFFIXES and p.is_file() and "__pycache__" not in p.parts)


def test_no_issue_numbers_in_the_code():
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
             for path in sources()
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if ISSUE_NUMBER.search(line)]
    assert found == [], "say what and why instead:\n" + "\n".join(found)
