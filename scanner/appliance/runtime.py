"""Interpreter settings for the scan process: short GIL hand-offs and short full collections.

Why: the scan loop shares its process with the sync, API and health threads. CPython lets a busy
thread keep the GIL for the switch interval (5 ms by default) before a waiting one gets it, and a
full garbage collection walks every tracked object: with the start-up objects in the young
generations a gen-2 collection during a sync stalled the scan loop ~20 ms
(docs/benchmarks.md#sync). Frozen objects (`gc.freeze`) are never walked again.
"""
from __future__ import annotations

import gc
import sys
from dataclasses import dataclass

SWITCH_INTERVAL_S = 0.001


@dataclass(frozen=True, slots=True)
class Tuning:
    """What `tune_for_scanning` set, and what was there before (for `restore`)."""

    switch_interval_s: float
    previous_switch_interval_s: float
    frozen_objects: int


def tune_for_scanning(switch_interval_s: float = SWITCH_INTERVAL_S) -> Tuning:
    """Set the switch interval and freeze what exists now (call once start-up has built its
    long-lived objects, and again after a big swap such as a new trust store)."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(switch_interval_s)
    return Tuning(switch_interval_s, previous, freeze_survivors())


def freeze_survivors() -> int:
    """Collect garbage, then move every surviving object out of the collector's reach; returns
    how many objects are frozen now."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def restore(t: Tuning) -> None:
    """Undo `tune_for_scanning` (tests and benchmarks that share a process with other work)."""
    sys.setswitchinterval(t.previous_switch_interval_s)
    gc.unfreeze()
