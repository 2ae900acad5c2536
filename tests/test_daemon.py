"""`checkpoint run` as a real process: file and pty inputs, signals and exit codes, sd_notify over a
real socket (READY, WATCHDOG, RELOADING, STOPPING), SIGHUP reloads, a stuck entry log withholding
the watchdog, and no personal data in what it prints."""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import tty

import pytest
from support.appliance import Daemon, NotifySocket, wait_inputs_ok
from support.cameras import write_shots
from support.config import standalone, write_config
from support.pki import NAME, make_pki
from support.servers import ServerThread
from support.waiting import WAIT

from scanner.appliance.provisioning import provision_appliance
from scanner.base.timeutil import now_ms
from scanner.cards import keys
from scanner.cards.bundle import BundleKey, make_bundle
from scanner.demo.video import Shot
from scanner.store.entrylog import EntryLog
from sync.server.bundles import publish


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path / "pki")


@pytest.fixture
def notify(tmp_path):
    n = NotifySocket(tmp_path)
    yield n
    n.close()


@pytest.fixture
def pty_pair():
    master, slave = os.openpty()
    tty.setraw(slave)
    yield master, os.ttyname(slave)
    os.close(master)
    os.close(slave)


def entries(state):
    with EntryLog(state / "entries.db", create=False) as log:
        return list(log.entries())


def test_once_with_a_video_and_a_text_file(tmp_path, pki):
    valid, expired = pki.card(), pki.card(name="Lê Văn Cường", expired=True)
    video = write_shots(tmp_path / "cam.avi", [Shot(None, 0.3), Shot(valid, 2.0), Shot(None, 0.3),
                                               Shot(expired, 1.0), Shot(None, 0.3)])
    lines = tmp_path / "lines.txt"
    lines.write_text(pki.card(name="Trần Văn Ba") + "\nnot a card\n\x00\x01binary\n", encoding="utf-8")
    state = tmp_path / "state"
    config = write_config(tmp_path / "c.toml", standalone(state, pki, camera=[{"name": "cam", "device": str(video),
                                                                             "kind": "file"}],
                                                          stdin=[{"name": "file", "path": str(lines)}],
                                                          feedback={"pin_factory": "mock", "console": True}))
    d = Daemon(config, "--once")
    assert d.wait() == 0, d.log
    got = entries(state)
    by_source = {}
    for e in got:
        by_source.setdefault(e.source_id, []).append(e.reason)
    assert by_source == {"cam": ["ok", "expired"], "file": ["ok", "unsupported_format"]}  # a 2 s hold: one scan
    assert all(e.device_id.startswith("d-") and e.checkpoint_id == "gate-test" for e in got)
    assert len([line for line in d.err if "verdict source=" in line]) == 4
    assert "discarded read (garbage)" in d.log
    assert (state / "clock.json").exists()
    out = "\n".join(d.out + d.err)
    for name in (NAME, "Lê Văn Cường", "Trần Văn Ba", "Nguyen"):  # no personal data in logs or console
        assert name not in out
    assert "Traceback" not in out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serial_reader_signal_stops_cleanly_with_sd_notify(tmp_path, pki, notify, pty_pair, sig):
    master, port = pty_pair
    state = tmp_path / "state"
    config = write_config(tmp_path / "c.toml", standalone(state, pki, serial=[{"name": "entry", "port": port,
                                                                             "direction": "in"}],
                                                          feedback={"pin_factory": "mock", "console": True}))
    d = Daemon(config, env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000", "CHECKPOINT_LANG": "en"})
    try:
        ready = notify.wait(lambda m: m.get("READY") == "1")
        assert "STATUS" in ready
        notify.wait(lambda m: m.get("WATCHDOG") == "1")  # pings while healthy
        wait_inputs_ok(d)
        os.write(master, (pki.card() + "\r\n").encode())
        d.wait_line(r"verdict source=serial:entry decision=accept reason=ok .* direction=in seq=1 ")
        d.signal(sig)
        assert d.wait() == 0, d.log
    finally:
        d.stop()
    notify.wait(lambda m: m.get("STOPPING") == "1")
    assert [e.reason for e in entries(state)] == ["ok"]
    assert d.out[-1].split("   ")[-1].startswith("tắt")  # the console line ends with outputs off (vi: tắt)
    assert "stopped after" in d.log and NAME not in d.log


def _realtime_threads(pid: int) -> list[tuple[int, int]]:
    """(policy without the reset-on-fork flag, priority) of each real-time thread of process ``pid``."""
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            policy = os.sched_getscheduler(int(task)) & ~os.SCHED_RESET_ON_FORK
            priority = os.sched_getparam(int(task)).sched_priority
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
        if policy in (os.SCHED_FIFO, os.SCHED_RR):
            out.append((policy, priority))
    return out


@pytest.mark.parametrize("lane_priority", [None, 0])
def test_the_daemons_verdict_lane_alone_runs_real_time(tmp_path, pki, pty_pair, lane_priority):
    """The config's `[scan] lane_priority` (default 10) reaches the verdict lane's thread, and no other
    thread of the daemon is real time; 0 leaves every thread normal."""
    if os.geteuid() != 0:
        pytest.skip("needs root (or an RLIMIT_RTPRIO of 10) for a real-time thread")
    master, port = pty_pair
    state = tmp_path / "state"
    scan = {} if lane_priority is None else {"lane_priority": lane_priority}
    config = write_config(tmp_path / "c.toml", standalone(state, pki, scan=scan, serial=[{"name": "entry",
                                                                                          "port": port}]))
    d = Daemon(config)
    try:
        wait_inputs_ok(d)
        os.write(master, (pki.card() + "\r\n").encode())
        d.wait_line(r"verdict source=serial:entry decision=accept reason=ok ")
        expected = [(os.SCHED_FIFO, 10)] if lane_priority is None else []
        assert _realtime_threads(d.proc.pid) == expected, d.log
        assert ("verdict lane SCHED_FIFO priority 10" in d.log) == (lane_priority is None)
    finally:
        d.stop()


def test_sighup_reloads_live_keys_and_the_trust(tmp_path, pki, notify, pty_pair):
    master, port = pty_pair
    state = tmp_path / "state"
    tables = standalone(state, pki, serial=[{"name": "r", "port": port}], scan={"cooldown_s": 2.0})
    config = write_config(tmp_path / "c.toml", tables)
    other = make_pki(tmp_path / "other")
    d = Daemon(config, env={"NOTIFY_SOCKET": notify.path})
    try:
        notify.wait(lambda m: m.get("READY") == "1")
        wait_inputs_ok(d)
        os.write(master, (other.card(name="A") + "\n").encode())
        d.wait_line(r"decision=reject reason=unknown_key")
        pki.pub.write_bytes(other.pub.read_bytes())  # the trusted key file now holds the other key
        tables["scan"] = {"cooldown_s": 1.0}
        tables["api"] = {"listen": "127.0.0.1:0", "max_clients": 4}
        write_config(config, tables)
        d.signal(signal.SIGHUP)
        d.wait_line(r"reload: applied scan\.cooldown_s")
        d.wait_line(r"reload: api\.max_clients changed; restart the service to apply")
        notify.wait(lambda m: m.get("RELOADING") == "1")
        notify.wait(lambda m: notify.count("READY") >= 2)  # READY again after the reload
        d.wait_line(r"trust: 1 keys")
        os.write(master, (other.card(name="B") + "\n").encode())
        d.wait_line(r"decision=accept reason=ok")
        config.write_text("[device]\nbogus = 1\n")  # a broken file: refused, the running config kept
        d.signal(signal.SIGHUP)
        d.wait_line(r"reload refused: .*device\.bogus: unknown key")
        os.write(master, (other.card(name="C") + "\n").encode())
        d.wait_line(r"decision=accept reason=ok")
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
    finally:
        d.stop()


def test_a_stuck_entry_log_withholds_the_watchdog_until_it_recovers(tmp_path, pki, notify, pty_pair):
    master, port = pty_pair
    state = tmp_path / "state"
    config = write_config(tmp_path / "c.toml", standalone(state, pki, serial=[{"name": "r", "port": port}]))
    d = Daemon(config, env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"})
    try:
        notify.wait(lambda m: m.get("WATCHDOG") == "1")
        wait_inputs_ok(d)
        holder = sqlite3.connect(str(state / "entries.db"), isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another process holds the database: commits wait
        os.write(master, (pki.card() + "\n").encode())
        d.wait_line(r"watchdog: verdict worker stuck for")
        pings = notify.count("WATCHDOG")
        holder.execute("ROLLBACK")
        holder.close()
        d.wait_line(r"verdict source=serial:r decision=accept")
        notify.wait(lambda m: notify.count("WATCHDOG") > pings)  # pings resume
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
    finally:
        d.stop()
    assert [e.reason for e in entries(state)] == ["ok"]


def test_bad_config_exits_2_with_every_problem(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[device]\ndirection = 3\n[api]\nlisten = \"0.0.0.0:1\"\n")
    d = Daemon(config)
    assert d.wait() == 2
    assert len(d.err) == 2 and all(line.startswith("checkpoint: error: ") for line in d.err)


def test_busy_api_port_and_once_without_files(tmp_path, pki):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        config = write_config(tmp_path / "c.toml", standalone(tmp_path / "s", pki, api={"listen": f"127.0.0.1:{port}"},
                                                              stdin=[{"path": str(pki.pub)}]))
        d = Daemon(config)
        assert d.wait() == 1
        assert d.err[-1].startswith("checkpoint: error: api: cannot listen on 127.0.0.1:") and len(d.err) < 20
    config = write_config(tmp_path / "c2.toml", standalone(tmp_path / "s", pki, hid=[{"device": "0c2e:0b61"}]))
    d = Daemon(config, "--once")
    assert d.wait() == 2 and "--once needs a file input" in d.err[-1]


def test_not_provisioned_without_zero_touch_exits_1(tmp_path):
    config = write_config(tmp_path / "c.toml", {"device": {"state_dir": str(tmp_path / "s")},
                                                "enroll": {"qr": False}, "api": {"enabled": False},
                                                "stdin": [{"path": str(config_path(tmp_path))}]})
    d = Daemon(config)
    assert d.wait(WAIT) == 1 and "not provisioned" in d.err[-1]


def config_path(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text("")
    return p


def test_once_exits_3_when_entries_are_left_unacknowledged(tmp_path, pki):
    """`run --once` with sync: exit 0 once the server holds every entry; exit 3 (not 0) when the
    server went away and entries are left, so that a script can tell."""
    (tmp_path / "server").mkdir()
    server = ServerThread(tmp_path / "server" / "central.db").start()
    try:
        pub = pki.key.public_key()
        now = now_ms() // 1000
        publish(server.storage, make_bundle(server.root, version=1, issued_at=now - 60, expires_at=now + 86400,
                                            keys=[BundleKey(keys.kid_of(pub), "EdDSA", "VN-HUE", pub)]),
                now_ms=now_ms(), root=server.root.public_key())
        state = tmp_path / "state"
        provision_appliance(server.url, server.token("cho-dong"), state_dir=state, trust_root=server.root_pub,
                            owner_user=None)
        lines = tmp_path / "lines.txt"
        lines.write_text(pki.card() + "\n")
        config = write_config(tmp_path / "c.toml", {"device": {"state_dir": str(state)},
                                                    "api": {"listen": "127.0.0.1:0"},
                                                    "stdin": [{"name": "file", "path": str(lines)}]})
        d = Daemon(config, "--once", "--sync-timeout", "30")
        assert d.wait() == 0, d.log  # delivered
        lines.write_text(pki.card(name="Trần Văn Ba") + "\n")
    finally:
        server.stop()
    d = Daemon(config, "--once", "--sync-timeout", "3")
    assert d.wait() == 3, d.log  # the server is gone: the new entry is left unacknowledged
    assert "1 entries not yet acknowledged" in d.log
