"""`checkpoint issuer ...`: keys, cards, trust bundles, revocations and server credentials, for
pilots, the demo and tests (docs/cli.md#checkpoint-issuer).
"""
from __future__ import annotations

import base64
import binascii
import time
from pathlib import Path

import click

from scanner.base import i18n
from scanner.base.fsutil import write_output
from scanner.base.safetext import json_line
from scanner.cards import bundle as bundlemod
from scanner.cards import issuer as iss
from scanner.cards import keys, render
from scanner.cards.trust import key_from_file, load_root
from scanner.cards.verdict import Holder
from scanner.cli.common import TIME, fail, fail_on, load_root_private, run_guarded, write_out
from scanner.store import sealing
from sync.site import credential as sitecred
from sync.wire import credential


@click.group()
def issuer() -> None:
    """Issuer tools: keys, cards, trust bundles, revocations (for pilots, demo and tests)."""


def _t(key: str, **params: object) -> str:
    """A text of the issuer tools in the reader's language ($CHECKPOINT_LANG, Vietnamese by default)."""
    return i18n.t("issuer." + key, None, **params)


@issuer.command()
@click.option("--alg", type=click.Choice(["EdDSA", "ES256", "PS256"]), default="EdDSA", show_default=True)
@click.option("--out", "prefix", required=True, metavar="PREFIX",
              help="Writes PREFIX.key (private, mode 0600) and PREFIX.pub (PEM public key).")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def keygen(alg, prefix, force):
    """Make a key pair for signing cards (EdDSA/ES256) or bundles (EdDSA root)."""
    priv_path, pub_path = Path(prefix + ".key"), Path(prefix + ".pub")
    for p in (priv_path, pub_path):
        if p.exists() and not force:
            fail(_t("exists", path=p))
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
            fail(_t("card_id"))
    spec = iss.CardSpec(issuer_id, Holder(name, birth_date, id_masked, status, last_dose),
                        issued_at, expires, not_before, cid)
    text = run_guarded(iss.issue, spec, key, compress=compress)
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


def _read_card_ids(cards, cards_file) -> list[bytes]:
    texts = list(cards)
    if cards_file:
        try:
            texts += Path(cards_file).read_text().split()
        except OSError as exc:
            fail_on(exc)
    out = []
    for h in texts:
        try:
            raw = bytes.fromhex(h)
        except ValueError:
            raw = b""
        if len(raw) != 16:
            fail(_t("revoked_card_id", value=repr(h[:40])))
        out.append(raw)
    return out


def _read_kids(kids) -> list[bytes]:
    out = []
    for k in kids:
        try:
            out.append(base64.b64decode(k, validate=True))
        except (binascii.Error, ValueError):
            fail(_t("kid", value=repr(k)))
    return out


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
@click.option("--format", "file_format", type=click.Choice(["1", "2"]), default="2", show_default=True,
              help="File format: 2 (streamed: devices check its revoked ids in chunks), 1 (JSON, for older devices).")
@click.option("-o", "--out", default="-", show_default=True, help="Output file ('-' for stdout).")
def bundle(root_key, key_specs, formats, version, valid_days, cards, cards_file, kids, file_format, out):
    """Build and sign a trust bundle."""
    root = load_root_private(root_key)
    fmts = frozenset(f.strip() for f in formats.split(",") if f.strip()) if formats else None
    entries = []
    for spec in key_specs:
        issuer_id, sep, path = spec.partition("=")
        if not sep or not issuer_id or not path:
            fail(_t("key_spec", value=repr(spec)))
        entries.extend(run_guarded(key_from_file, path, issuer_id, fmts))
    now = int(time.time())
    data = bundlemod.make_bundle(root, version=version, issued_at=now, expires_at=now + valid_days * 86400,
                                 keys=entries, revoked_cards=_read_card_ids(cards, cards_file),
                                 revoked_kids=_read_kids(kids), fmt=int(file_format))
    write_out(out, data)


@issuer.command()
@click.option("--bundle", "bundle_path", required=True, type=click.Path(dir_okay=False), help="Current bundle.")
@click.option("--root-key", required=True, type=click.Path(dir_okay=False), help="Root private key (Ed25519 PEM).")
@click.option("--card", "cards", multiple=True, metavar="HEX", help="Card id to revoke. Repeatable.")
@click.option("--cards-file", type=click.Path(dir_okay=False), default=None, help="File of card ids (hex).")
@click.option("--kid", "kids", multiple=True, metavar="B64", help="Issuer key id to revoke. Repeatable.")
@click.option("--valid-days", type=click.IntRange(1, 3660), default=30, show_default=True)
@click.option("--format", "file_format", type=click.Choice(["1", "2"]), default=None,
              help="File format of the new bundle (default: the current bundle's).")
@click.option("-o", "--out", default="-", show_default=True, help="Output file ('-' for stdout).")
def revoke(bundle_path, root_key, cards, cards_file, kids, valid_days, file_format, out):
    """Add revocations to a bundle and re-sign it with the next version."""
    root = load_root_private(root_key)
    new_cards = _read_card_ids(cards, cards_file)
    new_kids = _read_kids(kids)
    if not new_cards and not new_kids:
        fail(_t("nothing_to_revoke"))
    data = run_guarded(Path(bundle_path).read_bytes)
    old = run_guarded(bundlemod.open_bundle, data, [root.public_key()])
    now = int(time.time())
    new = bundlemod.make_bundle(root, version=old.version + 1, issued_at=now,
                                expires_at=now + valid_days * 86400, keys=old.keys,
                                revoked_cards=list(old.revoked_cards) + new_cards,
                                revoked_kids=set(old.revoked_kids) | set(new_kids),
                                fmt=int(file_format) if file_format else 2 if bundlemod.is_streamed(data) else 1)
    write_out(out, new)
    click.echo(_t("revoked", version=old.version + 1, cards=len(set(new_cards)), kids=len(set(new_kids))), err=True)


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
    root = load_root_private(root_key)
    seal = run_guarded(sealing.load_public_key, Path(sealing_pub))
    pull = run_guarded(load_root, pull_pub) if pull_pub is not None else None  # one Ed25519 public key
    data = run_guarded(credential.issue, root, urls=urls, sealing_key=seal, pull_key=pull, server_id=server_id,
                       serial=serial, issued_at=int(time.time()))
    write_out(out, data)


@issuer.command("site-credential")
@click.option("--root-key", required=True, type=click.Path(dir_okay=False), help="Root private key (Ed25519 PEM).")
@click.option("--site", "site_id", required=True, help="The site's id (its gates' [site] site_id).")
@click.option("--device-pub", required=True, type=click.Path(dir_okay=False),
              help="The gate's device public key (Ed25519 PEM; on the device: "
                   "`openssl pkey -in /var/lib/checkpoint/device.key -pubout`).")
@click.option("--valid-days", type=click.IntRange(1, 3660), default=None,
              help="Expires after this many days (default: no expiry).")
@click.option("--serial", type=click.IntRange(1), default=1, show_default=True, help="The credential's serial.")
@click.option("-o", "--out", default="-", show_default=True,
              help="Output file ('-' for stdout); the gate keeps it as STATE/site-credential.json.")
def site_credential(root_key, site_id, device_pub, valid_days, serial, out):
    """Sign a site credential: the root vouches that this device is a gate of the site (docs/site.md)."""
    root = load_root_private(root_key)
    device = run_guarded(load_root, device_pub)  # one Ed25519 public key
    now = int(time.time())
    data = run_guarded(sitecred.issue, root, site_id=site_id, device_key=device, issued_at=now,
                       expires_at=now + valid_days * 86400 if valid_days else None, serial=serial)
    write_out(out, data + b"\n")


@issuer.command("site-revocations")
@click.option("--root-key", required=True, type=click.Path(dir_okay=False), help="Root private key (Ed25519 PEM).")
@click.option("--site", "site_id", required=True, help="The site's id (its gates' [site] site_id).")
@click.option("--version", type=click.IntRange(1), required=True,
              help="Higher than the list it replaces: the gates keep the highest they have seen.")
@click.option("--revoke", "devices", multiple=True, metavar="DEVICE_ID",
              help="A gate whose site credential no longer counts (its device id; repeat for more).")
@click.option("-o", "--out", default="-", show_default=True,
              help="Output file ('-' for stdout); put it on any gate as STATE/site-revocations.json: it spreads "
                   "to the others.")
def site_revocations(root_key, site_id, version, devices, out):
    """Sign the site's revocation list: the gates it names are no longer members, whatever their
    credentials' expiry (docs/site.md#revoking-a-gate)."""
    root = load_root_private(root_key)
    data = run_guarded(sitecred.issue_revocations, root, site_id=site_id, version=version,
                       issued_at=int(time.time()), revoked=list(devices))
    write_out(out, data + b"\n")
