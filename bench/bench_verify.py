"""µs per full verify (QR text → verdict) against the raw signature check of the same bytes."""
from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from scanner.cards import cose, verifier
from scanner.cards.bundle import open_bundle
from scanner.cards.formats import ck1
from scanner.cards.trust import TrustStore

from . import fixtures
from .timing import interleaved, median, quartiles, ratios, table, us
from .world import bundle_bytes, world

GOALS = {"EdDSA": 1.5, "ES256": 1.8}


def _signature_ok(*args) -> bool:
    return True


def _cases(revoked: int):
    w = world()
    trust = TrustStore.build(bundles=[open_bundle(bundle_bytes(revoked), [w.root.public_key()])])
    ecdsa = ec.ECDSA(hashes.SHA256())
    cases = {}
    cards = {}
    for alg, priv in (("EdDSA", w.ed_key), ("ES256", w.es_key)):
        text = fixtures.card_text(priv, w.at)
        verdict = verifier.verify(text, trust, w.at)
        if not verdict.accepted:
            raise SystemExit(f"bench fixture broken: {alg} card not accepted: {verdict}")
        msg = cose.parse_sign1(ck1.unwrap(text))
        tbs = msg.to_be_signed()
        pub = priv.public_key()
        if alg == "EdDSA":
            sig = msg.signature
            cases["raw EdDSA"] = lambda pub=pub, sig=sig, tbs=tbs: pub.verify(sig, tbs)
        else:
            der = encode_dss_signature(int.from_bytes(msg.signature[:32], "big"),
                                       int.from_bytes(msg.signature[32:], "big"))
            cases["raw ES256"] = lambda pub=pub, der=der, tbs=tbs: pub.verify(der, tbs, ecdsa)
        cases[f"full {alg}"] = lambda text=text, at=w.at: verifier.verify(text, trust, at)
        cases[f"cose.verify_signature {alg}"] = (
            lambda pub=pub, alg_id=msg.alg, tbs=tbs, sig=msg.signature:
            cose.verify_signature(pub, alg_id, tbs, sig))
        cards[alg] = (text, msg)
    text, msg = cards["EdDSA"]
    real_check = cose.verify_signature

    def python_only(text=text, at=w.at):
        """The verifier with the signature check stubbed out: what scales with Python speed."""
        cose.verify_signature = _signature_ok
        try:
            return verifier.verify(text, trust, at)
        finally:
            cose.verify_signature = real_check

    if not python_only().accepted:
        raise SystemExit("bench fixture broken: stubbed verify does not accept")
    cases["python-side only (EdDSA)"] = python_only
    raw = ck1.unwrap(text)
    card_id = ck1.parse_claims(msg.payload, msg.kid).card_id
    if card_id in trust.revoked_cards:
        raise SystemExit("bench fixture broken: the card id is revoked")
    present = next(iter(trust.revoked_cards)) if len(trust.revoked_cards) else card_id
    cases["step: unwrap (base45 decode)"] = lambda: ck1.unwrap(text)
    cases["step: cose.parse_sign1"] = lambda: cose.parse_sign1(raw)
    cases["step: ck1.parse_claims"] = lambda: ck1.parse_claims(msg.payload, msg.kid)
    cases["step: revocation lookup (miss)"] = lambda: card_id in trust.revoked_cards
    cases["step: revocation lookup (hit)"] = lambda: present in trust.revoked_cards
    return cases, len(raw), len(msg.payload), len(text)


def run(quick: bool = False) -> dict:
    revoked = 10_000 if quick else 1_000_000
    cases, cose_len, payload_len, text_len = _cases(revoked)
    rounds = 8 if quick else 80
    samples = interleaved(cases, rounds=rounds, target_s=0.002 if quick else 0.005)
    print(f"== verify: QR text -> verdict ({rounds} interleaved rounds, medians; card text "
          f"{text_len} chars, COSE {cose_len} B, payload {payload_len} B; {revoked:,} revoked ids "
          "in the trust store)")
    rows = []
    result = {}
    for alg in ("EdDSA", "ES256"):
        raw, full = f"raw {alg}", f"full {alg}"
        r = ratios(samples, full, raw)
        q1, q3 = quartiles(r)
        overhead = median([f - p for f, p in zip(samples[full], samples[raw])])
        ok = median(r) <= GOALS[alg]
        rows.append([f"{alg}: raw cryptography verify", us(median(samples[raw])), "1.00", "", ""])
        rows.append([f"{alg}: full verifier.verify", us(median(samples[full])), f"{median(r):.2f}",
                     f"{q1:.2f}-{q3:.2f}", f"<= {GOALS[alg]} {'ok' if ok else 'MISSED'}"])
        rows.append([f"{alg}:   overhead (full - raw)", us(overhead), "", "", ""])
        wrap = f"cose.verify_signature {alg}"
        rw = ratios(samples, wrap, raw)
        rows.append([f"{alg}:   cose.verify_signature", us(median(samples[wrap])), f"{median(rw):.2f}",
                     "", ""])
        result[alg] = {"raw_us": median(samples[raw]) * 1e6, "full_us": median(samples[full]) * 1e6,
                       "ratio": median(r), "overhead_us": overhead * 1e6, "goal_met": ok}
    print(table(["case", "µs", "x raw", "x raw p25-p75", "goal"], rows))
    print()
    rows = []
    for name in [n for n in cases if n.startswith("step: ")]:
        r = ratios(samples, name, "raw EdDSA")
        rows.append([name[6:], us(median(samples[name])), f"{100 * median(r):.1f}%"])
        result[name] = median(samples[name]) * 1e6
    name = "python-side only (EdDSA)"
    r = ratios(samples, name, "raw EdDSA")
    rows.append(["all Python-side work (signature check stubbed)", us(median(samples[name])),
                 f"{100 * median(r):.1f}%"])
    result["python_us"] = median(samples[name]) * 1e6
    print("breakdown of the overhead (EdDSA card; each step timed on its own; overhead beyond the "
          "Python-side\nwork is the cost of interleaving it with the crypto: CPU caches, branch "
          "predictors):")
    print(table(["step", "µs", "of raw EdDSA"], rows))
    print()
    return result
