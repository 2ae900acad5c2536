"""SMART Health Cards conformance: every case of ../shared/testdata/shc/cases.json (the framework
validator's test cards), and cards generated here from the framework's published example private
key: single, multi-part, expired, and revoked through the example revocation list crl-3Kfdg.json
(docs/health-certificates.md#conformance)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from support.paths import TESTDATA

from hardware.decode import make_decoder, scan_file
from scanner.base.errors import KeyFileError, Reason
from scanner.cards import jwks
from scanner.cards.formats import shc
from scanner.cards.trust import load_trust
from scanner.cards.verifier import verify
from scanner.cli.common import parse_time

SHC = TESTDATA / "shc"
if not (SHC / "cases.json").is_file():
    pytest.skip(f"SMART Health Cards test data not found at {SHC} (../shared/testdata/shc)",
                allow_module_level=True)

SPEC = json.loads((SHC / "cases.json").read_text())
CLOCK = parse_time(SPEC["clock"])
CASES = {c["id"]: c for c in SPEC["cases"]}
VERDICT_CASES = sorted(i for i, c in CASES.items() if "expect" in c)


@pytest.fixture(scope="module")
def store():
    return load_trust([SHC / p for p in SPEC["trust"]])


def read(name: str) -> str:
    return (SHC / name).read_text(encoding="utf-8")


def verdict_of(case: dict, store):
    kind = case["input"]
    if kind == "qr":
        return verify(read(case["file"]), store, CLOCK)
    if kind == "qr-parts":
        return shc.verify_parts([read(f) for f in case["files"]], store, CLOCK)
    if kind == "jws":
        return verify("shc:/" + shc.jws_to_numeric(read(case["file"]).strip()), store, CLOCK)
    if kind == "image":
        codes = scan_file(SHC / case["file"], make_decoder("auto")).codes
        assert len(codes) == 1 and codes[0].startswith("shc:/"), codes
        return verify(codes[0], store, CLOCK)
    raise AssertionError(kind)


def passes(case: dict, store) -> bool:
    v = verdict_of(case, store)
    return (str(v.decision) == case["expect"]["decision"] and str(v.reason) in case["expect"]["reasons"]) \
        or (case["expect"]["decision"] == "either" and str(v.reason) in case["expect"]["reasons"])


@pytest.mark.parametrize("case_id", VERDICT_CASES)
def test_case(case_id, store):
    case = CASES[case_id]
    v = verdict_of(case, store)
    assert v.detail != "internal error while verifying"
    assert str(v.reason) in case["expect"]["reasons"], (v.reason, v.detail)
    if case["expect"]["decision"] != "either":
        assert str(v.decision) == case["expect"]["decision"]


def test_pass_count(store):
    """The figures in docs/health-certificates.md#conformance: every verdict case passes."""
    assert len(VERDICT_CASES) == 17
    assert sum(CASES[i]["expect"]["decision"] != "either" for i in VERDICT_CASES) == 14
    assert sum(passes(CASES[i], store) for i in VERDICT_CASES) == 17


def test_each_part_alone_asks_for_the_next(store):
    files = CASES["two-chunks"]["files"]
    asm = shc.ChunkAssembler(hold_seconds=60)
    for i, name in enumerate(reversed(files)):
        v = verify(read(name), store, CLOCK)
        assert v.reason is Reason.MALFORMED and "scan the other parts" in v.detail
        progress = asm.add(read(name), 10.0 + i)
    assert progress.complete
    assert shc.verify_parts(list(progress.parts), store, CLOCK).accepted


def test_the_kid_of_another_issuer_verifies_with_its_jwks():
    other = load_trust([SHC / "dev-tools" / "issuer.jwks.public.not.smart.json"])
    text = "shc:/" + shc.jws_to_numeric(read(CASES["kid-of-another-issuer"]["file"]).strip())
    assert verify(text, other, CLOCK).accepted


def test_corrupted_picture_has_no_code():
    assert scan_file(SHC / CASES["image-corrupted"]["file"], make_decoder("auto")).codes == ()


@pytest.mark.parametrize("case_id", sorted(i for i, c in CASES.items() if c["input"] == "trust-file"))
def test_trust_files(case_id):
    case = CASES[case_id]
    if case["usable"]:
        assert load_trust([SHC / case["file"]]).key_count == 1
    else:
        with pytest.raises(KeyFileError):
            load_trust([SHC / case["file"]])
        r = subprocess.run([sys.executable, "-m", "scanner", "verify", "--trust", str(SHC / case["file"]),
                            "shc:/00"], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "CHECKPOINT_LANG": ""}, check=False)
        assert r.returncode == 2 and r.stderr.count("\n") == 1


# ------------------------------------------------------------------ cards made with the example key

@pytest.fixture(scope="module")
def example_key():
    """The framework's published example signing key (test data only) and its public JWK."""
    private = json.loads(read("issuer-jwks-private-example.json"))
    jwk = next(k for k in private["keys"] if k["kid"].startswith("3Kfdg"))
    d = int.from_bytes(jwks.b64url_decode(jwk["d"]), "big")
    key = ec.derive_private_key(d, ec.SECP256R1())
    public = {k: v for k, v in jwk.items() if k != "d"}
    assert jwks.jwk_of(key.public_key())["kid"] == public["kid"]
    return key, public["kid"]


def example_card(key_kid, *, nbf, rid=None, exp=None) -> str:
    key, kid = key_kid
    vc = {"type": ["https://smarthealth.cards#health-card", "https://smarthealth.cards#immunization"],
          "credentialSubject": {"fhirVersion": "4.0.1", "fhirBundle": {
              "resourceType": "Bundle", "type": "collection", "entry": [
                  {"fullUrl": "resource:0", "resource": {"resourceType": "Patient",
                                                         "name": [{"family": "Anyperson", "given": ["Jane", "C."]}],
                                                         "birthDate": "1961-01-20"}},
                  {"fullUrl": "resource:1", "resource": {"resourceType": "Immunization", "status": "completed",
                                                         "vaccineCode": {"coding": [{"code": "207", "system":
                                                                                     "http://hl7.org/fhir/sid/cvx"}]},
                                                         "patient": {"reference": "resource:0"},
                                                         "occurrenceDateTime": "2021-01-01"}}]}}}
    if rid is not None:
        vc["rid"] = rid
    claims = {"iss": "https://spec.smarthealth.cards/examples/issuer", "nbf": nbf, "vc": vc}
    if exp is not None:
        claims["exp"] = exp
    return shc.sign_jws(claims, key, kid)


REVOKED_AT = 1664492124  # crl-3Kfdg.json: "vwAjHdarZuc.1664492124", "XkNHp2Iyk0Y.1664492124"


@pytest.mark.parametrize("rid, nbf, expected", [
    (None, REVOKED_AT - 10, Reason.OK),
    ("NotOnTheList", REVOKED_AT - 10, Reason.OK),
    ("FKDIxsTCGlU", REVOKED_AT + 10 ** 6, Reason.REVOKED),  # revoked outright
    ("TqB_qu_6OtM", REVOKED_AT - 10, Reason.REVOKED),
    ("vwAjHdarZuc", REVOKED_AT - 10, Reason.REVOKED),  # issued before the revocation time
    ("vwAjHdarZuc", REVOKED_AT, Reason.OK),  # issued at or after it: a reissued card
    ("XkNHp2Iyk0Y", REVOKED_AT - 0.5, Reason.REVOKED),
])
def test_generated_cards_and_the_revocation_list(example_key, rid, nbf, expected):
    store = load_trust([SHC / "issuer-jwks.json", SHC / "crl-3Kfdg.json"])
    text = shc.qr_texts(example_card(example_key, nbf=nbf, rid=rid))[0]
    assert verify(text, store, CLOCK).reason is expected
    plain = load_trust([SHC / "issuer-jwks.json"])  # without the list nothing is revoked
    assert verify(text, plain, CLOCK).reason is Reason.OK


def test_generated_multi_part_and_expired_cards(example_key, store):
    jws = example_card(example_key, nbf=CLOCK - 86_400)
    parts = shc.qr_texts(jws, 3)
    assert all(len(p) <= 4296 for p in parts)
    assert shc.verify_parts([parts[1], parts[2], parts[0]], store, CLOCK).accepted
    r = subprocess.run([sys.executable, "-m", "scanner", "verify", "--trust", str(SHC / "issuer-jwks.json"),
                        "--at", SPEC["clock"], "--json", parts[2], parts[0], parts[1]],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "CHECKPOINT_LANG": ""},
                       check=False)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["holder"]["name"] == "Jane C. Anyperson"
    expired = shc.qr_texts(example_card(example_key, nbf=CLOCK - 86_400, exp=CLOCK - 3600))[0]
    assert verify(expired, store, CLOCK).reason is Reason.EXPIRED
