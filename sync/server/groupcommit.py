"""Group commit: batches that reach one server process at about the same time are stored together,
their rows in one COPY and one transaction (one commit, one wait for the disk and the synchronous
standby, instead of one per batch).

A few committer threads each gather the waiting batches for a short window (or until a group is
full: a number of batches, a number of rows), store them with the backend's ``store`` and only then
wake their callers: an acknowledgement is still built after the commit that holds its batch. A group
holds at most one batch per device (a device's batches are stored one after another, each against
what the previous one left); a second batch of that device waits for the next group.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sync.server.chain import ChainProblem
from sync.server.model import Ingested, StorageUnavailable
from sync.wire.batch import ParsedBatch

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Pending:
    """One batch waiting to be stored, and then its outcome (``result`` or ``error``)."""

    batch: ParsedBatch
    source: str
    now_ms: int
    altered: ChainProblem | None  # sync.server.chain.altered of its rows, found before it waits
    result: Ingested | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def device_id(self) -> str:
        return self.batch.info.device_id

    def outcome(self) -> Ingested:
        if self.error is not None:
            raise self.error
        if self.result is None:
            raise StorageUnavailable("the batch was not stored")
        return self.result


@dataclass(frozen=True)
class GroupSettings:
    """``window_s``: how long a committer waits for more batches once one is waiting; a group is
    closed earlier when it holds ``max_batches`` batches or ``max_rows`` rows. ``committers``:
    groups of a process stored at once. Two: one group gathers and copies while the other waits for
    its commit; more make smaller groups and cost the server and PostgreSQL more CPU per entry, one
    leaves the process idle during each commit (docs/benchmarks.md)."""

    window_s: float = 0.002
    max_batches: int = 64
    max_rows: int = 20_000
    committers: int = 2


class GroupCommit:
    """The waiting batches and the committer threads (started on first use) that store them in
    groups with ``store(items)``, which sets each item's ``result`` or ``error``."""

    def __init__(self, store: Callable[[list[Pending]], None], settings: GroupSettings) -> None:
        self.store = store
        self.settings = settings
        self._cond = threading.Condition()
        self._queue: list[Pending] = []
        self._storing: set[str] = set()  # devices with a batch in a group being stored
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._gathering = False  # one committer at a time gathers the next group; others store theirs

    def submit(self, item: Pending) -> Ingested:
        """Store ``item`` in the next group; its Ingested once that group committed (or its error)."""
        with self._cond:
            if self._closed:
                raise StorageUnavailable("the server is stopping")
            if not self._threads:
                for i in range(self.settings.committers):
                    t = threading.Thread(target=self._run, name=f"group-commit-{i}", daemon=True)
                    t.start()
                    self._threads.append(t)
            self._queue.append(item)
            self._cond.notify_all()
        item.done.wait()
        return item.outcome()

    def close(self) -> None:
        """Stop the committers after the groups in progress; batches still waiting fail (503)."""
        with self._cond:
            self._closed = True
            left, self._queue = self._queue, []
            self._cond.notify_all()
        for item in left:
            item.error = StorageUnavailable("the server is stopping")
            item.done.set()
        for t in self._threads:
            t.join(30)

    def _eligible(self) -> list[Pending]:
        """The waiting batches a group may take now, in arrival order: one per device, none of a
        device whose batch is being stored, up to the group's bounds (at least one batch)."""
        out: list[Pending] = []
        devices: set[str] = set()
        rows = 0
        for item in self._queue:
            dev = item.device_id
            if dev in devices or dev in self._storing:
                continue
            count = item.batch.info.count
            if out and (len(out) >= self.settings.max_batches or rows + count > self.settings.max_rows):
                break
            out.append(item)
            devices.add(dev)
            rows += count
        return out

    def _full(self, group: list[Pending]) -> bool:
        s = self.settings
        return len(group) >= s.max_batches or sum(i.batch.info.count for i in group) >= s.max_rows

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (self._gathering or not self._eligible()):
                    self._cond.wait()
                if self._closed:
                    return
                self._gathering = True
                try:
                    end = time.monotonic() + self.settings.window_s
                    while not self._full(group := self._eligible()) and (left := end - time.monotonic()) > 0:
                        self._cond.wait(left)
                        if self._closed:
                            return
                    taken = set(map(id, group))
                    self._queue = [i for i in self._queue if id(i) not in taken]
                    self._storing.update(i.device_id for i in group)
                finally:
                    self._gathering = False
                    self._cond.notify_all()
            try:
                self.store(group)
            except Exception as exc:  # every caller of the group gets the failure
                if not isinstance(exc, StorageUnavailable):
                    log.exception("storing a group of %d batches failed", len(group))
                for item in group:
                    if item.result is None and item.error is None:
                        item.error = exc
            finally:
                with self._cond:
                    self._storing.difference_update(i.device_id for i in group)
                    self._cond.notify_all()
                for item in group:
                    item.done.set()
