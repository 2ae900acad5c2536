"""Key files and SPKI blobs of a kind cryptography does not know are clean errors, never crashes."""
from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from scanner.base.errors import KeyFileError
from scanner.cards import keys, x509util
from scanner.store import sealing

EC_OID = bytes.fromhex("2a8648ce3d0201")  # 1.2.840.10045.2.1 id-ecPublicKey


def mangled_spki() -> bytes:
    """A P-256 SPKI whose algorithm OID reads 0.0.840.10045.2.1: cryptography raises
    UnsupportedAlgorithm (not a ValueError) for it, which once escaped as a traceback."""
    der = bytearray(keys.spki_der(ec.generate_private_key(ec.SECP256R1()).public_key()))
    der[der.find(EC_OID)] = 0x00
    return bytes(der)


def pem(der: bytes) -> bytes:
    return b"-----BEGIN PUBLIC KEY-----\n" + base64.encodebytes(der) + b"-----END PUBLIC KEY-----\n"


def test_unknown_key_type_in_spki_is_a_key_file_error():
    with pytest.raises(KeyFileError, match="not a public key"):
        keys.public_key_from_spki(mangled_spki())


@pytest.mark.parametrize("encode", [pem, lambda der: der], ids=["pem", "der"])
def test_unknown_key_type_in_a_file_is_a_key_file_error(tmp_path, encode):
    path = tmp_path / "odd.pub"
    path.write_bytes(encode(mangled_spki()))
    with pytest.raises(KeyFileError):
        x509util.load_public_keys(path)


def test_unknown_key_type_as_sealing_key_is_a_seal_error():
    with pytest.raises(sealing.SealError):
        sealing.load_public_key(pem(mangled_spki()))
