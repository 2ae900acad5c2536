"""The sealing key stays out of the console: `checkpoint server console` runs in its own process as
the user ``nobody`` (as systemd/checkpoint-console.service runs it as its own user), the opener
(`checkpoint server opener`) as root with the key; a tracer opens a case through the console, and
then the console's open files, its mappings and every readable byte of its memory are searched for
the key (raw, PEM, base64 body). The same search finds the key in the opener's memory and the
holders' names in the console's, so it can see what it looks for. The opener also refuses a
process whose uid it was not told to trust (SO_PEERCRED)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from support.console import INFECTED_NAME, Client, make_accounts, make_world
from support.paths import ROOT
from support.waiting import WAIT, unix_listening, wait_for

from bench.procs import free_port
from sync.server.console.openerclient import OpenerClient, OpenerUnavailable
from sync.server.keys import load_or_create_sealing_key

NOBODY, NOGROUP = 65534, 65534
# setpriv (util-linux) execs the command as nobody with no groups and no capabilities left
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOGROUP}", "--clear-groups", "--inh-caps=-all"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="running the console as another user needs root")

CASE = {"case_number": "ĐN-2026/0200", "reason": "ca bệnh xác nhận, gọi người tiếp xúc", "days": "14",
        "window_min": "60", "hours": "4"}


@dataclass
class ConsoleAt:
    """What support.console.Client needs of a console: its URL, certificate (none: plain HTTP) and
    the list its clients join."""

    url: str
    cert: None = None
    clients: list = field(default_factory=list)


def readable_memory(pid: int) -> bytes:
    """Every readable mapping of process ``pid`` (/proc/PID/maps, /proc/PID/mem), concatenated."""
    chunks = []
    with open(f"/proc/{pid}/maps", encoding="ascii") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            fields = line.split()
            if fields[1][0] != "r" or (len(fields) > 5 and fields[5] in ("[vvar]", "[vsyscall]")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(start)
                chunks.append(mem.read(end - start))
            except (OSError, ValueError, OverflowError):
                continue  # a mapping gone meanwhile, or one the kernel will not read (guard pages)
    return b"\n".join(chunks)


def open_files(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return out


def wait_until_up(url: str, proc: subprocess.Popen) -> None:
    def up() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "exited"
        try:
            return requests.get(url + "/login", timeout=5).status_code == 200
        except requests.RequestException:
            return False
    wait_for(up, "the console to start")


@pytest.fixture
def shared_dir():
    """A directory outside pytest's (which only root may enter), for what the console may reach."""
    path = Path(tempfile.mkdtemp(prefix="ck-console-key-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path)


def test_the_web_process_never_holds_the_sealing_key(tmp_path, shared_dir):
    world = make_world(tmp_path)
    staff = make_accounts(world.db)
    key_file = world.keys_dir / "sealing.key"
    key = load_or_create_sealing_key(world.keys_dir)
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    pem = key_file.read_bytes()
    body = b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))
    needles = {"raw": raw, "pem": pem, "base64 body": body, "DER": key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())}

    db_dir, run_dir = shared_dir / "db", shared_dir / "run"
    db_dir.mkdir(mode=0o700)
    os.chown(db_dir, NOBODY, NOGROUP)
    run_dir.mkdir(mode=0o710)
    os.chown(run_dir, 0, NOGROUP)
    db = db_dir / "central.db"
    shutil.move(world.db, db)
    os.chown(db, NOBODY, NOGROUP)
    sock = run_dir / "opener.sock"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # as nobody, the key file is out of reach (its mode and its directory's), whatever the process tries
    probe = subprocess.run([*AS_NOBODY, sys.executable, "-c", "import sys; open(sys.argv[1], 'rb')", str(key_file)],
                           capture_output=True, text=True, timeout=WAIT, check=False)
    assert probe.returncode != 0 and "PermissionError" in probe.stderr
    console = subprocess.Popen([*AS_NOBODY, sys.executable, "-m", "scanner", "server", "console", "--db", str(db),
                                "--listen", f"127.0.0.1:{port}", "--insecure-http", "--opener", str(sock)],
                               env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    opener = None
    try:
        wait_until_up(url, console)  # first: the database's -wal and -shm files are then nobody's
        opener = subprocess.Popen([sys.executable, "-m", "scanner", "server", "opener", "--db", str(db),
                                   "--keys", str(world.keys_dir), "--socket", str(sock), "--allow", "nobody",
                                   "--socket-group", "nogroup"], env=env, cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(lambda: unix_listening(sock) or opener.poll() is not None, "the opener's socket")
        assert opener.poll() is None, opener.stderr.read()
        # this test runs as root, not the console's user: the opener turns it away
        with pytest.raises(OpenerUnavailable) as refused:
            OpenerClient(str(sock)).public_pem()
        assert refused.value.code == "peer_refused"

        tracer = Client(ConsoleAt(url))
        tracer.login(staff["tracer"])
        r = tracer.post(f"/trace/card/{world.infected_id}/open", CASE)
        assert r.status_code == 303, r.text[:500]
        admin = Client(ConsoleAt(url))  # the second officer approves the case, as the opener requires by default
        admin.login(staff["admin"])
        assert admin.post(f"/approvals/{r.headers['location'].rsplit('/', 1)[1]}").status_code == 303
        page = tracer.get(r.headers["location"]).text
        names = re.findall(r'<td class="name">([^<]*)</td>', page)
        assert "Nguyễn Thị Lan" in names  # the opener opened them for the console
        assert tracer.get(r.headers["location"] + "/export.csv").status_code == 200

        files = open_files(console.pid)
        assert not any("sealing" in f or str(world.keys_dir) in f for f in files), files
        maps = Path(f"/proc/{console.pid}/maps").read_text()
        assert str(world.keys_dir) not in maps
        memory = readable_memory(console.pid)
        assert INFECTED_NAME.encode() in memory or "Nguyễn Thị Lan".encode() in memory  # the search sees its data
        found = [name for name, needle in needles.items() if needle in memory]
        assert found == [], f"the console's memory holds the sealing key ({', '.join(found)})"
        assert raw in readable_memory(opener.pid)  # ...and the same search finds it where it is
    finally:
        for proc in (console, opener):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(WAIT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(WAIT)
