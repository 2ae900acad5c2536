"""`checkpoint demo`: the whole appliance without hardware (docs/cli.md#checkpoint-demo)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from scanner.base import i18n
from scanner.cli.common import LANG, run_guarded
from scanner.demo.main import run_demo


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Keep keys, cards, video, config and state here (default: a temporary directory).")
@click.option("--lang", type=LANG, default=None, help="vi (default) or en.")
@click.option("--duration", type=click.FloatRange(1, 86400), default=None, metavar="SECONDS",
              help="Run this long, playing the camera video again and again (default: once through).")
@click.option("--speed", type=click.FloatRange(0.25, 20), default=1.0, show_default=True,
              help="Play the simulated camera this many times faster.")
@click.option("--open", "open_browser", is_flag=True,
              help="Show the kiosk screen in this machine's browser ($BROWSER, else the desktop's). On a terminal "
                   "the kiosk stays up after the summary until Ctrl-C.")
def demo(out_dir, lang, duration, speed, open_browser):
    """The whole appliance without hardware: server, simulated camera, virtual lights, sync, summary."""
    sys.exit(run_guarded(run_demo, Path(out_dir) if out_dir else None, lang or i18n.default_lang(), click.echo,
                         duration=duration, speed=speed, open_browser=open_browser))
