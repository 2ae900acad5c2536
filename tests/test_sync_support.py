"""Shared pieces of the sync tests (no tests here): a real uvicorn server in a thread or a
subprocess, a fault-injecting TCP proxy, an ASGI fault injector, provisioned devices with real
entry logs, and a fast generator of valid log entries for large backlogs."""
from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import requests
from cryptography.hazmat.primitives.asymmetric import ed25519

from hardware.scan import Scan
from scanner.base.timeutil import now_ms
from scanner.cards import keys
from scanner.store.entry import Entry, chain_hash, hash_fields
from scanner.store.entrylog import EntryLog
from scanner.store.schema import INSERT_SQL, entry_row
from sync import credential
from sync.server import credentials
from sync.server.app import ServerConfig, create_app, make_server
from sync.server.keys import (
    load_or_create_pull_key,
    load_or_create_sealing_key,
    public_pem,
    sealing_public_pem,
)
from sync.server.storage import open_storage
from sync.server.tokens import issue_tokens

WAIT_S = 60.0  # generous: the machine is shared and slow at times

# The operator's trust root of the test session (conftest's ``root_key``): it signs the bundles and
# vouches for the test servers (their credentials); devices are provisioned with its public half.
OPERATOR_ROOT = ed25519.Ed25519PrivateKey.generate()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, what: str, timeout: float = WAIT_S, interval: float = 0.01):
    """Poll ``cond`` until it returns something truthy (a condition, never a fixed sleep)."""
    end = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


BACKENDS = ("sqlite", "postgresql")


def db_url_for(backend: str, db: Path) -> str:
    """A database URL for the server whose keys live beside ``db``: the SQLite file ``db`` itself,
    or a fresh schema on the session's private PostgreSQL server (tests/pg_support.py; skipped
    with a clear message where PostgreSQL cannot run)."""
    if backend == "sqlite":
        return str(db)
    import pg_support
    return pg_support.cluster().new_schema()


# ---------------------------------------------------------------- servers


def vouch(storage, keys_dir: Path, url: str, root: ed25519.Ed25519PrivateKey, **kw) -> bytes:
    """What the operator does for a server: the root signs its URL and keys (as `checkpoint issuer
    server-credential`), the server publishes it (`server credential publish`). Also writes the
    root's public half to KEYS/root.pub (the file a device is provisioned with)."""
    sealing_key = load_or_create_sealing_key(keys_dir).public_key()
    pull_key = load_or_create_pull_key(keys_dir).public_key()
    (Path(keys_dir) / "root.pub").write_bytes(keys.public_pem(root.public_key()))
    previous = None
    with contextlib.suppress(credential.CredentialError):
        published = credentials.current(storage)
        previous = credential.open_credential(published, [root.public_key()]) if published else None
    if previous is not None and previous.names(url) and not kw:  # the same server again on its database
        return previous.data
    kw.setdefault("serial", previous.serial + 1 if previous is not None else 1)
    data = credential.issue(root, urls=[url], sealing_key=sealing_key, pull_key=pull_key,
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
        self.thread.join(WAIT_S)
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
                 root: ed25519.Ed25519PrivateKey | None = OPERATOR_ROOT) -> None:
        self.db = Path(db)
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
             "--listen", f"127.0.0.1:{self.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up():
            assert self.proc.poll() is None, "server process exited"
            try:
                return requests.get(self.url + "/v1/health", timeout=5).ok
            except requests.RequestException:
                return False
        wait_for(up, "server process up", interval=0.05)
        return self

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(WAIT_S)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                self.kill()


# ---------------------------------------------------------------- fault proxy


class FaultProxy:
    """A TCP proxy on 127.0.0.1 between device and server. Armed faults apply to the next request
    data seen on any connection:

    * ``cut``: forward only the first N bytes of the request, then reset both sides;
    * ``drop_response``: forward the request, let the server answer (it has committed), then
      reset the device's connection instead of passing the answer on;
    * ``blackhole``: swallow the request and never answer (the device's read timeout fires).
    """

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.faults: deque = deque()
        self.done: list[str] = []
        self.lock = threading.Lock()
        self.closed = False
        self.fired = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def arm(self, kind: str, arg: int = 0) -> None:
        with self.lock:
            self.faults.append((kind, arg))

    def _claim(self):
        with self.lock:
            return self.faults.popleft() if self.faults else None

    def close(self) -> None:
        self.closed = True
        self.sock.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    @staticmethod
    def _reset(s: socket.socket) -> None:
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=WAIT_S)
        except OSError:
            self._reset(client)
            return
        fault, sent = None, 0
        try:
            while True:
                ready, _, _ = select.select([client, upstream], [], [], WAIT_S)
                if not ready:
                    continue
                if client in ready:
                    data = client.recv(65536)
                    if not data:
                        return
                    if fault is None:
                        fault = self._claim() or ("pass", 0)
                    kind, arg = fault
                    if kind == "cut":
                        part = data[:max(0, arg - sent)]
                        if part:
                            upstream.sendall(part)
                            sent += len(part)
                        if sent >= arg:
                            self._finish("cut")
                            self._reset(client)
                            self._reset(upstream)
                            return
                        continue
                    if kind == "blackhole":
                        self._finish("blackhole")
                        fault = ("swallow", 0)
                        continue
                    if kind == "swallow":
                        continue
                    upstream.sendall(data)
                if upstream in ready:
                    data = upstream.recv(65536)
                    if not data:
                        return
                    if fault is not None and fault[0] == "drop_response":
                        self._finish("drop_response")
                        self._reset(client)
                        self._reset(upstream)
                        return
                    client.sendall(data)
                    if fault is not None and fault[0] == "cut":  # a request too short to cut: re-arm
                        with self.lock:
                            self.faults.appendleft(fault)
                    fault, sent = None, 0  # the next request on this connection claims afresh
        except OSError:
            return
        finally:
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.close()

    def _finish(self, kind: str) -> None:
        self.done.append(kind)
        self.fired.set()


# ---------------------------------------------------------------- devices


@dataclass
class Device:
    state: Path
    log: EntryLog
    device_id: str
    checkpoint_id: str


def provision_device(server, tmp: Path, name: str = "dev", **kw) -> Device:
    from sync.provision import provision

    state = tmp / name
    kw.setdefault("trust_root", server.root_pub)
    res = provision(server.url, server.token(), state, **kw)
    log = EntryLog(state / "entries.db", device_id=res.device_id, checkpoint_id=res.checkpoint_id,
                   sealing_key=credential.load(state).sealing_key, synchronous="NORMAL", passback_window_s=0)
    return Device(state, log, res.device_id, res.checkpoint_id)


def record(device: Device, verdicts, n: int, *, source_id: str = "cam0") -> list:
    """Record ``n`` real entries through EntryLog.record (verdicts cycled)."""
    out = []
    t = time.time()
    for i in range(n):
        v = verdicts[i % len(verdicts)]
        out.append(device.log.record(Scan("CK1:x", "camera", source_id, t + i / 1000, "in"), v).entry)
    return out


def bulk_fill(log: EntryLog, n: int, *, sealed: bytes | None = None, start_ms: int | None = None) -> None:
    """Append ``n`` valid, chained entries (as EntryLog would write them) in one transaction, for
    backlogs too large to record one by one in a test. Cards vary; holder details as given."""
    import sqlite3

    last = log.tail(1)
    seq, prev = (last[0].seq, last[0].hash) if last else (0, bytes(32))
    at = start_ms or now_ms() - n * 1000
    rows = []
    for i in range(n):
        e = Entry(seq=seq + 1, entry_id=str(uuid.uuid4()), device_id=log.device_id,
                  checkpoint_id=log.checkpoint_id, direction="in", at_ms=at + i * 1000, clock="synced",
                  source="camera", source_id="cam0", decision="accept", reason="ok", format="CK1",
                  card_id=os.urandom(16).hex(), issuer="VN-HUE", kid="AAECAwQFBgc=", prev_hash=prev,
                  sealed=sealed)
        e = replace(e, hash=chain_hash(prev, hash_fields(e)))
        rows.append(entry_row(e))
        seq, prev = e.seq, e.hash
    conn = sqlite3.connect(str(log.path), isolation_level=None, timeout=WAIT_S)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(INSERT_SQL, rows)
        conn.execute("COMMIT")
    finally:
        conn.close()


def assert_exactly_once(storage, device: Device) -> None:
    """The server holds every entry of the device's log exactly once, with the device's hashes, and
    the device has every entry marked synced."""
    held = storage.entry_hashes(device.device_id)
    local = {e.seq: e.hash for e in device.log.entries()}
    assert held == local
    assert device.log.pending(0, 1) == []
    stats = storage.stats()
    assert stats.conflicts == 0 and stats.chain_problems == 0


# ---------------------------------------------------------------- central side (issue 7)


def chain_entries(device_id: str, checkpoint_id: str, times_ms, cards, *, first_seq: int = 1,
                  prev_hash: bytes = bytes(32), holders=None, seal_to=None, decision: str = "accept") -> list:
    """Valid chained entries of one device (as EntryLog would make them) at the given times with
    the given card ids; ``holders`` (Holder or None per entry) sealed to ``seal_to`` (an X25519
    public key) when given."""
    from scanner.store import sealing

    out, prev, seq = [], prev_hash, first_seq
    for i, (at, card) in enumerate(zip(times_ms, cards, strict=True)):
        entry_id = str(uuid.uuid4())
        holder = holders[i] if holders is not None else None
        sealed = sealing.seal(holder, seal_to, entry_id) if holder is not None and seal_to is not None else None
        e = Entry(seq=seq, entry_id=entry_id, device_id=device_id, checkpoint_id=checkpoint_id, direction="in",
                  at_ms=at, clock="synced", source="camera", source_id="cam0", decision=decision,
                  reason="ok" if decision == "accept" else "expired", format="CK1", card_id=card, issuer="VN-HUE",
                  kid="AAECAwQFBgc=", prev_hash=prev, sealed=sealed)
        e = replace(e, hash=chain_hash(prev, hash_fields(e)))
        out.append(e)
        prev, seq = e.hash, seq + 1
    return out


def enroll_direct(storage, checkpoint_id: str):
    """A new device key enrolled straight into ``storage`` (no HTTP): (key, device_id)."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from sync.server.tokens import token_hash
    from sync.wire import identity

    key = ed25519.Ed25519PrivateKey.generate()
    token = issue_tokens(storage, checkpoint_id, 1, now_ms=now_ms())[0]
    device = storage.enroll(token_hash(token), identity.device_id(key), identity.public_raw(key), now_ms())
    return key, device.device_id


def ingest_entries(storage, key, device_id: str, entries, *, source: str = "push", at_ms: int | None = None):
    """Sign ``entries`` as one batch and store it the way the server does (parse, then ingest)."""
    from sync.wire import batch as batchmod

    sb = batchmod.build(entries, key, device_id=device_id, created_ms=now_ms())
    parsed = batchmod.open_batch(sb.data, key.public_key())
    return storage.ingest(parsed, source, now_ms() if at_ms is None else at_ms)
