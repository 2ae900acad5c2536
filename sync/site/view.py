"""The site's shared view: every gate's events of the day, merged without double counting.

The view is a grow-only set of events keyed by (device, seq): merging is a set union, so it is
commutative, associative and idempotent, and gates that were cut off from each other agree again
once each has the other's events, whatever the order they arrive in (a CRDT). What admission
reads from it: the card's last admission anywhere on the site, and the site's occupancy (in −
out, admissions only, cancelled ones not counted). A card counts as inside while its last
admission on the site is an entry, so a card admitted at two gates that could not hear each
other is one person inside once they merge. Each gate's own log stays the record of truth; the
view is a cache rebuilt from the logs. docs/site.md#shared-view.
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


def _order(e: SiteEvent) -> tuple:
    return (e.at_ms, e.device, e.seq)


def counts(events: Iterable[SiteEvent]) -> tuple[int, int, int]:
    """(admitted in, admitted out, inside) among ``events``, cancelled admissions not counted;
    inside: cards whose last admission is an entry, plus entries without a card less exits
    without one. The reference the incremental view must agree with."""
    evs = list(events)
    cancelled = {(e.device, e.cancels) for e in evs if e.cancels is not None}
    admitted = [e for e in evs if e.cancels is None and e.decision == "accept" and e.key not in cancelled]
    n_in = sum(e.direction == "in" for e in admitted)
    last: dict[str, SiteEvent] = {}
    for e in sorted((e for e in admitted if e.card is not None), key=_order):
        last[e.card] = e  # type: ignore[index]  # card is not None here
    anon = [e for e in admitted if e.card is None]
    inside = sum(e.direction == "in" for e in last.values()) + max(
        0, sum(e.direction == "in" for e in anon) - sum(e.direction == "out" for e in anon))
    return n_in, len(admitted) - n_in, inside


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
            self._anon_in = self._anon_out = 0  # admissions without a card
            self._inside: set[str] = set()  # cards whose last admission is an entry
            self._high: dict[str, int] = {}
            self._low: dict[str, int] = {}
            self._held: dict[str, int] = {}  # events held per device
            self._old: set[Key] = set()  # seen, but of an earlier day: never asked for again

    def add(self, events: Iterable[SiteEvent]) -> list[SiteEvent]:
        """Merge ``events``; returns those that were new."""
        new = []
        with self._lock:
            for e in events:
                if e.at_ms < self.since_ms:
                    self._old.add(e.key)
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
            if e.card is None:
                self._anon_in += sign
        else:
            self._out += sign
            if e.card is None:
                self._anon_out += sign
        if e.card is not None:
            last = self._last(e.card)
            if last is not None and last.direction == "in":
                self._inside.add(e.card)
            else:
                self._inside.discard(e.card)

    def _last(self, card: str) -> SiteEvent | None:
        best = None
        for k in self._by_card.get(card, ()):
            if k not in self._cancelled:
                e = self._events[k]
                if best is None or _order(e) > _order(best):
                    best = e
        return best

    def _put(self, e: SiteEvent) -> None:
        self._events[e.key] = e
        self._high[e.device] = max(self._high.get(e.device, 0), e.seq)
        self._low[e.device] = min(self._low.get(e.device, e.seq), e.seq)
        self._held[e.device] = self._held.get(e.device, 0) + 1
        if e.cancels is not None:
            target = (e.device, e.cancels)
            if target not in self._cancelled:
                t = self._events.get(target)
                counted = t is not None and self._counted(t)
                self._cancelled.add(target)
                if counted:
                    assert t is not None
                    self._count(t, -1)
            return
        if e.card is not None and e.decision == "accept":
            self._by_card.setdefault(e.card, []).append(e.key)
        if self._counted(e):
            self._count(e, +1)

    def _drop(self, e: SiteEvent) -> None:
        del self._events[e.key]
        self._held[e.device] -= 1
        if e.cancels is not None:
            target = (e.device, e.cancels)
            if not any(o.cancels == e.cancels and o.device == e.device for o in self._events.values()):
                self._cancelled.discard(target)
                t = self._events.get(target)
                if t is not None and self._counted(t):
                    self._count(t, +1)
            return
        counted = self._counted(e)
        if e.card is not None and e.decision == "accept":
            self._by_card[e.card].remove(e.key)
        if counted:
            self._count(e, -1)

    # ------------------------------------------------------------ reads

    def last_admission(self, card: str) -> SiteEvent | None:
        """The card's latest admission on the site (any gate, either direction), not cancelled."""
        with self._lock:
            return self._last(card)

    def occupancy(self) -> int:
        """People inside the site now: cards whose last admission is an entry (each once, however
        many gates admitted it), and entries without a card less exits without one."""
        with self._lock:
            return len(self._inside) + max(0, self._anon_in - self._anon_out)

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
                if (device, s) not in self._events and (device, s) not in self._old:
                    out.append(s)
                    if len(out) >= limit:
                        break
        return out

    def holdings(self, limit: int) -> dict[str, tuple[int, int, int]]:
        """Per device (at most ``limit``): the lowest and highest seq held and how many events: what
        a heartbeat tells the peers, so they ask for what they lack."""
        with self._lock:
            devices = sorted(self._high)[:limit]
            return {d: (self._low[d], self._high[d], self._held[d]) for d in devices}

    def count(self, device: str) -> int:
        """How many of the device's events the view holds."""
        with self._lock:
            return self._held.get(device, 0)

    def high(self, device: str) -> int:
        """The highest seq of the device the view holds (0: none)."""
        with self._lock:
            return self._high.get(device, 0)

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)
