"""The appliance: one process that scans, verifies, logs, shows, syncs and answers the kiosk.

`Appliance` builds the parts from a `Config`, wires them together and runs them (`checkpoint run`):

- the **verdict lane** (scanner/appliance/lane.py), on the pipeline's worker thread "verdicts":
  prepare → verify → admit and record (commit first) → show. A commit that fails turns the
  device to its error state and the person is not shown as admitted;
- the **supervisor** (scanner/appliance/supervisor.py): the main thread's tick (health, watchdog,
  reloads, retention, discovery) and the "health" thread that asks the entry log and sync;
- the **adapters** the local API and the doctor read (scanner/appliance/status.py);
- the **enroller** (scanner/appliance/enroller.py): zero-touch enrollment on its own thread;
- what they share about the device (scanner/appliance/device.py).

Other threads: one per input (cameras also decode in a helper), the feedback player (and its
passage monitor, whose timeouts record "granted, did not pass"), log-retry (the entry log's retry
queue), sync (SyncAgent.run, batches built in a child process), api (uvicorn). Signal handlers
only set flags.

SIGTERM/SIGINT: inputs stop, queued verdicts finish and are committed, outputs go to their safe
state, files are flushed, exit 0 within a few seconds. SIGHUP: the config file is read again and
its live keys applied, and the trust bundle is reloaded. A device that is not provisioned runs
the same inputs in enrollment mode: an enrollment QR (sync/wire/enrollcode.py) provisions it
if it has a trust root to check the server with, and it goes on as a provisioned device without
a restart. A device that cannot check cards (scanner/appliance/readiness.py) shows a fault, never
a verdict. Holder details are sealed only to the key of the root-signed server credential
(sync/wire/credential.py). Spec: docs/configuration.md.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

from hardware.camera import CameraConfig, CameraInput
from hardware.console_feedback import ConsoleLine
from hardware.feedback import Callbacks, EntryId, PatternFeedback
from hardware.gpio_feedback import open_feedback
from hardware.inputs import Input, ReadIssue, SourceState
from hardware.readers import SerialReader, StdinReader
from hardware.readers_hid import HidReader
from hardware.stream_decode import Hint
from scanner import __version__
from scanner.appliance import api as apimod
from scanner.appliance import doctor, pages, readiness, runtime
from scanner.appliance.clockguard import ClockGuard
from scanner.appliance.config import (
    Config,
    ConfigError,
    defaults,
    discover_inputs,
    load,
)
from scanner.appliance.device import Core, Device
from scanner.appliance.enroller import Enroller
from scanner.appliance.enrollfile import EnrollFileInput, enroll_file_for
from scanner.appliance.events import EventHub
from scanner.appliance.lane import Lane
from scanner.appliance.pipeline import Pipeline
from scanner.appliance.preview import Preview
from scanner.appliance.provisioning import ApplianceProvisioned, provision_appliance
from scanner.appliance.sdnotify import Notifier
from scanner.appliance.status import Backend
from scanner.appliance.supervisor import DISCOVER_EVERY_S, TICK_S, Hooks, Supervisor
from scanner.base.errors import CheckpointError, os_error_words, words
from scanner.base.i18n import text
from scanner.base.safetext import escape
from scanner.cards.scan import Scan
from scanner.cards.trust import TrustStore
from scanner.store import premigrate
from scanner.store.entrylog import SIDE_CACHE_KIB, EntryLog, EntryLogError
from sync.agent import SyncAgent, make_builder
from sync.pull import PullService, with_pull
from sync.site.node import Settings as SiteSettings
from sync.site.node import SiteNode
from sync.state import DeviceConfig, StateError
from sync.wire import enrollcode, identity

log = logging.getLogger(__name__)

SHUTDOWN_STEP_S = 2.5
EXIT_UNACKED = 3  # `run --once` ended with entries the server has not acknowledged (scripts can tell)


class DaemonError(CheckpointError):
    """The appliance cannot start as configured (one line for the log and the CLI)."""

    code = "daemon"


class Appliance:
    """The daemon (see the module docstring). ``run()`` blocks until stopped; ``once``: until the
    file inputs are exhausted and (with sync) everything logged is acknowledged."""

    def __init__(self, config: Config, *, once: bool = False, notifier: Notifier | None = None,
                 stdout=None, recent_errors=None, pin_factory=None, sync_timeout_s: float = 60.0,
                 keepalive_s: float | None = None, dev: str = "/dev",
                 discover_every_s: float = DISCOVER_EVERY_S) -> None:
        self.config = config
        self.once = once
        self.unacked = 0  # --once: entries the server had not acknowledged when it ended
        self.notifier = notifier or Notifier()
        self.stdout = stdout
        self.recent_errors = recent_errors
        self.sync_timeout_s = sync_timeout_s
        self._pin_factory = pin_factory
        self.dev = dev  # where readers are looked for by their udev names (a config without inputs)
        self.discover_every_s = discover_every_s
        self._keepalive_s = keepalive_s
        self._stop = threading.Event()
        self._reload_requested = threading.Event()
        self._core_lock = threading.Lock()  # a core is started (after enrollment) or shut down, never both at once
        self._shut = False
        self._started_mono = time.monotonic()
        self._tuning: runtime.Tuning | None = None  # set once started (scanner/appliance/runtime.py)
        self.state_dir = config.state_dir
        self.device = Device(self.state_dir, config.admission_policy(),
                             root_pinned=readiness.root_pinned(config))
        self.hub = EventHub(config.api.display_s, max_subscribers=config.api.max_clients)
        self.enroller = Enroller(self._enroll, self._enrolled)
        kiosk = config.kiosk
        self.preview = None  # the kiosk's camera preview (scanner/appliance/preview.py)
        if kiosk.enabled and kiosk.preview and config.api.enabled:
            self.preview = Preview(kiosk.preview_fps, kiosk.preview_width, max_viewers=config.api.max_clients)
        self._streams: list[BinaryIO] = []
        self._known_inputs: set[str] = set()
        self._enroll_file: EnrollFileInput | None = None  # the SD card's enroll.txt, while not provisioned
        # built by start()
        self.guard: ClockGuard | None = None
        self.feedback: PatternFeedback | None = None
        self.lane: Lane | None = None
        self.pipeline: Pipeline | None = None
        self.supervisor: Supervisor | None = None
        self.backend: Backend | None = None
        self.api: apimod.ApiServer | None = None
        self._pull: PullService | None = None

    # ================================================================ start: the parts and their wiring

    def start(self) -> None:
        """Build and start everything; raises DaemonError (nothing left running) if it cannot."""
        cfg = self.config
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise DaemonError(f"state directory {self.state_dir}: {exc.strerror}",
                              text=text("daemon_error.state_dir",
                                        what=os_error_words(exc, self.state_dir))) from None
        guard = self.guard = ClockGuard(self.state_dir, max_offset_s=cfg.clock.max_offset_s,
                                        floor=self._floor_from_log())
        try:
            feedback = self.feedback = self._open_feedback()
            lane = self.lane = Lane(self.device, feedback=feedback, hub=self.hub, guard=guard, enroller=self.enroller,
                                    clock_skew_s=cfg.scan.clock_skew_s, shc_hold_s=cfg.scan.shc_hold_s)
            pipeline = self.pipeline = Pipeline(lane.handle, cooldown=cfg.scan.cooldown_s,
                                                queue_size=cfg.scan.queue_size, on_issue=self._on_issue,
                                                lane_priority=cfg.scan.lane_priority)
            hooks = Hooks(reload=self._reload, trust_changed=self._trust_changed, discover=self._discover)
            supervisor = self.supervisor = Supervisor(
                self.device, pipeline=pipeline, feedback=feedback, hub=self.hub, guard=guard, notifier=self.notifier,
                config=lambda: self.config, hooks=hooks, stop=self._stop, reload=self._reload_requested,
                discover_every_s=self.discover_every_s)
            self.backend = Backend(self.device, supervisor=supervisor, pipeline=pipeline, feedback=feedback,
                                   hub=self.hub, guard=guard, config=lambda: self.config, preview=self.preview,
                                   recent_errors=self.recent_errors, started_mono=self._started_mono)
            self._open_api(self.backend)
            for inp in self._inputs_from_config():
                self._add_input(inp)
            if not self._known_inputs:
                log.warning("no input configured or found; plug in a USB reader or configure a [[camera]]")
            found = self._identity()
            if found is not None:
                self._start_core(*found)
            elif not cfg.enroll.qr:
                raise DaemonError("this device is not provisioned: run `checkpoint provision --server URL --token T` "
                                  "(zero-touch enrollment is off: [enroll] qr = false)", code="not_provisioned",
                                  text=text("daemon_error.not_provisioned"))
            else:
                log.warning("not provisioned: waiting for an enrollment QR (%s...) at any input", enrollcode.PREFIX)
                if (enroll_file := enroll_file_for(cfg)) is not None:  # the SD card's enroll.txt, as a scan
                    self._enroll_file = EnrollFileInput(enroll_file, lambda: self.device.core is not None)
                    self._add_input(self._enroll_file)
            if self.api is not None:
                self.api.start()
            log.info("starting %s: mode %s, %d inputs, api %s", __version__, self.device.mode,
                     len(self._known_inputs), self.api.url if self.api else "off")
            supervisor.start_monitor()
            pipeline.start()
        except BaseException:
            self.shutdown()
            raise
        supervisor.tick()
        t = self._tuning = runtime.tune_for_scanning()  # the long-lived objects exist now: out of the GC's walks
        log.info("runtime: switch interval %.0f ms, %d objects frozen", t.switch_interval_s * 1000, t.frozen_objects)
        self.notifier.ready(supervisor.status_line())

    def _floor_from_log(self) -> float | None:
        """The newest entry's time: the clock guard never goes earlier than it either."""
        db = self.config.db_path
        if not db.exists():
            return None
        try:
            with EntryLog(db, create=False) as entries:
                tail = entries.tail(1)
        except EntryLogError as exc:
            log.warning("entry log: cannot read its last time (%s)", exc.code)
            return None
        return tail[0].at_ms / 1000 if tail else None

    def _open_feedback(self) -> PatternFeedback:
        cfg = self.config
        mirror = ConsoleLine(self.stdout, lang=cfg.device.lang) if cfg.feedback.console else None
        callbacks = Callbacks(on_no_passage=self._no_passage, on_passage=None,
                              on_direction=self._direction_changed, on_acknowledge=self._acknowledged)
        feedback = open_feedback(cfg.feedback_config(), pin_factory=self._pin_factory, callbacks=callbacks,
                                 mirror=mirror, stream=self.stdout, lang=cfg.device.lang)
        self.hub.publish("direction", {"direction": feedback.direction, "by": "config"})
        return feedback

    def _open_api(self, backend: Backend) -> None:
        cfg = self.config.api
        if not cfg.enabled:
            return
        host, port = cfg.listen
        try:
            sock = apimod.bind(host, port)
        except OSError as exc:
            raise DaemonError(f"api: cannot listen on {host}:{port}: {exc.strerror}", code="api_listen",
                              text=text("daemon_error.listen", what="api", address=f"{host}:{port}",
                                        why=os_error_words(exc, ""))) from None
        kw: dict[str, Any] = {} if self._keepalive_s is None else {"keepalive_s": self._keepalive_s}
        if self.config.kiosk.enabled:
            kw["extra_routes"] = pages.routes(backend.kiosk_settings, self.preview)
        app = apimod.create_app(backend, self.hub, token=self.config.api_token(), listen_host=host, **kw)
        # server pull (sync/pull.py): its own endpoints, authenticated by the server's pull key
        served = with_pull(app, self.state_dir, self.config.db_path)
        self._pull = served.pull_app.state.pull  # closed at shutdown (its own log connection)
        self.api = apimod.ApiServer(served, sock)

    # ---------------------------------------------------------------- inputs

    def _inputs_from_config(self) -> list[Input]:
        cfg = self.config
        if not cfg.has_inputs:
            return self._discovered_inputs()
        inputs = self._hardware_inputs(cfg)
        for table in cfg.stdin:
            if table.path == "-":
                stream = sys.stdin.buffer
            else:
                try:
                    stream = open(table.path, "rb")  # noqa: SIM115 (closed at shutdown)
                except OSError as exc:
                    raise DaemonError(f"stdin[{table.name}]: {table.path}: {exc.strerror}",
                                      text=text("os_error.at", path=f"stdin[{table.name}]",
                                                what=os_error_words(exc, table.path))) from None
                self._streams.append(stream)
            inputs.append(StdinReader(stream, name=table.name, direction=table.direction, clock=self._clock()))
        return inputs

    def _hardware_inputs(self, cfg: Config) -> list[Input]:
        """The cameras and readers of a configuration."""
        clock = self._clock()
        inputs: list[Input] = [CameraInput(c, clock=clock, on_frame=self._preview_hook(c), on_hint=self._aim_hook(c))
                               for c in cfg.cameras()]
        inputs += [SerialReader(c, clock=clock) for c in cfg.serial_readers()]
        inputs += [HidReader(c, clock=clock) for c in cfg.hid_readers()]
        return inputs

    def _discovered_inputs(self) -> list[Input]:
        """Inputs found by their udev names (config without input tables); new ones only."""
        found = discover_inputs(self.dev)
        fresh = {kind: [t for t in tables if (t.get("device") or t.get("port")) not in self._known_inputs]
                 for kind, tables in found.items()}
        fresh = {k: v for k, v in fresh.items() if v}
        if not fresh:
            return []
        return self._hardware_inputs(defaults(self.state_dir, fresh))

    def _discover(self) -> None:
        for inp in self._discovered_inputs():
            self._add_input(inp)

    def _clock(self):
        assert self.guard is not None, "started"
        return self.guard.now

    def _preview_hook(self, camera_config: CameraConfig):
        """The camera's ``on_frame`` hook feeding the kiosk preview (None without a preview)."""
        return self.preview.add_camera(camera_config.source_id) if self.preview is not None else None

    def _aim_hook(self, camera_config: CameraConfig):
        """The camera's ``on_hint`` hook: an ``aim`` event for the kiosk ("move closer / further / hold still")."""
        source_id = camera_config.source_id

        def aim(hint: Hint | None) -> None:
            self.hub.publish("aim", {"source_id": source_id, "action": hint.action if hint else None,
                                     "reason": hint.reason if hint else None})
        return aim

    @staticmethod
    def _input_key(inp: Input) -> str:
        """The device an input reads (its path or vendor:product), to recognise it when found again."""
        cfg = getattr(inp, "config", None)
        return str(getattr(cfg, "device", None) or getattr(cfg, "port", None) or inp.source_id)

    def _add_input(self, inp: Input) -> None:
        pipeline = self.pipeline
        assert pipeline is not None, "started"
        self._known_inputs.add(self._input_key(inp))
        pipeline.add(inp)
        if pipeline.health().running:
            log.info("input %s %s added", inp.kind, escape(inp.source_id))

    def _inputs_up(self) -> dict:
        pipe = self.pipeline
        if pipe is None:
            return {}
        return {h.source_id[:64]: "up" if h.state in (SourceState.OK, SourceState.FINISHED) else "down"
                for h in pipe.health().sources}

    def _on_issue(self, issue: ReadIssue) -> None:
        self.hub.publish("error", {"code": issue.code, "source": issue.source, "source_id": issue.source_id,
                                   "hint": issue.hint})

    # ---------------------------------------------------------------- identity and the core

    def _identity(self) -> tuple[str, str, str] | None:
        """(device_id, checkpoint_id, mode), or None when the device waits for enrollment."""
        try:
            dev = DeviceConfig.load(self.state_dir)
        except StateError as exc:
            if exc.code != "not_provisioned":
                raise DaemonError(str(exc), code=exc.code, text=words(exc)) from None
        else:
            if not self.config.sync.enabled:
                log.warning("provisioned for %s, but [sync] enabled = false: entries stay on this device",
                            dev.server_url)
            return dev.device_id, dev.checkpoint_id, "provisioned"
        checkpoint = self.config.device.checkpoint_id
        if not self.config.sync.enabled:
            if not checkpoint:
                raise DaemonError("without a server ([sync] enabled = false) set [device] checkpoint_id",
                                  code="not_provisioned", text=text("daemon_error.no_checkpoint_id"))
            key, created = identity.load_or_create(self.state_dir)
            if created:
                log.info("standalone device key created")
            return identity.device_id(key), checkpoint, "standalone"
        return None

    def _start_core(self, device_id: str, checkpoint_id: str, mode: str) -> None:
        cfg = self.config
        lg = cfg.log
        assert self.guard is not None and self.supervisor is not None, "started"
        sealing_key = self.device.load_credential() if mode == "provisioned" else None
        try:
            premigrate.run(cfg.db_path)  # a new or older log is migrated in a child: sqlite-utils never loads here
            entries = EntryLog(cfg.db_path, device_id=device_id, checkpoint_id=checkpoint_id,
                               sealing_key=sealing_key,
                               holder_details=lg.holder_details, synchronous=lg.synchronous,
                               passback_window_s=lg.passback_window_s, retention_days=lg.retention_days,
                               min_free_bytes=lg.min_free_mb * 1024 * 1024, clock=self.guard.entry_state,
                               wal_checkpoints="idle")  # checkpointed by the tick, never inside a scan's commit
        except (EntryLogError, OSError) as exc:
            why = words(exc) if isinstance(exc, CheckpointError) else os_error_words(exc, cfg.db_path)
            raise DaemonError(f"entry log {cfg.db_path}: {exc}", code=getattr(exc, "code", "log_unusable"),
                              text=why and text("daemon_error.entry_log", what=why)) from None
        if entries.holder_details_note:
            log.warning("entry log: holder details not stored (%s)", entries.holder_details_note)
        retry_stop = threading.Event()
        retry = threading.Thread(target=entries.retry_loop, args=(retry_stop,), name="log-retry", daemon=True)
        core = Core(device_id, checkpoint_id, mode, entries, retry_stop, retry)
        if cfg.site is not None:
            try:
                core.site = self._site_node(device_id)
            except DaemonError:
                entries.close()
                raise
        self._reload_trust(initial=True)
        if mode == "provisioned" and cfg.sync.enabled:
            self._start_sync(core)
        retry.start()
        if core.sync_thread is not None:
            core.sync_thread.start()
        if core.site is not None:
            core.site.start(entries.entries(since_ms=core.site.view.since_ms))
        self.device.core, self.device.mode = core, mode
        self.supervisor.refresh()
        log.info("device %s at checkpoint %s (%s)", device_id, escape(checkpoint_id), mode)

    def _site_node(self, device_id: str) -> SiteNode:
        """This gate's part in its site ([site]): its credential checked against the pinned roots,
        the site's secret, the UDP socket bound; DaemonError (a reason code) if any is wrong."""
        cfg, site = self.config, self.config.site
        assert site is not None and self.guard is not None
        guard = self.guard
        try:
            key, cred, roots = doctor.site_credential(cfg, guard.now())
            secret = Path(site.secret_file).read_bytes()
        except CheckpointError as exc:
            said = words(exc)
            raise DaemonError(f"site {site.site_id}: {exc} ({exc.code})", code=exc.code,
                              text=said and text("daemon_error.site", site=escape(site.site_id), what=said)) from None
        except OSError as exc:
            raise DaemonError(f"site {site.site_id}: {site.secret_file}: {exc.strerror}", code="site_secret_unreadable",
                              text=text("daemon_error.site", site=escape(site.site_id),
                                        what=os_error_words(exc, site.secret_file))) from None
        if len(secret) < 16:
            raise DaemonError(f"site {site.site_id}: {site.secret_file} holds fewer than 16 bytes",
                              code="site_secret_short",
                              text=text("daemon_error.site", site=escape(site.site_id),
                                        what=text("os_error.at", path=escape(str(site.secret_file)),
                                                  what=text("error.site_secret_short"))))
        if cred.device_id != device_id:
            raise DaemonError(f"site {site.site_id}: the credential names device {cred.device_id}, this is {device_id} "
                              "(site_credential_wrong_device)", code="site_credential_wrong_device",
                              text=text("daemon_error.site", site=escape(site.site_id),
                                        what=text("error.site_credential_wrong_device")))
        settings = SiteSettings(site.site_id, secret, site.listen, tuple(site.peers), site.discovery, site.heartbeat_s,
                                site.peer_timeout_s, site.max_skew_s, site.when_isolated, site.capacity or None)
        try:
            return SiteNode(settings, key, cred, roots, now_ms=lambda: round(guard.now() * 1000),
                            clock_confirmed=lambda: guard.status().confirmed,
                            state_dir=self.state_dir)
        except OSError as exc:
            raise DaemonError(f"site {site.site_id}: cannot listen on {site.listen[0]}:{site.listen[1]}: "
                              f"{exc.strerror}", code="site_listen",
                              text=text("daemon_error.listen", address=f"{site.listen[0]}:{site.listen[1]}",
                                        what=text("daemon_error.site_what", site=escape(site.site_id)),
                                        why=os_error_words(exc))) from None

    def _start_sync(self, core: Core) -> None:
        cfg = self.config.sync
        supervisor = self.supervisor
        assert supervisor is not None, "started"
        sync_log = EntryLog(self.config.db_path, create=False, wal_checkpoints="idle",  # the agent's own connection
                            cache_kib=SIDE_CACHE_KIB)
        try:
            agent = SyncAgent(self.state_dir, sync_log, builder=make_builder(cfg.builder, sync_log, self.state_dir,
                                                                             core.device_id),
                              inputs=self._inputs_up,
                              on_trust=lambda version: supervisor.trust_changed(),  # a bundle or credential
                              connect_timeout=cfg.connect_timeout_s, read_timeout=cfg.read_timeout_s,
                              trust_interval_s=cfg.trust_interval_s, idle_interval_s=cfg.interval_s,
                              upload_delay_s=cfg.upload_delay_s)
        except CheckpointError as exc:
            sync_log.close()
            said = words(exc)
            raise DaemonError(f"sync: {exc}", code=exc.code,
                              text=said and text("daemon_error.sync", what=said)) from None
        core.agent, core.sync_log = agent, sync_log
        core.sync_stop = threading.Event()
        core.sync_thread = threading.Thread(target=self._sync_main, args=(agent, core.sync_stop), name="sync",
                                            daemon=True)

    @staticmethod
    def _sync_main(agent: SyncAgent, stop: threading.Event) -> None:
        try:
            agent.run(stop)
        except Exception:  # sync is not essential to scanning: say so, the health check shows it
            log.exception("sync: the sync thread stopped by an error")

    def _enroll(self, code: enrollcode.EnrollCode) -> ApplianceProvisioned | None:
        """Enroll with the server an enrollment QR names (on the enroller's thread), then go on as a
        provisioned device (None: stopping meanwhile, so that is left to the next start)."""
        ca_file = self.config.sync.ca_file
        res = provision_appliance(code.server, code.token, state_dir=self.state_dir, root_sha256=code.root_sha256,
                                  trust_root=self.config.enroll.trust_root,
                                  ca_file=str(ca_file) if ca_file else None, owner_user=None, write_config=False)
        with self._core_lock:
            if self._stop.is_set():
                log.warning("enrolled as %s while stopping: it starts as provisioned next time", res.device_id)
                return None
            self.device.root_pinned = True
            self._start_core(res.device_id, res.checkpoint_id, "provisioned")
        return res

    def _enrolled(self, scan: Scan, outcome: ApplianceProvisioned | CheckpointError | None, held: list[Scan]) -> None:
        """What came of an enrollment, on the kiosk and in the log; the scans that waited for it are
        handled now, as the device is."""
        if isinstance(outcome, CheckpointError):
            log.error("enrollment failed (%s): %s", outcome.code, escape(str(outcome)))
            self.hub.publish("error", {"code": outcome.code, "source": scan.source, "source_id": scan.source_id})
        elif outcome is not None:
            self.hub.publish("enrolled", {"device_id": outcome.device_id, "checkpoint_id": outcome.checkpoint_id})
            if self._enroll_file is not None:  # done: it need not wait out its retry to see it
                self._enroll_file.stop()
        pipeline = self.pipeline
        if pipeline is not None and not self._stop.is_set():
            for waiting in held:
                pipeline.resubmit(waiting)

    # ---------------------------------------------------------------- trust and reloads (the supervisor's hooks)

    def _reload_trust(self, *, initial: bool = False) -> bool:
        return self.device.reload_trust(self.config.trust.roots, self.config.trust.files, initial=initial)

    def _trust_changed(self) -> None:
        self._reload_trust()
        self.device.reload_credential()

    def _reload(self) -> None:
        """SIGHUP: the config file again (live keys applied, others named), then the trust."""
        self.notifier.reloading()
        if self.config.path is not None:
            try:
                new = load(self.config.path)
            except ConfigError as exc:
                for line in exc.lines():
                    log.error("reload refused: %s", escape(line))
                new = None
            if new is not None:
                live, restart = self.config.live_changes(new)
                self._apply_live(new)
                if live:
                    log.info("reload: applied %s", ", ".join(live))
                if restart:
                    log.warning("reload: %s changed; restart the service to apply", ", ".join(restart))
        self._reload_trust()
        assert self.supervisor is not None, "started"
        self.notifier.ready(self.supervisor.status_line())

    def _apply_live(self, new: Config) -> None:
        """The live keys of ``new`` to the running parts; the other keys keep their running values."""
        assert self.pipeline is not None and self.lane is not None and self.guard is not None, "started"
        self.device.policy = new.admission_policy()
        self.pipeline.cooldown = new.scan.cooldown_s
        self.lane.clock_skew_s = new.scan.clock_skew_s
        self.lane.chunks.hold_seconds = float(new.scan.shc_hold_s)
        self.hub.display_s = new.api.display_s
        self.guard.max_offset_s = new.clock.max_offset_s
        core = self.device.core
        if core is not None:
            lg = new.log
            core.log.passback_window_ms = int(lg.passback_window_s * 1000)
            core.log.retention_days = lg.retention_days
            core.log.min_free_bytes = lg.min_free_mb * 1024 * 1024
        self.config = self.config.with_live_keys(new)

    # ---------------------------------------------------------------- feedback callbacks (their threads)

    def _no_passage(self, entry_id: EntryId) -> None:
        core = self.device.core
        if core is None:
            return
        try:
            followup = core.log.record_followup(str(entry_id), "did_not_pass")
            log.info("did not pass entry=%s", entry_id)
            if core.site is not None:
                core.site.note(followup)
        except (EntryLogError, ValueError) as exc:
            log.error("cannot record that entry %s did not pass: %s", entry_id, getattr(exc, "code", exc))

    def _direction_changed(self, direction: str) -> None:
        self.hub.publish("direction", {"direction": direction, "by": "staff"})

    def _acknowledged(self) -> None:
        self.hub.publish("silence", {})

    # ================================================================ running

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload_requested.set()

    def run(self) -> int:
        """Start, supervise until stopped (or, with ``once``, the file inputs are done), shut down.
        0, or EXIT_UNACKED when ``once`` ended with entries the server has not acknowledged."""
        self.start()
        try:
            self.supervise()
        finally:
            self.shutdown()
        return EXIT_UNACKED if self.unacked else 0

    def supervise(self) -> None:
        """The main thread's loop after start(): until stopped, or with ``once`` until done."""
        supervisor = self.supervisor
        assert supervisor is not None, "started"
        while not self._stop.is_set():
            supervisor.tick()
            if self.once and self._files_done():
                self.unacked = self.drain_sync()
                return
            self._stop.wait(TICK_S)

    def _files_done(self) -> bool:
        assert self.pipeline is not None, "started"
        inputs = [i for i in self.pipeline.inputs() if i.finite]
        return all(i.join(0) for i in inputs) and self.pipeline.wait_idle(0.0)

    def drain_sync(self, *, interruptible: bool = True) -> int:
        """Wait until the sync thread has delivered everything logged (at most ``sync_timeout_s``;
        a stop request ends the wait if ``interruptible``): --once, and the demo's timed run.
        The entries still not acknowledged (0 without sync)."""
        core = self.device.core
        if core is None or core.agent is None:
            return 0
        deadline = time.monotonic() + self.sync_timeout_s
        core.agent.wake(at_once=True)
        pause = threading.Event()
        while time.monotonic() < deadline and not (interruptible and self._stop.is_set()):
            if core.log.backlog()[0] == 0:
                return 0
            pause.wait(0.1)
        left = core.log.backlog()[0]
        log.warning("%d entries not yet acknowledged by the server after %.0f s", left, self.sync_timeout_s)
        return left

    # ================================================================ shutdown

    def shutdown(self) -> None:
        """Stop taking input, finish verdicts in flight, outputs safe, flush, close. Idempotent."""
        if self._shut:
            return
        self._shut = True
        self._stop.set()
        self.notifier.stopping()
        t0 = time.monotonic()
        if self.pipeline is not None:
            self.pipeline.stop(timeout=SHUTDOWN_STEP_S)
        if self.supervisor is not None:
            self.supervisor.join_monitor(SHUTDOWN_STEP_S)
        if not self.enroller.join(SHUTDOWN_STEP_S):
            log.warning("enrollment: still waiting for its server at shutdown; the device stays unprovisioned")
        if self.feedback is not None:
            self.feedback.close()
        self.hub.close()
        if self.preview is not None:
            self.preview.close()
        if self.api is not None:
            self.api.stop()
        if self._pull is not None:
            self._pull.close()
        with self._core_lock:  # an enrollment finishing now either started its core already, or never will
            core = self.device.core
        if core is not None:
            self._close_core(core)
        for stream in self._streams:
            stream.close()
        if self.guard is not None:
            self.guard.save()
        self.notifier.close()
        if self._tuning is not None:
            runtime.restore(self._tuning)  # for a process that goes on (tests, `checkpoint demo`)
            self._tuning = None
        counts = self.device.counts_now()
        log.info("stopped after %.1f s of shutdown: %d entries logged this run, verdicts %s",
                 time.monotonic() - t0, self.device.logged,
                 ",".join(f"{k}={v}" for k, v in sorted(counts.items())) or "-")

    @staticmethod
    def _close_core(core: Core) -> None:
        if core.site is not None:
            core.site.stop()
        if core.sync_thread is not None and core.sync_stop is not None:
            core.sync_stop.set()
            if core.sync_thread.is_alive():
                core.sync_thread.join(SHUTDOWN_STEP_S)
            if core.sync_thread.is_alive():
                log.warning("sync: still busy at shutdown; its work is resumed at the next start")
            elif core.agent is not None and core.sync_log is not None:
                core.agent.close()
                core.sync_log.close()
        if core.log.queued() and not core.log.wait_flushed(SHUTDOWN_STEP_S):
            log.error("entry log: %d entries could not be committed before exit", core.log.queued())
        core.retry_stop.set()
        if core.retry_thread.is_alive():
            core.retry_thread.join(SHUTDOWN_STEP_S)
        core.log.close()

    # ================================================================ the parts, for callers in this process

    @property
    def core(self) -> Core | None:
        return self.device.core

    @property
    def mode(self) -> str:
        return self.device.mode

    @property
    def logged(self) -> int:
        return self.device.logged

    @property
    def trust(self) -> TrustStore:
        return self.device.trust

    def readiness(self) -> readiness.Readiness:
        return self.device.readiness()

    def health(self) -> dict:
        if self.supervisor is None:
            return {"state": "starting", "problems": [], "degraded": []}
        return self.supervisor.health()

    def _backend(self) -> Backend:
        assert self.backend is not None, "started"
        return self.backend

    def status(self) -> dict:
        return self._backend().status()

    def doctor(self) -> dict:
        return self._backend().doctor()

    def set_direction(self, direction: str | None) -> str:
        return self._backend().set_direction(direction)

    def silence(self) -> None:
        self._backend().silence()

    def input_checks(self) -> list:
        return self._backend().input_checks()
