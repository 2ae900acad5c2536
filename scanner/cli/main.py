"""The `checkpoint` command: thin commands over the library (docs/cli.md is the contract).

Each command (or group) lives in its own module and imports what it needs at its top; this group
loads only the module of the command being run (click's lazily loaded subcommands), so starting
`checkpoint verify` does not load the server, the daemon or the camera stack.
"""
from __future__ import annotations

import importlib

import click

from scanner import __version__

COMMANDS = {
    "config": "scanner.cli.run:config_group",
    "demo": "scanner.cli.demo:demo",
    "doctor": "scanner.cli.run:doctor_cmd",
    "issuer": "scanner.cli.issuer:issuer",
    "log": "scanner.cli.log:log_group",
    "provision": "scanner.cli.sync:provision",
    "run": "scanner.cli.run:run_cmd",
    "scan": "scanner.cli.scan:scan",
    "scan-image": "scanner.cli.scan_image:scan_image",
    "server": "scanner.cli.server:server_group",
    "sync": "scanner.cli.sync:sync_group",
    "udev-rules": "scanner.cli.run:udev_rules",
    "verify": "scanner.cli.verify:verify",
}
"""Command name → "module:object" of its click command."""


class LazyGroup(click.Group):
    """A group whose subcommands are imported when first asked for (click's documented pattern)."""

    def __init__(self, *args, lazy_subcommands: dict[str, str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = lazy_subcommands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy_subcommands])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_subcommands:
            return self._load(cmd_name)
        return super().get_command(ctx, cmd_name)

    def _load(self, cmd_name: str) -> click.Command:
        module_name, _, attr = self.lazy_subcommands[cmd_name].partition(":")
        command = getattr(importlib.import_module(module_name), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy_subcommands[cmd_name]} is not a click command")
        return command


@click.group(cls=LazyGroup, lazy_subcommands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="checkpoint")
def main() -> None:
    """checkpoint-edge: verify signed personal QR cards offline at checkpoints."""


if __name__ == "__main__":  # pragma: no cover
    main()
