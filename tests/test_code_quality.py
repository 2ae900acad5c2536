"""The code keeps the house's checks, run here so that CI runs them: ruff (lint), mypy (types) and
import-linter (the floors of docs/architecture.md) at zero findings, with the settings of
pyproject.toml and .importlinter and the versions pinned in setup.py's dev extra; comments and
docstrings say what and why (never which issue asked for it); imports sit at the top of a module,
but for optional heavy dependencies, each deferred with a comment saying why."""
from __future__ import annotations

import ast
import itertools
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from support.paths import ROOT

FOLDERS = ("scanner", "sync", "hardware", "bench", "tests")
SUFFIXES = (".py", ".toml", ".html", ".js", ".css")
ISSUE_NUMBER = re.compile(r"\bissues?\s*#?\d+", re.IGNORECASE)
PRODUCT = ("scanner", "sync", "hardware")
# what may be imported inside a function: optional or platform-only, heavy or native
# (hardware.decode: `checkpoint verify --image` and the central server read a photo of a card with it, and
# load OpenCV only then)
OPTIONAL = {"evdev", "lgpio", "zxingcpp", "pyzbar.pyzbar", "hardware.camera_picamera2", "sync.server.postgres",
            "hardware.decode"}


# each tool through the interpreter running the tests, so the suite uses the pinned versions
RUFF = [sys.executable, "-m", "ruff", "check", "--no-cache"]
MYPY = [sys.executable, "-m", "mypy"]
LINT_IMPORTS = [sys.executable, "-c",
                "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"]
TOOL_TIMEOUT = 600  # mypy's first run, without its cache, on a slow machine


def run_tool(argv: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False)


@pytest.mark.parametrize("argv", [[*RUFF, "scanner", "sync", "hardware", "bench", "tests"], MYPY,
                                  [*LINT_IMPORTS, "--no-cache"]],
                         ids=["ruff", "mypy", "lint-imports"])
def test_the_tool_finds_nothing(argv):
    r = run_tool(argv)
    assert r.returncode == 0, r.stdout[-20000:] + r.stderr[-5000:]


def test_mypy_checks_the_product_and_the_benchmarks():
    """The type check covers what ruff lints but the tests (bench/ too: a benchmark's figures are
    only as good as its code)."""
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert sorted(settings["tool"]["mypy"]["files"]) == sorted(f for f in FOLDERS if f != "tests")


def test_each_tool_reports_a_planted_problem(tmp_path):
    """The same commands fail on a problem, with the project's own settings (a check that cannot fail
    would prove nothing)."""
    probe = tmp_path / "probe.py"
    probe.write_text("import os\n\n\ndef half(n: int) -> int:\n    return n / 2\n", encoding="utf-8")
    ruff = run_tool([*RUFF, "--config", str(ROOT / "pyproject.toml"), str(probe)])
    assert ruff.returncode == 1 and "F401" in ruff.stdout, ruff.stdout + ruff.stderr
    mypy = run_tool([*MYPY, "--config-file", str(ROOT / "pyproject.toml"), "--no-incremental", str(probe)])
    assert mypy.returncode == 1 and "[return-value]" in mypy.stdout, mypy.stdout + mypy.stderr
    contracts = tmp_path / "contracts.ini"
    contracts.write_text((ROOT / ".importlinter").read_text(encoding="utf-8")
                         + "\n[importlinter:contract:planted]\nname = planted\ntype = forbidden\n"
                           "source_modules = hardware\nforbidden_modules = scanner.cards\n", encoding="utf-8")
    lint = run_tool([*LINT_IMPORTS, "--no-cache", str(contracts)])
    assert lint.returncode == 1 and "planted BROKEN" in lint.stdout, lint.stdout + lint.stderr


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


def contract_floors() -> list[set[str]]:
    """The floors of .importlinter's layers contract, top first, each a set of packages."""
    text = (ROOT / ".importlinter").read_text(encoding="utf-8")
    block = text.split("[importlinter:contract:floors]", 1)[1].split("layers =", 1)[1].split("\n[", 1)[0]
    return [{p.strip() for p in line.split("|")} for line in block.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def readme_floors() -> dict[str, int]:
    """package → floor number, from the README's layout table."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d) \| `([a-z/]+)/` \|", text, re.MULTILINE)
    return {path.replace("/", "."): int(floor) for floor, path in rows}


def test_the_readme_layout_names_the_floors_of_the_contract():
    """The README's table and docs/architecture.md show the floors .importlinter enforces."""
    floors, readme = contract_floors(), readme_floors()
    assert set(readme) == set().union(*floors)
    for upper, lower in itertools.pairwise(floors):
        assert min(readme[p] for p in upper) > max(readme[p] for p in lower), (upper, lower)
    assert all(len({readme[p] for p in floor}) == 1 for floor in floors)
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert all(f"{p}" in doc for floor in floors for p in floor)
