"""PostgreSQL failures under ingest: a primary and a synchronous streaming-replication standby on
127.0.0.1 ports, `checkpoint server run` on a multi-host URL (target_session_attrs=read-write),
a fleet uploading continuously (bench/loadgen.py in its own process). Mid-ingest one fault
(FAULTS): the primary's postmaster is killed (SIGKILL) and the standby promoted (by
pg_auto_failover's monitor, or by hand with `pg_ctl promote`); the standby dies; the monitor dies;
or the primary is cut off from everyone (frozen with SIGSTOP: connections stay open and nothing
answers, as in a network partition), the monitor promotes the standby, and later the partition
heals; the path between the server and the primary alone is cut (the server in a network namespace
of its own, bench/netpart.py: the monitor still sees a healthy primary, nothing fails over, the
server answers 503 db_unavailable until the path heals); or the monitor dies in the middle of a
failover (the primary killed, the monitor killed once it has begun, started again later); or the
standby dies while it is being promoted (the primary killed, then the standby once the failover has
begun: no node can take writes until the standby is started again); or the path between the
primary and the monitor alone is cut (the monitor in a network namespace of its own: it promotes
the standby while the old primary, still up and told nothing, must acknowledge nothing the new one
lacks, and is demoted: by its keeper alone, or once it reaches the monitor again).
Afterwards the primary must hold every entry exactly once and every batch a device saw
acknowledged; the stall is the longest time without an acknowledgement around the fault.

``scenario`` is also the failover tests' (tests/test_failover.py), on a smaller fleet.
"""
from __future__ import annotations

import itertools
import math
import statistics
import tempfile
import time
from pathlib import Path

from sync.server.storage import open_storage

from . import netpart
from .autofailover import AutoFailover, find_pg_autoctl
from .bench_fleet import ADDRESSES, _Fleet, push
from .pgcluster import PgCluster, find_bin_dir, scalar
from .procs import ServerProcess
from .timing import table

PROMOTE_AFTER_S = 1.0  # the primary is gone this long before the standby is promoted (a manager's detection)
FAULTS = ("primary_killed", "standby_killed", "monitor_killed", "primary_frozen", "primary_partitioned",
          "monitor_killed_in_failover", "standby_killed_in_failover", "primary_cut_from_monitor")
PARTITION_S = 20.0  # the server cut off from the primary this long: past the server's 15 s work deadline
MONITOR_DOWN_S = 8.0  # the monitor dead this long in the middle of a failover
NO_PRIMARY_S = 8.0  # both nodes dead this long (the standby killed while it is being promoted)
CUT_FROM_MONITOR_S = 60.0  # the primary cut from the monitor at most this long after the standby's promotion
RESUME_TIMEOUT_S = 120.0  # how long a fault's part of the scenario waits for ingest to go on


def _wait_sync(primary: PgCluster, timeout_s: float = 60.0) -> None:
    import psycopg  # deferred: the optional `server` extra

    end = time.monotonic() + timeout_s
    with psycopg.connect(primary.url(), autocommit=True) as conn:
        while scalar(conn, "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'") < 1:
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
        try:
            self.standby = PgCluster(bin_dir, durable=False, standby_of=self.primary)
            _wait_sync(self.primary)
        except BaseException:
            self.stop()
            raise
        self.url = (f"postgresql://postgres@127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}/postgres"
                    f"?target_session_attrs=read-write&connect_timeout=2")
        self.primary_url = self.primary.url()

    def final_primary_url(self, fault: str) -> str:
        return self.standby.url()

    def fault(self, fault: str, times: dict[str, float], resumed) -> None:
        if fault != "primary_killed":
            raise ValueError(f"{fault}: the promotion by hand is tested with the primary killed only")
        self.primary.kill_postmaster()
        time.sleep(PROMOTE_AFTER_S)
        self.standby.promote()
        times["settled_at"] = time.time()

    def stop(self) -> None:
        standby: PgCluster | None = getattr(self, "standby", None)  # None if it failed to start
        if standby is not None:
            standby.stop()
        self.primary.stop()


def _down_in_failover(f: AutoFailover, node: str, down_s: float, times: dict[str, float], down_key: str,
                      back_key: str) -> None:
    """The primary killed, then ``node`` once the monitor has begun the failover, back ``down_s``
    later (``times``: when it went and came back); the standby's promotion awaited."""
    f.kill("node_a")
    f.wait_for(f.failing_over, "a failover begun")
    f.kill(node)
    times[down_key] = time.time()
    time.sleep(down_s)
    f.restart(node)
    times[back_key] = time.time()
    f.wait_promoted("node_b")


class _Managed:
    """A pg_auto_failover formation (bench/autofailover.py): the primary's machine dies (SIGKILL of
    its postmaster and of the pg_autoctl keeping it: the keeper alone would restart a killed
    postmaster) and the monitor promotes the standby."""

    manager = "pg_auto_failover"

    def __init__(self, bin_dir: Path, autoctl: str, *, monitor_apart: bool = False) -> None:
        self.formation = AutoFailover(bin_dir, autoctl, monitor_apart=monitor_apart)
        self.url = self.formation.url()
        self.primary_url = self.formation.node_url("node_a")
        self.net: netpart.ServerNet | None = None  # the server's own namespace (primary_partitioned)

    def server_net(self, clients: int) -> netpart.ServerNet:
        """Put the server behind links of its own to each node (bench/netpart.py); its URL then
        names the nodes by those links' addresses."""
        why = netpart.available()
        if why is not None:
            raise RuntimeError(why)
        self.net = netpart.ServerNet(2, clients)
        self.formation.allow(self.net.cidr)
        f = self.formation
        hosts = ",".join(f"{self.net.node_host(i)}:{f.ports[n]}" for i, n in enumerate(("node_a", "node_b")))
        self.url = f"postgresql://postgres@{hosts}/postgres?target_session_attrs=read-write&connect_timeout=2"
        return self.net

    def final_primary_url(self, fault: str) -> str:
        moved = ("primary_killed", "primary_frozen", "monitor_killed_in_failover", "standby_killed_in_failover",
                 "primary_cut_from_monitor")
        return self.formation.node_url("node_b" if fault in moved else "node_a")

    def fault(self, fault: str, times: dict[str, float], resumed) -> None:
        """Cause ``fault`` and wait until the formation has dealt with it; ``times["settled_at"]``:
        when it had (the standby promoted; the primary no longer waiting for a lost standby; the
        monitor killed: at once). ``resumed(url)`` waits until ingest goes on there."""
        f = self.formation
        if fault == "primary_killed":
            f.kill("node_a")
            f.wait_promoted("node_b")
        elif fault == "standby_killed":
            f.kill("node_b")
            f.wait_state("node_a", ("wait_primary",))  # commits no longer wait for the standby
        elif fault == "monitor_killed":
            f.kill("monitor")
        elif fault == "primary_frozen":
            f.freeze("node_a")
            f.wait_promoted("node_b")
        elif fault == "monitor_killed_in_failover":
            _down_in_failover(f, "monitor", MONITOR_DOWN_S, times, "monitor_killed_at", "monitor_back_at")
        elif fault == "standby_killed_in_failover":  # no node left that could take writes
            _down_in_failover(f, "node_b", NO_PRIMARY_S, times, "no_primary_at", "node_back_at")
        elif fault == "primary_cut_from_monitor":
            f.cut_from_monitor("node_a")
            f.wait_promoted("node_b")
        elif fault == "primary_partitioned":
            if self.net is None:
                raise RuntimeError("primary_partitioned needs the server in its own namespace (server_net)")
            self.net.cut(0)
            time.sleep(PARTITION_S)
            self.net.heal(0)
            times["healed_at"] = time.time()
        else:
            raise ValueError(f"unknown fault {fault!r}")
        times["settled_at"] = time.time()
        if fault == "primary_cut_from_monitor":  # the old primary, still up and told nothing, must take no
            end = time.monotonic() + CUT_FROM_MONITOR_S  # acknowledged write the new one lacks; its keeper,
            while f.writable("node_a") and time.monotonic() < end:  # alone, is to stop it (pg_auto_failover's
                time.sleep(0.2)  # network_partition_timeout)
            times["demoted_while_cut"] = float(not f.writable("node_a"))
            f.heal_from_monitor("node_a")
            times["monitor_reached_at"] = time.time()
            end = time.monotonic() + RESUME_TIMEOUT_S
            while f.writable("node_a"):  # back in touch with the monitor, it must be demoted in any case
                if time.monotonic() > end:
                    raise RuntimeError("the old primary still takes writes after it reached the monitor again; its "
                                       "keeper's log: " + f.log("node_a", 6000))
                time.sleep(0.2)
            times["old_primary_demoted_at"] = time.time()
        if fault == "primary_frozen":
            resumed(f.node_url("node_b"))  # the server goes on without the frozen node ...
            times["resumed_at"] = time.time()
            f.thaw("node_a")  # ... and the partition heals: the old primary must not take writes again
            times["thawed_at"] = time.time()
            end = time.monotonic() + RESUME_TIMEOUT_S
            while f.writable("node_a"):
                if time.monotonic() > end:
                    raise RuntimeError("the old primary still takes writes after the partition healed")
                time.sleep(0.2)
            times["old_primary_demoted_at"] = time.time()

    def stop(self) -> None:
        try:
            self.formation.stop()
        finally:
            if self.net is not None:
                self.net.close()


def managers() -> list[str]:
    """The failover managers that can run here: pg_auto_failover where it is installed, and the
    promotion by hand wherever PostgreSQL is."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        return []
    return (["pg_auto_failover"] if find_pg_autoctl(bin_dir) else []) + ["pg_ctl"]


def scenario(tmp: Path, devices: int, batches: int, per_batch: int, kill_after: int, deadline_s: float = 300.0,
             manager: str = "pg_auto_failover", fault: str = "primary_killed", pace_s: float = 0.0) -> dict:
    """Run one fault (FAULTS; see the module docstring) with ``manager`` ("pg_auto_failover" or
    "pg_ctl": the primary killed only); ``kill_after``: batches stored before the fault; ``pace_s``:
    each device's pause after each acknowledged batch (0: back to back). Returns the
    load generator's results with the checks made on the primary afterwards and the times of the
    fault (``fault_at``) and of its settling (``settled_at``, and for a frozen primary
    ``resumed_at``, ``thawed_at``, ``old_primary_demoted_at``)."""
    import psycopg  # deferred: the optional `server` extra

    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}")
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise RuntimeError("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin): install the postgresql package")
    db: _Managed | _Promoted
    if manager == "pg_auto_failover":
        autoctl = find_pg_autoctl(bin_dir)
        if autoctl is None:
            raise RuntimeError("pg_auto_failover is not installed (Debian: postgresql-15-auto-failover)")
        apart = fault == "primary_cut_from_monitor"
        try:
            db = _Managed(bin_dir, autoctl, monitor_apart=apart)
        except RuntimeError:  # the formation's own start-up failed (pg_autoctl gives up after ~4 s on a loaded
            db = _Managed(bin_dir, autoctl, monitor_apart=apart)  # machine); once more, before any ingest: not
            # the part under test
    else:
        db = _Promoted(bin_dir)
    server = None
    try:
        fleet = _Fleet(devices, batches, per_batch, tmp / "batches")
        st = open_storage(db.url)
        try:
            fleet.enroll(st)
        finally:
            st.close()
        if fault == "primary_partitioned":
            if not isinstance(db, _Managed):
                raise ValueError("the partition is tested with pg_auto_failover")
            net = db.server_net(min(devices, ADDRESSES))
            for i, d in enumerate(fleet.devices):
                d["source"] = net.client_address(i)
            server = ServerProcess(db.url, "--keys", str(tmp / "keys"), bench="failover", netns=net.ns,
                                   host=net.server_host)
        else:
            server = ServerProcess(db.url, "--keys", str(tmp / "keys"), bench="failover")
        times: dict[str, float] = {}

        def stored_batches(node_url: str) -> int:
            with psycopg.connect(node_url, autocommit=True, connect_timeout=5) as conn:
                return int(scalar(conn, "SELECT count(*) FROM batches"))

        def resumed(node_url: str) -> None:
            """Until ``node_url`` stores a batch more than it held when this was called."""
            held, end = stored_batches(node_url), time.monotonic() + RESUME_TIMEOUT_S
            while stored_batches(node_url) <= held:
                if time.monotonic() > end:
                    raise RuntimeError(f"ingest did not go on within {RESUME_TIMEOUT_S:.0f} s")
                time.sleep(0.1)

        def fault_mid_ingest(start_at: float) -> None:
            while stored_batches(db.primary_url) < kill_after:
                if time.time() > start_at + deadline_s:
                    raise RuntimeError("the fleet did not get going")
                time.sleep(0.02)
            times["fault_at"] = time.time()
            db.fault(fault, times, resumed)

        res = push(fleet, server.url, deadline_s, tmp, processes=1, during=fault_mid_ingest, pace_s=pace_s)
        res |= times
        final = db.final_primary_url(fault)
        st = open_storage(final)
        try:
            held = {d["device_id"]: st.entry_hashes(d["device_id"]) for d in fleet.devices}
            s = st.stats()
            with psycopg.connect(final) as conn:
                stored = {r[0] for r in conn.execute("SELECT batch_id FROM batches")}
        finally:
            st.close()
        res["expected_entries"] = fleet.entries
        res["expected_batches"] = devices * batches
        res["entries"] = s.entries
        res["conflicts"] = s.conflicts
        res["chain_problems"] = s.chain_problems
        res["exact"] = all(held[d["device_id"]] == d["hashes"] for d in fleet.devices)
        res["acked_missing"] = len(set(res["acked"]) - stored)
        acks = sorted(res["acked_at"])
        before = [t for t in acks if t < times["fault_at"]]
        after = [t for t in acks if t >= times["fault_at"]]
        res["acks_before_kill"], res["acks_after_kill"] = len(before), len(after)
        # the longest time without an acknowledgement, from the last one before the fault on
        around = before[-1:] + after
        res["stall_s"] = max((b - a for a, b in itertools.pairwise(around)), default=float("nan"))
        settled = [t for t in acks if t >= times["settled_at"]]
        res["resumed_after_settled_s"] = (settled[0] - times["settled_at"]) if settled else float("nan")
        if "thawed_at" in times:
            res["acks_while_frozen"] = sum(times["fault_at"] <= t < times["thawed_at"] for t in acks)
        if "node_back_at" in times:  # (likewise)
            res["acks_without_primary"] = sum(times["fault_at"] + 1.0 <= t < times["node_back_at"] for t in acks)
            # refusals until the standby is promoted (a request waits up to the pool's 10 s for a connection first)
            res["busy_without_primary"] = sum(times["no_primary_at"] <= t < times["settled_at"] for t in res["busy_at"])
        if "healed_at" in times:  # (an answer already on its way when the path was cut may arrive just after)
            res["acks_while_cut"] = sum(times["fault_at"] + 1.0 <= t < times["healed_at"] for t in acks)
        return res
    finally:
        try:
            if server is not None:
                server.stop()
        finally:  # even when the server does not stop (requests held by a frozen database)
            db.stop()


def _finite(value: float) -> float | None:
    """A figure for the results file: None where there was none (no acknowledgement after the fault)."""
    return None if math.isnan(value) else value


def cases() -> list[tuple[str, str]]:
    """(manager, fault) pairs that can run here."""
    found = managers()
    return ([("pg_auto_failover", f) for f in FAULTS] if "pg_auto_failover" in found else []) + \
        ([("pg_ctl", "primary_killed")] if "pg_ctl" in found else [])


def run(quick: bool) -> dict | None:
    devices, batches, per_batch, runs = (20, 10, 100, 1) if quick else (50, 10, 200, 2)
    found = cases()
    if not found:
        print("== failover: not measured (no PostgreSQL server binaries: install the postgresql package)\n")
        return None
    rows: list[list[str]] = []
    stalls: dict[tuple[str, str], list[float]] = {}
    stored: list[dict] = []  # one per run, in the order run (the results file's figures)
    for manager, fault in found:
        for _ in range(runs):
            with tempfile.TemporaryDirectory(prefix="ckbench-failover-") as tmpname:
                r = scenario(Path(tmpname), devices, batches, per_batch, kill_after=devices * batches // 3,
                             manager=manager, fault=fault)
            ok = (r["exact"] and r["entries"] == r["expected_entries"] and not r["conflicts"]
                  and not r["chain_problems"] and not r["acked_missing"] and len(r["acked"]) == r["expected_batches"]
                  and not r["failures"])
            stalls.setdefault((manager, fault), []).append(r["stall_s"])
            stored.append({"manager": manager, "fault": fault, "acks_before": r["acks_before_kill"],
                           "acks_after": r["acks_after_kill"], "settled_s": r["settled_at"] - r["fault_at"],
                           "stall_s": _finite(r["stall_s"]),
                           "first_ack_after_settled_s": _finite(r["resumed_after_settled_s"]),
                           "busy_codes": dict(r["busy_codes"]), "connection_errors": r["errors"],
                           "entries": r["entries"], "expected_entries": r["expected_entries"],
                           "acked_missing": r["acked_missing"], "exact": bool(ok)})
            codes = ", ".join(f"{n} {c}" for c, n in sorted(r["busy_codes"].items())) or "0"
            rows.append([manager, fault, f"{r['acks_before_kill']}/{r['acks_after_kill']}",
                         f"{r['settled_at'] - r['fault_at']:.1f}", f"{r['stall_s']:.1f}",
                         f"{r['resumed_after_settled_s']:.1f}", codes, str(r["errors"]),
                         f"{r['entries']:,} of {r['expected_entries']:,}", str(r["acked_missing"]),
                         "yes" if ok else "NO"])
    print(f"== failover: {devices} devices x {batches} batches x {per_batch} entries uploading (one load generator "
          f"process) to `checkpoint server run` (defaults) on a multi-host URL (target_session_attrs=read-write); "
          f"after a third of the batches a fault: primary_killed: pg_auto_failover: the primary's postmaster and "
          f"pg_autoctl SIGKILLed, the monitor promotes the standby (health checks made faster: "
          f"bench/autofailover.py); pg_ctl: its postmaster SIGKILLed, the standby promoted "
          f"{PROMOTE_AFTER_S:.0f} s later by hand; standby_killed: the standby's node SIGKILLed (settled: the "
          f"primary stops waiting for it); monitor_killed; primary_frozen: the primary's node SIGSTOPped (a "
          f"partition), the standby promoted, ingest goes on, then SIGCONT (the old primary is demoted); "
          f"primary_partitioned: the server (in a network namespace of its own) cut off from the primary alone "
          f"for {PARTITION_S:.0f} s (settled: healed); monitor_killed_in_failover: the primary killed, the monitor "
          f"SIGKILLed once the failover has begun and started again {MONITOR_DOWN_S:.0f} s later; "
          f"standby_killed_in_failover: the primary killed, the standby SIGKILLed once the failover has begun and "
          f"started again {NO_PRIMARY_S:.0f} s later (settled: promoted); primary_cut_from_monitor: every packet "
          f"between the primary and the monitor (in a network namespace of its own) dropped (settled: the standby "
          f"promoted); "
          f"{runs} run(s) each")
    print(table(["manager", "fault", "acks before/after the fault", "fault to settled s", "stall s",
                 "first ack after settled s", "503/429 (code)", "connection errors", "entries on the primary",
                 "acked batches missing", "0 lost, 0 doubled"], rows, left=2))
    for (manager, fault), values in stalls.items():
        print(f"{manager}, {fault}: uploads stalled {statistics.median(values):.1f} s (median; min "
              f"{min(values):.1f}, max {max(values):.1f})")
    print()
    return {"devices": devices, "batches": batches, "per_batch": per_batch, "runs": runs,
            "promote_after_s": PROMOTE_AFTER_S, "partition_s": PARTITION_S, "monitor_down_s": MONITOR_DOWN_S,
            "no_primary_s": NO_PRIMARY_S,
            "faults": stored}
