"""The PostgreSQL primary dies mid-ingest (SIGKILL of its postmaster) and its synchronous standby is
promoted (by pg_auto_failover's monitor, and by hand): `checkpoint server run` on a multi-host URL finds the new primary by itself, devices
retry, and the new primary holds every entry exactly once and every batch a device saw
acknowledged (bench/bench_failover.py's scenario, on a small fleet)."""
from __future__ import annotations

import pytest

from bench.bench_failover import managers, scenario


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
