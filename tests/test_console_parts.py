"""The console's parts outside the pages, with real processes and files: `checkpoint server user`
for the first administrator (then logging in with what it printed, a pyotp code and all), `server
audit verify` finding a tampered record; the opener's refusals (a peer it does not trust, no case
or reason, too many entries, a spent hourly budget, malformed requests, a planted file at its
socket's path), each refusal audited; the key split into shares and the opener started from two of
them; retention deleting old entries and recording it; `server run` taking the sealing key's public
half from the opener; retention on PostgreSQL dropping day partitions and naming them in its audit
record; the console's tables on SQLite and PostgreSQL."""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys

import pyotp
import pytest
import requests
from support.console import WARD_A, OpenerThread, make_world
from support.entries import chain_entries
from support.paths import ROOT
from support.servers import BACKENDS, db_url_for, enroll_direct, ingest_entries
from support.waiting import WAIT, unix_listening, wait_for

from bench.procs import free_port
from scanner.base.timeutil import DAY_MS, now_ms
from sync.server import keyshares, retention
from sync.server.console import accounts, audit
from sync.server.console.openerclient import OpenerClient, OpenerUnavailable
from sync.server.console.store import ConsoleStore
from sync.server.keys import load_or_create_sealing_key, sealing_public_pem
from sync.server.opener import Opener, OpenerError, bind
from sync.server.opener import Policy as OpenerPolicy
from sync.server.storage import open_storage

REASON = "ca bệnh xác nhận, gọi người tiếp xúc"


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scanner", *args], input=stdin, capture_output=True, text=True,
                          check=False, timeout=WAIT, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), CHECKPOINT_LANG="en"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("console-parts"))


def entries_of(world, n: int | None = None):
    storage = open_storage(str(world.db))
    try:
        rows = storage.visits(world.infected_id, 0, now_ms() + DAY_MS, 10)
    finally:
        storage.close()
    return rows[:n] if n else rows


# ---------------------------------------------------------------- the command line


def test_the_first_administrator_is_made_on_the_command_line_and_can_log_in(tmp_path):
    db = str(tmp_path / "c.db")
    r = cli("server", "user", "add", "--db", db, "quan-tri", "--role", "admin")
    assert r.returncode == 0, r.stderr
    fields = dict(line.split(": ", 1) for line in r.stdout.splitlines() if ": " in line)
    password, secret = fields["password"], fields["TOTP secret"]
    assert fields["authenticator URI"].startswith("otpauth://totp/")
    storage = open_storage(db)
    try:
        store = ConsoleStore(storage)
        now = now_ms()
        assert accounts.check_password_step(store, "quan-tri", password, now_ms=now).ok
        assert accounts.check_code_step(store, "quan-tri", pyotp.TOTP(secret).at(now / 1000), now_ms=now).ok
        assert store.secrets("quan-tri").password_hash.startswith("$argon2id$")
    finally:
        storage.close()
    r = cli("server", "user", "add", "--db", db, "can-bo", "--role", "officer")
    assert r.returncode != 0 and "checkpoint" in r.stderr and "Traceback" not in r.stderr  # an officer needs a scope
    assert cli("server", "user", "add", "--db", db, "can-bo", "--role", "officer", "--checkpoint", WARD_A,
               "--password-stdin", stdin="mat-khau-cua-can-bo-2026\n").returncode == 0
    assert cli("server", "user", "role", "--db", db, "can-bo", "tracer").returncode == 0
    assert cli("server", "user", "disable", "--db", db, "can-bo").returncode == 0
    listed = [json.loads(line) for line in cli("server", "user", "list", "--db", db, "--json").stdout.splitlines()]
    assert {(a["username"], a["role"], a["state"]) for a in listed} == {("quan-tri", "admin", "active"),
                                                                       ("can-bo", "tracer", "disabled")}
    storage = open_storage(db)
    try:
        store = ConsoleStore(storage)
        assert not accounts.check_password_step(store, "can-bo", "mat-khau-cua-can-bo-2026", now_ms=now_ms()).ok
        actions = [(r.actor.startswith("cli:"), r.action) for r in store.audit_all()]
    finally:
        storage.close()
    for action in (audit.ACCOUNT_ADD, audit.ACCOUNT_ROLE, audit.ACCOUNT_DISABLE):
        assert (True, action) in actions
    r = cli("server", "audit", "verify", "--db", db)
    assert r.returncode == 0 and "intact" in r.stdout
    with sqlite3.connect(db) as conn:  # someone with the file edits a record under the guard
        conn.execute("DROP TRIGGER console_audit_no_update")
        conn.execute("UPDATE console_audit SET actor = 'ai-do' WHERE seq = 2")
    r = cli("server", "audit", "verify", "--db", db)
    assert r.returncode == 1 and "TAMPERED at record 2" in r.stdout


# ---------------------------------------------------------------- the opener


def test_the_opener_opens_named_entries_with_a_case_and_refuses_the_rest(world, tmp_path):
    policy = OpenerPolicy(max_per_request=3, per_case_per_hour=4, total_per_hour=100)
    opener = OpenerThread(world.db, world.keys_dir, tmp_path / "o.sock", policy)
    client = OpenerClient(str(tmp_path / "o.sock"))
    rows = entries_of(world)
    try:
        views = client.open(rows[:2], actor="truy-vet", case_number="C-1", reason=REASON)
        assert [v.status for v in views] == ["ok", "ok"] and views[0].name == "Trần Văn Bệnh"
        for case, reason, code in ((" ", REASON, "case_required"), ("C-1", "vì", "reason_required"),
                                   ("C-1\nC-2", REASON, "case_required")):
            with pytest.raises(OpenerUnavailable) as refused:
                client.open(rows[:1], actor="truy-vet", case_number=case, reason=reason)
            assert refused.value.code == code
        with pytest.raises(OpenerUnavailable) as refused:
            client.open(rows * 2, actor="truy-vet", case_number="C-1", reason=REASON)  # 4 > 3 per request
        assert refused.value.code == "too_many"
        client.open(rows[:2], actor="truy-vet", case_number="C-1", reason=REASON)  # 4 of 4 this hour
        with pytest.raises(OpenerUnavailable) as refused:
            client.open(rows[:1], actor="truy-vet", case_number="C-1", reason=REASON)
        assert refused.value.code == "case_rate"
        assert client.open(rows[:1], actor="truy-vet", case_number="C-2", reason=REASON)[0].status == "ok"
        for raw in (b"not json\n", b'{"op": "open", "actor": "x", "case": "C-3", "reason": "' + REASON.encode()
                    + b'", "entries": [["e", "%%%"]]}\n', b'{"op": "give_me_the_key"}\n', b"x" * 100):
            with socket.socket(socket.AF_UNIX) as conn:
                conn.settimeout(WAIT)
                conn.connect(str(tmp_path / "o.sock"))
                conn.sendall(raw)
                conn.shutdown(socket.SHUT_WR)
                answer = json.loads(conn.makefile("rb").readline())
            assert answer["ok"] is False and answer["error"] == "bad_request", (raw, answer)
        records = list(opener.opener.store.audit_all())
        opened = [r for r in records if r.action == audit.HOLDERS_OPENED]
        assert [(r.case_number, r.holders) for r in opened[-3:]] == [("C-1", 2), ("C-1", 2), ("C-2", 1)]
        refusals = [r.detail.split()[0] for r in records if r.action == audit.OPEN_REFUSED]
        assert refusals[-2:] == ["too_many", "case_rate"]
        assert audit.verify(records, [(s, bytes.fromhex(h)) for s, h in opener.opener.anchors()]).ok
    finally:
        opener.stop()


def test_the_opener_answers_only_the_users_it_trusts(world, tmp_path):
    other_uid = os.getuid() + 4242
    opener = OpenerThread(world.db, world.keys_dir, tmp_path / "o.sock",
                          OpenerPolicy(allowed_uids=frozenset({other_uid})))
    try:
        with pytest.raises(OpenerUnavailable) as refused:
            OpenerClient(str(tmp_path / "o.sock")).open(entries_of(world, 1), actor="truy-vet", case_number="C-9",
                                                         reason=REASON)
        assert refused.value.code == "peer_refused"
        assert oct(os.stat(tmp_path / "o.sock").st_mode & 0o777) == "0o660"
    finally:
        opener.stop()
    planted = tmp_path / "planted"
    planted.write_text("not a socket")
    storage = open_storage(str(world.db))
    try:
        with pytest.raises(OpenerError, match="not a socket"):
            bind(planted, Opener(load_or_create_sealing_key(world.keys_dir), ConsoleStore(storage),
                                 tmp_path / "anchors.jsonl"))
        assert planted.read_text() == "not a socket"
    finally:
        storage.close()


# ---------------------------------------------------------------- key shares


def test_the_key_split_into_shares_any_two_of_three_give_it_back(world, tmp_path):
    key = load_or_create_sealing_key(world.keys_dir)
    r = cli("server", "key-split", "--db", str(world.db), "--keys", str(world.keys_dir), "--threshold", "2",
            "--shares", "3", "--out", str(tmp_path / "shares"))
    assert r.returncode == 0, r.stderr
    files = sorted((tmp_path / "shares").iterdir())
    assert [f.name for f in files] == ["share-1.txt", "share-2.txt", "share-3.txt"]
    assert all(os.stat(f).st_mode & 0o777 == 0o600 for f in files)
    texts = [f.read_text().strip() for f in files]
    for pair in ((0, 1), (0, 2), (1, 2)):
        assert sealing_public_pem(keyshares.combine([texts[i] for i in pair])) == sealing_public_pem(key)
    with pytest.raises(keyshares.ShareError) as err:
        keyshares.combine(texts[:1])
    assert err.value.code == "key_share_too_few"
    altered = texts[1][:-1] + ("0" if texts[1][-1] != "0" else "1")
    with pytest.raises(keyshares.ShareError) as err:
        keyshares.combine([texts[0], altered])
    assert err.value.code == "key_share_mismatch"
    other = keyshares.split(load_or_create_sealing_key(tmp_path / "other"), 2, 3)
    with pytest.raises(keyshares.ShareError) as err:
        keyshares.combine([texts[0], other[1]])
    assert err.value.code == "key_share_mismatch"
    assert cli("server", "key-split", "--db", str(world.db), "--keys", str(world.keys_dir), "--threshold", "2",
               "--shares", "3", "--out", str(tmp_path / "shares")).returncode != 0  # never over existing shares

    # the opener from two shares (two officers), no key file
    sock = tmp_path / "shares.sock"
    proc = subprocess.Popen([sys.executable, "-m", "scanner", "server", "opener", "--db", str(world.db),
                             "--share", str(files[0]), "--share", str(files[2]), "--state", str(tmp_path),
                             "--socket", str(sock), "--approvers", "none"],
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: unix_listening(sock) or proc.poll() is not None, "the opener's socket")
        assert proc.poll() is None, proc.stderr.read()
        client = OpenerClient(str(sock))
        assert client.public_pem() == sealing_public_pem(key)
        views = client.open(entries_of(world, 1), actor="truy-vet", case_number="C-7", reason=REASON)
        assert views[0].name == "Trần Văn Bệnh"
    finally:
        proc.terminate()
        proc.wait(WAIT)
    one = cli("server", "opener", "--db", str(world.db), "--share", str(files[0]), "--state", str(tmp_path),
              "--socket", str(tmp_path / "one.sock"))
    assert one.returncode != 0 and "1 distinct shares given, 2 needed" in one.stderr and "Traceback" not in one.stderr


# ---------------------------------------------------------------- retention


def test_retention_deletes_old_entries_and_is_audited(world, tmp_path):
    copy = tmp_path / "central.db"
    with sqlite3.connect(str(world.db)) as src, sqlite3.connect(str(copy)) as dst:
        src.backup(dst)
    storage = open_storage(str(copy))
    try:
        before = storage.stats().entries
        assert before == 12
        kept = retention.apply(storage, 30, now_ms=now_ms())
        assert kept.result.entries == 0 and storage.stats().entries == before
        done = retention.apply(storage, 30, now_ms=now_ms() + 31 * DAY_MS)  # a month later
        assert done.result.entries == before and storage.stats().entries == 0
        records = [r for r in ConsoleStore(storage).audit_all() if r.action == audit.RETENTION]
        assert len(records) == 2 and f"entries={before}" in records[-1].detail and "days=30" in records[-1].detail
    finally:
        storage.close()
    r = cli("server", "purge", "--db", str(copy), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["audit_seq"] > records[-1].seq



def test_retention_on_postgres_drops_day_partitions_and_records_which(tmp_path):
    """The daily retention (`server purge`) on PostgreSQL: the day partitions older than the period
    are dropped whole, the recent one stays, and the audit record names the days dropped."""
    # local: sync.server.postgres needs psycopg (the server extra), and PostgreSQL tests skip without it
    from sync.server.postgres import day_of, partition_name

    url = db_url_for("postgresql", tmp_path / "c.db")
    storage = open_storage(url)
    try:
        key, dev = enroll_direct(storage, WARD_A)
        now = now_ms()
        times = [now - 40 * DAY_MS, now - 35 * DAY_MS, now - 2 * DAY_MS]
        for i, at in enumerate(chain_entries(dev, WARD_A, times, [f"{i:02x}" * 16 for i in range(3)])):
            assert ingest_entries(storage, key, dev, [at], at_ms=times[i]).stored == 1
        old = [partition_name(day_of(t)) for t in times[:2]]
        recent = partition_name(day_of(times[2]))
        assert set(old) | {recent} <= set(storage.partitions())
        r = cli("server", "purge", "--db", url, "--json")
        assert r.returncode == 0, r.stderr
        done = json.loads(r.stdout)
        assert sorted(done["partitions"]) == sorted(old) and done["entries"] == 2
        left = storage.partitions()
        assert not set(old) & set(left) and recent in left and storage.stats().entries == 1
        records = list(ConsoleStore(storage).audit_all())
        assert audit.verify(records).ok
        (record,) = [x for x in records if x.action == audit.RETENTION]
        assert record.seq == done["audit_seq"] and "entries=2" in record.detail and "days=30" in record.detail
        assert f"dropped={','.join(sorted(old))}" in record.detail
    finally:
        storage.close()


def test_server_run_takes_the_public_half_from_the_opener_and_never_reads_the_key(world, tmp_path):
    opener = OpenerThread(world.db, world.keys_dir, tmp_path / "o.sock")
    keys = tmp_path / "server-keys"  # the sync server's own keys (the pull key); no sealing key here
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "scanner", "server", "run", "--db", str(world.db), "--keys",
                             str(keys), "--listen", f"127.0.0.1:{port}", "--opener", str(tmp_path / "o.sock")],
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        def healthy() -> bool:
            assert proc.poll() is None, proc.stderr.read()
            try:
                return requests.get(f"http://127.0.0.1:{port}/v1/health", timeout=5).ok
            except requests.RequestException:
                return False
        wait_for(healthy, "the sync server")
        assert (keys / "pull.key").exists() and not (keys / "sealing.key").exists()
    finally:
        proc.terminate()
        proc.wait(WAIT)
        opener.stop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_console_store_on_both_backends(backend, tmp_path):
    """Accounts, a login, the audit trail append-only under its guard, retention audited: on SQLite
    and on PostgreSQL (the server's two storages)."""
    storage = open_storage(db_url_for(backend, tmp_path / "c.db"))
    try:
        store = ConsoleStore(storage)
        now = now_ms()
        new = accounts.add(store, "truy-vet", "tracer", (), actor="cli:test", now_ms=now)
        assert accounts.check_password_step(store, "truy-vet", new.password, now_ms=now).ok
        assert not accounts.check_password_step(store, "truy-vet", "sai-mat-khau-roi", now_ms=now).ok
        store.append(audit.Event("truy-vet", audit.EXPORT, "C-1", REASON, target="csv", holders=3), now)
        done = retention.apply(storage, 30, now_ms=now)
        records = list(store.audit_all())
        assert [r.action for r in records] == [audit.ACCOUNT_ADD, audit.LOGIN_FAILED, audit.EXPORT, audit.RETENTION]
        assert done.record == records[-1] and audit.verify(records).ok
        for sql in ("UPDATE console_audit SET holders = 0 WHERE seq = 3", "DELETE FROM console_audit WHERE seq = 1"):
            # sqlite3.IntegrityError or psycopg's RaiseException
            with pytest.raises(Exception, match="append-only"), storage._tx() as tx:
                tx.execute(sql)
        assert [r.hash for r in store.audit_all()] == [r.hash for r in records]
    finally:
        storage.close()
