"""The clock's trust state comes from the kernel (adjtimex), read for real."""
from __future__ import annotations

import sys
import time

import pytest

from scanner.store import clock


@pytest.mark.parametrize("ret, status, maxerror, expected", [
    (0, 0x2001, 250_000, "synced"),  # TIME_OK, PLL|NANO, 0.25 s error bound: disciplined by NTP
    (0, 0x0001, 15_999_999, "synced"),
    (5, 0x0040, 16_000_000, "unsynced"),  # TIME_ERROR + STA_UNSYNC: never set since boot
    (0, 0x0040, 100, "unsynced"),  # STA_UNSYNC alone is enough
    (5, 0x0000, 100, "unsynced"),  # so is TIME_ERROR
    (0, 0x0000, 16_000_000, "unsynced"),  # maxerror grown to the kernel's limit
    (1, 0x0010, 1000, "synced"),  # TIME_INS (leap second pending) is still a good clock
    (-1, 0, 0, "unknown"),
])
def test_classify(ret, status, maxerror, expected):
    assert clock.classify(ret, status, maxerror) == expected


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="adjtimex(2) is Linux-only")
def test_reads_the_kernel_with_the_right_struct_layout():
    before = time.time()
    st = clock.read()
    after = time.time()
    assert st.state in clock.STATES and st.state != clock.UNKNOWN, st
    # the fields land where the kernel puts them: its wall clock and its tick length are sane
    assert before - 2 <= st.kernel_time_s <= after + 2
    assert 100 <= st.tick_us <= 20_000  # 1e6 / USER_HZ (10000 at HZ=100)
    assert 0 <= st.maxerror_us <= clock.NTP_PHASE_LIMIT_US
    if st.status_bits & clock.STA_UNSYNC or st.maxerror_us >= clock.NTP_PHASE_LIMIT_US:
        assert st.state == clock.UNSYNCED
    else:
        assert st.state == clock.SYNCED


def test_state_is_one_of_the_three():
    assert clock.state() in ("synced", "unsynced", "unknown")


def test_cached_state_reads_at_most_once_per_ttl():
    now, reads, answer = [100.0], [], ["synced"]

    def read():
        reads.append(now[0])
        return answer[0]

    cached = clock.CachedState(1.0, read, monotonic=lambda: now[0])
    assert cached() == "synced" and reads == [100.0]
    answer[0] = "unsynced"
    now[0] = 100.9
    assert cached() == "synced" and len(reads) == 1  # within the second: the cached answer
    now[0] = 101.0
    assert cached() == "unsynced" and reads == [100.0, 101.0]
    now[0] = 50.0  # a monotonic clock never goes back, but a cache must not trust that
    answer[0] = "synced"
    assert cached() == "synced" and len(reads) == 3


def test_cached_state_defaults_to_the_kernel():
    assert clock.CachedState()() in clock.STATES
