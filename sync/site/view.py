"""The site's shared view: every gate's events of the day, merged without double counting.

The view is a grow-only set of events keyed by (device, seq): merging is a set union, so it is
commutative, associative and idempotent, and gates that were cut off from each other agree again
once each has the other's events, whatever the order they arrive in (a CRDT). What admission
reads from it: the card's last admission anywhere on the site, and the site's occupancy (in −
out, admissions only, cancelled ones not counted). Each gate's own log stays the record of
truth; the view is a cache rebuilt from the logs. docs/site.md#shared-view.
"""
from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

from sync.site.message import SiteEvent

Key = tuple[str, int]


def _rank(e: SiteEvent) -> tuple:
    return (e.at_ms, e.device, e.seq, e.gate, e.direction, e.decision, e.card or "", e.cancels or -1)


def merge(a: Mapping[Key, SiteEvent], b: Mapping[Key, SiteEvent]) -> dict[Key, SiteEvent]:
    """The union of two views. Two different events under one key (a gate that lost its log and
    numbered again) resolve the same way whatever the order: the lower-ranked one is kept."""
    out = dict(a)
    for k, e in b.items():
        mine = out.get(k)
        if mine is None or (mine != e and _rank(e) < _rank(mine)):
            out[k] = e
    return out


def counts(events: Iterable[SiteEvent], since_ms: int = 0) -> tuple[int, int]:
    """(admitted in, admitted out) among ``events`` since ``since_ms``, cancelled admissions not
    counted: the reference the incremental view must agree with."""
    evs = list(events)
    cancelled = {(e.device, e.cancels) for e in evs if e.cancels is not None}
    n_in = n_out = 0
    for e in evs:
        if e.cancels is None and e.decision == "accept" and e.at_ms >= since_ms and e.key not in cancelled:
            n_in += e.direction == "in"
            n_out += e.direction == "out"
    return n_in, n_out


class SiteView:
    """The merged events of the day since ``since_ms`` (see the module docstring). Thread-safe;
    ``add`` and the reads are O(1) per event."""

    def __init__(self, since_ms: int = 0) -> None:
        self._lock = threading.Lock()
        self.reset(since_ms)

    def reset(self, since_ms: int) -> None:
        """Forget everything before ``since_ms`` (a new day starts the view again)."""
        with self._lock:
            self.since_ms = since_ms
            self._events: dict[Key, SiteEvent] = {}
            self._by_card: dict[str, list[Key]] = {}
            self._cancelled: set[Key] = set()
            self._in = self._out = 0
            self._high: dict[str, int] = {}

    def add(self, events: Iterable[SiteEvent]) -> list[SiteEvent]:
        """Merge ``events``; returns those that were new."""
        new = []
        with self._lock:
            for e in events:
                if e.at_ms < self.since_ms:
                    continue
                mine = self._events.get(e.key)
                if mine is not None:
                    if mine != e and _rank(e) < _rank(mine):  # the same resolution as `merge`
                        self._drop(mine)
                        self._put(e)
                    continue
                self._put(e)
                new.append(e)
        return new

    def _counted(self, e: SiteEvent) -> bool:
        return e.cancels is None and e.decision == "accept" and e.key not in self._cancelled

    def _count(self, e: SiteEvent, sign: int) -> None:
        if e.direction == "in":
            self._in += sign
        else:
            self._out += sign

    def _put(self, e: SiteEvent) -> None:
        self._events[e.key] = e
        self._high[e.device] = max(self._high.get(e.device, 0), e.seq)
        if e.cancels is not None:
            target = (e.device, e.cancels)
            if target not in self._cancelled:
                t = self._events.get(target)
                if t is not None and self._counted(t):
                    self._count(t, -1)
                self._cancelled.add(target)
            return
        if self._counted(e):
            self._count(e, +1)
        if e.card is not None and e.decision == "accept":
            self._by_card.setdefault(e.card, []).append(e.key)

    def _drop(self, e: SiteEvent) -> None:
        del self._events[e.key]
        if e.cancels is not None:
            target = (e.device, e.cancels)
            if not any(o.cancels == e.cancels and o.device == e.device for o in self._events.values()):
                self._cancelled.discard(target)
                t = self._events.get(target)
                if t is not None and self._counted(t):
                    self._count(t, +1)
            return
        if self._counted(e):
            self._count(e, -1)
        if e.card is not None and e.decision == "accept":
            self._by_card[e.card].remove(e.key)

    # ------------------------------------------------------------ reads

    def last_admission(self, card: str) -> SiteEvent | None:
        """The card's latest admission on the site (any gate, either direction), not cancelled."""
        with self._lock:
            best = None
            for k in self._by_card.get(card, ()):
                if k in self._cancelled:
                    continue
                e = self._events[k]
                if best is None or (e.at_ms, e.device, e.seq) > (best.at_ms, best.device, best.seq):
                    best = e
            return best

    def occupancy(self) -> int:
        """People inside the site now: admitted in − admitted out, never negative."""
        with self._lock:
            return max(0, self._in - self._out)

    def totals(self) -> tuple[int, int]:
        with self._lock:
            return self._in, self._out

    def snapshot(self) -> dict[Key, SiteEvent]:
        with self._lock:
            return dict(self._events)

    def get(self, device: str, seqs: Iterable[int]) -> list[SiteEvent]:
        """The device's events with these seqs that the view holds."""
        with self._lock:
            return [e for s in seqs if (e := self._events.get((device, s))) is not None]

    def missing(self, device: str, first: int, last: int, limit: int) -> list[int]:
        """The device's seqs in first..last the view lacks (at most ``limit``, lowest first)."""
        out = []
        with self._lock:
            for s in range(max(first, 1), last + 1):
                if (device, s) not in self._events:
                    out.append(s)
                    if len(out) >= limit:
                        break
        return out

    def high(self, device: str) -> int:
        """The highest seq of the device the view holds (0: none)."""
        with self._lock:
            return self._high.get(device, 0)

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)
