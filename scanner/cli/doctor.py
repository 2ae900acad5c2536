"""`checkpoint doctor`: the appliance's checks, asked of the running daemon when there is one, else
run here (a thin wrapper over scanner.appliance.doctor; docs/cli.md#the-appliance)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click
import requests

from scanner.appliance import doctor
from scanner.appliance.config import DEFAULT_PATH, ConfigError, defaults, load
from scanner.base import i18n
from scanner.base.paths import STATE_DIR_ENV
from scanner.base.safetext import escape, json_line
from scanner.cli.common import EXIT_FATAL, LANG


@click.command("doctor")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help=f"The configuration (default {DEFAULT_PATH}).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--local", is_flag=True, help="Check here even when the daemon is running (it holds the devices).")
@click.option("--lang", type=LANG, default=None, help="Language of the table (default vi).")
def doctor_cmd(config_path, as_json, local, lang):
    """Check camera, readers, GPIO, log, disk, clock, trust, server and sync. Exit 1 if any check fails."""
    config, problems = None, []
    file = Path(config_path or DEFAULT_PATH)
    try:
        config = load(file) if (config_path or file.exists()) else defaults(os.environ.get(STATE_DIR_ENV) or None)
    except ConfigError as exc:
        problems = exc.lines("en" if as_json else lang or i18n.default_lang())  # JSON in English, as its checks
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
        lang = lang or i18n.default_lang()
        if doc.get("source") == "daemon":
            click.echo(i18n.t("doctor.from_daemon", lang))
        checks = tuple(doctor.Check.from_dict(c) for c in doc["checks"])
        for line in doctor.table(doctor.Report(checks, doc["at"]), lang):
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
