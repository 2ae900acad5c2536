"""Sync: a 100k-entry backlog uploaded to the reference server on 127.0.0.1 (entries/s end to end,
bytes per entry on the wire, device CPU), the longest stall of a 1 ms scan-loop ticker while it
uploads (batches built in a separate process vs in a thread, and the raw cost of serialising
10k entries as one JSON document, the peer), server ingest entries/s, and trust-update sizes
with a province-sized revocation list (full bundle vs delta)."""
from __future__ import annotations

import gc
import gzip
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Self

from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.appliance import runtime
from scanner.base.backoff import Backoff
from scanner.base.timeutil import now_ms
from scanner.cards import keys as keymod
from scanner.cards.bundle import BundleKey, make_bundle, open_bundle
from scanner.cards.scan import Scan
from scanner.cards.verdict import Holder
from scanner.store import sealing
from scanner.store.entry import Entry, chain_hash, hash_fields, to_export_dict
from scanner.store.entrylog import EntryLog
from scanner.store.schema import INSERT_SQL, entry_row
from sync import credential
from sync.agent import InlineBuilder, ProcessBuilder, SyncAgent, build_next
from sync.provision import provision
from sync.server.keys import load_or_create_sealing_key
from sync.server.sqlite import SQLiteStorage
from sync.server.tokens import issue_tokens
from sync.state import DeviceConfig
from sync.wire import delta as deltamod
from sync.wire import identity
from sync.wire.batch import open_batch
from sync.wire.protocol import device_id_for

from .bench_entrylog import _verdicts
from .procs import ServerProcess, cpu_s, vouch
from .timing import median, table

MB = 1024 * 1024


def _fill(log: EntryLog, n: int, server_pub) -> None:
    """n chained entries as EntryLog writes them, holder details really sealed (realistic sizes)."""
    holder = Holder("Nguyễn Thị Thanh Hương", "1987-03-15", "079******1234")
    sealer = sealing.Sealer(server_pub)  # as EntryLog seals: sessions of up to 1024 blobs
    seq, prev = 0, bytes(32)
    at = now_ms() - n * 2000
    rows = []
    for i in range(n):
        entry_id = str(uuid.uuid4())
        e = Entry(seq=seq + 1, entry_id=entry_id, device_id=log.device_id, checkpoint_id=log.checkpoint_id,
                  direction="in" if i % 2 else "out", at_ms=at + i * 2000, clock="synced", source="camera",
                  source_id="cam0", decision="accept", reason="ok", format="CK1", card_id=os.urandom(16).hex(),
                  issuer="VN-HUE", kid="3q2+7wABAgM=", prev_hash=prev,
                  sealed=sealer.seal(holder, entry_id))
        e = replace(e, hash=chain_hash(prev, hash_fields(e)))
        rows.append(entry_row(e))
        seq, prev = e.seq, e.hash
    conn = sqlite3.connect(str(log.path), isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(INSERT_SQL, rows)
    conn.execute("COMMIT")
    conn.close()


class _Ticker:
    """A thread that wants to run every 1 ms, like a scan loop polling its inputs; records how
    late it got to run (the stall)."""
    def __init__(self) -> None:
        self.worst = 0.0
        self.lates: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            t0 = time.perf_counter()
            time.sleep(0.001)
            late = time.perf_counter() - t0 - 0.001
            self.lates.append(late)
            self.worst = max(self.worst, late)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def over(self, limit: float = 0.005) -> float:
        """Ticks later than ``limit``, per 10,000 ticks."""
        return 10_000 * sum(1 for x in self.lates if x > limit) / max(1, len(self.lates))

    def p99(self) -> float:
        s = sorted(self.lates)
        return s[int(len(s) * 0.99)] if s else 0.0


class _ScanProbe:
    """The verdict worker beside the sync: records a scan every 50 ms through its own EntryLog on
    the same file (as the appliance's worker does beside the sync thread's log) and times each
    record() (verify is not included: it does not touch the log)."""
    def __init__(self, path: Path, verdicts, every_s: float = 0.05) -> None:
        cfg = DeviceConfig.load(path.parent)
        self.log = EntryLog(path, device_id=cfg.device_id, checkpoint_id=cfg.checkpoint_id,
                            sealing_key=credential.load(path.parent).sealing_key, create=False)
        self.verdicts, self.every_s = verdicts, every_s
        self.times: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self.stop.wait(self.every_s):
            v = self.verdicts[i % len(self.verdicts)]
            i += 1
            t0 = time.perf_counter()
            self.log.record(Scan("probe", "camera", "cam0", time.time()), v, direction="in")
            self.times.append(time.perf_counter() - t0)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.log.close()

    def p50(self) -> float:
        return median(self.times) if self.times else 0.0

    def worst(self) -> float:
        return max(self.times, default=0.0)


def _upload_run(pristine: Path, tmp: Path, mode: str, n: int, tag: str, verdicts) -> dict:
    run_dir = tmp / f"run-{tag}"
    shutil.copytree(pristine, run_dir / "dev")
    db = run_dir / "central.db"
    shutil.copy(pristine.parent / "central-keys" / "sealing.key", run_dir / "sealing.key")
    server_cpus, device_cpus = _split_cpus()
    server = ServerProcess(str(db), bench="sync", nice=5, cpus=server_cpus, idle=True)
    affinity = os.sched_getaffinity(0)
    if device_cpus:  # this thread, and what it starts from now on (ticker, sync, builder process)
        os.sched_setaffinity(0, device_cpus)
    try:
        st = SQLiteStorage(db)
        token = issue_tokens(st, "market-east", now_ms=now_ms())[0]
        provision(server.url, token, run_dir / "dev", trust_root=vouch(st, run_dir, server.url))
        cfg = DeviceConfig.load(run_dir / "dev")
        log = EntryLog(run_dir / "dev" / "entries.db", device_id=cfg.device_id, checkpoint_id=cfg.checkpoint_id,
                       create=False)
        builder = (ProcessBuilder(log.path, run_dir / "dev", cfg.device_id) if mode != "thread"
                   else InlineBuilder(log, __import__("sync.wire.identity", fromlist=["x"]).load(run_dir / "dev"),
                                      cfg.device_id))
        agent = SyncAgent(run_dir / "dev", log, builder=builder, backoff=Backoff(0.05, cap_s=1, jitter=True))
        sizes: list[int] = []
        upload = agent.client.upload

        def counting_upload(data: bytes):
            sizes.append(len(data))
            return upload(data)
        agent.client.upload = counting_upload
        if mode != "thread":  # start the worker before timing (a daemon does it once at boot)
            builder.build(10**12, 1, [], 0)
        server_cpu0 = cpu_s(server.pid)
        child_pids = [builder.pid] if mode != "thread" else []
        switch = sys.getswitchinterval()
        tuning = runtime.tune_for_scanning() if mode == "appliance" else None  # what `checkpoint run` does
        child_cpu0 = sum(cpu_s(p) for p in child_pids)
        gc_worst = [0.0]
        gc_started = [0.0]

        def gc_watch(phase, info):
            if phase == "start":
                gc_started[0] = time.perf_counter()
            else:
                gc_worst[0] = max(gc_worst[0], time.perf_counter() - gc_started[0])
        gc.callbacks.append(gc_watch)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        try:
            with _Ticker() as ticker, _ScanProbe(log.path, verdicts) as probe:
                res = agent.sync_until_done(600, trust=False)
        finally:
            gc.callbacks.remove(gc_watch)
            if tuning is not None:
                runtime.restore(tuning)
            sys.setswitchinterval(switch)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        child_cpu = sum(cpu_s(p) for p in child_pids) - child_cpu0
        server_cpu = cpu_s(server.pid) - server_cpu0
        if res.complete:  # the probe's last scans, recorded while the upload finished
            res = agent.sync_until_done(600, trust=False)
        stored = st.stats().entries
        st.close()
        agent.close()
        log.close()
        if not res.complete or stored != n + len(probe.times):
            raise SystemExit(f"sync bench: upload incomplete ({res}, server holds {stored} of "
                             f"{n} + {len(probe.times)} probe scans)")
        return {"wall": wall, "cpu": cpu, "child_cpu": child_cpu, "server_cpu": server_cpu,
                "device_cpus": len(device_cpus or affinity),
                "bytes": sum(sizes), "requests": len(sizes), "stall": ticker.worst, "p99": ticker.p99(),
                "over": ticker.over(), "gc": gc_worst[0], "scan_p50": probe.p50(), "scan_worst": probe.worst(),
                "scans": len(probe.times)}
    finally:
        os.sched_setaffinity(0, affinity)
        server.stop()


def _split_cpus() -> tuple[set[int] | None, set[int] | None]:
    """Where the server and the device run: nowhere in particular (None, None) unless
    $CHECKPOINT_BENCH_PIN is set: then the server on the last CPU, the device (bench process, its
    threads, the builder) on the others."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or not os.environ.get("CHECKPOINT_BENCH_PIN"):
        return None, None
    return {cpus[-1]}, set(cpus[:-1])


def _idle_stall(pristine: Path, tmp: Path, verdicts, seconds: float = 8.0) -> dict:
    """The noise floor: the ticker's worst and p99 lateness, ticks over 5 ms late per 10k, and the
    scan probe's record() times, with no sync running, on the device's CPUs (as in the uploads)."""
    shutil.copytree(pristine, tmp / "idle")
    affinity = os.sched_getaffinity(0)
    device_cpus = _split_cpus()[1]
    if device_cpus:
        os.sched_setaffinity(0, device_cpus)
    try:
        with _Ticker() as ticker, _ScanProbe(tmp / "idle" / "entries.db", verdicts) as probe:
            time.sleep(seconds)
    finally:
        os.sched_setaffinity(0, affinity)
    return {"worst": ticker.worst, "p99": ticker.p99(), "over": ticker.over(), "scan_p50": probe.p50(),
            "scan_worst": probe.worst(), "scans": len(probe.times)}


def _json_peer_stall(log: EntryLog, n: int = 10_000) -> float:
    """The peer: the longest ticker stall while serialising n entries as one JSON document."""
    entries = log.pending(0, n)
    docs = [to_export_dict(e) for e in entries]
    worst = 0.0
    for _ in range(3):
        with _Ticker() as ticker:
            time.sleep(0.01)
            json.dumps(docs)
            time.sleep(0.01)
        worst = max(worst, ticker.worst)
    return worst


def _ingest_rate(pristine: Path, tmp: Path, n: int) -> tuple[float, float]:
    """Server ingest without HTTP: open_batch + storage.ingest, entries/s; and open_batch alone."""
    key = identity.load(pristine)
    cfg = json.loads((pristine / "device.json").read_text())
    log = EntryLog(pristine / "entries.db", create=False)
    batches, cursor = [], 0
    while True:
        sb = build_next(log, key, cfg["device_id"], cursor, 5000, [], 1)
        if sb is None:
            break
        batches.append(sb.data)
        cursor = sb.info.last_seq
    log.close()
    st = SQLiteStorage(tmp / "ingest.db")
    st.add_tokens(["h"], "market-east", 10**15, 0)
    raw = identity.public_raw(key)
    st.enroll("h", device_id_for(raw), raw, 0)
    pub = ed25519.Ed25519PublicKey.from_public_bytes(raw)
    t0 = time.perf_counter()
    parsed = [open_batch(d, pub) for d in batches]
    t_parse = time.perf_counter() - t0
    for p in parsed:
        st.ingest(p, "push", now_ms())
    total = time.perf_counter() - t0
    st.close()
    return n / total, n / t_parse


def _trust_sizes(n_revoked: int) -> list[list]:
    root = ed25519.Ed25519PrivateKey.generate()
    iss = ed25519.Ed25519PrivateKey.generate()
    k = BundleKey(keymod.kid_of(iss.public_key()), "EdDSA", "VN-HUE", iss.public_key())
    cards = [os.urandom(16) for _ in range(n_revoked)]
    old = make_bundle(root, version=1, issued_at=1, expires_at=2**40, keys=[k], revoked_cards=cards)
    new = make_bundle(root, version=2, issued_at=2, expires_at=2**40, keys=[k],
                      revoked_cards=cards[100:] + [os.urandom(16) for _ in range(1000)])
    delta = deltamod.make_delta(root, old, new)
    roots = [root.public_key()]
    cur = open_bundle(old, roots)
    t0 = time.perf_counter()
    deltamod.apply_delta(old, cur, delta, roots)
    t_apply = time.perf_counter() - t0
    t0 = time.perf_counter()
    open_bundle(new, roots, min_version=1)
    t_full = time.perf_counter() - t0
    gz = len(gzip.compress(new, 6))
    return [
        ["full bundle (v2)", f"{len(new) / MB:.1f} MiB", f"{len(new) / len(delta):.0f}x",
         f"{t_full:.2f} s (open_bundle)"],
        ["full bundle, gzip on the wire", f"{gz / MB:.1f} MiB", f"{gz / len(delta):.0f}x", "-"],
        ["delta v1 -> v2 (+1000, -100 cards)", f"{len(delta) / 1024:.0f} KiB", "1x",
         f"{t_apply:.2f} s (apply + open_bundle)"],
    ]


def run(quick: bool) -> None:
    n = 5_000 if quick else 100_000
    rounds = 1 if quick else 3
    with tempfile.TemporaryDirectory(prefix="ckbench-sync-") as tmpname:
        tmp = Path(tmpname)

        keys_dir = tmp / "central-keys"
        server_key = load_or_create_sealing_key(keys_dir)
        pristine = tmp / "pristine"
        db0 = tmp / "setup.db"
        shutil.copy(keys_dir / "sealing.key", tmp / "sealing.key")
        server = ServerProcess(str(db0), bench="sync", nice=5)
        try:
            st = SQLiteStorage(db0)
            provision(server.url, issue_tokens(st, "market-east", now_ms=now_ms())[0], pristine,
                      trust_root=vouch(st, tmp, server.url))
            st.close()
        finally:
            server.stop()
        cfg = json.loads((pristine / "device.json").read_text())
        log = EntryLog(pristine / "entries.db", device_id=cfg["device_id"], checkpoint_id=cfg["checkpoint_id"],
                       sealing_key=server_key.public_key())
        t0 = time.perf_counter()
        _fill(log, n, server_key.public_key())
        fill_s = time.perf_counter() - t0
        peer_stall = _json_peer_stall(log, min(10_000, n))
        log.close()
        verdicts = _verdicts(64)[0]
        idle = _idle_stall(pristine, tmp, verdicts)
        results: dict[str, list[dict]] = {"appliance": [], "process": [], "thread": []}
        for r in range(rounds):
            modes = ["appliance", "process", "thread"]
            for mode in (modes if r % 2 == 0 else modes[::-1]):
                results[mode].append(_upload_run(pristine, tmp, mode, n, f"{mode}-{r}", verdicts))
        ingest, parse = _ingest_rate(pristine, tmp, n)
    server_cpus, device_cpus = _split_cpus()
    where = (f"server pinned to CPU {sorted(server_cpus)}, device (this process, its threads, the builder) to "
             f"CPUs {sorted(device_cpus)}" if server_cpus else "server (SCHED_IDLE) and device share the CPUs")
    print(f"== sync: {n:,} entries backlog (holder details sealed) to the reference server on 127.0.0.1 "
          f"(uvicorn subprocess, nice 5); {where}; {rounds} round(s) per mode, medians; generated in {fill_s:.1f} s")
    rows = []
    for mode, label in (("appliance", "appliance: builder process + runtime tuning"),
                        ("process", "the same, default interpreter settings"),
                        ("thread", "batches built in the sync thread (sync now)")):
        rs = results[mode]
        wall = median([x["wall"] for x in rs])
        rows.append([label, f"{n / wall:,.0f}", f"{median([x['bytes'] for x in rs]) / n:.0f}",
                     f"{median([x['requests'] for x in rs]):.0f}",
                     f"{median([x['cpu'] + x['child_cpu'] for x in rs]):.1f}",
                     f"{median([x['cpu'] for x in rs]):.1f}", f"{median([x['server_cpu'] for x in rs]):.1f}",
                     f"{max(x['stall'] for x in rs) * 1000:.1f} ({median([x['stall'] for x in rs]) * 1000:.1f})",
                     f"{median([x['p99'] for x in rs]) * 1000:.2f}",
                     f"{median([x['over'] for x in rs]):.1f}", f"{max(x['gc'] for x in rs) * 1000:.1f}",
                     (f"{median([x['scan_p50'] for x in rs]) * 1000:.2f} / "
                      f"{max(x['scan_worst'] for x in rs) * 1000:.1f}")])
    print(table(["mode", "entries/s e2e", "bytes/entry", "requests", "device CPU s", "of it main proc s",
                 "server CPU s", "worst stall ms (median round)", "p99 late ms", ">5 ms /10k ticks",
                 "worst GC pause ms",
                 "scan commit p50 / worst ms"], rows))
    worst = max(x["stall"] for x in results["appliance"])
    print(f"peer: json.dumps of {min(10_000, n):,} entries as one document stalls the ticker "
          f"{peer_stall * 1000:.1f} ms; worst stall during the upload (the appliance's way) = "
          f"{worst / peer_stall:.2f}x that; {worst * 1000:.1f} ms: goal under 5 ms "
          + ("met" if worst < 0.005 else "MISSED"))
    print(f"noise floor: the same ticker and scan probe without a sync, {idle['scans']} scans in 8 s: ticker worst "
          f"{idle['worst'] * 1000:.1f} ms, p99 {idle['p99'] * 1000:.2f} ms, {idle['over']:.1f} ticks >5 ms late per "
          f"10k; scan commit p50 {idle['scan_p50'] * 1000:.2f} ms, worst {idle['scan_worst'] * 1000:.1f} ms "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus)")
    a = results["appliance"]
    print(f"scan commits during the upload (appliance, {sum(x['scans'] for x in a)} scans, a scan every 50 ms): "
          f"p50 {median([x['scan_p50'] for x in a]) / idle['scan_p50']:.2f}x and worst "
          f"{max(x['scan_worst'] for x in a) / idle['scan_worst']:.2f}x the same probe without a sync")
    print(f"server ingest without HTTP (open_batch + SQLite commit): {ingest:,.0f} entries/s; "
          f"open_batch alone {parse:,.0f} entries/s")
    print()
    size = 20_000 if quick else 1_000_000
    print(f"== trust update with {size:,} revoked cards: 1,000 added and 100 removed")
    print(table(["what the device downloads", "size", "vs delta", "device time"], _trust_sizes(size)))
    print()
