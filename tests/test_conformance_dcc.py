"""EU DCC conformance: every case of ../shared/testdata/dcc (the EU's public DCC test data).

Each case is verified with its own Document Signer Certificate (loaded from a DER or PEM file, as
`checkpoint verify --trust` does) at its VALIDATIONCLOCK, and the verdict is checked against
EXPECTEDRESULTS as the data's README maps them; the decoding stages the case scores (base45,
zlib) are checked on their own, so a rejection for the wrong reason does not pass; each QR
picture (2DCODE) is decoded and must give exactly PREFIX. Cases whose expectations are wrong
upstream are listed in KNOWN_DATA_FAULTS with the reason, and are checked to fail exactly that way
(docs/health-certificates.md#conformance).
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from functools import cache
from pathlib import Path

import cbor2
import pytest
from support.paths import TESTDATA

from hardware.decode import make_decoder, scan_file
from scanner.base.errors import CardRejected, Reason
from scanner.cards import base45
from scanner.cards.formats import hc1
from scanner.cards.trust import load_trust
from scanner.cards.verifier import verify
from scanner.cli.common import parse_time

DCC = TESTDATA / "dcc"
if not DCC.is_dir():
    pytest.skip(f"EU DCC test data not found at {DCC} (../shared/testdata/dcc)", allow_module_level=True)

CASES = sorted(str(p.relative_to(DCC)) for p in DCC.rglob("*.json"))
OK = {Reason.OK}
TIMES = {Reason.EXPIRED, Reason.NOT_YET_VALID}

# Expectations that are wrong upstream: our verdict (checked) and why the data, not we, are wrong.
KNOWN_DATA_FAULTS = {
    "IS/2DCode/raw/3.json": (
        Reason.OK, ("EXPECTEDKEYUSAGE is false, but the DSC names none of the DCC key-usage OIDs, "
                   "so by the hcert rule it may sign every type; the signature and dates are valid")),
    "LI/2DCode/raw/4.json": (
        Reason.BAD_SIGNATURE, ("EXPECTEDVERIFY/EXPIRATIONCHECK are true (so: accept), but the DSC's "
                              "extended key usage allows vaccinations only and the certificate is a test")),
}


def load(case: str) -> dict:
    return json.loads((DCC / case).read_text(encoding="utf-8"))


def expected_reasons(exp: dict) -> set[Reason] | None:
    """The verdicts the README allows for a case's EXPECTEDRESULTS (None: verification not scored)."""
    if exp.get("EXPECTEDUNPREFIX") is False:
        return {Reason.MALFORMED, Reason.UNSUPPORTED_FORMAT}
    if False in (exp.get("EXPECTEDB45DECODE"), exp.get("EXPECTEDCOMPRESSION"), exp.get("EXPECTEDDECODE")):
        return {Reason.MALFORMED}
    if exp.get("EXPECTEDVERIFY") is False:  # malformed only for a broken envelope: see check()
        return {Reason.BAD_SIGNATURE, Reason.UNKNOWN_KEY, Reason.MALFORMED}
    if exp.get("EXPECTEDKEYUSAGE") is False:
        return {Reason.BAD_SIGNATURE, Reason.UNKNOWN_KEY}
    if exp.get("EXPECTEDEXPIRATIONCHECK") is False:
        return TIMES
    if True in (exp.get("EXPECTEDVERIFY"), exp.get("EXPECTEDKEYUSAGE")):
        return OK if exp.get("EXPECTEDEXPIRATIONCHECK") is True else OK | TIMES
    return None


@pytest.fixture(scope="module")
def trust_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("dsc")


@cache
def _verdict(case: str, trust_dir: Path):
    data = load(case)
    return verify(data["PREFIX"], store_for(case, trust_dir), parse_time(data["TESTCTX"]["VALIDATIONCLOCK"]))


def store_for(case: str, trust_dir: Path):
    """The case's DSC as `checkpoint verify --trust` loads it (half the cases as PEM, half as DER)."""
    ctx = load(case).get("TESTCTX", {})
    paths = []
    cert = ctx.get("CERTIFICATE")
    if cert:
        der = base64.b64decode(cert)
        name = case.replace("/", "_")
        if len(CASES) and CASES.index(case) % 2:  # half the DSCs as PEM, half as DER
            path = trust_dir / (name + ".pem")
            path.write_bytes(b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der)
                             + b"-----END CERTIFICATE-----\n")
        else:
            path = trust_dir / (name + ".der")
            path.write_bytes(der)
        paths.append(path)
    return load_trust(paths)


def is_cose_sign1(cose_hex: str) -> bool:
    """The case's COSE bytes are a well-formed COSE_Sign1 (read with cbor2, not our decoder)."""
    try:
        msg = cbor2.loads(bytes.fromhex(cose_hex))
        while isinstance(msg, cbor2.CBORTag):  # CWT tag 61, COSE_Sign1 tag 18
            msg = msg.value
        protected, unprotected, payload, signature = msg
        header = cbor2.loads(protected) if protected else {}
    except (ValueError, TypeError, cbor2.CBORDecodeError):
        return False
    return (isinstance(header, Mapping) and isinstance(unprotected, Mapping)
            and all(isinstance(x, bytes) for x in (protected, payload, signature)))


def check(case: str, trust_dir: Path) -> tuple[bool, str]:
    """(passed, why) for one case: the verdict is one the expectations allow. A case that must not
    verify may be `malformed` only if its envelope really is broken (the README's rule)."""
    v = _verdict(case, trust_dir)
    if v.detail == "internal error while verifying":
        return False, "internal error"
    data = load(case)
    exp = data.get("EXPECTEDRESULTS", {})
    allowed = expected_reasons(exp)
    if exp.get("EXPECTEDVERIFY") is False and allowed is not None and is_cose_sign1(data.get("COSE", "")):
        allowed = allowed - {Reason.MALFORMED}
    if allowed is None or v.reason in allowed:
        return True, ""
    return False, f"{v.reason} ({v.detail}); expected one of {sorted(map(str, allowed))}"


@pytest.mark.parametrize("case", CASES)
def test_case(case, trust_dir):
    passed, why = check(case, trust_dir)
    if case in KNOWN_DATA_FAULTS:
        reason, _ = KNOWN_DATA_FAULTS[case]
        assert not passed and _verdict(case, trust_dir).reason is reason, "known data fault changed"
    else:
        assert passed, why


def test_pass_count(trust_dir):
    """The figures in docs/health-certificates.md#conformance."""
    results = {case: check(case, trust_dir)[0] for case in CASES}
    failed = sorted(c for c, ok in results.items() if not ok)
    assert len(CASES) == 290
    assert failed == sorted(KNOWN_DATA_FAULTS)
    assert sum(results.values()) == 288
    scored = [c for c in CASES if expected_reasons(load(c).get("EXPECTEDRESULTS", {})) is not None]
    assert len(scored) == 286  # the rest test only the schema or the picture


STAGED = [c for c in CASES if {"EXPECTEDB45DECODE", "EXPECTEDCOMPRESSION"} & set(load(c)["EXPECTEDRESULTS"])]


@pytest.mark.parametrize("case", STAGED)
def test_decoding_stages(case):
    """EXPECTEDB45DECODE: BASE45 decodes to COMPRESSED, or fails; EXPECTEDCOMPRESSION: the QR text
    inflates to COSE (hc1.unwrap, which also drops a CWT tag 61), or is refused at that stage."""
    data = load(case)
    exp = data["EXPECTEDRESULTS"]
    if exp.get("EXPECTEDB45DECODE") is False:
        with pytest.raises(base45.Base45Error):
            base45.decode(data["BASE45"])
    elif exp.get("EXPECTEDB45DECODE") is True and "COMPRESSED" in data:
        assert base45.decode(data["BASE45"]) == bytes.fromhex(data["COMPRESSED"])
    if exp.get("EXPECTEDCOMPRESSION") is False:
        base45.decode(data["PREFIX"][len(hc1.PREFIX):])  # decodes: what fails is the compression
        with pytest.raises(CardRejected) as info:
            hc1.unwrap(data["PREFIX"])
        assert info.value.reason is Reason.MALFORMED
    elif exp.get("EXPECTEDCOMPRESSION") is True and "COSE" in data:
        assert hc1.unwrap(data["PREFIX"]) == bytes.fromhex(data["COSE"]).removeprefix(hc1.CWT_TAG)


@pytest.mark.parametrize("case", ["common/2DCode/raw/CO3.json", "CH/2DCode/raw/1.json", "SK/2DCode/raw/1.json"])
def test_a_genuine_certificate_without_zlib_is_malformed(case, trust_dir):
    """A valid case's own signed COSE bytes, base45-encoded without the ZLIB step that hcert
    requires: refused as malformed, though the signature is good."""
    data = load(case)
    assert _verdict(case, trust_dir).reason is Reason.OK
    text = hc1.PREFIX + base45.encode(bytes.fromhex(data["COSE"]))
    v = verify(text, store_for(case, trust_dir), parse_time(data["TESTCTX"]["VALIDATIONCLOCK"]))
    assert v.reason is Reason.MALFORMED and "zlib" in v.detail.lower(), v


def test_staged_count():
    assert len(STAGED) == 269  # docs/health-certificates.md#conformance


def test_every_validation_clock_parses():
    for case in CASES:
        assert isinstance(parse_time(load(case)["TESTCTX"]["VALIDATIONCLOCK"]), int)


PICTURES = [c for c in CASES if "2DCODE" in load(c)]


def test_picture_count():
    assert len(PICTURES) == 249  # docs/health-certificates.md#conformance


@pytest.fixture(scope="module")
def decoder():
    return make_decoder("auto")


@pytest.mark.parametrize("case", PICTURES)
def test_picture_decodes_to_the_prefix(case, decoder, tmp_path):
    data = load(case)
    try:
        png = base64.b64decode(data["2DCODE"], validate=True)
    except (binascii.Error, ValueError):
        png = data["2DCODE"].encode()
    path = tmp_path / "qr.png"
    path.write_bytes(png)
    result = scan_file(path, decoder)
    if data["EXPECTEDRESULTS"].get("EXPECTEDPICTUREDECODE") is False:
        assert result.codes == ()  # common/Q1: not a picture of a code at all; no crash
    else:
        assert result.codes == (data["PREFIX"],), result


# ------------------------------------------------------------------ the same through the CLI

CLI_CASES = {
    "FI/2DCode/raw/1.json": ("accept", "ok"),  # a DSC cryptography cannot fully read
    "CH/2DCode/raw/1.json": ("accept", "ok"),  # PS256, RSA 2048
    "common/2DCode/raw/CO5.json": ("reject", "bad_signature"),
    "common/2DCode/raw/CO17.json": ("reject", "expired"),
    "common/2DCode/raw/CO8.json": ("reject", "bad_signature"),  # vaccination-only DSC signed a test
    "common/2DCode/raw/H1.json": ("reject", "unsupported_format"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli(case, tmp_path):
    data = load(case)
    (tmp_path / "dsc.der").write_bytes(base64.b64decode(data["TESTCTX"]["CERTIFICATE"]))
    env = {**os.environ, "CHECKPOINT_LANG": ""}
    r = subprocess.run([sys.executable, "-m", "scanner", "verify", "--trust", str(tmp_path / "dsc.der"),
                        "--at", data["TESTCTX"]["VALIDATIONCLOCK"], "--json", "-"],
                       input=data["PREFIX"] + "\n", capture_output=True, text=True, env=env, timeout=120, check=False)
    assert r.returncode in (0, 1), r.stderr
    out = json.loads(r.stdout)
    assert (out["decision"], out["reason"]) == CLI_CASES[case], out
    assert r.returncode == (0 if out["decision"] == "accept" else 1)
