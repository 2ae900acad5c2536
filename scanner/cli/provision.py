"""`checkpoint provision`: enroll this device with the central server and set it up, a thin wrapper
over scanner.appliance.provisioning (docs/provisioning.md).
"""
from __future__ import annotations

import sys

import click

from scanner.appliance.provisioning import provision_appliance
from scanner.base import i18n
from scanner.base.safetext import escape, json_line
from scanner.cli.common import (
    EXIT_INCOMPLETE,
    fail,
    run_guarded,
    state_dir_of,
    state_option,
)


@click.command()
@click.option("--server", "server_url", default=None,
              help="The central server, https://HOST[:PORT] (default: [sync] server of --config).")
@click.option("--token", required=True, help="One-time enrollment token (`checkpoint server token create`).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="The appliance's config file: an existing one is checked and used, a missing one is "
                   "written with the inputs found on this device.")
@state_option
@click.option("--ca-file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="CA certificate(s) to verify the server's TLS certificate with (default: the system's).")
@click.option("--trust-root", type=click.Path(dir_okay=False, exists=True), default=None,
              help="The operator's Ed25519 root public key (PEM, from the installation media): it must have "
                   "signed the server's credential and the trust bundles (default: [enroll] trust_root of "
                   "--config, else the root pinned before).")
@click.option("--wait-bundle", "wait_bundle_s", type=click.FloatRange(0, 86400), default=0, metavar="SECONDS",
              help="If the server has no trust bundle yet, wait this long for one (exit 1 if none came).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def provision(server_url, token, config_path, state_dir, ca_file, trust_root, wait_bundle_s, as_json):
    """Enroll this device, secure its state directory and write its config (safe to run again)."""
    if server_url is None and config_path is None:
        fail(i18n.text("cli_error.no_server"))
    res = run_guarded(provision_appliance, server_url, token, config_path=config_path,
                      state_dir=state_dir_of(state_dir) if state_dir or not config_path else None,
                      ca_file=ca_file, trust_root=trust_root, wait_bundle_s=wait_bundle_s)
    lang = i18n.default_lang()
    if as_json:
        click.echo(json_line(res.to_dict()))
    else:
        click.echo(i18n.t("sync.provisioned", lang, device=escape(res.device_id),
                          checkpoint=escape(res.checkpoint_id), state=escape(res.state_dir),
                          version=res.bundle_version if res.bundle_version is not None else "-"))
    if res.bundle_version is None:  # enrolled, but it cannot check a card until the server publishes a bundle
        key = "sync.no_bundle_waited" if wait_bundle_s else "sync.no_bundle"
        click.echo("checkpoint: " + i18n.t(key, lang, seconds=f"{wait_bundle_s:g}"), err=True)
        if wait_bundle_s:
            sys.exit(EXIT_INCOMPLETE)
