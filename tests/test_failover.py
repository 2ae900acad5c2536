"""The PostgreSQL primary dies mid-ingest (SIGKILL of its postmaster) and its synchronous standby is
promoted (by pg_auto_failover's monitor, and by hand): `checkpoint server run` on a multi-host URL
finds the new primary by itself, devices retry, and the new primary holds every entry exactly once
and every batch a device saw acknowledged (bench/bench_failover.py's scenario, on a small fleet)."""
from __future__ import annotations

import pytest
from support.entries import chain_entries
from support.servers import enroll_direct, ingest_entries

from bench.bench_failover import managers, scenario
from bench.pgcluster import PgCluster, find_bin_dir
from scanner.base.timeutil import now_ms
from sync.server.model import StorageUnavailable
from sync.server.storage import open_storage
from sync.server.trace import trace


@pytest.mark.parametrize("manager", ["pg_auto_failover", "pg_ctl"])
def test_the_primary_killed_mid_ingest_loses_and_doubles_nothing(tmp_path, manager):
    if manager not in managers():
        pytest.skip(f"{manager} cannot run here (Debian packages postgresql, postgresql-15-auto-failover)")
    r = scenario(tmp_path, devices=8, batches=6, per_batch=50, kill_after=16, deadline_s=240, manager=manager)
    assert not r["failures"], r["failures"][:5]
    assert r["acks_before_kill"] > 0 and r["acks_after_kill"] > 0  # killed mid-ingest
    assert len(r["acked"]) == r["expected_batches"] == 48  # every batch acknowledged in the end
    assert r["acked_missing"] == 0  # and every acknowledged one is on the new primary
    assert r["exact"] and r["entries"] == r["expected_entries"] == 2400  # nothing lost, nothing twice
    assert r["conflicts"] == 0 and r["chain_problems"] == 0
    print(f"uploads stalled {r['stall_s']:.1f} s; first ack {r['resumed_after_promotion_s']:.1f} s after the "
          f"promotion; {r['busy']} busy answers, {r['errors']} connection errors")


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
