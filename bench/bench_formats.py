"""µs per full verify of health certificates (EU DCC "HC1:" ES256 and PS256, SMART Health Cards
"shc:/") against the raw signature check of the same bytes, measured in the same rounds."""
from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from scanner.cards import cose, jwks, verifier, x509util
from scanner.cards import keys as keymod
from scanner.cards.bundle import BundleKey
from scanner.cards.formats import hc1, shc
from scanner.cards.trust import TrustStore, load_trust

from . import fixtures
from .timing import interleaved, median, quartiles, ratios, table, us

DAY = 86_400
VACC_OID = "1.3.6.1.4.1.1847.2021.1.2"
SHC_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "shc"
DCC = {  # a realistic vaccination certificate, as a member state issues it
    "ver": "1.3.0", "dob": "1987-03-15",
    "nam": {"fn": "Nguyễn", "fnt": "NGUYEN", "gn": "Thị Thanh Hương", "gnt": "THI<THANH<HUONG"},
    "v": [{"tg": "840539006", "vp": "1119349007", "mp": "EU/1/20/1528", "ma": "ORG-100030215", "dn": 2,
           "sd": 2, "dt": "2021-11-20", "co": "VN", "is": "Bộ Y tế",
           "ci": "URN:UVCI:01:VN:8E2F1C0A9B7D4E3F#K"}],
}
ECDSA = ec.ECDSA(hashes.SHA256())
PSS32 = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def _raw_ecdsa(pub, message: bytes, sig: bytes):
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    return lambda: pub.verify(der, message, ECDSA)


def _hc1_case(key, at: int):
    der = x509util.make_dsc(key, country="VN", not_before=at - 365 * DAY, not_after=at + 365 * DAY,
                            key_usages=(VACC_OID,))
    info = x509util.read_certificate(der)
    trust = TrustStore.build([BundleKey(x509util.hc1_kid(der), keymod.alg_of(info.public_key), "VN",
                                        info.public_key, frozenset({"HC1"}), None, der)])
    alg = cose.ALG_PS256 if isinstance(key, rsa.RSAPrivateKey) else cose.ALG_ES256
    text = hc1.issue(DCC, key, kid=x509util.hc1_kid(der), issuer="VN", issued_at=at - 30 * DAY,
                     expires_at=at + 335 * DAY, alg=alg)
    verdict = verifier.verify(text, trust, at)
    if not verdict.accepted:
        raise SystemExit(f"bench fixture broken: HC1 card not accepted: {verdict}")
    msg = cose.parse_sign1(hc1.unwrap(text))
    tbs = msg.to_be_signed()
    pub = key.public_key()
    if alg == cose.ALG_ES256:
        raw = _raw_ecdsa(pub, tbs, msg.signature)
    else:
        raw = lambda: pub.verify(msg.signature, tbs, PSS32, hashes.SHA256())  # noqa: E731
    return text, trust, raw


def _shc_claims(at: int) -> dict:
    entries = [{"fullUrl": "resource:0", "resource": {
        "resourceType": "Patient", "name": [{"family": "Nguyễn", "given": ["Thị", "Thanh", "Hương"]}],
        "birthDate": "1987-03-15"}}]
    for i, day in enumerate(("2021-08-20", "2021-11-20"), 1):
        entries.append({"fullUrl": f"resource:{i}", "resource": {
            "resourceType": "Immunization", "status": "completed",
            "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "208"}]},
            "patient": {"reference": "resource:0"}, "occurrenceDateTime": day,
            "performer": [{"actor": {"display": "Bệnh viện Chợ Rẫy"}}], "lotNumber": f"EW01{i}7"}})
    return {"iss": "https://smarthealth.example.vn/issuer", "nbf": at - 30 * DAY,
            "vc": {"type": ["https://smarthealth.cards#health-card", "https://smarthealth.cards#immunization"],
                   "credentialSubject": {"fhirVersion": "4.0.1", "fhirBundle": {
                       "resourceType": "Bundle", "type": "collection", "entry": entries}}}}


def _shc_case(at: int):
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = jwks.jwk_of(key.public_key())
    trust = TrustStore.build(jwks.parse_jwks({"keys": [jwk]}).keys)
    jws = shc.sign_jws(_shc_claims(at), key, jwk["kid"])
    text = shc.qr_texts(jws)[0]
    if not verifier.verify(text, trust, at).accepted:
        raise SystemExit("bench fixture broken: SHC card not accepted")
    head, body, sig = jws.split(".")
    raw = _raw_ecdsa(key.public_key(), f"{head}.{body}".encode(), jwks.b64url_decode(sig))
    return text, jws, trust, raw


def run(quick: bool = False) -> dict:
    at = fixtures.now()
    es_text, es_trust, es_raw = _hc1_case(ec.generate_private_key(ec.SECP256R1()), at)
    ps_text, ps_trust, ps_raw = _hc1_case(rsa.generate_private_key(public_exponent=65537, key_size=2048), at)
    shc_text, jws, shc_trust, shc_raw = _shc_case(at)
    parts = shc.qr_texts(jws, 2)
    cases = {
        "raw HC1 ES256": es_raw,
        "full HC1 ES256": lambda: verifier.verify(es_text, es_trust, at),
        "raw HC1 PS256": ps_raw,
        "full HC1 PS256": lambda: verifier.verify(ps_text, ps_trust, at),
        "raw SHC": shc_raw,
        "full SHC": lambda: verifier.verify(shc_text, shc_trust, at),
        "full SHC in 2 parts": lambda: shc.verify_parts(parts, shc_trust, at),
        "step: SHC digits -> JWS": lambda: shc.numeric_to_jws(shc_text[5:]),
        "step: HC1 unwrap (base45 + inflate)": lambda: hc1.unwrap(es_text),
    }
    real_text = None
    if (SHC_DATA / "dev-tools" / "test-example-1195-byte-qrnumeric.txt").is_file():
        real_text = (SHC_DATA / "dev-tools" / "test-example-1195-byte-qrnumeric.txt").read_text()
        real_trust = load_trust([SHC_DATA / "issuer-jwks.json"])
        real_at = 1_672_531_200  # cases.json's clock
        if verifier.verify(real_text, real_trust, real_at).accepted:
            cases["full SHC, framework's 1195-char card"] = lambda: verifier.verify(real_text, real_trust, real_at)
        else:
            raise SystemExit("bench fixture broken: the framework's 1195-character card is not accepted")
    rounds = 8 if quick else 60
    samples = interleaved(cases, rounds=rounds, target_s=0.002 if quick else 0.005)
    print(f"== formats: health certificates, QR text -> verdict ({rounds} interleaved rounds, medians; "
          f"HC1 text {len(es_text)}/{len(ps_text)} chars ES256/PS256 with a DSC whose key usage is checked; "
          f"SHC text {len(shc_text)} digits = JWS {len(jws)} chars)")
    rows: list[list[str]] = []
    result: dict[str, object] = {}
    for raw, full in (("raw HC1 ES256", "full HC1 ES256"), ("raw HC1 PS256", "full HC1 PS256"),
                      ("raw SHC", "full SHC"), ("raw SHC", "full SHC in 2 parts"),
                      ("raw SHC", "full SHC, framework's 1195-char card")):
        if full not in samples:
            continue
        r = ratios(samples, full, raw)
        q1, q3 = quartiles(r)
        overhead = median([f - p for f, p in zip(samples[full], samples[raw])])
        if not any(row[0] == raw for row in rows):
            rows.append([raw, us(median(samples[raw])), "1.00", "", ""])
        rows.append([full, us(median(samples[full])), f"{median(r):.2f}", f"{q1:.2f}-{q3:.2f}", us(overhead)])
        result[full] = {"raw_us": median(samples[raw]) * 1e6, "full_us": median(samples[full]) * 1e6,
                        "ratio": median(r), "overhead_us": overhead * 1e6}
    print(table(["case", "µs", "x raw", "x raw p25-p75", "overhead µs"], rows))
    rows = []
    for name in [n for n in cases if n.startswith("step: ")]:
        rows.append([name[6:], us(median(samples[name]))])
        result[name] = median(samples[name]) * 1e6
    print(table(["step", "µs"], rows))
    print()
    return result
