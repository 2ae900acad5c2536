"""SHC, SMART Health Cards (spec: docs/health-certificates.md#shc).

QR text "shc:/" + two digits per character (code − 45) of a JWS compact whose payload is raw
DEFLATE-compressed JSON (JWT claims with a FHIR bundle in ``vc``), signed ES256 by a key of the
issuer's JWKS, found by kid = its JWK thumbprint. Larger cards came in chunks "shc:/i/n/…" (a
deprecated form still in circulation): ``ChunkAssembler`` collects them for the scan pipeline and
``verify_parts`` verifies a complete set. Revocation is by card id and by the card's ``rid``.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scanner.base import i18n
from scanner.base.errors import CardRejected, Reason
from scanner.base.lazy import lazy_module
from scanner.cards import cose
from scanner.cards.formats.ck1 import check_date
from scanner.cards.jwks import b64url_decode, b64url_encode
from scanner.cards.trust import TrustStore
from scanner.cards.verdict import Card, Holder, Verdict, accept, reject

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy_module("numpy")  # loaded at its first use: ~13 MB a process without a camera may never need

NAME = "SHC"
PREFIX = "shc:"
SCHEME = "shc:/"
WHITESPACE = " \t\r\n"  # scanners and files add these around the text; digits never need them
MAX_TEXT = 4296  # one QR text, as the verifier bounds it (a spec-conformant chunk is ~2400)
MAX_PARTS = 10
MAX_JWS = MAX_PARTS * (MAX_TEXT // 2)
MAX_HEADER = 512  # characters of the (unauthenticated) JWS header
MAX_INFLATED = 64 * 1024
MAX_ISSUER = 255
MAX_NAME = 160
CARD_TYPE = "https://smarthealth.cards#health-card"
TYPES_BY_RESOURCE = {"Immunization": "vaccination", "Observation": "test"}
TYPES_BY_VC_TYPE = {"https://smarthealth.cards#immunization": "vaccination",
                    "https://smarthealth.cards#laboratory": "test"}

_CHUNK = re.compile(r"shc:/([1-9][0-9]{0,2})/([1-9][0-9]{0,2})/([0-9]*)\Z")
_SINGLE = re.compile(r"shc:/([0-9]*)\Z")
_JWS_CHARS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\Z")
_RID = re.compile(r"[A-Za-z0-9_-]{1,24}\Z")

log = logging.getLogger(__name__)


def _malformed(detail: str, kid: bytes | None = None) -> CardRejected:
    return CardRejected(Reason.MALFORMED, detail, kid)


# ------------------------------------------------------------------------------ QR text → JWS

def numeric_to_jws(digits: str) -> str:
    """Pairs of digits → characters (pair + 45); raise CardRejected(malformed)."""
    if len(digits) % 2:
        raise _malformed("odd number of digits")
    if not digits:
        raise _malformed("no digits after shc:/")
    if len(digits) > 2 * MAX_JWS:
        raise _malformed(f"JWS longer than {MAX_JWS} characters")
    raw = np.frombuffer(digits.encode("ascii"), dtype=np.uint8).reshape(-1, 2) - 48
    if raw.max() > 9:  # below '0' wraps around to a large uint8 too
        raise _malformed("not a digit")
    pairs = raw[:, 0] * 10 + raw[:, 1]
    if pairs.max() > 77:  # 77 + 45 = 'z', the highest JWS character
        raise _malformed("a digit pair above 77")
    return (pairs + 45).astype(np.uint8).tobytes().decode("ascii")


def jws_to_numeric(jws: str) -> str:
    """The numeric QR encoding of a JWS (issuer side)."""
    return "".join(f"{ord(c) - 45:02d}" for c in jws)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One part of a multi-part card: "shc:/index/total/digits"."""

    index: int
    total: int
    digits: str


def parse_chunk(text: str) -> Chunk | None:
    """The chunk a text is, or None if it is not a well-formed part of a multi-part card."""
    if type(text) is not str or len(text) > MAX_TEXT:
        return None
    m = _CHUNK.match(text.strip(WHITESPACE))
    if m is None:
        return None
    index, total = int(m.group(1)), int(m.group(2))
    if total < 2 or total > MAX_PARTS or index > total:
        return None
    return Chunk(index, total, m.group(3))


def text_to_jws(text: str) -> str:
    """A one-QR card's text → its JWS; raise CardRejected (a lone part says which one it is)."""
    text = text.strip(WHITESPACE)
    if not text.startswith(SCHEME):
        raise _malformed("an SHC text starts with 'shc:/'")
    m = _SINGLE.match(text)
    if m is not None:
        return numeric_to_jws(m.group(1))
    m = _CHUNK.match(text)
    if m is None:
        raise _malformed("after 'shc:/' only digits, or 'i/n/' and digits, may follow")
    index, total = int(m.group(1)), int(m.group(2))
    if index == total == 1:  # a needless "1/1/" header: the content is a whole card
        return numeric_to_jws(m.group(3))
    if total > MAX_PARTS or index > total:
        raise _malformed(f"bad chunk header {index}/{total}")
    raise _malformed(f"part {index} of {total} of a multi-part card: scan the other parts")


def parts_to_jws(parts: Sequence[str]) -> str:
    """The JWS of a complete set of chunks in any order (duplicates allowed if identical)."""
    if len(parts) > 2 * MAX_PARTS:
        raise _malformed("too many parts")
    chunks: dict[int, str] = {}
    total = None
    for text in parts:
        chunk = parse_chunk(text) if type(text) is str else None
        if chunk is None:
            raise _malformed("not a part of a multi-part SHC card (shc:/i/n/...)")
        if total is not None and chunk.total != total:
            raise _malformed("parts of cards with different part counts")
        total = chunk.total
        if chunks.get(chunk.index, chunk.digits) != chunk.digits:
            raise _malformed(f"two different parts {chunk.index} of {total}")
        chunks[chunk.index] = chunk.digits
    if total is None:
        raise _malformed("no parts")
    missing = [i for i in range(1, total + 1) if i not in chunks]
    if missing:
        raise _malformed(f"part(s) {', '.join(map(str, missing))} of {total} missing")
    return numeric_to_jws("".join(chunks[i] for i in range(1, total + 1)))


# ------------------------------------------------------------------------------ JWS → verdict

def _inflate_raw(data: bytes) -> bytes:
    """Inflate one complete raw DEFLATE stream (RFC 1951) of at most MAX_INFLATED bytes."""
    d = zlib.decompressobj(wbits=-15)
    try:
        out = d.decompress(data, MAX_INFLATED + 1)
    except zlib.error as exc:
        raise _malformed(f"payload is not raw DEFLATE ({exc})") from None
    if len(out) > MAX_INFLATED:
        raise _malformed(f"inflated payload over {MAX_INFLATED // 1024} KiB")
    if not d.eof:
        raise _malformed("DEFLATE stream is truncated")
    if d.unused_data:
        raise _malformed("bytes after the DEFLATE stream")
    return out


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _json(raw: bytes | str, what: str) -> Any:
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _malformed(f"{what} is not JSON") from None


def _required_time(claims: Mapping, name: str) -> int:
    value = _time(claims, name, required=True)
    if value is None:  # a required time is never None: _time raised
        raise _malformed(f"{name} must be a time in seconds")
    return value


def _time(claims: Mapping, name: str, required: bool) -> int | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if type(value) is float and math.isfinite(value):
        value = math.floor(value)  # nbf is often written with a fraction of a second
    if type(value) is not int or not 0 <= value < 1 << 40:
        raise _malformed(f"{name} must be a time in seconds")
    return value


def _text(value: object, limit: int) -> str:
    return value.strip()[:limit] if type(value) is str else ""


def _holder(entries: list) -> tuple[Holder, str | None]:
    """The Patient's name and birth date, and the kind of card the bundle's resources make it."""
    patient = None
    kinds = set()
    last_dose = None
    for entry in entries:
        res = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(res, dict):
            continue
        rtype = res.get("resourceType")
        if rtype == "Patient" and patient is None:
            patient = res
        elif rtype in TYPES_BY_RESOURCE:
            kinds.add(TYPES_BY_RESOURCE[rtype])
            if rtype == "Immunization" and type(res.get("occurrenceDateTime")) is str:
                try:
                    day = check_date(res["occurrenceDateTime"][:10], "date", partial=False)
                except CardRejected:
                    day = None
                if day is not None and (last_dose is None or day > last_dose):
                    last_dose = day
    name = ""  # a bundle without a Patient (a lab report) shows no holder: staff check an ID card
    names = patient.get("name") if patient is not None else None
    if isinstance(names, list) and names and isinstance(names[0], dict):
        human = names[0]
        given = human.get("given")
        given = [g for g in given if type(g) is str] if isinstance(given, list) else []
        name = " ".join(p for p in (*given, _text(human.get("family"), MAX_NAME)) if p)
        if not name:
            name = _text(human.get("text"), MAX_NAME)
    if len(name) > MAX_NAME:
        name = name[:MAX_NAME - 1] + "…"
    birth = _text(patient.get("birthDate"), 10) if patient is not None else ""
    kind = next(iter(kinds)) if len(kinds) == 1 else None
    status = "vaccinated" if kind == "vaccination" else None
    return Holder(name, birth, None, status, last_dose if kind == "vaccination" else None), kind


def parse_claims(payload: bytes, kid: bytes, card_id: bytes) -> tuple[Card, str | None]:
    """(card, rid) from the authenticated JWT claims."""
    claims = _json(payload, "payload")
    if type(claims) is not dict:
        raise _malformed("payload is not a JSON object")
    issuer = claims.get("iss")
    if type(issuer) is not str or not 0 < len(issuer) <= MAX_ISSUER:
        raise _malformed(f"iss must be text of 1..{MAX_ISSUER} characters")
    nbf = _required_time(claims, "nbf")
    exp = _time(claims, "exp", required=False)
    vc = claims.get("vc")
    if type(vc) is not dict:
        raise _malformed("vc claim missing or not an object")
    types = vc.get("type")
    if type(types) is not list or CARD_TYPE not in types:
        raise _malformed(f"vc.type must list {CARD_TYPE}")
    subject = vc.get("credentialSubject")
    bundle = subject.get("fhirBundle") if type(subject) is dict else None
    entries = bundle.get("entry") if type(bundle) is dict else None
    if type(entries) is not list:
        raise _malformed("vc.credentialSubject.fhirBundle.entry missing or not a list")
    rid = vc.get("rid")
    if rid is not None and (type(rid) is not str or not _RID.match(rid)):
        raise _malformed("vc.rid must be 1..24 base64url characters")
    holder, kind = _holder(entries)
    if kind is None:
        kind = next((TYPES_BY_VC_TYPE[t] for t in types if t in TYPES_BY_VC_TYPE), None)
    return Card(NAME, card_id, issuer, kid, nbf, exp, None, holder, kind), rid


def verify_jws(jws: str, trust: TrustStore, now: int, clock_skew: int) -> Verdict:
    """Verify a JWS compact SHC; raise CardRejected or return a Verdict."""
    if len(jws) > MAX_JWS:
        raise _malformed(f"JWS longer than {MAX_JWS} characters")
    if not _JWS_CHARS.match(jws):
        raise _malformed("not a JWS compact (header.payload.signature in base64url)")
    head, body, sig = jws.split(".")
    if len(head) > MAX_HEADER:
        raise _malformed("JWS header too long")
    try:
        header = _json(b64url_decode(head), "JWS header")
        signature = b64url_decode(sig)
        compressed = b64url_decode(body)
    except ValueError as exc:
        raise _malformed(f"JWS: {exc}") from None
    if type(header) is not dict:
        raise _malformed("JWS header is not a JSON object")
    if header.get("alg") != "ES256":
        raise _malformed(f"alg {str(header.get('alg'))[:20]!r} is not ES256")
    if header.get("zip") != "DEF":
        raise _malformed("the payload must be DEFLATE-compressed (zip: DEF)")
    kid_text = header.get("kid")
    if type(kid_text) is not str:
        raise _malformed("no kid in the JWS header")
    try:
        kid = b64url_decode(kid_text)
    except ValueError:
        kid = None
    if kid is None or len(kid) != 32:
        raise CardRejected(Reason.UNKNOWN_KEY, "the kid is not a JWK thumbprint")
    if kid in trust.revoked_kids:
        raise CardRejected(Reason.REVOKED, "the issuer key is revoked", kid)
    candidates = trust.lookup(kid)
    if not candidates:
        raise CardRejected(Reason.UNKNOWN_KEY, "no trusted key with this kid", kid)
    usable = [k for k in candidates if k.alg == "ES256" and (k.formats is None or NAME in k.formats)]
    if not usable:
        raise CardRejected(Reason.BAD_SIGNATURE, "the key is not an ES256 key trusted for SHC", kid)
    signing_input = f"{head}.{body}".encode("ascii")
    signers = [k for k in usable
               if cose.verify_signature(k.public_key, cose.ALG_ES256, signing_input, signature)]
    if not signers:
        why = ("signature does not verify" if len(signature) == 64 else
               f"signature of {len(signature)} bytes (ES256 in a JWS is 64 bytes r||s)")
        raise CardRejected(Reason.BAD_SIGNATURE, why, kid)
    try:
        card, rid = parse_claims(_inflate_raw(compressed), kid,
                                 hashlib.sha256(signing_input).digest()[:16])
    except CardRejected as exc:
        exc.kid = kid
        raise
    key = next((k for k in signers if k.issuer is None or k.issuer == card.issuer), None)
    if key is None:
        raise CardRejected(Reason.BAD_SIGNATURE, f"iss {card.issuer!r} is not the key's issuer "
                           f"{signers[0].issuer!r}", kid)
    if key.not_after is not None and card.issued_at > key.not_after:
        raise CardRejected(Reason.BAD_SIGNATURE, "card issued after its key's not_after", kid)
    return check_shc(card, rid, trust, now, clock_skew)


def check_shc(card: Card, rid: str | None, trust: TrustStore, now: int, clock_skew: int) -> Verdict:
    """Revocation (card id; rid, outright or for cards issued before a time) and the validity
    period: ``exp`` is optional (SHCs usually never expire), ``nbf`` is the issue time."""
    if card.card_id in trust.revoked_cards:
        return reject(Reason.REVOKED, "the card is revoked", NAME, card.kid, card)
    if rid is not None:
        table = trust.revoked_rids.get(card.kid)
        if table is not None and rid in table:
            until = table[rid]
            if until is None or card.issued_at < until:
                return reject(Reason.REVOKED, "the card's rid is on the issuer's revocation list",
                              NAME, card.kid, card)
    if card.expires_at is not None and now > card.expires_at + clock_skew:
        return reject(Reason.EXPIRED, "the card has expired", NAME, card.kid, card)
    if now + clock_skew < card.issued_at:
        return reject(Reason.NOT_YET_VALID, "the card is not valid yet (nbf)", NAME, card.kid, card)
    return accept(NAME, card)


class SHCFormat:
    """The SMART Health Cards format (registered by prefix "shc:"; surrounding whitespace is ignored)."""

    name = NAME
    prefix = PREFIX
    scheme = SCHEME
    base45_body = False
    trims_whitespace = True

    def verify(self, text: str, trust: TrustStore, now: int, clock_skew: int) -> Verdict:
        return verify_jws(text_to_jws(text), trust, now, clock_skew)


FORMAT = SHCFormat()


def verify_parts(parts: Sequence[str], trust: TrustStore, now: float, *, clock_skew: int = 300) -> Verdict:
    """Verify the chunks of a multi-part card (any order); a single text is verified as one card.

    Like scanner.cards.verifier.verify it never raises for bad input: every failure is a reject.
    """
    if not math.isfinite(now):
        raise ValueError("now must be a finite epoch time")
    if type(parts) not in (list, tuple) or not parts:
        return reject(Reason.MALFORMED, "no text")
    if any(type(p) is not str for p in parts):
        return reject(Reason.MALFORMED, "input is not text")
    if any(len(p) > MAX_TEXT for p in parts):
        return reject(Reason.MALFORMED, f"text longer than a QR code can hold ({MAX_TEXT})")
    try:
        jws = text_to_jws(parts[0]) if len(parts) == 1 and parse_chunk(parts[0]) is None else parts_to_jws(parts)
        return verify_jws(jws, trust, int(now), clock_skew)
    except CardRejected as exc:
        return reject(exc.reason, exc.detail, NAME, exc.kid)
    except Exception:  # as in verifier.verify: a bug rejects the card and leaves a trace
        log.exception("internal error verifying a multi-part SHC card")
        return reject(Reason.MALFORMED, "internal error while verifying", NAME)


# ------------------------------------------------------------------------------ chunk assembly

@dataclass(frozen=True, slots=True)
class ChunkProgress:
    """Where the assembly of a multi-part card stands after a part was read."""

    index: int  # the part just read (1-based)
    total: int
    received: tuple[int, ...]  # the parts held, sorted
    parts: tuple[str, ...] | None = None  # every part's text, in order, once all are in

    @property
    def complete(self) -> bool:
        return self.parts is not None

    @property
    def missing(self) -> tuple[int, ...]:
        return tuple(i for i in range(1, self.total + 1) if i not in self.received)

    def message(self, lang: str | None = None) -> str:
        """"Part i of n read: now scan part …" for the screen (scanner/base/translations.toml)."""
        return i18n.t("health.part", lang, index=self.index, total=self.total,
                      missing=", ".join(map(str, self.missing)))


class ChunkAssembler:
    """Collects the parts of one multi-part SHC card as a lane reads them, in any order.

    Pure apart from its own state: the caller passes the time of each read, so nothing here reads
    a clock or sleeps. One card is assembled at a time (one person at the lane): a part of a
    different card (another part count, or another text for a part already held) starts over, and
    parts are dropped once ``hold_seconds`` pass without a new part.
    """

    def __init__(self, hold_seconds: float = 60.0) -> None:
        if not hold_seconds > 0:
            raise ValueError("hold_seconds must be positive")
        self.hold_seconds = float(hold_seconds)
        self._total = 0
        self._parts: dict[int, str] = {}
        self._digits: dict[int, str] = {}
        self._last = 0.0

    def add(self, text: str, at: float) -> ChunkProgress | None:
        """Take a read text; None if it is not a part of a multi-part card (verify it directly)."""
        chunk = parse_chunk(text)
        if chunk is None:
            return None
        self._expire(at)
        if chunk.total != self._total or self._digits.get(chunk.index, chunk.digits) != chunk.digits:
            self.clear()
            self._total = chunk.total
        self._parts[chunk.index] = text.strip(WHITESPACE)
        self._digits[chunk.index] = chunk.digits
        self._last = at
        received = tuple(sorted(self._parts))
        if len(received) < chunk.total:
            return ChunkProgress(chunk.index, chunk.total, received)
        parts = tuple(self._parts[i] for i in range(1, chunk.total + 1))
        self.clear()
        return ChunkProgress(chunk.index, chunk.total, received, parts)

    def pending(self, at: float) -> ChunkProgress | None:
        """The incomplete card held at time ``at`` (for the screen), or None."""
        self._expire(at)
        if not self._parts:
            return None
        last = max(self._parts)
        return ChunkProgress(last, self._total, tuple(sorted(self._parts)))

    def clear(self) -> None:
        self._total = 0
        self._parts = {}
        self._digits = {}

    def _expire(self, at: float) -> None:
        if self._parts and not (0 <= at - self._last <= self.hold_seconds):
            self.clear()  # held too long (or the clock went back): start over


# ------------------------------------------------------------------------------ issuer side

def sign_jws(claims: Mapping[str, Any], private_key: Any, kid: str) -> str:
    """A compact JWS of minified, raw-DEFLATE-compressed claims, ES256 (issuer side: for pilots,
    tests and benchmarks)."""
    header = json.dumps({"zip": "DEF", "alg": "ES256", "kid": kid}, separators=(",", ":"))
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    minified = json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    body = packer.compress(minified) + packer.flush()
    signing_input = f"{b64url_encode(header.encode('ascii'))}.{b64url_encode(body)}"
    signature = cose.sign(private_key, cose.ALG_ES256, signing_input.encode("ascii"))
    return f"{signing_input}.{b64url_encode(signature)}"


def qr_texts(jws: str, parts: int = 1) -> list[str]:
    """The QR text(s) of a JWS: one "shc:/…", or ``parts`` balanced chunks "shc:/i/n/…"."""
    if parts == 1:
        return [SCHEME + jws_to_numeric(jws)]
    size = -(-len(jws) // parts)
    pieces = [jws[i:i + size] for i in range(0, len(jws), size)]
    return [f"{SCHEME}{i}/{len(pieces)}/{jws_to_numeric(p)}" for i, p in enumerate(pieces, 1)]


def make_rid(secret: bytes, kid: str, user_id: str) -> str:
    """The recommended rid: base64url of the first 64 bits of HMAC-SHA-256 keyed with
    secret || kid over the issuer's user id (SHC spec, Revocation)."""
    mac = hmac.new(secret + kid.encode("ascii"), user_id.encode("utf-8"), hashlib.sha256)
    return b64url_encode(mac.digest()[:8])
