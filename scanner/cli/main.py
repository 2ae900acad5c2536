"""The `checkpoint` command: thin wrappers over the library (docs/cli.md is the contract).

Exit status: 0 accept / success, 1 reject, 2 usage or configuration error (one line on stderr).
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import sys
import time
from pathlib import Path

import click

from scanner import __version__
from scanner.base import i18n
from scanner.base.errors import CheckpointError, UsageError
from scanner.base.fsutil import AtomicFile, write_output
from scanner.base.safetext import escape, json_line
from scanner.cards.verdict import Verdict

EXIT_ACCEPT = 0
EXIT_REJECT = 1
EXIT_USAGE = 2


def parse_time(value: str) -> int:
    """Epoch seconds from an integer or an ISO 8601 date/time (UTC unless it says otherwise)."""
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{value!r} is neither epoch seconds nor an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return int(moment.timestamp())


class TimeParam(click.ParamType):
    name = "ISO8601|EPOCH"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return parse_time(value)
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


TIME = TimeParam()
LANG = click.Choice(i18n.LANGS)


def fail(message: str) -> None:
    """One line on stderr, exit status 2."""
    click.echo(f"checkpoint: error: {escape(message)}", err=True)
    sys.exit(EXIT_USAGE)


def run_guarded(fn, *args, **kwargs):
    """Call library code; a CheckpointError or unreadable file becomes one line and exit 2."""
    try:
        return fn(*args, **kwargs)
    except CheckpointError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))


@contextlib.contextmanager
def output_file(path: str, *, encoding: str | None = "utf-8"):
    """A file a person named (-o/--out), mode 0600: written atomically and never through a
    symlink (fsutil.AtomicFile.output); its errors become one line and exit 2."""
    out = run_guarded(AtomicFile.output, path, 0o600, encoding=encoding)
    try:
        yield out.file
        run_guarded(out.commit)
    finally:
        out.abort()


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


def load_cli_trust(trust_paths, roots):
    """The TrustStore that --trust and --trust-root name; one error line and exit 2 without one."""
    from scanner.cards.trust import load_root, load_trust

    if not trust_paths:
        fail("no trust given: use --trust PATH (issuer key, certificate or bundle)")
    root_keys = [run_guarded(load_root, p) for p in roots]
    return run_guarded(load_trust, trust_paths, root_keys)


def date_utc(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d")


def human_verdict(verdict: Verdict, lang: str) -> str:
    """One line for a person: decision, reason in words, and the holder when the card is authentic."""
    mark = "✔" if verdict.accepted else "✘"
    parts = [f"{mark} {i18n.t('decision.' + verdict.decision, lang)}",
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
    if verdict.detail and not verdict.accepted:
        parts.append(escape(verdict.detail))
    return " · ".join(parts)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="checkpoint")
def main() -> None:
    """checkpoint-edge: verify signed personal QR cards offline at checkpoints."""


# ---------------------------------------------------------------- verify

@main.command()
@trust_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--lang", type=LANG, default=None, help="Language of the human line (default vi).")
@click.argument("texts", nargs=-1, metavar="[TEXT|-]...")
def verify(trust_paths, roots, at, clock_skew, as_json, lang, texts):
    """Verify decoded QR TEXT (or '-' to read it from stdin). Exit 0 accept, 1 reject, 2 error.

    Several TEXTs (or several stdin lines) are the parts of one multi-part SMART Health Card
    (shc:/i/n/...), in any order."""
    from scanner.cards.formats.shc import verify_parts
    from scanner.cards.verifier import verify as verify_text

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
    if len(texts) == 1:
        verdict = verify_text(texts[0], store, now, clock_skew=clock_skew)
    else:
        if not all(t.strip(" \t\r\n").startswith("shc:/") for t in texts):
            fail("several TEXTs must be the parts of one multi-part SMART Health Card (shc:/i/n/...)")
        verdict = verify_parts(texts, store, now, clock_skew=clock_skew)
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
    if len(lines) >= 2 and all(line.startswith("shc:/") for line in lines):
        return lines
    return None


# ---------------------------------------------------------------- scan-image

@main.command("scan-image")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file.")
@click.option("--decoder", default="auto", show_default=True, help="auto, zxing or pyzbar.")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def scan_image(as_json, decoder, files):
    """Decode every QR code in image FILES (PNG, JPEG, WebP...). Exit 2 if a file is unreadable."""
    from hardware.decode import make_decoder, scan_file

    dec = run_guarded(make_decoder, decoder)
    status = 0
    for path in files:
        result = scan_file(path, dec)
        if result.error:
            status = EXIT_USAGE
        if as_json:
            click.echo(json_line(result.to_dict()))
        elif result.error:
            click.echo(f"{escape(path)}: error: {escape(result.error)}", err=True)
        elif not result.codes:
            click.echo(f"{escape(path)}: ({i18n.t('label.no_code')})")
        else:
            for code in result.codes:
                click.echo(f"{escape(path)}: {escape(code)}")
    sys.exit(status)


# ---------------------------------------------------------------- issuer

@main.group()
def issuer() -> None:
    """Issuer tools: keys, cards, trust bundles, revocations (for pilots, demo and tests)."""


@issuer.command()
@click.option("--alg", type=click.Choice(["EdDSA", "ES256", "PS256"]), default="EdDSA", show_default=True)
@click.option("--out", "prefix", required=True, metavar="PREFIX",
              help="Writes PREFIX.key (private, mode 0600) and PREFIX.pub (PEM public key).")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def keygen(alg, prefix, force):
    """Make a key pair for signing cards (EdDSA/ES256) or bundles (EdDSA root)."""
    from scanner.cards import keys

    priv_path, pub_path = Path(prefix + ".key"), Path(prefix + ".pub")
    for p in (priv_path, pub_path):
        if p.exists() and not force:
            fail(f"{p} exists (use --force to overwrite)")
    key = run_guarded(keys.generate, alg)
    run_guarded(keys.write_private_key, priv_path, key)
    run_guarded(write_output, pub_path, keys.public_pem(key.public_key()), 0o644)
    kid = base64.b64encode(keys.kid_of(key.public_key())).decode()
    click.echo(json_line({"alg": alg, "kid": kid, "private": str(priv_path), "public": str(pub_path)}))


@issuer.command()
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False), help="Issuer private key (PEM).")
@click.option("--issuer", "issuer_id", required=True, help='Issuer id, e.g. "VN-HUE".')
@click.option("--name", required=True, help="Holder's full name (Unicode).")
@click.option("--birth-date", required=True, help="YYYY-MM-DD, YYYY-MM or YYYY.")
@click.option("--id-masked", default=None, help='Masked national id, e.g. "*********123".')
@click.option("--status", default=None, help="Status text, e.g. vaccinated.")
@click.option("--last-dose", default=None, help="Date of the last dose, YYYY-MM-DD.")
@click.option("--issued-at", type=TIME, default=None, help="Default: now.")
@click.option("--not-before", type=TIME, default=None)
@click.option("--expires", type=TIME, default=None, help="Default: --valid-days after issue.")
@click.option("--valid-days", type=click.IntRange(1, 36600), default=365, show_default=True)
@click.option("--card-id", default=None, help="32 hex digits (default: random).")
@click.option("--compress", is_flag=True, help="zlib-compress (only pays off for large cards).")
@click.option("--png", "png_path", type=click.Path(dir_okay=False), default=None, help="Write the QR code as PNG.")
@click.option("--svg", "svg_path", type=click.Path(dir_okay=False), default=None,
              help="Write a printable card (SVG) with the holder's name.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (text, card_id, kid) instead of the text.")
def issue(key_path, issuer_id, name, birth_date, id_masked, status, last_dose, issued_at, not_before,
          expires, valid_days, card_id, compress, png_path, svg_path, as_json):
    """Sign a CK1 card and print its QR text; optionally write PNG and printable SVG."""
    from scanner.cards import issuer as iss
    from scanner.cards import keys
    from scanner.cards.verdict import Holder

    key = run_guarded(keys.load_private_key, key_path)
    issued_at = int(time.time()) if issued_at is None else issued_at
    expires = issued_at + valid_days * 86400 if expires is None else expires
    if card_id is None:
        cid = iss.new_card_id()
    else:
        try:
            cid = bytes.fromhex(card_id)
        except ValueError:
            cid = b""
        if len(cid) != 16:
            fail("--card-id must be 32 hex digits")
    spec = iss.CardSpec(issuer_id, Holder(name, birth_date, id_masked, status, last_dose),
                        issued_at, expires, not_before, cid)
    text = run_guarded(iss.issue, spec, key, compress=compress)
    if png_path or svg_path:
        from scanner.cards import render
        if png_path:
            run_guarded(render.qr_png, text, png_path)
        if svg_path:
            run_guarded(render.card_svg, text, name=name, birth_date=birth_date, issuer=issuer_id,
                        expires_at=expires, card_id_hex=cid.hex(), path=svg_path)
    if as_json:
        kid = base64.b64encode(keys.kid_of(key.public_key())).decode()
        click.echo(json_line({"text": text, "card_id": cid.hex(), "kid": kid, "expires_at": expires}))
    else:
        click.echo(text)


def _load_root_private(path):
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from scanner.cards import keys
    key = run_guarded(keys.load_private_key, path)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        fail(f"{path}: the bundle root key must be Ed25519 (issuer keygen --alg EdDSA)")
    return key


def _read_card_ids(cards, cards_file) -> list[bytes]:
    texts = list(cards)
    if cards_file:
        try:
            texts += Path(cards_file).read_text().split()
        except OSError as exc:
            fail(f"{cards_file}: {exc.strerror}")
    out = []
    for h in texts:
        try:
            raw = bytes.fromhex(h)
        except ValueError:
            raw = b""
        if len(raw) != 16:
            fail(f"revoked card id {h[:40]!r} is not 32 hex digits")
        out.append(raw)
    return out


def _read_kids(kids) -> list[bytes]:
    out = []
    for k in kids:
        try:
            out.append(base64.b64decode(k, validate=True))
        except (binascii.Error, ValueError):
            fail(f"kid {k!r} is not base64")
    return out


def _write(out, data: bytes) -> None:
    if out == "-":
        sys.stdout.buffer.write(data)
    else:
        run_guarded(write_output, out, data, 0o644)


@issuer.command()
@click.option("--root-key", required=True, type=click.Path(dir_okay=False), help="Root private key (Ed25519 PEM).")
@click.option("--key", "key_specs", multiple=True, required=True, metavar="ISSUER=PATH",
              help="An issuer's public key or certificate, e.g. VN-HUE=hue.pub. Repeatable.")
@click.option("--formats", default=None, help="Comma-separated formats the keys may sign (default: any).")
@click.option("--version", "version", type=click.IntRange(1), required=True, help="Must grow with every bundle.")
@click.option("--valid-days", type=click.IntRange(1, 3660), default=30, show_default=True)
@click.option("--revoke-card", "cards", multiple=True, metavar="HEX")
@click.option("--revoked-cards", "cards_file", type=click.Path(dir_okay=False), default=None,
              help="File of card ids (hex), whitespace-separated.")
@click.option("--revoke-kid", "kids", multiple=True, metavar="B64")
@click.option("-o", "--out", default="-", show_default=True, help="Output file ('-' for stdout).")
def bundle(root_key, key_specs, formats, version, valid_days, cards, cards_file, kids, out):
    """Build and sign a trust bundle."""
    from scanner.cards import bundle as bundlemod
    from scanner.cards.trust import key_from_file

    root = _load_root_private(root_key)
    fmts = frozenset(f.strip() for f in formats.split(",") if f.strip()) if formats else None
    entries = []
    for spec in key_specs:
        issuer_id, sep, path = spec.partition("=")
        if not sep or not issuer_id or not path:
            fail(f"--key {spec!r}: expected ISSUER=PATH")
        entries.extend(run_guarded(key_from_file, path, issuer_id, fmts))
    now = int(time.time())
    data = bundlemod.make_bundle(root, version=version, issued_at=now, expires_at=now + valid_days * 86400,
                                 keys=entries, revoked_cards=_read_card_ids(cards, cards_file),
                                 revoked_kids=_read_kids(kids))
    _write(out, data)


@issuer.command()
@click.option("--bundle", "bundle_path", required=True, type=click.Path(dir_okay=False), help="Current bundle.")
@click.option("--root-key", required=True, type=click.Path(dir_okay=False), help="Root private key (Ed25519 PEM).")
@click.option("--card", "cards", multiple=True, metavar="HEX", help="Card id to revoke. Repeatable.")
@click.option("--cards-file", type=click.Path(dir_okay=False), default=None, help="File of card ids (hex).")
@click.option("--kid", "kids", multiple=True, metavar="B64", help="Issuer key id to revoke. Repeatable.")
@click.option("--valid-days", type=click.IntRange(1, 3660), default=30, show_default=True)
@click.option("-o", "--out", default="-", show_default=True, help="Output file ('-' for stdout).")
def revoke(bundle_path, root_key, cards, cards_file, kids, valid_days, out):
    """Add revocations to a bundle and re-sign it with the next version."""
    from scanner.cards import bundle as bundlemod

    root = _load_root_private(root_key)
    new_cards = _read_card_ids(cards, cards_file)
    new_kids = _read_kids(kids)
    if not new_cards and not new_kids:
        fail("nothing to revoke: give --card, --cards-file or --kid")
    data = run_guarded(Path(bundle_path).read_bytes)
    old = run_guarded(bundlemod.open_bundle, data, [root.public_key()])
    now = int(time.time())
    new = bundlemod.make_bundle(root, version=old.version + 1, issued_at=now,
                                expires_at=now + valid_days * 86400, keys=old.keys,
                                revoked_cards=list(old.revoked_cards) + new_cards,
                                revoked_kids=set(old.revoked_kids) | set(new_kids))
    _write(out, new)
    click.echo(f"bundle version {old.version + 1}: {len(set(new_cards))} card(s), "
               f"{len(set(new_kids))} kid(s) added", err=True)


@issuer.command("server-credential")
@click.option("--root-key", required=True, type=click.Path(dir_okay=False), help="Root private key (Ed25519 PEM).")
@click.option("--server-url", "urls", multiple=True, required=True,
              help="A URL devices reach the server at (https://HOST[:PORT]); repeatable. A device enrolls only "
                   "with a server whose credential names the URL it was given.")
@click.option("--sealing-pub", required=True, type=click.Path(dir_okay=False),
              help="The server's sealing public key (X25519 PEM: `checkpoint server keys --out DIR`).")
@click.option("--pull-pub", default=None, type=click.Path(dir_okay=False),
              help="The server's pull public key (Ed25519 PEM), if it pulls from devices.")
@click.option("--server-id", default=None, help="A short name for the server (default: its host name).")
@click.option("--serial", type=click.IntRange(1), default=1, show_default=True,
              help="Must grow with every credential for this server (devices refuse a lower one).")
@click.option("-o", "--out", default="-", show_default=True, help="Output file ('-' for stdout).")
def server_credential(root_key, urls, sealing_pub, pull_pub, server_id, serial, out):
    """Sign a credential for a central server: its URLs and keys, vouched for by the root."""
    from scanner.cards.trust import load_root
    from scanner.store import sealing
    from sync.wire import (
        credential,  # deferred: the sync stack is not loaded for the other commands
    )

    root = _load_root_private(root_key)
    seal = run_guarded(sealing.load_public_key, Path(sealing_pub))
    pull = run_guarded(load_root, pull_pub) if pull_pub is not None else None  # one Ed25519 public key
    data = run_guarded(credential.issue, root, urls=urls, sealing_key=seal, pull_key=pull, server_id=server_id,
                       serial=serial, issued_at=int(time.time()))
    _write(out, data)


# ---------------------------------------------------------------- demo

@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Keep keys, cards, video, config and state here (default: a temporary directory).")
@click.option("--lang", type=LANG, default=None, help="vi (default) or en.")
@click.option("--duration", type=click.FloatRange(1, 86400), default=None, metavar="SECONDS",
              help="Run this long, playing the camera video again and again (default: once through).")
@click.option("--speed", type=click.FloatRange(0.25, 20), default=1.0, show_default=True,
              help="Play the simulated camera this many times faster.")
def demo(out_dir, lang, duration, speed):
    """The whole appliance without hardware: server, simulated camera, virtual lights, sync, summary."""
    from scanner.demo.main import run_demo

    sys.exit(run_guarded(run_demo, Path(out_dir) if out_dir else None, lang or i18n.default_lang(), click.echo,
                         duration=duration, speed=speed))


if __name__ == "__main__":  # pragma: no cover
    main()
from scanner.cli import log as cli_log  # noqa: E402,F401  (registers `checkpoint log`)
from scanner.cli import run as cli_run  # noqa: E402,F401  (registers run, config, doctor, udev-rules, server enroll-qr)
from scanner.cli import scan as cli_scan  # noqa: E402,F401  (registers `checkpoint scan`)
from scanner.cli import sync as cli_sync  # noqa: E402,F401  (registers sync, server, provision)
