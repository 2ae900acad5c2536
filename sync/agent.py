"""The device's sync loop: pending entries → signed batches → upload → mark synced on the server's
acknowledgement only; trust updates back; a heartbeat with each contact (docs/sync-protocol.md).

Runs as a thread of the appliance (``SyncAgent.run``) and once from the command line
(``checkpoint sync now``). Network trouble and 5xx are retried forever with exponential backoff
and jitter (Retry-After honoured); a batch the server calls bad is quarantined (kept as a file,
alarm raised) and the batches after it go on. Batches are built in chunks, by default in a
separate low-priority process, so serialising a large backlog never stalls the scan loop.
"""
from __future__ import annotations

import collections
import copy
import logging
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner import __version__
from scanner.base.backoff import Backoff
from scanner.base.errors import CheckpointError, TrustError
from scanner.base.fsutil import atomic_write
from scanner.base.timeutil import now_ms
from scanner.cards.bundle import Bundle
from scanner.cards.revocation import RevocationSet
from scanner.store.entrylog import EntryLog, EntryLogError
from sync import credential, trustupdate
from sync.building import build_next
from sync.client import RejectedError, SyncClient, SyncError, TransientError
from sync.state import (
    HB_RESERVE,
    PROGRESS_EVERY_S,
    QUARANTINE_DIR,
    DeviceConfig,
    Quarantined,
    StateFile,
    SyncState,
    durable_part,
    merge_progress,
)
from sync.wire import batch as batchmod
from sync.wire import delta as deltamod
from sync.wire import identity, protocol
from sync.wire.credential import CredentialError

log = logging.getLogger(__name__)

MIN_BATCH = 50
MAX_BATCH = 5000
TARGET_S = 2.0  # a batch should take about this long on the link
UPLOAD_DELAY_S = 2.0  # after a new entry, wait this long for more (or MIN_BATCH of them) before a contact
SYNC_THREAD_NICE = 10  # the sync thread runs this much nicer than the rest of the process (its scan lane)
WORKER_NICE = 10  # the batch builder's and a trust check's processes run this much nicer, and SCHED_IDLE


def lower_thread_priority(nice: int = SYNC_THREAD_NICE) -> int | None:
    """Make the calling thread ``nice`` steps nicer than it is (on Linux a thread has a nice value
    of its own), so that a scan thread waking up is given the CPU before it. Returns the thread's
    nice value now, or None where that cannot be done (then it runs as before)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
        return os.getpriority(os.PRIO_PROCESS, tid)
    except (AttributeError, OSError) as exc:  # not Linux, or refused
        log.info("sync: the sync thread keeps its priority (%s)", exc)
        return None


# ---------------------------------------------------------------- building batches


class InlineBuilder:
    """Builds batches in the calling thread, yielding the GIL between chunks (the daemon's `[sync]
    builder = "inline"`, the CLI, tests). Trust checks run in this thread too, or with ``trust_nice``
    (the daemon) in a short-lived process at that priority, as ProcessBuilder runs them."""

    def __init__(self, log_: EntryLog, key: ed25519.Ed25519PrivateKey, device_id: str,
                 trust_nice: int | None = None) -> None:
        self.log, self.key, self.device_id = log_, key, device_id
        self.trust_nice = trust_nice

    def build(self, after_seq: int, limit: int, quarantined: Sequence[tuple[int, int]],
              created_ms: int, version: int = batchmod.FORMAT_VERSION) -> batchmod.SignedBatch | None:
        return build_next(self.log, self.key, self.device_id, after_seq, limit, quarantined, created_ms,
                          step=lambda: time.sleep(0), version=version)

    def refresh_trust(self, client: SyncClient, state_dir: str | os.PathLike) -> dict:
        if self.trust_nice is None:
            return trust_job(client, state_dir)
        return trust_in_process(client, state_dir, self.trust_nice)

    def close(self) -> None:
        pass


def trust_in_process(client: SyncClient, state_dir: str | os.PathLike, nice: int) -> dict:
    """The trust update in a process of its own (`python -m sync.trustcheck`, ``nice`` steps nicer and
    SCHED_IDLE): checking and rebuilding a bundle with a million revocations takes seconds of CPU that
    must not hold the scan loop's GIL, and memory that goes back to the system when that process ends."""
    connect, read = client.timeout
    proc = subprocess.run([sys.executable, "-m", "sync.trustcheck", str(state_dir), str(connect), str(read),
                           str(nice)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, check=False)
    try:
        ok, value = pickle.loads(proc.stdout)
    except (pickle.UnpicklingError, EOFError, ValueError):
        raise SyncError(f"trust check process died (exit {proc.returncode})", code="builder_died") from None
    if not ok:
        raise value
    return value


def make_builder(kind: str, log_: EntryLog, state_dir: str | os.PathLike, device_id: str
                 ) -> ProcessBuilder | InlineBuilder:
    """The daemon's builder for `[sync] builder` (``kind``): batches built in a process of their own
    ("process") or on the sync thread ("inline"); trust checks in a short-lived process either way."""
    if kind == "process":
        return ProcessBuilder(log_.path, state_dir, device_id)
    return InlineBuilder(log_, identity.load(state_dir), device_id, trust_nice=WORKER_NICE)


def child_trust(key: ed25519.Ed25519PrivateKey, state_dir: str, connect_timeout: float,
                read_timeout: float) -> dict:
    """A trust check in its own process (sync/trustcheck.py), with the device's key."""
    cfg = DeviceConfig.load(Path(state_dir))
    client = SyncClient(cfg.server_url, key, device_id=cfg.device_id, ca_file=cfg.ca_file,
                        connect_timeout=connect_timeout, read_timeout=read_timeout)
    try:
        return trust_job(client, state_dir)
    finally:
        client.close()


class ProcessBuilder:
    """Builds batches in a separate, lower-priority process (started at the first request, kept;
    nice 10 and SCHED_IDLE): reading the log, serialising and compressing never hold the appliance
    process's GIL nor keep a scan thread off the CPU. This process signs what comes back (OpenSSL
    does not hold the GIL meanwhile), so the worker holds neither the device key nor cryptography's
    library (~11 MB). The process is `python -m sync.builder` on two pipes (no multiprocessing, so
    no resource tracker); it dies with this one however this one dies (it watches its request pipe
    for the hang-up)."""

    def __init__(self, log_path: str | os.PathLike, state_dir: str | os.PathLike, device_id: str,
                 nice: int = WORKER_NICE) -> None:
        self._args = (str(log_path), device_id, str(nice))
        self._state_dir, self._nice = state_dir, nice
        self._key: ed25519.Ed25519PrivateKey | None = None  # loaded at the first build
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._requests: BinaryIO | None = None
        self._answers: BinaryIO | None = None

    @property
    def pid(self) -> int | None:
        """The builder process's pid while it runs (None before the first request)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def _start(self) -> None:
        request_r, request_w = os.pipe()  # both ends close-on-exec: only the child gets its two ends
        answer_r, answer_w = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "sync.builder", str(request_r), str(answer_w), *self._args],
                stdin=subprocess.DEVNULL, pass_fds=(request_r, answer_w))
        except OSError:
            for fd in (request_w, answer_r):
                os.close(fd)
            raise
        finally:
            os.close(request_r)
            os.close(answer_w)
        self._requests, self._answers = os.fdopen(request_w, "wb"), os.fdopen(answer_r, "rb")

    def _stop(self) -> None:
        """Close the pipes (the child exits on the hang-up) and reap it; kill it if it lingers."""
        proc, self._proc = self._proc, None
        for f in (self._requests, self._answers):
            if f is not None:
                try:
                    f.close()
                except OSError:  # a broken pipe on the last flush: the child is gone already
                    continue
        self._requests = self._answers = None
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _call(self, *request):
        with self._lock:
            if self._proc is None:
                self._start()
            requests, answers = self._requests, self._answers
            assert requests is not None and answers is not None  # _start opened both
            try:
                pickle.dump(request, requests, protocol=pickle.HIGHEST_PROTOCOL)
                requests.flush()
                ok, value = pickle.load(answers)
            except (OSError, EOFError, pickle.UnpicklingError):
                self._stop()  # the worker died (e.g. killed): start another next time
                raise SyncError("batch builder process died; restarted", code="builder_died") from None
        if not ok:
            raise value
        return value

    def build(self, after_seq: int, limit: int, quarantined: Sequence[tuple[int, int]],
              created_ms: int, version: int = batchmod.FORMAT_VERSION) -> batchmod.SignedBatch | None:
        unsigned = self._call("build", after_seq, limit, list(quarantined), created_ms, version)
        if unsigned is None:
            return None
        if self._key is None:
            self._key = identity.load(self._state_dir)
        return batchmod.sign(unsigned, self._key)

    def refresh_trust(self, client: SyncClient, state_dir: str | os.PathLike) -> dict:
        """The trust update in a process of its own at the builder's priority (trust_in_process),
        one at a time with the builds. The batch builder is ended first (the next build starts it
        again), so the two workers never hold memory at the same time."""
        with self._lock:
            self._stop()
            return trust_in_process(client, state_dir, self._nice)

    def close(self) -> None:
        with self._lock:
            self._stop()


# ---------------------------------------------------------------- marking


def mark_acked(log_: EntryLog, batch_id: str, first_seq: int, last_seq: int) -> int:
    """Mark the entries first_seq..last_seq that are still pending as synced in ``batch_id``
    (the server holds them all). Entries already marked (by another batch) are left alone."""
    try:
        return log_.mark_synced(batch_id, first_seq, last_seq)
    except EntryLogError as exc:
        if exc.code != "sync_conflict":
            raise
    n, cursor = 0, first_seq - 1
    while cursor < last_seq:
        entries = [e for e in log_.pending(cursor, min(last_seq - cursor, 5000)) if e.seq <= last_seq]
        if not entries:
            break
        run_first = prev = entries[0].seq
        for e in entries[1:]:
            if e.seq != prev + 1:
                n += log_.mark_synced(batch_id, run_first, prev)
                run_first = e.seq
            prev = e.seq
        n += log_.mark_synced(batch_id, run_first, prev)
        cursor = prev
    return n


def quarantine(state_dir: str | os.PathLike, state: SyncState, sb: batchmod.SignedBatch, code: str,
               message: str) -> None:
    """Keep a batch the server refused as bad in STATE/quarantine/ and in ``state`` (the caller
    saves it), raise the alarm; later batches go on. Pushes and pulls (sync/pull.py) both use it."""
    qdir = Path(state_dir) / QUARANTINE_DIR
    qdir.mkdir(mode=0o700, exist_ok=True)
    info = sb.info
    path = qdir / info.file_name
    atomic_write(path, sb.data, 0o600)
    if not any(q["batch_id"] == info.batch_id for q in state.quarantined):
        state.quarantined.append(asdict(Quarantined(info.batch_id, info.first_seq, info.last_seq, code,
                                                    message[:300], now_ms(), str(path))))
    state.set_alarm("batch_quarantined", True)
    log.error("batch %s (seq %d..%d) refused by the server (%s); quarantined in %s, going on",
              info.batch_id, info.first_seq, info.last_seq, code, path)


# ---------------------------------------------------------------- trust


def refresh_bundle(client: SyncClient, state_dir: str | os.PathLike, roots) -> tuple[str, Bundle | None]:
    """Bring the installed trust bundle up to the server's: ("not_modified" | "delta" | "full", the
    installed Bundle or None). A delta that does not apply falls back to the full bundle; a bundle
    that fails any check (root signature, rollback) raises TrustError and the old one stays."""
    try:
        cur = trustupdate.installed(state_dir, roots)
    except TrustError as exc:
        log.error("installed trust bundle unusable (%s); fetching the full bundle", exc.code)
        cur = None
    version, digest = (cur.version, cur.digest) if cur else (None, None)
    if cur is not None:  # a delta needs its version and digest only: the revoked ids are not kept meanwhile
        cur = replace(cur, revoked_cards=RevocationSet())
    download = trustupdate.download_path(state_dir)
    reply = client.trust(version, digest, into=download)
    if reply.kind == "not_modified":
        return "not_modified", cur
    if reply.kind == "delta":
        if cur is not None:
            try:  # the file is read again there, its digest checked (and not held here meanwhile)
                delta = deltamod.open_any_delta(reply.data, roots)
                if isinstance(delta, deltamod.StreamedDelta):
                    return "delta", trustupdate.install_streamed_delta(state_dir, cur, delta, roots)
                applied = deltamod.apply_delta_parts(Path(state_dir) / trustupdate.BUNDLE_NAME, cur, reply.data, roots)
                return "delta", trustupdate.install_applied(state_dir, applied, min_version=version)
            except TrustError as exc:
                log.warning("trust delta refused (%s: %s); fetching the full bundle", exc.code, exc)
        reply = client.trust(version, digest, full=True, into=download)
        if reply.kind == "not_modified":
            return "not_modified", cur
        if reply.kind != "full":
            raise TrustError("server sent a delta when asked for the full bundle", code="bundle_malformed")
    if reply.path is not None:
        return "full", trustupdate.install_file(state_dir, reply.path, roots, min_version=version)
    return "full", trustupdate.install(state_dir, reply.data, roots, min_version=version)


def trust_job(client: SyncClient, state_dir: str | os.PathLike) -> dict:
    """refresh_bundle with the outcome as plain data (it may run in another process):
    {"status": not_modified|delta|full, "version", "issued_at"} or {"status": "failed", "error", "code"}
    (the bundle was refused, the old one kept) or {"status": "error"|"rejected", "code", ...}."""
    roots = trustupdate.load_roots(state_dir)
    if not roots:
        return {"status": "failed", "error": "no trust root pinned on this device (provision it with --trust-root)",
                "code": "no_trust_root"}
    try:
        kind, bundle = refresh_bundle(client, state_dir, roots)
    except TrustError as exc:
        return {"status": "failed", "error": f"{exc.code}: {exc}", "code": exc.code}
    except TransientError as exc:
        return {"status": "error", "code": exc.code, "message": str(exc), "retry_after": exc.retry_after}
    except RejectedError as exc:
        if exc.code == protocol.E_NO_BUNDLE:  # nothing published yet: asked again at every contact
            return {"status": "none", "version": None, "issued_at": None}
        return {"status": "rejected", "code": exc.code, "message": str(exc), "http": exc.status}
    return {"status": kind, "version": bundle.version if bundle is not None else None,
            "issued_at": bundle.issued_at if bundle is not None else None}


# ---------------------------------------------------------------- the agent


@dataclass(frozen=True, slots=True)
class SyncResult:
    """One pass: what was sent and acknowledged, what is left, and the error that stopped it."""

    batches: int
    entries: int
    stored: int
    duplicates: int
    quarantined: int
    pending: int
    complete: bool  # nothing left to send and nothing failed
    error: str | None = None
    error_code: str | None = None
    retry_after: float | None = None
    trust: str | None = None  # not_modified | delta | full | none (nothing published) | failed | None (not checked)

    def to_dict(self) -> dict:
        """The report of `checkpoint sync now --json` (no retry delay: that is the caller's business)."""
        return {"complete": self.complete, "batches": self.batches, "entries": self.entries, "stored": self.stored,
                "duplicates": self.duplicates, "quarantined": self.quarantined, "pending": self.pending,
                "error": self.error, "error_code": self.error_code, "trust": self.trust}


class SyncAgent:
    """Everything sync does on the device, for one state directory and one entry log."""

    def __init__(self, state_dir: str | os.PathLike, entry_log: EntryLog, *, client: SyncClient | None = None,
                 builder=None, inputs: Callable[[], dict] | None = None,
                 on_trust: Callable[[int | None], None] | None = None, connect_timeout: float = 5.0,
                 read_timeout: float = 30.0, trust_interval_s: float = 3600.0, idle_interval_s: float = 30.0,
                 upload_delay_s: float = UPLOAD_DELAY_S, min_batch: int = MIN_BATCH, max_batch: int = MAX_BATCH,
                 target_s: float = TARGET_S, backoff: Backoff | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.config = DeviceConfig.load(self.state_dir)
        self.key = identity.load(self.state_dir)
        self.log = entry_log
        self.client = client or SyncClient(self.config.server_url, self.key, device_id=self.config.device_id,
                                           ca_file=self.config.ca_file, connect_timeout=connect_timeout,
                                           read_timeout=read_timeout)
        self.builder = builder or InlineBuilder(entry_log, self.key, self.config.device_id)
        self.sent_formats: collections.Counter[int] = collections.Counter()  # batches acknowledged, by format
        self.inputs = inputs or (dict)
        self.on_trust = on_trust
        self.files = StateFile(self.state_dir)
        self.trust_interval_s = trust_interval_s
        self.idle_interval_s = idle_interval_s
        self.upload_delay_s = upload_delay_s
        self.min_batch, self.max_batch, self.target_s = min_batch, max_batch, target_s
        self.backoff = backoff or Backoff(1.0, 2.0, 300.0, jitter=True)  # Retry-After: capped at an hour by the client
        self._state: SyncState | None = None  # in memory between passes; the file follows (see _save)
        self._logged_error: str | None = None  # the last failure logged: a retry failing the same way is not
        self._stamp: tuple | None = None  # the file as last read or written here
        self._written: dict | None = None
        self._saved_at = time.monotonic()
        self._view: SyncState | None = None  # a copy for other threads (snapshot)
        self._woke = threading.Condition()
        self._woken_at: float | None = None  # monotonic time of the first wake since the last pass began
        self._wakes = 0
        self._urgent = False

    def close(self) -> None:
        """Write the progress kept in memory (unless another uploader holds the lock), then stop."""
        try:
            self._flush_state()
        finally:
            self.builder.close()
            self.client.close()

    # ------------------------------------------------------------ the state file

    def _load_state(self) -> SyncState:
        """The state for a pass (under the uploader lock): the one in memory, merged with the file
        when another process (``sync now``, export, pull) has written it since."""
        stamp = self.files.stamp()
        if self._state is not None and stamp == self._stamp:
            return self._state
        disk = self.files.load()
        state = disk if self._state is None else merge_progress(disk, self._state)
        state.hb_seq = max(state.hb_seq, disk.hb_reserved)  # numbers up to it may have been sent
        self._state, self._stamp, self._written = state, stamp, disk.to_dict()
        self._saved_at = time.monotonic()
        return state

    def _save(self, state: SyncState, *, progress: bool) -> None:
        """Write the state if a durable field changed; progress alone only when ``progress`` or
        PROGRESS_EVERY_S after the last write. Nothing changed, nothing written."""
        doc = state.to_dict()
        if doc == self._written:
            return
        due = progress or time.monotonic() - self._saved_at >= PROGRESS_EVERY_S
        if not due and self._written is not None and durable_part(doc) == durable_part(self._written):
            return
        self.files.save(state)
        self._stamp, self._written, self._saved_at = self.files.stamp(), doc, time.monotonic()

    def _flush_state(self) -> None:
        if self._state is None:
            return
        try:
            with self.files.lock(wait=False) as held:
                if not held:
                    log.info("sync: another uploader holds the lock; it writes the state")
                    return
                self._save(self._load_state(), progress=True)
        except (OSError, CheckpointError) as exc:
            log.warning("sync: progress not saved: %s", exc)

    def _publish(self, state: SyncState) -> None:
        self._view = copy.deepcopy(state)

    def snapshot(self) -> SyncState:
        """The state as of the last pass, for other threads (the daemon's health and clock): a copy
        not to be changed; read from the file before the first pass."""
        view = self._view
        return view if view is not None else self.files.load()

    def _next_heartbeat(self, state: SyncState) -> int:
        """The next heartbeat number; a new block is reserved (the state written) before the first
        number of it leaves, so a restart never sends a number the server has seen."""
        state.hb_seq += 1
        if state.hb_seq > state.hb_reserved:
            state.hb_reserved = state.hb_seq + HB_RESERVE
            self._save(state, progress=False)
        return state.hb_seq

    # ------------------------------------------------------------ status

    def pending_count(self) -> tuple[int, int | None]:
        """(unsynced entries, at_ms of the oldest one): the log's backlog, read from the few gaps
        between acknowledged spans. (Its full statistics scanned every entry and the day's totals,
        three times a contact, on the scan process's CPU.)"""
        return self.log.backlog()

    def heartbeat_doc(self, state: SyncState) -> dict:
        now = now_ms()
        depth, oldest = self.pending_count()
        try:
            free = shutil.disk_usage(self.state_dir).free
        except OSError:
            free = None
        return {
            "hb_seq": self._next_heartbeat(state), "device_time_ms": now, "software_version": __version__,
            "queue_depth": depth, "oldest_unsynced_age_s": None if oldest is None else max(0, now - oldest) / 1000,
            "last_acked_seq": state.last_acked_seq, "trust_version": state.trust_version,
            "trust_age_s": None if state.trust_issued_at is None else max(0, now // 1000 - state.trust_issued_at),
            "clock_offset_ms": state.clock_offset_ms, "inputs": dict(self.inputs()), "disk_free_bytes": free,
            "alarms": list(state.alarms), "last_error": state.last_error,
        }

    # ------------------------------------------------------------ the steps of a contact

    def _note_clock(self, state: SyncState) -> None:
        if self.client.last_clock_offset_ms is not None:
            state.note_clock(self.client.last_clock_offset_ms)

    def catch_up_acks(self, state: SyncState) -> int:
        """Apply the server's batch list to the log: entries it holds (pushed earlier with the answer
        lost, or imported from a USB export) are marked synced. Returns entries newly marked."""
        n = 0
        while True:
            doc = self.client.acks(state.ack_cursor)
            for batch_id, first, last in doc["batches"]:
                n += mark_acked(self.log, batch_id, first, last)
                state.ack_cursor = max(state.ack_cursor, last)
                state.last_acked_seq = max(state.last_acked_seq, last)
            held = doc.get("held_seq")
            if type(held) is int:
                state.server_held_seq = held
            if not doc.get("more"):
                return n

    def update_trust(self, state: SyncState) -> str:
        """Ask for a newer trust bundle; install it only if it checks out (in the builder's
        process when there is one). Returns what happened; raises TransientError/RejectedError
        when the server could not be asked."""
        state.trust_checked_ms = now_ms()
        res = self.builder.refresh_trust(self.client, self.state_dir)
        status = res["status"]
        if status == "error":
            raise TransientError(res["message"], code=res["code"], retry_after=res["retry_after"])
        if status == "rejected":
            raise RejectedError(res["message"], code=res["code"], status=res["http"])
        if status == "failed":
            self._trust_failed(state, res["error"], res["code"])
            self.update_credential(state)
            return "failed"
        state.trust_error = state.trust_error_code = None
        state.set_alarm("trust_update_failed", False)
        changed = False
        if res["version"] is not None:
            state.trust_version, state.trust_issued_at = res["version"], res["issued_at"]
            if status != "not_modified":
                log.info("trust bundle version %d installed (%s)", res["version"], status)
                changed = True
        if self.update_credential(state) == "installed":
            changed = True
        if changed and self.on_trust is not None:
            self.on_trust(state.trust_version)
        return status

    def update_credential(self, state: SyncState) -> str:
        """Fetch the server's credential and keep it only if the pinned root signed it for this
        device's server and it is newer than the one kept ("installed", "not_modified", "none" when
        the server has none, "failed": refused, the old one kept, alarm ``credential_refused``)."""
        data = self.client.credential()
        if data is None:
            return "none"
        try:
            cred, changed = credential.install(self.state_dir, data, trustupdate.load_roots(self.state_dir),
                                               self.config.server_url)
        except CredentialError as exc:
            state.set_alarm("credential_refused", True)
            log.error("server credential refused (%s), the one kept stays: %s", exc.code, exc)
            return "failed"
        state.set_alarm("credential_refused", False)
        if changed:
            log.info("server credential serial %d of %s installed", cred.serial, cred.server_id)
        return "installed" if changed else "not_modified"

    def _trust_failed(self, state: SyncState, message: str, code: str) -> None:
        state.trust_error, state.trust_error_code = message, code
        state.set_alarm("trust_update_failed", True)
        log.error("trust update refused, old bundle kept: %s", message)

    def _quarantine(self, state: SyncState, sb: batchmod.SignedBatch, exc: RejectedError) -> None:
        quarantine(self.state_dir, state, sb, exc.code, str(exc))

    def upload_pending(self, state: SyncState, deadline: float | None = None) -> tuple[int, int, int, int, int]:
        """Upload pending entries batch by batch until none are left (or ``deadline``, monotonic).
        Returns (batches, entries, stored, duplicates, quarantined). Raises TransientError /
        RejectedError (not batch-specific) to the caller, with everything acknowledged so far marked."""
        size = max(self.min_batch, min(self.max_batch, state.batch_size))
        # format 2 where the server's last answer says it reads it (less work for it), else format 1
        version = 2 if 2 in self.client.batch_formats else 1
        batches = entries = stored = duplicates = quarantined = 0
        cursor = 0
        probe_limit, probe_until = None, 0  # bisecting a refused batch down to its bad entries
        while deadline is None or time.monotonic() < deadline:
            if probe_limit is not None and cursor >= probe_until:
                probe_limit = None
            limit = probe_limit or size
            try:
                sb = self.builder.build(cursor, limit, state.quarantine_ranges(), now_ms(), version)
            except ValueError as exc:  # the run would exceed the batch byte limit: fewer entries
                if limit <= 1:
                    raise SyncError(f"entry after seq {cursor} cannot be sent: {exc}", code="entry_too_large") from None
                probe_limit, probe_until = max(1, limit // 2), max(probe_until, cursor + limit)
                continue
            if sb is None:
                break
            info = sb.info
            t0 = time.monotonic()
            try:
                ack = self.client.upload(sb.data)
            except RejectedError as exc:
                if exc.batch_bad and info.version != 1:  # a server behind the same address that reads format 1
                    log.info("batch in format %d refused (%s): sending format 1", info.version, exc.code)
                    version = 1
                    continue
                if exc.too_large and size > self.min_batch:
                    size = state.batch_size = max(self.min_batch, size // 2)
                    continue
                if exc.batch_bad and info.count > 1:  # split it: only the bad entries get quarantined
                    probe_limit = info.count // 2
                    probe_until = max(probe_until, info.last_seq)
                    continue
                if exc.batch_bad:
                    self._quarantine(state, sb, exc)
                    self._save(state, progress=False)
                    quarantined += 1
                    cursor = info.last_seq
                    continue
                raise
            except TransientError as exc:
                if exc.code in ("timeout", protocol.E_BODY_TIMEOUT):  # the link could not carry this size in time
                    state.batch_size = max(self.min_batch, size // 2)
                raise
            elapsed = time.monotonic() - t0
            if (ack.batch_id, ack.first_seq, ack.last_seq) != (info.batch_id, info.first_seq, info.last_seq):
                raise TransientError("acknowledgement does not match the batch sent", code="bad_answer")
            mark_acked(self.log, ack.batch_id, ack.first_seq, ack.last_seq)
            self.sent_formats[info.version] += 1
            batches += 1
            entries += info.count
            stored += ack.stored
            duplicates += ack.duplicates
            state.last_acked_seq = max(state.last_acked_seq, ack.last_seq)
            state.server_held_seq = max(state.server_held_seq, ack.held_seq)
            state.last_success_ms = now_ms()
            if probe_limit is None and info.count >= size:  # a full batch says something about the link
                scale = min(2.0, max(0.5, self.target_s / max(elapsed, 1e-3)))
                size = max(self.min_batch, min(self.max_batch, int(size * scale)))
            state.batch_size = size
            self._note_clock(state)
            self._publish(state)
            cursor = info.last_seq
        return batches, entries, stored, duplicates, quarantined

    # ------------------------------------------------------------ one pass

    def sync_once(self, *, deadline: float | None = None, trust: bool | None = None,
                  retry_quarantined: bool = False, save_progress: bool = True) -> SyncResult:
        """One contact: heartbeat, acknowledgements, trust update (when due, or if ``trust``),
        then upload everything pending. Errors are recorded in the state and returned. The state
        file is written at the end when anything changed; with ``save_progress`` False (the
        appliance's loop) only when a durable field changed or progress is PROGRESS_EVERY_S old."""
        with self._woke:  # what is recorded from now on is for the next pass
            self._woken_at, self._wakes, self._urgent = None, 0, False
        with self.files.lock():
            state = self._load_state()
            if retry_quarantined and state.quarantined:
                state.quarantined = []
                state.set_alarm("batch_quarantined", False)
            state.last_attempt_ms = now_ms()
            counts = (0, 0, 0, 0, 0)
            trust_result = None
            try:
                try:
                    self.client.heartbeat(self.heartbeat_doc(state))
                finally:
                    self._note_clock(state)
                self.catch_up_acks(state)
                due = (state.trust_checked_ms is None or state.trust_version is None  # no bundle yet: every contact
                       or now_ms() - state.trust_checked_ms >= self.trust_interval_s * 1000)
                if trust or (trust is None and due):
                    trust_result = self.update_trust(state)
                counts = self.upload_pending(state, deadline)
            except (TransientError, RejectedError) as exc:
                state.last_error, state.last_error_code, state.last_error_ms = str(exc)[:300], exc.code, now_ms()
                auth = isinstance(exc, RejectedError) and exc.auth
                state.set_alarm("sync_auth_failed", auth)
                self._save(state, progress=save_progress)
                self._publish(state)
                level = logging.ERROR if isinstance(exc, RejectedError) else logging.WARNING
                if str(exc) == self._logged_error:  # the same failure again: once is enough
                    level = logging.DEBUG
                self._logged_error = str(exc)
                log.log(level, "sync: %s", exc)
                pending, _ = self.pending_count()
                return SyncResult(*counts, pending, False, str(exc), exc.code,
                                  getattr(exc, "retry_after", None), trust_result)
            state.last_error = state.last_error_code = None
            if self._logged_error is not None:
                log.info("sync: the server answers again")
                self._logged_error = None
            state.last_success_ms = now_ms()
            state.set_alarm("sync_auth_failed", False)
            self._save(state, progress=save_progress)
            self._publish(state)
            pending, _ = self.pending_count()
            return SyncResult(*counts, pending, pending == 0, trust=trust_result)

    def sync_until_done(self, timeout_s: float, *, sleep: Callable[[float], None] = time.sleep,
                        retry_quarantined: bool = False, trust: bool | None = None) -> SyncResult:
        """`checkpoint sync now`: passes with backoff until everything pending is acknowledged,
        the server refuses the device, or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        result = self.sync_once(deadline=deadline, retry_quarantined=retry_quarantined, trust=trust)
        while not result.complete and time.monotonic() < deadline:
            if result.error is None:  # nothing failed: what is left is quarantined or arrived meanwhile
                if result.pending == 0 or result.quarantined or (self._state is not None and self._state.quarantined):
                    break
                self.backoff.reset()
            elif result.error_code in ("sync_config",) or (result.error_code in _FATAL):
                break
            else:
                delay = min(self.backoff.next(result.retry_after), max(0.0, deadline - time.monotonic()))
                sleep(delay)
            result = self.sync_once(deadline=deadline, trust=False)
        if result.complete:
            self.backoff.reset()
        return result

    # ------------------------------------------------------------ background

    def wake(self, *, at_once: bool = False) -> None:
        """New entries: contact the server after ``upload_delay_s`` (or as soon as ``min_batch``
        wakes have come), so that a stream of scans makes one upload, not one each. ``at_once``:
        without waiting (a technician's request, a drain before exit), even during a backoff."""
        with self._woke:
            if self._woken_at is None:
                self._woken_at = time.monotonic()
            self._wakes += 1
            self._urgent = self._urgent or at_once
            self._woke.notify_all()

    def run(self, stop: threading.Event) -> None:
        """The appliance's sync thread: contact, upload, then wait: the idle interval or a wake
        (coalesced, see wake), or the backoff delay after a failure; until ``stop`` is set. The
        thread runs at a lower priority than the scan lane (lower_thread_priority)."""
        lower_thread_priority()
        while not stop.is_set():
            try:
                result = self.sync_once(save_progress=False)
            except (SyncError, OSError, EntryLogError) as exc:
                log.error("sync pass failed: %s", exc)
                result = SyncResult(0, 0, 0, 0, 0, 0, False, str(exc), getattr(exc, "code", "error"))
            if result.error is None:
                self.backoff.reset()
                if result.pending and not (self._state is not None and self._state.quarantined):
                    self.wake()  # more arrived while uploading: the next contact, coalesced
                if self._wait(stop, self.idle_interval_s, woken=True):
                    return
            elif self._wait(stop, self.backoff.next(result.retry_after), woken=False):
                return

    def _wait(self, stop: threading.Event, delay: float, *, woken: bool) -> bool:
        """Wait ``delay`` or, if ``woken``, until the wakes are due (see wake); an ``at_once`` wake
        ends any wait. True if ``stop`` was set."""
        end = time.monotonic() + delay
        with self._woke:
            while not stop.is_set():
                now = time.monotonic()
                if self._urgent or now >= end:
                    return False
                left = end - now
                if woken and self._woken_at is not None:
                    if self._wakes >= self.min_batch or now >= self._woken_at + self.upload_delay_s:
                        return False
                    left = min(left, self._woken_at + self.upload_delay_s - now)
                self._woke.wait(min(left, 0.5))
        return True


_FATAL = frozenset({"unknown_device", "device_revoked", "bad_signature"})
