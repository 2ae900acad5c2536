"""Device ↔ server over real HTTP (uvicorn on 127.0.0.1) with real faults in between: refused
connections, 500s, 503 + Retry-After, timeouts, a reset mid-body, an answer lost after the commit,
a killed and restarted server, replays, unknown and revoked devices, bad batches, a long offline
backlog. After each, the server holds every logged entry exactly once and the device agrees."""
from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
import threading
import time
from pathlib import Path

import inotify_simple
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from support.devices import Device, assert_exactly_once, provision_device, record
from support.entries import bulk_fill, vm_steps
from support.proxy import FaultProxy
from support.servers import (
    BACKENDS,
    ServerProcess,
    ServerThread,
    db_url_for,
    free_port,
    running_server,
)
from support.waiting import WAIT, wait_for

from scanner.base.backoff import Backoff
from scanner.base.timeutil import now_ms
from scanner.cards import verifier
from scanner.store.entrylog import EntryLog
from sync.agent import SYNC_THREAD_NICE, SyncAgent, lower_thread_priority
from sync.client import SyncClient, TransientError
from sync.export import export_pending
from sync.provision import provision
from sync.server.imports import import_dir
from sync.server.storage import open_storage
from sync.server.tokens import issue_tokens
from sync.state import STATE_NAME, DeviceConfig, StateFile
from sync.wire import batch as batchmod
from sync.wire import identity, protocol
from sync.wire.http import SyncConfigError, check_server_url


@pytest.fixture(scope="module")
def verdicts(make_card, trust, now):
    return [verifier.verify(make_card(card_id=os.urandom(16), name=f"Nguyễn Văn {i}"), trust, now) for i in range(4)]


@pytest.fixture(params=BACKENDS)
def server(request, tmp_path):
    """The real server on uvicorn, on SQLite and on PostgreSQL (the same tests for both)."""
    with running_server(request.param, tmp_path) as srv:
        yield srv


def agent_for(device, *, url=None, read_timeout=10.0, **kw) -> SyncAgent:
    cfg = DeviceConfig.load(device.state)
    key = identity.load(device.state)
    client = SyncClient(url or cfg.server_url, key, device_id=cfg.device_id, connect_timeout=5,
                        read_timeout=read_timeout)
    kw.setdefault("backoff", Backoff(base_s=0.01, cap_s=0.05, jitter=True))
    return SyncAgent(device.state, device.log, client=client, **kw)


class Sleeps:
    """The sleep function given to sync_until_done: records the delays instead of waiting them."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def test_happy_path_every_entry_once(server, tmp_path, verdicts):
    dev = provision_device(server, tmp_path)
    record(dev, verdicts, 120)
    agent = agent_for(dev, max_batch=50, min_batch=10)
    res = agent.sync_once()
    assert res.complete and res.entries == 120 and res.stored == 120 and res.batches >= 3
    assert_exactly_once(server.storage, dev)
    st = StateFile(dev.state).load()
    assert st.last_acked_seq == 120 and st.last_error is None and st.clock_offset_ms is not None
    again = agent.sync_once()  # nothing left: no batch, nothing stored twice
    assert again.complete and again.batches == 0
    assert server.storage.stats().entries == 120
    agent.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_refused_connection_then_server_appears(tmp_path, verdicts, backend):
    port = free_port()
    (tmp_path / "server").mkdir()
    url = db_url_for(backend, tmp_path / "server" / "c.db")
    srv = ServerThread(tmp_path / "server" / "c.db", port=port, url=url).start()
    dev = provision_device(srv, tmp_path)
    srv.stop()  # the link goes down: nothing listens on the port any more
    record(dev, verdicts, 30)
    agent = agent_for(dev)
    res = agent.sync_once()
    assert not res.complete and res.error_code == "network" and res.pending == 30
    st = StateFile(dev.state).load()
    assert st.last_error_code == "network" and st.last_acked_seq == 0
    srv2 = ServerThread(tmp_path / "server" / "c.db", port=port, url=url).start()  # the same database
    try:
        res = agent.sync_until_done(60, sleep=Sleeps())
        assert res.complete
        assert_exactly_once(srv2.storage, dev)
        assert StateFile(dev.state).load().last_error is None
    finally:
        agent.close()
        srv2.stop()


def test_500s_are_retried_with_backoff(server, tmp_path, verdicts):
    dev = provision_device(server, tmp_path)
    record(dev, verdicts, 40)
    server.faults.fail(protocol.BATCHES, 500, times=3)
    sleeps = Sleeps()
    agent = agent_for(dev)
    res = agent.sync_until_done(120, sleep=sleeps)
    assert res.complete and len(sleeps.delays) == 3
    assert_exactly_once(server.storage, dev)
    agent.close()


def test_503_retry_after_is_honoured(server, tmp_path, verdicts):
    dev = provision_device(server, tmp_path)
    record(dev, verdicts, 10)
    server.faults.fail(protocol.BATCHES, 503, headers={"Retry-After": "7"})
    sleeps = Sleeps()
    agent = agent_for(dev)
    res = agent.sync_until_done(120, sleep=sleeps)
    assert res.complete
    assert len(sleeps.delays) == 1 and sleeps.delays[0] >= 7  # not earlier than the server asked
    assert_exactly_once(server.storage, dev)
    agent.close()


def test_server_busy_answers_503_with_retry_after(tmp_path, verdicts):
    (tmp_path / "s").mkdir()
    srv = ServerThread(tmp_path / "s" / "c.db", config={"max_inflight_batches": 0, "retry_after_s": 3}).start()
    try:
        dev = provision_device(srv, tmp_path)
        record(dev, verdicts, 5)
        res = agent_for(dev).sync_once()
        assert not res.complete and res.error_code == protocol.E_BUSY and 3 <= res.retry_after <= 6  # jittered
        assert srv.storage.stats().entries == 0 and dev.log.pending(0, 10)
    finally:
        srv.stop()


def test_timeout_then_retry(server, tmp_path, verdicts):
    dev = provision_device(server, tmp_path)
    record(dev, verdicts, 20)
    proxy = FaultProxy(server.port)
    proxy.arm("blackhole")
    agent = agent_for(dev, url=proxy.url, read_timeout=0.5)
    res = agent.sync_once()
    assert not res.complete and res.error_code == "timeout"
    res = agent.sync_until_done(120, sleep=Sleeps())
    assert res.complete
    assert_exactly_once(server.storage, dev)
    agent.close()
    proxy.close()


def test_slow_answer_after_commit_times_out_then_dedups(server, tmp_path, verdicts):
    dev = provision_device(server, tmp_path)
    record(dev, verdicts, 20)
    server.faults.delay_after(protocol.BATCHES, 1.5)  # committed, but the answer comes too late
    agent = agent_for(dev, read_timeout=0.5)
    res = agent.sync_once(trust=False)
    assert res.error_code == "timeout"
    wait_for(lambda: server.storage.stats().entries == 20, "the commit")
    assert len(dev.log.pending(0, 100)) == 20  # not marked: no acknowledgement arrived
    res = agent.sync_until_done(120, sleep=Sleeps())
    assert res.complete and res.stored == 0  # nothing stored twice
    assert_exactly_once(server.storage, dev)
    agent.close()


def test_connection_reset_mid_body(server, tmp_path, verdicts):
    dev = provision_device(server, tmp_path)
    record(dev, verdicts, 300)  # sealed holder details: a batch of some 100 KB
    proxy = FaultProxy(server.port)
    proxy.arm("cut", 5000)
    agent = agent_for(dev, url=proxy.url, max_batch=300)
    res = agent.sync_once(trust=False)
    assert not res.complete and res.error_code == "network" and proxy.done == ["cut"]
    assert server.storage.stats().entries == 0  # half a body stores nothing
    res = agent.sync_until_done(120, sleep=Sleeps())
    assert res.complete
    assert_exactly_once(server.storage, dev)
    agent.close()
    proxy.close()


def test_crash_between_marking_chunks_heals_without_duplicates(server, tmp_path, verdicts):
    """mark_synced writes 500 entries per transaction: a device that dies after the first chunk of
    an acknowledged batch finds the rest pending; the next contact marks them from the server's
    batch list, and nothing is stored twice."""
    dev = provision_device(server, tmp_path)
    record(dev, verdicts, 60)
    agent = agent_for(dev, max_batch=60)
    agent.client.heartbeat(agent.heartbeat_doc(StateFile(dev.state).load()))
    batch = agent.builder.build(0, 60, [], 0)
    agent.client.upload(batch.data)
    assert server.storage.stats().entries == 60
    dev.log.mark_synced(batch.info.batch_id, 1, 20)  # what the first chunk wrote before the crash
    assert [e.seq for e in dev.log.pending(0, 100)] == list(range(21, 61))
    res = agent.sync_until_done(120, sleep=Sleeps())
    assert res.complete and res.stored == 0 and dev.log.pending(0, 100) == []
    assert_exactly_once(server.storage, dev)
    assert server.storage.stats().batches == 1
    agent.close()


def test_response_lost_after_commit(server, tmp_path, verdicts):
    dev = provision_device(server, tmp_path)
    record(dev, verdicts, 60)
    proxy = FaultProxy(server.port)
    agent = agent_for(dev, url=proxy.url, max_batch=60)
    agent.client.heartbeat(agent.heartbeat_doc(StateFile(dev.state).load()))  # open the connection
    proxy.arm("drop_response")
    batch = agent.builder.build(0, 60, [], 0)
    with pytest.raises(Exception) as exc_info:
        agent.client.upload(batch.data)
    assert getattr(exc_info.value, "code", None) == "network" and proxy.done == ["drop_response"]
    assert server.storage.stats().entries == 60  # the server committed...
    assert len(dev.log.pending(0, 100)) == 60  # ...the device never heard it
    res = agent.sync_until_done(120, sleep=Sleeps())
    assert res.complete and res.stored == 0
    assert_exactly_once(server.storage, dev)
    assert server.storage.stats().batches == 1
    agent.close()
    proxy.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_server_killed_and_restarted_mid_upload(tmp_path, backend):
    (tmp_path / "s").mkdir()
    db = tmp_path / "s" / "c.db"
    url = db_url_for(backend, db)
    srv = ServerProcess(db, url=url).start()
    try:

        st = open_storage(url)
        token = issue_tokens(st, "gate-1", now_ms=now_ms())[0]
        res = provision(srv.url, token, tmp_path / "dev", trust_root=srv.root_pub)
        log = EntryLog(tmp_path / "dev" / "entries.db", device_id=res.device_id, checkpoint_id=res.checkpoint_id,
                       holder_details="none", synchronous="NORMAL")
        dev = Device(tmp_path / "dev", log, res.device_id, res.checkpoint_id)
        bulk_fill(log, 20_000)
        agent = agent_for(dev, min_batch=100, max_batch=200)
        stop = threading.Event()
        thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
        thread.start()
        wait_for(lambda: st.held_seq(dev.device_id) > 0, "first batches stored")
        srv.kill()  # SIGKILL in the middle of the upload
        srv.start()  # same port, same database
        wait_for(lambda: not log.pending(0, 1), "every entry acknowledged", timeout=300)
        stop.set()
        agent.wake()
        thread.join(60)
        assert_exactly_once(st, dev)
        assert st.stats().entries == 20_000
        st.close()
        agent.close()
    finally:
        srv.stop()


def test_replayed_batch_stores_nothing_and_answers_the_same(server, tmp_path, verdicts):
    dev = provision_device(server, tmp_path)
    record(dev, verdicts, 25)
    agent = agent_for(dev)
    captured = agent.builder.build(0, 100, [], 0)  # what an attacker on the wire would have seen
    assert agent.sync_once().complete
    first = server.storage.stats()
    url = server.url + protocol.BATCHES
    answers = [requests.post(url, data=captured.data, timeout=30) for _ in range(2)]
    assert all(a.status_code == 200 for a in answers)
    docs = [a.json() for a in answers]
    for d in docs:
        d.pop("server_time_ms")
    assert docs[0] == docs[1] and docs[0]["batch_id"] == captured.info.batch_id
    after = server.storage.stats()
    assert after.entries == first.entries == 25
    assert after.duplicates_dropped == first.duplicates_dropped + 50
    assert_exactly_once(server.storage, dev)
    agent.close()


def test_overlapping_batch_stores_only_new_entries(server, tmp_path, verdicts):
    dev = provision_device(server, tmp_path)
    entries = record(dev, verdicts, 30)
    key = identity.load(dev.state)
    url = server.url + protocol.BATCHES
    a = batchmod.build(entries[:20], key, device_id=dev.device_id, created_ms=1)
    b = batchmod.build(entries[10:], key, device_id=dev.device_id, created_ms=2)
    assert requests.post(url, data=a.data, timeout=30).json()["stored"] == 20
    ack = requests.post(url, data=b.data, timeout=30).json()
    assert (ack["stored"], ack["duplicates"], ack["held_seq"]) == (10, 10, 30)
    agent = agent_for(dev)
    assert agent.sync_once().complete  # the device learns both from the server's batch list
    assert_exactly_once(server.storage, dev)
    agent.close()


def test_batch_of_unknown_device_is_refused(server, tmp_path, verdicts):
    dev = provision_device(server, tmp_path)
    entries = record(dev, verdicts, 5)
    stranger = ed25519.Ed25519PrivateKey.generate()
    sid = identity.device_id(stranger)
    forged = [dataclasses.replace(e, device_id=sid) for e in entries]
    b = batchmod.build(forged, stranger, device_id=sid, created_ms=1)
    r = requests.post(server.url + protocol.BATCHES, data=b.data, timeout=30)
    assert r.status_code == 401 and r.json()["error"] == protocol.E_UNKNOWN_DEVICE
    # the right device id, the wrong key: the signature fails
    b2 = batchmod.build(entries, stranger, device_id=dev.device_id, created_ms=1)
    r2 = requests.post(server.url + protocol.BATCHES, data=b2.data, timeout=30)
    assert r2.status_code == 401 and r2.json()["error"] == protocol.E_BAD_SIGNATURE
    assert server.storage.stats().entries == 0
    # a device whose key the server never enrolled: refused, nothing quarantined, entries kept
    cfg = DeviceConfig.load(dev.state)
    agent = SyncAgent(dev.state, dev.log, client=SyncClient(cfg.server_url, stranger, device_id=sid))
    res = agent.sync_once()
    assert res.error_code == protocol.E_UNKNOWN_DEVICE and not res.complete
    st = StateFile(dev.state).load()
    assert "sync_auth_failed" in st.alarms and st.quarantined == [] and len(dev.log.pending(0, 10)) == 5
    agent.close()


def test_revoked_device_is_refused(server, tmp_path, verdicts):
    dev = provision_device(server, tmp_path)
    record(dev, verdicts, 10)
    agent = agent_for(dev)
    assert agent.sync_once().complete
    assert server.storage.revoke_device(dev.device_id, 1)
    record(dev, verdicts, 5)
    res = agent.sync_once()
    assert res.error_code == protocol.E_DEVICE_REVOKED and not res.complete
    st = StateFile(dev.state).load()
    assert "sync_auth_failed" in st.alarms and st.quarantined == []
    assert server.storage.stats().entries == 10 and len(dev.log.pending(0, 10)) == 5
    agent.close()


def test_bad_batch_is_quarantined_and_later_batches_go_on(server, tmp_path, verdicts):
    dev = provision_device(server, tmp_path)
    record(dev, verdicts, 10)
    record(dev, verdicts, 1, source_id="x" * 300)  # the server bounds source_id at 256 characters
    record(dev, verdicts, 10)
    agent = agent_for(dev, min_batch=1, max_batch=5)
    res = agent.sync_once()
    assert res.quarantined == 1 and res.pending == 1 and not res.complete
    st = StateFile(dev.state).load()
    assert "batch_quarantined" in st.alarms and len(st.quarantined) == 1
    q = st.quarantined[0]
    assert q["code"] == protocol.E_MALFORMED and q["first_seq"] <= 11 <= q["last_seq"]
    assert os.path.exists(q["file"])
    held = server.storage.entry_hashes(dev.device_id)
    local = {e.seq: e.hash for e in dev.log.entries()}
    quarantined = set(range(q["first_seq"], q["last_seq"] + 1))
    assert held == {s: h for s, h in local.items() if s not in quarantined}  # the rest arrived once
    assert server.storage.gaps(dev.device_id) == [(q["first_seq"], q["last_seq"])]
    agent.close()


def test_too_large_batches_shrink(tmp_path, verdicts):
    (tmp_path / "s").mkdir()
    srv = ServerThread(tmp_path / "s" / "c.db", config={"max_batch_bytes": 20_000}).start()
    try:
        dev = provision_device(srv, tmp_path)
        record(dev, verdicts, 200)
        agent = agent_for(dev, min_batch=10, max_batch=400)
        StateFile(dev.state).save(StateFile(dev.state).load().__class__(batch_size=400))
        res = agent.sync_once()
        assert res.complete
        assert StateFile(dev.state).load().batch_size < 400
        assert_exactly_once(srv.storage, dev)
        agent.close()
    finally:
        srv.stop()


def test_offline_export_then_import_then_device_learns(server, tmp_path, verdicts):
    dev = provision_device(server, tmp_path)
    record(dev, verdicts, 70)
    usb = tmp_path / "usb"
    res = export_pending(dev.state, dev.log, usb, batch_size=30)
    assert len(res.files) == 3 and res.entries == 70
    assert len(dev.log.pending(0, 100)) == 70  # still pending until the server says so
    imp = import_dir(server.storage, usb)
    assert (imp.batches, imp.stored, imp.refused) == (3, 70, [])
    again = import_dir(server.storage, usb)
    assert (again.stored, again.duplicates) == (0, 70)
    agent = agent_for(dev)
    res = agent.sync_once()
    assert res.complete and res.batches == 0  # learned from the server's batch list, nothing re-sent
    assert_exactly_once(server.storage, dev)
    agent.close()


def test_import_refuses_tampered_and_foreign_files(server, tmp_path, verdicts):
    dev = provision_device(server, tmp_path)
    record(dev, verdicts, 10)
    usb = tmp_path / "usb"
    res = export_pending(dev.state, dev.log, usb)
    path = res.files[0]
    p = Path(path)
    data = bytearray(p.read_bytes())
    data[-70] ^= 1
    p.write_bytes(bytes(data))
    (usb / "junk.ckb").write_bytes(b"not a batch")
    imp = import_dir(server.storage, usb)
    codes = sorted(c for _, c, _ in imp.refused)
    assert imp.stored == 0 and codes == sorted([protocol.E_MALFORMED, protocol.E_BAD_SIGNATURE])


def test_http_only_on_loopback():
    assert check_server_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert check_server_url("https://central.example.vn")
    with pytest.raises(SyncConfigError):
        check_server_url("http://central.example.vn")
    with pytest.raises(SyncConfigError):
        check_server_url("ftp://127.0.0.1")


def test_tls_with_ca_file(tmp_path, verdicts):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    certf, keyf = tmp_path / "cert.pem", tmp_path / "key.pem"
    certf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyf.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    (tmp_path / "s").mkdir()
    srv = ServerThread(tmp_path / "s" / "c.db", tls=(str(certf), str(keyf))).start()
    try:
        with pytest.raises(TransientError) as exc_info:  # the system CAs do not know this server
            provision(srv.url, srv.token(), tmp_path / "d0", trust_root=srv.root_pub)
        assert exc_info.value.code == "tls"
        dev = provision_device(srv, tmp_path, ca_file=str(certf))
        record(dev, verdicts, 5)
        agent = SyncAgent(dev.state, dev.log)  # CA file from device.json
        assert agent.sync_once().complete
        assert_exactly_once(srv.storage, dev)
        agent.close()
    finally:
        srv.stop()


def test_offline_backlog_of_100k_then_link_returns(tmp_path):
    port = free_port()
    (tmp_path / "s").mkdir()
    srv = ServerThread(tmp_path / "s" / "c.db", port=port).start()

    res = provision(srv.url, srv.token(), tmp_path / "dev", trust_root=srv.root_pub)
    srv.stop()  # the link goes away for a long time
    log = EntryLog(tmp_path / "dev" / "entries.db", device_id=res.device_id, checkpoint_id=res.checkpoint_id,
                   holder_details="none", synchronous="NORMAL")
    dev = Device(tmp_path / "dev", log, res.device_id, res.checkpoint_id)
    bulk_fill(log, 100_000)
    agent = agent_for(dev)
    assert agent.sync_once().error_code == "network"
    srv = ServerThread(tmp_path / "s" / "c.db", port=port).start()
    try:
        res = agent.sync_until_done(600, sleep=Sleeps())
        assert res.complete and res.entries == 100_000
        assert srv.storage.stats().entries == 100_000
        assert_exactly_once(srv.storage, dev)
        assert StateFile(dev.state).load().last_acked_seq == 100_000
    finally:
        agent.close()
        srv.stop()
        log.close()


# ---------------------------------------------------------------- the state file and coalescing


def _state_writes(watch: inotify_simple.INotify) -> int:
    """How many times sync-state.json was written (replaced or rewritten) since the last call."""
    return sum(1 for ev in watch.read(timeout=0) if ev.name == STATE_NAME)


def test_a_stream_of_scans_makes_few_uploads_and_no_state_writes(tmp_path, verdicts):
    """The agent's loop with scans coming one every 50 ms, each waking it as the daemon does: the
    uploads are coalesced (not one per scan) and sync-state.json is not rewritten on every pass
    (nothing durable changed); its progress is written at the clean stop."""
    n = 40
    with running_server("sqlite", tmp_path) as srv:
        dev = provision_device(srv, tmp_path)
        watch = inotify_simple.INotify()
        watch.add_watch(dev.state, inotify_simple.flags.MOVED_TO | inotify_simple.flags.CLOSE_WRITE)
        agent = agent_for(dev)
        stop = threading.Event()
        thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
        record(dev, verdicts, 1)
        thread.start()
        try:
            # the first pass is over once its state is published (after its write): only then are
            # its writes (heartbeat numbers, trust) all seen, and not counted
            wait_for(lambda: srv.storage.stats().entries == 1 and not dev.log.pending(0, 1)
                     and agent.snapshot().last_success_ms is not None, "the first contact")
            _state_writes(watch)  # the first contact's writes (heartbeat numbers, trust) are not counted
            batches = srv.storage.stats().batches
            for _ in range(n):
                record(dev, verdicts, 1)
                agent.wake()
                time.sleep(0.05)  # the pace of a busy gate, not a timing assertion
            wait_for(lambda: srv.storage.stats().entries == n + 1 and not dev.log.pending(0, 1),
                     "every scan acknowledged")
            assert _state_writes(watch) == 0
            uploads = srv.storage.stats().batches - batches
            assert 1 <= uploads <= n // 5, uploads
        finally:
            stop.set()
            thread.join(WAIT)
            agent.close()
        assert not thread.is_alive()
        assert _state_writes(watch) == 1  # the progress, once, at the stop
        st = StateFile(dev.state).load()
        assert st.last_acked_seq == n + 1 and st.last_success_ms is not None
        assert_exactly_once(srv.storage, dev)
        watch.close()


def test_heartbeat_numbers_go_on_after_a_crash(server, tmp_path, verdicts):
    """Progress kept in memory is lost in a crash; heartbeat numbers are reserved on disk first, so
    the next run's heartbeats are never taken for old ones, and the entries heal exactly once."""
    dev = provision_device(server, tmp_path)
    record(dev, verdicts, 30)
    a = agent_for(dev, max_batch=10, min_batch=10)
    for _ in range(3):
        assert a.sync_once(save_progress=False).complete
    sent = a.snapshot().hb_seq
    a.client.close()  # the process dies: no close(), the progress in memory is gone
    assert StateFile(dev.state).load().hb_reserved >= sent
    record(dev, verdicts, 5)
    b = agent_for(dev)
    assert b.sync_once().complete
    (status,) = [d for d in server.storage.devices() if d.device.device_id == dev.device_id]
    assert status.heartbeat["hb_seq"] == b.snapshot().hb_seq > sent  # kept: newer than every old one
    assert_exactly_once(server.storage, dev)
    b.close()


def test_what_another_process_writes_to_the_state_is_kept(server, tmp_path, verdicts):
    """The agent keeps its state in memory between passes; an export (another process) writing the
    file meanwhile is merged in, not overwritten, and the agent's progress is kept too."""
    dev = provision_device(server, tmp_path)
    record(dev, verdicts, 10)
    agent = agent_for(dev)
    assert agent.sync_once(save_progress=False).complete
    record(dev, verdicts, 5)
    res = export_pending(dev.state, dev.log, tmp_path / "usb")
    assert res.entries == 5
    assert agent.sync_once(save_progress=False).complete
    agent.close()
    st = StateFile(dev.state).load()
    assert len(st.exported) == 1 and st.last_acked_seq == 15
    assert_exactly_once(server.storage, dev)


def _thread_nice(tid: int) -> int:
    """A thread's nice value as the kernel reports it (field 19 of /proc/self/task/<tid>/stat)."""
    stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[16])


def test_lower_thread_priority_lowers_the_calling_thread_only():
    base = _thread_nice(threading.get_native_id())
    seen: dict[str, int | None] = {}

    def lowered() -> None:
        seen["returned"] = lower_thread_priority(3)
        seen["kernel"] = _thread_nice(threading.get_native_id())

    thread = threading.Thread(target=lowered)
    thread.start()
    thread.join()
    assert seen == {"returned": min(19, base + 3), "kernel": min(19, base + 3)}
    assert _thread_nice(threading.get_native_id()) == base  # the caller's (the scan lane's) is as it was


def test_the_sync_thread_runs_nicer_than_the_scan_lane(tmp_path, verdicts):
    """The appliance's sync thread (SyncAgent.run) lowers its own priority while it uploads: the
    kernel reports the thread SYNC_THREAD_NICE nicer than the rest of the process."""
    with running_server("sqlite", tmp_path) as srv:
        dev = provision_device(srv, tmp_path)
        record(dev, verdicts, 3)
        agent = agent_for(dev)
        stop = threading.Event()
        thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
        thread.start()
        try:
            wait_for(lambda: srv.storage.stats().entries == 3, "the upload")
            assert thread.native_id is not None
            base = _thread_nice(threading.get_native_id())
            assert _thread_nice(thread.native_id) == min(19, base + SYNC_THREAD_NICE)
        finally:
            stop.set()
            thread.join(WAIT)
            agent.close()


def test_the_backlog_a_contact_reports_does_not_read_every_entry(tmp_path, verdicts):
    """What a contact reads for its heartbeat and result (pending entries, the oldest one's time)
    costs the same with 2,000 or 30,000 acknowledged entries behind it: it never scans the log."""
    with running_server("sqlite", tmp_path) as srv:
        dev = provision_device(srv, tmp_path)
        agent = agent_for(dev)
        try:
            costs = []
            for n in (2_000, 28_000):
                bulk_fill(dev.log, n)
                res = agent.sync_until_done(120, sleep=Sleeps())
                assert res.complete
                fresh = record(dev, verdicts, 5)
                (depth, oldest), steps = vm_steps(dev.log, agent.pending_count)
                assert (depth, oldest) == (5, fresh[0].at_ms)
                assert agent.heartbeat_doc(StateFile(dev.state).load())["queue_depth"] == 5
                costs.append(steps)
                assert agent.sync_until_done(60, sleep=Sleeps()).complete
            assert costs[1] <= costs[0] + 10, costs
        finally:
            agent.close()
