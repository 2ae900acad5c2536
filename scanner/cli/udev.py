"""`checkpoint udev-rules`: print or install the udev rules for known USB QR readers (a thin wrapper
over scanner.appliance.udev; docs/cli.md#the-appliance)."""
from __future__ import annotations

import click

from scanner.appliance import udev
from scanner.base.safetext import escape
from scanner.cli.common import run_guarded
from scanner.cli.config import load_config


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
