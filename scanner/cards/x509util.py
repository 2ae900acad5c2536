"""Lenient reading of signer certificates (EU DCC Document Signer Certificates, SHC x5c).

Spec: docs/health-certificates.md#document-signer-certificates. The ``cryptography`` loader is
strict DER; real DSCs are not always (Finland's encode the default cA=FALSE, others use long-form
lengths). We read what OpenSSL reads: ``cryptography`` first, and where it fails a small, bounded
DER walker of our own takes out the SubjectPublicKeyInfo and the validity. Extensions (extended key
usage, subject alternative name) are always read by the walker, which looks only at the ones it
needs, so one unreadable extension elsewhere does not hide the key usage. An unreadable key-usage
extension is recorded (``eku_error``) so the verifier can reject cleanly instead of guessing.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from scanner.base.errors import KeyFileError, os_error_words
from scanner.base.i18n import text
from scanner.cards import keys as keymod

MAX_CERT_BYTES = 64 * 1024
_MAX_DEPTH = 8
_MAX_OID_BYTES = 64

OID_EKU = "2.5.29.37"
OID_SAN = "2.5.29.17"
# EU DCC key usage (hcert spec, section 5.1.2): .1 test, .2 vaccination, .3 recovery; some member
# states wrote the arc with an extra 0 after the private-enterprise number, both count.
DCC_TYPES_BY_OID = {
    f"1.3.6.1.4.1.{mid}1847.2021.1.{n}": kind
    for mid in ("", "0.")
    for n, kind in (("1", "test"), ("2", "vaccination"), ("3", "recovery"))
}

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]*?)-----END CERTIFICATE-----")


class DerError(ValueError):
    """Bytes that the walker cannot read as the expected DER/BER structure."""


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What the verifier needs from a signer certificate."""

    der: bytes
    public_key: keymod.PublicKey
    not_before: int | None
    not_after: int | None
    eku: frozenset[str] | None  # extended key usage OIDs; None when the extension is absent
    eku_error: str | None = None  # why the extensions could not be read (the key usage is unknown)
    san_uris: tuple[str, ...] = ()
    lenient: bool = False  # cryptography refused it; read by the fallback walker

    @property
    def dcc_types(self) -> frozenset[str] | None:
        """The DCC certificate types this DSC may sign, or None if it names none (it may sign all)."""
        if not self.eku:
            return None
        kinds = frozenset(DCC_TYPES_BY_OID[o] for o in self.eku if o in DCC_TYPES_BY_OID)
        return kinds or None


# ---------------------------------------------------------------------------------- DER walker

def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """One TLV at ``pos``: (tag byte, content start, content end). Definite lengths only (long
    form may be non-minimal, as BER and OpenSSL allow); everything must lie within ``end``."""
    if pos + 2 > end:
        raise DerError("truncated TLV")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise DerError("multi-byte tags are not used in certificates")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise DerError("indefinite length")
    else:
        n = first & 0x7F
        if n > 4 or pos + n > end:
            raise DerError("length too large")
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    if pos + length > end:
        raise DerError("length beyond the enclosing value")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """The TLVs that exactly fill data[start:end]."""
    out = []
    pos = start
    while pos < end:
        tag, cs, ce = _tlv(data, pos, end)
        out.append((tag, cs, ce))
        pos = ce
        if len(out) > 4096:
            raise DerError("too many elements")
    return out


def _reencode(data: bytes, tag: int, start: int, end: int, depth: int = 0) -> bytes:
    """DER with minimal lengths of a value read leniently (constructed values recursively)."""
    if depth > _MAX_DEPTH:
        raise DerError("nested too deeply")
    if tag & 0x20:
        body = b"".join(_reencode(data, t, s, e, depth + 1) for t, s, e in _children(data, start, end))
    else:
        body = data[start:end]
    n = len(body)
    if n < 0x80:
        head = bytes((tag, n))
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        head = bytes((tag, 0x80 | len(raw))) + raw
    return head + body


def _oid(data: bytes, start: int, end: int) -> str:
    raw = data[start:end]
    if not raw or len(raw) > _MAX_OID_BYTES or raw[-1] & 0x80:
        raise DerError("bad OBJECT IDENTIFIER")
    arcs = []
    value = 0
    for b in raw:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(a) for a in head + arcs[1:])


_UTC = re.compile(rb"([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})?(Z|[+-][0-9]{4})\Z")
_GEN = re.compile(rb"([0-9]{4})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})?(?:[.,][0-9]{1,9})?"
                  rb"(Z|[+-][0-9]{4})?\Z")


def _time(data: bytes, tag: int, start: int, end: int) -> int:
    """UTCTime (two-digit years 50..99 = 19xx) or GeneralizedTime as epoch seconds."""
    raw = data[start:end]
    m = (_UTC if tag == 0x17 else _GEN if tag == 0x18 else None)
    match = m.match(raw) if m is not None else None
    if match is None:
        raise DerError("bad validity time")
    year = int(match.group(1))
    if tag == 0x17:
        year += 1900 if year >= 50 else 2000
    tz = match.group(7) or b"Z"
    offset = 0 if tz == b"Z" else (1 if tz[:1] == b"+" else -1) * (int(tz[1:3]) * 60 + int(tz[3:5]))
    try:
        moment = dt.datetime(year, int(match.group(2)), int(match.group(3)), int(match.group(4)),
                             int(match.group(5)), int(match.group(6) or 0),
                             tzinfo=dt.timezone(dt.timedelta(minutes=offset)))
    except ValueError:
        raise DerError("impossible validity time") from None
    return int(moment.timestamp())


def _tbs_fields(der: bytes) -> dict[str, tuple[int, int, int]]:
    """The TBSCertificate's fields by name, leniently."""
    if len(der) > MAX_CERT_BYTES:
        raise DerError("certificate larger than 64 KiB")
    tag, cs, ce = _tlv(der, 0, len(der))
    if tag != 0x30:
        raise DerError("not a SEQUENCE")
    outer = _children(der, cs, ce)
    if len(outer) != 3 or outer[0][0] != 0x30:
        raise DerError("a certificate is SEQUENCE {tbsCertificate, algorithm, signature}")
    items = _children(der, outer[0][1], outer[0][2])
    fields: dict[str, tuple[int, int, int]] = {}
    i = 0
    if items and items[0][0] == 0xA0:
        i = 1
    names = ("serial", "signature", "issuer", "validity", "subject", "spki")
    expected = (0x02, 0x30, 0x30, 0x30, 0x30, 0x30)
    if len(items) < i + len(names):
        raise DerError("TBSCertificate is missing fields")
    for name, want in zip(names, expected):
        if items[i][0] != want:
            raise DerError(f"TBSCertificate {name} has the wrong type")
        fields[name] = items[i]
        i += 1
    for item in items[i:]:
        if item[0] == 0xA3:
            if "extensions" in fields:
                raise DerError("two extension lists")
            fields["extensions"] = item
        elif item[0] not in (0x81, 0xA1, 0x82, 0xA2):
            raise DerError("unexpected field after the public key")
    return fields


def _extensions(der: bytes, field: tuple[int, int, int] | None
                ) -> tuple[frozenset[str] | None, tuple[str, ...]]:
    """(EKU OIDs or None, SAN URIs) from the [3] extensions; raise DerError if they cannot be read."""
    if field is None:
        return None, ()
    seq = _children(der, field[1], field[2])
    if len(seq) != 1 or seq[0][0] != 0x30:
        raise DerError("extensions are not one SEQUENCE")
    eku: frozenset[str] | None = None
    uris: list[str] = []
    seen: set[str] = set()
    for tag, s, e in _children(der, seq[0][1], seq[0][2]):
        if tag != 0x30:
            raise DerError("an extension is not a SEQUENCE")
        parts = _children(der, s, e)
        if not 2 <= len(parts) <= 3 or parts[0][0] != 0x06 or parts[-1][0] != 0x04:
            raise DerError("an extension is not {extnID, critical?, extnValue}")
        oid = _oid(der, parts[0][1], parts[0][2])
        if oid in seen:
            raise DerError(f"extension {oid} appears twice")
        seen.add(oid)
        vs, ve = parts[-1][1], parts[-1][2]
        if oid == OID_EKU:
            vtag, vcs, vce = _tlv(der, vs, ve)
            if vtag != 0x30 or vce != ve:
                raise DerError("extended key usage is not a SEQUENCE")
            oids = []
            for t, a, b in _children(der, vcs, vce):
                if t != 0x06:
                    raise DerError("extended key usage holds a non-OID")
                oids.append(_oid(der, a, b))
            eku = frozenset(oids)
        elif oid == OID_SAN:
            vtag, vcs, vce = _tlv(der, vs, ve)
            if vtag != 0x30 or vce != ve:
                raise DerError("subject alternative name is not a SEQUENCE")
            for t, a, b in _children(der, vcs, vce):
                if t == 0x86:  # [6] uniformResourceIdentifier, IA5String
                    uris.append(der[a:b].decode("ascii", "replace"))
    return eku, tuple(uris)


def _walk(der: bytes) -> tuple[keymod.PublicKey, int, int]:
    """Public key and validity read by the walker alone."""
    fields = _tbs_fields(der)
    tag, s, e = fields["spki"]
    try:
        public_key = keymod.public_key_from_spki(_reencode(der, tag, s, e))
    except KeyFileError as exc:
        raise DerError(str(exc)) from None
    times = _children(der, fields["validity"][1], fields["validity"][2])
    if len(times) != 2:
        raise DerError("validity is not {notBefore, notAfter}")
    return public_key, _time(der, *times[0]), _time(der, *times[1])


# ---------------------------------------------------------------------------------- public API

@lru_cache(maxsize=256)
def read_certificate(der: bytes) -> CertInfo:
    """Read a DER certificate as OpenSSL would; raise KeyFileError if its public key is unusable.

    Cached by the DER bytes (a verifier asks for the same few DSCs again and again).
    """
    if type(der) is not bytes:
        raise KeyFileError("a certificate must be bytes")
    lenient = False
    try:
        cert = x509.load_der_x509_certificate(der)
        public_key = keymod.supported_public_key(cert.public_key())
        not_before = int(cert.not_valid_before_utc.timestamp())
        not_after = int(cert.not_valid_after_utc.timestamp())
    except (ValueError, TypeError, UnsupportedAlgorithm, KeyFileError) as strict_error:
        try:
            public_key, not_before, not_after = _walk(der)
        except DerError as exc:
            raise KeyFileError(f"not a readable X.509 certificate ({strict_error}; {exc})") from None
        lenient = True
    eku_error = None
    try:
        eku, uris = _extensions(der, _tbs_fields(der).get("extensions"))
    except DerError as exc:
        eku, uris, eku_error = None, (), f"the certificate's extensions cannot be read ({exc})"
    return CertInfo(der, public_key, not_before, not_after, eku, eku_error, uris, lenient)


def read_certificates(data: bytes) -> list[CertInfo]:
    """Certificates from PEM text (one or more) or one DER certificate; raise KeyFileError."""
    if b"-----BEGIN CERTIFICATE-----" in data:
        blocks = _PEM_CERT.findall(data)
        if not blocks:
            raise KeyFileError("a PEM certificate block is not terminated")
        out = []
        for block in blocks:
            try:
                der = base64.b64decode(b"".join(block.split()), validate=True)
            except (binascii.Error, ValueError):
                raise KeyFileError("a PEM certificate is not valid base64") from None
            out.append(read_certificate(der))
        return out
    return [read_certificate(bytes(data))]


def hc1_kid(der: bytes) -> bytes:
    """EU DCC key id: the first 8 bytes of SHA-256 over the certificate's DER."""
    return hashlib.sha256(der).digest()[:8]


def make_dsc(private_key: keymod.PrivateKey, *, country: str, not_before: int, not_after: int,
             key_usages: tuple[str, ...] = (), extensions: tuple[x509.ExtensionType, ...] = (),
             san_uris: tuple[str, ...] = (), common_name: str = "DSC") -> bytes:
    """A self-signed signer certificate (DER) for pilots, tests and benchmarks: ``key_usages`` are
    extended key usage OIDs (e.g. the DCC ones in DCC_TYPES_BY_OID), ``extensions`` any others."""
    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, country),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(private_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(dt.datetime.fromtimestamp(not_before, dt.UTC))
               .not_valid_after(dt.datetime.fromtimestamp(not_after, dt.UTC)))
    if key_usages:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.ObjectIdentifier(o) for o in key_usages]), critical=False)
    if san_uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in san_uris]),
            critical=False)
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    cert = builder.sign(private_key, hashes.SHA256())
    return cert.public_bytes(Encoding.DER)


def load_public_keys(path: str | os.PathLike) -> list[tuple[keymod.PublicKey, x509.Certificate | None]]:
    """Read a PEM public key, or one or more PEM certificates, or one DER certificate or key (here,
    not in keys, so a process that only signs never loads cryptography's X.509 code)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror or exc}", text=os_error_words(exc, path)) from None
    found: list[tuple[object, x509.Certificate | None]] = []
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            for cert in x509.load_pem_x509_certificates(data):
                found.append((cert.public_key(), cert))
        elif b"-----BEGIN PUBLIC KEY-----" in data:
            found.append((serialization.load_pem_public_key(data), None))
        elif b"-----BEGIN" in data:
            raise KeyFileError(f"{path}: expected a PEM public key or certificate (is this a private key?)",
                               text=text("key_file.not_public_pem", path=str(path)))
        else:
            try:
                cert = x509.load_der_x509_certificate(data)
                found.append((cert.public_key(), cert))
            except ValueError:
                found.append((serialization.load_der_public_key(data), None))
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not a readable public key or certificate ({exc})",
                           text=text("key_file.not_public", path=str(path))) from None
    try:
        return [(keymod.supported_public_key(key), cert) for key, cert in found]
    except KeyFileError as exc:
        raise KeyFileError(f"{path}: {exc}") from None
