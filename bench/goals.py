"""The product's goals, and how a bench judges one: on the median of several runs, with the spread
of the runs and how many of them met it. A goal met in fewer than half of the runs is not met, and
fewer than MIN_RUNS runs (a --quick run) judge nothing."""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

MIN_RUNS = 3
TRIM_FROM = 5  # from this many runs on, the noise check of a difference leaves out the best and the worst run


@dataclass(frozen=True, slots=True)
class Goal:
    key: str
    what: str  # what is compared, in words
    limit: float  # met when the median of the runs is at most this (at least, with ``at_least``)
    unit: str  # "x" (a ratio to a peer in the same run), "ms", "s", "entries/s", "fsync/scan"
    difference: bool = False  # the figure is a difference of two noisy measurements (ms above a peer)
    at_least: bool = False  # a rate to reach: met when the median is at least ``limit``

    @property
    def sign(self) -> str:
        return "≥" if self.at_least else "≤"

    def meets(self, value: float) -> bool:
        return value >= self.limit if self.at_least else value <= self.limit


GOALS = {g.key: g for g in (
    Goal("verify.EdDSA", "full verify / raw Ed25519 signature check", 1.3, "x"),
    Goal("verify.ES256", "full verify / raw ES256 signature check", 1.5, "x"),
    Goal("decode.empty.pyzbar", "appliance decode of an empty frame / pyzbar QR-only", 0.2, "x"),
    Goal("decode.empty.zxing", "appliance decode of an empty frame / zxing-cpp with the same options", 1.1, "x"),
    Goal("entrylog.record", "EntryLog.record / raw insert+commit of the same row (FULL, fast disk)", 1.3, "x"),
    Goal("sync.stall.p99", "scan lane p99 during a 100k upload, above idle", 2.0, "ms", difference=True),
    Goal("sync.stall.max", "scan lane max during a 100k upload, above idle", 5.0, "ms", difference=True),
    Goal("fsync.per_scan", "fsyncs per scan with sync on", 1.05, "fsync/scan"),
    Goal("site.propagation.p95", "a scan at one of 20 gates known to all the others, p95", 200.0, "ms"),
    Goal("site.lane.share_p95", "the site's own steps inside a scan (look-up, hand-off), p95", 1.0, "ms"),
    Goal("site.lane.p95_delta", "scan lane p95 with sharing minus without (fast disk)", 1.0, "ms", difference=True),
    # central ingest (200 devices x 1,000 entries released at once, the server's defaults), as the goal was
    # set: a rate on this machine with the load generator beside it (docs/benchmarks.md#fleet says why it is
    # absolute); the ratio to a bare COPY of the same rows in the same run is reported with it
    Goal("fleet.entries_per_s", "server ingest with its defaults, entries/s", 50_000.0, "entries/s", at_least=True),
    Goal("fleet.ack_p95", "ack p95 with the server's defaults", 2.0, "s"),
    Goal("soak.steady_rss", "every process of the appliance, 1M revoked ids, sync on: steady RSS", 120.0, "MB"),
    Goal("soak.swap_peak", "every process of the appliance during a 1M-id bundle swap: peak RSS", 160.0, "MB"),
    Goal("soak.slope", "the appliance's RSS after warm-up, MB per 10,000 scans", 0.2, "MB/10k scans"),
    # what a person at the lane waits for (bench_daemon, bench_kiosk, bench_pipeline)
    Goal("daemon.event_p95", "a card's line written to the appliance → its verdict at an HTTP client of the "
         "event stream, p95", 100.0, "ms"),
    Goal("kiosk.paint_p95", "a verdict published → painted in the kiosk page (headless Chromium), p95", 100.0, "ms"),
    Goal("pipeline.overhead", "scan to verdict through the pipeline / decode + verify of the same frame called "
         "directly, p50", 1.2, "x"),
    # start-up of the `checkpoint` command: CPU of a fresh process / the same work through the library (bench_cli)
    Goal("cli.verify", "`checkpoint verify` / verify through the library, CPU of a fresh process", 1.3, "x"),
    Goal("cli.help", "`checkpoint --help` / `import click`, CPU of a fresh process", 1.5, "x"),
    Goal("cli.config_check", "`checkpoint config check` / `check_file` through the library, CPU of a fresh process",
         1.3, "x"),
)}


@dataclass(frozen=True, slots=True)
class Judged:
    """A goal judged on ``runs`` (one figure per run), for ``case`` (say a frame); ``verdict`` is
    "met", "not met" or "not judged" (too few runs, or ``unjudged`` says why)."""

    goal: Goal
    case: str
    runs: tuple[float, ...]
    verdict: str
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def met_runs(self) -> int:
        return sum(1 for r in self.runs if self.goal.meets(r))

    def line(self) -> str:
        """One line for the bench's output."""
        g = self.goal
        case = f" [{self.case}]" if self.case else ""
        runs = (f"median {fmt(self.median, g.unit)} of {len(self.runs)} runs "
                f"({fmt(min(self.runs), g.unit)}–{fmt(max(self.runs), g.unit)}), met in {self.met_runs} of "
                f"{len(self.runs)}")
        note = f"; {self.note}" if self.note else ""
        return f"  goal {g.key}{case}: {g.what} {g.sign} {fmt(g.limit, g.unit)}: {runs}: {self.verdict.upper()}{note}"

    def as_dict(self) -> dict:
        return {"key": self.goal.key, "case": self.case, "what": self.goal.what, "limit": self.goal.limit,
                "unit": self.goal.unit, "at_least": self.goal.at_least, "runs": list(self.runs), "median": self.median,
                "min": min(self.runs), "max": max(self.runs), "met_runs": self.met_runs, "verdict": self.verdict,
                "note": self.note}


def fmt(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "ms":
        return f"{value:+.2f} ms" if value < 0 else f"{value:.2f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "entries/s":
        return f"{value:,.0f} entries/s"
    return f"{value:.3f}"


def _middle(runs: Sequence[float]) -> Sequence[float]:
    """The runs without the lowest and the highest, where there are at least TRIM_FROM of them."""
    return sorted(runs)[1:-1] if len(runs) >= TRIM_FROM else runs


def judge(key: str, runs: Sequence[float], case: str = "", *, unjudged: str = "", note: str = "") -> Judged:
    """The goal ``key`` on one figure per run: met if the median is within the limit (so at least
    half the runs met it), "not judged" with fewer than MIN_RUNS runs or when ``unjudged`` gives a
    reason (say the disk was too slow to show what the goal is about), or when a goal on a difference
    has runs on both sides of the limit spread wider than twice it (noise, not a figure); from five
    runs on, the best and the worst run are left out of that check (`_middle`), so that one hiccup of
    the machine either way does not void the rest. ``note``: what to read beside a met or missed goal
    (say the same runs as a ratio to a peer)."""
    goal = GOALS[key]
    runs = tuple(float(r) for r in runs)
    if not runs:
        raise ValueError(f"goal {key}: no runs")
    why = unjudged
    if not why and len(runs) < MIN_RUNS:
        why = f"{len(runs)} run(s): at least {MIN_RUNS} are needed"
    middle = _middle(runs)
    if (not why and goal.difference and min(middle) <= goal.limit < max(middle)
            and max(middle) - min(middle) > 2 * goal.limit):
        why = ("the runs fall on both sides of the goal and disagree by more than twice it: the machine's noise is "
               "larger than what is judged")
    if why:
        return Judged(goal, case, runs, "not judged", "; ".join(n for n in (why, note) if n))
    return Judged(goal, case, runs, "met" if goal.meets(statistics.median(runs)) else "not met", note)
