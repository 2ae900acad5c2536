"""The entry log on real SQLite files: recording, privacy, anti-passback, occupancy, follow-ups,
the hash chain, sync marking, retention, files and schema guards."""
from __future__ import annotations

import contextlib
import datetime as dt
import functools
import itertools
import os
import pwd
import shutil
import sqlite3
import stat
import threading
import time
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from support.entries import bulk_fill, vm_steps
from support.waiting import WAIT

from scanner.base.errors import Reason
from scanner.cards import verifier
from scanner.cards.scan import Scan
from scanner.cards.verdict import Decision
from scanner.store import entrylog as entrylog_mod
from scanner.store import sealing
from scanner.store.entry import GENESIS
from scanner.store.entrylog import PASSBACK_SQL, EntryLog, EntryLogError, EntryLogWriteError, new_entry_id

NOW = 1_750_000_000  # conftest's verification time: 2025-06-15T15:06:40Z
UTC7 = dt.timezone(dt.timedelta(hours=7))
NAME, BIRTH = "Nguyễn Thị Thanh Hương", "1987-03-15"


@pytest.fixture(scope="module")
def server():
    return X25519PrivateKey.generate()


@pytest.fixture(scope="module")
def verdict_for(make_card, trust):
    """An accepted (or, with expired=True, rejected-but-authentic) verdict for card ``cid``."""
    cache = {}

    def factory(cid: bytes | None = None, *, expired: bool = False):
        cid = cid or os.urandom(16)
        key = (cid, expired)
        if key not in cache:
            kw = {"issued_at": NOW - 86400 * 30, "expires_at": NOW - 86400 * 2} if expired else {}
            text = make_card(card_id=cid, name=NAME, birth_date=BIRTH, id_masked="079******1234", **kw)
            cache[key] = verifier.verify(text, trust, NOW)
        return cache[key]
    return factory


@pytest.fixture
def open_log(tmp_path, server):
    logs = []

    def factory(name="entries.db", **kw) -> EntryLog:
        kw.setdefault("device_id", "dev-1")
        kw.setdefault("checkpoint_id", "market-east")
        kw.setdefault("sealing_key", server.public_key())
        kw.setdefault("tz", UTC7)
        log = EntryLog(tmp_path / "state" / name, **kw)
        logs.append(log)
        return log
    yield factory
    for log in logs:
        log.close()


def scan(at=NOW, source="camera", direction=None, text="CK1:..."):
    return Scan(text, source, "cam0" if source == "camera" else "reader0", at, direction)


def raw(log: EntryLog) -> sqlite3.Connection:
    return sqlite3.connect(str(log.path), isolation_level=None)


# ---------------------------------------------------------------- recording, privacy


def test_record_commits_every_field(open_log, verdict_for, server):
    log = open_log(clock=lambda: "synced")
    v = verdict_for(b"\x11" * 16)
    r = log.record(scan(NOW + 0.25), v, direction="in")
    assert r.verdict is v and not r.duplicate
    e = log.get(r.entry.entry_id)
    assert e == r.entry
    assert (e.seq, e.device_id, e.checkpoint_id, e.direction, e.at_ms, e.clock, e.source, e.source_id) == \
        (1, "dev-1", "market-east", "in", NOW * 1000 + 250, "synced", "camera", "cam0")
    assert (e.decision, e.reason, e.format, e.card_id, e.issuer) == ("accept", "ok", "CK1", "11" * 16, "VN-HUE")
    assert uuid.UUID(e.entry_id).version == 4
    assert e.kid and e.batch_id is None and e.prev_hash == GENESIS and e.hash == e.computed_hash()
    assert sealing.open(e.sealed, server, e.entry_id).name == NAME


def test_no_personal_data_in_the_clear_anywhere_in_the_files(open_log, verdict_for):
    log = open_log()
    for i in range(20):
        log.record(scan(NOW + i), verdict_for(bytes([i]) * 16), direction="in")
    log.close()
    blob = b"".join(p.read_bytes() for p in log.path.parent.iterdir())
    for secret in (NAME, "Hương", BIRTH, "079******1234", "******"):
        assert secret.encode("utf-8") not in blob, secret


def test_holder_details_none_and_no_key_store_nothing(open_log, verdict_for):
    v = verdict_for()
    off = open_log("off.db", holder_details="none")
    assert off.record(scan(), v, direction="in").entry.sealed is None
    nokey = open_log("nokey.db", sealing_key=None)
    assert nokey.record(scan(), v, direction="in").entry.sealed is None
    s = nokey.stats(now=NOW)
    assert (s.holder_details, s.holder_details_note) == ("none", "no sealing key configured")
    assert (s.holder_sealed, s.holder_not_stored) == (0, 1)
    on = open_log("on.db")
    on.record(scan(), v, direction="in")
    assert on.stats(now=NOW).holder_details == "sealed"


def test_unreadable_and_rejected_codes_are_logged_too(open_log, trust, verdict_for):
    log = open_log()
    junk = log.record(scan(text="hello"), verifier.verify("hello", trust, NOW), direction="out").entry
    assert (junk.decision, junk.reason, junk.card_id, junk.sealed, junk.direction) == \
        ("reject", "unsupported_format", None, None, "out")
    exp = log.record(scan(), verdict_for(b"\x22" * 16, expired=True), direction="in")
    assert (exp.entry.reason, exp.entry.card_id, exp.duplicate) == ("expired", "22" * 16, False)
    assert exp.entry.sealed is not None  # an authentic card: the holder is sealed for tracing


def test_direction_from_the_scan_or_the_call(open_log, verdict_for):
    log = open_log()
    assert log.record(scan(direction="out"), verdict_for()).entry.direction == "out"
    assert log.record(scan(direction="out"), verdict_for(), direction="in").entry.direction == "in"
    with pytest.raises(ValueError):
        log.record(scan(), verdict_for())


def test_recording_needs_device_and_checkpoint(tmp_path, verdict_for):
    with EntryLog(tmp_path / "x.db") as log:
        with pytest.raises(EntryLogError) as exc:
            log.record(scan(), verdict_for(), direction="in")
        assert exc.value.code == "log_not_configured"


def test_durability_settings(open_log):
    log = open_log()
    c = raw(log)
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert log._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert log._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000
    assert c.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    normal = open_log("n.db", synchronous="normal")
    assert normal._conn.execute("PRAGMA synchronous").fetchone()[0] == 1


# ---------------------------------------------------------------- anti-passback, occupancy


def test_anti_passback(open_log, verdict_for):
    log = open_log(passback_window_s=60)
    v = verdict_for(b"\x33" * 16)
    first = log.record(scan(NOW), v, direction="in")
    again = log.record(scan(NOW + 30), v, direction="in")
    assert again.duplicate and again.verdict.reason is Reason.DUPLICATE
    assert again.verdict.decision is Decision.REJECT and again.verdict.card == v.card  # card facts kept
    assert (again.entry.decision, again.entry.reason, again.entry.card_id) == ("reject", "duplicate", "33" * 16)
    assert again.entry.sealed is not None
    # a third scan is still inside the window of the admitted one
    assert log.record(scan(NOW + 59), v, direction="in").duplicate
    assert not log.record(scan(NOW + 61), v, direction="in").duplicate  # window over: admitted again
    assert not log.record(scan(NOW + 62), v, direction="out").duplicate  # the other direction
    assert not log.record(scan(NOW + 30), verdict_for(), direction="in").duplicate  # another card
    other_gate = EntryLog(log.path, device_id="dev-1", checkpoint_id="market-west", sealing_key=None, tz=UTC7)
    assert not other_gate.record(scan(NOW + 63), v, direction="in").duplicate
    other_gate.close()
    assert first.entry.seq == 1
    t = log.totals(now=NOW)
    assert (t.scans, t.accepted, t.duplicates, t.admitted_in, t.admitted_out) == (6, 4, 2, 3, 1)


def test_rejected_cards_are_never_turned_into_duplicates(open_log, verdict_for):
    log = open_log()
    v = verdict_for(b"\x44" * 16, expired=True)
    assert [log.record(scan(NOW + i), v, direction="in").entry.reason for i in range(3)] == ["expired"] * 3


def test_window_zero_disables_anti_passback(open_log, verdict_for):
    log = open_log(passback_window_s=0)
    v = verdict_for()
    assert not any(log.record(scan(NOW + i), v, direction="in").duplicate for i in range(3))


def test_anti_passback_probes_the_cards_index_not_the_checkpoints(open_log, verdict_for):
    """A busy checkpoint has hundreds of scans in the window: the query must look up the card."""
    log = open_log(passback_window_s=120)
    for i in range(300):  # other cards at this checkpoint, and a few at another one, for the planner
        log.record(scan(NOW + i * 0.4), verdict_for(), direction="in")
    for analyze in (False, True):  # without statistics (the device) and with them
        if analyze:
            log._conn.execute("ANALYZE")
        plan = " ".join(r[3] for r in log._conn.execute("EXPLAIN QUERY PLAN " + PASSBACK_SQL,
                                                       ("ab" * 16, 0, 1, "market-east", "in")))
        assert "USING INDEX entries_card (card_id=?" in plan, plan
        assert "entries_checkpoint" not in plan, plan


def test_occupancy_and_totals_per_local_day(open_log, verdict_for):
    log = open_log()
    day_start = int(dt.datetime(2025, 6, 15, tzinfo=UTC7).timestamp())
    people = [verdict_for(bytes([0x50 + i]) * 16) for i in range(5)]
    for i, v in enumerate(people):
        log.record(scan(day_start + 3600 + i), v, direction="in")
    log.record(scan(day_start + 7200), people[0], direction="out")
    log.record(scan(day_start + 7201), people[1], direction="out")
    assert log.occupancy(now=day_start + 8000) == 3
    # yesterday does not count today; leaving more often than entering never goes below zero
    log.record(scan(day_start - 600), verdict_for(), direction="in")
    for v in people[2:]:
        log.record(scan(day_start + 9000), v, direction="out")
    log.record(scan(day_start + 9001), verdict_for(), direction="out")
    assert log.occupancy(now=day_start + 10_000) == 0
    t = log.totals(now=day_start + 10_000)
    assert (t.day, t.admitted_in, t.admitted_out, t.occupancy) == ("2025-06-15", 5, 6, 0)
    assert log.totals(now=day_start - 1).admitted_in == 1  # the day before


def test_did_not_pass_is_a_followup_not_an_update(open_log, verdict_for):
    log = open_log()
    v = verdict_for(b"\x66" * 16)
    orig = log.record(scan(NOW), v, direction="in").entry
    assert log.occupancy(now=NOW) == 1
    fu = log.record_followup(orig.entry_id, at=NOW + 5)
    assert (fu.kind, fu.ref_entry_id, fu.seq, fu.card_id, fu.checkpoint_id) == \
        ("did_not_pass", orig.entry_id, 2, orig.card_id, "market-east")
    assert fu.sealed is None and fu.prev_hash == orig.hash
    assert log.get(orig.entry_id) == orig  # untouched
    assert log.occupancy(now=NOW) == 0
    t = log.totals(now=NOW)
    assert (t.scans, t.did_not_pass, t.admitted_in) == (1, 1, 0)
    assert log.record_followup(orig.entry_id) == fu  # idempotent
    # cancelled: scanning again at once is admitted, not a duplicate
    assert not log.record(scan(NOW + 10), v, direction="in").duplicate
    assert log.verify().ok


def test_followup_refusals(open_log, trust, verdict_for):
    log = open_log()
    with pytest.raises(EntryLogError) as exc:
        log.record_followup(str(uuid.uuid4()))
    assert exc.value.code == "unknown_entry"
    rejected = log.record(scan(), verifier.verify("x", trust, NOW), direction="in").entry
    with pytest.raises(EntryLogError) as exc:
        log.record_followup(rejected.entry_id)
    assert exc.value.code == "not_admitted"
    with pytest.raises(ValueError):
        log.record_followup(rejected.entry_id, kind="teleported")


# ---------------------------------------------------------------- chain


def test_chain_detects_deleted_and_altered_rows(open_log, verdict_for):
    log = open_log()
    for i in range(6):
        log.record(scan(NOW + i), verdict_for(), direction="in")
    assert log.verify().ok and log.verify().checked == 6
    c = raw(log)
    c.execute("UPDATE entries SET decision = 'reject' WHERE seq = 3")
    r = log.verify()
    assert (r.ok, r.bad_seq, r.problem) == (False, 3, "altered")
    c.execute("UPDATE entries SET decision = 'accept' WHERE seq = 3")
    c.execute("UPDATE entries SET sealed = zeroblob(length(sealed)) WHERE seq = 4")
    assert (log.verify().bad_seq, log.verify().problem) == (4, "altered")
    c.execute("DELETE FROM entries WHERE seq = 4")
    assert (log.verify().bad_seq, log.verify().problem) == (5, "gap")
    c.execute("DELETE FROM entries WHERE seq = 1")
    assert (log.verify().bad_seq, log.verify().problem) == (2, "gap")


def test_batch_marking_does_not_touch_the_chain(open_log, verdict_for):
    log = open_log()
    for i in range(3):
        log.record(scan(NOW + i), verdict_for(), direction="in")
    log.mark_synced("b1", 1, 3)
    assert log.verify().ok


def test_the_chain_continues_when_another_connection_appends_between(open_log, verdict_for):
    """The log keeps its last link in memory; an entry appended meanwhile by another log on the
    same file (another process) is found, and the chain goes on after it."""
    a = open_log()
    b = open_log()
    seqs = []
    for i in range(6):
        writer = a if i % 3 else b
        seqs.append(writer.record(scan(NOW + i), verdict_for(), direction="in").entry.seq)
        if i == 3:
            seqs.append(b.record_followup(a.tail(1)[0].entry_id).seq)
    assert seqs == list(range(1, 8))
    assert a.verify().ok and a.verify().checked == 7
    entries = a.tail(7)
    assert all(e.prev_hash == p.hash for p, e in itertools.pairwise(entries))


def test_the_chain_continues_after_another_connection_appended_and_purged(open_log, verdict_for):
    """Another log on the file appends after this one's last link, and then purges its entries too
    (synced, older than the retention): this log's next entry follows the anchor, not its old head."""
    a = open_log()
    b = open_log()
    a.record(scan(NOW), verdict_for(), direction="in")
    b.record(scan(NOW + 1), verdict_for(), direction="in")
    b.mark_synced("b1", 1, 2)
    assert b.purge(0, now=NOW + 60).purged == 2
    assert a.record(scan(NOW + 70), verdict_for(), direction="in").entry.seq == 3
    report = a.verify()
    assert report.ok and report.anchor_seq == 2, report


@contextlib.contextmanager
def _writing_elsewhere(log: EntryLog, hold_s: float):
    """``log`` holds a write transaction on another thread for ``hold_s`` (as the sync agent's own
    log does while it marks a batch); entered once it holds it."""
    holding, done = threading.Event(), threading.Event()

    def hold():
        with log._write():
            holding.set()
            time.sleep(hold_s)
        done.set()

    t = threading.Thread(target=hold)
    t.start()
    assert holding.wait(10)
    try:
        yield done
    finally:
        t.join()


def test_writers_of_one_file_in_one_process_queue_on_a_lock_not_on_sqlites_sleep(open_log, verdict_for):
    """The lane's log and the sync agent's are two connections to one file in one process: a scan
    that meets the other's write transaction waits for its end on a lock, woken when it ends, not
    in SQLite's busy handler (which sleeps 1 ms, then 2, then 5, however short the other's
    transaction). Shown with the lane connection's own busy wait off: the scan still commits."""
    lane = open_log()
    sync = open_log()
    lane.record(scan(NOW), verdict_for(), direction="in")
    lane._conn.execute("PRAGMA busy_timeout = 0")  # SQLite's wait off: a BUSY would fail at once
    with _writing_elsewhere(sync, 0.3) as done:
        res = lane.record(scan(NOW + 1), verdict_for(), direction="in")
        assert done.is_set()  # it waited for the other's commit
    assert res.entry.seq == 2 and lane.queued() == 0
    assert lane.verify().ok


def test_a_writer_that_holds_the_file_too_long_fails_the_scan_into_the_retry_queue_not_a_hang(open_log, verdict_for):
    """The lock is waited for no longer than the log's busy timeout: then the scan's entry waits in
    the retry queue (as with a busy file), and is committed once the other writer is done."""
    lane = open_log(busy_timeout_s=0.2)
    sync = open_log()
    with _writing_elsewhere(sync, 2.0) as done:
        with pytest.raises(EntryLogWriteError):
            lane.record(scan(NOW), verdict_for(), direction="in")
        assert not done.is_set() and lane.queued() == 1
    assert lane.flush_pending() == 1 and lane.queued() == 0
    assert [e.seq for e in lane.tail(5)] == [1]


def _wal_pages(log: EntryLog) -> int:
    """Pages the WAL file has room for (its size; a checkpoint does not shrink it)."""
    return max(0, os.stat(f"{log.path}-wal").st_size - 32) // (4096 + 24)


def test_the_side_connections_keep_a_small_page_cache(open_log, verdict_for, monkeypatch):
    """The connections that read the log now and then (the sync agent's, the batch builder's, the idle
    checkpoints') keep a smaller page cache than the lane's; neither is SQLite's default 2 MiB, which
    fills up slowly as the file grows. A reconnection keeps the size asked for."""
    monkeypatch.setattr(entrylog_mod, "CHECKPOINT_QUIET_S", 0)
    side_kib = entrylog_mod.SIDE_CACHE_KIB
    lane = open_log(wal_checkpoints="idle", passback_window_s=0)
    side = EntryLog(lane.path, create=False, cache_kib=side_kib)

    def cache(conn) -> int:
        return conn.execute("PRAGMA cache_size").fetchone()[0]
    try:
        assert cache(lane._conn) == -entrylog_mod.CACHE_KIB and cache(side._conn) == -side_kib
        assert side_kib < entrylog_mod.CACHE_KIB < 2000
        v = verdict_for()
        for i in range(entrylog_mod.CHECKPOINT_COMMITS):
            lane.record(scan(NOW + i), v, direction="in")
        assert lane.checkpoint_when_idle()
        assert cache(lane._checkpointer) == -side_kib
        side._reconnect()
        assert cache(side._conn) == -side_kib
        side.release_memory()
        assert len(side.pending(0, 10)) == 10  # it reads on as before
    finally:
        side.close()


def test_idle_checkpoints_never_run_inside_a_commit(open_log, verdict_for, monkeypatch):
    """With wal_checkpoints="idle" no commit checkpoints the WAL (SQLite's own would at 1000
    pages); checkpoint_when_idle copies it once enough commits have piled up and the lane is
    between scans, or after too many whatever the lane does; the WAL is then reused in place."""
    monkeypatch.setattr(entrylog_mod, "CHECKPOINT_QUIET_S", 0.3)
    monkeypatch.setattr(entrylog_mod, "WAL_AHEAD_BYTES", 0)  # the WAL file's size is its frames here
    log = open_log(wal_checkpoints="idle", passback_window_s=0)
    v = verdict_for()
    assert log._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    for i in range(entrylog_mod.CHECKPOINT_COMMITS + 50):
        log.record(scan(NOW + i), v, direction="in")
    grown = _wal_pages(log)
    assert grown > 1000  # past SQLite's own threshold, and never checkpointed by a commit
    assert log.checkpoint_when_idle() is None  # a scan was committed just now
    time.sleep(0.35)
    assert log.checkpoint_when_idle() >= grown - 10  # (the WAL's header pages aside)
    assert log.checkpoint_when_idle() is None  # nothing new since
    monkeypatch.setattr(entrylog_mod, "CHECKPOINT_MAX_COMMITS", entrylog_mod.CHECKPOINT_COMMITS + 20)
    n = entrylog_mod.CHECKPOINT_COMMITS + 50
    for i in range(n, n + entrylog_mod.CHECKPOINT_MAX_COMMITS):
        log.record(scan(NOW + i), v, direction="in")
    assert log.checkpoint_when_idle() > 0  # just committed, but too many since the last one
    assert _wal_pages(log) <= grown + 10  # the WAL was overwritten in place, not grown
    assert log.verify().ok and log.verify().checked == n + entrylog_mod.CHECKPOINT_MAX_COMMITS


def test_the_lanes_commits_write_over_a_wal_written_ahead_not_onto_new_blocks(open_log, verdict_for):
    """The lane's log (wal_checkpoints="idle") writes its WAL file ahead at open, zeros on real
    blocks: its commits then write over blocks the file has, so an fsync waits for no kernel worker
    to turn new blocks into written ones. The zeros are no frames: a log reopened (as after a power
    cut) reads every committed entry and nothing more."""
    log = open_log(wal_checkpoints="idle", passback_window_s=0)
    wal = Path(f"{log.path}-wal")
    ahead = wal.stat()
    assert ahead.st_size >= entrylog_mod.WAL_AHEAD_BYTES
    assert ahead.st_blocks * 512 >= entrylog_mod.WAL_AHEAD_BYTES  # written, not a sparse file
    v = verdict_for()
    for i in range(300):
        log.record(scan(NOW + i), v, direction="in")
    assert wal.stat().st_size == ahead.st_size  # 300 commits, and the file never grew
    cut = log.path.parent / "cut"  # the files as a power cut leaves them: the WAL is read anew
    cut.mkdir()
    shutil.copy(log.path, cut / log.path.name)
    shutil.copy(wal, cut / wal.name)
    again = open_log(name="cut/entries.db", create=False)
    assert again.verify().ok and again.verify().checked == 300
    assert [e.seq for e in again.tail(1)] == [300]
    again.record(scan(NOW + 300), v, direction="in")  # and it goes on where it was
    assert again.verify().checked == 301


def test_under_back_to_back_scans_the_wal_stays_bounded_and_starts_over(open_log, verdict_for, monkeypatch):
    """Scans recorded back to back (a rush, or the soak bench) leave no moment in which a PASSIVE
    checkpoint catches up with the lane, while a supervisor thread asks for one every tick and a
    reader (the batch builder's connection) reads pending entries: the WAL file, and its index
    mapped by every connection, still stop growing, because a checkpoint that finds the WAL past
    WAL_RESTART_FRAMES lets it start over."""
    monkeypatch.setattr(entrylog_mod, "CHECKPOINT_MAX_COMMITS", 400)  # ~2,000 pages: a small test
    monkeypatch.setattr(entrylog_mod, "WAL_RESTART_FRAMES", 1000)
    monkeypatch.setattr(entrylog_mod, "WAL_AHEAD_BYTES", 0)  # the WAL file's size is its frames here
    log = open_log(wal_checkpoints="idle", passback_window_s=0)
    reader = open_log(create=False)
    v = verdict_for()
    stop = threading.Event()
    read = []

    def supervise():
        while not stop.wait(0.02):
            log.checkpoint_when_idle()

    def build():
        while not stop.wait(0.01):
            read.append(len(reader.pending(0, 200)))

    threads = [threading.Thread(target=supervise), threading.Thread(target=build)]
    for t in threads:
        t.start()
    try:
        n = 4000  # about 20,000 pages of WAL if it never started over
        for i in range(n):
            log.record(scan(NOW + i), v, direction="in")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert read and max(read) == 200
    pages = _wal_pages(log)
    assert pages <= 4000, f"the WAL grew to {pages} pages over {n} scans"
    assert os.stat(f"{log.path}-shm").st_size <= 32 * 1024  # the index's first block covers 4,062 frames
    assert log.verify().ok and log.verify().checked == n


def test_the_checkpoint_that_restarts_the_wal_never_waits_long_for_the_lane(open_log, verdict_for, monkeypatch):
    """The daemon's tick asks for checkpoints and must go on: while a commit of the lane holds the
    log (waiting for another writer, up to its busy timeout), the checkpoint that would let the WAL
    start over gives up at once, and the next one, after that commit, does it."""
    monkeypatch.setattr(entrylog_mod, "CHECKPOINT_MAX_COMMITS", entrylog_mod.CHECKPOINT_COMMITS)
    monkeypatch.setattr(entrylog_mod, "WAL_RESTART_FRAMES", 100)
    log = open_log(wal_checkpoints="idle", passback_window_s=0)
    v = verdict_for()
    for i in range(entrylog_mod.CHECKPOINT_COMMITS):
        log.record(scan(NOW + i), v, direction="in")
    held, release = threading.Event(), threading.Event()

    def stuck_commit():
        with log._lock:
            held.set()
            release.wait(WAIT)
    lane = threading.Thread(target=stuck_commit)
    lane.start()
    try:
        assert held.wait(WAIT)
        answered = []
        tick = threading.Thread(target=lambda: answered.append(log.checkpoint_when_idle()))
        tick.start()
        tick.join(WAIT / 2)
        assert answered, "the checkpoint waited for the lane's commit"
    finally:
        release.set()
        lane.join()
    assert log.checkpoint_when_idle() is not None  # due again at once, not after more commits
    log.record(scan(NOW + 1000), v, direction="in")
    busy, frames, _ = raw(log).execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert busy == 0 and frames < 20, frames  # the WAL started over at that commit


def test_idle_checkpoints_keep_normals_power_cut_window(open_log, verdict_for):
    """synchronous=NORMAL syncs the WAL only at checkpoints: there one is due after
    CHECKPOINT_COMMITS whether the lane is between scans or not, as with SQLite's own."""
    log = open_log(wal_checkpoints="idle", synchronous="NORMAL", passback_window_s=0)
    v = verdict_for()
    for i in range(entrylog_mod.CHECKPOINT_COMMITS):
        log.record(scan(NOW + i), v, direction="in")
    assert log.checkpoint_when_idle() > 0


# ---------------------------------------------------------------- sync side


def test_mark_synced_is_all_or_nothing(open_log, verdict_for):
    """A conflict anywhere in the run marks nothing; a run marked in part before by the same batch
    is completed."""
    log = open_log()
    for i in range(11):
        log.record(scan(NOW + i), verdict_for(), direction="in")
    log.mark_synced("early", 9, 9)
    with pytest.raises(EntryLogError) as exc:
        log.mark_synced("big", 1, 11)  # seq 9 is in another batch
    assert exc.value.code == "sync_conflict"
    assert [e.seq for e in log.pending()] == [1, 2, 3, 4, 5, 6, 7, 8, 10, 11]
    assert log.mark_synced("big", 3, 5) == 3
    assert log.mark_synced("big", 1, 8) == 5  # 1-2 and 6-8 were missing
    assert log.mark_synced("big", 1, 8) == 0
    assert [e.seq for e in log.pending()] == [10, 11]
    assert {log.get(e.entry_id).batch_id for e in log.tail(11) if e.seq <= 8} == {"big"}
    assert log.get(log.tail(11)[8].entry_id).batch_id == "early"


def test_marking_a_batch_writes_a_few_pages_whatever_its_size(open_log, verdict_for):
    """The server's acknowledgement of 1,500 entries is one run and one span, not 1,500 updated
    entries: the WAL grows by a page or two (the scans' commits sync what the marks wrote)."""
    log = open_log(passback_window_s=0)
    v = verdict_for()
    for i in range(1500):
        log.record(scan(NOW + i), v, direction="in")
    c = raw(log)
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert log.mark_synced("b-all", 1, 1500) == 1500
    busy, frames, _ = c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert busy == 0 and frames <= 4, frames
    assert log.pending() == [] and log.backlog() == (0, None)


def test_marking_5000_entries_holds_the_write_lock_for_what_marking_50_does(open_log):
    """The write transaction of mark_synced (the sync side holding the lock a scan's commit waits
    for) does the same SQLite work for a batch of 5,000 as for one of 50: the run's rows are counted
    before it, and a run with a missing entry is still refused."""
    log = open_log(passback_window_s=0)
    bulk_fill(log, 5_100)
    costs = []
    for batch_id, first, last in (("small", 1, 50), ("large", 51, 5_050)):
        n, steps = vm_steps(log, functools.partial(log.mark_synced, batch_id, first, last), in_transaction=True)
        assert n == last - first + 1
        costs.append(steps)
    assert costs[1] <= costs[0] + 1, costs
    raw(log).execute("DELETE FROM entries WHERE seq = 5070")
    with pytest.raises(EntryLogError) as exc:
        log.mark_synced("holed", 5_051, 5_100)
    assert exc.value.code == "sync_conflict" and len(log.pending()) == 49  # nothing marked


def test_marking_a_run_marked_already_takes_no_write_transaction(open_log, verdict_for):
    """A contact's catch-up with the server's batch list marks again the batches it has just sent:
    that is answered from a read (0 newly marked), without taking the write lock a scan's commit
    would wait for; a run in part unmarked is still written."""
    log = open_log(passback_window_s=0)
    for i in range(6):
        log.record(scan(NOW + i), verdict_for(), direction="in")
    log.mark_synced("b", 1, 4)
    statements: list[str] = []
    log._conn.set_trace_callback(statements.append)
    try:
        assert log.mark_synced("b", 1, 4) == 0 and log.mark_synced("b", 2, 3) == 0
        assert not any(s.startswith("BEGIN") for s in statements), statements
        assert log.mark_synced("b", 1, 5) == 1
        assert any(s.startswith("BEGIN IMMEDIATE") for s in statements)
    finally:
        log._conn.set_trace_callback(None)
    with pytest.raises(EntryLogError) as exc:
        log.mark_synced("other", 4, 6)  # 4 is in "b"
    assert exc.value.code == "sync_conflict" and [e.seq for e in log.pending()] == [6]


def test_the_backlog_costs_the_same_with_a_thousand_or_twenty_thousand_pending(open_log, verdict_for):
    """The backlog (a heartbeat's queue depth, the supervisor's every few seconds) is read from the
    edges of the gaps between acknowledged spans, not by visiting every pending entry: its SQLite
    work does not grow with the backlog, and it still counts exactly."""
    log = open_log(passback_window_s=0)
    costs = []
    for n in (1_000, 20_000):
        bulk_fill(log, n)
        first = log.tail(1)[0].seq - n + 1
        log.mark_synced(f"b{n}", first, first + 9)  # a span in the middle: two gaps
        (depth, oldest), steps = vm_steps(log, log.backlog)
        costs.append(steps)
        pending = log.pending(limit=30_000)
        assert depth == len(pending) and oldest == pending[0].at_ms
    assert costs[1] <= costs[0] + 2, costs


def test_pending_skips_a_refused_run_and_spans_merge(open_log, verdict_for):
    log = open_log(passback_window_s=0)
    v = verdict_for()
    for i in range(12):
        log.record(scan(NOW + i), v, direction="in")
    log.mark_synced("a", 1, 4)
    log.mark_synced("c", 8, 10)  # 5..7 refused by the server (quarantined): the uploads went on
    assert [e.seq for e in log.pending()] == [5, 6, 7, 11, 12]
    assert [e.seq for e in log.pending(after_seq=6, limit=2)] == [7, 11]
    assert log.backlog() == (5, log.tail(12)[4].at_ms)
    assert [e.batch_id for e in log.tail(12)] == ["a"] * 4 + [None] * 3 + ["c"] * 3 + [None] * 2
    log.mark_synced("b", 5, 7)
    log.mark_synced("d", 11, 12)
    assert raw(log).execute("SELECT first_seq, last_seq FROM synced_spans").fetchall() == [(1, 12)]
    assert log.pending() == [] and log.backlog() == (0, None)


@pytest.mark.parametrize("mode", ["FULL", "NORMAL"])
def test_marks_leave_the_scans_commits_as_configured(open_log, verdict_for, mode):
    """Marks are committed without an fsync of their own (synchronous=NORMAL); a scan's commit
    after them is as durable as configured, also after a refused mark."""
    log = open_log(synchronous=mode)
    levels = {"FULL": 2, "NORMAL": 1}
    for i in range(3):
        log.record(scan(NOW + i), verdict_for(), direction="in")
    assert log.mark_synced("b1", 1, 2) == 2
    assert log._conn.execute("PRAGMA synchronous").fetchone()[0] == levels[mode]
    with pytest.raises(EntryLogError):
        log.mark_synced("b2", 2, 3)
    assert log._conn.execute("PRAGMA synchronous").fetchone()[0] == levels[mode]
    log.record(scan(NOW + 9), verdict_for(), direction="in")
    assert [e.seq for e in log.pending()] == [3, 4] and log.verify().ok


def test_pending_and_mark_synced(open_log, verdict_for):
    log = open_log()
    for i in range(10):
        log.record(scan(NOW + i), verdict_for(), direction="in")
    assert [e.seq for e in log.pending(limit=4)] == [1, 2, 3, 4]
    assert all(e.sealed is not None for e in log.pending())
    assert [e.seq for e in log.pending(after_seq=7)] == [8, 9, 10]
    assert log.mark_synced("batch-1", 1, 4) == 4
    assert log.mark_synced("batch-1", 1, 4) == 0  # idempotent
    assert log.mark_synced("batch-1", 2, 3) == 0
    assert [e.seq for e in log.pending()] == list(range(5, 11))
    assert {log.get(e.entry_id).batch_id for e in log.tail(10)[:4]} == {"batch-1"}
    with pytest.raises(EntryLogError) as exc:
        log.mark_synced("batch-2", 4, 6)  # 4 is in batch-1
    assert exc.value.code == "sync_conflict"
    assert next(e.seq for e in log.pending()) == 5  # nothing half-marked
    with pytest.raises(EntryLogError):
        log.mark_synced("batch-2", 9, 12)  # 11, 12 do not exist
    with pytest.raises(ValueError):
        log.mark_synced("", 5, 6)
    with pytest.raises(ValueError):
        log.mark_synced("b", 6, 5)
    assert log.mark_synced("batch-2", 5, 10) == 6
    assert log.pending() == []
    s = log.stats(now=NOW)
    assert (s.entries, s.unsynced, s.synced) == (10, 0, 10)


# ---------------------------------------------------------------- retention


def test_purge_keeps_unsynced_and_recent_and_keeps_the_chain_verifiable(open_log, verdict_for):
    log = open_log(retention_days=21)
    day = 86400
    cards = [os.urandom(16) for _ in range(8)]
    for i in range(8):  # seq 1..8, 30 days ago .. 23 days ago
        log.record(scan(NOW - (30 - i) * day), verdict_for(cards[i]), direction="in")
    for i in range(3):  # seq 9..11: recent
        log.record(scan(NOW - i * 60), verdict_for(), direction="in")
    log.mark_synced("b1", 1, 3)
    log.mark_synced("b2", 5, 11)  # seq 4 is not synced (it failed to upload, say)
    assert log.purge(now=NOW, dry_run=True).purged == 3
    r = log.purge(now=NOW)
    assert (r.purged, r.anchor_seq, r.kept_unsynced) == (3, 3, 1)
    # seq 4 blocks the prefix: 5..8 are old and synced but stay until 4 is synced
    assert [e.seq for e in log.tail(100)] == list(range(4, 12))
    assert log.verify().ok and log.verify().anchor_seq == 3
    log.mark_synced("b3", 4, 4)
    r = log.purge(now=NOW)
    assert (r.purged, r.anchor_seq) == (5, 8)
    assert [e.seq for e in log.tail(100)] == [9, 10, 11]
    v = log.verify()
    assert v.ok and (v.first_seq, v.anchor_seq) == (9, 8)
    s = log.stats(now=NOW)
    assert (s.purged, s.anchor_seq, s.entries) == (8, 8, 3)
    # the purged card ids are gone from the files, not just unlinked (secure_delete + WAL truncate)
    log.close()
    blob = b"".join(p.read_bytes() for p in log.path.parent.iterdir())
    for cid in cards:
        assert cid.hex().encode() not in blob


def test_seq_never_reused_after_purging_everything(open_log, verdict_for):
    log = open_log()
    for i in range(3):
        log.record(scan(NOW - 40 * 86400 + i), verdict_for(), direction="in")
    log.mark_synced("b", 1, 3)
    assert log.purge(now=NOW).purged == 3
    assert log.tail() == [] and log.verify().ok
    e = log.record(scan(NOW), verdict_for(), direction="in").entry
    assert e.seq == 4 and e.prev_hash == log.anchor().hash != GENESIS
    assert log.verify().ok
    assert log.purge(now=NOW).purged == 0  # unsynced


# ---------------------------------------------------------------- files, schema, health


def test_files_are_private(open_log, verdict_for):
    log = open_log()
    log.record(scan(), verdict_for(), direction="in")
    assert stat.S_IMODE(log.path.parent.stat().st_mode) == 0o700
    for suffix in ("", "-wal", "-shm"):
        assert stat.S_IMODE(os.stat(str(log.path) + suffix).st_mode) == 0o600, suffix


def test_existing_loose_file_is_tightened(tmp_path):
    p = tmp_path / "loose.db"
    sqlite3.connect(p).close()
    os.chmod(p, 0o644)
    EntryLog(p).close()
    assert stat.S_IMODE(p.stat().st_mode) == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the file to another user")
def test_root_opening_the_service_users_log_leaves_it_owned_by_the_service_user(tmp_path, verdict_for):
    nobody = pwd.getpwnam("nobody")
    d = tmp_path / "state"
    d.mkdir()
    p = d / "entries.db"
    EntryLog(p).close()
    for f in d.iterdir():
        os.chown(f, nobody.pw_uid, nobody.pw_gid)
    for f in list(d.iterdir()):
        if f.name != "entries.db":
            f.unlink()
    with EntryLog(p, device_id="d", checkpoint_id="c") as log:  # as root, e.g. `checkpoint log stats`
        log.record(scan(), verdict_for(), direction="in")
        owners = {f.name: (f.stat().st_uid, f.stat().st_gid) for f in d.iterdir()}
    assert set(owners) >= {"entries.db", "entries.db-wal", "entries.db-shm"}
    assert set(owners.values()) == {(nobody.pw_uid, nobody.pw_gid)}, owners


def test_missing_or_foreign_files_are_clean_errors(tmp_path):
    with pytest.raises(EntryLogError) as exc:
        EntryLog(tmp_path / "nope.db", create=False)
    assert exc.value.code == "no_log"
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database, just text " * 200)
    with pytest.raises(EntryLogError) as exc:
        EntryLog(junk)
    assert exc.value.code == "log_unusable"


def test_a_newer_schema_is_refused(tmp_path):
    p = tmp_path / "e.db"
    EntryLog(p).close()
    c = sqlite3.connect(p)
    c.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
              "VALUES ('checkpoint-entry-log', 'm099_from_the_future', '2030')")
    c.commit()
    c.close()
    with pytest.raises(EntryLogError) as exc:
        EntryLog(p)
    assert exc.value.code == "schema_too_new"


def test_health_ok_and_low_disk_warning(open_log):
    assert open_log(min_free_bytes=0).health().state == "ok"
    h = open_log("tight.db", min_free_bytes=1 << 62).health()
    assert (h.state, h.problems) == ("warning", ("low_disk",))
    assert h.free_bytes is not None and h.free_bytes > 0


def test_entry_ids_are_random_version_4_uuids():
    ids = [new_entry_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        u = uuid.UUID(text)
        assert str(u) == text and u.version == 4 and u.variant == uuid.RFC_4122
    # every hex digit outside the version and variant bits varies
    for pos in [i for i in range(36) if i not in (8, 13, 14, 18, 19, 23)]:
        assert len({text[pos] for text in ids}) == 16, pos
    assert {text[19] for text in ids} == set("89ab")
