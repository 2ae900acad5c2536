"""`checkpoint log` and `checkpoint sync` find their device from its configuration (--config, as
`run` and `doctor` do), and work right after provisioning, before the daemon has ever run."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from support.config import write_config
from support.paths import ROOT
from support.servers import ServerThread
from support.waiting import WAIT
from support.words import foreign

from scanner.appliance.provisioning import provision_appliance
from scanner.store.entrylog import EntryLog


def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "CHECKPOINT_STATE_DIR"}
    r = subprocess.run([sys.executable, "-m", "scanner", *args], capture_output=True, text=True, cwd=ROOT, check=False,
                       timeout=WAIT, env={**full, "CHECKPOINT_LANG": "en", **env})
    assert "Traceback" not in r.stderr, r.stderr
    return r


@pytest.fixture
def provisioned(tmp_path, request):
    """A device just provisioned by a real server: its config file names a state directory that
    is not the default, with the entry log elsewhere; the daemon has never run."""
    (tmp_path / "server").mkdir()
    server = ServerThread(tmp_path / "server" / "central.db").start()
    state = tmp_path / "state"
    provision_appliance(server.url, server.token("cho-dong"), state_dir=state, trust_root=server.root_pub,
                        owner_user=None)
    config = write_config(tmp_path / "checkpoint.toml", {
        "device": {"state_dir": str(state)}, "log": {"db": str(tmp_path / "logs" / "entries.db")}})
    (tmp_path / "logs").mkdir(mode=0o700)
    request.node.server = server
    yield config, state, tmp_path / "logs" / "entries.db"
    server.stop()


def test_sync_status_and_sync_now_work_right_after_provisioning_with_config(provisioned):
    config, state, db = provisioned
    status = cli("sync", "status", "--config", str(config), "--json")
    assert status.returncode == 0, status.stderr
    d = json.loads(status.stdout)
    assert (d["checkpoint_id"], d["pending"], d["oldest_pending_ms"]) == ("cho-dong", 0, None)
    assert not db.exists()  # a status changes nothing
    human = cli("sync", "status", "--config", str(config))
    assert human.returncode == 0 and "Nothing pending" in human.stdout, human.stdout + human.stderr
    now = cli("sync", "now", "--config", str(config), "--timeout", "30", "--json")
    assert now.returncode == 0, now.stderr
    assert json.loads(now.stdout)["complete"] and db.exists()  # the log the daemon will use, made as it would
    assert (db.stat().st_uid, db.stat().st_gid) == (state.stat().st_uid, state.stat().st_gid)


def test_log_commands_take_the_config(provisioned):
    config, _, db = provisioned
    assert cli("sync", "now", "--config", str(config), "--timeout", "30").returncode == 0  # makes the log
    stats = cli("log", "stats", "--config", str(config), "--json")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["path"] == str(db)
    for args in (("tail",), ("verify",), ("purge", "--dry-run"), ("export", "-o", "-")):
        r = cli("log", *args, "--config", str(config))
        assert r.returncode == 0, (args, r.stderr)
    assert cli("log", "verify", "--config", str(config.parent / "nope.toml")).returncode == 2  # a bad one: one line


def test_without_config_they_say_which_device_is_missing(tmp_path):
    r = cli("sync", "status", "--state-dir", str(tmp_path / "none"))
    assert r.returncode == 2 and r.stderr.startswith("checkpoint: error:") and len(r.stderr.splitlines()) == 1


def test_a_server_that_cannot_be_reached_is_said_once_in_words_with_what_to_check(provisioned, request):
    _, state, db = provisioned
    EntryLog(db).close()
    server = request.node.server
    url = server.url
    server.stop()
    where = ("--state-dir", str(state), "--db", str(db))
    r = cli("sync", "now", *where, "--timeout", "4")
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert lines == [(f"checkpoint: server not reachable at {url}: connection refused "
                      "(is the server running? is the port right?)")], r.stderr  # once, whole, no library text
    vi = cli("sync", "now", *where, "--timeout", "2", CHECKPOINT_LANG="vi")
    assert len(vi.stderr.splitlines()) == 1 and not foreign(vi.stderr, ["checkpoint", "(network)"]), vi.stderr
