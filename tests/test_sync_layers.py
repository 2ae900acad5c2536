"""The sync packages keep their floors (docs/architecture.md): the device side never imports the central
server, the server never imports the device side, and both share only sync.wire, which imports neither.
Read from the source (every import, also those inside functions), so a cycle cannot hide in a function."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from support.paths import ROOT

ABOVE_SYNC = ("scanner.appliance", "scanner.cli", "scanner.demo")


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports (``from sync import pull`` counts as sync.pull)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def under(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def modules(folder: str, *, recursive: bool = False) -> list[Path]:
    files = sorted((ROOT / folder).rglob("*.py") if recursive else (ROOT / folder).glob("*.py"))
    assert files, folder
    return files


def offending(files: list[Path], bad) -> dict[str, list[str]]:
    found = {}
    for path in files:
        names = sorted(n for n in imported(path) if bad(n))
        if names:
            found[str(path.relative_to(ROOT))] = names
    return found


def device_side(name: str) -> bool:
    """A module of the device's sync (sync.agent, sync.client, ...), not the wire or the server."""
    return under(name, "sync") and not under(name, "sync.wire", "sync.server") and name != "sync"


def test_the_device_never_imports_the_server():
    assert offending(modules("sync"), lambda n: under(n, "sync.server", *ABOVE_SYNC)) == {}


def test_the_server_never_imports_the_device_side():
    assert offending(modules("sync/server"), lambda n: device_side(n) or under(n, *ABOVE_SYNC)) == {}


def test_the_wire_imports_neither_side():
    assert offending(modules("sync/wire"), lambda n: device_side(n) or under(n, "sync.server", *ABOVE_SYNC)) == {}


@pytest.mark.parametrize("folder", ["scanner/appliance", "scanner/store", "scanner/cards", "scanner/base", "hardware"])
def test_nothing_below_the_cli_imports_the_server(folder):
    assert offending(modules(folder, recursive=True), lambda n: under(n, "sync.server")) == {}


def test_the_check_sees_what_it_looks_for(tmp_path):
    """The import reader finds imports in functions and of the form ``from sync import x``."""
    probe = tmp_path / "probe.py"
    probe.write_text("from sync import agent\n\ndef f():\n"
                     "    import sync.server.app\n    from sync.server import keys\n")
    assert {"sync.agent", "sync.server.app", "sync.server.keys"} <= imported(probe)
    assert sorted(n for n in imported(probe) if device_side(n)) == ["sync.agent"]


def test_the_site_stays_on_the_device_floor():
    """sync.site (the gates of a site) is device side: never the server, nothing above sync."""
    assert offending(modules("sync/site"), lambda n: under(n, "sync.server", *ABOVE_SYNC)) == {}
