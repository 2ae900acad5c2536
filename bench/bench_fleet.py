"""Fleet load: simulated devices push signed batches at the same moment to the reference server
(`checkpoint server run --db postgresql://...` with its default settings, its own process) on
127.0.0.1, a fixed number of batches each. The devices are a load generator in processes of their
own (bench/loadgen.py), each device from its own loopback address among 127.0.0.1-127.0.0.50, so
the server's per-address limits stay at their defaults too.

Measures ingest entries/s (entries stored / release to last acknowledgement), the acknowledgement
latency a device sees (first send to its 200, busy waits included), busy answers, CPU of the server
(all its processes), of PostgreSQL (by process: its client connections apart from the WAL writer,
the checkpointer and autovacuum) and of the load generator, and checks that every entry is stored
exactly once. Several runs, each on a fresh database; medians and the spread.

The peer, in the same run: a bare psycopg binary COPY of the same rows (the columns the server
stores) in one transaction into a plain table with the same columns and indexes, in the same
PostgreSQL server: what the database takes when nothing else is done. The ack p95 is also given
against the time that COPY took for the whole fleet (the least in which the last device could be
answered).

The same entries are sent as format 1 batches (JSON Lines: every device in the field) and as format
2 (MessagePack) (sync/wire/batch.py), each to a server with group commit (its default: batches that
arrive together share one transaction, sync/server/groupcommit.py) and to one without it
(``--group-commit-ms 0``: a transaction per batch); the order of the four turns over in each run.
"""
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.base.timeutil import now_ms
from scanner.store.entry import Entry, chain_hash, hash_fields
from sync.server.sqlstorage import ENTRY_COLUMNS
from sync.server.storage import open_storage
from sync.server.tokens import token_hash
from sync.wire import batch as batchmod
from sync.wire import identity

from . import goals as goalsmod
from .pgcluster import PgCluster, find_bin_dir
from .procs import ROOT, ServerProcess, cpu_s
from .timing import table

# (batch format, group commit) of each case; the goals are judged on the server's defaults (group commit on)
CASES = ((1, True), (2, True), (1, False), (2, False))
ADDRESSES = 50  # devices spread over 127.0.0.1-127.0.0.50: 4 each of 200 (the default --max-per-peer is 16)
LOADGEN_PROCESSES = 2


def _tree_cpu_s(root_pid: int | None) -> float:
    """CPU seconds of a process and its children (PostgreSQL's backends, the server's workers)."""
    if root_pid is None:
        return 0.0
    total = cpu_s(root_pid)
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", encoding="ascii") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == root_pid:
                total += cpu_s(int(d))
    return total


# PostgreSQL's processes by kind, from the title each sets (its /proc/PID/cmdline): "postgres: walwriter", ...;
# a client connection's title names its peer ("user db 127.0.0.1(port) state" or "[local]")
PG_KINDS = (("walwriter", "WAL writer"), ("checkpointer", "checkpointer"), ("autovacuum", "autovacuum"),
            ("background writer", "background writer"))
_PG_BACKEND = re.compile(r"\(\d+\)|\[local\]")


def pg_process_kind(title: str) -> str:
    """The kind of a PostgreSQL process from its title: "backends" (client connections: the
    statements and COPYs the server sends), one of PG_KINDS' names, or "other" (the postmaster, the
    launchers, the stats)."""
    for word, name in PG_KINDS:
        if word in title:
            return name
    return "backends" if _PG_BACKEND.search(title) else "other"


def pg_cpu_by_process(postmaster: int | None) -> dict[int, tuple[str, float]]:
    """Each process of a PostgreSQL server (the postmaster and its children): (its kind, CPU seconds)."""
    out: dict[int, tuple[str, float]] = {}
    if postmaster is None:
        return out
    out[postmaster] = ("other", cpu_s(postmaster))
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", encoding="ascii") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                if ppid != postmaster:
                    continue
                with open(f"/proc/{d}/cmdline", "rb") as fh:
                    title = fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
            except (OSError, ValueError, IndexError):
                continue
            out[int(d)] = (pg_process_kind(title), cpu_s(int(d)))
    return out


def pg_cpu_spent(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds each kind of PostgreSQL process spent between two pg_cpu_by_process snapshots
    (a process started meanwhile: all of its CPU; one that ended meanwhile is not counted)."""
    spent: dict[str, float] = {}
    for pid, (kind, cpu) in after.items():
        was = before.get(pid)
        spent[kind] = spent.get(kind, 0.0) + cpu - (was[1] if was is not None and was[0] == kind else 0.0)
    return spent


class _Fleet:
    """Device keys and their signed batches, written once as .ckb files (sent in every run) in each
    of ``versions`` (batch formats; ``batches`` in the first), and the rows the server will store of
    them (for the COPY peer; unless ``rows`` is False)."""

    def __init__(self, devices: int, batches: int, per_batch: int, where: Path, rows: bool = True,
                 versions: tuple[int, ...] = (1,)) -> None:
        self.devices: list[dict[str, Any]] = []
        self.rows: list[tuple] = []
        now = now_ms()
        n = batches * per_batch
        where.mkdir(parents=True, exist_ok=True)
        for d in range(devices):
            key = ed25519.Ed25519PrivateKey.generate()
            dev = identity.device_id(key)
            cp = f"checkpoint-{d // 2:04d}"
            prev, entries = bytes(32), []
            for i in range(n):
                e = Entry(seq=i + 1, entry_id=str(uuid.uuid4()), device_id=dev, checkpoint_id=cp,
                          direction="in" if i % 2 else "out", at_ms=now - (n - i) * 3000, clock="synced",
                          source="camera", source_id="cam0", decision="accept", reason="ok", format="CK1",
                          card_id=os.urandom(16).hex(), issuer="VN-HUE", kid="3q2+7wABAgM=", prev_hash=prev,
                          sealed=os.urandom(133))  # the size of sealed holder details (v2)
                e = replace(e, hash=chain_hash(prev, hash_fields(e)))
                entries.append(e)
                prev = e.hash
            paths: dict[int, list[str]] = {v: [] for v in versions}
            for b in range(0, n, per_batch):
                for v in versions:
                    built = batchmod.build(entries[b:b + per_batch], key, device_id=dev, created_ms=now, version=v)
                    path = where / f"{dev}-{b // per_batch}-v{v}.ckb"
                    path.write_bytes(built.data)
                    paths[v].append(str(path))
                if rows:
                    parsed = batchmod.open_batch(built.data, key.public_key())
                    self.rows += [(*r, parsed.info.batch_id, now) for r in parsed.rows]
            raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
            self.devices.append({"key": raw.hex(), "device_id": dev, "checkpoint": cp, "public": key.public_key(),
                                 "source": f"127.0.0.{1 + d % ADDRESSES}", "batches": paths[versions[0]],
                                 "by_version": paths,
                                 "hashes": {e.seq: e.hash for e in entries}})
        self.entries = devices * n
        self.bytes = {v: sum(os.path.getsize(p) for d in self.devices for p in d["by_version"][v]) for v in versions}

    def enroll(self, storage) -> None:
        for d in self.devices:
            tok = f"fleet-token-{d['device_id']}"
            storage.add_tokens([token_hash(tok)], d["checkpoint"], now_ms() + 3_600_000, now_ms())
            storage.enroll(token_hash(tok), d["device_id"], identity.public_raw(d["public"]), now_ms())


def push(fleet: _Fleet, url: str, deadline_s: float, tmp: Path, processes: int = LOADGEN_PROCESSES,
         during: Callable[[float], None] | None = None, version: int | None = None, pace_s: float = 0.0) -> dict:
    """The fleet released at once against ``url`` by ``processes`` load generator processes, its
    batches in format ``version`` (None: the fleet's first), each device pausing ``pace_s`` after
    each acknowledged batch; ``during(start_at)`` runs meanwhile (in this process), if given."""
    start_at = time.time() + 3.0  # time for the processes to start and read their batches
    procs, outs = [], []
    for i in range(processes):
        spec = {"url": url, "start_at": start_at, "deadline_s": deadline_s, "pace_s": pace_s,
                "devices": [{"key": d["key"], "device_id": d["device_id"], "source": d["source"],
                             "batches": d["batches"] if version is None else d["by_version"][version]}
                            for d in fleet.devices[i::processes]]}
        spec_path, out = tmp / f"loadgen-{i}.json", tmp / f"loadgen-{i}.out.json"
        spec_path.write_text(json.dumps(spec))
        out.unlink(missing_ok=True)
        outs.append(out)
        procs.append(subprocess.Popen([sys.executable, "-m", "bench.loadgen", str(spec_path), str(out)], cwd=ROOT,
                                      env=dict(os.environ, PYTHONPATH=str(ROOT))))
    if during is not None:
        during(start_at)
    for p in procs:
        p.wait(deadline_s + 120)
    res: dict[str, Any] = {"lat": [], "acked_at": [], "acked": [], "failures": [], "busy": 0, "errors": 0,
                           "no_retry_after": 0, "client_cpu": 0.0,
           "busy_codes": {}, "busy_at": []}
    for p, out in zip(procs, outs):
        if p.returncode != 0 or not out.exists():
            res["failures"].append(f"load generator exited {p.returncode}")
            continue
        r = json.loads(out.read_text())
        for k in ("lat", "acked_at", "acked", "failures", "busy_at"):
            res[k] += r[k]
        for code, n in r["busy_codes"].items():
            res["busy_codes"][code] = res["busy_codes"].get(code, 0) + n
        res["busy"] += r["busy"]
        res["errors"] += r["errors"]
        res["no_retry_after"] += r["no_retry_after"]
        res["client_cpu"] += r["cpu_s"]
    res["lat"].sort()
    res["wall"] = (max(res["acked_at"]) - start_at) if res["acked_at"] else float("nan")
    return res


def _copy_peer(fleet: _Fleet, url: str) -> float:
    """The peer: a bare binary COPY of the fleet's rows into a table like ``entries``; seconds."""
    import psycopg  # deferred: the optional `server` extra

    from sync.server.postgres import configure_connection  # deferred: it needs psycopg

    with psycopg.connect(url) as conn:
        configure_connection(conn)  # the bytea dumper the server's pool uses
        conn.execute("CREATE TABLE copy_peer (LIKE entries INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                     "INCLUDING INDEXES)")
        types: dict[str, str] = dict(conn.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                                  "WHERE attrelid = 'copy_peer'::regclass AND attnum > 0").fetchall())
        conn.commit()
        t0 = time.perf_counter()
        with conn.cursor() as cur, cur.copy(f"COPY copy_peer ({', '.join(ENTRY_COLUMNS)}) FROM STDIN "
                                            "(FORMAT BINARY)") as copy:
            copy.set_types([types[c] for c in ENTRY_COLUMNS])
            for r in fleet.rows:
                copy.write_row(r)
        conn.commit()
        elapsed = time.perf_counter() - t0
        conn.execute("DROP TABLE copy_peer")
        conn.commit()
    return elapsed


def _one(fleet: _Fleet, url: str, keys: Path, deadline_s: float, pg_pid: int | None, tmp: Path,
         server_args: tuple[str, ...], version: int = 1) -> dict:
    st = open_storage(url)
    try:
        fleet.enroll(st)
    finally:
        st.close()
    server = ServerProcess(url, "--keys", str(keys), *server_args, bench="fleet")
    try:
        time.sleep(1.0)  # the workers start after the supervisor answers
        s_cpu0, pg_cpu0 = _tree_cpu_s(server.pid), pg_cpu_by_process(pg_pid)
        res = push(fleet, server.url, deadline_s, tmp, version=version)
        res["server_cpu"] = _tree_cpu_s(server.pid) - s_cpu0
        res["db_cpu_by"] = pg_cpu_spent(pg_cpu0, pg_cpu_by_process(pg_pid))
        res["db_cpu"] = sum(res["db_cpu_by"].values())
    finally:
        server.stop()
    st = open_storage(url)
    try:
        exact = all(st.entry_hashes(d["device_id"]) == d["hashes"] for d in fleet.devices)
        s = st.stats()
    finally:
        st.close()
    res["exactly_once"] = exact and s.entries == fleet.entries and s.conflicts == 0 and s.chain_problems == 0
    res["stored"] = s.entries
    return res


def _spread(values: list[float], fmt: str = ",.0f", scale: float = 1.0) -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med * scale:{fmt}}"
    return f"{med * scale:{fmt}} ({min(values) * scale:{fmt}}–{max(values) * scale:{fmt}})"


def run(quick: bool, sizes: tuple[int, int, int, int] | None = None) -> dict | None:
    """``sizes``: (devices, batches each, entries per batch, runs) instead of the standard ones."""
    devices, batches, per_batch, runs = sizes or ((50, 2, 200, 2) if quick else (200, 5, 200, 3))
    deadline_s = 120.0 if quick else 600.0
    bin_dir = find_bin_dir()
    if bin_dir is None:
        print("== fleet: not measured (no /usr/lib/postgresql/*/bin: install the postgresql package)\n")
        return None
    versions = (1, 2)
    rows = []
    judged: list[goalsmod.Judged] = []
    figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="ckbench-fleet-") as tmpname:
        tmp = Path(tmpname)
        t0 = time.perf_counter()
        fleet = _Fleet(devices, batches, per_batch, tmp / "batches", versions=versions)
        made_s = time.perf_counter() - t0
        cluster = PgCluster(bin_dir, durable=True)
        try:
            import psycopg  # deferred: the optional `server` extra
            results: dict[tuple[int, bool], list[dict]] = {c: [] for c in CASES}
            for r in range(runs):
                for v, grouped in CASES[r % len(CASES):] + CASES[:r % len(CASES)]:  # none always goes first
                    db = f"fleet_v{v}_{'g' if grouped else 'n'}_{r}"
                    with psycopg.connect(cluster.url(), autocommit=True) as conn:
                        conn.execute(f"CREATE DATABASE {db}")
                    args = () if grouped else ("--group-commit-ms", "0")
                    res = _one(fleet, cluster.url(db), tmp / "keys", deadline_s, cluster.postmaster_pid(), tmp, args,
                               version=v)
                    res["peer_s"] = _copy_peer(fleet, cluster.url(db))
                    results[(v, grouped)].append(res)
        finally:
            cluster.stop()
    for v, grouped in CASES:
        rs = results[(v, grouped)]
        rates = [res["stored"] / res["wall"] for res in rs]
        peer = [len(fleet.rows) / res["peer_s"] for res in rs]
        p95 = [res["lat"][min(len(res["lat"]) - 1, int(len(res["lat"]) * 0.95))] if res["lat"] else float("nan")
               for res in rs]
        p50 = [statistics.median(res["lat"]) if res["lat"] else float("nan") for res in rs]
        ok = all(res["exactly_once"] and not res["failures"] for res in rs)
        p95_over = [a / res["peer_s"] for a, res in zip(p95, rs)]
        case = f"format {v}" + ("" if grouped else ", group commit off")
        if grouped:
            x_copy = [a / b for a, b in zip(rates, peer)]
            judged += [goalsmod.judge("fleet.entries_per_s", rates, case, note=(
                           f"{statistics.median(x_copy):.2f}x the bare COPY of the same rows in the same runs "
                           f"({min(x_copy):.2f}–{max(x_copy):.2f})")),
                       goalsmod.judge("fleet.ack_p95", p95, case, note=(
                           f"{statistics.median(p95_over):.2f}x the time the bare COPY took for the whole fleet "
                           f"({min(p95_over):.2f}–{max(p95_over):.2f})"))]
        figures[case] = {"entries_per_s": rates, "copy_entries_per_s": peer, "ack_p50_s": p50, "ack_p95_s": p95,
                         "busy": [res["busy"] for res in rs], "exactly_once": ok,
                         "server_cpu_us": [res["server_cpu"] / fleet.entries * 1e6 for res in rs],
                         "db_cpu_us": [res["db_cpu"] / fleet.entries * 1e6 for res in rs],
                         "db_cpu_us_by_process": {k: [res["db_cpu_by"].get(k, 0.0) / fleet.entries * 1e6 for res in rs]
                                                  for k in ("backends", *(n for _, n in PG_KINDS), "other")},
                         "bytes_per_entry": fleet.bytes[v] / fleet.entries, "group_commit": grouped,
                         "x_peer": [a / b for a, b in zip(rates, peer)], "p95_over_copy": p95_over}
        rows.append([f"{case} ({fleet.bytes[v] / fleet.entries:.0f} B/entry)", _spread(rates), _spread(peer),
                     _spread([a / b for a, b in zip(rates, peer)], ".2f"), _spread(p50, ",.0f", 1000),
                     _spread(p95, ",.0f", 1000), _spread(p95_over, ".2f"),
                     "/".join(str(res["busy"]) for res in rs),
                     _spread([res["server_cpu"] / fleet.entries for res in rs], ".0f", 1e6),
                     _spread([res["db_cpu"] / fleet.entries for res in rs], ".0f", 1e6),
                     _spread([res["client_cpu"] / fleet.entries for res in rs], ".0f", 1e6),
                     "yes" if ok else "NO: " + "; ".join(
                         f"{res['stored']:,} stored, {len(res['failures'])} failed "
                         f"{sorted(set(res['failures']))[:2]}" for res in rs)])
    print(f"== fleet: {devices} devices x {batches} batches x {per_batch} entries = {fleet.entries:,} entries, all "
          f"released at once from {LOADGEN_PROCESSES} load generator processes ({ADDRESSES} loopback addresses) "
          f"against `checkpoint server run` (defaults; and with --group-commit-ms 0) on PostgreSQL (durable "
          f"defaults), as format 1 and as format 2 batches in turn; {runs} runs, median (min–max); batches made in "
          f"{made_s:.1f} s beforehand; the peer: a bare COPY of the same rows after each run; 'p95 / peer': the "
          f"ack p95 over the time that COPY took")
    print(table(["batches", "ingest entries/s", "peer: COPY entries/s", "x peer", "ack p50 ms",
                 "ack p95 ms", "p95 / peer", "503/429 per run", "server CPU µs/entry", "PostgreSQL CPU µs/entry",
                 "devices CPU µs/entry", "each entry once"], rows, left=2))
    for g in judged:
        print(g.line())
    for case, f in figures.items():
        if f["group_commit"]:
            print(f"  PostgreSQL CPU µs/entry by process [{case}]: " + ", ".join(
                f"{k} {_spread(v, '.1f')}" for k, v in f["db_cpu_us_by_process"].items()))
    print(f"{os.cpu_count()} cpus shared by the server, PostgreSQL and the load generator "
          f"(load average {os.getloadavg()[0]:.1f})")
    print()
    return {"devices": devices, "batches": batches, "per_batch": per_batch, "runs": runs, "figures": figures,
            "goals": [g.as_dict() for g in judged]}
