"""Sync: a 100k-entry backlog uploaded to the reference server on 127.0.0.1 (entries/s end to end,
bytes per entry on the wire, CPU) while the scan lane verifies and records a card every 50 ms
through the real EntryLog; the lane's latency during the upload against the same lane idle (the
stall goal), server ingest entries/s, and trust-update sizes with a province-sized revocation
list (full bundle vs delta)."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Self

from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.appliance import runtime
from scanner.appliance.daemon import TICK_S
from scanner.base.backoff import Backoff
from scanner.base.timeutil import now_ms
from scanner.cards import keys as keymod
from scanner.cards import verifier
from scanner.cards.bundle import BundleKey, make_bundle, open_bundle
from scanner.cards.scan import Scan
from scanner.cards.trust import TrustStore
from scanner.cards.verdict import Holder
from scanner.store import sealing
from scanner.store.entry import Entry, chain_hash, hash_fields
from scanner.store.entrylog import EntryLog
from scanner.store.schema import INSERT_SQL, entry_row
from sync import credential
from sync.agent import SYNC_THREAD_NICE, InlineBuilder, ProcessBuilder, SyncAgent, build_next, lower_thread_priority
from sync.provision import provision
from sync.server.keys import load_or_create_sealing_key
from sync.server.sqlite import SQLiteStorage
from sync.server.tokens import issue_tokens
from sync.state import DeviceConfig
from sync.wire import delta as deltamod
from sync.wire import identity
from sync.wire.batch import open_batch
from sync.wire.protocol import device_id_for

from . import fixtures
from .files import bench_dir, fs_type
from .goals import judge
from .procs import ServerProcess, cpu_s, vouch
from .timing import median, percentile, run_queue_wait_s, table
from .world import bundle_bytes, world

GUARD_S = 0.1  # scans due this close to a contact count neither as the upload's nor as idle

MB = 1024 * 1024


def _fill(log: EntryLog, n: int, server_pub) -> None:
    """n chained entries as EntryLog writes them, holder details really sealed (realistic sizes)."""
    holder = Holder("Nguyễn Thị Thanh Hương", "1987-03-15", "079******1234")
    sealer = sealing.Sealer(server_pub)  # as EntryLog seals: sessions of up to 1024 blobs
    seq, prev = 0, bytes(32)
    device_id, checkpoint_id = log.device_id, log.checkpoint_id
    if device_id is None or checkpoint_id is None:
        raise SystemExit("sync bench: the entry log has no device or checkpoint id")
    at = now_ms() - n * 2000
    rows = []
    for i in range(n):
        entry_id = str(uuid.uuid4())
        e = Entry(seq=seq + 1, entry_id=entry_id, device_id=device_id, checkpoint_id=checkpoint_id,
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


class _Lane:
    """The scan lane beside the sync, as the appliance runs it: every 50 ms a card is verified and
    recorded through its own EntryLog on the same file (the lane's: WAL checkpoints at idle only),
    while a supervisor thread asks that log for an idle checkpoint every tick, as the daemon's does.
    Each scan's latency runs from when it was due to its commit, so a late wake-up counts too."""

    def __init__(self, path: Path, cards: list[str], trust, every_s: float = 0.05) -> None:
        cfg = DeviceConfig.load(path.parent)
        self.log = EntryLog(path, device_id=cfg.device_id, checkpoint_id=cfg.checkpoint_id,
                            sealing_key=credential.load(path.parent).sealing_key, create=False,
                            wal_checkpoints="idle")
        self.cards, self.trust, self.every_s = cards, trust, every_s
        # (due, due -> committed, record() alone, of due -> committed the time waiting for a CPU or None), s
        self.scans: list[tuple[float, float, float, float | None]] = []
        self.checkpoints = 0
        self.priority: runtime.LanePriority | None = None  # how the lane's thread ran
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._scan, daemon=True),
                         threading.Thread(target=self._supervise, daemon=True)]

    def _scan(self) -> None:
        self.priority = runtime.prioritise_lane()  # as the appliance's verdict lane (its default)
        i, due = 0, time.perf_counter() + self.every_s
        while not self._stop.is_set():
            waited0 = run_queue_wait_s()  # read before the sleep: a late wake-up's wait counts too
            wait = due - time.perf_counter()
            if wait > 0 and self._stop.wait(wait):
                return
            text = self.cards[i % len(self.cards)]
            i += 1
            v = verifier.verify(text, self.trust, time.time())
            t0 = time.perf_counter()
            self.log.record(Scan(text, "camera", "cam0", time.time()), v, direction="in")
            t1 = time.perf_counter()
            waited1 = run_queue_wait_s()  # read after the commit's time is taken: it costs the figures nothing
            self.scans.append((due, t1 - due, t1 - t0,
                               None if waited0 is None or waited1 is None else waited1 - waited0))
            due += self.every_s
            if due < t1:  # fell behind by more than a period: the next scan is due now, not in the past
                due = t1

    def _supervise(self) -> None:
        while not self._stop.wait(TICK_S):
            if self.log.checkpoint_when_idle() is not None:
                self.checkpoints += 1

    def __enter__(self) -> Self:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        self.log.close()


def _figures(scans: list[tuple[float, float, float, float | None]]) -> dict:
    """The lane's latency figures, and the same scans' latency less the time the lane thread waited
    for a CPU (where the kernel says): what the stall would be if a core were always free."""
    lat, rec = [x[1] for x in scans], [x[2] for x in scans]
    out: dict[str, float | None] = {
        "scans": len(lat), "p50_ms": percentile(lat, 0.5) * 1e3, "p99_ms": percentile(lat, 0.99) * 1e3,
        "max_ms": max(lat) * 1e3, "record_p50_ms": percentile(rec, 0.5) * 1e3,
        "record_p99_ms": percentile(rec, 0.99) * 1e3, "record_max_ms": max(rec) * 1e3,
        "cpu_wait_p99_ms": None, "p99_less_cpu_wait_ms": None}
    waits = [x[3] for x in scans]
    if all(w is not None for w in waits):
        out["cpu_wait_p99_ms"] = percentile([w for w in waits if w is not None], 0.99) * 1e3
        out["p99_less_cpu_wait_ms"] = percentile([x[1] - (x[3] or 0.0) for x in scans], 0.99) * 1e3
    return out


def _lane_text(p: runtime.LanePriority | None) -> str:
    """How the lane's thread was scheduled, for the table's header and the results file."""
    if p is None:
        return "not started"
    if p.realtime:
        return f"SCHED_FIFO {p.priority}"
    return f"a normal thread (real time refused: {p.refused})" if p.refused else "a normal thread"


def _pair(upload: dict, idle: dict, key: str) -> str:
    """"upload / idle" of one of the lane's figures that may be missing (None)."""
    if upload[key] is None or idle[key] is None:
        return "-"
    return f"{upload[key]:.2f} / {idle[key]:.2f}"


def _provision(pristine: Path, run_dir: Path, server: ServerProcess, db: Path):

    shutil.copytree(pristine, run_dir / "dev")
    st = SQLiteStorage(db)
    token = issue_tokens(st, "market-east", now_ms=now_ms())[0]
    provision(server.url, token, run_dir / "dev", trust_root=vouch(st, run_dir, server.url))
    return st


class _OneBatchPerContact:
    """The real builder, paced: it builds the first batch a contact asks for and then says nothing
    is left, so each contact uploads one batch."""

    def __init__(self, builder) -> None:
        self.builder, self.left = builder, 1

    def build(self, *args):
        if self.left <= 0:
            return None
        self.left -= 1
        return self.builder.build(*args)

    def __getattr__(self, name: str):
        return getattr(self.builder, name)


def _upload(run_dir: Path, n: int, lane: _Lane, st, builder_kind: str = "process") -> dict:
    """The appliance's sync of the backlog (``builder_kind``: the builder process as shipped, or
    `[sync] builder = "inline"`: batches built on the sync thread; runtime tuning), one contact (heartbeat,
    batch list, one batch) at a time, each followed by a pause as long as it took, while the lane
    scans: its scans due during a contact are the upload's, those due in a pause (from GUARD_S after
    the contact) the idle lane's, so a slow phase of the machine hits both alike."""

    cfg = DeviceConfig.load(run_dir / "dev")
    log = EntryLog(run_dir / "dev" / "entries.db", create=False, wal_checkpoints="idle")  # the agent's own
    builder = (ProcessBuilder(log.path, run_dir / "dev", cfg.device_id) if builder_kind == "process"
               else InlineBuilder(log, identity.load(run_dir / "dev"), cfg.device_id))  # as the daemon makes them
    paced = _OneBatchPerContact(builder)
    agent = SyncAgent(run_dir / "dev", log, builder=paced, backoff=Backoff(0.05, cap_s=1, jitter=True))
    sizes: list[int] = []
    upload = agent.client.upload

    def counting_upload(data: bytes):
        sizes.append(len(data))
        return upload(data)
    agent.client.upload = counting_upload  # type: ignore[method-assign]  # counts what goes up
    builder.build(10**12, 1, [], 0)  # the worker runs before timing (a daemon starts it once at boot)
    builder_pid = builder.pid if isinstance(builder, ProcessBuilder) else os.getpid()
    if builder_pid is None:
        raise SystemExit("sync bench: the builder process did not start")
    child_cpu0, cpu0 = cpu_s(builder_pid), time.process_time()
    tuning = runtime.tune_for_scanning()  # what `checkpoint run` does
    contacts: list[tuple[float, float]] = []
    failed: list[str] = []

    def sync_thread() -> None:
        """The contacts, on a thread of their own at the priority the appliance's sync thread takes."""
        lower_thread_priority()
        while True:
            paced.left = 1
            t0 = time.perf_counter()
            res = agent.sync_once(trust=False, save_progress=False)  # as the appliance's sync thread
            t1 = time.perf_counter()
            contacts.append((t0, t1))
            if res.error is not None:
                failed.append(res.error)
                return
            if agent.snapshot().last_acked_seq >= n:  # the backlog is up (the lane's scans are not its part)
                return
            time.sleep(max(0.5, t1 - t0))

    try:
        with lane:
            time.sleep(1.0)  # the lane's first scans (and their caches) before the first contact
            syncing = threading.Thread(target=sync_thread, name="sync")
            syncing.start()
            syncing.join()
    finally:
        runtime.restore(tuning)
    if failed:
        raise SystemExit(f"sync bench: the upload failed: {failed[0]}")
    busy = sum(b - a for a, b in contacts)
    out: dict[str, object] = {"contacts": len(contacts), "upload_s": busy, "entries_per_s": n / busy,
           "bytes_per_entry": sum(sizes) / n, "requests": len(sizes), "main_cpu_s": time.process_time() - cpu0,
           "builder_cpu_s": cpu_s(builder_pid) - child_cpu0 if isinstance(builder, ProcessBuilder) else 0.0,
           "checkpoints": lane.checkpoints, "builder": builder_kind, "lane": _lane_text(lane.priority)}
    during = [x for x in lane.scans if any(a <= x[0] < b for a, b in contacts)]
    between = [x for x in lane.scans if contacts[0][0] <= x[0]
               and not any(a - GUARD_S <= x[0] < b + GUARD_S for a, b in contacts)]
    out["upload"], out["idle"] = _figures(during), _figures(between)
    paced.left = 10**9
    res = agent.sync_until_done(600, trust=False)  # and the lane's scans
    stored, logged = st.stats().entries, log.tail(1)[0].seq
    agent.close()
    log.close()
    if not res.complete or stored != logged:
        raise SystemExit(f"sync bench: upload incomplete ({res}, the server holds {stored} of the {logged} entries)")
    return out


def _one_run(pristine: Path, tmp: Path, n: int, tag: str, cards: list[str], trust,
             builder_kind: str = "process") -> dict:
    """One upload of the backlog with the lane scanning. The device's files are on the bench's disk
    (the lane's fsyncs are real); the server's database is in memory when /dev/shm exists: it stands
    for another machine, whose disk the device does not share."""
    run_dir = tmp / f"run-{tag}"
    run_dir.mkdir()
    server_dir = Path(tempfile.mkdtemp(prefix="ckbench-sync-server-", dir="/dev/shm" if Path("/dev/shm").is_dir()
                                       else None))
    db = server_dir / "central.db"
    server = ServerProcess(str(db), bench="sync")  # a normal process: not favoured, not held back
    try:
        st = _provision(pristine, run_dir, server, db)
        server_cpu0 = cpu_s(server.pid)
        out = _upload(run_dir, n, _Lane(run_dir / "dev" / "entries.db", cards, trust), st, builder_kind)
        out["server_cpu_s"] = cpu_s(server.pid) - server_cpu0
        st.close()
    finally:
        server.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(server_dir, ignore_errors=True)
    return out


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


def _trust_sizes(n_revoked: int) -> tuple[list[list], dict]:


    root = ed25519.Ed25519PrivateKey.generate()
    iss = ed25519.Ed25519PrivateKey.generate()
    k = BundleKey(keymod.kid_of(iss.public_key()), "EdDSA", "VN-HUE", iss.public_key())
    cards = [os.urandom(16) for _ in range(n_revoked)]
    old = make_bundle(root, version=1, issued_at=1, expires_at=2**40, keys=[k], revoked_cards=cards)
    new = make_bundle(root, version=2, issued_at=2, expires_at=2**40, keys=[k],
                      revoked_cards=cards[100:] + [os.urandom(16) for _ in range(1000)])
    delta = deltamod.make_delta(root, old, new)
    if delta is None:
        raise SystemExit("sync bench: fixture broken: no delta between the two bundles")
    roots = [root.public_key()]
    cur = open_bundle(old, roots)
    t0 = time.perf_counter()
    deltamod.apply_delta(old, cur, delta, roots)
    t_apply = time.perf_counter() - t0
    t0 = time.perf_counter()
    open_bundle(new, roots, min_version=1)
    t_full = time.perf_counter() - t0
    gz = len(gzip.compress(new, 6))
    figures = {"full_mib": len(new) / MB, "gzip_mib": gz / MB, "delta_kib": len(delta) / 1024,
               "open_full_s": t_full, "apply_delta_s": t_apply}
    return [
        ["full bundle (v2)", f"{len(new) / MB:.1f} MiB", f"{len(new) / len(delta):.0f}x",
         f"{t_full:.2f} s (open_bundle)"],
        ["full bundle, gzip on the wire", f"{gz / MB:.1f} MiB", f"{gz / len(delta):.0f}x", "-"],
        ["delta v1 -> v2 (+1000, -100 cards)", f"{len(delta) / 1024:.0f} KiB", "1x",
         f"{t_apply:.2f} s (apply + open_bundle)"],
    ], figures


def run(quick: bool) -> dict:
    n = 5_000 if quick else 100_000
    runs = 1 if quick else 5
    base = bench_dir("sync")
    try:

        tmp = base
        keys_dir = tmp / "central-keys"
        server_key = load_or_create_sealing_key(keys_dir)
        pristine = tmp / "pristine"
        db0 = tmp / "setup.db"
        shutil.copy(keys_dir / "sealing.key", tmp / "sealing.key")
        server = ServerProcess(str(db0), bench="sync")
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
        log.close()
        w = world()
        trust = TrustStore.build(bundles=[open_bundle(bundle_bytes(10_000), [w.root.public_key()])])
        cards = [fixtures.card_text(w.ed_key, w.at) for _ in range(1000)]
        results, inline = [], []
        for r in range(runs):  # the two builders in turn, so a slow phase of the machine hits both
            results.append(_one_run(pristine, tmp, n, str(r), cards, trust))
            inline.append(_one_run(pristine, tmp, n, f"{r}-inline", cards, trust, "inline"))
        ingest, parse = _ingest_rate(pristine, tmp, n)
        where = fs_type(tmp)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    lanes = " / ".join(sorted({str(x["lane"]) for x in results + inline}))
    print(f"== sync: a {n:,}-entry backlog (holder details sealed) uploaded to the reference server on 127.0.0.1 "
          f"(its own process, normal priority, its database in memory) as the appliance does (batches built in the "
          f"builder process, the scan process tuned, the contacts on a thread {SYNC_THREAD_NICE} nicer than the "
          f"lane's), "
          f"one contact (one batch) at a time, each followed by an equal "
          f"pause, while the scan lane verifies and records a card every 50 ms through its own EntryLog (files on "
          f"{where}; the lane's thread {lanes}, as the appliance's `[scan] lane_priority` default makes it); "
          f"{runs} run(s); backlog generated in {fill_s:.1f} s")
    rows = []
    for i, x in [(i, x) for i, x in enumerate(results)] + [(i, x) for i, x in enumerate(inline)]:
        u, idle = x["upload"], x["idle"]
        name = f"run {i + 1}" + (", inline" if x["builder"] == "inline" else "")
        rows.append([name, f"{x['entries_per_s']:,.0f}", f"{x['bytes_per_entry']:.0f}", x["requests"],
                     f"{x['main_cpu_s']:.1f} + {x['builder_cpu_s']:.1f}", f"{x['server_cpu_s']:.1f}",
                     f"{u['scans']} / {idle['scans']}", f"{u['p50_ms']:.2f} / {idle['p50_ms']:.2f}",
                     f"{u['p99_ms']:.2f} / {idle['p99_ms']:.2f}", f"{u['max_ms']:.2f} / {idle['max_ms']:.2f}",
                     f"{u['record_max_ms']:.2f} / {idle['record_max_ms']:.2f}", _pair(u, idle, "cpu_wait_p99_ms"),
                     _pair(u, idle, "p99_less_cpu_wait_ms"), f"{x['checkpoints']}"])
    print(table(["run", "entries/s while uploading", "bytes/entry", "batches", "device CPU s (scan proc + builder)",
                 "server CPU s", "scans upload / idle", "scan p50 ms", "p99 ms", "max ms", "record() max ms",
                 "waiting for a CPU p99 ms", "p99 less that wait ms", "idle checkpoints"], rows))
    print("scan = due -> verified and committed; upload / idle = the lane's scans due during a contact / in the "
          "pauses between contacts; inline = `[sync] builder = \"inline\"` (batches built on the sync thread, "
          "in the scan process); waiting for a CPU = the lane thread runnable but not running, from due to "
          "committed (/proc/thread-self/schedstat; \"-\" where the kernel does not say)")
    goals = [judge("sync.stall.p99", [x["upload"]["p99_ms"] - x["idle"]["p99_ms"] for x in results]),
             judge("sync.stall.max", [x["upload"]["max_ms"] - x["idle"]["max_ms"] for x in results]),
             judge("sync.stall.p99", [x["upload"]["p99_ms"] - x["idle"]["p99_ms"] for x in inline], "inline"),
             judge("sync.stall.max", [x["upload"]["max_ms"] - x["idle"]["max_ms"] for x in inline], "inline")]
    for g in goals:
        print(g.line())
    less = [x["upload"]["p99_less_cpu_wait_ms"] - x["idle"]["p99_less_cpu_wait_ms"] for x in results
            if x["upload"]["p99_less_cpu_wait_ms"] is not None and x["idle"]["p99_less_cpu_wait_ms"] is not None]
    if less:
        print(f"not judged, where the stall goes: the p99 above idle with the lane's waits for a CPU taken out "
              f"{median(less):+.2f} ms ({min(less):+.2f} … {max(less):+.2f}), {len(less)} run(s)")
    print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus)")
    print(f"server ingest without HTTP (open_batch + SQLite commit): {ingest:,.0f} entries/s; "
          f"open_batch alone {parse:,.0f} entries/s")
    print()
    size = 20_000 if quick else 1_000_000
    print(f"== trust update with {size:,} revoked cards: 1,000 added and 100 removed")
    trust_rows, trust_figures = _trust_sizes(size)
    print(table(["what the device downloads", "size", "vs delta", "device time"], trust_rows))
    print()
    return {"n": n, "runs": results, "inline_runs": inline, "fill_s": fill_s, "fs": where,
            "median": {k: median([x[k] for x in results]) for k in ("entries_per_s", "bytes_per_entry", "requests",
                                                                    "main_cpu_s", "builder_cpu_s", "server_cpu_s")},
            "ingest_per_s": ingest, "open_batch_per_s": parse, "trust": trust_figures,
            "goals": [g.as_dict() for g in goals]}
