"""HC1, the EU Digital COVID Certificate (spec: docs/health-certificates.md#hc1).

QR text "HC1:" + base45(zlib(COSE_Sign1)) whose payload is a CWT with the hcert claim -260 → 1 →
the certificate (holder name, birth date, one vaccination, test or recovery entry). Keys are
Document Signer Certificates (DSCs), found by kid = SHA-256(DSC DER)[:8]. Verification order as
for CK1 (envelope, key, signature, then the authenticated claims), then the DSC's rules: its
extended key usage may limit the certificate types it signs, and its validity bounds the card's.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import zlib
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from scanner.base.errors import CardRejected, KeyFileError, Reason
from scanner.cards import base45, cbor, cose, x509util
from scanner.cards.bundle import BundleKey
from scanner.cards.formats.ck1 import check_card, check_date, inflate
from scanner.cards.formats.cose_card import CoseRules, authenticate, cwt_claims
from scanner.cards.trust import TrustStore
from scanner.cards.verdict import Card, Holder, Verdict

NAME = "HC1"
PREFIX = "HC1:"
MAX_INFLATED = 32 * 1024
ALGS = {cose.ALG_ES256: "ES256", cose.ALG_PS256: "PS256"}

CLAIM_ISS = 1
CLAIM_EXP = 4
CLAIM_IAT = 6
CLAIM_HCERT = -260
HCERT_DCC = 1
CWT_TAG = b"\xd8\x3d"  # CBOR tag 61 (CWT), which some issuers put around the COSE_Sign1 tag
ENTRY_TYPES = {"v": "vaccination", "t": "test", "r": "recovery"}
TEST_RESULTS = {"260415000": "negative", "260373001": "positive"}  # SNOMED CT: (not) detected
MAX_NAME_PART = 80  # DCC schema: fn/gn at most 80 characters
# hcert sets no length for iss (a country code is suggested; real issuers write ministry names of
# 80 characters): 255 only bounds hostile input, as for SHC, within the 256 a sync batch carries
MAX_ISSUER = 255
# RSASSA-PSS as hcert uses it: SHA-256, MGF1-SHA-256. The spec's salt is 32 bytes, but the salt
# length is read from the signature (any length verifies), as OpenSSL-based verifiers do.
_PSS_ANY_SALT = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)


def _malformed(detail: str, kid: bytes | None = None) -> CardRejected:
    return CardRejected(Reason.MALFORMED, detail, kid)


def unwrap(text: str) -> bytes:
    """QR text → COSE bytes: strip the prefix, base45-decode, inflate (bounded), drop a CWT tag.
    hcert requires ZLIB compression: bytes that are not one zlib stream are malformed."""
    try:
        raw = base45.decode(text[len(PREFIX):])
    except base45.Base45Error as exc:
        raise _malformed(f"base45: {exc}") from None
    if len(raw) < 2 or raw[0] & 0x0F != 8 or (raw[0] << 8 | raw[1]) % 31:  # RFC 1950 header: CM 8, FCHECK
        raise _malformed("not zlib-compressed (hcert requires ZLIB, RFC 1950)")
    raw = inflate(raw, MAX_INFLATED)
    if raw[:2] == CWT_TAG:
        raw = raw[2:]
    return raw


def verify_signature(public_key: Any, alg: int, message: bytes, signature: bytes) -> bool:
    """ES256 as COSE defines it; PS256 (RSASSA-PSS, SHA-256) with whatever salt length was used."""
    if alg != cose.ALG_PS256:
        return cose.verify_signature(public_key, alg, message, signature)
    if not isinstance(public_key, rsa.RSAPublicKey):
        return False
    try:
        public_key.verify(signature, message, _PSS_ANY_SALT, hashes.SHA256())
    except InvalidSignature:
        return False
    return True


RULES = CoseRules(NAME, ALGS, signer="signer key", key="signer certificate", documents="certificates",
                  verify_signature=verify_signature, alg_unprotected=True)


def _time(claims: Mapping, key: int, what: str) -> int:
    """An integer time; floats (Hungary writes them) are accepted and rounded down."""
    value = claims.get(key)
    if type(value) is float and math.isfinite(value):
        value = math.floor(value)
    if type(value) is not int or not 0 <= value < 1 << 40:
        raise _malformed(f"{what} must be a time")
    return value


def _part(value: object) -> str:
    """One name part as shown: text, cut to the schema's 80 characters; anything else is absent."""
    if type(value) is not str:
        return ""
    value = value.strip()
    return value if len(value) <= MAX_NAME_PART else value[:MAX_NAME_PART - 1] + "…"


def _holder_name(nam: object) -> str:
    """"Family, Given" (either may be missing; transliterated forms stand in for missing ones)."""
    if not isinstance(nam, dict):
        return ""
    family = _part(nam.get("fn")) or _part(nam.get("fnt"))
    given = _part(nam.get("gn")) or _part(nam.get("gnt"))
    return ", ".join(p for p in (family, given) if p)


def _birth_date(dob: object) -> str:
    """The dob as written (YYYY, YYYY-MM or YYYY-MM-DD; a time part is dropped), or ""."""
    if type(dob) is not str:
        return ""
    return dob[:10]


def _entry(dcc: Mapping) -> tuple[str, dict]:
    """The one vaccination, test or recovery entry and its type; null or empty lists don't count."""
    found = []
    for key, kind in ENTRY_TYPES.items():
        value = dcc.get(key)
        if value is None:
            continue
        if type(value) is not list or not value or not all(isinstance(e, dict) for e in value):
            raise _malformed(f"'{key}' must be a non-empty list of entries")
        found.append((kind, value[0]))
    if not found:
        raise _malformed("no vaccination, test or recovery entry")
    if len(found) > 1:
        raise _malformed("more than one of vaccination, test and recovery")
    return found[0]


def _status(kind: str, entry: Mapping) -> tuple[str | None, str | None]:
    """(status text, date of the last dose) for the holder line."""
    if kind == "vaccination":
        dn, sd = entry.get("dn"), entry.get("sd")
        status = f"dose {dn}/{sd}" if type(dn) is int and type(sd) is int else "vaccinated"
        try:
            last = check_date(entry.get("dt"), "vaccination date", partial=False)
        except CardRejected:
            last = None
        return status, last
    if kind == "test":
        result = entry.get("tr")
        return TEST_RESULTS.get(result) if isinstance(result, str) else None, None
    return "recovered", None


def parse_claims(payload: bytes, kid: bytes) -> Card:
    """Decode the CWT claims and the hcert certificate of an authenticated payload."""
    claims = cwt_claims(payload)
    exp = _time(claims, CLAIM_EXP, "exp")
    iat = _time(claims, CLAIM_IAT, "iat")
    hcert = claims.get(CLAIM_HCERT)
    dcc = hcert.get(HCERT_DCC) if type(hcert) is dict else None
    if type(dcc) is not dict:
        raise _malformed("hcert claim (-260 → 1) missing or not a map")
    kind, entry = _entry(dcc)
    issuer = claims.get(CLAIM_ISS)
    if issuer is None:  # iss is optional in hcert: fall back to the entry's country
        issuer = entry.get("co") if type(entry.get("co")) is str else ""
    if type(issuer) is not str or len(issuer) > MAX_ISSUER:
        raise _malformed(f"iss must be text of at most {MAX_ISSUER} characters")
    uvci = entry.get("ci")
    card_id = hashlib.sha256(uvci.encode("utf-8") if type(uvci) is str and uvci else payload).digest()[:16]
    status, last_dose = _status(kind, entry)
    holder = Holder(_holder_name(dcc.get("nam")), _birth_date(dcc.get("dob")), None, status, last_dose)
    return Card(NAME, card_id, issuer, kid, iat, exp, None, holder, kind)


def _dsc_rules(key: BundleKey, card: Card) -> tuple[str | None, Card]:
    """Check the signer's rules for this card: (why not, or None; the card with the DSC's validity
    applied: it expires with the DSC at the latest and is not valid before the DSC is)."""
    if key.issuer is not None and key.issuer != card.issuer:
        return f"issuer {card.issuer!r} does not match the key's issuer {key.issuer!r}", card
    not_before, not_after = None, key.not_after
    if key.x509_der is not None:
        try:
            info = x509util.read_certificate(key.x509_der)
        except KeyFileError as exc:
            return f"the signer certificate cannot be read: {exc}", card
        if info.eku_error is not None:
            return f"the DSC's key usage is unknown: {info.eku_error}", card
        allowed = info.dcc_types
        if allowed is not None and card.cert_type not in allowed:
            return (f"the DSC may sign only {' and '.join(sorted(allowed))} certificates, "
                    f"not {card.cert_type}"), card
        not_before = info.not_before
        if info.not_after is not None:
            not_after = info.not_after if not_after is None else min(not_after, info.not_after)
    if not_after is not None and card.issued_at > not_after:
        return "certificate issued after its signer certificate expired", card
    expires_at = card.expires_at if not_after is None or card.expires_at is None else min(card.expires_at, not_after)
    start = not_before if not_before is not None and not_before > card.issued_at else None
    return None, dataclasses.replace(card, expires_at=expires_at, not_before=start)


class HC1Format:
    """The EU DCC format (registered by prefix "HC1:")."""

    name = NAME
    prefix = PREFIX
    scheme = PREFIX
    base45_body = True

    def verify(self, text: str, trust: TrustStore, now: int, clock_skew: int) -> Verdict:
        card, signers = authenticate(unwrap(text), trust, RULES, parse_claims)
        problems = []
        for key in signers:
            why, checked = _dsc_rules(key, card)
            if why is None:
                return check_card(checked, trust, now, clock_skew)
            problems.append(why)
        raise CardRejected(Reason.BAD_SIGNATURE, problems[0], card.kid)


FORMAT = HC1Format()


def issue(dcc: Mapping[str, Any], private_key: Any, *, kid: bytes, issuer: str, issued_at: int,
          expires_at: int, alg: int = cose.ALG_ES256, kid_unprotected: bool = False) -> str:
    """Sign an EU DCC and return its QR text (issuer side: for pilots, tests and benchmarks)."""
    claims = {CLAIM_ISS: issuer, CLAIM_EXP: expires_at, CLAIM_IAT: issued_at, CLAIM_HCERT: {HCERT_DCC: dict(dcc)}}
    raw = cose.sign1(cbor.dumps(claims), private_key, alg, kid, kid_unprotected=kid_unprotected)
    return PREFIX + base45.encode(zlib.compress(raw, 9))
