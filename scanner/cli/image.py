"""`checkpoint image apply-card` and `checkpoint image show-error`: the SD-card image's boot steps,
thin wrappers over scanner.appliance.firstboot (docs/raspberry-pi.md#what-runs-at-boot)."""
from __future__ import annotations

import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click

from hardware.feedback import DeviceState
from hardware.gpio_feedback import open_feedback
from scanner.appliance import firstboot, udev
from scanner.appliance.config import ConfigError, load
from scanner.appliance.configschema import listen_address
from scanner.appliance.schema import DEFAULT_LISTEN
from scanner.base import i18n
from scanner.base.fsutil import atomic_write
from scanner.base.safetext import escape
from scanner.cli.common import EXIT_USAGE, fail, fail_on, run_guarded


@click.group("image")
def image_group() -> None:
    """The SD-card image's boot steps: apply the card's configuration files, show why not."""


@image_group.command("apply-card")
@click.option("--boot", "boot_dir", required=True, type=click.Path(file_okay=False),
              help="The card's boot partition (/boot/firmware).")
@click.option("--config-dir", required=True, type=click.Path(file_okay=False),
              help="Where the files go (/etc/checkpoint).")
@click.option("--errors", "errors_path", type=click.Path(dir_okay=False), default=None,
              help="On a problem, write the report checkpoint-config-error.service shows (JSON).")
@click.option("--udev-rules", "rules_path", type=click.Path(dir_okay=False), default=None,
              help="Write udev rules for the installed config's [udev] extra_readers here, and apply them.")
@click.option("--lang", type=click.Choice(i18n.LANGS), default=None, help="vi (default) or en.")
def apply_card(boot_dir, config_dir, errors_path, rules_path, lang):
    """Install checkpoint.toml, trust-root.pem and enroll.txt from the card, all or none. Exit 2 if
    they were not installed (each problem on its own line, as `config check` prints it)."""
    lang = lang or i18n.default_lang()
    card = None
    try:
        card = firstboot.read_card(boot_dir, lang)
        result = (firstboot.apply(card, config_dir, lang) if card.files
                  else firstboot.ApplyResult("none", recovered=firstboot.recover(config_dir)))
    except firstboot.CardConfigError as exc:
        for line in exc.problems:
            click.echo(f"checkpoint: error: {escape(line)}", err=True)
        click.echo(i18n.t("card_config.refused", lang, n=len(exc.problems)), err=True)
        if errors_path:
            report = firstboot.error_report(exc.problems, card, config_dir)
            run_guarded(atomic_write, errors_path, (json.dumps(report, ensure_ascii=False) + "\n").encode("utf-8"),
                        0o644)
        sys.exit(EXIT_USAGE)
    except OSError as exc:
        fail_on(exc)
    if result.recovered:
        click.echo(i18n.t("card_config.recovered", lang))
    if result.outcome == "applied":
        click.echo(i18n.t("card_config.applied", lang, files=", ".join(result.installed)))
    else:
        click.echo(i18n.t(f"card_config.{result.outcome}", lang))
    if errors_path:
        Path(errors_path).unlink(missing_ok=True)
    if rules_path:
        _install_reader_rules(Path(config_dir) / firstboot.CONFIG_NAME, Path(rules_path))


def _install_reader_rules(config_path: Path, rules_path: Path) -> None:
    """udev rules for the config's extra readers (none: no file), applied to devices present."""
    extra: tuple[str, ...] = ()
    if config_path.exists():
        try:
            extra = load(config_path).udev.extra_readers
        except ConfigError as exc:  # applied earlier and valid then; say so, and go on without
            click.echo(f"checkpoint: warning: {escape(str(exc))}", err=True)
    if not extra:
        rules_path.unlink(missing_ok=True)
        return
    rules_path.parent.mkdir(parents=True, exist_ok=True)
    run_guarded(udev.install, run_guarded(udev.rules, extra), rules_path)
    click.echo(f"udev: {escape(str(rules_path))}: {', '.join(extra)}")


@image_group.command("show-error")
@click.option("--errors", "errors_path", required=True, type=click.Path(dir_okay=False),
              help="The report `image apply-card --errors` wrote.")
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, help="HOST:PORT of the page (the kiosk's).")
def show_error(errors_path, listen):
    """Show refused card files: the LEDs alternate red and green, the page lists the problems.
    Runs until SIGTERM/SIGINT (then the LEDs go dark)."""
    try:
        report = json.loads(Path(errors_path).read_text(encoding="utf-8"))
    except OSError as exc:
        fail_on(exc)
    except ValueError as exc:
        fail(f"{errors_path}: {exc}")
    address, problem = listen_address()(listen)
    if problem:
        fail(f"--listen: {problem}")
    page = firstboot.error_page(report).encode("utf-8")
    fb = run_guarded(firstboot.error_feedback, report)
    device = open_feedback(fb) if fb is not None else None
    if device is not None:
        device.set_state(DeviceState.ERROR)
    server = ThreadingHTTPServer(address, _page_handler(page))

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for line in report.get("problems", []):
        click.echo(f"checkpoint: error: {escape(line)}", err=True)
    click.echo(f"showing {len(report.get('problems', []))} problems on http://{address[0]}:{address[1]}/ "
               f"and {'the LEDs' if device is not None else 'no LEDs (no wiring known)'}", err=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        if device is not None:
            device.close()


def _page_handler(page: bytes):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.split("?")[0] not in ("/", "/index.html"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, format, *args):
            return  # one line per request is noise in the journal

    return Handler
