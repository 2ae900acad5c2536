"""`checkpoint scan-image`: every QR code in image files, decoded (docs/cli.md#checkpoint-scan-image)."""
from __future__ import annotations

import sys

import click

from hardware.decode import ImageUnreadable, make_decoder, scan_file
from scanner.base import i18n
from scanner.base.safetext import escape, json_line
from scanner.cli.common import EXIT_USAGE, run_guarded


@click.command("scan-image")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file.")
@click.option("--decoder", default="auto", show_default=True, help="auto, zxing or pyzbar.")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def scan_image(as_json, decoder, files):
    """Decode every QR code in image FILES (PNG, JPEG, WebP...). Exit 2 if a file is unreadable."""
    lang = i18n.default_lang()
    dec = run_guarded(make_decoder, decoder)
    status = 0
    for path in files:
        result = scan_file(path, dec)
        if result.error:
            status = EXIT_USAGE
        if as_json:
            click.echo(json_line(result.to_dict()))
        elif result.error:
            words = result.problem(lang) if result.problem is not None else result.error
            click.echo(f"checkpoint: error: {escape(path)}: {escape(words)} ({ImageUnreadable.code})", err=True)
        elif not result.codes:
            click.echo(f"{escape(path)}: ({i18n.t('label.no_code', lang)})")
        else:
            for code in result.codes:
                click.echo(f"{escape(path)}: {escape(code)}")
    sys.exit(status)
