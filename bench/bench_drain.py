"""Drain after an outage: a fleet that was offline comes back all at once, every device with a
backlog (200 devices x 10,000 entries, sent in batches of 1,000), against `checkpoint server run`
with its default settings on PostgreSQL (durable defaults). Admission refuses what is beyond its
caps with `503 busy` and a jittered `Retry-After`; the devices (bench/loadgen.py,
in a process of its own, from 50 loopback addresses) wait that long and send again. Measures the
time until the last batch is acknowledged, the acknowledgement latency (first send to 200, waits
included), the busy answers, and that every entry is stored once. The peer, in the same run: a
bare psycopg binary COPY of the same rows in one transaction (rows parsed from the batch files
batch by batch, outside the timed part).
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from sync.server.sqlstorage import ENTRY_COLUMNS
from sync.wire.batch import open_batch

from .bench_fleet import _Fleet, _one
from .pgcluster import PgCluster, find_bin_dir, scalar
from .timing import table


def _copy_peer(fleet: _Fleet, url: str) -> float:
    """A bare binary COPY of the fleet's rows into a table like ``entries``, fed batch by batch
    (each parsed untimed, so that two million rows never sit in memory at once); entries/s."""
    import psycopg  # deferred: the optional `server` extra

    from sync.server.postgres import configure_connection  # deferred: it needs psycopg

    spent, n = 0.0, 0
    with psycopg.connect(url) as conn:
        configure_connection(conn)  # the bytea dumper the server's pool uses
        conn.execute("CREATE TABLE copy_peer (LIKE entries INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                     "INCLUDING INDEXES)")
        types: dict[str, str] = dict(conn.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                                  "WHERE attrelid = 'copy_peer'::regclass AND attnum > 0").fetchall())
        conn.commit()
        now = int(time.time() * 1000)
        with conn.cursor() as cur, cur.copy(f"COPY copy_peer ({', '.join(ENTRY_COLUMNS)}) FROM STDIN "
                                            "(FORMAT BINARY)") as copy:
            copy.set_types([types[c] for c in ENTRY_COLUMNS])
            for d in fleet.devices:
                for path in d["batches"]:
                    parsed = open_batch(Path(path).read_bytes(), d["public"])
                    rows = [(*r, parsed.info.batch_id, now) for r in parsed.rows]
                    t0 = time.perf_counter()
                    for r in rows:
                        copy.write_row(r)
                    spent += time.perf_counter() - t0
                    n += len(rows)
            t0 = time.perf_counter()
        conn.commit()
        spent += time.perf_counter() - t0
        conn.execute("DROP TABLE copy_peer")
        conn.commit()
    return n / spent


def run(quick: bool) -> dict | None:
    devices, backlog, per_batch = (50, 2_000, 1_000) if quick else (200, 10_000, 1_000)
    bin_dir = find_bin_dir()
    if bin_dir is None:
        print("== drain: not measured (no /usr/lib/postgresql/*/bin: install the postgresql package)\n")
        return None
    with tempfile.TemporaryDirectory(prefix="ckbench-drain-") as tmpname:
        tmp = Path(tmpname)
        t0 = time.perf_counter()
        fleet = _Fleet(devices, backlog // per_batch, per_batch, tmp / "batches", rows=False)
        made_s = time.perf_counter() - t0
        cluster = PgCluster(bin_dir, durable=True)
        try:
            import psycopg  # deferred: the optional `server` extra
            with psycopg.connect(cluster.url(), autocommit=True) as conn:
                conn.execute("CREATE DATABASE drain")
            res = _one(fleet, cluster.url("drain"), tmp / "keys", 3600.0, cluster.postmaster_pid(), tmp, ())
            with psycopg.connect(cluster.url("drain")) as conn:  # the disk the entries take, indexes included
                disk = int(scalar(conn, "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits "
                                        "WHERE inhparent = 'entries'::regclass"))  # (a numeric: a Decimal)
            peer = _copy_peer(fleet, cluster.url("drain"))
        finally:
            cluster.stop()
    lat = res["lat"] or [float("nan")]
    p95 = lat[min(len(lat) - 1, int(len(lat) * 0.95))]
    acks = sorted(res["acked_at"])
    per_10s = [sum(1 for t in acks if acks[0] + i <= t < acks[0] + i + 10)
               for i in range(0, int(acks[-1] - acks[0]) + 1, 10)] if acks else []
    print(f"== drain after an outage: {devices} devices x {backlog:,} entries backlog (batches of {per_batch:,}) = "
          f"{fleet.entries:,} entries, all devices back at once against `checkpoint server run` (defaults) on "
          f"PostgreSQL; batches made in {made_s:.0f} s beforehand")
    print(table(["time to drain s", "entries/s", "peer: COPY entries/s", "x peer", "ack p50 s", "ack p95 s",
                 "ack max s", "503/429", "connection errors", "server CPU µs/entry", "PostgreSQL CPU µs/entry",
                 "each entry once"],
                [[f"{res['wall']:.0f}", f"{res['stored'] / res['wall']:,.0f}", f"{peer:,.0f}",
                  f"{res['stored'] / res['wall'] / peer:.2f}", f"{statistics.median(lat):.1f}",
                  f"{p95:.1f}", f"{lat[-1]:.1f}", str(res["busy"]), str(res["errors"]),
                  f"{res['server_cpu'] / fleet.entries * 1e6:.0f}", f"{res['db_cpu'] / fleet.entries * 1e6:.0f}",
                  "yes" if res["exactly_once"] and not res["failures"] else
                  f"NO ({res['stored']:,} stored, {len(res['failures'])} failed)"]], left=2))
    print(f"acknowledgements per 10 s from the first: {per_10s}")
    print(f"disk: {disk / res['stored']:.0f} bytes per stored entry in PostgreSQL (day partitions with their indexes)")
    print()
    return {"devices": devices, "backlog": backlog, "per_batch": per_batch, "entries": fleet.entries,
            "made_s": made_s, "drain_s": res["wall"], "entries_per_s": res["stored"] / res["wall"],
            "copy_entries_per_s": peer, "x_peer": res["stored"] / res["wall"] / peer,
            **({"ack_p50_s": statistics.median(lat), "ack_p95_s": p95, "ack_max_s": lat[-1]} if res["lat"] else
               {"ack_p50_s": None, "ack_p95_s": None, "ack_max_s": None}), "busy": res["busy"],
            "connection_errors": res["errors"], "server_cpu_us": res["server_cpu"] / fleet.entries * 1e6,
            "db_cpu_us": res["db_cpu"] / fleet.entries * 1e6, "stored": res["stored"],
            "exactly_once": bool(res["exactly_once"] and not res["failures"]), "acks_per_10s": per_10s,
            "bytes_per_entry": disk / res["stored"]}
