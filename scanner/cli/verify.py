"""`checkpoint verify`: one decoded QR text (or the parts of a multi-part SMART Health Card) against
the trust given on the command line (docs/cli.md#checkpoint-verify).
"""
from __future__ import annotations

import sys
import time

import click

from scanner.base import i18n
from scanner.base.safetext import escape, json_line
from scanner.cards.formats.shc import SCHEME
from scanner.cards.verifier import verify_card
from scanner.cli.common import EXIT_ACCEPT, EXIT_REJECT, LANG, fail
from scanner.cli.verdicts import human_verdict, load_cli_trust, trust_options


@click.command()
@trust_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--lang", type=LANG, default=None, help="Language of the human line (default vi).")
@click.argument("texts", nargs=-1, metavar="[TEXT|-]...")
def verify(trust_paths, roots, at, clock_skew, as_json, lang, texts):
    """Verify decoded QR TEXT (or '-' to read it from stdin). Exit 0 accept, 1 reject, 2 error.

    Several TEXTs (or several stdin lines) are the parts of one multi-part SMART Health Card
    (shc:/i/n/...), in any order."""
    store = load_cli_trust(trust_paths, roots)
    for note in store.notes:
        click.echo(f"checkpoint: warning: {escape(note)}", err=True)
    texts = list(texts) or ["-"]
    if "-" in texts:
        if len(texts) > 1:
            fail("'-' (read stdin) cannot be combined with TEXT arguments")
        data = sys.stdin.buffer.read(64 * 1024)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
        text = text.removesuffix("\n").removesuffix("\r")
        texts = _shc_part_lines(text) or [text]
    now = at if at is not None else time.time()
    if len(texts) > 1 and not all(t.strip(" \t\r\n").startswith(SCHEME) for t in texts):
        fail(f"several TEXTs must be the parts of one multi-part SMART Health Card ({SCHEME}i/n/...)")
    verdict = verify_card(texts, store, now, clock_skew=clock_skew)
    if as_json:
        click.echo(json_line(verdict.to_dict()))
    else:
        click.echo(human_verdict(verdict, lang or i18n.default_lang()))
    sys.exit(EXIT_ACCEPT if verdict.accepted else EXIT_REJECT)


def _shc_part_lines(text: str) -> list[str] | None:
    """The lines of stdin text if it is several lines that are all SHC texts (the parts of one
    multi-part card), else None: any other text is verified exactly as read."""
    lines = [line.strip(" \t\r") for line in text.split("\n")]
    lines = [line for line in lines if line]
    if len(lines) >= 2 and all(line.startswith(SCHEME) for line in lines):
        return lines
    return None
