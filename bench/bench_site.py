"""Gates of one site: how fast a scan at one gate is known to all the others, and what sharing
costs the scan lane.

Twenty gates (five with --quick), each a real SiteNode (sync/site/node.py: signed UDP datagrams,
credential and signature checked on receipt, heartbeats and anti-entropy running) in its own
process on 127.0.0.1, every gate told of every other. Propagation: a scan is noted at one gate
(rotating over all of them) and the time until each other gate has it in its view is taken on the
machine's wall clock (one clock for every process); "all" is the time until the last of the
others has it. Goal: p95 of "all" within 200 ms on a LAN (loopback here: the wire adds its
latency, ~0.1-1 ms on a switched LAN).

Lane overhead: in the gate of this process, card by card and interleaved, the lane's work for a
scan without sharing (verify + EntryLog.record, synchronous=FULL) and with it (the site view's
lookup + verify + record with the site's input + the hand-off of the entry to the sender thread,
while that thread signs and sends it to the 19 others and the gate answers their heartbeats).
The view holds a day's worth of other entries (20 000) so its lookups are not of an empty table.
Goal: the share costs the lane at most 1 ms at p95: judged on the site's own steps timed inside
each scan, and on the lane's p95 with sharing minus its p95 without when the logs are on a fast
disk ($CHECKPOINT_BENCH_FAST_DIR; on a slow one each scan's fsync varies by more than the goal).

Three runs of each (one with --quick), the goals judged on the runs (bench/goals.py). A scan not
known to all others within 2 s counts as 2 s in its run's p95.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.appliance import runtime
from scanner.cards import keys
from scanner.cards.scan import Scan
from scanner.cards.trust import load_trust
from scanner.cards.verifier import verify
from scanner.store.admission import Conditions
from scanner.store.entry import Entry
from scanner.store.entrylog import EntryLog
from sync.site import credential as sitecred
from sync.site.message import SiteEvent
from sync.site.node import Settings, SiteNode

from .appliance import hue_cards
from .files import bench_dir, fs_type
from .goals import GOALS, judge
from .timing import median, percentile, quartiles, table

SITE = "bench-site"
RUNS = 3
MISS_S = 2.0  # a scan not known to all others within this counts as this (a lower bound) in the p95


def _ports(n: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Arrivals:
    """Who has which event since when (ns), fed by the children's lines and this process's node."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.got: dict[tuple[str, int], dict[str, int]] = {}
        self.sent: dict[tuple[str, int], int] = {}
        self.ready: set[str] = set()

    def add(self, receiver: str, device: str, seq: int, ns: int) -> None:
        with self.cond:
            self.got.setdefault((device, seq), {})[receiver] = ns
            self.cond.notify_all()

    def wait(self, key: tuple[str, int], n: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.got.get(key, {})) >= n and key in self.sent, timeout)


def _read(proc: subprocess.Popen, me: str, arrivals: Arrivals) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "got":
            arrivals.add(me, parts[1], int(parts[2]), int(parts[3]))
        elif parts[0] == "sent":
            with arrivals.cond:
                arrivals.sent[(me, int(parts[1]))] = int(parts[2])
                arrivals.cond.notify_all()
        elif parts[0] == "ping":
            arrivals.add(me, "ping", int(parts[1]), int(parts[2]))
        elif parts[0] == "ready":
            with arrivals.cond:
                arrivals.ready.add(me)
                arrivals.cond.notify_all()


def run(quick: bool = False) -> dict:
    runs = 1 if quick else RUNS
    n_gates = 5 if quick else 20
    n_scans = 40 if quick else 400
    n_lane = 60 if quick else 400
    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="bench-site-") as tmp_name:
        tmp = Path(tmp_name)
        root = ed25519.Ed25519PrivateKey.generate()
        (tmp / "root.pub").write_bytes(keys.public_pem(root.public_key()))
        secret = os.urandom(32)
        ports = _ports(2 * n_gates)
        ports, ping_ports = ports[:n_gates], ports[n_gates:]
        gate_keys = [ed25519.Ed25519PrivateKey.generate() for _ in range(n_gates)]
        creds = [sitecred.issue(root, site_id=SITE, device_key=k.public_key(), issued_at=int(time.time()) - 60)
                 for k in gate_keys]
        ids = [sitecred.open_credential(c, [root.public_key()]).device_id for c in creds]
        arrivals = Arrivals()
        me = ids[0]

        def arrived(evs: list) -> None:
            for e in evs:
                arrivals.add(me, e.device, e.seq, time.time_ns())

        node = SiteNode(Settings(SITE, secret, ("127.0.0.1", ports[0]), tuple(("127.0.0.1", p) for p in ports[1:]),
                                 discovery=False, heartbeat_s=1.0, peer_timeout_s=5.0), gate_keys[0],
                        sitecred.open_credential(creds[0], [root.public_key()]), [root.public_key()],
                        on_events=arrived)
        children: list[subprocess.Popen] = []
        try:
            for i in range(1, n_gates):
                (tmp / f"g{i}.key").write_bytes(keys.private_pem(gate_keys[i]))
                (tmp / f"g{i}.cred").write_bytes(creds[i])
                cfg = {"root_pub": str(tmp / "root.pub"), "key": str(tmp / f"g{i}.key"),
                       "cred": str(tmp / f"g{i}.cred"),
                       "site": SITE, "secret": secret.hex(), "port": ports[i],
                       "peers": [p for j, p in enumerate(ports) if j != i], "heartbeat_s": 1.0, "peer_timeout_s": 5.0,
                       "ping_port": ping_ports[i]}
                proc = subprocess.Popen([sys.executable, "-m", "bench._site_child", json.dumps(cfg)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        cwd=str(Path(__file__).resolve().parents[1]))
                children.append(proc)
                threading.Thread(target=_read, args=(proc, ids[i], arrivals), daemon=True).start()
            node.start()
            with arrivals.cond:
                assert arrivals.cond.wait_for(lambda: len(arrivals.ready) == n_gates - 1, 120), "children did not start"
            deadline = time.monotonic() + 60
            while sum(p.alive for p in node.peers()) < n_gates - 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(2.5)  # every gate has heard every other (two heartbeats)
            tuning = runtime.tune_for_scanning()  # as the daemon runs its lane (and the children theirs)
            cpu0, t0 = _cpu([p.pid for p in children]), time.monotonic()
            props = [_propagation(node, children, ids, arrivals, n_scans, ping_ports[1:], base=r * n_scans,
                                  seed=7 + r) for r in range(runs)]
            cpu_share = (_cpu([p.pid for p in children]) - cpu0) / (time.monotonic() - t0) / len(children)
            lane_dir = bench_dir("site-lane", fast=True)
            try:
                lanes = [_lane(node, tmp / f"lane{r}", lane_dir / f"run{r}", n_lane, seed=3 + r) for r in range(runs)]
                disk = fs_type(lane_dir)
            finally:
                shutil.rmtree(lane_dir, ignore_errors=True)
            runtime.restore(tuning)
        finally:
            for proc in children:
                try:
                    assert proc.stdin is not None
                    proc.stdin.write("quit\n")
                    proc.stdin.flush()
                except (BrokenPipeError, OSError):
                    pass  # gone already
            for proc in children:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            node.stop()
    return _report(n_gates, n_scans, props, lanes, cpu_share, disk)


def _cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes have used so far."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def _ping(arrivals: Arrivals, ping_ports: list[int], k: int) -> float | None:
    """The peer: one bare datagram to each child, and the time until the last has printed it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        t = time.time_ns()
        for port in ping_ports:
            s.sendto(str(k).encode(), ("127.0.0.1", port))
    with arrivals.cond:
        arrivals.sent[("ping", k)] = t
    if not arrivals.wait(("ping", k), len(ping_ports), 2.0):
        return None
    with arrivals.cond:
        return (max(arrivals.got[("ping", k)].values()) - t) / 1e9


def _propagation(node: SiteNode, children, ids, arrivals: Arrivals, n_scans: int, ping_ports: list[int],
                 base: int = 0, seed: int = 7):
    """One run of ``n_scans`` scans (numbered from ``base`` + 1, so runs never share a key): the
    seconds until all others / each other gate had each, the scans missed, the peer's times."""
    n = len(ids)
    rng = random.Random(seed)
    all_s, each_s, missed, bare = [], [], 0, []
    own_seq = base
    for k in range(base + 1, base + n_scans + 1):
        if rng.random() < 0.5:  # the peer before or after the scan, at random
            bare.append(_ping(arrivals, ping_ports, k))
        origin = k % n
        if origin == 0:
            own_seq += 1
            seq = 10_000_000 + own_seq
            entry = _entry(node.device_id, seq)
            t = time.time_ns()
            node.note(entry)
            with arrivals.cond:
                arrivals.sent[(ids[0], seq)] = t
        else:
            seq = k
            proc = children[origin - 1]
            proc.stdin.write(f"scan {seq}\n")
            proc.stdin.flush()
        key = (ids[origin], seq)
        if not arrivals.wait(key, n - 1, MISS_S):
            missed += 1
            all_s.append(MISS_S)
            if len(bare) < k - base:
                bare.append(_ping(arrivals, ping_ports, k))
            continue
        with arrivals.cond:
            sent = arrivals.sent[key]
            times = list(arrivals.got[key].values())
        each_s += [(t - sent) / 1e9 for t in times]
        all_s.append((max(times) - sent) / 1e9)
        if len(bare) < k - base:
            bare.append(_ping(arrivals, ping_ports, k))
        time.sleep(rng.uniform(0.005, 0.04))  # scans at the site spread out a little, as people arrive
    return all_s, each_s, missed, [b for b in bare if b is not None]


def _entry(device_id: str, seq: int, card: str | None = None) -> Entry:
    return Entry(seq, str(uuid.uuid4()), device_id, "gate-0", "in", int(time.time() * 1000), "synced", "stdin",
                 "desk", "accept", "ok", "CK1", card or f"{seq:032x}")


def _lane(node: SiteNode, tmp: Path, logs: Path, n: int, seed: int = 3) -> dict[str, list[float]]:
    """Per-scan seconds of the lane's work without and with sharing, interleaved card by card; the
    cards and trust made in ``tmp``, the two entry logs in ``logs``."""
    tmp.mkdir(parents=True)
    logs.mkdir(parents=True)
    cards = hue_cards(tmp, 2 * n)
    trust = load_trust([tmp / "hue.pub"])
    now_ms = int(time.time() * 1000)
    node.view.add(SiteEvent("d-preload", i, now_ms - 1000, "gate-x", "in" if i % 3 else "out", "accept",
                            f"{i:032x}") for i in range(1, 20_001))
    alone = EntryLog(logs / "alone.db", device_id=node.device_id, checkpoint_id="gate-0")
    shared = EntryLog(logs / "shared.db", device_id=node.device_id, checkpoint_id="gate-0")
    out: dict[str, list[float]] = {"alone": [], "shared": [], "share": []}
    rng = random.Random(seed)
    try:
        for i in range(n):
            order = ["alone", "shared"]
            rng.shuffle(order)
            for j, case in enumerate(order):
                text = cards[2 * i + j]
                scan = Scan(text, "stdin", "desk", time.time(), "in")
                t0 = time.perf_counter()
                if case == "alone":
                    verdict = verify(text, trust, time.time())
                    alone.record(scan, verdict, conditions=Conditions(time.time()))
                else:
                    now = time.time()
                    verdict = verify(text, trust, now)
                    t1 = time.perf_counter()
                    site = node.site_for(verdict.card.card_id.hex() if verdict.card is not None else None, now)
                    t2 = time.perf_counter()
                    result = shared.record(scan, verdict, conditions=Conditions(now, site=site))
                    t3 = time.perf_counter()
                    node.note(result.entry)
                    out["share"].append(t2 - t1 + time.perf_counter() - t3)  # the site's own steps in the lane
                out[case].append(time.perf_counter() - t0)
            time.sleep(rng.uniform(0.002, 0.01))  # the sender thread runs between scans, as at a gate
    finally:
        alone.close()
        shared.close()
    return out


def _ms(s: float) -> str:
    return f"{s * 1000:.1f}"


def _report(n_gates, n_scans, props, lanes, cpu_share, disk) -> dict:
    print(f"## Site: {n_gates} gates on 127.0.0.1, {len(props)} run(s) of {n_scans} scans (goal: known to all "
          f"others, p95 <= {GOALS['site.propagation.p95'].limit:.0f} ms)")
    prop_all = [x for run in props for x in run[0]]
    prop_each = [x for run in props for x in run[1]]
    bare = [x for run in props for x in run[3]]
    missed = sum(run[2] for run in props)
    rows: list[tuple] = []
    for name, vals in (("known to each other gate", prop_each), ("known to all others", prop_all),
                       ("peer: a bare datagram to all others", bare)):
        if vals:
            lo, hi = quartiles(vals)
            rows.append((name, len(vals), _ms(median(vals)), f"{_ms(lo)}-{_ms(hi)}", _ms(percentile(vals, 0.95)),
                         _ms(max(vals))))
    print(table(["propagation (all runs)", "n", "median ms", "IQR ms", "p95 ms", "max ms"], rows))
    run_p95 = [percentile(run[0], 0.95) * 1e3 for run in props]
    run_bare = [percentile(run[3], 0.95) * 1e3 if run[3] else None for run in props]
    print(f"per run: p95 known to all {', '.join(f'{v:.1f}' for v in run_p95)} ms; the peer's p95 "
          f"{', '.join('-' if v is None else f'{v:.1f}' for v in run_bare)} ms; {missed} scans not known to all "
          f"within {MISS_S:.0f} s (counted as {MISS_S:.0f} s)")
    print(f"each gate's process used {cpu_share * 100:.1f}% of a core meanwhile; {n_gates} gates share this "
          f"machine's {os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f}), where each gate of a site "
          f"has its own\n")

    per_run = []
    for lane in lanes:
        a, s, share = lane["alone"], lane["shared"], lane["share"]
        per_run.append({"alone_p50_ms": median(a) * 1e3, "alone_p95_ms": percentile(a, 0.95) * 1e3,
                        "shared_p50_ms": median(s) * 1e3, "shared_p95_ms": percentile(s, 0.95) * 1e3,
                        "share_p50_ms": median(share) * 1e3, "share_p95_ms": percentile(share, 0.95) * 1e3,
                        "ratio_median": median([y / x for x, y in zip(a, s)])})
    for r in per_run:
        r["p95_delta_ms"] = r["shared_p95_ms"] - r["alone_p95_ms"]
    rows = [(i + 1, f"{r['alone_p50_ms']:.3f}", f"{r['alone_p95_ms']:.3f}", f"{r['shared_p50_ms']:.3f}",
             f"{r['shared_p95_ms']:.3f}", f"{r['p95_delta_ms']:+.3f}", f"{r['ratio_median']:.3f}",
             f"{r['share_p50_ms']:.3f}", f"{r['share_p95_ms']:.3f}") for i, r in enumerate(per_run)]
    print(f"scan lane (verify + record, synchronous=FULL; logs on {disk}), {len(lanes[0]['alone'])} scans each way "
          "per run, interleaved:")
    print(table(["run", "without p50 ms", "without p95 ms", "with p50 ms", "with p95 ms", "p95 with - without ms",
                 "median ratio with/without", "site's steps p50 ms", "site's steps p95 ms"], rows))
    slow = not os.environ.get("CHECKPOINT_BENCH_FAST_DIR")
    judged = [judge("site.propagation.p95", run_p95),
              judge("site.lane.share_p95", [r["share_p95_ms"] for r in per_run]),
              judge("site.lane.p95_delta", [r["p95_delta_ms"] for r in per_run],
                    unjudged=("no fast disk given ($CHECKPOINT_BENCH_FAST_DIR): each scan's fsync varies by more "
                              "than the goal") if slow else "")]
    for g in judged:
        print(g.line())
    print()
    return {"gates": n_gates, "scans_per_run": n_scans, "missed": missed, "lane_disk": disk,
            "propagation": {"p95_ms_runs": run_p95, "bare_p95_ms_runs": run_bare,
                            "all_median_ms": median(prop_all) * 1e3, "each_median_ms": median(prop_each) * 1e3},
            "lane": per_run, "cpu_share": cpu_share, "goals": [g.as_dict() for g in judged]}

