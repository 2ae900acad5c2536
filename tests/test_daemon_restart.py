"""The provisioned daemon (`checkpoint run`, a subprocess) killed and started again: no process of
it outlives it holding the entry log (its batch builder), and a clock confirmation from an earlier
boot is not reused, while one from this boot is (docs/configuration.md#clock)."""
from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path

import pytest
import requests
from support.appliance import Daemon
from support.config import write_config
from support.pki import OPERATOR_ROOT, make_pki
from support.servers import ServerThread, free_port
from support.waiting import wait_for

from scanner.appliance.provisioning import provision_appliance
from scanner.base.timeutil import now_ms
from scanner.cards import keys
from scanner.cards.bundle import BundleKey, make_bundle
from sync.server.bundles import publish
from sync.state import StateFile

GONE_S = 15.0  # a child that dies with its parent is gone at once; this only bounds the wait


@pytest.fixture
def site(tmp_path):
    """A device provisioned against a real server, its config (sync on, batches built in a
    separate process as shipped) and a card reader that is a named pipe."""
    (tmp_path / "server").mkdir()
    server = ServerThread(tmp_path / "server" / "central.db").start()
    root = OPERATOR_ROOT  # the root that vouches for the test server (its credential)
    pki = make_pki(tmp_path / "pki")
    pub = pki.key.public_key()
    now = now_ms() // 1000
    publish(server.storage, make_bundle(root, version=1, issued_at=now - 60, expires_at=now + 86400,
                                        keys=[BundleKey(keys.kid_of(pub), "EdDSA", "VN-HUE", pub)]),
            now_ms=now_ms(), root=root.public_key())
    state = tmp_path / "state"
    provision_appliance(server.url, server.token("cong-bac"), state_dir=state, trust_root=server.root_pub)
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR)
    port = free_port()
    config = write_config(tmp_path / "checkpoint.toml", {
        "device": {"state_dir": str(state)},
        "sync": {"builder": "process", "interval_s": 1},
        "api": {"listen": f"127.0.0.1:{port}"},
        "feedback": {"pin_factory": "mock"},
        "stdin": [{"name": "desk", "path": str(fifo)}],
    })
    yield {"server": server, "state": state, "config": config, "pki": pki, "fifo": fd,
           "url": f"http://127.0.0.1:{port}"}
    os.close(fd)
    server.stop()


def _start_time(pid: int) -> str | None:
    """A process's start time (field 22 of /proc/PID/stat): a pid with another is another process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _descendants(pid: int) -> dict[int, str]:
    """Every living descendant of ``pid``: {pid: start time}."""
    parent_of = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent_of[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, todo = {}, [pid]
    while todo:
        p = todo.pop()
        for child, parent in parent_of.items():
            if parent == p and child not in found:
                start = _start_time(child)
                if start is not None:
                    found[child] = start
                    todo.append(child)
    return found


def _holders(db: Path) -> list[str]:
    """Processes with the entry log (or its -wal / -shm) open, as "pid cmdline" (every /proc/*/fd
    this user may read)."""
    names = {str(db.resolve()), f"{db.resolve()}-wal", f"{db.resolve()}-shm"}
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            links = [os.readlink(f) for f in (d / "fd").iterdir()]
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if names & set(links):
            out.append(f"{d.name} {cmd}")
    return out


def test_a_killed_daemon_leaves_no_process_holding_the_entry_log(site):
    """SIGKILL gives the daemon no chance to stop its children: they must notice by themselves."""
    db = site["state"] / "entries.db"
    daemon = Daemon(site["config"])
    try:
        daemon.wait_line(r"runtime: switch interval")
        os.write(site["fifo"], (site["pki"].card() + "\n").encode())
        # the first sync pass starts the batch builder; the card's entry goes up through it
        wait_for(lambda: site["server"].storage.entry_hashes(_device_id(site)), "the entry on the server", 60)
        children = _descendants(daemon.proc.pid)
        assert children, "no batch-builder process"
        assert _holders(db), "the daemon does not hold the entry log open?"
    finally:
        daemon.stop()  # SIGKILL, and reaped
    try:
        wait_for(lambda: not any(_start_time(p) == s for p, s in children.items()),
                 "the daemon's children to go", GONE_S)
    except AssertionError:
        left = {p: _describe(p) for p, s in children.items() if _start_time(p) == s}
        holders = _holders(db)
        for p in left:  # a failing run must not leave them behind either
            os.kill(p, signal.SIGKILL)
        raise AssertionError(f"left running after the daemon was killed: {list(left.values())}; "
                             f"holding {db.name}: {holders}") from None
    assert _holders(db) == []


def _describe(pid: int) -> str:
    """"pid cmdline (RSS)" of a living process."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        rss = next(line.split(":")[1].strip() for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return f"{pid} (gone)"
    return f"{pid} {cmd[:120]} ({rss})"


def _device_id(site) -> str:
    return json.loads((site["state"] / "device.json").read_text())["device_id"]


def _clock(site) -> dict:
    return requests.get(site["url"] + "/api/v1/status", timeout=10).json()["clock"]


def test_a_clock_answer_from_an_earlier_boot_does_not_confirm_the_clock(site):
    """The server is down; sync-state.json holds a good answer (offset 0) from the boot before
    this one, as a Pi without a battery clock finds it after a power cut."""
    site["server"].stop()
    path = site["state"] / "sync-state.json"
    doc = json.loads(path.read_text())
    doc.update(clock_offset_ms=0, clock_checked_ms=now_ms() - 60_000,  # what the last boot recorded
               clock_boot_id=str(uuid.uuid4()), clock_boot_ms=98_765_432)
    path.write_text(json.dumps(doc))
    daemon = Daemon(site["config"])
    try:
        daemon.wait_line(r"runtime: switch interval")  # after the first clock check
        status = _clock(site)
        assert not status["confirmed"] and status["offset_ms"] is None, daemon.log
        assert "clock: the server's last answer is from an earlier boot" in daemon.log
        assert "clock: confirmed by server" not in daemon.log
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.log
    # the same answer recorded in this boot: a restarted daemon keeps the confirmation
    files = StateFile(site["state"])
    st = files.load()
    st.note_clock(0)
    files.save(st)
    daemon = Daemon(site["config"])
    try:
        daemon.wait_line(r"clock: confirmed by server")
        status = _clock(site)
        assert status["confirmed"] and status["by"] == "server", status
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.log
