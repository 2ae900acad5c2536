"""PostgreSQL failures mid-ingest (bench/bench_failover.py's scenario, on a small fleet): the primary
dies (SIGKILL of its postmaster) and its synchronous standby is promoted (by pg_auto_failover's
monitor, and by hand); the standby dies; the monitor dies, also in the middle of a failover; the
standby dies while it is being promoted; the primary is cut off by a partition and comes back; the
path between the server and the primary alone is cut and heals, and so is the one between the
primary and the monitor alone. `checkpoint server run` on a
multi-host URL finds the writable node by itself, devices retry, and afterwards the primary holds
every entry exactly once and every batch a device saw acknowledged. And a connection whose database
stops answering is cut at the server's deadline, the pool's other connections to it with it."""
from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import threading
import time

import pytest
from support.entries import chain_entries
from support.servers import enroll_direct, ingest_entries

from bench.bench_failover import managers, scenario
from bench.pgcluster import PgCluster, find_bin_dir, scalar
from scanner.base.timeutil import now_ms
from sync.server.model import StorageUnavailable
from sync.server.storage import open_storage
from sync.server.trace import trace


def _run(tmp_path, manager: str, fault: str, batches: int = 6, pace_s: float = 0.0) -> dict:
    if manager not in managers():
        pytest.skip(f"{manager} cannot run here (Debian packages postgresql, postgresql-15-auto-failover)")
    r = scenario(tmp_path, devices=8, batches=batches, per_batch=50, kill_after=16, deadline_s=240, manager=manager,
                 fault=fault, pace_s=pace_s)
    assert not r["failures"], r["failures"][:5]
    assert r["acks_before_kill"] > 0 and r["acks_after_kill"] > 0  # the fault came mid-ingest
    assert len(r["acked"]) == r["expected_batches"] == 8 * batches  # every batch acknowledged in the end
    assert r["acked_missing"] == 0  # and every acknowledged one is on the primary afterwards
    assert r["exact"] and r["entries"] == r["expected_entries"] == 8 * batches * 50  # nothing lost, nothing twice
    assert r["conflicts"] == 0 and r["chain_problems"] == 0
    print(f"{manager}, {fault}: uploads stalled {r['stall_s']:.1f} s; first ack {r['resumed_after_settled_s']:.1f} s "
          f"after it settled; busy answers {r['busy_codes']}, {r['errors']} connection errors")
    return r


@pytest.mark.parametrize("manager", ["pg_auto_failover", "pg_ctl"])
def test_the_primary_killed_mid_ingest_loses_and_doubles_nothing(tmp_path, manager):
    r = _run(tmp_path, manager, "primary_killed")
    # while there was no primary, devices were told so (503 db_unavailable) and retried
    assert r["busy_codes"].get("db_unavailable", 0) > 0


def test_the_standby_dying_mid_ingest_loses_and_doubles_nothing(tmp_path):
    """Commits wait for the synchronous standby until the monitor tells the primary to go on
    alone (wait_primary); ingest then goes on on the same primary. (The primary's keeper stops
    waiting for the standby before the monitor records wait_primary: the batches held up until then
    may all be acknowledged before the test sees that state.)"""
    r = _run(tmp_path, "pg_auto_failover", "standby_killed", batches=10)
    assert math.isfinite(r["stall_s"])  # acknowledgements went on after the standby died


def test_the_monitor_dying_mid_ingest_does_not_stop_ingest(tmp_path):
    """The monitor only decides failovers: without it the primary and its standby go on."""
    _run(tmp_path, "pg_auto_failover", "monitor_killed")


def test_a_partitioned_primary_is_left_behind_and_demoted_when_it_returns(tmp_path):
    """The primary cut off from everyone (frozen: its connections stay open, nothing answers on
    them): requests holding those connections are answered 503 db_unavailable after the server's
    deadline instead of waiting for the partition to heal; the standby is promoted and ingest goes
    on there while the old primary is still cut off; when it returns it takes no writes."""
    r = _run(tmp_path, "pg_auto_failover", "primary_frozen", batches=10)
    assert r["busy_codes"].get("db_unavailable", 0) > 0
    assert r["acks_while_frozen"] > 0  # ingest went on before the partition healed
    assert r["old_primary_demoted_at"] >= r["thawed_at"]


def test_the_path_between_the_server_and_the_primary_alone_cut_and_healed(tmp_path):
    """The server in a network namespace of its own; every packet between it and the primary
    dropped for longer than its work deadline while the monitor, the standby and the devices
    still reach everything (the primary is healthy: nothing fails over). Meanwhile devices are
    answered 503 db_unavailable (the standby takes no writes) and nothing is acknowledged; once the
    path heals ingest goes on on the same primary, nothing lost or doubled."""
    if os.geteuid() != 0:
        pytest.skip("a network namespace needs root")
    r = _run(tmp_path, "pg_auto_failover", "primary_partitioned", batches=10)
    assert r["busy_codes"].get("db_unavailable", 0) > 0
    assert r["acks_while_cut"] == 0
    assert math.isfinite(r["resumed_after_settled_s"])


def test_the_monitor_dying_during_a_failover(tmp_path):
    """The primary killed; once the monitor has begun the failover it is killed too, and started
    again some seconds later: the failover completes, devices were told 503 db_unavailable while
    there was no primary, and ingest goes on on the promoted standby, nothing lost or doubled."""
    r = _run(tmp_path, "pg_auto_failover", "monitor_killed_in_failover", batches=10)
    assert r["busy_codes"].get("db_unavailable", 0) > 0
    assert r["monitor_killed_at"] < r["monitor_back_at"] <= r["settled_at"]


def test_the_standby_dying_while_it_is_promoted(tmp_path):
    """The primary killed; once the monitor has begun the failover the standby is killed too: no
    node can take writes. Meanwhile nothing is acknowledged and devices are told so (503
    db_unavailable, each with a Retry-After); once the standby is started again the failover
    completes and ingest goes on there, nothing lost or doubled."""
    r = _run(tmp_path, "pg_auto_failover", "standby_killed_in_failover", batches=10)
    assert r["acks_without_primary"] == 0
    assert r["busy_without_primary"] > 0 and r["busy_codes"].get("db_unavailable", 0) > 0
    assert r["no_retry_after"] == 0  # every refusal said when to try again
    assert r["no_primary_at"] < r["node_back_at"] <= r["settled_at"]


def test_the_primary_cut_from_the_monitor_alone(tmp_path):
    """The monitor in a network namespace of its own, every packet between it and the primary
    dropped while the primary, its standby and the server still reach each other: the monitor
    promotes the standby, the old primary (still up, told nothing) acknowledges nothing the new one
    lacks (its commits wait for the standby that left it), and is demoted (by its keeper alone
    while cut off, or once it reaches the monitor again); every acknowledged batch is on the new
    primary, nothing lost or doubled: no split brain."""
    if os.geteuid() != 0:
        pytest.skip("a network namespace needs root")
    # the devices upload at a steady pace (a batch every 0.2 s each, for 30 s), so some are still uploading
    # when the standby is promoted, however fast the server takes the batches before it
    r = _run(tmp_path, "pg_auto_failover", "primary_cut_from_monitor", batches=150, pace_s=0.2)
    assert math.isfinite(r["resumed_after_settled_s"])  # ingest went on on the new primary
    assert r["settled_at"] <= r["monitor_reached_at"] <= r["old_primary_demoted_at"]
    print(f"the old primary stopped by its keeper while cut off: {'yes' if r['demoted_while_cut'] else 'NO'}")


def test_a_database_that_stops_answering_is_cut_at_the_deadline(tmp_path):
    """A query on a connection whose server stopped answering (every process of it frozen: the
    kernel keeps the connection open) fails as StorageUnavailable at the storage's deadline, and
    the storage works again once the server answers."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found (the postgresql package)")
    db = PgCluster(bin_dir, durable=False)
    frozen: list[int] = []
    try:
        st = open_storage(db.url(), work_deadline_s=2.0)
        try:
            _, dev = enroll_direct(st, "cp-1")
            assert st.device(dev) is not None
            pm = db.postmaster_pid()
            children = subprocess.run(["pgrep", "-P", str(pm)], capture_output=True, text=True, check=False)
            frozen = [pm, *map(int, children.stdout.split())]
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)
            outcome: list[BaseException | object] = []

            def ask() -> None:
                try:
                    outcome.append(st.device(dev))
                except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
                    outcome.append(exc)

            worker = threading.Thread(target=ask, daemon=True)
            worker.start()
            worker.join(60)  # far beyond the deadline: without it the query waits for the database for ever
            assert not worker.is_alive(), "the query still waits for a database that does not answer"
            assert isinstance(outcome[0], StorageUnavailable), outcome
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
            frozen = []
            assert st.device(dev) is not None  # a fresh connection: working again
        finally:
            st.close()
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        db.stop()


def test_after_a_connection_is_cut_the_next_request_finds_the_new_primary(tmp_path):
    """The primary frozen (its kernel keeps every connection open, nothing answers) and its standby
    promoted: the request on one of the pool's connections to the old primary is cut at the
    deadline, and the next one goes to the new primary instead of waiting on another of those
    connections (each would hold a request for a whole deadline: the frozen primary's long stall)."""
    psycopg = pytest.importorskip("psycopg")  # the optional `server` extra: skipped where it is missing

    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found (the postgresql package)")
    primary = PgCluster(bin_dir, durable=False)
    frozen: list[int] = []
    try:
        standby = PgCluster(bin_dir, durable=False, standby_of=primary)
        try:
            url = (f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/postgres"
                   f"?target_session_attrs=read-write&connect_timeout=2")
            st = open_storage(url, work_deadline_s=2.0)
            try:
                _, dev = enroll_direct(st, "cp-1")
                with psycopg.connect(primary.url(), autocommit=True) as conn:
                    written = scalar(conn, "SELECT pg_current_wal_lsn()")
                with psycopg.connect(standby.url(), autocommit=True) as conn:  # replicated before the freeze
                    while not scalar(conn, "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (written,)):
                        time.sleep(0.05)
                idle = [st.pool.getconn() for _ in range(4)]  # the pool holds several connections to the primary
                for conn in idle:
                    st.pool.putconn(conn)
                frozen = _freeze(primary)
                standby.promote()
                with pytest.raises(StorageUnavailable):  # an old connection: no answer, cut at the deadline
                    st.device(dev)
                assert st.device(dev) is not None  # the next request: a new connection, to the new primary
            finally:
                st.close()
        finally:
            _thaw(frozen)
            frozen = []
            standby.stop()
    finally:
        _thaw(frozen)
        primary.stop()


def _freeze(db: PgCluster) -> list[int]:
    """SIGSTOP of the server's postmaster and every backend (its kernel keeps the connections open)."""
    pm = db.postmaster_pid()
    children = subprocess.run(["pgrep", "-P", str(pm)], capture_output=True, text=True, check=False)
    frozen = [pm, *map(int, children.stdout.split())]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    return frozen


def _thaw(frozen: list[int]) -> None:
    for pid in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def test_tracing_reads_from_the_streaming_standby(tmp_path):
    """What is acknowledged on the primary is traced on its synchronous standby (a hot standby:
    read-only), so the call centre's questions can go there."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found (the postgresql package)")
    primary = PgCluster(bin_dir, durable=False, settings={"synchronous_commit": "remote_apply",
                                                         "synchronous_standby_names": "walreceiver"})
    try:
        standby = PgCluster(bin_dir, durable=False, standby_of=primary)
        try:
            st = open_storage(primary.url())
            try:
                key, dev = enroll_direct(st, "cp-1")
                now = now_ms()
                cards = ["ab" * 16, "cd" * 16, "ab" * 16]
                ingest_entries(st, key, dev, chain_entries(dev, "cp-1", [now - 3000, now - 2000, now - 1000], cards))
            finally:
                st.close()
            replica = open_storage(standby.url())  # remote_apply: the commit waited until it is visible there
            try:
                rep = trace(replica, "ab" * 16, since_ms=now - 60_000, until_ms=now + 1, window_ms=60_000)
                assert len(rep.visits) == 2 and rep.contact_cards == 1
                assert replica.stats().entries == 3
                with pytest.raises(StorageUnavailable):  # and it takes no writes: 503, the device retries
                    ingest_entries(replica, key, dev, chain_entries(dev, "cp-1", [now], ["ef" * 16], first_seq=4,
                                                                    prev_hash=bytes(32)))
            finally:
                replica.close()
        finally:
            standby.stop()
    finally:
        primary.stop()
