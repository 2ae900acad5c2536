"""The HTTP rules both ends of a sync connection keep, whoever is the client: which URLs may be used
(https, plain http only to a loopback address), answers read with a size limit, the protocol's
JSON error document, and Retry-After. The device's client (sync/client.py) and the server's puller
(sync/server/puller.py) use them.
"""
from __future__ import annotations

import email.utils
import ipaddress
import json
import time
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


def read_limited(resp: requests.Response, max_bytes: int, path: str, error: type[CheckpointError]) -> bytes:
    """The body of a streamed answer; ``error`` (code bad_answer) as soon as it passes ``max_bytes``."""
    chunks, n = [], 0
    for chunk in resp.iter_content(64 * 1024):
        n += len(chunk)
        if n > max_bytes:
            raise error(f"answer from {path} larger than {max_bytes} bytes", code="bad_answer")
        chunks.append(chunk)
    return b"".join(chunks)


def copy_limited(resp: requests.Response, max_bytes: int, path: str, error: type[CheckpointError],
                 out: IO[bytes]) -> None:
    """read_limited into the file ``out`` (a large answer is never held whole)."""
    n = 0
    for chunk in resp.iter_content(64 * 1024):
        n += len(chunk)
        if n > max_bytes:
            raise error(f"answer from {path} larger than {max_bytes} bytes", code="bad_answer")
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
