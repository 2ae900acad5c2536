"""The browser pages on the local API: the kiosk screen, the technician status page, their texts
and the camera preview.

The pages are plain HTML, CSS and JavaScript files in scanner/appliance/web/ (package data: no build step,
nothing fetched at run time), served as they are. What they show comes from the JSON endpoints
and the event stream of scanner/appliance/api.py, and their words from scanner/base/translations.toml through
``/api/v1/texts``: no text is written twice. The kiosk shows the holder of the card just read from
the live ``verdict`` event only, and forgets it with the ``clear`` event. Static files are public
code (no data) and need no token; every page and endpoint that carries data goes through the
API's guard. Spec: docs/configuration.md#kiosk-screen-and-status-page.
"""
from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from importlib import resources

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from scanner.appliance.preview import Preview
from scanner.base import i18n

STATIC_PREFIX = "/static/"
PAGES = {"/": "kiosk.html", "/status": "status.html"}
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".svg": "image/svg+xml", ".html": "text/html; charset=utf-8"}
TEXT_SECTIONS = ("decision", "reason", "kiosk", "badge", "degraded", "status_page", "readiness", "problem", "mode",
                 "input_kind", "input_state", "input_reason", "age", "sync_error", "error",
                 "clock_by", "clock_kernel")
BOUNDARY = b"frame"
PREVIEW_IDLE_S = 2.0  # how often a preview stream with no new frame checks that its client is still there

# Pages may load only their own files and talk only to this device; nothing may frame them.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}


def _load_web() -> dict[str, tuple[bytes, str]]:
    """Every file of scanner/web with its content type (read once, when the API is built)."""
    files = {}
    for entry in resources.files("scanner.appliance").joinpath("web").iterdir():
        suffix = entry.name[entry.name.rfind("."):]
        if entry.is_file() and suffix in STATIC_TYPES:
            files[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    return files


def is_static(path: str) -> bool:
    """A request for a static file (public code: served without a token, see the module docstring)."""
    return path.startswith(STATIC_PREFIX) and "/" not in path[len(STATIC_PREFIX):]


def routes(settings: Callable[[], dict], preview: Preview | None) -> list[Route]:
    """The pages' routes. ``settings()`` gives the kiosk's settings (`/api/v1/kiosk`);
    ``preview`` serves `/api/v1/preview/{camera}` (None: no preview)."""
    web = _load_web()
    etags = {name: '"' + hashlib.sha256(body).hexdigest()[:20] + '"' for name, (body, _) in web.items()}
    texts = i18n.catalogue(TEXT_SECTIONS)

    def _file(name: str, request: Request, headers: dict) -> Response:
        body, ctype = web[name]
        etag = etags[name]
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={**headers, "ETag": etag})
        return Response(body, media_type=ctype, headers={**headers, "ETag": etag})

    async def page(request: Request) -> Response:
        return _file(PAGES[request.url.path], request, PAGE_HEADERS)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in web or name.endswith(".html"):
            return JSONResponse({"error": "not_found", "message": "no such file"}, status_code=404)
        return _file(name, request, {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})

    async def texts_endpoint(request: Request) -> Response:
        return JSONResponse({"langs": list(i18n.LANGS), "texts": texts}, headers={"Cache-Control": "no-cache"})

    async def kiosk(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(settings), headers={"Cache-Control": "no-store"})

    async def preview_stream(request: Request) -> Response:
        camera = request.path_params["camera"]
        viewer = preview.watch(camera) if preview is not None else None
        if viewer is None:
            busy = preview is not None and camera in preview.cameras() and not preview.closed
            return JSONResponse({"error": "too_many_clients", "message": "too many preview clients"} if busy else
                                {"error": "not_found", "message": "no preview for that camera"},
                                status_code=503 if busy else 404, headers={"Cache-Control": "no-store"})

        async def stream():
            seq = 0
            try:
                yield b"--" + BOUNDARY + b"\r\n"
                while not preview.closed:
                    try:
                        await asyncio.wait_for(viewer.wake.wait(), PREVIEW_IDLE_S)
                    except TimeoutError:
                        if await request.is_disconnected():
                            return
                        continue
                    viewer.wake.clear()
                    got = await run_in_threadpool(preview.jpeg, camera, seq)
                    if got is None:
                        continue
                    seq, data = got
                    # each part ends with the next boundary, so a browser shows it at once
                    yield (b"Content-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data) + data
                           + b"\r\n--" + BOUNDARY + b"\r\n")
            finally:
                preview.unwatch(camera, viewer)

        return StreamingResponse(stream(), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}",
                                 headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                                          "X-Accel-Buffering": "no"})

    return [
        Route("/", page, methods=["GET"]),
        Route("/status", page, methods=["GET"]),
        Route(STATIC_PREFIX + "{name}", static, methods=["GET"]),
        Route("/api/v1/texts", texts_endpoint, methods=["GET"]),
        Route("/api/v1/kiosk", kiosk, methods=["GET"]),
        Route("/api/v1/preview/{camera:path}", preview_stream, methods=["GET"]),
    ]
