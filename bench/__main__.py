"""python -m bench [--quick] [--only verify|bundle|entrylog|feedback|decode|pipeline|formats|sync|fleet|failover|
drain|flood|trace|daemon|kiosk|fsync|cli|site]: print the benchmark tables to stdout."""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import cryptography
import numpy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="a short run with small sizes (checks that the benchmarks work)")
    parser.add_argument("--only", choices=("verify", "bundle", "entrylog", "feedback", "decode", "pipeline",
                                                  "formats", "sync", "fleet", "failover", "drain", "flood", "trace",
                                                  "daemon", "kiosk", "fsync", "cli", "site"),
                        help="run one benchmark only")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    print(f"checkpoint-edge benchmarks {'(quick) ' if args.quick else ''}"
          f"{time.strftime('%Y-%m-%d %H:%M:%S %z')}")
    print(f"python {platform.python_version()} ({platform.python_implementation()}), "
          f"cryptography {cryptography.__version__}, numpy {numpy.__version__}, "
          f"{platform.machine()}, {os.cpu_count()} cpus, {_cpu_model()}")
    print("figures: medians of interleaved rounds; 'x peer' = median of per-round ratios\n")
    from . import bench_bundle, bench_verify
    if args.only in (None, "verify"):
        bench_verify.run(args.quick)
    if args.only in (None, "bundle"):
        bench_bundle.run(args.quick)
    if args.only in (None, "entrylog"):
        from . import bench_entrylog
        bench_entrylog.run(args.quick)
    if args.only in (None, "feedback"):
        from . import bench_feedback
        bench_feedback.run(args.quick)
    if args.only in (None, "decode"):
        from . import bench_decode
        bench_decode.run(args.quick)
    if args.only in (None, "pipeline"):
        from . import bench_pipeline
        bench_pipeline.run(args.quick)
    if args.only in (None, "formats"):
        from . import bench_formats
        bench_formats.run(args.quick)
    if args.only in (None, "sync"):
        from . import bench_sync
        bench_sync.run(args.quick)
    if args.only in (None, "fleet"):
        from . import bench_fleet
        bench_fleet.run(args.quick)
    if args.only in (None, "failover"):
        from . import bench_failover
        bench_failover.run(args.quick)
    if args.only in (None, "drain"):
        from . import bench_drain
        bench_drain.run(args.quick)
    if args.only in (None, "flood"):
        from . import bench_flood
        bench_flood.run(args.quick)
    if args.only in (None, "trace"):
        from . import bench_trace
        bench_trace.run(args.quick)
    if args.only in (None, "daemon"):
        from . import bench_daemon
        bench_daemon.run(args.quick)
    if args.only in (None, "kiosk"):
        from . import bench_kiosk
        bench_kiosk.run(args.quick)
    if args.only in (None, "fsync"):
        from . import bench_fsync
        bench_fsync.run(args.quick)
    if args.only in (None, "cli"):
        from . import bench_cli
        bench_cli.run(args.quick)
    if args.only in (None, "site"):
        from . import bench_site
        bench_site.run(args.quick)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


if __name__ == "__main__":
    sys.exit(main())
