"""`checkpoint log ...`: thin wrappers over scanner.store.entrylog (docs/entry-log.md#command-line).

These commands print counts, times, reasons and card ids only: never holder details, sealed or not.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from scanner.appliance import readiness
from scanner.appliance.config import defaults
from scanner.base import i18n
from scanner.base.safetext import escape, json_line
from scanner.cli.common import (
    EXIT_ACCEPT,
    EXIT_REJECT,
    TIME,
    fail_on,
    output_file,
    run_guarded,
)
from scanner.cli.device import config_option, db_path_for, device_config
from scanner.store.disk import MIB
from scanner.store.entry import (
    FORMATS,
    iso_ms,
    read_export,
    to_export_dict,
    verify_chain,
    write_export,
)
from scanner.store.entrylog import EntryLog, Stats

FORMAT = click.Choice(FORMATS)


def _db_option(fn):
    """--db and --config: the log, or the device whose log it is (scanner/cli/device.py)."""
    db = click.option("--db", "db_path", type=click.Path(dir_okay=False), default=None,
                      help="The entry log (default: the configuration's, else $CHECKPOINT_STATE_DIR/entries.db, "
                           "else /var/lib/checkpoint/entries.db).")
    return config_option(db(fn))


def _open(db_path: str | None, config_path: str | None) -> EntryLog:
    return run_guarded(EntryLog, db_path_for(db_path, None, device_config(config_path)), create=False)


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    if n >= 1024 * MIB:
        return f"{n / (1024 * MIB):.1f} GiB"
    if n >= MIB:
        return f"{n / MIB:.1f} MiB"
    return f"{n / 1024:.0f} KiB"


@click.group("log")
def log_group() -> None:
    """The entry log: counts, recent entries, export, retention, chain check (never holder data)."""


# ---------------------------------------------------------------- stats


def stats_lines(s: Stats, lang: str, ready: readiness.Readiness | None = None) -> list[str]:
    """The human summary of `checkpoint log stats` (counts only), and the device's readiness."""
    t = lambda key, **kw: i18n.t("log." + key, lang, **kw)  # noqa: E731
    first = "-" if s.first_seq is None else s.first_seq
    last = "-" if s.last_seq is None else s.last_seq
    lines = [
        t("file", path=escape(s.path), version=s.schema_version, size=_size(s.db_bytes),
          free=_size(s.free_bytes)),
        t("entries", n=s.entries, first=first, last=last, unsynced=s.unsynced, synced=s.synced,
          purged=s.purged, anchor=s.anchor_seq),
        t("holders", sealed=s.holder_sealed, none=s.holder_not_stored),
    ]
    if s.oldest_at_ms is not None and s.newest_at_ms is not None:
        lines.append(t("span", oldest=iso_ms(s.oldest_at_ms), newest=iso_ms(s.newest_at_ms)))
    for d in s.today:
        lines.append(t("today", day=d.day, checkpoint=escape(d.checkpoint_id or "*"), scans=d.scans,
                       a_in=d.admitted_in, a_out=d.admitted_out, inside=d.occupancy,
                       dup=d.duplicates, rejected=d.rejected, dnp=d.did_not_pass))
    h = s.health
    state = i18n.t("log_health." + h.state, lang)
    problems = "; ".join(f"{i18n.t('log_problem.' + p, lang)} ({p})" for p in h.problems)
    lines.append(t("health", state=state) + (f" ({problems})" if problems else ""))
    if ready is not None:
        lines.append(t("device", state=ready.message(lang)))
    return lines


@log_group.command()
@_db_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--lang", type=click.Choice(i18n.LANGS), default=None, help="vi (default) or en.")
def stats(db_path, config_path, as_json, lang):
    """Counts: entries, unsynced, purged, today's totals and occupancy, disk and health; and
    whether the device can check cards (the same answer as its health API and doctor)."""
    config = device_config(config_path)
    # the device's own low-disk threshold when its configuration is known, as its health API has it
    limits = {"min_free_bytes": config.log.min_free_mb * MIB} if config is not None else {}
    with run_guarded(EntryLog, db_path_for(db_path, None, config), create=False, **limits) as log:
        s = run_guarded(log.stats)
    # the readiness of the device: the configuration given, or the installed one when this is its log,
    # else the built-in defaults with the log's folder as the state directory
    if config is None or (config_path is None and config.db_path.resolve() != Path(s.path).resolve()):
        config = defaults(Path(s.path).parent)
    ready = readiness.of_config(config)
    if as_json:
        d = s.to_dict()
        # the mode of this (unkeyed) CLI instance says nothing about the service: counts only
        del d["holder_details"], d["holder_details_note"]
        d["device"] = ready.to_dict()
        click.echo(json_line(d))
        return
    for line in stats_lines(s, lang or i18n.default_lang(), ready):
        click.echo(line)


# ---------------------------------------------------------------- tail


def tail_line(e) -> str:
    """One entry, for people: seq, time, checkpoint, direction, decision/reason, card id, sync."""
    parts = [f"#{e.seq}", e.at_iso, escape(e.checkpoint_id), e.direction, f"{e.decision}/{e.reason}",
             e.card_id or "-"]
    if e.kind:
        parts.append(f"{e.kind}→{e.ref_entry_id}")
    parts.append(f"batch={escape(e.batch_id)}" if e.batch_id else "unsynced")
    return "  ".join(parts)


@log_group.command()
@_db_option
@click.option("-n", "count", type=click.IntRange(0, 100000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry (the export record).")
def tail(db_path, config_path, count, as_json):
    """The last N entries, oldest first."""
    with _open(db_path, config_path) as log:
        entries = run_guarded(log.tail, count)
    for e in entries:
        click.echo(json_line(to_export_dict(e)) if as_json else tail_line(e))


# ---------------------------------------------------------------- export


@log_group.command()
@_db_option
@click.option("--since", type=TIME, default=None, help="From this time (inclusive).")
@click.option("--until", type=TIME, default=None, help="Up to this time (exclusive).")
@click.option("--format", "fmt", type=FORMAT, default="jsonl", show_default=True)
@click.option("-o", "--out", "out_path", default="-", show_default=True,
              help="Output file ('-' for stdout): replaced atomically, mode 0600; a symlink is refused.")
def export(db_path, config_path, since, until, fmt, out_path):
    """Entries in [--since, --until) as JSONL or CSV: no holder details (only whether sealed)."""
    with _open(db_path, config_path) as log:
        rows = log.entries(None if since is None else since * 1000, None if until is None else until * 1000)
        if out_path == "-":
            n = run_guarded(write_export, rows, sys.stdout, fmt)
        else:
            with output_file(out_path) as fh:
                n = run_guarded(write_export, rows, fh, fmt)
    click.echo(f"{n} entries exported", err=True)


# ---------------------------------------------------------------- purge


@log_group.command()
@_db_option
@click.option("--retention-days", type=click.IntRange(0, 36500), default=21, show_default=True,
              help="Keep synced entries this many days; unsynced entries are always kept.")
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@click.option("--json", "as_json", is_flag=True)
def purge(db_path, config_path, retention_days, dry_run, as_json):
    """Delete synced entries older than the retention (keeping the chain verifiable)."""
    with _open(db_path, config_path) as log:
        r = run_guarded(log.purge, retention_days, dry_run=dry_run)
    if as_json:
        click.echo(json_line({"purged": r.purged, "dry_run": r.dry_run, "anchor_seq": r.anchor_seq,
                              "cutoff": iso_ms(r.cutoff_ms), "kept_unsynced": r.kept_unsynced}))
    else:
        verb = "would purge" if dry_run else "purged"
        click.echo(f"{verb} {r.purged} synced entries older than {retention_days} days "
                   f"(before {iso_ms(r.cutoff_ms)}); chain anchor seq {r.anchor_seq}; "
                   f"unsynced kept: {r.kept_unsynced}")


# ---------------------------------------------------------------- verify


@log_group.command("verify")
@_db_option
@click.option("--file", "file_path", type=click.Path(dir_okay=False), default=None,
              help="Check an export file instead of the database.")
@click.option("--format", "fmt", type=FORMAT, default="jsonl", show_default=True, help="Format of --file.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--lang", type=click.Choice(i18n.LANGS), default=None, help="vi (default) or en.")
def verify_cmd(db_path, config_path, file_path, fmt, as_json, lang):
    """Check the hash chain (and the database's integrity). Exit 0 intact, 1 broken, 2 unusable."""
    lang = lang or i18n.default_lang()
    integrity = None
    if file_path is not None:
        try:
            fh = open(file_path, encoding="utf-8", newline="")  # noqa: SIM115 - closed by the `with` below
        except OSError as exc:
            fail_on(exc)
        with fh:
            report = run_guarded(lambda: verify_chain(read_export(fh, fmt)))
    else:
        with _open(db_path, config_path) as log:
            integrity = run_guarded(log.integrity_check)
            report = run_guarded(log.verify)
    ok = report.ok and integrity in (None, "ok")
    if as_json:
        click.echo(json_line({"ok": ok, "integrity": integrity, "checked": report.checked,
                              "first_seq": report.first_seq, "last_seq": report.last_seq,
                              "anchor_seq": report.anchor_seq, "bad_seq": report.bad_seq,
                              "problem": report.problem or None, "detail": report.detail or None}))
    elif ok:
        t = lambda key, **kw: i18n.t("log_verify." + key, lang, **kw)  # noqa: E731
        line = t("ok", n=report.checked, first=report.first_seq, last=report.last_seq) if report.checked \
            else t("ok_empty")
        if report.anchor_seq is not None:
            line += t("anchor", seq=report.anchor_seq)
        click.echo(line + (t("integrity_ok") if integrity else ""))
    else:
        t = lambda key, **kw: i18n.t("log_verify." + key, lang, **kw)  # noqa: E731
        if integrity not in (None, "ok"):
            click.echo(t("integrity_failed", result=escape(integrity[:500])))
        if not report.ok:
            click.echo(t("broken", seq=report.bad_seq, problem=i18n.t(f"chain_problem.{report.problem}", lang),
                         n=report.checked,
                         detail=escape(report.detail)))
    sys.exit(EXIT_ACCEPT if ok else EXIT_REJECT)
