"""The HTTP rules both ends of a sync connection keep, whoever is the client: which URLs may be used
(https, plain http only to a loopback address), answers read with a size limit, the protocol's
JSON error document, and Retry-After. The device's client (sync/client.py) and the server's puller
(sync/server/puller.py) use them.
"""
from __future__ import annotations

import email.utils
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING
from urllib.parse import urlsplit

from scanner.base.errors import CheckpointError
from scanner.base.i18n import text

if TYPE_CHECKING:  # only for annotations: the schema checks URLs without loading an HTTP client
    import requests


class SyncConfigError(CheckpointError):
    """A server URL or CA file that cannot be used (never retried)."""

    code = "sync_config"


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is this machine."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_server_url(url: str) -> str:
    """The base URL without a trailing slash. https is required, except on the loopback
    interface (tests, and a server on the same machine)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise SyncConfigError(f"server URL {url!r} must be https://HOST[:PORT]",
                              text=text("server_url.scheme", url=repr(url)))
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise SyncConfigError(f"server URL {url!r}: plain http is only allowed on the loopback interface; use https",
                              text=text("server_url.plain_http", url=repr(url)))
    if parts.query or parts.fragment:
        raise SyncConfigError(f"server URL {url!r} must not have a query or fragment",
                              text=text("server_url.query", url=repr(url)))
    return url.rstrip("/")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), capped at one hour."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), 3600.0)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return min(max(0.0, when.timestamp() - now), 3600.0)


@dataclass(frozen=True)
class AnswerRule:
    """How slowly an answer's body may come: all of it within ``grace_s`` or, after that, at
    ``min_rate_bps`` on average from its start. The read timeout alone bounds each wait, so a peer
    sending a byte a little faster than that would hold the exchange (and its thread) for days.
    Progress is seen a read (ANSWER_CHUNK) at a time: ``grace_s`` must cover one at the rate."""

    grace_s: float = 30.0
    min_rate_bps: int = 2048

    def deadline(self, start: float, received: int) -> float:
        return start + self.grace_s + received / self.min_rate_bps


ANSWER_RULE = AnswerRule()
ANSWER_CHUNK = 16 * 1024


def _socket_of(resp: requests.Response) -> socket.socket | None:
    """The socket an answer's body comes on: the pooled connection's, or (an answer that ends
    with the connection, which http.client hands over to the body) the body's own."""
    sock = getattr(getattr(resp.raw, "connection", None), "sock", None)
    if sock is None:  # http.client's HTTPResponse.fp is a BufferedReader over socket.SocketIO
        sock = getattr(getattr(getattr(getattr(resp.raw, "_fp", None), "fp", None), "raw", None), "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


@contextmanager
def _watched(resp: requests.Response, rule: AnswerRule, received: list[int]) -> Iterator[list[bool]]:
    """While the body is read: a watcher thread that shuts the connection's socket down once the
    answer falls behind ``rule`` (a blocked read then ends at once); yields [True] once it has."""
    fired: list[bool] = []
    done = threading.Event()
    start = time.monotonic()

    def watch() -> None:
        while not done.wait(max(0.0, rule.deadline(start, received[0]) - time.monotonic())):
            if time.monotonic() >= rule.deadline(start, received[0]):
                fired.append(True)
                sock = _socket_of(resp)
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:  # closed meanwhile
                        pass
                return

    watcher = threading.Thread(target=watch, name="answer-deadline", daemon=True)
    watcher.start()
    try:
        yield fired
    finally:
        done.set()
        watcher.join()


def _chunks(resp: requests.Response, max_bytes: int, path: str, error: type[CheckpointError],
            rule: AnswerRule) -> Iterator[bytes]:
    """The body's chunks as they come, refused (``error``) once past ``max_bytes`` (code
    bad_answer) or behind ``rule`` (code timeout)."""
    received = [0]
    with _watched(resp, rule, received) as fired:
        try:
            for chunk in resp.iter_content(ANSWER_CHUNK):
                received[0] += len(chunk)
                if received[0] > max_bytes:
                    raise error(f"answer from {path} larger than {max_bytes} bytes", code="bad_answer")
                if fired:
                    break
                yield chunk
        except Exception:
            if not fired:
                raise
    if fired:  # a cut body may even look complete (an answer ended by closing the connection)
        raise error(f"answer from {path} came slower than {rule.min_rate_bps} bytes/s", code="timeout")


def read_limited(resp: requests.Response, max_bytes: int, path: str, error: type[CheckpointError],
                 rule: AnswerRule = ANSWER_RULE) -> bytes:
    """The body of a streamed answer; ``error`` as soon as it passes ``max_bytes`` (code bad_answer)
    or falls behind ``rule`` (code timeout)."""
    return b"".join(_chunks(resp, max_bytes, path, error, rule))


def copy_limited(resp: requests.Response, max_bytes: int, path: str, error: type[CheckpointError],
                 out: IO[bytes], rule: AnswerRule = ANSWER_RULE) -> None:
    """read_limited into the file ``out`` (a large answer is never held whole)."""
    for chunk in _chunks(resp, max_bytes, path, error, rule):
        out.write(chunk)


def refusal(status: int, body: bytes, path: str) -> tuple[str, str]:
    """(code, message) of an answer that is not a success: the protocol's JSON error document
    (``error``, ``message``) when there is one, else the HTTP status."""
    code, message = f"http_{status}", f"HTTP {status} from {path}"
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            code = doc["error"][:64]
            message = f"{code}: {str(doc.get('message', ''))[:300]}"
    except (ValueError, UnicodeDecodeError, RecursionError):
        pass
    return code, message
