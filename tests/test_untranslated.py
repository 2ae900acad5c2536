"""No English on a Vietnamese reader's terminal: the human output of the commands a technician
and staff run, with CHECKPOINT_LANG=vi, has only words of the catalogue's Vietnamese texts
(tests/support/words.py), besides the ids, names and paths the test itself put there. The kiosk
and the status page are checked the same way in tests/test_kiosk_browser.py."""
from __future__ import annotations

import base64
import errno
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from support.config import standalone, write_config
from support.console import WARD_A, WARD_B, make_world
from support.paths import ROOT
from support.pki import OPERATOR_ROOT, make_pki
from support.servers import ServerThread, free_port
from support.terminal import Terminal
from support.waiting import WAIT
from support.words import foreign

from scanner.appliance.events import EventHub
from scanner.appliance.schema import SECTIONS
from scanner.base.errors import code_words, error_text
from scanner.cards import keys as keymod
from scanner.cards import verifier
from scanner.cards.bundle import BundleKey, make_bundle
from scanner.cards.scan import Scan
from scanner.cards.trust import load_trust
from scanner.cli.main import main
from scanner.demo.main import _Printer
from scanner.store.entrylog import EntryLog
from sync.server.bundles import publish
from sync.server.keys import load_or_create_sealing_key
from sync.server.storage import open_storage
from sync.wire import protocol

HOLDER = "Đỗ Thị Hạnh"


def run(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "scanner", *args], capture_output=True, text=True, cwd=ROOT, check=False,
                       timeout=WAIT, env={**os.environ, "CHECKPOINT_LANG": "vi"})
    assert "Traceback" not in r.stderr, r.stderr
    return r


def vietnamese_only(out: str, *allowed: str) -> None:
    """``out`` has no untranslated word; the one-line error's fixed tag (`checkpoint: error:`, docs/cli.md)
    is no word either."""
    found = foreign(out.replace("checkpoint: error:", " "), allowed)
    assert not found, f"untranslated words {sorted(set(found))} in:\n{out}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_the_words_check_catches_english():
    """The check itself: English in a Vietnamese line is found, the Vietnamese line passes."""
    assert foreign("✘ TỪ CHỐI · Thẻ đã hết hạn · signature does not verify") == ["signature", "does", "not", "verify"]
    assert foreign("Chế độ provisioned") == ["provisioned"] and foreign("4 min 47 s") == ["min", "s"]
    assert foreign("✔ CHẤP NHẬN · Thẻ hợp lệ · Ana (sinh 1990)", ["Ana"]) == []


def test_verify_says_it_in_vietnamese(pki, tmp_path):
    rogue = make_pki(tmp_path / "rogue")
    forged = run("verify", "--trust", str(pki.pub), rogue.card(name=HOLDER))
    assert forged.returncode == 1
    vietnamese_only(forged.stdout, HOLDER, "unknown_key")  # the reason code is for technicians, in any language
    good = run("verify", "--trust", str(pki.pub), pki.card(name=HOLDER))
    assert good.returncode == 0
    vietnamese_only(good.stdout, HOLDER, "ok", "VN-HUE")


def test_log_stats_and_log_verify_say_it_in_vietnamese(pki, tmp_path):
    db = tmp_path / "state" / "entries.db"
    trust = load_trust([pki.pub], [])
    now = time.time()
    with EntryLog(db, device_id="dev-1", checkpoint_id="cho-dong", sealing_key=None) as log:
        for i in range(3):
            log.record(Scan(pki.card(name=HOLDER), "usb", "r0", now + i), verifier.verify(pki.card(), trust, now),
                       direction="in")
    stats = run("log", "stats", "--db", str(db))
    assert stats.returncode == 0, stats.stderr
    vietnamese_only(stats.stdout, str(db), "cho-dong")
    # a device whose threshold says its disk is nearly full: the problem in words, its code beside them
    config = write_config(tmp_path / "c.toml", standalone(db.parent, pki, log={"min_free_mb": 1_000_000}))
    low = run("log", "stats", "--config", str(config))
    assert low.returncode == 0 and "(low_disk)" in low.stdout, low.stdout + low.stderr
    vietnamese_only(low.stdout, str(db), "cho-dong", "(low_disk)")
    ok = run("log", "verify", "--db", str(db))
    assert ok.returncode == 0, ok.stderr
    vietnamese_only(ok.stdout)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE entries SET source_id = 'r9' WHERE seq = 2")  # an entry altered after the fact
    conn.commit()
    conn.close()
    broken = run("log", "verify", "--db", str(db))
    assert broken.returncode == 1
    vietnamese_only(broken.stdout, "(altered)")  # the stable code beside its words


def test_doctor_says_it_in_vietnamese(pki, tmp_path):
    state = tmp_path / "state"
    config = write_config(tmp_path / "c.toml", standalone(state, pki, serial=[{"name": "entry",
                                                                           "port": str(tmp_path / "no-tty")}]))
    r = run("doctor", "--local", "--config", str(config))
    assert r.returncode == 1
    vietnamese_only(r.stdout, "gate-test", "reader:entry", "state_dir", "provisioned", "ready", "gpio", "database",
                    "disk", "clock", "trust", "server", "sync", "config", "unsynced", "unknown", "synced")


def test_the_demo_says_the_device_state_in_vietnamese():
    """The demo's terminal lines for the device state and a degraded verdict, as the daemon's events give them."""
    out = io.StringIO()
    printer = _Printer(out, "vi", [])
    hub = EventHub(display_s=1)
    hub.listen(printer)
    hub.publish("state", {"state": "degraded", "problems": [], "degraded": ["clock_unconfirmed", "not_provisioned"]})
    hub.publish("state", {"state": "ok", "problems": [], "degraded": []})
    hub.publish("state", {"state": "error", "problems": ["input_down:cam0", "no_trust"], "degraded": []})
    hub.publish("verdict", {"decision": "accept", "reason": "ok", "holder": None, "degraded": ["trust_stale"],
                            "source": "camera", "source_id": "cam0", "seq": 1})
    lines = out.getvalue().splitlines()
    assert lines[1] == "Tình trạng thiết bị: bình thường"  # not "ok (-)"
    vietnamese_only(out.getvalue(), "cam0", "camera", "(ok)")  # the reason code beside its words


def test_the_demo_says_a_duplicate_as_the_kiosk_does():
    """A card scanned again, or already inside by another gate: the terminal's line says what the
    kiosk and the amber LED say (let in before, when and where), never the refusal's word."""
    out = io.StringIO()
    printer = _Printer(out, "vi", [], place="Cổng chợ Đông")
    hub = EventHub(display_s=1)
    hub.listen(printer)
    at_ms = time.mktime((2026, 12, 6, 14, 5, 0, 0, 0, -1)) * 1000
    base = {"decision": "reject", "holder": {"name": HOLDER, "birth_year": "1990"}, "degraded": [],
            "source": "camera", "source_id": "cam0", "seq": 2, "duplicate_of": None, "inside": None}
    hub.publish("verdict", {**base, "reason": "duplicate",
                            "duplicate_of": {"at_ms": at_ms, "checkpoint_id": "cho-dong", "direction": "in"}})
    hub.publish("verdict", {**base, "reason": "already_inside", "inside": {"gate": "gate-B", "at_ms": at_ms}})
    hub.publish("verdict", {**base, "reason": "revoked"})
    dup, inside, revoked = out.getvalue().splitlines()
    assert "↺ ĐÃ CHO QUA · Đã vào lúc 14:05 tại Cổng chợ Đông, không tính lại (duplicate)" in dup, dup
    assert "↺ ĐÃ CHO QUA · Đã ở trong khu vực: vào qua gate-B lúc 14:05 (already_inside)" in inside, inside
    assert "✘ TỪ CHỐI · Thẻ đã bị thu hồi (revoked)" in revoked, revoked
    vietnamese_only(out.getvalue(), "cam0", "camera", "Cổng chợ Đông", "gate-B", "(duplicate)", "(already_inside)",
                    "(revoked)", HOLDER)


def test_config_check_says_every_problem_in_vietnamese(tmp_path):
    """Type, range, choice, unknown keys and sections, missing files, an array given as a string,
    inputs and pins used twice, an open API: the problems and their fixes, in Vietnamese."""
    bad = tmp_path / "bad.toml"
    bad.write_text(f"""
[device]
direction = "sideways"
colour = "blue"
state_dir = "/etc/passwd"
[sync]
server = "http://checkpoint.example.vn"
[trust]
files = "{tmp_path}/missing.pem"
[api]
listen = "0.0.0.0:8080"
[feedback.green]
pin = 17
[feedback.relay]
pin = "BOARD11"
[feedback.passage]
pin = 25
[scan]
cooldown_s = -1
[[camera]]
device = "{tmp_path}/no-such-video.avi"
width = "wide"
[[serial]]
port = "/dev/ttyACM0"
[[serial]]
port = "/dev/ttyACM0"
[bogus]
x = 1
""", encoding="utf-8")
    r = run("config", "check", str(bad))
    assert r.returncode == 2 and len(r.stderr.splitlines()) >= 10, r.stderr
    sections = ", ".join(sorted({s.name.split(".")[0] for s in SECTIONS}))  # the names the fixes list
    device_keys = ", ".join(k.name for k in next(s for s in SECTIONS if s.name == "device").keys)
    vietnamese_only(r.stderr, str(bad), sections, device_keys, "bogus",
                    "'sideways'", "'in'", "'out'", "'wide'")
    ok = run("config", "check", str(ROOT / "config" / "venue.toml"))
    assert ok.returncode == 0
    vietnamese_only(ok.stdout, str(ROOT / "config" / "venue.toml"))


def test_the_server_commands_say_it_in_vietnamese(tmp_path):
    """stats, devices, chain, revoke, keys, bundle publish, import, purge and trace on a province's
    database: every word from the catalogue, besides ids, checkpoint names and the devices' alarm codes."""
    world = make_world(tmp_path)
    db = str(world.db)
    names = (*world.devices.values(), WARD_A, WARD_B, "trust_update_failed", world.infected_id)
    now_s = int(time.time())
    pub = world.pki.key.public_key()
    bundle = tmp_path / "bundle-2.json"
    bundle.write_bytes(make_bundle(OPERATOR_ROOT, version=2, issued_at=now_s, expires_at=now_s + 86400,
                                   keys=[BundleKey(keymod.kid_of(pub), "EdDSA", "VN-HUE", pub)]))
    (tmp_path / "usb").mkdir()
    for args in (["stats"], ["devices"], ["chain"], ["revoke", world.devices["b2"]], ["revoke", world.devices["b2"]],
                 ["keys", "--out", str(tmp_path / "pub")], ["bundle", "publish", str(bundle)],
                 ["import", str(tmp_path / "usb")], ["purge", "--days", "30"],
                 ["trace", "--card", world.infected_id, "--no-holders", "--contacts"]):
        r = run("server", *args, "--db", db)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        out = r.stderr if args[0] == "trace" else r.stdout + r.stderr
        assert out.strip(), args
        vietnamese_only(out, *names, str(tmp_path))


def test_the_issuer_tools_say_it_in_vietnamese(tmp_path):
    """A revocation's summary and the issuer tools' refusals, in Vietnamese (the data they make goes to
    stdout as it is)."""
    d = tmp_path / "pki"
    d.mkdir()
    assert run("issuer", "keygen", "--out", str(d / "root")).returncode == 0
    assert run("issuer", "keygen", "--out", str(d / "hue")).returncode == 0
    again = run("issuer", "keygen", "--out", str(d / "hue"))
    assert again.returncode == 2
    vietnamese_only(again.stderr, str(d))
    bundle = run("issuer", "bundle", "--root-key", str(d / "root.key"), "--key", f"VN-HUE={d / 'hue.pub'}",
                 "--version", "1", "-o", str(d / "bundle.json"))
    assert bundle.returncode == 0, bundle.stderr
    revoke = ["issuer", "revoke", "--bundle", str(d / "bundle.json"), "--root-key", str(d / "root.key")]
    for args, status in (([], 2), (["--card", "zz"], 2), (["--kid", "***"], 2),
                         (["--card", "ab" * 16, "-o", str(d / "b2.json")], 0)):
        r = run(*revoke, *args)
        assert r.returncode == status and r.stderr.strip(), (args, r.stderr)
        vietnamese_only(r.stderr, "'zz'", "'***'")


def test_the_console_accounts_audit_and_key_shares_say_it_in_vietnamese(tmp_path):
    """`server user add|role|disable|list`, `server audit verify` and `server key-split` (`audit show`
    lists the records as stored: action codes and key=value details)."""
    db = str(tmp_path / "server" / "c.db")
    (tmp_path / "server").mkdir()
    load_or_create_sealing_key(tmp_path / "server")
    for args in (["user", "add", "quan-tri", "--role", "admin"], ["user", "add", "truy-vet", "--role", "tracer"],
                 ["user", "role", "truy-vet", "auditor"], ["user", "disable", "truy-vet"], ["user", "list"],
                 ["audit", "verify"],
                 ["key-split", "--threshold", "2", "--shares", "3", "--out", str(tmp_path / "shares")]):
        r = run("server", *args, "--db", db)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        out = r.stdout + r.stderr
        if args[:2] == ["user", "add"]:  # the secrets themselves, shown once
            out = "\n".join(line.split(": ")[0] for line in out.splitlines())
        vietnamese_only(out, "quan-tri", "truy-vet", "(admin)", "(tracer)", "(auditor)", "cli:root", str(tmp_path))


def test_the_server_daemons_say_where_they_listen_in_vietnamese(tmp_path):
    """`server run`, `server console` and `server opener`: the line each prints when it starts (and the
    opener's when it stops; the server's warning that no credential is published), as a technician
    sees them on a terminal."""
    (tmp_path / "server").mkdir()
    db = str(tmp_path / "server" / "c.db")
    load_or_create_sealing_key(tmp_path / "server")
    sock = str(tmp_path / "opener.sock")
    for args, said in ((["run", "--listen", f"127.0.0.1:{free_port()}"], "đang nghe"),
                       (["console", "--insecure-http", "--listen", f"127.0.0.1:{free_port()}"], "đang nghe"),
                       (["opener", "--socket", sock], "đã dừng")):
        term = Terminal([sys.executable, "-m", "scanner", "server", *args, "--db", db], cwd=ROOT,
                        env={**os.environ, "CHECKPOINT_LANG": "vi"})
        try:
            term.wait_for("đang nghe")
            if args[0] == "run":
                term.wait_for("`checkpoint server credential publish`")
            term.ctrl_c()
            term.finish()
            lines = [line for line in term.text().splitlines() if line.startswith("checkpoint ") and said in line]
            assert lines, term.text()
            if args[0] == "run":  # a server without its credential warns the operator, in words too
                lines += [line for line in term.text().splitlines() if line.startswith("checkpoint server: ")
                          and "`checkpoint server credential publish`" in line]
                assert len(lines) == 2, term.text()
            vietnamese_only("\n".join(lines).replace("checkpoint server:", " ").replace("checkpoint console:", " ")
                            .replace("checkpoint opener:", " "), db, sock, str(os.getuid()))
        finally:
            term.close()


def test_operating_system_errors_are_said_by_their_errno_with_the_path_kept(tmp_path):
    """Real failures of the system (no such file, a directory for a file, a full disk: /dev/full),
    in the catalogue's words with their stable code, the path kept."""
    found = []
    for attempt in ((tmp_path / "missing.pem").read_bytes, tmp_path.read_bytes,
                    lambda: Path("/dev/full").write_bytes(b"x")):
        with pytest.raises(OSError) as exc:
            attempt()
        found.append(exc.value)
    missing, directory, full = (error_text(e, "vi") for e in found)
    assert missing == f"{tmp_path / 'missing.pem'}: không có tệp hoặc thư mục này (no_such_file)", missing
    assert directory == f"{tmp_path}: là một thư mục, không phải tệp (is_a_directory)", directory
    assert full.endswith("đĩa đầy (disk_full)") and found[2].errno == errno.ENOSPC, full
    assert error_text(found[0], "en").endswith(": no such file or directory (no_such_file)")
    for line in (missing, directory, full):
        vietnamese_only(line, str(tmp_path), "/dev/full", "(no_such_file)", "(is_a_directory)", "(disk_full)")


def test_library_errors_on_the_error_line_are_vietnamese(pki, tmp_path):
    """`checkpoint: error: ...` for a key file that is missing or not a key, a folder that is not
    there, an output that is a symlink, a card id or window the tracer refuses, and the refusals of
    `server run|console|opener|pull|key-split`: the catalogue's words, the stable code beside."""
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("x = [\n", encoding="utf-8")
    (tmp_path / "elsewhere").write_text("not to be overwritten\n", encoding="utf-8")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "elsewhere")
    db = tmp_path / "state" / "entries.db"
    EntryLog(db, device_id="dev-1", checkpoint_id="cho-dong", sealing_key=None).close()
    server_db = tmp_path / "server" / "central.db"
    server_db.parent.mkdir()
    open_storage(str(server_db)).close()
    sdb = ["--db", str(server_db)]
    cases = [
        (["verify", "--trust", str(tmp_path / "missing.pem"), "x"], "(key_unreadable)"),
        (["verify", "--trust", str(garbage), "x"], "(key_unreadable)"),
        (["issuer", "keygen", "--out", str(tmp_path / "no-dir" / "k")], "(no_such_file)"),
        (["log", "export", "--db", str(db), "-o", str(tmp_path / "link.jsonl")], "(symlink_refused)"),
        (["server", "trace", "--card", "ab", "--contacts", "--window", "soon", "--no-holders", *sdb], "(trace)"),
        (["server", "trace", "--card", "ab", "--contacts", "--window", "25h", "--no-holders", *sdb], "(trace)"),
        (["server", "run", "--listen", "nowhere", *sdb], None),
        (["server", "run", "--tls-cert", str(garbage), *sdb], None),
        (["server", "console", *sdb], None),
        (["server", "console", "--opener-tls", "127.0.0.1:1", *sdb], None),
        (["server", "opener", *sdb], None),
        (["server", "opener", "--socket", str(tmp_path / "s"), "--allow", "no-such-user-here", *sdb], None),
        (["server", "pull", *sdb], None),
        (["server", "pull", "--device", "http://127.0.0.1:1", *sdb], None),
        (["server", "key-split", "--threshold", "3", "--shares", "2", "--out", str(tmp_path / "sh"), *sdb], None),
    ]
    for args, code in cases:
        r = run(*args)
        assert r.returncode == 2 and r.stderr.startswith("checkpoint: error: "), (args, r.stdout, r.stderr)
        assert code is None or code in r.stderr, (args, r.stderr)
        vietnamese_only(r.stderr, str(tmp_path), "'soon'", "'nowhere'", "'no-such-user-here'",
                        *([code] if code else []))
    assert (tmp_path / "elsewhere").read_text(encoding="utf-8") == "not to be overwritten\n"


def test_a_bad_pin_is_said_in_vietnamese(tmp_path):
    """The hardware's own refusal of a pin (not a pin, off the header, a header pin that is no GPIO)."""
    for pin in ('"x17"', "99", '"BOARD1"'):
        config = tmp_path / "c.toml"
        config.write_text(f"[feedback.green]\npin = {pin}\n", encoding="utf-8")
        r = run("config", "check", str(config))
        assert r.returncode == 2 and "feedback.green.pin" in r.stderr, r.stderr
        vietnamese_only(r.stderr, str(config), "feedback.green.pin", "'x17'", "GPIO0..GPIO27")


def test_every_command_on_error_paths_says_it_in_vietnamese(pki, tmp_path):
    """A fresh or broken configuration, missing files, bad TOML, a dead server, an unreadable
    database, a value click refuses: the error line is the catalogue's words (the daemon's own log
    lines stay English, for the journal)."""
    root = tmp_path / "root"
    assert run("issuer", "keygen", "--out", str(root)).returncode == 0
    junk = tmp_path / "junk.db"
    junk.write_bytes(bytes(range(256)) * 20)
    bad = tmp_path / "bad.toml"
    bad.write_text("[device]\nname = \n", encoding="utf-8")
    missing = tmp_path / "missing.toml"
    fresh = tmp_path / "fresh.toml"
    fresh.write_text(f'[device]\nstate_dir = "{tmp_path / "st"}"\n[sync]\nenabled = false\n', encoding="utf-8")
    unenrolled = tmp_path / "unenrolled.toml"
    unenrolled.write_text(f'[device]\nstate_dir = "{tmp_path / "st2"}"\n[enroll]\nqr = false\n', encoding="utf-8")
    dead = f"http://127.0.0.1:{free_port()}"
    provision = ["provision", "--token", "abc", "--state-dir", str(tmp_path / "st3")]
    cases = [
        (["run", "--config", str(fresh)], "(not_provisioned)"),
        (["run", "--config", str(unenrolled)], "(not_provisioned)"),
        (["run", "--config", str(bad)], "(file)"),
        (["log", "stats", "--config", str(bad)], "(file)"),
        (["sync", "status", "--config", str(missing)], "(file)"),
        (["log", "stats", "--db", str(junk)], "(log_unusable)"),
        (["server", "stats", "--db", str(junk)], "(db_unusable)"),
        (["server", "stats", "--db", str(tmp_path / "none.db")], "(db_missing)"),
        (["server", "revoke", "dev-1", "--db", str(tmp_path / "no-dir" / "c.db")], "(db_url)"),
        (["sync", "now", "--state-dir", str(tmp_path / "nostate")], "(not_provisioned)"),
        (["scan-image", str(tmp_path / "missing.png"), str(bad)], "(image_unreadable)"),
        (["verify", "CK1:ABC"], None),
        (["log", "stats", "--db", str(tmp_path)], None),
        (["server", "pull", "--limit", "0", "--device", dead], None),
        (["verify", "--lang", "xx", "CK1:ABC"], None),
        (["scan", "--stdin", "--trust", str(pki.pub), "--clock-skew", "soon"], None),
        (["scan", "--trust", str(pki.pub)], None),
        (["verify", "--trust", str(pki.pub), "--at", "yesterday", "CK1:ABC"], None),
        (["verify", "--trust", str(pki.pub), "--image", str(bad), "CK1:ABC"], None),
        ([*provision, "--server", dead], "(no_trust_root)"),
        ([*provision, "--server", dead, "--trust-root", str(root) + ".pub"], "(network)"),
        ([*provision, "--server", "http://checkpoint.example.vn", "--trust-root", str(root) + ".pub"],
         "(sync_config)"),
    ]
    for args, code in cases:
        r = run(*args)
        said = "\n".join(line for line in r.stderr.splitlines() if line.startswith("checkpoint: error: "))
        assert r.returncode in (1, 2) and said, (args, r.stdout, r.stderr)
        assert code is None or code in said, (args, said)
        vietnamese_only(said, str(tmp_path), dead, "'xx'", "'vi'", "'en'", "'soon'", "'yesterday'", "1<=x<=5000",
                        "CK1:ABC", "'http://checkpoint.example.vn'", *([code] if code else []))
    doctor = run("doctor", "--local", "--config", str(missing))
    assert doctor.returncode == 1
    vietnamese_only(doctor.stdout, str(missing), "config", "(file)")


def test_the_card_config_problems_are_vietnamese_on_the_terminal_and_the_page(tmp_path):
    """`image apply-card` on a card whose files do not pass (a trust root the config does not use,
    an enrollment file that is no code, a bad pin, a file that is a symlink): each problem, as the
    terminal prints it and the broken-config page lists it, in Vietnamese."""
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    (tmp_path / "elsewhere.txt").write_text("CKENROLL:x\n", encoding="utf-8")
    cases = {
        "unused-root": {"checkpoint.toml": '[sync]\nserver = "https://checkpoint.example.vn"\n',
                        "trust-root.pem": (tmp_path / "root.pub")},
        "root-alone": {"trust-root.pem": (tmp_path / "root.pub")},
        "bad-code": {"enroll.txt": "https://checkpoint.example.vn/enroll?t=1"},
        "bad-pin": {"checkpoint.toml": '[feedback.green]\npin = "BOARD1"\n'},
        "bad-toml": {"checkpoint.toml": "[device\n"},
        "symlink": {},
    }
    assert run("issuer", "keygen", "--out", str(tmp_path / "root")).returncode == 0
    for label, files in cases.items():
        boot = tmp_path / label
        boot.mkdir()
        for name, data in files.items():
            (boot / name).write_bytes(data.read_bytes() if isinstance(data, Path) else data.encode("utf-8"))
        if label == "symlink":
            (boot / "checkpoint.toml").symlink_to(tmp_path / "elsewhere.txt")
        errors = tmp_path / f"{label}.json"
        r = run("image", "apply-card", "--boot", str(boot), "--config-dir", str(config_dir), "--errors", str(errors))
        assert r.returncode == 2, (label, r.stdout, r.stderr)
        vietnamese_only(r.stderr, str(tmp_path), str(config_dir), "(file)", "trust-root.pem", "checkpoint.toml",
                        "enroll.txt", "enroll.trust_root", "feedback.green.pin", "CKENROLL:", "(symlink_refused)",
                        "(enroll_code)", "enroll-qr")
        problems = json.loads(errors.read_text(encoding="utf-8"))["problems"]
        assert problems and all(f"checkpoint: error: {p}" in r.stderr for p in problems), (label, problems)
    assert not any(config_dir.iterdir())


def test_a_missing_reader_or_camera_is_said_in_vietnamese(pki, tmp_path):
    """`scan`'s warning for a serial port that is not there and `doctor`'s camera check for a missing
    device: the state and the reason in words, the reason code beside (no driver text)."""
    port, video = str(tmp_path / "no-tty"), "/dev/video97"  # a V4L2 device not plugged in
    term = Terminal([sys.executable, "-m", "scanner", "scan", "--serial", port, "--trust", str(pki.pub)], cwd=ROOT,
                    env={**os.environ, "CHECKPOINT_LANG": "vi"})
    try:
        term.wait_for("(device_missing)")
        term.ctrl_c()
        term.finish()
        (warning,) = [line for line in term.text().splitlines() if "(device_missing)" in line]
    finally:
        term.close()
    vietnamese_only(warning.replace("checkpoint: warning:", " "), port, "serial", "(device_missing)")
    config = write_config(tmp_path / "c.toml", standalone(tmp_path / "state", pki,
                                                          camera=[{"name": "front", "device": video}]))
    doctor = run("doctor", "--local", "--config", str(config))
    (line,) = [line for line in doctor.stdout.splitlines() if "camera:front" in line]
    assert "device_missing" in line, doctor.stdout
    vietnamese_only(line, "camera:front", "device_missing", video)


def test_every_line_the_demo_prints_is_vietnamese(tmp_path):
    """`checkpoint demo` as a new user runs it: every line on its terminal (stdout and stderr), the
    reference server's and the daemon's included, is the catalogue's Vietnamese; the daemon's log lines
    (English, for engineers) go to a file in the demo's folder, which the demo names."""
    out = tmp_path / "d"
    r = subprocess.run([sys.executable, "-m", "scanner", "demo", "--out", str(out), "--speed", "4"],
                       capture_output=True, text=True, cwd=ROOT, timeout=WAIT * 3, check=False,
                       env={**os.environ, "CHECKPOINT_LANG": "vi"})
    assert r.returncode == 0, r.stdout + r.stderr
    codes = [f"({reason})" for reason in ("ok", "expired", "not_yet_valid", "revoked", "bad_signature",
                                           "unknown_key", "unsupported_format", "duplicate")]
    tallies = [f"{reason[1:-1]} " for reason in codes]  # the summary's tally: reason codes and counts
    device = json.loads((out / "state" / "device.json").read_text(encoding="utf-8"))["device_id"]
    vietnamese_only(r.stdout + r.stderr, str(out), "camera:demo-camera", "cho-dong-demo", device, *codes, *tallies,
                    "Nguyễn Văn An", "Lê Văn Cường", "Phạm Minh Đức", "Hoàng Thị Em", "Trần Thị Bích Ngọc")
    log = out / "daemon.log"
    assert str(log) in r.stdout and "WARNING appliance." in log.read_text(encoding="utf-8")


def _signed_bundle(root, payload: dict | bytes) -> bytes:
    """A bundle file the root really signed, whatever its payload says (a malformed one, here)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
    return json.dumps({"payload": base64.b64encode(body).decode(), "sig": base64.b64encode(root.sign(body)).decode(),
                       "kid": base64.b64encode(keymod.kid_of(root.public_key())).decode()}).encode("utf-8")


def test_refused_bundles_credentials_and_sites_are_vietnamese_on_the_error_line(pki, tmp_path):
    """A trust bundle refused (another root, altered, a signed payload of the wrong form, not JSON),
    a server no root vouches for or vouched for by another root, a token the server does not know, a
    bundle of another root published, a gate without its site credential: the error line says what is
    wrong in the catalogue's words, the stable code beside (the English detail is for the journal)."""
    now_s = int(time.time())
    pub = pki.key.public_key()
    rogue = ed25519.Ed25519PrivateKey.generate()
    good = make_bundle(OPERATOR_ROOT, version=1, issued_at=now_s, expires_at=now_s + 86400,
                       keys=[BundleKey(keymod.kid_of(pub), "EdDSA", "VN-HUE", pub)])
    root_pub = tmp_path / "root.pub"
    root_pub.write_bytes(keymod.public_pem(OPERATOR_ROOT.public_key()))
    rogue_pub = tmp_path / "rogue.pub"
    rogue_pub.write_bytes(keymod.public_pem(rogue.public_key()))
    files = {
        "other-root.json": make_bundle(rogue, version=1, issued_at=now_s, expires_at=now_s + 86400, keys=[]),
        "altered.json": good.replace(b'"sig": "', b'"sig": "AAAA', 1),
        "keys-not-a-list.json": _signed_bundle(OPERATOR_ROOT, {"version": 2, "issued_at": now_s,
                                                               "expires_at": now_s + 60, "keys": "VN-HUE"}),
        "bad-alg.json": _signed_bundle(OPERATOR_ROOT, {"version": 2, "issued_at": now_s, "expires_at": now_s + 60,
                                                      "keys": [{"kid": "AAAA", "alg": "MD5", "issuer": "x"}]}),
        "not-json.json": b'{"payload": "' + b"x" * 10,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    card = pki.card(name=HOLDER)
    verify = ["verify", "--trust-root", str(root_pub), "--trust"]
    server_db = tmp_path / "central" / "central.db"
    server_db.parent.mkdir()
    load_or_create_sealing_key(server_db.parent)
    publish(open_storage(str(server_db)), good, now_ms=now_s * 1000, root=OPERATOR_ROOT.public_key())
    site_state = tmp_path / "gate"
    secret = tmp_path / "site.secret"
    secret.write_bytes(b"0123456789abcdef0123456789abcdef")
    gate = write_config(tmp_path / "gate.toml", standalone(site_state, pki, site={
        "site_id": "cho-dong-ba", "secret_file": str(secret), "listen": "127.0.0.1:0", "discovery": False}))
    cases = [
        ([*verify, str(tmp_path / "other-root.json"), card], "(bundle_wrong_root)", "không tin cậy"),
        ([*verify, str(tmp_path / "altered.json"), card], "(bundle_bad_signature)", "chữ ký"),
        ([*verify, str(tmp_path / "keys-not-a-list.json"), card], "(bundle_malformed)", "`keys` của bộ tin cậy"),
        ([*verify, str(tmp_path / "bad-alg.json"), card], "(bundle_malformed)", "`keys[0].alg` của bộ tin cậy"),
        ([*verify, str(tmp_path / "not-json.json"), card], "(bundle_malformed)", "không phải JSON"),
        (["server", "bundle", "publish", str(tmp_path / "other-root.json"), "--db", str(server_db)],
         "(bundle_wrong_root)", "gốc"),
        (["run", "--config", str(gate)], "(site_credential_missing)", "khu vực cho-dong-ba"),
    ]
    for name in ("vouched", "stranger"):
        (tmp_path / name).mkdir()
    vouched = ServerThread(tmp_path / "vouched" / "c.db").start()
    stranger = ServerThread(tmp_path / "stranger" / "c.db", root=None).start()  # no root vouches for it
    try:
        for server, pinned, code, said in (
                (stranger, root_pub, "(credential_missing)", "không được gốc tin cậy bảo đảm"),
                (vouched, rogue_pub, "(credential_wrong_root)", "không do gốc tin cậy"),
                (vouched, root_pub, "(token_invalid)", "mã đăng ký")):
            token = server.token() if code != "(token_invalid)" else "tok_not-a-token-of-this-server"
            cases.append((["provision", "--server", server.url, "--token", token, "--trust-root", str(pinned),
                           "--state-dir", str(tmp_path / f"st-{code[1:-1]}")], code, said))
        for args, code, said in cases:
            r = run(*args)
            line = "\n".join(x for x in r.stderr.splitlines() if x.startswith("checkpoint: error: "))
            assert r.returncode in (1, 2) and code in line and said in line, (args, r.stdout, r.stderr)
            vietnamese_only(line, str(tmp_path), code, "cho-dong-ba", *(s.url for s in (vouched, stranger)))
    finally:
        vouched.stop()
        stranger.stop()


def _command_paths(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    ctx = click.Context(group, info_name=path[-1] if path else "checkpoint")
    out = [path]
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        out += _command_paths(command, (*path, name)) if isinstance(command, click.Group) else [(*path, name)]
    return out


def test_every_commands_help_is_vietnamese():
    """`-h` of every command and group, as a Vietnamese reader gets it: the description, each option's
    help and click's own words (Usage, Options, default) from the catalogue. The syntax is no words:
    the usage line, metavars (FILE, TEXT, DEVICE_ID), the values an option takes ([debug|info]) and
    its default value, as typed on the command line."""
    paths = _command_paths(main)
    assert len(paths) > 60
    # an option's names and metavar (the first column); then, lines joined, a metavar in a text, a default value
    column = re.compile(r"^  -\S.*?(?=\s{2,}|$)", re.M)
    syntax = re.compile(r"\b[A-Z][A-Z0-9_]+\b|(?<=mặc định: )[^;\]]+")

    def words_of(text: str) -> str:
        return syntax.sub(" ", " ".join(column.sub(" ", text).split()))
    for path in paths:
        said = main.help_in("vi", "checkpoint", list(path))
        body = re.sub(r"-\n\s+", "-", said.partition("\n\n")[2])  # the usage (syntax) is left out; wraps at a - undone
        assert said.startswith("Cách dùng: checkpoint") and "Tùy chọn:" in body, (path, said)
        vietnamese_only(words_of(_without_command_names(body)))
    # on the command line: Vietnamese by default, English with --lang en, a group without its command
    for args, first in ((["-h"], "Cách dùng: checkpoint [OPTIONS]"), (["server", "token", "create", "--help"],
                                                                       "Cách dùng: checkpoint server token create"),
                        (["verify", "--lang", "en", "-h"], "Usage: checkpoint verify")):
        r = run(*args)
        assert r.returncode == 0 and r.stdout.startswith(first), (args, r.stdout, r.stderr)
    bare = run("server")
    assert bare.returncode == 2 and bare.stderr.startswith("Cách dùng: checkpoint server") and "\\u000a" not in \
        bare.stderr, bare.stderr
    vietnamese_only(words_of(_without_command_names(bare.stderr.partition("\n\n")[2])))


def _without_command_names(help_: str) -> str:
    """A group's help less the names of its commands (the first word of each line of its list: syntax)."""
    head, sep, listed = help_.partition("Lệnh:\n")
    return head + sep + re.sub(r"^  \S+", "  ", listed, flags=re.M)


def test_every_sync_error_code_the_device_shows_has_words():
    """`sync status`, `sync now` and the status page say the last sync error by its code: every code of
    the protocol (sync/wire/protocol.py E_*) and every code the device's sync raises (sync/*.py) has
    the catalogue's words in both languages."""
    codes = {v for k, v in vars(protocol).items() if k.startswith("E_")}
    for path in (ROOT / "sync").glob("*.py"):
        codes |= set(re.findall(r'code="([a-z_]+)"', path.read_text(encoding="utf-8")))
    assert {"batch_malformed", "token_invalid", "builder_died", "network"} <= codes
    missing = sorted(c for c in codes if code_words(c) is None)
    assert not missing, missing
    for code in codes:
        said = code_words(code)
        assert said is not None and said("vi") != said("en") and not foreign(said("vi")), code
