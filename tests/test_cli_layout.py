"""The `checkpoint` command's layout: one module per command (or group) over the library, none of them
importing the top-level group, and running a command loads its own module only, not the server, the
daemon or the camera stack."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from support.paths import ROOT

from scanner.cards import keys as keymod
from scanner.cli.main import COMMANDS, main
from scanner.cli.server import SERVER_COMMANDS, server_group

CLI = ROOT / "scanner" / "cli"

PROBE = """
import json, sys
from scanner.cli.main import main
try:
    main(sys.argv[1:], prog_name="checkpoint")
except SystemExit as exc:
    code = exc.code
print(json.dumps([code, sorted(sys.modules)]))
"""


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def loaded_by(*args: str) -> tuple[int, set[str]]:
    """(exit status, modules loaded) of `checkpoint ARGS` run in a fresh interpreter."""
    r = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=ROOT, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr
    code, modules = json.loads(r.stdout.splitlines()[-1])
    return code, set(modules)


def test_no_command_module_imports_the_top_group():
    for path in sorted(CLI.glob("*.py")):
        if path.name != "main.py":
            assert "scanner.cli.main" not in imports_of(path), path.name


def words(text: str) -> list[str]:
    return text.split()


@pytest.mark.parametrize("group, table", [(main, COMMANDS), (server_group, SERVER_COMMANDS)], ids=["checkpoint",
                                                                                                   "server"])
def test_every_lazy_command_resolves_to_its_module_and_summary(group, table):
    ctx = click.Context(group)
    assert set(table) <= set(group.list_commands(ctx))
    for name, lazy in table.items():
        command = group.get_command(ctx, name)
        assert isinstance(command, click.Command) and command.name == name, name
        assert lazy.target.startswith(f"{command.callback.__module__}:"), name
        assert words(lazy.summary) == words(command.help.split("\n\n")[0]), name  # what the group's help shows


def test_the_command_list_loads_no_command():
    code, modules = loaded_by("--help")
    assert code == 0
    command_modules = {lazy.target.partition(":")[0] for lazy in COMMANDS.values()}
    assert command_modules & modules == set()


def test_verify_loads_only_what_it_needs(tmp_path, issuers, make_card, now):
    pub = tmp_path / "issuer.pub"
    pub.write_bytes(keymod.public_pem(issuers["ed"].key.public_key()))
    code, modules = loaded_by("verify", "--trust", str(pub), "--at", str(now), make_card())
    heavy = ("scanner.cli.server", "scanner.cli.run", "scanner.cli.sync", "scanner.cli.log", "scanner.cli.scan",
             "sync.server", "sync.agent", "scanner.appliance", "hardware.camera", "cv2", "starlette", "uvicorn")
    assert sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in heavy)) == []
    assert code == 0 and "scanner.cli.verify" in modules


def test_a_group_loads_its_own_module_only():
    code, modules = loaded_by("sync", "--help")
    assert code == 0
    assert "scanner.cli.sync" in modules
    assert not {"scanner.cli.server", "scanner.cli.run", "sync.server.app"} & modules


def test_the_server_loads_its_http_stacks_only_for_run_and_pull():
    code, modules = loaded_by("server", "--help")
    assert code == 0 and "scanner.cli.server" in modules
    assert not {"scanner.cli.server_run", "scanner.cli.server_pull", "sync.server.app", "sync.server.puller"} & modules


@pytest.mark.parametrize("args", [("config", "docs"), ("doctor", "--help"), ("udev-rules", "--help")],
                         ids=lambda a: a[0])
def test_the_appliance_helpers_do_not_load_the_daemon(args):
    """config, doctor and udev-rules are quick tools beside `run`: they leave the daemon, its lane
    and its threads unloaded."""
    code, modules = loaded_by(*args)
    assert code == 0
    assert not {"scanner.cli.run", "scanner.appliance.daemon", "scanner.appliance.lane"} & modules
