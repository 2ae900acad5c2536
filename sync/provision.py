"""Enrollment, the sync part of `checkpoint provision`: state directory, device key, enroll with a
one-time token, and write what the device needs (device.json, the server's root-signed
credential, the pinned trust root, the current trust bundle). Nothing is written before the
server has shown a credential signed by the pinned root for the URL the device talks to
(sync/wire/credential.py). Running it again is harmless: the same key enrolls as the same device, and
files are only replaced atomically.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.base import i18n
from scanner.base.errors import CheckpointError, KeyFileError, TrustError, words
from scanner.base.fsutil import atomic_write
from scanner.base.timeutil import now_ms
from scanner.cards.keys import public_pem
from scanner.cards.trust import load_root
from sync import credential, trustupdate
from sync.agent import refresh_bundle
from sync.client import RejectedError, SyncClient
from sync.state import LEGACY_KEY_FILES, DeviceConfig, StateFile
from sync.wire import identity, protocol
from sync.wire.credential import CredentialError, open_credential

BUNDLE_POLL_S = 2.0  # how often --wait-bundle asks the server again


class ProvisionError(CheckpointError):
    code = "provision"


@dataclass(frozen=True, slots=True)
class ProvisionResult:
    state_dir: str
    device_id: str
    checkpoint_id: str
    server_url: str
    key_created: bool
    root: str  # "pinned" (given with --trust-root) or "kept" (pinned before, in the state directory)
    bundle_version: int | None
    bundle: str  # what happened to the bundle: installed, not_modified, none (the server has none yet)
    server_id: str  # from the server's credential
    credential_serial: int

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}


def pinned_root(state_dir: str | os.PathLike, trust_root: str | os.PathLike | None):
    """(the root this device trusts, "pinned" | "kept"): ``trust_root`` (from the installation media),
    else the one pinned in the state directory before. ProvisionError ``no_trust_root`` without
    either: a device never takes its root from the network."""
    path = trust_root if trust_root is not None else Path(state_dir) / trustupdate.ROOT_NAME
    if trust_root is None and not Path(path).exists():
        raise ProvisionError("no trust root: give --trust-root ROOT.pub (from the installation media) or "
                             "[enroll] trust_root in the config; a device does not take its root from a server",
                             code="no_trust_root", text=i18n.text("cli_error.no_trust_root"))
    try:
        return load_root(path), "pinned" if trust_root is not None else "kept"
    except KeyFileError as exc:
        raise ProvisionError(f"trust root: {exc}", code="no_trust_root",
                             text=exc.text and i18n.text("cli_error.trust_root", what=exc.text)) from None


def provision(server_url: str, token: str, state_dir: str | os.PathLike, *, ca_file: str | None = None,
              trust_root: str | os.PathLike | None = None, wait_bundle_s: float = 0.0,
              connect_timeout: float = 10.0, read_timeout: float = 120.0) -> ProvisionResult:
    """Enroll with the server at ``server_url`` (see the module docstring). ``wait_bundle_s``: when
    the server has no trust bundle yet, ask again for this long before giving up (bundle "none")."""
    state = Path(state_dir)
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    root, root_mode = pinned_root(state, trust_root)
    key, created = identity.load_or_create(state)
    client = SyncClient(server_url, key, ca_file=ca_file, connect_timeout=connect_timeout, read_timeout=read_timeout)
    try:
        doc = client.enroll(token)
        device_id, checkpoint_id = doc.get("device_id"), doc.get("checkpoint_id")
        if device_id != identity.device_id(key) or not isinstance(checkpoint_id, str) or not checkpoint_id:
            raise ProvisionError("enrollment answer names another device or no checkpoint",
                                 text=i18n.text("cli_error.enroll_answer", url=client.base_url))
        cred_text = doc.get("server_credential")
        if not isinstance(cred_text, str) or not cred_text:
            raise ProvisionError(f"the server at {client.base_url} has no credential signed by the trust root "
                                 "(the operator issues one: `checkpoint issuer server-credential`, then "
                                 "`checkpoint server credential publish`); nothing kept",
                                 code="credential_missing",
                                 text=i18n.text("cli_error.not_vouched", url=client.base_url,
                                                what=i18n.text("error.credential_missing")))
        try:
            cred = open_credential(cred_text.encode("utf-8"), [root])
            cred.check_url(client.base_url)
        except CredentialError as exc:
            raise ProvisionError(f"the server at {client.base_url} is not vouched for by the trust root: {exc}; "
                                 "nothing kept", code=exc.code,
                                 text=i18n.text("cli_error.not_vouched", url=client.base_url,
                                                what=words(exc) or str(exc))) from None
        if doc.get("root_public_key"):
            try:
                server_root = serialization.load_pem_public_key(str(doc["root_public_key"]).encode("ascii"))
            except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
                raise ProvisionError("enrollment answer has an unreadable trust root",
                                     text=i18n.text("cli_error.enroll_answer_root", url=client.base_url)) from None
            if not isinstance(server_root, ed25519.Ed25519PublicKey) or public_pem(server_root) != public_pem(root):
                raise ProvisionError("the server publishes bundles of another root than the one pinned",
                                     code="root_mismatch")
        # everything checked: only now does this device keep anything of this server
        atomic_write(state / trustupdate.ROOT_NAME, public_pem(root))
        credential.install(state, cred.data, [root], client.base_url, replace=True)
        for name in LEGACY_KEY_FILES:  # keys of older versions, never vouched for by the root
            (state / name).unlink(missing_ok=True)
        DeviceConfig(device_id, checkpoint_id, client.base_url, ca_file, now_ms()).save(state)
        roots = [root]
        bundle_status, version = "none", None
        if doc.get("bundle_version") is not None:
            inline = doc.get("bundle")
            try:
                cur = trustupdate.current(state, roots)
            except TrustError:
                cur = None
            if inline and (cur is None or cur[1].version < doc["bundle_version"]):
                b = trustupdate.install(state, protocol.unb64(inline, "bundle", 2 * 1024 * 1024), roots,
                                        min_version=cur[1].version if cur else None)
                bundle_status, version = "installed", b.version
            else:
                kind, refreshed = refresh_bundle(client, state, roots)
                bundle_status = "not_modified" if kind == "not_modified" else "installed"
                version = refreshed.version if refreshed is not None else None
        elif wait_bundle_s > 0:
            bundle_status, version = _wait_for_bundle(client, state, roots, wait_bundle_s)
        files = StateFile(state)
        with files.lock():
            st = files.load()
            installed = trustupdate.current(state, roots) if version is not None else None
            if installed is not None:
                bundle = installed[1]
                st.trust_version, st.trust_issued_at, st.trust_checked_ms = bundle.version, bundle.issued_at, now_ms()
            if client.last_clock_offset_ms is not None:
                st.note_clock(client.last_clock_offset_ms)
            files.save(st)
    finally:
        client.close()
    return ProvisionResult(str(state), device_id, checkpoint_id, client.base_url, created, root_mode, version,
                           bundle_status, cred.server_id, cred.serial)


def _wait_for_bundle(client: SyncClient, state: Path, roots, wait_s: float) -> tuple[str, int | None]:
    """Ask the server for its first bundle until it has one or ``wait_s`` passes."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            _, bundle = refresh_bundle(client, state, roots)
            return "installed", bundle.version if bundle is not None else None
        except RejectedError as exc:
            if exc.code != protocol.E_NO_BUNDLE:
                raise
        left = deadline - time.monotonic()
        if left <= 0:
            return "none", None
        time.sleep(min(BUNDLE_POLL_S, left))
