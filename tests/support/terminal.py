"""A command run on a terminal (a pty pair), as a person at a keyboard runs it: what it shows,
and Ctrl-C."""
from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import time

from support.waiting import WAIT


class Terminal:
    """``args`` with stdin, stdout and stderr on the slave side of a pty of ``columns`` columns, in
    a session of its own (Ctrl-C reaches its whole process group)."""

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None, cwd=None, columns: int = 100) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd,
                                     start_new_session=True)
        os.close(slave)
        self.master = master
        self.shown = b""

    def text(self) -> str:
        return self.shown.decode("utf-8", "replace").replace("\r\n", "\n")

    def _read(self, timeout: float) -> bool:
        """Read what is there within ``timeout`` seconds; False at the end (every writer gone)."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the slave side is closed
            return False
        self.shown += data
        return bool(data)

    def wait_for(self, text: str, timeout: float = WAIT) -> str:
        """Everything shown until ``text`` appears (AssertionError, with what was shown, after ``timeout``)."""
        end = time.monotonic() + timeout
        while text not in self.text():
            if time.monotonic() > end or not self._read(min(0.2, max(0.0, end - time.monotonic()))):
                if text in self.text():
                    break
                raise AssertionError(f"{text!r} never shown; the terminal shows:\n{self.text()}")
        return self.text()

    def finish(self, timeout: float = WAIT) -> int:
        """Read to the end; the exit status."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and self._read(0.2):
            pass
        return self.proc.wait(max(0.1, end - time.monotonic()))

    def ctrl_c(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(WAIT)
        os.close(self.master)
