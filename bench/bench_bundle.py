"""Trust-bundle load time and memory (fresh process per load), and revocation look-ups at scale."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from scanner.cards.bundle import open_bundle

from .timing import interleaved, median, quartiles, ratios, table, us
from .world import bundle_bytes, world

MODES = ("open", "b64", "b64+json")
MODE_NAMES = {"open": "open_bundle (sig check + parse)",
              "b64": "peer: json.loads + b64decode",
              "b64+json": "peer: ... + json.loads(payload)"}
MB = 1024 * 1024


def _child(mode: str, path: Path, root_hex: str, repeat: int) -> dict:
    root_dir = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root_dir), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "bench._bundle_child", mode, str(path), root_hex,
                           str(repeat)], capture_output=True, text=True, env=env, cwd=root_dir, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"bundle bench child failed ({mode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mb(n: float | None) -> str:
    return "n/a" if n is None else f"{n / MB:.1f}"


def load_bench(sizes: list[int], rounds: int) -> dict:
    w = world()
    root_hex = w.root.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    results: dict[tuple[int, str], list[dict]] = {(n, m): [] for n in sizes for m in MODES}
    rng = random.Random(3)
    with tempfile.TemporaryDirectory(prefix="ckbench-") as tmp:
        paths = {}
        for n in sizes:
            paths[n] = Path(tmp) / f"bundle-{n}.json"
            paths[n].write_bytes(bundle_bytes(n))
        for _ in range(rounds):
            for n in sizes:
                repeat = max(1, min(20, 200_000 // max(n, 1)))
                modes = list(MODES)
                rng.shuffle(modes)
                for mode in modes:
                    results[(n, mode)].append(_child(mode, paths[n], root_hex, repeat))
        file_sizes = {n: paths[n].stat().st_size for n in sizes}
    print(f"== trust bundle load ({rounds} rounds; each load in a fresh process; modes interleaved; "
          "time = median, memory = median over rounds, MiB above the RSS just before the load)")
    rows = []
    out = {}
    for n in sizes:
        per_round = {m: [median(r["times"]) for r in results[(n, m)]] for m in MODES}
        for mode in MODES:
            runs = results[(n, mode)]
            t = median(per_round[mode])
            row = [f"{n:,} revoked, {file_sizes[n] / MB:.1f} MiB", MODE_NAMES[mode], f"{t * 1e3:.1f}"]
            for peer in ("b64", "b64+json"):
                r = [a / b for a, b in zip(per_round[mode], per_round[peer])]
                row.append(f"{median(r):.2f}")
            rss = median([r["rss_delta"] for r in runs])
            peaks = [r["peak_delta"] for r in runs if r["peak_delta"] is not None]
            row += [_mb(rss), _mb(median(peaks) if peaks else None)]
            if mode == "open":
                row.append(_mb(runs[0]["nbytes"]))
                out[n] = {"open_ms": t * 1e3, "rss_mb": rss / MB,
                          "peak_mb": median(peaks) / MB if peaks else None,
                          "nbytes_mb": runs[0]["nbytes"] / MB,
                          "x_b64": median([a / b for a, b in zip(per_round["open"], per_round["b64"])]),
                          "x_b64json": median([a / b for a, b in zip(per_round["open"],
                                                                      per_round["b64+json"])])}
            else:
                row.append("")
            rows.append(row)
    print(table(["bundle", "load", "ms", "x b64 peer", "x b64+json peer", "RSS delta MiB",
                 "peak MiB", "RevocationSet MiB"], rows, left=2))
    print()
    return out


def lookup_bench(count: int, rounds: int) -> dict:
    w = world()
    revoked = open_bundle(bundle_bytes(count), [w.root.public_key()]).revoked_cards
    as_set = frozenset(revoked)
    rng = random.Random(5)
    present = rng.sample(list(revoked), 1024)
    absent = [rng.randbytes(16) for _ in range(1024)]
    batch = len(present)

    def hits(s=revoked):
        for x in present:
            _ = x in s

    def misses(s=revoked):
        for x in absent:
            _ = x in s

    cases = {"RevocationSet hit": hits, "RevocationSet miss": misses,
             "frozenset hit": lambda: hits(as_set), "frozenset miss": lambda: misses(as_set)}
    samples = interleaved(cases, rounds=rounds, target_s=0.004)
    set_bytes = sys.getsizeof(as_set) + sum(sys.getsizeof(b) for b in as_set)
    print(f"== revocation look-up at {len(revoked):,} ids ({rounds} interleaved rounds of "
          f"{batch} distinct ids; peer: a Python frozenset of the same bytes ids)")
    rows = []
    out = {}
    for kind in ("hit", "miss"):
        mine, peer = f"RevocationSet {kind}", f"frozenset {kind}"
        r = ratios(samples, mine, peer)
        q1, q3 = quartiles(r)
        rows.append([f"look-up ({kind})", us(median(samples[mine]) / batch),
                     us(median(samples[peer]) / batch), f"{median(r):.2f}", f"{q1:.2f}-{q3:.2f}"])
        out[kind + "_us"] = median(samples[mine]) / batch * 1e6
    print(table(["", "RevocationSet µs", "frozenset µs", "x frozenset", "p25-p75"], rows))
    print(table(["memory", "MiB"], [["RevocationSet.nbytes()", _mb(revoked.nbytes())],
                                    ["frozenset of bytes (objects + table)", _mb(set_bytes)]]))
    print()
    out["nbytes"] = revoked.nbytes()
    return out


def run(quick: bool = False) -> dict:
    sizes = [10_000, 100_000] if quick else [10_000, 1_000_000]
    result = {"load": load_bench(sizes, rounds=1 if quick else 5)}
    result["lookup"] = lookup_bench(sizes[-1], rounds=5 if quick else 30)
    return result
