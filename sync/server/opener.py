"""The opener: the only process that holds the server's sealing private key (docs/console.md#opener).

It listens on a Unix socket only, answers only peers whose uid it was told to trust (SO_PEERCRED,
checked by the kernel, not claimed by the peer), and opens only the entries named in a request that
carries a case number, a reason and the person asking, within a per-request cap and hourly budgets
per case and in all. Every opening and every refusal goes into the audit trail from here, so a
console that was taken over still cannot open holder details unrecorded; each record's hash is
also kept in this process's own anchor file, which the console's user cannot write.

Protocol: one JSON object per line each way, one request per connection.
``{"op": "open", "actor", "case", "reason", "entries": [[entry_id, sealed_b64 | null], ...]}`` →
``{"ok": true, "holders": [{"status", "name", "birth_date", "id_masked"}, ...], "audit_seq"}``;
``{"op": "public_key"}`` → ``{"ok": true, "pem"}``; ``{"op": "anchors"}`` → ``{"ok": true,
"anchors": [[seq, hash_hex], ...]}``; a refusal → ``{"ok": false, "error": code, "message"}``.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import socket
import socketserver
import stat
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from scanner.base.errors import CheckpointError
from scanner.base.safetext import escape
from scanner.base.timeutil import now_ms
from sync.server.console import audit
from sync.server.console.case import MAX_REQUEST_BYTES, OpenerError, check_case
from sync.server.console.store import ConsoleStore
from sync.server.keys import sealing_public_pem
from sync.server.trace import open_holder

log = logging.getLogger(__name__)

MAX_SEALED_BYTES = 4096
IO_TIMEOUT_S = 30.0
ANCHORS_NAME = "opener-anchors.jsonl"
HOUR_S = 3600.0
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True, slots=True)
class Policy:
    """What the opener allows: who may ask (uids; empty: only its own uid), and how much."""

    allowed_uids: frozenset[int] = frozenset()
    max_per_request: int = 2_000  # entries named in one request (a trace with its contacts)
    per_case_per_hour: int = 10_000  # entries opened for one case number in any hour
    total_per_hour: int = 50_000  # entries opened in all in any hour


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

    def __post_init__(self) -> None:
        self.budget = Budget(self.policy.per_case_per_hour, self.policy.total_per_hour)
        self.public_pem = sealing_public_pem(self.key)
        self._anchor_lock = threading.Lock()

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
        raise OpenerError("op must be open, public_key or anchors", code="bad_request")

    def open(self, doc: dict, peer: tuple[int, int, int]) -> dict:
        actor = doc.get("actor")
        if not isinstance(actor, str) or not 1 <= len(actor) <= 64:
            raise OpenerError("the person asking (actor) is required", code="actor_required")
        case_number, reason = check_case(doc.get("case"), doc.get("reason"))
        entries = doc.get("entries")
        if not isinstance(entries, list) or not entries:
            raise OpenerError("entries must be a non-empty list", code="bad_request")
        pid, uid, _ = peer
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
        record = self.store.append(audit.Event(actor, audit.HOLDERS_OPENED, case_number, reason,
                                               detail=f"entries={len(parsed)} opened={opened} uid={uid} pid={pid}",
                                               holders=opened), now_ms())
        self._anchor(record)
        log.info("opened %d of %d entries for case %s (%s)", opened, len(parsed), escape(case_number), escape(actor))
        return {"ok": True, "audit_seq": record.seq,
                "holders": [{"status": v.status, "name": v.name, "birth_date": v.birth_date,
                             "id_masked": v.id_masked} for v in views]}

    def _refused(self, actor: str, case_number: str, reason: str, code: str, n: int, uid: int, pid: int) -> None:
        record = self.store.append(audit.Event(actor, audit.OPEN_REFUSED, case_number, reason,
                                               detail=f"{code} entries={n} uid={uid} pid={pid}"), now_ms())
        self._anchor(record)
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

    def handle(self) -> None:
        opener: Opener = self.server.opener  # type: ignore[attr-defined]
        conn: socket.socket = self.request
        pid, uid, gid = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        if not opener.peer_allowed(uid):
            log.warning("refused a connection from uid %d (pid %d): not an allowed peer", uid, pid)
            self._answer({"ok": False, "error": "peer_refused", "message": "this process may not use the opener"})
            return
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
