"""The server's own keys, made once in its key directory (mode 0600; beside a SQLite database
unless given), then only loaded:

- ``sealing.key`` (X25519): devices seal holder details to its public half; tracing opens them.
- ``pull.key`` (Ed25519): signs the server's requests when it pulls batches from devices
  (docs/sync-protocol.md#server-pull); devices learn its public half at enrollment.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from scanner.base.errors import CheckpointError
from scanner.base.fsutil import atomic_write
from scanner.cards import keys as keymod
from scanner.store import sealing
from sync.server.storage import default_keys_dir

SEALING_KEY_NAME = "sealing.key"
PULL_KEY_NAME = "pull.key"
SEALING_PUB_NAME = "sealing.pub"
PULL_PUB_NAME = "pull.pub"


@dataclass(frozen=True, slots=True)
class ServerKeys:
    sealing: X25519PrivateKey
    pull: ed25519.Ed25519PrivateKey


def key_dir(db_url: str, given: str | os.PathLike | None = None) -> Path:
    """The server's key directory: ``given``, else beside its SQLite file (none for PostgreSQL:
    CheckpointError)."""
    return Path(given) if given else default_keys_dir(db_url)


def _load_or_create(keys_dir: str | os.PathLike, name: str, generate, kind: type):
    path = Path(keys_dir) / name
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        keymod.create_private_key(path, generate())  # False: another process made it first; theirs is used
    return load_private_key(path, kind)


def load_private_key(path: str | os.PathLike, kind: type):
    """A PEM private key of ``kind`` from ``path``; CheckpointError (code server_key) otherwise."""
    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CheckpointError(f"{path}: not a readable private key ({exc})", code="server_key") from None
    if not isinstance(key, kind):
        raise CheckpointError(f"{path} is not an {kind.__name__.removesuffix('PrivateKey')} key", code="server_key")
    return key


def load_or_create_sealing_key(keys_dir: str | os.PathLike) -> X25519PrivateKey:
    return _load_or_create(keys_dir, SEALING_KEY_NAME, sealing.generate_server_key, X25519PrivateKey)


def load_or_create_pull_key(keys_dir: str | os.PathLike) -> ed25519.Ed25519PrivateKey:
    return _load_or_create(keys_dir, PULL_KEY_NAME, ed25519.Ed25519PrivateKey.generate, ed25519.Ed25519PrivateKey)


def sealing_public_pem(key: X25519PrivateKey) -> str:
    return sealing.public_key_pem(key.public_key()).decode("ascii")


def public_pem(key: ed25519.Ed25519PrivateKey) -> str:
    """The public half of an Ed25519 key as PEM text (SubjectPublicKeyInfo)."""
    return keymod.public_pem(key.public_key()).decode("ascii")


def load_or_create(keys_dir: str | os.PathLike) -> ServerKeys:
    """Both keys of the server, made if absent (as `checkpoint server run` does on its first start)."""
    return ServerKeys(load_or_create_sealing_key(keys_dir), load_or_create_pull_key(keys_dir))


def write_public_keys(keys: ServerKeys, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """The public halves as PEM files in ``out_dir`` (made if missing), for the operator to sign a
    credential for: (sealing.pub, pull.pub)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seal, pull = out / SEALING_PUB_NAME, out / PULL_PUB_NAME
    atomic_write(seal, sealing.public_key_pem(keys.sealing.public_key()))
    atomic_write(pull, keymod.public_pem(keys.pull.public_key()))
    return seal, pull
