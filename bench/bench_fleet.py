"""Fleet load: 200 simulated devices push signed batches at the same moment to the reference server
(`checkpoint server run` in its own process) on 127.0.0.1, a fixed number of batches each, on
SQLite and on PostgreSQL side by side. Measures server ingest entries/s, the acknowledgement
latency a device sees (first send to its 200, 503-busy waits included; p50/p95/max), CPU of the
server (and of PostgreSQL), and checks that every entry is stored exactly once.

Two admission settings: the server's defaults (32 batches in flight, then 503 + Retry-After 2 s,
which devices honour) and admission open (--max-inflight 256: every batch is queued, which
measures what the server and its database can ingest). Uploads carry CK-Sig2 headers, as devices
send them; the per-address limits are lifted, since all devices share 127.0.0.1 here. The peer is
the raw cost of the server's own work per batch (open_batch: signature, inflate, parse) in one
thread of this process.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import requests

from scanner.base.timeutil import now_ms
from sync.wire import protocol

from .procs import ServerProcess, cpu_s
from .timing import table


def _tree_cpu_s(root_pid: int | None) -> float:
    """CPU seconds of a process and its children (PostgreSQL's postmaster and backends)."""
    if root_pid is None:
        return 0.0
    total = cpu_s(root_pid)
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", encoding="ascii") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == root_pid:
                total += cpu_s(int(d))
    return total


class _Fleet:
    """Device keys and their signed batches (made once, sent to each backend)."""

    def __init__(self, devices: int, batches: int, per_batch: int) -> None:
        from cryptography.hazmat.primitives.asymmetric import ed25519

        from scanner.store.entry import Entry, chain_hash, hash_fields
        from sync.wire import batch as batchmod
        from sync.wire import identity

        self.devices = []
        now = now_ms()
        n = batches * per_batch
        for d in range(devices):
            key = ed25519.Ed25519PrivateKey.generate()
            dev = identity.device_id(key)
            cp = f"checkpoint-{d // 2:04d}"
            prev, entries = bytes(32), []
            for i in range(n):
                entry_id = str(uuid.uuid4())
                e = Entry(seq=i + 1, entry_id=entry_id, device_id=dev, checkpoint_id=cp,
                          direction="in" if i % 2 else "out", at_ms=now - (n - i) * 3000, clock="synced",
                          source="camera", source_id="cam0", decision="accept", reason="ok", format="CK1",
                          card_id=os.urandom(16).hex(), issuer="VN-HUE", kid="3q2+7wABAgM=", prev_hash=prev,
                          sealed=os.urandom(133))  # the size of sealed holder details (v2)
                e = replace(e, hash=chain_hash(prev, hash_fields(e)))
                entries.append(e)
                prev = e.hash
            data = [batchmod.build(entries[b:b + per_batch], key, device_id=dev, created_ms=now).data
                    for b in range(0, n, per_batch)]
            self.devices.append((key, dev, cp, {e.seq: e.hash for e in entries}, data))
        self.entries = devices * n
        self.bytes = sum(len(b) for d in self.devices for b in d[4])

    def enroll(self, storage) -> None:
        from sync.server.tokens import token_hash
        from sync.wire import identity

        for key, dev, cp, _, _ in self.devices:
            tok = f"fleet-token-{dev}"
            storage.add_tokens([token_hash(tok)], cp, now_ms() + 3_600_000, now_ms())
            storage.enroll(token_hash(tok), dev, identity.public_raw(key), now_ms())

    def parse_rate(self) -> float:
        """The peer: open_batch (what the server does to every batch before storing it), entries/s."""
        from sync.wire.batch import open_batch

        sample = self.devices[: max(1, len(self.devices) // 10)]
        t0 = time.perf_counter()
        n = 0
        for key, _, _, _, data in sample:
            pub = key.public_key()
            for b in data:
                n += open_batch(b, pub).info.count
        return n / (time.perf_counter() - t0)


def _push_all(fleet: _Fleet, url: str, deadline_s: float) -> dict:
    """Every device in its own thread, all released at once; each sends its batches one after
    another, waiting Retry-After (at least) after a 503."""
    start = threading.Barrier(len(fleet.devices) + 1)
    lat: list[float] = []
    busy = [0]
    failures: list[str] = []
    lock = threading.Lock()
    stop_at = [0.0]

    def device(key, dev: str, data: list[bytes]) -> None:
        with requests.Session() as s:
            start.wait(120)
            for b in data:
                t0 = time.perf_counter()
                while True:
                    if time.perf_counter() > stop_at[0]:
                        with lock:
                            failures.append("deadline")
                        return
                    auth = protocol.auth_header_v2(dev, key, "POST", protocol.BATCHES, now_ms(), b)
                    try:
                        r = s.post(url + protocol.BATCHES, data=b, timeout=300,
                                   headers={"Content-Type": protocol.BATCH_TYPE, "Authorization": auth})
                    except requests.RequestException as exc:
                        with lock:
                            failures.append(type(exc).__name__)
                        return
                    if r.status_code in (429, 503):
                        with lock:
                            busy[0] += 1
                        time.sleep(float(r.headers.get("Retry-After", "1")))
                        continue
                    break
                with lock:
                    if r.status_code == 200:
                        lat.append(time.perf_counter() - t0)
                    else:
                        failures.append(f"HTTP {r.status_code}")

    threads = [threading.Thread(target=device, args=(d[0], d[1], d[4]), daemon=True) for d in fleet.devices]
    for t in threads:
        t.start()
    cpu0 = time.process_time()
    start.wait(120)
    t0 = time.perf_counter()
    stop_at[0] = t0 + deadline_s
    for t in threads:
        t.join(max(1.0, stop_at[0] + 30 - time.perf_counter()))
    wall = time.perf_counter() - t0
    return {"wall": wall, "lat": sorted(lat), "busy": busy[0], "failures": failures,
            "client_cpu": time.process_time() - cpu0}


def _one(fleet: _Fleet, backend: str, url: str, keys: Path, max_inflight: int, deadline_s: float,
         pg_pid: int | None) -> dict:
    from sync.server.storage import open_storage

    st = open_storage(url)
    try:
        fleet.enroll(st)
    finally:
        st.close()
    # every simulated device comes from 127.0.0.1 here (in the field each has its own address)
    server = ServerProcess(url, "--keys", str(keys), "--max-inflight", str(max_inflight), "--max-per-peer", "10000",
                           "--max-connections-per-peer", "100000", bench="fleet")
    try:
        s_cpu0, pg_cpu0 = cpu_s(server.pid), _tree_cpu_s(pg_pid)
        res = _push_all(fleet, server.url, deadline_s)
        res["server_cpu"] = cpu_s(server.pid) - s_cpu0
        res["db_cpu"] = _tree_cpu_s(pg_pid) - pg_cpu0
    finally:
        server.stop()
    st = open_storage(url)
    try:
        exact = all(st.entry_hashes(dev) == hashes for _, dev, _, hashes, _ in fleet.devices)
        s = st.stats()
    finally:
        st.close()
    res["exactly_once"] = exact and s.entries == fleet.entries and s.conflicts == 0 and s.chain_problems == 0
    res["stored"] = s.entries
    return res


def run(quick: bool) -> None:
    devices, batches, per_batch = (20, 2, 50) if quick else (200, 5, 200)
    deadline_s = 120.0 if quick else 600.0
    from .pgcluster import PgCluster, find_bin_dir

    t0 = time.perf_counter()
    fleet = _Fleet(devices, batches, per_batch)
    made_s = time.perf_counter() - t0
    peer = fleet.parse_rate()
    bin_dir = find_bin_dir()
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="ckbench-fleet-") as tmpname:
        tmp = Path(tmpname)
        cluster = None
        try:
            if bin_dir is None:
                notes.append("PostgreSQL: not measured (no /usr/lib/postgresql/*/bin: install the postgresql package)")
            else:
                cluster = PgCluster(bin_dir, durable=True)
                import psycopg
                with psycopg.connect(cluster.url(), autocommit=True) as conn:
                    for i in range(2):
                        conn.execute(f"CREATE DATABASE fleet{i}")
            for setting, inflight in (("defaults (32 in flight, Retry-After 2 s)", 32), ("admission open", 256)):
                for backend in ("sqlite", "postgresql"):
                    if backend == "postgresql" and cluster is None:
                        continue
                    i = 0 if inflight == 32 else 1
                    url = str(tmp / f"fleet{i}.db") if backend == "sqlite" else cluster.url(f"fleet{i}")
                    res = _one(fleet, backend, url, tmp / "keys", inflight, deadline_s,
                               cluster.postmaster_pid() if (cluster and backend == "postgresql") else None)
                    lat = res["lat"] or [float("nan")]
                    p95 = lat[min(len(lat) - 1, int(len(lat) * 0.95))]
                    rate = res["stored"] / res["wall"]
                    rows.append([backend, setting, f"{rate:,.0f}", f"{rate / peer:.2f}",
                                 f"{statistics.median(lat) * 1000:,.0f}", f"{p95 * 1000:,.0f}",
                                 f"{lat[-1] * 1000:,.0f}", f"{res['busy']}", f"{res['server_cpu']:.1f}",
                                 f"{res['db_cpu']:.1f}" if backend == "postgresql" else "-", f"{res['client_cpu']:.1f}",
                                 "yes" if res["exactly_once"] and not res["failures"] else
                                 f"NO ({res['stored']:,} stored, {len(res['failures'])} failed)"])
        finally:
            if cluster is not None:
                cluster.stop()
    print(f"== fleet: {devices} devices x {batches} batches x {per_batch} entries = {fleet.entries:,} entries "
          f"({fleet.bytes / fleet.entries:.0f} bytes/entry on the wire), all devices released at once against "
          f"`checkpoint server run` on 127.0.0.1 (batches made in {made_s:.1f} s beforehand)")
    print(table(["backend", "admission", "ingest entries/s", "x peer", "ack p50 ms", "ack p95 ms", "ack max ms",
                 "503 busy", "server CPU s", "PostgreSQL CPU s", "devices CPU s", "each entry once"], rows, left=2))
    print(f"peer: open_batch (signature, inflate, parse) alone in one thread: {peer:,.0f} entries/s; "
          f"{os.cpu_count()} cpus shared by the server, the database and the {devices} device threads "
          f"(load average {os.getloadavg()[0]:.1f})")
    for n in notes:
        print(n)
    print()
