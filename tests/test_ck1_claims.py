"""CK1's claims check (scanner/cards/formats/ck1.py parse_claims) against the plain reading of
docs/card-format.md it replaced: the same card, or the same refusal in the same words, for any claims."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from support.mutations import mutated

from scanner.base.errors import CardRejected, Reason
from scanner.cards import cbor
from scanner.cards.formats import ck1
from scanner.cards.formats.cose_card import cwt_claims
from scanner.cards.verdict import Card, Decision, Holder, Verdict, accept, new_card, new_holder, reject

KID = b"k" * 8


def reference_parse_claims(payload: bytes, kid: bytes) -> Card:
    """Each claim checked by its function, one after the other (the reading parse_claims inlines)."""
    claims = cwt_claims(payload)
    issuer = ck1._text(claims.get(ck1.CLAIM_ISS), "iss (issuer)", ck1.MAX_ISSUER)
    exp = ck1._time(claims, ck1.CLAIM_EXP, "exp")
    nbf = ck1._time(claims, ck1.CLAIM_NBF, "nbf") if ck1.CLAIM_NBF in claims else None
    iat = ck1._time(claims, ck1.CLAIM_IAT, "iat")
    if exp < iat:
        raise ck1._malformed("exp is before iat")
    cti = claims.get(ck1.CLAIM_CTI)
    if type(cti) is not bytes or len(cti) != 16:
        raise ck1._malformed("cti (card id) must be 16 bytes")
    card = claims.get(ck1.CLAIM_CARD)
    if type(card) is not dict:
        raise ck1._malformed("card claim (-65537) missing or not a map")
    version = card.get("v")
    if version != ck1.CARD_SCHEMA or type(version) is not int:
        raise ck1._malformed(f"card schema version must be {ck1.CARD_SCHEMA}")
    name = ck1._text(card.get("n"), "holder name", ck1.MAX_NAME)
    birth = ck1.check_date(card.get("d"), "birth date", partial=True)
    id_masked = ck1._text(card["id"], "masked id", ck1.MAX_SHORT) if "id" in card else None
    status = ck1._text(card["st"], "status", ck1.MAX_SHORT) if "st" in card else None
    last_dose = ck1.check_date(card["vd"], "last dose date", partial=False) if "vd" in card else None
    holder = Holder(name, birth, id_masked, status, last_dose)
    return Card(ck1.NAME, cti, issuer, KID, iat, exp, nbf, holder)


def outcome(parse, payload: bytes):
    try:
        return parse(payload, KID)
    except CardRejected as exc:
        return exc.reason, exc.detail


VALID = {1: "Sở Y tế Huế", 4: 1_900_000_000, 5: 1_700_000_000, 6: 1_700_000_000, 7: b"\x07" * 16,
         -65537: {"v": 1, "n": "Nguyễn Văn An", "d": "1985-03-02", "id": "079***1234", "st": "đủ",
                  "vd": "2021-11-20"}}
LENGTHS = ["ễ" * n for n in (0, 1, 16, 32, 33, 64, 65, 80, 81)] + [b"\x07" * n for n in (0, 15, 16, 17)]
TIMES = [-1, 0, 1, 2, 1_699_999_999, 1_700_000_000, 1_900_000_000, (1 << 40) - 1, 1 << 40, 2**64 - 1, -(2**64),
         True, False, 1.0]
DATES = ["1985-03-02", "1985-03", "1985", "0000", "0000-01-01", "2021-02-29", "2020-02-29", "2021-13",
         "2021-00", "2021-01-00", "85-03-02", "1985/03/02", "19850302", "1985-W10-1", "1985-03-02\n",
         "\u0661\u0669\u0669\u0660", "", "1985-03-02T00:00"]
values = st.one_of(
    st.none(), st.booleans(), st.sampled_from(DATES),
    st.sampled_from(LENGTHS), st.sampled_from(TIMES),
    st.integers(-(2**64), 2**64 - 1), st.floats(allow_nan=False),
    st.text(max_size=90), st.text("ễVa", min_size=60, max_size=90),
    st.binary(max_size=20), st.binary(min_size=16, max_size=16),
    st.lists(st.integers(-5, 5), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(-5, 5), max_size=2),
)
DROP = object()
FIELDS = [(None, k) for k in (1, 4, 5, 6, 7, -65537)] + [(-65537, k) for k in ("v", "n", "d", "id", "st", "vd")]


@settings(max_examples=800, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), st.one_of(st.just(DROP), st.none(), values), max_size=3),
       st.dictionaries(st.one_of(st.integers(-10, 10), st.text(max_size=3)), values, max_size=3))
@example({(None, 5): None}, {}).via("an optional claim present as null")
@example({(-65537, "id"): None}, {}).via("an optional claim present as null")
@example({(-65537, "st"): None}, {}).via("an optional claim present as null")
@example({(-65537, "vd"): None}, {}).via("an optional claim present as null")
@example({(None, 5): DROP, (-65537, "id"): DROP, (-65537, "st"): DROP, (-65537, "vd"): DROP}, {}).via("minimal")
def test_parse_claims_reads_any_claims_as_the_reference_does(edits, extra):
    claims = {**extra, **VALID, -65537: dict(VALID[-65537])}
    for (inside, key), value in edits.items():
        where = claims if inside is None else claims.get(inside)
        if type(where) is not dict:  # the card claim was replaced by another edit
            continue
        if value is DROP:
            where.pop(key, None)
        else:
            where[key] = value
    payload = cbor.dumps(claims)
    got = outcome(ck1.parse_claims, payload)
    event("accepted" if type(got) is Card else f"refused: {got[1][:14]}")
    assert got == outcome(reference_parse_claims, payload)


def test_every_claim_at_every_edge():
    """Each claim, alone, absent, null or at each edge of its type, length and range."""
    edges = [DROP, None, "", "1", 1, 2, [], {}, *LENGTHS, *TIMES, *DATES]
    for inside, key in FIELDS:
        for value in edges:
            claims = {**VALID, -65537: dict(VALID[-65537])}
            where = claims if inside is None else claims[inside]
            if value is DROP:
                del where[key]
            else:
                where[key] = value
            payload = cbor.dumps(claims)
            assert outcome(ck1.parse_claims, payload) == outcome(reference_parse_claims, payload), (key, value)


def test_a_valid_card_is_read_whole():
    card = ck1.parse_claims(cbor.dumps(VALID), KID)
    assert card == reference_parse_claims(cbor.dumps(VALID), KID)
    assert card.holder == Holder("Nguyễn Văn An", "1985-03-02", "079***1234", "đủ", "2021-11-20")
    assert card.not_before == 1_700_000_000 and card.card_id == b"\x07" * 16


anything = st.one_of(st.none(), st.integers(), st.text(max_size=5), st.binary(max_size=5))


@given(st.tuples(*[anything] * 5), st.tuples(*[anything] * 9))
def test_the_fast_constructors_make_what_the_dataclasses_make(holder_values, card_values):
    holder = new_holder(*holder_values)
    assert holder == Holder(*holder_values) and type(holder) is Holder
    card = new_card(*card_values[:7], holder, card_values[8])
    assert card == Card(*card_values[:7], holder, card_values[8]) and type(card) is Card
    assert new_card(*card_values[:7], holder) == Card(*card_values[:7], holder)
    assert accept("CK1", card) == Verdict(Decision.ACCEPT, Reason.OK, "CK1", "", card.kid, card)
    assert reject(Reason.EXPIRED, "x", "CK1", b"k", card) == Verdict(Decision.REJECT, Reason.EXPIRED,
                                                                          "CK1", "x", b"k", card)
    with pytest.raises(dataclasses.FrozenInstanceError):
        card.issuer = "other"  # type: ignore[misc]


def _issued(**fields) -> dict:
    card = {k: v for k, v in {"v": 1, "n": "Nguyễn Văn An", "d": "1985-03-02", **fields}.items() if v is not None}
    claims = {1: "VN-HUE", 4: 1_900_000_000, 6: 1_700_000_000, 7: b"\x07" * 16, -65537: card}
    if "nbf" in card:
        claims[5] = card.pop("nbf")
    return claims


ISSUED = [_issued(), _issued(nbf=1_700_000_000), _issued(id="0" * 32, st="s", vd="2021-11-20"),
          _issued(st="đủ"), _issued(id="x", vd="2020-02-29", nbf=1_600_000_000),
          _issued(n="ễ" * 80, st="ễ" * 32, id="ễ" * 32), _issued(n="ễ" * 80), _issued(n="N"),
          _issued(d="1985"), _issued(d="1985-03")]


@pytest.mark.parametrize("claims", ISSUED)
def test_claims_as_the_issuer_writes_them_are_read_straight(claims):
    payload = cbor.dumps(claims)
    assert ck1.canonical_claims(payload, KID) is not None
    assert ck1.canonical_claims(payload, KID) == ck1.read_claims(payload, KID) == reference_parse_claims(payload, KID)


BYTES = [0x00, 0x01, 0x04, 0x05, 0x06, 0x07, 0x1a, 0x1b, 0x3a, 0x50, 0x60, 0x61, 0x62, 0x77, 0x78, 0x79, 0x7f,
         0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xbf, 0xc0, 0xf6, 0xff]


def test_the_straight_read_agrees_with_the_decoder_on_every_single_byte_change():
    """Every byte of issued claims set to each of the bytes that steer CBOR, deleted, or one inserted
    before it: a wrong count in a map head, a time or a length changed, a key moved."""
    for claims in ISSUED[:4]:
        payload = cbor.dumps(claims)
        changed = [payload[:i] + payload[i + 1:] for i in range(len(payload))]
        changed += [payload[:i] + bytes((b,)) + payload[i + j:] for i in range(len(payload) + 1)
                    for b in BYTES for j in (0, 1)]
        for raw in changed:
            straight = ck1.canonical_claims(raw, KID)
            assert straight is None or straight == outcome(ck1.read_claims, raw), raw.hex()




@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(ISSUED), st.data())
def test_the_straight_read_agrees_with_the_decoder_on_any_bytes(claims, data):
    """Issued claims with bytes changed, inserted, cut: the straight read gives what the decoding
    reader gives, or leaves the bytes to it (None); parse_claims reads them as the plain reading."""
    payload = mutated(cbor.dumps(claims), data.draw, BYTES)
    straight = ck1.canonical_claims(payload, KID)
    read = outcome(ck1.read_claims, payload)
    event("read straight" if straight is not None else "left to the decoder")
    assert straight is None or straight == read
    assert outcome(ck1.parse_claims, payload) == read == outcome(reference_parse_claims, payload)
