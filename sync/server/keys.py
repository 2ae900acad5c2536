"""The server's own X25519 sealing key (devices seal holder details to its public half):
made once in the server's key directory (mode 0600), then only loaded."""
from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from scanner import sealing
from scanner.errors import CheckpointError

SEALING_KEY_NAME = "sealing.key"


def load_or_create_sealing_key(keys_dir: str | os.PathLike) -> X25519PrivateKey:
    path = Path(keys_dir) / SEALING_KEY_NAME
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = sealing.generate_server_key()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        tmp = path.with_name(f".{SEALING_KEY_NAME}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        os.unlink(tmp)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a readable private key ({exc})", code="server_key") from None
    if not isinstance(key, X25519PrivateKey):
        raise CheckpointError(f"{path} is not an X25519 key", code="server_key")
    return key


def sealing_public_pem(key: X25519PrivateKey) -> str:
    return sealing.public_key_pem(key.public_key()).decode("ascii")
