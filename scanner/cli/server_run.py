"""`checkpoint server run`: the reference central server until SIGINT/SIGTERM (docs/sync-protocol.md)."""
from __future__ import annotations

import logging

import click

from scanner.base import i18n
from scanner.base.safetext import escape
from scanner.cli.common import fail, run_guarded
from scanner.cli.server import db_url_option, keys_option
from sync.server.app import GROUP_COMMIT_MS, Limits, serve
from sync.server.console.openerclient import OpenerClient


def parse_listen(value: str, option: str = "--listen") -> tuple[str, int]:
    """(host, port) of --listen HOST:PORT (IPv6 in brackets); one error line naming ``option`` otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host or not 0 < int(port) < 65536:
        fail(i18n.text("server_cli.listen", option=option, value=repr(value)))
    return host.strip("[]"), int(port)


@click.command("run")
@db_url_option
@click.option("--listen", default="127.0.0.1:8443", show_default=True, help="HOST:PORT to listen on.")
@keys_option("sealing.key, pull.key: made on first start")
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True), default=None)
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True), default=None)
@click.option("--access-log", is_flag=True, help="Log every request.")
@click.option("--workers", type=click.IntRange(0, 256), default=0, show_default=True,
              help="Server processes sharing the port (0: one per CPU on PostgreSQL, one on SQLite).")
@click.option("--max-inflight", type=click.IntRange(1, 10_000), default=256, show_default=True,
              help="Batches in progress per process at most; more are answered 503 busy with Retry-After.")
@click.option("--retry-after", "retry_after_s", type=click.IntRange(1, 3600), default=2, show_default=True,
              help="Least seconds a device is told to wait after a 503 or 429 (jittered up to twice that).")
@click.option("--max-per-peer", type=click.IntRange(1, 10_000), default=16, show_default=True,
              help="Signed requests with a body in progress per client address; more: 429.")
@click.option("--max-connections-per-peer", type=click.IntRange(1, 100_000), default=64, show_default=True,
              help="Open connections per client address (IPv6: per /64); more are closed at once.")
@click.option("--legacy-inflight", type=click.IntRange(0, 1000), default=2, show_default=True,
              help="Requests of devices without CK-Sig2 headers read at once (0: none); more: 503 busy.")
@click.option("--legacy-max-bytes", type=click.IntRange(1024, 16 * 1024 * 1024), default=1024 * 1024,
              show_default=True, help="Largest batch of a device without CK-Sig2 headers; larger: 413.")
@click.option("--min-body-rate", type=click.IntRange(1, 1 << 30), default=4096, show_default=True,
              help="Bytes per second a request body must average after 10 s; slower: 408 and closed.")
@click.option("--body-timeout", type=click.FloatRange(1, 3600), default=120.0, show_default=True,
              help="Seconds a whole request body may take; longer: 408 and closed.")
@click.option("--group-commit-ms", type=click.FloatRange(0, 1000), default=GROUP_COMMIT_MS, show_default=True,
              help="PostgreSQL: how long a batch waits for others to be stored with it in one transaction "
                   "(0: each batch in its own).")
@click.option("--batch-formats", type=click.Choice(["1", "1,2"]), default="1,2", show_default=True,
              help="Batch formats read and announced to devices: 1 while servers that read only format 1 share "
                   "this address (a rolling upgrade).")
@click.option("--opener", "opener_socket", type=click.Path(dir_okay=False), default=None,
              help="Take the sealing key's public half from the opener's socket; the private key is then never "
                   "read by this process (docs/console.md#opener).")
def server_run(db_url, listen, keys_dir, tls_cert, tls_key, access_log, workers, max_inflight, retry_after_s,
               max_per_peer, max_connections_per_peer, legacy_inflight, legacy_max_bytes, min_body_rate,
               body_timeout, group_commit_ms, batch_formats, opener_socket):
    """Serve the sync protocol until SIGINT/SIGTERM."""
    host, port = parse_listen(listen)
    if bool(tls_cert) != bool(tls_key):
        fail(i18n.text("server_cli.tls_pair"))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    scheme = "https" if tls_cert else "http"

    def listening() -> None:  # said once it answers and a Ctrl-C stops it
        click.echo("checkpoint server: " + i18n.t("server.server_listening", url=f"{scheme}://{listen}",
                                                  db=escape(db_url)), err=True)

    limits = Limits(per_peer=max_per_peer, connections_per_peer=max_connections_per_peer,
                    legacy_inflight=legacy_inflight, legacy_max_bytes=legacy_max_bytes, min_rate_bps=min_body_rate,
                    body_timeout_s=body_timeout)
    sealing_public = run_guarded(OpenerClient(opener_socket).public_pem) if opener_socket else None
    run_guarded(serve, db_url, host, port, keys_dir=keys_dir, tls_cert=tls_cert, tls_key=tls_key,
                access_log=access_log, max_inflight=max_inflight, retry_after_s=retry_after_s, limits=limits,
                workers=workers, sealing_public=sealing_public, group_commit_ms=group_commit_ms,
                batch_formats=tuple(int(v) for v in batch_formats.split(",")),
                warn=lambda words: click.echo("checkpoint server: " + words(i18n.default_lang()), err=True),
                serving=listening)
