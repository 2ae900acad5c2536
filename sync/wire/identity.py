"""The device's identity: its Ed25519 key (state dir, mode 0600), made once and then only loaded.

The key signs every batch and request (docs/sync-protocol.md#identity); the server knows the
device by the public half it enrolled, and the device id is derived from it.
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.base.errors import CheckpointError
from scanner.cards.keys import create_private_key
from sync.wire.protocol import device_id_for

log = logging.getLogger(__name__)

KEY_NAME = "device.key"


class IdentityError(CheckpointError):
    """The device key is missing, unreadable or not an Ed25519 key."""

    code = "identity"


def key_path(state_dir: str | os.PathLike) -> Path:
    return Path(state_dir) / KEY_NAME


def public_raw(key: ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, ed25519.Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def device_id(key: ed25519.Ed25519PrivateKey) -> str:
    return device_id_for(public_raw(key))


def load(state_dir: str | os.PathLike) -> ed25519.Ed25519PrivateKey:
    """The device key; IdentityError if there is none (run `checkpoint provision`)."""
    path = key_path(state_dir)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise IdentityError(f"no device key at {path} (run `checkpoint provision`)") from None
    except OSError as exc:
        raise IdentityError(f"{path}: {exc.strerror}") from None
    _tighten(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise IdentityError(f"{path} is not a PEM private key") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise IdentityError(f"{path} is not an Ed25519 key")
    return key


def load_or_create(state_dir: str | os.PathLike) -> tuple[ed25519.Ed25519PrivateKey, bool]:
    """The device key, made (mode 0600, written atomically) if there is none; (key, created)."""
    path = key_path(state_dir)
    if path.exists():
        return load(state_dir), False
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    if not create_private_key(path, key):  # another process made one meanwhile: keep theirs
        return load(state_dir), False
    log.info("device key created at %s", path)
    return key, True


def _tighten(path: Path) -> None:
    """A key readable by group or others is made 0600 (and said so), never used as is."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, 0o600)
        log.warning("device key %s had mode %o; set to 0600", path, mode)

