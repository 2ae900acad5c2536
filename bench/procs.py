"""Processes for the benchmarks: a free port, CPU seconds from /proc, and the reference server
(`checkpoint server run`) in its own process, the 'remote' machine."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
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
    device's CPU)."""

    def __init__(self, db_url: str, *args: str, bench: str, nice: int = 0, cpus: set[int] | None = None,
                 idle: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        prefix = ["nice", "-n", str(nice)] if nice else []
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "scanner", "server", "run", "--db", db_url,
                                      "--listen", f"127.0.0.1:{self.port}", *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
        self.pid = self.proc.pid  # `nice` execs python: the pid is the server's
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
