"""The console's side of the opener's socket (sync/server/opener.py): the console sends the entries
of a trace with the case, the reason and the person asking, and gets their holder details back. It
never sees the sealing key."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scanner.base.errors import CheckpointError
from sync.server.console.case import MAX_REQUEST_BYTES
from sync.server.model import SeenEntry
from sync.server.trace import HolderView

TIMEOUT_S = 60.0


class OpenerUnavailable(CheckpointError):
    """The opener could not be reached, or refused (``code``: its reason, e.g. case_rate)."""

    code = "opener_unavailable"


@dataclass(frozen=True, slots=True)
class ApprovalPolicy:
    """Whose approval a case needs (roles; empty: none) and how long a request waits for it."""

    approver_roles: tuple[str, ...]
    approval_s: int


@dataclass(frozen=True, slots=True)
class OpenerTLS:
    """The opener on another machine: TCP to ``host``:``port`` with mutual TLS; the console shows
    ``cert`` (its key ``key``, pinned by the opener) and accepts only ``opener_cert`` (pinned here)."""

    host: str
    port: int
    cert: str
    key: str
    opener_cert: str

    def connect(self) -> socket.socket:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tls.minimum_version = ssl.TLSVersion.TLSv1_3
        tls.check_hostname = False  # the opener's certificate is pinned below, whatever names it holds
        try:
            pem = Path(self.opener_cert).read_bytes()
            tls.load_verify_locations(cafile=self.opener_cert)
            tls.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise OpenerUnavailable(f"the console's TLS files for the opener cannot be used: {exc}") from None
        raw = socket.create_connection((self.host, self.port), timeout=TIMEOUT_S)
        try:
            conn = tls.wrap_socket(raw)
        except BaseException:
            raw.close()
            raise
        der = conn.getpeercert(binary_form=True) or b""
        if not hmac.compare_digest(hashlib.sha256(der).digest(),
                                   hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.decode("ascii"))).digest()):
            conn.close()
            raise OpenerUnavailable("the opener showed another certificate than the pinned one")
        return conn


@dataclass(frozen=True, slots=True)
class OpenerClient:
    """The opener at its Unix socket ``socket_path``, or over TCP with mutual TLS (``tls``)."""

    socket_path: str | None
    tls: OpenerTLS | None = None

    @property
    def where(self) -> str:
        return f"{self.tls.host}:{self.tls.port}" if self.tls is not None else str(self.socket_path)

    def _connect(self) -> socket.socket:
        if self.tls is not None:
            return self.tls.connect()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.settimeout(TIMEOUT_S)
            conn.connect(str(self.socket_path))
        except BaseException:
            conn.close()
            raise
        return conn

    def _call(self, doc: dict) -> dict:
        data = json.dumps(doc, separators=(",", ":")).encode("utf-8") + b"\n"
        if len(data) > MAX_REQUEST_BYTES:
            raise OpenerUnavailable("too many entries in one request", code="too_many")
        try:
            with self._connect() as conn:
                try:
                    conn.sendall(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the opener refused before reading it all (peer_refused): its answer is there to read
                with conn.makefile("rb") as fh:
                    line = fh.readline(MAX_REQUEST_BYTES * 2)
        except OSError as exc:  # ssl.SSLError too: a handshake the opener refused
            raise OpenerUnavailable(f"the opener at {self.where} cannot be reached: {exc.strerror or exc}") \
                from None
        try:
            answer = json.loads(line)
        except ValueError:
            raise OpenerUnavailable("the opener gave no answer") from None
        if not isinstance(answer, dict) or not answer.get("ok"):
            code = answer.get("error", "opener_refused") if isinstance(answer, dict) else "opener_refused"
            message = answer.get("message", "") if isinstance(answer, dict) else ""
            raise OpenerUnavailable(f"the opener refused: {message}", code=str(code)[:40])
        return answer

    def public_pem(self) -> str:
        return str(self._call({"op": "public_key"})["pem"])

    def anchors(self) -> list[tuple[int, bytes]]:
        return [(int(seq), bytes.fromhex(h)) for seq, h in self._call({"op": "anchors"})["anchors"]]

    def policy(self) -> ApprovalPolicy:
        answer = self._call({"op": "policy"})
        return ApprovalPolicy(tuple(str(r) for r in answer.get("approver_roles", ())), int(answer["approval_s"]))

    def request(self, *, actor: str, case_id: str, case_number: str, reason: str, card_id: str, hours: int) -> bool:
        """Ask to open a case (recorded by the opener): True if it waits for a second officer's approval."""
        answer = self._call({"op": "request", "actor": actor, "case_id": case_id, "case": case_number,
                             "reason": reason, "card": card_id, "hours": hours})
        return bool(answer.get("approval"))

    def approve(self, *, actor: str, case_id: str) -> int:
        """Approve another's case (recorded by the opener, which checks who may): the time it took it."""
        return int(self._call({"op": "approve", "actor": actor, "case_id": case_id})["approved_ms"])

    def open(self, entries: Sequence[SeenEntry], *, actor: str, case_number: str, reason: str,
             case_id: str | None = None) -> list[HolderView]:
        """Holder views for ``entries``, in order (one request; audited by the opener)."""
        if not entries:
            return []
        items = [[e.entry_id, base64.b64encode(e.sealed).decode("ascii") if e.sealed is not None else None]
                 for e in entries]
        answer = self._call({"op": "open", "actor": actor, "case": case_number, "reason": reason, "case_id": case_id,
                             "entries": items})
        holders = answer.get("holders")
        if not isinstance(holders, list) or len(holders) != len(entries):
            raise OpenerUnavailable("the opener answered for other entries than asked")
        return [HolderView(str(h.get("status")), h.get("name"), h.get("birth_date"), h.get("id_masked"))
                for h in holders]
