"""hardware/ stands on the card core only: no module of it imports the appliance, the entry log,
sync or the commands (top-level and function-local imports alike), so cameras, readers and
feedback can be used and tested without the daemon. Nothing below the appliance imports hardware
either: the store and the wire format meet the inputs only through the card core's `Scan`."""
from __future__ import annotations

import ast
from pathlib import Path

from support.paths import ROOT

ALLOWED = ("hardware", "scanner.base", "scanner.cards")
PROJECT = ("hardware", "scanner", "sync")


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def test_hardware_imports_nothing_above_the_card_core():
    above = []
    for path in sorted((ROOT / "hardware").rglob("*.py")):
        for line, name in _imports(path):
            ours = name.split(".")[0] in PROJECT or name == "scanner"
            if ours and not any(name == a or name.startswith(a + ".") for a in ALLOWED):
                above.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert above == []


def test_the_store_and_the_wire_do_not_import_hardware():
    found = [f"{path.relative_to(ROOT)}:{line} imports {name}"
             for folder in ("scanner/store", "sync/wire") for path in sorted((ROOT / folder).rglob("*.py"))
             for line, name in _imports(path) if name == "hardware" or name.startswith("hardware.")]
    assert found == []
