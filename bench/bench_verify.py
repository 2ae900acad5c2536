"""µs per full verify (QR text → verdict) against the raw signature check of the same bytes."""
from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from scanner.cards import base45, cose, verifier
from scanner.cards.bundle import open_bundle
from scanner.cards.formats import ck1
from scanner.cards.trust import TrustStore
from scanner.cards.verdict import Verdict

from . import fixtures
from .goals import judge
from .timing import interleaved, median, quartiles, ratios, table, us
from .world import bundle_bytes, world

STEPS = ("step: unwrap (base45 decode)", "step: cose.parse_sign1", "step: ck1.parse_claims",
         "step: revocation lookup (miss)", "step: revocation lookup (hit)")


def _signature_ok(*args) -> bool:
    return True


def stubbed_verify(trust: TrustStore, at: int) -> Callable[[str], Verdict]:
    """``verifier.verify`` of CK1 cards with the signature check stubbed out: what scales with Python
    speed. (The check is a field of the format's rules, which ck1.verify reads at each call.)"""
    stubbed = dataclasses.replace(ck1.RULES, verify_signature=_signature_ok)

    def verify(text: str) -> Verdict:
        real, ck1.RULES = ck1.RULES, stubbed
        try:
            return verifier.verify(text, trust, at)
        finally:
            ck1.RULES = real
    return verify


def _forged(text: str) -> str:
    """The same card with one bit of its signature flipped (the COSE's last byte)."""
    raw = bytearray(ck1.unwrap(text))
    raw[-1] ^= 1
    return ck1.PREFIX + base45.encode(bytes(raw))


def _cases(revoked: int):
    w = world()
    trust = TrustStore.build(bundles=[open_bundle(bundle_bytes(revoked), [w.root.public_key()])])
    ecdsa = ec.ECDSA(hashes.SHA256())
    cases: dict[str, Callable[[], object]] = {}
    cards = {}
    signers: tuple[tuple[str, Any], ...] = (("EdDSA", w.ed_key), ("ES256", w.es_key))
    for alg, priv in signers:
        text = fixtures.card_text(priv, w.at)
        verdict = verifier.verify(text, trust, w.at)
        if not verdict.accepted:
            raise SystemExit(f"bench fixture broken: {alg} card not accepted: {verdict}")
        msg = cose.parse_sign1(ck1.unwrap(text))
        if msg.alg is None:
            raise SystemExit(f"bench fixture broken: the {alg} card's COSE message has no alg")
        tbs = msg.to_be_signed()
        pub = priv.public_key()
        if alg == "EdDSA":
            sig = msg.signature
            cases["raw EdDSA"] = functools.partial(pub.verify, sig, tbs)
        else:
            der = encode_dss_signature(int.from_bytes(msg.signature[:32], "big"),
                                       int.from_bytes(msg.signature[32:], "big"))
            cases["raw ES256"] = functools.partial(pub.verify, der, tbs, ecdsa)
        cases[f"full {alg}"] = functools.partial(verifier.verify, text, trust, w.at)
        cases[f"cose.verify_signature {alg}"] = functools.partial(cose.verify_signature, pub, msg.alg, tbs,
                                                                  msg.signature)
        cards[alg] = (text, msg)
    text, msg = cards["EdDSA"]
    python_only = stubbed_verify(trust, w.at)
    forged = _forged(text)
    if verifier.verify(forged, trust, w.at).accepted or not python_only(forged).accepted:
        raise SystemExit("bench broken: the stubbed signature check does not reach the verifier")
    cases["python-side only (EdDSA)"] = lambda: python_only(text)
    raw = ck1.unwrap(text)
    kid = msg.kid
    if kid is None:
        raise SystemExit("bench fixture broken: the card's COSE message has no kid")
    card_id = ck1.parse_claims(msg.payload, kid).card_id
    if card_id in trust.revoked_cards:
        raise SystemExit("bench fixture broken: the card id is revoked")
    present = next(iter(trust.revoked_cards)) if len(trust.revoked_cards) else card_id
    steps = (lambda: ck1.unwrap(text), lambda: cose.parse_sign1(raw), lambda: ck1.parse_claims(msg.payload, kid),
             lambda: card_id in trust.revoked_cards, lambda: present in trust.revoked_cards)
    cases.update(zip(STEPS, steps))
    return cases, len(raw), len(msg.payload), len(text)


def run(quick: bool = False) -> dict:
    revoked = 10_000 if quick else 1_000_000
    cases, cose_len, payload_len, text_len = _cases(revoked)
    runs, rounds = (1, 8) if quick else (5, 16)
    per_run = [interleaved(cases, rounds=rounds, target_s=0.002 if quick else 0.005, seed=r, clock=time.process_time)
               for r in range(runs)]
    samples = {name: [x for s in per_run for x in s[name]] for name in cases}
    print(f"== verify: QR text -> verdict ({runs} run(s) of {rounds} interleaved rounds, medians of the process's "
          f"CPU time; card text {text_len} chars, COSE {cose_len} B, payload {payload_len} B; {revoked:,} revoked "
          "ids in the trust store)")
    python = "python-side only (EdDSA)"
    # the signature check is most of a verify: without it a verify costs far less (compared on the
    # fastest sample of each, which a busy machine disturbs least)
    cheaper = min(samples[python]) / min(samples["full EdDSA"])
    if cheaper > 0.6:
        raise SystemExit(f"bench broken: the verify with the signature check stubbed costs {cheaper:.2f}x the "
                         "full verify; the stub did not take effect")
    rows: list[list[str]] = []
    figures: dict = {}
    goals = []
    for alg in ("EdDSA", "ES256"):
        raw, full = f"raw {alg}", f"full {alg}"
        r = ratios(samples, full, raw)
        q1, q3 = quartiles(r)
        run_ratios = [median(ratios(s, full, raw)) for s in per_run]
        g = judge(f"verify.{alg}", run_ratios)
        goals.append(g)
        overhead = median([f - p for f, p in zip(samples[full], samples[raw])])
        wrap = f"cose.verify_signature {alg}"
        rows.append([f"{alg}: raw cryptography verify", us(median(samples[raw])), "1.00", "", ""])
        rows.append([f"{alg}: full verifier.verify", us(median(samples[full])), f"{median(r):.2f}",
                     f"{q1:.2f}-{q3:.2f}", f"{min(run_ratios):.2f}-{max(run_ratios):.2f}"])
        rows.append([f"{alg}:   overhead (full - raw)", us(overhead), "", "", ""])
        rows.append([f"{alg}:   cose.verify_signature", us(median(samples[wrap])),
                     f"{median(ratios(samples, wrap, raw)):.2f}", "", ""])
        figures[alg] = {"raw_us": median(samples[raw]) * 1e6, "full_us": median(samples[full]) * 1e6,
                        "ratio": median(r), "ratio_p25": q1, "ratio_p75": q3, "overhead_us": overhead * 1e6,
                        "cose_wrapper_ratio": median(ratios(samples, wrap, raw))}
    print(table(["case", "µs", "x raw", "x raw p25-p75", "runs' x raw"], rows))
    for g in goals:
        print(g.line())
    print()
    rows = []
    figures["steps_us"] = {}
    for name in STEPS:
        r = ratios(samples, name, "raw EdDSA")
        rows.append([name[6:], us(median(samples[name])), f"{100 * median(r):.1f}%"])
        figures["steps_us"][name[6:]] = median(samples[name]) * 1e6
    r = ratios(samples, python, "raw EdDSA")
    rows.append(["all Python-side work (signature check stubbed)", us(median(samples[python])),
                 f"{100 * median(r):.1f}%"])
    figures["python_us"] = median(samples[python]) * 1e6
    figures["python_of_full"] = cheaper
    print("breakdown of the overhead (EdDSA card; each step timed on its own; the stubbed verify is checked to "
          "accept a forged\nsignature and to cost less than the full one; overhead beyond the Python-side work is "
          "the cost of interleaving it\nwith the crypto: CPU caches, branch predictors):")
    print(table(["step", "µs", "of raw EdDSA"], rows))
    print(f"stubbed verify / full verify (fastest samples): {cheaper:.2f}\n")
    return {"revoked": revoked, "runs": runs, "rounds": rounds, "figures": figures,
            "goals": [g.as_dict() for g in goals]}
