"""The retry queue: entries whose commit failed, kept in order (bounded) until the disk comes back.

A queued scan is kept as what its person was shown: refused, with the failure as the reason and
the card's facts. Nothing is dropped silently: a full queue raises ``log_queue_full`` and the
entry is not recorded. docs/entry-log.md#failures-retry-queue-and-health.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, NoReturn

from scanner.base.errors import Reason
from scanner.cards.verdict import Verdict, reject
from scanner.store.admission import Conditions
from scanner.store.errors import EntryLogError, EntryLogWriteError, write_error_code

log = logging.getLogger(__name__)


class ScanDraft(NamedTuple):
    """A scan's entry before it has a seq and a place in the chain: the verdict and the conditions
    its admission is decided under when it is committed. Immutable; a named tuple, not a frozen
    dataclass, because one is made per scan (a third of the cost), and its first eight fields are
    the entry's own first eight (``LINK_FIELDS``), in order: ``draft[:8]``."""

    entry_id: str
    device_id: str
    checkpoint_id: str
    direction: str
    at_ms: int
    clock: str
    source: str
    source_id: str
    verdict: Verdict
    conditions: Conditions
    card_id: str | None = None
    sealed: bytes | None = None
    sealed_sha256: str | None = None  # the sealed blob's digest (made with it, before the write lock)


@dataclass(frozen=True, slots=True)
class FollowupDraft:
    """A follow-up (``kind``, e.g. "did_not_pass") about the entry ``ref_entry_id``, not yet committed."""

    entry_id: str
    at_ms: int
    clock: str
    kind: str
    ref_entry_id: str


Draft = ScanDraft | FollowupDraft  # what the retry queue holds


def refused(draft: Draft, code: str, detail: str) -> Draft:
    """A scan whose commit failed (``code``: disk_full, io_error, db_busy, write_failed) as the
    refusal the caller shows instead of its verdict; the card's facts are kept. Follow-ups unchanged."""
    if isinstance(draft, FollowupDraft):
        return draft
    v = draft.verdict
    return draft._replace(verdict=reject(Reason(code), f"entry log could not commit: {detail}", v.format,
                                         v.kid, v.card))


class RetryQueue:
    """Drafts whose commit failed, oldest first, at most ``max_len``; and the last write problem.

    Not locked itself: the entry log calls it under ``lock`` (its own), which ``wait_empty`` shares.
    """

    def __init__(self, max_len: int, lock: threading.RLock) -> None:
        if max_len < 1:
            raise ValueError("the retry queue must hold at least one entry")
        self.max_len = max_len
        self.drafts: deque[Draft] = deque()  # read-only outside: whether any wait is one look-up
        self._emptied = threading.Condition(lock)
        self.problem: str | None = None  # the last failure's code while commits fail
        self.detail = ""

    def __len__(self) -> int:
        return len(self.drafts)

    def holds(self, entry_id: str) -> bool:
        return any(d.entry_id == entry_id for d in self.drafts)

    def keep(self, draft: Draft, code: str, detail: str) -> NoReturn:
        """Keep the draft for the retry loop and raise the typed error (never a silent drop)."""
        self.problem, self.detail = code, detail
        draft = refused(draft, code, detail)
        if len(self.drafts) >= self.max_len:
            self.problem = "log_queue_full"
            log.error("entry log: retry queue full (%d); entry %s NOT recorded (%s)",
                      len(self.drafts), draft.entry_id, code)
            raise EntryLogWriteError(f"entry log retry queue full ({len(self.drafts)}): entry NOT "
                                     f"recorded; last error: {detail}", code="log_queue_full",
                                     entry_id=draft.entry_id, queued=False)
        self.drafts.append(draft)
        log.error("entry log: commit failed (%s); entry %s queued for retry (%d waiting)",
                  code, draft.entry_id, len(self.drafts))
        raise EntryLogWriteError(f"entry log commit failed ({code}): {detail}; entry kept for retry",
                                 code=code, entry_id=draft.entry_id, queued=True)

    def flush(self, commit: Callable[[Draft], object], reopen: Callable[[], None]) -> int:
        """Commit the queued drafts, oldest first; returns how many. On a storage failure, raise
        EntryLogWriteError and keep the rest (``reopen`` first after an I/O error)."""
        n = 0
        while self.drafts:
            draft = self.drafts[0]
            try:
                commit(draft)
            except sqlite3.Error as exc:
                code = write_error_code(exc)
                if code is None:
                    raise
                self.problem, self.detail = code, str(exc)
                if code == "io_error":
                    reopen()
                raise EntryLogWriteError(f"entry log retry failed ({code}): {exc}", code=code,
                                         entry_id=draft.entry_id, queued=True) from None
            except EntryLogError as exc:  # e.g. the original of a follow-up is gone: report it loudly
                log.error("entry log: queued %s %s cannot be committed: %s",
                          draft.kind if isinstance(draft, FollowupDraft) else "entry", draft.entry_id, exc)
            self.drafts.popleft()
            n += 1
        self.problem, self.detail = None, ""
        self._emptied.notify_all()
        return n

    def wait_empty(self, timeout: float | None = None) -> bool:
        """Block until the queue is empty (True) or ``timeout`` passes (False)."""
        with self._emptied:
            return self._emptied.wait_for(lambda: not self.drafts, timeout)
