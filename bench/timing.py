"""Interleaved timing with medians, and plain-text tables."""
from __future__ import annotations

import gc
import itertools
import random
import statistics
import time
from collections.abc import Callable, Sequence


def calibrate(fn: Callable[[], object], target_s: float, clock: Callable[[], float] = time.perf_counter) -> int:
    """How many calls of ``fn`` take about ``target_s`` (a power of two, at least 1)."""
    n = 1
    while True:
        t0 = clock()
        for _ in itertools.repeat(None, n):
            fn()
        elapsed = clock() - t0
        if elapsed >= target_s or n >= 1 << 22:
            return n
        n *= 2 if elapsed > target_s / 8 else 8


def interleaved(cases: dict[str, Callable[[], object]], *, rounds: int, target_s: float = 0.004,
                seed: int = 1, clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Per-call seconds of every case, one sample per case per round.

    Every round runs every case once (a batch of calls sized to ``target_s``), in a shuffled order,
    so slow phases of a noisy machine hit all cases alike; ratios are then taken within a round.
    The garbage collector is off while timing (as in timeit) and run between rounds. ``clock`` may
    be `time.process_time` for single-threaded CPU-bound work: the CPU it costs, which other
    processes on a shared machine do not inflate (its wall time they do, several times over).
    """
    loops = {name: calibrate(fn, target_s, clock) for name, fn in cases.items()}
    samples: dict[str, list[float]] = {name: [] for name in cases}
    order = list(cases)
    rng = random.Random(seed)
    gc_was_enabled = gc.isenabled()
    try:
        for _ in range(rounds):
            rng.shuffle(order)
            gc.collect()
            gc.disable()
            for name in order:
                fn = cases[name]
                n = loops[name]
                t0 = clock()
                for _ in itertools.repeat(None, n):
                    fn()
                samples[name].append((clock() - t0) / n)
            gc.enable()
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def run_queue_wait_s() -> float | None:
    """Seconds the calling thread has spent runnable but waiting for a CPU since it started
    (Linux's /proc/thread-self/schedstat, second field), or None where the kernel does not say."""
    try:
        with open("/proc/thread-self/schedstat", encoding="ascii") as fh:
            return int(fh.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    """The sample at fraction ``q`` of the sorted values (nearest rank, no interpolation)."""
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """The 25th and 75th percentiles (the middle half of the samples)."""
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def ratios(samples: dict[str, list[float]], name: str, peer: str) -> list[float]:
    """Per-round ratios name/peer (both measured in the same round)."""
    return [a / b for a, b in zip(samples[name], samples[peer])]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, left: int = 1) -> str:
    """A plain-text table; the first ``left`` columns are left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in cells[1:])
    return "\n".join(out)


def us(seconds: float) -> str:
    """Seconds as microseconds with a sensible number of digits."""
    v = seconds * 1e6
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"
