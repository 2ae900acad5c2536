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

import itertools
import statistics
import tempfile
import time
from pathlib import Path

from sync.server.storage import open_storage

from .autofailover import AutoFailover, find_pg_autoctl
from .bench_fleet import _Fleet, push
from .pgcluster import PgCluster, find_bin_dir
from .procs import ServerProcess
from .timing import table

PROMOTE_AFTER_S = 1.0  # the primary is gone this long before the standby is promoted (a manager's detection)


def _wait_sync(primary: PgCluster, timeout_s: float = 60.0) -> None:
    import psycopg  # deferred: the optional `server` extra

    end = time.monotonic() + timeout_s
    with psycopg.connect(primary.url(), autocommit=True) as conn:
        while conn.execute("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'").fetchone()[0] < 1:
            if time.monotonic() > end:
                raise RuntimeError("the standby did not become a synchronous standby")
            time.sleep(0.1)


class _Promoted:
    """A primary and a synchronous standby (bench/pgcluster.py), the standby promoted by hand
    (`pg_ctl promote`) PROMOTE_AFTER_S after the primary's postmaster is SIGKILLed."""

    manager = "pg_ctl promote"

    def __init__(self, bin_dir: Path) -> None:
        # fsync off (a test machine) but every commit waits for the standby: an acknowledged batch is on both
        self.primary = PgCluster(bin_dir, durable=False, settings={"synchronous_commit": "on",
                                                                   "synchronous_standby_names": "walreceiver"})
        self.standby: PgCluster | None = None
        try:
            self.standby = PgCluster(bin_dir, durable=False, standby_of=self.primary)
            _wait_sync(self.primary)
        except BaseException:
            self.stop()
            raise
        self.url = (f"postgresql://postgres@127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}/postgres"
                    f"?target_session_attrs=read-write&connect_timeout=2")
        self.primary_url, self.new_primary_url = self.primary.url(), self.standby.url()

    def kill_primary(self) -> None:
        self.primary.kill_postmaster()

    def promote(self) -> None:
        time.sleep(PROMOTE_AFTER_S)
        self.standby.promote()

    def stop(self) -> None:
        if self.standby is not None:
            self.standby.stop()
        self.primary.stop()


class _Managed:
    """A pg_auto_failover formation (bench/autofailover.py): the primary's machine dies (SIGKILL of
    its postmaster and of the pg_autoctl keeping it: the keeper alone would restart a killed
    postmaster) and the monitor promotes the standby."""

    manager = "pg_auto_failover"

    def __init__(self, bin_dir: Path, autoctl: str) -> None:
        self.formation = AutoFailover(bin_dir, autoctl)
        self.url = self.formation.url()
        self.primary_url, self.new_primary_url = self.formation.node_url("node_a"), self.formation.node_url("node_b")

    def kill_primary(self) -> None:
        self.formation.kill("node_a")

    def promote(self) -> None:
        self.formation.wait_promoted("node_b")

    def stop(self) -> None:
        self.formation.stop()


def managers() -> list[str]:
    """The failover managers that can run here: pg_auto_failover where it is installed, and the
    promotion by hand wherever PostgreSQL is."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        return []
    return (["pg_auto_failover"] if find_pg_autoctl(bin_dir) else []) + ["pg_ctl"]


def scenario(tmp: Path, devices: int, batches: int, per_batch: int, kill_after: int, deadline_s: float = 300.0,
             manager: str = "pg_auto_failover") -> dict:
    """Run the failover once (see the module docstring) with ``manager`` ("pg_auto_failover" or
    "pg_ctl"); ``kill_after``: batches stored on the primary before it is killed. Returns the load
    generator's results with the checks made on the new primary and the times of the kill and of
    the promotion."""
    import psycopg  # deferred: the optional `server` extra

    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise RuntimeError("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin): install the postgresql package")
    if manager == "pg_auto_failover":
        autoctl = find_pg_autoctl(bin_dir)
        if autoctl is None:
            raise RuntimeError("pg_auto_failover is not installed (Debian: postgresql-15-auto-failover)")
        try:
            db = _Managed(bin_dir, autoctl)
        except RuntimeError:  # the formation's own start-up failed (pg_autoctl gives up after ~4 s on a loaded
            db = _Managed(bin_dir, autoctl)  # machine); once more, before any ingest: not the part under test
    else:
        db = _Promoted(bin_dir)
    server = None
    try:
        url = db.url
        fleet = _Fleet(devices, batches, per_batch, tmp / "batches")
        st = open_storage(url)
        try:
            fleet.enroll(st)
        finally:
            st.close()
        server = ServerProcess(url, "--keys", str(tmp / "keys"), bench="failover")
        times: dict[str, float] = {}

        def kill_mid_ingest(start_at: float) -> None:
            with psycopg.connect(db.primary_url, autocommit=True) as conn:
                while conn.execute("SELECT count(*) FROM batches").fetchone()[0] < kill_after:
                    if time.time() > start_at + deadline_s:
                        raise RuntimeError("the fleet did not get going")
                    time.sleep(0.02)
                times["killed_at"] = time.time()
                db.kill_primary()
            db.promote()
            times["promoted_at"] = time.time()

        res = push(fleet, server.url, deadline_s, tmp, processes=1, during=kill_mid_ingest)
        res |= times
        st = open_storage(db.new_primary_url)
        try:
            held = {d["device_id"]: st.entry_hashes(d["device_id"]) for d in fleet.devices}
            s = st.stats()
            with psycopg.connect(db.new_primary_url) as conn:
                stored_batches = {r[0] for r in conn.execute("SELECT batch_id FROM batches")}
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
        res["stall_s"] = max((b - a for a, b in itertools.pairwise(around)), default=float("nan"))
        promoted = [t for t in acks if t >= times["promoted_at"]]
        res["resumed_after_promotion_s"] = (promoted[0] - times["promoted_at"]) if promoted else float("nan")
        return res
    finally:
        if server is not None:
            server.stop()
        db.stop()


def run(quick: bool) -> None:
    devices, batches, per_batch, runs = (20, 10, 100, 1) if quick else (50, 10, 200, 2)
    found = managers()
    if not found:
        print("== failover: not measured (no PostgreSQL server binaries: install the postgresql package)\n")
        return
    rows, stalls = [], {}
    for manager in found:
        for _ in range(runs):
            with tempfile.TemporaryDirectory(prefix="ckbench-failover-") as tmpname:
                r = scenario(Path(tmpname), devices, batches, per_batch, kill_after=devices * batches // 3,
                             manager=manager)
            ok = (r["exact"] and r["entries"] == r["expected_entries"] and not r["conflicts"]
                  and not r["chain_problems"] and not r["acked_missing"] and len(r["acked"]) == r["expected_batches"]
                  and not r["failures"])
            stalls.setdefault(manager, []).append(r["stall_s"])
            rows.append([manager, f"{r['acks_before_kill']}/{r['acks_after_kill']}",
                         f"{r['promoted_at'] - r['killed_at']:.1f}", f"{r['stall_s']:.1f}",
                         f"{r['resumed_after_promotion_s']:.1f}", str(r["busy"]), str(r["errors"]),
                         f"{r['entries']:,} of {r['expected_entries']:,}", str(r["acked_missing"]),
                         "yes" if ok else "NO"])
    print(f"== failover: {devices} devices x {batches} batches x {per_batch} entries uploading (one load generator "
          f"process) to `checkpoint server run` (defaults) on a multi-host URL (target_session_attrs=read-write); "
          f"after a third of the batches the primary dies: pg_auto_failover: its postmaster and pg_autoctl "
          f"SIGKILLed, the monitor promotes the standby (health checks made faster: bench/autofailover.py); "
          f"pg_ctl: its postmaster SIGKILLed, the standby promoted {PROMOTE_AFTER_S:.0f} s later by hand; "
          f"{runs} run(s) each")
    print(table(["failover", "acks before/after the kill", "kill to promotion s", "stall s",
                 "first ack after promotion s", "503/429", "connection errors", "entries on the new primary",
                 "acked batches missing", "0 lost, 0 doubled"], rows, left=2))
    for manager, values in stalls.items():
        print(f"{manager}: uploads stalled {statistics.median(values):.1f} s (median; min {min(values):.1f}, "
              f"max {max(values):.1f})")
    print()
