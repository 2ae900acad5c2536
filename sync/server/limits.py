"""What a client can make the reference server hold, and for how long (docs/sync-protocol.md#limits).

Connections: at most so many per peer address, a TLS handshake and then the request headers each
within a deadline (GuardedServer's event loop and the uvicorn protocol class of guarded_protocol; the
opener's TLS port keeps the same policy, sync/server/opener.py). Admission pools count requests in
progress (server-wide, per peer address, per device) and refuse beyond their limit instead of
queueing. Bodies are read by BodyReader: never more than the declared Content-Length, within a
deadline and above a minimum rate, hashed as they come. ReplayCache lets each CK-Sig2 header be
used once. Everything here runs on the event loop's thread (no locks).
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import ipaddress
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import h11
import uvicorn
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

try:  # the server extra: uvicorn's httptools protocol (llhttp, in C), a few µs less per request than h11's
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # a demo or a device without it: h11's, in pure Python
    httptools = None  # type: ignore[assignment]
    HttpToolsProtocol = H11Protocol  # type: ignore[misc, assignment]

from sync.server.model import ServerError
from sync.wire import protocol


@dataclass(frozen=True, slots=True)
class Limits:
    """The server's connection, admission and body-reading policy (`checkpoint server run` options)."""

    connections_per_peer: int = 64  # open connections per peer address (IPv6: per /64); beyond: closed at once
    header_timeout_s: float = 10.0  # a new connection's request headers, complete (then keep-alive's timeout)
    handshake_timeout_s: float = 10.0  # a TLS connection's handshake, complete (asyncio's own: 60 s)
    tls_close_timeout_s: float = 5.0  # a closed TLS connection waits so long for the peer's close (asyncio's: 30 s)
    per_device: int = 2  # authenticated requests with a body in progress, per device
    per_peer: int = 16  # authenticated requests with a body in progress, per peer address
    legacy_inflight: int = 2  # requests read before they can be authenticated (devices without CK-Sig2)
    legacy_per_peer: int = 1
    legacy_max_bytes: int = protocol.LEGACY_MAX_BATCH_BYTES  # larger unauthenticated batches: 413 unread
    enroll_inflight: int = 4  # enrollment requests (authenticated by the token in their body)
    enroll_per_peer: int = 1
    body_grace_s: float = 10.0  # the minimum rate applies after this long
    min_rate_bps: int = 4096  # bytes per second, averaged from the start of the body
    body_timeout_s: float = 120.0  # a whole body, however fast it has been coming
    replay_per_device: int = 10_000  # nonces remembered per device (in AUTH_WINDOW_MS); beyond: 429


def peer_key(host: str | None) -> str:
    """Whom per-peer limits count: the address, an IPv6 address by its /64 (one subscriber's
    prefix), an IPv4-mapped IPv6 address as the IPv4 address."""
    if not host:
        return "-"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


HEAD_BYTES_MAX = 16 * 1024  # a request's line and headers (h11's bound); beyond: 400 and the connection closed


class _Guards:
    """What guarded_protocol adds to a uvicorn HTTP protocol class (h11's or httptools'): each
    says, with ``_late`` and ``_answered_unread``, where its connection is."""

    limits: Limits
    open_per_peer: Counter
    _peer: str | None = None
    _timer: asyncio.TimerHandle | None = None
    _draining = False

    def connection_made(self, transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._peer = peer_key(self.client[0] if self.client else None)  # type: ignore[attr-defined]
        self.open_per_peer[self._peer] += 1
        if self.open_per_peer[self._peer] > self.limits.connections_per_peer:
            transport.close()
            return
        self._arm(self.limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._peer is not None:
            self.open_per_peer[self._peer] -= 1
            if self.open_per_peer[self._peer] <= 0:
                del self.open_per_peer[self._peer]
            self._peer = None
        if self._timer is not None:
            self._timer.cancel()
        # uvicorn leaves its keep-alive timer (and so this object) for its whole timeout when a
        # connection was reset
        self._unset_keepalive_if_required()  # type: ignore[attr-defined]
        super().connection_lost(exc)  # type: ignore[misc]

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():  # type: ignore[attr-defined]
            self._draining = self._answered_unread()
            self._arm(self.limits.body_timeout_s if self._draining else self.timeout_keep_alive)  # type: ignore[attr-defined]

    def _after_data(self) -> None:
        if self._draining and not self._answered_unread():  # the dropped rest has come: idle now
            self._draining = False
            if not self.transport.is_closing():  # type: ignore[attr-defined]
                self._arm(self.timeout_keep_alive)  # type: ignore[attr-defined]

    def _late(self) -> bool:
        """No request's headers in progress of being answered: the next request's are awaited."""
        raise NotImplementedError

    def _answered_unread(self) -> bool:
        raise NotImplementedError

    def _arm(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(seconds, self._due)  # type: ignore[attr-defined]

    def _due(self) -> None:
        """Close a connection whose request headers, or the rest of an answered body, are late
        (a request the app is still reading or answering is the app's to time out)."""
        self._timer = None
        if (self._late() or self._answered_unread()) and not self.transport.is_closing():  # type: ignore[attr-defined]
            self.transport.close()  # type: ignore[attr-defined]


class _GuardedH11(_Guards, H11Protocol):
    def handle_events(self) -> None:
        super().handle_events()
        self._after_data()

    def _late(self) -> bool:
        return self.conn.their_state is h11.IDLE

    def _answered_unread(self) -> bool:
        return self.conn.their_state is h11.SEND_BODY and self.conn.our_state is h11.DONE


class _GuardedHttpTools(_Guards, HttpToolsProtocol):
    """httptools (llhttp, in C) has no bound of its own on a request's headers: HEAD_BYTES_MAX is
    kept here, counting what arrives while a request's headers are incomplete."""

    _in_head = True  # the next request's line and headers are awaited (or arriving)
    _head_bytes = 0

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > HEAD_BYTES_MAX and not self.transport.is_closing():
            self.send_400_response("Request headers too large.")
            return
        self._after_data()

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes = False, 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head = True
        super().on_message_complete()

    def _late(self) -> bool:
        return self._in_head and (self.cycle is None or self.cycle.response_complete)

    def _answered_unread(self) -> bool:
        return self.cycle is not None and self.cycle.response_complete and not self._in_head


def guarded_protocol(limits: Limits) -> type[H11Protocol | HttpToolsProtocol]:
    """uvicorn's HTTP protocol (httptools' parser in C where it is installed, else h11's), with at
    most ``connections_per_peer`` connections per peer; request headers due within
    ``header_timeout_s`` of connecting (within the keep-alive timeout of the last answer on a
    reused connection), however slowly their bytes trickle in, and at most HEAD_BYTES_MAX of them;
    and the rest of a body answered before it was read (uvicorn reads and drops it) due within
    ``body_timeout_s``."""
    base: type = _GuardedHttpTools if httptools is not None else _GuardedH11
    return type(base.__name__.lstrip("_"), (base,), {"limits": limits, "open_per_peer": Counter()})


class _TLSDeadlineLoop(asyncio.SelectorEventLoop):
    """An event loop whose TLS listeners hold connections to ``limits``: one that has not finished
    its handshake within ``handshake_timeout_s`` is closed (uvicorn passes no deadline: asyncio's is
    60 s, and the per-peer count of guarded_protocol starts only once the handshake is done), and one the
    server closes waits at most ``tls_close_timeout_s`` for the peer's TLS close (asyncio's: 30 s,
    for every idle keep-alive connection when the server stops)."""

    def __init__(self, limits: Limits) -> None:
        super().__init__()
        self.limits = limits

    async def create_server(self, *args, **kwargs):
        if kwargs.get("ssl") is not None:
            kwargs.setdefault("ssl_handshake_timeout", self.limits.handshake_timeout_s)
            kwargs.setdefault("ssl_shutdown_timeout", self.limits.tls_close_timeout_s)
        return await super().create_server(*args, **kwargs)


class GuardedServer(uvicorn.Server):
    """uvicorn's Server, run (``run``) on an event loop that holds TLS handshakes and closes to ``limits``;
    ``serving`` is called once it accepts connections, its signal handlers in place (so whoever it tells
    may stop it with SIGINT/SIGTERM from then on)."""

    def __init__(self, config: uvicorn.Config, limits: Limits, serving: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self.limits = limits
        self.serving = serving

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self.serving is not None:
            self.serving()

    def run(self, sockets=None) -> None:
        loop = functools.partial(_TLSDeadlineLoop, self.limits)
        with asyncio.Runner(loop_factory=loop) as runner:
            runner.run(self.serve(sockets=sockets))


class Busy(ServerError):
    """A request refused before its body was read because a pool is full: 503 busy (server-wide)
    or 429 too_many_requests (this device's or address's share); ``retry_after`` seconds."""

    def __init__(self, message: str, *, code: str, status: int, retry_after: int) -> None:
        super().__init__(message, code=code, status=status)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Claim:
    """One count a request holds while it is in progress: ``pool`` and ``who`` (an address, a
    device id, or "" for the whole server) up to ``limit``."""

    pool: str
    who: str
    limit: int


def jittered(seconds: float, rng: random.Random) -> int:
    """A Retry-After value: whole seconds drawn from [s, 2s] (s at least 1), so that devices told
    to wait at the same moment come back spread over as long again, not all at once."""
    low = max(1, math.ceil(seconds))
    return rng.randint(low, 2 * low)


class Gate:
    """Requests in progress per (pool, who); ``hold`` takes every claim or none (never waits)."""

    def __init__(self, retry_after_s: int, rng: random.Random | None = None) -> None:
        self.retry_after_s = retry_after_s
        self.rng = rng or random.Random()
        self.held: Counter = Counter()

    @contextlib.contextmanager
    def hold(self, claims: Sequence[Claim]) -> Iterator[None]:
        for c in claims:
            if self.held[(c.pool, c.who)] >= c.limit:
                raise self._busy(c)
        for c in claims:
            self.held[(c.pool, c.who)] += 1
        try:
            yield
        finally:
            for c in claims:
                key = (c.pool, c.who)
                self.held[key] -= 1
                if self.held[key] <= 0:
                    del self.held[key]

    def _busy(self, c: Claim) -> Busy:
        wait = jittered(self.retry_after_s, self.rng)
        if c.who:
            return Busy(f"{c.who} already has {c.limit} {c.pool} requests in progress; retry later",
                        code=protocol.E_TOO_MANY, status=429, retry_after=wait)
        return Busy(f"too many {c.pool} requests in progress; retry later", code=protocol.E_BUSY, status=503,
                    retry_after=wait)


class Admission:
    """Batches in progress in this process (from the header's check to the answer), within caps on
    their number and on their declared bytes; one is always admitted when none is in progress.
    Beyond: 503 busy with a jittered Retry-After. Every batch admitted waits in the process's
    queue instead of being refused while there is room: a refused device comes back no sooner than
    Retry-After, so refusing early costs throughput and latency (the fleet bench). Runs on the event
    loop's thread, like Gate."""

    def __init__(self, max_batches: int, max_bytes: int, retry_after_s: int,
                 rng: random.Random | None = None) -> None:
        self.max_batches, self.max_bytes = max_batches, max_bytes
        self.retry_after_s = retry_after_s
        self.rng = rng or random.Random()
        self.batches = 0
        self.bytes = 0
        self.refused = 0

    @contextlib.contextmanager
    def hold(self, length: int) -> Iterator[None]:
        """Admit a batch of ``length`` bytes for the block, or raise Busy (503)."""
        if self.batches >= self.max_batches or (self.batches and self.bytes + length > self.max_bytes):
            self.refused += 1
            raise Busy(f"{self.batches} batches ({self.bytes:,} bytes) in progress; retry later",
                       code=protocol.E_BUSY, status=503, retry_after=jittered(self.retry_after_s, self.rng))
        self.batches += 1
        self.bytes += length
        try:
            yield
        finally:
            self.batches -= 1
            self.bytes -= length


def declared_length(headers, limit: int, too_large_code: str) -> int:
    """The body length a request declares (0 without a body): 411 for a body without
    Content-Length (chunked), 413 over ``limit`` — both before a byte of it is read."""
    if "transfer-encoding" in headers:
        raise ServerError("a request body needs a Content-Length", code=protocol.E_LENGTH_REQUIRED, status=411)
    length = headers.get("content-length")
    if length is None:
        return 0
    if not length.isdigit() or len(length) > 15:
        raise ServerError("Content-Length is not a number", code=protocol.E_BAD_REQUEST, status=400)
    if int(length) > limit:
        raise ServerError(f"request body over {limit} bytes", code=too_large_code, status=413)
    return int(length)


class BodyReader:
    """A request body read within ``limits``: at most ``length`` bytes (h11 holds the client to its
    Content-Length), all of it within body_timeout_s and, after body_grace_s, at min_rate_bps on
    average since the first byte was awaited; 408 body_timeout otherwise. Hashed as it comes."""

    def __init__(self, receive, length: int, limits: Limits, clock=time.monotonic) -> None:
        self._receive = receive
        self.length = length
        self.limits = limits
        self._clock = clock
        self._start = clock()
        self._chunks: list[bytes] = []
        self.received = 0
        self.done = length == 0
        self._hash = hashlib.sha256()

    def _deadline(self) -> float:
        lim = self.limits
        return self._start + min(lim.body_timeout_s, lim.body_grace_s + self.received / lim.min_rate_bps)

    async def read(self, at_least: int | None = None) -> bytes:
        """Everything received so far, once it is at least ``at_least`` bytes or the whole body."""
        want = self.length if at_least is None else min(at_least, self.length)
        while not self.done and self.received < want:
            timeout = self._deadline() - self._clock()
            try:
                if timeout <= 0:
                    raise TimeoutError
                message = await asyncio.wait_for(self._receive(), timeout)
            except TimeoutError:
                raise ServerError(f"request body too slow: {self.received} of {self.length} bytes in "
                                  f"{self._clock() - self._start:.0f} s", code=protocol.E_BODY_TIMEOUT,
                                  status=408) from None
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            if self.received + len(chunk) > self.length:
                raise ServerError("request body longer than its Content-Length", code=protocol.E_BAD_REQUEST,
                                  status=400)
            if chunk:
                self._chunks.append(chunk)
                self._hash.update(chunk)
                self.received += len(chunk)
            self.done = not message.get("more_body", False)
        if len(self._chunks) > 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0] if self._chunks else b""

    def sha256(self) -> str:
        """The hex SHA-256 of the body (call once it is read whole)."""
        return self._hash.hexdigest()


class ReplayCache:
    """The nonces of accepted CK-Sig2 headers, per device, until their ts leaves the window: a
    captured header cannot be sent again. Only headers whose signature verified are kept."""

    def __init__(self, window_ms: int = protocol.AUTH_WINDOW_MS, per_device: int = 10_000) -> None:
        self.window_ms = window_ms
        self.per_device = per_device
        self._seen: dict[str, dict[str, int]] = {}

    def fresh(self, ts_ms: int, now_ms: int) -> bool:
        return abs(ts_ms - now_ms) <= self.window_ms

    def first_use(self, device_id: str, nonce: str, ts_ms: int, now_ms: int) -> bool | None:
        """True the first time (then remembered), False for a replay, None when the device already
        has ``per_device`` nonces in the window (refuse: it is sending far more than a device does)."""
        seen = self._seen.setdefault(device_id, {})
        if nonce in seen:
            return False
        if len(seen) >= self.per_device:
            for old in [n for n, expiry in seen.items() if expiry < now_ms]:
                del seen[old]
            if len(seen) >= self.per_device:
                return None
        seen[nonce] = ts_ms + self.window_ms
        return True

    def sweep(self, now_ms: int) -> None:
        """Forget every nonce whose ts has left the window."""
        for device_id in list(self._seen):
            seen = self._seen[device_id]
            for old in [n for n, expiry in seen.items() if expiry < now_ms]:
                del seen[old]
            if not seen:
                del self._seen[device_id]
