"""verify(text, trust, now) → Verdict: the offline verifier, a pure function (no I/O, no clock).

It never raises: hostile text yields a reject with reason ``malformed`` or
``unsupported_format`` in bounded time and memory (docs/card-format.md#verification).
`verify_card` takes one card read as several texts too (the parts of a multi-part SMART Health
Card): the one entry for a card, however many QR codes it came in.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from scanner.base.errors import CardRejected, Reason
from scanner.cards import formats
from scanner.cards.formats.shc import verify_parts
from scanner.cards.trust import TrustStore
from scanner.cards.verdict import Verdict, reject

MAX_TEXT = 4296  # the most characters a QR code (version 40-L, alphanumeric) can hold
DEFAULT_CLOCK_SKEW = 300

log = logging.getLogger(__name__)


def verify(text: str, trust: TrustStore, now: float, *, clock_skew: int = DEFAULT_CLOCK_SKEW) -> Verdict:
    """Decide whether decoded QR ``text`` is a genuine, valid card at time ``now`` (epoch seconds)."""
    if not math.isfinite(now):
        raise ValueError("now must be a finite epoch time")
    if type(text) is not str:
        return reject(Reason.MALFORMED, "input is not text")
    if len(text) > MAX_TEXT:
        return reject(Reason.MALFORMED, f"text longer than a QR code can hold ({MAX_TEXT})")
    fmt = formats.for_text(text)
    if fmt is None:
        return reject(Reason.UNSUPPORTED_FORMAT, "no known card prefix")
    try:
        return fmt.verify(text, trust, int(now), clock_skew)
    except CardRejected as exc:
        return reject(exc.reason, exc.detail, fmt.name, exc.kid)
    except Exception:  # a bug must not stop the lane: reject, and leave a trace for the developers
        log.exception("internal error verifying a %s card", fmt.name)
        return reject(Reason.MALFORMED, "internal error while verifying", fmt.name)


def verify_card(texts: Sequence[str], trust: TrustStore, now: float, *,
                clock_skew: int = DEFAULT_CLOCK_SKEW) -> Verdict:
    """One card: a single text as `verify` does it, or every part of a multi-part card (in any order)."""
    if len(texts) == 1:
        return verify(texts[0], trust, now, clock_skew=clock_skew)
    return verify_parts(texts, trust, now, clock_skew=clock_skew)
