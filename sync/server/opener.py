"""The opener: the only process that holds the server's sealing private key (docs/console.md#opener).

It listens on a Unix socket, answering only peers whose uid it was told to trust (SO_PEERCRED,
checked by the kernel, not claimed by the peer), or, on a machine of its own, on TCP with mutual
TLS, answering only a console whose client certificate is one it was given (pinned by its SHA-256);
it opens only the entries named in a request that
carries a case number, a reason and the person asking, within a per-request cap and hourly budgets
per case and in all. Every opening and every refusal goes into the audit trail from here, so a
console that was taken over still cannot open holder details unrecorded; each record's hash is
also kept in this process's own anchor file, which the console's user cannot write.

With ``approver_roles`` set, each case is opened by two officers: the tracer's request and a second,
different account's approval (of one of those roles, within ``approval_s``) are records the opener
writes and anchors itself; it opens a case's entries only while it finds both in the audit trail,
each with its hash among its own anchors (a record the console wrote, or changed, is not one), and
the case's hours since the approval have not run out.

Protocol: one JSON object per line each way, one request per connection.
``{"op": "request", "actor", "case_id", "case", "reason", "card", "hours"}`` → ``{"ok": true,
"approval": needed?, "audit_seq"}``; ``{"op": "approve", "actor", "case_id"}`` → ``{"ok": true,
"approved_ms", "audit_seq"}``; ``{"op": "policy"}`` → ``{"ok": true, "approver_roles", "approval_s"}``;
``{"op": "open", "actor", "case_id", "case", "reason", "entries": [[entry_id, sealed_b64 | null], ...]}`` →
``{"ok": true, "holders": [{"status", "name", "birth_date", "id_masked"}, ...], "audit_seq"}``;
``{"op": "public_key"}`` → ``{"ok": true, "pem"}``; ``{"op": "anchors"}`` → ``{"ok": true,
"anchors": [[seq, hash_hex], ...]}``; a refusal → ``{"ok": false, "error": code, "message"}``.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import selectors
import socket
import socketserver
import ssl
import stat
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from scanner.base.errors import CheckpointError
from scanner.base.safetext import escape
from scanner.base.timeutil import now_ms
from sync.server.console import audit
from sync.server.console.case import (
    MAX_REQUEST_BYTES,
    OpenerError,
    check_case,
    check_case_id,
    check_hours,
)
from sync.server.console.store import ConsoleStore
from sync.server.keys import sealing_public_pem
from sync.server.limits import Limits, peer_key
from sync.server.trace import open_holder

log = logging.getLogger(__name__)

MAX_SEALED_BYTES = 4096
IO_TIMEOUT_S = 30.0
LIMITS = Limits(connections_per_peer=16, handshake_timeout_s=5.0)  # pending TLS handshakes per address; deadline
MAX_PENDING = 256  # pending TLS handshakes in all
MAX_SESSIONS = 16  # consoles' connections served at a time (a thread each)
ANCHORS_NAME = "opener-anchors.jsonl"
HOUR_S = 3600.0
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_CARD = re.compile(r"[0-9a-f]{2,128}", re.ASCII)
_HOURS = re.compile(r"\bhours=(\d+)\b", re.ASCII)


@dataclass(frozen=True, slots=True)
class Policy:
    """What the opener allows: who may ask (uids; empty: only its own uid), and how much."""

    allowed_uids: frozenset[int] = frozenset()
    max_per_request: int = 2_000  # entries named in one request (a trace with its contacts)
    per_case_per_hour: int = 10_000  # entries opened for one case number in any hour
    total_per_hour: int = 50_000  # entries opened in all in any hour
    approver_roles: frozenset[str] = frozenset()  # who approves another's case (empty: no approval needed)
    approval_s: int = 1800  # how long a case's request waits for its approval


class Budget:
    """Sliding one-hour counts per case and in all (in memory: the opener is one long process)."""

    def __init__(self, per_case: int, total: int, window_s: float = HOUR_S) -> None:
        self.per_case, self.total, self.window_s = per_case, total, window_s
        self._events: deque[tuple[float, str, int]] = deque()
        self._case: dict[str, int] = {}
        self._all = 0
        self._lock = threading.Lock()

    def take(self, case_number: str, n: int, now: float | None = None) -> str | None:
        """Spend ``n`` for ``case_number``: None if within both budgets, else the refusal's code."""
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._events and now - self._events[0][0] > self.window_s:
                _, case, k = self._events.popleft()
                self._all -= k
                self._case[case] -= k
                if not self._case[case]:
                    del self._case[case]
            if self._case.get(case_number, 0) + n > self.per_case:
                return "case_rate"
            if self._all + n > self.total:
                return "total_rate"
            self._events.append((now, case_number, n))
            self._case[case_number] = self._case.get(case_number, 0) + n
            self._all += n
            return None


@dataclass
class Opener:
    """The opener's state: the key, its policy and budget, the audit trail and the anchor file."""

    key: X25519PrivateKey
    store: ConsoleStore
    anchors_path: Path
    policy: Policy = field(default_factory=Policy)
    clock: Callable[[], int] = now_ms  # the time in ms (a test gives another)

    def __post_init__(self) -> None:
        self.budget = Budget(self.policy.per_case_per_hour, self.policy.total_per_hour)
        self.public_pem = sealing_public_pem(self.key)
        self._anchor_lock = threading.Lock()
        self._anchored = {(seq, bytes.fromhex(digest)) for seq, digest in self.anchors()}

    def peer_allowed(self, uid: int) -> bool:
        return uid in (self.policy.allowed_uids or {os.getuid()})

    def handle(self, doc: object, peer: tuple[int, int, int]) -> dict:
        if not isinstance(doc, dict):
            raise OpenerError("a request is a JSON object", code="bad_request")
        op = doc.get("op")
        if op == "public_key":
            return {"ok": True, "pem": self.public_pem}
        if op == "anchors":
            return {"ok": True, "anchors": self.anchors()}
        if op == "open":
            return self.open(doc, peer)
        if op == "request":
            return self.request(doc, peer)
        if op == "approve":
            return self.approve(doc, peer)
        if op == "policy":
            return {"ok": True, "approver_roles": sorted(self.policy.approver_roles),
                    "approval_s": self.policy.approval_s}
        raise OpenerError("op must be open, request, approve, policy, public_key or anchors", code="bad_request")

    @staticmethod
    def _actor(doc: dict) -> str:
        actor = doc.get("actor")
        if not isinstance(actor, str) or not 1 <= len(actor) <= 64:
            raise OpenerError("the person asking (actor) is required", code="actor_required")
        return actor

    def anchored(self, case_id: str, action: str) -> audit.Record | None:
        """The record of ``action`` on ``case_id`` that this opener wrote: its content hashes to a
        hash among this opener's anchors (None if there is none)."""
        for r in self.store.audit_of(case_id, action):
            if (r.seq, r.hash) in self._anchored and r.hash == audit.record_hash(r.prev_hash, r.seq, r.at_ms,
                                                                                    audit.event_of(r)):
                return r
        return None

    def request(self, doc: dict, peer: tuple[int, int, int]) -> dict:
        """A tracer asks to open a case: recorded (and anchored) here, to be approved by another."""
        actor = self._actor(doc)
        case_number, reason = check_case(doc.get("case"), doc.get("reason"))
        case_id = check_case_id(doc.get("case_id"))
        hours = check_hours(doc.get("hours"))
        card = doc.get("card")
        if not isinstance(card, str) or not _CARD.fullmatch(card):
            raise OpenerError("the card id (hex) is required", code="bad_request")
        if self.store.audit_of(case_id, audit.OPEN_REQUESTED):
            raise OpenerError("this case was requested before", code="case_exists")
        pid, uid, _ = peer
        record = self._write(audit.Event(actor, audit.OPEN_REQUESTED, case_number, reason, target=case_id,
                                         detail=f"card={card} hours={hours} uid={uid} pid={pid}"))
        return {"ok": True, "approval": bool(self.policy.approver_roles), "audit_seq": record.seq}

    def approve(self, doc: dict, peer: tuple[int, int, int]) -> dict:
        """A second officer approves a tracer's request: another account than the tracer's, of an
        approving role, within the policy's time; recorded (and anchored) here."""
        actor = self._actor(doc)
        case_id = check_case_id(doc.get("case_id"))
        pid, uid, _ = peer
        req = self.anchored(case_id, audit.OPEN_REQUESTED)
        if req is None:
            raise OpenerError("no such request", code="no_request")
        account = self.store.account(actor)
        code = None
        if not self.policy.approver_roles:
            code = "approval_not_needed"
        elif self.anchored(case_id, audit.OPEN_APPROVED) is not None:
            code = "already_approved"
        elif actor == req.actor:
            code = "same_officer"
        elif account is None or account.disabled or account.role not in self.policy.approver_roles:
            code = "approver_role"
        elif self.clock() - req.at_ms > self.policy.approval_s * 1000:
            code = "approval_expired"
        if code is not None:
            self._refused(actor, req.case_number or "", req.reason or "", code, 0, uid, pid, target=case_id)
            raise OpenerError(f"the approval is refused ({code})", code=code)
        record = self._write(audit.Event(actor, audit.OPEN_APPROVED, req.case_number, req.reason, target=case_id,
                                         detail=f"requested_by={req.actor} request_seq={req.seq} uid={uid} "
                                                f"pid={pid}"))
        log.info("case %s approved by %s", case_id, escape(actor))
        return {"ok": True, "approved_ms": record.at_ms, "audit_seq": record.seq}

    def _approval_problem(self, case_id: object, actor: str, case_number: str, reason: str) -> str | None:
        """Why this opening lacks a valid approval (a refusal code), or None."""
        if not isinstance(case_id, str):
            return "approval_required"
        req = self.anchored(check_case_id(case_id), audit.OPEN_REQUESTED)
        if req is None:
            return "approval_required"
        if (req.actor, req.case_number, req.reason) != (actor, case_number, reason):
            return "approval_mismatch"
        approval = self.anchored(case_id, audit.OPEN_APPROVED)
        if approval is None:
            return "approval_required"
        hours = _HOURS.search(req.detail)
        if hours is None or self.clock() > approval.at_ms + int(hours.group(1)) * 3_600_000:
            return "case_expired"
        return None

    def open(self, doc: dict, peer: tuple[int, int, int]) -> dict:
        actor = self._actor(doc)
        case_number, reason = check_case(doc.get("case"), doc.get("reason"))
        entries = doc.get("entries")
        if not isinstance(entries, list) or not entries:
            raise OpenerError("entries must be a non-empty list", code="bad_request")
        pid, uid, _ = peer
        if self.policy.approver_roles:
            problem = self._approval_problem(doc.get("case_id"), actor, case_number, reason)
            if problem is not None:
                self._refused(actor, case_number, reason, problem, len(entries), uid, pid,
                              target=doc.get("case_id") if isinstance(doc.get("case_id"), str) else None)
                raise OpenerError("no valid approval by a second officer for this case", code=problem)
        if len(entries) > self.policy.max_per_request:
            self._refused(actor, case_number, reason, "too_many", len(entries), uid, pid)
            raise OpenerError(f"at most {self.policy.max_per_request} entries per request", code="too_many")
        parsed = []
        for item in entries:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and len(item[0]) <= 64
                    and (item[1] is None or (isinstance(item[1], str) and len(item[1]) <= MAX_SEALED_BYTES * 2))):
                raise OpenerError("each entry is [entry_id, sealed_base64 or null]", code="bad_request")
            try:
                sealed = base64.b64decode(item[1], validate=True) if item[1] is not None else None
            except (binascii.Error, ValueError):
                raise OpenerError("sealed details must be base64", code="bad_request") from None
            parsed.append((item[0], sealed))
        sealed_count = sum(1 for _, s in parsed if s is not None)
        refusal = self.budget.take(case_number, sealed_count)
        if refusal is not None:
            self._refused(actor, case_number, reason, refusal, sealed_count, uid, pid)
            raise OpenerError("the hourly budget of openings is spent; ask again later or ask the administrator",
                              code=refusal)
        views = [open_holder(entry_id, sealed, self.key) for entry_id, sealed in parsed]
        opened = sum(1 for v in views if v.status == "ok")
        case_id = doc.get("case_id") if isinstance(doc.get("case_id"), str) else None
        record = self._write(audit.Event(actor, audit.HOLDERS_OPENED, case_number, reason, target=case_id,
                                         detail=f"entries={len(parsed)} opened={opened} uid={uid} pid={pid}",
                                         holders=opened))
        log.info("opened %d of %d entries for case %s (%s)", opened, len(parsed), escape(case_number), escape(actor))
        return {"ok": True, "audit_seq": record.seq,
                "holders": [{"status": v.status, "name": v.name, "birth_date": v.birth_date,
                             "id_masked": v.id_masked} for v in views]}

    def _write(self, event: audit.Event) -> audit.Record:
        """Append ``event`` to the audit trail and anchor it."""
        record = self.store.append(event, self.clock())
        self._anchor(record)
        return record

    def _refused(self, actor: str, case_number: str, reason: str, code: str, n: int, uid: int, pid: int,
                 target: str | None = None) -> None:
        self._write(audit.Event(actor, audit.OPEN_REFUSED, case_number, reason, target=target[:64] if target else None,
                                detail=f"{code} entries={n} uid={uid} pid={pid}"))
        log.warning("refused to open %d entries for case %s (%s): %s", n, escape(case_number), escape(actor), code)

    def _anchor(self, record: audit.Record) -> None:
        line = json.dumps([record.seq, record.hash.hex()]) + "\n"
        with self._anchor_lock:
            fd = os.open(self.anchors_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
            try:
                os.write(fd, line.encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            self._anchored.add((record.seq, record.hash))

    def anchors(self) -> list[list]:
        try:
            fd = os.open(self.anchors_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return []
        with os.fdopen(fd, "r", encoding="ascii") as fh:
            out = []
            for line in fh:
                try:
                    seq, digest = json.loads(line)
                except (ValueError, TypeError):
                    continue  # a line cut by a crash
                out.append([seq, digest])
        return out


class _Handler(socketserver.StreamRequestHandler):
    timeout = IO_TIMEOUT_S

    def peer(self) -> tuple[int, int, int] | None:
        """(pid, uid, gid) of an allowed peer on the Unix socket, else None."""
        opener: Opener = self.server.opener  # type: ignore[attr-defined]
        conn: socket.socket = self.request
        pid, uid, gid = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        if not opener.peer_allowed(uid):
            log.warning("refused a connection from uid %d (pid %d): not an allowed peer", uid, pid)
            return None
        return pid, uid, gid

    def handle(self) -> None:
        opener: Opener = self.server.opener  # type: ignore[attr-defined]
        peer = self.peer()
        if peer is None:
            self._answer({"ok": False, "error": "peer_refused", "message": "this process may not use the opener"})
            return
        pid, uid, gid = peer
        try:
            line = self.rfile.readline(MAX_REQUEST_BYTES + 1)
        except OSError:
            return
        if len(line) > MAX_REQUEST_BYTES or not line.endswith(b"\n"):
            self._answer({"ok": False, "error": "bad_request", "message": "one JSON line of at most 16 MiB"})
            return
        try:
            doc = json.loads(line)
            answer = opener.handle(doc, (pid, uid, gid))
        except ValueError:
            answer = {"ok": False, "error": "bad_request", "message": "not JSON"}
        except CheckpointError as exc:
            answer = {"ok": False, "error": exc.code, "message": str(exc)}
        self._answer(answer)

    def _answer(self, doc: dict) -> None:
        try:
            self.wfile.write(json.dumps(doc, ensure_ascii=False).encode("utf-8") + b"\n")
        except OSError:
            log.info("opener client went away before its answer")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 16


class _TLSHandler(_Handler):
    """A console over TCP, its handshake done and its pinned client certificate checked (_TLSServer)."""

    def peer(self) -> tuple[int, int, int] | None:
        """(0, -1, -1): no pid or uid over TCP."""
        return 0, -1, -1


@dataclass(slots=True)
class _Pending:
    """A TLS connection whose handshake has not finished."""

    conn: ssl.SSLSocket
    address: tuple
    peer: str
    deadline: float


class _TLSServer:
    """The opener on TCP with mutual TLS. One thread accepts connections and does their handshakes
    without blocking: a host that connects and never finishes one holds a socket, no thread, for at
    most the handshake deadline, and beyond LIMITS.connections_per_peer pending ones from one
    address, or MAX_PENDING in all, the oldest is closed (so a flood does not lock a console out,
    even from the same address). Only a console whose pinned certificate the handshake showed gets
    a thread of its own, at most MAX_SESSIONS at a time (beyond: answered busy)."""

    def __init__(self, address: tuple[str, int], tls: ssl.SSLContext, pins: list[bytes], opener: Opener,
                 limits: Limits = LIMITS) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.socket = socket.create_server(address, family=family, backlog=64)
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self.tls, self.pins, self.opener, self.limits = tls, pins, opener, limits
        self._pending: dict[int, _Pending] = {}  # by file descriptor, oldest first
        self._sessions = threading.BoundedSemaphore(MAX_SESSIONS)
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._dropped = 0
        self._dropped_logged = 0.0

    def serve_forever(self) -> None:
        """Accept and handshake until shutdown()."""
        self._stopped.clear()
        sel = selectors.DefaultSelector()
        sel.register(self.socket, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                first = next(iter(self._pending.values()), None)
                timeout = 1.0 if first is None else max(0.0, first.deadline - time.monotonic())
                for key, _ in sel.select(timeout):
                    if key.fileobj is self.socket:
                        self._accept(sel)
                    elif key.fileobj is self._wake_r:
                        self._wake_r.recv(64)
                    else:
                        self._handshake(sel, key.fd)
                now = time.monotonic()
                for fd in [fd for fd, p in self._pending.items() if p.deadline <= now]:
                    self._drop(sel, fd)
                self._log_dropped()
        finally:
            for fd in list(self._pending):
                self._drop(sel, fd)
            sel.close()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serve_forever (from another thread) and wait for it to return."""
        self._stop.set()
        self._wake_w.send(b"x")
        self._stopped.wait()

    def server_close(self) -> None:
        for sock in (self.socket, self._wake_r, self._wake_w):
            sock.close()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        while True:
            try:
                raw, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors: the pending ones' deadlines free some
                log.warning("opener: cannot accept a TLS connection: %s", exc)
                return
            raw.setblocking(False)
            try:
                conn = self.tls.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            except (ssl.SSLError, OSError):
                raw.close()
                continue
            peer = peer_key(address[0])
            mine = [fd for fd, p in self._pending.items() if p.peer == peer]
            if len(mine) >= self.limits.connections_per_peer:
                self._drop(sel, mine[0])
            if len(self._pending) >= MAX_PENDING:
                self._drop(sel, next(iter(self._pending)))
            fd = conn.fileno()
            self._pending[fd] = _Pending(conn, address, peer, time.monotonic() + self.limits.handshake_timeout_s)
            sel.register(fd, selectors.EVENT_READ)

    def _drop(self, sel: selectors.BaseSelector, fd: int) -> None:
        """Close a connection whose handshake is late, or the oldest pending one beyond a cap."""
        pending = self._pending.pop(fd)
        sel.unregister(fd)
        pending.conn.close()
        self._dropped += 1

    def _log_dropped(self) -> None:
        """A flood would fill the journal: the closed pending connections are counted, logged once a minute."""
        now = time.monotonic()
        if self._dropped and now - self._dropped_logged >= 60.0:
            log.warning("opener: closed %d TLS connections that did not finish their handshake in time or were "
                        "beyond the caps", self._dropped)
            self._dropped, self._dropped_logged = 0, now

    def _handshake(self, sel: selectors.BaseSelector, fd: int) -> None:
        pending = self._pending[fd]
        try:
            pending.conn.do_handshake()
        except ssl.SSLWantReadError:
            sel.modify(fd, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            sel.modify(fd, selectors.EVENT_WRITE)
            return
        except (ssl.SSLError, OSError) as exc:
            log.warning("refused a TLS connection from %s: %s", pending.address[0], type(exc).__name__)
            self._pending.pop(fd)
            sel.unregister(fd)
            pending.conn.close()
            return
        del self._pending[fd]
        sel.unregister(fd)
        conn = pending.conn
        der = conn.getpeercert(binary_form=True)
        digest = hashlib.sha256(der).digest() if der else b""
        if not any(hmac.compare_digest(digest, pin) for pin in self.pins):
            log.warning("refused a TLS connection from %s: client certificate not pinned", pending.address[0])
            conn.close()
            return
        conn.setblocking(True)
        if not self._sessions.acquire(blocking=False):
            log.warning("opener: busy, refused a console's connection from %s (%d at a time)", pending.address[0],
                        MAX_SESSIONS)
            conn.settimeout(1.0)
            try:
                conn.sendall(json.dumps({"ok": False, "error": "busy",
                                         "message": "the opener is busy; ask again"}).encode("ascii") + b"\n")
            except OSError:
                pass  # the console went away: nothing to tell it
            conn.close()
            return
        conn.settimeout(IO_TIMEOUT_S)
        threading.Thread(target=self._session, args=(conn, pending.address), name="opener-tls", daemon=True).start()

    def _session(self, conn: ssl.SSLSocket, address: tuple) -> None:
        try:
            _TLSHandler(conn, address, self)  # type: ignore[arg-type]
        except OSError as exc:
            log.info("opener: a console's connection from %s ended: %s", address[0], exc)
        finally:
            conn.close()
            self._sessions.release()


def cert_pin(pem: bytes) -> bytes:
    """The SHA-256 of a PEM certificate's DER form: what a peer's certificate is pinned by."""
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.decode("ascii"))).digest()


def bind_tls(host: str, port: int, opener: Opener, *, cert: str, key: str, client_certs: list[str]) -> _TLSServer:
    """The opener on TCP ``host``:``port`` with mutual TLS (1.3): it shows ``cert`` (its key ``key``)
    and answers only a client showing one of ``client_certs`` (PEM files, each trusted and pinned)."""
    if not client_certs:
        raise OpenerError("give the console's client certificate (pinned)", code="opener_tls")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.minimum_version = ssl.TLSVersion.TLSv1_3
    tls.verify_mode = ssl.CERT_REQUIRED
    pins = []
    try:
        tls.load_cert_chain(cert, key)
        for path in client_certs:
            tls.load_verify_locations(cafile=path)
            pins.append(cert_pin(Path(path).read_bytes()))
    except (OSError, ssl.SSLError, ValueError, UnicodeDecodeError) as exc:
        raise OpenerError(f"the opener's TLS files cannot be used: {exc}", code="opener_tls") from None
    return _TLSServer((host, port), tls, pins, opener)


def bind(socket_path: str | os.PathLike, opener: Opener, *, group: int | None = None) -> _Server:
    """The opener's socket at ``socket_path`` (mode 0660, owner's group or ``group``): a stale
    socket there is replaced, anything else (a file, a symlink) is refused."""
    path = Path(socket_path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise OpenerError(f"{path} exists and is not a socket", code="opener_socket")
        path.unlink()
    old = os.umask(0o117)
    try:
        server = _Server(str(path), _Handler)
    finally:
        os.umask(old)
    if group is not None:
        os.chown(path, -1, group)
    server.opener = opener  # type: ignore[attr-defined]
    return server
