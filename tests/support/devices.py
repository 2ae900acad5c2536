"""Devices provisioned against the real test server, with real entry logs."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from scanner.cards.scan import Scan
from scanner.store.entrylog import EntryLog
from sync import credential
from sync.provision import provision


@dataclass
class Device:
    state: Path
    log: EntryLog
    device_id: str
    checkpoint_id: str


def provision_device(server, tmp: Path, name: str = "dev", **kw) -> Device:
    state = tmp / name
    kw.setdefault("trust_root", server.root_pub)
    res = provision(server.url, server.token(), state, **kw)
    log = EntryLog(state / "entries.db", device_id=res.device_id, checkpoint_id=res.checkpoint_id,
                   sealing_key=credential.load(state).sealing_key, synchronous="NORMAL", passback_window_s=0)
    return Device(state, log, res.device_id, res.checkpoint_id)


def record(device: Device, verdicts, n: int, *, source_id: str = "cam0") -> list:
    """Record ``n`` real entries through EntryLog.record (verdicts cycled)."""
    out = []
    t = time.time()
    for i in range(n):
        v = verdicts[i % len(verdicts)]
        out.append(device.log.record(Scan("CK1:x", "camera", source_id, t + i / 1000, "in"), v).entry)
    return out


def assert_exactly_once(storage, device: Device) -> None:
    """The server holds every entry of the device's log exactly once, with the device's hashes, and
    the device has every entry marked synced."""
    held = storage.entry_hashes(device.device_id)
    local = {e.seq: e.hash for e in device.log.entries()}
    assert held == local
    assert device.log.pending(0, 1) == []
    stats = storage.stats()
    assert stats.conflicts == 0 and stats.chain_problems == 0
