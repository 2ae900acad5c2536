"""Shared fixtures for the checkpoint-edge test suite.

Everything that generates keys is session-scoped (and so is everything built from it), so the
fixtures are also usable from Hypothesis tests.

Fixtures
--------
now            a fixed verification time (epoch seconds)
root_key       Ed25519 private key of the trust root that signs bundles
other_root_key an Ed25519 root this device does NOT trust
ed_key         Ed25519 private key of issuer "VN-HUE" (trusted, alg EdDSA)
es_key         P-256 private key of issuer "VN-DNG" (trusted, alg ES256)
rogue_ed_key, rogue_es_key   untrusted issuer keys of each type
issuers        {"ed": Issuer(...), "es": Issuer(...)} (name, private key, COSE alg, kid)
bundle_keys    the two BundleKey entries of the standard bundle
make_bundle_bytes(**kw)      signed bundle file bytes (defaults: the two issuers, version 7)
bundle_bytes   the standard bundle file
trust          TrustStore built from the standard bundle
make_trust(**kw)             TrustStore from a bundle made with make_bundle_bytes(**kw)
make_spec(key="ed", **kw)    scanner.cards.issuer.CardSpec valid at ``now`` for that issuer
make_claims(key="ed", **kw)  the CWT claims dict of such a card (scanner.cards.issuer.claims)
make_card(key="ed", compress=False, kid=None, **kw)   QR text "CK1:..." via scanner.cards.issuer.issue
sign_payload(payload, key="ed", ...)  QR text of ANY payload (bytes or a value to CBOR-encode),
               correctly signed: for building malformed-but-authentic cards
"""
from __future__ import annotations

import os
import zlib
from typing import Any, NamedTuple

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import settings

from scanner.cards import base45, cbor, cose
from scanner.cards import issuer as issuer_mod
from scanner.cards import keys as keymod
from scanner.cards.bundle import BundleKey, make_bundle, open_bundle
from scanner.cards.trust import TrustStore
from scanner.cards.verdict import Holder

pytest.register_assert_rewrite("support")  # the shared helpers' asserts explain themselves like a test's

from support.pki import OPERATOR_ROOT  # noqa: E402  (after the rewrite is registered)

# The suite is the gate every change lands through, so by default Hypothesis draws the same
# examples on every run (derandomize): a red run means a real change, never the dice.
# `HYPOTHESIS_PROFILE=explore` draws fresh random examples to look for new bugs (docs/testing.md).
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

NOW = 1_750_000_000  # 2025-06-15T15:06:40Z
DAY = 86_400
ED_ISSUER = "VN-HUE"
ES_ISSUER = "VN-DNG"


class Issuer(NamedTuple):
    name: str  # the issuer string on cards and in the bundle
    key: Any  # private key
    alg: int  # COSE alg id
    alg_name: str  # "EdDSA" / "ES256"
    kid: bytes


@pytest.fixture(scope="session")
def now() -> int:
    return NOW


@pytest.fixture(scope="session")
def root_key() -> ed25519.Ed25519PrivateKey:
    return OPERATOR_ROOT  # the root that vouches for the test servers too (support.servers)


@pytest.fixture(scope="session")
def other_root_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def es_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def rogue_ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def rogue_es_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def issuers(ed_key, es_key) -> dict[str, Issuer]:
    return {
        "ed": Issuer(ED_ISSUER, ed_key, cose.ALG_EDDSA, "EdDSA", keymod.kid_of(ed_key.public_key())),
        "es": Issuer(ES_ISSUER, es_key, cose.ALG_ES256, "ES256", keymod.kid_of(es_key.public_key())),
    }


@pytest.fixture(scope="session")
def bundle_keys(issuers) -> list[BundleKey]:
    return [BundleKey(i.kid, i.alg_name, i.name, i.key.public_key()) for i in issuers.values()]


@pytest.fixture(scope="session")
def make_bundle_bytes(root_key, bundle_keys):
    def factory(*, root=None, version: int = 7, issued_at: int = NOW - DAY,
                expires_at: int = NOW + 30 * DAY, keys=None, revoked_cards=(), revoked_kids=()) -> bytes:
        return make_bundle(root or root_key, version=version, issued_at=issued_at,
                           expires_at=expires_at, keys=bundle_keys if keys is None else keys,
                           revoked_cards=revoked_cards, revoked_kids=revoked_kids)
    return factory


@pytest.fixture(scope="session")
def bundle_bytes(make_bundle_bytes) -> bytes:
    return make_bundle_bytes()


@pytest.fixture(scope="session")
def trust(bundle_bytes, root_key) -> TrustStore:
    return TrustStore.build(bundles=[open_bundle(bundle_bytes, [root_key.public_key()])])


@pytest.fixture(scope="session")
def make_trust(make_bundle_bytes, root_key):
    def factory(**kw) -> TrustStore:
        data = make_bundle_bytes(**kw)
        return TrustStore.build(bundles=[open_bundle(data, [root_key.public_key()])])
    return factory


@pytest.fixture(scope="session")
def make_spec(issuers):
    def factory(key: str = "ed", *, name: str = "Nguyen Van An", birth_date: str = "1985-03-02",
                id_masked: str | None = None, status: str | None = None, last_dose: str | None = None,
                issuer: str | None = None, issued_at: int = NOW - DAY, expires_at: int = NOW + 365 * DAY,
                not_before: int | None = None, card_id: bytes | None = None) -> issuer_mod.CardSpec:
        holder = Holder(name, birth_date, id_masked, status, last_dose)
        kw = {} if card_id is None else {"card_id": card_id}
        return issuer_mod.CardSpec(issuer if issuer is not None else issuers[key].name, holder,
                                   issued_at, expires_at, not_before, **kw)
    return factory


@pytest.fixture(scope="session")
def make_claims(make_spec):
    def factory(key: str = "ed", **kw) -> dict:
        return issuer_mod.claims(make_spec(key, **kw))
    return factory


@pytest.fixture(scope="session")
def make_card(issuers, make_spec):
    """QR text of a card issued with scanner.cards.issuer.issue. ``key``: "ed", "es" or a private key."""
    def factory(key="ed", *, compress: bool = False, kid: bytes | None = None, **kw) -> str:
        if isinstance(key, str):
            private = issuers[key].key
            spec = make_spec(key, **kw)
        else:
            private = key
            spec = make_spec("ed", **kw)
        return issuer_mod.issue(spec, private, compress=compress, kid=kid)
    return factory


@pytest.fixture(scope="session")
def sign_payload(issuers):
    """QR text of a correctly signed COSE_Sign1 around an arbitrary payload.

    ``payload``: bytes (used as is) or any value (encoded with scanner.cards.cbor.dumps).
    ``key``: "ed"/"es" or a private key; ``alg``/``kid`` override the header values.
    """
    def factory(payload, key="ed", *, alg: int | None = None, kid: bytes | None = None,
                tagged: bool = True, kid_unprotected: bool = False, compress: bool = False) -> str:
        if not isinstance(payload, bytes):
            payload = cbor.dumps(payload)
        if isinstance(key, str):
            iss = issuers[key]
            private, default_alg, default_kid = iss.key, iss.alg, iss.kid
        else:
            private = key
            default_alg = cose.ALG_EDDSA if isinstance(key, ed25519.Ed25519PrivateKey) else cose.ALG_ES256
            default_kid = keymod.kid_of(key.public_key())
        alg = default_alg if alg is None else alg
        kid = default_kid if kid is None else kid
        if alg in (cose.ALG_EDDSA, cose.ALG_ES256) and alg != default_alg:
            # a header alg that does not match the key: sign with what the key can do
            header = {cose.HDR_ALG: alg} if kid_unprotected else {cose.HDR_ALG: alg, cose.HDR_KID: kid}
            protected = cbor.dumps(header)
            sig = cose.sign(private, default_alg, cose.sig_structure(protected, payload))
            msg = [protected, {cose.HDR_KID: kid} if kid_unprotected else {}, payload, sig]
            raw = cbor.dumps(cbor.Tag(cose.COSE_SIGN1_TAG, msg) if tagged else msg)
        elif alg not in (cose.ALG_EDDSA, cose.ALG_ES256):
            header = {cose.HDR_ALG: alg, cose.HDR_KID: kid}
            protected = cbor.dumps(header)
            sig = cose.sign(private, default_alg, cose.sig_structure(protected, payload))
            msg = [protected, {}, payload, sig]
            raw = cbor.dumps(cbor.Tag(cose.COSE_SIGN1_TAG, msg) if tagged else msg)
        else:
            raw = cose.sign1(payload, private, alg, kid, tagged=tagged, kid_unprotected=kid_unprotected)
        return wrap(raw, compress=compress)
    return factory


def wrap(cose_bytes: bytes, *, compress: bool = False) -> str:
    """COSE bytes -> QR text, independent of scanner.cards.issuer.wrap."""
    if compress:
        cose_bytes = zlib.compress(cose_bytes, 9)
    return "CK1:" + base45.encode(cose_bytes)


@pytest.fixture(scope="session")
def wrap_cose():
    """Function: COSE bytes (optionally zlib-compressed) -> "CK1:" QR text."""
    return wrap


@pytest.fixture(scope="session")
def unwrap_cose():
    """Function: uncompressed "CK1:" QR text -> COSE bytes."""
    def unwrap(text: str) -> bytes:
        assert text.startswith("CK1:")
        return base45.decode(text[4:])
    return unwrap
