"""An attacker on raw sockets against the reference server (tests/test_server_flood.py and
bench/bench_flood.py): slow-body connections and junk bodies from several loopback addresses, and
the server's resident memory read from /proc."""
from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter

from scanner.base.timeutil import now_ms
from sync.wire import protocol

FLOOD_ADDRS = tuple(f"127.0.0.{i}" for i in range(2, 10))  # the attacker's addresses (loopback is a /8)
SLOW = 64
JUNK = 16
JUNK_BYTES = 16 * 1024 * 1024


def proc_kib(pid: int, field: str) -> int:
    """A field of /proc/PID/status in KiB (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise ValueError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int) -> bool:
    """VmHWM := VmRSS for ``pid`` (Linux >= 4.0, our own processes); False if not allowed here."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def _status(data: bytes) -> int | None:
    parts = data.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and data.startswith(b"HTTP/1.1 ") and parts[1].isdigit() else None


class Flood:
    """Attackers, one thread each, until stop(): ``slow`` connections that send the headers of a
    1 MiB batch and then nothing (even ones) or a byte a second (odd ones), reconnecting as soon as
    the server answers or closes; ``junk`` senders of bodies again and again, by thirds: 16 MiB without a
    header, 16 MiB under a forged CK-Sig2 header naming ``forged_device``, 512 KiB (under the
    unauthenticated cap) without a header. ``answers`` counts (kind, HTTP status or None)."""

    def __init__(self, port: int, forged_device: str, *, slow: int = SLOW, junk: int = JUNK) -> None:
        self.port = port
        self.forged_device = forged_device
        self.slow, self.junk = slow, junk
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.answers: Counter = Counter()
        self.slow_open = 0
        self.junk_done = 0
        self.threads: list[threading.Thread] = []

    def start_junk(self) -> None:
        self._start(self._junk, self.junk)

    def start_slow(self) -> None:
        self._start(self._slow, self.slow)

    def wait(self, cond, what: str, timeout_s: float = 60.0) -> None:
        end = time.monotonic() + timeout_s
        while not cond():
            if time.monotonic() > end:
                raise TimeoutError(f"flood: timed out waiting for {what}")
            time.sleep(0.01)

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(60)

    def _start(self, target, n: int) -> None:
        for i in range(n):
            t = threading.Thread(target=target, args=(i,), daemon=True)
            t.start()
            self.threads.append(t)

    def _connect(self, i: int) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10,
                                        source_address=(FLOOD_ADDRS[i % len(FLOOD_ADDRS)], 0))

    def _note(self, kind: str, data: bytes) -> None:
        with self.lock:
            self.answers[(kind, _status(data))] += 1

    def _slow(self, i: int) -> None:
        head = (f"POST {protocol.BATCHES} HTTP/1.1\r\nHost: x\r\nContent-Type: {protocol.BATCH_TYPE}\r\n"
                f"Content-Length: {1024 * 1024}\r\n\r\n").encode()
        counted = False
        while not self.stop_event.is_set():
            try:
                s = self._connect(i)
            except OSError:
                self.stop_event.wait(0.2)
                continue
            try:
                s.sendall(head)
                if not counted:
                    counted = True
                    with self.lock:
                        self.slow_open += 1
                s.settimeout(1.0)
                data = b""
                while not self.stop_event.is_set():
                    if i % 2:
                        s.send(b"C")
                    try:
                        chunk = s.recv(4096)
                    except TimeoutError:
                        continue
                    if not chunk:
                        break
                    data += chunk
                    if b"\r\n\r\n" in data:
                        break  # answered: a new connection at once (the server would drain this one)
                self._note("slow", data)
            except OSError:
                self._note("slow", b"")
            finally:
                s.close()

    def _junk(self, i: int) -> None:
        kind = ("plain", "forged", "small")[i % 3]
        length = 512 * 1024 if kind == "small" else JUNK_BYTES
        chunk = os.urandom(256 * 1024)
        while not self.stop_event.is_set():
            auth = ""
            if kind == "forged":  # well-formed, naming an enrolled device, signed by nobody
                auth = (f"Authorization: {protocol.AUTH_SCHEME_V2} device={self.forged_device},"
                        f"ts={now_ms()},nonce={os.urandom(16).hex()},"
                        f"sha256={os.urandom(32).hex()},sig={protocol.b64(os.urandom(64))}\r\n")
            head = (f"POST {protocol.BATCHES} HTTP/1.1\r\nHost: x\r\nContent-Type: {protocol.BATCH_TYPE}\r\n"
                    f"{auth}Content-Length: {length}\r\n\r\n").encode()
            data = b""
            try:
                with self._connect(i) as s:
                    s.sendall(head)
                    sent = 0
                    try:
                        while sent < length and not self.stop_event.is_set():
                            n = min(len(chunk), length - sent)
                            s.sendall(chunk[:n])
                            sent += n
                    except OSError:
                        pass  # refused and closed: read the answer
                    s.settimeout(30)
                    try:
                        while b"\r\n\r\n" not in data:
                            got = s.recv(65536)
                            if not got:
                                break
                            data += got
                    except OSError:
                        pass
            except OSError:
                self.stop_event.wait(0.05)
            self._note("junk", data)
            with self.lock:
                self.junk_done += 1
