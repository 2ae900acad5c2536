"""CK1, the checkpoint's own signed personal card (spec: docs/card-format.md).

QR text "CK1:" + base45(COSE_Sign1 [optionally zlib-compressed]) whose payload is a CWT with the
card claim -65537. Verification order: envelope, key, signature, then the (now authenticated)
claims, issuer binding, revocation and validity period.
"""
from __future__ import annotations

import datetime as dt
import re
import zlib
from collections.abc import Callable
from typing import Any

from scanner.base.errors import CardRejected, Reason
from scanner.cards import base45, cbor, cose
from scanner.cards.formats.cose_card import CoseRules, authenticate, cwt_claims
from scanner.cards.trust import TrustStore
from scanner.cards.verdict import Card, Verdict, accept, new_card, new_holder, reject

NAME = "CK1"
PREFIX = "CK1:"
MAX_INFLATED = 16 * 1024
ALGS = {cose.ALG_EDDSA: "EdDSA", cose.ALG_ES256: "ES256"}
RULES = CoseRules(NAME, ALGS, signer="issuer key", key="key", documents="cards")

CLAIM_ISS = 1
CLAIM_EXP = 4
CLAIM_NBF = 5
CLAIM_IAT = 6
CLAIM_CTI = 7
CLAIM_CARD = -65537
CARD_SCHEMA = 1
MAX_NAME = 80
MAX_ISSUER = 64
MAX_SHORT = 32

_DATE_FULL = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
_DATE_MONTH = re.compile(r"[0-9]{4}-[0-9]{2}\Z")
_DATE_YEAR = re.compile(r"[0-9]{4}\Z")


def _malformed(detail: str) -> CardRejected:
    return CardRejected(Reason.MALFORMED, detail)


def unwrap(text: str) -> bytes:
    """QR text → COSE bytes: strip the prefix, base45-decode, inflate when zlib-compressed."""
    try:
        raw = base45.decode(text[len(PREFIX):])
    except base45.Base45Error as exc:
        raise _malformed(f"base45: {exc}") from None
    if raw[:1] == b"\x78":
        raw = inflate(raw)
    return raw


def inflate(data: bytes, limit: int = MAX_INFLATED) -> bytes:
    """Inflate one complete RFC 1950 stream of at most ``limit`` bytes, or reject as malformed."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as exc:
        raise _malformed(f"zlib: {exc}") from None
    if len(out) > limit:
        raise _malformed(f"inflated data over {limit // 1024} KiB")
    if not d.eof:
        raise _malformed("zlib stream is truncated")
    if d.unused_data:
        raise _malformed("bytes after the zlib stream")
    return out


def _text(value: object, what: str, max_len: int, min_len: int = 1) -> str:
    if type(value) is not str or not min_len <= len(value) <= max_len:
        raise _malformed(f"{what} must be text of {min_len}..{max_len} characters")
    return value


_MAX_TIME = 1 << 40


def _time(claims: dict, key: int, what: str) -> int:
    value = claims.get(key)
    if type(value) is not int or not 0 <= value < _MAX_TIME:
        raise _malformed(f"{what} must be an integer time")
    return value


def check_date(value: object, what: str, *, partial: bool) -> str:
    """A calendar date YYYY-MM-DD (or, if ``partial``, YYYY-MM or YYYY) that really exists."""
    if type(value) is not str or len(value) > 10:
        raise _malformed(f"{what} must be a date")
    try:
        if _DATE_FULL.match(value):
            dt.date.fromisoformat(value)
        elif partial and _DATE_MONTH.match(value):
            dt.date.fromisoformat(value + "-01")
        elif not (partial and _DATE_YEAR.match(value) and value != "0000"):
            raise ValueError
    except ValueError:
        raise _malformed(f"{what} {value!r} is not a valid date") from None
    return value


def parse_claims(payload: bytes, kid: bytes) -> Card:
    """Decode and check the CWT claims of an authenticated payload."""
    card = canonical_claims(payload, kid)
    return card if card is not None else read_claims(payload, kid)


# The claims as this project's issuer writes them (deterministic CBOR: the claims in key order
# 1, 4, [5], 6, 7, -65537; the card's fields d, n, v, [id], [st], [vd]), each head as it writes it.
_CLAIMS_HEAD = {0xA5: False, 0xA6: True}  # the claims map's head → nbf is there
# after the issuer: exp, [nbf] and iat as 4-byte integers, the 16-byte cti, the card claim's key,
# its map's head (3 required fields, up to 3 optional ones) and the first field's key, "d"
_MIDDLE = re.compile(rb"\x04\x1a(.{4})(?:\x05\x1a(.{4}))?\x06\x1a(.{4})\x07\x50(.{16})"
                     rb"\x3a\x00\x01\x00\x00([\xa3-\xa6])\x61d", re.DOTALL)


def canonical_claims(payload: bytes, kid: bytes) -> Card | None:
    """`read_claims` of claims written as this project's issuer writes them, read straight from the
    bytes (no map is built); None for anything else, and for any claim that fails a check:
    `read_claims` then decides and says why. It never accepts what `read_claims` refuses."""
    if type(payload) is not bytes:
        return None
    try:
        with_nbf = _CLAIMS_HEAD.get(payload[0])
        if with_nbf is None or payload[1] != 0x01:
            return None
        issuer, pos = _text_at(payload, 2)
        middle = _MIDDLE.match(payload, pos)
        if middle is None:
            return None
        exp_bytes, nbf_bytes, iat_bytes, cti, head = middle.groups()
        if (nbf_bytes is not None) is not with_nbf:
            return None
        birth, pos = _text_at(payload, middle.end())
        if payload[pos:pos + 2] != b"\x61n":
            return None
        name, pos = _text_at(payload, pos + 2)
        if payload[pos:pos + 3] != b"\x61v\x01":
            return None
        pos += 3
        fields = head[0] - 0xA3  # optional fields after the three required ones
        id_masked = status = last_dose = None
        if fields and payload[pos:pos + 3] == b"\x62id":
            id_masked, pos = _text_at(payload, pos + 3)
            fields -= 1
        if fields and payload[pos:pos + 3] == b"\x62st":
            status, pos = _text_at(payload, pos + 3)
            fields -= 1
        if fields and payload[pos:pos + 3] == b"\x62vd":
            last_dose, pos = _text_at(payload, pos + 3)
            fields -= 1
        if fields or pos != len(payload):
            return None
    except (cbor.CborError, IndexError, UnicodeDecodeError):
        return None
    exp = int.from_bytes(exp_bytes, "big")
    iat = int.from_bytes(iat_bytes, "big")
    nbf = None if nbf_bytes is None else int.from_bytes(nbf_bytes, "big")
    if (not 0 < len(issuer) <= MAX_ISSUER or exp < iat or not 0 < len(name) <= MAX_NAME
            or (id_masked is not None and not 0 < len(id_masked) <= MAX_SHORT)
            or (status is not None and not 0 < len(status) <= MAX_SHORT)):
        return None
    try:
        check_date(birth, "birth date", partial=True)
        if last_dose is not None:
            check_date(last_dose, "last dose date", partial=False)
    except CardRejected:
        return None
    return new_card(NAME, cti, issuer, kid, iat, exp, nbf, new_holder(name, birth, id_masked, status, last_dose))


def _text_at(data: bytes, pos: int) -> tuple[str, int]:
    """The definite-length text string whose head (up to two length bytes) is at ``pos``, and where it ends."""
    raw, end = cbor.string_at(data, pos, 3)
    return raw.decode("utf-8"), end


def read_claims(payload: bytes, kid: bytes) -> Card:
    """`parse_claims` of any claims: decoded, then checked one by one in the order of
    docs/card-format.md, the first that fails refused with its reason."""
    # Every scan runs this: each check is made inline, and a value that fails it goes to the
    # checking function, whose refusal (and words) it is.
    claims = cwt_claims(payload)
    get: Callable[[object], Any] = claims.get
    issuer = get(CLAIM_ISS)
    if type(issuer) is not str or not 0 < len(issuer) <= MAX_ISSUER:
        _text(issuer, "iss (issuer)", MAX_ISSUER)
    exp = get(CLAIM_EXP)
    if type(exp) is not int or not 0 <= exp < _MAX_TIME:
        _time(claims, CLAIM_EXP, "exp")
    nbf = get(CLAIM_NBF)
    if nbf is not None or CLAIM_NBF in claims:
        nbf = _time(claims, CLAIM_NBF, "nbf")
    iat = get(CLAIM_IAT)
    if type(iat) is not int or not 0 <= iat < _MAX_TIME:
        _time(claims, CLAIM_IAT, "iat")
    if exp < iat:
        raise _malformed("exp is before iat")
    cti = get(CLAIM_CTI)
    if type(cti) is not bytes or len(cti) != 16:
        raise _malformed("cti (card id) must be 16 bytes")
    card = get(CLAIM_CARD)
    if type(card) is not dict:
        raise _malformed("card claim (-65537) missing or not a map")
    field: Callable[[object], Any] = card.get
    version = field("v")
    if version != CARD_SCHEMA or type(version) is not int:
        raise _malformed(f"card schema version must be {CARD_SCHEMA}")
    name = field("n")
    if type(name) is not str or not 0 < len(name) <= MAX_NAME:
        _text(name, "holder name", MAX_NAME)
    birth = check_date(field("d"), "birth date", partial=True)
    # optional fields are absent or of their type (null is not "absent": one encoding per card)
    id_masked = field("id")
    if (id_masked is not None or "id" in card) and (type(id_masked) is not str or not 0 < len(id_masked) <= MAX_SHORT):
        _text(id_masked, "masked id", MAX_SHORT)
    status = field("st")
    if (status is not None or "st" in card) and (type(status) is not str or not 0 < len(status) <= MAX_SHORT):
        _text(status, "status", MAX_SHORT)
    last_dose = field("vd")
    if last_dose is not None or "vd" in card:
        last_dose = check_date(last_dose, "last dose date", partial=False)
    return new_card(NAME, cti, issuer, kid, iat, exp, nbf, new_holder(name, birth, id_masked, status, last_dose))


class CK1Format:
    """The CK1 card format (registered by prefix "CK1:")."""

    name = NAME
    prefix = PREFIX
    scheme = PREFIX
    base45_body = True

    def verify(self, text: str, trust: TrustStore, now: int, clock_skew: int) -> Verdict:
        card, signers = authenticate(unwrap(text), trust, RULES, parse_claims)
        kid = card.kid
        # the same key may be listed for several issuers: the card's issuer must be one of them
        for key in signers:
            if key.issuer is None or key.issuer == card.issuer:
                break
        else:
            raise CardRejected(Reason.BAD_SIGNATURE, f"issuer {card.issuer!r} does not match the key's "
                               f"issuer {signers[0].issuer!r}", kid)
        if key.not_after is not None and card.issued_at > key.not_after:
            raise CardRejected(Reason.BAD_SIGNATURE, "card issued after its key's not_after", kid)
        return check_card(card, trust, now, clock_skew)


def check_card(card: Card, trust: TrustStore, now: int, clock_skew: int) -> Verdict:
    """Revocation and validity period of an authentic card (shared by formats with CWT times)."""
    if card.card_id in trust.revoked_cards:
        return reject(Reason.REVOKED, "the card is revoked", card.format, card.kid, card)
    if card.expires_at is not None and now > card.expires_at + clock_skew:
        return reject(Reason.EXPIRED, "the card has expired", card.format, card.kid, card)
    start = card.issued_at if card.not_before is None else max(card.not_before, card.issued_at)
    if now + clock_skew < start:
        return reject(Reason.NOT_YET_VALID, "the card is not valid yet", card.format, card.kid, card)
    return accept(card.format, card)


FORMAT = CK1Format()
