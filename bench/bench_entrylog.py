"""The entry log: per-scan commit latency (FULL and NORMAL) against a bare sqlite3 insert+commit,
export rows/s, bytes per entry, and the two tracing queries on a 1M-entry log.

The database files go to the real disk (bench/files.py), those of the commit latency to a fast
disk when one is given ($CHECKPOINT_BENCH_FAST_DIR: the goal is about a fast disk), and are
deleted afterwards.
"""
from __future__ import annotations

import gc
import io
import random
import shutil
import sqlite3
import statistics
import time
import uuid
from dataclasses import replace
from pathlib import Path

from scanner.base.timeutil import DAY_MS
from scanner.cards import verifier
from scanner.cards.bundle import open_bundle
from scanner.cards.scan import Scan
from scanner.cards.trust import TrustStore
from scanner.store import sealing
from scanner.store.admission import Conditions, Policy, TrustAge
from scanner.store.clock import SYNCED, ClockStatus
from scanner.store.entry import (
    GENESIS,
    HASHED_FIELDS,
    LINK_FIELDS,
    Entry,
    entry_hash,
    link,
    new_entry_sha256,
    values_hash,
    verify_chain,
    write_export,
)
from scanner.store.entrylog import EntryLog, new_entry_id
from scanner.store.schema import COLUMNS, INSERT_SQL, entry_row

from . import fixtures
from .files import bench_dir, fs_type
from .goals import judge
from .timing import interleaved, median, quartiles, table, us
from .world import bundle_bytes, world

HOUR_MS = 3_600_000
FAST_DISK_S = 0.0003  # a bare FULL commit (mostly its fsync) above this hides the log's overhead: not judged


def _verdicts(n: int):
    """``n`` accepted verdicts for distinct realistic cards (Vietnamese holder, sealed on record)."""
    w = world()
    trust = TrustStore.build(bundles=[open_bundle(bundle_bytes(0), [w.root.public_key()])])
    out = []
    for _ in range(n):
        v = verifier.verify(fixtures.card_text(w.ed_key, w.at), trust, w.at)
        if not v.accepted:
            raise SystemExit(f"bench fixture broken: card not accepted: {v}")
        out.append(v)
    return out, w.at


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * p
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


# ---------------------------------------------------------------- commit latency


def _commit_cases(tmp: Path, mode: str, verdicts, at: int, server) -> tuple[dict, Entry]:
    """record (sealed), bare, and for NORMAL record without sealing: callables committing one row."""
    log = EntryLog(tmp / f"log-{mode}.db", device_id="bench-device", checkpoint_id="market-east",
                   sealing_key=server, synchronous=mode)
    EntryLog(tmp / f"bare-{mode}.db", synchronous=mode).close()  # the same schema and pragmas
    bare = sqlite3.connect(tmp / f"bare-{mode}.db", isolation_level=None)
    bare.execute("PRAGMA journal_mode = WAL")
    bare.execute(f"PRAGMA synchronous = {mode}")
    template = log.record(Scan("x", "camera", "cam0", at), verdicts[0], direction="in").entry
    n = {"record": 0, "bare": 0, "none": 0}
    # the scans as the lane hands them over, made ahead like the peer's rows (outside the timed call), each
    # with the conditions the lane judges it under, which the lane builds before it calls record()
    # (scanner/appliance/lane.py, ScanLane.record): the device's policy, its bundle's age, the clock guard's
    # status (confirmed by NTP a minute ago)
    scans = [Scan("x", "camera", "cam0", at + 3 * i) for i in range(4001)]
    bundle = open_bundle(bundle_bytes(0), [world().root.public_key()])
    trust_age = TrustAge(bundle.issued_at, bundle.expires_at, bundle.version)
    conditions = [Conditions(s.at, Policy(), trust_age, ClockStatus(True, False, s.at - 60, "ntp", None, SYNCED))
                  for s in scans]

    def record(log=log):
        i = n["record"] = n["record"] + 1
        log.record(scans[i], verdicts[i % len(verdicts)], direction="in", conditions=conditions[i])

    # the peer inserts the rows record() writes: the same cards in turn, times 3 s apart (so the
    # card and checkpoint indexes grow alike); rows made ahead, outside the timed call
    base, cards = entry_row(template), [v.card.card_id.hex() for v in verdicts]
    rows = [(seq, str(uuid.uuid4())) + base[2:5] + (template.at_ms + 3000 * seq,) + base[6:12]
            + (cards[seq % len(cards)],) + base[13:] for seq in range(1, 4001)]

    def peer():  # the log's transaction (BEGIN IMMEDIATE: it reads before it writes) without its own work
        seq = n["bare"] = n["bare"] + 1
        bare.execute("BEGIN IMMEDIATE")
        bare.execute(INSERT_SQL, rows[seq - 1])
        bare.execute("COMMIT")

    cases = {f"record {mode}": record, f"bare {mode}": peer}
    if mode == "NORMAL":  # the log's own work without sealing
        plain = EntryLog(tmp / "log-NORMAL-none.db", device_id="bench-device", checkpoint_id="market-east",
                         holder_details="none", synchronous=mode)

        def record_plain():
            i = n["none"] = n["none"] + 1
            plain.record(scans[i], verdicts[i % len(verdicts)], direction="in", conditions=conditions[i])

        cases["record NORMAL none"] = record_plain
    return cases, template


def _steps(cases: dict, rounds: int, steps: int, rng: random.Random) -> tuple[dict, dict]:
    """Per-call seconds. Each step runs every case once, in a new random order, so that the
    disk's slow phases hit all cases alike; per-round medians for the ratio spread."""
    samples: dict[str, list[float]] = {k: [] for k in cases}
    per_round: dict[str, list[float]] = {k: [] for k in cases}
    order = list(cases)
    for _ in range(rounds):
        got: dict[str, list[float]] = {k: [] for k in cases}
        gc.collect()
        gc.disable()
        try:
            for _ in range(steps):
                rng.shuffle(order)
                for name in order:
                    fn = cases[name]
                    t0 = time.perf_counter()
                    fn()
                    got[name].append(time.perf_counter() - t0)
        finally:
            gc.enable()
        for name, values in got.items():
            samples[name] += values
            per_round[name].append(statistics.median(values))
    return samples, per_round


def commit_bench(tmp: Path, quick: bool) -> tuple[dict, list]:
    """Per-call latency of EntryLog.record vs a bare INSERT + COMMIT of the same row into a file
    with the same schema and pragmas. FULL and NORMAL are measured in separate phases (an fsync's
    cost on a virtual disk depends on what ran just before it); FULL, the goal's case, in several
    runs."""
    verdicts, at = _verdicts(64)
    server = sealing.generate_server_key().public_key()
    runs, rounds, steps = (1, 4, 10) if quick else (5, 6, 20)
    rng = random.Random(7)
    samples: dict[str, list[float]] = {}
    per_round: dict[str, list[float]] = {}
    run_ratio: list[float] = []
    run_bare: list[float] = []
    templates: dict[str, Entry] = {}
    for mode in ("FULL", "NORMAL"):
        cases, templates[mode] = _commit_cases(tmp, mode, verdicts, at, server)
        # warm-up past the first WAL checkpoint (1000 pages): every file is measured in its steady
        # state (WAL reused in place), not while its WAL still grows
        for fn in cases.values():
            for _ in range(20 if quick else 250):
                fn()
        for _ in range(runs if mode == "FULL" else 1):
            s, r = _steps(cases, rounds, steps, rng)
            for k in s:
                samples.setdefault(k, []).extend(s[k])
                per_round.setdefault(k, []).extend(r[k])
            if mode == "FULL":
                run_ratio.append(median(s["record FULL"]) / median(s["bare FULL"]))
                run_bare.append(median(s["bare FULL"]))
        if mode == "NORMAL":
            bare_normal = cases["bare NORMAL"]
    e = templates["NORMAL"]
    holder = verdicts[0].card.holder
    link_values = tuple(getattr(e, name) for name in LINK_FIELDS)
    hashed_values = tuple(getattr(e, name) for name in HASHED_FIELDS)
    sealer = sealing.Sealer(server)
    parts = interleaved({
        "seal holder, new session (X25519 + HKDF + AES-GCM)": lambda: sealing.seal(holder, server, e.entry_id),
        "seal holder in a session (AES-GCM)": lambda: sealer.seal(holder, e.entry_id),
        "chain hash (a new entry's: CPython's SHA-256)": lambda: values_hash(e.prev_hash, hashed_values,
                                                                             new_entry_sha256),
        "the entry: chain hash + object (entry.link)": lambda: link(e.seq - 1, e.prev_hash, link_values, e.sealed),
        "entry id (random UUID text)": new_entry_id,
        "bare NORMAL commit (reference)": bare_normal,
    }, rounds=5 if quick else 30, target_s=0.002)
    n = runs * rounds * steps
    print(f"== entry log: per-scan commit latency (FULL: {runs} run(s) of {rounds} rounds x {steps} steps, NORMAL: "
          f"one run; each step one commit per case in a shuffled order: {n} FULL commits per case; files on "
          f"{fs_type(tmp)})")
    print("record = EntryLog.record: seal holder, anti-passback query, chain link, INSERT, COMMIT;\n"
          "bare = sqlite3 BEGIN IMMEDIATE + INSERT of the same rows (cards, times) into the same schema + COMMIT "
          "(same pragmas);\n"
          "overhead = median of the per-step differences record - bare")
    rows, result = [], {}

    def row(label, case, peer):
        o, b = samples[case], samples[peer]
        r50 = [x / y for x, y in zip(per_round[case], per_round[peer])]
        q1, q3 = quartiles(r50)
        over = median([x - y for x, y in zip(o, b)])
        rows.append([label, us(_pct(o, 0.5)), us(_pct(o, 0.95)), f"{_pct(o, 0.5) / _pct(b, 0.5):.2f}",
                     f"{_pct(o, 0.95) / _pct(b, 0.95):.2f}", f"{median(r50):.2f} ({q1:.2f}-{q3:.2f})", us(over)])
        return {"record_p50_us": _pct(o, 0.5) * 1e6, "record_p95_us": _pct(o, 0.95) * 1e6,
                "bare_p50_us": _pct(b, 0.5) * 1e6, "bare_p95_us": _pct(b, 0.95) * 1e6,
                "ratio_p50": _pct(o, 0.5) / _pct(b, 0.5), "ratio_p95": _pct(o, 0.95) / _pct(b, 0.95),
                "ratio_rounds": median(r50), "ratio_rounds_p25": q1, "ratio_rounds_p75": q3, "overhead_us": over * 1e6}

    for mode in ("FULL", "NORMAL"):
        b = samples[f"bare {mode}"]
        rows.append([f"bare sqlite3, synchronous={mode}", us(_pct(b, 0.5)), us(_pct(b, 0.95)), "1.00", "1.00", "", ""])
        result[mode] = row(f"EntryLog.record, synchronous={mode}", f"record {mode}", f"bare {mode}")
    result["NORMAL none"] = row("  the same, holder_details=none (no sealing)", "record NORMAL none", "bare NORMAL")
    print(table(["case", "p50 µs", "p95 µs", "p50 x bare", "p95 x bare", "per-round p50 ratio (p25-p75)",
                 "overhead µs"], rows))
    slow = median(run_bare) > FAST_DISK_S
    goal = judge("entrylog.record", run_ratio, "synchronous=FULL",
                 unjudged=(f"this disk's bare FULL commit took {median(run_bare) * 1e3:.2f} ms (> "
                           f"{FAST_DISK_S * 1e3:.1f} ms): a slow fsync hides the overhead" if slow else ""))
    print(goal.line())
    full, normal = result["FULL"], result["NORMAL"]
    print(f"NORMAL instead of FULL saves {full['record_p50_us'] - normal['record_p50_us']:.0f} µs per scan at "
          "p50 and may lose the last commits on power loss")
    limit = full["overhead_us"] / (goal.goal.limit - 1)
    print(f"the record overhead (~{full['overhead_us']:.0f} µs here) stays within {goal.goal.limit}x while a bare "
          f"FULL commit (mostly its fsync) takes >= {limit:.0f} µs")
    ref = parts["bare NORMAL commit (reference)"]
    print(table(["part of record() outside SQLite", "µs", "x bare NORMAL commit"],
                [[k, us(median(v)), f"{median([a / b for a, b in zip(v, ref)]):.2f}"]
                 for k, v in parts.items()]))
    result["parts_us"] = {k: median(v) * 1e6 for k, v in parts.items()}
    result["runs_bare_full_us"] = [x * 1e6 for x in run_bare]
    result["fast_disk_max_us"] = FAST_DISK_S * 1e6
    result["fs"] = fs_type(tmp)
    print()
    return result, [goal]


# ---------------------------------------------------------------- a big log


def build_log(path: Path, n: int, *, seed: int = 11) -> dict:
    """A realistic ``n``-entry log built fast (executemany in one transaction), real chain hashes.

    One device, 4 checkpoints, 21 days, 85% accepted, a population of n/5 cards, sealed blobs of
    the real size (a pool of real blobs, reused).
    """
    verdicts, at = _verdicts(1)
    v = verdicts[0]
    server = sealing.generate_server_key().public_key()
    blobs = [sealing.seal(v.card.holder, server, str(uuid.uuid4())) for _ in range(256)]
    rng = random.Random(seed)
    cards = [rng.randbytes(16).hex() for _ in range(max(1, n // 5))]
    checkpoints = ["market-east", "market-west", "ward-office-3", "bridge-north"]
    kid = "6AwL2Xfu7BE="
    start_ms = at * 1000 - 21 * DAY_MS
    step = 21 * DAY_MS / n
    EntryLog(path).close()  # the real schema
    conn = sqlite3.connect(path, isolation_level=None)
    # a bulk load, not a log: no journal, no fsync, a big cache (WAL again afterwards)
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -131072")  # 128 MiB: the random-key indexes stay in memory
    t0 = time.perf_counter()
    prev = GENESIS
    conn.execute("BEGIN")
    batch = []
    for i in range(n):
        ok = rng.random() < 0.85
        card = cards[rng.randrange(len(cards))] if ok or rng.random() < 0.5 else None
        e = Entry(i + 1, str(uuid.UUID(int=rng.getrandbits(128), version=4)), "bench-device",
                  checkpoints[rng.randrange(4)], "in" if rng.random() < 0.6 else "out",
                  int(start_ms + i * step), "synced", "camera", "cam0", "accept" if ok else "reject",
                  "ok" if ok else ("expired" if card else "unsupported_format"), "CK1" if card else None,
                  card, "Sở Y tế TP. Hồ Chí Minh" if card else None, kid if card else None,
                  sealed=blobs[i % 256] if card else None, prev_hash=prev)
        prev = entry_hash(e)
        batch.append(entry_row(replace(e, hash=prev)))
        if len(batch) == 20_000:
            conn.executemany(INSERT_SQL, batch)
            batch.clear()
    conn.executemany(INSERT_SQL, batch)
    acked = n - 200  # all but the last 200 acknowledged by the server, in batches of 500
    conn.executemany("INSERT INTO synced_runs (first_seq, last_seq, batch_id) VALUES (?, ?, ?)",
                     [(lo, min(acked, lo + 499), f"b{lo // 500}") for lo in range(1, acked + 1, 500)])
    conn.execute("INSERT INTO synced_spans (first_seq, last_seq) VALUES (1, ?)", (acked,))
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode = WAL")
    built = time.perf_counter() - t0
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
    split = {}
    try:
        for name, size in conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
            split[name] = size
    except sqlite3.OperationalError:  # SQLite built without the dbstat table
        split = {}
    conn.close()
    return {"n": n, "build_s": built, "bytes": pages * page, "split": split, "cards": cards,
            "checkpoints": checkpoints, "start_ms": start_ms, "end_ms": start_ms + 21 * DAY_MS}


def query_bench(path: Path, info: dict, quick: bool) -> dict:
    log = EntryLog(path)
    bare = sqlite3.connect(path, isolation_level=None)
    rng = random.Random(5)
    cards = [info["cards"][rng.randrange(len(info["cards"]))] for _ in range(64)]
    windows = []
    for _ in range(64):
        t = rng.randrange(info["start_ms"], info["end_ms"] - 2 * HOUR_MS)
        windows.append((info["checkpoints"][rng.randrange(4)], t, t + 2 * HOUR_MS))
    it = {"c": 0, "w": 0}

    def card_q():
        it["c"] += 1
        return log.entries_for_card(cards[it["c"] % 64])

    def card_raw():
        it["c"] += 1
        return bare.execute(f"SELECT {COLUMNS} FROM entries WHERE card_id = ? AND at_ms >= ? AND at_ms < ? "
                            "ORDER BY at_ms, seq", (cards[it["c"] % 64], -(1 << 62), 1 << 62)).fetchall()

    def window_q():
        it["w"] += 1
        return log.entries_at(*windows[it["w"] % 64])

    def window_raw():
        it["w"] += 1
        return bare.execute(f"SELECT {COLUMNS} FROM entries WHERE checkpoint_id = ? AND at_ms >= ? "
                            "AND at_ms < ? ORDER BY at_ms, seq", windows[it["w"] % 64]).fetchall()

    rows_card = statistics.mean(len(log.entries_for_card(c)) for c in cards)
    rows_window = statistics.mean(len(log.entries_at(*w)) for w in windows)
    s = interleaved({"card": card_q, "card raw": card_raw, "window": window_q, "window raw": window_raw},
                    rounds=5 if quick else 25, target_s=0.01)
    # what the indexes buy: the same window query as a full table scan (a few calls only)
    cp, lo, hi = windows[0]
    t0 = time.perf_counter()
    scans = 2 if quick else 3
    for _ in range(scans):
        bare.execute(f"SELECT {COLUMNS} FROM entries NOT INDEXED WHERE checkpoint_id = ? AND at_ms >= ? "
                     "AND at_ms < ? ORDER BY at_ms, seq", (cp, lo, hi)).fetchall()
    full_scan = (time.perf_counter() - t0) / scans
    # export and chain verification throughput over a slice of the log
    n_export = min(info["n"], 50_000 if quick else 200_000)
    until = info["start_ms"] + int((info["end_ms"] - info["start_ms"]) * n_export / info["n"])
    rates = {}
    for fmt in ("jsonl", "csv"):
        sink = io.StringIO()
        t0 = time.perf_counter()
        k = write_export(log.entries(None, until), sink, fmt)
        rates[fmt] = (k / (time.perf_counter() - t0), len(sink.getvalue()) / max(k, 1))
    t0 = time.perf_counter()
    k = sum(1 for _ in bare.execute(f"SELECT {COLUMNS} FROM entries WHERE at_ms < ? ORDER BY seq", (until,)))
    raw_rate = k / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    report = verify_chain(log.entries(None, until))
    verify_rate = report.checked / (time.perf_counter() - t0)
    if not report.ok:
        raise SystemExit(f"bench fixture broken: chain does not verify: {report}")
    log.close()
    bare.close()
    return {"card": s["card"], "card raw": s["card raw"], "window": s["window"], "window raw": s["window raw"],
            "rows_card": rows_card, "rows_window": rows_window, "full_scan_s": full_scan, "export": rates,
            "export_n": n_export, "raw_rate": raw_rate, "verify_rate": verify_rate}


def run(quick: bool = False) -> dict:
    tmp = bench_dir("entrylog")
    fast = bench_dir("entrylog-commit", fast=True)
    try:
        commit, goals = commit_bench(fast, quick)
        result = {"commit_latency": commit, "goals": [g.as_dict() for g in goals]}
        n = 20_000 if quick else 1_000_000
        info = build_log(tmp / "big.db", n)
        q = query_bench(tmp / "big.db", info, quick)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(fast, ignore_errors=True)
    print(f"== entry log at scale: {n:,} entries (built in {info['build_s']:.1f} s with executemany; "
          "4 checkpoints, 21 days, 85% accepted, sealed holder details on every entry with a card)")
    per = info["bytes"] / n
    print(f"database bytes per entry: {per:.0f} ({info['bytes'] / 1024 / 1024:.1f} MiB in use for {n:,})")
    if info["split"]:
        parts = sorted(info["split"].items(), key=lambda kv: -kv[1])
        print("  of which: " + ", ".join(f"{name} {size / n:.0f}" for name, size in parts if size / n >= 0.5))
    rows = []
    for name, label, nrows in (("card", "entries for card X", q["rows_card"]),
                               ("window", "entries at a checkpoint in a 2-hour window", q["rows_window"])):
        r = [a / b for a, b in zip(q[name], q[f"{name} raw"])]
        q1, q3 = quartiles(r)
        rows.append([label, f"{nrows:.1f}", us(median(q[name])), us(median(q[f'{name} raw'])),
                     f"{median(r):.2f} ({q1:.2f}-{q3:.2f})"])
    print(table(["query (indexed)", "rows", "EntryLog µs", "raw sqlite3 µs", "x raw (p25-p75)"], rows))
    print(f"the same 2-hour window query without its index (full table scan): {q['full_scan_s'] * 1000:.0f} ms")
    rows = [[f"export {fmt}", f"{rate:,.0f}", f"{q['raw_rate'] / rate:.1f}", f"{size:.0f}"]
            for fmt, (rate, size) in q["export"].items()]
    rows.append(["peer: raw sqlite3 cursor over the same rows", f"{q['raw_rate']:,.0f}", "1.0", ""])
    rows.append(["verify_chain (every hash recomputed)", f"{q['verify_rate']:,.0f}",
                 f"{q['raw_rate'] / q['verify_rate']:.1f}", ""])
    print(f"bulk export of the first {q['export_n']:,} entries (write_export over EntryLog.entries):")
    print(table(["case", "rows/s", "x slower than raw", "bytes/row"], rows))
    print()
    result["scale"] = {
        "n": n, "build_s": info["build_s"], "bytes_per_entry": per,
        "bytes_split": {k: v / n for k, v in info["split"].items()},
        "queries_us": {k: median(q[k]) * 1e6 for k in ("card", "card raw", "window", "window raw")},
        "query_ratio": {k: median([a / b for a, b in zip(q[k], q[f"{k} raw"])])
                        for k in ("card", "window")},
        "rows": {"card": q["rows_card"], "window": q["rows_window"]}, "full_scan_ms": q["full_scan_s"] * 1e3,
        "export_n": q["export_n"], "export_rows_per_s": {k: v[0] for k, v in q["export"].items()},
        "export_bytes_per_row": {k: v[1] for k, v in q["export"].items()}, "raw_rows_per_s": q["raw_rate"],
        "verify_chain_per_s": q["verify_rate"]}
    return result
