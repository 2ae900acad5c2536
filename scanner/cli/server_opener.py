"""`checkpoint server opener` (the only process that holds the sealing key, on a Unix socket and/or
TCP with mutual TLS) and
`checkpoint server key-split` (the key as shares held by several officers); docs/console.md."""
from __future__ import annotations

import grp
import logging
import os
import pwd
import signal
import threading
from pathlib import Path

import click
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from scanner.base import i18n
from scanner.base.fsutil import atomic_write
from scanner.base.safetext import escape
from scanner.cli.common import fail, run_guarded
from scanner.cli.server import _sealing_key, db_url_option, keys_option, lang_option, open_server_storage
from scanner.cli.server_run import parse_listen
from sync.server import keys, keyshares
from sync.server.console import roles
from sync.server.console.store import ConsoleStore
from sync.server.opener import ANCHORS_NAME, Opener, Policy, bind, bind_tls

_DEFAULTS = Policy()  # a slotted dataclass: its defaults are read from an instance


def _uid(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        fail(i18n.text("server_cli.no_user", name=repr(text)))


def _gid(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        fail(i18n.text("server_cli.no_group", name=repr(text)))


def _approver_roles(text: str) -> frozenset[str]:
    if text.strip().lower() == "none":
        return frozenset()
    found = frozenset(r.strip() for r in text.split(",") if r.strip())
    if not found or not found <= {roles.TRACER, roles.ADMIN}:
        fail(i18n.text("server_cli.approvers", tracer=roles.TRACER, admin=roles.ADMIN, value=repr(text)))
    return found


def _key_from_shares(paths: tuple[str, ...]) -> X25519PrivateKey:
    texts = [run_guarded(Path(p).read_text, encoding="ascii") for p in paths]
    return run_guarded(keyshares.combine, texts)


@click.command("opener")
@db_url_option
@click.option("--socket", "socket_path", default=None, type=click.Path(dir_okay=False),
              help="The Unix socket to listen on (made mode 0660).")
@click.option("--listen-tls", default=None, metavar="HOST:PORT",
              help="Also (or instead) listen on TCP with mutual TLS, for a console on another machine.")
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True), default=None,
              help="With --listen-tls: the opener's certificate (the console pins it).")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True), default=None,
              help="With --listen-tls: the opener's TLS private key.")
@click.option("--client-cert", "client_certs", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="With --listen-tls: a console's client certificate, the only ones answered (pinned); repeat.")
@click.option("--sealing-key", "key_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="The sealing private key (default: KEYS/sealing.key).")
@keys_option("sealing.key")
@click.option("--share", "shares", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="A key share (`server key-split`); give THRESHOLD of them instead of the key.")
@click.option("--allow", "allowed", multiple=True, metavar="USER|UID",
              help="A user whose processes may ask (the console's); repeat. Default: this process's own user.")
@click.option("--socket-group", default=None, metavar="GROUP|GID", help="Group of the socket file.")
@click.option("--state", "state_dir", type=click.Path(file_okay=False), default=None,
              help="Where the opener keeps its audit anchors (default: the key directory).")
@click.option("--max-per-request", type=click.IntRange(1, 100_000), default=_DEFAULTS.max_per_request,
              show_default=True, help="Entries one request may name.")
@click.option("--per-case-hour", type=click.IntRange(1, 10_000_000), default=_DEFAULTS.per_case_per_hour,
              show_default=True, help="Entries opened for one case number in any hour.")
@click.option("--total-hour", type=click.IntRange(1, 100_000_000), default=_DEFAULTS.total_per_hour,
              show_default=True, help="Entries opened in all in any hour.")
@click.option("--approvers", default="tracer,admin", show_default=True, metavar="ROLES|none",
              help="Roles whose accounts approve another's case before it opens (a second officer, other than "
                   "the tracer who asked); `none`: a case opens without approval.")
@click.option("--approval-minutes", type=click.IntRange(1, 24 * 60), default=_DEFAULTS.approval_s // 60,
              show_default=True, help="How long a case's request waits for its approval.")
def server_opener(db_url, socket_path, listen_tls, tls_cert, tls_key, client_certs, key_file, keys_dir, shares,
                  allowed, socket_group, state_dir, max_per_request, per_case_hour, total_hour, approvers,
                  approval_minutes):
    """Hold the sealing key and open holder details for the console, over a Unix socket, until
    SIGINT/SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not socket_path and not listen_tls:
        fail(i18n.text("server_cli.opener_where"))
    if listen_tls and not (tls_cert and tls_key and client_certs):
        fail(i18n.text("server_cli.opener_listen_tls"))
    if shares and (key_file or keys_dir):
        fail(i18n.text("server_cli.key_or_shares"))
    key = _key_from_shares(shares) if shares else _sealing_key(db_url, key_file, keys_dir)
    if state_dir is None:
        if shares:
            fail(i18n.text("server_cli.shares_state"))
        state_dir = str(Path(key_file).parent if key_file else run_guarded(keys.key_dir, db_url, keys_dir))
    policy = Policy(frozenset(_uid(a) for a in allowed), max_per_request, per_case_hour, total_hour,
                    _approver_roles(approvers), approval_minutes * 60)
    storage = open_server_storage(db_url)
    opener = Opener(key, run_guarded(ConsoleStore, storage), Path(state_dir) / ANCHORS_NAME, policy)
    servers: list = []  # each with serve_forever, shutdown and server_close
    where = []
    if socket_path:
        servers.append(run_guarded(bind, socket_path, opener, group=_gid(socket_group) if socket_group else None))
        where.append(escape(socket_path))
    if listen_tls:
        host, port = parse_listen(listen_tls, "--listen-tls")
        servers.append(run_guarded(bind_tls, host, port, opener, cert=tls_cert, key=tls_key,
                                   client_certs=list(client_certs)))
        where.append(i18n.t("server.opener_tls_where", address=f"tls://{escape(listen_tls)}", n=len(client_certs)))
    threads = [threading.Thread(target=srv.serve_forever, daemon=True) for srv in servers[1:]]

    def stop(signum, frame):  # serve_forever returns once shutdown() is called from another thread
        for srv in servers:
            threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    who = (", ".join(str(u) for u in sorted(policy.allowed_uids))
           or i18n.t("server.opener_own_uid", uid=os.getuid()))
    approval = (i18n.t("server.opener_approval", roles=" | ".join(sorted(policy.approver_roles)),
                       minutes=approval_minutes)
                if policy.approver_roles else i18n.t("server.opener_no_approval"))
    click.echo("checkpoint opener: " + i18n.t("server.opener_listening", socket=", ".join(where), uids=who)
               + "; " + approval, err=True)
    for thread in threads:
        thread.start()
    try:
        servers[0].serve_forever()
    finally:
        for thread in threads:
            thread.join(30)
        for srv in servers:
            srv.server_close()
        if socket_path:
            os.unlink(socket_path)
    click.echo("checkpoint opener: " + i18n.t("server.opener_stopped"), err=True)


@click.command("key-split")
@db_url_option
@click.option("--sealing-key", "key_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="The sealing private key (default: KEYS/sealing.key).")
@keys_option("sealing.key")
@click.option("--threshold", type=click.IntRange(2, keyshares.MAX_SHARES), required=True,
              help="Shares needed to give the key back.")
@click.option("--shares", "count", type=click.IntRange(2, keyshares.MAX_SHARES), required=True,
              help="Shares to make (one per officer).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Write share-1.txt ... share-N.txt here (mode 0600; existing files are not replaced).")
@lang_option
def key_split(db_url, key_file, keys_dir, threshold, count, out_dir, lang):
    """Split the sealing key into shares, any THRESHOLD of which give it back."""
    if threshold > count:
        fail(i18n.text("server_cli.threshold"), lang)
    key = _sealing_key(db_url, key_file, keys_dir)
    texts = run_guarded(keyshares.split, key, threshold, count)
    out = Path(out_dir)
    run_guarded(out.mkdir, mode=0o700, parents=True, exist_ok=True)
    for i, text in enumerate(texts, 1):
        path = out / f"share-{i}.txt"
        if not run_guarded(atomic_write, path, (text + "\n").encode("ascii"), 0o600, replace=False):
            fail(i18n.text("server_cli.share_exists", path=str(path)), lang)
    click.echo(i18n.t("server_users.shares_written", lang, n=count, dir=escape(out_dir), threshold=threshold))
