"""Reading issuer keys and certificates, and the key id (kid) every card format looks keys up by."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from scanner.base.errors import KeyFileError, os_error_words
from scanner.base.fsutil import atomic_write, write_output
from scanner.base.i18n import text

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

ALGS = ("EdDSA", "ES256", "PS256")


def spki_der(public_key: PublicKey) -> bytes:
    """DER SubjectPublicKeyInfo of a public key."""
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def kid_of(public_key: PublicKey) -> bytes:
    """CK1 key id: the first 8 bytes of SHA-256 over the DER SubjectPublicKeyInfo."""
    return hashlib.sha256(spki_der(public_key)).digest()[:8]


def supported_public_key(key: object) -> PublicKey:
    """``key`` if it is a key the formats use (Ed25519, P-256, RSA of 2048 bits or more); else KeyFileError."""
    if isinstance(key, (ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        alg_of(key)  # the curve and the size
        return key
    raise KeyFileError(f"unsupported key type {type(key).__name__}")


def supported_private_key(key: object) -> PrivateKey:
    """``key`` if it is a private key of a supported kind (as supported_public_key); else KeyFileError."""
    if isinstance(key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        alg_of(key.public_key())
        return key
    raise KeyFileError(f"unsupported key type {type(key).__name__}")


def alg_of(public_key: PublicKey) -> str:
    """The signature algorithm a key is used with; raise KeyFileError for unsupported keys."""
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if isinstance(public_key.curve, ec.SECP256R1):
            return "ES256"
        raise KeyFileError(f"EC curve {public_key.curve.name} is not supported (only P-256)")
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < 2048:
            raise KeyFileError(f"RSA key of {public_key.key_size} bits is too short (at least 2048)")
        return "PS256"
    raise KeyFileError(f"unsupported key type {type(public_key).__name__}")


def public_key_from_spki(der: bytes) -> PublicKey:
    """Load a DER SubjectPublicKeyInfo; raise KeyFileError if it is not a supported key."""
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"not a public key: {exc}") from None
    return supported_public_key(key)


def load_private_key(path: str | os.PathLike) -> PrivateKey:
    """Read an unencrypted PEM private key (Ed25519, P-256 or RSA)."""
    path = Path(path)
    try:
        data = path.read_bytes()
        key = serialization.load_pem_private_key(data, password=None)
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror or exc}", text=os_error_words(exc, path)) from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not a readable unencrypted PEM private key ({exc})",
                           text=text("key_file.not_private", path=str(path))) from None
    return supported_private_key(key)


def private_pem(key: PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (the file itself is kept 0600)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_pem(key: PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def generate(alg: str) -> PrivateKey:
    """A new private key for EdDSA (Ed25519), ES256 (P-256) or PS256 (RSA-3072)."""
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "PS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise KeyFileError(f"unknown algorithm {alg!r} (choose from {', '.join(ALGS)})")


def write_private_key(path: str | os.PathLike, key: PrivateKey) -> None:
    """Write a private key readable by its owner only (mode 0600, never world-readable), to a path
    a person named: atomically, refused if ``path`` is a symlink (fsutil.AtomicFile.output)."""
    write_output(path, private_pem(key), 0o600)


def create_private_key(path: str | os.PathLike, key) -> bool:
    """Write ``key`` (any cryptography private key) as a new key file, mode 0600, atomically and
    only if there is none yet: False when another process made one meanwhile (theirs is kept).
    The device key and the server's keys are made this way, once, then only loaded."""
    return atomic_write(path, private_pem(key), 0o600, replace=False)
