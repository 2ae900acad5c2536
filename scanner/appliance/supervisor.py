"""Supervision: the main thread's tick and the "health" thread.

The tick (~5/s) never waits for the entry log: health → feedback state and the kiosk's "state"
event, sd_notify WATCHDOG (withheld when the verdict worker is stuck or gone), SIGHUP reloads and
trust reloads after a sync update (both applied by the appliance), the clock guard, the display
timer of the event hub, retention, and finding new readers when the config lists none. The
"health" thread asks the entry log for its health and backlog (it may wait behind a slow commit)
and the sync agent for its state, so the tick only reads what they last answered.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from hardware.feedback import DeviceState, PatternFeedback
from hardware.inputs import SourceState
from scanner.appliance import readiness
from scanner.appliance.clockguard import ClockGuard
from scanner.appliance.config import Config
from scanner.appliance.device import Device
from scanner.appliance.events import EventHub
from scanner.appliance.pipeline import Pipeline
from scanner.appliance.sdnotify import Notifier
from scanner.store import admission
from scanner.store.entrylog import EntryLogError, Health
from sync.state import StateError, SyncState

log = logging.getLogger(__name__)

TICK_S = 0.2
HEALTH_EVERY_S = 1.0
LOG_STALE_S = 15.0  # the log has not answered a health question for this long: it is stuck
BACKLOG_EVERY_S = 5.0
DISCOVER_EVERY_S = 5.0


@dataclasses.dataclass(frozen=True, slots=True)
class Hooks:
    """What the supervisor asks of the appliance that owns it (each runs on the main thread)."""

    reload: Callable[[], None]  # SIGHUP: the config file again (live keys applied), then the trust
    trust_changed: Callable[[], None]  # sync installed a bundle or credential: load them
    discover: Callable[[], None]  # look for readers plugged in since (a config without inputs)


class Supervisor:
    """See the module docstring. ``config`` gives the configuration in use (a reload replaces it);
    ``stop`` ends the health thread, ``reload`` (set by a signal handler) asks for a reload."""

    def __init__(self, device: Device, *, pipeline: Pipeline, feedback: PatternFeedback, hub: EventHub,
                 guard: ClockGuard, notifier: Notifier, config: Callable[[], Config], hooks: Hooks,
                 stop: threading.Event, reload: threading.Event, discover_every_s: float = DISCOVER_EVERY_S) -> None:
        self.device = device
        self.pipeline = pipeline
        self.feedback = feedback
        self.hub = hub
        self.guard = guard
        self.notifier = notifier
        self.config = config
        self.hooks = hooks
        self.discover_every_s = discover_every_s
        self._stop = stop
        self._reload = reload
        self._trust_changed = threading.Event()
        self._lock = threading.Lock()
        self._health: dict = {"state": "starting", "problems": [], "degraded": []}
        self._last_state: tuple[str, str] | None = None
        self._last_ping = 0.0
        self._hung_logged = False
        self._purge_due = time.monotonic() + 60.0  # the first purge a minute after start, then every interval
        self._discover_at = 0.0
        self._log_health: tuple[Health, float] | None = None  # (health, monotonic time): from the "health" thread
        self._backlog: tuple[int, int | None] = (0, None)
        self._backlog_at = 0.0
        self._sync_state: SyncState | None = None
        self._monitor: threading.Thread | None = None
        self._site_seen: tuple | None = None  # what the last "site" event said

    # ------------------------------------------------------------ requests (any thread)

    def trust_changed(self) -> None:
        self._trust_changed.set()

    # ------------------------------------------------------------ what it last saw

    def health(self) -> dict:
        with self._lock:
            return dict(self._health)

    def backlog(self) -> tuple[int, int | None]:
        return self._backlog

    def log_health(self) -> Health | None:
        lh = self._log_health
        return lh[0] if lh is not None else None

    def sync_state(self) -> SyncState | None:
        """The sync agent's state as the health thread last asked it (None without sync)."""
        return self._sync_state

    def status_line(self) -> str:
        h = self.health()
        return f"{h['state']} · {self.device.mode} · {self.device.logged} entries" + (
            f" · {', '.join(h['problems'] + h['degraded'])}" if h["problems"] or h["degraded"] else "")

    # ------------------------------------------------------------ the "health" thread

    def start_monitor(self) -> None:
        self.refresh()
        self._monitor = threading.Thread(target=self._monitor_loop, name="health", daemon=True)
        self._monitor.start()

    def join_monitor(self, timeout: float) -> None:
        if self._monitor is not None:
            self._monitor.join(timeout)

    def _monitor_loop(self) -> None:
        while not self._stop.wait(HEALTH_EVERY_S):
            self.refresh()

    def refresh(self) -> None:
        """Ask the entry log for its health (and, every few seconds, its backlog) and the agent for its state."""
        core = self.device.core
        if core is None:
            return
        lh = core.log.health()
        now_mono = time.monotonic()
        self._log_health = (lh, now_mono)
        if now_mono - self._backlog_at < BACKLOG_EVERY_S:
            return
        self._backlog_at = now_mono
        try:
            self._backlog = core.log.backlog()
        except Exception as exc:  # noqa: BLE001 - sqlite3 errors included: the health check reports the log itself
            log.warning("entry log: cannot count the backlog: %s", exc)
        if core.agent is not None:
            try:
                self._sync_state = core.agent.snapshot()  # the agent's own state, not its file
            except StateError as exc:
                log.warning("sync state unreadable: %s", exc)

    # ------------------------------------------------------------ the tick (main thread)

    def tick(self) -> None:
        now_mono = time.monotonic()
        if self._reload.is_set():
            self._reload.clear()
            self.hooks.reload()
        if self._trust_changed.is_set():
            self._trust_changed.clear()
            self.hooks.trust_changed()
        self.hub.expire()
        st = self._sync_state
        self.guard.refresh(st.server_time() if st is not None else None)
        self._update_health()
        self._watchdog(now_mono)
        self.guard.save_if_due(self.config().clock.persist_interval_s)
        self._maybe_purge(now_mono)
        self._maybe_discover(now_mono)
        self._site_changes()
        core = self.device.core
        if core is not None:
            core.log.checkpoint_when_idle()  # the log's WAL, between scans (never inside a scan's commit)

    def _update_health(self) -> None:
        ready = self.device.readiness()
        problems, log_state = self._problems(ready)
        flags = self._degraded(ready, log_state)
        state = "error" if problems else "degraded" if flags else "ok"
        with self._lock:
            self._health = {"state": state, "problems": problems, "degraded": flags, "mode": self.device.mode,
                            "readiness": ready.to_dict()}
        self.feedback.set_state({"ok": DeviceState.OK, "degraded": DeviceState.DEGRADED,
                                 "error": DeviceState.ERROR}[state])
        if (state, ready.code) != self._last_state:
            self._last_state = (state, ready.code)
            self.hub.publish("state", {"state": state, "problems": problems, "degraded": flags,
                                       "mode": self.device.mode, "readiness": ready.to_dict()})
            level = logging.INFO if state == "ok" else logging.WARNING
            log.log(level, "state %s problems=%s degraded=%s", state, ",".join(problems) or "-",
                    ",".join(flags) or "-")
            self.notifier.status(self.status_line())

    def _problems(self, ready: readiness.Readiness) -> tuple[list[str], str | None]:
        """What puts the device in its error state (sorted), and the entry log's health state."""
        device = self.device
        problems: list[str] = []
        for h in self.pipeline.health().sources:
            if h.state in (SourceState.REOPENING, SourceState.FAILED):
                problems.append(f"input_down:{h.source_id}")
        log_state = None
        if device.core is not None and self._log_health is not None:
            lh, at = self._log_health
            log_state = lh.state
            if time.monotonic() - at > LOG_STALE_S:
                problems.append("log:unresponsive")
            elif lh.state == "error":
                problems += [f"log:{p}" for p in lh.problems if p != "low_disk"] or ["log:error"]
            elif device.write_problem is not None:
                device.write_problem = None  # the log recovered (its retry queue is empty)
        if device.write_problem is not None:
            problems.append(f"log:{device.write_problem}")
        if not ready.ready and ready.code != readiness.NOT_PROVISIONED:
            problems.append(ready.code)
        if self.feedback.fault:
            problems.append("feedback_fault")
        return sorted(set(problems)), log_state

    def _degraded(self, ready: readiness.Readiness, log_state: str | None) -> list[str]:
        """Why the device is degraded (the policy's flags, then low disk, provisioning, sync's alarms)."""
        device = self.device
        _, age = device.trust_in_use()
        backlog, oldest = self._backlog
        flags = list(admission.flags(device.policy, age, self.guard.status(), self.guard.now(), backlog=backlog,
                                     oldest_pending_ms=oldest))
        if log_state == "warning":
            flags.append(admission.LOW_DISK)
        if ready.code == readiness.NOT_PROVISIONED:
            flags.append(admission.NOT_PROVISIONED)
        core = device.core
        if core is not None and core.mode == "provisioned" and device.credential is None:
            flags.append(admission.NO_CREDENTIAL)
        if core is not None and core.site is not None and core.site.isolated():
            flags.append(admission.SITE_ISOLATED)
        if self._sync_state is not None and self._sync_state.alarms:
            flags += [f"sync:{a}" for a in self._sync_state.alarms]
        return flags

    def _site_changes(self) -> None:
        """A gate of a site: a "site" event when the site's occupancy, this gate's isolation or
        the gates it hears change (the kiosk shows them as they change)."""
        core = self.device.core
        if core is None or core.site is None:
            return
        node = core.site
        peers = node.peers()
        now = (node.view.occupancy(), node.settings.capacity, node.isolated(), sum(p.alive for p in peers), len(peers))
        if now != self._site_seen:
            self._site_seen = now
            self.hub.publish("site", {"occupancy": now[0], "capacity": now[1], "isolated": now[2],
                                      "gates_heard": now[3], "gates_known": now[4]})

    def _watchdog(self, now_mono: float) -> None:
        interval = self.notifier.watchdog_s
        if not interval or now_mono - self._last_ping < interval / 4:
            return
        busy = self.pipeline.busy_for()
        hung = not self.pipeline.worker_alive() or (busy is not None and busy > interval / 2)
        if hung:
            if not self._hung_logged:
                log.error("watchdog: verdict worker %s; not telling systemd it is alive",
                          "stopped" if not self.pipeline.worker_alive() else f"stuck for {busy:.1f} s")
                self._hung_logged = True
            return
        self._hung_logged = False
        self._last_ping = now_mono
        self.notifier.watchdog()

    def _maybe_purge(self, now_mono: float) -> None:
        core = self.device.core
        if core is None or now_mono < self._purge_due:
            return
        self._purge_due = now_mono + self.config().log.purge_interval_h * 3600
        entries = core.log

        def purge() -> None:
            try:
                entries.purge()
            except (EntryLogError, OSError) as exc:
                log.warning("retention: purge failed: %s", exc)
            except Exception:  # sqlite3 errors: the health check shows the log's state
                log.exception("retention: purge failed")

        threading.Thread(target=purge, name="purge", daemon=True).start()

    def _maybe_discover(self, now_mono: float) -> None:
        if self.config().has_inputs or now_mono - self._discover_at < self.discover_every_s:
            return
        self._discover_at = now_mono
        self.hooks.discover()
