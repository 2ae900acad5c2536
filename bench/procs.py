"""Processes for the benchmarks: a free port, CPU seconds from /proc, and the reference server
(`checkpoint server run`) in its own process, the 'remote' machine."""
from __future__ import annotations

import collections
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import requests
from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.cards import keys
from sync.server import credentials
from sync.server.keys import load_or_create_pull_key, load_or_create_sealing_key
from sync.wire import credential

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_s(pid: int) -> float:
    """utime + stime of a process, seconds (/proc/PID/stat); 0.0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServerProcess:
    """`checkpoint server run --db DB_URL [ARGS]` on a free port of 127.0.0.1, started and healthy
    (SystemExit naming ``bench`` if not within 60 s); ``nice`` lowers its priority, ``cpus`` pins it,
    ``idle`` makes it SCHED_IDLE (a central server is another machine: it should not take the
    device's CPU). ``netns``: run it in that network namespace (``ip netns exec``), listening on
    ``host`` there."""

    def __init__(self, db_url: str, *args: str, bench: str, nice: int = 0, cpus: set[int] | None = None,
                 idle: bool = False, netns: str | None = None, host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.url = f"http://{host}:{self.port}"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        prefix = ["nice", "-n", str(nice)] if nice else []
        if netns is not None:  # `ip netns exec` execs the command: the pid is still the server's
            prefix = ["ip", "netns", "exec", netns, *prefix]
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "scanner", "server", "run", "--db", db_url,
                                      "--listen", f"{host}:{self.port}", *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
        self.pid = self.proc.pid  # `nice` (and `ip netns exec`) exec python: the pid is the server's
        if cpus:
            os.sched_setaffinity(self.pid, cpus)  # its threads are started after this (python is still loading)
        if idle:  # SCHED_IDLE: never keeps a waking device thread off a CPU
            os.sched_setscheduler(self.pid, os.SCHED_IDLE, os.sched_param(0))
        end = time.monotonic() + 60
        while True:
            try:
                if requests.get(self.url + "/v1/health", timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > end or self.proc.poll() is not None:
                raise SystemExit(f"{bench} bench: the server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (each worker finishes its requests), SIGKILL if it has not stopped within 60 s."""
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)


_VERDICT = re.compile(r"\bverdict source=\S+ .*\bseq=(\d+)\b")
_STARTED = re.compile(r"\bdevice \S+ at checkpoint\b")


class DaemonProcess:
    """`checkpoint run --config FILE` (under ``prefix``, e.g. strace), its log read line by line as
    it comes: ``seq`` is the highest verdict's, ``started`` true once the device is up, ``lines`` the
    last other lines (for errors); a subclass's ``noted`` sees those too. ``bench`` names the bench
    in its SystemExit."""

    def __init__(self, config: Path, *, bench: str, prefix: Sequence[str] = ()) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT), CHECKPOINT_LANG="en")
        self.bench, self.prefixed = bench, bool(prefix)
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "scanner", "run", "--config", str(config),
                                      "--log-level", "info"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env=env, cwd=ROOT, text=True, errors="replace")
        self.pid = self.proc.pid
        self.lines: collections.deque[str] = collections.deque(maxlen=200)
        self.seq = 0
        self.started = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def noted(self, line: str) -> None:
        """A log line other than a verdict's (under ``cond``)."""

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            m = _VERDICT.search(line)
            with self.cond:
                if m:  # a verdict line a scan: only its seq is kept
                    self.seq = max(self.seq, int(m.group(1)))
                else:
                    self.lines.append(line.rstrip("\n"))
                    if _STARTED.search(line):
                        self.started = True
                    self.noted(line)
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait(self, pred, what: str, timeout: float = 300.0) -> None:
        """Until ``pred()`` (under ``cond``); SystemExit with the daemon's last lines if it exits first
        or ``timeout`` s pass."""
        with self.cond:
            if not self.cond.wait_for(lambda: pred() or self.proc.poll() is not None, timeout) or not pred():
                tail = "\n  ".join(list(self.lines)[-15:])
                self.stop()
                raise SystemExit(f"{self.bench} bench: {what} did not happen; the daemon said:\n  {tail}")

    def daemon_pid(self) -> int | None:
        """The daemon's pid: under a prefix (strace), its child's (the one a stop signal goes to)."""
        if not self.prefixed:
            return self.pid
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children", encoding="ascii") as fh:
                kids = fh.read().split()
        except OSError:
            return None
        return int(kids[0]) if kids else None

    def stop(self) -> int:
        """SIGTERM to the daemon (strace itself would only detach); its exit code."""
        pid = self.daemon_pid() if self.proc.poll() is None else None
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
        try:
            return self.proc.wait(120)
        finally:
            self.thread.join(30)


OPERATOR_ROOT = ed25519.Ed25519PrivateKey.generate()  # the operator's root: vouches for each bench server


def vouch(storage, keys_dir: Path, url: str) -> Path:
    """The operator's part for a server (`issuer server-credential`, `server credential publish`):
    the root signs its URL and keys; returns the root's public key file devices are provisioned with."""
    seal, pull = load_or_create_sealing_key(keys_dir).public_key(), load_or_create_pull_key(keys_dir).public_key()
    old = credentials.current(storage)
    serial = credential.open_credential(old, [OPERATOR_ROOT.public_key()]).serial + 1 if old else 1
    credentials.publish(storage, credential.issue(OPERATOR_ROOT, urls=[url], sealing_key=seal, pull_key=pull,
                                                  serial=serial, issued_at=int(time.time())),
                        sealing_public=seal, pull_public=pull, root=OPERATOR_ROOT.public_key())
    root_pub = Path(keys_dir) / "root.pub"
    root_pub.write_bytes(keys.public_pem(OPERATOR_ROOT.public_key()))
    return root_pub
