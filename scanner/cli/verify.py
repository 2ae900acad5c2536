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
from scanner.cli.common import EXIT_ACCEPT, EXIT_REJECT, EXIT_USAGE, LANG, fail, run_guarded
from scanner.cli.verdicts import human_verdict, load_cli_trust, trust_options


@click.command()
@trust_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--lang", type=LANG, default=None, help="Language of the human line (default vi).")
@click.option("--image", "images", multiple=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="A photo or scan of the card (PNG, JPEG, WebP...): its QR code is read and verified. Repeatable.")
@click.argument("texts", nargs=-1, metavar="[TEXT|-]...")
def verify(trust_paths, roots, at, clock_skew, as_json, lang, images, texts):
    """Verify decoded QR TEXT (or '-' to read it from stdin). Exit 0 accept, 1 reject, 2 error.

    Several TEXTs (or several stdin lines) are the parts of one multi-part SMART Health Card
    (shc:/i/n/...), in any order. --image FILE reads the code from a picture of the card."""
    store = load_cli_trust(trust_paths, roots)
    for note in store.notes:
        click.echo(f"checkpoint: warning: {escape(note)}", err=True)
    lang = lang or i18n.default_lang()
    if images:
        if texts:
            fail(i18n.text("cli_error.image_and_text"))
        sys.exit(_verify_images(images, store, at if at is not None else time.time(), clock_skew, as_json, lang))
    texts = list(texts) or ["-"]
    if "-" in texts:
        if len(texts) > 1:
            fail(i18n.text("cli_error.stdin_and_text"))
        data = sys.stdin.buffer.read(64 * 1024)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
        text = text.removesuffix("\n").removesuffix("\r")
        texts = _shc_part_lines(text) or [text]
    now = at if at is not None else time.time()
    if len(texts) > 1 and not all(t.strip(" \t\r\n").startswith(SCHEME) for t in texts):
        fail(i18n.text("cli_error.several_texts", scheme=SCHEME))
    verdict = verify_card(texts, store, now, clock_skew=clock_skew)
    if as_json:
        click.echo(json_line(verdict.to_dict()))
    else:
        click.echo(human_verdict(verdict, lang))
    sys.exit(EXIT_ACCEPT if verdict.accepted else EXIT_REJECT)


def _verify_images(images, store, now: float, clock_skew: int, as_json: bool, lang: str) -> int:
    """Each picture's card (its codes: one card, or the parts of one multi-part SHC; else each code
    on its own): one line each, named by the file when there are several. The worst exit status."""
    # deferred: decoding pictures needs OpenCV, which verifying a text never loads
    from hardware.decode import make_decoder, scan_file
    decoder = run_guarded(make_decoder, "auto")
    status = EXIT_ACCEPT
    for path in images:
        shown = f"{escape(path)}: " if len(images) > 1 else ""
        result = scan_file(path, decoder)
        if result.error or not result.codes:
            why = (f"{result.problem(lang)} (image_unreadable)" if result.problem is not None
                   else result.error or i18n.t("label.no_code", lang))
            click.echo(f"checkpoint: error: {escape(path)}: {escape(why)}", err=True)
            status = EXIT_USAGE
            continue
        codes = list(result.codes)
        cards = [codes] if len(codes) == 1 or all(c.startswith(SCHEME) for c in codes) else [[c] for c in codes]
        for parts in cards:
            verdict = verify_card(parts, store, now, clock_skew=clock_skew)
            if as_json:
                click.echo(json_line({**verdict.to_dict(), "image": path}))
            else:
                click.echo(shown + human_verdict(verdict, lang))
            if not verdict.accepted and status == EXIT_ACCEPT:
                status = EXIT_REJECT
    return status


def _shc_part_lines(text: str) -> list[str] | None:
    """The lines of stdin text if it is several lines that are all SHC texts (the parts of one
    multi-part card), else None: any other text is verified exactly as read."""
    lines = [line.strip(" \t\r") for line in text.split("\n")]
    lines = [line for line in lines if line]
    if len(lines) >= 2 and all(line.startswith(SCHEME) for line in lines):
        return lines
    return None
