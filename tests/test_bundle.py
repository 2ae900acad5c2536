"""Signed trust bundles (scanner.cards.bundle) and loading trust from files (scanner.cards.trust)."""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from scanner.base.errors import KeyFileError, Reason, TrustError
from scanner.cards import keys as keymod
from scanner.cards import trust as trustmod
from scanner.cards.bundle import BundleKey, make_bundle, open_bundle, root_kid
from scanner.cards.trust import TrustStore, load_root, load_trust
from scanner.cards.verifier import verify

NOW = 1_750_000_000


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def outer(payload: bytes, sig: bytes, kid: bytes) -> bytes:
    return json.dumps({"payload": b64(payload), "sig": b64(sig), "kid": b64(kid)}).encode()


def sign_body(root, body) -> bytes:
    """A bundle file whose payload (a dict, or raw bytes) is correctly signed by ``root``."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
    return outer(payload, root.sign(payload), root_kid(root.public_key()))


def good_body(bundle_keys, **changes) -> dict:
    body = {"version": 3, "issued_at": NOW - 100, "expires_at": NOW + 1000,
            "keys": [k.to_json() for k in bundle_keys], "revoked_cards": [], "revoked_kids": []}
    body.update(changes)
    return body


def self_signed_cert(key, *, not_before: dt.datetime, not_after: dt.datetime, cn: str = "VN-HUE issuer"):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .sign(key, algorithm))


def utc(ts: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


# --------------------------------------------------------------------------- round trip

def test_make_open_round_trip(root_key, issuers, bundle_keys):
    card_a, card_b = b"\x01" * 16, b"\xfe" * 16
    revoked_kid = b"\x99" * 8
    data = make_bundle(root_key, version=5, issued_at=NOW, expires_at=NOW + 3600, keys=bundle_keys,
                       revoked_cards=[card_b, card_a, card_a], revoked_kids=[revoked_kid])
    b = open_bundle(data, [root_key.public_key()])
    assert (b.version, b.issued_at, b.expires_at) == (5, NOW, NOW + 3600)
    assert b.root_kid == keymod.kid_of(root_key.public_key())
    assert list(b.revoked_cards) == [card_a, card_b]
    assert b.revoked_kids == frozenset({revoked_kid})
    payload = base64.b64decode(json.loads(data)["payload"])
    assert b.digest == hashlib.sha256(payload).hexdigest()
    got = {k.issuer: k for k in b.keys}
    assert set(got) == {"VN-HUE", "VN-DNG"}
    for iss in issuers.values():
        k = got[iss.name]
        assert k.kid == iss.kid
        assert k.alg == iss.alg_name
        assert keymod.spki_der(k.public_key) == keymod.spki_der(iss.key.public_key())
        assert k.formats is None and k.not_after is None
    assert not b.expired(NOW + 3600)
    assert b.expired(NOW + 3601)


def test_bundle_key_options_round_trip(root_key, issuers):
    ed = issuers["ed"]
    cert = self_signed_cert(ed.key, not_before=utc(NOW - 10), not_after=utc(NOW + 10))
    der = cert.public_bytes(serialization.Encoding.DER)
    keys = [BundleKey(ed.kid, "EdDSA", "VN-HUE", ed.key.public_key(), frozenset({"CK1", "HC1"}), NOW + 5),
            BundleKey(ed.kid, "EdDSA", "VN-HUE2", ed.key.public_key(), None, None, der)]
    b = open_bundle(make_bundle(root_key, version=1, issued_at=0, expires_at=NOW, keys=keys),
                    [root_key.public_key()])
    assert b.keys[0].formats == frozenset({"CK1", "HC1"})
    assert b.keys[0].not_after == NOW + 5
    assert b.keys[1].x509_der == der
    assert keymod.spki_der(b.keys[1].public_key) == keymod.spki_der(ed.key.public_key())


def test_several_roots(root_key, other_root_key, bundle_keys):
    data = make_bundle(other_root_key, version=1, issued_at=0, expires_at=NOW, keys=bundle_keys)
    b = open_bundle(data, [root_key.public_key(), other_root_key.public_key()])
    assert b.root_kid == keymod.kid_of(other_root_key.public_key())


def test_make_bundle_needs_ed25519_root(es_key, bundle_keys):
    with pytest.raises(TrustError) as info:
        make_bundle(es_key, version=1, issued_at=0, expires_at=1, keys=bundle_keys)
    assert info.value.code == "bundle_root_key"


# --------------------------------------------------------------------------- refusals

def code_of(data: bytes, roots, **kw) -> str:
    with pytest.raises(TrustError) as info:
        open_bundle(data, roots, **kw)
    return info.value.code


def test_tampered_payload_is_bad_signature(root_key, bundle_bytes):
    doc = json.loads(bundle_bytes)
    body = json.loads(base64.b64decode(doc["payload"]))
    body["version"] += 1
    doc["payload"] = b64(json.dumps(body).encode())
    assert code_of(json.dumps(doc).encode(), [root_key.public_key()]) == "bundle_bad_signature"


def test_tampered_signature_is_bad_signature(root_key, bundle_bytes):
    doc = json.loads(bundle_bytes)
    sig = bytearray(base64.b64decode(doc["sig"]))
    sig[0] ^= 0x01
    doc["sig"] = b64(bytes(sig))
    assert code_of(json.dumps(doc).encode(), [root_key.public_key()]) == "bundle_bad_signature"


def test_signature_by_another_key_claiming_the_root_kid(root_key, other_root_key):
    payload = json.dumps({"version": 1, "issued_at": 0, "expires_at": NOW}).encode()
    data = outer(payload, other_root_key.sign(payload), root_kid(root_key.public_key()))
    assert code_of(data, [root_key.public_key()]) == "bundle_bad_signature"


def test_signature_checked_before_payload_is_parsed(root_key):
    payload = b"this is not json"
    data = outer(payload, b"\x00" * 64, root_kid(root_key.public_key()))
    assert code_of(data, [root_key.public_key()]) == "bundle_bad_signature"


def test_wrong_root(root_key, other_root_key, make_bundle_bytes):
    data = make_bundle_bytes(root=other_root_key)
    assert code_of(data, [root_key.public_key()]) == "bundle_wrong_root"


def test_no_root(bundle_bytes):
    assert code_of(bundle_bytes, []) == "bundle_no_root"


def test_rollback(root_key, make_bundle_bytes):
    data = make_bundle_bytes(version=7)
    roots = [root_key.public_key()]
    assert code_of(data, roots, min_version=7) == "bundle_rollback"
    assert code_of(data, roots, min_version=100) == "bundle_rollback"
    assert open_bundle(data, roots, min_version=6).version == 7
    assert open_bundle(data, roots, min_version=None).version == 7


@pytest.mark.parametrize("data", [
    b"", b"not json", b"\xff\xfe{", b"[]", b"null", b"42", b'"text"',
    b'{"payload": "", "sig": ""}',  # kid missing
    b'{"payload": "", "kid": ""}',
    b'{"sig": "", "kid": ""}',
    b'{"payload": 1, "sig": "", "kid": ""}',
    b'{"payload": "!!!", "sig": "", "kid": ""}',
    b'{"payload": "", "sig": "AAA", "kid": ""}',  # bad padding
    b'{"payload": "", "sig": "", "kid": "\xc3\xa9"}',  # non-ASCII base64
    b'{"payload": "", "sig": "", "kid": null}',
])
def test_malformed_outer(root_key, data):
    assert code_of(data, [root_key.public_key()]) == "bundle_malformed"


def test_base64_with_whitespace_is_malformed(root_key, bundle_bytes):
    doc = json.loads(bundle_bytes)
    doc["payload"] = doc["payload"][:8] + "\n" + doc["payload"][8:]
    assert code_of(json.dumps(doc).encode(), [root_key.public_key()]) == "bundle_malformed"


def _p384_spki() -> str:
    return b64(keymod.spki_der(ec.generate_private_key(ec.SECP384R1()).public_key()))


@pytest.mark.parametrize("mutate", [
    pytest.param(lambda body, k: b"not json", id="payload-not-json"),
    pytest.param(lambda body, k: b"\xff\xfe", id="payload-not-utf8"),
    pytest.param(lambda body, k: json.dumps([body]).encode(), id="payload-list"),
    pytest.param(lambda body, k: body.pop("version"), id="no-version"),
    pytest.param(lambda body, k: body.pop("issued_at"), id="no-issued_at"),
    pytest.param(lambda body, k: body.pop("expires_at"), id="no-expires_at"),
    pytest.param(lambda body, k: body.update(version="3"), id="version-text"),
    pytest.param(lambda body, k: body.update(version=-1), id="version-negative"),
    pytest.param(lambda body, k: body.update(version=True), id="version-bool"),
    pytest.param(lambda body, k: body.update(version=3.0), id="version-float"),
    pytest.param(lambda body, k: body.update(keys={}), id="keys-object"),
    pytest.param(lambda body, k: body.update(keys=["not an object"]), id="key-not-object"),
    pytest.param(lambda body, k: k.pop("kid"), id="key-no-kid"),
    pytest.param(lambda body, k: k.update(kid="%%%"), id="key-kid-bad-b64"),
    pytest.param(lambda body, k: k.update(spki=b64(b"\x30\x03\x02\x01\x00")), id="key-spki-not-a-key"),  # not a key
    pytest.param(lambda body, k: k.update(spki="not base64!"), id="key-spki-bad-b64"),
    pytest.param(lambda body, k: k.pop("spki"), id="key-no-spki"),
    pytest.param(lambda body, k: k.update(spki=_p384_spki()), id="key-p384"),  # unsupported curve
    pytest.param(lambda body, k: k.update(alg="ES256"), id="key-alg-mismatch"),  # an Ed25519 key claiming ES256
    pytest.param(lambda body, k: k.update(alg="RS256"), id="key-alg-unknown"),
    pytest.param(lambda body, k: k.update(alg=None), id="key-alg-null"),
    pytest.param(lambda body, k: k.update(issuer=""), id="key-issuer-empty"),
    pytest.param(lambda body, k: k.update(issuer=None), id="key-issuer-null"),
    pytest.param(lambda body, k: k.update(issuer=7), id="key-issuer-int"),
    pytest.param(lambda body, k: k.update(formats="CK1"), id="key-formats-text"),
    pytest.param(lambda body, k: k.update(formats=[1]), id="key-formats-ints"),
    pytest.param(lambda body, k: k.update(not_after=-5), id="key-not_after-negative"),
    pytest.param(lambda body, k: k.update(not_after="soon"), id="key-not_after-text"),
    pytest.param(lambda body, k: k.update(x509=b64(b"not a certificate")), id="key-x509-garbage"),
    pytest.param(lambda body, k: body.update(revoked_cards={}), id="revoked-cards-object"),
    pytest.param(lambda body, k: body.update(revoked_cards=["00" * 15]), id="revoked-card-15-bytes"),
    pytest.param(lambda body, k: body.update(revoked_cards=["00" * 17]), id="revoked-card-17-bytes"),
    pytest.param(lambda body, k: body.update(revoked_cards=["zz" * 16]), id="revoked-card-not-hex"),
    pytest.param(lambda body, k: body.update(revoked_cards=[16]), id="revoked-card-int"),
    pytest.param(lambda body, k: body.update(revoked_kids="x"), id="revoked-kids-text"),
    pytest.param(lambda body, k: body.update(revoked_kids=["@@@"]), id="revoked-kid-bad-b64"),
    pytest.param(lambda body, k: body.update(revoked_kids=[5]), id="revoked-kid-int"),
])
def test_malformed_payload(root_key, bundle_keys, mutate):
    body = good_body(bundle_keys)
    body["keys"][0] = dict(body["keys"][0])
    out = mutate(body, body["keys"][0])
    if isinstance(out, bytes):
        body = out
    assert code_of(sign_body(root_key, body), [root_key.public_key()]) == "bundle_malformed"


def test_good_body_helper_is_valid(root_key, bundle_keys):
    # guards test_malformed_payload: without the mutation the same bundle opens
    b = open_bundle(sign_body(root_key, good_body(bundle_keys)), [root_key.public_key()])
    assert b.version == 3 and len(b.keys) == 2


def test_optional_lists_may_be_absent(root_key):
    b = open_bundle(sign_body(root_key, {"version": 1, "issued_at": 0, "expires_at": 0}),
                    [root_key.public_key()])
    assert b.keys == () and len(b.revoked_cards) == 0 and b.revoked_kids == frozenset()


@pytest.mark.parametrize("where", ["outer", "payload"])
def test_deeply_nested_json_is_malformed(root_key, where):
    deep = b"[" * 200_000 + b"]" * 200_000
    data = deep if where == "outer" else sign_body(root_key, deep)
    assert code_of(data, [root_key.public_key()]) == "bundle_malformed"


# --------------------------------------------------------------------------- TrustStore

def test_trust_store_merges_bundles(root_key, make_bundle_bytes, issuers):
    card_a, card_b = b"\x0a" * 16, b"\x0b" * 16
    b1 = open_bundle(make_bundle_bytes(version=1, expires_at=NOW + 50, revoked_cards=[card_a]),
                     [root_key.public_key()])
    b2 = open_bundle(make_bundle_bytes(version=4, expires_at=NOW + 10, revoked_cards=[card_b],
                                       revoked_kids=[b"\x01" * 8]), [root_key.public_key()])
    store = TrustStore.build(bundles=[b1, b2])
    assert store.version == 4
    assert store.expires_at == NOW + 10
    assert card_a in store.revoked_cards and card_b in store.revoked_cards
    assert store.revoked_kids == frozenset({b"\x01" * 8})
    assert store.key_count == 4
    assert len(store.lookup(issuers["ed"].kid)) == 2
    assert store.lookup(b"\x00" * 8) == ()


def test_empty_trust_store():
    store = TrustStore.build()
    assert store.version is None and store.expires_at is None and store.key_count == 0


# --------------------------------------------------------------------------- load_trust from files

def test_load_trust_pem_public_key(tmp_path, issuers, make_card, now):
    ed = issuers["ed"]
    path = tmp_path / "hue.pub"
    path.write_bytes(keymod.public_pem(ed.key.public_key()))
    store = load_trust([path])
    (key,) = store.lookup(ed.kid)
    assert key.issuer is None and key.alg == "EdDSA" and key.not_after is None
    # a loose key is trusted for any issuer
    assert verify(make_card("ed", issuer="ANY-ISSUER"), store, now).reason is Reason.OK
    assert verify(make_card("es"), store, now).reason is Reason.UNKNOWN_KEY


def test_load_trust_pem_certificate(tmp_path, issuers, make_card, now):
    es = issuers["es"]
    cert = self_signed_cert(es.key, not_before=utc(now - 100 * 86400), not_after=utc(now + 86400))
    path = tmp_path / "dng.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    store = load_trust([str(path)])
    (key,) = store.lookup(es.kid)
    assert key.alg == "ES256"
    assert key.not_after == now + 86400
    assert key.x509_der == cert.public_bytes(serialization.Encoding.DER)
    assert verify(make_card("es"), store, now).reason is Reason.OK


def test_load_trust_two_pem_certificates_in_one_file(tmp_path, issuers):
    certs = [self_signed_cert(i.key, not_before=utc(NOW - 10), not_after=utc(NOW + 10))
             for i in issuers.values()]
    path = tmp_path / "both.pem"
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    store = load_trust([path])
    assert store.key_count == 2
    assert all(store.lookup(i.kid) for i in issuers.values())


def test_load_trust_der_certificate(tmp_path, issuers, make_card, now):
    ed = issuers["ed"]
    cert = self_signed_cert(ed.key, not_before=utc(now - 1000), not_after=utc(now + 1000))
    path = tmp_path / "hue.der"
    path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    store = load_trust([path])
    (key,) = store.lookup(ed.kid)
    assert key.not_after == now + 1000
    assert verify(make_card("ed"), store, now).reason is Reason.OK


def test_load_trust_der_public_key(tmp_path, issuers):
    es = issuers["es"]
    path = tmp_path / "dng.der"
    path.write_bytes(keymod.spki_der(es.key.public_key()))
    assert load_trust([path]).lookup(es.kid)


def test_certificate_not_after_before_card_iat_is_bad_signature(tmp_path, issuers, make_card, now):
    ed = issuers["ed"]
    cert = self_signed_cert(ed.key, not_before=utc(now - 1000 * 86400), not_after=utc(now - 10 * 86400))
    path = tmp_path / "old.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    store = load_trust([path])
    assert verify(make_card("ed", issued_at=now - 86400), store, now).reason is Reason.BAD_SIGNATURE
    assert verify(make_card("ed", issued_at=now - 20 * 86400), store, now).reason is Reason.OK


def test_load_trust_bundle(tmp_path, bundle_bytes, root_key, make_card, now):
    path = tmp_path / "bundle.json"
    path.write_bytes(b"\n  " + bundle_bytes)  # leading whitespace: still a bundle
    store = load_trust([path], [root_key.public_key()])
    assert store.version == 7 and store.key_count == 2
    assert verify(make_card("es"), store, now).reason is Reason.OK


def test_load_trust_bundle_and_key_file_together(tmp_path, bundle_bytes, root_key, rogue_ed_key):
    (tmp_path / "bundle.json").write_bytes(bundle_bytes)
    (tmp_path / "extra.pub").write_bytes(keymod.public_pem(rogue_ed_key.public_key()))
    store = load_trust([tmp_path / "bundle.json", tmp_path / "extra.pub"], [root_key.public_key()])
    assert store.key_count == 3


def test_load_trust_bundle_without_root(tmp_path, bundle_bytes):
    path = tmp_path / "bundle.json"
    path.write_bytes(bundle_bytes)
    with pytest.raises(TrustError) as info:
        load_trust([path])
    assert info.value.code == "bundle_no_root"


def test_load_trust_bundle_wrong_root_names_the_file(tmp_path, bundle_bytes, other_root_key):
    path = tmp_path / "bundle.json"
    path.write_bytes(bundle_bytes)
    with pytest.raises(TrustError) as info:
        load_trust([path], [other_root_key.public_key()])
    assert info.value.code == "bundle_wrong_root"
    assert "bundle.json" in str(info.value)


def test_load_trust_missing_file(tmp_path):
    with pytest.raises(KeyFileError):
        load_trust([tmp_path / "nope.pem"])


def test_load_trust_directory_is_key_file_error(tmp_path):
    with pytest.raises(KeyFileError):
        load_trust([tmp_path])


@pytest.mark.parametrize("content", [
    b"", b"garbage", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
])
def test_load_trust_unreadable_key_file(tmp_path, content):
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    with pytest.raises(KeyFileError):
        load_trust([path])


def test_load_trust_private_key_file_refused(tmp_path, ed_key):
    path = tmp_path / "hue.key"
    path.write_bytes(keymod.private_pem(ed_key))
    with pytest.raises(KeyFileError, match="private key"):
        load_trust([path])


@pytest.mark.parametrize("make", [
    lambda: ec.generate_private_key(ec.SECP384R1()),
    lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),
])
def test_load_trust_unsupported_key(tmp_path, make):
    path = tmp_path / "k.pub"
    path.write_bytes(keymod.public_pem(make().public_key()))
    with pytest.raises(KeyFileError):
        load_trust([path])


def test_load_root(tmp_path, root_key, es_key):
    path = tmp_path / "root.pub"
    path.write_bytes(keymod.public_pem(root_key.public_key()))
    assert keymod.spki_der(load_root(path)) == keymod.spki_der(root_key.public_key())
    path.write_bytes(keymod.public_pem(es_key.public_key()))
    with pytest.raises(KeyFileError):
        load_root(path)


def test_is_bundle_file():
    assert trustmod.is_bundle_file(b'  {"payload": ""}')
    assert not trustmod.is_bundle_file(b"-----BEGIN PUBLIC KEY-----")
    assert not trustmod.is_bundle_file(b"\x30\x82")


# --------------------------------------------------------------------------- layout independence
# open_bundle may take fast paths for a canonical layout (the payload string in the file, the
# revoked_cards array in the payload); whatever the layout, the result must be what the JSON
# *means*. The reference spells the key with a JSON escape (same meaning, never the same bytes).

from hypothesis import event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def outcome(data: bytes, root) -> tuple:
    try:
        b = open_bundle(data, [root.public_key()])
    except TrustError as exc:
        return ("refused", exc.code)
    return ("ok", b.version, b.issued_at, b.expires_at, tuple(k.kid for k in b.keys),
            tuple(b.revoked_cards), tuple(sorted(b.revoked_kids)))


def escaped(key: str) -> str:
    return f'"\\u{ord(key[0]):04x}{key[1:]}"'


def reference_payload(text: str) -> bytes:
    """The same JSON meaning as ``text``, with the top-level revoked_cards key spelled escaped."""
    try:
        body = json.loads(text)
    except ValueError:
        return text.encode("utf-8")  # invalid stays invalid
    if type(body) is not dict:
        return json.dumps(body).encode()
    parts = [(escaped(k) if k == "revoked_cards" else json.dumps(k)) + ":" + json.dumps(v)
             for k, v in body.items()]
    return ("{" + ",".join(parts) + "}").encode("utf-8")


_hex_ids = st.binary(min_size=16, max_size=16).map(bytes.hex)
_good_id_text = _hex_ids.map(json.dumps)
_odd_id_text = st.one_of(
    _hex_ids.map(lambda h: json.dumps(h.upper())),
    _hex_ids.map(lambda h: json.dumps(h[:31])),
    _hex_ids.map(lambda h: json.dumps(h + "0")),
    _hex_ids.map(lambda h: json.dumps("g" + h[1:])),
    _hex_ids.map(lambda h: json.dumps(h[:10] + " " + h[11:])),
    _hex_ids.map(lambda h: json.dumps(h[:10] + "  " + h[12:])),
    _hex_ids.map(lambda h: f'"\\u00{ord(h[0]):x}{h[1:]}"'),  # an escaped digit: same string
    st.just("12"), st.just("null"), st.just('"' + "0" * 32 + '"'),
)


@st.composite
def payload_texts(draw):
    ids = [draw(_odd_id_text) if draw(st.integers(0, 19)) == 0 else draw(_good_id_text)
           for _ in range(draw(st.integers(0, 8)))]
    sep = draw(st.sampled_from([",", ", ", " ,", ",\n"]))
    array = draw(st.sampled_from(["[{}]", "[ {} ]", "[\n{}\n]"])).format(sep.join(ids))
    if draw(st.integers(0, 19)) == 0:
        array = array[:-1] + ",]"  # trailing comma: not JSON
    fields = [("version", "3"), ("issued_at", "0"), ("expires_at", str(NOW)), ("revoked_kids", "[]")]
    if draw(st.booleans()):
        fields.append(("keys", "[]"))
    fields.insert(draw(st.integers(0, len(fields))), ("revoked_cards", array))
    if draw(st.integers(0, 4)) == 0:  # the key twice: the last one counts
        other = draw(st.sampled_from(['["' + "a" * 32 + '"]', "[]", '["bad"]', "{}"]))
        fields.insert(draw(st.integers(0, len(fields))), ("revoked_cards", other))
    if draw(st.integers(0, 4)) == 0:  # the same key name nested deeper
        fields.insert(0, ("extra", '{"revoked_cards":["' + "b" * 32 + '"]}'))
    colon = draw(st.sampled_from([":", ": ", " : "]))
    comma = draw(st.sampled_from([",", ", ", ",\n"]))
    return "{" + comma.join(json.dumps(k) + colon + v for k, v in fields) + "}"


@settings(max_examples=150, deadline=None)
@given(payload_texts())
def test_revoked_cards_layout_does_not_change_the_meaning(root_key, text):
    got = outcome(sign_body(root_key, text.encode("utf-8")), root_key)
    want = outcome(sign_body(root_key, reference_payload(text)), root_key)
    event(f"{got[0]}, {len(got[5]) if got[0] == 'ok' else got[1]}")
    assert got == want


def _outer_doc(fields: list[tuple[str, str]], colon=": ", comma=",\n ") -> bytes:
    return ("{" + comma.join(k + colon + v for k, v in fields) + "}").encode("utf-8")


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_outer_layout_does_not_change_the_meaning(root_key, bundle_keys, data):
    payload = json.dumps(good_body(bundle_keys)).encode()
    b64p = b64(payload)
    value = data.draw(st.sampled_from([
        json.dumps(b64p),
        json.dumps(b64p).replace("/", "\\/"),  # JSON escapes: the same string
        f'"\\u{ord(b64p[0]):04x}' + b64p[1:] + '"',
        json.dumps(b64p[:-1]),  # broken padding
        json.dumps(b64p[:40] + "\n" + b64p[40:]),  # whitespace inside
        json.dumps(b64p[:40] + "*" + b64p[40:]),
        json.dumps(b64p + "="),
        '"' + b64p,  # unterminated string
    ]))
    fields = [('"sig"', json.dumps(b64(root_key.sign(payload)))),
              ('"kid"', json.dumps(b64(root_kid(root_key.public_key()))))]
    fields.insert(data.draw(st.integers(0, 2)), ('"payload"', value))
    if data.draw(st.integers(0, 3)) == 0:
        fields.insert(data.draw(st.integers(0, 3)), ('"payload"', json.dumps(b64(b"{}"))))
    colon = data.draw(st.sampled_from([":", ": ", " :\t"]))
    comma = data.draw(st.sampled_from([",", ", ", ",\n "]))
    doc = _outer_doc(fields, colon, comma)
    reference = _outer_doc([('"\\u0070ayload"' if k == '"payload"' else k, v) for k, v in fields])
    got = outcome(doc, root_key)
    event(str(got[:2]))
    assert got == outcome(reference, root_key)


def test_escaped_payload_string_is_accepted(root_key, bundle_bytes):
    doc = json.loads(bundle_bytes)
    value = doc["payload"]
    # the same JSON string, spelled with escapes: "\/" for "/" and \uXXXX for the first character
    spelled = f'"\\u{ord(value[0]):04x}' + value[1:].replace("/", "\\/") + '"'
    assert json.loads(spelled) == value
    text = ('{"payload": ' + spelled + ', "sig": ' + json.dumps(doc["sig"]) + ', "kid": '
            + json.dumps(doc["kid"]) + "}")
    b = open_bundle(text.encode(), [root_key.public_key()])
    assert b.version == 7


@pytest.mark.parametrize("garbage", [b"x", b"{}", b"]", b",", b'"', b"\x00"])
def test_trailing_garbage_is_malformed(root_key, bundle_bytes, garbage):
    roots = [root_key.public_key()]
    assert open_bundle(bundle_bytes + b" \n\t", roots).version == 7  # whitespace is fine
    assert code_of(bundle_bytes + garbage, roots) == "bundle_malformed"
    payload = base64.b64decode(json.loads(bundle_bytes)["payload"])
    assert open_bundle(sign_body(root_key, payload + b"\n"), roots).version == 7
    assert code_of(sign_body(root_key, payload + garbage), roots) == "bundle_malformed"


def test_large_revocation_list(root_key, make_bundle_bytes):
    ids = sorted({bytes([i >> 16 & 0xFF, i >> 8 & 0xFF, i & 0xFF]) * 5 + b"\x01" for i in range(70_000)})
    b = open_bundle(make_bundle_bytes(revoked_cards=ids), [root_key.public_key()])
    assert len(b.revoked_cards) == len(ids)
    assert list(b.revoked_cards) == ids
    # one bad id far into the list refuses the whole bundle
    body = {"version": 1, "issued_at": 0, "expires_at": 0,
            "revoked_cards": [i.hex() for i in ids[:50_000]] + ["0" * 31 + "g"] + [i.hex() for i in ids[50_000:]]}
    compact = json.dumps(body, separators=(",", ":")).encode()
    assert code_of(sign_body(root_key, compact), [root_key.public_key()]) == "bundle_malformed"


@pytest.mark.parametrize("where", [0, 32_766, 32_767, 32_768, 65_535, 69_998])
def test_missing_comma_anywhere_in_a_long_list_is_malformed(root_key, where):
    ids = [(i * 2654435761 % 2**128).to_bytes(16, "big").hex() for i in range(70_000)]
    text = json.dumps({"version": 1, "issued_at": 0, "expires_at": 0, "revoked_cards": ids},
                      separators=(",", ":"))
    at = text.index(ids[where]) + 33  # the comma after id number ``where``
    assert text[at] == ","
    broken = text[:at] + " " + text[at + 1:]  # '"…" "…"' is not JSON
    assert code_of(sign_body(root_key, broken.encode()), [root_key.public_key()]) == "bundle_malformed"
    assert len(open_bundle(sign_body(root_key, text.encode()), [root_key.public_key()]).revoked_cards) == 70_000
