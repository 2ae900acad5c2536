"""Lenient signer-certificate reading (scanner/cards/x509util.py): agrees with cryptography where that
reads a certificate, with the openssl command where only OpenSSL does, and fails cleanly otherwise."""
from __future__ import annotations

import base64
import datetime as dt
import shutil
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scanner.base.errors import KeyFileError
from scanner.cards import keys as keymod
from scanner.cards import x509util

NOW = 1_750_000_000
YEAR = 365 * 86_400
DCC = x509util.DCC_TYPES_BY_OID


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def spki(key) -> bytes:
    return keymod.spki_der(key)


@pytest.mark.parametrize("usages", [
    (), ("1.3.6.1.5.5.7.3.1",), ("1.3.6.1.4.1.1847.2021.1.1",),
    ("1.3.6.1.4.1.0.1847.2021.1.2", "1.3.6.1.4.1.1847.2021.1.3", "1.3.6.1.5.5.7.3.2"),
])
@pytest.mark.parametrize("which", ["ec", "rsa"])
def test_agrees_with_cryptography(which, usages, ec_key, rsa_key):
    key = ec_key if which == "ec" else rsa_key
    der = x509util.make_dsc(key, country="VN", not_before=NOW - YEAR, not_after=NOW + 3 * YEAR,
                            key_usages=usages, san_uris=("https://issuer.example/a",))
    info = x509util.read_certificate(der)
    cert = x509.load_der_x509_certificate(der)
    assert not info.lenient and info.der == der
    assert spki(info.public_key) == spki(cert.public_key())
    assert info.not_before == int(cert.not_valid_before_utc.timestamp())
    assert info.not_after == int(cert.not_valid_after_utc.timestamp())
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value if usages else None
    assert info.eku == (frozenset(o.dotted_string for o in eku) if usages else None)
    assert info.san_uris == ("https://issuer.example/a",)
    expected = frozenset(DCC[o] for o in usages if o in DCC) or None
    assert info.dcc_types == expected
    # the walker alone reads the same public key and validity
    key2, nb, na = x509util._walk(der)
    assert spki(key2) == spki(info.public_key) and (nb, na) == (info.not_before, info.not_after)


def test_times_in_both_encodings(ec_key):
    # UTCTime up to 2049, GeneralizedTime from 2050 (RFC 5280 4.1.2.5)
    nb = int(dt.datetime(1999, 12, 31, 23, 59, 58, tzinfo=dt.UTC).timestamp())
    na = int(dt.datetime(2051, 1, 2, 3, 4, 5, tzinfo=dt.UTC).timestamp())
    der = x509util.make_dsc(ec_key, country="VN", not_before=nb, not_after=na)
    assert x509util._walk(der)[1:] == (nb, na)


def _lengthen(der: bytes, at: int) -> bytes:
    """Re-encode the length of the TLV at ``at`` in non-minimal long form (BER), fixing the outer
    lengths that contain it; an element's long-form length grows by one byte."""
    def rebuild(pos: int, end: int) -> bytes:
        tag, cs, ce = x509util._tlv(der, pos, end)
        if tag & 0x20:
            body = b""
            p = cs
            while p < ce:
                _, _, child_end = x509util._tlv(der, p, ce)
                body += rebuild(p, child_end)
                p = child_end
        else:
            body = der[cs:ce]
        n = len(body)
        if pos == at:
            head = bytes((tag, 0x84)) + n.to_bytes(4, "big")
        elif n < 0x80:
            head = bytes((tag, n))
        else:
            raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
            head = bytes((tag, 0x80 | len(raw))) + raw
        return head + body
    return rebuild(0, len(der))


def _tlv_starts(der: bytes) -> dict[str, int]:
    """Offsets of the certificate, TBS, validity and SPKI TLVs."""
    _, cs, _ = x509util._tlv(der, 0, len(der))
    f = x509util._tbs_fields(der)
    spki_start = f["spki"][1] - 2 if der[f["spki"][1] - 2] == 0x30 else f["spki"][1] - 3
    return {"outer": 0, "tbs": cs, "spki": spki_start}


OPENSSL = shutil.which("openssl")


@pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")
@pytest.mark.parametrize("where", ["outer", "tbs", "spki"])
def test_reads_what_openssl_reads(where, ec_key, tmp_path):
    der = x509util.make_dsc(ec_key, country="VN", not_before=NOW - YEAR, not_after=NOW + YEAR,
                            key_usages=("1.3.6.1.4.1.1847.2021.1.2",))
    loose = _lengthen(der, _tlv_starts(der)[where])
    assert loose != der
    with pytest.raises(ValueError):
        x509.load_der_x509_certificate(loose)
    (tmp_path / "c.der").write_bytes(loose)
    r = subprocess.run([OPENSSL, "x509", "-inform", "DER", "-in", str(tmp_path / "c.der"), "-noout",
                        "-pubkey"], capture_output=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    openssl_key = serialization.load_pem_public_key(r.stdout)
    info = x509util.read_certificate(loose)
    assert info.lenient and spki(info.public_key) == spki(openssl_key) == spki(ec_key.public_key())
    assert info.dcc_types == frozenset({"vaccination"})
    assert x509util.hc1_kid(loose) != x509util.hc1_kid(der)  # the kid is over the bytes as issued


def test_pem_files(ec_key, rsa_key):
    ders = [x509util.make_dsc(k, country="VN", not_before=NOW, not_after=NOW + YEAR) for k in (ec_key, rsa_key)]
    pem = b"".join(b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(d) + b"-----END CERTIFICATE-----\n"
                   for d in ders)
    assert [c.der for c in x509util.read_certificates(pem)] == ders
    for bad in (b"-----BEGIN CERTIFICATE-----\nAAAA", b"-----BEGIN CERTIFICATE-----\n@@@\n-----END CERTIFICATE-----"):
        with pytest.raises(KeyFileError):
            x509util.read_certificates(bad)


@pytest.mark.parametrize("data", [
    b"", b"\x30", b"\x30\x80\x00\x00", b"\x30\x84\xff\xff\xff\xff", b"\x30\x03\x02\x01\x01",
    b"\x1f\x01\x00", b"\x30\x00" * 10, b"\x30" + b"\x85" + b"\x00" * 5,
])
def test_garbage_is_a_clean_error(data):
    with pytest.raises(KeyFileError):
        x509util.read_certificate(data)


def test_deep_nesting_is_bounded():
    deep = b"\x05\x00"
    for _ in range(50):  # SEQUENCE { SEQUENCE { ... NULL } }
        deep = b"\x30" + bytes((len(deep),)) + deep
    with pytest.raises(x509util.DerError):
        x509util._reencode(deep, 0x30, 2, len(deep))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_certificates_never_crash(ec_key, data):
    der = _CERT.setdefault("der", x509util.make_dsc(ec_key, country="VN", not_before=NOW, not_after=NOW + YEAR,
                                                    key_usages=("1.3.6.1.4.1.1847.2021.1.1",)))
    b = bytearray(der)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(b) - 1))
        b[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(b)))
    mutated = bytes(b[:cut])
    try:
        info = x509util.read_certificate(mutated)
    except KeyFileError:
        return
    assert info.eku is None or all(isinstance(o, str) for o in info.eku)
    assert info.eku_error is None or "cannot be read" in info.eku_error


_CERT: dict[str, bytes] = {}
