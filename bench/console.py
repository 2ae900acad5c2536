"""The central console for the benchmarks, as it runs on a server: the opener (`checkpoint server
opener`, holding the sealing key) and the console (`checkpoint server console`) each in its own
process on 127.0.0.1 (a case needs a second officer's approval, as deployed), a tracer's and an
approving administrator's accounts, and each one's HTTP session logged in with a pyotp code
(docs/console.md)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyotp
import requests

from scanner.base.timeutil import now_ms
from sync.server.console import accounts
from sync.server.console.store import ConsoleStore
from sync.server.storage import open_storage

from .procs import ROOT, free_port

_TOKEN = re.compile(r'name="(?:csrf|login_token)" value="([^"]+)"')
USER, APPROVER = "bench-tracer", "bench-approver"


def _token(html: str) -> str:
    m = _TOKEN.search(html)
    if m is None:
        raise SystemExit("console bench: no form token on the console's page")
    return m.group(1)


class ConsoleProcesses:
    """The opener and the console on ``db_url`` with the key in ``keys_dir`` (its own processes),
    ``self.http``: a tracer logged in, and ``self.approver``: an administrator who approves the
    tracer's cases. The opener's hourly budgets are lifted: a benchmark opens the same case many
    times."""

    def __init__(self, db_url: str, keys_dir: Path, run_dir: Path, *, bench: str) -> None:
        self.bench = bench
        storage = open_storage(db_url)
        try:
            store = ConsoleStore(storage)
            new = accounts.add(store, USER, "tracer", (), actor="bench", now_ms=now_ms())
            approver = accounts.add(store, APPROVER, "admin", (), actor="bench", now_ms=now_ms())
        finally:
            storage.close()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        run_dir.mkdir(parents=True, exist_ok=True)
        sock = run_dir / "opener.sock"
        self.opener = subprocess.Popen([sys.executable, "-m", "scanner", "server", "opener", "--db", db_url, "--keys",
                                        str(keys_dir), "--socket", str(sock), "--max-per-request", "100000",
                                        "--per-case-hour", "10000000", "--total-hour", "100000000",
                                        "--approvers", "tracer,admin"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
        self.url = f"http://127.0.0.1:{free_port()}"
        self.console = subprocess.Popen([sys.executable, "-m", "scanner", "server", "console", "--db", db_url,
                                         "--listen", self.url.removeprefix("http://"), "--insecure-http",
                                         "--opener", str(sock)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
        self.pids = (self.opener.pid, self.console.pid)
        end = time.monotonic() + 60
        while True:
            try:
                if sock.exists() and requests.get(self.url + "/login", timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > end or self.opener.poll() is not None or self.console.poll() is not None:
                self.stop()
                raise SystemExit(f"{bench} bench: the console or its opener did not start")
            time.sleep(0.05)
        self.http, self.csrf = self._login(USER, new.password, new.totp_secret)
        self.approver, self.approver_csrf = self._login(APPROVER, approver.password, approver.totp_secret)

    def _post(self, path: str, data: dict, http: requests.Session | None = None) -> requests.Response:
        return (http or self.http).post(self.url + path, data=data, headers={"Origin": self.url},
                                        allow_redirects=False, timeout=600)

    def _login(self, user: str, password: str, secret: str) -> tuple[requests.Session, str]:
        """A session of ``user`` logged in, and its CSRF token."""
        http = requests.Session()
        token = _token(http.get(self.url + "/login", timeout=60).text)
        r = self._post("/login", {"username": user, "password": password, "login_token": token}, http)
        csrf = _token(http.get(self.url + "/login/code", timeout=60).text)
        totp = pyotp.TOTP(secret)
        r = self._post("/login/code", {"code": totp.now(), "csrf": csrf}, http)
        if r.status_code != 303:
            raise SystemExit(f"{self.bench} bench: logging in to the console failed ({r.status_code})")
        return http, _token(http.get(self.url + "/", timeout=60).text)

    def open_case(self, card_id: str, *, days: int, window_min: int) -> str:
        """A case for ``card_id`` (its number and reason given); the case page's path."""
        r = self._post(f"/trace/card/{card_id}/open", {"csrf": self.csrf, "case_number": "BENCH-1",
                                                        "reason": "benchmark of the call-centre answer",
                                                        "days": str(days), "window_min": str(window_min),
                                                        "hours": "24"})
        if r.status_code != 303:
            raise SystemExit(f"{self.bench} bench: the console did not open the case ({r.status_code})")
        path = r.headers["location"]
        r = self._post(f"/approvals/{path.rsplit('/', 1)[1]}", {"csrf": self.approver_csrf}, self.approver)
        if r.status_code != 303:
            raise SystemExit(f"{self.bench} bench: the case was not approved ({r.status_code})")
        return path

    def get(self, path: str) -> str:
        r = self.http.get(self.url + path, timeout=600)
        if r.status_code != 200:
            raise SystemExit(f"{self.bench} bench: {path} answered {r.status_code}")
        return r.text

    def stop(self) -> None:
        for proc in (self.console, self.opener):
            proc.terminate()
        for proc in (self.console, self.opener):
            proc.wait(60)
