"""Signed-card formats, chosen by the prefix of the decoded QR text.

A format is an object with ``name``, ``prefix`` and ``verify(text, trust, now, clock_skew)``;
adding one (EU DCC "HC1:", SMART Health Cards "shc:/") means registering it here, nothing more.
"""
from __future__ import annotations

from typing import Protocol

from ..trust import TrustStore
from ..verdict import Verdict


class CardFormat(Protocol):
    name: str
    prefix: str

    def verify(self, text: str, trust: TrustStore, now: int, clock_skew: int) -> Verdict:
        """Verify text that starts with ``prefix``; raise CardRejected or return a Verdict."""
        ...


_REGISTRY: list[CardFormat] = []


def register(fmt: CardFormat) -> CardFormat:
    """Add a format; prefixes must not overlap."""
    for other in _REGISTRY:
        if other.prefix.startswith(fmt.prefix) or fmt.prefix.startswith(other.prefix):
            raise ValueError(f"prefix {fmt.prefix!r} overlaps {other.prefix!r}")
    _REGISTRY.append(fmt)
    return fmt


def for_text(text: str) -> CardFormat | None:
    """The format whose prefix the text starts with, or None."""
    for fmt in _REGISTRY:
        if text.startswith(fmt.prefix):
            return fmt
    return None


def names() -> list[str]:
    return [f.name for f in _REGISTRY]


from . import ck1 as _ck1  # noqa: E402  (registers itself)

register(_ck1.FORMAT)
