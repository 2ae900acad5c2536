"""SMART Health Cards ("shc:/"): cards signed here with real P-256 keys, every verdict path, the
chunk assembler of multi-part cards, and revocation by rid. The framework's own example cards and
key are run in test_conformance_shc.py."""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import itertools
import json
import zlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scanner.base.errors import Reason
from scanner.cards import cose, jwks
from scanner.cards.bundle import BundleKey
from scanner.cards.formats import shc
from scanner.cards.jwks import b64url_encode
from scanner.cards.revocation import RevocationSet
from scanner.cards.trust import TrustStore, load_trust
from scanner.cards.verifier import verify

NOW = 1_750_000_000
DAY = 86_400
ISS = "https://health.example.vn/issuer"


@pytest.fixture(scope="module")
def key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def jwk(key):
    return jwks.jwk_of(key.public_key())


@pytest.fixture(scope="module")
def store(jwk):
    return TrustStore.build(jwks.parse_jwks({"keys": [jwk]}).keys)


def claims(*, nbf=NOW - DAY, exp=None, rid=None, iss=ISS, entries=None, types=None) -> dict:
    if entries is None:
        entries = [
            {"fullUrl": "resource:0", "resource": {"resourceType": "Patient", "name": [
                {"family": "Nguyễn", "given": ["Thị", "Hương"]}], "birthDate": "1990-05-17"}},
            {"fullUrl": "resource:1", "resource": {"resourceType": "Immunization", "status": "completed",
                                                   "occurrenceDateTime": "2021-03-01",
                                                   "patient": {"reference": "resource:0"}}},
            {"fullUrl": "resource:2", "resource": {"resourceType": "Immunization", "status": "completed",
                                                   "occurrenceDateTime": "2021-04-05",
                                                   "patient": {"reference": "resource:0"}}},
        ]
    vc = {"type": types or ["https://smarthealth.cards#health-card"],
          "credentialSubject": {"fhirVersion": "4.0.1",
                                "fhirBundle": {"resourceType": "Bundle", "type": "collection", "entry": entries}}}
    if rid is not None:
        vc["rid"] = rid
    out = {"iss": iss, "nbf": nbf, "vc": vc}
    if exp is not None:
        out["exp"] = exp
    return out


def jws_of(key, jwk, payload: dict | None = None, **kw) -> str:
    return shc.sign_jws(payload if payload is not None else claims(**kw), key, jwk["kid"])


def text_of(key, jwk, **kw) -> str:
    return shc.qr_texts(jws_of(key, jwk, **kw))[0]


def raw_jws(key, header: dict, body: bytes) -> str:
    """A JWS with any header and payload bytes, correctly signed."""
    h = b64url_encode(json.dumps(header).encode())
    signing_input = f"{h}.{b64url_encode(body)}"
    sig = cose.sign(key, cose.ALG_ES256, signing_input.encode())
    return f"{signing_input}.{b64url_encode(sig)}"


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def reason(text, store, now=NOW):
    return verify(text, store, now).reason


# ============================================================================ accept

def test_accepts_a_card_and_shows_the_holder(key, jwk, store):
    text = text_of(key, jwk)
    assert set(text[5:]) <= set("0123456789")
    v = verify(text, store, NOW)
    assert v.accepted and v.format == "SHC", v
    c = v.card
    assert c.issuer == ISS and c.kid == jwks.b64url_decode(jwk["kid"]) and c.cert_type == "vaccination"
    assert (c.holder.name, c.holder.birth_date, c.holder.last_dose) == ("Thị Hương Nguyễn", "1990-05-17", "2021-04-05")
    assert c.expires_at is None and c.issued_at == NOW - DAY
    jws = shc.numeric_to_jws(text[5:])
    assert c.card_id == hashlib.sha256(jws.rsplit(".", 1)[0].encode()).digest()[:16]
    d = v.to_dict()
    assert d["cert_type"] == "vaccination" and d["expires_at"] is None and d["format"] == "SHC"


def test_numeric_encoding_round_trip():
    jws = "eyJ-._zAZ09"
    digits = shc.jws_to_numeric(jws)
    assert digits == "".join(f"{ord(c) - 45:02d}" for c in jws)
    assert shc.numeric_to_jws(digits) == jws


@pytest.mark.parametrize("pad", [" \t\n ", "\r\n", "\n", "   "])
def test_whitespace_around_the_text_is_ignored(pad, key, jwk, store):
    assert reason(pad + text_of(key, jwk) + pad, store) is Reason.OK


def test_fractional_nbf_and_optional_exp(key, jwk, store):
    v = verify(text_of(key, jwk, nbf=NOW - 0.5), store, NOW)
    assert v.accepted and v.card.issued_at == NOW - 1
    text = text_of(key, jwk, nbf=NOW - DAY, exp=NOW + DAY)
    assert verify(text, store, NOW).card.expires_at == NOW + DAY
    assert reason(text, store, NOW + DAY + 300) is Reason.OK
    assert reason(text, store, NOW + DAY + 301) is Reason.EXPIRED
    future = text_of(key, jwk, nbf=NOW + 1000)
    assert reason(future, store) is Reason.NOT_YET_VALID
    assert reason(future, store, NOW + 700) is Reason.OK  # within the clock skew


def test_card_kind_from_the_bundle(key, jwk, store):
    lab = [{"fullUrl": "resource:0", "resource": {"resourceType": "Observation", "status": "final"}}]
    v = verify(text_of(key, jwk, entries=lab), store, NOW)
    assert v.accepted and v.card.cert_type == "test" and v.card.holder.name == ""  # no Patient: no holder
    typed = text_of(key, jwk, entries=[], types=["https://smarthealth.cards#health-card",
                                                  "https://smarthealth.cards#immunization"])
    assert verify(typed, store, NOW).card.cert_type == "vaccination"
    assert verify(text_of(key, jwk, entries=[]), store, NOW).card.cert_type is None


# ============================================================================ malformed text

@pytest.mark.parametrize("text, needle", [
    ("shc:/", "no digits"),
    ("shc:/123", "odd"),
    ("shc:/5678", "above 77"),
    ("shc:/56a6", "only digits"),
    ("shc:/56\u0666\u0666", "only digits"),  # Arabic-Indic digits are not digits here
    ("shc:56762909", "starts with 'shc:/'"),
    ("shc:/0/2/5676", "only digits"),
    ("shc:/3/2/5676", "bad chunk header"),
    ("shc:/1/20/5676", "bad chunk header"),
    ("shc:/2/3/5676", "part 2 of 3"),
    ("shc:/5676", "not a JWS"),
])
def test_malformed_texts(text, needle, store):
    v = verify(text, store, NOW)
    assert v.reason is Reason.MALFORMED and needle in v.detail and v.format == "SHC"


def test_chunk_header_1_of_1_is_a_whole_card(key, jwk, store):
    assert reason("shc:/1/1/" + text_of(key, jwk)[5:], store) is Reason.OK


# ============================================================================ JWS header, key, signature

def test_header_rules(key, jwk, store):
    body = deflate(json.dumps(claims()).encode())
    kid = jwk["kid"]
    cases = {
        "ES384": ({"alg": "ES384", "zip": "DEF", "kid": kid}, body, Reason.MALFORMED),
        "no zip": ({"alg": "ES256", "kid": kid}, body, Reason.MALFORMED),
        "plain payload": ({"alg": "ES256", "kid": kid}, json.dumps(claims()).encode(), Reason.MALFORMED),
        "zlib not raw": ({"alg": "ES256", "zip": "DEF", "kid": kid}, zlib.compress(json.dumps(claims()).encode()),
                         Reason.MALFORMED),
        "no kid": ({"alg": "ES256", "zip": "DEF"}, body, Reason.MALFORMED),
        "kid not b64": ({"alg": "ES256", "zip": "DEF", "kid": "not a thumbprint!"}, body, Reason.UNKNOWN_KEY),
        "kid short": ({"alg": "ES256", "zip": "DEF", "kid": "AAAA"}, body, Reason.UNKNOWN_KEY),
        "kid unknown": ({"alg": "ES256", "zip": "DEF", "kid": b64url_encode(b"\1" * 32)}, body, Reason.UNKNOWN_KEY),
        "good": ({"alg": "ES256", "zip": "DEF", "kid": kid}, body, Reason.OK),
    }
    for name, (header, payload, expected) in cases.items():
        text = shc.qr_texts(raw_jws(key, header, payload))[0]
        assert reason(text, store) is expected, name


def test_signatures(key, jwk, store):
    jws = jws_of(key, jwk)
    head, body, sig = jws.split(".")
    raw = jwks.b64url_decode(sig)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    v = verify(shc.qr_texts(f"{head}.{body}.{b64url_encode(der)}")[0], store, NOW)
    assert v.reason is Reason.BAD_SIGNATURE and "64 bytes" in v.detail
    flipped = bytes([raw[0] ^ 1]) + raw[1:]
    assert reason(shc.qr_texts(f"{head}.{body}.{b64url_encode(flipped)}")[0], store) is Reason.BAD_SIGNATURE
    other = jws_of(key, jwk, iss=ISS + "/x")
    assert reason(shc.qr_texts(f"{head}.{other.split('.')[1]}.{sig}")[0], store) is Reason.BAD_SIGNATURE
    rogue = ec.generate_private_key(ec.SECP256R1())
    assert reason(shc.qr_texts(shc.sign_jws(claims(), rogue, jwk["kid"]))[0], store) is Reason.BAD_SIGNATURE
    assert verify(shc.qr_texts(f"{head}.{body}.{b64url_encode(der)}")[0], store, NOW).card is None


def test_key_rules(key, jwk, store):
    text = text_of(key, jwk)
    kid = jwks.b64url_decode(jwk["kid"])
    assert reason(text, dataclasses.replace(store, revoked_kids=frozenset({kid}))) is Reason.REVOKED
    ck1_only = TrustStore.build([BundleKey(kid, "ES256", None, key.public_key(), frozenset({"CK1"}))])
    assert reason(text, ck1_only) is Reason.BAD_SIGNATURE
    bound = TrustStore.build(jwks.parse_jwks({"keys": [jwk]}, issuer=ISS).keys)
    assert reason(text, bound) is Reason.OK
    v = verify(text_of(key, jwk, iss="https://elsewhere.example/issuer"), bound, NOW)
    assert v.reason is Reason.BAD_SIGNATURE and "not the key's issuer" in v.detail
    dated = TrustStore.build([BundleKey(kid, "ES256", ISS, key.public_key(), None, NOW - 2 * DAY)])
    assert reason(text, dated) is Reason.BAD_SIGNATURE  # issued after the key's not_after


# ============================================================================ payload

@pytest.mark.parametrize("payload, needle", [
    (b"\x00" * 70_000, "over 64 KiB"),
    (b"[" * 30_000 + b"]" * 30_000, "not JSON"),
    (b'{"iss": NaN}', "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[]", "not a JSON object"),
    (json.dumps({**claims(), "iss": ""}).encode(), "iss"),
    (json.dumps({**claims(), "iss": 5}).encode(), "iss"),
    (json.dumps({k: v for k, v in claims().items() if k != "nbf"}).encode(), "nbf"),
    (json.dumps({**claims(), "nbf": "yesterday"}).encode(), "nbf"),
    (json.dumps({**claims(), "exp": -1}).encode(), "exp"),
    (json.dumps({**claims(), "vc": []}).encode(), "vc"),
    (json.dumps(claims(types=["https://smarthealth.cards#covid19"])).encode(), "vc.type"),
    (json.dumps(claims(rid="has space")).encode(), "rid"),
    (json.dumps(claims(rid="A" * 25)).encode(), "rid"),
    (json.dumps(claims(entries={"x": 1})).encode(), "entry"),
])
def test_authentic_but_malformed_payloads(payload, needle, key, jwk, store):
    text = shc.qr_texts(raw_jws(key, {"zip": "DEF", "alg": "ES256", "kid": jwk["kid"]}, deflate(payload)))
    v = verify(text[0], store, NOW) if len(text[0]) <= 4296 else shc.verify_parts(shc.qr_texts(
        raw_jws(key, {"zip": "DEF", "alg": "ES256", "kid": jwk["kid"]}, deflate(payload)), 4), store, NOW)
    assert v.reason is Reason.MALFORMED and needle in v.detail and v.card is None, v


# ============================================================================ revocation

def test_revocation_by_rid(key, jwk):
    kid = jwk["kid"]
    base = jwks.parse_jwks({"keys": [jwk]}).keys
    crl = jwks.parse_crl({"kid": kid, "method": "rid", "ctr": 3,
                          "rids": ["outright1", f"until12345.{NOW - DAY}"]})
    other = jwks.parse_crl({"kid": b64url_encode(b"\2" * 32), "method": "rid", "ctr": 1, "rids": ["free"]})
    store = TrustStore.build(base, crls=[crl, other])
    assert reason(text_of(key, jwk, rid="outright1"), store) is Reason.REVOKED
    assert reason(text_of(key, jwk, rid="until12345", nbf=NOW - 2 * DAY), store) is Reason.REVOKED
    assert reason(text_of(key, jwk, rid="until12345", nbf=NOW - DAY), store) is Reason.OK  # reissued since
    assert reason(text_of(key, jwk, rid="free"), store) is Reason.OK  # listed under another key
    assert reason(text_of(key, jwk, rid="outright2"), store) is Reason.OK
    assert reason(text_of(key, jwk), store) is Reason.OK  # no rid
    v = verify(text_of(key, jwk, rid="outright1"), store, NOW)
    assert v.card is not None and v.card.holder.name  # a revoked card is still shown


def test_crls_for_one_key_merge(key, jwk):
    kid = jwk["kid"]
    a = jwks.parse_crl({"kid": kid, "method": "rid", "ctr": 1, "rids": ["r1.100", "r2.500"]})
    b = jwks.parse_crl({"kid": kid, "method": "rid", "ctr": 2, "rids": ["r1.300", "r2", "r2.900"]})
    store = TrustStore.build(jwks.parse_jwks({"keys": [jwk]}).keys, crls=[a, b])
    assert dict(store.revoked_rids[jwks.b64url_decode(kid)]) == {"r1": 300, "r2": None}


def test_revocation_by_card_id(key, jwk, store):
    text = text_of(key, jwk)
    card_id = verify(text, store, NOW).card.card_id
    revoked = dataclasses.replace(store, revoked_cards=RevocationSet([card_id]))
    assert reason(text, revoked) is Reason.REVOKED


def test_make_rid_follows_the_spec():
    secret = bytes(range(32))
    kid = "3Kfdg-XwP-7gXyywtUfUADwBumDOPKMQx-iELL11W9s"
    rid = shc.make_rid(secret, kid, "user-42")
    mac = hmac.new(secret + kid.encode(), b"user-42", "sha256").digest()
    assert rid == b64url_encode(mac[:8]) and len(rid) == 11


# ============================================================================ multi-part cards

def test_parts_in_any_order(key, jwk, store):
    jws = jws_of(key, jwk)
    parts = shc.qr_texts(jws, 3)
    assert [p.split("/")[1:3] for p in parts] == [["1", "3"], ["2", "3"], ["3", "3"]]
    assert abs(len(parts[0]) - len(parts[2])) <= 12  # balanced
    for order in itertools.permutations(parts):
        assert shc.verify_parts(list(order), store, NOW).reason is Reason.OK
    assert shc.verify_parts(parts + [parts[1]], store, NOW).reason is Reason.OK  # a part read twice
    v = verify(parts[1], store, NOW)
    assert v.reason is Reason.MALFORMED and "part 2 of 3" in v.detail and "scan the other parts" in v.detail
    assert shc.verify_parts([text_of(key, jwk)], store, NOW).reason is Reason.OK  # one whole card


@pytest.mark.parametrize("mangle, needle", [
    (lambda p, other: p[:2], "part(s) 3 of 3 missing"),
    (lambda p, other: [p[0], p[1], other[2]], "different part counts"),
    (lambda p, other: [p[0], p[1], p[2][:-2] + "00"] + [p[2]], "two different parts 3"),
    (lambda p, other: [p[0], p[1], "shc:/" + p[2].split("/", 3)[3]], "not a part"),
    (lambda p, other: [], "no text"),
    (lambda p, other: [p[0], 5], "not text"),
    (lambda p, other: p + ["shc:/1/3/" + "0" * 5000], "longer than a QR code"),
    (lambda p, other: p * 8, "too many parts"),
])
def test_bad_part_sets(mangle, needle, key, jwk, store):
    jws = jws_of(key, jwk)
    parts, other = shc.qr_texts(jws, 3), shc.qr_texts(jws, 4)
    v = shc.verify_parts(mangle(parts, other), store, NOW)
    assert v.reason is Reason.MALFORMED and needle in v.detail, v


def test_verify_parts_needs_a_real_time(store):
    with pytest.raises(ValueError):
        shc.verify_parts(["shc:/1/2/00"], store, float("nan"))


def test_chunk_assembler(key, jwk):
    parts = shc.qr_texts(jws_of(key, jwk), 3)
    asm = shc.ChunkAssembler(hold_seconds=30)
    assert asm.add("CK1:NOTACHUNK", 0.0) is None and asm.add(text_of(key, jwk), 0.0) is None
    p = asm.add(parts[2], 100.0)
    assert (p.index, p.total, p.received, p.missing, p.complete) == (3, 3, (3,), (1, 2), False)
    assert p.message("en") == "Part 3 of 3 read: now scan part 1, 2"
    assert p.message("vi") == "Đã quét phần 3/3: quét tiếp phần 1, 2"
    assert asm.add(" " + parts[2] + "\r\n", 101.0).received == (3,)  # read again: nothing changes
    assert asm.pending(110.0).received == (3,)
    p = asm.add(parts[0], 120.0)
    assert p.received == (1, 3) and p.missing == (2,)
    done = asm.add(parts[1], 149.0)
    assert done.complete and done.parts == tuple(parts) and done.missing == ()
    assert asm.pending(150.0) is None  # handed over, nothing held


def test_chunk_assembler_hold_time_and_new_cards(key, jwk):
    a = shc.qr_texts(jws_of(key, jwk), 3)
    b = shc.qr_texts(jws_of(key, jwk, nbf=NOW - 5), 3)
    two = shc.qr_texts(jws_of(key, jwk), 2)
    asm = shc.ChunkAssembler(hold_seconds=10)
    asm.add(a[0], 0.0)
    assert asm.pending(10.0) is not None and asm.pending(10.5) is None  # held 10 s after the last part
    asm.add(a[0], 20.0)
    assert asm.add(a[1], 25.0).received == (1, 2)
    assert asm.add(b[1], 26.0).received == (2,)  # another card's part 2: the lane moved on
    assert asm.add(two[0], 27.0).total == 2  # another part count: starts over
    asm.add(a[0], 28.0)
    assert asm.add(a[1], 27.0).received == (2,)  # the clock went back: nothing old is trusted
    with pytest.raises(ValueError):
        shc.ChunkAssembler(hold_seconds=0)
    asm.clear()
    assert asm.pending(27.0) is None


# ============================================================================ trust files

def test_jwks_and_crl_files_through_load_trust(key, jwk, tmp_path):
    bad = {**jwks.jwk_of(ec.generate_private_key(ec.SECP256R1()).public_key()), "kid": "wrong"}
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk, bad]}))
    (tmp_path / "crl.json").write_text(json.dumps({"kid": jwk["kid"], "method": "rid", "ctr": 1, "rids": ["gone"]}))
    store = load_trust([tmp_path / "jwks.json", tmp_path / "crl.json"])
    assert store.key_count == 1 and len(store.notes) == 1 and "not the key's JWK thumbprint" in store.notes[0]
    assert reason(text_of(key, jwk), store) is Reason.OK
    assert reason(text_of(key, jwk, rid="gone"), store) is Reason.REVOKED


# ============================================================================ fuzz

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(alphabet="0123456789", max_size=400).map(lambda t: "shc:/" + t),
                 st.text(alphabet="0123456789/", max_size=60).map(lambda t: "shc:/" + t),
                 st.text(max_size=80).map(lambda t: "shc:" + t)))
def test_fuzz_text_never_raises(store, text):
    v = verify(text, store, NOW)
    assert v.reason in {Reason.MALFORMED, Reason.UNKNOWN_KEY, Reason.BAD_SIGNATURE}
    assert v.detail != "internal error while verifying"


_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2 ** 41, 2 ** 41), st.floats(allow_nan=False),
              st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=25)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(nbf=_json_values, vc=_json_values, extra=st.dictionaries(st.text(max_size=5), _json_values, max_size=3))
def test_fuzz_signed_payloads_never_raise(key, jwk, store, nbf, vc, extra):
    payload = {**extra, "iss": ISS, "nbf": nbf, "vc": vc}
    v = verify(shc.qr_texts(shc.sign_jws(payload, key, jwk["kid"]))[0], store, NOW)
    assert v.detail != "internal error while verifying"
    assert v.reason in {Reason.OK, Reason.MALFORMED, Reason.EXPIRED, Reason.NOT_YET_VALID}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.text(max_size=30),
                          st.text(alphabet="0123456789/", max_size=30).map(lambda t: "shc:/" + t)), max_size=6))
def test_fuzz_part_sets_never_raise(store, parts):
    v = shc.verify_parts(parts, store, NOW)
    assert not v.accepted and v.detail != "internal error while verifying"
