"""The entry log under real faults: SIGKILLed writers, concurrent writers/markers/readers (threads
and processes), a full disk (size-limited database, and a tiny tmpfs where we may mount one), and an
upgrade of a schema-v1 file."""
from __future__ import annotations

import ast
import dataclasses
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlite_utils import Database
from support.waiting import WAIT, wait_for

from scanner.cards import verifier
from scanner.cards.scan import Scan
from scanner.store import entrylog as entrylog_mod
from scanner.store.entry import GENESIS, STORED_FIELDS, Entry, chain_hash, hash_fields
from scanner.store.entrylog import EntryLog, EntryLogWriteError
from scanner.store.migrations import MIGRATIONS, NAMES
from scanner.store.schema import MIGRATION_NAMES, MIGRATION_SET, SCHEMA_VERSION, entry_row

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_750_000_000
SLOW = 2 * WAIT  # these tests run long phases (forks, kills, many commits): twice the usual wait


@pytest.fixture(scope="module")
def server():
    return X25519PrivateKey.generate()


@pytest.fixture(scope="module")
def verdicts(make_card, trust):
    """A few accepted verdicts (authentic cards) and one reject."""
    out = [verifier.verify(make_card(card_id=bytes([i]) * 16, name="Trần Văn Bình"), trust, NOW) for i in range(4)]
    assert all(v.accepted for v in out)
    return out + [verifier.verify("not a card", trust, NOW)]


def _scan(i: int) -> Scan:
    return Scan(f"CK1:{i}", "usb", "reader0", NOW + i / 1000)


def _read_lines(fd: int, buf: bytearray, timeout: float) -> list[str]:
    """Complete lines available on ``fd`` within ``timeout`` (empty at EOF or timeout)."""
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return []
    chunk = os.read(fd, 65536)
    if not chunk:
        raise EOFError
    buf += chunk
    *lines, rest = buf.split(b"\n")
    buf[:] = rest
    return [ln.decode() for ln in lines]


# ---------------------------------------------------------------- crash


def _crash_child(path, wfd, server_pub, verdicts) -> None:
    """Write as fast as possible; report each seq only after record() has returned."""
    status = 1
    try:
        log = EntryLog(path, device_id="dev-crash", checkpoint_id="gate", sealing_key=server_pub)
        os.write(wfd, b"open\n")
        i = 0
        while True:
            r = log.record(_scan(i), verdicts[i % len(verdicts)], direction="in" if i % 3 else "out")
            os.write(wfd, f"{r.entry.seq} {r.entry.entry_id}\n".encode())
            if i % 7 == 3 and r.entry.decision == "accept":
                f = log.record_followup(r.entry.entry_id)
                os.write(wfd, f"{f.seq} {f.entry_id}\n".encode())
            i += 1
    except BaseException:  # noqa: BLE001 - a forked child: print what failed, then leave with its status
        traceback.print_exc()
    finally:
        os._exit(status)


def test_sigkill_at_random_moments_loses_no_committed_entry(tmp_path, server, verdicts):
    path = tmp_path / "crash.db"
    rng = random.Random(4)
    committed: dict[str, int] = {}
    kills = 0
    for round_no in range(50):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: no SQLite connection of the parent is open at this point
            os.close(r)
            _crash_child(path, w, server.public_key(), verdicts)
        os.close(w)
        buf = bytearray()
        seen: list[str] = []
        try:
            # most rounds: kill while committing; every fifth: kill while opening/migrating
            if round_no % 5:
                deadline = time.monotonic() + SLOW
                while len(seen) < 2 and time.monotonic() < deadline:
                    seen += _read_lines(r, buf, 1.0)
                assert len(seen) >= 2, "child did not start writing"
            kill_at = time.monotonic() + rng.uniform(0, 0.05)
            while time.monotonic() < kill_at:
                seen += _read_lines(r, buf, max(0.0, kill_at - time.monotonic()))
        except EOFError:
            pass
        os.kill(pid, signal.SIGKILL)
        _, wstatus = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(wstatus) and os.WTERMSIG(wstatus) == signal.SIGKILL, "child died by itself"
        kills += 1
        try:
            while True:
                got = _read_lines(r, buf, 5.0)
                if not got:
                    break
                seen += got
        except EOFError:
            pass
        os.close(r)
        for line in seen:
            if line != "open":
                seq, entry_id = line.split()
                committed[entry_id] = int(seq)
        # the file as a fresh process would find it after the crash
        c = sqlite3.connect(path)
        try:
            assert c.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            if committed:
                rows = dict(c.execute("SELECT entry_id, seq FROM entries").fetchall())
                missing = [e for e, s in committed.items() if rows.get(e) != s]
                assert not missing, f"round {round_no}: {len(missing)} committed entries lost"
                n, distinct = c.execute("SELECT count(*), count(DISTINCT entry_id) FROM entries").fetchone()
                assert n == distinct
        finally:
            c.close()
    assert kills == 50
    assert len(committed) > 100
    with EntryLog(path) as log:
        report = log.verify()
        assert report.ok, report
        assert report.checked >= len(committed)
        assert report.last_seq == report.checked  # contiguous from 1


# ---------------------------------------------------------------- concurrency


N_WRITES = 150


def _writer(path, server_pub, verdicts, n=N_WRITES):
    with EntryLog(path, device_id="dev-c", checkpoint_id="gate", sealing_key=server_pub,
                  passback_window_s=1) as log:
        for i in range(n):
            log.record(_scan(i * 10_000), verdicts[i % len(verdicts)], direction="in")


def _marker(path, done: threading.Event | None, total=N_WRITES):
    marked = 0
    with EntryLog(path) as log:
        while marked < total:
            batch = log.pending(limit=25)
            if not batch:
                if done is not None and done.is_set() and not log.pending():
                    break
                time.sleep(0.002)
                continue
            first = batch[0].seq
            last = first
            for e in batch[1:]:  # a contiguous run
                if e.seq != last + 1:
                    break
                last = e.seq
            marked += log.mark_synced(f"batch-{first}", first, last)
    return marked


def _reader(path, stop):
    n = 0
    with EntryLog(path) as log:
        while not stop():
            log.stats(now=NOW)
            log.tail(5)
            log.occupancy("gate", now=NOW)
            log.health()
            log.entries_for_card("00" * 16)
            n += 1
    return n


def _check_final(path, total=N_WRITES):
    with EntryLog(path) as log:
        s = log.stats(now=NOW)
        assert (s.entries, s.unsynced) == (total, 0)
        assert log.verify().ok
        assert log.integrity_check() == "ok"


def test_writer_marker_and_reader_threads(tmp_path, server, verdicts):
    path = tmp_path / "threads.db"
    EntryLog(path).close()
    errors: list[BaseException] = []
    done = threading.Event()
    counts = {}

    def guarded(name, fn, *args):
        try:
            counts[name] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)
        finally:
            if name == "writer":
                done.set()

    threads = [
        threading.Thread(target=guarded, args=("writer", _writer, path, server.public_key(), verdicts)),
        threading.Thread(target=guarded, args=("marker", _marker, path, done)),
        threading.Thread(target=guarded, args=("reader", _reader, path, lambda: counts.get("marker") is not None
                                               or bool(errors))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SLOW * 3)
        assert not t.is_alive()
    assert not errors, [repr(e) for e in errors]
    assert counts["marker"] == N_WRITES and counts["reader"] > 0
    _check_final(path)


def test_one_log_object_shared_by_threads(tmp_path, server, verdicts):
    log = EntryLog(tmp_path / "shared.db", device_id="d", checkpoint_id="gate", sealing_key=server.public_key(),
                   passback_window_s=0)
    errors = []

    def write(k):
        try:
            for i in range(40):
                log.record(_scan(k * 1000 + i), verdicts[i % 4], direction="in")
                log.stats(now=NOW)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SLOW)
    assert not errors, errors
    assert log.verify().checked == 120 and log.verify().ok
    log.close()


def _fork(fn, *args) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn(*args)
            code = 0
        except BaseException:  # noqa: BLE001 - a forked child: print what failed, then leave with its status
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def _wait(pid) -> int:
    """The child's exit code; a child still running after the wait is killed and fails the test."""
    def exited() -> list[int] | None:
        done, status = os.waitpid(pid, os.WNOHANG)
        return [os.waitstatus_to_exitcode(status)] if done else None  # a list: exit code 0 is an answer too

    try:
        return wait_for(exited, "the child process to exit (it hung)", timeout=SLOW * 3, interval=0.05)[0]
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise


def test_writer_marker_and_reader_processes_racing_to_create_the_file(tmp_path, server, verdicts):
    """Three processes open a file that does not exist yet (creation and migration race too)."""
    path = tmp_path / "procs.db"
    stop_flag = tmp_path / "stop"
    writer = _fork(_writer, path, server.public_key(), verdicts)
    marker = _fork(lambda: _assert_eq(_marker(path, None), N_WRITES))
    reader = _fork(lambda: _reader(path, stop_flag.exists))
    try:
        assert _wait(writer) == 0
        assert _wait(marker) == 0
    finally:
        stop_flag.touch()
        assert _wait(reader) == 0
    _check_final(path)


def _assert_eq(a, b):
    assert a == b, (a, b)


# ---------------------------------------------------------------- disk full


def test_disk_full_size_limited_database(tmp_path, server, verdicts):
    log = EntryLog(tmp_path / "full.db", device_id="d", checkpoint_id="gate", sealing_key=server.public_key(),
                   max_db_bytes=96 * 1024, passback_window_s=0, retry_queue_max=3)
    committed = []
    err = None
    for i in range(5000):
        try:
            committed.append(log.record(_scan(i), verdicts[i % 5], direction="in").entry)
        except EntryLogWriteError as exc:
            err = exc
            break
    assert err is not None, "the size limit was never reached"
    assert (err.code, err.queued) == ("disk_full", True)
    h = log.health()
    assert (h.state, h.queued) == ("error", 1) and "disk_full" in h.problems
    # still failing: the next scans are refused too (feedback must not get ahead of the disk)...
    for i in range(2):
        with pytest.raises(EntryLogWriteError) as exc:
            log.record(_scan(10_000 + i), verdicts[0], direction="in")
        assert exc.value.queued
    # ...until the bounded queue is full: then the entry is refused and NOT kept, and says so
    with pytest.raises(EntryLogWriteError) as exc:
        log.record(_scan(20_000), verdicts[0], direction="in")
    assert (exc.value.code, exc.value.queued) == ("log_queue_full", False)
    assert log.queued() == 3
    # nothing already written is lost, as another process sees it
    c = sqlite3.connect(log.path)
    assert c.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert [r[0] for r in c.execute("SELECT entry_id FROM entries ORDER BY seq")] == [e.entry_id for e in committed]
    c.close()
    # space comes back: the retry loop commits the queue in order, the state clears
    stop = threading.Event()
    loop = threading.Thread(target=log.retry_loop, args=(stop, 0.05))
    loop.start()
    try:
        log.set_max_db_bytes(None)
        assert log.wait_flushed(SLOW)
    finally:
        stop.set()
        loop.join(SLOW)
    assert log.health().state == "ok" and log.queued() == 0
    new = log.record(_scan(30_000), verdicts[1], direction="in").entry
    assert new.seq == len(committed) + 4
    assert log.verify().ok and log.verify().checked == len(committed) + 4
    log.close()


def _try_mount_tmpfs(where, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
                           capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def test_disk_full_tiny_tmpfs(tmp_path, server, verdicts):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if not _try_mount_tmpfs(mnt, "2m"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")
    try:
        log = EntryLog(mnt / "entries.db", device_id="d", checkpoint_id="gate", sealing_key=server.public_key(),
                       passback_window_s=0, min_free_bytes=512 * 1024)
        committed = [log.record(_scan(i), verdicts[i % 5], direction="in").entry for i in range(20)]
        assert log.health().state == "ok"
        ballast = mnt / "ballast"
        with open(ballast, "wb") as fh:  # leave ~400 KiB: below the alarm threshold, above zero
            fh.write(b"\0" * (os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize - 400 * 1024))
        h = log.health()
        assert (h.state, h.problems) == ("warning", ("low_disk",))  # the alarm comes first
        fd = os.open(mnt / "ballast2", os.O_WRONLY | os.O_CREAT, 0o600)  # now fill it to the last block
        try:
            with pytest.raises(OSError):
                while True:
                    os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
        err = None
        for i in range(20, 5000):
            try:
                committed.append(log.record(_scan(i), verdicts[i % 5], direction="in").entry)
            except EntryLogWriteError as exc:
                err = exc
                break
        assert err is not None and err.queued and err.code in ("disk_full", "io_error"), err
        assert log.health().state == "error"
        c = sqlite3.connect(log.path)
        assert c.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        got = [r[0] for r in c.execute("SELECT entry_id FROM entries ORDER BY seq")]
        c.close()
        assert got == [e.entry_id for e in committed]
        (mnt / "ballast2").unlink()
        ballast.unlink()
        assert log.flush_pending() == 1
        assert log.health().state == "ok"
        log.record(_scan(9999), verdicts[0], direction="in")
        assert log.verify().ok and log.verify().checked == len(committed) + 2
        log.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30, check=False)


def test_a_scan_refused_on_a_full_disk_is_committed_as_that_refusal(tmp_path, server, verdicts):
    """Genuine cards scanned while the filesystem is full are refused ("do not admit"); the entries
    kept for retry record that refusal with its reason when they are committed, keep the card's
    facts, and never count as admitted (nor for anti-passback)."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if not _try_mount_tmpfs(mnt, "2m"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")
    try:
        log = EntryLog(mnt / "entries.db", device_id="d", checkpoint_id="gate", sealing_key=server.public_key(),
                       passback_window_s=120)
        for i in range(2):
            assert log.record(_scan(i), verdicts[i], direction="in").verdict.accepted
        fd = os.open(mnt / "ballast", os.O_WRONLY | os.O_CREAT, 0o600)  # the filesystem, full to the last block
        try:
            with pytest.raises(OSError):
                while True:
                    os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
        refused = []
        for i in (2, 3):  # cards not admitted before
            with pytest.raises(EntryLogWriteError) as exc:
                log.record(_scan(i), verdicts[i], direction="in")
            assert exc.value.queued and exc.value.code in ("disk_full", "io_error"), exc.value
            refused.append(exc.value)
        (mnt / "ballast").unlink()
        assert log.flush_pending() == 2 and log.queued() == 0
        late = log.tail(2)
        assert [e.entry_id for e in late] == [x.entry_id for x in refused]
        for e, x, v in zip(late, refused, verdicts[2:4]):
            assert (e.decision, e.reason) == ("reject", x.code)  # what the person was shown
            assert (e.card_id, e.issuer, e.sealed is not None) == (v.card.card_id.hex(), v.card.issuer, True)
        t = log.totals(now=NOW)
        assert (t.scans, t.accepted, t.rejected, t.admitted_in, t.occupancy) == (4, 2, 2, 2, 2)
        assert t.by_reason == {"ok": 2, refused[0].code: 2}
        # the refused person was never admitted: scanned again, the card is accepted, not a duplicate
        again = log.record(_scan(4), verdicts[2], direction="in")
        assert again.verdict.accepted and not again.duplicate
        assert log.totals(now=NOW).occupancy == 3
        assert log.verify().ok
        log.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30, check=False)


# ---------------------------------------------------------------- migration

# sqlite_master of a v1 file exactly as schema v1 shipped (a migration must never be edited)
V1_SCHEMA = {
    ("table", "entries"), ("index", "entries_card"), ("index", "entries_checkpoint"),
    ("index", "entries_unsynced"), ("index", "sqlite_autoindex_entries_1"), ("table", "_sqlite_migrations"),
    ("index", "idx__sqlite_migrations_migration_set_name"),
}
V1_COLUMNS = ["seq", "entry_id", "device_id", "checkpoint_id", "direction", "at_ms", "clock", "source",
              "source_id", "decision", "reason", "format", "card_id", "issuer", "kid", "sealed", "batch_id",
              "prev_hash", "hash"]


def _make_v1_file(path, n: int) -> list[Entry]:
    """A file as the first release wrote it: schema v1 and n chained entries."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    db = Database(conn, execute_plugins=False)
    MIGRATIONS.apply(db, stop_before="m002_followups_and_anchor")
    got = {(r[0], r[1]) for r in conn.execute("SELECT type, name FROM sqlite_master")}
    assert got == V1_SCHEMA
    assert [r[1] for r in conn.execute("PRAGMA table_info(entries)")] == V1_COLUMNS
    prev, out = GENESIS, []
    for i in range(n):
        e = Entry(i + 1, str(uuid.uuid4()), "dev-old", "gate", "in" if i % 2 else "out", NOW * 1000 + i,
                  "synced", "camera", "cam0", "accept", "ok", "CK1", f"{i:032x}", "VN-HUE", "AAAAAAAAAAA=",
                  sealed=os.urandom(121), batch_id="old-batch" if i < n // 2 else None, prev_hash=prev)
        e = dataclasses.replace(e, hash=chain_hash(prev, hash_fields(e)))
        conn.execute(f"INSERT INTO entries ({', '.join(V1_COLUMNS)}) VALUES ({', '.join('?' * len(V1_COLUMNS))})",
                     (e.seq, e.entry_id, e.device_id, e.checkpoint_id, e.direction, e.at_ms, e.clock, e.source,
                      e.source_id, e.decision, e.reason, e.format, e.card_id, e.issuer, e.kid, e.sealed,
                      e.batch_id, e.prev_hash, e.hash))
        prev = e.hash
        out.append(e)
    conn.close()
    os.chmod(path, 0o644)  # as an old, careless version might have left it
    return out


def test_upgrade_from_schema_v1_keeps_every_entry(tmp_path, server, verdicts):
    path = tmp_path / "v1.db"
    old = _make_v1_file(path, 30)
    log = EntryLog(path, device_id="dev-old", checkpoint_id="gate", sealing_key=server.public_key(),
                   passback_window_s=0)
    assert log.schema_version() == 3
    assert [m.name for m in MIGRATIONS.applied(Database(log._conn))] == ["m001_entries", "m002_followups_and_anchor",
                                                                        "m003_synced_runs"]
    assert log.tail(100) == old  # every field of every entry (the batch from the runs), sealed blobs included
    assert [e.sealed for e in log.tail(100)] == [e.sealed for e in old]
    assert log.verify().ok and log.verify().checked == 30
    assert [e.seq for e in log.pending()] == list(range(16, 31))
    # the upgraded file works like a new one: the chain continues, follow-ups, purge with anchor
    new = log.record(_scan(1), verdicts[0], direction="in").entry
    assert (new.seq, new.prev_hash) == (31, old[-1].hash)
    fu = log.record_followup(old[3].entry_id)
    assert fu.ref_entry_id == old[3].entry_id
    assert log.purge(0, now=NOW + 10).purged == 15
    assert log.verify().ok and log.verify().anchor_seq == 15
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    log.close()
    with EntryLog(path) as again:  # opening an up-to-date file changes nothing
        assert again.schema_version() == 3 and again.verify().ok


def _my_posix_locks(path: Path) -> list[str]:
    """This process's POSIX locks on ``path`` (/proc/locks: type, pid, device:inode, range)."""
    inode = os.stat(path).st_ino
    with open("/proc/locks", encoding="ascii") as fh:
        rows = [line.split() for line in fh]
    return sorted(" ".join(r[3:]) for r in rows if len(r) > 5 and r[1] == "POSIX" and r[4] == str(os.getpid())
                  and r[5].rsplit(":", 1)[-1] == str(inode))


def test_idle_checkpoints_leave_sqlites_locks_alone(tmp_path, monkeypatch):
    """The idle checkpoint never opens one of the log's files behind SQLite: closing a descriptor
    of one drops every POSIX lock of the process on it, SQLite's too, and the next process to open
    the log would then reset the shared memory under this one (a SIGBUS at its next commit, seen
    once in the fsync bench when the WAL was sized up by reading its -shm file)."""
    monkeypatch.setattr(entrylog_mod, "CHECKPOINT_COMMITS", 1)
    monkeypatch.setattr(entrylog_mod, "CHECKPOINT_QUIET_S", 0.0)
    log = EntryLog(tmp_path / "entries.db", device_id="d", checkpoint_id="gate", wal_checkpoints="idle",
                   passback_window_s=0)
    v = verifier.verify("CK1:nothing", None, NOW)
    log.record(Scan("x", "camera", "cam0", NOW), v, direction="in")
    shm = Path(f"{log.path}-shm")
    held = _my_posix_locks(shm)
    assert held  # SQLite's: the WAL's shared memory is in use
    assert log.checkpoint_when_idle() is not None
    assert _my_posix_locks(shm) == held
    log.record(Scan("x", "camera", "cam0", NOW + 1), v, direction="in")
    assert log.verify().ok
    log.close()


def test_writing_the_wal_ahead_leaves_sqlites_locks_alone(tmp_path, monkeypatch):
    """The WAL written ahead (at open, after a purge) is the one file of the log that this process
    opens behind SQLite; SQLite holds no lock on it, so its locks on the others stay as they were."""
    log = EntryLog(tmp_path / "entries.db", device_id="d", checkpoint_id="gate", wal_checkpoints="idle",
                   passback_window_s=0)
    v = verifier.verify("CK1:nothing", None, NOW)
    log.record(Scan("x", "camera", "cam0", NOW), v, direction="in")
    files = [log.path, Path(f"{log.path}-shm")]
    held = [_my_posix_locks(f) for f in files]
    assert held[1]  # SQLite's: the WAL's shared memory is in use
    wal = Path(f"{log.path}-wal")
    before = wal.stat().st_size
    monkeypatch.setattr(entrylog_mod, "WAL_AHEAD_BYTES", before + 4 * 1024 * 1024)
    log._write_wal_ahead()
    assert wal.stat().st_size == before + 4 * 1024 * 1024
    assert [_my_posix_locks(f) for f in files] == held
    log.record(Scan("x", "camera", "cam0", NOW + 1), v, direction="in")
    assert log.verify().ok and log.verify().checked == 2
    log.close()


def test_upgrade_to_runs_keeps_the_batch_of_every_entry(tmp_path, server):
    """Schema 2 kept the batch in a column of each entry; the upgrade moves it to acknowledged runs
    (a batch split around another one's entries gives two runs) and what stays pending stays so."""
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    MIGRATIONS.apply(Database(conn, execute_plugins=False), stop_before="m003_synced_runs")
    batches = ["a", "a", "a", "b", "b", None, "a", "a", None]
    prev, old = GENESIS, []
    for i, batch in enumerate(batches):
        e = Entry(i + 1, str(uuid.uuid4()), "dev-old", "gate", "in", NOW * 1000 + i, "synced", "camera", "cam0",
                  "accept", "ok", "CK1", f"{i:032x}", "VN-HUE", "AAAAAAAAAAA=", sealed=os.urandom(121),
                  batch_id=batch, prev_hash=prev)
        e = dataclasses.replace(e, hash=chain_hash(prev, hash_fields(e)))
        names = (*STORED_FIELDS, "batch_id")
        conn.execute(f"INSERT INTO entries ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                     (*entry_row(e), batch))
        prev = e.hash
        old.append(e)
    conn.close()
    log = EntryLog(path, device_id="dev-old", checkpoint_id="gate", sealing_key=server.public_key())
    assert log.tail(100) == old and log.verify().ok
    c = sqlite3.connect(path)
    assert c.execute("SELECT first_seq, last_seq, batch_id FROM synced_runs ORDER BY 1").fetchall() == [
        (1, 3, "a"), (4, 5, "b"), (7, 8, "a")]
    assert c.execute("SELECT first_seq, last_seq FROM synced_spans ORDER BY 1").fetchall() == [(1, 5), (7, 8)]
    assert "batch_id" not in {r[1] for r in c.execute("PRAGMA table_info(entries)")}
    assert [e.seq for e in log.pending()] == [6, 9] and log.backlog() == (2, old[5].at_ms)
    c.close()
    log.close()


def test_migrations_are_known_through_sqlite_utils_public_api_only(tmp_path):
    """The list of migrations is kept by the log itself; sqlite-utils' private attributes are not read."""
    db = Database(sqlite3.connect(":memory:"))
    assert tuple(m.name for m in MIGRATIONS.pending(db)) == MIGRATION_NAMES == NAMES  # every one, in order
    assert MIGRATIONS.name == MIGRATION_SET
    assert SCHEMA_VERSION == len(MIGRATION_NAMES) == 3
    private = [f"{p.relative_to(ROOT)}:{node.lineno}" for p in sorted((ROOT / "scanner").rglob("*.py"))
               for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
               if isinstance(node, ast.Attribute) and node.attr == "_migrations"]
    assert private == []


def test_a_new_log_is_migrated_in_a_child_process_and_opened_without_sqlite_utils(tmp_path):
    """premigrate.run (called by the daemon before it opens its log) makes and migrates a new log in
    a child process, so the long-running process then opens an up-to-date log and never loads
    sqlite-utils nor the NumPy it imports; an up-to-date log needs no child."""
    path = tmp_path / "state" / "entries.db"
    code = ("import sys; from pathlib import Path; from scanner.store import premigrate; "
            "from scanner.store.entrylog import EntryLog; p = Path(sys.argv[1]); premigrate.run(p); "
            "log = EntryLog(p, device_id='d', checkpoint_id='g'); "
            "print(log.schema_version(), premigrate.up_to_date(p), "
            "sorted(m for m in ('sqlite_utils', 'numpy', 'scanner.store.migrations') if m in sys.modules))")
    for _ in range(2):  # new, then up to date
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=False,
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().split(maxsplit=2) == ["3", "True", "[]"]
    assert oct(os.stat(path).st_mode & 0o777) == "0o600" and oct(os.stat(path.parent).st_mode & 0o777) == "0o700"
