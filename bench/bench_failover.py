"""PostgreSQL failover under ingest: a primary and a synchronous streaming-replication standby on
127.0.0.1 ports, `checkpoint server run` on a multi-host URL (target_session_attrs=read-write),
a fleet uploading continuously (bench/loadgen.py in its own process). Mid-ingest the primary's
postmaster is killed (SIGKILL) and the standby promoted (`pg_ctl promote`, standing in for a
failover manager: see docs/scaling.md). Afterwards the new primary must hold every entry exactly
once and every batch a device saw acknowledged; the stall is the longest time without an
acknowledgement around the kill.

``scenario`` is also the failover test's (tests/test_failover.py), on a smaller fleet.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from .bench_fleet import _Fleet, push
from .pgcluster import PgCluster, find_bin_dir
from .procs import ServerProcess
from .timing import table

PROMOTE_AFTER_S = 1.0  # the primary is gone this long before the standby is promoted (a manager's detection)


def _wait_sync(primary: PgCluster, timeout_s: float = 60.0) -> None:
    import psycopg

    end = time.monotonic() + timeout_s
    with psycopg.connect(primary.url(), autocommit=True) as conn:
        while conn.execute("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'").fetchone()[0] < 1:
            if time.monotonic() > end:
                raise RuntimeError("the standby did not become a synchronous standby")
            time.sleep(0.1)


def scenario(tmp: Path, devices: int, batches: int, per_batch: int, kill_after: int, deadline_s: float = 300.0
             ) -> dict:
    """Run the failover once (see the module docstring); ``kill_after``: batches stored on the
    primary before it is killed. Returns the load generator's results with the checks made on
    the new primary and the times of the kill and the promotion."""
    import psycopg

    from sync.server.storage import open_storage

    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise RuntimeError("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin): install the postgresql package")
    # fsync off (a test machine) but every commit waits for the standby: an acknowledged batch is on both
    sync = {"synchronous_commit": "on", "synchronous_standby_names": "walreceiver"}
    primary = PgCluster(bin_dir, durable=False, settings=sync)
    standby = None
    server = None
    try:
        standby = PgCluster(bin_dir, durable=False, standby_of=primary)
        _wait_sync(primary)
        url = (f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/postgres"
               f"?target_session_attrs=read-write&connect_timeout=2")
        fleet = _Fleet(devices, batches, per_batch, tmp / "batches")
        st = open_storage(url)
        try:
            fleet.enroll(st)
        finally:
            st.close()
        server = ServerProcess(url, "--keys", str(tmp / "keys"), bench="failover")
        times: dict[str, float] = {}

        def kill_mid_ingest(start_at: float) -> None:
            with psycopg.connect(primary.url(), autocommit=True) as conn:
                while conn.execute("SELECT count(*) FROM batches").fetchone()[0] < kill_after:
                    if time.time() > start_at + deadline_s:
                        raise RuntimeError("the fleet did not get going")
                    time.sleep(0.02)
                times["killed_at"] = time.time()
                primary.kill_postmaster()
            time.sleep(PROMOTE_AFTER_S)
            standby.promote()
            times["promoted_at"] = time.time()

        res = push(fleet, server.url, deadline_s, tmp, processes=1, during=kill_mid_ingest)
        res |= times
        st = open_storage(standby.url())
        try:
            held = {d["device_id"]: st.entry_hashes(d["device_id"]) for d in fleet.devices}
            s = st.stats()
            stored_batches = {r[0] for r in psycopg.connect(standby.url()).execute("SELECT batch_id FROM batches")}
        finally:
            st.close()
        res["expected_entries"] = fleet.entries
        res["expected_batches"] = devices * batches
        res["entries"] = s.entries
        res["conflicts"] = s.conflicts
        res["chain_problems"] = s.chain_problems
        res["exact"] = all(held[d["device_id"]] == d["hashes"] for d in fleet.devices)
        res["acked_missing"] = len(set(res["acked"]) - stored_batches)
        acks = sorted(res["acked_at"])
        before = [t for t in acks if t < times["killed_at"]]
        after = [t for t in acks if t >= times["killed_at"]]
        res["acks_before_kill"], res["acks_after_kill"] = len(before), len(after)
        # the longest time without an acknowledgement, from the last one before the kill on
        around = before[-1:] + after
        res["stall_s"] = max((b - a for a, b in zip(around, around[1:])), default=float("nan"))
        promoted = [t for t in acks if t >= times["promoted_at"]]
        res["resumed_after_promotion_s"] = (promoted[0] - times["promoted_at"]) if promoted else float("nan")
        return res
    finally:
        if server is not None:
            server.stop()
        if standby is not None:
            standby.stop()
        primary.stop()


def run(quick: bool) -> None:
    devices, batches, per_batch, runs = (20, 10, 100, 1) if quick else (100, 10, 200, 3)
    if find_bin_dir() is None:
        print("== failover: not measured (no PostgreSQL server binaries: install the postgresql package)\n")
        return
    results = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="ckbench-failover-") as tmpname:
            results.append(scenario(Path(tmpname), devices, batches, per_batch, kill_after=devices * batches // 3))
    rows = []
    for r in results:
        ok = (r["exact"] and r["entries"] == r["expected_entries"] and not r["conflicts"] and not r["chain_problems"]
              and not r["acked_missing"] and len(r["acked"]) == r["expected_batches"] and not r["failures"])
        rows.append([f"{r['acks_before_kill']}/{r['acks_after_kill']}", f"{r['stall_s']:.1f}",
                     f"{r['resumed_after_promotion_s']:.1f}", str(r["busy"]), str(r["errors"]),
                     f"{r['entries']:,} of {r['expected_entries']:,}", str(r["acked_missing"]),
                     "yes" if ok else "NO"])
    print(f"== failover: {devices} devices x {batches} batches x {per_batch} entries uploading; the primary's "
          f"postmaster SIGKILLed after a third of the batches, the synchronous standby promoted "
          f"{PROMOTE_AFTER_S:.0f} s later (pg_ctl promote); `checkpoint server run` on a multi-host URL "
          f"(target_session_attrs=read-write), defaults otherwise; {runs} runs")
    print(table(["acks before/after the kill", "stall s", "first ack after promotion s", "503/429", "connection errors",
                 "entries on the new primary", "acked batches missing", "0 lost, 0 doubled"], rows, left=2))
    stalls = [r["stall_s"] for r in results]
    print(f"stall: median {statistics.median(stalls):.1f} s (min {min(stalls):.1f}, max {max(stalls):.1f})")
    print()
