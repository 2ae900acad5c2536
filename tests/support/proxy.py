"""A fault-injecting TCP proxy on 127.0.0.1 between a device and the server."""
from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from collections import deque

from support.waiting import WAIT


class FaultProxy:
    """A TCP proxy on 127.0.0.1 between device and server. Armed faults apply to the next request
    data seen on any connection:

    * ``cut``: forward only the first N bytes of the request, then reset both sides;
    * ``drop_response``: forward the request, let the server answer (it has committed), then
      reset the device's connection instead of passing the answer on;
    * ``blackhole``: swallow the request and never answer (the device's read timeout fires).
    """

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.faults: deque = deque()
        self.done: list[str] = []
        self.lock = threading.Lock()
        self.closed = False
        self.fired = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def arm(self, kind: str, arg: int = 0) -> None:
        with self.lock:
            self.faults.append((kind, arg))

    def _claim(self):
        with self.lock:
            return self.faults.popleft() if self.faults else None

    def close(self) -> None:
        self.closed = True
        self.sock.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    @staticmethod
    def _reset(s: socket.socket) -> None:
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=WAIT)
        except OSError:
            self._reset(client)
            return
        fault, sent = None, 0
        try:
            while True:
                ready, _, _ = select.select([client, upstream], [], [], WAIT)
                if not ready:
                    continue
                if client in ready:
                    data = client.recv(65536)
                    if not data:
                        return
                    if fault is None:
                        fault = self._claim() or ("pass", 0)
                    kind, arg = fault
                    if kind == "cut":
                        part = data[:max(0, arg - sent)]
                        if part:
                            upstream.sendall(part)
                            sent += len(part)
                        if sent >= arg:
                            self._finish("cut")
                            self._reset(client)
                            self._reset(upstream)
                            return
                        continue
                    if kind == "blackhole":
                        self._finish("blackhole")
                        fault = ("swallow", 0)
                        continue
                    if kind == "swallow":
                        continue
                    upstream.sendall(data)
                if upstream in ready:
                    data = upstream.recv(65536)
                    if not data:
                        return
                    if fault is not None and fault[0] == "drop_response":
                        self._finish("drop_response")
                        self._reset(client)
                        self._reset(upstream)
                        return
                    client.sendall(data)
                    if fault is not None and fault[0] == "cut":  # a request too short to cut: re-arm
                        with self.lock:
                            self.faults.appendleft(fault)
                    fault, sent = None, 0  # the next request on this connection claims afresh
        except OSError:
            return
        finally:
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.close()

    def _finish(self, kind: str) -> None:
        self.done.append(kind)
        self.fired.set()
