"""The device's HTTP client for the sync protocol (requests): explicit connect/read timeouts, TLS
verification always on (a CA file can be given), typed errors that tell the caller whether to
retry, and the server's clock read from every answer. Retrying and backing off is the caller's
policy (sync/agent.py); this module makes one attempt per call.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import requests
from cryptography.hazmat.primitives.asymmetric import ed25519
from requests.structures import CaseInsensitiveDict

from scanner import __version__
from scanner.base.fsutil import AtomicFile
from scanner.base.i18n import Text, text
from scanner.base.timeutil import now_ms
from sync.errors import SyncError as SyncError  # raised by the client, defined apart (sync/errors.py)
from sync.wire import protocol
from sync.wire.http import (
    ANSWER_RULE,
    AnswerRule,
    SyncConfigError,
    check_server_url,
    copy_limited,
    parse_retry_after,
    read_limited,
    refusal,
)
from sync.wire.identity import device_id as device_id_of
from sync.wire.identity import public_raw


class TransientError(SyncError):
    """Worth retrying later: network failure, timeout, 5xx, 429, 503. ``retry_after`` (seconds) is
    the server's Retry-After, if it gave one."""

    code = "transient"

    def __init__(self, message: str, *, code: str, retry_after: float | None = None, text: Text | None = None) -> None:
        super().__init__(message, code=code, text=text)
        self.retry_after = retry_after


class RejectedError(SyncError):
    """A 4xx answer: ``status`` and the server's error ``code``. ``batch_bad`` means this batch
    itself was refused (quarantine it); ``auth`` that the device is not (or no longer) accepted."""

    def __init__(self, message: str, *, code: str, status: int) -> None:
        super().__init__(message, code=code)
        self.status = status

    @property
    def batch_bad(self) -> bool:
        return self.code in protocol.BATCH_BAD_CODES

    @property
    def auth(self) -> bool:
        return self.code in protocol.AUTH_CODES

    @property
    def too_large(self) -> bool:
        return self.status == 413


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: CaseInsensitiveDict
    body: bytes
    server_time_ms: int | None
    sent_ms: int
    received_ms: int
    server_received_ms: int | None = None

    @property
    def clock_offset_ms(self) -> int | None:
        """Server time minus this device's time, NTP-style: ((t2 - t1) + (t3 - t4)) / 2 with t1/t4
        this device's send/receive times and t2/t3 the server's arrival/answer times."""
        if self.server_time_ms is None:
            return None
        t2 = self.server_received_ms if self.server_received_ms is not None else self.server_time_ms
        return ((t2 - self.sent_ms) + (self.server_time_ms - self.received_ms)) // 2

    def json(self) -> dict:
        try:
            doc = json.loads(self.body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise TransientError("server answer is not JSON", code="bad_answer") from None
        if not isinstance(doc, dict):
            raise TransientError("server answer is not a JSON object", code="bad_answer")
        return doc


@dataclass(frozen=True, slots=True)
class TrustReply:
    """``kind``: "not_modified", "delta" or "full"; ``version`` the server's current version;
    ``data`` the delta or bundle, or for a bundle written to a file (``into``), ``path`` that file."""

    kind: str
    version: int | None
    data: bytes
    path: Path | None = None


class SyncClient:
    """One device talking to one server. Thread-safe for one caller at a time (a requests Session)."""

    def __init__(self, base_url: str, key: ed25519.Ed25519PrivateKey, *, device_id: str | None = None,
                 ca_file: str | None = None, connect_timeout: float = 5.0, read_timeout: float = 30.0,
                 session: requests.Session | None = None, answer_rule: AnswerRule = ANSWER_RULE) -> None:
        self.base_url = check_server_url(base_url)
        if ca_file is not None and not os.path.isfile(ca_file):
            raise SyncConfigError(f"CA file {ca_file} does not exist")
        self.verify: str | bool = ca_file if ca_file is not None else True
        self.key = key
        self.device_id = device_id or device_id_of(key)
        self.timeout = (connect_timeout, read_timeout)
        self.answer_rule = answer_rule
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = f"checkpoint-edge/{__version__}"
        self.last_clock_offset_ms: int | None = None
        self.last_server_time_ms: int | None = None
        self.batch_formats: tuple[int, ...] = (1,)  # what the server's last answer said it reads

    def close(self) -> None:
        self.session.close()

    # ------------------------------------------------------------ one exchange

    def _request(self, method: str, path: str, *, params: dict | None = None, body: bytes = b"",
                 content_type: str | None = None, sign: bool = True, max_bytes: int = protocol.MAX_JSON_BYTES,
                 ok: tuple[int, ...] = (200,), into: Path | None = None) -> Reply:
        """One request; ``into``: a 200 answer that is not a delta is written (atomically) to that
        file instead of being held (its Reply's body is then empty)."""
        path_qs = path + (f"?{urlencode(params)}" if params else "")
        reply = self._exchange(method, path, path_qs, body, content_type, sign, max_bytes, into)
        if reply.status == 401 and sign and refusal(reply.status, reply.body, path)[0] == protocol.E_STALE_REQUEST:
            # signed with a stale idea of the server's clock; this answer has set it right
            reply = self._exchange(method, path, path_qs, body, content_type, sign, max_bytes, into)
        if reply.status in ok:
            return reply
        self._raise(reply, path)
        return reply  # not reached

    def _exchange(self, method: str, path: str, path_qs: str, body: bytes, content_type: str | None, sign: bool,
                  max_bytes: int, into: Path | None = None) -> Reply:
        headers = {}
        if content_type:
            headers["Content-Type"] = content_type
        sent = now_ms()
        if sign:  # ts: the server's clock as this device last saw it (a Pi without a battery clock may be far off)
            ts = sent + (self.last_clock_offset_ms or 0)
            headers[protocol.AUTH_HEADER] = protocol.auth_header_v2(self.device_id, self.key, method, path_qs, ts, body)
        try:
            with self.session.request(method, self.base_url + path_qs, data=body or None, headers=headers,
                                      timeout=self.timeout, verify=self.verify, stream=True,
                                      allow_redirects=False) as resp:
                if (into is not None and resp.status_code == 200
                        and not resp.headers.get("Content-Type", "").startswith(protocol.DELTA_TYPE)):
                    with AtomicFile.at(into, 0o644) as fh:
                        copy_limited(resp, max_bytes, path, TransientError, fh, self.answer_rule)
                    body = b""
                else:
                    body = read_limited(resp, max_bytes, path, TransientError, self.answer_rule)
                status, resp_headers = resp.status_code, CaseInsensitiveDict(resp.headers)
        except requests.exceptions.SSLError as exc:
            raise _net_error("tls", self.base_url, cause(exc), code="tls") from None
        except requests.exceptions.ConnectTimeout:
            raise _net_error("unreachable", self.base_url, text("net_error.timed_out"), code="timeout") from None
        except requests.exceptions.ReadTimeout:
            raise _net_error("no_answer", self.base_url, None, code="timeout") from None
        except requests.exceptions.ConnectionError as exc:
            raise _net_error("unreachable", self.base_url, cause(exc), code="network") from None
        except requests.exceptions.RequestException as exc:
            raise _net_error("failed", self.base_url, cause(exc), code="network") from None
        received = now_ms()
        server_ms = _ms_header(resp_headers.get(protocol.TIME_HEADER))
        reply = Reply(status, resp_headers, body, server_ms, sent, received,
                      _ms_header(resp_headers.get(protocol.RECEIVED_HEADER)))
        self.batch_formats = protocol.parse_formats(resp_headers.get(protocol.FORMATS_HEADER))
        if server_ms is not None:
            self.last_server_time_ms = server_ms
            self.last_clock_offset_ms = reply.clock_offset_ms
        return reply

    @staticmethod
    def _raise(reply: Reply, path: str) -> None:
        code, message = refusal(reply.status, reply.body, path)
        retry_after = parse_retry_after(reply.headers.get("Retry-After"))
        if reply.status >= 500 or reply.status in (408, 429) or code in protocol.RETRY_CODES:
            raise TransientError(message, code=code, retry_after=retry_after)
        raise RejectedError(message, code=code, status=reply.status)

    # ------------------------------------------------------------ the protocol

    def health(self) -> dict:
        return self._request("GET", protocol.HEALTH, sign=False).json()

    def enroll(self, token: str) -> dict:
        body = json.dumps({"token": token, "public_key": protocol.b64(public_raw(self.key)),
                           "software_version": __version__}).encode("utf-8")
        reply = self._request("POST", protocol.ENROLL, body=body, content_type="application/json",
                              max_bytes=4 * 1024 * 1024)
        return reply.json()

    def upload(self, data: bytes) -> protocol.Ack:
        reply = self._request("POST", protocol.BATCHES, body=data, content_type=protocol.BATCH_TYPE)
        try:
            return protocol.Ack.from_dict(reply.json())
        except protocol.ProtocolError as exc:
            raise TransientError(f"bad acknowledgement: {exc}", code="bad_answer") from None

    def acks(self, after_seq: int) -> dict:
        doc = self._request("GET", protocol.ACKS, params={"after": after_seq}).json()
        rows = doc.get("batches")
        if not isinstance(rows, list) or not all(
                isinstance(r, list) and len(r) == 3 and isinstance(r[0], str)
                and type(r[1]) is int and type(r[2]) is int and 1 <= r[1] <= r[2] for r in rows):
            raise TransientError("bad /acks answer", code="bad_answer")
        return doc

    def trust(self, version: int | None, digest: str | None, *, full: bool = False,
              into: Path | None = None) -> TrustReply:
        """Ask for the trust bundle newer than ``version``; ``into``: write a full bundle to that file
        (TrustReply.path) instead of holding it."""
        params: dict[str, int | str] = {}
        if version is not None:
            params["version"] = version
            params["digest"] = digest or ""
        if full:
            params["full"] = 1
        reply = self._request("GET", protocol.TRUST, params=params or None, max_bytes=protocol.MAX_BUNDLE_DOWNLOAD,
                              ok=(200, 304), into=into)
        header = reply.headers.get(protocol.BUNDLE_VERSION_HEADER)
        server_version = int(header) if header and header.isdigit() else None
        if reply.status == 304:
            return TrustReply("not_modified", server_version, b"")
        ctype = reply.headers.get("Content-Type", "")
        kind = "delta" if ctype.startswith(protocol.DELTA_TYPE) else "full"
        if kind == "full" and into is not None:
            return TrustReply(kind, server_version, b"", into)
        return TrustReply(kind, server_version, reply.body)

    def credential(self) -> bytes | None:
        """The server's credential file as it sent it (unchecked), or None when it has none (404:
        none published, or a server older than credentials)."""
        try:
            return self._request("GET", protocol.CREDENTIAL, max_bytes=64 * 1024).body
        except RejectedError as exc:
            if exc.status == 404:
                return None
            raise

    def heartbeat(self, doc: dict) -> dict:
        body = json.dumps(doc, ensure_ascii=False).encode("utf-8")
        return self._request("POST", protocol.HEARTBEAT, body=body, content_type="application/json").json()


def _ms_header(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() and len(value) < 17 else None


_ERRNO_WORDS = {errno.ECONNREFUSED: "refused", errno.ECONNRESET: "reset", errno.ENETUNREACH: "net_unreachable",
                errno.EHOSTUNREACH: "host_unreachable", errno.ETIMEDOUT: "timed_out"}  # [net_error] of the catalogue


def _net_error(what: str, url: str, why: Text | None, *, code: str) -> TransientError:
    """A TransientError saying what failed with the server at ``url`` and why (English for logs, the
    catalogue's words for a person)."""
    said = text(f"net_error.{what}", url=url, why=why or "")
    return TransientError(said("en"), code=code, text=said)


def cause(exc: BaseException) -> Text:
    """What went wrong under a requests/urllib3 error, in a few words a technician can act on
    (the library's own text names pools and retries and runs long)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, socket.gaierror):
            return text("net_error.no_name")
        if isinstance(e, ssl.SSLCertVerificationError):
            return text("net_error.certificate", why=e.verify_message)
        if isinstance(e, OSError) and e.errno in _ERRNO_WORDS:
            return text("net_error." + _ERRNO_WORDS[e.errno])
        todo += [x for x in (e.__cause__, e.__context__, getattr(e, "reason", None)) if isinstance(x, BaseException)]
        todo += [x for x in e.args if isinstance(x, BaseException)]
    message = str(exc)
    if "Connection refused" in message:  # urllib3 keeps only the text of the socket's error
        return text("net_error.refused")
    if "Name or service not known" in message or "nodename nor servname" in message:
        return text("net_error.no_name")
    return text("net_error.other", kind=type(exc).__name__)
