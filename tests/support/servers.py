"""The real sync server for the tests: the app on uvicorn in a thread or `checkpoint server run` in a
process, on SQLite or the session's PostgreSQL, vouched for by the operator's root; an ASGI fault
injector in front of it; and enrollment and ingestion straight into its storage."""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import requests
from cryptography.hazmat.primitives.asymmetric import ed25519

from bench.procs import free_port  # the benchmarks' own: one definition for both
from scanner.base.timeutil import now_ms
from scanner.cards import keys
from support import postgres
from support.pki import OPERATOR_ROOT
from support.waiting import WAIT, wait_for
from sync.server import credentials
from sync.server.app import ServerConfig, create_app, make_server
from sync.server.keys import (
    load_or_create_pull_key,
    load_or_create_sealing_key,
    public_pem,
    sealing_public_pem,
)
from sync.server.storage import open_storage
from sync.server.tokens import issue_tokens, token_hash
from sync.wire import batch as batchmod
from sync.wire import credential as credwire
from sync.wire import identity

BACKENDS = ("sqlite", "postgresql")


def db_url_for(backend: str, db: Path) -> str:
    """A database URL for the server whose keys live beside ``db``: the SQLite file ``db`` itself,
    or a fresh schema on the session's private PostgreSQL server (support.postgres; skipped
    with a clear message where PostgreSQL cannot run)."""
    if backend == "sqlite":
        return str(db)
    return postgres.cluster().new_schema()


def vouch(storage, keys_dir: Path, url: str, root: ed25519.Ed25519PrivateKey, **kw) -> bytes:
    """What the operator does for a server: the root signs its URL and keys (as `checkpoint issuer
    server-credential`), the server publishes it (`server credential publish`). Also writes the
    root's public half to KEYS/root.pub (the file a device is provisioned with)."""
    sealing_key = load_or_create_sealing_key(keys_dir).public_key()
    pull_key = load_or_create_pull_key(keys_dir).public_key()
    (Path(keys_dir) / "root.pub").write_bytes(keys.public_pem(root.public_key()))
    previous = None
    with contextlib.suppress(credwire.CredentialError):
        published = credentials.current(storage)
        previous = credwire.open_credential(published, [root.public_key()]) if published else None
    if previous is not None and previous.names(url) and not kw:  # the same server again on its database
        return previous.data
    kw.setdefault("serial", previous.serial + 1 if previous is not None else 1)
    data = credwire.issue(root, urls=[url], sealing_key=sealing_key, pull_key=pull_key,
                          issued_at=int(time.time()), **kw)
    credentials.publish(storage, data, sealing_public=sealing_key, pull_public=pull_key, root=root.public_key())
    return data


class Faults:
    """ASGI wrapper that answers the next planned requests to a path itself (500, 503 + Retry-After,
    or a slow answer after the real one), then passes everything through."""

    def __init__(self, app) -> None:
        self.app = app
        self.plan: deque = deque()
        self.hits = 0

    def fail(self, path: str, status: int, times: int = 1, headers: dict | None = None,
             code: str = "injected") -> None:
        for _ in range(times):
            self.plan.append(("fail", path, status, headers or {}, code))

    def delay_after(self, path: str, seconds: float) -> None:
        """Let the real app answer (and commit), then hold the answer ``seconds``."""
        self.plan.append(("delay", path, seconds, {}, None))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and self.plan and scope["path"] == self.plan[0][1]:
            kind, _, arg, headers, code = self.plan.popleft()
            self.hits += 1
            if kind == "fail":
                while True:  # read the request body first, as a real server would
                    msg = await receive()
                    if not msg.get("more_body"):
                        break
                hdrs = [(b"content-type", b"application/json")] + [
                    (k.lower().encode(), v.encode()) for k, v in headers.items()]
                body = b'{"error":"%s","message":"injected fault"}' % code.encode()
                await send({"type": "http.response.start", "status": arg, "headers": hdrs})
                await send({"type": "http.response.body", "body": body})
                return
            held = []

            async def hold(message) -> None:
                held.append(message)

            await self.app(scope, receive, hold)
            await asyncio.sleep(arg)
            for m in held:
                await send(m)
            return
        await self.app(scope, receive, send)


class ServerThread:
    """The real server app on uvicorn in a thread, on a free port of 127.0.0.1."""

    def __init__(self, db: Path, *, config: dict | None = None, port: int | None = None,
                 tls: tuple[str, str] | None = None, url: str | None = None,
                 root: ed25519.Ed25519PrivateKey | None = OPERATOR_ROOT) -> None:
        """``db``: the SQLite file (its directory holds the server's keys); ``url``: another
        database (PostgreSQL) to use instead, keys still beside ``db``; ``root``: the operator's
        root that vouches for this server (None: no credential, a server no device accepts)."""
        self.db = Path(db)
        self.db_url = url or str(self.db)
        self.keys_dir = self.db.parent
        self.storage = open_storage(self.db_url)
        key = load_or_create_sealing_key(self.keys_dir)
        self.sealing_key = key
        self.pull_key = load_or_create_pull_key(self.keys_dir)
        self.app = create_app(self.storage, ServerConfig(sealing_public_pem(key), **(config or {}),
                                                         pull_public_pem=public_pem(self.pull_key)))
        self.faults = Faults(self.app)
        self.port = port or free_port()
        self.tls = tls
        self.server = make_server(self.faults, "127.0.0.1", self.port,
                                  tls_cert=tls[0] if tls else None, tls_key=tls[1] if tls else None,
                                  limits=(config or {}).get("limits"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.root = root
        if root is not None:
            vouch(self.storage, self.keys_dir, self.url, root)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def root_pub(self) -> Path:
        """The operator root's public key file devices are provisioned with."""
        return self.keys_dir / "root.pub"

    def start(self) -> ServerThread:
        self.thread.start()
        wait_for(lambda: self.server.started, "server start")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(WAIT)
        self.storage.close()

    def token(self, checkpoint: str = "market-east") -> str:
        return issue_tokens(self.storage, checkpoint, 1, now_ms=now_ms())[0]


@contextlib.contextmanager
def running_server(backend: str, tmp_path: Path) -> Iterator[ServerThread]:
    """The real server on uvicorn for one test, on ``backend`` (one of BACKENDS), its keys and
    SQLite file in tmp_path/server (what the tests' ``server`` fixtures yield)."""
    (tmp_path / "server").mkdir()
    db = tmp_path / "server" / "central.db"
    srv = ServerThread(db, url=db_url_for(backend, db)).start()
    yield srv
    srv.stop()


class ServerProcess:
    """`checkpoint server run` as a subprocess (to kill -9 and restart on the same database)."""

    def __init__(self, db: Path, port: int | None = None, url: str | None = None,
                 root: ed25519.Ed25519PrivateKey | None = OPERATOR_ROOT, args: tuple[str, ...] = ()) -> None:
        self.db = Path(db)
        self.args = args  # more options of `server run`
        self.db_url = url or str(self.db)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.root = root
        if root is not None:  # the keys made now are the ones `server run` loads
            storage = open_storage(self.db_url)
            try:
                vouch(storage, self.db.parent, self.url, root)
            finally:
                storage.close()

    @property
    def root_pub(self) -> Path:
        return self.db.parent / "root.pub"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scanner", "server", "run", "--db", self.db_url, "--keys", str(self.db.parent),
             "--listen", f"127.0.0.1:{self.port}", *self.args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)  # its own process group: kill() takes its workers too

        def up():
            assert self.proc.poll() is None, "server process exited"
            try:
                return requests.get(self.url + "/v1/health", timeout=5).ok
            except requests.RequestException:
                return False
        wait_for(up, "server process up", interval=0.05)
        return self

    def kill(self) -> None:
        """SIGKILL to the server and its worker processes at once, as systemd kills a unit's control
        group: no orphaned worker keeps the port, so a restart binds it (and is the one answering)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(WAIT)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.kill()


def enroll_direct(storage, checkpoint_id: str):
    """A new device key enrolled straight into ``storage`` (no HTTP): (key, device_id)."""
    key = ed25519.Ed25519PrivateKey.generate()
    token = issue_tokens(storage, checkpoint_id, 1, now_ms=now_ms())[0]
    device = storage.enroll(token_hash(token), identity.device_id(key), identity.public_raw(key), now_ms())
    return key, device.device_id


def ingest_entries(storage, key, device_id: str, entries, *, source: str = "push", at_ms: int | None = None):
    """Sign ``entries`` as one batch and store it the way the server does (parse, then ingest)."""
    sb = batchmod.build(entries, key, device_id=device_id, created_ms=now_ms())
    parsed = batchmod.open_batch(sb.data, key.public_key())
    return storage.ingest(parsed, source, now_ms() if at_ms is None else at_ms)
