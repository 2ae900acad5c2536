"""fsyncs per scan: the real daemon (`checkpoint run`) fed a few hundred cards through a stdin
reader (a named pipe), one every 100 ms, counted by strace (fsync, fdatasync, sync_file_range,
syncfs, in every thread and child process). Enrolled to the reference server on 127.0.0.1 with
sync on as shipped, against the peer: the same scans on a standalone device, in the same run,
alternating. The count runs from the first card to the daemon's exit, after the server has
acknowledged every entry, so WAL checkpoints, the sync side's writes and the shutdown are all
in it. Goal: at most 1.05 per scan with sync on (median of the runs)."""
from __future__ import annotations

import collections
import os
import re
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from scanner.base.timeutil import now_ms
from scanner.store import synced
from sync.provision import provision
from sync.server.sqlite import SQLiteStorage
from sync.server.tokens import issue_tokens

from .appliance import hue_cards
from .goals import judge
from .procs import DaemonProcess, ServerProcess, vouch
from .timing import median, table

SYNC_CALLS = "fsync,fdatasync,sync_file_range,syncfs"
_CALL = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(fsync|fdatasync|sync_file_range|syncfs)\((\d+)(?:<([^>]*)>)?")


def _config(path: Path, state: Path, fifo: Path, pub: Path, sync: bool) -> Path:
    path.write_text(f"""
[device]
state_dir = "{state}"
checkpoint_id = "bench-fsync"
[sync]
enabled = {"true" if sync else "false"}
[trust]
files = ["{pub}"]
[api]
enabled = false
[feedback]
pin_factory = "mock"
[[stdin]]
name = "desk"
path = "{fifo}"
""", encoding="utf-8")
    return path


def _daemon(config: Path, trace: Path) -> DaemonProcess:
    """The daemon under strace, its fsyncs (in every thread and child) written to ``trace``."""
    return DaemonProcess(config, bench="fsync", prefix=["strace", "-f", "-qq", "-ttt", "-y", "--seccomp-bpf", "-e",
                                                        f"trace={SYNC_CALLS}", "-e", "signal=none", "-o", str(trace)])


def _unsynced(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        found = synced.unsynced_in_file(conn)
        if found is None:
            raise SystemExit(f"fsync bench: {db} has no acknowledged runs table")
        return found[0]
    finally:
        conn.close()


def _memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) of a process, KiB (empty if it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value = line.split(":", 1)
                    out[name] = int(value.split()[0])
    except OSError:
        pass
    return out


def _children(pid: int) -> list[int]:
    kids = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as fh:
                kids += [int(k) for k in fh.read().split()]
    except OSError:
        pass
    return kids


def _count(trace: Path, since: float, until: float = float("inf")) -> tuple[int, collections.Counter]:
    """Calls that started in [since, until) (epoch s), and how many per file (by name)."""
    n = 0
    by_file: collections.Counter = collections.Counter()
    for line in trace.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _CALL.match(line)
        if m and since <= float(m.group(2)) < until:
            n += 1
            name = m.group(5) or "?"
            base = re.sub(r"\.[0-9a-f]+\.tmp$", ".tmp", os.path.basename(name) or name)
            by_file[base + "/ (directory)" if os.path.isdir(name) else base] += 1
    return n, by_file


def _one_run(tmp: Path, tag: str, cards: list[str], pub: Path, pace_s: float, server) -> dict:
    """One daemon run: start, feed the cards one every ``pace_s``, wait for every verdict (and,
    with ``server``, for the server to hold every entry and the device to know it), stop."""
    run = tmp / tag
    state = run / "state"
    state.mkdir(parents=True)
    batches0 = 0
    if server is not None:
        provision(server["url"], server["token"](), state, trust_root=server["root"])
        batches0 = server["batches"]()
    fifo = run / "in.fifo"
    os.mkfifo(fifo)
    w = os.open(fifo, os.O_RDWR)
    trace = run / "strace.txt"
    daemon = _daemon(_config(run / "c.toml", state, fifo, pub, server is not None), trace)
    try:
        daemon.wait(lambda: daemon.started, "start-up")
        if server is not None:  # the first contact (heartbeat numbers, trust check) writes the state
            end = time.monotonic() + 60
            while not (state / "sync-state.json").exists() and time.monotonic() < end:
                time.sleep(0.05)
        time.sleep(2.0)  # start-up writes are not the scans' doing (any left over are counted)
        since = time.time()
        t = time.monotonic()
        for card in cards:
            os.write(w, (card + "\n").encode())
            t += pace_s
            time.sleep(max(0.0, t - time.monotonic()))
        daemon.wait(lambda: daemon.seq >= len(cards), f"{len(cards)} verdicts")
        if server is not None:
            end = time.monotonic() + 120
            while _unsynced(state / "entries.db") and time.monotonic() < end:
                time.sleep(0.05)
            if _unsynced(state / "entries.db"):
                daemon.stop()
                raise SystemExit("fsync bench: the server never acknowledged every entry")
        acked = time.time()
        pid = daemon.daemon_pid()
        memory = _memory_kib(pid) if pid else {}
        kids = [_memory_kib(k).get("VmRSS", 0) for k in (_children(pid) if pid else [])]
    finally:
        os.close(w)
    code = daemon.stop()
    if code != 0:
        raise SystemExit(f"fsync bench: the daemon exited {code}: " + " | ".join(list(daemon.lines)[-5:]))
    total, by_file = _count(trace, since)
    upto_ack, _ = _count(trace, since, acked)
    shutil.rmtree(run, ignore_errors=True)
    return {"total": total, "until_ack": upto_ack, "by_file": by_file, "n": len(cards),
            "uploads": server["batches"]() - batches0 if server is not None else 0,
            "rss_mib": memory.get("VmRSS", 0) / 1024, "peak_mib": memory.get("VmHWM", 0) / 1024,
            "children_rss_mib": sum(kids) / 1024}


def run(quick: bool = False) -> dict:
    if shutil.which("strace") is None:
        raise SystemExit("fsync bench: strace is not installed (sh setup.sh bench installs it)")
    n = 60 if quick else 300
    rounds = 1 if quick else 3
    pace_s = 0.1
    with tempfile.TemporaryDirectory(prefix="bench-fsync-") as tmp_name:
        tmp = Path(tmp_name)
        cards = hue_cards(tmp, n * rounds * 2)
        pub = tmp / "hue.pub"
        db = tmp / "central" / "central.db"
        db.parent.mkdir()
        server = ServerProcess(str(db), "--keys", str(db.parent), bench="fsync")
        st = SQLiteStorage(db)
        try:
            srv = {"url": server.url, "token": lambda: issue_tokens(st, "bench-fsync", now_ms=now_ms())[0],
                   "batches": lambda: st.stats().batches, "root": vouch(st, db.parent, server.url)}
            results: dict[str, list[dict]] = {"sync": [], "standalone": []}
            for r in range(rounds):
                order = ("sync", "standalone") if r % 2 == 0 else ("standalone", "sync")
                for mode in order:
                    batch = cards[(2 * r + (mode == "sync")) * n:][:n]
                    results[mode].append(_one_run(tmp, f"{mode}-{r}", batch, pub, pace_s,
                                                  srv if mode == "sync" else None))
        finally:
            st.close()
            server.stop()
    rows = []
    for mode, label in (("standalone", "standalone (peer)"), ("sync", "enrolled, sync on (as shipped)")):
        res = results[mode]
        per = [x["total"] / x["n"] for x in res]
        upto = [x["until_ack"] / x["n"] for x in res]
        rows.append((label, len(res), f"{median(per):.3f}", f"{min(per):.3f}–{max(per):.3f}",
                     f"{median(upto):.3f}", f"{median([x['uploads'] for x in res]):.0f}" if mode == "sync" else "-"))
    sync_per = [x["total"] / x["n"] for x in results["sync"]]
    peer_per = [x["total"] / x["n"] for x in results["standalone"]]
    ratio = median([a / b for a, b in zip(sync_per, peer_per)])
    print(f"fsyncs per scan: the daemon, {n} cards one every {pace_s * 1000:.0f} ms through a stdin reader, "
          f"counted by strace from the first card to exit ({rounds} run(s) each, alternating)")
    print(table(("device", "runs", "per scan (median)", "spread", "until acknowledged", "uploads/run"), rows))
    files: collections.Counter = collections.Counter()
    for x in results["sync"]:
        files.update(x["by_file"])
    total_scans = sum(x["n"] for x in results["sync"])
    print("  sync on, by file: " + ", ".join(f"{name} {k / total_scans:.3f}" for name, k in files.most_common(8)))
    goal = judge("fsync.per_scan", sync_per)
    print(goal.line() + f"; x standalone {ratio:.2f}")
    if quick:
        print(f"  (quick: {n} scans carry the start and stop's few fsyncs; judge the goal on a full run)")
    mem = {mode: {k: median([x[k] for x in results[mode]]) for k in ("rss_mib", "peak_mib", "children_rss_mib")}
           for mode in results}
    print("  the daemon's memory at the end of a run (median): " + "; ".join(
        f"{mode}: RSS {m['rss_mib']:.0f} MiB, peak {m['peak_mib']:.0f} MiB, "
        f"child processes {m['children_rss_mib']:.0f} MiB"
        for mode, m in mem.items()))
    print()
    return {"n": n, "runs": rounds, "pace_ms": pace_s * 1000,
            "per_scan": {mode: [x["total"] / x["n"] for x in res] for mode, res in results.items()},
            "until_ack": {mode: [x["until_ack"] / x["n"] for x in res] for mode, res in results.items()},
            "uploads": [x["uploads"] for x in results["sync"]], "x_standalone": ratio,
            "by_file_per_scan": {name: k / total_scans for name, k in files.most_common(8)},
            "memory": mem, "goals": [goal.as_dict()]}
