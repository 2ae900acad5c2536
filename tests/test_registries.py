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
    "CK1:": "scanner/cards/formats/ck1.py",
    "HC1:": "scanner/cards/formats/hc1.py",
    "shc:/": "scanner/cards/formats/shc.py",
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


def names_used(name: str) -> list[str]:
    """Modules that refer to ``name`` (a call, an import or an attribute), its own module included."""
    found = []
    for path in product_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        if any((isinstance(n, ast.Name) and n.id == name) or (isinstance(n, ast.Attribute) and n.attr == name)
               or (isinstance(n, ast.alias) and n.name == name) or (isinstance(n, ast.FunctionDef) and n.name == name)
               for n in ast.walk(tree)):
            found.append(str(path.relative_to(ROOT)))
    return found


def test_multi_part_cards_are_put_together_in_one_place():
    """Every caller verifies a card through verifier.verify_card, which alone picks single or multi-part."""
    assert names_used("verify_parts") == ["scanner/cards/formats/shc.py", "scanner/cards/verifier.py"]


# name → the one module that defines it (a def or class at module level)
DEFINED_ONCE = {
    "now_ms": "scanner/base/timeutil.py",
    "Backoff": "scanner/base/backoff.py",
    "atomic_write": "scanner/base/fsutil.py",
    "AtomicFile": "scanner/base/fsutil.py",
    "ConfigError": "scanner/appliance/config.py",
    "default_state_dir": "scanner/base/paths.py",
    "verify_card": "scanner/cards/verifier.py",
}


@pytest.mark.parametrize("name", sorted(DEFINED_ONCE))
def test_each_shared_helper_is_defined_in_one_module(name):
    found = []
    for path in product_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        if any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name for n in tree.body):
            found.append(str(path.relative_to(ROOT)))
    assert found == [DEFINED_ONCE[name]]
