"""Property-based fuzzing of verify(): hostile text, hostile envelopes, and hostile (but correctly
signed) payloads. verify() must never raise, never hit its "internal error" fallback, and must give
the reason an independent model of the CK1 rules (``expected_reason`` below) gives."""
from __future__ import annotations

import datetime as dt
import re
import zlib

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from scanner.base.errors import Reason
from scanner.cards import base45, cbor, cose, formats
from scanner.cards.cbor import CborError, Tag
from scanner.cards.verifier import MAX_TEXT, verify

NOW = 1_750_000_000
DAY = 86_400
SKEW = 300
REVOKED_ID = b"\x13" * 16
INTERNAL = "internal error while verifying"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fuzz_trust(make_trust):
    return make_trust(revoked_cards=[REVOKED_ID])


def check(text, trust, now=NOW):
    v = verify(text, trust, now)  # must not raise
    if currently_in_test_context():
        event(f"reason: {v.reason}")  # see pytest --hypothesis-show-statistics
    assert v.detail != INTERNAL, (text, v)
    assert v.accepted is (v.reason is Reason.OK)
    return v


# --------------------------------------------------------------------------- an independent model

_FULL = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_MONTH = re.compile(r"[0-9]{4}-[0-9]{2}")
_YEAR = re.compile(r"[0-9]{4}")


def _valid_date(value, partial: bool) -> bool:
    if type(value) is not str:
        return False
    try:
        if _FULL.fullmatch(value):
            dt.date(int(value[:4]), int(value[5:7]), int(value[8:10]))
            return True
        if partial and _MONTH.fullmatch(value):
            dt.date(int(value[:4]), int(value[5:7]), 1)
            return True
        if partial and _YEAR.fullmatch(value):
            return int(value) >= 1
    except ValueError:
        return False
    return False


def _text_ok(value, lo: int, hi: int) -> bool:
    return type(value) is str and lo <= len(value) <= hi


def _time_ok(value) -> bool:
    return type(value) is int and 0 <= value < 1 << 40


def expected_reason(claims, signer_issuer: str, now: int = NOW) -> Reason:
    """The reason the CK1 rules give for an authentic payload ``claims`` signed by ``signer_issuer``'s key.

    An optional claim or card field that is present must have its type: CBOR null is not "absent".
    """
    M = Reason.MALFORMED
    if type(claims) is not dict:
        return M
    iss, exp, nbf, iat, cti, card = (claims.get(k) for k in (1, 4, 5, 6, 7, -65537))
    if not _text_ok(iss, 1, 64) or not _time_ok(exp) or not _time_ok(iat):
        return M
    if 5 in claims and not _time_ok(nbf):
        return M
    if exp < iat:
        return M
    if type(cti) is not bytes or len(cti) != 16:
        return M
    if type(card) is not dict:
        return M
    if type(card.get("v")) is not int or card.get("v") != 1:
        return M
    if not _text_ok(card.get("n"), 1, 80) or not _valid_date(card.get("d"), True):
        return M
    for field in ("id", "st"):
        if field in card and not _text_ok(card.get(field), 1, 32):
            return M
    if "vd" in card and not _valid_date(card.get("vd"), False):
        return M
    if iss != signer_issuer:
        return Reason.BAD_SIGNATURE
    if cti == REVOKED_ID:
        return Reason.REVOKED
    if now > exp + SKEW:
        return Reason.EXPIRED
    if now + SKEW < max(iat, nbf if nbf is not None else iat):
        return Reason.NOT_YET_VALID
    return Reason.OK


def test_model_sanity(make_claims):
    # the model agrees with itself on the obvious cases (guards the fuzz tests below)
    good = make_claims("ed")
    assert expected_reason(good, "VN-HUE") is Reason.OK
    assert expected_reason(good, "VN-DNG") is Reason.BAD_SIGNATURE
    assert expected_reason({**good, 4: "x"}, "VN-HUE") is Reason.MALFORMED
    assert expected_reason({**good, 7: REVOKED_ID}, "VN-HUE") is Reason.REVOKED
    assert expected_reason(good, "VN-HUE", now=good[4] + 301) is Reason.EXPIRED
    assert expected_reason(good, "VN-HUE", now=good[6] - 301) is Reason.NOT_YET_VALID
    assert not _valid_date("2021-02-30", True) and _valid_date("2020-02-29", False)
    assert not _valid_date("2021-05", False) and _valid_date("2021-05", True)
    assert not _valid_date("0000", True) and not _valid_date("\u0661\u0669\u0669\u0660", True)


# --------------------------------------------------------------------------- strategies

_MISSING = object()


def _drop_missing(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not _MISSING}


junk = st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64 - 1), st.floats(),
                 st.text(max_size=5), st.binary(max_size=5), st.just([]), st.just({}))
times = st.one_of(
    st.integers(NOW - 3 * DAY, NOW + 3 * DAY),
    st.sampled_from([NOW, NOW - SKEW, NOW - SKEW - 1, NOW + SKEW, NOW + SKEW + 1, 0, (1 << 40) - 1, 1 << 40]),
    st.integers(-10, 2**41),
    junk,
)
issuers_st = st.one_of(st.sampled_from(["VN-HUE", "VN-DNG", "VN-HUE ", ""]), st.text(max_size=70), junk)
names = st.one_of(st.text(min_size=1, max_size=20), st.text(max_size=90), st.just("ễ" * 80), st.just("N" * 81),
                  junk)
short = st.one_of(st.text(max_size=34), junk)
ascii_text = st.text(alphabet=st.characters(max_codepoint=127), max_size=12)
full_dates = st.dates().map(lambda d: d.isoformat())
dates = st.one_of(
    full_dates, full_dates.map(lambda s: s[:7]), full_dates.map(lambda s: s[:4]),
    st.from_regex(r"[0-9]{4}(-[0-9]{2}(-[0-9]{2})?)?", fullmatch=True),
    st.sampled_from(["2021-02-30", "2020-02-29", "0000", "0000-01", "1985-00", "1985-03-02\n"]),
    ascii_text, st.integers(-(2**64), 2**64 - 1), st.none(),
)
card_ids = st.one_of(st.binary(min_size=16, max_size=16), st.just(REVOKED_ID), st.binary(max_size=20), junk)
ISSUER_OF = {"ed": "VN-HUE", "es": "VN-DNG"}


@st.composite
def signed_claims(draw):
    """(key, claims): mostly valid claims for that key's issuer, each field broken now and then,
    with times around NOW so that the expired / not_yet_valid edges come up too."""
    key = draw(st.sampled_from(["ed", "es"]))

    def field(good, bad, p_bad: int = 8):
        """A value from ``good``, or in p_bad % of cases one from ``bad`` (or the field left out)."""
        if draw(st.integers(0, 99)) < p_bad:
            return draw(st.one_of(bad, st.just(_MISSING)))
        return draw(good)

    if draw(st.integers(0, 9)) < 2:
        iat = draw(st.sampled_from([NOW, NOW + SKEW, NOW + SKEW + 1, NOW + DAY]))
    else:
        iat = draw(st.integers(NOW - 3 * DAY, NOW + 1000))
    exp = iat + draw(st.one_of(st.integers(0, 4 * DAY), st.sampled_from([0, SKEW, SKEW + 1])))
    if draw(st.integers(0, 9)) < 2:
        exp = draw(st.sampled_from([NOW - SKEW, NOW - SKEW - 1, NOW - SKEW + 1]))
        iat = min(iat, exp - draw(st.integers(0, DAY)))
    other = "es" if key == "ed" else "ed"
    claims = {
        1: field(st.sampled_from([ISSUER_OF[key]] * 5 + [ISSUER_OF[other]]),
                 st.one_of(issuers_st, st.text(min_size=65, max_size=70))),
        4: field(st.just(exp), times),
        6: field(st.just(iat), times),
        7: field(st.binary(min_size=16, max_size=16), card_ids, p_bad=5),
    }
    if draw(st.integers(0, 9)) == 0:
        claims[7] = REVOKED_ID
    if draw(st.booleans()):
        claims[5] = field(st.one_of(st.integers(iat - 2000, iat + 2000),
                                    st.sampled_from([NOW + SKEW, NOW + SKEW + 1])), times)
    card = {
        "v": field(st.just(1), st.sampled_from([0, 2, True, 1.0, "1", None]), p_bad=5),
        "n": field(st.text(min_size=1, max_size=80), names),
        "d": field(st.one_of(full_dates, full_dates.map(lambda s: s[:7]), full_dates.map(lambda s: s[:4])),
                   dates),
    }
    for name in ("id", "st"):
        if draw(st.booleans()):
            card[name] = field(st.text(min_size=1, max_size=32), short)
    if draw(st.booleans()):
        card["vd"] = field(full_dates, dates)
    claims[-65537] = field(st.just(_drop_missing(card)), junk, p_bad=3)
    if draw(st.integers(0, 9)) == 0:
        claims[draw(st.integers(-100, 100))] = draw(junk)
    return key, _drop_missing(claims)


cbor_keys = st.one_of(st.sampled_from([1, 4, 5, 6, 7, -65537, "v", "n", "d", "id", "st", "vd"]),
                      st.integers(-(2**64), 2**64 - 1), st.text(max_size=4), st.binary(max_size=4))
cbor_values = st.recursive(
    st.one_of(st.integers(-(2**64), 2**64 - 1), st.text(max_size=10), st.binary(max_size=17),
              st.none(), st.booleans(), st.floats(), st.just(cbor.UNDEFINED)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(cbor_keys, children, max_size=6),
                               st.builds(Tag, st.integers(0, 2**64 - 1), children)),
    max_leaves=30,
)


def _depth(v) -> int:
    if isinstance(v, Tag):
        return 1 + _depth(v.value)
    if isinstance(v, list):
        return 1 + max((_depth(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((_depth(x) for x in v.values()), default=0)
    return 0


# --------------------------------------------------------------------------- fuzz: text

base45_chars = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"


@FUZZ
@given(st.one_of(
    st.text(),
    st.text(max_size=5000),
    st.text(alphabet=base45_chars, max_size=200).map(lambda t: "CK1:" + t),
    st.text(max_size=100).map(lambda t: "CK1:" + t),
    st.binary(max_size=100).map(lambda b: b.decode("latin-1")),
))
@example("CK1:")
@example("CK1:" + "0" * 4292)
@example("CK1:" + "0" * 4293)
def test_arbitrary_text(fuzz_trust, text):
    v = check(text, fuzz_trust)
    assert v.reason in {Reason.MALFORMED, Reason.UNSUPPORTED_FORMAT}
    if formats.for_text(text) is None and len(text) <= MAX_TEXT:  # no CK1:, HC1: or shc: prefix
        assert v.reason is Reason.UNSUPPORTED_FORMAT
    if len(text) > MAX_TEXT:
        assert v.reason is Reason.MALFORMED


@FUZZ
@given(st.binary(max_size=400), st.booleans())
@example(b"", False)
@example(b"\xd2\x84\x40\xa0\x40\x40", False)
@example(b"\x84\x40\xa0\x40\x40", True)
def test_arbitrary_bytes_in_the_envelope(fuzz_trust, raw, compress):
    """Random bytes (or a zlib stream of them) are not a COSE_Sign1 with a trusted signature."""
    if compress:
        raw = zlib.compress(raw)
    v = check("CK1:" + base45.encode(raw), fuzz_trust)
    assert v.reason is Reason.MALFORMED


# --------------------------------------------------------------------------- fuzz: signed payloads

@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["ed", "es"]))
@example(b"", "ed")
@example(b"\xa0", "es")
def test_arbitrary_bytes_as_signed_payload(fuzz_trust, sign_payload, issuers, payload, key):
    v = check(sign_payload(payload, key), fuzz_trust)
    try:
        claims = cbor.loads(payload)
    except CborError:
        assert v.reason is Reason.MALFORMED
        return
    assert v.reason is expected_reason(claims, issuers[key].name)


@FUZZ
@given(signed_claims())
def test_signed_claims_follow_the_rules(fuzz_trust, sign_payload, issuers, key_and_claims):
    key, claims = key_and_claims
    v = check(sign_payload(claims, key), fuzz_trust)
    want = expected_reason(claims, issuers[key].name)
    assert v.reason is want, (claims, v)
    if want in {Reason.OK, Reason.EXPIRED, Reason.NOT_YET_VALID, Reason.REVOKED}:
        card = v.card
        assert card.issuer == claims[1] and card.card_id == claims[7]
        assert (card.expires_at, card.issued_at, card.not_before) == (claims[4], claims[6], claims.get(5))
        assert card.holder.name == claims[-65537]["n"]
        assert card.holder.birth_date == claims[-65537]["d"]
        assert card.kid == issuers[key].kid
    else:
        assert v.card is None


@FUZZ
@given(cbor_values, st.sampled_from(["ed", "es"]))
@example({1: "VN-HUE"}, "ed")
@example([], "es")
def test_signed_cbor_structures_never_break_the_verifier(fuzz_trust, sign_payload, issuers, value, key):
    v = check(sign_payload(value, key), fuzz_trust)
    assert v.reason in {Reason.OK, Reason.MALFORMED, Reason.EXPIRED, Reason.NOT_YET_VALID,
                        Reason.REVOKED, Reason.BAD_SIGNATURE}
    if _depth(value) > cbor.MAX_DEPTH:
        assert v.reason is Reason.MALFORMED
    else:
        assert v.reason is expected_reason(value, issuers[key].name)


@FUZZ
@given(st.data(), st.sampled_from(["ed", "es"]), st.booleans())
def test_mutated_card_is_never_accepted_unless_the_signed_content_is_intact(
        fuzz_trust, make_card, data, key, compress):
    original_text = make_card(key)
    original = base45.decode(original_text[4:])
    raw = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        pos = data.draw(st.integers(0, len(raw) - 1), label="pos")
        op = data.draw(st.sampled_from(["flip", "set", "delete", "insert"]), label="op")
        if op == "flip":
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set":
            raw[pos] = data.draw(st.integers(0, 255))
        elif op == "delete":
            del raw[pos]
        else:
            raw.insert(pos, data.draw(st.integers(0, 255)))
    raw = bytes(raw)
    v = check("CK1:" + base45.encode(zlib.compress(raw) if compress else raw), fuzz_trust)
    if v.reason is Reason.OK:
        a, b = cose.parse_sign1(original), cose.parse_sign1(raw)
        assert (a.protected, a.payload, a.signature) == (b.protected, b.payload, b.signature)
        assert v.card.kid == b.kid


# --------------------------------------------------------------------------- bounded work on big hostile input

def _to_qr(raw: bytes) -> str:
    text = "CK1:" + base45.encode(raw)
    assert len(text) <= MAX_TEXT, len(text)
    return text


def _adversarial_inputs(sign_payload) -> list[tuple[str, str]]:
    n = 2861  # bytes that fill a 4296-character QR text
    return [
        ("nested-indefinite-arrays", _to_qr(b"\x9f" * n)),
        ("nested-definite-arrays", _to_qr(b"\x81" * n)),
        ("nested-tags", _to_qr(b"\xd2" * n)),
        ("nested-maps", _to_qr(b"\xa1\x00" * (n // 2))),
        ("empty-chunks", _to_qr(b"\x5f" + b"\x40" * (n - 2) + b"\xff")),
        ("huge-array-length", _to_qr(b"\x9b" + b"\xff" * 8 + b"\x00" * (n - 9))),
        ("huge-map-length", _to_qr(b"\xbb" + b"\xff" * 8 + b"\x00" * (n - 9))),
        ("huge-bstr-length", _to_qr(b"\x5b" + b"\xff" * 8 + b"\x00" * (n - 9))),
        ("many-small-items", _to_qr(b"\x99\x0b\x2c" + b"\x00" * (n - 3))),
        ("zlib-bomb", _to_qr(zlib.compress(b"\x00" * 2_500_000, 9))),
        ("zlib-nested-arrays", _to_qr(zlib.compress(b"\x81" * (16 * 1024), 9))),
        ("zlib-indefinite-map", _to_qr(zlib.compress(b"\xbf" + b"\x00\x00" * 8000 + b"\xff", 9))),
        ("zlib-many-chunks", _to_qr(zlib.compress(b"\x5f" + b"\x40" * 16000 + b"\xff", 9))),
        ("zeros", "CK1:" + "0" * (MAX_TEXT - 4)),
        ("bad-groups", "CK1:" + ":" * (MAX_TEXT - 4)),
        ("signed-deep-payload", sign_payload(b"\x81" * 2700 + b"\x00")),
        ("signed-zlib-deep-payload", sign_payload(b"\x9f" * 16000, compress=True)),
    ]


def test_adversarial_4296_character_inputs_return(fuzz_trust, sign_payload):
    for name, text in _adversarial_inputs(sign_payload):
        assert len(text) <= MAX_TEXT, name
        v = check(text, fuzz_trust)
        assert v.reason is Reason.MALFORMED, (name, v)
