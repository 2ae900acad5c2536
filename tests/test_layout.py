"""The suite's own layout: test modules stand alone (what they share lives in tests/support/ and
conftest.py, never in another test module), and the shared timeout and wait are defined once."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SUPPORT = TESTS / "support"
TEST_MODULES = sorted(p.stem for p in TESTS.glob("test_*.py"))


def sources() -> list[Path]:
    """Every Python file of the suite: test modules, conftest.py and the support package."""
    return sorted([*TESTS.glob("*.py"), *SUPPORT.rglob("*.py")])


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``, at any depth (a local import counts too); for
    `from X import Y` both X and X.Y, as Y may be a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}".lstrip(".")) for alias in node.names]
    return found


def is_test_module(name: str) -> bool:
    parts = name.split(".")
    if parts[0] == "tests":  # the same modules by their package path
        parts = parts[1:]
    return bool(parts) and (parts[0] in TEST_MODULES or parts[0] == "conftest")


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(TESTS)))
def test_nothing_imports_a_test_module_or_conftest(path):
    wrong = [f"{path.relative_to(TESTS)}:{line} imports {name}"
             for line, name in imported(path) if is_test_module(name)]
    assert not wrong, "move what is shared to tests/support/ or a conftest fixture:\n" + "\n".join(wrong)


def assigned(path: Path, name: str) -> list[int]:
    """Lines where ``path`` binds ``name`` at module level (an assignment or a def)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    lines = []
    for node in tree.body:
        targets = []
        if isinstance(node, ast.Assign):
            for t in node.targets:
                targets += [e for e in ast.walk(t) if isinstance(e, ast.Name)]
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
            targets = [node.target]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            lines += [node.lineno] if node.name == name else []
        lines += [node.lineno for t in targets if t.id == name]
    return lines


@pytest.mark.parametrize("name", ["WAIT", "wait_for"])
def test_the_shared_wait_is_defined_once(name):
    where = [f"{p.relative_to(TESTS)}:{line}" for p in sources() for line in assigned(p, name)]
    assert where == [f"support/waiting.py:{assigned(SUPPORT / 'waiting.py', name)[0]}"], (
        f"{name} is defined in support/waiting.py only; found: {where}")


def test_the_checks_see_a_test_module_import(tmp_path):
    """The import check itself catches each way of writing such an import."""
    probe = tmp_path / "test_probe.py"
    probe.write_text("import test_api\nfrom test_camera import x\n"
                     "def f():\n    from conftest import wrap\n    import tests.test_pages\n", encoding="utf-8")
    assert [name for _, name in imported(probe) if is_test_module(name)] == [
        "test_api", "test_camera", "test_camera.x", "conftest", "conftest.wrap", "tests.test_pages"]
    assert not [name for _, name in imported(SUPPORT / "waiting.py") if is_test_module(name)]
