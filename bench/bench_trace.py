"""The tracing query on 10 million entries (`--quick`: 200,000), SQLite and PostgreSQL side by side:
where a card was seen in 14 days, the other cards at the same checkpoints within ±1 h of each visit,
and the whole call-centre answer with the holders' details opened (scanner.store.sealing.open, X25519 +
AES-GCM per contact). Peers in the same interleaved rounds: one indexed lookup that finds nothing
(the fixed cost of a query on that backend) and the raw cost of opening the answer's sealed
blobs with scanner.store.sealing.open alone. The same queries with their indexes unusable (full scans)
are timed once, for what the indexes buy. The same answer through the central console: a tracer's
case page over HTTP, the console and the opener (which holds the key) each in its own process
(bench/console.py), compared with the library call in the same rounds.

The bulk rows are generated inside the database (INSERT ... SELECT over generate_series or a
recursive CTE, in primary-key order, indexes built afterwards): 30 days, 1,000 checkpoints with
two devices each, 2 million cards, realistic row sizes (121-byte sealed blobs under the server's
key id, so opening one costs what a real one does). The traced card's visits and part of its
contacts are planted through the server's own ingest, with real sealed holder details.
"""
from __future__ import annotations

import functools
import os
import random
import re
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scanner.base.timeutil import DAY_MS, now_ms

from .console import ConsoleProcesses
from .pgcluster import scalar
from .timing import interleaved, median, ratios, table

HOUR = 3_600_000
TRACED = "ff" * 16


def _say(text: str) -> None:
    print(f"  [trace bench] {text}", file=sys.stderr, flush=True)


class _Shape:
    def __init__(self, n: int, checkpoints: int) -> None:
        self.checkpoints = checkpoints
        self.devices = 2 * checkpoints
        self.per_device = n // self.devices
        self.n = self.devices * self.per_device
        self.cards = max(1000, self.n // 5)
        self.now = now_ms()
        self.start = self.now - 30 * DAY_MS
        self.step = (30 * DAY_MS) // self.per_device  # each device scans through the 30 days


SQLITE_BULK = """
WITH RECURSIVE g(i) AS (SELECT :lo UNION ALL SELECT i + 1 FROM g WHERE i + 1 < :hi)
INSERT INTO entries (device_id, seq, entry_id, checkpoint_id, direction, at_ms, clock, source, source_id,
    decision, reason, format, card_id, issuer, kid, kind, ref_entry_id, sealed, prev_hash, hash, batch_id,
    received_ms)
SELECT printf('d-%024x', i / :per), i % :per + 1, printf('00000000-0000-4000-8000-%012x', i),
    printf('checkpoint-%05d', (i / :per) / 2), CASE i % 2 WHEN 0 THEN 'in' ELSE 'out' END,
    :start + (i % :per) * :step + abs(random() % 600000), 'synced', 'camera', 'cam0', 'accept', 'ok', 'CK1',
    printf('%032x', (i * 1103515245 + 12345) % :cards), 'VN-HUE', 'AAECAwQFBgc=', NULL, NULL,
    CAST(:hdr || randomblob(112) AS BLOB), zeroblob(32), randomblob(32), 'bulk', :start
FROM g
"""

PG_BULK = """
INSERT INTO entries (device_id, seq, entry_id, checkpoint_id, direction, at_ms, clock, source, source_id,
    decision, reason, format, card_id, issuer, kid, kind, ref_entry_id, sealed, prev_hash, hash, batch_id,
    received_ms)
SELECT 'd-' || lpad(to_hex(i / %(per)s), 24, '0'), i %% %(per)s + 1,
    '00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'),
    'checkpoint-' || lpad(((i / %(per)s) / 2)::text, 5, '0'), CASE i %% 2 WHEN 0 THEN 'in' ELSE 'out' END,
    %(start)s + (i %% %(per)s) * %(step)s + (hashint8(i) & 1048575) %% 600000, 'synced', 'camera', 'cam0', 'accept',
    'ok', 'CK1', lpad(to_hex((i * 1103515245 + 12345) %% %(cards)s), 32, '0'), 'VN-HUE', 'AAECAwQFBgc=', NULL, NULL,
    %(hdr)s || sha256(int8send(i)) || sha256(int8send(-i)) || sha256(int8send(i + 4611686018427387904))
        || substring(sha256(int8send(-i - 4611686018427387904)) from 1 for 16),
    decode(repeat('00', 32), 'hex'), sha256(int8send(i * 7)), 'bulk', %(start)s
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) AS i
"""


def _build_sqlite(path: Path, shape: _Shape, hdr: bytes) -> float:
    from sync.server.sqlite import SQLiteStorage

    SQLiteStorage(path).close()  # the schema, as the server makes it
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")  # building the fixture, not measuring durability
    conn.execute("PRAGMA cache_size = -500000")
    conn.execute("DROP INDEX entries_card")
    conn.execute("DROP INDEX entries_checkpoint")
    t0 = time.perf_counter()
    chunk = shape.per_device * 100
    for lo in range(0, shape.n, chunk):
        conn.execute("BEGIN")
        conn.execute(SQLITE_BULK, {"lo": lo, "hi": min(shape.n, lo + chunk), "per": shape.per_device,
                                   "start": shape.start, "step": shape.step, "cards": shape.cards, "hdr": hdr})
        conn.execute("COMMIT")
        _say(f"sqlite: {min(shape.n, lo + chunk):,} rows")
    conn.execute("CREATE INDEX entries_card ON entries (card_id, at_ms) WHERE card_id IS NOT NULL")
    conn.execute("CREATE INDEX entries_checkpoint ON entries (checkpoint_id, at_ms)")
    conn.execute("ANALYZE")
    conn.close()
    return time.perf_counter() - t0


def _build_pg(url: str, shape: _Shape, hdr: bytes) -> float:
    import psycopg

    from sync.server.postgres import PostgresStorage, day_of

    st = PostgresStorage(url)
    st.ensure_partitions(range(day_of(shape.start), day_of(shape.now) + 1))
    st.close()
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute("DROP INDEX entries_card")
        conn.execute("DROP INDEX entries_checkpoint")
        chunk = shape.per_device * 100
        for lo in range(0, shape.n, chunk):
            conn.execute(PG_BULK, {"lo": lo, "hi": min(shape.n, lo + chunk), "per": shape.per_device,
                                   "start": shape.start, "step": shape.step, "cards": shape.cards, "hdr": hdr})
            _say(f"postgresql: {min(shape.n, lo + chunk):,} rows")
        conn.execute("CREATE INDEX entries_card ON entries (card_id, at_ms) WHERE card_id IS NOT NULL")
        conn.execute("CREATE INDEX entries_checkpoint ON entries (checkpoint_id, at_ms)")
        conn.execute("ANALYZE entries")
    return time.perf_counter() - t0


def _plant(storage, shape: _Shape, server_pub, visits: int, rng: random.Random) -> None:
    """The traced card's visits, each with 10 people around it, through the server's ingest."""
    from dataclasses import replace
    from uuid import uuid4

    from cryptography.hazmat.primitives.asymmetric import ed25519

    from scanner.cards.verdict import Holder
    from scanner.store import sealing
    from scanner.store.entry import Entry, chain_hash, hash_fields
    from sync.server.tokens import token_hash
    from sync.wire import batch as batchmod
    from sync.wire import identity

    for v in range(visits):
        cp = f"checkpoint-{rng.randrange(shape.checkpoints):05d}"
        key = ed25519.Ed25519PrivateKey.generate()
        dev = identity.device_id(key)
        tok = f"plant-{dev}"
        storage.add_tokens([token_hash(tok)], cp, shape.now + DAY_MS, shape.now)
        storage.enroll(token_hash(tok), dev, identity.public_raw(key), shape.now)
        at = shape.now - rng.randrange(1, 14) * DAY_MS + rng.randrange(DAY_MS // 2)
        people = [(at, TRACED, Holder("Nguyễn Văn Truy", "1970-01-01", None))]
        people += [(at + rng.randrange(-50, 50) * 60_000, os.urandom(16).hex(),
                    Holder(f"Người tiếp xúc {v}-{i}", "1990-05-05", "079******1234")) for i in range(10)]
        prev, entries = bytes(32), []
        for seq, (t, card, holder) in enumerate(sorted(people, key=lambda p: p[0]), 1):
            entry_id = str(uuid4())
            e = Entry(seq=seq, entry_id=entry_id, device_id=dev, checkpoint_id=cp, direction="in", at_ms=t,
                      clock="synced", source="camera", source_id="cam0", decision="accept", reason="ok",
                      format="CK1", card_id=card, issuer="VN-HUE", kid="AAECAwQFBgc=", prev_hash=prev,
                      sealed=sealing.seal(holder, server_pub, entry_id))
            e = replace(e, hash=chain_hash(prev, hash_fields(e)))
            entries.append(e)
            prev = e.hash
        sb = batchmod.build(entries, key, device_id=dev, created_ms=shape.now)
        storage.ingest(batchmod.open_batch(sb.data, key.public_key()), "push", shape.now)


def _unindexed_s(backend: str, target, shape: _Shape, visits) -> float:
    """The visits query and one visit's contacts without their indexes (full scans), once."""
    since = shape.now - 14 * DAY_MS
    t0 = time.perf_counter()
    if backend == "sqlite":  # an expression on the column: no index can serve the term
        conn = sqlite3.connect(str(target))
        conn.execute("SELECT entry_id FROM entries WHERE card_id || '' = ? AND at_ms + 0 >= ?",
                     (TRACED, since)).fetchall()
        v = visits[0].entry
        conn.execute("SELECT entry_id FROM entries WHERE checkpoint_id || '' = ? AND at_ms + 0 BETWEEN ? AND ?",
                     (v.checkpoint_id, v.at_ms - HOUR, v.at_ms + HOUR)).fetchall()
        conn.close()
    else:
        import psycopg
        with psycopg.connect(target, autocommit=True) as pg:
            pg.execute("SET enable_indexscan = off")
            pg.execute("SET enable_bitmapscan = off")
            pg.execute("SELECT entry_id FROM entries WHERE card_id = %s AND at_ms >= %s", (TRACED, since)).fetchall()
            v = visits[0].entry
            pg.execute("SELECT entry_id FROM entries WHERE checkpoint_id = %s AND at_ms BETWEEN %s AND %s",
                         (v.checkpoint_id, v.at_ms - HOUR, v.at_ms + HOUR)).fetchall()
    return time.perf_counter() - t0


def _open_all(blobs, key) -> int:
    """The raw cost of the holder details in an answer: scanner.store.sealing.open of each blob."""
    from scanner.store import sealing

    ok = 0
    for blob, entry_id in blobs:
        try:
            sealing.open(blob, key, entry_id)
        except sealing.SealError:  # the bulk rows' blobs: same work, then the tag does not match
            continue
        ok += 1
    return ok


def _size(backend: str, target) -> int:
    if backend == "sqlite":
        return sum(os.path.getsize(str(target) + s) for s in ("", "-wal") if os.path.exists(str(target) + s))
    import psycopg
    with psycopg.connect(target) as conn:
        return int(scalar(conn, "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits "
                                "WHERE inhparent = 'entries'::regclass"))


def run(quick: bool) -> dict:
    from scanner.store.sealing import key_id
    from sync.server.keys import load_or_create_sealing_key
    from sync.server.storage import open_storage
    from sync.server.trace import trace

    from .pgcluster import PgCluster, find_bin_dir

    n = 200_000 if quick else 10_000_000
    shape = _Shape(n, 100 if quick else 1000)
    visits_n = 10 if quick else 20
    rounds = 3 if quick else 7
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="ckbench-trace-") as tmpname:
        tmp = Path(tmpname)
        key = load_or_create_sealing_key(tmp / "keys")
        hdr = bytes([1]) + key_id(key.public_key()) + os.urandom(32)  # version, key id, an "ephemeral key"
        cluster = None
        bin_dir = find_bin_dir()
        stores = {}
        consoles: dict[str, ConsoleProcesses] = {}
        try:
            _say(f"building {shape.n:,} rows on SQLite")
            db = tmp / "central.db"
            results["sqlite"] = {"build": _build_sqlite(db, shape, hdr), "target": db}
            stores["sqlite"] = open_storage(str(db))
            if bin_dir is not None:
                cluster = PgCluster(bin_dir, durable=True, settings={"max_wal_size": "8GB"})
                url = cluster.url()
                _say(f"building {shape.n:,} rows on PostgreSQL")
                results["postgresql"] = {"build": _build_pg(url, shape, hdr), "target": url}
                stores["postgresql"] = open_storage(url)
            for name, st in stores.items():
                _plant(st, shape, key.public_key(), visits_n, random.Random(11))
                results[name]["size"] = _size(name, results[name]["target"])
            since, until = shape.now - 14 * DAY_MS, shape.now + 1
            absent = "ee" * 16
            cases: dict[str, Callable[[], object]] = {}
            for name, st in stores.items():
                first = trace(st, TRACED, since_ms=since, until_ms=until, window_ms=HOUR)
                blobs = [(e.sealed, e.entry_id) for e in [v.entry for v in first.visits] +
                         [c.entry for c in first.contacts] if e.sealed is not None]
                cases[f"{name}:raw_open"] = functools.partial(_open_all, blobs, key)
                cases[f"{name}:peer"] = functools.partial(st.visits, absent, since, until, 10)
                cases[f"{name}:visits"] = functools.partial(st.visits, TRACED, since, until, 10_000)
                cases[f"{name}:contacts"] = functools.partial(trace, st, TRACED, since_ms=since, until_ms=until,
                                                              window_ms=HOUR)
                cases[f"{name}:full"] = functools.partial(trace, st, TRACED, since_ms=since, until_ms=until,
                                                          window_ms=HOUR, sealing_key=key)
                target = str(results[name]["target"])
                _say(f"{name}: starting the console and its opener")
                consoles[name] = console = ConsoleProcesses(target, tmp / "keys", tmp / f"run-{name}", bench="trace")
                path = console.open_case(TRACED, days=14, window_min=60)
                page = console.get(path)
                results[name]["console_rows"] = page.count('<td class="name">')
                results[name]["console_names"] = len(re.findall(r'<td class="name">Người tiếp xúc \d', page))
                cases[f"{name}:console"] = functools.partial(console.get, path)
            _say("timing")
            samples = interleaved(cases, rounds=rounds, target_s=0.05)
            for name, st in stores.items():
                rep = trace(st, TRACED, since_ms=since, until_ms=until, window_ms=HOUR, sealing_key=key)
                opened = sum(1 for c in rep.contacts if c.holder.status == "ok")
                results[name] |= {"visits": len(rep.visits), "contacts": len(rep.contacts), "opened": opened,
                                  "cards": rep.contact_cards,
                                  "unindexed": _unindexed_s(name, results[name]["target"], shape, rep.visits)}
        finally:
            for console in consoles.values():
                console.stop()
            for st in stores.values():
                st.close()
            if cluster is not None:
                cluster.stop()
    print(f"== tracing: {shape.n:,} entries (30 days, {shape.checkpoints:,} checkpoints x 2 devices, "
          f"{shape.cards:,} cards); card seen {visits_n} times in the last 14 days, contacts within ±1 h; "
          f"medians of {rounds} interleaved rounds")
    rows: list[list[str]] = []
    figures: dict[str, Any] = {}
    for name in stores:
        r = results[name]
        peer = median(samples[f"{name}:peer"])
        figures[name] = {"peer_ms": peer * 1000, "raw_open_ms": median(samples[f"{name}:raw_open"]) * 1000,
                         "unindexed_ms": r["unindexed"] * 1000, "build_s": r["build"], "size_gib": r["size"] / 2**30,
                         "visits": r["visits"], "contacts": r["contacts"], "cards": r["cards"], "opened": r["opened"]}
        for case, label in (("visits", "visits (card, 14 days)"), ("contacts", "+ contacts ±1 h (no holders)"),
                            ("full", "+ holders opened: the call-centre answer")):
            t = median(samples[f"{name}:{case}"])
            x = median(ratios(samples, f"{name}:{case}", f"{name}:peer"))
            raw = (f"{median(ratios(samples, f'{name}:{case}', f'{name}:raw_open')):.2f}" if case == "full" else "-")
            rows.append([name, label, f"{t * 1000:.2f}", f"{x:,.1f}", raw])
            figures[name][f"{case}_ms"] = t * 1000
            if case == "full":
                figures[name]["full_x_raw_open"] = median(ratios(samples, f"{name}:{case}", f"{name}:raw_open"))
        raw_ms = median(samples[f"{name}:raw_open"]) * 1000
        rows.append([name, "raw: sealing.open of the answer's blobs alone", f"{raw_ms:.2f}",
                     f"{median(ratios(samples, f'{name}:raw_open', f'{name}:peer')):,.1f}", "1.00"])
        rows.append([name, "the same answer through the console (case page, HTTP)",
                     f"{median(samples[f'{name}:console']) * 1000:.2f}",
                     f"{median(ratios(samples, f'{name}:console', f'{name}:peer')):,.1f}",
                     f"{median(ratios(samples, f'{name}:console', f'{name}:raw_open')):.2f}"])
        rows.append([name, "visits + one visit's contacts, indexes unusable (once)", f"{r['unindexed'] * 1000:,.0f}",
                     f"{r['unindexed'] / peer:,.0f}", "-"])
    print(table(["backend", "query", "ms", "x peer", "x raw open"], rows, left=2))
    for name in stores:
        print(f"{name} peer (one indexed lookup that finds nothing): {median(samples[f'{name}:peer']) * 1000:.3f} ms")
    for name in stores:
        r = results[name]
        print(f"{name}: built in {r['build']:.0f} s ({shape.n / r['build']:,.0f} rows/s, indexes included), "
              f"entries {r['size'] / 2**30:.2f} GiB with indexes; the answer: {r['visits']} visits, "
              f"{r['contacts']} contact entries of {r['cards']} cards, {r['opened']} holders opened (the rest "
              "are bulk rows with unopenable blobs, same cost)")
    for name in stores:
        r = results[name]
        through = ratios(samples, f"{name}:console", f"{name}:full")
        figures[name] |= {"console_ms": median(samples[f"{name}:console"]) * 1000,
                          "console_x_full": median(through), "console_x_full_min": min(through),
                          "console_x_full_max": max(through), "console_rows": r["console_rows"],
                          "console_names": r["console_names"]}
        print(f"{name}: the console's case page / the library call (same answer, holders opened): "
              f"{median(through):.2f}x (spread {min(through):.2f}-{max(through):.2f}); its contact list: "
              f"{r['console_rows']} rows, {r['console_names']} holders' names shown (library: {r['contacts']} "
              f"contact entries, {r['opened']} holders opened)")
    if "postgresql" in stores:
        full = ratios(samples, "postgresql:full", "sqlite:full")
        print(f"postgresql / sqlite, the call-centre answer: {median(full):.2f}x")
        figures["postgresql_x_sqlite"] = median(full)
    else:
        print("PostgreSQL: not measured (no /usr/lib/postgresql/*/bin: install the postgresql package)")
    print()
    return {"n": shape.n, "checkpoints": shape.checkpoints, "cards": shape.cards, "visits": visits_n,
            "rounds": rounds, "backends": figures}
