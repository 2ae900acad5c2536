"""Issuer side of CK1: build and sign cards (for the demo, the tests and pilot deployments).

The central system normally issues cards; these functions let a pilot run without it. Every card
built here is checked with the verifier's own claim parser, so the tool cannot mint a card that a
checkpoint would call malformed.
"""
from __future__ import annotations

import os
import unicodedata
import zlib
from dataclasses import dataclass, field, replace

from scanner.base.errors import CardRejected, UsageError
from scanner.cards import base45, cbor, cose
from scanner.cards import keys as keymod
from scanner.cards.formats import ck1
from scanner.cards.verdict import Holder


def new_card_id() -> bytes:
    """A random 16-byte card id (random ids keep the revocation index balanced)."""
    return os.urandom(16)


@dataclass(frozen=True, slots=True)
class CardSpec:
    """What goes on a card; times are epoch seconds."""

    issuer: str
    holder: Holder
    issued_at: int
    expires_at: int
    not_before: int | None = None
    card_id: bytes = field(default_factory=new_card_id)


def claims(spec: CardSpec) -> dict:
    """The CWT claims map of a card (docs/card-format.md#payload)."""
    h = spec.holder
    card: dict = {"v": ck1.CARD_SCHEMA, "n": unicodedata.normalize("NFC", h.name), "d": h.birth_date}
    for key, value in (("id", h.id_masked), ("st", h.status), ("vd", h.last_dose)):
        if value is not None:
            card[key] = value
    out = {ck1.CLAIM_ISS: spec.issuer, ck1.CLAIM_EXP: spec.expires_at, ck1.CLAIM_IAT: spec.issued_at,
           ck1.CLAIM_CTI: spec.card_id, ck1.CLAIM_CARD: card}
    if spec.not_before is not None:
        out[ck1.CLAIM_NBF] = spec.not_before
    return out


def issue(spec: CardSpec, private_key: keymod.PrivateKey, *, compress: bool = False,
          kid: bytes | None = None) -> str:
    """Sign a card and return its QR text "CK1:..."; raise UsageError if the card would be invalid."""
    alg_name = keymod.alg_of(private_key.public_key())
    if alg_name not in ck1.ALGS.values():
        raise UsageError(f"CK1 cards are signed with EdDSA or ES256, not {alg_name}")
    alg = cose.ALG_IDS[alg_name]
    kid = keymod.kid_of(private_key.public_key()) if kid is None else kid
    payload = cbor.dumps(claims(spec))
    try:
        ck1.parse_claims(payload, kid)
    except CardRejected as exc:
        raise UsageError(f"invalid card: {exc.detail}") from None
    return wrap(cose.sign1(payload, private_key, alg, kid), compress=compress)


def wrap(cose_bytes: bytes, *, compress: bool = False) -> str:
    """COSE bytes → QR text, zlib-compressed first when asked."""
    if compress:
        cose_bytes = zlib.compress(cose_bytes, 9)
    return ck1.PREFIX + base45.encode(cose_bytes)


def renew(spec: CardSpec, **changes) -> CardSpec:
    """A copy of a card spec with some fields changed (a new card id unless one is given)."""
    changes.setdefault("card_id", new_card_id())
    return replace(spec, **changes)
