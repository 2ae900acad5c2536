"""The part of verification that COSE_Sign1 card formats share (CK1 and HC1): envelope, key,
signature, then the claims, now authenticated. Each format gives its rules as a ``CoseRules``;
the order and the reasons are those of docs/card-format.md#verification.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from scanner.base.errors import CardRejected, Reason
from scanner.cards import cbor, cose
from scanner.cards.bundle import BundleKey
from scanner.cards.cbor import CborError
from scanner.cards.cose import CoseError
from scanner.cards.trust import TrustStore
from scanner.cards.verdict import Card


@dataclass(frozen=True, slots=True)
class CoseRules:
    """A format's algorithms and signature check, and the words its rejections use."""

    name: str  # "CK1": keys must be trusted for this format
    algs: Mapping[int, str]  # COSE alg id → the key's alg in the trust store
    signer: str  # who signs, in messages: "issuer key", "signer key"
    key: str  # what the trust store holds: "key", "signer certificate"
    documents: str  # "cards", "certificates"
    verify_signature: Callable[[Any, int, bytes, bytes], bool] = cose.verify_signature
    # an alg only in the unprotected header is accepted (it is not signed, but it can only pick one
    # of ``algs``, and a key is used only with its own alg: a changed alg fails, never passes)
    alg_unprotected: bool = False


def authenticate(raw: bytes, trust: TrustStore, rules: CoseRules,
                 parse_claims: Callable[[bytes, bytes], Card]) -> tuple[Card, list[BundleKey]]:
    """COSE_Sign1 bytes → (the card its payload holds, the trusted keys whose signature verifies).
    Raises CardRejected (malformed, revoked, unknown_key, bad_signature) with the kid when known."""
    try:
        protected, alg, kid, payload, signature = cose.sign1_fields(raw, alg_unprotected=rules.alg_unprotected)
    except (CborError, CoseError) as exc:
        raise CardRejected(Reason.MALFORMED, f"COSE: {exc}") from None
    if kid is None:
        raise CardRejected(Reason.MALFORMED, "no kid in the COSE header")
    if alg is None or alg not in rules.algs:
        allowed = " or ".join(f"{name} {a}" for a, name in rules.algs.items())
        raise CardRejected(Reason.MALFORMED, f"alg {alg} is not allowed in {rules.name} ({allowed})", kid)
    if kid in trust.revoked_kids:
        raise CardRejected(Reason.REVOKED, f"the {rules.signer} is revoked", kid)
    candidates = trust.lookup(kid)
    if not candidates:
        raise CardRejected(Reason.UNKNOWN_KEY, f"no trusted {rules.key} with this kid", kid)
    alg_name = rules.algs[alg]
    usable = trust.usable(kid, alg_name, rules.name)
    if not usable:
        k = candidates[0]
        why = (f"header alg {alg_name} does not match the key's {k.alg}" if k.alg != alg_name
               else f"the key is not trusted for {rules.name} {rules.documents}")
        raise CardRejected(Reason.BAD_SIGNATURE, why, kid)
    tbs = cose.sig_structure(protected, payload)
    check = rules.verify_signature
    signers = [k for k in usable if check(k.public_key, alg, tbs, signature)]
    if not signers:
        raise CardRejected(Reason.BAD_SIGNATURE, "signature does not verify", kid)
    try:
        card = parse_claims(payload, kid)
    except CardRejected as exc:
        exc.kid = kid
        raise
    return card, signers


def cwt_claims(payload: bytes) -> dict:
    """The CWT claims map of an authenticated payload, or a malformed rejection."""
    try:
        claims = cbor.loads(payload)
    except CborError as exc:
        raise CardRejected(Reason.MALFORMED, f"payload: {exc}") from None
    if type(claims) is not dict:
        raise CardRejected(Reason.MALFORMED, "payload is not a CWT claims map")
    return claims
