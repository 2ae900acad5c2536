"""What the operator's commands report about the fleet, from the server's storage: devices with
their health (stale first), and chain problems with sequence gaps."""
from __future__ import annotations

from dataclasses import dataclass

from sync.server.model import ChainEvent, Storage

MAX_CHAIN_EVENTS = 1000
MAX_GAPS = 100  # ranges per device in the chain report
MAX_DEVICE_GAPS = 20  # ranges per device in the device list


def device_rows(storage: Storage, stale_after_s: float, now_ms: int) -> list[dict]:
    """Devices for `server devices`: never seen first, then stale (oldest first), then the rest;
    each with ``stale`` and, when sequence numbers are missing, its first ``gaps``."""
    rows = []
    for st in storage.devices():
        d = st.to_dict()
        seen = st.last_seen_ms
        d["stale"] = seen is None or now_ms - seen > stale_after_s * 1000
        d["gaps"] = [list(g) for g in storage.gaps(st.device.device_id, MAX_DEVICE_GAPS)] if st.missing else []
        rows.append(d)
    rows.sort(key=lambda d: (not d["stale"], d["last_seen_ms"] or 0, d["device_id"]))
    return rows


@dataclass(frozen=True, slots=True)
class ChainReport:
    """Chain problems the server found (relinked, altered, conflict) and the sequence gaps of each device."""

    events: tuple[ChainEvent, ...]
    gaps: dict[str, list[tuple[int, int]]]


def chain_report(storage: Storage, device_id: str | None = None) -> ChainReport:
    """`server chain`: for one device, or all of them."""
    events = storage.chain_events(device_id, MAX_CHAIN_EVENTS)
    devices = [device_id] if device_id else [d.device.device_id for d in storage.devices()]
    return ChainReport(tuple(events), {d: storage.gaps(d, MAX_GAPS) for d in devices})
