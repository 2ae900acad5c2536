"""The reference server (`checkpoint server run` in its own process, default limits) under a flood
from several loopback addresses: 64 connections that send batch headers and then nothing or a
trickle, and junk bodies of 16 MiB (no header, a forged CK-Sig2 header, a junk batch under the
unauthenticated cap). Meanwhile enrolled devices upload through the real SyncClient, and the
server's resident memory (VmHWM from /proc) stays within a bound."""
from __future__ import annotations

import os
import threading

import pytest
from support.devices import Device, assert_exactly_once
from support.entries import bulk_fill
from support.servers import ServerProcess
from support.waiting import wait_for

from bench.flood import JUNK, SLOW, Flood, proc_kib, reset_peak
from scanner.base.backoff import Backoff
from scanner.base.timeutil import now_ms
from scanner.store.entrylog import EntryLog
from sync import credential
from sync.agent import SyncAgent
from sync.provision import provision
from sync.server.storage import open_storage
from sync.server.tokens import issue_tokens

MEMORY_BOUND = 64 * 1024 * 1024


@pytest.fixture
def server(tmp_path):
    (tmp_path / "server").mkdir()
    srv = ServerProcess(tmp_path / "server" / "central.db").start()  # `checkpoint server run`, default limits
    yield srv
    srv.stop()


def _devices(srv: ServerProcess, tmp_path, n: int, entries: int) -> list[Device]:
    st = open_storage(srv.db_url)
    try:
        tokens = issue_tokens(st, "gate-1", n, now_ms=now_ms())
    finally:
        st.close()
    out = []
    for i, tok in enumerate(tokens):
        state = tmp_path / f"dev{i}"
        res = provision(srv.url, tok, state, trust_root=srv.root_pub)
        log = EntryLog(state / "entries.db", device_id=res.device_id, checkpoint_id=res.checkpoint_id,
                       sealing_key=credential.load(state).sealing_key, synchronous="NORMAL", passback_window_s=0)
        bulk_fill(log, entries, sealed=os.urandom(133))
        out.append(Device(state, log, res.device_id, res.checkpoint_id))
    return out


@pytest.mark.parametrize("schedule", ["junk", "slow+junk"])
def test_devices_upload_through_a_flood_with_server_memory_bounded(server, tmp_path, schedule):
    """``junk``: 16 senders of junk bodies, then devices upload. ``slow+junk``: the slow
    connections first (settling into whatever they can hold), then the junk, then devices upload."""
    devices = _devices(server, tmp_path, 3, 1200)
    pid = server.proc.pid
    agents = [SyncAgent(d.state, d.log, backoff=Backoff(base_s=0.05, cap_s=1.0, jitter=True)) for d in devices]
    warm = SyncAgent(devices[0].state, devices[0].log)
    warm.client.heartbeat(warm.heartbeat_doc(warm.files.load()))  # the server has answered a device once
    warm.close()
    reset_peak(pid)  # VmHWM := VmRSS: the peak from here on
    base_kib = proc_kib(pid, "VmRSS")

    flood = Flood(server.port, devices[0].device_id)
    results: dict[str, object] = {}
    try:
        if schedule == "slow+junk":
            flood.start_slow()
            wait_for(lambda: flood.slow_open >= SLOW, "every slow connection sending headers")
            flood.stop_event.wait(3.0)  # the attack's schedule: slow connections settle into whatever they can hold
        flood.start_junk()
        wait_for(lambda: flood.junk_done >= 2 * JUNK, "the junk flood under way")

        def upload(agent: SyncAgent, dev: Device) -> None:
            results[dev.device_id] = agent.sync_until_done(120.0)

        threads = [threading.Thread(target=upload, args=(a, d)) for a, d in zip(agents, devices, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        peak_kib = proc_kib(pid, "VmHWM")
    finally:
        flood.stop()
        for a in agents:
            a.close()
    growth = (peak_kib - base_kib) * 1024
    done = {dev: (getattr(r, "complete", False), getattr(r, "error_code", None)) for dev, r in results.items()}
    assert (all(c for c, _ in done.values()) and len(done) == len(devices), growth <= MEMORY_BOUND) == (True, True), (
        f"uploads {done}; server memory grew {growth / 2**20:.0f} MiB (bound {MEMORY_BOUND // 2**20}); "
        f"flood answers {dict(flood.answers)}")
    assert not any(status == 200 for (_, status) in flood.answers)
    st = open_storage(server.db_url)
    try:
        for d in devices:
            assert_exactly_once(st, d)
    finally:
        st.close()
        for d in devices:
            d.log.close()
