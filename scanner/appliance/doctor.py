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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from cryptography.hazmat.primitives.asymmetric import ed25519

from hardware.camera import SourceUnavailable, make_source
from hardware.readers_hid import _NotFound, find_device
from scanner.appliance import readiness
from scanner.appliance.config import Config, discover_inputs
from scanner.base import i18n
from scanner.base.errors import CheckpointError, os_error_code, os_error_words, words
from scanner.base.i18n import text as _t
from scanner.base.timeutil import now_ms
from scanner.cards.trust import load_device_trust, load_root
from scanner.store import clock as clockmod
from scanner.store import synced
from sync import credential
from sync.site import credential as sitecred
from sync.state import DeviceConfig, StateError, StateFile, SyncState
from sync.trustupdate import load_roots
from sync.wire import identity
from sync.wire.credential import CredentialError

PASS, WARN, FAIL = "pass", "warn", "fail"
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Check:
    """One check: its id, pass/warn/fail, what was found and how to fix it (texts of the catalogue,
    in the reader's language; a ``{lang: text}`` mapping when read back from JSON)."""

    name: str
    status: str
    detail: i18n.Text | str | dict
    fix: i18n.Text | str | dict = ""

    def detail_in(self, lang: str | None = None) -> str:
        return i18n.render(self.detail, lang)

    def fix_in(self, lang: str | None = None) -> str:
        return i18n.render(self.fix, lang)

    def to_dict(self) -> dict:
        """``detail`` and ``fix`` in English (scripts match them), ``texts`` in every language."""
        return {"name": self.name, "status": self.status, "detail": self.detail_in("en"), "fix": self.fix_in("en"),
                "texts": {lang: {"detail": self.detail_in(lang), "fix": self.fix_in(lang)} for lang in i18n.LANGS}}

    @classmethod
    def from_dict(cls, d: dict) -> Check:
        texts = d.get("texts") or {}
        return cls(d["name"], d["status"], {lang: v["detail"] for lang, v in texts.items()} or d["detail"],
                   {lang: v["fix"] for lang, v in texts.items()} or d.get("fix", ""))


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
                "checks": [c.to_dict() for c in self.checks]}


_age = i18n.age


# ---------------------------------------------------------------- the checks


def check_state_dir(state: Path) -> Check:
    if not state.is_dir():
        return Check("state_dir", FAIL, _t("doctor.missing", path=state), _t("doctor.fix_state_dir"))
    st = state.stat()
    if not os.access(state, os.W_OK):
        return Check("state_dir", FAIL, _t("doctor.not_writable", path=state), _t("doctor.fix_owner"))
    if stat.S_IMODE(st.st_mode) & 0o077:
        return Check("state_dir", WARN, _t("doctor.mode", path=state, mode=f"{stat.S_IMODE(st.st_mode):o}"),
                     f"chmod 700 {state}")
    return Check("state_dir", PASS, _t("doctor.mode", path=state, mode="700"))


def check_provisioned(config: Config) -> Check:
    try:
        dev = DeviceConfig.load(config.state_dir)
    except StateError as exc:
        if not config.sync.enabled:
            if config.device.checkpoint_id:
                return Check("provisioned", PASS, _t("doctor.standalone", checkpoint=config.device.checkpoint_id))
            return Check("provisioned", FAIL, _t("doctor.no_checkpoint"), _t("doctor.fix_no_checkpoint"))
        if exc.code != "not_provisioned":
            return Check("provisioned", FAIL, str(exc), _t("doctor.fix_provision_again"))
        if not readiness.root_pinned(config):
            return Check("provisioned", WARN, _t("doctor.not_provisioned_no_root"),
                         readiness.fix_text(readiness.NO_TRUST_ROOT))
        return Check("provisioned", WARN, _t("doctor.not_provisioned"),
                     _t("doctor.fix_provision_qr" if config.enroll.qr else "doctor.fix_provision"))
    return Check("provisioned", PASS, _t("doctor.provisioned", device=dev.device_id, checkpoint=dev.checkpoint_id))


def check_ready(ready: readiness.Readiness) -> Check:
    """The device's readiness (the same answer as the health API and the kiosk)."""
    if ready.ready:
        return Check("ready", PASS, _t("doctor.ready", detail=ready.detail))
    status = WARN if ready.code == readiness.NOT_PROVISIONED else FAIL
    return Check("ready", status, _t("doctor.not_ready", message=_t(f"readiness.{ready.code}"), code=ready.code,
                                     detail=ready.detail),
                 readiness.fix_text(ready.code))


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
        return Check("credential", WARN, _t("doctor.no_credential", error=f"{exc.code}: {exc}"),
                     _t("doctor.fix_credential"))
    return Check("credential", PASS, _t("doctor.credential", server=cred.server_id, serial=cred.serial,
                                        sealing=cred.sealing_key_id()))


def _read_one_frame(cfg, timeout: float) -> tuple[Any, str | None]:
    out: list = [None, _t("doctor.no_frame_in_time")]

    def grab() -> None:
        try:
            src = make_source(cfg)
            src.open()
            try:
                frame = src.read()
            finally:
                src.close()
            out[:] = [frame, None if frame is not None else _t("doctor.no_frame")]
        except SourceUnavailable as exc:  # the reason in words, after its code (the fix is chosen by the code)
            out[:] = [None, i18n.text("doctor.source_problem", code=exc.code, device=str(cfg.device),
                                      what=i18n.text(f"input_reason.{exc.code}"))]
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
        return Check(name, PASS, _t("doctor.frames", size=f"{frame.shape[1]}x{frame.shape[0]}"))
    said = i18n.render(problem or "", "en")
    fix = _t("doctor.fix_camera")
    if "permission" in said:
        fix = _t("doctor.fix_group", group="video")
    elif "library_missing" in said:
        fix = _t("doctor.fix_picamera")
    elif "busy" in said.lower():
        fix = _t("doctor.fix_camera_busy")
    return Check(name, FAIL, problem or _t("doctor.no_frame"), fix)


def check_serial(cfg) -> Check:
    name = f"reader:{cfg.source_id}"
    port = cfg.port
    if not os.path.exists(port):
        return Check(name, FAIL, _t("doctor.absent", path=port),
                     _t("doctor.fix_plug", where="`ls /dev/serial/by-id /dev/checkpoint`"))
    if not os.access(port, os.R_OK | os.W_OK):
        return Check(name, FAIL, _t("doctor.denied", path=port), _t("doctor.fix_group", group="dialout"))
    return Check(name, PASS, _t("doctor.present", path=port))


def check_hid(cfg) -> Check:
    name = f"reader:{cfg.source_id}"
    if cfg.vendor_product is None:
        if not os.path.exists(cfg.device):
            return Check(name, FAIL, _t("doctor.absent", path=cfg.device),
                         _t("doctor.fix_plug", where="`ls /dev/input/by-id`"))
        if not os.access(cfg.device, os.R_OK):
            return Check(name, FAIL, _t("doctor.denied", path=cfg.device), _t("doctor.fix_group", group="input"))
        return Check(name, PASS, _t("doctor.present", path=cfg.device))
    try:
        import evdev  # optional: Linux only (readers by vendor:product)
    except ImportError:
        return Check(name, FAIL, _t("doctor.no_evdev"), _t("doctor.fix_evdev"))
    try:
        dev = find_device(evdev, cfg)
    except _NotFound as exc:
        fix = (_t("doctor.fix_group", group="input") if exc.code == "permission_denied"
               else _t("doctor.fix_plug", where="`lsusb`"))
        return Check(name, FAIL, f"{exc.code}: {exc}", fix)
    path = dev.path
    dev.close()
    return Check(name, PASS, _t("doctor.present", path=f"{cfg.device} → {path}"))


def check_gpio(config: Config) -> Check:
    fb = config.feedback_config()
    if not fb.pins():
        return Check("gpio", PASS, _t("doctor.gpio_none"))
    if fb.pin_factory == "mock":
        return Check("gpio", PASS, _t("doctor.gpio_mock"))
    chips = sorted(glob.glob("/dev/gpiochip*"))
    if not chips:
        return Check("gpio", WARN, _t("doctor.gpio_no_chip"), _t("doctor.fix_gpio_no_chip"))
    if not all(os.access(c, os.R_OK | os.W_OK) for c in chips):
        return Check("gpio", FAIL, _t("doctor.denied", path=chips[0]), _t("doctor.fix_group", group="gpio"))
    return Check("gpio", PASS, _t("doctor.gpio_ok", n=len(fb.pins()),
                                  chips=", ".join(os.path.basename(c) for c in chips)))


def check_database(db: Path, min_free_mb: int) -> Check:
    if not db.exists():
        return Check("database", WARN, _t("doctor.db_missing", path=db), _t("doctor.fix_db_missing"))
    if not os.access(db, os.R_OK | os.W_OK) or not os.access(db.parent, os.W_OK):
        return Check("database", FAIL, _t("doctor.not_writable", path=db), _t("doctor.fix_owner"))
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
            backlog = synced.unsynced_in_file(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return Check("database", FAIL, f"{db}: {exc}", _t("doctor.fix_db_broken"))
    if result != "ok":
        return Check("database", FAIL, _t("doctor.db_integrity", result=result[:200]), _t("doctor.fix_db_integrity"))
    if backlog is None:
        return Check("database", PASS, _t("doctor.db_ok_old_schema", path=db))
    return Check("database", PASS, _t("doctor.db_ok", path=db, n=backlog[0]))


def check_disk(state: Path, min_free_mb: int) -> Check:
    try:
        free = shutil.disk_usage(state if state.exists() else state.parent).free
    except OSError as exc:
        return Check("disk", FAIL, _t("doctor.disk_unreadable", error=exc.strerror), _t("doctor.fix_sd"))
    if free < min_free_mb * MIB:
        status = FAIL if free < 10 * MIB else WARN
        return Check("disk", status, _t("doctor.disk_low", n=free // MIB, limit=min_free_mb), _t("doctor.fix_disk"))
    return Check("disk", PASS, _t("doctor.disk_free", n=free // MIB))


def check_clock(config: Config, live_status=None) -> Check:
    kernel = clockmod.read()
    max_h = config.clock.max_unconfirmed_h
    closed = config.clock.when_unconfirmed == "closed"
    if kernel.state == clockmod.SYNCED:
        return Check("clock", PASS, _t("doctor.clock_ntp"))
    confirmed_at, by = None, None
    if live_status is not None:
        if live_status.confirmed and not live_status.behind:
            return Check("clock", PASS, _t("doctor.clock_confirmed", by=_t(f"clock_by.{live_status.by}"),
                                           kernel=_t(f"clock_kernel.{kernel.state}")))
        confirmed_at, by = live_status.confirmed_at, live_status.by
    else:
        try:
            doc = json.loads((config.state_dir / "clock.json").read_bytes())
            confirmed_at, by = (doc.get("confirmed_ms") or 0) / 1000 or None, doc.get("confirmed_by")
        except (OSError, ValueError, AttributeError):
            pass
    age = None if confirmed_at is None else time.time() - confirmed_at
    last = _t("doctor.clock_never") if age is None else _t("doctor.clock_last", by=_t(f"clock_by.{by}"), age=_age(age))
    overdue = age is None or age > max_h * 3600
    status = FAIL if (overdue and closed) else WARN
    return Check("clock", status, _t("doctor.clock_unsynced", kernel=_t(f"clock_kernel.{kernel.state}"), last=last),
                 _t("doctor.fix_clock"))


def check_trust(config: Config) -> Check:
    try:
        store = load_device_trust(config.state_dir, config.trust.roots, config.trust.files)
    except (CheckpointError, OSError) as exc:
        said = words(exc) or (os_error_words(exc) if isinstance(exc, OSError) else str(exc))
        code = exc.code if isinstance(exc, CheckpointError) else os_error_code(exc)
        return Check("trust", FAIL, _t("doctor.trust_refused", error=said, code=code), _t("doctor.fix_trust_refused"))
    if store.key_count == 0:
        return Check("trust", FAIL, _t("doctor.trust_none"), readiness.fix_text(readiness.NO_TRUST))
    if not store.bundles:
        return Check("trust", PASS, _t("doctor.trust_files", n=store.key_count))
    newest = max(store.bundles, key=lambda b: b.version)
    age = time.time() - newest.issued_at
    limit = config.trust.max_age_h * 3600
    stale = age > limit or time.time() > newest.expires_at
    detail = _t("doctor.trust_bundle", version=newest.version, age=_age(max(0.0, age)), keys=store.key_count,
                revoked=len(store.revoked_cards))
    if stale:
        closed = config.trust.when_stale == "closed"
        return Check("trust", FAIL if closed else WARN, _t("doctor.trust_stale", detail=detail),
                     _t("doctor.fix_trust_stale"))
    return Check("trust", PASS, detail)


def check_server(config: Config, timeout: float = 5.0) -> Check:
    if not config.sync.enabled:
        return Check("server", PASS, _t("doctor.sync_off"))
    try:
        dev = DeviceConfig.load(config.state_dir)
    except StateError:
        return Check("server", WARN, _t("doctor.no_server"), _t("doctor.fix_provision"))
    try:
        r = requests.get(dev.server_url + "/v1/health", timeout=(timeout, timeout), verify=dev.ca_file or True,
                         allow_redirects=False)
    except requests.exceptions.SSLError as exc:
        return Check("server", FAIL, f"{dev.server_url}: TLS: {type(exc).__name__}", _t("doctor.fix_tls"))
    except requests.RequestException as exc:
        return Check("server", FAIL, f"{dev.server_url}: {type(exc).__name__}", _t("doctor.fix_network"))
    if not r.ok:
        return Check("server", FAIL, f"{dev.server_url}: HTTP {r.status_code}", _t("doctor.fix_server"))
    return Check("server", PASS, _t("doctor.server_ok", url=dev.server_url))


def check_sync(config: Config, backlog: tuple[int, int | None] | None, state: Callable[[], SyncState]) -> Check:
    """Sync's alarms, quarantine and backlog; ``state`` gives sync's state (the running agent's, or
    its file when the daemon does not run)."""
    if not config.sync.enabled:
        return Check("sync", PASS, _t("doctor.sync_off"))
    try:
        st = state()
    except StateError as exc:
        return Check("sync", FAIL, str(exc), _t("doctor.fix_sync_state"))
    if "sync_auth_failed" in st.alarms:
        return Check("sync", FAIL, _t("doctor.sync_refused", code=st.last_error_code), _t("doctor.fix_sync_refused"))
    pending, oldest = backlog if backlog is not None else (None, None)
    parts: list[i18n.Text] = []
    if pending is not None:
        parts.append(_t("doctor.sync_pending", n=pending))
    if oldest is not None:
        parts.append(_t("doctor.sync_oldest", age=_age(max(0.0, time.time() - oldest / 1000))))
    if st.last_success_ms:
        parts.append(_t("doctor.sync_last", age=_age(max(0.0, time.time() - st.last_success_ms / 1000))))
    detail = _join(parts) if parts else _t("doctor.sync_nothing")
    if st.quarantined:
        return Check("sync", WARN, _t("doctor.sync_quarantined", detail=detail, n=len(st.quarantined)),
                     _t("doctor.fix_quarantined"))
    too_many = pending is not None and pending > config.sync.backlog_max
    too_old = oldest is not None and now_ms() - oldest > config.sync.backlog_max_age_h * 3_600_000
    if too_many or too_old:
        return Check("sync", WARN, _t("doctor.sync_backlog", detail=detail), _t("doctor.fix_backlog"))
    return Check("sync", PASS, detail)


def site_credential(config: Config, now: float
                    ) -> tuple[ed25519.Ed25519PrivateKey, sitecred.SiteCredential, list[ed25519.Ed25519PublicKey]]:
    """This gate's key, its site credential checked (a pinned root, this site, this device's key,
    in date at ``now``) and the roots it is checked against: what the daemon starts the site with
    and what the doctor checks without it. A CheckpointError with a reason code otherwise."""
    site = config.site
    assert site is not None
    roots = load_roots(config.state_dir) + [load_root(p) for p in (*config.trust.roots, config.enroll.trust_root) if p]
    key = identity.load(config.state_dir)
    cred = sitecred.load(site.credential or config.state_dir / sitecred.FILE_NAME, roots, site_id=site.site_id,
                         device_key=key, now=now)
    return key, cred, roots


def check_site(config: Config, summary: dict | None) -> Check | None:
    """A gate of a site: the peers it hears, their last message and clock skew (the running
    daemon's view); without the daemon, its site credential."""
    site = config.site
    if site is None:
        return None
    if summary is None:
        try:
            _, cred, _ = site_credential(config, time.time())
        except (CheckpointError, OSError) as exc:
            code = getattr(exc, "code", "site_credential_unreadable")
            why = words(exc) or (os_error_words(exc) if isinstance(exc, OSError) else str(exc))
            return Check("site", FAIL, _t("doctor.site_credential_bad", site=site.site_id, code=code, why=why),
                         _t("doctor.fix_site_credential"))
        expires = (time.strftime("%Y-%m-%d %H:%M", time.localtime(cred.expires_at)) if cred.expires_at is not None
                   else "-")
        return Check("site", PASS, _t("doctor.site_credential", site=site.site_id, serial=cred.serial,
                                      expires=expires))
    now_ms = time.time() * 1000
    peers = [_t("doctor.site_peer_lost" if not p["alive"] else "doctor.site_peer", device=p["device_id"],
                address=p["address"], kind=p["last_kind"], age=_age(max(0.0, (now_ms - p["last_heard_ms"]) / 1000)),
                skew=f"{p['skew_ms'] / 1000:+.2f}") for p in summary["peers"]]
    listed = {lang: "".join("; " + p(lang) for p in peers) for lang in i18n.LANGS}
    capacity = f"/{summary['capacity']}" if summary["capacity"] else ""
    detail = _t("doctor.site_live", site=summary["site_id"], alive=sum(p["alive"] for p in summary["peers"]),
                n=len(peers), occupancy=f"{summary['occupancy']}{capacity}", peers=listed)
    if summary["isolated"]:
        return Check("site", WARN, _t("doctor.site_isolated", policy=summary["when_isolated"], detail=detail),
                     _t("doctor.fix_site_isolated"))
    return Check("site", PASS, detail)


def _join(parts: Sequence[i18n.Text]) -> i18n.Text:
    """Texts joined with commas, in whichever language they are read."""
    return _t("doctor.list", **{"items": {lang: ", ".join(p(lang) for p in parts) for lang in i18n.LANGS}})


def _offline_backlog(config: Config) -> tuple[int, int | None] | None:
    db = config.db_path
    if not db.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return synced.unsynced_in_file(conn)
        finally:
            conn.close()
    except sqlite3.Error:
        return None


# ---------------------------------------------------------------- running them


def run(config: Config | None, *, config_problems: Sequence[str] = (), live=None,
        server_timeout: float = 5.0, camera_timeout: float = 8.0) -> Report:
    """Every check for ``config``. ``live`` (the running daemon) supplies input, log and clock
    health instead of opening devices the daemon holds."""
    if config is None:
        return Report((Check("config", FAIL, "; ".join(config_problems[:3]) or _t("doctor.no_config"),
                             _t("doctor.fix_config")),))
    checks = [Check("config", PASS, str(config.path) if config.path else _t("doctor.defaults"))]
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
            checks.append(Check("inputs", PASS if found else WARN, _t("doctor.inputs_found", found=detail) if found
                                else _t("doctor.inputs_none"), "" if found else _t("doctor.fix_inputs")))
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


def table(report: Report, lang: str | None = None) -> list[str]:
    """The report as lines for a terminal: status, check, detail; the fix under anything not passing."""
    width = max((len(c.name) for c in report.checks), default=5)
    marks = {s: i18n.t(f"status_page.{s}", lang) for s in (PASS, WARN, FAIL)}
    mark_w = max(len(m) for m in marks.values())
    fix = i18n.t("doctor.fix_label", lang)
    lines = []
    for c in report.checks:
        lines.append(f"{marks.get(c.status, c.status):<{mark_w}}  {c.name:<{width}}  {c.detail_in(lang)}")
        if c.status != PASS and c.fix_in(lang):
            lines.append(f"{'':<{mark_w}}  {'':<{width}}  {fix}: {c.fix_in(lang)}")
    return lines
