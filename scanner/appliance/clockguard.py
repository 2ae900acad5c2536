"""The appliance's time: never earlier than the last time seen, and whether the clock is confirmed.

A Raspberry Pi has no battery clock: after a power cut without network it may start at the last
shutdown, or in 1970. The guard keeps the latest time it has handed out (saved in
STATE/clock.json), and when the wall clock is behind it (it stepped back, or started behind),
time goes on from there with the monotonic clock instead. The clock is *confirmed* when the
kernel says NTP has synchronised it, or when the central server's time (sync-state.json, every
contact) is within ``max_offset_s``; until then the device is degraded, and past
``max_unconfirmed_s`` since the last confirmation the degraded-mode policy applies. A server
answer counts only in the boot it came in, and only as far as the wall clock has not been stepped
since (clock.ServerTime.offset_now): a restarted daemon may reuse it, a rebooted Pi may not.
docs/configuration.md#clock.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from scanner.base.fsutil import atomic_write
from scanner.store import clock as clockmod
from scanner.store.clock import ClockStatus

log = logging.getLogger(__name__)

FILE_NAME = "clock.json"
SLACK_S = 0.002  # wall and monotonic clocks read a moment apart never count as a step back


class ClockGuard:
    """Thread-safe; ``now()`` is what every scan, verdict and entry uses."""

    def __init__(self, state_dir: str | os.PathLike | None, *, max_offset_s: float = 10.0,
                 floor: float | None = None, wall: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic,
                 kernel: Callable[[], clockmod.KernelClock] = clockmod.read,
                 boot: Callable[[], clockmod.BootTime] = clockmod.boot_time) -> None:
        self.path = Path(state_dir) / FILE_NAME if state_dir is not None else None
        self.max_offset_s = max_offset_s
        self._wall, self._mono, self._kernel, self._boot = wall, mono, kernel, boot
        self._lock = threading.Lock()
        saved = self._load()
        last_seen = max(saved.get("last_seen_ms", 0) / 1000, floor or 0.0)
        self._anchor = (last_seen, mono())
        self._last = last_seen
        self._confirmed_at: float | None = saved.get("confirmed_ms", 0) / 1000 or None
        self._by: str | None = saved.get("confirmed_by")
        self._confirmed_now = False
        self._behind = False
        self._offset_ms: int | None = None
        self._server_checked_ms: int | None = None
        self._kernel_state = clockmod.UNKNOWN
        self._saved_at = mono()
        self.now()

    # ------------------------------------------------------------ time

    def now(self) -> float:
        """Wall-clock time, or the last time seen advanced by the monotonic clock when the wall
        clock is behind it: never earlier than any time this guard handed out before."""
        wall, mono = self._wall(), self._mono()
        with self._lock:
            estimate = self._anchor[0] + (mono - self._anchor[1])
            if wall + SLACK_S >= estimate:
                self._anchor = (wall, mono)
                if self._behind:
                    log.info("clock: wall clock caught up with the last time seen")
                self._behind = False
                value = wall
            else:
                if not self._behind:
                    log.warning("clock: wall clock is %.1f s behind the last time seen; going on from that",
                                estimate - wall)
                self._behind = True
                value = estimate
            self._last = max(self._last, value)
            return self._last

    # ------------------------------------------------------------ confirmation

    def refresh(self, server: clockmod.ServerTime | None = None) -> ClockStatus:
        """Ask the kernel, take the server's last answer (from sync-state.json), and confirm the
        clock if either says it is right. Called by the daemon about once a second."""
        kernel = self._kernel()
        with self._lock:
            self._kernel_state = kernel.state
        if kernel.state == clockmod.SYNCED:
            self._confirm("ntp")
        if server is not None and server.checked_ms != self._server_checked_ms:
            with self._lock:
                self._server_checked_ms = server.checked_ms
            self._take_server_answer(server)
        return self.status()

    def _take_server_answer(self, server: clockmod.ServerTime) -> None:
        """Confirm by a server answer of this boot whose offset, less any step of the wall clock
        since, is within the limit; an answer from an earlier boot says nothing about this clock."""
        boot, wall = self._boot(), self._wall()
        offset = server.offset_now(boot, int(wall * 1000))
        if offset is None:
            log.info("clock: the server's last answer is from an earlier boot: not used; waiting for a new one")
            return
        with self._lock:
            self._offset_ms = offset
        if abs(offset) > self.max_offset_s * 1000:
            log.warning("clock: %+.1f s off the server's time (limit %.1f s): not confirmed",
                        offset / 1000, self.max_offset_s)
            return
        age_s = (boot.since_boot_ms - server.boot.since_boot_ms) / 1000 if server.boot else 0.0
        self._confirm("server", at=wall - age_s)

    def _confirm(self, by: str, at: float | None = None) -> None:
        """Confirmed by ``by``; ``at``: when the evidence was taken (default now)."""
        wall, mono = self._wall(), self._mono()
        with self._lock:
            if self._behind or wall + SLACK_S < self._last:
                # NTP or the server vouch for the wall clock: the saved time was wrong (in the future)
                log.warning("clock: confirmed by %s at %.1f s before the last time seen; trusting it", by,
                            self._last - wall)
                self._last = wall
                self._behind = False
            self._anchor = (wall, mono)
            at = wall if at is None else min(at, wall)
            if not self._confirmed_now:
                if wall - at >= 1:
                    log.info("clock: confirmed by %s (its answer of %.0f s ago, this boot, no clock step since)",
                             by, wall - at)
                else:
                    log.info("clock: confirmed by %s", by)
            self._confirmed_now = True
            if self._confirmed_at is None or at >= self._confirmed_at:
                self._confirmed_at, self._by = at, by

    def status(self) -> ClockStatus:
        with self._lock:
            return ClockStatus(self._confirmed_now, self._behind, self._confirmed_at, self._by, self._offset_ms,
                               self._kernel_state)

    def entry_state(self) -> str:
        """What an entry records about its time: "synced" while the clock is confirmed and not
        behind, else "unsynced" (docs/entry-log.md#time-and-clock)."""
        with self._lock:
            return clockmod.SYNCED if self._confirmed_now and not self._behind else clockmod.UNSYNCED

    # ------------------------------------------------------------ persistence

    def _load(self) -> dict:
        if self.path is None:
            return {}
        try:
            doc = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("clock: %s unreadable (%s); starting without it", self.path, exc)
            return {}
        if not isinstance(doc, dict):
            return {}
        out = {}
        for key in ("last_seen_ms", "confirmed_ms"):
            if type(doc.get(key)) is int and doc[key] >= 0:
                out[key] = doc[key]
        if doc.get("confirmed_by") in ("ntp", "server"):
            out["confirmed_by"] = doc["confirmed_by"]
        return out

    def save(self) -> None:
        """Write the last time seen and the last confirmation (atomically) to STATE/clock.json."""
        if self.path is None:
            return
        self.now()
        with self._lock:
            doc = {"last_seen_ms": int(self._last * 1000),
                   "confirmed_ms": int(self._confirmed_at * 1000) if self._confirmed_at else 0,
                   "confirmed_by": self._by}
            self._saved_at = self._mono()
        try:
            atomic_write(self.path, (json.dumps(doc) + "\n").encode("ascii"), 0o600)
        except OSError as exc:
            log.warning("clock: cannot save %s: %s", self.path, exc)

    def save_if_due(self, interval_s: float) -> None:
        if self._mono() - self._saved_at >= interval_s:
            self.save()
