"""The device's sync files in its state directory: what provisioning wrote (device.json), the sync
state (sync-state.json, replaced atomically), a lock so only one uploader runs at a time, and when
the server last pulled (pull-state.json, written by sync/pull.py); and the status report made of them.

What the state holds is of two kinds: decisions that must survive a restart as soon as they are
made (DURABLE_FIELDS: alarms, quarantine, exports, trust, the current error, the heartbeat
reservation), and progress (acknowledged seq, batch-list cursor, times, batch size, clock offset),
which the appliance keeps in memory and writes at most every PROGRESS_EVERY_S: lost in a crash, it
is learned again from the server (docs/sync-protocol.md#device-files-and-the-background-loop).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from scanner.base import i18n
from scanner.base.errors import CheckpointError
from scanner.base.fsutil import atomic_write
from scanner.base.timeutil import now_ms
from scanner.store import clock

if TYPE_CHECKING:  # only for annotations: reading the state files needs no database driver
    from scanner.store.entrylog import EntryLog

DEVICE_NAME = "device.json"
STATE_NAME = "sync-state.json"
LOCK_NAME = "sync.lock"
PULL_STATE_NAME = "pull-state.json"
# The server's keys as older versions kept them, unsigned: never read; provisioning removes them.
# The keys a device uses come from its root-signed server credential (sync/credential.py).
LEGACY_KEY_FILES = ("sealing.pub", "server-pull.pub")
QUARANTINE_DIR = "quarantine"
PROGRESS_EVERY_S = 300.0  # progress alone reaches the disk at most this often (and at a clean stop)
HB_RESERVE = 1000  # heartbeat numbers reserved by one write of the state
# written at once when they change; the other fields are progress
DURABLE_FIELDS = ("alarms", "quarantined", "exported", "trust_version", "trust_issued_at", "trust_error",
                  "trust_error_code", "last_error_code", "hb_reserved")


class StateError(CheckpointError):
    """The device is not provisioned, or its sync files cannot be read."""

    code = "not_provisioned"


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """What provisioning learned: who this device is and where its server is."""

    device_id: str
    checkpoint_id: str
    server_url: str
    ca_file: str | None = None
    enrolled_ms: int = 0

    def save(self, state_dir: Path) -> None:
        atomic_write(Path(state_dir) / DEVICE_NAME, (json.dumps(asdict(self), indent=1) + "\n").encode("utf-8"))

    @classmethod
    def load(cls, state_dir: Path) -> DeviceConfig:
        path = Path(state_dir) / DEVICE_NAME
        try:
            doc = json.loads(path.read_bytes())
            return cls(**{f.name: doc[f.name] for f in fields(cls) if f.name in doc})
        except FileNotFoundError:
            raise StateError(f"{path}: this device is not provisioned (run `checkpoint provision`)",
                             text=i18n.text("cli_error.not_provisioned", path=str(path))) from None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise StateError(f"{path}: unreadable ({exc})", code="state_unreadable") from None


@dataclass
class Quarantined:
    """A batch the server refused, kept in QUARANTINE_DIR; SyncState.quarantined holds these as dicts."""

    batch_id: str
    first_seq: int
    last_seq: int
    code: str
    message: str
    at_ms: int
    file: str


@dataclass
class SyncState:
    """Sync progress, kept across restarts. Entries are marked synced in the entry log itself;
    this holds what the log does not: the server's view, errors, quarantine, clock offset."""

    last_acked_seq: int = 0  # highest seq the server acknowledged to this device
    ack_cursor: int = 0  # server batches up to this last_seq have been applied to the log
    server_held_seq: int = 0
    last_success_ms: int | None = None
    last_attempt_ms: int | None = None
    last_error: str | None = None
    last_error_code: str | None = None
    last_error_ms: int | None = None
    batch_size: int = 500
    hb_seq: int = 0
    hb_reserved: int = 0  # heartbeats up to this number may have been sent: a restart goes on above it
    clock_offset_ms: int | None = None
    clock_checked_ms: int | None = None
    clock_boot_id: str | None = None  # the boot the last clock answer came in (clock.ServerTime)
    clock_boot_ms: int | None = None
    trust_version: int | None = None
    trust_issued_at: int | None = None
    trust_checked_ms: int | None = None
    trust_error: str | None = None  # why the last bundle was refused (English, for engineers)
    trust_error_code: str | None = None  # its stable code (the screens say it with the catalogue's words)
    alarms: list = field(default_factory=list)
    quarantined: list = field(default_factory=list)  # of asdict(Quarantined)
    exported: list = field(default_factory=list)  # recent exports: {dir, batches, first_seq, last_seq, at_ms}

    def note_clock(self, offset_ms: int, boot: clock.BootTime | None = None) -> None:
        """Record a server's time answer now, with the boot it came in: after a reboot it must not
        confirm the clock again (a Pi without a battery clock starts wrong)."""
        boot = boot or clock.boot_time()
        self.clock_offset_ms, self.clock_checked_ms = offset_ms, now_ms()
        self.clock_boot_id, self.clock_boot_ms = boot.boot_id, boot.since_boot_ms

    def server_time(self) -> clock.ServerTime | None:
        """The last server time answer, or None if there is none."""
        if type(self.clock_offset_ms) is not int or type(self.clock_checked_ms) is not int:
            return None
        boot = None
        if type(self.clock_boot_id) is str and type(self.clock_boot_ms) is int:
            boot = clock.BootTime(self.clock_boot_id, self.clock_boot_ms)
        return clock.ServerTime(self.clock_offset_ms, self.clock_checked_ms, boot)

    def quarantine_ranges(self) -> list[tuple[int, int]]:
        return sorted((q["first_seq"], q["last_seq"]) for q in self.quarantined)

    def set_alarm(self, code: str, on: bool) -> None:
        if on and code not in self.alarms:
            self.alarms.append(code)
        elif not on and code in self.alarms:
            self.alarms.remove(code)

    def to_dict(self) -> dict:
        return asdict(self)


def durable_part(doc: dict) -> dict:
    """The fields of a state (as ``to_dict``) that are written as soon as they change."""
    return {name: doc[name] for name in DURABLE_FIELDS}


def merge_progress(disk: SyncState, mine: SyncState) -> SyncState:
    """The state another process wrote (``disk``) with the progress this one made meanwhile: the
    other's decisions (alarms, quarantine, exports, trust, error) stand; counters and times are the
    furthest of the two; the heartbeat goes on above every number either may have sent."""
    out = replace(disk, alarms=list(disk.alarms), quarantined=list(disk.quarantined), exported=list(disk.exported))
    for name in ("last_acked_seq", "ack_cursor", "server_held_seq", "hb_reserved"):
        setattr(out, name, max(getattr(disk, name), getattr(mine, name)))
    for name in ("last_success_ms", "last_attempt_ms", "trust_checked_ms"):
        values = [v for v in (getattr(disk, name), getattr(mine, name)) if v is not None]
        setattr(out, name, max(values) if values else None)
    if (mine.clock_checked_ms or 0) > (disk.clock_checked_ms or 0):
        out.clock_offset_ms, out.clock_checked_ms = mine.clock_offset_ms, mine.clock_checked_ms
    out.hb_seq = max(disk.hb_seq, mine.hb_seq, disk.hb_reserved)
    out.batch_size = mine.batch_size
    return out


class StateFile:
    """sync-state.json: loaded whole, saved whole (atomic replace), never half-written."""

    def __init__(self, state_dir: str | os.PathLike) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / STATE_NAME

    def load(self) -> SyncState:
        try:
            doc = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return SyncState()
        except (OSError, ValueError) as exc:
            raise StateError(f"{self.path}: unreadable ({exc})", code="state_unreadable") from None
        known = {f.name for f in fields(SyncState)}
        return SyncState(**{k: v for k, v in doc.items() if k in known})

    def save(self, state: SyncState) -> None:
        atomic_write(self.path, (json.dumps(state.to_dict(), indent=1) + "\n").encode("utf-8"), 0o600)

    def stamp(self) -> tuple[int, int, int] | None:
        """Identifies the file's current content (a replace makes a new inode): None if it is missing."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    @contextlib.contextmanager
    def lock(self, wait: bool = True) -> Iterator[bool]:
        """Hold the uploader lock (sync.lock, flock); yields False if not waiting and it is taken."""
        fd = os.open(self.dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def read_pull_state(state_dir: str | os.PathLike) -> dict | None:
    """When and by whom the server last pulled from this device (pull-state.json), or None."""
    try:
        doc = json.loads((Path(state_dir) / PULL_STATE_NAME).read_bytes())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def status_dict(state_dir: str | os.PathLike, log: EntryLog | None) -> dict:
    """What `checkpoint sync status` reports, from the device's files and its entry log (the
    daemon need not run): who it is, what is pending, the last success and error, trust, alarms."""
    cfg = DeviceConfig.load(Path(state_dir))
    st = StateFile(state_dir).load()
    first = log.pending(0, 1) if log is not None else []  # no log yet: the daemon has not run
    unsynced = log.stats().unsynced if first and log is not None else 0
    now = now_ms() // 1000
    return {
        "device_id": cfg.device_id, "checkpoint_id": cfg.checkpoint_id, "server": cfg.server_url,
        "pending": unsynced, "oldest_pending_ms": first[0].at_ms if first else None,
        "last_acked_seq": st.last_acked_seq, "server_held_seq": st.server_held_seq,
        "last_success_ms": st.last_success_ms, "last_attempt_ms": st.last_attempt_ms,
        "last_error": st.last_error, "last_error_code": st.last_error_code, "last_error_ms": st.last_error_ms,
        "trust_version": st.trust_version,
        "trust_age_s": None if st.trust_issued_at is None else max(0, now - st.trust_issued_at),
        "trust_checked_ms": st.trust_checked_ms, "trust_error": st.trust_error,
        "trust_error_code": st.trust_error_code,
        "clock_offset_ms": st.clock_offset_ms, "alarms": st.alarms,
        "quarantined": [{k: q[k] for k in ("batch_id", "first_seq", "last_seq", "code")} for q in st.quarantined],
        "batch_size": st.batch_size,
        "pull": read_pull_state(state_dir),  # when the server last pulled from this device (sync/pull.py)
    }
