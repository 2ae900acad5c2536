"""Signed-card formats, chosen by the prefix of the decoded QR text.

A format is an object with ``name``, ``prefix`` and ``verify(text, trust, now, clock_skew)``;
adding one means registering it here, nothing more. Registered: CK1 "CK1:", EU DCC "HC1:" and
SMART Health Cards "shc:" (docs/health-certificates.md). A format whose text can never begin or
end with whitespace (SHC: digits only) sets ``trims_whitespace`` and is also found when a reader
put spaces or line breaks around the text; the others need the exact prefix (base45 has spaces).
"""
from __future__ import annotations

from typing import Protocol

from scanner.cards.trust import TrustStore
from scanner.cards.verdict import Verdict


class CardFormat(Protocol):
    name: str
    prefix: str
    scheme: str  # how every QR text of the format begins: the prefix and any fixed separator after it
    base45_body: bool  # the text after the scheme is base45 (readers check it character by character)

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


_WHITESPACE = " \t\r\n"


def for_text(text: str) -> CardFormat | None:
    """The format whose prefix the text starts with, or None."""
    for fmt in _REGISTRY:
        if text.startswith(fmt.prefix):
            return fmt
    if text[:1] in (" ", "\t", "\r", "\n"):
        stripped = text.lstrip(_WHITESPACE)
        for fmt in _REGISTRY:
            if getattr(fmt, "trims_whitespace", False) and stripped.startswith(fmt.prefix):
                return fmt
    return None


def names() -> list[str]:
    return [f.name for f in _REGISTRY]


def schemes(*, base45_body: bool | None = None) -> tuple[str, ...]:
    """How the registered formats' QR texts begin; only those with (or without) a base45 body if asked."""
    return tuple(f.scheme for f in _REGISTRY if base45_body is None or f.base45_body == base45_body)


from scanner.cards.formats import ck1 as _ck1  # noqa: E402  (registers itself)
from scanner.cards.formats import hc1 as _hc1  # noqa: E402
from scanner.cards.formats import shc as _shc  # noqa: E402

register(_ck1.FORMAT)
register(_hc1.FORMAT)
register(_shc.FORMAT)
