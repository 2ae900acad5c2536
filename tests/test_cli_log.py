"""`checkpoint log ...` as an operator runs it: real processes on a real log file."""
from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import stat
import subprocess
import sys
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from scanner.cards import verifier
from scanner.cards.scan import Scan
from scanner.store.entry import read_export
from scanner.store.entrylog import EntryLog

NOW = 1_750_000_000
NAME, BIRTH = "Lê Thị Mỹ Duyên", "1979-12-01"
DAY = 86400


def run(*args: str, env: dict | None = None):
    full_env = {**os.environ, "CHECKPOINT_LANG": "en", **(env or {})}
    r = subprocess.run([sys.executable, "-m", "scanner", "log", *args], capture_output=True, text=True,
                       env=full_env, timeout=120, check=False)
    for stream in (r.stdout, r.stderr):  # never any holder detail, never a traceback
        assert NAME not in stream and BIRTH not in stream and "Traceback" not in stream
    return r


@pytest.fixture(scope="module")
def db(tmp_path_factory, make_card, trust):
    """A log with 12 entries: 10 old (synced) ones, two today; one checkpoint id with an escape."""
    path = tmp_path_factory.mktemp("cli") / "state" / "entries.db"
    server = X25519PrivateKey.generate()
    with EntryLog(path, device_id="dev-1", checkpoint_id="gate\x1b[2J", sealing_key=server.public_key(),
                  passback_window_s=60) as log:
        for i in range(10):
            v = verifier.verify(make_card(card_id=bytes([i]) * 16, name=NAME, birth_date=BIRTH), trust, NOW)
            log.record(Scan("x", "camera", "cam0", NOW - (30 - i) * DAY), v, direction="in")
        v = verifier.verify(make_card(card_id=b"\xaa" * 16, name=NAME, birth_date=BIRTH), trust, NOW)
        log.record(Scan("x", "usb", "r0", NOW), v, direction="in")
        log.record(Scan("x", "usb", "r0", NOW + 5), v, direction="in")  # duplicate
        log.mark_synced("b1", 1, 10)
    return path


def test_stats_counts_only(db):
    r = run("stats", "--db", str(db), "--lang", "en")
    assert r.returncode == 0, r.stderr
    assert "12 entries (seq 1–12): unsynced 2, synced 10, purged 0" in r.stdout
    assert "Holder details: sealed 12, not stored 0" in r.stdout
    assert "\x1b" not in r.stdout  # the checkpoint id's escape sequence is shown, not sent
    vi = run("stats", "--db", str(db), env={"CHECKPOINT_LANG": "vi"})
    assert "12 mục" in vi.stdout and "niêm phong 12" in vi.stdout
    j = json.loads(run("stats", "--db", str(db), "--json").stdout)
    assert (j["entries"], j["unsynced"], j["holder_sealed"], j["health"]["state"]) == (12, 2, 12, "ok")
    assert "holder_details" not in j


def test_default_path_from_the_state_dir(db):
    r = run("stats", "--json", env={"CHECKPOINT_STATE_DIR": str(db.parent)})
    assert r.returncode == 0 and json.loads(r.stdout)["entries"] == 12


def test_tail(db):
    r = run("tail", "--db", str(db), "-n", "3")
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == 3
    assert lines[-1].startswith("#12 ") and "reject/duplicate" in lines[-1] and "aa" * 16 in lines[-1]
    assert "batch=b1" in lines[0] and "unsynced" in lines[-1]
    assert "\x1b" not in r.stdout and "\\u001b" in r.stdout
    recs = [json.loads(x) for x in run("tail", "--db", str(db), "--json").stdout.splitlines()]
    assert [x["seq"] for x in recs] == list(range(1, 13))
    assert {x["holder"] for x in recs} == {"sealed"} and "sealed" not in recs[0]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_file_round_trips_and_verifies(db, tmp_path, fmt):
    out = tmp_path / f"export.{fmt}"
    r = run("export", "--db", str(db), "--format", fmt, "-o", str(out))
    assert r.returncode == 0 and r.stderr.strip() == "12 entries exported"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    with EntryLog(db) as log:
        expected = [dataclasses.replace(e, sealed=None) for e in log.entries()]
    with open(out, encoding="utf-8", newline="") as fh:
        assert list(read_export(fh, fmt)) == expected
    ok = run("verify", "--file", str(out), "--format", fmt)
    assert ok.returncode == 0 and ok.stdout.startswith("chain ok: 12 entries"), ok.stdout
    # an operator "fixing" one line of the export is caught
    text = out.read_text(encoding="utf-8")
    out.write_text(text.replace("reject", "accept", 1), encoding="utf-8")
    bad = run("verify", "--file", str(out), "--format", fmt)
    assert bad.returncode == 1 and "chain BROKEN at seq 12: altered" in bad.stdout


def test_export_time_window_to_stdout(db):
    r = run("export", "--db", str(db), "--since", str(NOW - 25 * DAY), "--until", "2025-06-15T00:00:00Z")
    recs = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["seq"] for x in recs] == [6, 7, 8, 9, 10]
    assert r.stderr.strip() == "5 entries exported"


def test_export_garbage_file_is_a_clean_error(tmp_path):
    p = tmp_path / "junk.jsonl"
    p.write_text('{"seq": 1}\n', encoding="utf-8")
    r = run("verify", "--file", str(p))
    assert r.returncode == 2 and r.stderr.startswith("checkpoint: error: line 1:")


def test_purge_and_verify(db, tmp_path):
    copy = tmp_path / "copy.db"
    src = sqlite3.connect(db)
    src.backup(dst := sqlite3.connect(copy))
    src.close()
    dst.close()
    dry = run("purge", "--db", str(copy), "--dry-run", "--json")
    assert json.loads(dry.stdout)["purged"] == 10 and json.loads(dry.stdout)["dry_run"] is True
    r = run("purge", "--db", str(copy))
    assert r.returncode == 0 and r.stdout.startswith("purged 10 synced entries older than 21 days")
    assert "chain anchor seq 10; unsynced kept: 2" in r.stdout
    v = run("verify", "--db", str(copy), "--json")
    assert json.loads(v.stdout) == {"ok": True, "integrity": "ok", "checked": 2, "first_seq": 11,
                                         "last_seq": 12, "anchor_seq": 10, "bad_seq": None, "problem": None,
                                         "detail": None}
    c = sqlite3.connect(copy)
    c.execute("DELETE FROM entries WHERE seq = 11")
    c.commit()
    c.close()
    bad = run("verify", "--db", str(copy))
    assert bad.returncode == 1 and "chain BROKEN at seq 12: gap" in bad.stdout


def test_unusable_databases_exit_2_with_one_line(tmp_path):
    r = run("stats", "--db", str(tmp_path / "missing.db"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no entry log at" in r.stderr
    assert not (tmp_path / "missing.db").exists()
    junk = tmp_path / "junk.db"
    junk.write_text("hello " * 1000)
    r = run("tail", "--db", str(junk))
    assert r.returncode == 2 and r.stderr.startswith("checkpoint: error:")


def test_help_lists_the_commands():
    r = run("--help")
    for cmd in ("stats", "tail", "export", "purge", "verify"):
        assert cmd in r.stdout


def test_rejected_is_one_count_everywhere_duplicates_are_not_refusals(tmp_path, make_card, trust):
    """Today's figures: an admission, the same card again (a duplicate: already admitted) and an
    expired card. `rejected` is the one refusal, in the log's totals (what the kiosk and the status
    page show) and in `log stats`; the duplicate is counted on its own."""
    path = tmp_path / "entries.db"
    now = time.time()
    with EntryLog(path, device_id="dev-1", checkpoint_id="gate", sealing_key=None, passback_window_s=60) as log:
        v = verifier.verify(make_card(card_id=b"\x01" * 16), trust, NOW)
        log.record(Scan("x", "usb", "r0", now), v, direction="in")
        log.record(Scan("x", "usb", "r0", now + 1), v, direction="in")
        expired = verifier.verify(make_card(card_id=b"\x02" * 16), trust, NOW + 400 * DAY)
        log.record(Scan("y", "usb", "r0", now + 2), expired, direction="in")
        t = log.totals()
    assert (t.scans, t.accepted, t.duplicates, t.rejected) == (3, 1, 1, 1)
    r = run("stats", "--db", str(path), "--lang", "en")
    assert "duplicates 1 · rejected 1 ·" in r.stdout, r.stdout
