"""The `checkpoint` command as a user runs it: real processes, real files, exit codes and output."""
from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from support.entries import bulk_fill

from scanner.cards import keys as keymod
from scanner.cards.bundle import open_bundle
from scanner.cards.trust import load_root
from scanner.store.entrylog import EntryLog


def run(*args: str, stdin: str | None = None, cwd: Path | None = None, env: dict | None = None):
    """Run `python -m scanner ARGS` and return the CompletedProcess (text mode)."""
    full_env = {**os.environ, "CHECKPOINT_LANG": "", **(env or {})}
    return subprocess.run([sys.executable, "-m", "scanner", *args], input=stdin, capture_output=True,
                          text=True, cwd=cwd, env=full_env, timeout=120, check=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Root, two issuers (Ed25519, ES256) and a bundle, all made with the CLI itself."""
    d = tmp_path_factory.mktemp("pki")
    for name, alg in (("root", "EdDSA"), ("hue", "EdDSA"), ("dng", "ES256"), ("rogue", "EdDSA")):
        r = run("issuer", "keygen", "--alg", alg, "--out", str(d / name))
        assert r.returncode == 0, r.stderr
    r = run("issuer", "bundle", "--root-key", str(d / "root.key"), "--key", f"VN-HUE={d / 'hue.pub'}",
            "--key", f"VN-DNG={d / 'dng.pub'}", "--formats", "CK1", "--version", "3", "-o", str(d / "bundle.json"))
    assert r.returncode == 0, r.stderr
    return d


def issue(pki: Path, key: str, issuer: str, *extra: str) -> dict:
    r = run("issuer", "issue", "--key", str(pki / f"{key}.key"), "--issuer", issuer,
            "--name", "Nguyễn Thị Hương", "--birth-date", "1990-05-17", "--json", *extra)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def verify(pki: Path, *args: str, stdin: str | None = None, bundle: str = "bundle.json"):
    return run("verify", "--trust", str(pki / bundle), "--trust-root", str(pki / "root.pub"), *args, stdin=stdin)


def test_keygen_writes_private_key_owner_only(pki):
    for name in ("root", "hue", "dng"):
        mode = stat.S_IMODE((pki / f"{name}.key").stat().st_mode)
        assert mode == 0o600, oct(mode)
        assert keymod.load_private_key(pki / f"{name}.key")


def test_keygen_refuses_to_overwrite(pki):
    r = run("issuer", "keygen", "--out", str(pki / "hue"))
    assert r.returncode == 2
    assert "--force" in r.stderr and "Traceback" not in r.stderr  # it exists: overwrite only when told


@pytest.mark.parametrize("key,issuer", [("hue", "VN-HUE"), ("dng", "VN-DNG")])
def test_verify_accepts_and_prints_contract_json(pki, key, issuer):
    card = issue(pki, key, issuer, "--id-masked", "*********123", "--status", "vaccinated")
    r = verify(pki, "--json", card["text"])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["decision"] == "accept" and out["reason"] == "ok" and out["format"] == "CK1"
    assert out["card_id"] == card["card_id"] and out["issuer"] == issuer and out["kid"] == card["kid"]
    assert out["holder"] == {"name": "Nguyễn Thị Hương", "birth_date": "1990-05-17",
                             "id_masked": "*********123", "status": "vaccinated", "last_dose": None}
    assert out["expires_at"] == card["expires_at"]
    assert r.stdout.count("\n") == 1


def test_verify_reads_stdin_and_rejects_with_exit_1(pki):
    card = issue(pki, "hue", "VN-HUE", "--issued-at", "2020-01-01", "--valid-days", "30")
    r = verify(pki, "--json", "-", stdin=card["text"] + "\n")
    assert r.returncode == 1
    assert json.loads(r.stdout)["reason"] == "expired"


def test_verify_at_a_given_time(pki):
    card = issue(pki, "hue", "VN-HUE", "--issued-at", "2020-01-01", "--valid-days", "30")
    assert verify(pki, "--at", "2020-01-15T12:00:00+07:00", card["text"]).returncode == 0
    assert verify(pki, "--at", "1580515200", card["text"]).returncode == 1  # 2020-02-01


def test_verify_human_line_in_vietnamese_and_english(pki):
    card = issue(pki, "hue", "VN-HUE")
    vi = verify(pki, card["text"])
    assert vi.returncode == 0
    assert "CHẤP NHẬN" in vi.stdout and "Nguyễn Thị Hương" in vi.stdout and "1990" in vi.stdout
    en = verify(pki, "--lang", "en", "unknown text")
    assert en.returncode == 1
    assert "REJECTED" in en.stdout and "unsupported_format" in en.stdout
    env = run("verify", "--trust", str(pki / "hue.pub"), "nope", env={"CHECKPOINT_LANG": "en"})
    assert "REJECTED" in env.stdout


def test_wrong_issuer_key_in_bundle_is_bad_signature(pki):
    card = issue(pki, "hue", "VN-DNG")  # signed by the Huế key but claims Đà Nẵng
    r = verify(pki, "--json", card["text"])
    assert r.returncode == 1 and json.loads(r.stdout)["reason"] == "bad_signature"


def test_unknown_key_and_loose_pem_trust(pki):
    card = issue(pki, "rogue", "XX")
    assert json.loads(verify(pki, "--json", card["text"]).stdout)["reason"] == "unknown_key"
    r = run("verify", "--json", "--trust", str(pki / "rogue.pub"), card["text"])
    assert r.returncode == 0 and json.loads(r.stdout)["issuer"] == "XX"


def test_revoke_makes_a_newer_bundle(pki, tmp_path):
    card = issue(pki, "dng", "VN-DNG")
    out = tmp_path / "b2.json"
    r = run("issuer", "revoke", "--bundle", str(pki / "bundle.json"), "--root-key", str(pki / "root.key"),
            "--card", card["card_id"], "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert verify(pki, card["text"]).returncode == 0
    r = run("verify", "--json", "--trust", str(out), "--trust-root", str(pki / "root.pub"), card["text"])
    assert r.returncode == 1 and json.loads(r.stdout)["reason"] == "revoked"
    assert open_bundle(out.read_bytes(), [load_root(pki / "root.pub")]).version == 4


def test_revoke_kid(pki, tmp_path):
    card = issue(pki, "hue", "VN-HUE")
    out = tmp_path / "b2.json"
    r = run("issuer", "revoke", "--bundle", str(pki / "bundle.json"), "--root-key", str(pki / "root.key"),
            "--kid", card["kid"], "-o", str(out))
    assert r.returncode == 0, r.stderr
    r = run("verify", "--json", "--trust", str(out), "--trust-root", str(pki / "root.pub"), card["text"])
    assert json.loads(r.stdout)["reason"] == "revoked"


@pytest.mark.parametrize("args,needle", [
    ((), "no trust"),
    (("--trust", "/nonexistent/bundle.json"), "No such file"),
    (("--trust", "{pki}/bundle.json"), "--trust-root"),
    (("--trust", "{pki}/bundle.json", "--trust-root", "{pki}/hue.pub"), "different root"),
    (("--trust", "{pki}/bundle.json", "--trust-root", "{pki}/root.key"), "private key"),
    (("--trust", "{pki}/hue.key"), "private key"),
    (("--trust", "{pki}/hue.pub", "--at", "yesterday"), "ISO 8601"),
])
def test_usage_errors_exit_2_with_one_line(pki, args, needle):
    r = run("verify", *[a.format(pki=pki) for a in args], "CK1:ABC", env={"CHECKPOINT_LANG": "en"})
    assert r.returncode == 2
    assert needle.lower() in r.stderr.lower() or (needle == "different root" and "does not trust" in r.stderr)
    assert "Traceback" not in r.stderr
    assert r.stdout == ""


def test_tampered_bundle_is_refused_with_exit_2(pki, tmp_path):
    r = run("issuer", "bundle", "--root-key", str(pki / "root.key"), "--key", f"VN-HUE={pki / 'hue.pub'}",
            "--version", "3", "--format", "1", "-o", str(tmp_path / "v1.json"))
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "v1.json").read_text())
    payload = base64.b64decode(doc["payload"]).replace(b'"version":3', b'"version":9')
    doc["payload"] = base64.b64encode(payload).decode()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    r = run("verify", "--trust", str(bad), "--trust-root", str(pki / "root.pub"), "CK1:ABC")
    assert r.returncode == 2 and "signature" in r.stderr and "Traceback" not in r.stderr


def test_control_characters_in_a_name_never_reach_the_terminal(pki):
    card = issue(pki, "hue", "VN-HUE")  # a normal card first, to have a key with a name
    r = run("issuer", "issue", "--key", str(pki / "hue.key"), "--issuer", "VN-HUE", "--name",
            "Evil\x1b[2J\u202eName\x9b", "--birth-date", "1990", "--json")
    assert r.returncode == 0, r.stderr
    text = json.loads(r.stdout)["text"]
    for args in ((), ("--json",)):
        out = verify(pki, *args, text)
        assert out.returncode == 0
        assert "\x1b" not in out.stdout and "\u202e" not in out.stdout and "\x9b" not in out.stdout
        assert "\\u001b" in out.stdout and "\\u202e" in out.stdout
    assert card["text"].startswith("CK1:")
    assert json.loads(verify(pki, "--json", text).stdout)["holder"]["name"] == "Evil\x1b[2J\u202eName\x9b"


def test_issue_refuses_an_invalid_card(pki):
    r = run("issuer", "issue", "--key", str(pki / "hue.key"), "--issuer", "VN-HUE", "--name", "A" * 81,
            "--birth-date", "1990")
    assert r.returncode == 2 and "80" in r.stderr
    r = run("issuer", "issue", "--key", str(pki / "hue.key"), "--issuer", "VN-HUE", "--name", "A",
            "--birth-date", "2021-02-30")
    assert r.returncode == 2 and "date" in r.stderr


@pytest.mark.parametrize("key,issuer", [("hue", "VN-HUE"), ("dng", "VN-DNG")])
def test_round_trip_issue_png_scan_image_verify(pki, tmp_path, key, issuer):
    """issuer → PNG → scan-image → verify, for both signature algorithms, through the CLI only."""
    png, svg = tmp_path / "card.png", tmp_path / "card.svg"
    card = issue(pki, key, issuer, "--png", str(png), "--svg", str(svg))
    r = run("scan-image", "--json", str(png))
    assert r.returncode == 0, r.stderr
    scanned = json.loads(r.stdout)
    assert scanned["file"] == str(png) and scanned["codes"] == [card["text"]] and scanned["ms"] >= 0
    r = verify(pki, "--json", "-", stdin=scanned["codes"][0])
    assert r.returncode == 0 and json.loads(r.stdout)["card_id"] == card["card_id"]
    assert "Nguyễn Thị Hương" in svg.read_text(encoding="utf-8")


def test_scan_image_reports_unreadable_files_and_goes_on(pki, tmp_path):
    png = tmp_path / "ok.png"
    issue(pki, "hue", "VN-HUE", "--png", str(png))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    r = run("scan-image", "--json", str(junk), str(tmp_path / "missing.png"), str(png))
    assert r.returncode == 2
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [bool(x.get("error")) for x in lines] == [True, True, False]
    assert lines[2]["codes"][0].startswith("CK1:")
    assert "Traceback" not in r.stderr


def test_scan_image_human_output(pki, tmp_path):
    png = tmp_path / "c.png"
    card = issue(pki, "hue", "VN-HUE", "--png", str(png))
    r = run("scan-image", str(png))
    assert r.returncode == 0 and r.stdout == f"{png}: {card['text']}\n"


def test_version_and_help():
    assert run("--version").stdout.startswith("checkpoint")
    r = run("--help")
    assert r.returncode == 0 and "verify" in r.stdout and "scan-image" in r.stdout


# ---------------------------------------------------------------- usage errors and pipes


def _checkpoint(*args: str, lang: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scanner", *args], capture_output=True, text=True, timeout=60,
                          check=False, env={**os.environ, "CHECKPOINT_LANG": lang})


@pytest.mark.parametrize("args, vi, en", [
    (("verify", "--nope"), "không có tùy chọn --nope", "no such option --nope"),
    (("log", "stats", "--lang", "xx"), "giá trị không hợp lệ cho '--lang'", "invalid value for '--lang'"),
    (("sync", "now", "--timeout"), "tùy chọn --timeout dùng sai", "option --timeout used wrongly"),
    (("nope",), "không có lệnh 'nope'", "no such command 'nope'"),
    (("scan-image",), "thiếu 'FILES...'", "missing 'FILES...'"),
])
def test_a_usage_error_is_one_translated_line(args, vi, en):
    for lang, want in (("vi", vi), ("en", en)):
        r = _checkpoint(*args, lang=lang)
        assert r.returncode == 2 and r.stdout == "", r
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("checkpoint: error: ") and want in lines[0], (lang, r.stderr)


def test_a_reader_that_goes_away_ends_the_output_quietly(tmp_path):
    """`checkpoint log export | head -n 1`: no "Broken pipe" error, as Unix tools do."""
    db = tmp_path / "entries.db"
    with EntryLog(db, device_id="dev-1", checkpoint_id="gate", sealing_key=None) as log:
        bulk_fill(log, 3000)
    p = subprocess.Popen([sys.executable, "-m", "scanner", "log", "export", "--db", str(db)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = p.stdout.readline()
    p.stdout.close()  # as head does after its line
    err = p.stderr.read().decode()
    p.wait(timeout=60)
    assert first.startswith(b"{") and err == "" and p.returncode == 1, (p.returncode, err)


# ---------------------------------------------------------------- verify --image


def test_verify_reads_the_card_from_a_picture(pki, tmp_path):
    """The pilot's last step without a pipe: a picture whose name has spaces, two pictures at once
    (one line each, named), and a picture without a QR code (one clear line, exit 2)."""
    good = tmp_path / "thẻ của An.png"
    run("issuer", "issue", "--key", str(pki / "hue.key"), "--issuer", "VN-HUE", "--name", "Nguyễn Văn An",
        "--birth-date", "1985-03-02", "--png", str(good))
    forged = tmp_path / "forged card.png"
    run("issuer", "issue", "--key", str(pki / "rogue.key"), "--issuer", "VN-HUE", "--name", "Nguyễn Văn An",
        "--birth-date", "1985-03-02", "--png", str(forged))
    blank = tmp_path / "no code.png"
    cv2.imwrite(str(blank), np.full((200, 200), 255, np.uint8))
    one = verify(pki, "--image", str(good), "--lang", "en")
    assert one.returncode == 0 and one.stdout.startswith("✔ ACCEPTED") and "Nguyễn Văn An" in one.stdout, one
    two = verify(pki, "--image", str(good), "--image", str(forged), "--lang", "en")
    lines = two.stdout.splitlines()
    assert two.returncode == 1 and len(lines) == 2, two
    assert lines[0].startswith(f"{good}: ✔ ACCEPTED") and lines[1].startswith(f"{forged}: ✘ REJECTED"), lines
    none = verify(pki, "--image", str(blank), "--lang", "en")
    assert none.returncode == 2 and none.stdout == "", none
    assert none.stderr.splitlines() == [f"checkpoint: error: {blank}: no QR code found"], none.stderr
    j = json.loads(verify(pki, "--image", str(good), "--json").stdout)
    assert j["decision"] == "accept" and j["image"] == str(good)
