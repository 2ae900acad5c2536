"""The opener on a machine of its own: `checkpoint server opener --listen-tls` on another address
(127.0.0.2) with mutual TLS, answering only the console whose client certificate it pins, and the
console pinning the opener's certificate in turn. A console with another certificate, with none, or
facing another opener gets nothing; the console over TLS opens an approved case as over the socket."""
from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from support.console import INFECTED_NAME, Client, ConsoleThread, make_accounts, make_world, tls_files
from support.paths import ROOT
from support.waiting import WAIT, closed_by_peer, wait_for

from bench.procs import free_port
from scanner.base.timeutil import DAY_MS, now_ms
from sync.server.console import audit
from sync.server.console.openerclient import OpenerClient, OpenerTLS, OpenerUnavailable
from sync.server.console.store import ConsoleStore
from sync.server.keys import load_or_create_sealing_key, sealing_public_pem
from sync.server.storage import open_storage

HOST = "127.0.0.2"  # another address than the console's 127.0.0.1
CASE = {"case_number": "QN-2026/0042", "reason": "ca bệnh xác nhận ngày 6/12, cần gọi người tiếp xúc",
        "days": "14", "window_min": "60", "hours": "4"}


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("opener-tls")
    world = make_world(tmp)
    staff = make_accounts(world.db)
    certs = {name: tls_files(tmp / name) for name in ("opener", "console", "stranger")}
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "scanner", "server", "opener", "--db", str(world.db), "--keys",
                             str(world.keys_dir), "--listen-tls", f"{HOST}:{port}", "--tls-cert", certs["opener"][0],
                             "--tls-key", certs["opener"][1], "--client-cert", certs["console"][0],
                             "--approvers", "tracer,admin"],
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: proc.poll() is not None or _reachable(port), "the opener on 127.0.0.2")
        assert proc.poll() is None, proc.stderr.read()
        yield {"world": world, "staff": staff, "certs": certs, "port": port, "tmp": tmp, "pid": proc.pid}
    finally:
        proc.terminate()
        proc.wait(WAIT)


def client(site, mine: str = "console", theirs: str = "opener") -> OpenerClient:
    cert, key = site["certs"][mine]
    return OpenerClient(None, OpenerTLS(HOST, site["port"], cert, key, site["certs"][theirs][0]))


def test_only_the_pinned_console_is_answered_and_only_the_pinned_opener_trusted(site):
    key = load_or_create_sealing_key(site["world"].keys_dir)
    assert client(site).public_pem() == sealing_public_pem(key)
    for mine, theirs in (("stranger", "opener"), ("console", "stranger")):
        with pytest.raises(OpenerUnavailable) as err:
            client(site, mine, theirs).public_pem()
        assert err.value.code == "opener_unavailable", (mine, theirs)
    # no client certificate at all: the handshake fails, nothing is answered
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((HOST, site["port"]), timeout=WAIT) as raw, \
            tls.wrap_socket(raw) as conn, pytest.raises((ssl.SSLError, ConnectionError)):
        conn.sendall(b'{"op": "public_key"}\n')
        if not conn.recv(65536):
            raise ConnectionError("closed without an answer")
    # plain TCP: no TLS handshake, no answer
    with socket.create_connection((HOST, site["port"]), timeout=WAIT) as raw:
        raw.sendall(b'{"op": "public_key"}\n')
        try:
            answer = raw.recv(65536)
        except ConnectionResetError:  # the opener drops it at the failed handshake
            answer = b""
        assert b"BEGIN PUBLIC KEY" not in answer
    with pytest.raises(ConnectionRefusedError):  # and nothing listens on the console's own address
        socket.create_connection(("127.0.0.1", site["port"]), timeout=WAIT).close()


def _threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))


def test_connections_that_never_handshake_hold_no_thread_and_the_console_is_still_served(site):
    key = load_or_create_sealing_key(site["world"].keys_dir)
    assert client(site).public_pem() == sealing_public_pem(key)
    base = _threads(site["pid"])
    # a stranger on the console's own address opens many connections and never starts a handshake
    silent = [socket.create_connection((HOST, site["port"]), timeout=WAIT, source_address=("127.0.0.1", 0))
              for _ in range(200)]
    try:
        # accepted in order: once the console is answered, the opener has accepted all of them
        assert client(site).public_pem() == sealing_public_pem(key)
        assert _threads(site["pid"]) <= base + 2
        # and it closes them: the oldest beyond the per-address cap at once, the rest at the handshake deadline
        for s in silent:
            s.settimeout(WAIT / 3)  # the IO timeout (30 s) would be later
        assert all(closed_by_peer(s) for s in silent)
        assert client(site).public_pem() == sealing_public_pem(key)
    finally:
        for s in silent:
            s.close()


def test_the_console_opens_an_approved_case_through_the_opener_over_tls(site):
    w = site["world"]
    good = ConsoleThread(w.db, site["tmp"] / "good", opener_socket=None, opener=client(site))
    bad = ConsoleThread(w.db, site["tmp"] / "bad", opener_socket=None, opener=client(site, "stranger"))
    try:
        tracer, admin = Client(good), Client(good)
        tracer.login(site["staff"]["tracer"])
        admin.login(site["staff"]["admin"])
        r = tracer.post(f"/trace/card/{w.infected_id}/open", CASE)
        assert r.status_code == 303, r.text[:300]
        case_path = r.headers["location"]
        assert admin.post(f"/approvals/{case_path.rsplit('/', 1)[1]}").status_code == 303
        page = tracer.get(case_path)
        assert page.status_code == 200 and INFECTED_NAME in page.text and "Nguyễn Thị Lan" in page.text

        other = Client(bad)
        other.login(site["staff"]["tracer"])
        refused = other.get(case_path)  # the same tracer's case, through a console the opener does not know
        assert refused.status_code == 503 and INFECTED_NAME not in refused.text
        assert other.post(f"/trace/card/{w.infected_id}/open", CASE).status_code == 503
    finally:
        good.stop()
        bad.stop()
    storage = open_storage(str(w.db))
    try:
        opened = [r for r in ConsoleStore(storage).audit_all() if r.action == audit.HOLDERS_OPENED]
        rows = storage.visits(w.infected_id, 0, now_ms() + DAY_MS, 10)
    finally:
        storage.close()
    assert opened and all("uid=-1 pid=0" in r.detail and r.case_number == CASE["case_number"] for r in opened)
    assert rows  # the entries were there to open
