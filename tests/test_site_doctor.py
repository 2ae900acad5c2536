"""`checkpoint doctor` for a gate of a site: without the running daemon it checks the gate's site
credential (a pinned root, this site, this device's key, in date) and says what is wrong with a
stable reason code; the site line, with the daemon's peers or without, reads in Vietnamese and in
English from the catalogue."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from support.config import standalone, write_config
from support.paths import ROOT
from support.pki import make_pki
from support.waiting import WAIT
from support.words import foreign

from scanner.appliance import doctor
from scanner.appliance.config import load
from scanner.base import i18n
from scanner.cards import keys
from sync.site import credential as sitecred
from sync.wire import identity

SITE = "cho-dong-ba"


@pytest.fixture
def gate(tmp_path, root_key):
    """A gate's config with [site], its device key and a good site credential; returns a function
    that writes another credential in its place."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    key, _ = identity.load_or_create(state)
    root_pem = tmp_path / "root.pem"
    root_pem.write_bytes(keys.public_pem(root_key.public_key()))
    secret = tmp_path / "site.secret"
    secret.write_bytes(b"0123456789abcdef0123456789abcdef")
    lines = tmp_path / "lines.txt"
    lines.write_text("")
    tables = standalone(state, make_pki(tmp_path / "pki"), stdin=[{"path": str(lines)}],
                        site={"site_id": SITE, "secret_file": str(secret), "listen": "127.0.0.1:0",
                              "discovery": False})
    tables["trust"]["roots"] = [str(root_pem)]
    config = write_config(tmp_path / "c.toml", tables)

    own = key.public_key()

    def credential(root=root_key, device_key=own, site_id=SITE, **times) -> None:
        times.setdefault("issued_at", int(time.time()) - 60)
        (state / sitecred.FILE_NAME).write_bytes(sitecred.issue(root, site_id=site_id, device_key=device_key,
                                                                **times))
    credential()
    return config, credential


def site_check(config) -> doctor.Check:
    check = doctor.check_site(load(config), None)
    assert check is not None
    return check


def test_without_the_daemon_the_site_credential_is_checked(gate, other_root_key, root_key):
    config, credential = gate
    good = site_check(config)
    assert good.status == "pass" and good.detail_in("en").startswith(f"gate of site {SITE}: site credential serial 1")
    now = int(time.time())
    cases = {
        "site_credential_expired": dict(issued_at=now - 7200, expires_at=now - 60),
        "site_credential_not_yet_valid": dict(issued_at=now + 3600),
        "site_credential_wrong_root": dict(root=other_root_key),
        "site_credential_wrong_device": dict(device_key=root_key.public_key()),
        "site_credential_wrong_site": dict(site_id="another-market"),
    }
    for code, how in cases.items():
        credential(**how)
        check = site_check(config)
        assert check.status == "fail" and f"({code})" in check.detail_in("en"), (code, check.detail_in("en"))
        assert f"({code})" in check.detail_in("vi") and "issuer site-credential" in check.fix_in("en"), code
        # what is wrong, in the reader's words: the code's own, never the English detail
        vi = check.detail_in("vi")
        assert i18n.t(f"error.{code}", "vi") in vi and not foreign(vi, [SITE, f"({code})"]), vi
        assert i18n.t(f"error.{code}", "en") in check.detail_in("en"), check.detail_in("en")
    (config.parent / "state" / sitecred.FILE_NAME).unlink()
    missing = site_check(config)
    assert "(site_credential_missing)" in missing.detail_in("en") and not foreign(missing.detail_in("vi"), [
        SITE, "(site_credential_missing)", "`checkpoint issuer site-credential`"]), missing.detail_in("vi")

    # the command itself, in both languages
    credential(issued_at=now - 7200, expires_at=now - 60)
    for lang in ("en", "vi"):
        r = subprocess.run([sys.executable, "-m", "scanner", "doctor", "--local", "--json", "--config", str(config)],
                           capture_output=True, text=True, cwd=ROOT, timeout=WAIT, check=False,
                           env={**os.environ, "CHECKPOINT_LANG": lang})
        assert "Traceback" not in r.stderr and r.returncode == 1, r.stderr
        check = next(c for c in json.loads(r.stdout)["checks"] if c["name"] == "site")
        assert check["status"] == "fail" and "site_credential_expired" in check["detail"]
        vi = check["texts"]["vi"]
        assert not foreign(vi["detail"] + " " + vi["fix"], [SITE, "site_credential_expired", "STATE"]), vi


def test_the_live_site_line_reads_in_both_languages(gate):
    config, _ = gate
    now = time.time() * 1000
    summary = {"site_id": SITE, "isolated": True, "when_isolated": "open", "occupancy": 3, "capacity": 250,
               "peers": [{"device_id": "dev-b", "address": "10.0.0.2:7410", "last_kind": "have",
                          "last_heard_ms": now - 9000, "skew_ms": 120, "alive": False},
                         {"device_id": "dev-c", "address": "10.0.0.3:7410", "last_kind": "events",
                          "last_heard_ms": now - 1000, "skew_ms": -40, "alive": True}]}
    check = doctor.check_site(load(config), summary)
    assert check is not None and check.status == "warn"
    en = check.detail_in("en")
    assert en.startswith(f"isolated (entries open): site {SITE}: 1/2 peers heard; occupancy 3/250; dev-b at ")
    assert "last have 9 s ago, clock +0.12 s (lost)" in en and "last events 1 s ago, clock -0.04 s" in en
    vi = check.detail_in("vi") + " " + check.fix_in("vi")
    assert "mất liên lạc" in vi and not foreign(vi, [SITE, "dev-b", "dev-c", "have", "events", "open", "site_id"]), vi
