"""`checkpoint config check|docs`, and the configuration as the appliance's commands load it: thin
wrappers over scanner.appliance.config and its schema (docs/cli.md#the-appliance)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from scanner.appliance.config import DEFAULT_PATH, Config, ConfigError, check_file, defaults, load
from scanner.appliance.schema import markdown
from scanner.base import i18n
from scanner.base.paths import STATE_DIR_ENV
from scanner.base.safetext import escape
from scanner.cli.common import EXIT_USAGE, LANG


def load_config(path: str | None, *, allow_missing_default: bool = True) -> Config:
    """The Config for ``path``; the built-in defaults when the default file is absent. A bad file
    prints one line per problem and exits 2."""
    file = Path(path or DEFAULT_PATH)
    if path is None and allow_missing_default and not file.exists():
        return defaults(os.environ.get(STATE_DIR_ENV) or None)
    try:
        return load(file)
    except ConfigError as exc:
        for line in exc.lines(i18n.default_lang()):
            click.echo(f"checkpoint: error: {escape(line)}", err=True)
        sys.exit(EXIT_USAGE)


@click.group("config")
def config_group() -> None:
    """Check the configuration file; print its documentation."""


@config_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--lang", type=LANG, default=None, help="vi (default) or en.")
def config_check(file, lang):
    """Check FILE: every problem on its own line (key, problem, fix), exit 2; else "ok", exit 0."""
    lang = lang or i18n.default_lang()
    lines = check_file(file, lang)
    for line in lines:
        click.echo(f"checkpoint: error: {escape(line)}", err=True)
    if lines:
        sys.exit(EXIT_USAGE)
    click.echo(i18n.t("config.ok", lang, file=escape(file)))


@config_group.command("docs")
def config_docs():
    """Print docs/configuration.md as generated from the schema."""
    click.echo(markdown(), nl=False)
