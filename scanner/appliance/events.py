"""The appliance's live events (verdicts, state changes, staff actions) for the kiosk and the demo.

Any thread publishes; the HTTP API's event-stream clients receive each event through an asyncio
queue on the API's loop, in-process listeners (the demo's terminal) are called in the publishing
thread. The hub remembers only what a newly connected screen needs: the current verdict while it
is on display (it carries the holder's name and birth year, from memory only), the device state
and the direction. When the display time ends the verdict is forgotten and a ``clear`` event
follows. Nothing here ever reads the entry log.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from scanner.base.safetext import json_line

log = logging.getLogger(__name__)

KINDS = ("verdict", "clear", "partial", "state", "direction", "silence", "error", "enrolling", "enrolled", "site",
         "aim")


@dataclass(frozen=True, slots=True)
class Event:
    """One event: a growing ``id``, its ``kind`` (KINDS), the data, and the data as one JSON line."""

    id: int
    kind: str
    data: dict
    json: str

    def sse(self) -> str:
        """The event as a server-sent-events message."""
        return f"id: {self.id}\nevent: {self.kind}\ndata: {self.json}\n\n"


class _Subscriber:
    def __init__(self, loop: asyncio.AbstractEventLoop, maxsize: int) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self.dropped = 0

    def put(self, event: Event | None) -> None:  # runs on the subscriber's loop
        if self.queue.full():
            try:  # a client that does not keep up loses its oldest events, never the newest
                self.queue.get_nowait()
                self.dropped += 1
            except asyncio.QueueEmpty:
                pass
        self.queue.put_nowait(event)


class EventHub:
    """Thread-safe publish/subscribe with the little memory a screen needs (see the module docstring)."""

    def __init__(self, display_s: float = 5.0, *, max_subscribers: int = 16, queue_size: int = 64,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.display_s = display_s
        self.max_subscribers = max_subscribers
        self.queue_size = queue_size
        self._mono = mono
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._subscribers: list[_Subscriber] = []
        self._listeners: list[Callable[[Event], None]] = []
        self._current: Event | None = None  # the verdict on display (holder details included)
        self._current_until = 0.0
        self._sticky: dict[str, Event] = {}  # last state / direction event
        self._closed = False

    # ------------------------------------------------------------ publishing (any thread)

    def publish(self, kind: str, data: dict) -> Event:
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        with self._lock:
            event = Event(next(self._ids), kind, data, json_line(data))
            if kind == "verdict":
                self._current, self._current_until = event, self._mono() + self.display_s
            elif kind == "clear":
                self._current = None
            elif kind in ("state", "direction"):
                self._sticky[kind] = event
            subscribers = list(self._subscribers)
            listeners = list(self._listeners)
        for sub in subscribers:
            try:
                sub.loop.call_soon_threadsafe(sub.put, event)
            except RuntimeError:  # that loop has closed: the client is gone
                self._drop(sub)
        for fn in listeners:
            try:
                fn(event)
            except Exception:  # a broken listener must not stop the verdict worker
                log.exception("event listener failed")
        return event

    def expire(self) -> bool:
        """Forget the verdict on display once its time is over, and say so (``clear``); True if it did."""
        with self._lock:
            if self._current is None or self._mono() < self._current_until:
                return False
            self._current = None
        self.publish("clear", {"reason": "display_time"})
        return True

    # ------------------------------------------------------------ listening

    def listen(self, fn: Callable[[Event], None]) -> None:
        """Call ``fn(event)`` for every event, in the publishing thread (keep it quick)."""
        with self._lock:
            self._listeners.append(fn)

    def subscribe(self, loop: asyncio.AbstractEventLoop) -> tuple[_Subscriber, list[Event]] | None:
        """A queue for one event-stream client and the events to send first (the current state,
        direction and verdict on display); None when there are too many clients already."""
        with self._lock:
            if self._closed or len(self._subscribers) >= self.max_subscribers:
                return None
            sub = _Subscriber(loop, self.queue_size)
            self._subscribers.append(sub)
            first = [e for e in (self._sticky.get("state"), self._sticky.get("direction")) if e is not None]
            if self._current is not None and self._mono() < self._current_until:
                first.append(self._current)
            return sub, first

    def unsubscribe(self, sub: _Subscriber) -> None:
        self._drop(sub)

    def _drop(self, sub: _Subscriber) -> None:
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def current(self) -> Event | None:
        with self._lock:
            return self._current

    def close(self) -> None:
        """End every stream (each client gets an end marker) and refuse new ones."""
        with self._lock:
            self._closed = True
            subscribers, self._subscribers = list(self._subscribers), []
        for sub in subscribers:
            try:
                sub.loop.call_soon_threadsafe(sub.put, None)
            except RuntimeError:
                pass
