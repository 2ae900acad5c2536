"""Publishing the server's root-signed credential (sync/wire/credential.py): checked against the
server's root and its own keys before devices are given it at enrollment and on `/v1/credential`."""
from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from scanner.base.i18n import text
from scanner.cards import keys as keymod
from sync.server.bundles import ROOT_META, root_of
from sync.server.model import Storage
from sync.wire.credential import CredentialError, ServerCredential, open_credential

CREDENTIAL_META = "server_credential"


def _raw(key) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def current(storage: Storage) -> bytes | None:
    """The published credential file, or None."""
    text = storage.get_meta(CREDENTIAL_META)
    return text.encode("ascii") if text is not None else None


def publish(storage: Storage, data: bytes, *, sealing_public: X25519PublicKey,
            pull_public: ed25519.Ed25519PublicKey | None,
            root: ed25519.Ed25519PublicKey | None = None) -> ServerCredential:
    """Check ``data`` against the server's root (set by the first bundle or credential published;
    ``root`` the first time) and the server's own keys, then publish it. A lower serial than the
    one published is refused (devices would refuse it too)."""
    stored = root_of(storage)
    if root is not None and stored is not None and keymod.spki_der(root) != keymod.spki_der(stored):
        raise CredentialError("this server already publishes bundles of another root", code="credential_wrong_root")
    root = root or stored
    if root is None:
        raise CredentialError("no trust root: give the root public key (--root) the first time",
                              code="credential_no_root")
    cred = open_credential(data, [root])
    if _raw(cred.sealing_key) != _raw(sealing_public):
        raise CredentialError("the credential's sealing key is not this server's (KEYS/sealing.key): devices "
                              "would seal holder details to a key this server cannot open",
                              code="credential_wrong_key")
    if cred.pull_key is not None and (pull_public is None or _raw(cred.pull_key) != _raw(pull_public)):
        raise CredentialError("the credential's pull key is not this server's (KEYS/pull.key)",
                              code="credential_wrong_key")
    old = current(storage)
    if old is not None:
        try:
            previous = open_credential(old, [root])
        except CredentialError:
            previous = None
        if previous is not None and previous.data != cred.data and cred.serial <= previous.serial:
            raise CredentialError(f"serial {cred.serial} is not above the published {previous.serial}",
                                  code="credential_rollback",
                                  text=text("trust_error.credential_serial", serial=cred.serial,
                                            published=previous.serial))
    storage.set_meta(CREDENTIAL_META, cred.data.decode("ascii"))
    if stored is None:
        storage.set_meta(ROOT_META, keymod.public_pem(root).decode("ascii"))
    return cred
