"""Finding the person to trace on the central server: from a photo of their card (decoded with the
devices' own decoder), from the card's text, or from its id. A card is decoded and verified with
the same code as on the device (hardware.decode, scanner.cards.verifier) against the trust bundle
the server publishes, so a forged card names nobody.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from scanner.base.errors import CheckpointError, Reason, TrustError
from scanner.base.timeutil import DAY_MS
from scanner.cards.bundle import open_bundle
from scanner.cards.trust import TrustStore
from scanner.cards.verifier import verify
from sync.server import bundles
from sync.server.model import Storage
from sync.server.trace import TraceError, parse_card

MAX_PHOTO_BYTES = 20 * 1024 * 1024


class CardNotFound(CheckpointError):
    """No traceable card in what was given; ``code`` says why (no_code, or the verifier's reason)."""

    code = "card_not_found"


@dataclass(frozen=True, slots=True)
class Found:
    card_id: str  # lowercase hex, as the entries hold it
    how: str  # "photo", "text" or "id"
    format: str | None = None  # the card's format when it was read from a photo or text
    reason: str = "ok"  # the verifier's reason now ("ok", or "expired" for a card valid during the period)


def server_trust(storage: Storage) -> TrustStore:
    """The trust the devices get from this server: its latest published bundle under its root."""
    root = bundles.root_of(storage)
    latest = storage.latest_bundle()
    if root is None or latest is None:
        raise CardNotFound("no trust bundle is published on this server: cards cannot be verified here",
                           code="no_bundle")
    data = storage.bundle_data(latest.version)
    try:
        return TrustStore.build(bundles=[open_bundle(data or b"", [root])])
    except TrustError as exc:
        raise CardNotFound(f"the published trust bundle does not open: {exc}", code="no_bundle") from None


def from_text(text: str, trust: TrustStore, now_ms: int, *, since_ms: int | None = None, how: str = "text") -> Found:
    """The card id of the card whose QR text is ``text``: it must verify now or, expired since, at
    the start of the period traced (``since_ms``). Forged, unknown and malformed cards are refused."""
    text = text.strip()
    verdict = verify(text, trust, now_ms / 1000)
    if verdict.card is None and verdict.reason == Reason.EXPIRED and since_ms is not None:
        earlier = verify(text, trust, since_ms / 1000)
        if earlier.card is not None:
            return Found(earlier.card.card_id.hex(), how, earlier.format, str(Reason.EXPIRED))
    if verdict.card is None:
        raise CardNotFound(f"the card does not verify ({verdict.reason}): it cannot name a person to trace",
                           code=str(verdict.reason))
    return Found(verdict.card.card_id.hex(), how, verdict.format, str(verdict.reason))


def from_photo(data: bytes, trust: TrustStore, now_ms: int, *, since_ms: int | None = None) -> Found:
    """The card in a photo (PNG, JPEG...): every QR code in it is decoded and the first that
    verifies names the person."""
    # deferred: OpenCV and the decoders load only for a photo, not with every console page
    from hardware.decode import ApplianceDecoder, ImageUnreadable, read_gray

    if not data or len(data) > MAX_PHOTO_BYTES:
        raise CardNotFound(f"a photo of at most {MAX_PHOTO_BYTES // (1024 * 1024)} MiB is needed", code="photo_size")
    with tempfile.TemporaryDirectory(prefix="ck-photo-") as tmp:  # read_gray's limits apply to a file
        path = Path(tmp) / "card"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            gray = read_gray(path)
        except ImageUnreadable as exc:
            raise CardNotFound(f"the photo cannot be read: {exc.why}", code="photo_unreadable") from None
    codes = ApplianceDecoder().decode(gray)
    if not codes:
        raise CardNotFound("no QR code was found in the photo", code="no_code")
    last: CardNotFound | None = None
    for code in codes:
        try:
            return from_text(code.text, trust, now_ms, since_ms=since_ms, how="photo")
        except CardNotFound as exc:
            last = exc
    assert last is not None
    raise last


def from_id(text: str) -> Found:
    return Found(parse_card(text), "id")


def from_id_or_text(text: str, storage: Storage, now_ms: int, *, since_ms: int | None = None) -> Found:
    """The card a person typed or pasted: its id (hex, as the logs show it), else its QR text,
    verified against the server's published trust (a card's text is never plain hex)."""
    try:
        return from_id(text)
    except TraceError:
        return from_text(text, server_trust(storage), now_ms, since_ms=since_ms)


def period(now_ms: int, days: int) -> tuple[int, int]:
    """[since, until) of a trace over the last ``days`` days."""
    return now_ms - days * DAY_MS, now_ms + 1
