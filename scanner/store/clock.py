"""Whether the wall clock can be trusted: the kernel's NTP state, read with adjtimex(2), and the
status the appliance's clock guard keeps from it and the server's time (``ClockStatus``).

Every log entry records the clock's trust state next to its time (docs/entry-log.md#time-and-clock)
so that the server can weigh entries stamped by a device whose clock was never set. The state is
read from the kernel, not guessed from the presence of an NTP daemon: systemd-timesyncd, chrony
and ntpd all tell the kernel when they have disciplined the clock (they clear ``STA_UNSYNC`` and
set ``maxerror``); without them the kernel keeps ``STA_UNSYNC`` set and lets ``maxerror`` grow to
16 s.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
import time
from dataclasses import dataclass
from functools import cache

SYNCED = "synced"
UNSYNCED = "unsynced"
UNKNOWN = "unknown"
STATES = (SYNCED, UNSYNCED, UNKNOWN)

# <linux/timex.h>
STA_UNSYNC = 0x0040
TIME_ERROR = 5
NTP_PHASE_LIMIT_US = 16_000_000  # the kernel's maxerror ceiling: "no idea"


class _Timex(ctypes.Structure):
    """``struct timex`` of the C library's adjtimex(): C ``long`` fields, natural alignment.

    This matches the kernel ABI on 64-bit Linux and the (32-bit ``time_t``) ``adjtimex`` symbol
    on 32-bit ARM; the trailing padding is generous so a larger kernel struct never overflows it.
    """

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 32),
    ]


@dataclass(frozen=True, slots=True)
class KernelClock:
    """What the kernel says about the clock; ``state`` is one of STATES."""

    state: str
    maxerror_us: int | None = None
    esterror_us: int | None = None
    status_bits: int | None = None
    kernel_time_s: int | None = None  # the kernel's wall clock as adjtimex reported it
    tick_us: int | None = None
    detail: str = ""


def classify(ret: int, status_bits: int, maxerror_us: int) -> str:
    """The trust state from adjtimex()'s return value, ``status`` and ``maxerror`` (pure)."""
    if ret < 0:
        return UNKNOWN
    if ret == TIME_ERROR or status_bits & STA_UNSYNC or maxerror_us >= NTP_PHASE_LIMIT_US:
        return UNSYNCED
    return SYNCED


@cache
def _adjtimex():
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        fn = libc.adjtimex
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.POINTER(_Timex)]
    fn.restype = ctypes.c_int
    return fn


def read() -> KernelClock:
    """Ask the kernel (adjtimex with modes=0: read only, no privilege needed)."""
    fn = _adjtimex()
    if fn is None:
        return KernelClock(UNKNOWN, detail="adjtimex(2) is not available on this system")
    tx = _Timex()
    ret = fn(ctypes.byref(tx))
    if ret < 0:
        err = ctypes.get_errno()
        return KernelClock(UNKNOWN, detail=f"adjtimex(2) failed: errno {err}")
    return KernelClock(classify(ret, tx.status, tx.maxerror), int(tx.maxerror), int(tx.esterror),
                       int(tx.status), int(tx.time_sec), int(tx.tick))


def state() -> str:
    """"synced", "unsynced" or "unknown" right now (one cheap system call)."""
    return read().state


@dataclass(frozen=True, slots=True)
class ClockStatus:
    """The clock as the appliance's clock guard sees it: what the health check and the admission
    policy judge.

    ``confirmed``: confirmed since this process started (by NTP, or by a server answer of this
    boot, which may be older than the process); ``behind``: the wall clock is earlier
    than the last time seen (times come from the guard instead); ``confirmed_at`` when it was last
    confirmed (also before this start; None if never) and ``by`` what ("ntp" or "server");
    ``offset_ms`` the last server offset seen; ``kernel`` the kernel's state (one of STATES).
    """

    confirmed: bool
    behind: bool
    confirmed_at: float | None
    by: str | None
    offset_ms: int | None
    kernel: str

    def unconfirmed_for(self, now: float) -> float:
        """Seconds since the last confirmation (infinite if never)."""
        return float("inf") if self.confirmed_at is None else max(0.0, now - self.confirmed_at)


BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


@dataclass(frozen=True, slots=True)
class BootTime:
    """A moment within one boot of the kernel: its boot id (a fresh random UUID at every boot;
    None if unreadable) and the milliseconds since that boot (CLOCK_BOOTTIME, which no one can set)."""

    boot_id: str | None
    since_boot_ms: int


@dataclass(frozen=True, slots=True)
class ServerTime:
    """A server's time answer as the device recorded it: the offset (server minus device, ms), the
    device's wall clock (epoch ms) and the boot moment when it came."""

    offset_ms: int
    checked_ms: int
    boot: BootTime | None  # None: recorded without one (by an older version): from an unknown boot

    def offset_now(self, now: BootTime, wall_ms: int) -> int | None:
        """The server's offset as it stands now: the answer's offset less any step of the wall
        clock since (the wall clock's elapsed time minus the boot clock's); None if the answer
        cannot speak for this clock any more: recorded in another (or an unknown) boot."""
        then = self.boot
        if then is None or then.boot_id is None or then.boot_id != now.boot_id:
            return None
        elapsed_ms = now.since_boot_ms - then.since_boot_ms
        if elapsed_ms < 0:
            return None
        return self.offset_ms - ((wall_ms - self.checked_ms) - elapsed_ms)


def boot_time(boot_id_path: str = BOOT_ID_PATH) -> BootTime:
    """This moment of this boot (Linux; elsewhere the boot id is None and no answer is reused)."""
    return BootTime(_boot_id(boot_id_path), time.clock_gettime_ns(time.CLOCK_BOOTTIME) // 1_000_000
                    if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic_ns() // 1_000_000)


@cache
def _boot_id(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            value = f.read(64).strip()
    except (OSError, ValueError):
        return None
    return value or None


class CachedState:
    """`state()` read at most once per ``ttl_s`` (a callable like `state`). The kernel's verdict
    changes over seconds to minutes (maxerror grows 0.5 ms/s), while a scan's commit paid ~10 µs for
    the system call and its classification right after an fsync (docs/benchmarks.md#entry-log)."""

    def __init__(self, ttl_s: float = 1.0, read_state=None, monotonic=time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._read = read_state or state
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._read_at: tuple[str, float] | None = None  # the last value and when it was read

    def __call__(self) -> str:
        now = self._monotonic()
        last = self._read_at  # one tuple, replaced whole: read without the lock (a scan's hot path)
        if last is not None and 0 <= now - last[1] < self.ttl_s:
            return last[0]
        with self._lock:
            last = self._read_at
            if last is None or not 0 <= now - last[1] < self.ttl_s:
                last = self._read_at = (self._read(), now)
            return last[0]
