"""Command groups whose subcommands are imported only when they run (click's documented pattern for
lazily loaded subcommands): each command's module imports what it needs at its top, and a group
lists its commands from their summaries without loading any.
"""
from __future__ import annotations

import importlib
from typing import NamedTuple

import click


class Lazy(NamedTuple):
    """A subcommand not imported yet: where it is, and what the group's help says of it."""

    target: str  # "module:object" of the click command
    summary: str  # the first paragraph of its help (tests/test_cli_layout.py keeps the two the same)


class LazyGroup(click.Group):
    """A group whose subcommands are imported when first asked for (click's documented pattern);
    its help lists them from their summaries."""

    def __init__(self, *args, lazy_subcommands: dict[str, Lazy], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = lazy_subcommands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy_subcommands])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        lazy = self.lazy_subcommands.get(cmd_name)
        if lazy is None:
            return super().get_command(ctx, cmd_name)
        module_name, _, attr = lazy.target.partition(":")
        command = getattr(importlib.import_module(module_name), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{lazy.target} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))
        rows = []
        for name in names:
            lazy = self.lazy_subcommands.get(name)
            if lazy is not None:  # shortened as click shortens a command's own help
                rows.append((name, click.Command(name, help=lazy.summary).get_short_help_str(limit)))
            elif (command := super().get_command(ctx, name)) is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)
