"""The reference server over real HTTP and its command line: enrollment tokens, request signatures,
heartbeats (latest kept, replays ignored, stale devices first), chain and gap checks, stats,
storage URLs; and the device commands provision / sync now / status / export."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

import pytest
import requests
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from support.devices import Device, provision_device, record
from support.paths import ROOT
from support.servers import (
    BACKENDS,
    ServerThread,
    db_url_for,
    free_port,
    running_server,
)
from support.terminal import Terminal
from support.waiting import HTTP_TIMEOUT, WAIT, wait_for
from support.words import foreign

from scanner.appliance.config import load
from scanner.base.errors import CheckpointError
from scanner.base.timeutil import now_ms
from scanner.cards import verifier
from scanner.cli.main import main
from scanner.store.entry import chain_hash, hash_fields
from scanner.store.entrylog import EntryLog
from sync import credential
from sync.client import RejectedError, SyncClient
from sync.server.bundles import publish
from sync.server.storage import default_keys_dir, open_storage
from sync.server.tokens import issue_tokens, token_hash
from sync.wire import batch as batchmod
from sync.wire import identity, protocol


@pytest.fixture(scope="module")
def verdicts(make_card, trust, now):
    return [verifier.verify(make_card(card_id=os.urandom(16)), trust, now) for _ in range(3)]


@pytest.fixture(params=BACKENDS)
def server(request, tmp_path):
    """The real server on uvicorn, on SQLite and on PostgreSQL (the same tests for both)."""
    with running_server(request.param, tmp_path) as srv:
        yield srv


def test_enrollment_tokens(server):
    key = ed25519.Ed25519PrivateKey.generate()
    c = SyncClient(server.url, key)
    tok = server.token("ward-7")
    first = c.enroll(tok)
    assert first["device_id"] == identity.device_id(key) and first["checkpoint_id"] == "ward-7"
    assert "X25519" not in first["sealing_public_key"] and first["sealing_public_key"].startswith("-----BEGIN")
    assert c.enroll(tok)["device_id"] == first["device_id"]  # again: harmless, same answer
    with pytest.raises(RejectedError) as exc_info:  # the same token for another key
        SyncClient(server.url, ed25519.Ed25519PrivateKey.generate()).enroll(tok)
    assert exc_info.value.code == protocol.E_TOKEN_USED and exc_info.value.status == 409
    with pytest.raises(RejectedError) as exc_info:
        c.enroll("no-such-token-at-all")
    assert exc_info.value.code == protocol.E_TOKEN_INVALID
    expired = issue_tokens(server.storage, "ward-7", ttl_hours=1, now_ms=now_ms() - 2 * 3_600_000)[0]
    with pytest.raises(RejectedError) as exc_info:
        SyncClient(server.url, ed25519.Ed25519PrivateKey.generate()).enroll(expired)
    assert exc_info.value.code == protocol.E_TOKEN_EXPIRED
    assert server.storage.get_meta("x") is None and token_hash(tok) != tok


def test_requests_must_be_signed_by_the_enrolled_key(server, tmp_path):
    dev = provision_device(server, tmp_path)
    r = requests.get(server.url + protocol.ACKS, timeout=30)
    assert r.status_code == 401
    impostor = SyncClient(server.url, ed25519.Ed25519PrivateKey.generate(), device_id=dev.device_id)
    with pytest.raises(RejectedError) as exc_info:
        impostor.acks(0)
    assert exc_info.value.code == protocol.E_BAD_SIGNATURE
    assert "x-checkpoint-time" in {k.lower() for k in r.headers}


def _hb(seq: int, **kw) -> dict:
    doc = {"hb_seq": seq, "device_time_ms": now_ms(), "software_version": "t", "queue_depth": seq,
           "oldest_unsynced_age_s": None, "last_acked_seq": 0, "trust_version": None, "trust_age_s": None,
           "clock_offset_ms": 12, "inputs": {"cam0": "up", "reader0": "down"}, "disk_free_bytes": 10,
           "alarms": [], "last_error": None}
    doc.update(kw)
    return doc


def test_heartbeats_latest_kept_replays_ignored_stale_first(server, tmp_path):
    a = provision_device(server, tmp_path, "a")
    b = provision_device(server, tmp_path, "b")
    ca = SyncClient(server.url, identity.load(a.state), device_id=a.device_id)
    assert ca.heartbeat(_hb(2))["kept"] is True
    assert ca.heartbeat(_hb(1))["kept"] is False  # an older one replayed
    with pytest.raises(RejectedError):
        ca.heartbeat(_hb(3, inputs={"cam0": "sideways"}))
    devices = {d.device.device_id: d for d in server.storage.devices()}
    assert devices[a.device_id].heartbeat["queue_depth"] == 2
    assert devices[b.device_id].heartbeat is None
    out = CliRunner().invoke(main, ["server", "devices", "--db", server.db_url, "--json"])
    rows = [json.loads(line) for line in out.output.splitlines()]
    assert [r["device_id"] for r in rows] == [b.device_id, a.device_id]  # never seen: stale, first
    assert rows[0]["stale"] and not rows[1]["stale"]


def test_chain_breaks_alterations_conflicts_and_gaps_are_reported(server, tmp_path, verdicts):
    dev = provision_device(server, tmp_path)
    es = record(dev, verdicts, 30)
    key = identity.load(dev.state)
    url = server.url + protocol.BATCHES

    def post(entries):
        r = requests.post(url, data=batchmod.build(entries, key, device_id=dev.device_id, created_ms=1).data,
                          timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    post(es[:10])
    post(es[20:30])  # 11..20 missing: a gap, not an error
    assert server.storage.gaps(dev.device_id) == [(11, 20)]
    altered = dataclasses.replace(es[12], reason="expired")  # changed after hashing
    post(es[10:12] + [altered] + es[13:20])
    problems = {(e.kind, e.seq) for e in server.storage.chain_events(dev.device_id)}
    assert ("altered", 13) in problems
    assert server.storage.gaps(dev.device_id) == []
    # a device whose log was rebuilt: seq 31 does not link to 30; and seq 5 again with other content
    other = dataclasses.replace(es[29], seq=31, entry_id="00000000-0000-4000-8000-000000000031",
                                prev_hash=b"\x01" * 32)
    other = dataclasses.replace(other, hash=chain_hash(other.prev_hash, hash_fields(other)))
    post([other])
    twin = dataclasses.replace(es[4], reason="revoked")
    twin = dataclasses.replace(twin, hash=chain_hash(twin.prev_hash, hash_fields(twin)))
    assert post([twin])["duplicates"] == 1
    kinds = {(e.kind, e.seq) for e in server.storage.chain_events(dev.device_id)}
    assert {("relinked", 31), ("conflict", 5)} <= kinds
    s = server.storage.stats()
    assert s.conflicts == 1 and s.chain_problems >= 2
    out = CliRunner().invoke(main, ["server", "chain", "--db", server.db_url, "--lang", "en"])
    assert "relinked seq 31" in out.output and "conflict seq 5" in out.output


def test_read_only_commands_refuse_a_missing_database_and_say_what_they_found(server, tmp_path, verdicts):
    """A mistyped --db: `devices`, `stats`, `chain`, `trace` refuse it (one line, exit 2) and create
    nothing. On the real database: `stats` is a table (or --json), `chain` says when all is well."""
    missing = tmp_path / "typo" / "centrl.db"
    (tmp_path / "typo").mkdir()
    for args in (["devices"], ["stats"], ["chain"], ["trace", "--card", "00" * 16, "--no-holders"]):
        out = CliRunner().invoke(main, ["server", *args, "--db", str(missing), "--lang", "en"])
        assert out.exit_code == 2 and "no such database" in out.output, (args, out.output)
        assert out.output.rstrip().endswith("(db_missing)"), out.output
        assert len(out.output.splitlines()) == 1 and not missing.exists()
    dev = provision_device(server, tmp_path)
    es = record(dev, verdicts, 3)
    assert requests.post(server.url + protocol.BATCHES, timeout=30, data=batchmod.build(
        es, identity.load(dev.state), device_id=dev.device_id, created_ms=1).data).ok
    chain = CliRunner().invoke(main, ["server", "chain", "--db", server.db_url, "--lang", "en"])
    assert chain.exit_code == 0 and chain.output == "chain intact: 1 devices, 3 entries\n", chain.output
    stats = CliRunner().invoke(main, ["server", "stats", "--db", server.db_url, "--lang", "en"]).output
    assert "{" not in stats and any(line.split() == ["entries", "3"] for line in stats.splitlines()), stats
    assert json.loads(CliRunner().invoke(main, ["server", "stats", "--db", server.db_url, "--json"]).output)[
        "entries"] == 3


def test_storage_urls(tmp_path):
    for url in (f"sqlite:///{tmp_path}/a.db", str(tmp_path / "b.db")):
        open_storage(url).close()
    with pytest.raises(CheckpointError, match="not supported"):
        open_storage("mysql://localhost/checkpoint")
    with pytest.raises(CheckpointError):
        open_storage(str(tmp_path / "missing" / "c.db"))
    port = free_port()  # nothing listens there: a clear error with libpq's reason, quickly
    with pytest.raises(CheckpointError, match="cannot connect") as exc_info:
        open_storage(f"postgresql://nobody:secret@127.0.0.1:{port}/checkpoint")
    assert exc_info.value.code == "db_unusable" and "secret" not in str(exc_info.value)
    with pytest.raises(CheckpointError, match="--keys"):
        default_keys_dir(f"postgresql://127.0.0.1:{port}/checkpoint")


@pytest.mark.parametrize("backend", BACKENDS)
def test_server_cli_tokens_stats_bundle(tmp_path, make_bundle_bytes, root_key, backend):
    db = db_url_for(backend, tmp_path / "c.db")
    r = CliRunner()
    out = r.invoke(main, ["server", "token", "create", "--db", db, "--checkpoint", "gate-2", "--count", "3", "--json"])
    assert out.exit_code == 0 and len(json.loads(out.output)["tokens"]) == 3
    pub = tmp_path / "root.pub"
    pub.write_bytes(root_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    bfile = tmp_path / "b.json"
    bfile.write_bytes(make_bundle_bytes(version=4))
    out = r.invoke(main, ["server", "bundle", "publish", "--db", db, str(bfile), "--root", str(pub), "--json"])
    assert out.exit_code == 0 and json.loads(out.output)["version"] == 4
    out = r.invoke(main, ["server", "bundle", "publish", "--db", db, str(bfile)])
    assert out.exit_code == 2 and "rollback" in out.output
    out = r.invoke(main, ["server", "stats", "--db", db, "--json"])
    s = json.loads(out.output)
    assert s["tokens_unused"] == 3 and s["bundle_version"] == 4 and s["entries"] == 0


def test_device_cli_provision_sync_status_export(server, tmp_path, verdicts, make_bundle_bytes, root_key):
    publish(server.storage, make_bundle_bytes(version=2), now_ms=now_ms(), root=root_key.public_key())
    state = tmp_path / "dev"
    r = CliRunner()
    tok = server.token()
    for _ in range(2):  # a second run is harmless
        out = r.invoke(main, ["provision", "--server", server.url, "--token", tok, "--state-dir", str(state),
                              "--trust-root", str(server.root_pub), "--json"])
        assert out.exit_code == 0, out.output
    res = json.loads(out.output)
    assert res["bundle_version"] == 2 and not res["key_created"]
    assert oct(os.stat(state / "device.key").st_mode & 0o777) == "0o600"

    log = EntryLog(state / "entries.db", device_id=res["device_id"], checkpoint_id=res["checkpoint_id"],
                   sealing_key=credential.load(state).sealing_key, passback_window_s=0)
    dev = Device(state, log, res["device_id"], res["checkpoint_id"])
    record(dev, verdicts, 15)
    out = r.invoke(main, ["sync", "status", "--state-dir", str(state), "--json"])
    st = json.loads(out.output)
    assert st["pending"] == 15 and st["trust_version"] == 2 and st["last_success_ms"] is None
    out = r.invoke(main, ["sync", "export", "--to", str(tmp_path / "usb"), "--state-dir", str(state), "--json"])
    assert json.loads(out.output)["entries"] == 15
    out = r.invoke(main, ["sync", "now", "--state-dir", str(state), "--json"])
    assert out.exit_code == 0 and json.loads(out.output)["complete"]
    out = r.invoke(main, ["sync", "status", "--state-dir", str(state), "--lang", "en"])
    assert "Nothing pending; last acknowledged seq 15" in out.output and "issued " in out.output
    vi = r.invoke(main, ["sync", "status", "--state-dir", str(state), "--lang", "vi"]).output
    assert "Không có mục nào chờ đồng bộ" in vi and "phát hành cách đây" in vi  # not "oldest never", "0.0 days"
    found = foreign(vi, [res["device_id"], res["checkpoint_id"], server.url])
    assert not found, (found, vi)  # no English on a Vietnamese technician's screen
    out = r.invoke(main, ["server", "import", "--db", server.db_url, str(tmp_path / "usb"), "--json"])
    assert json.loads(out.output)["duplicates"] == 15
    log.close()


def test_sync_now_exits_1_when_the_server_is_gone(tmp_path, verdicts):
    (tmp_path / "s").mkdir()
    srv = ServerThread(tmp_path / "s" / "c.db").start()
    dev = provision_device(srv, tmp_path)
    srv.stop()
    record(dev, verdicts, 3)
    out = CliRunner().invoke(main, ["sync", "now", "--state-dir", str(dev.state), "--timeout", "1", "--json"])
    assert out.exit_code == 1 and json.loads(out.output.splitlines()[0])["error_code"] == "network"
    out = CliRunner().invoke(main, ["sync", "now", "--state-dir", str(tmp_path / "nowhere")])
    assert out.exit_code == 2


def test_provision_with_a_config_file_writes_it_and_keeps_it(server, tmp_path, make_bundle_bytes, root_key):
    """`checkpoint provision --config FILE`: the first run writes a config that `config check`
    accepts; a second run finds it, keeps it, and takes the server from it."""
    publish(server.storage, make_bundle_bytes(version=3), now_ms=now_ms(), root=root_key.public_key())
    state, cfg = tmp_path / "state", tmp_path / "etc" / "checkpoint.toml"
    r = CliRunner()
    out = r.invoke(main, ["provision", "--server", server.url, "--token", server.token(), "--state-dir", str(state),
                          "--config", str(cfg), "--trust-root", str(server.root_pub), "--json"])
    assert out.exit_code == 0, out.output
    res = json.loads(out.output)
    assert res["config"] == "written" and res["bundle_version"] == 3
    assert load(cfg).state_dir == state
    out = r.invoke(main, ["provision", "--token", server.token(), "--config", str(cfg), "--json"])
    assert out.exit_code == 0, out.output
    again = json.loads(out.output)
    assert again["config"] == "kept" and again["device_id"] == res["device_id"] and not again["key_created"]
    out = r.invoke(main, ["provision", "--token", "x"])
    assert out.exit_code == 2 and "--server" in out.output


@pytest.mark.parametrize("command", [["run", "--workers", "1"], ["run", "--workers", "2"],
                                     ["console", "--insecure-http"]])
def test_the_server_daemons_serve_when_they_say_so_and_a_ctrl_c_right_after_stops_them(tmp_path, command):
    """`checkpoint server run` and `server console` say they listen only once they answer with their
    signal handlers in place: a request sent the moment the line shows is answered, and a Ctrl-C (to
    the whole process group, as a terminal sends it) the moment it shows or shortly after, in each of
    many starts, ends every process of it without a traceback."""
    db = str(tmp_path / "c.db")
    open_storage(db).close()
    path = "/v1/health" if command[0] == "run" else "/login"
    for attempt in range(12):
        port = free_port()
        term = Terminal([sys.executable, "-m", "scanner", "server", *command, "--db", db,
                         "--listen", f"127.0.0.1:{port}"], cwd=ROOT, env={**os.environ, "CHECKPOINT_LANG": "en"})
        try:
            term.wait_for("listening on")
            if attempt == 0:  # no retry: the first request is answered
                assert requests.get(f"http://127.0.0.1:{port}{path}", timeout=HTTP_TIMEOUT).ok
            time.sleep((0.0, 0.0, 0.02, 0.1)[attempt % 4])
            term.ctrl_c()
            try:  # half the minute a stuck worker used to hold the supervisor for (generous for a loaded machine)
                term.finish(timeout=WAIT / 2)
            except subprocess.TimeoutExpired:
                pytest.fail(f"start {attempt}: still running {WAIT / 2:.0f} s after a Ctrl-C: {_group(term.proc.pid)}\n"
                            f"{term.text()}")
            pgid = term.proc.pid
            wait_for(lambda pgid=pgid: not _group(pgid),  # a worker too
                     lambda pgid=pgid: f"processes still running after a Ctrl-C: {_group(pgid)}", timeout=WAIT / 2)
            assert "Traceback" not in term.text(), f"start {attempt}:\n{term.text()}"
        finally:
            term.close()


def test_server_run_stops_with_the_reason_when_its_workers_cannot_start(tmp_path):
    """`server run --workers 2` with a TLS key that cannot be loaded: each worker dies before it
    serves, saying why in one line; the supervisor gives up after a few tries, exit 2, instead of
    starting another every few seconds until someone presses Ctrl-C, and leaves no process."""
    db = str(tmp_path / "c.db")
    open_storage(db).close()
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    (tmp_path / "key.pem").write_text("not a key\n")
    proc = subprocess.Popen([sys.executable, "-m", "scanner", "server", "run", "--db", db, "--workers", "2",
                             "--listen", f"127.0.0.1:{free_port()}", "--tls-cert", str(tmp_path / "cert.pem"),
                             "--tls-key", str(tmp_path / "key.pem")], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "CHECKPOINT_LANG": "en"},
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=WAIT * 2)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"still restarting its workers after {WAIT * 2:.0f} s:\n{err[-2000:]}")
    assert proc.returncode == 2, err
    last = err.strip().splitlines()[-1]
    assert "before it served, 3 times in a row" in last and "workers_failed" in last, err
    assert "listening on" not in err and "Traceback" not in err, err
    assert err.count("worker cannot serve: [SSL]") >= 3  # each worker's own reason, one line each
    wait_for(lambda: not _group(proc.pid), lambda: f"processes left: {_group(proc.pid)}", timeout=WAIT / 2)


def _group(pgid: int) -> list[str]:
    """The processes (pid and command line) still in process group ``pgid``."""
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rpartition(")")[2].split()
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            left.append(f"{pid} {cmd}")
    return left
