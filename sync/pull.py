"""Server pull, the device side: for sites where the central server can reach the device (a VPN)
but not the other way, the device's local HTTP API offers its pending entries as the same signed
batches a push would send, and takes the server's acknowledgement (docs/sync-protocol.md#server-pull).

Never anonymous. A request is accepted when it is signed with a server pull key the device knows
(the one its root-signed server credential names, or keys given) over a nonce the device issued
(no clocks involved; the signature: sync.wire.pullauth), or when it carries the configured token
(``Authorization: Bearer``). With neither configured every request is refused (``pull_disabled``).

The daemon mounts it in front of its API with one line (the log is given as its path: the pull
side opens its own connection when first asked, so the API can start before the device is
provisioned)::

    app = with_pull(app, self.state_dir, self.config.db_path)

Acknowledgements are checked against the log (the batch id must be the one of that exact run of
this device's entries) and then marked with the same code as pushes (agent.mark_acked), so push,
pull and USB import can be mixed freely.
"""
from __future__ import annotations

import binascii
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from scanner.base.errors import CheckpointError
from scanner.base.fsutil import atomic_write
from scanner.base.timeutil import now_ms
from scanner.store.entrylog import EntryLog, EntryLogError
from sync import credential
from sync.agent import MAX_BATCH, build_next, mark_acked, quarantine
from sync.state import PULL_STATE_NAME, DeviceConfig, StateError, StateFile
from sync.wire import batch as batchmod
from sync.wire import identity, protocol
from sync.wire.credential import CredentialError
from sync.wire.pullauth import (
    ACK,
    BATCH,
    DEFAULT_LIMIT,
    E_ACK_MISMATCH,
    E_DISABLED,
    E_NONCE,
    E_NOT_PROVISIONED,
    E_UNAUTHORIZED,
    INFO,
    NO_NONCE,
    PREFIX,
    REFUSED,
    key_id,
    parse_auth,
    signing_input,
)

log = logging.getLogger(__name__)

NONCE_TTL_S = 600.0
MAX_NONCES = 64
MAX_ACK_ROWS = protocol.MAX_ACKS


class PullError(CheckpointError):
    """A refused pull request: ``code`` (sync.wire.pullauth) and the HTTP ``status``."""

    code = E_UNAUTHORIZED

    def __init__(self, message: str, *, code: str, status: int) -> None:
        super().__init__(message, code=code)
        self.status = status


# ---------------------------------------------------------------- the device side


class PullService:
    """What the endpoints do, without HTTP: authenticate, describe, build, mark, quarantine."""

    def __init__(self, state_dir: str | os.PathLike, entry_log: EntryLog | str | os.PathLike, *,
                 token: str | None = None, server_keys: Iterable[ed25519.Ed25519PublicKey] = (),
                 nonce_ttl_s: float = NONCE_TTL_S) -> None:
        self.state_dir = Path(state_dir)
        self._log = entry_log if isinstance(entry_log, EntryLog) else None
        self._log_path = None if isinstance(entry_log, EntryLog) else Path(entry_log)
        self._own_log = self._log is None
        self.token = token.encode("utf-8") if token else None
        self.extra_keys = list(server_keys)
        self.nonce_ttl_s = nonce_ttl_s
        self._nonces: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self._ident: tuple[DeviceConfig, ed25519.Ed25519PrivateKey] | None = None
        self._keys_cache: tuple[int | None, list] = (None, [])

    @property
    def log(self) -> EntryLog:
        """The entry log: the one given, or this side's own connection to the file, opened on first use."""
        if self._log is None:
            with self._lock:
                if self._log is None:
                    assert self._log_path is not None  # a path is kept whenever no log was given
                    try:
                        self._log = EntryLog(self._log_path, create=False)
                    except EntryLogError as exc:
                        raise PullError(f"no entry log yet: {exc}", code=E_NOT_PROVISIONED, status=503) from None
        return self._log

    def close(self) -> None:
        """Close the log connection this side opened itself (a log given to it stays open)."""
        with self._lock:
            if self._own_log and self._log is not None:
                self._log.close()
                self._log = None

    # ------------------------------------------------------------ identity and keys

    def identity(self) -> tuple[DeviceConfig, ed25519.Ed25519PrivateKey]:
        """The device's config and key, loaded on first use (the daemon may start unprovisioned)."""
        if self._ident is None:
            try:
                self._ident = (DeviceConfig.load(self.state_dir), identity.load(self.state_dir))
            except (StateError, identity.IdentityError) as exc:
                raise PullError(f"this device is not provisioned: {exc}", code=E_NOT_PROVISIONED, status=503) from None
        return self._ident

    def server_keys(self) -> dict[str, ed25519.Ed25519PublicKey]:
        """The pull key of the root-signed server credential (checked again whenever the file
        changes) and the keys given to this service."""
        path = self.state_dir / credential.FILE_NAME
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime != self._keys_cache[0]:
            keys = []
            if mtime is not None:
                try:
                    cred = credential.load(self.state_dir)
                    keys = [cred.pull_key] if cred.pull_key is not None else []
                except (CredentialError, StateError) as exc:
                    log.warning("pull: server credential not usable (%s): no pull key from it", exc.code)
            self._keys_cache = (mtime, keys)
        return {key_id(k): k for k in self._keys_cache[1] + self.extra_keys}

    # ------------------------------------------------------------ authentication

    def new_nonce(self) -> str:
        nonce = secrets.token_hex(16)
        with self._lock:
            self._nonces[nonce] = time.monotonic()
            while len(self._nonces) > MAX_NONCES:
                self._nonces.popitem(last=False)
        return nonce

    def _nonce_ok(self, nonce: str) -> bool:
        with self._lock:
            issued = self._nonces.get(nonce)
            if issued is None:
                return False
            if time.monotonic() - issued > self.nonce_ttl_s:
                del self._nonces[nonce]
                return False
            return True

    def authenticate(self, authorization: str | None, method: str, path_qs: str, body: bytes, *,
                     info: bool = False) -> str:
        """Who is asking ("key:<id>" or "token"); PullError otherwise. Only /info may be signed
        without a nonce (it hands one out)."""
        keys = self.server_keys()
        if not keys and self.token is None:
            raise PullError("server pull is not configured on this device (no server key, no token)",
                            code=E_DISABLED, status=403)
        value = authorization or ""
        if value[:7].lower() == "bearer ":
            given = value[7:].strip().encode("utf-8")
            if self.token is not None and given and hmac.compare_digest(given, self.token):
                return "token"
            raise PullError("wrong token", code=E_UNAUTHORIZED, status=401)
        parsed = parse_auth(value)
        if parsed is None:
            raise PullError("pull requests must be signed by the server or carry the token",
                            code=E_UNAUTHORIZED, status=401)
        kid, nonce, sig_b64 = parsed
        public = keys.get(kid)
        if public is None:
            raise PullError(f"unknown server key {kid}", code=E_UNAUTHORIZED, status=401)
        if nonce == NO_NONCE:
            if not info:
                raise PullError("this request needs a nonce from /info", code=E_NONCE, status=401)
            device_id = NO_NONCE
        else:
            if not self._nonce_ok(nonce):
                raise PullError("unknown or expired nonce: ask /info for a new one", code=E_NONCE, status=401)
            device_id = self.identity()[0].device_id
        try:
            sig = binascii.a2b_base64(sig_b64, strict_mode=True)
            public.verify(sig, signing_input(device_id, nonce, method, path_qs, body))
        except (binascii.Error, ValueError, InvalidSignature):
            raise PullError("pull request signature does not verify", code=E_UNAUTHORIZED, status=401) from None
        return f"key:{kid}"

    # ------------------------------------------------------------ the work

    def info(self) -> dict:
        cfg, _ = self.identity()
        first = self.log.pending(0, 1)
        last = self.log.tail(1)
        return {"protocol": protocol.VERSION, "device_id": cfg.device_id, "checkpoint_id": cfg.checkpoint_id,
                "pending": self.log.backlog()[0], "first_pending_seq": first[0].seq if first else None,
                "last_seq": last[0].seq if last else 0, "max_entries": MAX_BATCH, "nonce": self.new_nonce(),
                "nonce_ttl_s": self.nonce_ttl_s}

    def next_batch(self, after_seq: int, limit: int) -> batchmod.SignedBatch | None:
        """The next run of pending entries after ``after_seq`` (quarantined runs skipped), signed;
        fewer entries if the run would not fit in one batch."""
        cfg, key = self.identity()
        quarantined = StateFile(self.state_dir).load().quarantine_ranges()
        limit = max(1, min(limit, MAX_BATCH))
        while True:
            try:
                return build_next(self.log, key, cfg.device_id, after_seq, limit, quarantined, now_ms(),
                                  step=lambda: time.sleep(0))
            except ValueError:  # over the byte limit of a batch: fewer entries
                if limit == 1:
                    raise
                limit //= 2

    def ack(self, doc: object, puller: str) -> dict:
        """Mark the runs the server says it holds; each must be this device's exact run."""
        if not isinstance(doc, dict) or not isinstance(doc.get("batches"), list) or len(doc["batches"]) > MAX_ACK_ROWS:
            raise PullError(f"expected {{\"batches\": [[batch_id, first_seq, last_seq], ...]}} (at most "
                            f"{MAX_ACK_ROWS})", code=protocol.E_BAD_REQUEST, status=400)
        rows = doc["batches"]
        if not all(isinstance(r, list) and len(r) == 3 and isinstance(r[0], str) and len(r[0]) == 32
                   and type(r[1]) is int and type(r[2]) is int and 1 <= r[1] <= r[2] for r in rows):
            raise PullError("acknowledgement rows must be [batch_id, first_seq, last_seq]",
                            code=protocol.E_BAD_REQUEST, status=400)
        cfg, _ = self.identity()
        marked = skipped = 0
        top = 0
        for batch_id, first, last in rows:
            pend = [e for e in self.log.pending(first - 1, min(last - first + 1, protocol.MAX_BATCH_ENTRIES))
                    if e.seq <= last]
            if not pend or pend[-1].seq != last:
                # nothing of it pending any more, or its last entry already marked (by an overlapping
                # batch): it cannot be checked against the log, and what is left is acknowledged
                # by its own batch or pulled again (and deduplicated)
                skipped += 1
                continue
            if batchmod.batch_id_for(cfg.device_id, first, last, pend[-1].hash) != batch_id:
                raise PullError(f"batch {batch_id} is not seq {first}..{last} of this device",
                                code=E_ACK_MISMATCH, status=400)
            try:
                marked += mark_acked(self.log, batch_id, first, last)
            except EntryLogError as exc:
                raise PullError(f"cannot mark {first}..{last}: {exc}", code=E_ACK_MISMATCH, status=400) from None
            top = max(top, last)
        held = doc.get("held_seq")
        self._note(puller, acked_seq=top, held_seq=held if type(held) is int else None, marked=marked)
        return {"marked": marked, "skipped": skipped, "pending": self.log.backlog()[0]}

    def refused(self, doc: object, puller: str, wait_s: float = 30.0) -> dict:
        """The server found this one-entry run malformed: quarantine it as a push would."""
        if not isinstance(doc, dict):
            raise PullError("expected a JSON object", code=protocol.E_BAD_REQUEST, status=400)
        batch_id, first, last = doc.get("batch_id"), doc.get("first_seq"), doc.get("last_seq")
        code, message = str(doc.get("code", protocol.E_MALFORMED))[:64], str(doc.get("message", ""))[:300]
        if not (isinstance(batch_id, str) and type(first) is int and type(last) is int and 1 <= first <= last):
            raise PullError("expected batch_id, first_seq, last_seq", code=protocol.E_BAD_REQUEST, status=400)
        sb = self.next_batch(first - 1, last - first + 1)
        if sb is None or (sb.info.batch_id, sb.info.first_seq, sb.info.last_seq) != (batch_id, first, last):
            raise PullError(f"batch {batch_id} is not a pending run of this device", code=E_ACK_MISMATCH, status=400)
        files = StateFile(self.state_dir)
        end = time.monotonic() + wait_s
        while True:
            with files.lock(wait=False) as locked:
                if locked:
                    state = files.load()
                    quarantine(self.state_dir, state, sb, code, f"(pulled by {puller}) {message}")
                    files.save(state)
                    return {"quarantined": [batch_id, first, last]}
            if time.monotonic() > end:
                raise PullError("the sync state is busy; try again", code=protocol.E_BUSY, status=503)
            time.sleep(0.05)

    def _note(self, puller: str, **fields) -> None:
        """STATE/pull-state.json: when and by whom this device was last pulled (for `sync status`)."""
        path = self.state_dir / PULL_STATE_NAME
        with self._lock:
            try:
                doc = json.loads(path.read_bytes())
                if not isinstance(doc, dict):
                    doc = {}
            except (OSError, ValueError):
                doc = {}
            doc["last_ack_ms"] = now_ms()
            doc["puller"] = puller
            if fields.get("acked_seq"):
                doc["acked_seq"] = max(int(doc.get("acked_seq") or 0), fields["acked_seq"])
            if fields.get("held_seq") is not None:
                doc["server_held_seq"] = fields["held_seq"]
            doc["marked_total"] = int(doc.get("marked_total") or 0) + fields.get("marked", 0)
            atomic_write(path, (json.dumps(doc, indent=1) + "\n").encode("utf-8"), 0o600)


# ---------------------------------------------------------------- HTTP


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, "server_time_ms": now_ms()}, status_code=status,
                        headers={"Cache-Control": "no-store"})


def _path_qs(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


async def _body(request: Request, limit: int = protocol.MAX_JSON_BYTES * 4) -> bytes:
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise PullError(f"request body over {limit} bytes", code=protocol.E_BAD_REQUEST, status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def create_pull_app(state_dir: str | os.PathLike, entry_log: EntryLog | str | os.PathLike, *,
                    token: str | None = None,
                    server_keys: Iterable[ed25519.Ed25519PublicKey] = (),
                    nonce_ttl_s: float = NONCE_TTL_S) -> Starlette:
    """The pull endpoints as an ASGI app (paths under PREFIX; serve it alone or via with_pull).
    ``entry_log``: an open EntryLog, or the log's path (opened on first use, its own connection)."""
    svc = PullService(state_dir, entry_log, token=token, server_keys=server_keys, nonce_ttl_s=nonce_ttl_s)

    async def auth(request: Request, body: bytes, *, info: bool = False) -> str:
        return await run_in_threadpool(svc.authenticate, request.headers.get("authorization"), request.method,
                                       _path_qs(request), body, info=info)

    async def info(request: Request) -> Response:
        await auth(request, b"", info=True)
        return JSONResponse(await run_in_threadpool(svc.info), headers={"Cache-Control": "no-store"})

    async def batch(request: Request) -> Response:
        await auth(request, b"")
        q = request.query_params
        try:
            after = max(0, int(q.get("after", "0")))
            limit = int(q.get("limit", str(DEFAULT_LIMIT)))
        except ValueError:
            raise PullError("after and limit must be integers", code=protocol.E_BAD_REQUEST, status=400) from None
        sb = await run_in_threadpool(svc.next_batch, after, limit)
        if sb is None:
            return Response(status_code=204, headers={"Cache-Control": "no-store"})
        return Response(sb.data, media_type=protocol.BATCH_TYPE, headers={"Cache-Control": "no-store"})

    async def posted(request: Request, handle) -> Response:
        """A POST with a JSON body: authenticated, then ``handle(doc, who)`` in a worker thread."""
        body = await _body(request)
        who = await auth(request, body)
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise PullError("request body is not JSON", code=protocol.E_BAD_REQUEST, status=400) from None
        return JSONResponse(await run_in_threadpool(handle, doc, who))

    async def ack(request: Request) -> Response:
        return await posted(request, svc.ack)

    async def refused(request: Request) -> Response:
        return await posted(request, svc.refused)

    async def on_pull_error(request: Request, exc: PullError) -> Response:
        if exc.status == 401:
            log.warning("pull: refused a request (%s)", exc.code)
        return _error(exc.status, exc.code, str(exc))

    async def on_crash(request: Request, exc: Exception) -> Response:
        log.exception("pull: internal error on %s", request.url.path)
        return _error(500, protocol.E_INTERNAL, "internal error")

    async def not_found(request: Request, exc) -> Response:
        return _error(404, "not_found", "no such endpoint")

    app = Starlette(routes=[
        Route(INFO, info, methods=["GET"]),
        Route(BATCH, batch, methods=["GET"]),
        Route(ACK, ack, methods=["POST"]),
        Route(REFUSED, refused, methods=["POST"]),
    # starlette types each handler as taking any Exception; on_pull_error takes the PullError it is registered for
    ], exception_handlers={PullError: on_pull_error, 404: not_found, Exception: on_crash})  # type: ignore[dict-item]
    app.state.pull = svc
    return app


class PullDispatch:
    """ASGI: requests under PREFIX go to the pull app (it authenticates them itself), everything
    else to ``app`` (with its own guard) unchanged."""

    def __init__(self, app, pull_app) -> None:
        self.app = app
        self.pull_app = pull_app

    def close(self) -> None:
        """Close the pull side's own log connection (at the daemon's shutdown)."""
        self.pull_app.state.pull.close()

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path == PREFIX or path.startswith(PREFIX + "/"):
            await self.pull_app(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def with_pull(app, state_dir: str | os.PathLike, entry_log: EntryLog | str | os.PathLike, *,
              token: str | None = None, server_keys: Iterable[ed25519.Ed25519PublicKey] = ()) -> PullDispatch:
    """``app`` with the pull endpoints in front of it (the daemon's one line). ``token``: a
    configured shared secret accepted besides the server's key (None: the key only)."""
    return PullDispatch(app, create_pull_app(state_dir, entry_log, token=token, server_keys=server_keys))
