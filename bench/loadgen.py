"""A fleet's load generator in its own process (`python -m bench.loadgen SPEC OUT`): simulated
devices, one thread each with one kept-alive HTTP/1.1 connection (a socket, answers read with
httptools) from their own loopback address (127.0.0.x, so the server's per-address limits stay at
their defaults), push the signed batches the spec names one after another from the moment the spec says, honouring
Retry-After after a 503 or 429 (and after a connection error), and write what they saw as JSON.

SPEC (JSON): {"url", "start_at" (time.time() to release every device at), "deadline_s",
"devices": [{"key": hex of the Ed25519 private key, "device_id", "source": "127.0.0.x",
"batches": [paths of .ckb files]}]}. OUT: {"lat": [seconds from a batch's first send to its 200],
"acked_at": [time.time() of each 200], "acked": [batch_id of each 200], "busy": n, "busy_codes": {error
code of a 503/429: n}, "busy_at": [time.time() of each 503/429], "no_retry_after": n (503/429 answers
without a Retry-After), "errors": n (connections refused or cut),
"failures": [...], "cpu_s": n}.
"""
from __future__ import annotations

import hashlib
import json
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httptools
from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.base.timeutil import now_ms
from sync.wire import protocol

RETRY_ON_ERROR_S = 1.0  # a refused or reset connection (the server restarting, its database failing over)


def run(spec: dict) -> dict:
    url = urlsplit(spec["url"])
    host, port = url.hostname or "127.0.0.1", url.port or 80
    lat: list[float] = []
    acked_at: list[float] = []
    acked: list[str] = []
    failures: list[str] = []
    counts = {"busy": 0, "errors": 0, "no_retry_after": 0}
    busy_codes: dict[str, int] = {}
    busy_at: list[float] = []
    lock = threading.Lock()
    stop_at = spec["start_at"] + spec["deadline_s"]
    pace_s = float(spec.get("pace_s", 0.0))  # a device's pause after each acknowledged batch (0: back to back)

    def device(d: dict) -> None:
        key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(d["key"]))
        dev = d["device_id"]
        # each batch hashed once before the release: the devices' own work, on their own hardware in the field
        bodies = [(b, hashlib.sha256(b).hexdigest()) for b in (Path(p).read_bytes() for p in d["batches"])]
        conn: _Connection | None = None
        time.sleep(max(0.0, spec["start_at"] - time.time()))
        for body, digest in bodies:
            t0 = time.perf_counter()
            while True:
                if time.time() > stop_at:
                    with lock:
                        failures.append("deadline")
                    return
                auth = protocol.auth_header_v2(dev, key, "POST", protocol.BATCHES, now_ms(), body,
                                               body_sha256=digest)
                try:
                    if conn is None:
                        conn = _Connection(host, port, d["source"])
                    status, headers, doc = conn.post(protocol.BATCHES, body, protocol.BATCH_TYPE, auth)
                except (OSError, httptools.HttpParserError):
                    if conn is not None:
                        conn.close()
                    conn = None
                    with lock:
                        counts["errors"] += 1
                    time.sleep(RETRY_ON_ERROR_S)
                    continue
                if headers.get(b"connection", b"").lower() == b"close":
                    conn.close()
                    conn = None
                if status in (429, 503):
                    code = _error_code(doc)
                    retry_after = headers.get(b"retry-after")
                    with lock:
                        counts["busy"] += 1
                        counts["no_retry_after"] += retry_after is None
                        busy_codes[code] = busy_codes.get(code, 0) + 1
                        busy_at.append(time.time())
                    time.sleep(float(retry_after or 1))
                    continue
                break
            with lock:
                if status == 200:
                    lat.append(time.perf_counter() - t0)
                    acked_at.append(time.time())
                    acked.append(json.loads(doc)["batch_id"])
                else:
                    failures.append(f"HTTP {status} {doc[:120]!r}")
            if pace_s:
                time.sleep(pace_s)
        if conn is not None:
            conn.close()

    cpu0 = time.process_time()
    threads = [threading.Thread(target=device, args=(d,), daemon=True) for d in spec["devices"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, stop_at + 60 - time.time()))
    return {"lat": lat, "acked_at": acked_at, "acked": acked, "failures": failures, "busy_codes": busy_codes,
            "busy_at": busy_at, "cpu_s": time.process_time() - cpu0, **counts}


class _Connection:
    """One kept-alive HTTP/1.1 connection from a device's own address: a request written as its head
    and its body, the answer read with httptools (llhttp, the parser uvicorn uses) until it is whole.
    Leaner per request than http.client, whose header parsing (the email package) cost the load
    generator more CPU than the server's own HTTP layer."""

    def __init__(self, host: str, port: int, source: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=300, source_address=(source, 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.host = f"{host}:{port}".encode("ascii")
        self.done = False
        self.body: list[bytes] = []
        self.headers: dict[bytes, bytes] = {}
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_message_complete(self) -> None:
        self.done = True

    def post(self, path: str, body: bytes, media_type: str, auth: str) -> tuple[int, dict[bytes, bytes], bytes]:
        """(status, headers by lower-case name, body) of a POST; OSError if the connection fails or
        closes before the answer is whole, httptools.HttpParserError if the answer is not HTTP."""
        self.sock.sendall(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                          b"Authorization: %s\r\n\r\n" % (path.encode("ascii"), self.host,
                                                            media_type.encode("ascii"), len(body),
                                                            auth.encode("ascii")))
        self.sock.sendall(body)
        self.done, self.body, self.headers = False, [], {}
        while not self.done:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionResetError("the server closed the connection before its answer was whole")
            self.parser.feed_data(data)
        return self.parser.get_status_code(), self.headers, b"".join(self.body)

    def close(self) -> None:
        self.sock.close()


def _error_code(doc: bytes) -> str:
    """The protocol error code of an error answer ("?" if it has none)."""
    try:
        code = json.loads(doc).get("error")
    except (ValueError, AttributeError):
        return "?"
    return code if isinstance(code, str) else "?"


def main(argv: list[str]) -> int:
    spec_path, out_path = argv
    spec = json.loads(Path(spec_path).read_text())
    Path(out_path).write_text(json.dumps(run(spec)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
