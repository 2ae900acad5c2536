"""The running appliance as the local API and the doctor see it: health, the status page's data,
the kiosk's settings, the doctor's checks of the parts the daemon holds, and the staff actions.
Everything is read from memory (the parts' last answers), never from the entry log beyond counts.
"""
from __future__ import annotations

import dataclasses
import functools
import platform
import sqlite3
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from hardware.feedback import PatternFeedback
from hardware.inputs import SourceState
from scanner import __version__
from scanner.appliance import doctor
from scanner.appliance.clockguard import ClockGuard
from scanner.appliance.config import Config
from scanner.appliance.device import Device
from scanner.appliance.doctor import FAIL, PASS, WARN, Check
from scanner.appliance.events import EventHub
from scanner.appliance.pipeline import Pipeline
from scanner.appliance.preview import Preview
from scanner.appliance.readiness import Readiness
from scanner.appliance.supervisor import Supervisor
from scanner.base import i18n
from scanner.base.safetext import escape
from scanner.store import admission
from scanner.store.clock import ClockStatus
from sync.state import SyncState

DISTRIBUTIONS = ("cryptography", "starlette", "uvicorn", "opencv-python-headless", "zxing-cpp", "pyzbar",
                 "gpiozero", "sqlite-utils", "requests")


@functools.cache
def versions() -> dict:
    """This software's and its main parts' versions, and the system's (for the status page)."""
    out: dict[str, Any] = {"checkpoint-edge": __version__, "python": platform.python_version()}
    for dist in DISTRIBUTIONS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    out["sqlite"] = sqlite3.sqlite_version
    try:
        text = Path("/etc/os-release").read_text(encoding="utf-8")
        os_release = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        out["os"] = os_release.get("PRETTY_NAME", "").strip('"') or None
    except OSError:
        out["os"] = None
    out["kernel"] = platform.release()
    out["machine"] = platform.machine()
    return out


class Backend:
    """What the API (scanner/appliance/api.py `Backend`) and the doctor (``doctor.run(live=...)``)
    ask of the running appliance. ``config`` gives the configuration in use (a reload replaces it)."""

    def __init__(self, device: Device, *, supervisor: Supervisor, pipeline: Pipeline, feedback: PatternFeedback,
                 hub: EventHub, guard: ClockGuard, config: Callable[[], Config], preview: Preview | None,
                 recent_errors: Any = None, started_mono: float | None = None) -> None:
        self.device = device
        self.supervisor = supervisor
        self.pipeline = pipeline
        self.feedback = feedback
        self.hub = hub
        self.guard = guard
        self.config = config
        self.preview = preview
        self.recent_errors = recent_errors
        self.started_mono = time.monotonic() if started_mono is None else started_mono

    # ------------------------------------------------------------ the API

    def health(self) -> dict:
        return self.supervisor.health()

    def readiness(self) -> Readiness:
        return self.device.readiness()

    def set_direction(self, direction: str | None) -> str:
        if direction is None or direction != self.feedback.direction:
            self.feedback.toggle_direction()
        return self.feedback.direction

    def silence(self) -> None:
        self.feedback.acknowledge()

    def doctor(self) -> dict:
        return doctor.run(self.config(), live=self, server_timeout=3.0).to_dict()

    def status(self) -> dict:
        device, config = self.device, self.config()
        core = device.core
        pipe = self.pipeline.health()
        health = self.supervisor.health()
        with device.lock:
            trust, age, counts = device.trust, device.trust_age, dict(device.counts)
            trust_error, cred, cred_error = device.trust_error, device.credential, device.credential_error
            trust_code = device.trust_error_code
        today = None
        if core is not None:
            t = core.log.totals()
            today = {"day": t.day, "scans": t.scans, "accepted": t.accepted, "rejected": t.rejected,
                     "duplicates": t.duplicates, "in": t.admitted_in, "out": t.admitted_out,
                     "did_not_pass": t.did_not_pass, "occupancy": t.occupancy, "by_reason": t.by_reason}
        st = self.supervisor.sync_state()
        log_health = self.supervisor.log_health()
        backlog, oldest = self.supervisor.backlog()
        now = self.guard.now()
        clock = self.guard.status()
        return {
            "version": __version__, "state": health["state"], "problems": health["problems"],
            "degraded": health["degraded"], "mode": device.mode, "readiness": device.readiness().to_dict(),
            "credential": {**cred.summary(), "error": None} if cred is not None else {"error": cred_error},
            "device": {"id": core.device_id if core else None, "checkpoint": core.checkpoint_id if core else None,
                       "name": config.device.name},
            "direction": self.feedback.direction, "uptime_s": round(time.monotonic() - self.started_mono, 1),
            "today": today, "since_start": counts,
            "inputs": [{"kind": h.source, "id": h.source_id, "state": str(h.state), "reason": h.reason,
                        "scans": h.scans, "issues": h.issues} for h in pipe.sources],
            "pipeline": {"verdicts": pipe.verdicts, "folded": pipe.folded, "dropped": pipe.dropped,
                         "queued": pipe.queued},
            "log": dataclasses.asdict(log_health) if core and log_health else None,
            "sync": {"enabled": core is not None and core.agent is not None, "pending": backlog,
                     "oldest_pending_ms": oldest,
                     "last_success_ms": st.last_success_ms if st else None,
                     "last_error_code": st.last_error_code if st else None,
                     "alarms": list(st.alarms) if st else []},
            "trust": {"version": age.version, "issued_at": age.issued_at, "expires_at": age.expires_at,
                      "age_s": None if age.issued_at is None else max(0, round(now - age.issued_at)),
                      "keys": trust.key_count, "stale": admission.trust_stale(device.policy, age, now),
                      "error": trust_error, "error_code": trust_code},
            "clock": {"confirmed": clock.confirmed, "by": clock.by, "behind": clock.behind,
                      "kernel": clock.kernel, "offset_ms": clock.offset_ms,
                      "confirmed_at": clock.confirmed_at},
            "feedback": {"kind": self.feedback.kind, "fault": self.feedback.fault,
                         "fallback": getattr(self.feedback, "fallback_reason", None)},
            "site": core.site.summary() if core is not None and core.site is not None else None,
            "versions": versions(),
            "config": config.summary(),
            "recent_errors": self.recent_errors.list() if self.recent_errors is not None else [],
        }

    def kiosk_settings(self) -> dict:
        """What the kiosk page needs to know of its device (`GET /api/v1/kiosk`): no data, no secrets."""
        config = self.config()
        k = config.kiosk
        return {"lang": k.lang, "langs": list(i18n.LANGS), "occupancy": k.occupancy,
                "display_s": self.hub.display_s, "name": config.device.name,
                "preview": {"cameras": self.preview.cameras(), "fps": k.preview_fps}
                if self.preview is not None else None}

    # ------------------------------------------------------------ the doctor's view of the running parts

    def site_summary(self) -> dict | None:
        """The site's view and peers (None: not a gate of a site, or not started yet)."""
        core = self.device.core
        return core.site.summary() if core is not None and core.site is not None else None

    def input_checks(self) -> list[Check]:
        out = []
        for h in self.pipeline.health().sources:
            ok = h.state in (SourceState.OK, SourceState.FINISHED)
            status = PASS if ok else FAIL if h.state is SourceState.FAILED else WARN
            said = {lang: i18n.t(f"input_state.{h.state}", lang) + (f" ({h.reason})" if h.reason else "")
                    for lang in i18n.LANGS}
            detail = i18n.text("doctor.input_state", state=said, n=h.scans)
            if h.detail and not ok:  # the driver's own words (English) quoted, after the reason's
                why = i18n.text(f"input_reason.{h.reason}") if i18n.known(f"input_reason.{h.reason}") else ""
                detail = i18n.text("doctor.input_driver", state=said, n=h.scans, why=why, detail=escape(h.detail))
            fix = "" if ok else i18n.text("doctor.fix_input_reopening" if h.state is SourceState.REOPENING
                                          else "doctor.fix_input")
            out.append(Check(f"{'camera' if h.source == 'camera' else 'reader'}:{h.source_id}", status, detail, fix))
        if not out:
            out.append(Check("inputs", WARN, i18n.text("doctor.no_input"), i18n.text("doctor.fix_inputs")))
        return out

    def gpio_check(self) -> Check:
        fb = self.feedback
        fallback = getattr(fb, "fallback_reason", None)
        if fb.kind == "console" and fallback:
            return Check("gpio", WARN, i18n.text("doctor.gpio_console", why=escape(fallback)),
                         i18n.text("doctor.fix_gpio"))
        if fb.fault:
            return Check("gpio", FAIL, i18n.text("doctor.gpio_stopped", why=escape(fb.fault)),
                         i18n.text("doctor.fix_gpio_stopped"))
        return Check("gpio", PASS, i18n.text("doctor.gpio_live", kind=fb.kind))

    def log_check(self) -> Check | None:
        core = self.device.core
        if core is None:
            return None
        h = core.log.health()
        if h.state == "ok":
            return None
        status = FAIL if h.state == "error" else WARN
        return Check("database:health", status, i18n.text("doctor.log_health", state=i18n.text(f"log_health.{h.state}"),
                                                          problems=", ".join(h.problems), n=h.queued),
                     i18n.text("doctor.fix_log_health"))

    def clock_status(self) -> ClockStatus:
        return self.guard.status()

    def backlog(self) -> tuple[int, int | None]:
        return self.supervisor.backlog()

    def sync_state(self) -> SyncState:
        """The sync agent's own state (an empty one without sync): never read from its file here."""
        core = self.device.core
        if core is None or core.agent is None:
            return SyncState()
        return core.agent.snapshot()
