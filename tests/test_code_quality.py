"""The code keeps the house's checks: comments and docstrings say what and why (never which issue
asked for it); imports sit at the top of a module, but for optional heavy dependencies, each
deferred with a comment saying why."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from support.paths import ROOT

FOLDERS = ("scanner", "sync", "hardware", "bench", "tests")
SUFFIXES = (".py", ".toml", ".html", ".js", ".css")
ISSUE_NUMBER = re.compile(r"\bissues?\s*#?\d+", re.IGNORECASE)
PRODUCT = ("scanner", "sync", "hardware")
# what may be imported inside a function: optional or platform-only, heavy or native
OPTIONAL = {"evdev", "lgpio", "zxingcpp", "pyzbar.pyzbar", "hardware.camera_picamera2", "sync.server.postgres"}


def sources() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*")
                  if p.suffix in SUFFIXES and p.is_file() and "__pycache__" not in p.parts)


def test_no_issue_numbers_in_the_code():
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
             for path in sources()
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if ISSUE_NUMBER.search(line)]
    assert found == [], "say what and why instead:\n" + "\n".join(found)


def local_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import inside a function of ``path``."""
    found = []
    for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    found += [(node.lineno, alias.name) for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return sorted(set(found))


def test_function_local_imports_defer_only_optional_dependencies_and_say_why():
    wrong = []
    for path in sorted(p for folder in PRODUCT for p in (ROOT / folder).rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for line, name in local_imports(path):
            here = f"{path.relative_to(ROOT)}:{line} imports {name}"
            if name not in OPTIONAL and name.rpartition(".")[0] not in OPTIONAL:
                wrong.append(f"{here}: hoist it to the module's top")
            elif "#" not in lines[line - 1] and "#" not in lines[line - 2]:
                wrong.append(f"{here}: say in a comment why it is deferred")
    assert wrong == []
