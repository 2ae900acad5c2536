"""Ingest at scale: admission by the queued work's estimated wait, Retry-After spread with jitter,
`server run` with several worker processes on one port, and exactly once when the same batch
reaches two server processes of one PostgreSQL database at the same moment."""
from __future__ import annotations

import os
import random
import signal
import threading

import pytest
import requests
from support import postgres
from support.entries import chain_entries
from support.servers import ServerProcess, ServerThread, enroll_direct
from support.waiting import wait_for

from scanner.base.timeutil import now_ms
from sync.server.limits import Admission, Busy, jittered
from sync.server.storage import open_storage
from sync.wire import batch as batchmod
from sync.wire import protocol


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_admission_refuses_beyond_the_queue_target_and_says_how_long_to_wait():
    clock = Clock()
    adm = Admission(max_batches=100, max_bytes=10_000_000, target_s=2.0, retry_after_s=1, rng=random.Random(7),
                    clock=clock)
    # no rate measured yet: only the caps apply
    with adm.hold(9_000_000):
        assert adm.rate is None
        clock.t += 0.5  # busy time under the window: no rate yet
    assert adm.rate is None
    with adm.hold(1_000_000):
        clock.t += 0.5  # 10 MB in 1 s... and a second window to average with
    assert adm.rate == pytest.approx(10_000_000)
    with adm.hold(1_000_000):
        clock.t += 1.0
    with adm.hold(1_000_000), adm.hold(1_000_000):
        clock.t += 10.0  # 2 MB in 10 s, averaged with the estimate before: about 1 MB/s
    assert adm.rate == pytest.approx(0.5 * (0.5 * 10_000_000 + 0.5 * 1_000_000) + 0.5 * 100_000)
    adm.rate = 1_000_000.0  # (the estimate, set to a round figure for what follows)
    with adm.hold(1_500_000):  # 1.5 s of work queued: admitted
        with pytest.raises(Busy) as busy:
            with adm.hold(600_000):  # 2.1 s: beyond the target
                pass
        assert busy.value.status == 503 and busy.value.code == protocol.E_BUSY
        assert 1 <= busy.value.retry_after <= 2
        with adm.hold(400_000):  # 1.9 s: admitted
            assert adm.batches == 2
    # one batch is always admitted when nothing is queued, however long it takes
    with adm.hold(9_000_000):
        pass
    # the hard caps
    capped = Admission(max_batches=1, max_bytes=10, target_s=2.0, retry_after_s=3, clock=clock)
    with capped.hold(5), pytest.raises(Busy) as busy:
        with capped.hold(1):
            pass
    assert 3 <= busy.value.retry_after <= 6 and capped.refused == 1


def test_retry_after_is_jittered_between_the_least_and_twice_it():
    rng = random.Random(1)
    seen = {jittered(2, rng) for _ in range(200)}
    assert seen == {2, 3, 4}
    assert {jittered(0, rng) for _ in range(50)} == {1, 2}


def _batch(storage, n: int = 20, first_seq: int = 1, key=None, dev=None, prev=bytes(32)):
    if key is None:
        key, dev = enroll_direct(storage, "cp-1")
    now = now_ms()
    es = chain_entries(dev, "cp-1", [now - 1000 * (n - i) for i in range(n)], [f"{first_seq + i:032x}" for i in range(n)],
                       first_seq=first_seq, prev_hash=prev)
    return key, dev, es, batchmod.build(es, key, device_id=dev, created_ms=now).data


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
        for key, dev, hashes, _ in devices:
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
