"""Command groups whose subcommands are imported only when they run (click's documented pattern for
lazily loaded subcommands): each command's module imports what it needs at its top, and a group
lists its commands from their summaries without loading any.
"""
from __future__ import annotations

import importlib
import re
import sys
from typing import Any, NamedTuple

import click

from scanner.base import i18n
from scanner.base.safetext import escape
from scanner.cli import helptext

EXIT_USAGE = 2


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

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        """click's main, but a usage error is one translated line (`checkpoint: error: ...`, exit 2).
        A reader that goes away (`checkpoint log export | head`) ends the command quietly, exit 1
        (click's own handling of EPIPE)."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        lang = helptext.lang_of(argv)
        if lang != "en" and helptext.asks_help(argv):
            click.echo(self.help_in(lang, prog_name, argv))
            sys.exit(0)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # a group without its command: its help, as click does
            help_ = exc.ctx.get_help() if lang == "en" or exc.ctx is None else \
                helptext.render(exc.ctx, lang, _summaries(exc.ctx.command))
            click.echo(help_, err=True)
            sys.exit(EXIT_USAGE)
        except click.UsageError as exc:
            click.echo(f"checkpoint: error: {escape(usage_text(exc, i18n.default_lang()))}", err=True)
            sys.exit(EXIT_USAGE)
        except click.Abort:
            click.echo(i18n.t("usage.aborted"), err=True)
            sys.exit(1)
        except click.ClickException as exc:
            click.echo(f"checkpoint: error: {escape(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)

    def help_in(self, lang: str, prog_name: str | None, args: list[str]) -> str:
        """The help of the command ``args`` name, in ``lang`` (scanner/cli/helptext.py)."""
        ctx = helptext.context_for(self, prog_name or "checkpoint", args)
        return helptext.render(ctx, lang, _summaries(ctx.command))

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


def _summaries(command: click.Command) -> dict[str, str]:
    """A lazy group's commands not loaded yet, with their summaries."""
    return {name: lazy.summary for name, lazy in getattr(command, "lazy_subcommands", {}).items()}


def usage_text(exc: click.UsageError, lang: str) -> str:
    """A usage error in words of the catalogue, with where to look for help."""
    t = lambda key, **kw: i18n.t("usage." + key, lang, **kw)  # noqa: E731
    if isinstance(exc, click.NoSuchOption):
        near = ", ".join(sorted(exc.possibilities or ()))
        text = t("no_such_option", option=exc.option_name) + (t("did_you_mean", names=near) if near else "")
    elif isinstance(exc, click.MissingParameter):
        text = t("missing", param=_param(exc))
    elif isinstance(exc, click.BadParameter):
        text = t("bad_value", param=_param(exc), message=click_message(exc.message, lang))
    elif isinstance(exc, click.BadOptionUsage):
        text = t("bad_option", option=exc.option_name, message=exc.message)
    elif exc.message.startswith("No such command"):
        text = t("no_such_command", name=exc.message.partition(" command ")[2].rstrip("."))
    elif exc.message.startswith("Got unexpected extra argument"):
        text = t("extra", args=exc.message.partition("(")[2].rstrip(")"))
    else:
        text = exc.message
    command = exc.ctx.command_path if exc.ctx is not None else "checkpoint"
    return text + t("see_help", command=command)


# click's own refusals of a value (click/types.py; its texts are English only): their words in the catalogue
_CLICK = (
    (re.compile(r"(?:File|Directory|Path) (?P<path>'.*') (?P<what>does not exist|is a file|is a directory|"
                r"is not readable|is not writable|is not executable)\.", re.S), "path_"),
    (re.compile(r"(?P<value>.+) is not in the range (?P<range>.+)\.", re.S), "not_in_range"),
    (re.compile(r"(?P<value>.+) is not one of (?P<choices>.+)\.", re.S), "not_one_of"),
    (re.compile(r"(?P<value>.+) is not (?P<choices>'[^']*')\.", re.S), "not_one_of"),
    (re.compile(r"(?P<value>.+) is not a valid (?:integer|float|boolean)\.?.*", re.S), "not_a_number"),
)


def click_message(message: str, lang: str) -> str:
    """click's message for a refused value in the catalogue's words; a message not known here as it is."""
    for pattern, key in _CLICK:
        m = pattern.fullmatch(message)
        if m is None:
            continue
        params = m.groupdict()
        if key == "path_":
            what = params.pop("what").removeprefix("is ").replace("does not exist", "missing").replace(" ", "_")
            return i18n.t("usage.path_" + what, lang, **params)
        return i18n.t("usage." + key, lang, **params)
    return message


def _param(exc: click.BadParameter) -> str:
    if exc.param_hint is not None:
        hint = exc.param_hint
        return " / ".join(hint) if isinstance(hint, (list, tuple)) else str(hint)
    if exc.param is not None:
        return exc.param.get_error_hint(exc.ctx) if exc.ctx is not None else str(exc.param.name)
    return "?"
