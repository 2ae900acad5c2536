"""COSE_Sign1 (RFC 9052 section 4.2): parse the envelope, build Sig_structure, verify and sign.

Only the envelope and the protected header are parsed before the signature is checked; the
payload is decoded by the card format after that, so unauthenticated bytes get minimal handling.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from scanner.cards import cbor
from scanner.cards.cbor import Tag

ALG_EDDSA = -8
ALG_ES256 = -7
ALG_PS256 = -37
ALG_NAMES = {ALG_EDDSA: "EdDSA", ALG_ES256: "ES256", ALG_PS256: "PS256"}
ALG_IDS = {name: alg for alg, name in ALG_NAMES.items()}
HDR_ALG = 1
HDR_KID = 4
COSE_SIGN1_TAG = 18
_SIG1_PREFIX = b"\x84\x6aSignature1"  # array(4), text(10) "Signature1"
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
_ECDSA = ec.ECDSA(hashes.SHA256())


class CoseError(ValueError):
    """An envelope that is valid CBOR but not a COSE_Sign1 message."""


@dataclass(frozen=True, slots=True)
class Sign1:
    """A parsed COSE_Sign1 envelope; ``payload`` is still undecoded bytes."""

    protected: bytes
    alg: int | None
    kid: bytes | None
    payload: bytes
    signature: bytes

    def to_be_signed(self) -> bytes:
        """The bytes the signature covers: CBOR of ["Signature1", protected, h'', payload]."""
        return sig_structure(self.protected, self.payload)


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """Sig_structure for COSE_Sign1 with empty external AAD, encoded deterministically."""
    return b"".join((_SIG1_PREFIX, cbor.bstr_head(len(protected)), protected, b"\x40",
                     cbor.bstr_head(len(payload)), payload))


# Every card signed with one key carries the same protected header, so parse_sign1 remembers the
# (alg, kid) of the few last distinct headers that passed its checks (a pure function of the bytes;
# a header that fails is never remembered). Bounded: at most 64 headers of at most 64 bytes.
_HEADERS: dict[bytes, tuple[Any, Any]] = {}
_HEADER_CACHE_SIZE = 64
_HEADER_CACHE_MAX_BYTES = 64


def parse_sign1(data: bytes, *, alg_unprotected: bool = False) -> Sign1:
    """Parse a tagged or untagged COSE_Sign1; raise CborError or CoseError. The alg must be in the
    protected header unless ``alg_unprotected`` (a format that allows it, e.g. HC1): then an alg
    only in the unprotected header counts too, and the protected one wins when both are there."""
    return Sign1(*sign1_fields(data, alg_unprotected=alg_unprotected))


def sign1_fields(data: bytes, *, alg_unprotected: bool = False
                 ) -> tuple[bytes, int | None, bytes | None, bytes, bytes]:
    """What `parse_sign1` gives, as the tuple (protected, alg, kid, payload, signature): the
    verifier's path, which needs no Sign1 object per scan."""
    msg = plain_envelope(data)
    if msg is None:
        msg = envelope(data)
    protected, unprotected, payload, signature = msg
    fields = _HEADERS.get(protected)
    if fields is None:
        header: Any = cbor.loads(protected) if protected else {}
        if type(header) is not dict:
            raise CoseError("protected header must be a map")
        alg = header.get(HDR_ALG)
        if alg is not None and type(alg) is not int:
            raise CoseError("alg must be an integer")
        fields = (alg, header.get(HDR_KID))
        if len(protected) <= _HEADER_CACHE_MAX_BYTES:
            if len(_HEADERS) >= _HEADER_CACHE_SIZE:
                _HEADERS.clear()
            _HEADERS[protected] = fields
    alg, kid = fields
    if HDR_ALG in unprotected:
        if not alg_unprotected:
            raise CoseError("alg must be in the protected header")
        if alg is None:
            alg = unprotected[HDR_ALG]
            if type(alg) is not int:
                raise CoseError("alg must be an integer")
    if kid is None:
        kid = unprotected.get(HDR_KID)
    if kid is not None and type(kid) is not bytes:
        raise CoseError("kid must be a byte string")
    return protected, alg, kid, payload, signature


def envelope(data: bytes) -> tuple[bytes, dict, bytes, bytes]:
    """The four members of a COSE_Sign1 (protected, unprotected, payload, signature), each of its
    type; raise CborError or CoseError."""
    # the Python decoder: an envelope is four strings and a map, which its fast paths decode in less
    # time than the compiled decoder takes to start (loads would try that first)
    msg = cbor.python_loads(data)
    if isinstance(msg, Tag):
        if msg.tag != COSE_SIGN1_TAG:
            raise CoseError(f"CBOR tag {msg.tag} is not COSE_Sign1 (18)")
        msg = msg.value
    if type(msg) is not list or len(msg) != 4:
        raise CoseError("COSE_Sign1 must be an array of 4 items")
    protected, unprotected, payload, signature = msg
    if type(protected) is not bytes or type(payload) is not bytes or type(signature) is not bytes:
        raise CoseError("protected header, payload and signature must be byte strings")
    if type(unprotected) is not dict:
        raise CoseError("unprotected header must be a map")
    return protected, unprotected, payload, signature


def plain_envelope(data: bytes) -> tuple[bytes, dict, bytes, bytes] | None:
    """`envelope` of the layout every issuer writes, read straight from the bytes: tag 18 (or none),
    an array of 4, byte strings of definite length (heads of up to two length bytes) and an empty
    unprotected map, nothing after. None for anything else (`envelope` then decides), so this
    never accepts what `envelope` refuses nor reads it differently."""
    if type(data) is not bytes:
        return None
    try:
        pos = 1 if data[0] == 0xD2 else 0  # tag 18 in its one-byte head
        if data[pos] != 0x84:
            return None
        protected, pos = cbor.string_at(data, pos + 1, 2)
        if data[pos] != 0xA0:
            return None
        payload, pos = cbor.string_at(data, pos + 1, 2)
        signature, pos = cbor.string_at(data, pos, 2)
    except (cbor.CborError, IndexError):  # another head, or shorter than its heads say
        return None
    if pos != len(data):
        return None
    return protected, {}, payload, signature


def verify_signature(public_key: Any, alg: int, message: bytes, signature: bytes) -> bool:
    """True if ``signature`` is a valid ``alg`` signature of ``message`` by ``public_key``.

    A key of the wrong type for ``alg`` is simply not valid (False), never an exception.
    """
    try:
        if alg == ALG_EDDSA:
            if not _is_instance(public_key, ed25519.Ed25519PublicKey) or len(signature) != 64:
                return False
            public_key.verify(signature, message)
            return True
        if alg == ALG_ES256:
            if (not _is_instance(public_key, ec.EllipticCurvePublicKey)
                    or not isinstance(public_key.curve, ec.SECP256R1) or len(signature) != 64):
                return False
            public_key.verify(_der_signature(signature), message, _ECDSA)
            return True
        if alg == ALG_PS256:
            if not isinstance(public_key, rsa.RSAPublicKey):
                return False
            public_key.verify(signature, message, _PSS, hashes.SHA256())
            return True
    except InvalidSignature:
        return False
    return False


_INSTANCE_OF: set[tuple[type, type]] = set()


def _is_instance(obj: Any, abc: type) -> bool:
    """isinstance(obj, abc), remembering the (type, ABC) pairs that hold: the key classes are ABCs,
    and isinstance against an ABC costs about 0.3 µs, a set look-up a fifth of that."""
    pair = (type(obj), abc)
    if pair in _INSTANCE_OF:
        return True
    if isinstance(obj, abc):
        if issubclass(pair[0], abc):  # true of the type itself: ABC registrations are never undone
            _INSTANCE_OF.add(pair)
        return True
    return False


def _der_signature(signature: bytes) -> bytes:
    """A 64-byte COSE ECDSA signature r||s as the DER SEQUENCE { INTEGER r, INTEGER s } OpenSSL takes
    (the same bytes as encode_dss_signature, built without going through Python ints)."""
    r = signature[:32].lstrip(b"\0")
    s = signature[32:].lstrip(b"\0")
    if not r or r[0] & 0x80:  # minimal INTEGER: one zero byte for 0 or a set top bit
        r = b"\0" + r
    if not s or s[0] & 0x80:
        s = b"\0" + s
    return b"".join((bytes((0x30, len(r) + len(s) + 4, 2, len(r))), r, bytes((2, len(s))), s))


def sign(private_key: Any, alg: int, message: bytes) -> bytes:
    """Sign ``message`` the COSE way (ECDSA as fixed-size r||s, never DER)."""
    if alg == ALG_EDDSA:
        return private_key.sign(message)
    if alg == ALG_ES256:
        r, s = decode_dss_signature(private_key.sign(message, _ECDSA))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    if alg == ALG_PS256:
        return private_key.sign(message, _PSS, hashes.SHA256())
    raise ValueError(f"unsupported COSE alg {alg}")


def sign1(payload: bytes, private_key: Any, alg: int, kid: bytes, *, tagged: bool = True,
          kid_unprotected: bool = False) -> bytes:
    """Build a complete COSE_Sign1 message (issuer side)."""
    header = {HDR_ALG: alg} if kid_unprotected else {HDR_ALG: alg, HDR_KID: kid}
    protected = cbor.dumps(header)
    unprotected = {HDR_KID: kid} if kid_unprotected else {}
    signature = sign(private_key, alg, sig_structure(protected, payload))
    msg = [protected, unprotected, payload, signature]
    return cbor.dumps(Tag(COSE_SIGN1_TAG, msg) if tagged else msg)
