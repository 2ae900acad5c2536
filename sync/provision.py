"""Enrollment, the sync part of `checkpoint provision`: state directory, device key, enroll with a
one-time token, and write what the device needs (device.json, the server's sealing key, the
pinned trust root, the current trust bundle). Running it again is harmless: the same key enrolls
as the same device, and files are only replaced atomically. The daemon issue adds the config file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner import sealing
from scanner.errors import CheckpointError, KeyFileError, TrustError
from scanner.keys import public_pem
from scanner.trust import load_root

from . import identity, protocol, trustupdate
from .agent import now_ms, refresh_bundle
from .client import SyncClient
from .state import PULL_PUB_NAME, SEALING_PUB_NAME, DeviceConfig, StateFile


class ProvisionError(CheckpointError):
    code = "provision"


@dataclass(frozen=True, slots=True)
class ProvisionResult:
    state_dir: str
    device_id: str
    checkpoint_id: str
    server_url: str
    key_created: bool
    root: str  # "pinned" (given with --trust-root), "server" (taken at enrollment) or "none"
    bundle_version: int | None
    bundle: str  # what happened to the bundle: installed, not_modified, none

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}


def provision(server_url: str, token: str, state_dir: str | os.PathLike, *, ca_file: str | None = None,
              trust_root: str | os.PathLike | None = None, connect_timeout: float = 10.0,
              read_timeout: float = 120.0) -> ProvisionResult:
    state = Path(state_dir)
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    pinned = None
    if trust_root is not None:
        try:
            pinned = load_root(trust_root)
        except KeyFileError as exc:
            raise ProvisionError(f"--trust-root: {exc}") from None
    key, created = identity.load_or_create(state)
    client = SyncClient(server_url, key, ca_file=ca_file, connect_timeout=connect_timeout, read_timeout=read_timeout)
    try:
        doc = client.enroll(token)
        device_id, checkpoint_id = doc.get("device_id"), doc.get("checkpoint_id")
        if device_id != identity.device_id(key) or not isinstance(checkpoint_id, str) or not checkpoint_id:
            raise ProvisionError("enrollment answer names another device or no checkpoint")
        try:
            seal_pub = sealing.load_public_key(str(doc.get("sealing_public_key", "")).encode("ascii"))
        except (CheckpointError, UnicodeEncodeError, ValueError):
            raise ProvisionError("enrollment answer has no usable sealing key") from None
        server_root = None
        if doc.get("root_public_key"):
            try:
                server_root = serialization.load_pem_public_key(str(doc["root_public_key"]).encode("ascii"))
            except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
                raise ProvisionError("enrollment answer has an unreadable trust root") from None
        pull_pub = None
        if doc.get("pull_public_key"):
            try:
                pull_pub = serialization.load_pem_public_key(str(doc["pull_public_key"]).encode("ascii"))
            except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
                pull_pub = None
            if not isinstance(pull_pub, ed25519.Ed25519PublicKey):
                raise ProvisionError("enrollment answer has an unreadable pull key")
        root_mode = "none"
        root_path = state / trustupdate.ROOT_NAME
        if pinned is not None:
            if server_root is not None and public_pem(server_root) != public_pem(pinned):
                raise ProvisionError("the server publishes bundles of another root than --trust-root")
            trustupdate.atomic_write(root_path, public_pem(pinned))
            root_mode = "pinned"
        elif root_path.exists():
            root_mode = "pinned"  # kept from an earlier provisioning
            if server_root is not None and public_pem(server_root) != root_path.read_bytes():
                raise ProvisionError(f"the server's trust root differs from {root_path}")
        elif server_root is not None:
            trustupdate.atomic_write(root_path, public_pem(server_root))
            root_mode = "server"
        trustupdate.atomic_write(state / SEALING_PUB_NAME, sealing.public_key_pem(seal_pub))
        if pull_pub is not None:  # the server may pull batches signed with it (sync/pull.py)
            trustupdate.atomic_write(state / PULL_PUB_NAME, public_pem(pull_pub))
        DeviceConfig(device_id, checkpoint_id, client.base_url, ca_file, now_ms()).save(state)
        roots = trustupdate.load_roots(state)
        bundle_status, version = "none", None
        if roots and doc.get("bundle_version") is not None:
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
                kind, b = refresh_bundle(client, state, roots)
                bundle_status = "not_modified" if kind == "not_modified" else "installed"
                version = b.version if b is not None else None
        files = StateFile(state)
        with files.lock():
            st = files.load()
            if version is not None:
                bundle = trustupdate.current(state, roots)[1]
                st.trust_version, st.trust_issued_at, st.trust_checked_ms = bundle.version, bundle.issued_at, now_ms()
            if client.last_clock_offset_ms is not None:
                st.note_clock(client.last_clock_offset_ms)
            files.save(st)
    finally:
        client.close()
    return ProvisionResult(str(state), device_id, checkpoint_id, client.base_url, created, root_mode, version,
                           bundle_status)
