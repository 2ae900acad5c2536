"""The appliance: one process that scans, verifies, logs, shows, syncs and answers the kiosk.

`Appliance` builds everything from a `Config` and runs it (`checkpoint run`). Thread ownership:

- **main**: start-up and shut-down, signals (handlers only set flags), and a supervisor tick
  (~5/s) that never waits for the entry log: health → feedback state, sd_notify WATCHDOG
  (withheld when the verdict worker is stuck), SIGHUP reloads, trust reloads after a sync update,
  the clock guard, the display timer of the event hub, retention, and finding new readers when
  the config lists none.
- **health**: asks the entry log for its health and backlog (it may wait behind a slow commit).
- **verdicts** (the pipeline's worker): SHC part assembly → verify → degraded-mode policy →
  ``EntryLog.record`` (commit first) → ``feedback.show`` → publish the event. A commit that fails
  turns the device to its error state and the person is not shown as admitted.
- one thread per **input** (cameras also decode in a helper), the **feedback** player (and its
  passage monitor, whose timeouts record "granted, did not pass"), **log-retry** (the entry log's
  retry queue), **sync** (SyncAgent.run, batches built in a child process), **api** (uvicorn).

SIGTERM/SIGINT: inputs stop, queued verdicts finish and are committed, outputs go to their safe
state, files are flushed, exit 0 within a few seconds. SIGHUP: the config file is read again and
its live keys applied, and the trust bundle is reloaded. A device that is not provisioned runs
the same inputs in enrollment mode: an enrollment QR (sync/wire/enrollcode.py) provisions it if it has
a trust root to check the server with, and it goes on as a provisioned device without a restart.
A device that cannot check cards (scanner/appliance/readiness.py) shows a fault, never a verdict. Holder
details are sealed only to the key of the root-signed server credential (sync/wire/credential.py).
Spec: issue 8, docs/configuration.md.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import platform
import threading
import time
from collections import Counter
from pathlib import Path
from typing import BinaryIO

from hardware.feedback import DeviceState
from hardware.inputs import SourceState
from hardware.scan import Scan
from scanner import __version__
from scanner.appliance import readiness, runtime
from scanner.appliance.clockguard import ClockGuard
from scanner.appliance.config import Config, discover_inputs
from scanner.appliance.doctor import FAIL, PASS, WARN, Check
from scanner.appliance.events import EventHub
from scanner.appliance.pipeline import Pipeline
from scanner.appliance.preview import Preview
from scanner.appliance.sdnotify import Notifier
from scanner.base import i18n
from scanner.base.errors import CheckpointError
from scanner.base.safetext import escape
from scanner.cards.formats.shc import ChunkAssembler, parse_chunk, verify_parts
from scanner.cards.trust import TrustStore, load_device_trust
from scanner.cards.verdict import Verdict
from scanner.cards.verifier import verify as verify_text
from scanner.store import admission
from scanner.store.entrylog import EntryLog, EntryLogError, EntryLogWriteError
from sync import credential
from sync.wire import enrollcode as enroll
from sync.wire.credential import ServerCredential

log = logging.getLogger(__name__)

TICK_S = 0.2
HEALTH_EVERY_S = 1.0
LOG_STALE_S = 15.0  # the log has not answered a health question for this long: it is stuck
BACKLOG_EVERY_S = 5.0
DISCOVER_EVERY_S = 5.0
SHUTDOWN_STEP_S = 2.5
MODES = ("provisioned", "standalone", "unprovisioned")


@functools.cache
def versions() -> dict:
    """This software's and its main parts' versions, and the system's (for the status page)."""
    from importlib import metadata

    out = {"checkpoint-edge": __version__, "python": platform.python_version()}
    for dist in ("cryptography", "starlette", "uvicorn", "opencv-python-headless", "zxing-cpp", "pyzbar",
                 "gpiozero", "sqlite-utils", "requests"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    import sqlite3
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


class DaemonError(CheckpointError):
    """The appliance cannot start as configured (one line for the log and the CLI)."""

    code = "daemon"


@dataclasses.dataclass
class Core:
    """The parts that need the device's identity: the entry log, and sync when there is a server."""

    device_id: str
    checkpoint_id: str
    mode: str
    log: EntryLog
    retry_stop: threading.Event
    retry_thread: threading.Thread
    agent: object | None = None
    sync_log: EntryLog | None = None
    sync_stop: threading.Event | None = None
    sync_thread: threading.Thread | None = None


class Appliance:
    """The daemon (see the module docstring). ``run()`` blocks until stopped; ``once``: until the
    file inputs are exhausted and (with sync) everything logged is acknowledged."""

    def __init__(self, config: Config, *, once: bool = False, notifier: Notifier | None = None,
                 stdout=None, recent_errors=None, pin_factory=None, sync_timeout_s: float = 60.0,
                 keepalive_s: float | None = None, dev: str = "/dev",
                 discover_every_s: float = DISCOVER_EVERY_S) -> None:
        self.config = config
        self.once = once
        self.notifier = notifier or Notifier()
        self.stdout = stdout
        self.recent_errors = recent_errors
        self.sync_timeout_s = sync_timeout_s
        self._pin_factory = pin_factory
        self.dev = dev  # where readers are looked for by their udev names (a config without inputs)
        self.discover_every_s = discover_every_s
        self._keepalive_s = keepalive_s
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._trust_changed = threading.Event()
        self._lock = threading.Lock()
        self._started_mono = time.monotonic()
        self._tuning: runtime.Tuning | None = None  # set once started (scanner/appliance/runtime.py)
        self.state_dir = config.state_dir
        self.policy = config.admission_policy()
        self.hub = EventHub(config.api.display_s, max_subscribers=config.api.max_clients)
        self.core: Core | None = None
        self.mode = "unprovisioned"
        self.trust = TrustStore()
        self.trust_age = admission.TrustAge()
        self.trust_error: str | None = None
        self._root_pinned = readiness.root_pinned(config)  # again after enrollment
        self._credential: ServerCredential | None = None  # the root-signed server identity in use
        self._credential_error: str | None = None
        self.chunks = ChunkAssembler(config.scan.shc_hold_s)
        self._assembled: str | None = None  # the joined parts _prepare just made (worker thread only)
        self.counts: Counter = Counter()
        self.logged = 0
        self._write_problem: str | None = None
        self._backlog: tuple[int, int | None] = (0, None)
        self._backlog_at = 0.0
        self._sync_state = None
        self._log_health = None  # (Health, monotonic time): refreshed by the "health" thread
        self._monitor: threading.Thread | None = None
        self._health: dict = {"state": "starting", "problems": [], "degraded": []}
        self._last_state: tuple[str, str] | None = None
        self._last_ping = 0.0
        self._hung_logged = False
        self._purge_due = time.monotonic() + 60.0  # the first purge a minute after start, then every interval
        self._discover_at = 0.0
        self._streams: list[BinaryIO] = []
        self._known_inputs: set[str] = set()
        self.feedback = None
        self.pipeline: Pipeline | None = None
        self.api = None
        kiosk = config.kiosk
        self.preview = None  # the kiosk's camera preview (scanner/appliance/preview.py)
        if kiosk.enabled and kiosk.preview and config.api.enabled:
            self.preview = Preview(kiosk.preview_fps, kiosk.preview_width, max_viewers=config.api.max_clients)
        self._pull = None
        self.guard: ClockGuard | None = None

    # ================================================================ start

    def start(self) -> None:
        """Build and start everything; raises DaemonError (nothing left running) if it cannot."""
        cfg = self.config
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise DaemonError(f"state directory {self.state_dir}: {exc.strerror}") from None
        self.guard = ClockGuard(self.state_dir, max_offset_s=cfg.clock.max_offset_s,
                                floor=self._floor_from_log())
        try:
            self._open_feedback()
            self._open_api()
            self._build_pipeline()
            identity = self._identity()
            if identity is not None:
                self._start_core(*identity)
            elif not cfg.enroll.qr:
                raise DaemonError("this device is not provisioned: run `checkpoint provision --server URL --token T` "
                                  "(zero-touch enrollment is off: [enroll] qr = false)", code="not_provisioned")
            else:
                log.warning("not provisioned: waiting for an enrollment QR (%s...) at any input", enroll.PREFIX)
            if self.api is not None:
                self.api.start()
            log.info("starting %s: mode %s, %d inputs, api %s", __version__, self.mode, len(self._known_inputs),
                     self.api.url if self.api else "off")
            self._refresh_log_health()
            self._monitor = threading.Thread(target=self._monitor_loop, name="health", daemon=True)
            self._monitor.start()
            self.pipeline.start()
        except BaseException:
            self.shutdown()
            raise
        self._tick()
        t = self._tuning = runtime.tune_for_scanning()  # the long-lived objects exist now: out of the GC's walks
        log.info("runtime: switch interval %.0f ms, %d objects frozen", t.switch_interval_s * 1000, t.frozen_objects)
        self.notifier.ready(self._status_line())

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

    def _open_feedback(self) -> None:
        from hardware.console_feedback import ConsoleLine
        from hardware.feedback import Callbacks
        from hardware.gpio_feedback import open_feedback

        cfg = self.config
        mirror = ConsoleLine(self.stdout, lang=cfg.device.lang) if cfg.feedback.console else None
        callbacks = Callbacks(on_no_passage=self._no_passage, on_passage=None,
                              on_direction=self._direction_changed, on_acknowledge=self._acknowledged)
        self.feedback = open_feedback(cfg.feedback_config(), pin_factory=self._pin_factory, callbacks=callbacks,
                                      mirror=mirror, stream=self.stdout, lang=cfg.device.lang)
        self.hub.publish("direction", {"direction": self.feedback.direction, "by": "config"})

    def _open_api(self) -> None:
        from scanner.appliance import api as apimod

        cfg = self.config.api
        if not cfg.enabled:
            return
        host, port = cfg.listen
        try:
            sock = apimod.bind(host, port)
        except OSError as exc:
            raise DaemonError(f"api: cannot listen on {host}:{port}: {exc.strerror}", code="api_listen") from None
        kw = {} if self._keepalive_s is None else {"keepalive_s": self._keepalive_s}
        if self.config.kiosk.enabled:
            from scanner.appliance import pages
            kw["extra_routes"] = pages.routes(self.kiosk_settings, self.preview)
        app = apimod.create_app(self, self.hub, token=self.config.api_token(), listen_host=host, **kw)
        # server pull (sync/pull.py): its own endpoints, authenticated by the server's pull key
        from sync.pull import with_pull
        app = with_pull(app, self.state_dir, self.config.db_path)
        self._pull = app.pull_app.state.pull  # closed at shutdown (its own log connection)
        self.api = apimod.ApiServer(app, sock)

    def _build_pipeline(self) -> None:
        scan = self.config.scan
        self.pipeline = Pipeline(self._handle, cooldown=scan.cooldown_s, queue_size=scan.queue_size,
                                 on_issue=self._on_issue)
        for inp in self._inputs_from_config():
            self._add_input(inp)
        if not self._known_inputs:
            log.warning("no input configured or found; plug in a USB reader or configure a [[camera]]")

    def _inputs_from_config(self) -> list:
        from hardware.camera import CameraInput
        from hardware.readers import SerialReader, StdinReader
        from hardware.readers_hid import HidReader

        cfg = self.config
        clock = self.guard.now
        inputs: list = []
        if not cfg.has_inputs:
            return self._discovered_inputs()
        inputs += [CameraInput(c, clock=clock, on_frame=self._preview_hook(c)) for c in cfg.cameras()]
        inputs += [SerialReader(c, clock=clock) for c in cfg.serial_readers()]
        inputs += [HidReader(c, clock=clock) for c in cfg.hid_readers()]
        for table in cfg.stdin:
            if table.path == "-":
                import sys
                stream = sys.stdin.buffer
            else:
                try:
                    stream = open(table.path, "rb")  # noqa: SIM115 (closed at shutdown)
                except OSError as exc:
                    raise DaemonError(f"stdin[{table['name']}]: {table['path']}: {exc.strerror}") from None
                self._streams.append(stream)
            inputs.append(StdinReader(stream, name=table.name, direction=table.direction, clock=clock))
        return inputs

    def _discovered_inputs(self) -> list:
        """Inputs found by their udev names (config without input tables); new ones only."""
        from scanner.appliance.config import defaults

        found = discover_inputs(self.dev)
        fresh = {kind: [t for t in tables if (t.get("device") or t.get("port")) not in self._known_inputs]
                 for kind, tables in found.items()}
        fresh = {k: v for k, v in fresh.items() if v}
        if not fresh:
            return []
        extra = defaults(self.state_dir, fresh)
        from hardware.camera import CameraInput
        from hardware.readers import SerialReader
        from hardware.readers_hid import HidReader
        clock = self.guard.now
        inputs = [CameraInput(c, clock=clock, on_frame=self._preview_hook(c)) for c in extra.cameras()]
        inputs += [SerialReader(c, clock=clock) for c in extra.serial_readers()]
        inputs += [HidReader(c, clock=clock) for c in extra.hid_readers()]
        return inputs

    def _preview_hook(self, camera_config):
        """The camera's ``on_frame`` hook feeding the kiosk preview (None without a preview)."""
        return self.preview.add_camera(camera_config.source_id) if self.preview is not None else None

    @staticmethod
    def _input_key(inp) -> str:
        """The device an input reads (its path or vendor:product), to recognise it when found again."""
        cfg = getattr(inp, "config", None)
        return str(getattr(cfg, "device", None) or getattr(cfg, "port", None) or inp.source_id)

    def _add_input(self, inp) -> None:
        self._known_inputs.add(self._input_key(inp))
        self.pipeline.add(inp)
        if self.pipeline.health().running:
            log.info("input %s %s added", inp.kind, escape(inp.source_id))

    # ---------------------------------------------------------------- identity and the core

    def _identity(self) -> tuple[str, str, str] | None:
        """(device_id, checkpoint_id, mode), or None when the device waits for enrollment."""
        from sync.state import DeviceConfig, StateError
        from sync.wire import identity

        try:
            dev = DeviceConfig.load(self.state_dir)
        except StateError as exc:
            if exc.code != "not_provisioned":
                raise DaemonError(str(exc), code=exc.code) from None
        else:
            if not self.config.sync.enabled:
                log.warning("provisioned for %s, but [sync] enabled = false: entries stay on this device",
                            dev.server_url)
            return dev.device_id, dev.checkpoint_id, "provisioned"
        checkpoint = self.config.device.checkpoint_id
        if not self.config.sync.enabled:
            if not checkpoint:
                raise DaemonError("without a server ([sync] enabled = false) set [device] checkpoint_id",
                                  code="not_provisioned")
            key, created = identity.load_or_create(self.state_dir)
            if created:
                log.info("standalone device key created")
            return identity.device_id(key), checkpoint, "standalone"
        return None

    def _start_core(self, device_id: str, checkpoint_id: str, mode: str) -> None:
        cfg = self.config
        lg = cfg.log
        sealing_key = self._load_credential() if mode == "provisioned" else None
        try:
            entries = EntryLog(cfg.db_path, device_id=device_id, checkpoint_id=checkpoint_id,
                               sealing_key=sealing_key,
                               holder_details=lg.holder_details, synchronous=lg.synchronous,
                               passback_window_s=lg.passback_window_s, retention_days=lg.retention_days,
                               min_free_bytes=lg.min_free_mb * 1024 * 1024, clock=self.guard.entry_state)
        except (EntryLogError, OSError) as exc:
            raise DaemonError(f"entry log {cfg.db_path}: {exc}", code=getattr(exc, "code", "log_unusable")) from None
        if entries.holder_details_note:
            log.warning("entry log: holder details not stored (%s)", entries.holder_details_note)
        retry_stop = threading.Event()
        retry = threading.Thread(target=entries.retry_loop, args=(retry_stop,), name="log-retry", daemon=True)
        core = Core(device_id, checkpoint_id, mode, entries, retry_stop, retry)
        self.reload_trust(initial=True)
        if mode == "provisioned" and cfg.sync.enabled:
            self._start_sync(core)
        retry.start()
        if core.sync_thread is not None:
            core.sync_thread.start()
        self.core, self.mode = core, mode
        self._backlog = entries.backlog()
        log.info("device %s at checkpoint %s (%s)", device_id, escape(checkpoint_id), mode)

    def _load_credential(self):
        """The sealing key of the server credential, verified again against the pinned root and this
        device's server; None (holder details are then not stored) when there is no valid one."""
        try:
            cred = credential.load(self.state_dir)
        except CheckpointError as exc:  # CredentialError, or StateError for an unreadable device.json
            with self._lock:
                self._credential, self._credential_error = None, exc.code
            log.error("server credential: %s; holder details are not stored until a valid one is installed",
                      escape(str(exc)))
            return None
        with self._lock:
            self._credential, self._credential_error = cred, None
        log.info("server credential: %s (serial %d), sealing key %s", escape(cred.server_id), cred.serial,
                 cred.sealing_key_id())
        return cred.sealing_key

    def _reload_credential(self) -> None:
        """After a trust update: a new credential (verified when installed) brings its sealing key."""
        core = self.core
        if core is None or core.mode != "provisioned":
            return
        before = self._credential
        key = self._load_credential()
        if key is None and before is not None:  # changed on disk, not by the agent (it installs only verified ones)
            with self._lock:
                self._credential = before
            log.error("server credential: keeping the one verified before (serial %d)", before.serial)
        elif key is not None and (before is None or before.data != self._credential.data):
            core.log.set_sealing_key(key)

    def _start_sync(self, core: Core) -> None:
        from sync.agent import InlineBuilder, ProcessBuilder, SyncAgent

        cfg = self.config.sync
        sync_log = EntryLog(self.config.db_path, create=False)  # the agent's own connection
        try:
            from sync.wire import identity
            builder = (ProcessBuilder(self.config.db_path, self.state_dir, core.device_id)
                       if cfg.builder == "process"
                       else InlineBuilder(sync_log, identity.load(self.state_dir), core.device_id))
            agent = SyncAgent(self.state_dir, sync_log, builder=builder, inputs=self._inputs_up,
                              on_trust=lambda version: self._trust_changed.set(),  # a bundle or credential
                              connect_timeout=cfg.connect_timeout_s, read_timeout=cfg.read_timeout_s,
                              trust_interval_s=cfg.trust_interval_s, idle_interval_s=cfg.interval_s,
                              upload_delay_s=cfg.upload_delay_s)
        except CheckpointError as exc:
            sync_log.close()
            raise DaemonError(f"sync: {exc}", code=exc.code) from None
        core.agent, core.sync_log = agent, sync_log
        core.sync_stop = threading.Event()
        core.sync_thread = threading.Thread(target=self._sync_main, args=(agent, core.sync_stop), name="sync",
                                            daemon=True)

    @staticmethod
    def _sync_main(agent, stop: threading.Event) -> None:
        try:
            agent.run(stop)
        except Exception:  # sync is not essential to scanning: say so, the health check shows it
            log.exception("sync: the sync thread stopped by an error")

    def _inputs_up(self) -> dict:
        pipe = self.pipeline
        if pipe is None:
            return {}
        return {h.source_id[:64]: "up" if h.state in (SourceState.OK, SourceState.FINISHED) else "down"
                for h in pipe.health().sources}

    # ---------------------------------------------------------------- trust

    def reload_trust(self, *, initial: bool = False) -> bool:
        """Load the installed bundle and the configured key files; swap them in atomically. On any
        failure the trust in use stays (and the error is kept for the health check)."""
        try:
            store = load_device_trust(self.state_dir, self.config.trust.roots, self.config.trust.files)
        except (CheckpointError, OSError) as exc:
            code = getattr(exc, "code", "unreadable")
            self.trust_error = f"{code}: {exc}"
            log.error("trust: %s; %s", escape(str(exc)), "no trust loaded" if initial else "keeping the trust in use")
            return False
        for note in store.notes:
            log.warning("trust: %s", escape(note))
        newest = max(store.bundles, key=lambda b: b.version) if store.bundles else None
        age = admission.TrustAge(newest.issued_at, newest.expires_at, newest.version) if newest else admission.TrustAge()
        with self._lock:
            self.trust, self.trust_age, self.trust_error = store, age, None
        log.info("trust: %d keys, bundle %s, %d revoked cards", store.key_count,
                 f"v{age.version}" if age.version is not None else "none", len(store.revoked_cards))
        if not initial:
            runtime.freeze_survivors()  # the old store goes, the new one joins the frozen objects
        return True

    # ================================================================ the verdict worker

    def _handle(self, scan: Scan) -> None:
        ready = self._prepare(scan)
        if ready is not None:  # None: held back (one part of a multi-part card)
            with self._lock:
                trust = self.trust
            self._sink(ready, self._verify(ready.text, trust, self.guard.now()))

    def _verify(self, text: str, trust: TrustStore, now: float) -> Verdict:
        skew = self.config.scan.clock_skew_s
        assembled, self._assembled = self._assembled, None
        if assembled is not None and text == assembled:  # the parts of a multi-part SHC card, from _prepare
            return verify_parts(text.split("\n"), trust, now, clock_skew=skew)
        return verify_text(text, trust, now, clock_skew=skew)

    def _prepare(self, scan: Scan) -> Scan | None:
        """Hold the parts of a multi-part SHC card until all are read; then one scan of all of them."""
        if self.core is None or parse_chunk(scan.text) is None:
            return scan
        progress = self.chunks.add(scan.text, scan.at)
        if progress is None:
            return scan
        if not progress.complete:
            log.info("shc part source=%s:%s part=%d/%d missing=%s", scan.source, escape(scan.source_id),
                     progress.index, progress.total, ",".join(map(str, progress.missing)))
            self.hub.publish("partial", {"index": progress.index, "total": progress.total,
                                         "missing": list(progress.missing), "source": scan.source,
                                         "source_id": scan.source_id,
                                         "message": {lang: progress.message(lang) for lang in i18n.LANGS}})
            return None
        self._assembled = "\n".join(progress.parts)  # verified next, on this same worker thread
        return dataclasses.replace(scan, text=self._assembled)

    def _sink(self, scan: Scan, verdict: Verdict) -> None:
        core = self.core
        if core is None:
            self._enrollment_scan(scan)
            return
        if enroll.is_enroll_text(scan.text):  # shown again to a device that is provisioned already
            log.info("enrollment QR from %s:%s ignored: already provisioned", scan.source, escape(scan.source_id))
            self.hub.publish("error", {"code": "already_provisioned", "source": scan.source,
                                       "source_id": scan.source_id})
            return
        ready = self.readiness()
        if not ready.ready:  # no verdict at all: a card that could not be checked is not a rejected card
            self._not_ready(scan, ready)
            return
        with self._lock:
            trust_age = self.trust_age
        conditions = admission.Conditions(self.guard.now(), self.policy, trust_age, self.guard.status())
        direction = scan.direction or self.feedback.direction
        try:
            result = core.log.record(scan, verdict, direction=direction, conditions=conditions)
        except EntryLogWriteError as exc:
            self._not_admitted(scan, verdict, exc.code, queued=exc.queued, entry_id=exc.entry_id)
            return
        except EntryLogError as exc:
            self._not_admitted(scan, verdict, exc.code, queued=False, entry_id=None)
            return
        if self._write_problem is not None:
            self._write_problem = None
        final, entry, flags = result.verdict, result.entry, result.flags
        self.feedback.show(final, entry.entry_id)
        self._publish_verdict(scan, final, entry, direction, flags)
        with self._lock:
            self.counts[str(final.reason)] += 1
            self.logged += 1
        log.info("verdict source=%s:%s decision=%s reason=%s format=%s direction=%s seq=%d entry=%s clock=%s%s",
                 scan.source, escape(scan.source_id), final.decision, final.reason, final.format or "-", direction,
                 entry.seq, entry.entry_id, entry.clock, f" degraded={','.join(flags)}" if flags else "")
        if core.agent is not None:
            core.agent.wake()

    def _not_admitted(self, scan: Scan, verdict: Verdict, code: str, *, queued: bool, entry_id: str | None) -> None:
        """The entry could not be committed: error state, no verdict shown, nobody admitted."""
        self._write_problem = code
        self.feedback.set_state(DeviceState.ERROR)
        with self._lock:
            self.counts["not_logged"] += 1
        self.hub.publish("error", {"code": code, "queued": queued, "source": scan.source,
                                   "source_id": scan.source_id, "message": {
                                       "vi": "Không ghi được nhật ký: không cho qua, gọi kỹ thuật viên",
                                       "en": "Cannot write the log: do not admit, call a technician"}})
        log.error("not admitted source=%s:%s: entry log %s (%s)", scan.source, escape(scan.source_id), code,
                  f"entry {entry_id} queued for retry" if queued else "entry NOT recorded")

    def _not_ready(self, scan: Scan, ready: readiness.Readiness) -> None:
        """A scan the device cannot check: its fault state, the reason on the screen, nothing logged."""
        self.feedback.set_state(DeviceState.ERROR)
        with self._lock:
            self.counts["not_ready"] += 1
        self.hub.publish("error", {"code": "not_ready", "readiness": ready.to_dict(), "source": scan.source,
                                   "source_id": scan.source_id,
                                   "message": {lang: ready.message(lang) for lang in i18n.LANGS}})
        log.warning("not ready (%s): the scan from %s:%s was not checked", ready.code, scan.source,
                    escape(scan.source_id))

    def _publish_verdict(self, scan: Scan, verdict: Verdict, entry, direction: str, flags: tuple) -> None:
        card = verdict.card
        data = {
            "decision": str(verdict.decision), "reason": str(verdict.reason), "format": verdict.format,
            "cert_type": card.cert_type if card else None, "issuer": card.issuer if card else None,
            "expires_at": card.expires_at if card else None,
            "holder": {"name": card.holder.name, "birth_year": card.holder.birth_year} if card else None,
            "direction": direction, "source": scan.source, "source_id": scan.source_id,
            "at": round(scan.at, 3), "seq": entry.seq, "degraded": list(flags),
            "display_s": self.hub.display_s,
            "published_ms": round(time.time() * 1000, 3),  # wall clock, for the kiosk's paint latency
        }
        self.hub.publish("verdict", data)

    def _enrollment_scan(self, scan: Scan) -> None:
        """Not provisioned: only an enrollment QR does anything."""
        from scanner.appliance.provisioning import provision_appliance

        ready = self.readiness()
        if ready.code == readiness.NO_TRUST_ROOT:  # nothing to check a server with: no QR is accepted
            self._not_ready(scan, ready)
            return
        if not enroll.is_enroll_text(scan.text):
            log.info("not provisioned: ignored a scan from %s:%s (waiting for an enrollment QR)", scan.source,
                     escape(scan.source_id))
            self.hub.publish("error", {"code": "not_provisioned", "source": scan.source,
                                       "source_id": scan.source_id})
            return
        try:
            code = enroll.parse(scan.text)
            log.info("enrollment QR read from %s:%s: enrolling with %s", scan.source, escape(scan.source_id),
                     escape(code.server))
            trust_root = self.config.enroll.trust_root
            ca_file = self.config.sync.ca_file
            res = provision_appliance(code.server, code.token, state_dir=self.state_dir, root_sha256=code.root_sha256,
                                      trust_root=trust_root, ca_file=str(ca_file) if ca_file else None,
                                      owner_user=None, write_config=False)
            self._root_pinned = True
            self._start_core(res.device_id, res.checkpoint_id, "provisioned")
        except CheckpointError as exc:
            log.error("enrollment failed (%s): %s", exc.code, escape(str(exc)))
            self.hub.publish("error", {"code": exc.code, "source": scan.source, "source_id": scan.source_id})
            return
        self.hub.publish("enrolled", {"device_id": res.device_id, "checkpoint_id": res.checkpoint_id})

    def _on_issue(self, issue) -> None:
        self.hub.publish("error", {"code": issue.code, "source": issue.source, "source_id": issue.source_id,
                                   "hint": issue.hint})

    # ---------------------------------------------------------------- feedback callbacks (their threads)

    def _no_passage(self, entry_id) -> None:
        core = self.core
        if core is None:
            return
        try:
            core.log.record_followup(str(entry_id), "did_not_pass")
            log.info("did not pass entry=%s", entry_id)
        except (EntryLogError, ValueError) as exc:
            log.error("cannot record that entry %s did not pass: %s", entry_id, getattr(exc, "code", exc))

    def _direction_changed(self, direction: str) -> None:
        self.hub.publish("direction", {"direction": direction, "by": "staff"})

    def _acknowledged(self) -> None:
        self.hub.publish("silence", {})

    # ================================================================ API backend

    def set_direction(self, direction: str | None) -> str:
        if direction is None or direction != self.feedback.direction:
            self.feedback.toggle_direction()
        return self.feedback.direction

    def silence(self) -> None:
        self.feedback.acknowledge()

    def health(self) -> dict:
        with self._lock:
            return dict(self._health)

    def readiness(self) -> readiness.Readiness:
        """Can this device check cards now (scanner/appliance/readiness.py: the one answer every surface shows)."""
        with self._lock:
            trust, error = self.trust, self.trust_error
        return readiness.assess(readiness.Facts(self.mode, self._root_pinned, trust.key_count, error))

    def status(self) -> dict:
        core = self.core
        pipe = self.pipeline.health() if self.pipeline else None
        with self._lock:
            health, age, counts = dict(self._health), self.trust_age, dict(self.counts)
            trust_error = self.trust_error
            cred, cred_error = self._credential, self._credential_error
        today = None
        if core is not None:
            t = core.log.totals()
            today = {"day": t.day, "scans": t.scans, "accepted": t.accepted, "rejected": t.rejected,
                     "duplicates": t.duplicates, "in": t.admitted_in, "out": t.admitted_out,
                     "did_not_pass": t.did_not_pass, "occupancy": t.occupancy, "by_reason": t.by_reason}
        st = self._sync_state
        now = self.guard.now()
        clock = self.guard.status()
        return {
            "version": __version__, "state": health["state"], "problems": health["problems"],
            "degraded": health["degraded"], "mode": self.mode, "readiness": self.readiness().to_dict(),
            "credential": {**cred.summary(), "error": None} if cred is not None else {"error": cred_error},
            "device": {"id": core.device_id if core else None, "checkpoint": core.checkpoint_id if core else None,
                       "name": self.config.device.name},
            "direction": self.feedback.direction, "uptime_s": round(time.monotonic() - self._started_mono, 1),
            "today": today, "since_start": counts,
            "inputs": [{"kind": h.source, "id": h.source_id, "state": str(h.state), "reason": h.reason,
                        "scans": h.scans, "issues": h.issues} for h in (pipe.sources if pipe else ())],
            "pipeline": {"verdicts": pipe.verdicts, "folded": pipe.folded, "dropped": pipe.dropped,
                         "queued": pipe.queued} if pipe else None,
            "log": dataclasses.asdict(self._log_health[0]) if core and self._log_health else None,
            "sync": {"enabled": core is not None and core.agent is not None, "pending": self._backlog[0],
                     "oldest_pending_ms": self._backlog[1],
                     "last_success_ms": st.last_success_ms if st else None,
                     "last_error_code": st.last_error_code if st else None,
                     "alarms": list(st.alarms) if st else []},
            "trust": {"version": age.version, "issued_at": age.issued_at, "expires_at": age.expires_at,
                      "age_s": None if age.issued_at is None else max(0, round(now - age.issued_at)),
                      "keys": self.trust.key_count, "stale": admission.trust_stale(self.policy, age, now),
                      "error": trust_error},
            "clock": {"confirmed": clock.confirmed, "by": clock.by, "behind": clock.behind,
                      "kernel": clock.kernel, "offset_ms": clock.offset_ms,
                      "confirmed_at": clock.confirmed_at},
            "feedback": {"kind": self.feedback.kind, "fault": self.feedback.fault,
                         "fallback": getattr(self.feedback, "fallback_reason", None)},
            "versions": versions(),
            "config": self.config.summary(),
            "recent_errors": self.recent_errors.list() if self.recent_errors is not None else [],
        }

    def kiosk_settings(self) -> dict:
        """What the kiosk page needs to know of its device (`GET /api/v1/kiosk`): no data, no secrets."""
        k = self.config.kiosk
        return {"lang": k.lang, "langs": list(i18n.LANGS), "occupancy": k.occupancy,
                "display_s": self.hub.display_s, "name": self.config.device.name,
                "preview": {"cameras": self.preview.cameras(), "fps": k.preview_fps}
                if self.preview is not None else None}

    def doctor(self) -> dict:
        from scanner.appliance import doctor
        return doctor.run(self.config, live=self, server_timeout=3.0).to_dict()

    # the doctor's view of the running parts (doctor.run(live=self))

    def input_checks(self) -> list[Check]:
        out = []
        for h in self.pipeline.health().sources if self.pipeline else ():
            ok = h.state in (SourceState.OK, SourceState.FINISHED)
            status = PASS if ok else FAIL if h.state is SourceState.FAILED else WARN
            detail = f"{h.state}" + (f" ({h.reason})" if h.reason else "") + f", {h.scans} reads"
            if h.detail and not ok:
                detail += f": {escape(h.detail)}"
            fix = "" if ok else ("plug it in / check the cable; it is retried by itself"
                                 if h.state is SourceState.REOPENING else "see the detail; fix the config")
            out.append(Check(f"{'camera' if h.source == 'camera' else 'reader'}:{h.source_id}", status, detail, fix))
        if not out:
            out.append(Check("inputs", WARN, "no input", "plug in a USB reader or configure a [[camera]]"))
        return out

    def gpio_check(self) -> Check:
        fb = self.feedback
        if fb.kind == "console" and getattr(fb, "fallback_reason", None):
            return Check("gpio", WARN, f"GPIO unavailable, lights on the console: {escape(fb.fallback_reason)}",
                         "add the service user to the 'gpio' group, or check the pins (docs/wiring.md)")
        if fb.fault:
            return Check("gpio", FAIL, f"outputs stopped: {escape(fb.fault)}", "check the wiring; restart the service")
        return Check("gpio", PASS, f"feedback on {fb.kind}")

    def log_check(self) -> Check | None:
        core = self.core
        if core is None:
            return None
        h = core.log.health()
        if h.state == "ok":
            return None
        status = FAIL if h.state == "error" else WARN
        return Check("database:health", status, f"{h.state}: {', '.join(h.problems)} ({h.queued} queued)",
                     "free disk space or replace the SD card; entries are kept in memory meanwhile")

    def clock_status(self):
        return self.guard.status()

    def backlog(self) -> tuple[int, int | None]:
        return self._backlog

    # ================================================================ supervision (main thread)

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def run(self) -> int:
        """Start, supervise until stopped (or, with ``once``, the file inputs are done), shut down."""
        self.start()
        try:
            self.supervise()
        finally:
            self.shutdown()
        return 0

    def supervise(self) -> None:
        """The main thread's loop after start(): until stopped, or with ``once`` until done."""
        while not self._stop.is_set():
            self._tick()
            if self.once and self._files_done():
                self.drain_sync()
                return
            self._stop.wait(TICK_S)

    def _files_done(self) -> bool:
        inputs = [i for i in self.pipeline.inputs() if i.finite]
        return all(i.join(0) for i in inputs) and self.pipeline.wait_idle(0.0)

    def drain_sync(self, *, interruptible: bool = True) -> None:
        """Wait until the sync thread has delivered everything logged (at most ``sync_timeout_s``;
        a stop request ends the wait if ``interruptible``): --once, and the demo's timed run."""
        core = self.core
        if core is None or core.agent is None:
            return
        deadline = time.monotonic() + self.sync_timeout_s
        core.agent.wake(at_once=True)
        pause = threading.Event()
        while time.monotonic() < deadline and not (interruptible and self._stop.is_set()):
            if core.log.backlog()[0] == 0:
                return
            pause.wait(0.1)
        log.warning("%d entries not yet acknowledged by the server after %.0f s",
                    core.log.backlog()[0], self.sync_timeout_s)

    def _tick(self) -> None:
        now_mono = time.monotonic()
        if self._reload.is_set():
            self._reload.clear()
            self._do_reload()
        if self._trust_changed.is_set():
            self._trust_changed.clear()
            self.reload_trust()
            self._reload_credential()
        self.hub.expire()
        self._refresh_clock()
        self._update_health()
        self._watchdog(now_mono)
        self.guard.save_if_due(self.config.clock.persist_interval_s)
        self._maybe_purge(now_mono)
        self._maybe_discover(now_mono)

    def _refresh_clock(self) -> None:
        st = self._sync_state
        self.guard.refresh(st.server_time() if st is not None else None)

    def _monitor_loop(self) -> None:
        """The "health" thread: asks the entry log (which may block behind a slow commit) so that
        the main thread never waits for it."""
        while not self._stop.wait(HEALTH_EVERY_S):
            self._refresh_log_health()

    def _refresh_log_health(self) -> None:
        core = self.core
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
        except Exception as exc:  # sqlite3 errors included: the health check reports the log itself
            log.warning("entry log: cannot count the backlog: %s", exc)
        if core.agent is not None:
            from sync.state import StateError
            try:
                self._sync_state = core.agent.snapshot()  # the agent's own state, not its file
            except StateError as exc:
                log.warning("sync state unreadable: %s", exc)

    def _update_health(self) -> None:
        problems: list[str] = []
        core = self.core
        for h in self.pipeline.health().sources:
            if h.state in (SourceState.REOPENING, SourceState.FAILED):
                problems.append(f"input_down:{h.source_id}")
        log_state = None
        if core is not None and self._log_health is not None:
            lh, at = self._log_health
            log_state = lh.state
            if time.monotonic() - at > LOG_STALE_S:
                problems.append("log:unresponsive")
            elif lh.state == "error":
                problems += [f"log:{p}" for p in lh.problems if p != "low_disk"] or ["log:error"]
            elif self._write_problem is not None:
                self._write_problem = None  # the log recovered (its retry queue is empty)
        if self._write_problem is not None:
            problems.append(f"log:{self._write_problem}")
        ready = self.readiness()
        if not ready.ready and ready.code != readiness.NOT_PROVISIONED:
            problems.append(ready.code)
        if self.feedback.fault:
            problems.append("feedback_fault")
        now = self.guard.now()
        with self._lock:
            age = self.trust_age
        backlog, oldest = self._backlog
        flags = list(admission.flags(self.policy, age, self.guard.status(), now, backlog=backlog,
                                    oldest_pending_ms=oldest))
        if log_state == "warning":
            flags.append(admission.LOW_DISK)
        if ready.code == readiness.NOT_PROVISIONED:
            flags.append(admission.NOT_PROVISIONED)
        if core is not None and core.mode == "provisioned" and self._credential is None:
            flags.append(admission.NO_CREDENTIAL)
        if self._sync_state is not None and self._sync_state.alarms:
            flags += [f"sync:{a}" for a in self._sync_state.alarms]
        problems = sorted(set(problems))
        state = "error" if problems else "degraded" if flags else "ok"
        with self._lock:
            self._health = {"state": state, "problems": problems, "degraded": flags, "mode": self.mode,
                            "readiness": ready.to_dict()}
        self.feedback.set_state({"ok": DeviceState.OK, "degraded": DeviceState.DEGRADED,
                                 "error": DeviceState.ERROR}[state])
        if (state, ready.code) != self._last_state:
            self._last_state = (state, ready.code)
            self.hub.publish("state", {"state": state, "problems": problems, "degraded": flags, "mode": self.mode,
                                       "readiness": ready.to_dict()})
            level = logging.INFO if state == "ok" else logging.WARNING
            log.log(level, "state %s problems=%s degraded=%s", state, ",".join(problems) or "-",
                    ",".join(flags) or "-")
            self.notifier.status(self._status_line())

    def _status_line(self) -> str:
        h = self._health
        return f"{h['state']} · {self.mode} · {self.logged} entries" + (
            f" · {', '.join(h['problems'] + h['degraded'])}" if h["problems"] or h["degraded"] else "")

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
        core = self.core
        if core is None or now_mono < self._purge_due:
            return
        self._purge_due = now_mono + self.config.log.purge_interval_h * 3600

        def purge() -> None:
            try:
                core.log.purge()
            except (EntryLogError, OSError) as exc:
                log.warning("retention: purge failed: %s", exc)
            except Exception:  # sqlite3 errors: the health check shows the log's state
                log.exception("retention: purge failed")

        threading.Thread(target=purge, name="purge", daemon=True).start()

    def _maybe_discover(self, now_mono: float) -> None:
        cfg = self.config
        if cfg.has_inputs or \
                now_mono - self._discover_at < self.discover_every_s:
            return
        self._discover_at = now_mono
        for inp in self._discovered_inputs():
            self._add_input(inp)

    def _do_reload(self) -> None:
        """SIGHUP: the config file again (live keys applied, others named), then the trust."""
        from scanner.appliance.config import ConfigError, load

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
        self.reload_trust()
        self.notifier.ready(self._status_line())

    def _apply_live(self, new: Config) -> None:
        self.policy = new.admission_policy()
        self.pipeline.cooldown = new.scan.cooldown_s
        self.chunks.hold_seconds = float(new.scan.shc_hold_s)
        self.hub.display_s = new.api.display_s
        self.guard.max_offset_s = new.clock.max_offset_s
        core = self.core
        if core is not None:
            lg = new.log
            core.log.passback_window_ms = int(lg.passback_window_s * 1000)
            core.log.retention_days = lg.retention_days
            core.log.min_free_bytes = lg.min_free_mb * 1024 * 1024
        self.config = self.config.with_live_keys(new)  # the other keys keep their running values

    # ================================================================ shutdown

    def shutdown(self) -> None:
        """Stop taking input, finish verdicts in flight, outputs safe, flush, close. Idempotent."""
        if getattr(self, "_shut", False):
            return
        self._shut = True
        self._stop.set()
        self.notifier.stopping()
        t0 = time.monotonic()
        if self.pipeline is not None:
            self.pipeline.stop(timeout=SHUTDOWN_STEP_S)
        if self._monitor is not None:
            self._monitor.join(SHUTDOWN_STEP_S)
        if self.feedback is not None:
            self.feedback.close()
        self.hub.close()
        if self.preview is not None:
            self.preview.close()
        if self.api is not None:
            self.api.stop()
        if self._pull is not None:
            self._pull.close()
        core = self.core
        if core is not None:
            if core.sync_thread is not None:
                core.sync_stop.set()
                if core.sync_thread.is_alive():
                    core.sync_thread.join(SHUTDOWN_STEP_S)
                if core.sync_thread.is_alive():
                    log.warning("sync: still busy at shutdown; its work is resumed at the next start")
                else:
                    core.agent.close()
                    core.sync_log.close()
            if core.log.queued():
                if not core.log.wait_flushed(SHUTDOWN_STEP_S):
                    log.error("entry log: %d entries could not be committed before exit", core.log.queued())
            core.retry_stop.set()
            if core.retry_thread.is_alive():
                core.retry_thread.join(SHUTDOWN_STEP_S)
            core.log.close()
        for stream in self._streams:
            stream.close()
        if self.guard is not None:
            self.guard.save()
        self.notifier.close()
        if self._tuning is not None:
            runtime.restore(self._tuning)  # for a process that goes on (tests, `checkpoint demo`)
            self._tuning = None
        with self._lock:
            counts = dict(self.counts)
        log.info("stopped after %.1f s of shutdown: %d entries logged this run, verdicts %s",
                 time.monotonic() - t0, self.logged, ",".join(f"{k}={v}" for k, v in sorted(counts.items())) or "-")
