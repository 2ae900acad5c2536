"""Which device a `log` or `sync` command works on: the paths given (--db, --state-dir), else its
configuration (--config, else $CHECKPOINT_STATE_DIR, else the installed configuration file when
there is one), else the default state directory (docs/cli.md#which-device)."""
from __future__ import annotations

import os
from pathlib import Path

import click

from scanner.appliance.config import DEFAULT_PATH, Config, ConfigError, load
from scanner.base import i18n
from scanner.base.paths import STATE_DIR_ENV, default_state_dir
from scanner.cli.common import fail
from scanner.store.schema import DEFAULT_DB_NAME


def config_option(fn):
    """--config, for the commands that work on a device's state directory or log."""
    return click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                        help=f"The device's configuration: its state directory and entry log (default "
                             f"{DEFAULT_PATH} when it exists and $CHECKPOINT_STATE_DIR is not set).")(fn)


def device_config(config_path: str | None) -> Config | None:
    """The configuration --config names (one error line and exit 2 if it is bad); without it, the
    installed one unless $CHECKPOINT_STATE_DIR says where the device is; None when there is none."""
    if config_path is None:
        if os.environ.get(STATE_DIR_ENV) or not Path(DEFAULT_PATH).is_file():
            return None
        config_path = DEFAULT_PATH
    try:
        return load(Path(config_path))
    except ConfigError as exc:
        lines = "; ".join(exc.lines(i18n.default_lang())[:3])
        fail(lines if exc.source else f"{config_path}: {lines}")


def state_dir_for(state_dir: str | None, config: Config | None) -> Path:
    """--state-dir, else the configuration's, else the default state directory."""
    if state_dir:
        return Path(state_dir)
    return config.state_dir if config is not None else default_state_dir()


def db_path_for(db_path: str | None, state: Path | None, config: Config | None) -> Path:
    """--db, else the configuration's entry log, else the one in ``state`` (or the default state directory)."""
    if db_path:
        return Path(db_path)
    if config is not None and (state is None or state == config.state_dir):
        return config.db_path
    return (state or default_state_dir()) / DEFAULT_DB_NAME
