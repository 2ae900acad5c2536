"""`sh setup.sh` on a fresh checkout: on a terminal it shows pip's own progress; in CI, or with its
output kept in a file or a pipe, it says only its own `setup:` lines. The packages come from this
test's environment (no index), so nothing is downloaded."""
from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig

import pytest
from support.paths import ROOT
from support.terminal import Terminal
from support.waiting import WAIT


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A copy of the checkout without a venv, and the environment that lets pip install it offline."""
    root = tmp_path_factory.mktemp("fresh") / "checkpoint-edge"
    root.mkdir()
    for name in ("setup.py", "setup.sh", "README.md"):
        shutil.copy2(ROOT / name, root / name)
    for pkg in ("scanner", "sync", "hardware"):
        shutil.copytree(ROOT / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(PYTHONPATH=sysconfig.get_paths()["purelib"],  # the dependencies, already installed here
               PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0", PIP_USE_PEP517="0")
    return root, env


def fresh_install(root) -> None:
    """Make the next run install again (as after a change of setup.py)."""
    for stamp in root.glob(".venv/.installed*"):
        stamp.unlink()


def on_terminal(root, env) -> tuple[int, str]:
    term = Terminal(["sh", "setup.sh", "test", "--version"], env=env, cwd=root)
    try:
        return term.finish(), term.text()
    finally:
        term.close()


def test_setup_shows_pips_progress_on_a_terminal_and_stays_quiet_in_ci(checkout):
    root, env = checkout
    status, shown = on_terminal(root, env)
    assert status == 0, shown
    assert "setup: creating .venv" in shown and "setup: pip install -e .[dev]" in shown
    assert "Obtaining file://" in shown and "Successfully installed checkpoint-edge" in shown, shown  # pip's own
    assert "pytest " in shown.splitlines()[-1]

    fresh_install(root)
    status, shown = on_terminal(root, {**env, "CI": "true"})
    assert status == 0, shown
    assert [line for line in shown.splitlines() if line.strip()][:-1] == ["setup: pip install -e .[dev]"], shown

    fresh_install(root)
    kept = subprocess.run(["sh", "setup.sh", "test", "--version"], env=env, cwd=root, capture_output=True, text=True,
                          timeout=WAIT * 3, check=False)
    assert kept.returncode == 0, kept.stderr
    assert kept.stderr.splitlines() == ["setup: pip install -e .[dev]"] and "pytest" in kept.stdout, kept.stderr
