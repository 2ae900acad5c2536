"""Ingest at scale: admission caps per process, Retry-After spread with jitter,
`server run` with several worker processes on one port, and exactly once when the same batch
reaches two server processes of one PostgreSQL database at the same moment."""
from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
from dataclasses import replace

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ed25519
from support import postgres
from support.entries import chain_entries
from support.servers import ServerProcess, ServerThread, enroll_direct
from support.waiting import wait_for

from scanner.base.timeutil import now_ms
from sync.server import chain
from sync.server.limits import Admission, Busy, jittered
from sync.server.storage import open_storage
from sync.wire import batch as batchmod
from sync.wire import identity, protocol


def test_admission_caps_batches_and_bytes_in_progress_and_spreads_the_retries():
    adm = Admission(max_batches=3, max_bytes=1000, retry_after_s=2, rng=random.Random(3))
    with contextlib.ExitStack() as held:
        held.enter_context(adm.hold(5000))  # one batch is always admitted when none is in progress
        with pytest.raises(Busy):
            adm.hold(1).__enter__()  # over the bytes
    with contextlib.ExitStack() as held:
        for _ in range(3):
            held.enter_context(adm.hold(100))
        waits = set()
        for _ in range(40):
            with pytest.raises(Busy) as busy:
                adm.hold(1).__enter__()  # over the count
            assert busy.value.status == 503 and busy.value.code == protocol.E_BUSY
            waits.add(busy.value.retry_after)
        assert waits == {2, 3, 4}
    assert adm.batches == 0 and adm.bytes == 0 and adm.refused == 41
    with adm.hold(900), adm.hold(100):  # room again
        pass


def test_retry_after_is_jittered_between_the_least_and_twice_it():
    rng = random.Random(1)
    seen = {jittered(2, rng) for _ in range(200)}
    assert seen == {2, 3, 4}
    assert {jittered(0, rng) for _ in range(50)} == {1, 2}


def _batch(storage, n: int = 20, first_seq: int = 1, key=None, dev=None, prev=bytes(32)):
    if key is None:
        key, dev = enroll_direct(storage, "cp-1")
    now = now_ms()
    es = chain_entries(dev, "cp-1", [now - 1000 * (n - i) for i in range(n)],
                       [f"{first_seq + i:032x}" for i in range(n)], first_seq=first_seq, prev_hash=prev)
    return key, dev, es, batchmod.build(es, key, device_id=dev, created_ms=now).data


def test_the_chain_check_of_a_batch_finds_the_first_row_that_does_not_match_its_hash():
    key = ed25519.Ed25519PrivateKey.generate()
    dev = identity.device_id(key)
    now = now_ms()
    es = chain_entries(dev, "cp-1", [now - 1000 * (40 - i) for i in range(40)], [f"{i:032x}" for i in range(40)])
    es = _relinked([replace(e, sealed=os.urandom(40 + i), sealed_sha256=None) if i % 3 else e  # blobs and none
                    for i, e in enumerate(es)])
    rows = batchmod.open_batch(batchmod.build(es, key, device_id=dev, created_ms=now).data, key.public_key()).rows
    assert chain.altered(rows) is None
    assert all(chain.row_hash(r) == r[18] for r in rows)
    field = batchmod.RECEIVED_FIELDS.index
    bad = list(rows)
    bad[7] = bad[7][:field("reason")] + ("expired",) + bad[7][field("reason") + 1:]
    bad[30] = bad[30][:field("sealed")] + (b"other",)
    problem = chain.altered(bad)
    assert problem is not None and (problem.kind, problem.seq) == ("altered", 8)
    problem = chain.altered(bad[10:])
    assert problem is not None and problem.seq == 31


def _relinked(es: list) -> list:
    """Entries chained again after a change (each prev_hash the hash of the one before)."""
    out, prev = [], bytes(32)
    for e in es:
        linked = replace(e, prev_hash=prev)
        out.append(replace(linked, hash=linked.computed_hash()))
        prev = out[-1].hash
    return out


def _post(url: str, key, dev: str, data: bytes) -> requests.Response:
    auth = protocol.auth_header_v2(dev, key, "POST", protocol.BATCHES, now_ms(), data)
    return requests.post(url + protocol.BATCHES, data=data, timeout=60,
                         headers={"Content-Type": protocol.BATCH_TYPE, "Authorization": auth})


def test_busy_answers_spread_devices_over_time(tmp_path):
    """A fleet told to come back at the same moment would come back at the same moment: each busy
    answer draws its Retry-After from [s, 2s]."""
    (tmp_path / "s").mkdir()
    srv = ServerThread(tmp_path / "s" / "c.db", config={"max_inflight_batches": 0, "retry_after_s": 2}).start()
    try:
        key, dev, _, data = _batch(srv.storage)
        waits = []
        for _ in range(30):
            r = _post(srv.url, key, dev, data)
            assert r.status_code == 503 and r.json()["error"] == protocol.E_BUSY
            waits.append(int(r.headers["Retry-After"]))
        assert set(waits) <= {2, 3, 4} and len(set(waits)) > 1
    finally:
        srv.stop()


def _children(pid: int) -> set[int]:
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", encoding="ascii") as fh:
                    stat = fh.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{d}/cmdline", "rb") as fh:
                    cmd = fh.read()
            except OSError:
                continue
            if int(stat[1]) == pid and b"multiprocessing" in cmd and b"resource_tracker" not in cmd:
                out.add(int(d))
    return out


def test_server_run_workers_share_one_port_and_a_killed_one_is_replaced(tmp_path):
    (tmp_path / "s").mkdir()
    url = postgres.cluster().new_schema()
    srv = ServerProcess(tmp_path / "s" / "c.db", url=url, args=("--workers", "2")).start()
    try:
        workers = wait_for(lambda: w if len(w := _children(srv.proc.pid)) == 2 else None, "two workers")
        storage = open_storage(url)
        try:
            key, dev, es, data = _batch(storage)
            assert _post(srv.url, key, dev, data).json()["held_seq"] == 20
            os.kill(min(workers), signal.SIGKILL)
            wait_for(lambda: len(w := _children(srv.proc.pid)) == 2 and min(workers) not in w, "a worker replaced")
            for i in range(4):  # whichever worker answers
                _, _, es, data = _batch(storage, 5, 21 + 5 * i, key, dev, es[-1].hash)
                assert _post(srv.url, key, dev, data).json()["held_seq"] == 25 + 5 * i
            assert storage.stats().entries == 40
        finally:
            storage.close()
    finally:
        srv.stop()
    assert not _children(srv.proc.pid)


def test_the_same_batches_at_two_server_processes_at_once_are_stored_once(tmp_path):
    """Two `server run` processes of one database (what a load balancer has behind it): every
    batch of several devices sent to both at the same moment, and again; each entry stored once,
    both answers acknowledge it."""
    (tmp_path / "s").mkdir()
    url = postgres.cluster().new_schema()
    a = ServerProcess(tmp_path / "s" / "c.db", url=url).start()
    b = ServerProcess(tmp_path / "s" / "c.db", url=url).start()
    storage = open_storage(url)
    try:
        devices = []
        for _ in range(6):
            key, dev, es, first = _batch(storage, 30)
            _, _, es2, second = _batch(storage, 30, 31, key, dev, es[-1].hash)
            devices.append((key, dev, {e.seq: e.hash for e in es + es2}, [first, second]))
        answers: list[tuple[str, int, dict]] = []
        lock = threading.Lock()
        start = threading.Barrier(2 * len(devices))

        def send(server, key, dev, batches):
            start.wait(60)
            for data in batches + batches:
                r = _post(server.url, key, dev, data)
                with lock:
                    answers.append((dev, r.status_code, r.json()))

        threads = [threading.Thread(target=send, args=(s, key, dev, batches))
                   for key, dev, _, batches in devices for s in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(answers) == 4 * 2 * len(devices) and {s for _, s, _ in answers} == {200}
        for _, dev, hashes, _ in devices:
            assert storage.entry_hashes(dev) == hashes
            assert {doc["batch_id"] for d, _, doc in answers if d == dev} == {
                batchmod.read_header(x).batch_id for x in devices[[d[1] for d in devices].index(dev)][3]}
        s = storage.stats()
        assert s.entries == 60 * len(devices) and s.conflicts == 0 and s.chain_problems == 0
    finally:
        storage.close()
        a.stop()
        b.stop()


def test_a_batch_acknowledged_by_one_process_is_a_duplicate_at_the_other(tmp_path):
    (tmp_path / "s").mkdir()
    url = postgres.cluster().new_schema()
    a = ServerProcess(tmp_path / "s" / "c.db", url=url).start()
    b = ServerProcess(tmp_path / "s" / "c.db", url=url).start()
    storage = open_storage(url)
    try:
        key, dev, _, data = _batch(storage, 10)
        first = _post(a.url, key, dev, data).json()
        again = _post(b.url, key, dev, data).json()
        first.pop("server_time_ms"), again.pop("server_time_ms")
        assert first == again and first["held_seq"] == 10 and first["stored"] == 10
        assert storage.stats().entries == 10
    finally:
        storage.close()
        a.stop()
        b.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_format_1_and_format_2_batches_of_one_device_are_both_stored_once(tmp_path, backend):
    """A device still sending format 1 and one sending format 2 are both accepted; the same run
    sent again in the other format is a duplicate (one batch id), and every entry is stored once."""
    (tmp_path / "s").mkdir()
    url = postgres.cluster().new_schema() if backend == "postgresql" else None
    srv = ServerProcess(tmp_path / "s" / "c.db", url=url).start()
    storage = open_storage(url or str(tmp_path / "s" / "c.db"))
    try:
        assert requests.get(srv.url + protocol.HEALTH, timeout=60).json()["batch_formats"] == [1, 2]
        key, dev, es, v1 = _batch(storage, 30)
        v2 = batchmod.build(es[:10], key, device_id=dev, created_ms=now_ms(), version=2).data
        assert batchmod.read_header(v2).version == 2
        first = _post(srv.url, key, dev, v2)
        assert first.status_code == 200, first.text
        assert first.json()["stored"] == 10
        later = batchmod.build(es[10:], key, device_id=dev, created_ms=now_ms()).data  # format 1
        assert _post(srv.url, key, dev, later).json()["stored"] == 20
        again = batchmod.build(es[:10], key, device_id=dev, created_ms=now_ms()).data  # the first run, format 1
        doc = _post(srv.url, key, dev, again).json()
        assert doc["stored"] == 10 and doc["held_seq"] == 10  # the first answer: nothing stored twice
        tail = batchmod.build(es[10:], key, device_id=dev, created_ms=now_ms(), version=2).data
        assert _post(srv.url, key, dev, tail).json()["stored"] == 20  # the first answer again
        assert storage.entry_hashes(dev) == {e.seq: e.hash for e in es}
        s = storage.stats()
        assert s.entries == 30 and s.batches == 2 and s.batches_replayed == 2
        assert s.conflicts == 0 and s.chain_problems == 0
        assert v1 != v2
    finally:
        storage.close()
        srv.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_device_revoked_after_its_first_batch_has_the_next_refused_and_stored_nowhere(tmp_path, backend):
    """A server keeps the keys of devices whose batches it took (no look-up per batch): a device
    revoked since is still refused, by the storing of its batch, and nothing of it is stored."""
    (tmp_path / "s").mkdir()
    url = postgres.cluster().new_schema() if backend == "postgresql" else None
    srv = ServerProcess(tmp_path / "s" / "c.db", url=url, args=("--workers", "1")).start()
    storage = open_storage(url or str(tmp_path / "s" / "c.db"))
    try:
        key, dev, es, _ = _batch(storage, 30)
        first = batchmod.build(es[:10], key, device_id=dev, created_ms=now_ms()).data
        assert _post(srv.url, key, dev, first).json()["stored"] == 10
        assert storage.revoke_device(dev, now_ms())
        later = batchmod.build(es[10:], key, device_id=dev, created_ms=now_ms(), version=2).data
        for body in (later, first):  # new entries, and a batch stored before
            res = _post(srv.url, key, dev, body)
            assert res.status_code == 403 and res.json()["error"] == protocol.E_DEVICE_REVOKED, res.text
        auth = protocol.auth_header_v2(dev, key, "GET", protocol.ACKS, now_ms(), b"")
        res = requests.get(srv.url + protocol.ACKS, headers={"Authorization": auth}, timeout=60)
        assert res.status_code == 403 and res.json()["error"] == protocol.E_DEVICE_REVOKED
        assert storage.entry_hashes(dev) == {e.seq: e.hash for e in es[:10]}
        assert storage.stats().batches == 1
    finally:
        srv.stop()
        storage.close()


def test_a_batch_sent_under_another_devices_request_signature_is_refused(tmp_path):
    (tmp_path / "s").mkdir()
    srv = ServerProcess(tmp_path / "s" / "c.db", args=("--workers", "1")).start()
    storage = open_storage(str(tmp_path / "s" / "c.db"))
    try:
        key_a, dev_a, _, batch_a = _batch(storage, 5)
        key_b, dev_b, _, batch_b = _batch(storage, 5)
        res = _post(srv.url, key_a, dev_a, batch_b)  # A's request, B's (validly signed) batch
        assert res.status_code == 401 and res.json()["error"] == protocol.E_BAD_SIGNATURE, res.text
        assert storage.stats().entries == 0
        assert _post(srv.url, key_b, dev_b, batch_b).json()["stored"] == 5
        assert _post(srv.url, key_a, dev_a, batch_a).json()["stored"] == 5
    finally:
        srv.stop()
        storage.close()


def test_a_batch_s_device_is_looked_up_on_threads_of_its_own_not_anyio_s(tmp_path, monkeypatch):
    """The first batch of a device seen by a process has its key looked up in the database on the
    server's own look-up threads: not through anyio's thread pool, whose backend a worker would
    otherwise load (and pay for) in the middle of the first burst of batches, and not on the threads
    that store batches, which a flood of requests naming unknown devices would then hold up."""
    (tmp_path / "s").mkdir()
    srv = ServerThread(tmp_path / "s" / "c.db").start()
    try:
        looked_up_on: list[str] = []
        real_device = srv.storage.device

        def device(device_id):
            looked_up_on.append(threading.current_thread().name)
            return real_device(device_id)

        monkeypatch.setattr(srv.storage, "device", device)
        key, dev, _, data = _batch(srv.storage, 5)
        res = _post(srv.url, key, dev, data)
        assert res.status_code == 200 and res.json()["stored"] == 5, res.text
        assert looked_up_on and all(name.startswith("device-lookup") for name in looked_up_on), looked_up_on
    finally:
        srv.stop()
