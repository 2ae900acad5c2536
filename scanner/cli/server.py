"""`checkpoint server ...`: the reference central server, thin wrappers over sync/server (enrollment
tokens and QR codes, devices, stats, import, bundles, credentials, keys, retention, tracing;
docs/sync-protocol.md#command-line). `server run` and `server pull` are modules of their own,
loaded only when they run. They print counts, ids, times and error codes; holder details only
where `server trace` is given the sealing key.
"""
from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click
import segno
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from scanner.base import i18n
from scanner.base.errors import Reason
from scanner.base.safetext import escape, json_line
from scanner.base.timeutil import now_ms
from scanner.cards import render
from scanner.cards.trust import load_root
from scanner.cli.common import (
    EXIT_INCOMPLETE,
    EXIT_OK,
    LANG,
    closing,
    fail,
    load_root_private,
    output_file,
    run_guarded,
)
from scanner.cli.lazy import Lazy, LazyGroup
from scanner.store.entry import iso_ms
from sync.server import bundles, cardfind, credentials, enrollcodes, keys, retention
from sync.server import trace as tracemod
from sync.server.imports import import_dirs
from sync.server.model import SOURCES, Storage
from sync.server.reports import chain_report, device_rows
from sync.server.storage import open_storage
from sync.server.tokens import issue_tokens

lang_option = click.option("--lang", type=LANG, default=None, help="vi (default) or en.")


def db_url_option(fn):
    """--db URL, the server's database, for every `server` command."""
    return click.option("--db", "db_url", required=True, metavar="URL",
                        help="sqlite:///PATH, sqlite:PATH, a file path, or postgresql://USER@HOST[:PORT]/DB.")(fn)


def keys_option(what: str):
    """--keys DIR, the server's key directory; ``what`` says which keys the command uses."""
    return click.option("--keys", "keys_dir", type=click.Path(file_okay=False), default=None,
                        help=f"Directory of the server's keys ({what}; default: beside the SQLite file; "
                             "required with PostgreSQL).")


def open_server_storage(db_url: str, *, read_only: bool = False) -> Storage:
    """The server's storage, closed when the command ends. ``read_only`` commands refuse a database
    that does not exist (a mistyped --db), where the others create it."""
    return closing(run_guarded(open_storage, db_url, must_exist=read_only))


SERVER_COMMANDS = {
    "pull": Lazy("scanner.cli.server_pull:server_pull", "Fetch pending batches from devices the server can reach "
                 "(VPN). Exit 0 only when every device has nothing pending left."),
    "run": Lazy("scanner.cli.server_run:server_run", "Serve the sync protocol until SIGINT/SIGTERM."),
    "console": Lazy("scanner.cli.server_console:server_console", "Serve the central console (web pages for staff) "
                    "until SIGINT/SIGTERM."),
    "opener": Lazy("scanner.cli.server_opener:server_opener", "Hold the sealing key and open holder details for the "
                   "console, over a Unix socket, until SIGINT/SIGTERM."),
    "key-split": Lazy("scanner.cli.server_opener:key_split", "Split the sealing key into shares, any THRESHOLD of "
                      "which give it back."),
    "user": Lazy("scanner.cli.server_users:user_group", "Console accounts: add, passwd, role, disable, enable, list."),
    "audit": Lazy("scanner.cli.server_users:audit_group", "The console's audit trail: verify its chain, show it."),
}
"""The server's commands with heavy dependencies of their own (the HTTP server, the HTTP client)."""


@click.group("server", cls=LazyGroup, lazy_subcommands=SERVER_COMMANDS)
def server_group() -> None:
    """The reference central server: run it, enrollment tokens, devices, stats, import, bundles."""


@server_group.group("token")
def token_group() -> None:
    """One-time enrollment tokens."""


@token_group.command("create")
@db_url_option
@click.option("--checkpoint", "checkpoint_id", required=True, help="The checkpoint the device will serve.")
@click.option("--count", type=click.IntRange(1, 10000), default=1, show_default=True)
@click.option("--ttl-hours", type=click.FloatRange(0.01, 24 * 365), default=72, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def token_create(db_url, checkpoint_id, count, ttl_hours, as_json):
    """Print new one-time tokens (shown once; the server keeps only their hashes)."""
    tokens = run_guarded(issue_tokens, open_server_storage(db_url), checkpoint_id, count, ttl_hours=ttl_hours,
                         now_ms=now_ms())
    if as_json:
        click.echo(json_line({"checkpoint_id": checkpoint_id, "tokens": tokens}))
    else:
        for tok in tokens:
            click.echo(tok)


# ---------------------------------------------------------------- enrollment QR


@server_group.command("enroll-qr")
@click.option("--db", "db_url", required=True, metavar="URL", help="The server's database (as for `server run`).")
@click.option("--server-url", required=True, help="The URL devices reach the server at (https://...).")
@click.option("--checkpoint", "checkpoint_id", required=True, help="The checkpoint the device will serve.")
@click.option("--ttl-hours", type=click.FloatRange(0.01, 24 * 365), default=72, show_default=True)
@click.option("--root", "root_pub", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Trust root public key (PEM) the device must find at the server (pinned in the QR).")
@click.option("--png", "png_path", type=click.Path(dir_okay=False), default=None, help="Also write the QR as PNG.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object (text, token) instead of the QR.")
def enroll_qr(db_url, server_url, checkpoint_id, ttl_hours, root_pub, png_path, as_json):
    """Make a one-time enrollment QR: a device without a config enrolls itself when shown it."""
    root = run_guarded(load_root, root_pub) if root_pub else None
    code = run_guarded(enrollcodes.create, open_server_storage(db_url), server_url, checkpoint_id, ttl_hours=ttl_hours,
                       root_public_key=root, now_ms=now_ms())
    text = code.text()
    if png_path:
        run_guarded(render.qr_png, text, png_path)
    if as_json:
        click.echo(json_line({"text": text, "checkpoint_id": checkpoint_id, "server": code.server,
                              "root_sha256": code.root_sha256}))
        return
    qr = segno.make(text, error="m")
    if sys.stdout.isatty():
        qr.terminal(compact=True)
    click.echo(text)


@server_group.command("stats")
@db_url_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@lang_option
def server_stats(db_url, as_json, lang):
    """Devices, entries, batches, duplicates dropped, chain problems."""
    d = run_guarded(open_server_storage(db_url, read_only=True).stats).to_dict()
    if as_json:
        click.echo(json_line(d))
        return
    lang = lang or i18n.default_lang()
    rows = [(i18n.t(f"server_stats.{k}", lang), "-" if v is None else str(v)) for k, v in d.items() if k != "by_source"]
    rows += [(i18n.t(f"server_stats.from_{source}" if source in SOURCES else "server_stats.from", lang,
                     source=escape(str(source))), str(n)) for source, n in sorted(d["by_source"].items())]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v:>10}")


@server_group.command("devices")
@db_url_option
@click.option("--stale-after", "stale_min", type=click.FloatRange(0), default=15, show_default=True,
              help="Minutes without a heartbeat after which a device is stale.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per device.")
@lang_option
def server_devices(db_url, stale_min, as_json, lang):
    """Every device with its latest heartbeat, stale ones first."""
    lang = lang or i18n.default_lang()
    t = lambda key, **kw: i18n.t("server_devices." + key, lang, **kw)  # noqa: E731
    for d in run_guarded(device_rows, open_server_storage(db_url, read_only=True), stale_min * 60, now_ms()):
        if as_json:
            click.echo(json_line(d))
            continue
        hb = d["heartbeat"] or {}
        flags = [t("stale")] if d["stale"] else []
        if d["revoked_ms"] is not None:
            flags.append(t("revoked"))
        if d["missing"]:
            flags.append(t("missing", n=d["missing"]))
        if d["chain_problems"] or d["conflicts"]:
            flags.append(t("chain", problems=d["chain_problems"], conflicts=d["conflicts"]))
        click.echo(t("line", device=d["device_id"], checkpoint=escape(d["checkpoint_id"]),
                     seen=iso_ms(d["last_seen_ms"]) if d["last_seen_ms"] else i18n.t("sync.never", lang),
                     held=d["held_seq"], queue=hb.get("queue_depth", "-"), trust=hb.get("trust_version", "-"),
                     offset=hb.get("clock_offset_ms", "-"), alarms=",".join(hb.get("alarms", [])) or "-")
                   + (f" [{'; '.join(flags)}]" if flags else ""))


@server_group.command("import")
@db_url_option
@click.argument("dirs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@lang_option
def server_import(db_url, dirs, as_json, lang):
    """Import batch files written by `checkpoint sync export` (deduplicated like pushes)."""
    total = run_guarded(import_dirs, open_server_storage(db_url), dirs)
    if as_json:
        click.echo(json_line(total.to_dict()))
    else:
        lang = lang or i18n.default_lang()
        click.echo(i18n.t("server.imported", lang, files=total.files, batches=total.batches, entries=total.entries,
                          stored=total.stored, dup=total.duplicates, refused=len(total.refused)))
        for file, code, message in total.refused:
            click.echo(i18n.t("server.import_refused", lang, file=escape(file), code=code, why=escape(message)),
                       err=True)
    sys.exit(EXIT_OK if not total.refused else EXIT_INCOMPLETE)


@server_group.command("revoke")
@db_url_option
@click.argument("device_id")
@lang_option
def server_revoke(db_url, device_id, lang):
    """Refuse everything from DEVICE_ID from now on (a lost or stolen device)."""
    lang = lang or i18n.default_lang()
    storage = open_server_storage(db_url)
    if run_guarded(storage.device, device_id) is None:
        fail(i18n.t("server.no_device", lang, device=device_id))
    changed = run_guarded(storage.revoke_device, device_id, now_ms())
    click.echo(i18n.t("server.revoked" if changed else "server.already_revoked", lang, device=escape(device_id)))


@server_group.command("chain")
@db_url_option
@click.option("--device", "device_id", default=None, help="One device (default: all).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per problem.")
@lang_option
def server_chain(db_url, device_id, as_json, lang):
    """Chain problems the server found (relinked, altered, conflict) and sequence gaps."""
    lang = lang or i18n.default_lang()
    storage = open_server_storage(db_url, read_only=True)
    report = run_guarded(chain_report, storage, device_id)
    if not report.events and not any(report.gaps.values()) and not as_json:  # all is well: say so
        s = run_guarded(storage.stats)
        click.echo(i18n.t("server.chain_intact", lang, devices=s.devices, entries=s.entries) if device_id is None
                   else i18n.t("server.chain_intact_device", lang, device=escape(device_id)))
    for e in report.events:
        row = {"device_id": e.device_id, "kind": e.kind, "seq": e.seq, "detail": e.detail, "at_ms": e.at_ms}
        click.echo(json_line(row) if as_json else
                   f"{e.device_id} {i18n.t('chain_problem.' + e.kind, lang)} seq {e.seq}: {escape(e.detail)}")
    for dev, ranges in report.gaps.items():
        for lo, hi in ranges:
            row = {"device_id": dev, "kind": "gap", "first_seq": lo, "last_seq": hi}
            click.echo(json_line(row) if as_json else f"{dev} {i18n.t('chain_problem.gap', lang)} seq {lo}..{hi}")


@server_group.group("bundle")
def bundle_group() -> None:
    """Trust bundles devices fetch."""


@bundle_group.command("publish")
@db_url_option
@click.argument("bundle_file", type=click.Path(dir_okay=False, exists=True))
@click.option("--root", "root_pub", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Root public key (PEM); needed the first time, must match afterwards.")
@click.option("--root-key", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Root private key: also publish deltas from recent versions (small updates).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@lang_option
def bundle_publish(db_url, bundle_file, root_pub, root_key, as_json, lang):
    """Publish a bundle made by `checkpoint issuer bundle|revoke` as the current one."""
    root = run_guarded(load_root, root_pub) if root_pub else None
    root_private = load_root_private(root_key) if root_key else None
    data = run_guarded(Path(bundle_file).read_bytes)
    meta, deltas = run_guarded(bundles.publish, open_server_storage(db_url), data, now_ms=now_ms(), root=root,
                               root_private=root_private)
    if as_json:
        click.echo(json_line({"version": meta.version, "digest": meta.digest, "size": meta.size,
                              "deltas_from": deltas}))
    else:
        lang = lang or i18n.default_lang()
        click.echo(i18n.t("server.bundle_published", lang, version=meta.version, size=meta.size,
                          deltas=", ".join(map(str, deltas)) or i18n.t("server.none", lang)))


def _server_keys(db_url: str, keys_dir: str | None) -> keys.ServerKeys:
    """The server's private keys from its key directory, made if absent (as `server run` does)."""
    return run_guarded(keys.load_or_create, run_guarded(keys.key_dir, db_url, keys_dir))


@server_group.command("keys")
@db_url_option
@keys_option("sealing.key, pull.key: made if absent")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Write the public halves here: sealing.pub (X25519), pull.pub (Ed25519).")
@lang_option
def server_keys(db_url, keys_dir, out_dir, lang):
    """Export the server's public keys, for the operator to sign a credential for (`issuer server-credential`)."""
    sealing_pub, pull_pub = run_guarded(keys.write_public_keys, _server_keys(db_url, keys_dir), out_dir)
    click.echo(i18n.t("server.keys_written", lang or i18n.default_lang(), sealing=escape(str(sealing_pub)),
                      pull=escape(str(pull_pub))))


@server_group.group("credential")
def credential_group() -> None:
    """The server's credential: its URL and keys, signed by the trust root (devices enroll only with it)."""


@credential_group.command("publish")
@db_url_option
@click.argument("credential_file", type=click.Path(dir_okay=False, exists=True))
@click.option("--root", "root_pub", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Root public key (PEM); needed when no bundle was published yet, must match afterwards.")
@keys_option("the credential must name its sealing and pull keys")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@lang_option
def credential_publish(db_url, credential_file, root_pub, keys_dir, as_json, lang):
    """Publish a credential made by `checkpoint issuer server-credential` (checked against the root and
    this server's own keys); devices get it at enrollment and at their trust checks."""
    root = run_guarded(load_root, root_pub) if root_pub else None
    server_keys = _server_keys(db_url, keys_dir)
    data = run_guarded(Path(credential_file).read_bytes)
    cred = run_guarded(credentials.publish, open_server_storage(db_url), data,
                       sealing_public=server_keys.sealing.public_key(),
                       pull_public=server_keys.pull.public_key(), root=root)
    if as_json:
        click.echo(json_line(cred.summary()))
    else:
        click.echo(i18n.t("server.credential_published", lang or i18n.default_lang(), serial=cred.serial,
                          server=escape(cred.server_id), urls=", ".join(escape(u) for u in cred.urls)))


# ---------------------------------------------------------------- retention, tracing, pull


@server_group.command("purge")
@db_url_option
@click.option("--days", type=click.IntRange(1, 3660), default=retention.DEFAULT_DAYS, show_default=True,
              help="Keep entries of the last DAYS days (by time and by arrival).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@lang_option
def server_purge(db_url, days, as_json, lang):
    """Retention: remove entries older than DAYS (PostgreSQL drops whole day partitions) and the
    holder details kept with old conflicts; the deletion is recorded in the audit trail."""
    done = run_guarded(retention.apply, open_server_storage(db_url), days, now_ms=now_ms())
    res = done.result
    if as_json:
        click.echo(json_line(done.to_dict()))
    else:
        lang = lang or i18n.default_lang()
        skipped = i18n.t("server.purge_skipped", lang, names=", ".join(res.skipped)) if res.skipped else ""
        click.echo(i18n.t("server.purged", lang, entries=res.entries, skipped=skipped, record=done.record.seq,
                          partitions=", ".join(res.partitions) or i18n.t("server.none", lang)))


def _local_tz(name: str | None):
    if not name:
        return dt.datetime.now().astimezone().tzinfo
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        fail(i18n.text("server_cli.time_zone", name=repr(name)))


def _sealing_key(db_url: str, key_file: str | None, keys_dir: str | None) -> X25519PrivateKey:
    """--sealing-key FILE, else the sealing key in the server's key directory (it must exist)."""
    if key_file is not None:
        return run_guarded(keys.load_private_key, key_file, X25519PrivateKey)
    path = run_guarded(keys.key_dir, db_url, keys_dir) / keys.SEALING_KEY_NAME
    if not path.exists():
        fail(i18n.text("server_cli.no_sealing_key", path=str(path)))
    return run_guarded(keys.load_private_key, path, X25519PrivateKey)


def _read_head(path: str, limit: int) -> bytes:
    """At most ``limit`` bytes of the file at ``path``."""
    with open(path, "rb") as fh:
        return fh.read(limit)


def _find_card(storage: Storage, card: str | None, photo: str | None, now: int, since: int,
               lang: str) -> cardfind.Found:
    """The card to trace, as the console finds it (sync.server.cardfind); one translated line and exit 2
    when it names nobody."""
    try:
        if photo is not None:
            data = run_guarded(_read_head, photo, cardfind.MAX_PHOTO_BYTES + 1)  # more is refused, unread
            return cardfind.from_photo(data, cardfind.server_trust(storage), now, since_ms=since)
        return cardfind.from_id_or_text(card or "", storage, now, since_ms=since)
    except cardfind.CardNotFound as exc:
        if photo is None and exc.code == Reason.UNSUPPORTED_FORMAT:
            why = i18n.t("server.not_id_or_text", lang)
        elif exc.code in Reason.__members__.values():
            why = i18n.t(f"reason.{exc.code}", lang)
        else:
            why = i18n.t(f"card_find.{exc.code}", lang, mib=cardfind.MAX_PHOTO_BYTES // (1024 * 1024))
        fail(i18n.t("server.card_names_nobody", lang, why=why, code=exc.code))


@server_group.command("trace")
@db_url_option
@click.option("--card", "card", default=None,
              help="The card id, hex (as `checkpoint log` shows it), or the card's text (its QR content, as "
                   "`checkpoint scan-image` prints it): verified against the trust bundle this server publishes.")
@click.option("--photo", "photo", type=click.Path(dir_okay=False, exists=True), default=None,
              help="A photo of the card (PNG, JPEG...): its QR code is decoded as the devices do, then verified.")
@click.option("--days", type=click.IntRange(1, 3660), default=14, show_default=True,
              help="Look back this many days from now.")
@click.option("--contacts", is_flag=True,
              help="Also list the other cards seen at the same checkpoints around each visit.")
@click.option("--window", default="1h", show_default=True,
              help="With --contacts: ± this around each visit (30m, 1h, 2h30m).")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--sealing-key", "key_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="The server's sealing private key, to open holder details (default: KEYS/sealing.key).")
@keys_option("sealing.key")
@click.option("--no-holders", is_flag=True, help="Do not open holder details (card ids and times only).")
@click.option("--tz", "tz_name", default=None, help="Time zone of the times shown (default: this machine's).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Write the report to this file (replaced atomically, mode 0600; a symlink is refused) "
                   "instead of stdout.")
@lang_option
def server_trace(db_url, card, photo, days, contacts, window, fmt, key_file, keys_dir, no_holders, tz_name,
                 out_path, lang):
    """Where and when a card was seen and, with --contacts, who else was there (CSV or JSON). The card:
    its id or its text (--card), or a photo of it (--photo)."""
    lang = lang or i18n.default_lang()
    if (card is None) == (photo is None):
        fail(i18n.t("server.card_or_photo", lang))
    window_ms = run_guarded(tracemod.parse_window, window) if contacts else None
    tz = _local_tz(tz_name)
    key = None if no_holders else _sealing_key(db_url, key_file, keys_dir)
    storage = open_server_storage(db_url, read_only=True)
    now = now_ms()
    since, until = cardfind.period(now, days)
    found = _find_card(storage, card, photo, now, since, lang)
    report = run_guarded(tracemod.trace, storage, found.card_id, since_ms=since, until_ms=until, window_ms=window_ms,
                         sealing_key=key)
    text = (json_line(tracemod.to_dict(report, tz)) + "\n") if fmt == "json" else tracemod.csv_text(report, tz)
    if out_path:
        with output_file(out_path) as fh:
            fh.write(text)
    else:
        click.echo(text, nl=False)
    how = "" if found.how == "id" else i18n.t(f"server.trace_how_{found.how}", lang, format=found.format)
    summary = i18n.t("server.trace_summary", lang, card=found.card_id, how=how, visits=len(report.visits), days=days)
    if found.reason == Reason.EXPIRED:
        summary += i18n.t("server.trace_expired", lang)
    if contacts:
        summary += i18n.t("server.trace_contacts", lang, contacts=len(report.contacts), cards=report.contact_cards,
                          window=escape(window))
    if report.truncated:
        summary += i18n.t("server.trace_limit", lang)
    click.echo(summary, err=True)
