"""The appliance's local HTTP API: health, status, doctor, a live event stream, staff actions.

Starlette on uvicorn (pure-Python stack: asyncio, h11), in its own thread with its own event
loop, on a socket the daemon binds before it says READY. Bound to 127.0.0.1 by default; clients
that are not on this machine need the configured token. No endpoint reads the entry log beyond
counts: the holder's name and birth year reach the kiosk only inside a live ``verdict`` event,
from memory (scanner/appliance/events.py). The kiosk and status pages (scanner/appliance/pages.py) are
served here too. Endpoints: docs/configuration.md#local-http-api.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
import threading
import time
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from scanner.appliance.events import EventHub
from scanner.appliance.pages import is_static
from scanner.base.safetext import escape
from sync.wire.http import is_loopback

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
KEEPALIVE_S = 15.0
RETRY_MS = 1000  # how soon a browser's EventSource reconnects after the daemon restarts


class Backend(Protocol):
    """What the API needs from the daemon (scanner/appliance/status.py implements it)."""

    def health(self) -> dict: ...

    def status(self) -> dict: ...

    def doctor(self) -> dict: ...

    def set_direction(self, direction: str | None) -> str: ...

    def silence(self) -> None: ...


def _host_name(host_header: str) -> str:
    """The name part of a Host header ("127.0.0.1:8080" → "127.0.0.1", "[::1]:80" → "::1")."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    return host_header.rpartition(":")[0] if host_header.count(":") == 1 else host_header


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status,
                        headers={"Cache-Control": "no-store"})


class Guard:
    """Who may call: this machine (with a loopback Host header: no DNS rebinding), or anyone with
    the token. POSTs must be JSON and same-origin (no cross-site requests from a browser)."""

    def __init__(self, app, token: str | None, listen_host: str) -> None:
        self.app = app
        self.token = token.encode("utf-8") if token else None
        self.listen_host = listen_host

    def _token_ok(self, scope) -> bool:
        if self.token is None:
            return False
        headers = dict(scope.get("headers") or [])
        given = b""
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        else:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            given = (query.get("token") or [""])[0].encode("utf-8")
        return bool(given) and hmac.compare_digest(given, self.token)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] in ("GET", "HEAD") and is_static(scope["path"]):
            await self.app(scope, receive, send)  # public code (the pages' CSS and scripts), no data
            return
        client = (scope.get("client") or ("", 0))[0]
        headers = dict(scope.get("headers") or [])
        host = _host_name(headers.get(b"host", b"").decode("latin-1"))
        if self._token_ok(scope):
            pass
        elif not is_loopback(client):
            await _error(401, "token_required", "this API needs a token from other machines")(scope, receive, send)
            return
        elif not (is_loopback(host) or host == self.listen_host):
            await _error(403, "bad_host", "unexpected Host header")(scope, receive, send)
            return
        if scope["method"] == "POST":
            ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            origin = headers.get(b"origin")
            if ctype != b"application/json":
                await _error(415, "json_required", "send a JSON body (Content-Type: application/json)")(
                    scope, receive, send)
                return
            if origin is not None and urlsplit(origin.decode("latin-1")).netloc != headers.get(b"host", b"").decode(
                    "latin-1"):
                await _error(403, "cross_origin", "cross-site requests are refused")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(backend: Backend, hub: EventHub, *, token: str | None = None, listen_host: str = "127.0.0.1",
               keepalive_s: float = KEEPALIVE_S, extra_routes: list | None = None) -> Starlette:
    """The API as an ASGI app (see the module docstring); ``extra_routes``: the browser pages
    (scanner/appliance/pages.py), behind the same guard."""

    def _json(doc: dict, status: int = 200) -> JSONResponse:
        return JSONResponse(doc, status_code=status, headers={"Cache-Control": "no-store"})

    async def health(request: Request) -> Response:
        return _json(await run_in_threadpool(backend.health))

    async def status(request: Request) -> Response:
        return _json(await run_in_threadpool(backend.status))

    async def doctor(request: Request) -> Response:
        return _json(await run_in_threadpool(backend.doctor))

    async def events(request: Request) -> Response:
        got = hub.subscribe(asyncio.get_running_loop())
        if got is None:
            return _error(503, "too_many_clients", "too many event-stream clients")
        sub, first = got

        async def stream():
            try:
                yield f"retry: {RETRY_MS}\n\n"
                for event in first:
                    yield event.sse()
                while True:
                    try:
                        event = await asyncio.wait_for(sub.queue.get(), keepalive_s)
                    except TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    if event is None:  # the daemon is stopping
                        return
                    yield event.sse()
            finally:
                hub.unsubscribe(sub)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def _body(request: Request) -> dict:
        raw = await request.body()
        if len(raw) > 4096:
            raise ValueError("body too large")
        doc = json.loads(raw) if raw.strip() else {}
        if not isinstance(doc, dict):
            raise ValueError("body must be a JSON object")
        return doc

    async def direction(request: Request) -> Response:
        try:
            doc = await _body(request)
        except (ValueError, UnicodeDecodeError):
            return _error(400, "bad_request", "expected {} or {\"direction\": \"in\"|\"out\"}")
        wanted = doc.get("direction")
        if wanted not in (None, "in", "out"):
            return _error(400, "bad_direction", "direction must be \"in\" or \"out\"")
        return _json({"direction": await run_in_threadpool(backend.set_direction, wanted)})

    async def silence(request: Request) -> Response:
        try:
            await _body(request)
        except (ValueError, UnicodeDecodeError):
            return _error(400, "bad_request", "expected a JSON object")
        await run_in_threadpool(backend.silence)
        return _json({"silenced": True})

    async def not_found(request: Request, exc) -> Response:
        return _error(404, "not_found", "no such endpoint")

    async def crash(request: Request, exc: Exception) -> Response:
        log.exception("api: internal error on %s", escape(request.url.path))
        return _error(500, "internal", "internal error")

    async def method(request: Request, exc) -> Response:
        return _error(405, "method_not_allowed", "method not allowed")

    routes = [
        Route(f"{PREFIX}/health", health, methods=["GET"]),
        Route(f"{PREFIX}/status", status, methods=["GET"]),
        Route(f"{PREFIX}/doctor", doctor, methods=["GET"]),
        Route(f"{PREFIX}/events", events, methods=["GET"]),
        Route(f"{PREFIX}/direction", direction, methods=["POST"]),
        Route(f"{PREFIX}/silence", silence, methods=["POST"]),
        *(extra_routes or []),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: method, Exception: crash})
    app.add_middleware(Guard, token=token, listen_host=listen_host)
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (bound before the daemon says READY, so a busy port fails the start)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class ApiServer:
    """uvicorn serving the app on a pre-bound socket, in a thread named "api"."""

    def __init__(self, app, sock: socket.socket) -> None:
        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.host, self.port = host, port
        config = uvicorn.Config(app, loop="asyncio", http="h11", ws="none", lifespan="off", access_log=False,
                                log_level="warning", timeout_keep_alive=5, timeout_graceful_shutdown=1,
                                server_header=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, name="api", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except Exception:  # the API is not essential to scanning: say so and let the lane go on
            log.exception("api: server stopped by an error")

    def start(self, timeout: float = 10.0) -> ApiServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 3.0) -> None:
        if self.thread.ident is None:  # never started (the daemon's start failed later): just let go
            self.sock.close()
            return
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(1.0)
