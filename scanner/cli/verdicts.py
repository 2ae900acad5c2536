"""What the commands that verify cards share (`checkpoint verify`, `checkpoint scan`): the trust
options and the one human line a verdict is printed as.
"""
from __future__ import annotations

import datetime as dt

import click

from scanner.base import i18n
from scanner.base.safetext import escape
from scanner.cards.trust import TrustStore, load_root, load_trust
from scanner.cards.verdict import Verdict
from scanner.cli.common import TIME, fail, run_guarded

_TRUST_OPTIONS = (
    click.option("--trust", "trust_paths", multiple=True, metavar="PATH",
                 help="Issuer public key (PEM), certificate (PEM/DER) or signed trust bundle (JSON). Repeatable."),
    click.option("--trust-root", "roots", multiple=True, metavar="PEM",
                 help="Root public key that trust bundles must be signed with. Repeatable."),
    click.option("--at", "at", type=TIME, default=None, help="Verify as of this time instead of now."),
    click.option("--clock-skew", type=click.IntRange(0, 86400), default=300, show_default=True,
                 help="Seconds of tolerance for exp/nbf."),
)


def trust_options(fn):
    """--trust, --trust-root, --at and --clock-skew, for every command that verifies cards."""
    for option in reversed(_TRUST_OPTIONS):
        fn = option(fn)
    return fn


def load_cli_trust(trust_paths, roots) -> TrustStore:
    """The TrustStore that --trust and --trust-root name; one error line and exit 2 without one."""
    if not trust_paths:
        fail(i18n.text("cli_error.no_trust"))
    root_keys = [run_guarded(load_root, p) for p in roots]
    return run_guarded(load_trust, trust_paths, root_keys)


def date_utc(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d")


def human_verdict(verdict: Verdict, lang: str) -> str:
    """One line for a person: decision, reason in words, and the holder when the card is authentic."""
    parts = [f"{verdict.shown.mark} {i18n.t('decision.' + verdict.shown, lang)}",
             f"{i18n.t('reason.' + verdict.reason, lang)} ({verdict.reason})"]
    card = verdict.card
    if card is not None:
        h = card.holder
        parts.append(f"{escape(h.name) or '—'} ({i18n.t('label.born', lang)} {h.birth_year or '?'})")
        if card.cert_type is not None:  # health certificates (HC1, SHC)
            parts.append(i18n.t("health." + card.cert_type, lang))
        parts.append(f"{i18n.t('label.issuer', lang)} {escape(card.issuer)}")
        if card.expires_at is None:  # an SHC without exp never expires
            parts.append(i18n.t("health.no_expiry", lang))
        else:
            parts.append(f"{i18n.t('label.expires', lang)} {date_utc(card.expires_at)}")
    if verdict.detail and not verdict.accepted and lang == "en":  # the verifier's technical words are English
        parts.append(escape(verdict.detail))
    return " · ".join(parts)
