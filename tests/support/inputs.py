"""What feeds an appliance input in the tests: a pty pair as a serial reader, a named pipe as a
[[stdin]] input, and a collector of what an input hands over."""
from __future__ import annotations

import os
import threading
from pathlib import Path

from support.waiting import WAIT


class Pty:
    """A pty pair standing in for a USB CDC-ACM reader: we write to the master, the reader opens the slave."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        self.slave_path = os.ttyname(slave)
        os.close(slave)  # the reader opens it itself

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def unplug(self) -> None:
        os.close(self.master)


class Fifo:
    """A named pipe as the appliance's [[stdin]] input; the test writes card lines into it."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self.fd = os.open(path, os.O_RDWR)

    def send(self, *texts: str) -> None:
        """The lines in one write (a reader sees them together)."""
        os.write(self.fd, "".join(t + "\n" for t in texts).encode())

    def close(self) -> None:
        os.close(self.fd)


class Collector:
    """The pipeline's two callbacks, recording what an input hands over; wait() is event-driven."""

    def __init__(self) -> None:
        self.scans = []
        self.issues = []
        self._cond = threading.Condition()

    def submit(self, scan) -> bool:
        with self._cond:
            self.scans.append(scan)
            self._cond.notify_all()
        return True

    def report(self, issue) -> None:
        with self._cond:
            self.issues.append(issue)
            self._cond.notify_all()

    def texts(self) -> list[str]:
        with self._cond:
            return [s.text for s in self.scans]

    def wait(self, predicate, timeout: float = WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)
