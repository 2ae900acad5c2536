"""The results file of a bench run: bench/results/<date>-<host>.json (``-quick`` added for --quick
runs, which judge nothing), with a description of the machine and, per benchmark, its figures and
judged goals. Benchmarks run on the same day on the same host add to one file (a benchmark run
again replaces its own part, and keeps the machine it ran on: a host name can stand for different
hardware from one day to the next), so the docs can name one file for all their figures
(``python -m bench.report``)."""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import sqlite3
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
SCHEMA = 1
LIBRARIES = ("cryptography", "numpy", "opencv-python-headless", "zxing-cpp", "pyzbar", "gpiozero", "uvicorn",
             "psycopg", "sqlite-utils", "selenium")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def _memory_mib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def machine() -> dict:
    """What the figures were measured on: host, CPU, memory, kernel, Python, SQLite, libraries, the
    commit of the code, and the load when the description was taken."""
    return {
        "host": platform.node(), "cpu": _cpu_model(), "cpus": os.cpu_count(), "arch": platform.machine(),
        "memory_mib": _memory_mib(), "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sqlite": sqlite3.sqlite_version, "libraries": {d: _version(d) for d in LIBRARIES},
        "commit": _commit(), "load_average": list(os.getloadavg()),
    }


def default_path(quick: bool, now: dt.datetime | None = None) -> Path:
    now = now or dt.datetime.now()
    return RESULTS_DIR / f"{now:%Y-%m-%d}-{platform.node() or 'host'}{'-quick' if quick else ''}.json"


def load(path: str | os.PathLike) -> dict:
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    if doc.get("schema") != SCHEMA:
        raise SystemExit(f"{path}: not a results file of schema {SCHEMA}")
    return doc


def _plain(value):
    """JSON-ready: tuples as lists, NumPy numbers as Python numbers; a NaN or an object is a bug."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if hasattr(value, "item"):  # a NumPy scalar
        value = value.item()
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("a figure is not finite")
        return round(value, 6)
    raise TypeError(f"cannot store {type(value).__name__} in a results file")


_RUN_FIELDS = frozenset(("started", "seconds", "quick", "command", "commit", "load_average", "machine"))


def hardware(m: dict) -> dict:
    """A machine description without what changes from run to run (the code's commit, the load):
    what each benchmark's part keeps, so that a file written on two machines says which is which."""
    return {k: v for k, v in m.items() if k not in ("commit", "load_average")}


def save(path: Path, bench: str, result: dict, *, quick: bool, started: dt.datetime, seconds: float) -> None:
    """Put one benchmark's result into the file at ``path`` (made if missing), replacing what an
    earlier run of the same benchmark left there, with the machine it ran on; the file's machine
    description is brought up to date (the last run's)."""
    clash = sorted(set(result) & _RUN_FIELDS)
    if clash:  # it would overwrite what says when and how the run was made (or be overwritten)
        raise ValueError(f"{bench}: result keys {clash} are the results file's own")
    doc: dict = load(path) if path.exists() else {"schema": SCHEMA, "benches": {}}
    for b in doc["benches"].values():  # parts stored before each kept its machine: the file's until now
        b.setdefault("machine", hardware(doc["machine"]))
    doc["machine"] = machine()
    doc["benches"][bench] = {"started": started.isoformat(timespec="seconds"), "seconds": round(seconds, 1),
                             "quick": quick, "command": " ".join([Path(sys.executable).name, "-m", "bench",
                                                                  *sys.argv[1:]]),
                             "commit": doc["machine"]["commit"], "load_average": list(os.getloadavg()),
                             "machine": hardware(doc["machine"]), **_plain(result)}
    doc["benches"] = dict(sorted(doc["benches"].items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
