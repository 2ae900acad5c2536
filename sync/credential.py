"""The device's copy of its server credential (sync.wire.credential): kept in the state directory,
verified again against the pinned root and the server the device is provisioned for whenever it is
loaded, and replaced only by a newer one. docs/sync-protocol.md#server-credential.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.base.fsutil import atomic_write
from sync.state import DeviceConfig
from sync.trustupdate import load_roots
from sync.wire.credential import CredentialError, ServerCredential, open_credential

FILE_NAME = "server-credential.json"


def load(state_dir: str | os.PathLike) -> ServerCredential:
    """The installed credential, verified again against the pinned root and checked against the
    server this device is provisioned for. CredentialError (code ``credential_missing`` when
    there is none) otherwise: then nothing may be sealed or pulled with its keys."""
    state = Path(state_dir)
    try:
        data = (state / FILE_NAME).read_bytes()
    except FileNotFoundError:
        raise CredentialError(f"{state / FILE_NAME}: no server credential on this device",
                              code="credential_missing") from None
    except OSError as exc:
        raise CredentialError(f"{state / FILE_NAME}: {exc.strerror}", code="credential_unreadable") from None
    roots = load_roots(state)
    if not roots:
        raise CredentialError("no trust root pinned on this device: the credential cannot be checked",
                              code="credential_wrong_root")
    cred = open_credential(data, roots)
    cred.check_url(DeviceConfig.load(state).server_url)
    return cred


def install(state_dir: str | os.PathLike, data: bytes, roots: Sequence[ed25519.Ed25519PublicKey],
            server_url: str, *, replace: bool = False) -> tuple[ServerCredential, bool]:
    """Verify ``data`` (root signature, names ``server_url``) and keep it; returns (credential,
    changed). A credential with a lower serial than the installed one, or the same serial with
    other content, is refused unless ``replace`` (provisioning, the technician's choice of server)."""
    cred = open_credential(data, roots)
    cred.check_url(server_url)
    path = Path(state_dir) / FILE_NAME
    if not replace:
        try:
            current = open_credential(path.read_bytes(), roots)
        except (FileNotFoundError, CredentialError):
            current = None
        if current is not None:
            if current.data == cred.data:
                return current, False
            if cred.serial <= current.serial:
                raise CredentialError(f"server credential serial {cred.serial} is not newer than the installed "
                                      f"{current.serial} (rollback refused)", code="credential_rollback")
    atomic_write(path, cred.data, 0o644)
    return cred, True
