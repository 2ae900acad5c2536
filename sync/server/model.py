"""The server's storage interface and the values it deals in; ``sync.server.storage.open_storage(url)``
picks the backend.

Every method is blocking (the app runs them in a thread pool) and each write is one transaction:
an acknowledgement is only ever built after its transaction committed. SQLite is the default
backend (sync/server/sqlite.py); PostgreSQL (sync/server/postgres.py: entries partitioned by day,
retention drops whole partitions) implements the same class and passes the same tests; what
both do alike is in sync/server/sqlstorage.py.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field

from scanner.base.errors import CheckpointError
from sync.wire import protocol
from sync.wire.batch import ParsedBatch

SOURCES = ("push", "import", "pull")


class ServerError(CheckpointError):
    """A refusal with a protocol error code and the HTTP status that carries it."""

    code = protocol.E_BAD_REQUEST

    def __init__(self, message: str, *, code: str, status: int) -> None:
        super().__init__(message, code=code)
        self.status = status


def unknown_device(device_id: str) -> ServerError:
    return ServerError(f"device {device_id} is not enrolled", code=protocol.E_UNKNOWN_DEVICE, status=401)


def revoked_device(device_id: str) -> ServerError:
    return ServerError(f"device {device_id} is revoked", code=protocol.E_DEVICE_REVOKED, status=403)


class StorageUnavailable(ServerError):
    """The database cannot be reached right now (a 503: devices retry with backoff)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="db_unavailable", status=503)


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    checkpoint_id: str
    public_key: bytes  # raw Ed25519
    enrolled_ms: int
    revoked_ms: int | None = None


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """What `checkpoint server devices` lists: the device, its latest heartbeat and its log."""

    device: Device
    last_seen_ms: int | None
    heartbeat: dict | None
    held_seq: int
    entries: int  # held now (stored minus removed by retention)
    missing: int  # sequence numbers below held_seq the server never received
    chain_problems: int
    conflicts: int

    def to_dict(self) -> dict:
        d = self.device
        return {"device_id": d.device_id, "checkpoint_id": d.checkpoint_id, "enrolled_ms": d.enrolled_ms,
                "revoked_ms": d.revoked_ms, "last_seen_ms": self.last_seen_ms, "held_seq": self.held_seq,
                "entries": self.entries, "missing": self.missing, "chain_problems": self.chain_problems,
                "conflicts": self.conflicts, "heartbeat": self.heartbeat}


@dataclass(frozen=True, slots=True)
class Ingested:
    """The answer for the device (``ack``) and what this delivery did: entries newly stored,
    entries already held, and whether it was a batch seen before (answered with its first ack)."""

    ack: protocol.Ack
    stored: int
    duplicates: int
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class ChainEvent:
    device_id: str
    kind: str  # "relinked" | "altered" | "conflict"
    seq: int
    detail: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class BundleMeta:
    version: int
    digest: str
    issued_at: int
    expires_at: int
    published_ms: int
    size: int


@dataclass(frozen=True, slots=True)
class Stats:
    devices: int
    devices_revoked: int
    entries: int
    batches: int
    batch_deliveries: int  # every accepted delivery, replays included
    batches_replayed: int
    duplicates_dropped: int  # entries delivered again and not stored twice
    conflicts: int
    chain_problems: int
    tokens_unused: int
    bundle_version: int | None
    by_source: dict = field(default_factory=dict)
    entries_purged: int = 0  # removed by retention (`entries` counts those held now)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass(frozen=True, slots=True)
class SeenEntry:
    """A stored entry as tracing needs it: who, where, when, what; the sealed holder details."""

    entry_id: str
    device_id: str
    checkpoint_id: str
    at_ms: int
    direction: str
    clock: str
    decision: str
    reason: str
    card_id: str | None
    sealed: bytes | None


SEEN_COLUMNS = ("entry_id, device_id, checkpoint_id, at_ms, direction, clock, decision, reason, card_id, "
                "sealed")


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """What retention removed: entries, and (PostgreSQL) the day partitions dropped whole."""

    entries: int
    partitions: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()  # partitions that could not be locked now (tried again next run)

    def to_dict(self) -> dict:
        return {"entries": self.entries, "partitions": list(self.partitions), "skipped": list(self.skipped)}


class Storage(abc.ABC):
    """What the server needs from a database (see the module docstring)."""

    # -- meta and keys
    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def get_meta(self, key: str) -> str | None: ...

    @abc.abstractmethod
    def set_meta(self, key: str, value: str) -> None: ...

    # -- enrollment
    @abc.abstractmethod
    def add_tokens(self, hashes: list[str], checkpoint_id: str, expires_ms: int, now_ms: int) -> None: ...

    @abc.abstractmethod
    def enroll(self, token_hash: str, device_id: str, public_key: bytes, now_ms: int) -> Device:
        """Use a token for this key: a new device, or the same one again (idempotent).
        ServerError token_invalid / token_expired / token_used."""

    @abc.abstractmethod
    def device(self, device_id: str) -> Device | None: ...

    @abc.abstractmethod
    def revoke_device(self, device_id: str, now_ms: int) -> bool: ...

    @abc.abstractmethod
    def devices(self) -> list[DeviceStatus]: ...

    # -- batches
    @abc.abstractmethod
    def ingest(self, batch: ParsedBatch, source: str, now_ms: int) -> Ingested:
        """Store a verified batch exactly once, in one transaction, and return its acknowledgement
        (a batch id seen before returns its first answer). ServerError for unknown/revoked devices."""

    @abc.abstractmethod
    def acks_after(self, device_id: str, after_seq: int, limit: int) -> list[tuple[str, int, int]]:
        """(batch_id, first_seq, last_seq) of stored batches with last_seq > after_seq, by last_seq."""

    @abc.abstractmethod
    def held_seq(self, device_id: str) -> int: ...

    @abc.abstractmethod
    def gaps(self, device_id: str, limit: int = 100) -> list[tuple[int, int]]:
        """Missing sequence ranges (first, last) below the highest one held."""

    @abc.abstractmethod
    def chain_events(self, device_id: str | None = None, limit: int = 100) -> list[ChainEvent]: ...

    @abc.abstractmethod
    def entry_hashes(self, device_id: str) -> dict[int, bytes]:
        """seq -> hash of every stored entry of a device (tests and audits; not for big logs)."""

    # -- tracing (docs/tracing.md)
    @abc.abstractmethod
    def visits(self, card_id: str, since_ms: int, until_ms: int, limit: int) -> list[SeenEntry]:
        """Entries of ``card_id`` with since_ms <= at_ms < until_ms, by time (index: card_id, at_ms)."""

    @abc.abstractmethod
    def seen_at(self, checkpoint_id: str, from_ms: int, to_ms: int, limit: int) -> list[SeenEntry]:
        """Entries at ``checkpoint_id`` with from_ms <= at_ms <= to_ms, by time (index: checkpoint_id, at_ms)."""

    # -- retention
    @abc.abstractmethod
    def purge(self, cutoff_ms: int) -> PurgeResult:
        """Remove entries whose time AND arrival are both before ``cutoff_ms`` (an entry that arrives
        late is kept a full retention period after it arrived). PostgreSQL removes whole day
        partitions (an entry may outlive the cutoff by up to a day); SQLite deletes rows."""

    # -- heartbeats
    @abc.abstractmethod
    def record_heartbeat(self, device_id: str, doc: dict, now_ms: int) -> bool:
        """Keep ``doc`` as the device's latest unless a newer hb_seq is stored; True if kept."""

    # -- trust bundles
    @abc.abstractmethod
    def publish_bundle(self, meta: BundleMeta, data: bytes, gz: bytes, deltas: dict[int, bytes]) -> None: ...

    @abc.abstractmethod
    def latest_bundle(self) -> BundleMeta | None: ...

    @abc.abstractmethod
    def bundle_data(self, version: int, gz: bool = False) -> bytes | None: ...

    @abc.abstractmethod
    def delta(self, from_version: int, to_version: int) -> bytes | None: ...

    @abc.abstractmethod
    def bundle_versions(self) -> list[BundleMeta]: ...

    # -- stats
    @abc.abstractmethod
    def stats(self) -> Stats: ...
