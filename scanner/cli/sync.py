"""`checkpoint sync ...`, `checkpoint server ...` and `checkpoint provision`: thin wrappers over
sync/ (docs/sync-protocol.md#command-line). They print counts, ids, times and error codes; never
holder details.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from scanner.base import i18n
from scanner.base.fsutil import atomic_write
from scanner.base.safetext import escape, json_line
from scanner.base.timeutil import DAY_MS, now_ms
from scanner.cli.main import fail, main, output_file, run_guarded
from scanner.store.entry import iso_ms

EXIT_OK, EXIT_INCOMPLETE = 0, 1


def _state_option(fn):
    return click.option("--state-dir", type=click.Path(file_okay=False), default=None,
                        help="The device's state directory (default: $CHECKPOINT_STATE_DIR, "
                             "else /var/lib/checkpoint).")(fn)


def _log_option(fn):
    return click.option("--db", "db_path", type=click.Path(dir_okay=False), default=None,
                        help="The entry log (default: STATE_DIR/entries.db).")(fn)


def _state_dir(state_dir: str | None) -> Path:
    from sync.state import default_state_dir
    return Path(state_dir) if state_dir else default_state_dir()


def _open_log(state: Path, db_path: str | None):
    from scanner.store.entrylog import EntryLog
    from scanner.store.schema import DEFAULT_DB_NAME
    return run_guarded(EntryLog, Path(db_path) if db_path else state / DEFAULT_DB_NAME, create=False)


def _when(ms: int | None, lang: str) -> str:
    return i18n.t("sync.never", lang) if ms is None else iso_ms(ms)


# ---------------------------------------------------------------- provision


@main.command()
@click.option("--server", "server_url", default=None,
              help="The central server, https://HOST[:PORT] (default: [sync] server of --config).")
@click.option("--token", required=True, help="One-time enrollment token (`checkpoint server token create`).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="The appliance's config file: an existing one is checked and used, a missing one is "
                   "written with the inputs found on this device.")
@_state_option
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
    from scanner.appliance.provisioning import provision_appliance

    if server_url is None and config_path is None:
        fail("give --server URL (or --config FILE whose [sync] server names it)")
    res = run_guarded(provision_appliance, server_url, token, config_path=config_path,
                      state_dir=_state_dir(state_dir) if state_dir or not config_path else None,
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


# ---------------------------------------------------------------- sync


@main.group("sync")
def sync_group() -> None:
    """Upload entries to the central server, trust updates back, offline export."""


@sync_group.command("now")
@_state_option
@_log_option
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 86400), default=300, show_default=True,
              help="Give up after this many seconds of retrying.")
@click.option("--retry-quarantined", is_flag=True, help="Send quarantined batches again.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def sync_now(state_dir, db_path, timeout_s, retry_quarantined, as_json):
    """Upload everything pending. Exit 0 only when all of it is acknowledged."""
    from sync.agent import SyncAgent

    state = _state_dir(state_dir)
    with _open_log(state, db_path) as log:
        agent = run_guarded(SyncAgent, state, log)
        try:
            res = run_guarded(agent.sync_until_done, timeout_s, retry_quarantined=retry_quarantined, trust=True)
        finally:
            agent.close()
    if as_json:
        click.echo(json_line({"complete": res.complete, "batches": res.batches, "entries": res.entries,
                              "stored": res.stored, "duplicates": res.duplicates, "quarantined": res.quarantined,
                              "pending": res.pending, "error": res.error, "error_code": res.error_code,
                              "trust": res.trust}))
    else:
        lang = i18n.default_lang()
        click.echo(i18n.t("sync.now", lang, batches=res.batches, entries=res.entries, stored=res.stored,
                          dup=res.duplicates, pending=res.pending))
        if res.error:
            click.echo(f"checkpoint: {escape(res.error)}", err=True)
    sys.exit(EXIT_OK if res.complete else EXIT_INCOMPLETE)


def status_dict(state: Path, log) -> dict:
    """What `checkpoint sync status` reports."""
    from sync.pull import read_pull_state
    from sync.state import DeviceConfig, StateFile

    cfg = DeviceConfig.load(state)
    st = StateFile(state).load()
    first = log.pending(0, 1)
    unsynced = log.stats().unsynced if first else 0
    now = int(time.time())
    return {
        "device_id": cfg.device_id, "checkpoint_id": cfg.checkpoint_id, "server": cfg.server_url,
        "pending": unsynced, "oldest_pending_ms": first[0].at_ms if first else None,
        "last_acked_seq": st.last_acked_seq, "server_held_seq": st.server_held_seq,
        "last_success_ms": st.last_success_ms, "last_attempt_ms": st.last_attempt_ms,
        "last_error": st.last_error, "last_error_code": st.last_error_code, "last_error_ms": st.last_error_ms,
        "trust_version": st.trust_version,
        "trust_age_s": None if st.trust_issued_at is None else max(0, now - st.trust_issued_at),
        "trust_checked_ms": st.trust_checked_ms, "trust_error": st.trust_error,
        "clock_offset_ms": st.clock_offset_ms, "alarms": st.alarms,
        "quarantined": [{k: q[k] for k in ("batch_id", "first_seq", "last_seq", "code")} for q in st.quarantined],
        "batch_size": st.batch_size,
        "pull": read_pull_state(state),  # when the server last pulled from this device (sync/pull.py)
    }


def _error_text(code: str | None, message: str, lang: str) -> str:
    """A sync error for people: its catalogue text and code, or the message when the code has none."""
    key = f"sync_error.{code}"
    text = i18n.t(key, lang)
    return f"{text} ({escape(code)})" if code and text != key else escape(message)


@sync_group.command("status")
@_state_option
@_log_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--lang", type=click.Choice(i18n.LANGS), default=None, help="vi (default) or en.")
def sync_status(state_dir, db_path, as_json, lang):
    """Pending entries, last acknowledged sequence, last success and error, trust version and age."""
    state = _state_dir(state_dir)
    with _open_log(state, db_path) as log:
        d = run_guarded(status_dict, state, log)
    if as_json:
        click.echo(json_line(d))
        return
    lang = lang or i18n.default_lang()
    t = lambda key, **kw: i18n.t("sync." + key, lang, **kw)
    click.echo(t("device", device=escape(d["device_id"]), checkpoint=escape(d["checkpoint_id"]),
                 server=escape(d["server"])))
    click.echo(t("pending", n=d["pending"], oldest=_when(d["oldest_pending_ms"], lang),
                 acked=d["last_acked_seq"]))
    click.echo(t("last", ok=_when(d["last_success_ms"], lang), attempt=_when(d["last_attempt_ms"], lang)))
    if d["last_error"]:
        click.echo(t("error", error=_error_text(d["last_error_code"], d["last_error"], lang),
                     at=_when(d["last_error_ms"], lang)))
    age = "-" if d["trust_age_s"] is None else f"{d['trust_age_s'] / 86400:.1f}"
    click.echo(t("trust", version=d["trust_version"] if d["trust_version"] is not None else "-", days=age))
    if d["trust_error"]:
        click.echo(t("trust_error", error=escape(d["trust_error"])))
    if d["quarantined"]:
        click.echo(t("quarantined", n=len(d["quarantined"])))
    if d["alarms"]:
        click.echo(t("alarms", alarms=", ".join(d["alarms"])))
    if d["pull"] and d["pull"].get("last_ack_ms"):
        click.echo(i18n.t("sync_pull.pulled", lang, at=_when(d["pull"]["last_ack_ms"], lang),
                          by=escape(str(d["pull"].get("puller", "-"))), seq=d["pull"].get("acked_seq", "-")))


@sync_group.command("export")
@click.option("--to", "to_dir", required=True, type=click.Path(file_okay=False), help="Directory (e.g. a USB stick).")
@_state_option
@_log_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def sync_export(to_dir, state_dir, db_path, as_json):
    """Write pending entries as signed batch files for `checkpoint server import`."""
    from sync.export import export_pending

    state = _state_dir(state_dir)
    with _open_log(state, db_path) as log:
        res = run_guarded(export_pending, state, log, to_dir)
    if as_json:
        click.echo(json_line({"dir": res.dir, "files": len(res.files), "entries": res.entries,
                              "first_seq": res.first_seq, "last_seq": res.last_seq}))
    else:
        click.echo(i18n.t("sync.exported", i18n.default_lang(), n=len(res.files), entries=res.entries,
                          dir=escape(res.dir)))


# ---------------------------------------------------------------- server


def _db_url_option(fn):
    return click.option("--db", "db_url", required=True, metavar="URL",
                        help="sqlite:///PATH, sqlite:PATH, a file path, or postgresql://USER@HOST[:PORT]/DB.")(fn)


def _keys_option(what: str):
    return click.option("--keys", "keys_dir", type=click.Path(file_okay=False), default=None,
                        help=f"Directory of the server's keys ({what}; default: beside the SQLite file; "
                             "required with PostgreSQL).")


def _storage(db_url: str):
    from sync.server.storage import open_storage
    return run_guarded(open_storage, db_url)


@main.group("server")
def server_group() -> None:
    """The reference central server: run it, enrollment tokens, devices, stats, import, bundles."""


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


@server_group.command("run")
@_db_url_option
@click.option("--listen", default="127.0.0.1:8443", show_default=True, help="HOST:PORT to listen on.")
@_keys_option("sealing.key, pull.key: made on first start")
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True), default=None)
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True), default=None)
@click.option("--access-log", is_flag=True, help="Log every request.")
@click.option("--max-inflight", type=click.IntRange(1, 10_000), default=32, show_default=True,
              help="Batches processed at once; more are answered 503 busy with Retry-After.")
@click.option("--retry-after", "retry_after_s", type=click.IntRange(1, 3600), default=2, show_default=True,
              help="Seconds a device is told to wait after a 503 busy or 429.")
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
def server_run(db_url, listen, keys_dir, tls_cert, tls_key, access_log, max_inflight, retry_after_s, max_per_peer,
               max_connections_per_peer, legacy_inflight, legacy_max_bytes, min_body_rate, body_timeout):
    """Serve the sync protocol until SIGINT/SIGTERM."""
    import logging

    from sync.server.app import Limits, serve

    host, port = parse_listen(listen)
    if bool(tls_cert) != bool(tls_key):
        fail("--tls-cert and --tls-key go together")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    scheme = "https" if tls_cert else "http"
    click.echo(f"checkpoint server: listening on {scheme}://{listen} (database {escape(db_url)})", err=True)
    limits = Limits(per_peer=max_per_peer, connections_per_peer=max_connections_per_peer,
                    legacy_inflight=legacy_inflight, legacy_max_bytes=legacy_max_bytes, min_rate_bps=min_body_rate,
                    body_timeout_s=body_timeout)
    run_guarded(serve, db_url, host, port, keys_dir=keys_dir, tls_cert=tls_cert, tls_key=tls_key,
                access_log=access_log, max_inflight=max_inflight, retry_after_s=retry_after_s, limits=limits)


@server_group.group("token")
def token_group() -> None:
    """One-time enrollment tokens."""


@token_group.command("create")
@_db_url_option
@click.option("--checkpoint", "checkpoint_id", required=True, help="The checkpoint the device will serve.")
@click.option("--count", type=click.IntRange(1, 10000), default=1, show_default=True)
@click.option("--ttl-hours", type=click.FloatRange(0.01, 24 * 365), default=72, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def token_create(db_url, checkpoint_id, count, ttl_hours, as_json):
    """Print new one-time tokens (shown once; the server keeps only their hashes)."""
    from sync.server.tokens import issue_tokens

    storage = _storage(db_url)
    try:
        tokens = run_guarded(issue_tokens, storage, checkpoint_id, count, ttl_hours=ttl_hours, now_ms=now_ms())
    finally:
        storage.close()
    if as_json:
        click.echo(json_line({"checkpoint_id": checkpoint_id, "tokens": tokens}))
    else:
        for tok in tokens:
            click.echo(tok)


@server_group.command("stats")
@_db_url_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def server_stats(db_url, as_json):
    """Devices, entries, batches, duplicates dropped, chain problems."""
    storage = _storage(db_url)
    try:
        s = run_guarded(storage.stats)
    finally:
        storage.close()
    d = s.to_dict()
    if as_json:
        click.echo(json_line(d))
    else:
        for k, v in d.items():
            click.echo(f"{k}: {v}")


def device_rows(storage, stale_after_s: float, now_ms: int) -> list[dict]:
    """Devices for `server devices`: never seen first, then stale (oldest first), then the rest."""
    rows = []
    for st in storage.devices():
        d = st.to_dict()
        seen = st.last_seen_ms
        d["stale"] = seen is None or now_ms - seen > stale_after_s * 1000
        d["gaps"] = [list(g) for g in storage.gaps(st.device.device_id, 20)] if st.missing else []
        rows.append(d)
    rows.sort(key=lambda d: (not d["stale"], d["last_seen_ms"] or 0, d["device_id"]))
    return rows


@server_group.command("devices")
@_db_url_option
@click.option("--stale-after", "stale_min", type=click.FloatRange(0), default=15, show_default=True,
              help="Minutes without a heartbeat after which a device is stale.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per device.")
def server_devices(db_url, stale_min, as_json):
    """Every device with its latest heartbeat, stale ones first."""
    storage = _storage(db_url)
    try:
        rows = run_guarded(device_rows, storage, stale_min * 60, now_ms())
    finally:
        storage.close()
    for d in rows:
        if as_json:
            click.echo(json_line(d))
            continue
        hb = d["heartbeat"] or {}
        flags = ["STALE"] if d["stale"] else []
        if d["revoked_ms"] is not None:
            flags.append("REVOKED")
        if d["missing"]:
            flags.append(f"missing {d['missing']}")
        if d["chain_problems"] or d["conflicts"]:
            flags.append(f"chain problems {d['chain_problems']}, conflicts {d['conflicts']}")
        click.echo(f"{d['device_id']} {escape(d['checkpoint_id'])} last seen "
                   f"{iso_ms(d['last_seen_ms']) if d['last_seen_ms'] else 'never'} held {d['held_seq']} "
                   f"queue {hb.get('queue_depth', '-')} trust v{hb.get('trust_version', '-')} "
                   f"offset {hb.get('clock_offset_ms', '-')} ms alarms {','.join(hb.get('alarms', [])) or '-'}"
                   + (f" [{'; '.join(flags)}]" if flags else ""))


@server_group.command("import")
@_db_url_option
@click.argument("dirs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def server_import(db_url, dirs, as_json):
    """Import batch files written by `checkpoint sync export` (deduplicated like pushes)."""
    from sync.server.imports import import_dirs

    storage = _storage(db_url)
    try:
        total = run_guarded(import_dirs, storage, dirs)
    finally:
        storage.close()
    if as_json:
        click.echo(json_line(total.to_dict()))
    else:
        click.echo(f"{total.files} files: {total.batches} batches, {total.entries} entries, {total.stored} stored, "
                   f"{total.duplicates} already held, {len(total.refused)} refused")
        for file, code, message in total.refused:
            click.echo(f"refused {escape(file)}: {code}: {escape(message)}", err=True)
    sys.exit(EXIT_OK if not total.refused else EXIT_INCOMPLETE)


@server_group.command("revoke")
@_db_url_option
@click.argument("device_id")
def server_revoke(db_url, device_id):
    """Refuse everything from DEVICE_ID from now on (a lost or stolen device)."""
    storage = _storage(db_url)
    try:
        if run_guarded(storage.device, device_id) is None:
            fail(f"no device {device_id}")
        changed = run_guarded(storage.revoke_device, device_id, now_ms())
    finally:
        storage.close()
    click.echo(f"{device_id}: {'revoked' if changed else 'already revoked'}")


@server_group.command("chain")
@_db_url_option
@click.option("--device", "device_id", default=None, help="One device (default: all).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per problem.")
def server_chain(db_url, device_id, as_json):
    """Chain problems the server found (relinked, altered, conflict) and sequence gaps."""
    storage = _storage(db_url)
    try:
        events = run_guarded(storage.chain_events, device_id, 1000)
        devices = [device_id] if device_id else [d.device.device_id for d in storage.devices()]
        gaps = {d: storage.gaps(d, 100) for d in devices}
    finally:
        storage.close()
    for e in events:
        row = {"device_id": e.device_id, "kind": e.kind, "seq": e.seq, "detail": e.detail, "at_ms": e.at_ms}
        click.echo(json_line(row) if as_json else f"{e.device_id} {e.kind} seq {e.seq}: {escape(e.detail)}")
    for dev, ranges in gaps.items():
        for lo, hi in ranges:
            row = {"device_id": dev, "kind": "gap", "first_seq": lo, "last_seq": hi}
            click.echo(json_line(row) if as_json else f"{dev} gap seq {lo}..{hi}")


@server_group.group("bundle")
def bundle_group() -> None:
    """Trust bundles devices fetch."""


@bundle_group.command("publish")
@_db_url_option
@click.argument("bundle_file", type=click.Path(dir_okay=False, exists=True))
@click.option("--root", "root_pub", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Root public key (PEM); needed the first time, must match afterwards.")
@click.option("--root-key", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Root private key: also publish deltas from recent versions (small updates).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def bundle_publish(db_url, bundle_file, root_pub, root_key, as_json):
    """Publish a bundle made by `checkpoint issuer bundle|revoke` as the current one."""
    from scanner.cards.trust import load_root
    from scanner.cli.main import _load_root_private
    from sync.server.bundles import publish

    root = run_guarded(load_root, root_pub) if root_pub else None
    root_private = _load_root_private(root_key) if root_key else None
    data = run_guarded(Path(bundle_file).read_bytes)
    storage = _storage(db_url)
    try:
        meta, deltas = run_guarded(publish, storage, data, now_ms=now_ms(), root=root, root_private=root_private)
    finally:
        storage.close()
    if as_json:
        click.echo(json_line({"version": meta.version, "digest": meta.digest, "size": meta.size,
                              "deltas_from": deltas}))
    else:
        click.echo(f"bundle version {meta.version} published ({meta.size} bytes); deltas from "
                   f"{', '.join(map(str, deltas)) or 'none'}")


def _server_keys(db_url: str, keys_dir: str | None):
    """The server's (sealing, pull) private keys from its key directory, made if absent (as `server run` does)."""
    from sync.server.keys import load_or_create_pull_key, load_or_create_sealing_key
    from sync.server.storage import default_keys_dir

    directory = Path(keys_dir) if keys_dir else run_guarded(default_keys_dir, db_url)
    return run_guarded(load_or_create_sealing_key, directory), run_guarded(load_or_create_pull_key, directory)


@server_group.command("keys")
@_db_url_option
@_keys_option("sealing.key, pull.key: made if absent")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Write the public halves here: sealing.pub (X25519), pull.pub (Ed25519).")
def server_keys(db_url, keys_dir, out_dir):
    """Export the server's public keys, for the operator to sign a credential for (`issuer server-credential`)."""
    from scanner.cards.keys import public_pem
    from scanner.store.sealing import public_key_pem

    sealing_key, pull_key = _server_keys(db_url, keys_dir)
    out = Path(out_dir)
    run_guarded(out.mkdir, parents=True, exist_ok=True)
    run_guarded(atomic_write, out / "sealing.pub", public_key_pem(sealing_key.public_key()))
    run_guarded(atomic_write, out / "pull.pub", public_pem(pull_key.public_key()))
    click.echo(f"wrote {escape(str(out / 'sealing.pub'))} and {escape(str(out / 'pull.pub'))}")


@server_group.group("credential")
def credential_group() -> None:
    """The server's credential: its URL and keys, signed by the trust root (devices enroll only with it)."""


@credential_group.command("publish")
@_db_url_option
@click.argument("credential_file", type=click.Path(dir_okay=False, exists=True))
@click.option("--root", "root_pub", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Root public key (PEM); needed when no bundle was published yet, must match afterwards.")
@_keys_option("the credential must name its sealing and pull keys")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def credential_publish(db_url, credential_file, root_pub, keys_dir, as_json):
    """Publish a credential made by `checkpoint issuer server-credential` (checked against the root and
    this server's own keys); devices get it at enrollment and at their trust checks."""
    from scanner.cards.trust import load_root
    from sync.server.credentials import publish

    root = run_guarded(load_root, root_pub) if root_pub else None
    sealing_key, pull_key = _server_keys(db_url, keys_dir)
    data = run_guarded(Path(credential_file).read_bytes)
    storage = _storage(db_url)
    try:
        cred = run_guarded(publish, storage, data, sealing_public=sealing_key.public_key(),
                           pull_public=pull_key.public_key(), root=root)
    finally:
        storage.close()
    if as_json:
        click.echo(json_line(cred.summary()))
    else:
        click.echo(f"credential serial {cred.serial} of {escape(cred.server_id)} published "
                   f"({', '.join(escape(u) for u in cred.urls)})")


# ---------------------------------------------------------------- issue 7: retention, tracing, pull


@server_group.command("purge")
@_db_url_option
@click.option("--days", type=click.IntRange(1, 3660), required=True,
              help="Keep entries of the last DAYS days (by time and by arrival).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def server_purge(db_url, days, as_json):
    """Retention: remove entries older than DAYS (PostgreSQL drops whole day partitions)."""
    storage = _storage(db_url)
    try:
        res = run_guarded(storage.purge, now_ms() - days * DAY_MS)
    finally:
        storage.close()
    if as_json:
        click.echo(json_line(res.to_dict()))
    else:
        click.echo(f"removed {res.entries} entries; partitions dropped: {', '.join(res.partitions) or 'none'}"
                   + (f"; busy, left for the next run: {', '.join(res.skipped)}" if res.skipped else ""))


def _local_tz(name: str | None):
    import datetime as dt
    if not name:
        return dt.datetime.now().astimezone().tzinfo
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        fail(f"unknown time zone {escape(name)!r} (an IANA name such as Asia/Ho_Chi_Minh)")


def _sealing_key(db_url: str, key_file: str | None, keys_dir: str | None):
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from sync.server.keys import SEALING_KEY_NAME, load_private_key
    from sync.server.storage import default_keys_dir

    if key_file is None:
        directory = Path(keys_dir) if keys_dir else run_guarded(default_keys_dir, db_url)
        key_file = directory / SEALING_KEY_NAME
        if not key_file.exists():
            fail(f"no sealing key at {escape(str(key_file))}: give --sealing-key FILE (or --no-holders)")
    return run_guarded(load_private_key, key_file, X25519PrivateKey)


@server_group.command("trace")
@_db_url_option
@click.option("--card", "card", required=True, help="The card id, hex (as `checkpoint log` shows it).")
@click.option("--days", type=click.IntRange(1, 3660), default=14, show_default=True,
              help="Look back this many days from now.")
@click.option("--contacts", is_flag=True,
              help="Also list the other cards seen at the same checkpoints around each visit.")
@click.option("--window", default="1h", show_default=True,
              help="With --contacts: ± this around each visit (30m, 1h, 2h30m).")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--sealing-key", "key_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="The server's sealing private key, to open holder details (default: KEYS/sealing.key).")
@_keys_option("sealing.key")
@click.option("--no-holders", is_flag=True, help="Do not open holder details (card ids and times only).")
@click.option("--tz", "tz_name", default=None, help="Time zone of the times shown (default: this machine's).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Write the report to this file (replaced atomically, mode 0600; a symlink is refused) "
                   "instead of stdout.")
def server_trace(db_url, card, days, contacts, window, fmt, key_file, keys_dir, no_holders, tz_name, out_path):
    """Where and when a card was seen and, with --contacts, who else was there (CSV or JSON)."""
    from sync.server import trace as tracemod

    window_ms = run_guarded(tracemod.parse_window, window) if contacts else None
    card_id = run_guarded(tracemod.parse_card, card)
    tz = _local_tz(tz_name)
    key = None if no_holders else _sealing_key(db_url, key_file, keys_dir)
    until = now_ms()
    storage = _storage(db_url)
    try:
        report = run_guarded(tracemod.trace, storage, card_id, since_ms=until - days * DAY_MS, until_ms=until + 1,
                             window_ms=window_ms, sealing_key=key)
    finally:
        storage.close()
    text = (json_line(tracemod.to_dict(report, tz)) + "\n") if fmt == "json" else tracemod.csv_text(report, tz)
    if out_path:
        with output_file(out_path) as fh:
            fh.write(text)
    else:
        click.echo(text, nl=False)
    summary = f"card {card_id}: {len(report.visits)} visits in {days} days"
    if contacts:
        summary += f", {len(report.contacts)} contact entries of {report.contact_cards} cards within ±{escape(window)}"
    if report.truncated:
        summary += "; LIMIT REACHED, narrow the period or the window"
    click.echo(summary, err=True)


def _device_urls(urls: tuple[str, ...], urls_file: str | None) -> list[str]:
    out = list(urls)
    if urls_file:
        text = run_guarded(Path(urls_file).read_text, encoding="utf-8")
        out += [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]
    if not out:
        fail("give --device URL (repeatable) or --devices FILE")
    return out


@server_group.command("pull")
@_db_url_option
@click.option("--device", "urls", multiple=True, metavar="URL",
              help="A device's local API, http(s)://HOST:PORT (repeatable).")
@click.option("--devices", "urls_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="A file of device URLs, one a line (# starts a comment).")
@_keys_option("pull.key signs the requests")
@click.option("--token-file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Use this token (first line of the file) instead of the server's pull key.")
@click.option("--ca-file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="CA certificate(s) for devices served over https with a private CA.")
@click.option("--limit", type=click.IntRange(1, 5000), default=2000, show_default=True, help="Entries per batch.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 86400), default=600, show_default=True,
              help="Stop pulling from a device after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per device.")
def server_pull(db_url, urls, urls_file, keys_dir, token_file, ca_file, limit, timeout_s, as_json):
    """Fetch pending batches from devices the server can reach (VPN). Exit 0 only when every
    device has nothing pending left."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from sync.server.keys import PULL_KEY_NAME, load_private_key
    from sync.server.puller import pull_device
    from sync.server.storage import default_keys_dir

    targets = _device_urls(urls, urls_file)
    key = token = None
    if token_file:
        token = run_guarded(Path(token_file).read_text, encoding="utf-8").splitlines()[0:1]
        token = token[0].strip() if token else ""
        if not token:
            fail(f"{escape(token_file)}: empty token file")
    else:
        directory = Path(keys_dir) if keys_dir else run_guarded(default_keys_dir, db_url)
        key_file = directory / PULL_KEY_NAME
        if not key_file.exists():
            fail(f"no pull key at {escape(str(key_file))} (`checkpoint server run` makes it; devices learn it "
                 "at enrollment)")
        key = run_guarded(load_private_key, key_file, ed25519.Ed25519PrivateKey)
    storage = _storage(db_url)
    results = []
    try:
        for url in targets:
            res = pull_device(storage, url, key=key, token=token, ca_file=ca_file, limit=limit, timeout_s=timeout_s)
            results.append(res)
            if as_json:
                click.echo(json_line(res.to_dict()))
            else:
                click.echo(f"{escape(url)} {res.device_id or '-'}: {res.batches} batches, {res.entries} entries "
                           f"({res.stored} new, {res.duplicates} already held), {res.marked} marked on the device, "
                           f"{res.quarantined} quarantined; pending {res.pending if res.pending is not None else '-'}"
                           + (f"; error {res.error_code}: {escape(res.error or '')}" if res.error else ""))
    finally:
        storage.close()
    sys.exit(EXIT_OK if all(r.complete for r in results) else EXIT_INCOMPLETE)
