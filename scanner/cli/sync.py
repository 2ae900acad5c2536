"""`checkpoint sync ...`: the device's side of sync, thin wrappers over sync/
(docs/sync-protocol.md#command-line). They print counts, ids, times and error codes; never holder
details.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from scanner.base import i18n
from scanner.base.errors import code_words
from scanner.base.fsutil import give_to_owner
from scanner.base.safetext import escape, json_line
from scanner.cli.common import (
    EXIT_INCOMPLETE,
    EXIT_OK,
    closing,
    run_guarded,
    state_option,
)
from scanner.cli.device import config_option, db_path_for, device_config, state_dir_for
from scanner.store.entry import iso_ms
from scanner.store.entrylog import EntryLog
from sync.agent import SyncAgent
from sync.export import export_pending
from sync.state import DeviceConfig, status_dict


def _log_option(fn):
    """--db and --config (scanner/cli/device.py)."""
    db = click.option("--db", "db_path", type=click.Path(dir_okay=False), default=None,
                      help="The entry log (default: the configuration's, else STATE_DIR/entries.db).")
    return config_option(db(fn))


def _device(state_dir: str | None, db_path: str | None, config_path: str | None) -> tuple[Path, Path]:
    """The device's state directory and entry log."""
    config = device_config(config_path)
    state = state_dir_for(state_dir, config)
    return state, db_path_for(db_path, state, config)


def _open_log(state: Path, db: Path, *, create: bool = False) -> EntryLog | None:
    """The device's entry log, closed when the command ends. A provisioned device whose daemon has
    not run yet has none: None, or with ``create`` a new one as the daemon makes it (given to the
    state directory's owner, so that the service can write it)."""
    if not db.exists():
        run_guarded(DeviceConfig.load, state)  # not provisioned: its one-line error
        if not create:
            return None
        log = closing(run_guarded(EntryLog, db, create=True))
        run_guarded(give_to_owner, state, db)
        return log
    return closing(run_guarded(EntryLog, db, create=False))


def _when(ms: int | None, lang: str) -> str:
    return i18n.t("sync.never", lang) if ms is None else iso_ms(ms)


# ---------------------------------------------------------------- sync


@click.group("sync")
def sync_group() -> None:
    """Upload entries to the central server, trust updates back, offline export."""


@sync_group.command("now")
@state_option
@_log_option
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 86400), default=300, show_default=True,
              help="Give up after this many seconds of retrying.")
@click.option("--retry-quarantined", is_flag=True, help="Send quarantined batches again.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def sync_now(state_dir, db_path, config_path, timeout_s, retry_quarantined, as_json):
    """Upload everything pending. Exit 0 only when all of it is acknowledged."""
    state, db = _device(state_dir, db_path, config_path)
    logging.getLogger("sync").setLevel(logging.CRITICAL)  # each retry's failure: the last one is said below
    log = _open_log(state, db, create=True)
    agent = closing(run_guarded(SyncAgent, state, log))
    res = run_guarded(agent.sync_until_done, timeout_s, retry_quarantined=retry_quarantined, trust=True)
    if as_json:
        click.echo(json_line(res.to_dict()))
    else:
        lang = i18n.default_lang()
        click.echo(i18n.t("sync.now", lang, batches=res.batches, entries=res.entries, stored=res.stored,
                          dup=res.duplicates, pending=res.pending))
        if res.error:  # what failed and what to check: the client's words in English, the catalogue's else
            said = escape(res.error) if lang == "en" else _error_text(res.error_code, res.error, lang)
            click.echo(f"checkpoint: {said}", err=True)
    sys.exit(EXIT_OK if res.complete else EXIT_INCOMPLETE)


def _error_text(code: str | None, message: str, lang: str) -> str:
    """A sync error for people: its catalogue text ([sync_error], else [error]) and code, or the
    message when the code has none."""
    if code and i18n.known(f"sync_error.{code}"):
        return f"{i18n.t(f'sync_error.{code}', lang)} ({escape(code)})"
    said = code_words(code)
    return f"{said(lang)} ({escape(code or '')})" if said is not None else escape(message)


@sync_group.command("status")
@state_option
@_log_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--lang", type=click.Choice(i18n.LANGS), default=None, help="vi (default) or en.")
def sync_status(state_dir, db_path, config_path, as_json, lang):
    """Pending entries, last acknowledged sequence, last success and error, trust version and age."""
    state, db = _device(state_dir, db_path, config_path)
    d = run_guarded(status_dict, state, _open_log(state, db))
    if as_json:
        click.echo(json_line(d))
        return
    lang = lang or i18n.default_lang()
    t = lambda key, **kw: i18n.t("sync." + key, lang, **kw)  # noqa: E731
    click.echo(t("device", device=escape(d["device_id"]), checkpoint=escape(d["checkpoint_id"]),
                 server=escape(d["server"])))
    if d["oldest_pending_ms"] is None:
        click.echo(t("pending_none", acked=d["last_acked_seq"]))
    else:
        click.echo(t("pending", n=d["pending"], oldest=_when(d["oldest_pending_ms"], lang),
                     acked=d["last_acked_seq"]))
    click.echo(t("last", ok=_when(d["last_success_ms"], lang), attempt=_when(d["last_attempt_ms"], lang)))
    if d["last_error"]:
        click.echo(t("error", error=_error_text(d["last_error_code"], d["last_error"], lang),
                     at=_when(d["last_error_ms"], lang)))
    if d["trust_version"] is None:
        click.echo(t("trust_none"))
    else:
        click.echo(t("trust", version=d["trust_version"], age=i18n.render(i18n.age(max(0.0, d["trust_age_s"] or 0)),
                                                                          lang)))
    if d["trust_error"]:
        click.echo(t("trust_error", error=_error_text(d["trust_error_code"], d["trust_error"], lang)))
    if d["quarantined"]:
        click.echo(t("quarantined", n=len(d["quarantined"])))
    if d["alarms"]:
        click.echo(t("alarms", alarms=", ".join(d["alarms"])))
    if d["pull"] and d["pull"].get("last_ack_ms"):
        click.echo(i18n.t("sync_pull.pulled", lang, at=_when(d["pull"]["last_ack_ms"], lang),
                          by=escape(str(d["pull"].get("puller", "-"))), seq=d["pull"].get("acked_seq", "-")))


@sync_group.command("export")
@click.option("--to", "to_dir", required=True, type=click.Path(file_okay=False), help="Directory (e.g. a USB stick).")
@state_option
@_log_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def sync_export(to_dir, state_dir, db_path, config_path, as_json):
    """Write pending entries as signed batch files for `checkpoint server import`."""
    state, db = _device(state_dir, db_path, config_path)
    res = run_guarded(export_pending, state, _open_log(state, db, create=True), to_dir)
    if as_json:
        click.echo(json_line(res.to_dict()))
    else:
        click.echo(i18n.t("sync.exported", i18n.default_lang(), n=len(res.files), entries=res.entries,
                          dir=escape(res.dir)))
