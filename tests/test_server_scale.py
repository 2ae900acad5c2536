"""The central side at scale, on SQLite and on a real PostgreSQL server: day partitions made on
demand and dropped whole by retention, the same retention rule on both, the tracing query and its
CSV/JSON for the call centre (holder details opened with the server's sealing key), and a small
fleet of devices pushing concurrently over real HTTP with every entry stored exactly once."""
from __future__ import annotations

import csv
import io
import json
import os
import threading
import time
from urllib.parse import quote, unquote

import pytest
import requests
from click.testing import CliRunner
from support import postgres
from support.devices import assert_exactly_once, provision_device, record
from support.entries import chain_entries
from support.servers import (
    BACKENDS,
    ServerThread,
    db_url_for,
    enroll_direct,
    ingest_entries,
)

from bench.pgcluster import PgCluster, find_bin_dir
from scanner.base.backoff import Backoff
from scanner.base.timeutil import now_ms
from scanner.cards import verifier
from scanner.cards.verdict import Holder
from scanner.cli.main import main
from scanner.store.sealing import generate_server_key
from sync.agent import SyncAgent
from sync.client import SyncClient
from sync.server.keys import load_or_create_sealing_key
from sync.server.model import StorageUnavailable
from sync.server.storage import open_storage
from sync.server.trace import TraceError, parse_card, parse_window, trace
from sync.wire import batch as batchmod
from sync.wire import identity, protocol

DAY = 86_400_000
HOUR = 3_600_000


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    """(storage, its URL, the key directory) on each backend."""
    (tmp_path / "server").mkdir()
    db = tmp_path / "server" / "central.db"
    url = db_url_for(request.param, db)
    st = open_storage(url)
    yield st, url, tmp_path / "server"
    st.close()


def _day_start(ms: int) -> int:
    return ms - ms % DAY


# ---------------------------------------------------------------- retention and partitions


def test_retention_removes_old_entries_keeps_late_arrivals_and_counts(store):
    st, _url, _ = store
    key, dev = enroll_direct(st, "market")
    now = now_ms()
    times = [now - 10 * DAY, now - 5 * DAY, now - 1 * DAY, 31_536_000_000 + 3 * HOUR, 31_622_400_000 + 3 * HOUR]
    es = chain_entries(dev, "market", times, [f"{i:02x}" * 16 for i in range(5)])
    received = [now - 10 * DAY, now - 5 * DAY, now, now - 10 * DAY, now]  # #4 and #5: a clock never set (1971)
    for e, rec in zip(es, received, strict=True):
        assert ingest_entries(st, key, dev, [e], at_ms=rec).stored == 1
    res = st.purge(now - 7 * DAY)
    assert res.entries == 2  # seq 1 (old, arrived long ago) and seq 4 (1971 clock, arrived long ago)
    assert set(st.entry_hashes(dev)) == {2, 3, 5}
    s = st.stats()
    assert (s.entries, s.entries_purged) == (3, 2)
    (status,) = st.devices()
    assert (status.entries, status.missing) == (3, 0) and st.gaps(dev) == []  # removed is not missing
    # an entry of that old day arriving late is kept a full retention period after it arrived
    late = chain_entries(dev, "market", [now - 10 * DAY + HOUR], ["aa" * 16], first_seq=6, prev_hash=es[-1].hash)
    assert ingest_entries(st, key, dev, late).stored == 1
    assert st.purge(now - 7 * DAY).entries == 0
    assert 6 in st.entry_hashes(dev)
    # a re-delivery of what is held stores nothing
    again = ingest_entries(st, key, dev, es[1:3])
    assert (again.stored, again.duplicates) == (0, 2)
    assert st.stats().entries == 4 and st.stats().conflicts == 0


def test_postgres_partitions_by_day_made_on_demand_and_dropped_whole(tmp_path):
    # local: sync.server.postgres needs psycopg (the server extra), and these tests skip without it
    from sync.server.postgres import DAY_MS, PostgresStorage, partition_name

    url = db_url_for("postgresql", tmp_path / "c.db")
    st = open_storage(url)
    try:
        key, dev = enroll_direct(st, "gate")
        now = now_ms()
        today = now // DAY_MS
        old = (today - 20) * DAY_MS + HOUR  # two entries in one day (now - 20 days + an hour is the next after 23:00)
        times = [old, old + HOUR, now - 3 * DAY, now, now + 40 * DAY, 86_400_000 * 400]
        es = chain_entries(dev, "gate", times, [None, "ab" * 8, "cd" * 8, "ef" * 8, "01" * 8, "23" * 8])
        ingest_entries(st, key, dev, es, at_ms=now - 20 * DAY)
        parts = set(st.partitions())
        assert {partition_name(today - 20), partition_name(today - 3), partition_name(today),
                "entries_other"} <= parts
        assert partition_name(today + 40) not in parts  # beyond the window: the default partition
        with st.pool.connection() as conn:
            other = conn.execute("SELECT count(*) FROM entries_other").fetchone()[0]
            in_old_day = conn.execute(f"SELECT count(*) FROM {partition_name(today - 20)}").fetchone()[0]
        assert (other, in_old_day) == (2, 2)
        res = st.purge(now - 7 * DAY)
        assert res.partitions == (partition_name(today - 20),) and res.entries == 3  # + the 1971 one
        assert partition_name(today - 20) not in st.partitions()
        assert set(st.entry_hashes(dev)) == {3, 4, 5}
        # a second storage (another server process) sees the same and makes no partition twice
        st2 = open_storage(url)
        try:
            more = chain_entries(dev, "gate", [now + HOUR], ["77" * 8], first_seq=7, prev_hash=es[-1].hash)
            assert ingest_entries(st2, key, dev, more).stored == 1
            assert st2.ensure_partitions([today]) == []
        finally:
            st2.close()
        # 39 days on, the future-dated entry's day enters the window: its partition is made and the
        # entry moves there out of the default partition
        later = PostgresStorage(url, now_ms=lambda: now + 39 * DAY)
        try:
            assert later.ensure_partitions([today + 40]) == [partition_name(today + 40)]
            with later.pool.connection() as conn:
                moved = conn.execute(f"SELECT seq FROM {partition_name(today + 40)}").fetchall()
                left = conn.execute("SELECT count(*) FROM entries_other").fetchone()[0]
            assert (moved, left) == ([(5,)], 0)
        finally:
            later.close()
        assert st.stats().entries == 4
    finally:
        st.close()


def test_concurrent_ingests_of_one_device_store_each_entry_once(store):
    """Push, pull and import of overlapping runs of one device at the same moment."""
    st, _, _ = store
    key, dev = enroll_direct(st, "gate")
    now = now_ms()
    es = chain_entries(dev, "gate", [now - i for i in range(300, 0, -1)], [f"{i:032x}" for i in range(300)])
    runs = [es[0:150], es[100:250], es[50:300], es[0:300], es[200:300], es[0:100]]
    results, errors = [], []

    def go(run, source):
        try:
            results.append(ingest_entries(st, key, dev, run, source=source))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(r, ("push", "pull", "import")[i % 3])) for i, r in enumerate(runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sum(r.stored for r in results) == 300
    assert st.entry_hashes(dev) == {e.seq: e.hash for e in es}
    s = st.stats()
    assert s.entries == 300 and s.conflicts == 0 and s.chain_problems == 0
    assert sum(s.by_source.values()) == len(runs)


# ---------------------------------------------------------------- tracing


@pytest.fixture
def world(store):
    """Two checkpoints, the traced card X visiting both, people around it, holders sealed."""
    st, url, keys = store
    server_key = load_or_create_sealing_key(keys)
    pub = server_key.public_key()
    now = now_ms()
    t0, t1 = now - 3 * DAY, now - 1 * DAY
    X, P, Q, R, S, T, U, V = (c * 16 for c in ("0a", "0b", "0c", "0d", "0e", "0f", "1a", "1b"))
    kmarket, market = enroll_direct(st, "market")
    kschool, school = enroll_direct(st, "school")
    h = Holder
    m_rows = [  # (time, card, holder)
        (now - 20 * DAY, X, h("Trần Thị X", "1980-02-02", None)),  # outside --days 14
        (t0 - 59 * 60_000, S, h("Lê Văn S", "1975-05-05", "***123")),
        (t0, X, h("Trần Thị X", "1980-02-02", None)),
        (t0 + 60_000, None, None),  # an unreadable code: no card, nobody to call
        (t0 + 20 * 60_000, P, h("Phạm P", "1990-01-01", None)),
        (t0 + 30 * 60_000, T, "other-key"),
        (t0 + 40 * 60_000, P, h("Phạm P", "1990-01-01", None)),
        (t0 + 2 * HOUR, Q, h("Quách Q", "1991-01-01", None)),  # outside ±1h
    ]
    s_rows = [
        (t1 - 30 * 60_000, R, h("Rơ Châm R", "2001-09-09", None)),
        (t1, X, h("Trần Thị X", "1980-02-02", None)),
        (t1 + 10 * 60_000, U, h("=HYPERLINK(\"http://x\")\x1b[2J", "1999-09-09", None)),
        (t1 + 15 * 60_000, V, None),  # a device set to store no holder details
    ]
    other = generate_server_key().public_key()
    for k, dev, cp, rows in ((kmarket, market, "market", m_rows), (kschool, school, "school", s_rows)):
        es, prev = [], bytes(32)
        for i, (at, card, holder) in enumerate(rows):
            seal_to = other if holder == "other-key" else pub
            hold = h("Someone Else", "1970-01-01", None) if holder == "other-key" else holder
            (e,) = chain_entries(dev, cp, [at], [card], first_seq=i + 1, prev_hash=prev, holders=[hold],
                                 seal_to=seal_to)
            es.append(e)
            prev = e.hash
        ingest_entries(st, k, dev, es)
    return {"st": st, "url": url, "keys": keys, "key": server_key, "now": now, "t0": t0, "t1": t1,
            "cards": dict(X=X, P=P, Q=Q, R=R, S=S, T=T, U=U, V=V)}


def test_trace_visits_and_contacts_with_holders(world):
    st, c, now = world["st"], world["cards"], world["now"]
    rep = trace(st, c["X"].upper(), since_ms=now - 14 * DAY, until_ms=now, window_ms=HOUR, sealing_key=world["key"])
    assert [v.entry.checkpoint_id for v in rep.visits] == ["market", "school"]
    assert all(v.holder.status == "ok" and v.holder.name == "Trần Thị X" for v in rep.visits)
    got = [(x.entry.card_id, x.entry.checkpoint_id, x.offset_ms // 60_000, x.holder.status) for x in rep.contacts]
    assert got == [(c["S"], "market", -59, "ok"), (c["P"], "market", 20, "ok"), (c["T"], "market", 30, "unreadable"),
                   (c["P"], "market", 40, "ok"), (c["R"], "school", -30, "ok"), (c["U"], "school", 10, "ok"),
                   (c["V"], "school", 15, "none")]
    assert rep.contact_cards == 6 and not rep.truncated
    assert rep.contacts[0].holder.name == "Lê Văn S" and rep.contacts[0].holder.id_masked == "***123"
    # visits only, no key: nothing opened
    bare = trace(st, c["X"], since_ms=now - 30 * DAY, until_ms=now)
    assert len(bare.visits) == 3 and bare.contacts == () and {v.holder.status for v in bare.visits} == {"not_opened"}
    # a narrower window, and limits
    narrow = trace(st, c["X"], since_ms=now - 14 * DAY, until_ms=now, window_ms=25 * 60_000)
    assert {x.entry.card_id for x in narrow.contacts} == {c["P"], c["U"], c["V"]}
    capped = trace(st, c["X"], since_ms=now - 14 * DAY, until_ms=now, window_ms=HOUR, max_visits=1)
    assert capped.truncated and len(capped.visits) == 1
    assert trace(st, "ff" * 16, since_ms=0, until_ms=now, window_ms=HOUR).visits == ()
    if world["url"].startswith("postgresql"):  # a read-only connection (as to a hot standby) can trace
        base, _, opts = world["url"].partition("?options=")
        ro_url = f"{base}?options=" + quote(unquote(opts) + " -cdefault_transaction_read_only=on", safe="")
        ro = open_storage(ro_url)
        try:
            again = trace(ro, c["X"], since_ms=now - 14 * DAY, until_ms=now, window_ms=HOUR, sealing_key=world["key"])
            assert again == rep
            with pytest.raises(StorageUnavailable):  # a write there: 503 db_unavailable, never a crash
                ro.set_meta("x", "y")
        finally:
            ro.close()


def test_trace_parsing():
    assert parse_window("1h") == HOUR and parse_window("1h30m") == 90 * 60_000 and parse_window("45s") == 45_000
    for bad in ("", "1d", "0m", "25h", "h", "-1h", "1.5h"):
        with pytest.raises(TraceError):
            parse_window(bad)
    assert parse_card(" ABcd ") == "abcd"
    for bad in ("abc", "xyz1", "", "ab cd", "aa" * 300):
        with pytest.raises(TraceError):
            parse_card(bad)


def test_trace_cli_csv_and_json_for_the_call_centre(world, tmp_path):
    r = CliRunner()
    base = ["server", "trace", "--lang", "en", "--db", world["url"], "--card", world["cards"]["X"], "--days", "14",
            "--keys", str(world["keys"]), "--tz", "Asia/Ho_Chi_Minh"]
    out = r.invoke(main, base + ["--contacts", "--window", "1h"])
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert "2 visits in 14 days, 7 contact entries of 6 cards" in out.stderr
    assert len(rows) == 7 and rows[0]["name"] == "Lê Văn S" and rows[0]["offset_s"] == "-3540"
    assert rows[0]["visit_at"].endswith("+07:00")
    inj = next(row for row in rows if row["contact_card_id"] == world["cards"]["U"])
    assert inj["name"].startswith("'=HYPERLINK") and "\x1b" not in inj["name"] and "\\u001b" in inj["name"]
    assert {row["holder_status"] for row in rows} == {"ok", "unreadable", "none"}
    out = r.invoke(main, base + ["--contacts", "--format", "json", "--out", str(tmp_path / "trace.json")])
    assert out.exit_code == 0, out.output
    doc = json.loads((tmp_path / "trace.json").read_text(encoding="utf-8"))
    assert (tmp_path / "trace.json").stat().st_mode & 0o777 == 0o600
    assert [len(v["contacts"]) for v in doc["visits"]] == [4, 3] and doc["contact_cards"] == 6
    assert doc["visits"][0]["name"] == "Trần Thị X"
    out = r.invoke(main, base[:-4] + ["--no-holders", "--days", "30"])
    assert out.exit_code == 0 and out.stdout.count("not_opened") == 3
    out = r.invoke(main, base + ["--card", "not-hex"])
    assert out.exit_code == 2
    if world["url"].startswith("postgresql"):  # no file to put the key beside
        out = r.invoke(main, ["server", "trace", "--db", world["url"], "--card", "ab"])
        assert out.exit_code == 2 and "--keys" in out.output


# ---------------------------------------------------------------- a small fleet over HTTP


@pytest.mark.parametrize("backend", BACKENDS)
def test_fleet_of_20_devices_pushing_concurrently_stores_each_entry_once(tmp_path, backend):
    """The bounded version of bench/bench_fleet.py: 20 devices x 3 batches of 40 entries, at the
    same time, through the real server (busy answers honoured), plus a replay of every batch."""
    (tmp_path / "s").mkdir()
    db = tmp_path / "s" / "c.db"
    srv = ServerThread(db, url=db_url_for(backend, db), config={"max_inflight_batches": 8, "retry_after_s": 0}).start()
    try:
        devices = []
        now = now_ms()
        for d in range(20):
            key, dev = enroll_direct(srv.storage, f"cp-{d % 5}")
            es = chain_entries(dev, f"cp-{d % 5}", [now - 1000 * i for i in range(120, 0, -1)],
                               [f"{d:04x}{i:028x}" for i in range(120)])
            batches = [batchmod.build(es[i:i + 40], key, device_id=dev, created_ms=now).data for i in range(0, 120, 40)]
            devices.append((dev, key, es, batches))
        start = threading.Barrier(20)
        failures, busy = [], []

        def device(dev, key, batches):
            with requests.Session() as s:
                start.wait(60)
                for data in batches + batches[:1]:  # and the first one again: a replay
                    for _ in range(1000):
                        auth = protocol.auth_header_v2(dev, key, "POST", protocol.BATCHES, now_ms(), data)
                        r = s.post(srv.url + protocol.BATCHES, data=data, timeout=60,
                                   headers={"Content-Type": protocol.BATCH_TYPE, "Authorization": auth})
                        if r.status_code not in (429, 503):  # busy: server-wide, or this address's share
                            break
                        busy.append(1)
                        time.sleep(0.01)
                    if r.status_code != 200:
                        failures.append((dev, r.status_code, r.text[:200]))

        threads = [threading.Thread(target=device, args=(dev, key, b)) for dev, key, _, b in devices]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert failures == []
        for dev, _, es, _ in devices:
            assert srv.storage.entry_hashes(dev) == {e.seq: e.hash for e in es}
            assert srv.storage.gaps(dev) == []
        s = srv.storage.stats()
        assert (s.entries, s.batches, s.batches_replayed, s.conflicts, s.chain_problems) == (2400, 60, 20, 0, 0)
        assert s.duplicates_dropped == 20 * 40
    finally:
        srv.stop()


# ---------------------------------------------------------------- PostgreSQL dies under the server


@pytest.fixture(scope="module")
def verdicts(make_card, trust, now):
    return [verifier.verify(make_card(card_id=os.urandom(16)), trust, now) for _ in range(3)]


def test_postgres_killed_under_the_server_then_back_nothing_lost(tmp_path, verdicts):
    """PostgreSQL crashes (pg_ctl stop -m immediate) while devices sync: the server answers
    503 db_unavailable, the device keeps its entries and retries; once PostgreSQL is back (crash
    recovery) the pool reconnects and every entry is stored exactly once."""
    postgres.cluster()  # skips here, with the reason, where PostgreSQL cannot run
    pg = PgCluster(find_bin_dir(), durable=True)  # its own server, to kill
    (tmp_path / "s").mkdir()
    srv = ServerThread(tmp_path / "s" / "c.db", url=pg.url()).start()
    try:
        dev = provision_device(srv, tmp_path)
        client = SyncClient(srv.url, identity.load(dev.state), device_id=dev.device_id, read_timeout=60)
        agent = SyncAgent(dev.state, dev.log, client=client, backoff=Backoff(base_s=0.05, cap_s=0.5, jitter=True))
        record(dev, verdicts, 30)
        assert agent.sync_once().complete
        pg.kill()
        record(dev, verdicts, 20)
        res = agent.sync_once()
        assert not res.complete and res.error_code == "db_unavailable" and res.pending == 20
        pg.start()
        res = agent.sync_until_done(120)
        assert res.complete
        assert_exactly_once(srv.storage, dev)
        assert srv.storage.stats().entries == 50
        agent.close()
        dev.log.close()
    finally:
        srv.stop()
        pg.stop()
