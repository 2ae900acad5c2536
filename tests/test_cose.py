"""scanner.cards.cose: COSE_Sign1 envelopes (RFC 9052 section 4.2), signing and verification."""
from __future__ import annotations

import re

import cbor2
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import example, given, settings
from hypothesis import strategies as st
from support.mutations import mutated

from scanner.cards import cbor, cose
from scanner.cards.cbor import CborError, Tag
from scanner.cards.cose import CoseError

PAYLOAD = cbor.dumps({1: "VN-HUE", 4: 2_000_000_000})
KID = b"\x01\x02\x03\x04\x05\x06\x07\x08"


def envelope(protected=None, unprotected=None, payload=PAYLOAD, signature=b"\x00" * 64, *,
             tag: int | None = 18) -> bytes:
    protected = cbor.dumps({1: -8, 4: KID}) if protected is None else protected
    msg = [protected, {} if unprotected is None else unprotected, payload, signature]
    return cbor.dumps(Tag(tag, msg) if tag is not None else msg)


@pytest.fixture(scope="module", params=["ed", "es"])
def signer(request, issuers):
    return issuers[request.param]


@pytest.mark.parametrize("tagged", [True, False])
def test_sign1_round_trip(signer, tagged):
    data = cose.sign1(PAYLOAD, signer.key, signer.alg, signer.kid, tagged=tagged)
    assert (data[0] == 0xD2) is tagged  # tag 18 head
    msg = cose.parse_sign1(data)
    assert msg.alg == signer.alg
    assert msg.kid == signer.kid
    assert msg.payload == PAYLOAD
    assert cbor.loads(msg.protected) == {1: signer.alg, 4: signer.kid}
    assert cose.verify_signature(signer.key.public_key(), signer.alg, msg.to_be_signed(), msg.signature)


def test_sign1_fields_are_those_of_parse_sign1(signer):
    data = cose.sign1(PAYLOAD, signer.key, signer.alg, signer.kid, kid_unprotected=True)
    fields = cose.sign1_fields(data)
    msg = cose.parse_sign1(data)
    assert fields == (msg.protected, msg.alg, msg.kid, msg.payload, msg.signature)
    assert fields[2] == signer.kid and fields[3] == PAYLOAD
    assert cose.sig_structure(fields[0], fields[3]) == msg.to_be_signed()
    with pytest.raises(CoseError):
        cose.sign1_fields(cbor.dumps([b"", {1: signer.alg}, PAYLOAD, b"sig"]))


def test_sign1_is_decodable_by_cbor2(signer):
    data = cose.sign1(PAYLOAD, signer.key, signer.alg, signer.kid)
    decoded = cbor2.loads(data)
    assert isinstance(decoded, cbor2.CBORTag) and decoded.tag == 18
    protected, unprotected, payload, signature = decoded.value
    assert cbor2.loads(protected) == {1: signer.alg, 4: signer.kid}
    assert unprotected == {}
    assert payload == PAYLOAD
    assert len(signature) == 64


def test_sig_structure_matches_rfc9052_with_independent_encoder():
    protected = cbor.dumps({1: -7, 4: KID})
    expected = cbor2.dumps(["Signature1", protected, b"", PAYLOAD])
    assert cose.sig_structure(protected, PAYLOAD) == expected
    big = b"\xab" * 70_000  # 4-byte length heads
    assert cose.sig_structure(b"", big) == cbor2.dumps(["Signature1", b"", b"", big])


def test_es256_signature_is_raw_r_s_and_verifies_independently(issuers):
    es = issuers["es"]
    for i in range(20):  # covers r or s with leading zero bytes now and then
        payload = PAYLOAD + bytes([i])
        msg = cose.parse_sign1(cose.sign1(payload, es.key, cose.ALG_ES256, es.kid))
        assert len(msg.signature) == 64
        der = encode_dss_signature(int.from_bytes(msg.signature[:32], "big"),
                                   int.from_bytes(msg.signature[32:], "big"))
        es.key.public_key().verify(der, msg.to_be_signed(), ec.ECDSA(hashes.SHA256()))


def test_eddsa_signature_verifies_independently(issuers):
    ed = issuers["ed"]
    msg = cose.parse_sign1(cose.sign1(PAYLOAD, ed.key, cose.ALG_EDDSA, ed.kid))
    ed.key.public_key().verify(msg.signature, cbor2.dumps(["Signature1", msg.protected, b"", PAYLOAD]))


def test_kid_in_unprotected_header(signer):
    data = cose.sign1(PAYLOAD, signer.key, signer.alg, signer.kid, kid_unprotected=True)
    msg = cose.parse_sign1(data)
    assert msg.kid == signer.kid
    assert cbor.loads(msg.protected) == {1: signer.alg}
    assert cose.verify_signature(signer.key.public_key(), signer.alg, msg.to_be_signed(), msg.signature)


def test_protected_kid_wins_over_unprotected():
    other = b"\xff" * 8
    msg = cose.parse_sign1(envelope(unprotected={4: other}))
    assert msg.kid == KID


def test_no_kid_at_all():
    msg = cose.parse_sign1(envelope(protected=cbor.dumps({1: -8})))
    assert msg.kid is None
    assert msg.alg == -8


def test_empty_protected_header_means_no_alg():
    msg = cose.parse_sign1(envelope(protected=b"", unprotected={4: KID}))
    assert msg.alg is None
    assert msg.kid == KID
    assert msg.protected == b""


def test_alg_in_unprotected_header_rejected():
    with pytest.raises(CoseError):
        cose.parse_sign1(envelope(unprotected={1: -8}))
    with pytest.raises(CoseError):
        cose.parse_sign1(envelope(protected=cbor.dumps({4: KID}), unprotected={1: -8}))


def test_alg_in_unprotected_header_when_the_format_allows_it():
    msg = cose.parse_sign1(envelope(protected=b"", unprotected={1: -7, 4: KID}), alg_unprotected=True)
    assert (msg.alg, msg.kid, msg.protected) == (-7, KID, b"")
    msg = cose.parse_sign1(envelope(unprotected={1: -7}), alg_unprotected=True)
    assert msg.alg == -8  # in both headers the protected one counts
    with pytest.raises(CoseError):
        cose.parse_sign1(envelope(protected=b"", unprotected={1: "ES256", 4: KID}), alg_unprotected=True)


@pytest.mark.parametrize("tag", [0, 16, 17, 19, 96, 98, 55799])
def test_wrong_tag_rejected(tag):
    with pytest.raises(CoseError):
        cose.parse_sign1(envelope(tag=tag))


def test_double_tag_rejected():
    inner = cbor.loads(envelope())
    with pytest.raises(CoseError):
        cose.parse_sign1(cbor.dumps(Tag(18, inner)))


@pytest.mark.parametrize("msg", [
    [], [b""], [b"", {}, PAYLOAD], [b"", {}, PAYLOAD, b"", b""],
    {1: 2}, b"abc", "text", 18, None,
])
def test_not_a_four_item_array_rejected(msg):
    for data in (cbor.dumps(msg), cbor.dumps(Tag(18, msg))):
        with pytest.raises(CoseError):
            cose.parse_sign1(data)


@pytest.mark.parametrize("index, value", [
    (0, {1: -8}),  # protected header as a map instead of a bstr
    (0, "a"), (1, b""), (1, []), (1, None), (2, None), (2, "payload"), (3, "sig"), (3, [1]),
])
def test_wrong_member_types_rejected(index, value):
    msg = [cbor.dumps({1: -8, 4: KID}), {}, PAYLOAD, b"\x00" * 64]
    msg[index] = value
    with pytest.raises(CoseError):
        cose.parse_sign1(cbor.dumps(Tag(18, msg)))


@pytest.mark.parametrize("protected", [
    cbor.dumps([1, -8]),  # not a map
    cbor.dumps({1: "EdDSA", 4: KID}),  # alg as text
    cbor.dumps({1: True, 4: KID}),  # alg as bool
    cbor.dumps({1: -8, 4: "kid"}),  # kid as text
    cbor.dumps({1: -8, 4: 7}),
])
def test_bad_protected_header_rejected(protected):
    with pytest.raises(CoseError):
        cose.parse_sign1(envelope(protected=protected))


def test_kid_as_text_in_unprotected_rejected():
    with pytest.raises(CoseError):
        cose.parse_sign1(envelope(protected=cbor.dumps({1: -8}), unprotected={4: "kid"}))


@pytest.mark.parametrize("protected", [b"\xa1\x01", b"\xff", cbor.dumps({1: -8}) + b"\x00"])
def test_protected_header_not_cbor_rejected(protected):
    with pytest.raises((CborError, CoseError)):
        cose.parse_sign1(envelope(protected=protected))


@pytest.mark.parametrize("data", [b"", b"\xd2", b"\xd2\x84", envelope()[:-1], envelope() + b"\x00"])
def test_not_cbor_raises_cbor_error(data):
    with pytest.raises(CborError):
        cose.parse_sign1(data)


def _decoded(data: bytes):
    """What `cose.envelope` (the general path, through the CBOR decoder) makes of ``data``."""
    try:
        return cose.envelope(data)
    except (CborError, CoseError) as exc:
        return type(exc), str(exc)


def test_issued_envelopes_are_read_straight_from_the_bytes(signer):
    """The layout every issuer writes (tagged or not, payloads of any size a card has) takes the
    direct read, and it reads what the decoder reads."""
    for tagged in (True, False):
        for size in (0, 23, 24, 255, 256, 3000):
            data = cose.sign1(b"p" * size, signer.key, signer.alg, signer.kid, tagged=tagged)
            assert cose.plain_envelope(data) == cose.envelope(data) == _decoded(data)


# byte values with a meaning in an envelope's heads (lengths, arrays, maps, tags, breaks)
ENVELOPE_BYTES = [0x00, 0x18, 0x40, 0x57, 0x58, 0x59, 0x5a, 0x5f, 0x84, 0x85, 0x9f, 0xa0,
                  0xa1, 0xbf, 0xc0, 0xd2, 0xd8, 0xff]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=30), st.binary(max_size=300), st.binary(max_size=70), st.booleans(), st.data())
@example(b"", b"", b"", True, None)
def test_the_direct_read_agrees_with_the_decoder(protected, payload, signature, tagged, data):
    """For any bytes, above all near-envelopes: the direct read gives the decoder's result or
    leaves them to it (None), and sign1_fields gives what it gave before the direct read."""
    msg = [protected, {}, payload, signature]
    encoded = cbor.dumps(Tag(18, msg) if tagged else msg)
    samples = [encoded] if data is None else [encoded, mutated(encoded, data.draw, ENVELOPE_BYTES),
                                              data.draw(st.binary(max_size=40))]
    for raw in samples:
        direct = cose.plain_envelope(raw)
        decoded = _decoded(raw)
        assert direct is None or direct == decoded, raw.hex()
        if type(decoded) is tuple and type(decoded[0]) is type:  # refused: sign1_fields refuses it the same way
            with pytest.raises(decoded[0], match=re.escape(decoded[1])):
                cose.sign1_fields(raw)


# --------------------------------------------------------------------------- verify_signature

MSG = b"message to be signed"


def test_verify_signature_true_and_false(issuers):
    ed, es = issuers["ed"], issuers["es"]
    for iss in (ed, es):
        sig = cose.sign(iss.key, iss.alg, MSG)
        assert cose.verify_signature(iss.key.public_key(), iss.alg, MSG, sig)
        assert not cose.verify_signature(iss.key.public_key(), iss.alg, MSG + b"!", sig)
        bad = bytearray(sig)
        bad[10] ^= 1
        assert not cose.verify_signature(iss.key.public_key(), iss.alg, MSG, bytes(bad))


def test_verify_signature_wrong_key_type_is_false(issuers, rogue_ed_key):
    ed, es = issuers["ed"], issuers["es"]
    ed_sig = cose.sign(ed.key, cose.ALG_EDDSA, MSG)
    es_sig = cose.sign(es.key, cose.ALG_ES256, MSG)
    # a key of the wrong type for the alg: False, never an exception
    assert cose.verify_signature(es.key.public_key(), cose.ALG_EDDSA, MSG, ed_sig) is False
    assert cose.verify_signature(ed.key.public_key(), cose.ALG_ES256, MSG, es_sig) is False
    assert cose.verify_signature(ed.key.public_key(), cose.ALG_PS256, MSG, ed_sig) is False
    p384 = ec.generate_private_key(ec.SECP384R1())
    assert cose.verify_signature(p384.public_key(), cose.ALG_ES256, MSG, es_sig) is False
    # another key of the right type
    assert cose.verify_signature(rogue_ed_key.public_key(), cose.ALG_EDDSA, MSG, ed_sig) is False
    # unknown algorithms
    for alg in (-35, -36, 0, 1, -257):
        assert cose.verify_signature(ed.key.public_key(), alg, MSG, ed_sig) is False
        assert cose.verify_signature(es.key.public_key(), alg, MSG, es_sig) is False


def test_verify_signature_rsa_key_with_eddsa_is_false():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert cose.verify_signature(key.public_key(), cose.ALG_EDDSA, MSG, b"\x00" * 64) is False
    assert cose.verify_signature(key.public_key(), cose.ALG_ES256, MSG, b"\x00" * 64) is False


def test_es256_der_signature_rejected(issuers):
    es = issuers["es"]
    der = es.key.sign(MSG, ec.ECDSA(hashes.SHA256()))
    es.key.public_key().verify(der, MSG, ec.ECDSA(hashes.SHA256()))  # a genuine DER signature
    assert cose.verify_signature(es.key.public_key(), cose.ALG_ES256, MSG, der) is False


@pytest.mark.parametrize("length", [0, 32, 63, 65, 72, 128])
def test_signature_wrong_length_is_false(issuers, length):
    ed, es = issuers["ed"], issuers["es"]
    for iss in (ed, es):
        sig = cose.sign(iss.key, iss.alg, MSG)
        sig = (sig * 3)[:length]
        assert cose.verify_signature(iss.key.public_key(), iss.alg, MSG, sig) is False


def test_es256_padded_signature_with_the_same_r_and_s_is_rejected(issuers):
    # r || 0x00 || s has the same integers r and s: still not a 64-byte COSE signature
    es = issuers["es"]
    sig = cose.sign(es.key, cose.ALG_ES256, MSG)
    assert cose.verify_signature(es.key.public_key(), cose.ALG_ES256, MSG, sig)
    for padded in (sig[:32] + b"\x00" + sig[32:], sig[:32] + b"\x00" * 8 + sig[32:], b"\x00" + sig):
        assert cose.verify_signature(es.key.public_key(), cose.ALG_ES256, MSG, padded) is False


def _es256_signatures_where(predicate, es, tries: int = 30_000):
    for i in range(tries):
        message = MSG + i.to_bytes(4, "big")
        sig = cose.sign(es.key, cose.ALG_ES256, message)
        if predicate(sig[:32], sig[32:]):
            return message, sig
    raise AssertionError("no such signature found")


@pytest.mark.parametrize("predicate", [
    pytest.param(lambda r, s: r[0] == 0, id="r-leading-zero"),
    pytest.param(lambda r, s: s[0] == 0, id="s-leading-zero"),
    pytest.param(lambda r, s: r[0] == 0 and r[1] >= 0x80, id="r-zero-then-high-bit"),
    pytest.param(lambda r, s: s[0] == 0 and s[1] >= 0x80, id="s-zero-then-high-bit"),
    pytest.param(lambda r, s: r[0] >= 0x80 and s[0] >= 0x80, id="both-high-bit"),
    pytest.param(lambda r, s: r[0] < 0x80 and s[0] < 0x80 and r[0] and s[0], id="both-low"),
])
def test_es256_signatures_with_any_r_and_s_shape_verify(issuers, predicate):
    es = issuers["es"]
    message, sig = _es256_signatures_where(predicate, es)
    # genuine, by an independent conversion to DER
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    es.key.public_key().verify(der, message, ec.ECDSA(hashes.SHA256()))
    assert cose.verify_signature(es.key.public_key(), cose.ALG_ES256, message, sig) is True
    assert cose.verify_signature(es.key.public_key(), cose.ALG_ES256, message + b"!", sig) is False


@pytest.mark.parametrize("sig", [b"\x00" * 64, b"\xff" * 64, b"\x00" * 32 + b"\x01" * 32])
def test_degenerate_es256_signatures_are_false(issuers, sig):
    es = issuers["es"]
    assert cose.verify_signature(es.key.public_key(), cose.ALG_ES256, MSG, sig) is False


def test_degenerate_eddsa_signatures_are_false(issuers):
    ed = issuers["ed"]
    for sig in (b"\x00" * 64, b"\xff" * 64):
        assert cose.verify_signature(ed.key.public_key(), cose.ALG_EDDSA, MSG, sig) is False


def test_sign_unknown_alg_raises(issuers):
    with pytest.raises(ValueError):
        cose.sign(issuers["ed"].key, -35, MSG)


def test_ed25519_signature_matches_library(issuers):
    ed = issuers["ed"]
    sig = cose.sign(ed.key, cose.ALG_EDDSA, MSG)
    assert sig == ed.key.sign(MSG)  # Ed25519 is deterministic
    with pytest.raises(InvalidSignature):
        ed25519.Ed25519PrivateKey.generate().public_key().verify(sig, MSG)
