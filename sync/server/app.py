"""The reference central server: a Starlette app (served by uvicorn) speaking docs/sync-protocol.md.

Handlers are async; every storage call and every CPU-heavy step (signature checks, decompression,
parsing) runs in the thread pool, so the event loop keeps answering. An acknowledgement is sent
only after the batch's transaction committed. A body is read only within the admission limits and
read deadlines of limits.py, and a CK-Sig2 request is authenticated from its header before any of
its body is read (docs/sync-protocol.md#limits).
"""
from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import multiprocessing
import os
import resource
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for_ready

import uvicorn
from cryptography.hazmat.primitives.asymmetric import ed25519
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from scanner import __version__
from scanner.base.errors import CheckpointError
from scanner.base.i18n import Text, text
from scanner.base.timeutil import now_ms
from sync.server import bundles, credentials
from sync.server.groupcommit import GroupSettings
from sync.server.keys import (
    key_dir,
    load_or_create_pull_key,
    load_or_create_sealing_key,
    public_pem,
    sealing_public_pem,
)
from sync.server.limits import (
    Admission,
    BodyReader,
    Busy,
    Claim,
    Gate,
    GuardedServer,
    Limits,
    ReplayCache,
    declared_length,
    guarded_protocol,
    jittered,
    peer_key,
)
from sync.server.model import Ingested, ServerError, Storage, StorageUnavailable, revoked_device, unknown_device
from sync.server.storage import is_postgres_url, open_storage
from sync.server.tokens import token_hash
from sync.wire import protocol
from sync.wire.batch import FORMAT_VERSIONS, BatchError, header_end, open_batch, read_header
from sync.wire.credential import MEDIA_TYPE as CREDENTIAL_TYPE

log = logging.getLogger(__name__)

INLINE_BUNDLE_MAX = 1024 * 1024  # enrollment answers carry the bundle inline up to this size
# a request's database work longer than this fails as 503 db_unavailable (the device retries): a
# database frozen or cut off must not hold requests and connections until it comes back
DB_WORK_DEADLINE_S = 15.0
# how long a batch waits for others to share its transaction (group commit, sync/server/groupcommit.py)
GROUP_COMMIT_MS = 2.0
START_TRIES = 3  # a worker that ends before it serves this many times in a row: `server run` stops with the reason
SHUTDOWN_GRACE_S = 5  # on SIGINT/SIGTERM, requests under way get this long to finish (devices retry the rest)
KEYS_KEPT = 100_000  # enrolled devices' keys a process keeps for authenticating batches (~20 MB)
BATCH_THREADS = 40  # threads that open and store batches (as many as Starlette's thread pool has)


@dataclass
class ServerConfig:
    sealing_public_pem: str
    max_inflight_batches: int = 256  # authenticated batches in progress (header checked to answer); beyond: 503
    max_inflight_bytes: int = 256 * 1024 * 1024  # and their declared bytes (limits.Admission)
    retry_after_s: int = 2  # the least Retry-After; jittered up to twice (limits.jittered)
    max_batch_bytes: int = protocol.MAX_BATCH_BYTES  # larger batches: 413, the device sends smaller ones
    pull_public_pem: str | None = None  # Ed25519: devices accept pulls signed by it (docs/sync-protocol.md#server-pull)
    limits: Limits = field(default_factory=Limits)  # per client, unauthenticated requests, read deadlines
    batch_formats: tuple[int, ...] = FORMAT_VERSIONS  # read and announced (FORMATS_HEADER); fewer while older
    # servers share the address (a rolling upgrade behind one load balancer)


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, "server_time_ms": now_ms()}, status_code=status,
                        headers=headers)


def _json(doc: dict, status: int = 200) -> JSONResponse:
    doc["server_time_ms"] = now_ms()
    return JSONResponse(doc, status_code=status)


class ServerTimeMiddleware:
    """Adds X-Checkpoint-Received and X-Checkpoint-Time (the server's clock when the request
    arrived and when the answer left, epoch ms) and the batch formats the server reads to every
    response."""

    def __init__(self, app, formats: tuple[int, ...] = FORMAT_VERSIONS) -> None:
        self.app = app
        self.formats = ",".join(map(str, formats)).encode("ascii")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        received = str(now_ms()).encode("ascii")

        async def send_with_time(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((protocol.RECEIVED_HEADER.lower().encode("ascii"), received))
                headers.append((protocol.TIME_HEADER.lower().encode("ascii"), str(now_ms()).encode("ascii")))
                headers.append((protocol.FORMATS_HEADER.lower().encode("ascii"), self.formats))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_time)


class DrainOrCloseMiddleware:
    """An answer sent before the request's body was read whole (a refusal) leaves the connection to
    read and drop the rest (a client sends its whole body before it reads; closing on unread data
    would reset the connection and lose the answer), within limits.guarded_protocol's drain deadline.
    After a read deadline, or for a body no request may have, the connection is closed instead."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"0")
        done = b"transfer-encoding" not in headers and length in (b"0", b"")
        drain = b"transfer-encoding" not in headers and length.isdigit() and int(length) <= protocol.MAX_BATCH_BYTES

        async def receive_tracked():
            nonlocal done
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                done = True
            return message

        async def send_closing(message) -> None:
            if message["type"] == "http.response.start" and not done and (message["status"] == 408 or not drain):
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive_tracked, send_closing)


def _json_body(data: bytes) -> dict:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ServerError("request body is not JSON", code=protocol.E_BAD_REQUEST, status=400) from None
    if not isinstance(doc, dict):
        raise ServerError("request body must be a JSON object", code=protocol.E_BAD_REQUEST, status=400)
    return doc


def _path_qs(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def _peer(request: Request) -> str:
    return peer_key(request.client.host if request.client else None)


def create_app(storage: Storage, config: ServerConfig) -> Starlette:
    limits = config.limits
    gate = Gate(config.retry_after_s)
    admission = Admission(config.max_inflight_batches, config.max_inflight_bytes, config.retry_after_s)
    replays = ReplayCache(per_device=limits.replay_per_device)
    swept = [0]
    # enrolled devices' keys, for batches: an id is derived from its key (protocol.device_id_for), so
    # a key kept here never goes stale; revocation is checked where each batch is stored
    batch_keys: dict[str, ed25519.Ed25519PublicKey] = {}
    # batches are opened and stored in threads of their own: asyncio's hand-off to an executor costs
    # the event loop less per batch than Starlette's run_in_threadpool (anyio's worker threads)
    batch_threads = ThreadPoolExecutor(BATCH_THREADS, thread_name_prefix="batch")
    # a request's device looked up by its signature's id, on threads of their own too: not anyio's
    # (whose backend a process would load in its first burst of batches), and a flood of requests
    # naming unknown devices queues here, not ahead of the batches being stored
    lookup_threads = ThreadPoolExecutor(BATCH_THREADS, thread_name_prefix="device-lookup")

    async def stored(data: bytes, public, sender: str | None = None) -> Ingested:
        return await asyncio.get_running_loop().run_in_executor(batch_threads, store, data, public, sender)

    async def active_device(device_id: str):
        """(the enrolled device, its public key); ServerError for unknown and revoked devices."""
        device = await asyncio.get_running_loop().run_in_executor(lookup_threads, storage.device, device_id)
        if device is None:
            raise unknown_device(device_id)
        if device.revoked_ms is not None:
            raise revoked_device(device_id)
        return device, ed25519.Ed25519PublicKey.from_public_bytes(device.public_key)

    def optional_request_auth(request: Request) -> protocol.RequestAuth | None:
        """The request's signature header, None without one."""
        return None if request.headers.get(protocol.AUTH_HEADER) is None else request_auth(request)

    def request_auth(request: Request) -> protocol.RequestAuth:
        value = request.headers.get(protocol.AUTH_HEADER)
        try:
            return protocol.parse_auth(value)
        except protocol.ProtocolError as exc:
            raise ServerError(str(exc), code=protocol.E_BAD_SIGNATURE, status=401) from None

    async def authenticate_header(request: Request, auth: protocol.RequestAuth,
                                  *, storing: bool = False) -> tuple[str, ed25519.Ed25519PublicKey]:
        """A CK-Sig2 header, before any of the body is read: its time near the server's clock, the
        enrolled key's signature, a nonce not used before. (the device's id, its public key)
        ``storing``: for a batch, whose storing checks that its device is enrolled and not revoked,
        the key of a device seen before is taken from memory (no look-up in the database)."""
        now = now_ms()
        nonce = auth.nonce
        if auth.version != 2 or nonce is None:  # the callers send CK-Sig2 headers only
            raise ServerError("not a CK-Sig2 request signature", code=protocol.E_BAD_SIGNATURE, status=401)
        if not replays.fresh(auth.ts_ms, now):
            raise ServerError(f"request time {auth.ts_ms} is more than {protocol.AUTH_WINDOW_MS // 1000} s from the "
                              f"server's clock {now}", code=protocol.E_STALE_REQUEST, status=401)
        public = batch_keys.get(auth.device_id) if storing else None
        if public is None:
            device, public = await active_device(auth.device_id)
            if len(batch_keys) >= KEYS_KEPT:
                del batch_keys[next(iter(batch_keys))]  # the first kept
            batch_keys[device.device_id] = public
        if not protocol.check_header(auth, public, request.method, _path_qs(request)):
            raise ServerError("request signature does not verify", code=protocol.E_BAD_SIGNATURE, status=401)
        if now - swept[0] > 60_000:
            replays.sweep(now)
            swept[0] = now
        first = replays.first_use(auth.device_id, nonce, auth.ts_ms, now)
        if first is None:
            raise Busy(f"device {auth.device_id} sent more than {limits.replay_per_device} requests within "
                       f"{protocol.AUTH_WINDOW_MS // 1000} s", code=protocol.E_TOO_MANY, status=429,
                       retry_after=config.retry_after_s)
        if not first:
            raise ServerError("this request signature was used before", code=protocol.E_REPLAYED, status=401)
        return auth.device_id, public

    async def authenticate(request: Request, body: bytes) -> str:
        """A request without a body to read (GET), or a v1 request whose body was read: the device's id."""
        auth = request_auth(request)
        if auth.version == 2:
            device_id, _ = await authenticate_header(request, auth)
            if auth.body_sha256 != hashlib.sha256(body).hexdigest():
                raise ServerError("request body does not match its signed hash", code=protocol.E_BAD_SIGNATURE,
                                  status=401)
            return device_id
        device, public = await active_device(auth.device_id)
        if not protocol.check_request(auth, public, request.method, _path_qs(request), body):
            raise ServerError("request signature does not verify", code=protocol.E_BAD_SIGNATURE, status=401)
        return device.device_id

    def device_claims(request: Request, device_id: str) -> list[Claim]:
        return [Claim("device", device_id, limits.per_device), Claim("authenticated", _peer(request), limits.per_peer)]

    def unauthenticated_claims(request: Request) -> list[Claim]:
        return [Claim("unauthenticated", "", limits.legacy_inflight),
                Claim("unauthenticated", _peer(request), limits.legacy_per_peer)]

    async def signed_body(request: Request, auth: protocol.RequestAuth, length: int) -> bytes:
        """The body of a request whose CK-Sig2 header was checked: read within the limits, then
        compared with the hash the device signed."""
        reader = BodyReader(request.receive, length, limits)
        body = await reader.read()
        if reader.sha256() != auth.body_sha256:
            raise ServerError("request body does not match its signed hash", code=protocol.E_BAD_SIGNATURE,
                              status=401)
        return body

    async def health(request: Request) -> Response:
        return _json({"ok": True, "protocol": protocol.VERSION, "request_auth": protocol.REQUEST_AUTH_VERSION,
                      "batch_formats": list(config.batch_formats), "software_version": __version__})

    async def enroll(request: Request) -> Response:
        length = declared_length(request.headers, protocol.MAX_JSON_BYTES, protocol.E_REQUEST_TOO_LARGE)
        with gate.hold([Claim("enroll", "", limits.enroll_inflight),
                        Claim("enroll", _peer(request), limits.enroll_per_peer)]):
            body = await BodyReader(request.receive, length, limits).read()
        doc = _json_body(body)
        token, pub_b64 = doc.get("token"), doc.get("public_key")
        if not isinstance(token, str) or not 8 <= len(token) <= 200:
            raise ServerError("token missing", code=protocol.E_BAD_REQUEST, status=400)
        try:
            raw = protocol.unb64(pub_b64, "public_key", 100)
            public = ed25519.Ed25519PublicKey.from_public_bytes(raw)
            auth = protocol.parse_auth(request.headers.get(protocol.AUTH_HEADER))
        except (protocol.ProtocolError, ValueError) as exc:
            raise ServerError(f"enrollment: {exc}", code=protocol.E_BAD_REQUEST, status=400) from None
        device_id = protocol.device_id_for(raw)
        if auth.device_id != device_id or not protocol.check_request(auth, public, "POST", _path_qs(request), body):
            raise ServerError("enrollment must be signed by the key it enrolls", code=protocol.E_BAD_SIGNATURE,
                              status=401)
        device = await run_in_threadpool(storage.enroll, token_hash(token), device_id, raw, now_ms())
        latest = await run_in_threadpool(storage.latest_bundle)
        inline = None
        if latest is not None and latest.size <= INLINE_BUNDLE_MAX:
            data = await run_in_threadpool(storage.bundle_data, latest.version)
            inline = None if data is None else protocol.b64(data)
        root = await run_in_threadpool(storage.get_meta, bundles.ROOT_META)
        credential = await run_in_threadpool(storage.get_meta, credentials.CREDENTIAL_META)
        log.info("enrolled device %s at checkpoint %s", device.device_id, device.checkpoint_id)
        return _json({"protocol": protocol.VERSION, "device_id": device.device_id,
                      "checkpoint_id": device.checkpoint_id, "sealing_public_key": config.sealing_public_pem,
                      "root_public_key": root, "bundle_version": latest.version if latest else None,
                      "bundle": inline, "pull_public_key": config.pull_public_pem,
                      "server_credential": credential})

    async def credential(request: Request) -> Response:
        await authenticate(request, b"")
        data = await run_in_threadpool(credentials.current, storage)
        if data is None:
            return _error(404, protocol.E_NO_CREDENTIAL, "no server credential published yet")
        return Response(data, media_type=CREDENTIAL_TYPE)

    def store(data: bytes, public, sender: str | None = None) -> Ingested:
        """Open a pushed batch (of ``sender``, the device whose request signature came with it, if
        one did) and store it, in one trip to a worker thread."""
        header = read_header(data)
        if sender is not None and header.device_id != sender:
            raise ServerError("a batch must be sent by its own device", code=protocol.E_BAD_SIGNATURE, status=401)
        if header.version not in config.batch_formats:
            raise BatchError(f"batch format {header.version} is not read by this server (it reads "
                             f"{', '.join(map(str, config.batch_formats))})", code=protocol.E_MALFORMED)
        return storage.ingest(open_batch(data, public, header=header), "push", now_ms())

    async def batches(request: Request) -> Response:
        auth = optional_request_auth(request)
        if auth is None or auth.version != 2:
            return await unauthenticated_batch(request)
        device_id, public = await authenticate_header(request, auth, storing=True)
        length = declared_length(request.headers, config.max_batch_bytes, protocol.E_TOO_LARGE)
        with gate.hold(device_claims(request, device_id)), admission.hold(length):
            data = await signed_body(request, auth, length)
            done = await stored(data, public, device_id)
        return _json(done.ack.to_dict())

    async def unauthenticated_batch(request: Request) -> Response:
        """A batch without a CK-Sig2 header (a device older than it): accepted within the small
        unauthenticated budget; its first bytes must be the header of an enrolled device's batch
        before the rest is read, and its own signature is checked before it is opened."""
        cap = min(limits.legacy_max_bytes, config.max_batch_bytes)
        length = declared_length(request.headers, cap, protocol.E_TOO_LARGE)
        with gate.hold(unauthenticated_claims(request)):
            reader = BodyReader(request.receive, length, limits)
            head = await reader.read(header_end(await reader.read(8), length))
            _, public = await active_device(read_header(head, length).device_id)
            data = await reader.read()
            done = await stored(data, public)
        return _json(done.ack.to_dict())

    async def acks(request: Request) -> Response:
        device_id = await authenticate(request, b"")
        try:
            after = int(request.query_params.get("after", "0"))
            limit = min(int(request.query_params.get("limit", str(protocol.MAX_ACKS))), protocol.MAX_ACKS)
        except ValueError:
            raise ServerError("after and limit must be integers", code=protocol.E_BAD_REQUEST, status=400) from None
        rows = await run_in_threadpool(storage.acks_after, device_id, max(0, after), max(1, limit) + 1)
        held = await run_in_threadpool(storage.held_seq, device_id)
        return _json({"batches": [list(r) for r in rows[:limit]], "more": len(rows) > limit, "held_seq": held})

    async def trust(request: Request) -> Response:
        await authenticate(request, b"")
        q = request.query_params
        try:
            have = int(q["version"]) if q.get("version") else None
        except ValueError:
            raise ServerError("version must be an integer", code=protocol.E_BAD_REQUEST, status=400) from None
        digest = q.get("digest") or None
        gzip_ok = "gzip" in request.headers.get("accept-encoding", "")
        ans = await run_in_threadpool(bundles.answer, storage, have, digest, full=q.get("full") == "1",
                                      gzip_ok=gzip_ok)
        if ans is None:
            return _error(404, protocol.E_NO_BUNDLE, "no trust bundle published yet")
        headers = {protocol.BUNDLE_VERSION_HEADER: str(ans.version)}
        if ans.kind == "not_modified":
            return Response(status_code=304, headers=headers)
        if ans.gzipped:
            headers["Content-Encoding"] = "gzip"
        media = protocol.DELTA_TYPE if ans.kind == "delta" else protocol.BUNDLE_TYPE
        return Response(ans.data, media_type=media, headers=headers)

    async def heartbeat(request: Request) -> Response:
        auth = request_auth(request)
        length = declared_length(request.headers, protocol.MAX_JSON_BYTES, protocol.E_REQUEST_TOO_LARGE)
        if auth.version == 2:
            device_id, _ = await authenticate_header(request, auth)
            with gate.hold(device_claims(request, device_id)):
                body = await signed_body(request, auth, length)
        else:  # a v1 signature can only be checked once the body is read
            with gate.hold(unauthenticated_claims(request)):
                body = await BodyReader(request.receive, length, limits).read()
                device_id = await authenticate(request, body)
        try:
            doc = protocol.check_heartbeat(_json_body(body))
        except protocol.ProtocolError as exc:
            raise ServerError(str(exc), code=protocol.E_BAD_REQUEST, status=400) from None
        kept = await run_in_threadpool(storage.record_heartbeat, device_id, doc, now_ms())
        held = await run_in_threadpool(storage.held_seq, device_id)
        return _json({"kept": kept, "held_seq": held})

    async def on_server_error(request: Request, exc: ServerError) -> Response:
        if exc.status == 408:  # a slow body cut (bounded by the pools: a few per grace period)
            log.info("%s %s from %s: %s", request.method, request.url.path, _peer(request), exc)
        headers = None
        if isinstance(exc, Busy):
            headers = {"Retry-After": str(exc.retry_after)}
        elif isinstance(exc, StorageUnavailable):  # a database restarting or failing over: spread the retries
            headers = {"Retry-After": str(jittered(config.retry_after_s, gate.rng))}
        return _error(exc.status, exc.code, str(exc), headers)

    async def on_batch_error(request: Request, exc: BatchError) -> Response:
        status = {protocol.E_TOO_LARGE: 413, protocol.E_BAD_SIGNATURE: 401}.get(exc.code, 400)
        log.warning("batch refused (%s): %s", exc.code, exc)
        return _error(status, exc.code, str(exc))

    async def on_disconnect(request: Request, exc: ClientDisconnect) -> Response:
        log.info("client went away before sending the whole request")
        return Response(status_code=400)

    async def on_crash(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s", request.url.path)
        return _error(500, protocol.E_INTERNAL, "internal server error")

    routes = [
        Route(protocol.HEALTH, health, methods=["GET"]),
        Route(protocol.ENROLL, enroll, methods=["POST"]),
        Route(protocol.BATCHES, batches, methods=["POST"]),
        Route(protocol.ACKS, acks, methods=["GET"]),
        Route(protocol.TRUST, trust, methods=["GET"]),
        Route(protocol.HEARTBEAT, heartbeat, methods=["POST"]),
        Route(protocol.CREDENTIAL, credential, methods=["GET"]),
    ]
    # starlette types each handler as taking any Exception; each here takes the class it is registered for
    app = Starlette(routes=routes, exception_handlers={
        ServerError: on_server_error, BatchError: on_batch_error, ClientDisconnect: on_disconnect,  # type: ignore[dict-item]
        Exception: on_crash,
    })
    app.add_middleware(DrainOrCloseMiddleware)
    app.add_middleware(ServerTimeMiddleware, formats=config.batch_formats)
    app.state.storage = storage
    app.state.gate = gate  # the requests in progress, per (pool, who): what the limits act on
    return app


def make_server(app, host: str, port: int, *, tls_cert: str | None = None, tls_key: str | None = None,
                access_log: bool = False, log_level: str = "warning", sock=None, limits: Limits | None = None,
                serving: Callable[[], None] | None = None):
    """A uvicorn Server for ``app`` (asyncio's loop; httptools' parser where the server extra is
    installed, else h11), its connections held to ``limits`` (per peer, handshake and header
    deadlines, limits.guarded_protocol); ``run`` it. ``serving``: called once it accepts
    connections with its signal handlers in place."""
    limits = limits or Limits()
    config = uvicorn.Config(app, host=host, port=port, loop="asyncio", http=guarded_protocol(limits), ws="none",
                            lifespan="off", access_log=access_log, log_level=log_level,
                            ssl_certfile=tls_cert, ssl_keyfile=tls_key, timeout_keep_alive=30,
                            timeout_graceful_shutdown=SHUTDOWN_GRACE_S, server_header=False)
    return GuardedServer(config, limits, serving)


def raise_open_files_limit() -> int:
    """The soft limit of open files raised to the hard one (every connection is a file; systemd's
    default soft limit, 1024, is few connections). The limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("open files limit stays %d: %s", soft, exc)
    return soft


def settle_heap() -> None:
    """Before a server process serves: what it made so far (modules, the app) put out of the cyclic
    collector's reach (gc.freeze: never scanned again), and its youngest generation collected
    every 20,000 allocations instead of 700. A batch makes thousands of short-lived tuples, freed by
    their reference counts; the collections they set off scanned the whole heap again and again
    (about a tenth of the server's CPU per entry, docs/benchmarks.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, *gc.get_threshold()[1:])


def default_workers(db_url: str) -> int:
    """Processes `server run` starts by default: one per CPU on PostgreSQL; one on SQLite, whose
    writes are serialised whatever the number of processes."""
    return max(1, os.cpu_count() or 1) if is_postgres_url(db_url) else 1


def serve(db_url: str, host: str, port: int, *, keys_dir: str | None = None, tls_cert: str | None = None,
          tls_key: str | None = None, access_log: bool = False, ready=None, max_inflight: int = 256,
          retry_after_s: int = 2, limits: Limits | None = None, workers: int = 0,
          sealing_public: str | None = None, group_commit_ms: float = GROUP_COMMIT_MS,
          batch_formats: tuple[int, ...] = FORMAT_VERSIONS, warn: Callable[[Text], None] | None = None,
          serving: Callable[[], None] | None = None) -> None:
    """Run the server until SIGINT/SIGTERM (`checkpoint server run`): in this process, or in
    ``workers`` processes (0: default_workers) sharing one listening socket, each with its own
    connections to the database (they keep no state of their own: docs/scaling.md).
    ``sealing_public``: the sealing key's public half (PEM, from the opener): then the private key is
    never loaded here. ``group_commit_ms``: how long a batch may wait for others to be stored with
    it in one transaction (PostgreSQL; 0: each batch in its own, sync/server/groupcommit.py).
    ``batch_formats``: the batch formats read and announced to devices. ``warn``: says a warning for
    the operator in the reader's language (else it is logged in English). ``serving``: called once the
    server accepts connections and SIGINT/SIGTERM stop it (the operator's "listening" line)."""
    directory = key_dir(db_url, keys_dir)
    group = GroupSettings(window_s=group_commit_ms / 1000) if group_commit_ms > 0 else None
    limits = limits or Limits()
    # creates or upgrades the schema once, before any worker starts
    storage = open_storage(db_url, work_deadline_s=DB_WORK_DEADLINE_S, group=group)
    try:
        sealing_pem = sealing_public or sealing_public_pem(load_or_create_sealing_key(directory))
        pull_key = load_or_create_pull_key(directory)
        if credentials.current(storage) is None:
            (warn or (lambda words: log.warning("%s", words("en"))))(text("server.no_credential"))
        config = ServerConfig(sealing_pem, max_inflight_batches=max_inflight, retry_after_s=retry_after_s,
                              pull_public_pem=public_pem(pull_key), limits=limits, batch_formats=batch_formats)
        raise_open_files_limit()
        workers = workers or default_workers(db_url)
        if workers == 1:
            server = make_server(create_app(storage, config), host, port, tls_cert=tls_cert, tls_key=tls_key,
                                 access_log=access_log, limits=limits, serving=serving)
            if threading.current_thread() is threading.main_thread():  # a process of its own (the demo
                settle_heap()  # serves from a thread of a process with more in it: its collector stays)
            if ready is not None:
                ready(server)
            server.run()
            return
    finally:
        storage.close()
    _supervise(workers, dict(db_url=db_url, config=config, host=host, port=port, tls_cert=tls_cert, tls_key=tls_key,
                             access_log=access_log, group=group), serving)


def _worker(sock: socket.socket, told: Connection, *, db_url: str, config: ServerConfig, host: str, port: int,
            tls_cert: str | None, tls_key: str | None, access_log: bool, group: GroupSettings | None) -> None:
    """One worker process: its own storage (pool of connections), the app, uvicorn on ``sock``; it
    tells the supervisor on ``told`` once it serves with its signal handlers in place. SIGTERM from
    the supervisor stops it; SIGINT stays blocked (a terminal's Ctrl-C is the supervisor's to act on)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # before its first thread: they inherit the mask
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s[%(process)d]: %(message)s")
    parent = os.getppid()
    try:
        _work(sock, told, parent, db_url=db_url, config=config, host=host, port=port, tls_cert=tls_cert,
              tls_key=tls_key, access_log=access_log, group=group)
    except (CheckpointError, OSError) as exc:  # a TLS key, the database: one line, the supervisor says the rest
        log.error("worker cannot serve: %s", exc)
        sys.exit(1)


def _work(sock: socket.socket, told: Connection, parent: int, *, db_url: str, config: ServerConfig, host: str,
          port: int, tls_cert: str | None, tls_key: str | None, access_log: bool,
          group: GroupSettings | None) -> None:
    storage = open_storage(db_url, work_deadline_s=DB_WORK_DEADLINE_S, group=group)
    try:
        server = make_server(create_app(storage, config), host, port, tls_cert=tls_cert, tls_key=tls_key,
                             access_log=access_log, limits=config.limits, serving=lambda: told.send(True))

        def orphaned() -> None:  # the supervisor was killed (SIGKILL): stop serving rather than linger
            while os.getppid() == parent and not server.should_exit:
                time.sleep(1.0)
            server.should_exit = True

        threading.Thread(target=orphaned, name="orphan-watch", daemon=True).start()
        settle_heap()
        server.run(sockets=[sock])
    finally:
        storage.close()


def _supervise(workers: int, settings: dict, serving: Callable[[], None] | None = None) -> None:
    """Bind the socket, start ``workers`` worker processes on it and keep that many running until
    SIGINT/SIGTERM, then stop them with SIGTERM (each finishes the requests it has, for at most
    SHUTDOWN_GRACE_S). A Ctrl-C is for this process alone: the workers are started with SIGINT
    blocked, so a terminal's Ctrl-C, which reaches the whole process group, never interrupts one
    half-started or half-stopped (a traceback, or a worker this process waited a minute for).
    ``serving``: called once the first workers all serve. A first worker that ends before it serves
    START_TRIES times in a row stops them all (CheckpointError, code workers_failed)."""
    family = socket.AF_INET6 if ":" in settings["host"] else socket.AF_INET
    sock = socket.create_server((settings["host"], settings["port"]), family=family, backlog=2048)
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter each: no threads or connections inherited
    stopping: list[int] = []  # the signals received (appended by the handler: it takes no lock)
    waiting: dict[Connection, int] = {}  # the first workers' "serving" pipes, until each has said so

    def start(i: int, first: bool = False) -> multiprocessing.process.BaseProcess:
        heard, told = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, args=(sock, told), kwargs=settings, name=f"checkpoint-worker-{i}",
                           daemon=True)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # inherited through fork and exec
        try:
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a Ctrl-C meanwhile reaches this process now
        told.close()
        if first and serving is not None:
            waiting[heard] = i
        else:
            heard.close()
        return proc

    def on_signal(signum, frame) -> None:  # no Event.set here: the main thread may hold its lock when a signal comes
        stopping.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    procs = [start(i, first=True) for i in range(workers)]
    failed = [0] * workers  # each first worker's starts that ended before it served
    log.info("%d worker processes on %s:%d", workers, settings["host"], settings["port"])
    try:
        while waiting and not stopping:
            for conn in wait_for_ready(list(waiting), timeout=0.1):
                assert isinstance(conn, Connection)  # wait() hands back what it was given
                i = waiting.pop(conn)
                try:
                    conn.recv()  # it serves
                except EOFError:  # it ended before it served: another in its place, waited for too
                    procs[i].join(SHUTDOWN_GRACE_S)
                    failed[i] += 1
                    if failed[i] >= START_TRIES:  # a fault of the settings (a TLS key, the database), not bad luck
                        raise CheckpointError(
                            f"server worker exited with {procs[i].exitcode} before it served, {failed[i]} times in "
                            "a row; its log above says why", code="workers_failed",
                            text=text("server.workers_failed", tries=failed[i], status=procs[i].exitcode)) from None
                    log.warning("worker %d exited with %s before it served; starting another", procs[i].pid,
                                procs[i].exitcode)
                    procs[i] = start(i, first=True)
                finally:
                    conn.close()
            if not waiting and serving is not None and not stopping:
                serving()
        while not stopping:
            time.sleep(0.2)  # after a signal's handler, sleep goes on for the rest of this time: no longer
            for i, proc in enumerate(procs):
                if stopping:
                    break
                if not proc.is_alive():
                    log.warning("worker %d exited with %s; starting another", proc.pid, proc.exitcode)
                    procs[i] = start(i)
    finally:
        for conn in waiting:
            conn.close()
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        end = time.monotonic() + SHUTDOWN_GRACE_S + 2.0
        for proc in procs:
            proc.join(max(0.0, end - time.monotonic()))
            if proc.is_alive():
                log.warning("worker %d still running %.0f s after SIGTERM; killed", proc.pid, SHUTDOWN_GRACE_S + 2.0)
                proc.kill()
                proc.join(10)
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
