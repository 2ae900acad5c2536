"""Group commit on PostgreSQL: batches of several devices arriving together are stored in one
transaction (one COPY, one commit), each acknowledged after it; a batch seen before is answered
with its first ack inside a group; a batch refused (revoked device, forged, a value the database
cannot hold) is refused alone; and a server killed between a group's COPY and its commit leaves
nothing of it stored and loses nothing it acknowledged."""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import replace

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ed25519
from support import postgres
from support.entries import chain_entries
from support.servers import ServerProcess, enroll_direct
from support.waiting import wait_for

from scanner.base.timeutil import now_ms
from scanner.store.entry import chain_hash, hash_fields
from sync.server.groupcommit import GroupSettings
from sync.server.model import ServerError
from sync.server.storage import open_storage
from sync.wire import batch as batchmod
from sync.wire import protocol

psycopg = pytest.importorskip("psycopg")


def _entries(dev: str, n: int, first_seq: int = 1, prev: bytes = bytes(32)):
    now = now_ms()
    return chain_entries(dev, "cp-1", [now - 1000 * (n - i) for i in range(n)],
                         [f"{first_seq + i:032x}" for i in range(n)], first_seq=first_seq, prev_hash=prev)


def _with_nul(entries):
    """The entries with a NUL character in the first one's source id, chained again (a text
    PostgreSQL cannot hold; the batch itself is well-formed and signed)."""
    first = replace(entries[0], source_id="cam\x000")
    out = [replace(first, hash=chain_hash(first.prev_hash, hash_fields(first)))]
    for e in entries[1:]:
        linked = replace(e, prev_hash=out[-1].hash)
        out.append(replace(linked, hash=chain_hash(linked.prev_hash, hash_fields(linked))))
    return out


def _signed(key, dev, entries) -> bytes:
    return batchmod.build(entries, key, device_id=dev, created_ms=now_ms()).data


def _xmins(url: str, table: str, where: str = "", params: tuple = ()) -> dict[str, int]:
    """batch_id -> the id of the transaction that wrote its row."""
    with psycopg.connect(url) as conn:
        return {r[0]: int(r[1]) for r in conn.execute(f"SELECT batch_id, xmin::text FROM {table} {where}", params)}


def _together(calls) -> list:
    """Run the calls at the same moment, each in its own thread; their results or exceptions."""
    out: list = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i, call):
        start.wait(60)
        try:
            out[i] = call()
        except Exception as exc:  # noqa: BLE001 - handed to the test
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def test_batches_arriving_together_share_one_transaction_and_each_is_answered_alone():
    url = postgres.cluster().new_schema()
    st = open_storage(url, group=GroupSettings(window_s=1.0, max_batches=64, committers=1))
    try:
        devices = [enroll_direct(st, "cp-1") for _ in range(6)]
        sent = [(key, dev, _entries(dev, 20)) for key, dev in devices]
        # device 5's batch was stored before: sent again inside the group it is a replay
        key5, dev5, es5 = sent[5]
        first_ack = st.ingest(batchmod.open_batch(_signed(key5, dev5, es5), key5.public_key()), "push", now_ms()).ack
        # device 4 is revoked between its request's check and its batch's turn
        st.revoke_device(sent[4][1], now_ms())
        parsed = [batchmod.open_batch(_signed(k, d, es), k.public_key()) for k, d, es in sent]
        outs = _together([lambda p=p: st.ingest(p, "push", now_ms()) for p in parsed])
        for (_, dev, es), out in zip(sent[:4], outs[:4]):
            assert out.stored == 20 and out.ack.held_seq == 20, out
            assert st.entry_hashes(dev) == {e.seq: e.hash for e in es}
        assert isinstance(outs[4], ServerError) and outs[4].code == protocol.E_DEVICE_REVOKED
        assert st.entry_hashes(sent[4][1]) == {}
        assert outs[5].replayed and outs[5].stored == 0 and outs[5].ack == first_ack
        # the four new batches went in by one transaction (one writer's id on every row)
        ids = [p.info.batch_id for p in parsed[:4]]
        assert len(set(_xmins(url, "batches", "WHERE batch_id = ANY(%s)", (ids,)).values())) == 1
        assert len(set(_xmins(url, "entries", "WHERE batch_id = ANY(%s)", (ids,)).values())) == 1
        s = st.stats()
        assert s.entries == 100 and s.batches == 5 and s.batches_replayed == 1
        assert s.conflicts == 0 and s.chain_problems == 0
    finally:
        st.close()


def test_a_process_stores_two_groups_at_once_by_default():
    """With the default settings a second group is stored while the first waits (for its commit,
    here for a lock), and a third waits for one of them: more groups at once would be smaller
    groups, more CPU per entry for the server and PostgreSQL (docs/benchmarks.md)."""
    url = postgres.cluster().new_schema()
    st = open_storage(url, group=GroupSettings())
    try:
        warm_key, warm_dev = enroll_direct(st, "cp-1")  # today's partitions made before the devices are locked
        st.ingest(batchmod.open_batch(_signed(warm_key, warm_dev, _entries(warm_dev, 2)), warm_key.public_key()),
                  "push", now_ms())
        devices = [enroll_direct(st, "cp-1") for _ in range(3)]
        parsed = [batchmod.open_batch(_signed(k, d, _entries(d, 5)), k.public_key()) for k, d in devices]
        results: list = []
        with psycopg.connect(url) as holder, psycopg.connect(url, autocommit=True) as watch:
            holder.execute("SELECT 1 FROM devices WHERE device_id = ANY(%s) FOR UPDATE", ([d for _, d in devices],))

            def waiting() -> int:
                return watch.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                     "AND query LIKE 'SELECT device_id, revoked_ms%%'").fetchone()[0]

            threads = [threading.Thread(target=lambda p=p: results.append(st.ingest(p, "push", now_ms())))
                       for p in parsed]
            for i, t in enumerate(threads[:2]):
                t.start()
                wait_for(lambda i=i: waiting() == i + 1, f"group {i + 1} waiting for the lock")
            threads[2].start()
            time.sleep(1.0)  # a third committer would have taken it within milliseconds
            assert waiting() == 2
            holder.rollback()
            for t in threads:
                t.join(60)
        assert len(results) == 3 and all(r.stored == 5 for r in results)
    finally:
        st.close()


def test_the_same_batch_twice_at_once_is_stored_once():
    """Two deliveries of one batch at the same moment (a device that resent after a timeout):
    never in one group (one batch per device per group), the second answered with the first ack."""
    url = postgres.cluster().new_schema()
    st = open_storage(url, group=GroupSettings(window_s=0.3, committers=2))
    try:
        key, dev = enroll_direct(st, "cp-1")
        es = _entries(dev, 30)
        data = _signed(key, dev, es)
        outs = _together([lambda: st.ingest(batchmod.open_batch(data, key.public_key()), "push", now_ms())
                          for _ in range(3)])
        assert sorted(o.stored for o in outs) == [0, 0, 30]
        assert len({o.ack for o in outs}) == 1 and sum(o.replayed for o in outs) == 2
        assert st.entry_hashes(dev) == {e.seq: e.hash for e in es}
        assert st.stats().entries == 30
    finally:
        st.close()


def test_a_batch_the_database_refuses_is_refused_alone():
    """A signed, well-formed batch with a NUL character in a text field (PostgreSQL's text cannot
    hold one) fails its group's transaction: the others are stored without it and it alone is
    refused with a reason code."""
    url = postgres.cluster().new_schema()
    st = open_storage(url, group=GroupSettings(window_s=0.5, committers=1))
    try:
        devices = [enroll_direct(st, "cp-1") for _ in range(4)]
        sent = [(key, dev, _entries(dev, 10)) for key, dev in devices]
        bad_key, bad_dev, bad_es = sent[1]
        sent[1] = (bad_key, bad_dev, _with_nul(bad_es))
        parsed = [batchmod.open_batch(_signed(k, d, es), k.public_key()) for k, d, es in sent]
        outs = _together([lambda p=p: st.ingest(p, "push", now_ms()) for p in parsed])
        assert isinstance(outs[1], batchmod.BatchError) and outs[1].code == protocol.E_MALFORMED, outs[1]
        assert st.entry_hashes(bad_dev) == {} and st.held_seq(bad_dev) == 0
        for i in (0, 2, 3):
            assert outs[i].stored == 10, outs[i]
            assert st.entry_hashes(sent[i][1]) == {e.seq: e.hash for e in sent[i][2]}
        s = st.stats()
        assert s.entries == 30 and s.batches == 3
    finally:
        st.close()


def _post(url: str, key, dev: str, data: bytes, timeout: float = 60) -> requests.Response:
    auth = protocol.auth_header_v2(dev, key, "POST", protocol.BATCHES, now_ms(), data)
    return requests.post(url + protocol.BATCHES, data=data, timeout=timeout,
                         headers={"Content-Type": protocol.BATCH_TYPE, "Authorization": auth})


def _server(tmp_path, url: str, window_ms: int) -> ServerProcess:
    (tmp_path / "s").mkdir(exist_ok=True)
    return ServerProcess(tmp_path / "s" / "c.db", url=url,
                         args=("--workers", "1", "--group-commit-ms", str(window_ms))).start()


def test_a_server_groups_concurrent_posts_and_refuses_a_forged_and_an_unstorable_batch_alone(tmp_path):
    url = postgres.cluster().new_schema()
    srv = _server(tmp_path, url, 400)
    st = open_storage(url)
    try:
        devices = [enroll_direct(st, "cp-1") for _ in range(6)]
        sent = [(key, dev, _entries(dev, 15)) for key, dev in devices]
        bodies = [_signed(k, d, es) for k, d, es in sent]
        forger = ed25519.Ed25519PrivateKey.generate()  # device 1's batch signed by another key
        bodies[1] = _signed(forger, sent[1][1], sent[1][2])
        bodies[2] = _signed(sent[2][0], sent[2][1], _with_nul(sent[2][2]))
        answers = _together([lambda k=k, d=d, b=b: _post(srv.url, k, d, b) for (k, d, _), b in zip(sent, bodies)])
        assert answers[1].status_code == 401 and answers[1].json()["error"] == protocol.E_BAD_SIGNATURE
        assert answers[2].status_code == 400 and answers[2].json()["error"] == protocol.E_MALFORMED
        for i in (0, 3, 4, 5):
            assert answers[i].status_code == 200, answers[i].text
            assert answers[i].json()["stored"] == 15
            assert st.entry_hashes(sent[i][1]) == {e.seq: e.hash for e in sent[i][2]}
        assert st.entry_hashes(sent[1][1]) == {} and st.entry_hashes(sent[2][1]) == {}
        assert st.stats().entries == 60
        assert _post(srv.url, *sent[0][:2], bodies[0]).json()["stored"] == 15  # again: the first answer
        assert st.stats().entries == 60 and st.stats().batches_replayed == 1
    finally:
        st.close()
        srv.stop()


def _waiting_group(url: str) -> list[tuple[int, str]]:
    """(pid, query) of server backends waiting for a lock on the batches table."""
    with psycopg.connect(url, autocommit=True) as conn:
        return [tuple(r) for r in conn.execute(
            "SELECT pid, query FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO "
            "batches%%' AND pid <> pg_backend_pid()")]


def _wrote_entries(url: str, pid: int) -> bool:
    """Whether backend ``pid`` holds the write lock a COPY into an entries partition takes."""
    with psycopg.connect(url, autocommit=True) as conn:
        return bool(conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE l.pid = %s "
            "AND l.mode = 'RowExclusiveLock' AND l.granted AND c.relname LIKE 'entries%%'", (pid,)).fetchone()[0])


def test_a_server_killed_between_a_groups_copy_and_its_commit_stores_none_of_it(tmp_path):
    """The group's COPY done, its commit not yet (the test holds a lock the group's last statement
    waits for): the server is SIGKILLed. None of the group's batches was acknowledged and none of
    their rows is stored; every batch acknowledged before is still there; the devices send again to
    a new server process and each entry is stored once."""
    url = postgres.cluster().new_schema()
    srv = _server(tmp_path, url, 300)
    st = open_storage(url)
    locker = None
    try:
        devices = [enroll_direct(st, "cp-1") for _ in range(5)]
        first = [(k, d, _entries(d, 10)) for k, d in devices]
        for k, d, es in first:  # acknowledged before the fault
            assert _post(srv.url, k, d, _signed(k, d, es)).status_code == 200
        second = [(k, d, _entries(d, 10, 11, es[-1].hash)) for k, d, es in first]
        bodies = [_signed(k, d, es) for k, d, es in second]
        locker = psycopg.connect(url)
        locker.execute("LOCK TABLE batches IN EXCLUSIVE MODE")  # reads go on; the group's INSERT waits
        answers: list = []

        def send(k, d, body):
            try:
                answers.append(_post(srv.url, k, d, body, timeout=120))
            except requests.RequestException as exc:
                answers.append(exc)

        senders = [threading.Thread(target=send, args=(k, d, b)) for (k, d, _), b in zip(second, bodies)]
        for t in senders:
            t.start()
        waiting = wait_for(lambda: w if len(w := _waiting_group(url)) >= 1 else None, "a group waiting to finish")
        time.sleep(0.5)  # any other group of them reaches the same point
        waiting = _waiting_group(url)
        assert all(_wrote_entries(url, pid) for pid, _ in waiting)  # its COPY is done
        srv.kill()
        for t in senders:
            t.join(60)
        assert len(answers) == 5 and not any(isinstance(a, requests.Response) and a.ok for a in answers)
        locker.rollback()  # the lock is released: the dead client's transactions end without a commit
        locker.close()
        locker = None
        wait_for(lambda: not _waiting_group(url), "the killed server's backends gone")
        for _, d, es1 in first:
            assert st.entry_hashes(d) == {e.seq: e.hash for e in es1}  # acknowledged: kept; the group: none
            assert st.held_seq(d) == 10
        assert st.stats().entries == 50 and st.stats().batches == 5
        srv.start()  # the devices send again
        for (k, d, _), body in zip(second, bodies):
            r = _post(srv.url, k, d, body)
            assert r.status_code == 200 and r.json()["stored"] == 10 and r.json()["held_seq"] == 20
        for (_, d, es1), (_, _, es2) in zip(first, second):
            assert st.entry_hashes(d) == {e.seq: e.hash for e in es1 + es2}
        s = st.stats()
        assert s.entries == 100 and s.batches == 10 and s.conflicts == 0 and s.chain_problems == 0
    finally:
        if locker is not None:
            with contextlib.suppress(psycopg.Error):
                locker.close()
        st.close()
        srv.stop()
