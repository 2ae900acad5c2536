"""python -m bench [--quick] [--only NAME[,NAME...]] [--results FILE]: print the benchmark tables to
stdout, judge the product's goals (bench/goals.py) and store the figures in a results file
(bench/results.py; docs/benchmarks.md is generated from one: python -m bench.report)."""
from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import platform
import sys
import time
from pathlib import Path

from . import results

BENCHES = ("verify", "bundle", "entrylog", "feedback", "decode", "pipeline", "formats", "sync", "fleet", "failover",
           "drain", "flood", "trace", "daemon", "kiosk", "fsync", "cli", "site", "soak")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="a short run with small sizes (checks that the benchmarks work; judges no goal)")
    parser.add_argument("--only", type=lambda s: s.split(","), default=list(BENCHES), metavar="NAME[,NAME...]",
                        help=f"run these benchmarks only: {', '.join(BENCHES)}")
    parser.add_argument("--results", type=Path, metavar="FILE",
                        help="the results file to add to (default: bench/results/<date>-<host>[-quick].json)")
    args = parser.parse_args(argv)
    unknown = [b for b in args.only if b not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r} (choose from {', '.join(BENCHES)})")
    path = args.results or results.default_path(args.quick)
    started = time.perf_counter()
    m = results.machine()
    print(f"checkpoint-edge benchmarks {'(quick) ' if args.quick else ''}{time.strftime('%Y-%m-%d %H:%M:%S %z')}")
    print(f"{m['python']}, SQLite {m['sqlite']}, cryptography {m['libraries']['cryptography']}, numpy "
          f"{m['libraries']['numpy']}, {platform.machine()}, {os.cpu_count()} cpus, {m['cpu']}, load average "
          f"{m['load_average'][0]:.1f}; code {m['commit']}")
    print("figures: medians of interleaved rounds; 'x peer' = median of per-round ratios; goals judged on the "
          f"median of several runs; results to {path}\n")
    for name in (b for b in BENCHES if b in args.only):
        module = importlib.import_module(f".bench_{name}", __package__)
        t0, at = time.perf_counter(), dt.datetime.now().astimezone()
        result = module.run(args.quick)
        if result is None:  # a bench that prints its tables but does not return its figures yet
            print(f"({name}: figures printed above only; not stored in the results file)\n")
            result = {"stored": False}
        results.save(path, name, result, quick=args.quick, started=at, seconds=time.perf_counter() - t0)
    print(f"total {time.perf_counter() - started:.0f} s; results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
