"""The demo: issue a handful of cards, print them as QR images, scan the images and verify offline.

Everything is real: fresh keys, a signed trust bundle, PNG files decoded by the image decoder and
verdicts from the verifier. It exits non-zero if any card does not give its expected verdict, so
it doubles as an end-to-end smoke test on a new device.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import base45, cbor, cose, i18n, issuer, keys, render
from .bundle import BundleKey, make_bundle, open_bundle
from .decode import make_decoder, scan_file
from .errors import Reason
from .formats import ck1
from .safetext import escape
from .trust import TrustStore
from .verdict import Holder
from .verifier import verify

DAY = 86400


@dataclass(frozen=True, slots=True)
class DemoCard:
    label: str
    text: str
    expected: Reason


def forge(text: str, new_name: str) -> str:
    """Change the holder's name in a signed card but keep its signature (a forgery)."""
    msg = cose.parse_sign1(ck1.unwrap(text))
    claims = cbor.loads(msg.payload)
    claims[ck1.CLAIM_CARD]["n"] = new_name
    forged = cbor.dumps(cbor.Tag(18, [msg.protected, {}, cbor.dumps(claims), msg.signature]))
    return ck1.PREFIX + base45.encode(forged)


def make_cards(now: int, hue: keys.PrivateKey, dng: keys.PrivateKey, rogue: keys.PrivateKey,
               revoked_id: bytes) -> list[DemoCard]:
    """The demo's cards: two genuine ones, and one for each way a card can fail."""
    an = issuer.CardSpec("VN-HUE", Holder("Nguyễn Văn An", "1985-03-02", "*********123", "vaccinated",
                                          "2021-10-15"), now - 30 * DAY, now + 335 * DAY)
    ngoc = issuer.CardSpec("VN-DNG", Holder("Trần Thị Bích Ngọc", "1992-11", None, "vaccinated"),
                           now - 10 * DAY, now + 355 * DAY)
    valid = issuer.issue(an, hue)
    return [
        DemoCard("valid-ed25519", valid, Reason.OK),
        DemoCard("valid-es256", issuer.issue(ngoc, dng), Reason.OK),
        DemoCard("expired", issuer.issue(issuer.renew(
            an, holder=Holder("Lê Văn Cường", "1970"), issued_at=now - 400 * DAY,
            expires_at=now - 35 * DAY), hue), Reason.EXPIRED),
        DemoCard("not-yet-valid", issuer.issue(issuer.renew(
            ngoc, holder=Holder("Phạm Minh Đức", "2001-07-30"), not_before=now + 7 * DAY), dng),
            Reason.NOT_YET_VALID),
        DemoCard("revoked", issuer.issue(issuer.renew(
            an, holder=Holder("Hoàng Thị Em", "1999-01-09"), card_id=revoked_id), hue), Reason.REVOKED),
        DemoCard("forged-name", forge(valid, "Kẻ Mạo Danh"), Reason.BAD_SIGNATURE),
        DemoCard("forged-key", issuer.issue(an, rogue, kid=keys.kid_of(hue.public_key())),
                 Reason.BAD_SIGNATURE),
        DemoCard("unknown-issuer", issuer.issue(issuer.renew(an, issuer="XX-FAKE"), rogue), Reason.UNKNOWN_KEY),
        DemoCard("not-a-card", "https://example.vn/thuc-don", Reason.UNSUPPORTED_FORMAT),
    ]


def warm_verify_us(text: str, trust: TrustStore, now: int, rounds: int = 25) -> float:
    """Median µs of one verify once caches are warm (a single cold call costs several times more)."""
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        verify(text, trust, now)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6


def run_demo(out_dir: Path, lang: str, echo: Callable[[str], None] = print) -> int:
    """Run the demo in ``out_dir``; return 0 when every card gave its expected verdict."""
    now = int(time.time())
    key_dir, card_dir = out_dir / "keys", out_dir / "cards"
    key_dir.mkdir(parents=True, exist_ok=True)
    card_dir.mkdir(parents=True, exist_ok=True)
    root, hue, dng, rogue = (keys.generate(a) for a in ("EdDSA", "EdDSA", "ES256", "EdDSA"))
    for name, key in (("root", root), ("vn-hue", hue), ("vn-dng", dng), ("rogue", rogue)):
        keys.write_private_key(key_dir / f"{name}.key", key)
        (key_dir / f"{name}.pub").write_bytes(keys.public_pem(key.public_key()))
    revoked_id = issuer.new_card_id()
    bundle_bytes = make_bundle(
        root, version=1, issued_at=now, expires_at=now + 30 * DAY,
        keys=[BundleKey(keys.kid_of(hue.public_key()), "EdDSA", "VN-HUE", hue.public_key(), frozenset({"CK1"})),
              BundleKey(keys.kid_of(dng.public_key()), "ES256", "VN-DNG", dng.public_key(), frozenset({"CK1"}))],
        revoked_cards=[revoked_id])
    (out_dir / "bundle.json").write_bytes(bundle_bytes)
    trust = TrustStore.build(bundles=[open_bundle(bundle_bytes, [root.public_key()])])

    cards = make_cards(now, hue, dng, rogue, revoked_id)
    decoder = make_decoder("auto")
    echo(i18n.t("demo.title", lang))
    echo(f"{i18n.t('demo.files', lang)}: {out_dir}  (decoder: {decoder.name})")
    echo("")
    header = (f"{'#':>2}  {i18n.t('label.card', lang):<15} {i18n.t('label.decoded', lang):>9}  "
              f"{'verify':>8}  {i18n.t('label.verdict', lang):<10} {i18n.t('label.reason', lang)}")
    echo(header)
    echo("-" * len(header))
    mismatches = 0
    for i, card in enumerate(cards, 1):
        png = card_dir / f"{i:02d}-{card.label}.png"
        render.qr_png(card.text, png)
        scanned = scan_file(png, decoder)
        texts = scanned.codes
        if len(texts) != 1:
            mismatches += 1
            echo(f"{i:>2}  {card.label:<15} {i18n.t('label.no_code', lang)}")
            continue
        verdict = verify(texts[0], trust, now)
        verify_us = warm_verify_us(texts[0], trust, now)
        ok = verdict.reason == card.expected and texts[0] == card.text
        if verdict.accepted and verdict.card is not None:  # the printable card a person would carry
            c = verdict.card
            render.card_svg(card.text, name=c.holder.name, birth_date=c.holder.birth_date, issuer=c.issuer,
                            expires_at=c.expires_at, card_id_hex=c.card_id.hex(),
                            path=png.with_suffix(".svg"))
        mismatches += not ok
        who = ""
        if verdict.card is not None:
            who = f" · {escape(verdict.card.holder.name)} ({verdict.card.holder.birth_year})"
        mark = "✔" if verdict.accepted else "✘"
        line = (f"{i:>2}  {card.label:<15} {scanned.ms:>7.1f}ms  {verify_us:>6.0f}µs  "
                f"{mark} {i18n.t('decision.' + verdict.decision, lang):<9} "
                f"{i18n.t('reason.' + verdict.reason, lang)}{who}")
        if not ok:
            line += f"   <-- {i18n.t('demo.expected', lang)} {card.expected}"
        echo(line)
    echo("")
    echo(i18n.t("demo.all_ok", lang, n=len(cards)) if not mismatches
         else i18n.t("demo.mismatch", lang, n=mismatches))
    return 0 if not mismatches else 1
