"""`checkpoint server console`: the central console's web pages until SIGINT/SIGTERM
(docs/console.md). It never loads the sealing key: holder details come from the opener's socket."""
from __future__ import annotations

import ipaddress
import logging

import click

from scanner.base import i18n
from scanner.base.safetext import escape
from scanner.cli.common import fail, run_guarded
from scanner.cli.server import _local_tz, db_url_option, open_server_storage
from scanner.cli.server_run import parse_listen
from sync.server.console.app import ConsoleConfig, create_console, serve
from sync.server.console.openerclient import OpenerClient, OpenerTLS
from sync.server.console.sessions import Policy


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@click.command("console")
@db_url_option
@click.option("--listen", default="127.0.0.1:8444", show_default=True, help="HOST:PORT to listen on.")
@click.option("--opener", "opener_socket", type=click.Path(dir_okay=False), default=None,
              help="The opener's Unix socket (`checkpoint server opener`); without it no holder detail opens.")
@click.option("--opener-tls", default=None, metavar="HOST:PORT",
              help="Or the opener on another machine, over TCP with mutual TLS (with --opener-cert, --client-cert, "
                   "--client-key).")
@click.option("--opener-cert", type=click.Path(dir_okay=False, exists=True), default=None,
              help="The opener's certificate (pinned: no other is accepted).")
@click.option("--client-cert", type=click.Path(dir_okay=False, exists=True), default=None,
              help="This console's certificate shown to the opener (which pins it).")
@click.option("--client-key", type=click.Path(dir_okay=False, exists=True), default=None,
              help="This console's TLS private key for the opener.")
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True), default=None)
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True), default=None)
@click.option("--insecure-http", is_flag=True,
              help="Serve plain HTTP (cookies without Secure): only on a loopback address, for a TLS proxy "
                   "on the same machine or a trial.")
@click.option("--server-url", default=None, help="The URL devices enroll at (printed in enrollment QRs).")
@click.option("--tz", "tz_name", default=None, help="Time zone of the times shown (default: this machine's).")
@click.option("--idle-minutes", type=click.IntRange(1, 240), default=15, show_default=True,
              help="A session unused this long ends.")
@click.option("--stale-after", "stale_min", type=click.FloatRange(1), default=15, show_default=True,
              help="Minutes without a heartbeat after which a device stands out as not reporting.")
def server_console(db_url, listen, opener_socket, opener_tls, opener_cert, client_cert, client_key, tls_cert, tls_key,
                   insecure_http, server_url, tz_name, idle_minutes, stale_min):
    """Serve the central console (web pages for staff) until SIGINT/SIGTERM."""
    host, port = parse_listen(listen)
    opener = None
    if opener_tls:
        if opener_socket or not (opener_cert and client_cert and client_key):
            fail(i18n.text("server_cli.opener_tls"))
        opener_host, opener_port = parse_listen(opener_tls, "--opener-tls")
        opener = OpenerClient(None, OpenerTLS(opener_host, opener_port, client_cert, client_key, opener_cert))
    elif opener_socket:
        opener = OpenerClient(opener_socket)
    if bool(tls_cert) != bool(tls_key):
        fail(i18n.text("server_cli.tls_pair"))
    if not tls_cert and not (insecure_http and _loopback(host)):
        fail(i18n.text("server_cli.console_tls"))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    policy = Policy(idle_ms=idle_minutes * 60_000, secure=bool(tls_cert))
    config = ConsoleConfig(opener=opener, policy=policy,
                           tz=_local_tz(tz_name), server_url=server_url, stale_after_s=stale_min * 60)
    app = run_guarded(create_console, open_server_storage(db_url), config)
    scheme = "https" if tls_cert else "http"
    opener_text = (i18n.t("server.console_opener", socket=escape(opener.where)) if opener
                   else i18n.t("server.console_no_opener"))

    def listening() -> None:  # said once it answers and a Ctrl-C stops it
        click.echo("checkpoint console: " + i18n.t("server.console_listening", url=f"{scheme}://{listen}",
                                                   db=escape(db_url), opener=opener_text),
                   err=True)

    run_guarded(serve, app, host, port, tls_cert=tls_cert, tls_key=tls_key, serving=listening)
