"""The fleet bench's load generator (bench/loadgen.py) against the real server on 127.0.0.1: each
batch sent signed, every answer read whole and counted as it was (acknowledged, busy, refused), and
a request signature over a body hash the device already has is the one it would make itself."""
from __future__ import annotations

import hashlib
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from support.entries import chain_entries
from support.servers import ServerThread, enroll_direct

from bench import loadgen
from scanner.base.timeutil import now_ms
from sync.wire import batch as batchmod
from sync.wire import protocol


def _device(storage, where, batches: int, per_batch: int = 30) -> dict:
    """An enrolled device and its signed batches written as files: the load generator's spec entry."""
    key, dev = enroll_direct(storage, "cp-1")
    now, n = now_ms(), batches * per_batch
    es = chain_entries(dev, "cp-1", [now - 1000 * (n - i) for i in range(n)], [f"{i:032x}" for i in range(n)])
    paths, ids = [], []
    for b in range(batches):
        built = batchmod.build(es[b * per_batch:(b + 1) * per_batch], key, device_id=dev, created_ms=now)
        path = where / f"{dev}-{b}.ckb"
        path.write_bytes(built.data)
        paths.append(str(path))
        ids.append(batchmod.read_header(built.data).batch_id)
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return {"key": raw.hex(), "device_id": dev, "source": "127.0.0.1", "batches": paths, "ids": ids, "n": n}


def test_a_signature_over_a_body_hash_the_caller_has_is_the_one_made_from_the_body():
    key = ed25519.Ed25519PrivateKey.generate()
    body = b"a batch body" * 100
    made = protocol.auth_header_v2("dev-1", key, "POST", protocol.BATCHES, 1_700_000_000_000, body, nonce="ab" * 16)
    given = protocol.auth_header_v2("dev-1", key, "POST", protocol.BATCHES, 1_700_000_000_000, body,
                                    nonce="ab" * 16, body_sha256=hashlib.sha256(body).hexdigest())
    assert given == made


def test_the_load_generator_sends_every_batch_signed_and_counts_each_answer(tmp_path):
    (tmp_path / "s").mkdir()
    srv = ServerThread(tmp_path / "s" / "c.db").start()
    try:
        devices = [_device(srv.storage, tmp_path, batches=3) for _ in range(3)]
        stranger = _device(srv.storage, tmp_path, batches=1)
        srv.storage.revoke_device(stranger["device_id"], now_ms())
        out = loadgen.run({"url": srv.url, "start_at": time.time(), "deadline_s": 60, "devices": [*devices, stranger]})
        assert sorted(out["acked"]) == sorted(i for d in devices for i in d["ids"])
        assert len(out["lat"]) == len(out["acked_at"]) == 9 and all(s > 0 for s in out["lat"])
        assert len(out["failures"]) == 1 and out["failures"][0].startswith("HTTP 403")
        assert out["busy"] == out["errors"] == 0 and out["cpu_s"] > 0
        for d in devices:
            assert sorted(srv.storage.entry_hashes(d["device_id"])) == list(range(1, d["n"] + 1))
    finally:
        srv.stop()


def test_the_load_generator_waits_the_retry_after_of_a_busy_answer_until_its_deadline(tmp_path):
    (tmp_path / "s").mkdir()
    srv = ServerThread(tmp_path / "s" / "c.db", config={"max_inflight_batches": 0, "retry_after_s": 1}).start()
    try:
        device = _device(srv.storage, tmp_path, batches=1)
        t0 = time.monotonic()
        out = loadgen.run({"url": srv.url, "start_at": time.time(), "deadline_s": 2.5, "devices": [device]})
        assert out["acked"] == [] and out["failures"] == ["deadline"]
        assert 1 <= out["busy"] <= 3 and out["busy_codes"] == {protocol.E_BUSY: out["busy"]}
        assert len(out["busy_at"]) == out["busy"] and time.monotonic() - t0 >= 2.5
    finally:
        srv.stop()
