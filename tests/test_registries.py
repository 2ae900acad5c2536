"""Each repeated fact of the product has one home: a literal that names it appears in one module
only, and every other module imports it from there."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from support.paths import ROOT

PRODUCT = ("scanner", "sync", "hardware")

# literal → the one module that may spell it out
FACTS = {
    "/var/lib/checkpoint": "scanner/base/paths.py",
}


def product_files() -> list[Path]:
    return sorted(p for folder in PRODUCT for p in (ROOT / folder).rglob("*.py"))


def spelled_in(value: str) -> list[str]:
    """Modules holding ``value`` as a whole string literal (docstrings that mention it do not count)."""
    found = []
    for path in product_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        if any(isinstance(n, ast.Constant) and n.value == value for n in ast.walk(tree)):
            found.append(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("value", sorted(FACTS))
def test_each_fact_is_spelled_out_in_one_module(value):
    assert spelled_in(value) == [FACTS[value]]
