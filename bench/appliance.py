"""What the appliance benchmarks (bench_daemon, bench_kiosk) share: cards of one issuer, and a
raw-socket client on the appliance's event stream that notes when each verdict arrives."""
from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from scanner.cards import issuer, keys
from scanner.cards.verdict import Holder


def hue_cards(tmp: Path, count: int) -> list[str]:
    """``count`` CK1 cards of a new issuer key, valid now; its public key is written to tmp/hue.pub."""
    key = keys.generate("EdDSA")
    (tmp / "hue.pub").write_bytes(keys.public_pem(key.public_key()))
    now = int(time.time())
    return [issuer.issue(issuer.CardSpec("VN-HUE", Holder(f"Nguyễn Văn {i}", "1985-03-02"), now - 60, now + 86400),
                         key) for i in range(count)]


class SseClient:
    """A raw-socket HTTP client on /api/v1/events; ``arrived[seq]`` is ``clock()`` when the verdict
    with that seq came in."""

    def __init__(self, host: str, port: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.sock = socket.create_connection((host, port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(f"GET /api/v1/events HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        self.arrived: dict[int, float] = {}
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        buf = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            now = self.clock()
            buf += data
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                lines = block.split(b"\n")
                if b"event: verdict" in lines:
                    body = next(line for line in lines if line.startswith(b"data: "))
                    # the HTTP chunk framing sits between events; the JSON starts at the first '{'
                    seq = json.loads(body[body.index(b"{"):])["seq"]
                    with self.cond:
                        self.arrived[seq] = now
                        self.cond.notify_all()

    def wait(self, seq: int, timeout: float = 60) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: seq in self.arrived, timeout):
                raise TimeoutError(f"verdict {seq} never reached the event stream")
            return self.arrived[seq]

    def close(self) -> None:
        self.sock.close()
