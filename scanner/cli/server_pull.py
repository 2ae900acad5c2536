"""`checkpoint server pull`: fetch pending batches from devices the server can reach
(docs/sync-protocol.md#server-pull).
"""
from __future__ import annotations

import sys
from pathlib import Path

import click
from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.base import i18n
from scanner.base.safetext import escape, json_line
from scanner.cli.common import EXIT_INCOMPLETE, EXIT_OK, fail, run_guarded
from scanner.cli.server import db_url_option, keys_option, lang_option, open_server_storage
from sync.server import keys
from sync.server.puller import pull_device


def _device_urls(urls: tuple[str, ...], urls_file: str | None) -> list[str]:
    out = list(urls)
    if urls_file:
        text = run_guarded(Path(urls_file).read_text, encoding="utf-8")
        out += [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]
    if not out:
        fail(i18n.text("server_cli.pull_where"))
    return out


@click.command("pull")
@db_url_option
@click.option("--device", "urls", multiple=True, metavar="URL",
              help="A device's local API, http(s)://HOST:PORT (repeatable).")
@click.option("--devices", "urls_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="A file of device URLs, one a line (# starts a comment).")
@keys_option("pull.key signs the requests")
@click.option("--token-file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Use this token (first line of the file) instead of the server's pull key.")
@click.option("--ca-file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="CA certificate(s) for devices served over https with a private CA.")
@click.option("--limit", type=click.IntRange(1, 5000), default=2000, show_default=True, help="Entries per batch.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 86400), default=600, show_default=True,
              help="Stop pulling from a device after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per device.")
@lang_option
def server_pull(db_url, urls, urls_file, keys_dir, token_file, ca_file, limit, timeout_s, as_json, lang):
    """Fetch pending batches from devices the server can reach (VPN). Exit 0 only when every
    device has nothing pending left."""
    targets = _device_urls(urls, urls_file)
    key = token = None
    if token_file:
        token = run_guarded(Path(token_file).read_text, encoding="utf-8").splitlines()[0:1]
        token = token[0].strip() if token else ""
        if not token:
            fail(i18n.text("server_cli.empty_token", path=token_file), lang)
    else:
        key_file = run_guarded(keys.key_dir, db_url, keys_dir) / keys.PULL_KEY_NAME
        if not key_file.exists():
            fail(i18n.text("server_cli.no_pull_key", path=str(key_file)), lang)
        key = run_guarded(keys.load_private_key, key_file, ed25519.Ed25519PrivateKey)
    storage = open_server_storage(db_url)
    results = []
    for url in targets:
        res = pull_device(storage, url, key=key, token=token, ca_file=ca_file, limit=limit, timeout_s=timeout_s)
        results.append(res)
        if as_json:
            click.echo(json_line(res.to_dict()))
        else:
            click.echo(i18n.t("server.pulled", lang, url=escape(url), device=res.device_id or "-",
                              batches=res.batches, entries=res.entries, stored=res.stored, dup=res.duplicates,
                              marked=res.marked, quarantined=res.quarantined,
                              pending=res.pending if res.pending is not None else "-")
                       + (i18n.t("server.pull_error", lang, code=res.error_code, why=escape(res.error or ""))
                          if res.error else ""))
    sys.exit(EXIT_OK if all(r.complete for r in results) else EXIT_INCOMPLETE)
