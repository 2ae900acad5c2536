"""`checkpoint server user ...` (console accounts, for the first administrator and for recovery) and
`checkpoint server audit ...` (the audit trail's chain checked from the command line). Every change
is recorded in the audit trail as the Unix user who ran it (cli:USER)."""
from __future__ import annotations

import getpass
import sys
from pathlib import Path

import click
import segno

from scanner.base import i18n
from scanner.base.safetext import escape, json_line
from scanner.base.timeutil import now_ms
from scanner.cli.common import run_guarded
from scanner.cli.server import db_url_option, lang_option, open_server_storage
from scanner.store.entry import iso_ms
from sync.server.console import accounts, audit, roles
from sync.server.console.openerclient import OpenerClient
from sync.server.console.store import ConsoleStore


def _store(db_url: str) -> ConsoleStore:
    return run_guarded(ConsoleStore, open_server_storage(db_url))


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def _password(from_stdin: bool) -> str | None:
    """The password read from standard input (one line), or None: a random one is made."""
    if not from_stdin:
        return None
    line = sys.stdin.readline().rstrip("\r\n")
    return run_guarded(accounts.check_password, line)


def _t(key: str, lang: str | None, **params: object) -> str:
    return i18n.t("server_users." + key, lang, **params)


def _show(new: accounts.NewSecrets, password_given: bool, lang: str | None) -> None:
    click.echo(f"{_t('account', lang)}: {new.username}")
    if not password_given:
        click.echo(f"{_t('password', lang)}: {new.password}")
    if new.totp_secret:
        click.echo(f"{_t('totp_secret', lang)}: {new.totp_secret}")
        click.echo(f"{_t('totp_uri', lang)}: {new.totp_uri}")
        if sys.stdout.isatty():
            segno.make(new.totp_uri, error="m").terminal(compact=True)
    click.echo(_t("shown_once", lang), err=True)


@click.group("user")
def user_group() -> None:
    """Console accounts: add, passwd, role, disable, enable, list."""


@user_group.command("add")
@db_url_option
@click.argument("username")
@click.option("--role", type=click.Choice(roles.ROLES), required=True)
@click.option("--checkpoint", "scope", multiple=True, help="An officer's checkpoint; repeat for several.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (else one is made).")
@lang_option
def user_add(db_url, username, role, scope, password_stdin, lang):
    """Add an account with a new TOTP secret (the first administrator is made this way)."""
    password = _password(password_stdin)
    new = run_guarded(accounts.add, _store(db_url), username, role, tuple(scope), actor=_actor(), now_ms=now_ms(),
                      password=password)
    _show(new, password is not None, lang)


@user_group.command("passwd")
@db_url_option
@click.argument("username")
@click.option("--keep-totp", is_flag=True, help="Keep the account's TOTP secret (default: a new one).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (else one is made).")
@lang_option
def user_passwd(db_url, username, keep_totp, password_stdin, lang):
    """Give an account a new password (and TOTP secret); its sessions end and its lock is lifted."""
    password = _password(password_stdin)
    new = run_guarded(accounts.reset, _store(db_url), username, actor=_actor(), now_ms=now_ms(), password=password,
                      new_totp=not keep_totp)
    _show(new, password is not None, lang)


@user_group.command("role")
@db_url_option
@click.argument("username")
@click.argument("role", type=click.Choice(roles.ROLES))
@click.option("--checkpoint", "scope", multiple=True, help="An officer's checkpoint; repeat for several.")
@lang_option
def user_role(db_url, username, role, scope, lang):
    """Change an account's role (an officer's checkpoints with it)."""
    run_guarded(accounts.set_role, _store(db_url), username, role, tuple(scope), actor=_actor(), now_ms=now_ms())
    click.echo(f"{username}: {i18n.t('console.role_' + role, lang)} ({role})")


@user_group.command("disable")
@db_url_option
@click.argument("username")
@lang_option
def user_disable(db_url, username, lang):
    """Disable an account (its sessions end at once)."""
    run_guarded(accounts.set_disabled, _store(db_url), username, True, actor=_actor(), now_ms=now_ms())
    click.echo(f"{username}: {_t('disabled', lang)}")


@user_group.command("enable")
@db_url_option
@click.argument("username")
@lang_option
def user_enable(db_url, username, lang):
    """Enable a disabled account again."""
    run_guarded(accounts.set_disabled, _store(db_url), username, False, actor=_actor(), now_ms=now_ms())
    click.echo(f"{username}: {_t('enabled', lang)}")


@user_group.command("list")
@db_url_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per account.")
@lang_option
def user_list(db_url, as_json, lang):
    """Every account with its role and state."""
    now = now_ms()
    for a in run_guarded(_store(db_url).accounts):
        state = "disabled" if a.disabled else ("locked" if a.locked_until_ms > now else "active")
        if as_json:
            click.echo(json_line({"username": a.username, "role": a.role, "scope": list(a.scope), "state": state}))
        else:
            click.echo(f"{a.username} {i18n.t('console.role_' + a.role, lang)} ({a.role}) {_t(state, lang)}"
                       + (f" [{', '.join(escape(s) for s in a.scope)}]" if a.scope else ""))


@click.group("audit")
def audit_group() -> None:
    """The console's audit trail: verify its chain, show it."""


def _anchors(opener_socket: str | None, anchors_file: str | None) -> list[tuple[int, bytes]]:
    if opener_socket:
        return run_guarded(OpenerClient(opener_socket).anchors)
    if anchors_file:
        out = []
        for line in run_guarded(Path(anchors_file).read_text, encoding="ascii").splitlines():
            seq, _, digest = line.strip("[] ").partition(",")
            out.append((int(seq), bytes.fromhex(digest.strip().strip('"'))))
        return out
    return []


@audit_group.command("verify")
@db_url_option
@click.option("--opener", "opener_socket", type=click.Path(dir_okay=False), default=None,
              help="Also compare with the anchors the opener keeps (its socket).")
@click.option("--anchors", "anchors_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Or with the opener's anchor file itself.")
@lang_option
def audit_verify(db_url, opener_socket, anchors_file, lang):
    """Recompute the audit trail's hash chain. Exit 0 if intact, 1 if it was tampered with."""
    anchors = _anchors(opener_socket, anchors_file)
    check = audit.verify(_store(db_url).audit_all(), anchors)
    if check.ok:
        click.echo(i18n.t("console.chain_ok", lang, n=check.records, anchors=len(anchors)))
        return
    click.echo(i18n.t("console.chain_broken", lang, seq=check.bad_seq, problem=check.problem, n=check.records))
    sys.exit(1)


@audit_group.command("show")
@db_url_option
@click.option("--last", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record.")
@lang_option
def audit_show(db_url, last, as_json, lang):
    """The latest records, oldest first."""
    for r in reversed(run_guarded(_store(db_url).audit_tail, last)):
        row = {"seq": r.seq, "at": iso_ms(r.at_ms), "actor": r.actor, "action": r.action, "case": r.case_number,
               "reason": r.reason, "target": r.target, "holders": r.holders, "detail": r.detail}
        if as_json:
            click.echo(json_line(row))
        else:
            click.echo(f"{r.seq} {row['at']} {escape(r.actor)} {r.action}"
                       + (f" {_t('case', lang)} {escape(r.case_number)}" if r.case_number else "")
                       + (f" ({escape(r.reason)})" if r.reason else "")
                       + (f" {escape(r.target)}" if r.target else "")
                       + (f" {_t('holders', lang)} {r.holders}" if r.holders else "") + f" {escape(r.detail)}")
