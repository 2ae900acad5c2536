"""Wall-clock time as the integer UTC epoch milliseconds that entries, batches and the protocol carry."""
from __future__ import annotations

import time

DAY_MS = 86_400_000


def now_ms() -> int:
    """The wall clock now, in UTC epoch milliseconds (integer arithmetic: no float rounding)."""
    return time.time_ns() // 1_000_000
