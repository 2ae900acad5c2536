"""Helpers for the appliance tests: keys and cards, config files, a real NOTIFY_SOCKET, the daemon
as a subprocess with its output read line by line, pty serial readers and video files."""
from __future__ import annotations

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
from dataclasses import dataclass
from pathlib import Path

from scanner.appliance.config import load
from scanner.appliance.daemon import Appliance
from scanner.cards import issuer, keys
from scanner.cards.verdict import Holder

WAIT = 60.0  # seconds: generous for a loaded 2-core machine; never reached when things work
ROOT = Path(__file__).resolve().parents[1]
NAME = "Nguyễn Thị Hương"


@dataclass
class Pki:
    dir: Path
    key: object
    pub: Path

    def card(self, *, name: str = NAME, birth: str = "1987-06-05", days: int = 365, expired: bool = False,
             card_id: bytes | None = None) -> str:
        now = int(time.time())
        issued, exp = (now - 400 * 86400, now - 30 * 86400) if expired else (now - 86400, now + days * 86400)
        kw = {} if card_id is None else {"card_id": card_id}
        return issuer.issue(issuer.CardSpec("VN-HUE", Holder(name, birth), issued, exp, **kw), self.key)


def make_pki(directory: Path, name: str = "hue") -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    key = keys.generate("EdDSA")
    keys.write_private_key(directory / f"{name}.key", key)
    pub = directory / f"{name}.pub"
    pub.write_bytes(keys.public_pem(key.public_key()))
    return Pki(directory, key, pub)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v), ensure_ascii=False)


def write_config(path: Path, tables: dict) -> Path:
    """A TOML file from {"device": {...}, "feedback.green": {...}, "camera": [{...}, ...]}."""
    lines = []
    for name, body in tables.items():
        for table in (body if isinstance(body, list) else [body]):
            lines.append(f"[[{name}]]" if isinstance(body, list) else f"[{name}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
            lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def standalone(state: Path, pki: Pki, **extra) -> dict:
    """A device without a server: standalone identity, trust from the issuer's public key,
    simulated pins, the API on a free port."""
    tables = {
        "device": {"state_dir": str(state), "checkpoint_id": "gate-test"},
        "sync": {"enabled": False},
        "trust": {"files": [str(pki.pub)]},
        "api": {"listen": "127.0.0.1:0"},
        "feedback": {"pin_factory": "mock"},
        "feedback.green": {"pin": 17}, "feedback.red": {"pin": 27}, "feedback.amber": {"pin": 22},
        "feedback.buzzer": {"pin": 18},
    }
    for k, v in extra.items():
        tables[k.replace("__", ".")] = v
    return tables


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


class Daemon:
    """`checkpoint run` as a subprocess; stderr (the log) and stdout are read line by line."""

    def __init__(self, config: Path, *args: str, env: dict | None = None) -> None:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "CHECKPOINT_LANG": "en", **(env or {})}
        full_env.pop("JOURNAL_STREAM", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "scanner", "run", "--config", str(config), *args],
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
    import requests

    url = daemon.wait_line(r"api (http://127\.0\.0\.1:\d+)").group(1)
    deadline = time.monotonic() + WAIT
    while True:
        inputs = requests.get(url + "/api/v1/status", timeout=(5, WAIT)).json()["inputs"]
        if inputs and all(i["state"] == "ok" for i in inputs):
            return url
        assert time.monotonic() < deadline, f"inputs not open: {inputs}"
        time.sleep(0.02)


def write_video(path: Path, shots: list, fps: float = 10.0) -> Path:
    """A Motion-JPEG video of QR shots, written by OpenCV (scanner.demo.video)."""
    from scanner.demo import video as demo_video
    demo_video.write(path, shots, fps)
    return path


class Lane:
    """The appliance in this process, a named pipe as its reader, every event it publishes kept and
    its feedback mirrored as console lines (one per pattern: what the LEDs showed)."""

    def __init__(self, tmp: Path, tables: dict) -> None:
        self.fifo = tmp / f"lane-{len(list(tmp.glob('lane-*')))}.fifo"
        os.mkfifo(self.fifo)
        self.fd = os.open(self.fifo, os.O_RDWR)
        tables = {"feedback": {"pin_factory": "mock", "console": True}, "feedback.green": {"pin": 17},
                  "feedback.red": {"pin": 27}, "feedback.amber": {"pin": 22}, **tables,
                  "stdin": [{"name": "desk", "path": str(self.fifo)}]}
        self.config = load(write_config(tmp / f"{self.fifo.stem}.toml", tables))
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
        os.write(self.fd, "".join(t + "\n" for t in texts).encode())

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
        os.close(self.fd)
