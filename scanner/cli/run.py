"""`checkpoint run`: the appliance in the foreground, a thin wrapper over scanner.appliance's daemon
(docs/cli.md#the-appliance). Only this command loads the daemon."""
from __future__ import annotations

import logging
import os
import signal
import sys

import click

from hardware.camera import CameraInput
from scanner.appliance import logsetup
from scanner.appliance.config import DEFAULT_PATH
from scanner.appliance.daemon import Appliance, DaemonError
from scanner.base import i18n
from scanner.base.allocator import return_large_blocks
from scanner.base.errors import error_text
from scanner.base.safetext import escape
from scanner.cli.common import EXIT_FATAL, fail
from scanner.cli.config import load_config


@click.command("run")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help=f"The configuration (default {DEFAULT_PATH}; built-in defaults when that file is absent).")
@click.option("--once", is_flag=True,
              help="Stop when every file input is exhausted and (with sync) every entry is acknowledged.")
@click.option("--sync-timeout", type=click.FloatRange(0, 3600), default=60.0, show_default=True,
              help="With --once: how long to wait for the server to acknowledge everything.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def run_cmd(config_path, once, sync_timeout, log_level):
    """Run the appliance: inputs, verifier, entry log, feedback, sync and the local API.

    SIGTERM/SIGINT stop it cleanly (exit 0); SIGHUP reloads the config's live keys and the trust."""
    return_large_blocks()  # a trust bundle's buffers go back to the system after each swap
    config = load_config(config_path)
    if once and not (config.stdin or any(not _is_live(c) for c in config.cameras())):
        fail(i18n.text("cli_error.run_once"))
    recent = logsetup.setup(getattr(logging, log_level.upper()))
    appliance = Appliance(config, once=once, recent_errors=recent, sync_timeout_s=sync_timeout)
    signals = {"n": 0}

    def on_stop(signum, frame) -> None:
        signals["n"] += 1
        if signals["n"] > 1:
            logging.getLogger("scanner.appliance.daemon").error("second stop signal: exiting at once")
            os._exit(EXIT_FATAL)
        appliance.request_stop()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, lambda *_: appliance.request_reload())
    try:
        code = appliance.run()
    except DaemonError as exc:
        click.echo(f"checkpoint: error: {escape(error_text(exc, i18n.default_lang()))}", err=True)
        sys.exit(EXIT_FATAL)
    sys.exit(code)


def _is_live(camera_config) -> bool:
    return not CameraInput(camera_config).finite
