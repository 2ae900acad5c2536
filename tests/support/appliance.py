"""The appliance under test: in this process with every event it publishes kept (Lane), as
`checkpoint run` in a subprocess with its output read line by line (Daemon), a real NOTIFY_SOCKET,
its local API's event stream, and a server that holds its answers (an enrollment server slow to
answer)."""
from __future__ import annotations

import http.server
import io
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from scanner.appliance.config import load
from scanner.appliance.daemon import Appliance
from support.config import write_config
from support.inputs import Fifo
from support.paths import ROOT
from support.waiting import HTTP_TIMEOUT, WAIT, wait_for


class NotifySocket:
    """A real unix datagram socket to hand to a daemon as NOTIFY_SOCKET; collects what it sends."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[dict] = []
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._cond:
                self.messages.append(fields)
                self._cond.notify_all()

    def wait(self, predicate, timeout: float = WAIT) -> dict:
        with self._cond:
            found: list = []

            def check():
                found[:] = [m for m in self.messages if predicate(m)]
                return bool(found)
            assert self._cond.wait_for(check, timeout), f"no such notification; got {self.messages}"
            return found[0]

    def count(self, key: str) -> int:
        with self._cond:
            return sum(1 for m in self.messages if key in m)

    def close(self) -> None:
        self._stop = True
        self.sock.close()


class HeldServer:
    """A real HTTP server on 127.0.0.1 that holds every request until released, then answers 503:
    an enrollment server that is slow to answer."""

    def __init__(self) -> None:
        self.asked = threading.Event()
        self.release = threading.Event()
        held = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _hold(self) -> None:
                held.asked.set()
                held.release.wait(WAIT)
                body = b'{"error": "unavailable", "message": "held"}'
                self.send_response(503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _hold

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class Daemon:
    """`checkpoint run` as a subprocess; stderr (the log) and stdout are read line by line."""

    def __init__(self, config: Path, *args: str, env: dict | None = None, prefix: tuple[str, ...] = ()) -> None:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "CHECKPOINT_LANG": "en", **(env or {})}
        full_env.pop("JOURNAL_STREAM", None)
        # prefix: e.g. `ip netns exec NS` to run the daemon inside a namespace the test made
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "scanner", "run", "--config", str(config), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env, cwd=str(ROOT))
        self.err: list[str] = []
        self.out: list[str] = []
        self._lines: queue.Queue = queue.Queue()
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True)]
        for t in self._readers:
            t.start()
        self._seen = 0

    def _read(self, stream, into: list) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            into.append(line)
            self._lines.put(line)
        stream.close()

    def wait_line(self, pattern: str, timeout: float = WAIT) -> re.Match:
        """The next log line (stderr or stdout) matching the regex ``pattern``, waited for."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no line matching {pattern!r}; stderr:\n" + "\n".join(self.err[-40:])
            try:
                line = self._lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                assert self.proc.poll() is None or not self._lines.empty(), (
                    f"daemon exited ({self.proc.returncode}) before {pattern!r}; stderr:\n" + "\n".join(self.err[-40:]))
                continue
            m = rx.search(line)
            if m:
                return m

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = WAIT) -> int:
        code = self.proc.wait(timeout)
        for t in self._readers:
            t.join(timeout)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(WAIT)

    @property
    def log(self) -> str:
        return "\n".join(self.err)


def wait_inputs_ok(daemon: Daemon) -> str:
    """Wait until every input of the daemon is open (a serial port flushes its input when it
    opens, so a test writes to it only after this); returns the API's URL."""
    url = daemon.wait_line(r"api (http://127\.0\.0\.1:\d+)").group(1)
    seen: list = []

    def all_open() -> bool:
        seen[:] = requests.get(url + "/api/v1/status", timeout=HTTP_TIMEOUT).json()["inputs"]
        return bool(seen) and all(i["state"] == "ok" for i in seen)
    wait_for(all_open, lambda: f"every input open (last seen: {seen})", interval=0.02)
    return url


class Lane:
    """The appliance in this process, a named pipe as its reader, every event it publishes kept and
    its feedback mirrored as console lines (one per pattern: what the LEDs showed)."""

    def __init__(self, tmp: Path, tables: dict) -> None:
        self.fifo = Fifo(tmp / f"lane-{len(list(tmp.glob('lane-*')))}.fifo")
        tables = {"feedback": {"pin_factory": "mock", "console": True}, "feedback.green": {"pin": 17},
                  "feedback.red": {"pin": 27}, "feedback.amber": {"pin": 22}, **tables,
                  "stdin": [{"name": "desk", "path": str(self.fifo.path)}]}
        self.config = load(write_config(tmp / f"{self.fifo.path.stem}.toml", tables))
        self.out = io.StringIO()
        self.app = Appliance(self.config, stdout=self.out)
        self.events: list = []
        self._cond = threading.Condition()
        self.app.hub.listen(self._heard)

    def _heard(self, event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def start(self) -> Lane:
        self.app.start()
        threading.Thread(target=self.app.supervise, daemon=True).start()
        return self

    def send(self, *texts: str) -> None:
        self.fifo.send(*texts)

    def wait(self, pred, n: int = 1, timeout: float = WAIT) -> list:
        """The events matching ``pred`` once there are ``n`` of them."""
        with self._cond:
            ok = self._cond.wait_for(lambda: sum(1 for e in self.events if pred(e)) >= n, timeout)
            assert ok, [(e.kind, e.data) for e in self.events]
            return [e for e in self.events if pred(e)]

    def kinds(self, kind: str) -> list:
        with self._cond:
            return [e for e in self.events if e.kind == kind]

    def stop(self) -> None:
        self.app.request_stop()
        self.app.shutdown()
        self.fifo.close()


def events(url: str, **kw):
    """(event, data) pairs from the API's server-sent-events stream at ``url``."""
    r = requests.get(url, stream=True, timeout=HTTP_TIMEOUT, **kw)
    r.raise_for_status()
    assert r.headers["content-type"].startswith("text/event-stream")
    kind = None
    for line in r.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            yield kind, json.loads(line[6:])


def lan_address() -> str | None:
    """This machine's address on its LAN (no packet is sent), or None if it has only loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.254.254.254", 9))
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr
