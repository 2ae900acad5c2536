"""Flood: devices upload to the reference server (`checkpoint server run`, default limits, its own
process) while an attacker (bench/flood.py) holds 64 slow-body connections and pushes junk bodies
of up to 16 MiB from 8 loopback addresses. Current devices (CK-Sig2 headers, the real SyncClient)
and old devices (no header) each upload fresh batches, each from its own address. The peer is the
same uploads without the flood, in the same run, in interleaved rounds. Measures the batches
acknowledged, the upload time, and the server's peak resident memory growth (VmHWM from /proc,
reset at the start of each phase).
"""
from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import requests
from cryptography.hazmat.primitives.asymmetric import ed25519
from requests.adapters import HTTPAdapter

from sync.client import RejectedError, SyncClient, TransientError
from sync.server.storage import open_storage
from sync.wire import protocol

from .bench_fleet import _Fleet
from .flood import JUNK, SLOW, Flood, proc_kib, reset_peak
from .procs import ServerProcess
from .timing import table

MEMORY_BOUND_MIB = 64


class _From(HTTPAdapter):
    """Connections from one source address (each device at its own site)."""

    def __init__(self, addr: str) -> None:
        self.addr = addr
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:
        kwargs["source_address"] = (self.addr, 0)
        super().init_poolmanager(*args, **kwargs)


def _session(addr: str) -> requests.Session:
    s = requests.Session()
    s.mount("http://", _From(addr))
    return s


def _current(url: str, key, dev: str, addr: str, batches: list[bytes], deadline: float, out: list) -> None:
    """A device of today: the real SyncClient, retrying as the agent does (Retry-After honoured)."""
    client = SyncClient(url, key, device_id=dev, session=_session(addr))
    try:
        for data in batches:
            while True:
                try:
                    client.upload(data)
                    out.append(time.monotonic())
                    break
                except (TransientError, RejectedError) as exc:
                    if isinstance(exc, RejectedError) or time.monotonic() > deadline:
                        return
                    time.sleep(min(exc.retry_after or 0.2, 2.0))
    finally:
        client.close()


def _old(url: str, addr: str, batches: list[bytes], deadline: float, out: list) -> None:
    """A device from before CK-Sig2: the batch alone, no header; 503/429 waits Retry-After."""
    with _session(addr) as s:
        for data in batches:
            while True:
                try:
                    r = s.post(url + protocol.BATCHES, data=data, timeout=30,
                               headers={"Content-Type": protocol.BATCH_TYPE})
                    if r.status_code == 200:
                        out.append(time.monotonic())
                        break
                    if r.status_code not in (408, 429, 503):
                        return
                    wait = float(r.headers.get("Retry-After", "1"))
                except requests.RequestException:
                    wait = 0.2
                if time.monotonic() > deadline:
                    return
                time.sleep(min(wait, 2.0))


def _phase(server: ServerProcess, fleet: _Fleet, half: int, lo: int, hi: int, flood: bool, deadline_s: float) -> dict:
    """Every device uploads its batches lo..hi at once; with ``flood`` the attack runs meanwhile."""
    reset_peak(server.pid)
    base = proc_kib(server.pid, "VmRSS")
    attack = None
    if flood:
        attack = Flood(server.port, fleet.devices[0]["device_id"])
        attack.start_slow()
        attack.wait(lambda: attack.slow_open >= SLOW, "slow connections open")
        time.sleep(3.0)  # the slow connections settle into whatever they can hold
        attack.start_junk()
        attack.wait(lambda: attack.junk_done >= 2 * JUNK, "junk under way")
    acked: dict[str, list] = {"current": [], "old": []}
    t0 = time.monotonic()
    deadline = t0 + deadline_s
    threads = []
    for i, d in enumerate(fleet.devices):
        key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(d["key"]))
        dev, data = d["device_id"], [Path(p).read_bytes() for p in d["batches"]]
        addr = f"127.0.0.{20 + i}"
        if i < half:
            args = (server.url, key, dev, addr, data[lo:hi], deadline, acked["current"])
            threads.append(threading.Thread(target=_current, args=args, daemon=True))
        else:
            threads.append(threading.Thread(target=_old, args=(server.url, addr, data[lo:hi], deadline, acked["old"]),
                                            daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join(deadline_s + 60)
    answers: Counter = Counter()
    if attack is not None:
        attack.stop()
        answers = attack.answers
    peak = proc_kib(server.pid, "VmHWM")
    want = half * (hi - lo)
    return {"growth_mib": (peak - base) / 1024, "answers": answers,
            **{f"{g}_acked": len(acked[g]) for g in acked}, "want": want,
            **{f"{g}_s": (max(acked[g]) - t0) if len(acked[g]) == want else None for g in acked}}


def run(quick: bool) -> dict:
    rounds, half, per_phase, per_batch = (1, 2, 1, 100) if quick else (3, 4, 2, 200)
    deadline_s = 60.0
    results: dict[str, list[dict]] = {"quiet": [], "flood": []}
    with tempfile.TemporaryDirectory(prefix="ckbench-flood-") as tmpname:
        fleet = _Fleet(2 * half, rounds * 2 * per_phase, per_batch, Path(tmpname) / "batches", rows=False)
        db = str(Path(tmpname) / "central.db")
        st = open_storage(db)
        try:
            fleet.enroll(st)
        finally:
            st.close()
        server = ServerProcess(db, "--keys", tmpname, bench="flood")
        try:
            lo = 0
            for round_no in range(rounds):
                for phase in (("quiet", "flood") if round_no % 2 == 0 else ("flood", "quiet")):
                    results[phase].append(_phase(server, fleet, half, lo, lo + per_phase, phase == "flood", deadline_s))
                    lo += per_phase
        finally:
            server.stop()
    rows, figures = [], []
    for group, label in (("current", "current (CK-Sig2)"), ("old", "old (no header)")):
        quiet_s = [r[f"{group}_s"] for r in results["quiet"]]
        for phase in ("quiet", "flood"):
            rs = results[phase]
            acked = sum(r[f"{group}_acked"] for r in rs)
            want = sum(r["want"] for r in rs)
            times = [r[f"{group}_s"] for r in rs]
            done = [t for t in times if t is not None]
            ratios = [t / q for t, q in zip(times, quiet_s, strict=True) if t is not None and q]
            growth = [r["growth_mib"] for r in rs]
            figures.append({"devices": group, "phase": phase, "acked": acked, "want": want,
                            "upload_s": statistics.median(done) if done else None,
                            "upload_s_range": [min(done), max(done)] if done else None,
                            "x_quiet": statistics.median(ratios) if ratios else None,
                            "x_quiet_range": [min(ratios), max(ratios)] if ratios else None,
                            "growth_mib": statistics.median(growth), "growth_mib_max": max(growth)})
            rows.append([label, phase, f"{acked}/{want} ({100 * acked / want:.0f}%)",
                         f"{statistics.median(done):.2f} ({min(done):.2f}–{max(done):.2f})" if done else "not all",
                         f"{statistics.median(ratios):.1f} ({min(ratios):.1f}–{max(ratios):.1f})" if ratios else "-",
                         f"{statistics.median(growth):.1f} (max {max(growth):.1f})"])
    print(f"== flood: {half} current + {half} old devices x {per_phase} batches x {per_batch} entries per phase, "
          f"{rounds} rounds (quiet and flood interleaved), `checkpoint server run` defaults on 127.0.0.1; "
          f"flood: {SLOW} slow-body connections + {JUNK} junk senders (16 MiB plain, 16 MiB forged CK-Sig2, "
          f"512 KiB plain) from 8 addresses")
    print(table(["devices", "phase", "batches acknowledged", "upload s (min–max)", "x quiet",
                 "server peak RSS growth MiB"], rows, left=2))
    answers: Counter = Counter()
    for r in results["flood"]:
        answers.update(r["answers"])
    print("attacker saw: " + ", ".join(f"{k} {s if s is not None else 'reset'}: {n:,}"
                                       for (k, s), n in sorted(answers.items(), key=str)))
    cur = sum(r["current_acked"] for r in results["flood"]) == sum(r["want"] for r in results["flood"])
    mem = max(r["growth_mib"] for r in results["flood"]) <= MEMORY_BOUND_MIB
    print(f"current devices all acknowledged during the flood: {'met' if cur else 'MISS'}; "
          f"server peak RSS growth <= {MEMORY_BOUND_MIB} MiB: {'met' if mem else 'MISS'}\n")
    return {"rounds": rounds, "devices_per_group": half, "batches_per_phase": per_phase, "per_batch": per_batch,
            "phases": figures,
            "answers": {f"{k} {s if s is not None else 'reset'}": n for (k, s), n in answers.items()},
            "current_all_acked": cur, "memory_bounded": mem, "memory_bound_mib": MEMORY_BOUND_MIB}
