"""The verifier's answer: value types that cross module borders (pipeline, log, screen, sync)."""
from __future__ import annotations

import base64
from dataclasses import dataclass, fields
from enum import StrEnum

from scanner.base.errors import Reason


class Decision(StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"


class Shown(StrEnum):
    """How staff are shown a verdict: the word (``decision.<shown>`` in the catalogue), the kiosk's
    colour, the LEDs and the terminal's mark. A card scanned again, or already inside the site by
    another gate, is a person let in before: amber, never the red of a refusal."""

    ACCEPT = "accept"
    REJECT = "reject"
    DUPLICATE = "duplicate"

    @property
    def mark(self) -> str:
        return _MARKS[self]


_MARKS = {Shown.ACCEPT: "✔", Shown.REJECT: "✘", Shown.DUPLICATE: "↺"}


def shown_as(decision: str, reason: str) -> Shown:
    """The one place that decides how a decision and its reason are shown (the daemon's events carry it)."""
    if decision == Decision.ACCEPT:
        return Shown.ACCEPT
    if reason in (Reason.DUPLICATE, Reason.ALREADY_INSIDE):
        return Shown.DUPLICATE
    return Shown.REJECT


@dataclass(frozen=True, slots=True)
class Holder:
    """Personal details printed on the card (never stored in the clear; see the entry log)."""

    name: str
    birth_date: str
    id_masked: str | None = None
    status: str | None = None
    last_dose: str | None = None

    @property
    def birth_year(self) -> str:
        return self.birth_date[:4]


@dataclass(frozen=True, slots=True)
class Card:
    """Facts of a card whose signature verified.

    ``expires_at`` is None only for a SMART Health Card without ``exp`` (those never expire);
    ``cert_type`` is the kind of health certificate ("vaccination", "test", "recovery") for the
    formats that carry one (HC1, SHC), else None (docs/health-certificates.md).
    """

    format: str
    card_id: bytes
    issuer: str
    kid: bytes
    issued_at: int
    expires_at: int | None
    not_before: int | None
    holder: Holder
    cert_type: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """Decision, stable reason code, an English detail for logs, and the card when it is authentic."""

    decision: Decision
    reason: Reason
    format: str | None = None
    detail: str = ""
    kid: bytes | None = None
    card: Card | None = None

    @property
    def accepted(self) -> bool:
        return self.decision is Decision.ACCEPT

    @property
    def shown(self) -> Shown:
        return shown_as(self.decision, self.reason)

    def to_dict(self) -> dict:
        """The JSON shape of `checkpoint verify --json` (docs/card-format.md#verify-output)."""
        card = self.card
        kid = card.kid if card else self.kid
        out = {
            "decision": str(self.decision),
            "reason": str(self.reason),
            "detail": self.detail,
            "format": self.format,
            "card_id": card.card_id.hex() if card else None,
            "issuer": card.issuer if card else None,
            "kid": base64.b64encode(kid).decode("ascii") if kid is not None else None,
            "holder": {
                "name": card.holder.name,
                "birth_date": card.holder.birth_date,
                "id_masked": card.holder.id_masked,
                "status": card.holder.status,
                "last_dose": card.holder.last_dose,
            } if card else None,
            "issued_at": card.issued_at if card else None,
            "not_before": card.not_before if card else None,
            "expires_at": card.expires_at if card else None,
        }
        if card is not None and card.cert_type is not None:  # health certificates only (HC1, SHC)
            out["cert_type"] = card.cert_type
        return out


# The verifier makes a Holder, a Card and a Verdict on every scan. A frozen dataclass's __init__
# sets each field through object.__setattr__; these fill the slots directly (what __init__ does,
# in half the time), once, before anyone sees the object. Each takes every field, in order.
_new = object.__new__
_HOLDER = tuple(getattr(Holder, f.name).__set__ for f in fields(Holder))
_CARD = tuple(getattr(Card, f.name).__set__ for f in fields(Card))
_VERDICT = tuple(getattr(Verdict, f.name).__set__ for f in fields(Verdict))


def new_holder(name: str, birth_date: str, id_masked: str | None, status: str | None,
               last_dose: str | None) -> Holder:
    """Holder(...) of all its fields."""
    holder = _new(Holder)
    s = _HOLDER
    s[0](holder, name)
    s[1](holder, birth_date)
    s[2](holder, id_masked)
    s[3](holder, status)
    s[4](holder, last_dose)
    return holder


def new_card(fmt: str, card_id: bytes, issuer: str, kid: bytes, issued_at: int, expires_at: int | None,
             not_before: int | None, holder: Holder, cert_type: str | None = None) -> Card:
    """Card(...) of all its fields."""
    card = _new(Card)
    s = _CARD
    s[0](card, fmt)
    s[1](card, card_id)
    s[2](card, issuer)
    s[3](card, kid)
    s[4](card, issued_at)
    s[5](card, expires_at)
    s[6](card, not_before)
    s[7](card, holder)
    s[8](card, cert_type)
    return card


def _verdict(decision: Decision, reason: Reason, fmt: str | None, detail: str, kid: bytes | None,
             card: Card | None) -> Verdict:
    verdict = _new(Verdict)
    s = _VERDICT
    s[0](verdict, decision)
    s[1](verdict, reason)
    s[2](verdict, fmt)
    s[3](verdict, detail)
    s[4](verdict, kid)
    s[5](verdict, card)
    return verdict


def accept(fmt: str, card: Card) -> Verdict:
    return _verdict(Decision.ACCEPT, Reason.OK, fmt, "", card.kid, card)


def reject(reason: Reason, detail: str, fmt: str | None = None, kid: bytes | None = None,
           card: Card | None = None) -> Verdict:
    return _verdict(Decision.REJECT, reason, fmt, detail, kid, card)
