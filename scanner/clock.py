"""Whether the wall clock can be trusted: the kernel's NTP state, read with adjtimex(2).

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
class ClockStatus:
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


def read() -> ClockStatus:
    """Ask the kernel (adjtimex with modes=0: read only, no privilege needed)."""
    fn = _adjtimex()
    if fn is None:
        return ClockStatus(UNKNOWN, detail="adjtimex(2) is not available on this system")
    tx = _Timex()
    ret = fn(ctypes.byref(tx))
    if ret < 0:
        err = ctypes.get_errno()
        return ClockStatus(UNKNOWN, detail=f"adjtimex(2) failed: errno {err}")
    return ClockStatus(classify(ret, tx.status, tx.maxerror), int(tx.maxerror), int(tx.esterror),
                       int(tx.status), int(tx.time_sec), int(tx.tick))


def state() -> str:
    """"synced", "unsynced" or "unknown" right now (one cheap system call)."""
    return read().state


class CachedState:
    """`state()` read at most once per ``ttl_s`` (a callable like `state`). The kernel's verdict
    changes over seconds to minutes (maxerror grows 0.5 ms/s), while a scan's commit paid ~10 µs for
    the system call and its classification right after an fsync (docs/benchmarks.md#entry-log)."""

    def __init__(self, ttl_s: float = 1.0, read_state=None, monotonic=time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._read = read_state or state
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._value: str | None = None
        self._at = 0.0

    def __call__(self) -> str:
        now = self._monotonic()
        with self._lock:
            if self._value is None or not (0 <= now - self._at < self.ttl_s):
                self._value, self._at = self._read(), now
            return self._value
