"""Memory soak: the real daemon (`checkpoint run`), provisioned against the reference server on
127.0.0.1 with a trust bundle of a million revoked card ids, sync on as shipped, fed scans through
a stdin reader (a named pipe) in chunks, each chunk waited for. After every chunk the memory of
every process of the appliance (the daemon and all its children, from /proc: RSS and PSS from
smaps_rollup) is sampled; a sampler thread also watches it every 20 ms. Reported: the steady
memory after warm-up, the peak while the server publishes a newer bundle and the device swaps it
in (the sampled maximum of the sum; the daemon's own VmHWM, reset just before), and the slope
after warm-up (least squares, MB per 10k scans) with its spread (the slopes of the fifths of the
run); three runs (one with --quick), the goals judged on them. The peer is a bare Python interpreter,
sampled in the same run. Goals: soak.* in bench/goals.py (the whole appliance within 120 MB, the
swap within 160 MB, flat after warm-up)."""
from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from scanner.base.timeutil import now_ms
from scanner.cards.bundle import make_bundle
from sync.provision import provision
from sync.server import bundles
from sync.server.sqlite import SQLiteStorage
from sync.server.tokens import issue_tokens

from . import fixtures, goals
from .procs import OPERATOR_ROOT, DaemonProcess, ServerProcess, vouch
from .timing import median, table

MB = 1024 * 1024
CHUNK = 200
REVOKED_EVERY = 10  # every tenth card is a revoked one (the look-up is exercised)
_TRUST = re.compile(r"\btrust: \d+ keys, bundle v(\d+), (\d+) revoked cards")


@dataclass(frozen=True, slots=True)
class Memory:
    """The memory of a set of processes at one moment, bytes (summed over the processes)."""

    rss: int
    pss: int
    processes: int


def _cmdline(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read()
    except OSError:
        return None


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (children of every thread, recursively), but not a child
    caught between fork and exec (it still runs its parent's program and shares its pages: counted
    again, it would add a second daemon to the sum)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        mine = _cmdline(p)
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/children", encoding="ascii") as fh:
                    todo.extend(c for c in map(int, fh.read().split()) if _cmdline(c) != mine)
            except OSError:
                continue
    return out


def _rollup(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup and the Vm lines of /proc/PID/status, bytes; {} if it is gone."""
    fields: dict[str, int] = {}
    try:
        for name in ("smaps_rollup", "status"):
            with open(f"/proc/{pid}/{name}", encoding="ascii") as fh:
                for line in fh:
                    parts = line.split()
                    if len(parts) == 3 and parts[2] == "kB":
                        fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    except OSError:
        return {}
    return fields


def _runs(pid: int) -> str | None:
    """What ``pid`` runs (``python -m X`` as X; "" for a process that has exited and is not reaped
    yet), or None if it is gone."""
    raw = _cmdline(pid)
    if raw is None:
        return None
    argv = raw.decode("utf-8", "replace").split("\0")
    return argv[argv.index("-m") + 1] if "-m" in argv[:-1] else os.path.basename(argv[0])


def names(pids: list[int]) -> tuple[str, ...]:
    """What each process runs, sorted: which processes a sample caught."""
    return tuple(sorted(name for name in map(_runs, pids) if name))


def by_process(pids: list[int]) -> str:
    """Each process's RSS / PSS, MB, by what it runs."""
    out = []
    for p in pids:
        r = _rollup(p)
        name = _runs(p)
        if name is not None:
            out.append(f"{name} {r.get('Rss', 0) / MB:.1f}/{r.get('Pss', 0) / MB:.1f}")
    return ", ".join(out)


def measure(pids: list[int]) -> Memory:
    rows = [r for r in map(_rollup, pids) if r]
    return Memory(sum(r.get("Rss", 0) for r in rows), sum(r.get("Pss", 0) for r in rows), len(rows))


def high_water(pids: list[int]) -> int:
    """The sum of the processes' VmHWM (peak RSS since start or since reset_peaks), bytes; a
    process that ended meanwhile is not in it."""
    return sum(r.get("VmHWM", 0) for r in map(_rollup, pids) if r)


def reset_peaks(pids: list[int]) -> None:
    """Reset each process's VmHWM to its current RSS (clear_refs 5, Linux >= 4.0)."""
    for p in pids:
        try:
            with open(f"/proc/{p}/clear_refs", "w", encoding="ascii") as fh:
                fh.write("5")
        except OSError:
            continue


class _Sampler:
    """A thread measuring the appliance's processes every ``every_s``; keeps the maxima."""

    def __init__(self, pid: int, every_s: float = 0.02) -> None:
        self.pid, self.every_s = pid, every_s
        self.max_rss = self.max_pss = 0
        self.overall_rss = self.overall_pss = 0  # never restarted
        self.peaks: dict[int, int] = {}  # each process's VmHWM, the highest read since restart()
        self.overall_detail = ""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.every_s):
            pids = tree(self.pid)
            rows = {p: r for p, r in zip(pids, map(_rollup, pids)) if r}
            m = Memory(sum(r.get("Rss", 0) for r in rows.values()), sum(r.get("Pss", 0) for r in rows.values()),
                       len(rows))
            self.max_rss, self.max_pss = max(self.max_rss, m.rss), max(self.max_pss, m.pss)
            if m.rss > self.overall_rss:
                self.overall_detail = by_process(list(rows))  # who made the whole run's peak
            self.overall_rss, self.overall_pss = max(self.overall_rss, m.rss), max(self.overall_pss, m.pss)
            for p, r in rows.items():  # a short-lived process's own peak, even if no sample caught it
                self.peaks[p] = max(self.peaks.get(p, 0), r.get("VmHWM", 0))

    def restart(self) -> None:
        self.max_rss = self.max_pss = 0
        self.peaks = {}


class _Daemon(DaemonProcess):
    """The daemon, and the trust bundle it has loaded (its version and revoked cards, from its log)."""

    def __init__(self, config: Path) -> None:
        self.bundle_version: int | None = None
        self.revoked = 0
        super().__init__(config, bench="soak")

    def noted(self, line: str) -> None:
        t = _TRUST.search(line)
        if t:
            self.bundle_version, self.revoked = int(t.group(1)), int(t.group(2))


def _config(path: Path, state: Path, fifo: Path, trust_interval_s: int) -> Path:
    path.write_text(f"""
[device]
state_dir = "{state}"
checkpoint_id = "bench-soak"
[sync]
enabled = true
trust_interval_s = {trust_interval_s}
[api]
listen = "127.0.0.1:0"
[feedback]
pin_factory = "mock"
[[stdin]]
name = "desk"
path = "{fifo}"
""", encoding="utf-8")
    return path


def _cards(key, revoked: list[bytes], n: int) -> Iterator[str]:
    """``n`` distinct cards of ``key``, every REVOKED_EVERY-th one revoked."""
    at = fixtures.now()
    for i in range(n):
        card_id = revoked[(i * 7919) % len(revoked)] if i % REVOKED_EVERY == REVOKED_EVERY - 1 else None
        yield fixtures.card_text(key, at, card_id=card_id)


def slope(xs: list[float], ys: list[float]) -> float:
    """The least-squares slope of ys over xs."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def _bare_python() -> Memory:
    """The peer: a bare interpreter (``python -c``), waiting, measured the same way."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        time.sleep(0.5)
        return measure([proc.pid])
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)


RUNS = 3  # full runs in one invocation: the goals are judged on their median


def run(quick: bool = False) -> dict:
    """``RUNS`` runs (one with ``quick``), each printed; the goals judged on the runs' figures, the
    median and spread of each figure printed and stored with every run's figures."""
    runs = [_one_run(quick, i + 1) for i in range(1 if quick else RUNS)]
    figures = ("start_rss_mib", "steady_rss_mib", "steady_pss_mib", "swap_peak_rss_mib", "swap_peak_pss_mib",
               "slope_mib_per_10k", "daemon_slope_mib_per_10k", "daemon_swap_hwm_mib", "builder_rss_mib",
               "daemon_rss_mib")
    summary = {k: {"median": statistics.median(r[k] for r in runs), "min": min(r[k] for r in runs),
                   "max": max(r[k] for r in runs)} for k in figures}
    print(f"memory soak, {len(runs)} run(s) of {runs[0]['scans']:,} scans: median (min … max)")
    for k in figures:
        f = summary[k]
        print(f"  {k}: {f['median']:.2f} ({f['min']:.2f} … {f['max']:.2f})")
    judged = [goals.judge("soak.steady_rss", [r["steady_rss_mib"] for r in runs]),
              goals.judge("soak.swap_peak", [r["swap_peak_rss_mib"] for r in runs]),
              goals.judge("soak.slope", [r["slope_mib_per_10k"] for r in runs])]
    for j in judged:
        print(j.line())
    if quick:
        print(f"  (quick: {runs[0]['scans']:,} scans are too few for the slope; judge it on a full run)")
    print()
    return {**{k: summary[k]["median"] for k in figures}, "summary": summary, "runs": runs,
            "scans": runs[0]["scans"], "revoked": runs[0]["revoked"], "trust_interval_s": runs[0]["trust_interval_s"],
            "goals": [j.as_dict() for j in judged]}


def _one_run(quick: bool, number: int) -> dict:
    n = 4_000 if quick else 100_000
    n_revoked = 1_000_000
    warm = n // 5  # the first fifth warms the caches (SQLite pages, the allocator's arenas)
    swap_at = warm // 2
    trust_interval_s = 10 if quick else 60  # shipped: hourly; often enough here for checks to be in the figures
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp_name:
        tmp = Path(tmp_name)
        central = tmp / "central"
        central.mkdir()
        db = central / "central.db"
        server = ServerProcess(str(db), "--keys", str(central), bench="soak", nice=5)
        st = SQLiteStorage(db)
        try:
            root_pub = vouch(st, central, server.url)
            key = fixtures.issuer_key("EdDSA")
            keys = [fixtures.bundle_key(key)]
            revoked = fixtures.revoked_ids(n_revoked)
            at = fixtures.now()
            bundles.publish(st, make_bundle(OPERATOR_ROOT, version=1, issued_at=at, expires_at=at + 30 * fixtures.DAY,
                                            keys=keys, revoked_cards=revoked, fmt=2), now_ms=now_ms())
            state = tmp / "state"
            provision(server.url, issue_tokens(st, "bench-soak", now_ms=now_ms())[0], state, trust_root=root_pub)
            fifo = tmp / "in.fifo"
            os.mkfifo(fifo)
            w = os.open(fifo, os.O_RDWR)
            daemon = _Daemon(_config(tmp / "c.toml", state, fifo, trust_interval_s))
            peer = _bare_python()
            samples: list[tuple[int, Memory]] = []
            alone: list[Memory] = []  # the daemon process by itself, at the same moments
            caught: list[tuple[str, ...]] = []  # which processes each sample caught
            swap: dict = {}
            sampler = _Sampler(daemon.pid)
            try:
                daemon.wait(lambda: daemon.started and daemon.bundle_version == 1, "start-up with bundle v1")
                start = measure(tree(daemon.pid))
                detail = {"start": by_process(tree(daemon.pid))}
                sampler.thread.start()
                cards = _cards(key, revoked, n)
                done = 0
                while done < n:
                    k = min(CHUNK, n - done)
                    os.write(w, "".join(next(cards) + "\n" for _ in range(k)).encode())
                    done += k
                    daemon.wait(lambda done=done: daemon.seq >= done, f"{done} verdicts")
                    pids = tree(daemon.pid)
                    samples.append((done, measure(pids)))
                    caught.append(names(pids))
                    alone.append(measure([daemon.pid]))
                    if done >= swap_at and not swap:
                        detail["before swap"] = by_process(tree(daemon.pid))
                        swap = _swap(daemon, sampler, st, keys, revoked, at)
                        detail["after swap"] = by_process(tree(daemon.pid))
                detail["end"] = by_process(tree(daemon.pid))
                detail["at the whole run's peak"] = sampler.overall_detail
                swap["overall"] = Memory(sampler.overall_rss, sampler.overall_pss, 0)
            finally:
                os.close(w)
                sampler.stop.set()
                code = daemon.stop()
            if code != 0:
                raise SystemExit(f"soak bench: the daemon exited {code}: " + " | ".join(list(daemon.lines)[-5:]))
        finally:
            st.close()
            server.stop()
    result = _report(n, n_revoked, warm, start, samples, swap, peer, trust_interval_s, number)
    after = [(x, m) for (x, _), m in zip(samples, alone) if x > warm]
    xs = [x / 10_000 for x, _ in after]
    fifths = [after[i * len(after) // 5:(i + 1) * len(after) // 5] for i in range(5)]
    parts = [slope([x / 10_000 for x, _ in f], [m.rss / MB for _, m in f]) for f in fifths if len(f) > 2]
    daemon_slope = slope(xs, [m.rss / MB for _, m in after])
    # the samples that caught the appliance's usual processes (not a trust check, nor the moment the
    # builder is ended or not yet started again): the slope over them alone, reported beside the goal's
    sets = [c for (x, _), c in zip(samples, caught) if x > warm]
    usual = statistics.mode(sets) if sets else ()
    kept = [(x, m) for (x, m), c in zip(samples, caught) if x > warm and c == usual]
    usual_slope = slope([x / 10_000 for x, _ in kept], [m.rss / MB for _, m in kept]) if len(kept) > 2 else float("nan")
    print(f"  the samples that caught the usual processes ({' + '.join(usual)}): {len(kept)} of {len(sets)}; "
          f"slope over them {usual_slope:+.3f} MB per 10k scans; the others: "
          + (", ".join(f"{' + '.join(c) or 'none'} ×{sets.count(c)}" for c in sorted(set(sets)) if c != usual) or "-"))
    result.update(usual_slope_mib_per_10k=usual_slope, usual_samples=len(kept), samples_after_warm_up=len(sets))
    result.update(daemon_slope_mib_per_10k=daemon_slope, daemon_fifths=parts,
                  daemon_rss_mib=median([m.rss for _, m in after]) / MB,
                  builder_rss_mib=median([a.rss - m.rss for (x, a), m in zip(samples, alone) if x > warm]) / MB,
                  by_process=detail)
    print(f"  the daemon alone: RSS {after[0][1].rss / MB:.1f} → {after[-1][1].rss / MB:.1f} MB after warm-up, slope "
          f"{daemon_slope:+.3f} MB per 10k scans"
          + (f" (fifths: {min(parts):+.3f} … {max(parts):+.3f})" if parts else ""))
    for when, text in detail.items():
        print(f"  RSS/PSS MB by process, {when}: {text}")
    print()
    return result


def _swap(daemon: _Daemon, sampler: _Sampler, st: SQLiteStorage, keys, revoked: list[bytes], at: int) -> dict:
    """Publish bundle v2 (1,000 more revoked ids; the device gets a delta) and wait until the
    daemon has swapped it in; the peak memory of the appliance meanwhile."""
    pids = tree(daemon.pid)
    before = measure(pids)
    reset_peaks(pids)
    sampler.restart()
    more = fixtures.revoked_ids(1000, seed=8)
    bundles.publish(st, make_bundle(OPERATOR_ROOT, version=2, issued_at=at + 1, expires_at=at + 30 * fixtures.DAY,
                                    keys=keys, revoked_cards=revoked + more, fmt=2),
                    now_ms=now_ms(), root_private=OPERATOR_ROOT)
    t0 = time.monotonic()
    daemon.wait(lambda: daemon.bundle_version == 2, "the swap to bundle v2", timeout=120)
    seconds = time.monotonic() - t0
    time.sleep(0.5)  # let the sampler see the end of it
    return {"before": before, "max_rss": sampler.max_rss, "max_pss": sampler.max_pss, "hwm": high_water([daemon.pid]),
            "peaks_sum": sum(sampler.peaks.values()), "processes": len(sampler.peaks),
            "seconds": seconds, "revoked": daemon.revoked}


def _report(n: int, n_revoked: int, warm: int, start: Memory, samples: list[tuple[int, Memory]], swap: dict,
            peer: Memory, trust_interval_s: int, number: int) -> dict:
    after = [(x, m) for x, m in samples if x > warm]
    steady_rss = median([m.rss for _, m in after]) / MB
    steady_pss = median([m.pss for _, m in after]) / MB
    xs = [x / 10_000 for x, _ in after]
    rss_slope = slope(xs, [m.rss / MB for _, m in after])
    pss_slope = slope(xs, [m.pss / MB for _, m in after])
    fifths = [after[i * len(after) // 5:(i + 1) * len(after) // 5] for i in range(5)]
    parts = [slope([x / 10_000 for x, _ in f], [m.rss / MB for _, m in f]) for f in fifths if len(f) > 2]
    procs = max(m.processes for _, m in samples)
    print(f"memory soak, run {number}: `checkpoint run`, provisioned, sync on, bundle of {n_revoked:,} revoked ids, "
          f"{n:,} scans through a stdin reader ({CHUNK} a chunk), trust checked every {trust_interval_s} s "
          f"(shipped: hourly); every process of the appliance (up to {procs} at once)")
    rows = [
        ("bare python interpreter (peer)", f"{peer.rss / MB:.1f}", f"{peer.pss / MB:.1f}", "1.00"),
        ("appliance after start-up", f"{start.rss / MB:.1f}", f"{start.pss / MB:.1f}", f"{start.rss / peer.rss:.2f}"),
        (f"appliance, steady (median after {warm:,} scans)", f"{steady_rss:.1f}", f"{steady_pss:.1f}",
         f"{steady_rss * MB / peer.rss:.2f}"),
        ("appliance at the end", f"{samples[-1][1].rss / MB:.1f}", f"{samples[-1][1].pss / MB:.1f}",
         f"{samples[-1][1].rss / peer.rss:.2f}"),
    ]
    if swap:
        rows.append((f"bundle swap v1 → v2 ({swap['revoked']:,} ids, {swap['seconds']:.1f} s): sampled peak",
                     f"{swap['max_rss'] / MB:.1f}", f"{swap['max_pss'] / MB:.1f}", f"{swap['max_rss'] / peer.rss:.2f}"))
        rows.append(("  the daemon alone: its VmHWM over the swap", f"{swap['hwm'] / MB:.1f}", "-",
                     f"{swap['hwm'] / peer.rss:.2f}"))
        rows.append((f"  each process's own peak (VmHWM), summed ({swap['processes']} processes; an upper bound)",
                     f"{swap['peaks_sum'] / MB:.1f}", "-", f"{swap['peaks_sum'] / peer.rss:.2f}"))
        overall = swap["overall"]
        rows.append(("whole run: sampled peak (trust checks included)", f"{overall.rss / MB:.1f}",
                     f"{overall.pss / MB:.1f}", f"{overall.rss / peer.rss:.2f}"))
    print(table(("", "RSS MB", "PSS MB", "x peer RSS"), rows))
    spread = f"{min(parts):+.3f} … {max(parts):+.3f}" if parts else "-"
    print(f"  slope after warm-up: RSS {rss_slope:+.3f} MB per 10k scans (fifths: {spread}), "
          f"PSS {pss_slope:+.3f}")
    peak = swap["max_rss"] / MB if swap else float("nan")
    return {"scans": n, "revoked": n_revoked, "trust_interval_s": trust_interval_s,
            "start_rss_mib": start.rss / MB, "start_pss_mib": start.pss / MB,
            "steady_rss_mib": steady_rss, "steady_pss_mib": steady_pss,
            "swap_peak_rss_mib": peak, "swap_peak_pss_mib": swap["max_pss"] / MB if swap else None,
            "slope_mib_per_10k": rss_slope, "slope_fifths": parts, "peer_rss_mib": peer.rss / MB,
            "daemon_swap_hwm_mib": swap["hwm"] / MB if swap else None,
            "swap_peaks_sum_mib": swap["peaks_sum"] / MB if swap else None,
            "whole_run_peak_rss_mib": swap["overall"].rss / MB if swap else None}
