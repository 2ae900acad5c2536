"""`checkpoint run`, `checkpoint config check|docs`, `checkpoint doctor` and `checkpoint udev-rules`:
thin wrappers over scanner.appliance's daemon, config, doctor and udev (docs/cli.md#the-appliance).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import click
import requests

from hardware.camera import CameraInput
from scanner.appliance import doctor, logsetup, udev
from scanner.appliance.config import (
    DEFAULT_PATH,
    ConfigError,
    check_file,
    defaults,
    load,
)
from scanner.appliance.daemon import Appliance, DaemonError
from scanner.appliance.schema import markdown
from scanner.base.safetext import escape, json_line
from scanner.cli.common import EXIT_USAGE, fail, run_guarded

EXIT_FATAL = 1


def load_config(path: str | None, *, allow_missing_default: bool = True):
    """The Config for ``path``; the built-in defaults when the default file is absent. A bad file
    prints one line per problem and exits 2."""
    file = Path(path or DEFAULT_PATH)
    if path is None and allow_missing_default and not file.exists():
        return defaults(os.environ.get("CHECKPOINT_STATE_DIR") or None)
    try:
        return load(file)
    except ConfigError as exc:
        for line in exc.lines():
            click.echo(f"checkpoint: error: {escape(line)}", err=True)
        sys.exit(EXIT_USAGE)


# ---------------------------------------------------------------- run


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
    config = load_config(config_path)
    if once and not (config.stdin or any(not _is_live(c) for c in config.cameras())):
        fail("--once needs a file input ([[stdin]] with a path, or a [[camera]] that is a file)")
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
        click.echo(f"checkpoint: error: {escape(str(exc))}", err=True)
        sys.exit(EXIT_FATAL)
    sys.exit(code)


def _is_live(camera_config) -> bool:
    return not CameraInput(camera_config).finite


# ---------------------------------------------------------------- config


@click.group("config")
def config_group() -> None:
    """Check the configuration file; print its documentation."""


@config_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def config_check(file):
    """Check FILE: every problem on its own line (key, problem, fix), exit 2; else "ok", exit 0."""
    lines = check_file(file)
    for line in lines:
        click.echo(f"checkpoint: error: {escape(line)}", err=True)
    if lines:
        sys.exit(EXIT_USAGE)
    click.echo(f"{escape(file)}: ok")


@config_group.command("docs")
def config_docs():
    """Print docs/configuration.md as generated from the schema."""
    click.echo(markdown(), nl=False)


# ---------------------------------------------------------------- doctor


@click.command("doctor")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help=f"The configuration (default {DEFAULT_PATH}).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--local", is_flag=True, help="Check here even when the daemon is running (it holds the devices).")
def doctor_cmd(config_path, as_json, local):
    """Check camera, readers, GPIO, log, disk, clock, trust, server and sync. Exit 1 if any check fails."""
    config, problems = None, []
    file = Path(config_path or DEFAULT_PATH)
    try:
        config = load(file) if (config_path or file.exists()) else defaults(os.environ.get("CHECKPOINT_STATE_DIR")
                                                                           or None)
    except ConfigError as exc:
        problems = exc.lines()
    report = None
    if config is not None and not local:
        report = _from_daemon(config)
    if report is None:
        report = doctor.run(config, config_problems=problems)
        doc = report.to_dict()
    else:
        doc = report
    if as_json:
        click.echo(json_line(doc))
    else:
        if doc.get("source") == "daemon":
            click.echo("(from the running daemon)")
        for line in doctor.table(doctor.Report(tuple(doctor.Check(**c) for c in doc["checks"]), doc["at"])):
            click.echo(escape(line))
    sys.exit(0 if doc["ok"] else EXIT_FATAL)


def _from_daemon(config) -> dict | None:
    """The running daemon's doctor report over its API, or None (not running, API off)."""
    api = config.api
    if not api.enabled or api.listen[1] == 0:
        return None
    host, port = api.listen
    host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/api/v1/doctor"
    token = config.api_token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = requests.get(url, timeout=(1.0, 30.0), headers=headers)
    except requests.RequestException:
        return None
    if r.status_code != 200:
        return None
    try:
        doc = r.json()
    except ValueError:
        return None
    if not isinstance(doc, dict) or "checks" not in doc:
        return None
    doc["source"] = "daemon"
    return doc


# ---------------------------------------------------------------- udev


@click.command("udev-rules")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Add the config's [udev] extra_readers.")
@click.option("--install", "install_path", is_flag=False, flag_value="/etc/udev/rules.d/70-checkpoint-readers.rules",
              default=None, metavar="[FILE]",
              help="Write the rules (default /etc/udev/rules.d/70-checkpoint-readers.rules) and reload udev.")
@click.option("--group", default="checkpoint", show_default=True, help="The group the readers get.")
def udev_rules(config_path, install_path, group):
    """Print udev rules giving known USB QR readers a stable name and the service's group."""
    extra = ()
    if config_path is not None:
        extra = load_config(config_path, allow_missing_default=False).udev.extra_readers
    text = run_guarded(udev.rules, extra, group=group)
    if install_path is None:
        click.echo(text, nl=False)
        return
    run_guarded(udev.install, text, install_path)
    click.echo(f"wrote {escape(install_path)}; udev reloaded", err=True)
