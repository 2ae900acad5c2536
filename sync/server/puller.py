"""Server pull, the server side (`checkpoint server pull --device URL`): ask a device's local API
for its pending batches, store them with the same checks and deduplication as a push (source
"pull"), and acknowledge them; first tell the device about batches the server already holds
(pushed earlier with the answer lost, or imported from a USB stick). Protocol:
docs/sync-protocol.md#server-pull; the request signature: sync/wire/pullauth.py; device side: sync/pull.py.

Requests are signed with the server's pull key (keys dir, ``pull.key``) over the device's nonce, or
carry a token. A token is never sent over plain http except to a loopback address; a signed pull
may use http over a VPN (the batches are signed by the device, holder details sealed).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TypedDict
from urllib.parse import urlencode, urlsplit

import requests
from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.base import timeutil
from scanner.base.errors import CheckpointError
from sync.server.model import ServerError, Storage
from sync.wire import protocol, pullauth
from sync.wire.batch import BatchError, open_batch, read_header
from sync.wire.http import ANSWER_RULE, AnswerRule, is_loopback, read_limited, refusal


class PullFailed(CheckpointError):
    """A pull that could not go on; ``code`` says why (network, pull_unauthorized, unknown_device, ...)."""

    code = "pull_failed"


class _Counts(TypedDict):
    """What a pull has done so far (PullResult's counters)."""

    batches: int
    entries: int
    stored: int
    duplicates: int
    marked: int
    quarantined: int


@dataclass(frozen=True, slots=True)
class PullResult:
    url: str
    device_id: str | None
    batches: int = 0
    entries: int = 0
    stored: int = 0
    duplicates: int = 0
    marked: int = 0  # entries the device marked synced from our acknowledgements
    quarantined: int = 0
    pending: int | None = None  # left on the device afterwards (as it said)
    complete: bool = False
    error: str | None = None
    error_code: str | None = None

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}


def check_device_url(url: str, *, token: bool) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise PullFailed(f"device URL {url!r} must be http(s)://HOST[:PORT]", code="pull_config")
    if token and parts.scheme == "http" and not is_loopback(parts.hostname):
        raise PullFailed(f"{url}: a token is never sent over plain http except to a loopback address; use "
                         "https or the server's pull key", code="pull_config")
    return url.rstrip("/")


class PullClient:
    """The server talking to one device's pull endpoints (one attempt per call, typed errors)."""

    def __init__(self, base_url: str, *, key: ed25519.Ed25519PrivateKey | None = None, token: str | None = None,
                 ca_file: str | None = None, connect_timeout: float = 5.0, read_timeout: float = 60.0,
                 answer_rule: AnswerRule = ANSWER_RULE) -> None:
        if key is None and not token:
            raise PullFailed("a pull needs the server's pull key or a token", code="pull_config")
        self.base_url = check_device_url(base_url, token=key is None)
        self.key, self.token = key, token
        self.verify: str | bool = ca_file if ca_file else True
        self.timeout = (connect_timeout, read_timeout)
        self.answer_rule = answer_rule
        self.session = requests.Session()
        self.device_id = pullauth.NO_NONCE
        self.nonce = pullauth.NO_NONCE

    def close(self) -> None:
        self.session.close()

    def _request(self, method: str, path: str, *, params: dict | None = None, doc: dict | None = None,
                 max_bytes: int = protocol.MAX_JSON_BYTES, retry_nonce: bool = True) -> requests.Response:
        path_qs = path + (f"?{urlencode(params)}" if params else "")
        body = b"" if doc is None else json.dumps(doc, separators=(",", ":")).encode("utf-8")
        headers = {"Content-Type": "application/json"} if doc is not None else {}
        if self.key is not None:
            headers["Authorization"] = pullauth.auth_header(self.key, self.device_id, self.nonce, method, path_qs,
                                                             body)
        else:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            with self.session.request(method, self.base_url + path_qs, data=body or None, headers=headers,
                                      timeout=self.timeout, verify=self.verify, stream=True,
                                      allow_redirects=False) as resp:
                resp._content = read_limited(resp, max_bytes, path, PullFailed, self.answer_rule)
        except requests.exceptions.RequestException as exc:
            raise PullFailed(f"{self.base_url}: {type(exc).__name__}: {str(exc)[:200]}", code="network") from None
        if resp.status_code in (200, 204):
            return resp
        code, message = refusal(resp.status_code, resp.content, path)
        if code == pullauth.E_NONCE and retry_nonce and self.key is not None:
            self.info()  # the device restarted or the nonce expired: a new one, once
            return self._request(method, path, params=params, doc=doc, max_bytes=max_bytes, retry_nonce=False)
        raise PullFailed(message, code=code)

    def _json(self, resp: requests.Response) -> dict:
        try:
            doc = json.loads(resp.content)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise PullFailed("device answer is not JSON", code="bad_answer") from None
        if not isinstance(doc, dict):
            raise PullFailed("device answer is not a JSON object", code="bad_answer")
        return doc

    def info(self) -> dict:
        self.device_id, self.nonce = pullauth.NO_NONCE, pullauth.NO_NONCE
        doc = self._json(self._request("GET", pullauth.INFO, retry_nonce=False))
        device_id, nonce = doc.get("device_id"), doc.get("nonce")
        if not (isinstance(device_id, str) and 0 < len(device_id) <= 64 and device_id.isascii()
                and isinstance(nonce, str) and len(nonce) == 32):
            raise PullFailed("device /info answer lacks a device id or nonce", code="bad_answer")
        self.device_id, self.nonce = device_id, nonce
        return doc

    def batch(self, after_seq: int, limit: int) -> bytes | None:
        resp = self._request("GET", pullauth.BATCH, params={"after": after_seq, "limit": limit},
                             max_bytes=protocol.MAX_BATCH_BYTES)
        return None if resp.status_code == 204 else resp.content

    def ack(self, rows: list, held_seq: int) -> dict:
        return self._json(self._request("POST", pullauth.ACK, doc={"batches": [list(r) for r in rows],
                                                                     "held_seq": held_seq}))

    def refused(self, batch_id: str, first: int, last: int, code: str, message: str) -> dict:
        return self._json(self._request("POST", pullauth.REFUSED, doc={
            "batch_id": batch_id, "first_seq": first, "last_seq": last, "code": code, "message": message[:300]}))


def pull_device(storage: Storage, url: str, *, key: ed25519.Ed25519PrivateKey | None = None,
                token: str | None = None, ca_file: str | None = None, limit: int = pullauth.DEFAULT_LIMIT,
                timeout_s: float = 600.0, connect_timeout: float = 5.0, read_timeout: float = 60.0,
                now_ms=None) -> PullResult:
    """Pull everything pending from the device at ``url`` (until ``timeout_s``). Never raises for
    the device's or the network's trouble: the result says what was done and what stopped it."""
    now_ms = now_ms or timeutil.now_ms
    deadline = time.monotonic() + timeout_s
    counts: _Counts = {"batches": 0, "entries": 0, "stored": 0, "duplicates": 0, "marked": 0, "quarantined": 0}
    device_id = None
    pending = None
    try:
        client = PullClient(url, key=key, token=token, ca_file=ca_file, connect_timeout=connect_timeout,
                            read_timeout=read_timeout)
    except PullFailed as exc:
        return PullResult(url, None, error=str(exc), error_code=exc.code)
    try:
        info = client.info()
        device_id = info["device_id"]
        device = storage.device(device_id)
        if device is None:
            raise PullFailed(f"device {device_id} at {url} is not enrolled here", code=protocol.E_UNKNOWN_DEVICE)
        if device.revoked_ms is not None:
            raise PullFailed(f"device {device_id} is revoked", code=protocol.E_DEVICE_REVOKED)
        public = ed25519.Ed25519PublicKey.from_public_bytes(device.public_key)
        # what we already hold (answers lost, USB imports): acknowledged before anything is pulled
        first_pending = info.get("first_pending_seq")
        if type(first_pending) is int and first_pending > 0:
            after = first_pending - 1
            while True:
                rows = storage.acks_after(device_id, after, protocol.MAX_ACKS)
                if rows:
                    counts["marked"] += int(client.ack(rows, storage.held_seq(device_id)).get("marked", 0))
                    after = rows[-1][2]
                if len(rows) < protocol.MAX_ACKS:
                    break
        cursor = 0
        probe_limit, probe_until = None, 0  # bisecting a malformed batch down to its bad entries
        while time.monotonic() < deadline:
            if probe_limit is not None and cursor >= probe_until:
                probe_limit = None
            data = client.batch(cursor, probe_limit or limit)
            if data is None:
                break
            try:
                head = read_header(data)
            except BatchError as exc:
                raise PullFailed(f"device offered something that is not a batch: {exc}", code=exc.code) from None
            if head.device_id != device_id:
                raise PullFailed(f"device {device_id} offered a batch of {head.device_id}", code="bad_answer")
            if head.first_seq <= cursor:
                raise PullFailed("device offered a batch it was not asked for", code="bad_answer")
            try:
                parsed = open_batch(data, public)
            except BatchError as exc:
                if exc.code != protocol.E_MALFORMED:  # a bad signature: not this device's key
                    raise PullFailed(f"batch refused: {exc}", code=exc.code) from None
                if head.count > 1:
                    probe_limit, probe_until = head.count // 2, max(probe_until, head.last_seq)
                    continue
                client.refused(head.batch_id, head.first_seq, head.last_seq, exc.code, str(exc))
                counts["quarantined"] += 1
                cursor = head.last_seq
                continue
            done = storage.ingest(parsed, "pull", now_ms())
            ack = done.ack
            counts["batches"] += 1
            counts["entries"] += ack.count
            counts["stored"] += done.stored
            counts["duplicates"] += done.duplicates
            counts["marked"] += int(client.ack([[ack.batch_id, ack.first_seq, ack.last_seq]], ack.held_seq)
                                    .get("marked", 0))
            cursor = ack.last_seq
        pending = client.info().get("pending")
    except PullFailed as exc:
        return PullResult(url, device_id, **counts, pending=pending, error=str(exc), error_code=exc.code)
    except ServerError as exc:  # the database (503) or the device revoked meanwhile
        return PullResult(url, device_id, **counts, pending=pending, error=str(exc), error_code=exc.code)
    finally:
        client.close()
    return PullResult(url, device_id, **counts, pending=pending, complete=pending == 0)
