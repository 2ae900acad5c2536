"""Provisioning the appliance: the state directory with its owner and modes, enrollment (sync's
part, sync.provision: only with a server the pinned root vouches for), the pinned root checked
against an enrollment code before anything is sent, and the final config.

`provision_appliance` is what `checkpoint provision --config FILE` and zero-touch enrollment run.
It is idempotent: running it again re-enrolls the same key as the same device, fixes owners and
modes, and leaves an existing config file as it is (after checking it). docs/provisioning.md.
"""
from __future__ import annotations

import grp
import logging
import os
import pwd
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

from scanner.appliance.config import Config, ConfigError, discover_inputs, load
from scanner.base.errors import CheckpointError
from scanner.base.fsutil import atomic_write
from scanner.base.paths import DEFAULT_STATE_DIR
from sync.provision import pinned_root, provision
from sync.wire.enrollcode import root_fingerprint

log = logging.getLogger(__name__)

SERVICE_USER = "checkpoint"


class ProvisioningError(CheckpointError):
    code = "provision"


@dataclass(frozen=True, slots=True)
class ApplianceProvisioned:
    """What provisioning did: the enrollment (sync's result) and the appliance's part."""

    state_dir: str
    device_id: str
    checkpoint_id: str
    server_url: str
    key_created: bool
    root: str
    bundle_version: int | None
    bundle: str  # installed, not_modified, or none: the server has published no trust bundle yet
    server_id: str
    owner: str | None  # the user the state directory belongs to (None: left as the caller's)
    config_path: str | None
    config: str  # "written", "kept" (existed and is valid) or "none"

    def to_dict(self) -> dict:
        return asdict(self)


def service_owner(user: str | None = SERVICE_USER) -> tuple[int, int] | None:
    """(uid, gid) of the service user when running as root and it exists; else None (no chown)."""
    if os.geteuid() != 0 or not user:
        return None
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid


def secure_state_dir(state_dir: Path, owner: tuple[int, int] | None) -> None:
    """Create the state directory (0700) and give it and everything in it to ``owner``; files
    keep at most 0600 for secrets and never any access for others."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    for root, dirs, files in os.walk(state_dir):
        for name in dirs + files:
            p = Path(root) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                continue
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o007:
                os.chmod(p, mode & ~0o007)
            if owner is not None and (st.st_uid, st.st_gid) != owner:
                os.chown(p, *owner)
    if owner is not None:
        os.chown(state_dir, *owner)


def render_config(state_dir: Path, server_url: str, inputs: dict) -> str:
    """A minimal config file for a provisioned device: its state directory, server and inputs."""
    lines = ["# Written by `checkpoint provision`; see docs/configuration.md for every key.", "",
             "[device]", f"state_dir = {_q(str(state_dir))}", "", "[sync]", f"server = {_q(server_url)}", ""]
    lines += ["# No [[camera]], [[hid]] or [[serial]] table: readers named by the udev rules and the first",
              "# camera are found automatically, also when plugged in later. Found now:"]
    for kind, tables in inputs.items():
        for table in tables:
            lines.append(f"#   [[{kind}]] " + ", ".join(f"{k} = {_q(v)}" for k, v in table.items()))
    if not inputs:
        lines.append("#   (nothing)")
    return "\n".join(lines) + "\n"


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def provision_appliance(server_url: str | None, token: str, *, config_path: str | os.PathLike | None = None,
                        state_dir: str | os.PathLike | None = None, ca_file: str | None = None,
                        trust_root: str | os.PathLike | None = None, root_sha256: str | None = None,
                        owner_user: str | None = SERVICE_USER, write_config: bool = True,
                        dev: str = "/dev", wait_bundle_s: float = 0.0) -> ApplianceProvisioned:
    """Enroll this device and leave it ready to run (see the module docstring).

    ``config_path``: an existing file is checked and its state directory, server, CA file and
    root pin are used; a missing one is written (with the readers and camera found) unless
    ``write_config`` is False. The root is ``trust_root``, the config's ``[enroll] trust_root``
    or the one pinned before; there must be one. ``root_sha256`` (from an enrollment code) must
    be its fingerprint, else the server is not even contacted.
    """
    config: Config | None = None
    config_file = Path(config_path) if config_path is not None else None
    if config_file is not None and config_file.exists():
        try:
            config = load(config_file)
        except ConfigError as exc:
            raise ProvisioningError(f"{config_file}: {'; '.join(exc.lines())}", code="config") from None
    state = Path(state_dir) if state_dir is not None else (config.state_dir if config else Path(DEFAULT_STATE_DIR))
    if config is not None:
        server_url = server_url or config.sync.server
        ca_file = ca_file or (str(config.sync.ca_file) if config.sync.ca_file else None)
        if trust_root is None and config.enroll.trust_root:
            trust_root = config.enroll.trust_root
    if not server_url:
        raise ProvisioningError("no server: give --server URL or set [sync] server in the config")
    root, _ = pinned_root(state, trust_root)
    if root_sha256 is not None and root_fingerprint(root) != root_sha256:
        raise ProvisioningError("the enrollment code names another trust root than this device's; nothing "
                                "sent to its server (check the code, or the device's trust root)", code="root_mismatch")
    owner = service_owner(owner_user)
    secure_state_dir(state, owner)
    res = provision(server_url, token, state, ca_file=ca_file, trust_root=trust_root, wait_bundle_s=wait_bundle_s)
    secure_state_dir(state, owner)  # the files enrollment wrote belong to the service too
    written = "none"
    if config is not None:
        written = "kept"
    elif config_file is not None and write_config:
        config_file.parent.mkdir(parents=True, exist_ok=True)
        text = render_config(state, res.server_url, discover_inputs(dev))
        atomic_write(config_file, text.encode("utf-8"), 0o644)
        written = "written"
        log.info("provision: wrote %s", config_file)
    owner_name = None
    if owner is not None:
        owner_name = pwd.getpwuid(owner[0]).pw_name
        with_group = grp.getgrgid(owner[1]).gr_name
        log.info("provision: %s belongs to %s:%s", state, owner_name, with_group)
    return ApplianceProvisioned(str(state), res.device_id, res.checkpoint_id, res.server_url, res.key_created,
                                res.root, res.bundle_version, res.bundle, res.server_id, owner_name,
                                str(config_file) if config_file else None, written)
