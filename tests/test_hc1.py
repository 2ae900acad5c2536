"""EU Digital COVID Certificates ("HC1:"): real keys and certificates made here, every verdict path.

Signer certificates (DSCs) are made with cryptography's X.509 builder (scanner.cards.x509util.make_dsc),
cards with scanner.cards.formats.hc1.issue; the conformance test (test_conformance_dcc.py) runs the EU's
own test data.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import zlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scanner.base.errors import Reason
from scanner.cards import base45, cbor, cose, x509util
from scanner.cards import keys as keymod
from scanner.cards.bundle import BundleKey, make_bundle, open_bundle
from scanner.cards.formats import hc1
from scanner.cards.trust import TrustStore, load_trust
from scanner.cards.verifier import verify

NOW = 1_750_000_000
DAY = 86_400
VACC_OIDS = {"test": "1.3.6.1.4.1.1847.2021.1.1", "vaccination": "1.3.6.1.4.1.1847.2021.1.2",
             "recovery": "1.3.6.1.4.1.1847.2021.1.3"}
ALT_OIDS = {k: v.replace("4.1.1847", "4.1.0.1847") for k, v in VACC_OIDS.items()}
SERVER_AUTH = "1.3.6.1.5.5.7.3.1"

ENTRIES = {
    "vaccination": ("v", {"tg": "840539006", "vp": "1119349007", "mp": "EU/1/20/1528",
                          "ma": "ORG-100030215", "dn": 2, "sd": 2, "dt": "2021-09-01", "co": "VN",
                          "is": "Bộ Y tế", "ci": "URN:UVCI:01:VN:VACC0001#Q"}),
    "test": ("t", {"tg": "840539006", "tt": "LP6464-4", "sc": "2021-09-01T10:00:00Z",
                   "tr": "260415000", "tc": "Hue Central Hospital", "co": "VN", "is": "Bộ Y tế",
                   "ci": "URN:UVCI:01:VN:TEST0001#R"}),
    "recovery": ("r", {"tg": "840539006", "fr": "2021-08-01", "co": "VN", "is": "Bộ Y tế",
                       "df": "2021-08-12", "du": "2022-01-30", "ci": "URN:UVCI:01:VN:RECO0001#S"}),
}


def dcc(kind: str = "vaccination", **extra) -> dict:
    key, entry = ENTRIES[kind]
    base = {"ver": "1.3.0", "dob": "1985-03-02",
            "nam": {"fn": "Nguyễn", "fnt": "NGUYEN", "gn": "Văn An", "gnt": "VAN<AN"}, key: [entry]}
    base.update(extra)
    return base


@pytest.fixture(scope="module")
def es_key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ps_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_der(key, usages=(), extensions=(), nb=NOW - 365 * DAY, na=NOW + 365 * DAY) -> bytes:
    return x509util.make_dsc(key, country="VN", not_before=nb, not_after=na, key_usages=tuple(usages),
                             extensions=tuple(extensions))


def store_of(*ders: bytes, issuer: str | None = None, formats=None) -> TrustStore:
    keys = []
    for der in ders:
        info = x509util.read_certificate(der)
        keys.append(BundleKey(x509util.hc1_kid(der), keymod.alg_of(info.public_key), issuer,
                              info.public_key, formats, None, der))
    return TrustStore.build(keys)


def card(key, der: bytes, kind: str = "vaccination", *, iat: int = NOW - DAY, exp: int = NOW + 30 * DAY,
         iss: str = "VN", content: dict | None = None, **kw) -> str:
    alg = cose.ALG_PS256 if isinstance(key, rsa.RSAPrivateKey) else cose.ALG_ES256
    return hc1.issue(content if content is not None else dcc(kind), key, kid=x509util.hc1_kid(der),
                     issuer=iss, issued_at=iat, expires_at=exp, alg=alg, **kw)


def signed(key, der: bytes, claims, *, alg: int | None = None, protected: dict | None = None,
           unprotected: dict | None = None, tag61: bool = False, compress: bool = True) -> str:
    """QR text of a COSE_Sign1 around any payload, correctly signed (for malformed-but-authentic).
    ``protected={}`` is the empty protected header (a zero-length byte string, RFC 9052)."""
    payload = claims if isinstance(claims, bytes) else cbor.dumps(claims)
    if alg is None:
        alg = cose.ALG_PS256 if isinstance(key, rsa.RSAPrivateKey) else cose.ALG_ES256
    header = protected if protected is not None else {1: alg, 4: x509util.hc1_kid(der)}
    prot = cbor.dumps(header) if header else b""
    sig = cose.sign(key, alg, cose.sig_structure(prot, payload))
    raw = cbor.dumps(cbor.Tag(18, [prot, unprotected or {}, payload, sig]))
    if tag61:
        raw = b"\xd8\x3d" + raw
    return "HC1:" + base45.encode(zlib.compress(raw, 9) if compress else raw)


def claims_of(kind: str = "vaccination", over: dict | None = None) -> dict:
    c = {1: "VN", 4: NOW + 30 * DAY, 6: NOW - DAY, -260: {1: dcc(kind)}}
    c.update(over or {})
    return c


# ============================================================================ accept

@pytest.mark.parametrize("alg", ["ES256", "PS256"])
@pytest.mark.parametrize("kind", ["vaccination", "test", "recovery"])
def test_accepts_every_type_with_both_algorithms(alg, kind, es_key, ps_key):
    key = es_key if alg == "ES256" else ps_key
    der = make_der(key)
    v = verify(card(key, der, kind), store_of(der), NOW)
    assert v.accepted and v.reason is Reason.OK and v.format == "HC1", v
    c = v.card
    assert c.cert_type == kind and c.issuer == "VN" and c.kid == hashlib.sha256(der).digest()[:8]
    assert c.holder.name == "Nguyễn, Văn An" and c.holder.birth_date == "1985-03-02"
    assert c.card_id == hashlib.sha256(ENTRIES[kind][1]["ci"].encode()).digest()[:16]
    assert (c.issued_at, c.expires_at) == (NOW - DAY, NOW + 30 * DAY)
    d = v.to_dict()
    assert d["cert_type"] == kind and d["format"] == "HC1" and d["holder"]["name"] == "Nguyễn, Văn An"
    if kind == "vaccination":
        assert (c.holder.status, c.holder.last_dose) == ("dose 2/2", "2021-09-01")
    if kind == "test":
        assert c.holder.status == "negative"


def test_ps256_with_any_salt_length(ps_key):
    """hcert says salt 32; a signer that used the maximum salt still produced a valid RSASSA-PSS
    signature, and OpenSSL-based verifiers accept it: so do we."""
    der = make_der(ps_key)
    payload = cbor.dumps(claims_of())
    prot = cbor.dumps({1: cose.ALG_PS256, 4: x509util.hc1_kid(der)})
    tbs = cose.sig_structure(prot, payload)
    for salt in (padding.PSS.MAX_LENGTH, 0, 20):
        sig = ps_key.sign(tbs, padding.PSS(padding.MGF1(hashes.SHA256()), salt), hashes.SHA256())
        text = "HC1:" + base45.encode(zlib.compress(cbor.dumps(cbor.Tag(18, [prot, {}, payload, sig]))))
        assert verify(text, store_of(der), NOW).reason is Reason.OK, salt


def test_envelope_variants(es_key):
    der = make_der(es_key)
    kid = x509util.hc1_kid(der)
    store = store_of(der)
    claims = claims_of()
    ok = [
        signed(es_key, der, claims),
        signed(es_key, der, claims, tag61=True),  # CWT tag 61 around the COSE tag
        signed(es_key, der, claims, protected={1: cose.ALG_ES256}, unprotected={4: kid}),  # kid unprotected
        card(es_key, der, kid_unprotected=True),
    ]
    for text in ok:
        assert verify(text, store, NOW).reason is Reason.OK
    # a kid in both headers: the protected one counts (here a wrong one)
    both = signed(es_key, der, claims, protected={1: cose.ALG_ES256, 4: b"12345678"}, unprotected={4: kid})
    assert verify(both, store, NOW).reason is Reason.UNKNOWN_KEY


@pytest.mark.parametrize("alg", ["ES256", "PS256"])
def test_alg_only_in_the_unprotected_header_verifies(alg, es_key, ps_key):
    """The EU test suite expects a DCC whose protected header is empty, alg and kid unprotected, to
    verify. The unprotected alg is not signed, but a key is used only with its own alg."""
    key = es_key if alg == "ES256" else ps_key
    der = make_der(key)
    kid, alg_id = x509util.hc1_kid(der), cose.ALG_IDS[alg]
    text = signed(key, der, claims_of(), alg=alg_id, protected={}, unprotected={1: alg_id, 4: kid})
    v = verify(text, store_of(der), NOW)
    assert v.reason is Reason.OK, v
    assert cbor.loads(zlib.decompress(base45.decode(text[4:]))).value[0] == b""  # really empty
    # alg in the protected header and kid unprotected, alg unprotected and kid protected
    assert verify(signed(key, der, claims_of(), alg=alg_id, protected={1: alg_id}, unprotected={4: kid}),
                  store_of(der), NOW).reason is Reason.OK
    assert verify(signed(key, der, claims_of(), alg=alg_id, protected={4: kid}, unprotected={1: alg_id}),
                  store_of(der), NOW).reason is Reason.OK
    # changing the unsigned alg only makes the check fail: the key's own alg decides
    other = cose.ALG_PS256 if alg == "ES256" else cose.ALG_ES256
    v = verify(signed(key, der, claims_of(), alg=alg_id, protected={}, unprotected={1: other, 4: kid}),
               store_of(der), NOW)
    assert v.reason is Reason.BAD_SIGNATURE and "alg" in v.detail
    # in both headers the protected alg counts, as for the kid
    v = verify(signed(key, der, claims_of(), alg=alg_id, protected={1: alg_id, 4: kid}, unprotected={1: other}),
               store_of(der), NOW)
    assert v.reason is Reason.OK
    # an alg that is not an integer, or not an HC1 alg, is still malformed
    for bad in ("ES256", cose.ALG_EDDSA):
        v = verify(signed(key, der, claims_of(), alg=alg_id, protected={}, unprotected={1: bad, 4: kid}),
                   store_of(der), NOW)
        assert v.reason is Reason.MALFORMED


def test_a_payload_that_is_not_zlib_compressed_is_malformed(es_key):
    """hcert: the COSE bytes SHALL be ZLIB-compressed; the EU test suite expects an uncompressed
    payload to fail, signature valid or not."""
    der = make_der(es_key)
    for text in (signed(es_key, der, claims_of(), compress=False),
                 signed(es_key, der, claims_of(), compress=False, tag61=True),
                 "HC1:" + base45.encode(zlib.compress(b"x")[:2] + cose.sign1(cbor.dumps(claims_of()), es_key,
                                                                               cose.ALG_ES256, x509util.hc1_kid(der)))):
        v = verify(text, store_of(der), NOW)
        assert v.reason is Reason.MALFORMED and "zlib" in v.detail.lower(), v
    # raw DEFLATE without the zlib header is not ZLIB either
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = raw.compress(cose.sign1(cbor.dumps(claims_of()), es_key, cose.ALG_ES256, x509util.hc1_kid(der)))
    v = verify("HC1:" + base45.encode(deflated + raw.flush()), store_of(der), NOW)
    assert v.reason is Reason.MALFORMED


def test_a_long_issuer_name_is_shown_and_a_hostile_one_refused(es_key):
    """hcert sets no length for iss: an 80-character ministry name is a genuine certificate; only
    a length no issuer writes (over 255) is refused, as malformed."""
    der = make_der(es_key)
    ministry = "Bộ Y tế nước Cộng hoà xã hội chủ nghĩa Việt Nam - Cục Y tế dự phòng, Hà Nội 2021"
    assert len(ministry) == 80
    v = verify(card(es_key, der, iss=ministry), store_of(der), NOW)
    assert v.reason is Reason.OK and v.card.issuer == ministry
    assert verify(card(es_key, der, iss=ministry), store_of(der, issuer=ministry), NOW).accepted
    assert verify(card(es_key, der, iss="X" * 255), store_of(der), NOW).accepted
    v = verify(card(es_key, der, iss="X" * 256), store_of(der), NOW)
    assert v.reason is Reason.MALFORMED and "iss" in v.detail and "255" in v.detail


# ============================================================================ signature and keys

def test_forged_and_wrong_keys(es_key, ps_key):
    der = make_der(es_key)
    rogue = ec.generate_private_key(ec.SECP256R1())
    forged = hc1.issue(dcc(), rogue, kid=x509util.hc1_kid(der), issuer="VN", issued_at=NOW - DAY,
                       expires_at=NOW + DAY)
    v = verify(forged, store_of(der), NOW)
    assert v.reason is Reason.BAD_SIGNATURE and v.card is None and v.kid == x509util.hc1_kid(der)
    # header alg PS256 but the DSC holds a P-256 key
    text = signed(es_key, der, claims_of(), alg=cose.ALG_ES256,
                  protected={1: cose.ALG_PS256, 4: x509util.hc1_kid(der)})
    v = verify(text, store_of(der), NOW)
    assert v.reason is Reason.BAD_SIGNATURE and "alg" in v.detail
    # unknown kid, revoked kid, a key not trusted for HC1
    assert verify(card(es_key, der), TrustStore.build(), NOW).reason is Reason.UNKNOWN_KEY
    revoked = dataclasses.replace(store_of(der), revoked_kids=frozenset({x509util.hc1_kid(der)}))
    assert verify(card(es_key, der), revoked, NOW).reason is Reason.REVOKED
    v = verify(card(es_key, der), store_of(der, formats=frozenset({"CK1"})), NOW)
    assert v.reason is Reason.BAD_SIGNATURE and "HC1" in v.detail
    assert verify(card(es_key, der), store_of(der, formats=frozenset({"HC1"})), NOW).accepted


def test_eddsa_is_not_an_hc1_algorithm():
    key = ed25519.Ed25519PrivateKey.generate()
    kid = keymod.kid_of(key.public_key())
    text = "HC1:" + base45.encode(zlib.compress(cose.sign1(cbor.dumps(claims_of()), key, cose.ALG_EDDSA, kid)))
    store = TrustStore.build([BundleKey(kid, "EdDSA", None, key.public_key())])
    v = verify(text, store, NOW)
    assert v.reason is Reason.MALFORMED and "not allowed in HC1" in v.detail


def test_issuer_binding_of_a_bundle_key(es_key):
    der = make_der(es_key)
    assert verify(card(es_key, der, iss="VN"), store_of(der, issuer="VN"), NOW).accepted
    v = verify(card(es_key, der, iss="DE"), store_of(der, issuer="VN"), NOW)
    assert v.reason is Reason.BAD_SIGNATURE and "issuer" in v.detail


def test_revoked_certificate_by_uvci_hash(es_key, root_key):
    der = make_der(es_key)
    info = x509util.read_certificate(der)
    key = BundleKey(x509util.hc1_kid(der), "ES256", "VN", info.public_key, None, None, der)
    uvci_hash = hashlib.sha256(ENTRIES["test"][1]["ci"].encode()).digest()[:16]
    data = make_bundle(root_key, version=1, issued_at=NOW - DAY, expires_at=NOW + DAY, keys=[key],
                       revoked_cards=[uvci_hash])
    store = TrustStore.build(bundles=[open_bundle(data, [root_key.public_key()])])
    assert verify(card(es_key, der, "test"), store, NOW).reason is Reason.REVOKED
    assert verify(card(es_key, der, "vaccination"), store, NOW).accepted


# ============================================================================ DSC key usage

@pytest.mark.parametrize("spelling", [VACC_OIDS, ALT_OIDS], ids=["oid", "oid-with-0"])
@pytest.mark.parametrize("allowed", [("test",), ("vaccination",), ("recovery",), ("test", "vaccination")])
def test_key_usage_limits_the_types_a_dsc_signs(spelling, allowed, es_key):
    der = make_der(es_key, usages=[spelling[k] for k in allowed] + [SERVER_AUTH])
    store = store_of(der)
    for kind in ENTRIES:
        v = verify(card(es_key, der, kind), store, NOW)
        if kind in allowed:
            assert v.reason is Reason.OK, (kind, v)
        else:
            assert v.reason is Reason.BAD_SIGNATURE, (kind, v)
            assert f"not {kind}" in v.detail and "may sign only" in v.detail
            assert v.card is None


@pytest.mark.parametrize("usages", [(), (SERVER_AUTH,)], ids=["no-eku", "unrelated-eku"])
def test_a_dsc_without_dcc_oids_signs_every_type(usages, es_key):
    der = make_der(es_key, usages=usages)
    for kind in ENTRIES:
        assert verify(card(es_key, der, kind), store_of(der), NOW).accepted


def test_unreadable_key_usage_is_a_clean_reject(es_key):
    # an EKU extension holding an INTEGER instead of OIDs: the key usage cannot be known
    bad_eku = x509.UnrecognizedExtension(x509.ObjectIdentifier("2.5.29.37"), b"\x30\x03\x02\x01\x07")
    der = make_der(es_key, extensions=[bad_eku])
    v = verify(card(es_key, der), store_of(der), NOW)
    assert v.reason is Reason.BAD_SIGNATURE and "key usage is unknown" in v.detail


def test_non_strict_der_dsc_like_finland(es_key):
    """BasicConstraints encoding the default cA FALSE: cryptography cannot read the extensions,
    OpenSSL can; the key usage beside it is still honoured."""
    bc = x509.UnrecognizedExtension(x509.ObjectIdentifier("2.5.29.19"), b"\x30\x03\x01\x01\x00")
    der = make_der(es_key, usages=[VACC_OIDS["test"]], extensions=[bc])
    with pytest.raises(ValueError):
        list(x509.load_der_x509_certificate(der).extensions)
    store = store_of(der)
    assert verify(card(es_key, der, "test"), store, NOW).accepted
    assert verify(card(es_key, der, "vaccination"), store, NOW).reason is Reason.BAD_SIGNATURE


def _loose_length(der: bytes) -> bytes:
    """The same certificate with a non-minimal outer length (BER; OpenSSL reads it, cryptography not)."""
    assert der[1] == 0x82
    return b"\x30\x83\x00" + der[2:]


def test_dsc_cryptography_refuses_loaded_from_files_and_bundles(es_key, root_key, tmp_path):
    der = _loose_length(make_der(es_key, usages=[ALT_OIDS["vaccination"]]))
    with pytest.raises(ValueError):
        x509.load_der_x509_certificate(der)
    text = card(es_key, der)  # kid = SHA-256 of these very bytes
    (tmp_path / "dsc.der").write_bytes(der)
    pem = b"-----BEGIN CERTIFICATE-----\n" + __import__("base64").encodebytes(der) + b"-----END CERTIFICATE-----\n"
    (tmp_path / "dsc.pem").write_bytes(pem)
    for name in ("dsc.der", "dsc.pem"):
        store = load_trust([tmp_path / name])
        assert store.key_count == 1
        assert verify(text, store, NOW).accepted, name
        assert verify(card(es_key, der, "test"), store, NOW).reason is Reason.BAD_SIGNATURE
    info = x509util.read_certificate(der)
    key = BundleKey(x509util.hc1_kid(der), "ES256", "VN", info.public_key, frozenset({"HC1"}), None, der)
    data = make_bundle(root_key, version=1, issued_at=NOW - DAY, expires_at=NOW + DAY, keys=[key])
    store = TrustStore.build(bundles=[open_bundle(data, [root_key.public_key()])])
    assert verify(text, store, NOW).accepted


def test_certificate_file_is_found_by_the_hc1_kid(es_key, tmp_path):
    der = make_der(es_key)
    (tmp_path / "dsc.pem").write_bytes(x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM))
    store = load_trust([tmp_path / "dsc.pem"])
    assert store.key_count == 1  # one key, indexed under two kids
    assert store.lookup(x509util.hc1_kid(der)) == store.lookup(keymod.kid_of(es_key.public_key()))
    assert verify(card(es_key, der), store, NOW).accepted


# ============================================================================ validity

def test_dsc_validity_bounds_the_card(es_key):
    der = make_der(es_key, nb=NOW - 10 * DAY, na=NOW + 10 * DAY)
    store = store_of(der)
    long_card = card(es_key, der, iat=NOW - DAY, exp=NOW + 100 * DAY)
    v = verify(long_card, store, NOW)
    assert v.accepted and v.card.expires_at == NOW + 10 * DAY  # the earlier of exp and DSC notAfter
    v = verify(long_card, store, NOW + 20 * DAY)
    assert v.reason is Reason.EXPIRED and v.card is not None
    early = card(es_key, der, iat=NOW - 30 * DAY, exp=NOW + DAY)  # issued before the DSC was valid
    assert verify(early, store, NOW - 20 * DAY).reason is Reason.NOT_YET_VALID
    assert verify(early, store, NOW).accepted
    late = card(es_key, der, iat=NOW + 11 * DAY, exp=NOW + 40 * DAY)
    v = verify(late, store, NOW + 12 * DAY)
    assert v.reason is Reason.BAD_SIGNATURE and "expired" in v.detail


def test_card_times(es_key):
    der = make_der(es_key)
    store = store_of(der)
    text = card(es_key, der, iat=NOW - DAY, exp=NOW + DAY)
    assert verify(text, store, NOW + DAY + 300).accepted  # clock skew
    assert verify(text, store, NOW + DAY + 301).reason is Reason.EXPIRED
    assert verify(text, store, NOW - DAY - 300).accepted
    assert verify(text, store, NOW - DAY - 301).reason is Reason.NOT_YET_VALID
    floats = signed(es_key, der, claims_of(over={4: NOW + DAY + 0.75, 6: NOW - DAY + 0.5}))  # as Hungary writes
    v = verify(floats, store, NOW)
    assert v.accepted and (v.card.issued_at, v.card.expires_at) == (NOW - DAY, NOW + DAY)


# ============================================================================ malformed

@pytest.mark.parametrize("claims, needle", [
    (claims_of(over={-260: None}), "hcert"),
    (claims_of(over={-260: {1: "text"}}), "hcert"),
    (claims_of(over={-260: {2: dcc()}}), "hcert"),
    (claims_of(over={-260: {1: {"nam": {"fn": "A"}, "dob": "2000"}}}), "no vaccination"),
    (claims_of(over={-260: {1: dcc("test", v=ENTRIES["vaccination"][1:])}}), "more than one"),
    (claims_of(over={-260: {1: dcc("test", t=[])}}), "non-empty list"),
    (claims_of(over={-260: {1: dcc("test", t=["x"])}}), "non-empty list"),
    (claims_of(over={1: 7}), "iss"),
    (claims_of(over={1: "X" * 256}), "iss"),
    ({1: "VN", 6: NOW, -260: {1: dcc()}}, "exp"),
    (claims_of(over={4: "tomorrow"}), "exp"),
    (claims_of(over={6: float("nan")}), "iat"),
    (claims_of(over={4: -5}), "exp"),
    ([1, 2, 3], "claims map"),
    (b"\xff\xff", "payload"),
])
def test_authentic_but_malformed_content(claims, needle, es_key):
    der = make_der(es_key)
    v = verify(signed(es_key, der, claims), store_of(der), NOW)
    assert v.reason is Reason.MALFORMED and needle in v.detail and v.card is None
    assert v.kid == x509util.hc1_kid(der)


@pytest.mark.parametrize("text", [
    "HC1:", "HC1:A", "HC1:::::", "HC1:" + base45.encode(b"\x78\x9c\x00"),
    "HC1:" + base45.encode(zlib.compress(b"\x00" * 40_000)),  # inflates past 32 KiB
    "HC1:" + base45.encode(zlib.compress(cbor.dumps([1, 2]))),
    "HC1:" + base45.encode(zlib.compress(cbor.dumps(cbor.Tag(18, [b"", {}, b"", b""])))),
])
def test_broken_envelopes(text, es_key):
    v = verify(text, store_of(make_der(es_key)), NOW)
    assert v.reason is Reason.MALFORMED and v.format == "HC1"


def test_odd_holder_data_is_shown_not_refused(es_key):
    """Like the NL fuzz set: partial or impossible dates, empty or unusual names; valid signatures."""
    der = make_der(es_key)
    store = store_of(der)
    cases = [
        ({"fn": "", "gn": ""}, "1963", "", "1963"),
        ({"fnt": "DOE"}, "1964-01", "DOE", "1964-01"),
        ({"fn": "Ölçer 🙂", "gn": "Ana\u202eX"}, "1963-00", "Ölçer 🙂, Ana\u202eX", "1963-00"),
        ("not a map", "1980-01-01T00:00:00", "", "1980-01-01"),
        ({"fn": "X" * 200}, None, "X" * 79 + "…", ""),
    ]
    for nam, dob, name, birth in cases:
        content = dcc(nam=nam, dob=dob)
        v = verify(card(es_key, der, content=content), store, NOW)
        assert v.accepted, v
        assert (v.card.holder.name, v.card.holder.birth_date) == (name, birth)
    no_iss = signed(es_key, der, {4: NOW + DAY, 6: NOW - DAY, -260: {1: dcc()}})
    assert verify(no_iss, store, NOW).card.issuer == "VN"  # the entry's country


# ============================================================================ fuzz

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(alphabet=base45.ALPHABET, max_size=300), st.text(max_size=100)))
def test_fuzz_text_never_raises(es_key, body):
    v = verify("HC1:" + body, store_of(make_der_cached(es_key)), NOW)
    assert v.reason in {Reason.MALFORMED, Reason.UNKNOWN_KEY, Reason.BAD_SIGNATURE}
    assert v.detail != "internal error while verifying"


_DER_CACHE: dict[int, bytes] = {}


def make_der_cached(key) -> bytes:
    return _DER_CACHE.setdefault(id(key), make_der(key))


_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2 ** 40, 2 ** 40), st.text(max_size=20),
              st.floats(allow_nan=True), st.binary(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.text(max_size=4), st.integers(-300, 10)), inner,
                                            max_size=4)),
    max_leaves=20)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dcc_content=_values, iss=_values, exp=_values)
def test_fuzz_signed_content_never_raises(es_key, dcc_content, iss, exp):
    der = make_der_cached(es_key)
    text = signed(es_key, der, {1: iss, 4: exp, 6: NOW - DAY, -260: {1: dcc_content}})
    v = verify(text, store_of(der), NOW)
    assert v.detail != "internal error while verifying"
    assert v.reason in {Reason.OK, Reason.MALFORMED, Reason.EXPIRED, Reason.NOT_YET_VALID}


# ============================================================================ CLI

def run_cli(*args, stdin=None):
    env = {**os.environ, "CHECKPOINT_LANG": ""}
    return subprocess.run([sys.executable, "-m", "scanner", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=120, check=False)


def test_cli_verifies_hc1_with_a_dsc_file(es_key, tmp_path):
    der = make_der(es_key, usages=[VACC_OIDS["vaccination"]])
    (tmp_path / "dsc.der").write_bytes(der)
    text = card(es_key, der, iat=1_700_000_000, exp=1_800_000_000)
    r = run_cli("verify", "--trust", str(tmp_path / "dsc.der"), "--at", str(NOW), "--json", text)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["format"] == "HC1" and out["cert_type"] == "vaccination" and out["issuer"] == "VN"
    r = run_cli("verify", "--trust", str(tmp_path / "dsc.der"), "--at", str(NOW), "-", stdin=text + "\n")
    assert r.returncode == 0 and "chứng nhận tiêm chủng" in r.stdout and "Nguyễn, Văn An" in r.stdout
    bad = card(es_key, der, "test", iat=1_700_000_000, exp=1_800_000_000)
    r = run_cli("verify", "--trust", str(tmp_path / "dsc.der"), "--at", str(NOW), "--lang", "en", bad)
    assert r.returncode == 1 and "bad_signature" in r.stdout and "may sign only vaccination" in r.stdout
