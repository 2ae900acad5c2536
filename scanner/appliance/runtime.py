"""Scheduling settings for the scan process: short GIL hand-offs, short full collections, and a
real-time verdict lane.

Why: the scan loop shares its process with the sync, API and health threads. CPython lets a busy
thread keep the GIL for the switch interval (5 ms by default) before a waiting one gets it, and a
full garbage collection walks every tracked object: with the start-up objects in the young
generations a gen-2 collection during a sync stalled the scan loop ~20 ms
(docs/benchmarks.md#sync). Frozen objects (`gc.freeze`) are never walked again. The verdict
lane's thread runs SCHED_FIFO (`prioritise_lane`): when its timer fires or its commit's fsync ends
it takes a core at once, where a normal thread waits for the running one's time slice to end.
"""
from __future__ import annotations

import gc
import logging
import os
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)

SWITCH_INTERVAL_S = 0.001
LANE_PRIORITY = 10
"""The verdict lane's SCHED_FIFO priority by default (`[scan] lane_priority`): above every normal
thread, below the kernel's interrupt threads (50); systemd/checkpoint.service allows up to it."""


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


@dataclass(frozen=True, slots=True)
class LanePriority:
    """How `prioritise_lane` left the calling thread: SCHED_FIFO at ``priority`` (``realtime``), or a
    normal thread, with the system's reason where real time was asked for and refused."""

    realtime: bool
    priority: int
    refused: str | None = None


def prioritise_lane(priority: int = LANE_PRIORITY) -> LanePriority:
    """Make the calling thread SCHED_FIFO at ``priority`` (0: leave it a normal thread); threads and
    processes it starts are normal again (SCHED_RESET_ON_FORK).

    Why: a woken normal thread waits for the running one's slice (up to a scheduler tick, 4 ms at
    250 Hz) unless the kernel finds it an idle core; the lane works about a millisecond per scan, so
    it takes little from the rest, and the kernel's real-time throttling keeps 5 % for them anyway.
    Refused (no CAP_SYS_NICE and RLIMIT_RTPRIO below ``priority``, a seccomp filter such as systemd's
    RestrictRealtime=, a CPU cgroup without real-time time): the lane runs as a normal thread."""
    if priority <= 0:
        return LanePriority(False, 0)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(priority))
    except (AttributeError, OSError) as exc:  # not Linux, or refused
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        log.warning("runtime: the verdict lane stays a normal thread: real-time priority %d refused (%s)",
                    priority, reason)
        return LanePriority(False, 0, reason)
    return LanePriority(True, priority)
