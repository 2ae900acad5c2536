"""`checkpoint verify` with SMART Health Cards: JWKS and CRL trust files, multi-part cards as several
TEXT arguments or stdin lines (any order), real processes and exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from scanner.cards import jwks
from scanner.cards.formats import shc

AT = "1750000000"
NBF = 1_749_900_000
ISS = "https://health.example.vn/issuer"


def run(*args, stdin=None, lang=""):
    env = {**os.environ, "CHECKPOINT_LANG": lang}
    return subprocess.run([sys.executable, "-m", "scanner", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=120, check=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("shc")
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = jwks.jwk_of(key.public_key())
    (d / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    rogue = jwks.jwk_of(ec.generate_private_key(ec.SECP256R1()).public_key())
    (d / "mixed.json").write_text(json.dumps({"keys": [jwk, {**rogue, "kid": "nope"}]}))
    (d / "bad.json").write_text(json.dumps({"keys": [{**rogue, "kid": "nope"}]}))
    (d / "crl.json").write_text(json.dumps({"kid": jwk["kid"], "method": "rid", "ctr": 1, "rids": ["gone"]}))

    def card(**kw):
        payload = {"iss": ISS, "nbf": NBF, "vc": {
            "type": ["https://smarthealth.cards#health-card"],
            "credentialSubject": {"fhirVersion": "4.0.1", "fhirBundle": {
                "resourceType": "Bundle", "type": "collection", "entry": [
                    {"fullUrl": "resource:0", "resource": {"resourceType": "Patient", "birthDate": "1990-05-17",
                                                           "name": [{"family": "Trần", "given": ["Bình"]}]}},
                    {"fullUrl": "resource:1", "resource": {"resourceType": "Immunization",
                                                           "occurrenceDateTime": "2021-04-05"}}]}}}}
        payload["vc"].update(kw)
        return shc.sign_jws(payload, key, jwk["kid"])
    return d, card


def verify(d, *args, stdin=None, trust=("jwks.json",), lang=""):
    trust_args = [a for t in trust for a in ("--trust", str(d / t))]
    return run("verify", *trust_args, "--at", AT, *args, stdin=stdin, lang=lang)


def test_single_card_as_argument_and_stdin(world):
    d, card = world
    text = shc.qr_texts(card())[0]
    r = verify(d, "--json", text)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["format"] == "SHC" and out["issuer"] == ISS and out["expires_at"] is None
    assert out["holder"]["name"] == "Bình Trần" and out["cert_type"] == "vaccination"
    r = verify(d, stdin=" \t" + text + "\r\n")  # a reader's line ending and stray blanks
    assert r.returncode == 0 and "không có hạn dùng" in r.stdout and "Bình Trần" in r.stdout
    assert "chứng nhận tiêm chủng" in r.stdout


def test_parts_as_arguments_in_any_order(world):
    d, card = world
    parts = shc.qr_texts(card(), 3)
    r = verify(d, "--json", parts[2], parts[0], parts[1])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["reason"] == "ok"
    r = verify(d, "--json", parts[1])
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out["reason"] == "malformed" and "part 2 of 3" in out["detail"]
    r = verify(d, "--json", parts[0], parts[1])
    assert r.returncode == 1 and "missing" in json.loads(r.stdout)["detail"]


def test_parts_as_stdin_lines(world):
    d, card = world
    parts = shc.qr_texts(card(), 2)
    r = verify(d, "--json", "-", stdin=f"{parts[1]}\r\n\n{parts[0]}\n")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["format"] == "SHC"


def test_usage_errors(world):
    d, card = world
    parts = shc.qr_texts(card(), 2)
    r = verify(d, parts[0], "-")
    assert r.returncode == 2 and r.stderr.startswith("checkpoint: error:") and r.stderr.count("\n") == 1
    r = verify(d, "CK1:ABC", parts[0], lang="en")
    assert r.returncode == 2 and "multi-part" in r.stderr
    r = verify(d, shc.qr_texts(card())[0], trust=("bad.json",), lang="en")
    assert r.returncode == 2 and "thumbprint" in r.stderr and r.stderr.count("\n") == 1


def test_a_bad_key_in_a_jwks_is_ignored_with_a_warning(world):
    d, card = world
    r = verify(d, "--json", shc.qr_texts(card())[0], trust=("mixed.json",))
    assert r.returncode == 0
    assert r.stderr.startswith("checkpoint: warning:") and "key ignored" in r.stderr


def test_revocation_list_file(world):
    d, card = world
    text = shc.qr_texts(card(rid="gone"))[0]
    assert verify(d, text).returncode == 0
    r = verify(d, "--json", text, trust=("jwks.json", "crl.json"))
    assert r.returncode == 1 and json.loads(r.stdout)["reason"] == "revoked"
