"""JWKS and SHC revocation lists (scanner/cards/jwks.py): thumbprints, key rules, CRL rules."""
from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from scanner.base.errors import KeyFileError
from scanner.cards import jwks, x509util

NOW = 1_750_000_000

# RFC 7638 section 3.1: the example RSA key and its thumbprint
RFC7638_JWK = {
    "kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4"
         "n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0"
         "zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-c"
         "sFCur-kEgU8awapJzKnqDKgw",
}


def test_rfc7638_thumbprint():
    assert jwks.b64url_encode(jwks.thumbprint(RFC7638_JWK)) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_ec_thumbprint_uses_only_the_required_members():
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    jwk = jwks.jwk_of(key)
    assert jwks.thumbprint(jwk) == jwks.thumbprint({k: jwk[k] for k in ("crv", "kty", "x", "y")})
    assert jwk["kid"] == jwks.b64url_encode(jwks.thumbprint(jwk))
    assert jwks.public_key_from_jwk(jwk) == key
    with pytest.raises(jwks.JwkError):
        jwks.thumbprint({"kty": "oct", "k": "AAAA"})


@pytest.mark.parametrize("text", ["AA=", "A", "AB+/", "a b", "AB", 5, None])
def test_b64url_is_strict(text):
    with pytest.raises(ValueError):
        jwks.b64url_decode(text)


def test_b64url_round_trip():
    for n in range(40):
        data = bytes(range(n))
        assert jwks.b64url_decode(jwks.b64url_encode(data)) == data


@pytest.fixture(scope="module")
def key():
    return ec.generate_private_key(ec.SECP256R1())


def test_parse_jwks_key_by_key(key):
    good = jwks.jwk_of(key.public_key())
    other = jwks.jwk_of(ec.generate_private_key(ec.SECP256R1()).public_key())
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key().public_numbers()
    p384_jwk = {"kty": "EC", "crv": "P-384", "x": jwks.b64url_encode(p384.x.to_bytes(48, "big")),
                "y": jwks.b64url_encode(p384.y.to_bytes(48, "big")), "use": "sig", "alg": "ES256"}
    doc = {"keys": [
        good,
        {**other, "use": "enc", "alg": "ECDH-ES"},  # not a signing key: skipped silently
        {**other, "kid": "ThisIsNotTheThumbprintOfTheKey"},
        {**other, "alg": "ES384"},
        {**other, "d": "secret"},
        {**other, "x": other["y"]},  # not a point on the curve
        {**p384_jwk, "kid": "x"},
        {**other, "kty": "RSA"},
        "not an object",
    ]}
    found = jwks.parse_jwks(json.dumps(doc).encode())
    assert [k.kid for k in found.keys] == [jwks.b64url_decode(good["kid"])]
    assert found.keys[0].formats == frozenset({"SHC"}) and found.keys[0].issuer is None
    text = " | ".join(found.problems)
    for needle in ("not the key's JWK thumbprint", "alg 'ES384'", "private key", "not a point",
                   "not P-256", "is not EC", "not an object"):
        assert needle in text, needle
    assert len(found.problems) == 7
    assert jwks.parse_jwks(doc, issuer="https://a.example").keys[0].issuer == "https://a.example"


@pytest.mark.parametrize("doc", [
    {"keys": []}, {"keys": "x"}, [], {"keys": [{"kty": "EC", "use": "enc"}]},
    {"keys": [{"kty": "EC", "crv": "P-384"}]},
])
def test_no_usable_key_is_an_error(doc):
    with pytest.raises(KeyFileError):
        jwks.parse_jwks(doc)


def test_not_json_and_too_large():
    with pytest.raises(KeyFileError):
        jwks.parse_jwks(b"{nope")
    with pytest.raises(KeyFileError):
        jwks.parse_jwks(b" " * (jwks.MAX_FILE_BYTES + 1))


def test_x5c_binds_the_issuer_and_must_match(key):
    der = x509util.make_dsc(key, country="US", not_before=NOW, not_after=NOW + 10 ** 7,
                            san_uris=("https://issuer.example/shc",))
    jwk = {**jwks.jwk_of(key.public_key()), "x5c": [base64.b64encode(der).decode()]}
    found = jwks.parse_jwks({"keys": [jwk]})
    assert [k.issuer for k in found.keys] == ["https://issuer.example/shc"]
    assert jwks.parse_jwks({"keys": [jwk]}, issuer="https://given.example").keys[0].issuer == "https://given.example"
    other = jwks.jwk_of(ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(KeyFileError, match="another key"):
        jwks.parse_jwks({"keys": [{**other, "x5c": jwk["x5c"]}]})
    with pytest.raises(KeyFileError, match="x5c"):
        jwks.parse_jwks({"keys": [{**jwk, "x5c": ["@@@"]}]})


def test_parse_crl():
    kid = jwks.b64url_encode(b"\7" * 32)
    crl = jwks.parse_crl(json.dumps({"kid": kid, "method": "rid", "ctr": "2",
                                     "rids": ["a", "b.100", "b.50", "c.5", "c"]}).encode())
    assert crl.kid == b"\7" * 32 and crl.ctr == 2
    assert dict(crl.rids) == {"a": None, "b": 100, "c": None}


@pytest.mark.parametrize("doc, needle", [
    ({"kid": "AAAA", "method": "hash-fhir", "ctr": 1, "rids": []}, "method"),
    ({"kid": "A", "method": "rid", "ctr": 1, "rids": []}, "kid"),
    ({"kid": "AAAA", "method": "rid", "ctr": 0, "rids": []}, "ctr"),
    ({"kid": "AAAA", "method": "rid", "ctr": True, "rids": []}, "ctr"),
    ({"kid": "AAAA", "method": "rid", "ctr": 1, "rids": "a"}, "rids"),
    ({"kid": "AAAA", "method": "rid", "ctr": 1, "rids": ["A" * 25]}, "rid"),
    ({"kid": "AAAA", "method": "rid", "ctr": 1, "rids": ["a.b"]}, "rid"),
    ({"kid": "AAAA", "method": "rid", "ctr": 1, "rids": [7]}, "rid"),
    ([], "object"),
])
def test_bad_crls(doc, needle):
    with pytest.raises(KeyFileError, match=needle):
        jwks.parse_crl(doc)


@pytest.mark.parametrize("data, kind", [
    (b'{"keys": []}', "jwks"), (b'{"kid": "x", "rids": []}', "crl"), (b'{"payload": "x", "keys": []}', None),
    (b"not json", None), (b"[]", None), (b'{"version": 1}', None),
])
def test_sniff(data, kind):
    assert jwks.sniff(data) == kind
