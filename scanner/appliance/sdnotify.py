"""systemd's notification protocol (sd_notify(3)): READY, STATUS, WATCHDOG, RELOADING, STOPPING.

A datagram of "KEY=value" lines sent to the unix socket named in $NOTIFY_SOCKET (a path, or an
abstract socket when it starts with "@"). Without $NOTIFY_SOCKET (not started by systemd with
Type=notify) every call does nothing. The watchdog interval comes from $WATCHDOG_USEC (set by
WatchdogSec=), honoured only when $WATCHDOG_PID is absent or names this process.
"""
from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to systemd; a no-op outside a Type=notify service."""

    def __init__(self, environ: dict | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address
        self._sock: socket.socket | None = None
        self.watchdog_s = _watchdog_seconds(env)
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: object) -> bool:
        """Send KEY=value lines (keyword names are upper-cased); True if the datagram went out."""
        if self.address is None:
            return False
        text = "\n".join(f"{k.upper()}={_one_line(v)}" for k, v in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(text.encode("utf-8"), self.address)
        except OSError as exc:
            if not self._failed:  # say it once; systemd will notice the missing pings by itself
                log.warning("sd_notify to %r failed: %s", self.address, exc)
                self._failed = True
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send(ready=1, status=status) if status else self.send(ready=1)

    def status(self, text: str) -> bool:
        return self.send(status=text)

    def watchdog(self) -> bool:
        return self.send(watchdog=1)

    def reloading(self) -> bool:
        """Before a reload (systemd 253 wants the monotonic time with it; older ones ignore it)."""
        return self.send(reloading=1, monotonic_usec=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self) -> bool:
        return self.send(stopping=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(value: object) -> str:
    return str(value).replace("\n", " ")


def _watchdog_seconds(env) -> float | None:
    """WatchdogSec= as seconds, or None when no watchdog is asked of this process."""
    usec = env.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1e6
