"""`checkpoint doctor`: is this device able to do its job? One check per part, pass/warn/fail + a fix.

Checks: configuration, state directory, provisioning, readiness (scanner/appliance/readiness.py: the same
answer as the health API, the kiosk and `log stats`), each camera (delivers a frame), each reader
(present and readable), GPIO, the entry log (writable, integrity), free disk, the clock (NTP /
server), the trust bundle (present, age), the server's root-signed credential, the server
(reachable), the sync backlog and, for a gate of a site, the peers it hears. Run by
itself it opens the devices; inside the daemon (``live``) it reads the running parts' health
instead, because the daemon holds the devices. The same report as JSON feeds the status page.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

from hardware.camera import SourceUnavailable, make_source
from hardware.readers_hid import _NotFound, find_device
from scanner.appliance import readiness
from scanner.appliance.config import Config, discover_inputs
from scanner.base.errors import CheckpointError
from scanner.base.timeutil import now_ms
from scanner.cards.trust import load_device_trust
from scanner.store import clock as clockmod
from sync import credential
from sync.state import DeviceConfig, StateError, StateFile, SyncState
from sync.wire.credential import CredentialError

PASS, WARN, FAIL = "pass", "warn", "fail"
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


@dataclass(frozen=True, slots=True)
class Report:
    checks: tuple[Check, ...]
    at: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    @property
    def worst(self) -> str:
        statuses = {c.status for c in self.checks}
        return FAIL if FAIL in statuses else WARN if WARN in statuses else PASS

    def to_dict(self) -> dict:
        return {"ok": self.ok, "worst": self.worst, "at": round(self.at, 3),
                "checks": [asdict(c) for c in self.checks]}


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


# ---------------------------------------------------------------- the checks


def check_state_dir(state: Path) -> Check:
    if not state.is_dir():
        return Check("state_dir", FAIL, f"{state} does not exist",
                     "run `checkpoint provision` (or start the service once: systemd creates it)")
    st = state.stat()
    if not os.access(state, os.W_OK):
        return Check("state_dir", FAIL, f"{state} is not writable by this user",
                     "run as the service user (sudo -u checkpoint ...) or fix its owner")
    if stat.S_IMODE(st.st_mode) & 0o077:
        return Check("state_dir", WARN, f"{state} has mode {stat.S_IMODE(st.st_mode):o}",
                     f"chmod 700 {state}")
    return Check("state_dir", PASS, f"{state} (mode 700)")


def check_provisioned(config: Config) -> Check:
    try:
        dev = DeviceConfig.load(config.state_dir)
    except StateError as exc:
        if not config.sync.enabled:
            if config.device.checkpoint_id:
                return Check("provisioned", PASS, f"standalone (no server) at {config.device.checkpoint_id}")
            return Check("provisioned", FAIL, "no server and no [device] checkpoint_id",
                         "set [device] checkpoint_id, or enable sync and run `checkpoint provision`")
        if exc.code != "not_provisioned":
            return Check("provisioned", FAIL, str(exc), "run `checkpoint provision` again")
        if not readiness.root_pinned(config):
            return Check("provisioned", WARN, "not provisioned, and no trust root to check a server with",
                         readiness.FIXES[readiness.NO_TRUST_ROOT])
        how = ("show it an enrollment QR (zero-touch) or " if config.enroll.qr else "")
        return Check("provisioned", WARN, "not provisioned",
                     f"{how}run `checkpoint provision --server URL --token T`")
    return Check("provisioned", PASS, f"device {dev.device_id} at checkpoint {dev.checkpoint_id}")


def check_ready(ready: readiness.Readiness) -> Check:
    """The device's readiness (the same answer as the health API and the kiosk)."""
    if ready.ready:
        return Check("ready", PASS, f"ready to check cards ({ready.detail})")
    status = WARN if ready.code == readiness.NOT_PROVISIONED else FAIL
    return Check("ready", status, f"{ready.message('en')} ({ready.code}: {ready.detail})", ready.fix)


def check_credential(config: Config) -> Check | None:
    """The server's root-signed credential (provisioned devices only): holder details are sealed to
    its key only."""
    try:
        DeviceConfig.load(config.state_dir)
    except StateError:
        return None
    try:
        cred = credential.load(config.state_dir)
    except (CredentialError, StateError) as exc:
        return Check("credential", WARN, f"no valid server credential ({exc.code}: {exc}): holder details are "
                     "not stored", "`checkpoint sync now` fetches it from the server; the operator issues it "
                     "(`checkpoint issuer server-credential`) and publishes it "
                     "(`checkpoint server credential publish`)")
    return Check("credential", PASS, f"server {cred.server_id} (serial {cred.serial}) vouched for by the trust root; "
                 f"sealing key {cred.sealing_key_id()}")


def _read_one_frame(cfg, timeout: float) -> tuple[Any, str | None]:
    out: list = [None, "no frame within the time limit"]

    def grab() -> None:
        try:
            src = make_source(cfg)
            src.open()
            try:
                frame = src.read()
            finally:
                src.close()
            out[:] = [frame, None if frame is not None else "opened, but gave no frame"]
        except SourceUnavailable as exc:
            out[:] = [None, f"{exc.code}: {exc}"]
        except Exception as exc:  # noqa: BLE001 - a driver error must become a failed check, not a crash
            out[:] = [None, f"{type(exc).__name__}: {exc}"]

    t = threading.Thread(target=grab, name="doctor-camera", daemon=True)
    t.start()
    t.join(timeout)
    return out[0], out[1]


def check_camera(cfg, timeout: float = 8.0) -> Check:
    name = f"camera:{cfg.source_id}"
    frame, problem = _read_one_frame(cfg, timeout)
    if frame is not None:
        return Check(name, PASS, f"delivers frames ({frame.shape[1]}x{frame.shape[0]})")
    fix = "check the cable and the device path; `ls /dev/video* /dev/v4l/by-id`"
    if problem and "permission" in problem:
        fix = "add the service user to the 'video' group"
    elif problem and "library_missing" in problem:
        fix = "sudo apt install python3-picamera2 and create the venv with --system-site-packages"
    elif problem and "busy" in problem.lower():
        fix = "another program (the running daemon?) holds the camera: see `checkpoint doctor` on the running daemon"
    return Check(name, FAIL, problem or "no frame", fix)


def check_serial(cfg) -> Check:
    name = f"reader:{cfg.source_id}"
    port = cfg.port
    if not os.path.exists(port):
        return Check(name, FAIL, f"{port} not present", "plug the reader in; `ls /dev/serial/by-id /dev/checkpoint`")
    if not os.access(port, os.R_OK | os.W_OK):
        return Check(name, FAIL, f"{port}: permission denied", "add the service user to the 'dialout' group")
    return Check(name, PASS, f"{port} present")


def check_hid(cfg) -> Check:
    name = f"reader:{cfg.source_id}"
    if cfg.vendor_product is None:
        if not os.path.exists(cfg.device):
            return Check(name, FAIL, f"{cfg.device} not present", "plug the reader in; `ls /dev/input/by-id`")
        if not os.access(cfg.device, os.R_OK):
            return Check(name, FAIL, f"{cfg.device}: permission denied", "add the service user to the 'input' group")
        return Check(name, PASS, f"{cfg.device} present")
    try:
        import evdev  # optional: Linux only (readers by vendor:product)
    except ImportError:
        return Check(name, FAIL, "evdev is not installed", "pip install evdev (Linux only)")
    try:
        dev = find_device(evdev, cfg)
    except _NotFound as exc:
        fix = ("add the service user to the 'input' group" if exc.code == "permission_denied"
               else "plug the reader in; `lsusb` shows vendor:product")
        return Check(name, FAIL, f"{exc.code}: {exc}", fix)
    path = dev.path
    dev.close()
    return Check(name, PASS, f"{cfg.device} at {path}")


def check_gpio(config: Config) -> Check:
    fb = config.feedback_config()
    if not fb.pins():
        return Check("gpio", PASS, "no GPIO parts configured (lights on the console)")
    if fb.pin_factory == "mock":
        return Check("gpio", PASS, "simulated pins (pin_factory = \"mock\")")
    chips = sorted(glob.glob("/dev/gpiochip*"))
    if not chips:
        return Check("gpio", WARN, "no /dev/gpiochip*: not a Raspberry Pi; lights shown on the console",
                     "run on the Pi, or set [feedback] pin_factory = \"mock\"")
    if not all(os.access(c, os.R_OK | os.W_OK) for c in chips):
        return Check("gpio", FAIL, f"{chips[0]}: permission denied", "add the service user to the 'gpio' group")
    return Check("gpio", PASS, f"{len(fb.pins())} pins, {', '.join(os.path.basename(c) for c in chips)} accessible")


def check_database(db: Path, min_free_mb: int) -> Check:
    if not db.exists():
        return Check("database", WARN, f"{db} not created yet", "start the daemon once (it creates the log)")
    if not os.access(db, os.R_OK | os.W_OK) or not os.access(db.parent, os.W_OK):
        return Check("database", FAIL, f"{db} is not writable by this user",
                     "run as the service user, or fix the owner (systemd does at the next start)")
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
            n = conn.execute("SELECT count(*) FROM entries WHERE batch_id IS NULL").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return Check("database", FAIL, f"{db}: {exc}", "move the file aside and restart (a new log starts)")
    if result != "ok":
        return Check("database", FAIL, f"integrity: {result[:200]}",
                     "copy the file off for the server, then move it aside")
    return Check("database", PASS, f"{db}: writable, integrity ok ({n} unsynced)")


def check_disk(state: Path, min_free_mb: int) -> Check:
    try:
        free = shutil.disk_usage(state if state.exists() else state.parent).free
    except OSError as exc:
        return Check("disk", FAIL, f"cannot read free space: {exc.strerror}", "check the SD card")
    detail = f"{free // MIB} MiB free"
    if free < min_free_mb * MIB:
        status = FAIL if free < 10 * MIB else WARN
        return Check("disk", status, f"{detail} (below {min_free_mb} MiB)",
                     "sync (synced entries are purged), or free space on the SD card")
    return Check("disk", PASS, detail)


def check_clock(config: Config, live_status=None) -> Check:
    kernel = clockmod.read()
    max_h = config.clock.max_unconfirmed_h
    closed = config.clock.when_unconfirmed == "closed"
    if kernel.state == clockmod.SYNCED:
        return Check("clock", PASS, "synchronised (NTP)")
    confirmed_at, by = None, None
    if live_status is not None:
        if live_status.confirmed and not live_status.behind:
            return Check("clock", PASS, f"confirmed by {live_status.by} (kernel: {kernel.state})")
        confirmed_at, by = live_status.confirmed_at, live_status.by
    else:
        try:
            doc = json.loads((config.state_dir / "clock.json").read_bytes())
            confirmed_at, by = (doc.get("confirmed_ms") or 0) / 1000 or None, doc.get("confirmed_by")
        except (OSError, ValueError, AttributeError):
            pass
    age = None if confirmed_at is None else time.time() - confirmed_at
    last = "never confirmed" if age is None else f"last confirmed by {by} {_age(age)} ago"
    overdue = age is None or age > max_h * 3600
    status = FAIL if (overdue and closed) else WARN
    return Check("clock", status, f"not synchronised ({kernel.state}; {last})",
                 "give the device network for NTP (`timedatectl`; a Pi has no battery clock) or let it reach "
                 "the server")


def check_trust(config: Config) -> Check:
    try:
        store = load_device_trust(config.state_dir, config.trust.roots, config.trust.files)
    except (CheckpointError, OSError) as exc:
        return Check("trust", FAIL, f"refused: {exc}",
                     "`checkpoint sync now` fetches a good bundle; check [trust] files")
    if store.key_count == 0:
        return Check("trust", FAIL, "no trusted issuer keys", readiness.FIXES[readiness.NO_TRUST])
    if not store.bundles:
        return Check("trust", PASS, f"{store.key_count} keys from files (no bundle)")
    newest = max(store.bundles, key=lambda b: b.version)
    age = time.time() - newest.issued_at
    limit = config.trust.max_age_h * 3600
    stale = age > limit or time.time() > newest.expires_at
    detail = (f"bundle v{newest.version}, {_age(max(0.0, age))} old, {store.key_count} keys, "
              f"{len(store.revoked_cards)} revoked")
    if stale:
        closed = config.trust.when_stale == "closed"
        return Check("trust", FAIL if closed else WARN, detail + " (stale: past its limit or expiry)",
                     "let the device reach the server (`checkpoint sync now`), or publish a fresh bundle")
    return Check("trust", PASS, detail)


def check_server(config: Config, timeout: float = 5.0) -> Check:
    if not config.sync.enabled:
        return Check("server", PASS, "sync disabled")
    try:
        dev = DeviceConfig.load(config.state_dir)
    except StateError:
        return Check("server", WARN, "not provisioned: no server yet", "run `checkpoint provision`")
    try:
        r = requests.get(dev.server_url + "/v1/health", timeout=(timeout, timeout), verify=dev.ca_file or True,
                         allow_redirects=False)
    except requests.exceptions.SSLError as exc:
        return Check("server", FAIL, f"{dev.server_url}: TLS: {type(exc).__name__}",
                     "check the server certificate, the device clock, or the CA file given at provisioning")
    except requests.RequestException as exc:
        return Check("server", FAIL, f"{dev.server_url}: {type(exc).__name__}",
                     "check the network (Wi-Fi, mobile link) and the server address")
    if not r.ok:
        return Check("server", FAIL, f"{dev.server_url}: HTTP {r.status_code}", "check the server")
    return Check("server", PASS, f"{dev.server_url} reachable")


def check_sync(config: Config, backlog: tuple[int, int | None] | None, state: Callable[[], SyncState]) -> Check:
    """Sync's alarms, quarantine and backlog; ``state`` gives sync's state (the running agent's, or
    its file when the daemon does not run)."""
    if not config.sync.enabled:
        return Check("sync", PASS, "sync disabled")
    try:
        st = state()
    except StateError as exc:
        return Check("sync", FAIL, str(exc), "delete sync-state.json (it is rebuilt from the server)")
    if "sync_auth_failed" in st.alarms:
        return Check("sync", FAIL, f"the server refuses this device ({st.last_error_code})",
                     "re-provision with a new token, or ask the server's operator")
    pending, oldest = backlog if backlog is not None else (None, None)
    parts = []
    if pending is not None:
        parts.append(f"{pending} pending")
    if oldest is not None:
        parts.append(f"oldest {_age(max(0.0, time.time() - oldest / 1000))}")
    if st.last_success_ms:
        parts.append(f"last success {_age(max(0.0, time.time() - st.last_success_ms / 1000))} ago")
    detail = ", ".join(parts) or "nothing yet"
    if st.quarantined:
        return Check("sync", WARN, f"{detail}; {len(st.quarantined)} batches quarantined",
                     "see `checkpoint sync status`; `checkpoint sync now --retry-quarantined`")
    too_many = pending is not None and pending > config.sync.backlog_max
    too_old = oldest is not None and now_ms() - oldest > config.sync.backlog_max_age_h * 3_600_000
    if too_many or too_old:
        return Check("sync", WARN, f"{detail} (backlog over its limit)",
                     "check the link to the server; `checkpoint sync export --to /media/usb` for sites without one")
    return Check("sync", PASS, detail)


def check_site(config: Config, summary: dict | None) -> Check | None:
    """A gate of a site: the peers it hears, their last message and clock skew (the running
    daemon's view; without it, only that the gate is configured)."""
    site = config.site
    if site is None:
        return None
    if summary is None:
        return Check("site", PASS, f"gate of site {site.site_id}; its peers are seen while the daemon runs")
    now_ms = time.time() * 1000
    peers = [f"{p['device_id']} at {p['address']}: last {p['last_kind']} "
             f"{_age(max(0.0, (now_ms - p['last_heard_ms']) / 1000))} ago, clock {p['skew_ms'] / 1000:+.2f} s"
             + ("" if p["alive"] else " (lost)") for p in summary["peers"]]
    detail = (f"site {summary['site_id']}: {sum(p['alive'] for p in summary['peers'])}/{len(peers)} peers heard; "
              f"occupancy {summary['occupancy']}" + (f"/{summary['capacity']}" if summary["capacity"] else "")
              + ("; " + "; ".join(peers) if peers else ""))
    if summary["isolated"]:
        return Check("site", WARN, f"isolated (entries {summary['when_isolated']}): {detail}",
                     "check the LAN link to the other gates, and that they run with the same [site] site_id")
    return Check("site", PASS, detail)


def _offline_backlog(config: Config) -> tuple[int, int | None] | None:
    db = config.db_path
    if not db.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            n = conn.execute("SELECT count(*) FROM entries WHERE batch_id IS NULL").fetchone()[0]
            row = conn.execute("SELECT at_ms FROM entries WHERE batch_id IS NULL ORDER BY seq LIMIT 1").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return n, row[0] if row else None


# ---------------------------------------------------------------- running them


def run(config: Config | None, *, config_problems: Sequence[str] = (), live=None,
        server_timeout: float = 5.0, camera_timeout: float = 8.0) -> Report:
    """Every check for ``config``. ``live`` (the running daemon) supplies input, log and clock
    health instead of opening devices the daemon holds."""
    if config is None:
        return Report((Check("config", FAIL, "; ".join(config_problems[:3]) or "no configuration",
                             "`checkpoint config check FILE` lists every problem and its fix"),))
    checks = [Check("config", PASS, str(config.path) if config.path else "built-in defaults (no file)")]
    checks.append(check_state_dir(config.state_dir))
    checks.append(check_provisioned(config))
    checks.append(check_ready(live.readiness() if live is not None else readiness.of_config(config)))
    if live is not None:
        checks += live.input_checks()
    else:
        checks += [check_camera(c, camera_timeout) for c in config.cameras()]
        checks += [check_serial(c) for c in config.serial_readers()]
        checks += [check_hid(c) for c in config.hid_readers()]
        if not config.has_inputs:
            found = discover_inputs()
            detail = ", ".join(t.get("device") or t.get("port") for ts in found.values() for t in ts)
            checks.append(Check("inputs", PASS if found else WARN, f"found automatically: {detail}" if found
                                else "no input configured and none found",
                                "" if found else "plug in a USB reader (see docs/provisioning.md#usb-readers) "
                                "or configure a [[camera]]"))
    checks.append(live.gpio_check() if live is not None else check_gpio(config))
    checks.append(check_database(config.db_path, config.log.min_free_mb))
    if live is not None:
        log_check = live.log_check()
        if log_check is not None:
            checks.append(log_check)
    checks.append(check_disk(config.state_dir, config.log.min_free_mb))
    checks.append(check_clock(config, live.clock_status() if live is not None else None))
    checks.append(check_trust(config))
    cred = check_credential(config)
    if cred is not None:
        checks.append(cred)
    site = check_site(config, live.site_summary() if live is not None else None)
    if site is not None:
        checks.append(site)
    checks.append(check_server(config, server_timeout))
    if live is not None:
        checks.append(check_sync(config, live.backlog(), live.sync_state))
    else:
        checks.append(check_sync(config, _offline_backlog(config), StateFile(config.state_dir).load))
    return Report(tuple(checks))


def table(report: Report) -> list[str]:
    """The report as lines for a terminal: status, check, detail; the fix under anything not passing."""
    width = max((len(c.name) for c in report.checks), default=5)
    lines = []
    for c in report.checks:
        lines.append(f"{c.status.upper():<4}  {c.name:<{width}}  {c.detail}")
        if c.status != PASS and c.fix:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {c.fix}")
    return lines
