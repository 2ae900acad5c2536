"""How long the tests wait: one generous timeout, and one way to wait for a condition."""
from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

WAIT = 60.0  # seconds: generous for a loaded 2-core machine; never reached when things work
HTTP_TIMEOUT = (5, WAIT)  # requests' (connect, read) timeouts


def wait_for(cond, what: str | Callable[[], str], timeout: float = WAIT, interval: float = 0.01):
    """Poll ``cond`` until it returns something truthy and return that (a condition, never a fixed
    sleep); AssertionError naming ``what`` (or what it returns, then) after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        time.sleep(interval)


def unix_listening(sock: Path) -> bool:
    """Whether a server accepts connections at the Unix socket ``sock`` (its file appears a moment
    before it listens)."""
    try:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(str(sock))
        return True
    except OSError:
        return False


def closed_by_peer(s: socket.socket) -> bool:
    """Whether the other end closes ``s`` (EOF or reset) within its timeout; what it sends meanwhile
    is read and dropped."""
    try:
        while True:
            if not s.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
