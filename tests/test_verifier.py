"""scanner.cards.verifier.verify on CK1 cards: one test (at least) per reason code, Ed25519 and ES256."""
from __future__ import annotations

import base64
import json
import unicodedata
import zlib

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from scanner.base.errors import Reason
from scanner.base.safetext import escape, json_line
from scanner.cards import base45, cbor, cose
from scanner.cards.bundle import BundleKey
from scanner.cards.cbor import Tag
from scanner.cards.issuer import issue
from scanner.cards.keys import kid_of
from scanner.cards.trust import TrustStore
from scanner.cards.verdict import Decision
from scanner.cards.verifier import DEFAULT_CLOCK_SKEW, MAX_TEXT, verify

KEYS = ["ed", "es"]
DAY = 86_400


@pytest.fixture(params=KEYS)
def key(request):
    return request.param


def reason(text, trust, now, **kw) -> Reason:
    v = verify(text, trust, now, **kw)
    assert v.detail != "internal error while verifying", v
    assert v.accepted is (v.reason is Reason.OK)
    assert v.decision is (Decision.ACCEPT if v.reason is Reason.OK else Decision.REJECT)
    return v.reason


def nest(levels: int) -> list:
    """``levels`` arrays nested in each other: nest(1) == [], nest(2) == [[]]."""
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


def cose_of(text: str) -> bytes:
    raw = base45.decode(text[4:])
    return zlib.decompress(raw) if raw[:1] == b"\x78" else raw


def rebuild(text: str, edit) -> str:
    """Decode a card's COSE_Sign1, let ``edit`` change the [protected, unprotected, payload,
    signature] list in place, and re-encode it (the signature is NOT redone)."""
    msg = cbor.loads(cose_of(text))
    tagged = isinstance(msg, Tag)
    items = list(msg.value if tagged else msg)
    edit(items)
    return "CK1:" + base45.encode(cbor.dumps(Tag(18, items) if tagged else items))


def padded_card(sign_payload, claims: dict, target_cose_len: int, *, key="ed", compress=False) -> str:
    """A correctly signed card whose COSE_Sign1 is exactly ``target_cose_len`` bytes (padding in claim 99)."""
    pad = max(target_cose_len - 300, 0)
    for _ in range(10):
        c = dict(claims)
        c[99] = b"\x00" * pad
        text = sign_payload(c, key)
        size = len(cose_of(text))
        if size == target_cose_len:
            return sign_payload(c, key, compress=compress)
        pad += target_cose_len - size
    raise AssertionError("could not hit the target size")


# =========================================================================== ok

def test_ok(key, make_spec, issuers, trust, now):
    spec = make_spec(key, id_masked="***1234", status="F0", last_dose="2021-09-30", not_before=now - 10)
    v = verify(issue(spec, issuers[key].key), trust, now)
    assert v.reason is Reason.OK and v.accepted and v.decision is Decision.ACCEPT
    assert v.format == "CK1" and v.detail == ""
    assert v.kid == issuers[key].kid
    card = v.card
    assert card.format == "CK1"
    assert card.card_id == spec.card_id
    assert card.issuer == issuers[key].name
    assert card.kid == issuers[key].kid
    assert (card.issued_at, card.expires_at, card.not_before) == (spec.issued_at, spec.expires_at, now - 10)
    assert card.holder == spec.holder
    assert card.holder.birth_year == "1985"


def test_ok_minimal_fields(key, make_card, trust, now):
    v = verify(make_card(key), trust, now)
    assert v.reason is Reason.OK
    h = v.card.holder
    assert (h.id_masked, h.status, h.last_dose) == (None, None, None)
    assert v.card.not_before is None


@pytest.mark.parametrize("birth", ["1985-03-02", "1985-03", "1985", "2020-02-29", "0001-01-01", "9999-12-31"])
def test_ok_birth_date_forms(make_card, trust, now, birth):
    v = verify(make_card("ed", birth_date=birth), trust, now)
    assert v.reason is Reason.OK
    assert v.card.holder.birth_date == birth


def test_ok_boundaries_of_lengths(key, make_card, trust, now):
    assert reason(make_card(key, name="N" * 80), trust, now) is Reason.OK
    assert reason(make_card(key, name="ễ" * 80), trust, now) is Reason.OK  # 80 characters, 240 bytes
    assert reason(make_card(key, name="x"), trust, now) is Reason.OK
    assert reason(make_card(key, id_masked="i" * 32, status="s" * 32), trust, now) is Reason.OK


def test_ok_issuer_of_64_characters(make_card, make_trust, issuers, now):
    ed = issuers["ed"]
    long_issuer = "I" * 64
    store = make_trust(keys=[BundleKey(ed.kid, "EdDSA", long_issuer, ed.key.public_key())])
    assert reason(make_card("ed", issuer=long_issuer), store, now) is Reason.OK


def test_unknown_claims_are_ignored(key, make_claims, sign_payload, trust, now):
    claims = make_claims(key)
    claims[99] = {"anything": [1, 2.5, None]}
    claims[-65537]["zz"] = "extra"
    claims["text-key"] = b"x"
    assert reason(sign_payload(claims, key), trust, now) is Reason.OK


def test_kid_only_in_unprotected_header(key, make_claims, sign_payload, trust, now):
    text = sign_payload(make_claims(key), key, kid_unprotected=True)
    msg = cose.parse_sign1(cose_of(text))
    assert cbor.loads(msg.protected) == {1: msg.alg}  # the kid really is only in the unprotected map
    assert reason(text, trust, now) is Reason.OK


def test_untagged_cose(key, make_claims, sign_payload, trust, now):
    text = sign_payload(make_claims(key), key, tagged=False)
    assert cose_of(text)[0] == 0x84  # array(4), no tag
    assert reason(text, trust, now) is Reason.OK


def test_compressed_card(key, make_card, trust, now):
    text = make_card(key, compress=True)
    assert base45.decode(text[4:])[:1] == b"\x78"
    assert reason(text, trust, now) is Reason.OK


def test_compressed_untagged_kid_unprotected(key, make_claims, sign_payload, trust, now):
    text = sign_payload(make_claims(key), key, tagged=False, kid_unprotected=True, compress=True)
    assert reason(text, trust, now) is Reason.OK


def test_vietnamese_name_round_trips_exactly(key, make_card, trust, now):
    name = unicodedata.normalize("NFC", "Nguyễn Thị Hương")
    v = verify(make_card(key, name=name), trust, now)
    assert v.reason is Reason.OK
    assert v.card.holder.name == name
    assert v.card.holder.name.encode("utf-8") == name.encode("utf-8")
    assert v.to_dict()["holder"]["name"] == name
    assert name in json_line(v.to_dict())  # legible, not \u-escaped
    assert escape(name) == name


def test_verifier_does_not_renormalise_a_signed_name(make_claims, sign_payload, trust, now):
    nfd = unicodedata.normalize("NFD", "Nguyễn Thị Hương")
    claims = make_claims("ed")
    claims[-65537]["n"] = nfd
    v = verify(sign_payload(claims, "ed"), trust, now)
    assert v.reason is Reason.OK
    assert v.card.holder.name == nfd


def test_issuer_normalises_names_to_nfc(make_card, trust, now):
    nfd = unicodedata.normalize("NFD", "Nguyễn Thị Hương")
    v = verify(make_card("ed", name=nfd), trust, now)
    assert v.card.holder.name == unicodedata.normalize("NFC", nfd)


def test_name_with_control_characters_is_accepted_and_escaped(key, make_card, trust, now):
    name = "A\x1b[2JB\x9bC\u202eD\u2028E"
    v = verify(make_card(key, name=name), trust, now)
    assert v.reason is Reason.OK
    assert v.card.holder.name == name  # the verifier reports what was signed
    shown = escape(v.card.holder.name)
    for raw, esc in (("\x1b", "\\u001b"), ("\x9b", "\\u009b"), ("\u202e", "\\u202e"), ("\u2028", "\\u2028")):
        assert raw not in shown
        assert esc in shown
    line = json_line(v.to_dict())
    for raw in ("\x1b", "\x9b", "\u202e", "\u2028", "\n"):
        assert raw not in line
    assert json.loads(line) == v.to_dict()


def test_float_now(key, make_card, trust, now):
    assert reason(make_card(key), trust, now + 0.75) is Reason.OK


def test_loose_key_accepts_any_issuer(key, make_card, issuers, now):
    i = issuers[key]
    store = TrustStore.build(keys=[BundleKey(i.kid, i.alg_name, None, i.key.public_key())])
    assert reason(make_card(key, issuer="XX-ANY"), store, now) is Reason.OK


# =========================================================================== to_dict

DICT_KEYS = {"decision", "reason", "detail", "format", "card_id", "issuer", "kid", "holder",
             "issued_at", "not_before", "expires_at"}


def test_to_dict_accept(key, make_spec, issuers, trust, now):
    spec = make_spec(key, id_masked="***9", status="ok", last_dose="2022-01-31")
    d = verify(issue(spec, issuers[key].key), trust, now).to_dict()
    assert set(d) == DICT_KEYS
    assert d["decision"] == "accept" and d["reason"] == "ok" and d["detail"] == "" and d["format"] == "CK1"
    assert d["card_id"] == spec.card_id.hex() and len(d["card_id"]) == 32
    assert d["issuer"] == issuers[key].name
    assert base64.b64decode(d["kid"]) == issuers[key].kid
    assert d["holder"] == {"name": spec.holder.name, "birth_date": "1985-03-02", "id_masked": "***9",
                           "status": "ok", "last_dose": "2022-01-31"}
    assert (d["issued_at"], d["not_before"], d["expires_at"]) == (spec.issued_at, None, spec.expires_at)
    assert json.loads(json.dumps(d)) == d
    assert all(type(d[k]) is str for k in ("decision", "reason", "detail"))


def test_to_dict_reject_without_card(key, rogue_ed_key, rogue_es_key, make_card, trust, now):
    rogue = rogue_ed_key if key == "ed" else rogue_es_key
    v = verify(make_card(rogue), trust, now)
    d = v.to_dict()
    assert set(d) == DICT_KEYS
    assert d["decision"] == "reject" and d["reason"] == "unknown_key" and d["format"] == "CK1"
    assert d["detail"]
    assert d["kid"] is not None
    for k in ("card_id", "issuer", "holder", "issued_at", "not_before", "expires_at"):
        assert d[k] is None


def test_to_dict_unsupported(trust, now):
    d = verify("hello", trust, now).to_dict()
    assert set(d) == DICT_KEYS
    assert d["reason"] == "unsupported_format" and d["format"] is None and d["kid"] is None


def test_to_dict_expired_keeps_card(key, make_card, trust, now):
    d = verify(make_card(key, issued_at=now - 10 * DAY, expires_at=now - DAY), trust, now).to_dict()
    assert d["reason"] == "expired" and d["decision"] == "reject"
    assert d["holder"]["name"] == "Nguyen Van An"
    assert d["expires_at"] == now - DAY


# =========================================================================== unsupported_format

@pytest.mark.parametrize("text", [
    "", " ", "https://example.org/verify?c=CK1:BB8", "ck1:BB8", "Ck1:BB8", "CK1 BB8", "CK2:BB8",
    " CK1:BB8", "\ufeffCK1:BB8", "CK1", "hc1:NCFOXN%TS3DH", "SHC:/5676290952432060346029243740",
])
def test_unsupported_format(text, trust, now):
    v = verify(text, trust, now)
    assert v.reason is Reason.UNSUPPORTED_FORMAT
    assert v.format is None and v.card is None


@pytest.mark.parametrize("text, fmt", [("HC1:NCFOXN%TS3DH", "HC1"),
                                       ("shc:/5676290952432060346029243740", "SHC")])
def test_truncated_health_certificates_are_malformed(text, fmt, trust, now):
    v = verify(text, trust, now)  # EU DCC and SMART Health Cards are registered formats
    assert v.reason is Reason.MALFORMED and v.format == fmt and v.card is None


def test_lowercase_prefix_of_a_real_card_is_unsupported(key, make_card, trust, now):
    text = make_card(key)
    assert reason("ck1:" + text[4:], trust, now) is Reason.UNSUPPORTED_FORMAT
    assert reason("HC1:" + text[4:], trust, now) is Reason.MALFORMED  # a CK1 body is no EU DCC


# =========================================================================== malformed: envelope

@pytest.mark.parametrize("value", [b"CK1:BB8", None, 42, bytearray(b"CK1:"), ["CK1:"]])
def test_non_str_input_is_malformed(value, trust, now):
    assert reason(value, trust, now) is Reason.MALFORMED


@pytest.mark.parametrize("body", ["", "bb8", "BB8a", "A", "GGW", "::", "BB8!", "BB8\n", "BB8 é"])
def test_bad_base45(body, trust, now):
    assert reason("CK1:" + body, trust, now) is Reason.MALFORMED


def test_card_text_with_stray_characters(key, make_card, trust, now):
    text = make_card(key)
    assert reason(text + "\n", trust, now) is Reason.MALFORMED
    assert reason(text[:-1], trust, now) is Reason.MALFORMED  # length % 3 == 1 or a truncated item
    assert reason(text.lower().replace("ck1:", "CK1:"), trust, now) is Reason.MALFORMED


def test_truncated_cose(key, make_card, trust, now, wrap_cose):
    raw = cose_of(make_card(key))
    for cut in (1, 2, 10, 64, len(raw) - 1):
        assert reason(wrap_cose(raw[:-cut]), trust, now) is Reason.MALFORMED


def test_trailing_bytes_after_cose(key, make_card, trust, now, wrap_cose):
    raw = cose_of(make_card(key))
    assert reason(wrap_cose(raw + b"\x00"), trust, now) is Reason.MALFORMED
    assert reason(wrap_cose(raw + raw), trust, now) is Reason.MALFORMED


def test_zlib_bomb_over_16_kib(trust, now):
    bomb = zlib.compress(b"\x00" * (16 * 1024 + 1), 9)
    assert reason("CK1:" + base45.encode(bomb), trust, now) is Reason.MALFORMED
    big = zlib.compress(b"\x00" * 2_500_000, 9)  # about 2.4 KB compressed: still fits a QR code
    text = "CK1:" + base45.encode(big)
    assert len(text) <= MAX_TEXT
    assert reason(text, trust, now) is Reason.MALFORMED


def test_inflated_size_limit_is_exactly_16_kib(make_claims, sign_payload, trust, now):
    claims = make_claims("ed")
    at_limit = padded_card(sign_payload, claims, 16 * 1024, compress=True)
    assert len(zlib.decompress(base45.decode(at_limit[4:]))) == 16 * 1024
    assert reason(at_limit, trust, now) is Reason.OK
    over = padded_card(sign_payload, claims, 16 * 1024 + 1, compress=True)
    assert len(zlib.decompress(base45.decode(over[4:]))) == 16 * 1024 + 1
    assert reason(over, trust, now) is Reason.MALFORMED


def test_truncated_zlib(key, make_card, trust, now):
    packed = base45.decode(make_card(key, compress=True)[4:])
    for cut in (1, 4, len(packed) // 2):
        assert reason("CK1:" + base45.encode(packed[:-cut]), trust, now) is Reason.MALFORMED


def test_bytes_after_zlib_stream(key, make_card, trust, now):
    packed = base45.decode(make_card(key, compress=True)[4:])
    assert reason("CK1:" + base45.encode(packed + b"\x00"), trust, now) is Reason.MALFORMED


def test_corrupt_zlib(trust, now):
    assert reason("CK1:" + base45.encode(b"\x78\x9c\xff\xff\xff\xff"), trust, now) is Reason.MALFORMED
    assert reason("CK1:" + base45.encode(b"\x78"), trust, now) is Reason.MALFORMED


def test_text_length_limit_with_real_cards(make_claims, sign_payload, trust, now):
    claims = make_claims("ed")
    # 2861 bytes of COSE are 4292 base45 characters: with "CK1:" exactly 4296
    at_limit = padded_card(sign_payload, claims, 2861)
    assert len(at_limit) == MAX_TEXT == 4296
    assert reason(at_limit, trust, now) is Reason.OK
    over = padded_card(sign_payload, claims, 2862)
    assert len(over) == 4297
    assert reason(over, trust, now) is Reason.MALFORMED


@pytest.mark.parametrize("text", ["CK1:" + "0" * 4293, "x" * 5000, "https://" + "a" * 5000])
def test_text_over_4296_characters(text, trust, now):
    assert reason(text, trust, now) is Reason.MALFORMED


@pytest.mark.parametrize("edit", [
    pytest.param(lambda m: m.append(b""), id="5-items"),
    pytest.param(lambda m: m.pop(), id="3-items"),
    pytest.param(lambda m: m.__setitem__(0, cbor.loads(m[0])), id="protected-as-map"),
    pytest.param(lambda m: m.__setitem__(1, []), id="unprotected-as-array"),
    pytest.param(lambda m: m.__setitem__(2, None), id="detached-payload"),
    pytest.param(lambda m: m.__setitem__(3, "sig"), id="signature-text"),
    pytest.param(lambda m: m[1].__setitem__(1, -8), id="alg-unprotected"),
    pytest.param(lambda m: m[1].__setitem__(99, nest(16)), id="nested-too-deep"),  # tag, array, map + 16 arrays
])
def test_bad_cose_structure(key, make_card, trust, now, edit):
    assert reason(rebuild(make_card(key), edit), trust, now) is Reason.MALFORMED


def test_wrong_cose_tag(key, make_card, trust, now, wrap_cose):
    msg = cbor.loads(cose_of(make_card(key)))
    assert reason(wrap_cose(cbor.dumps(Tag(98, msg.value))), trust, now) is Reason.MALFORMED
    assert reason(wrap_cose(cbor.dumps(Tag(17, msg.value))), trust, now) is Reason.MALFORMED


@pytest.mark.parametrize("alg", [-35, -36, -37, -257, 0, 1])
def test_alg_not_allowed_in_ck1(key, make_claims, sign_payload, trust, now, alg):
    assert reason(sign_payload(make_claims(key), key, alg=alg), trust, now) is Reason.MALFORMED


def test_missing_alg_or_kid(key, make_claims, issuers, trust, now, wrap_cose):
    i = issuers[key]
    payload = cbor.dumps(make_claims(key))
    for header, unprotected in (({4: i.kid}, {}), ({1: i.alg}, {}), ({}, {4: i.kid})):
        protected = cbor.dumps(header) if header else b""
        sig = cose.sign(i.key, i.alg, cose.sig_structure(protected, payload))
        text = wrap_cose(cbor.dumps(Tag(18, [protected, unprotected, payload, sig])))
        assert reason(text, trust, now) is Reason.MALFORMED


# =========================================================================== malformed: claims
# (every card below is correctly signed by a trusted key: only the claims are wrong)

def _set_card(field, value):
    def edit(c):
        if value is _DELETE:
            del c[-65537][field]
        else:
            c[-65537][field] = value
    return edit


def _set(claim, value):
    def edit(c):
        if value is _DELETE:
            del c[claim]
        else:
            c[claim] = value
    return edit


_DELETE = object()

CLAIM_EDITS = [
    ("exp-text", _set(4, "2000000000")),
    ("exp-true", _set(4, True)),
    ("exp-float", _set(4, 1_800_000_000.0)),
    ("exp-negative", _set(4, -1)),
    ("exp-2**40", _set(4, 1 << 40)),
    ("exp-missing", _set(4, _DELETE)),
    ("exp-null", _set(4, None)),
    ("exp-before-iat", lambda c: c.__setitem__(4, c[6] - 1)),
    ("iat-missing", _set(6, _DELETE)),
    ("iat-false", _set(6, False)),
    ("iat-tagged", lambda c: c.__setitem__(6, Tag(1, c[6]))),
    ("nbf-text", _set(5, "now")),
    ("nbf-true", _set(5, True)),
    ("nbf-negative", _set(5, -5)),
    ("iss-missing", _set(1, _DELETE)),
    ("iss-empty", _set(1, "")),
    ("iss-int", _set(1, 7)),
    ("iss-bytes", _set(1, b"VN-HUE")),
    ("iss-65", _set(1, "V" * 65)),
    ("cti-missing", _set(7, _DELETE)),
    ("cti-15", _set(7, b"\x01" * 15)),
    ("cti-17", _set(7, b"\x01" * 17)),
    ("cti-empty", _set(7, b"")),
    ("cti-text", _set(7, "0" * 16)),
    ("cti-int", _set(7, 12345)),
    ("card-missing", _set(-65537, _DELETE)),
    ("card-list", _set(-65537, [1, "Nguyen", "1985"])),
    ("card-text", _set(-65537, "Nguyen Van An")),
    ("card-under-text-key", lambda c: c.__setitem__("-65537", c.pop(-65537))),
    ("v-2", _set_card("v", 2)),
    ("v-0", _set_card("v", 0)),
    ("v-missing", _set_card("v", _DELETE)),
    ("v-true", _set_card("v", True)),
    ("v-float", _set_card("v", 1.0)),
    ("v-text", _set_card("v", "1")),
    ("name-missing", _set_card("n", _DELETE)),
    ("name-empty", _set_card("n", "")),
    ("name-81", _set_card("n", "N" * 81)),
    ("name-81-vietnamese", _set_card("n", "ễ" * 81)),
    ("name-int", _set_card("n", 5)),
    ("name-bytes", _set_card("n", b"Nguyen")),
    ("name-list", _set_card("n", ["Nguyen"])),
    ("birth-missing", _set_card("d", _DELETE)),
    ("birth-2021-02-30", _set_card("d", "2021-02-30")),
    ("birth-2021-02-29", _set_card("d", "2021-02-29")),
    ("birth-month-13", _set_card("d", "2021-13")),
    ("birth-month-00", _set_card("d", "2021-00")),
    ("birth-day-00", _set_card("d", "2021-01-00")),
    ("birth-year-0000", _set_card("d", "0000")),
    ("birth-0000-01-01", _set_card("d", "0000-01-01")),
    ("birth-2-digit-year", _set_card("d", "85-03-02")),
    ("birth-slashes", _set_card("d", "1985/03/02")),
    ("birth-no-padding", _set_card("d", "1985-3-2")),
    ("birth-with-time", _set_card("d", "1985-03-02T00:00")),
    ("birth-trailing-newline", _set_card("d", "1985-03-02\n")),
    ("birth-compact", _set_card("d", "19850302")),
    ("birth-int", _set_card("d", 1985)),
    ("birth-empty", _set_card("d", "")),
    ("last-dose-2021-02-30", _set_card("vd", "2021-02-30")),
    ("last-dose-partial", _set_card("vd", "2021-05")),
    ("last-dose-year", _set_card("vd", "2021")),
    ("last-dose-int", _set_card("vd", 20210501)),
    ("id-33", _set_card("id", "i" * 33)),
    ("id-empty", _set_card("id", "")),
    ("id-int", _set_card("id", 1234)),
    ("status-33", _set_card("st", "s" * 33)),
    ("status-bytes", _set_card("st", b"ok")),
    ("nested-17-in-claims", lambda c: c.__setitem__(99, nest(16))),  # 1 (claims map) + 16 arrays
]


@pytest.mark.parametrize("edit", [pytest.param(f, id=n) for n, f in CLAIM_EDITS])
def test_malformed_claims(key, make_claims, sign_payload, trust, now, edit):
    claims = make_claims(key)
    edit(claims)
    v = verify(sign_payload(claims, key), trust, now)
    assert v.reason is Reason.MALFORMED, v
    assert v.detail != "internal error while verifying"
    assert v.card is None


def test_nesting_of_exactly_16_in_claims_is_fine(key, make_claims, sign_payload, trust, now):
    claims = make_claims(key)
    claims[99] = nest(15)  # 1 (claims map) + 15 arrays = 16
    assert reason(sign_payload(claims, key), trust, now) is Reason.OK


@pytest.mark.parametrize("payload", [
    pytest.param(cbor.dumps([1, 2, 3]), id="array"),
    pytest.param(cbor.dumps("claims"), id="text"),
    pytest.param(cbor.dumps(None), id="null"),
    pytest.param(b"", id="empty"),
    pytest.param(b"\xff\x00", id="not-cbor"),
    pytest.param(b"\xa1\x01", id="truncated-map"),
    pytest.param(cbor.dumps(Tag(61, {1: "VN-HUE"})), id="cwt-tag"),
])
def test_payload_not_a_claims_map(key, sign_payload, trust, now, payload):
    assert reason(sign_payload(payload, key), trust, now) is Reason.MALFORMED


def test_signed_payload_with_trailing_bytes(key, make_claims, sign_payload, trust, now):
    payload = cbor.dumps(make_claims(key)) + b"\x00"
    assert reason(sign_payload(payload, key), trust, now) is Reason.MALFORMED


def test_signed_payload_with_duplicate_claim(key, make_claims, sign_payload, trust, now):
    claims = make_claims(key)
    raw = cbor.dumps(claims)
    # append a second exp claim: map head count + 1, then 04 1a <time>
    extra = b"\x04" + cbor.dumps(claims[4] + 10 * 365 * DAY)
    payload = bytes([raw[0] + 1]) + raw[1:] + extra
    assert reason(sign_payload(payload, key), trust, now) is Reason.MALFORMED


@pytest.mark.parametrize("birth", ["\u0661\u0669\u0669\u0660", "\uff11\uff19\uff19\uff10", "\u0660" * 4])
def test_birth_year_with_non_ascii_digits_is_malformed(make_claims, sign_payload, trust, now, birth):
    claims = make_claims("ed")
    claims[-65537]["d"] = birth
    assert reason(sign_payload(claims, "ed"), trust, now) is Reason.MALFORMED


# =========================================================================== unknown_key

def test_unknown_key(key, rogue_ed_key, rogue_es_key, make_card, trust, now):
    rogue = rogue_ed_key if key == "ed" else rogue_es_key
    v = verify(make_card(rogue), trust, now)
    assert v.reason is Reason.UNKNOWN_KEY
    assert v.kid == kid_of(rogue.public_key())
    assert v.card is None and v.format == "CK1"


def test_unknown_kid_with_trusted_signature(key, make_card, trust, now):
    assert reason(make_card(key, kid=b"\x00" * 8), trust, now) is Reason.UNKNOWN_KEY
    assert reason(make_card(key, kid=b""), trust, now) is Reason.UNKNOWN_KEY


def test_empty_trust_store_means_unknown_key(key, make_card, now):
    assert reason(make_card(key), TrustStore.build(), now) is Reason.UNKNOWN_KEY


# =========================================================================== bad_signature

def _flip_payload_byte(m):
    payload = bytearray(m[2])
    i = payload.index(b"Nguyen")
    payload[i] ^= 0x01  # "Nguyen" -> "Oguyen": still a perfectly valid claims map
    m[2] = bytes(payload)


def test_tampered_payload(key, make_card, trust, now):
    text = rebuild(make_card(key), _flip_payload_byte)
    assert cbor.loads(cose.parse_sign1(cose_of(text)).payload)[-65537]["n"] == "Oguyen Van An"
    assert reason(text, trust, now) is Reason.BAD_SIGNATURE


def test_tampered_dates(key, make_card, make_claims, trust, now):
    # move exp a year later, keeping the original signature
    def edit(m):
        claims = cbor.loads(m[2])
        claims[4] += 365 * DAY
        m[2] = cbor.dumps(claims)
    assert reason(rebuild(make_card(key), edit), trust, now) is Reason.BAD_SIGNATURE


def test_tampered_protected_header(key, make_card, trust, now):
    def edit(m):
        header = cbor.loads(m[0])
        header[99] = 1
        m[0] = cbor.dumps(header)
    assert reason(rebuild(make_card(key), edit), trust, now) is Reason.BAD_SIGNATURE


@pytest.mark.parametrize("change", [
    pytest.param(lambda s: bytes([s[0] ^ 1]) + s[1:], id="first-byte"),
    pytest.param(lambda s: s[:-1] + bytes([s[-1] ^ 0x80]), id="last-byte"),
    pytest.param(lambda s: s[32:] + s[:32], id="halves-swapped"),
    pytest.param(lambda s: b"", id="empty"),
    pytest.param(lambda s: s[:-1], id="63-bytes"),
    pytest.param(lambda s: s + b"\x00", id="65-bytes"),
    pytest.param(lambda s: b"\x00" * 64, id="zeros"),
])
def test_tampered_signature(key, make_card, trust, now, change):
    def edit(m):
        m[3] = change(m[3])
    assert reason(rebuild(make_card(key), edit), trust, now) is Reason.BAD_SIGNATURE


def test_es256_der_signature_is_bad_signature(make_card, issuers, trust, now):
    es = issuers["es"]

    def edit(m):
        tbs = cose.sig_structure(m[0], m[2])
        m[3] = es.key.sign(tbs, ec.ECDSA(hashes.SHA256()))  # genuine, but DER instead of r||s
    assert reason(rebuild(make_card("es"), edit), trust, now) is Reason.BAD_SIGNATURE


def test_signature_by_another_key_with_the_trusted_kid(key, rogue_ed_key, rogue_es_key, issuers,
                                                       make_claims, sign_payload, trust, now):
    rogue = rogue_ed_key if key == "ed" else rogue_es_key
    text = sign_payload(make_claims(key), rogue, kid=issuers[key].kid)
    assert reason(text, trust, now) is Reason.BAD_SIGNATURE


def test_header_alg_does_not_match_key(issuers, make_claims, sign_payload, trust, now):
    # EdDSA header (and an Ed25519 signature) with the kid of the ES256 key
    text = sign_payload(make_claims("es"), "ed", kid=issuers["es"].kid)
    assert reason(text, trust, now) is Reason.BAD_SIGNATURE
    # ES256 header with the kid of the Ed25519 key
    text = sign_payload(make_claims("ed"), "es", kid=issuers["ed"].kid)
    assert reason(text, trust, now) is Reason.BAD_SIGNATURE
    # the right key but a header alg that names the other algorithm
    text = sign_payload(make_claims("ed"), "ed", alg=cose.ALG_ES256)
    assert reason(text, trust, now) is Reason.BAD_SIGNATURE


@pytest.mark.parametrize("wrong", ["VN-DNG", "VN-HUE ", "vn-hue", "VN-HCM", "x"])
def test_issuer_mismatch(key, make_card, trust, now, wrong, issuers):
    if wrong == "VN-DNG" and key == "es":
        wrong = "VN-HUE"
    assert wrong != issuers[key].name
    assert reason(make_card(key, issuer=wrong), trust, now) is Reason.BAD_SIGNATURE


@pytest.mark.parametrize("formats, expected", [
    (frozenset({"HC1"}), Reason.BAD_SIGNATURE),
    (frozenset(), Reason.BAD_SIGNATURE),
    (frozenset({"ck1"}), Reason.BAD_SIGNATURE),
    (frozenset({"HC1", "CK1"}), Reason.OK),
    (None, Reason.OK),
])
def test_key_formats(key, issuers, make_trust, make_card, now, formats, expected):
    i = issuers[key]
    store = make_trust(keys=[BundleKey(i.kid, i.alg_name, i.name, i.key.public_key(), formats)])
    assert reason(make_card(key), store, now) is expected


def test_key_not_after(key, issuers, make_trust, make_card, make_spec, now):
    i = issuers[key]
    iat = now - DAY

    def store(not_after):
        return make_trust(keys=[BundleKey(i.kid, i.alg_name, i.name, i.key.public_key(), None, not_after)])
    card = make_card(key, issued_at=iat)
    assert reason(card, store(iat - 1), now) is Reason.BAD_SIGNATURE
    assert reason(card, store(iat), now) is Reason.OK
    # not_after limits issuance, not use: a card issued in time stays good after not_after
    assert reason(card, store(now - 60), now) is Reason.OK


def test_kid_collision_tries_every_candidate(key, issuers, rogue_ed_key, rogue_es_key, make_trust,
                                             make_card, now):
    i = issuers[key]
    rogue = rogue_ed_key if key == "ed" else rogue_es_key
    # two keys under the same kid (kids are only 8 bytes): the right one must still be found
    decoy = BundleKey(i.kid, i.alg_name, i.name, rogue.public_key())
    real = BundleKey(i.kid, i.alg_name, i.name, i.key.public_key())
    store = make_trust(keys=[decoy, real])
    assert len(store.lookup(i.kid)) == 2
    assert reason(make_card(key), store, now) is Reason.OK


def test_usable_keys_by_kid_alg_and_format(key, issuers, rogue_ed_key, make_card, now):
    i = issuers[key]
    ck1_only = BundleKey(i.kid, i.alg_name, i.name, i.key.public_key(), frozenset({"CK1"}))
    hc1_only = BundleKey(i.kid, i.alg_name, i.name, rogue_ed_key.public_key(), frozenset({"HC1"}))
    other_alg = BundleKey(i.kid, "PS256", i.name, rogue_ed_key.public_key())
    store = TrustStore.build(keys=[ck1_only, hc1_only, other_alg])
    assert store.usable(i.kid, i.alg_name, "CK1") == (ck1_only,)
    assert store.usable(i.kid, i.alg_name, "HC1") == (hc1_only,)
    assert store.usable(i.kid, "PS256", "CK1") == (other_alg,)
    assert store.usable(b"\0" * 8, i.alg_name, "CK1") == ()
    # asked again (now from the store's cache), the answers are the same
    assert store.usable(i.kid, i.alg_name, "CK1") == (ck1_only,)
    assert reason(make_card(key), store, now) is Reason.OK
    # hostile cards name any kid they like: what the store remembers stays bounded
    for n in range(1000):
        store.usable(n.to_bytes(8, "big"), i.alg_name, "CK1")
    assert len(store._usable) <= 256
    assert store.usable(i.kid, i.alg_name, "HC1") == (hc1_only,)


# =========================================================================== expired

def test_expired(key, make_card, trust, now):
    v = verify(make_card(key, issued_at=now - 30 * DAY, expires_at=now - DAY), trust, now)
    assert v.reason is Reason.EXPIRED
    assert v.card is not None and v.card.expires_at == now - DAY
    assert not v.accepted


def test_expiry_clock_skew_edges(key, make_card, trust, now):
    exp = now - 1000
    card = make_card(key, issued_at=now - 30 * DAY, expires_at=exp)
    assert DEFAULT_CLOCK_SKEW == 300
    assert reason(card, trust, exp) is Reason.OK
    assert reason(card, trust, exp + 300) is Reason.OK
    assert reason(card, trust, exp + 301) is Reason.EXPIRED
    assert reason(card, trust, exp, clock_skew=0) is Reason.OK
    assert reason(card, trust, exp + 1, clock_skew=0) is Reason.EXPIRED
    assert reason(card, trust, exp + 3600, clock_skew=3600) is Reason.OK
    assert reason(card, trust, exp + 3601, clock_skew=3600) is Reason.EXPIRED


def test_exp_equal_iat_is_valid_at_that_instant(key, make_card, trust, now):
    assert reason(make_card(key, issued_at=now, expires_at=now), trust, now) is Reason.OK


# =========================================================================== not_yet_valid

def test_not_yet_valid_nbf(key, make_card, trust, now):
    v = verify(make_card(key, issued_at=now - DAY, not_before=now + DAY), trust, now)
    assert v.reason is Reason.NOT_YET_VALID
    assert v.card is not None and v.card.not_before == now + DAY


def test_nbf_clock_skew_edges(key, make_card, trust, now):
    nbf = now + 5000
    card = make_card(key, issued_at=now - DAY, not_before=nbf)
    assert reason(card, trust, nbf - 301) is Reason.NOT_YET_VALID
    assert reason(card, trust, nbf - 300) is Reason.OK
    assert reason(card, trust, nbf - 1, clock_skew=0) is Reason.NOT_YET_VALID
    assert reason(card, trust, nbf, clock_skew=0) is Reason.OK


def test_iat_in_the_future(key, make_card, trust, now):
    iat = now + 1000
    card = make_card(key, issued_at=iat)
    assert reason(card, trust, iat - 301) is Reason.NOT_YET_VALID
    assert reason(card, trust, iat - 300) is Reason.OK


def test_nbf_before_iat_uses_iat(key, make_card, trust, now):
    iat = now + 2000
    card = make_card(key, issued_at=iat, not_before=now - DAY)
    assert reason(card, trust, now) is Reason.NOT_YET_VALID
    assert reason(card, trust, iat) is Reason.OK


# =========================================================================== revoked

def test_revoked_card_id(key, make_trust, make_card, now):
    card_id = bytes(range(16)) if key == "ed" else b"\xff" * 16
    store = make_trust(revoked_cards=[card_id])
    v = verify(make_card(key, card_id=card_id), store, now)
    assert v.reason is Reason.REVOKED
    assert v.card is not None and v.card.card_id == card_id
    assert reason(make_card(key), store, now) is Reason.OK  # other cards are fine


def test_revoked_kid(key, issuers, make_trust, make_card, now):
    store = make_trust(revoked_kids=[issuers[key].kid])
    v = verify(make_card(key), store, now)
    assert v.reason is Reason.REVOKED
    assert v.kid == issuers[key].kid
    other = "es" if key == "ed" else "ed"
    assert reason(make_card(other), store, now) is Reason.OK


def test_revoked_wins_over_expired_and_not_yet_valid(key, make_trust, make_card, now):
    card_id = b"\x42" * 16
    store = make_trust(revoked_cards=[card_id])
    expired = make_card(key, card_id=card_id, issued_at=now - 30 * DAY, expires_at=now - DAY)
    future = make_card(key, card_id=card_id, issued_at=now + DAY, expires_at=now + 30 * DAY)
    assert reason(expired, store, now) is Reason.REVOKED
    assert reason(future, store, now) is Reason.REVOKED


def test_revocation_is_checked_on_authentic_cards_only(key, make_trust, make_card, now):
    # a forged card that reuses a revoked card id is still a bad signature, not "revoked"
    card_id = b"\x43" * 16
    store = make_trust(revoked_cards=[card_id])
    text = rebuild(make_card(key, card_id=card_id), _flip_payload_byte)
    assert reason(text, store, now) is Reason.BAD_SIGNATURE


# =========================================================================== order of the steps
# (docs/card-format.md#verification: "Steps, in order; the first failure decides")

def test_revoked_kid_decides_before_key_lookup_and_signature(key, issuers, rogue_ed_key, rogue_es_key,
                                                             make_trust, make_card, now):
    rogue = rogue_ed_key if key == "ed" else rogue_es_key
    rogue_kid = kid_of(rogue.public_key())
    store = make_trust(revoked_kids=[issuers[key].kid, rogue_kid])
    # step 4 (revoked kid) before step 5 (unknown key)
    v = verify(make_card(rogue), store, now)
    assert v.reason is Reason.REVOKED and v.card is None and v.kid == rogue_kid
    # step 4 before step 6 (bad signature)
    forged = rebuild(make_card(key), _flip_payload_byte)
    v = verify(forged, store, now)
    assert v.reason is Reason.REVOKED and v.card is None


def test_unauthenticated_payload_is_never_decoded(key, issuers, rogue_ed_key, rogue_es_key, trust, now,
                                                  sign_payload):
    garbage = b"\xff\xff not cbor at all"
    rogue = rogue_ed_key if key == "ed" else rogue_es_key
    # unknown key: the garbage payload is not looked at
    assert reason(sign_payload(garbage, rogue), trust, now) is Reason.UNKNOWN_KEY
    # trusted kid, wrong signature: still bad_signature, not malformed
    assert reason(sign_payload(garbage, rogue, kid=issuers[key].kid), trust, now) is Reason.BAD_SIGNATURE


def test_bad_signature_verdict_has_no_holder_details(key, make_card, trust, now):
    v = verify(rebuild(make_card(key), _flip_payload_byte), trust, now)
    assert v.reason is Reason.BAD_SIGNATURE
    assert v.card is None
    d = v.to_dict()
    assert d["holder"] is None and d["card_id"] is None
    assert d["kid"] is not None


def test_stale_bundle_still_verifies_cards(key, make_trust, make_card, now):
    store = make_trust(issued_at=now - 60 * DAY, expires_at=now - 30 * DAY)
    assert store.bundles[0].expired(now)
    assert reason(make_card(key), store, now) is Reason.OK


@pytest.mark.parametrize("case", ["bad-claims", "bad-alg"])
def test_malformed_verdict_keeps_the_envelope_kid(key, issuers, make_claims, sign_payload, trust, now, case):
    claims = make_claims(key)
    if case == "bad-claims":
        claims[4] = "not a time"
        text = sign_payload(claims, key)
    else:
        text = sign_payload(claims, key, alg=-35)
    v = verify(text, trust, now)
    assert v.reason is Reason.MALFORMED
    assert v.kid == issuers[key].kid
    assert v.to_dict()["kid"] is not None


@pytest.mark.parametrize("where,field", [("claims", 5), ("card", "id"), ("card", "st"), ("card", "vd")])
def test_optional_field_present_as_null_is_malformed(sign_payload, make_claims, trust, now, where, field):
    claims = make_claims("ed")
    if where == "claims":
        claims[field] = None
    else:
        claims[-65537][field] = None
    assert reason(sign_payload(claims), trust, now) is Reason.MALFORMED


def test_one_key_listed_for_two_issuers_accepts_either(make_card, make_trust, bundle_keys, issuers, now):
    ed = next(k for k in bundle_keys if k.alg == "EdDSA")
    second = BundleKey(ed.kid, ed.alg, "VN-QNM", ed.public_key)
    store = make_trust(keys=[*bundle_keys, second])
    assert reason(make_card("ed"), store, now) is Reason.OK
    assert reason(make_card("ed", issuer="VN-QNM"), store, now) is Reason.OK
    assert reason(make_card("ed", issuer="VN-HNI"), store, now) is Reason.BAD_SIGNATURE


@pytest.mark.parametrize("bad_now", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_clock_is_a_programming_error(make_card, trust, bad_now):
    with pytest.raises(ValueError, match="finite"):
        verify(make_card("ed"), trust, bad_now)
