"""The figures of the docs in DOCS (docs/benchmarks.md, docs/raspberry-pi.md, docs/decoding.md, docs/scaling.md,
README.md), generated from a named results file (bench/results.py), so the docs cannot go stale without a test
saying so.

    python -m bench.report [--results FILE] [--check]

Each doc names its results file once, ``<!-- bench-results: bench/results/FILE.json -->``, and holds
generated parts between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` (a table, or a figure
inside a sentence). The command rewrites those parts from the file each doc names (``--results``:
point every doc at FILE first); ``--check`` changes nothing and exits 1 if a doc differs from what
its file gives (tests/test_bench.py runs it).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable

from . import goals as goalsmod
from . import results

ROOT = results.ROOT
DOCS = ("docs/benchmarks.md", "docs/raspberry-pi.md", "docs/decoding.md", "docs/scaling.md", "README.md")
_NAMED = re.compile(r"<!-- bench-results: (\S+) -->")
_PART = re.compile(r"<!-- bench:(\S+) -->(.*?)<!-- /bench:\1 -->", re.S)


# ---------------------------------------------------------------- formatting


def _n(v: float | None, digits: int = 1) -> str:
    """A figure with ``digits`` decimals and thousands separators ("–" when missing)."""
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def _us(v: float) -> str:
    return _n(v, 2 if v < 10 else 1)


def _x(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(head: list[str], rows: list[list], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(head) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    return "\n".join([_row(head), _row(rule), *(_row(r) for r in rows)])


def _bench(doc: dict, name: str) -> dict:
    b = doc["benches"].get(name)
    if b is None:
        raise _Missing(name)
    return b


class _Missing(Exception):
    """A benchmark the results file does not hold: its parts say so."""


def _hardware(doc: dict, b: dict) -> dict:
    """The machine a benchmark ran on (parts stored before each kept its own: the file's)."""
    return b.get("machine") or results.hardware(doc["machine"])


def _machines(doc: dict) -> dict[str, list[str]]:
    """The file's machines (each description as sorted JSON) with the benchmarks measured on each."""
    groups: dict[str, list[str]] = {}
    for name, b in doc["benches"].items():
        groups.setdefault(json.dumps(_hardware(doc, b), sort_keys=True), []).append(name)
    return groups


def _labels(doc: dict) -> dict[str, str]:
    """Each benchmark's machine as a short label, where the file holds more than one machine; else {}."""
    groups = _machines(doc)
    if len(groups) < 2:
        return {}
    return {name: f"{m['cpu']}, Linux {m['kernel']}" for m, names in
            ((json.loads(key), names) for key, names in groups.items()) for name in names}


def _labelled_doc(doc: dict) -> bool:
    """Whether the doc's benchmarks carry machine labels (the file holds more than one machine)."""
    return any(b.get("on") for b in doc["benches"].values())


def _labelled(doc: dict) -> dict:
    """The results doc with each benchmark's machine label under "on", where machines differ: what
    every part that names a machine reads (_when, the goals and the Pi's inputs)."""
    labels = _labels(doc)
    return {**doc, "benches": {name: {**b, "on": labels[name]} if labels else b
                               for name, b in doc["benches"].items()}}


def _when(b: dict) -> str:
    code = f", code {b['commit']}" if b.get("commit") else ""
    where = f", on {b['on']}" if b.get("on") else ""
    return (f"{b['started'][:16].replace('T', ' ')}, load average {b['load_average'][0]:.1f}, "
            f"`{b['command']}`{code}{where}")


# ---------------------------------------------------------------- the parts


def _describe(m: dict) -> str:
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v)
    return (f"{m['host']}: {m['arch']}, {m['cpus']} CPUs ({m['cpu']}), {m['memory_mib'] / 1024:.1f} GiB, "
            f"Linux {m['kernel']}, {m['python']}, SQLite {m['sqlite']}; {libs}")


def machine(doc: dict) -> str:
    """The machine the figures were measured on; where the file holds more than one, each with the
    benchmarks measured on it."""
    groups = _machines(doc)
    code = f"; code {doc['machine']['commit']}"
    if len(groups) < 2:
        return _describe(doc["machine"]) + code
    return "; ".join(f"**{', '.join(names)}** on {_describe(json.loads(m))}" for m, names in groups.items()) + code


def goals(doc: dict) -> str:
    rows = []
    labelled = _labelled_doc(doc)
    for b in doc["benches"].values():
        for g in b.get("goals", []):
            fmt = _goal_value(g)
            rows.append([f"`{g['key']}`" + (f" ({g['case']})" if g["case"] else ""), g["what"],
                         f"{_sign(g)} {fmt(g['limit'])}", f"**{fmt(g['median'])}**",
                         f"{fmt(g['min'])} – {fmt(g['max'])}",
                         f"{g['met_runs']} of {len(g['runs'])}",
                         f"**{g['verdict']}**" + (f": {g['note']}" if g["note"] else "")]
                        + ([b["on"]] if labelled else []))
    head = ["goal", "what", "limit", "median of runs", "runs' range", "runs within", "verdict"]
    return _table(head + (["measured on"] if labelled else []), rows, "lllrrrl" + ("l" if labelled else ""))


def _sign(g: dict) -> str:
    """≥ for a rate to reach, else ≤ (results stored before goals could be rates lack the key)."""
    return "≥" if g.get("at_least") else "≤"


def _goal_value(g: dict) -> Callable[[float], str]:
    """How a judged goal's figures are written: a difference (ms above a peer) with its sign."""
    if g["unit"] == "x":
        return lambda v: f"{v:.2f}×"
    if g["unit"] == "ms":
        known = goalsmod.GOALS.get(g["key"])
        if known is None or known.difference:
            return lambda v: f"{v:+.2f} ms"
        return lambda v: f"{v:.2f} ms"
    if g["unit"] in ("s", "entries/s"):
        return lambda v: goalsmod.fmt(v, g["unit"])
    return lambda v: f"{v:.3f}"


def _goal(doc: dict, bench: str, key: str, case: str = "") -> dict:
    for g in _bench(doc, bench).get("goals", []):
        if g["key"] == key and g["case"] == case:
            return g
    raise _Missing(f"{bench}: goal {key}")


def verify(doc: dict) -> str:
    b = _bench(doc, "verify")
    f = b["figures"]
    rows = []
    for alg in ("EdDSA", "ES256"):
        x, g = f[alg], _goal(doc, "verify", f"verify.{alg}")
        rows += [[f"{alg} raw `cryptography` verify", _us(x["raw_us"]), "1.00", "", ""],
                 [f"{alg} full `verifier.verify`", _us(x["full_us"]), f"**{x['ratio']:.2f}**",
                  f"{x['ratio_p25']:.2f}–{x['ratio_p75']:.2f}", f"{g['min']:.2f}–{g['max']:.2f}"],
                 [f"{alg} overhead (full − raw)", _us(x["overhead_us"]), "", "", ""]]
    main = _table(["verify ({} revoked in store)".format(f"{b['revoked']:,}"), "µs", "× raw", "p25–p75 of rounds",
                   f"{b['runs']} runs' medians"], rows)
    steps = [[name, _us(v)] for name, v in f["steps_us"].items()]
    steps.append(["all Python-side work (signature check stubbed)", _us(f["python_us"])])
    return (main + "\n\n" + _table(["breakdown (Ed25519 card)", "µs"], steps) + "\n\n"
            + f"The stubbed verify cost {f['python_of_full']:.2f}× the full one (fastest samples). {_when(b)}.")


def bundle(doc: dict) -> str:
    b = _bench(doc, "bundle")
    rows = [[f"{int(k):,} revoked", _n(v["open_ms"]), _x(v["x_b64"]), _x(v["x_b64json"]), _n(v["rss_mb"]),
             _n(v["peak_mb"]), _n(v.get("nbytes_mb"))] for k, v in b["load"].items()]
    lk = b["lookup"]
    return (_table(["bundle load", "ms", "× b64", "× b64+json", "RSS delta MiB", "peak MiB", "RevocationSet MiB"],
                   rows)
            + f"\n\nLook-up at {max(int(k) for k in b['load']):,} ids: hit {_us(lk['hit_us'])} µs, miss "
              f"{_us(lk['miss_us'])} µs. {_when(b)}.")


def feedback(doc: dict) -> str:
    b = _bench(doc, "feedback")
    rows = [[name, _us(v["p50_us"]), _us(v["p95_us"]), _n(v["x_bare_p50"]), _n(v["x_bare_p95"]),
             _us(v["call_p50_us"]), _us(v["call_p95_us"])]
            for name, v in b.items() if isinstance(v, dict) and "p50_us" in v]
    return (_table(["case", "pin p50 µs", "pin p95 µs", "× bare p50", "× bare p95", "call p50 µs", "call p95 µs"],
                   rows) + f"\n\n{_when(b)}.")


def feedback_handover(doc: dict) -> str:
    b = _bench(doc, "feedback")
    return _us(b["show(), caller waits"]["p50_us"] - b["bare LED.on()"]["p50_us"])


def formats(doc: dict) -> str:
    b = _bench(doc, "formats")
    rows = [[name, _us(v["raw_us"]), _us(v["full_us"]), f"**{v['ratio']:.2f}**", _us(v["overhead_us"])]
            for name, v in b.items() if isinstance(v, dict) and "ratio" in v]
    steps = "; ".join(f"{k[6:]} {_us(v)} µs" for k, v in b.items() if k.startswith("step: "))
    return (_table(["format", "raw µs", "full µs", "× raw", "overhead µs"], rows)
            + f"\n\nSteps on their own: {steps}. {_when(b)}.")



def pipeline(doc: dict) -> str:
    b = _bench(doc, "pipeline")
    rows = [[r["size"], r["n"], _n(r["bare_p50_ms"], 2), _n(r["p50_ms"], 2), f"**{r['x_p50']:.2f}**",
             _n(r["bare_p95_ms"], 2), _n(r["p95_ms"], 2), _x(r["x_p95"])] for r in b["latency"]]
    mib = 1024 * 1024
    mem = [[m["size"], _n(m["baseline"] / mib), _n(m["rss"] / mib), f"**{m['peak'] / mib:.1f}**",
            _n((m["peak"] - m["baseline"]) / mib), m["frames"]] for m in b["memory"]]
    if "goals" not in b:
        raise _Missing("pipeline: runs and its goal (a run before they were)")
    return (_table(["frame", "n", "bare p50 ms", "pipeline p50 ms", "× bare p50", "bare p95 ms", "pipeline p95 ms",
                    "× bare p95"], rows) + f"\n\nOne row per run. Goal: {_goal_lines(b['goals'])}\n\n"
            + _table(["camera frames", "RSS before MiB", "RSS running MiB", "peak MiB", "peak − before MiB",
                      "frames decoded"], mem) + f"\n\n{_when(b)}.")


def _goal_lines(goals: list[dict]) -> str:
    """The goals a benchmark judged, one sentence each (what, limit, median, the runs, the verdict)."""
    out = []
    for g in goals:
        fmt = _goal_value(g)
        case = f" ({g['case']})" if g["case"] else ""
        out.append(f"`{g['key']}`{case}: {g['what']} {_sign(g)} {fmt(g['limit'])}: median **{fmt(g['median'])}** "
                   f"(runs {fmt(g['min'])} – {fmt(g['max'])}, {g['met_runs']} of {len(g['runs'])} within), "
                   f"**{g['verdict']}**" + (f" ({g['note']})" if g["note"] else "") + ".")
    return " ".join(out)


def decode_samples(doc: dict) -> str:
    x = _bench(doc, "decode")["samples"]
    if not x:
        raise _Missing("decode: the shared sample photos")
    rows = [[name, f"{v['correct']}/{v['n']} ({100 * v['correct'] / v['n']:.0f}%)", v["wrong"], _n(v["p50_ms"], 2),
             _n(v["p95_ms"], 2)] for name, v in x.items()]
    return _table(["backend", "correct", "wrong", "median CPU ms", "p95 CPU ms"], rows, "lrrrr")


def decode_frames(doc: dict) -> str:
    b = _bench(doc, "decode")
    rows = []
    for name, f in b["frames"].items():
        zb = "pyzbar QR" in f
        lo, hi = f["x_pass1_iqr"]
        rows.append([name, _n(f["zxing raw"], 2), _n(f["zxing pass-1 opts"], 2), _n(f["appliance"], 2),
                     _n(f["stream"], 2), f"**{f['x_pass1']:.2f}** ({lo:.2f}–{hi:.2f})",
                     _x(f["x_raw"]), _n(f["pyzbar QR"], 2) if zb else "–",
                     f"**{f['x_pyzbar']:.3f}** ({f['x_pyzbar_iqr'][0]:.3f}–{f['x_pyzbar_iqr'][1]:.3f})" if zb else "–"])
    runs = len(next(iter(b["frames"].values()))["runs_x_pass1"])
    return (_table(["frame", "zxing raw ms", "zxing pass-1 ms", "appliance ms", "stream ms",
                    "stream × pass-1 (p25–p75)", "stream × raw", "pyzbar QR ms", "stream × pyzbar QR (p25–p75)"], rows)
            + f"\n\nCPU ms, medians of {runs} runs. Goals on empty frames: {_goal_lines(b['goals'])} {_when(b)}.")


def decoding_backends(doc: dict) -> str:
    """docs/decoding.md's comparison: the sample photos and two empty 640x480 frames per backend."""
    b = _bench(doc, "decode")
    x, fr = b["samples"], b["frames"]
    if not x:
        raise _Missing("decode: the shared sample photos")
    empty = {"pyzbar": "pyzbar QR", "zxing-cpp": "zxing raw", "appliance (auto)": "stream"}
    rows = []
    for name, v in x.items():
        cells = [f"{v['correct']}/{v['n']} ({100 * v['correct'] / v['n']:.0f}%)", v["wrong"], _n(v["p50_ms"], 2),
                 _n(v["p95_ms"], 2), *(f"{fr[f][empty[name]]:.2f} ms" for f in ("640x480 empty scene",
                                                                                 "640x480 empty noise"))]
        label = {"pyzbar": "pyzbar (QR only)", "zxing-cpp": "zxing-cpp (QR only)",
                 "appliance (auto)": "appliance (`auto`; empty frames: the stream decoder)"}[name]
        rows.append([f"**{label}**" if name.startswith("appliance") else label, *cells])
    return (_table(["backend", "correct", "wrong", "median CPU ms/image", "p95 CPU ms/image", "empty 640x480 scene",
                    "empty 640x480 noise"], rows) + f"\n\n{_when(b)}.")


def decoding_empty(doc: dict) -> str:
    """An empty frame's cost against the bare first-pass call and pyzbar, over the empty frames."""
    fr = _bench(doc, "decode")["frames"]
    empty = [f for name, f in fr.items() if "empty" in name]
    if not empty or "1280x720 passer-by" not in fr:
        raise _Missing("decode: the empty and passer-by frames")
    lo, hi = min(f["x_pass1"] for f in empty), max(f["x_pass1"] for f in empty)
    zlo, zhi = min(f["x_pyzbar"] for f in empty), max(f["x_pyzbar"] for f in empty)
    moving = fr["1280x720 passer-by"]["x_pass1"]
    return (f"an empty frame costs {lo:.2f}–{hi:.2f}x the bare zxing-cpp call with the first pass's options and "
            f"{zlo:.2f}–{zhi:.2f}x pyzbar QR-only; a frame where something moves {moving:.1f}x the bare call")


def decoding_goals(doc: dict) -> str:
    return _goal_lines(_bench(doc, "decode")["goals"])


def _seeds(b: dict, kind: str) -> list[tuple[str, dict]]:
    """The held-out sets a decode run holds of ``kind`` ("camera set", "clips"): (label, figures), first seed first."""
    return [(k.partition(", ")[2] or "the first seed", v) for k, v in b.items() if k.split(",")[0] == kind]


def decode_camera(doc: dict) -> str:
    b = _bench(doc, "decode")
    sets = _seeds(b, "camera set")
    peers = [k for k in next(iter(sets[0][1].values())) if k != "wrong"]
    head = ["category"] + [f"{label}: {p}" if i else p for i, (label, _) in enumerate(sets) for p in peers]
    head += [f"wrong ({label})" for label, _ in sets]
    rows = []
    for cat in (c for c in sets[0][1] if not c.startswith("_")):
        rows.append([cat] + [f"{100 * s[cat][p]:.0f}%" for _, s in sets for p in peers]
                    + [s[cat]["wrong"] for _, s in sets])
    rescued = "; ".join(f"{label}: {s['_rescued'][0]} of {s['_rescued'][1]} "
                        f"(**{100 * s['_rescued'][0] / max(1, s['_rescued'][1]):.0f}%**)" for label, s in sets)
    return (_table(head, rows, "l" + "r" * (len(head) - 1))
            + f"\n\nOf the frames zxing-cpp misses in the blur and perspective categories the appliance reads "
              f"{rescued} (goal ≥ 90%). {_when(b)}.")


def _clip_cell(times: list) -> str:
    """read/clips, median (worst) ms of camera time to the first read: as the bench prints it."""
    got = sorted(t for t in times if t is not None)
    if not times:
        return "–"
    if not got:
        return f"0/{len(times)}"
    return f"{len(got)}/{len(times)} {statistics.median(got) * 1e3:.0f} ({got[-1] * 1e3:.0f})"


def decode_clips(doc: dict, seed: int = 0) -> str:
    b = _bench(doc, "decode")
    sets = _seeds(b, "clips")
    if seed >= len(sets):
        raise _Missing("decode: clips of a second seed (a --quick run makes one)")
    label, clips = sets[seed]
    cols = list(next(iter(clips.values())))
    rows = [[cat, *(_clip_cell(res[c]) for c in cols)] for cat, res in clips.items()]
    return _table(["category", *cols], rows, "l" * (len(cols) + 1)) + f"\n\nClips of {label}. {_when(b)}."


def _spread(values: list[float], fmt: Callable[[float], str], bold: bool = False, unit: str = "") -> str:
    """median (min–max) of the runs."""
    mid = fmt(statistics.median(values)) + unit
    return f"{'**' + mid + '**' if bold else mid} ({fmt(min(values))}–{fmt(max(values))})"


def fleet(doc: dict) -> str:
    b = _bench(doc, "fleet")
    rows = []
    for name, f in b["figures"].items():
        label = f"{name}" + (f", group commit ({f['bytes_per_entry']:.0f} B/entry)" if f["group_commit"] else "")
        rows.append([label, _spread(f["entries_per_s"], lambda v: f"{v:,.0f}", True),
                     _spread(f["copy_entries_per_s"], lambda v: f"{v:,.0f}"),
                     _spread(f["x_peer"], lambda v: f"{v:.2f}", True),
                     _spread(f["ack_p50_s"], lambda v: f"{v:.2f}", unit=" s"),
                     _spread(f["ack_p95_s"], lambda v: f"{v:.2f}", True, " s"),
                     _spread(f["p95_over_copy"], lambda v: f"{v:.2f}"), "/".join(str(x) for x in f["busy"]),
                     _spread(f["server_cpu_us"], lambda v: f"{v:.0f}"), _spread(f["db_cpu_us"], lambda v: f"{v:.0f}"),
                     "yes" if f["exactly_once"] else "**NO**"])
    return (_table(["batches", "ingest entries/s", "peer: COPY entries/s", "× peer", "ack p50", "ack p95", "p95 / peer",
                    "503/429 per run", "server CPU µs/entry", "PostgreSQL CPU µs/entry", "each entry once"], rows,
                   "lrrrrrrrrrl")
            + f"\n\n{b['devices']} devices × {b['batches']} batches × {b['per_batch']} entries, {b['runs']} runs "
              f"(median, min–max). Goals: {_goal_lines(b['goals'])} {_when(b)}.")


def entrylog(doc: dict) -> str:
    b = _bench(doc, "entrylog")
    c = b["commit_latency"]
    g = _goal(doc, "entrylog", "entrylog.record", "synchronous=FULL")
    rows = []
    for mode, label in (("FULL", "`EntryLog.record`, FULL (the default)"), ("NORMAL", "`EntryLog.record`, NORMAL"),
                        ("NORMAL none", "`EntryLog.record`, NORMAL, `holder_details=none`")):
        x = c[mode]
        if mode != "NORMAL none":
            rows.append([f"bare sqlite3, `synchronous={mode}`", _us(x["bare_p50_us"]), _us(x["bare_p95_us"]), "1.00",
                         "", ""])
        rows.append([label, _us(x["record_p50_us"]), _us(x["record_p95_us"]), f"**{x['ratio_p50']:.2f}**",
                     f"{x['ratio_rounds']:.2f} ({x['ratio_rounds_p25']:.2f}–{x['ratio_rounds_p75']:.2f})",
                     _us(x["overhead_us"])])
    parts = [[k, _us(v)] for k, v in c["parts_us"].items()]
    bare = ", ".join(_us(v) for v in c["runs_bare_full_us"])
    return (_table(["per-scan commit", "p50 µs", "p95 µs", "p50 × bare", "per-round ratio (p25–p75)",
                    "overhead µs"], rows)
            + f"\n\nThe goal's runs: × bare {', '.join(f'{r:.2f}' for r in g['runs'])}; bare FULL commit p50 per run "
              f"{bare} µs (a fast disk: ≤ {_us(c['fast_disk_max_us'])} µs), files on {c['fs']}.\n\n"
            + _table(["part of `record()` outside SQLite (hot loop)", "µs"], parts) + f"\n\n{_when(b)}.")


def entrylog_scale(doc: dict) -> str:
    s = _bench(doc, "entrylog")["scale"]
    q = s["queries_us"]
    rows = [
        ["database bytes per entry", f"{s['bytes_per_entry']:.0f}"],
        [f"entries for card X ({s['rows']['card']:.1f} rows)",
         f"{_us(q['card'])} µs ({s['query_ratio']['card']:.2f}× raw)"],
        [f"entries at a checkpoint in a 2-hour window ({s['rows']['window']:.1f} rows)",
         f"{_us(q['window'])} µs ({s['query_ratio']['window']:.2f}× raw)"],
        ["the same window query without its index (full table scan)", f"{s['full_scan_ms']:,.0f} ms"],
        [f"export JSONL / CSV of {s['export_n']:,} entries",
         (f"{s['export_rows_per_s']['jsonl']:,.0f} / {s['export_rows_per_s']['csv']:,.0f} rows/s "
         f"(raw cursor {s['raw_rows_per_s']:,.0f})")],
        ["`verify_chain` (every hash recomputed)", f"{s['verify_chain_per_s']:,.0f} entries/s"],
        ["build with `executemany` (bench set-up)", f"{s['build_s']:.0f} s"],
    ]
    return _table([f"at scale: {s['n']:,} entries", "figure"], rows, "lr")


def sync(doc: dict) -> str:
    b = _bench(doc, "sync")
    rows = []
    both = [(str(i), x) for i, x in enumerate(b["runs"], 1)]
    both += [(f"{i}, inline", x) for i, x in enumerate(b.get("inline_runs", []), 1)]
    for i, x in both:
        u, idle = x["upload"], x["idle"]
        rows.append([i, _n(x["entries_per_s"], 0), f"{x['bytes_per_entry']:.0f}", x["requests"],
                     f"{x['main_cpu_s']:.1f} + {x['builder_cpu_s']:.1f}", f"{x['server_cpu_s']:.1f}",
                     f"{u['scans']} / {idle['scans']}", f"{u['p50_ms']:.2f} / {idle['p50_ms']:.2f}",
                     f"{u['p99_ms']:.2f} / {idle['p99_ms']:.2f}", f"{u['max_ms']:.2f} / {idle['max_ms']:.2f}",
                     f"{u['record_max_ms']:.2f} / {idle['record_max_ms']:.2f}", x["checkpoints"]])
    t = b["trust"]
    return (_table(["run", "entries/s while uploading", "bytes/entry", "batches", ("device CPU s (scan process + "
                    "builder)"), "server CPU s", "scans (upload / idle)", "scan p50 ms", "scan p99 ms", "scan max ms",
                    "`record()` max ms", "idle checkpoints"], rows)
            + f"\n\nServer ingest without HTTP (`open_batch` + SQLite commit): {b['ingest_per_s']:,.0f} entries/s "
              f"(`open_batch` alone {b['open_batch_per_s']:,.0f}/s). Trust update with 1,000,000 revoked cards: the "
              f"full bundle {t['full_mib']:.1f} MiB ({t['gzip_mib']:.1f} MiB gzipped on the wire, `open_bundle` "
              f"{t['open_full_s']:.2f} s), the delta (+1,000 / −100 cards) {t['delta_kib']:.0f} KiB (apply + "
              f"`open_bundle` of the rebuilt bundle {t['apply_delta_s']:.2f} s). {_when(b)}.")



def flood(doc: dict) -> str:
    b = _bench(doc, "flood")
    rows = []
    for p in b["phases"]:
        lo_hi = p["upload_s_range"]
        up = "not all" if p["upload_s"] is None else f"{p['upload_s']:.2f} ({lo_hi[0]:.2f}–{lo_hi[1]:.2f})"
        q_lo_hi = p["x_quiet_range"]
        xq = "–" if p["x_quiet"] is None else f"{p['x_quiet']:.1f} ({q_lo_hi[0]:.1f}–{q_lo_hi[1]:.1f})"
        rows.append([p["devices"], p["phase"], f"{p['acked']}/{p['want']}", up, xq,
                     f"{p['growth_mib']:.1f} (max {p['growth_mib_max']:.1f})"])
    answers = ", ".join(f"{k} × {v:,}" for k, v in sorted(b["answers"].items()))
    return (_table(["devices", "phase", "batches acknowledged", "upload s (min–max)", "× quiet",
                    "server peak RSS growth MiB"], rows, "llrrrr")
            + f"\n\nThe attacker was answered: {answers}. {_when(b)}.")


def _backends(b: dict) -> list[tuple[str, dict]]:
    """The trace bench's backends as the docs name them, with their figures."""
    names = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
    return [(names.get(n, n), f) for n, f in b["backends"].items() if isinstance(f, dict)]


def trace(doc: dict) -> str:
    b = _bench(doc, "trace")
    rows = []
    for name, f in _backends(b):
        rows += [[name, "visits", f"{f['visits_ms']:.2f} ms", ""],
                 [name, f"+ contacts ({f['contacts']} entries of {f['cards']} cards)", f"{f['contacts_ms']:.1f} ms",
                  ""],
                 [name, "**+ holders opened: the call-centre answer**", f"**{f['full_ms']:.1f} ms**",
                  f"**{f['full_x_raw_open']:.2f}**"],
                 [name, f"raw: `sealing.open` of those {f['contacts'] + f['visits']} blobs alone",
                  f"{f['raw_open_ms']:.1f} ms", "1.00"],
                 [name, "visits + one visit's contacts, indexes unusable", f"{f['unindexed_ms']:,.0f} ms", ""]]
    peers = ", ".join(f"{f['peer_ms']:.3f} ms on {name}" for name, f in _backends(b))
    sizes = "; ".join(f"{name} {f['build_s']:.0f} s ({b['n'] / f['build_s']:,.0f} rows/s), {f['size_gib']:.1f} GiB "
                      "with indexes" for name, f in _backends(b))
    both = (f" PostgreSQL / SQLite for the whole answer: {b['backends']['postgresql_x_sqlite']:.2f}×."
            if "postgresql_x_sqlite" in b["backends"] else "")
    return (_table(["backend", f"query (card seen {b['visits']} times in 14 days, ±1 h)", "time", "× raw open"], rows,
                   "llrr")
            + f"\n\n{b['n']:,} entries, {b['checkpoints']:,} checkpoints, {b['cards']:,} cards; medians of "
              f"{b['rounds']} interleaved rounds. Peers: one empty indexed lookup {peers}.{both} Build: {sizes}. "
              f"{_when(b)}.")


def trace_console(doc: dict) -> str:
    b = _bench(doc, "trace")
    rows = []
    for name, f in _backends(b):
        if "console_ms" not in f:
            raise _Missing("trace: the console's case page")
        rows += [[name, "library call (`trace`, key in process)", f"{f['full_ms']:.0f} ms", ""],
                 [name, f"**console case page** ({f['console_rows']} contact rows, {f['console_names']} names)",
                  f"**{f['console_ms']:.0f} ms**",
                  f"**{f['console_x_full']:.2f}×** ({f['console_x_full_min']:.2f}–{f['console_x_full_max']:.2f})"]]
    return (_table(["backend", "the call-centre answer", "time", "console / library (spread of rounds)"], rows, "llrr")
            + f"\n\nMedians of {b['rounds']} interleaved rounds. {_when(b)}.")


def _opt(v: float | None, fmt: str = ".1f", unit: str = " s") -> str:
    return "–" if v is None else f"{v:{fmt}}{unit}"


def failover(doc: dict) -> str:
    b = _bench(doc, "failover")
    rows = []
    for r in b["faults"]:
        codes = ", ".join(f"{n} {c}" for c, n in sorted(r["busy_codes"].items())) or "0"
        rows.append([r["manager"], r["fault"], f"{r['acks_before']}/{r['acks_after']}", _opt(r["settled_s"]),
                     _opt(r["stall_s"]), _opt(r["first_ack_after_settled_s"]), codes, r["connection_errors"],
                     f"{r['entries']:,} of {r['expected_entries']:,}", r["acked_missing"],
                     "yes" if r["exact"] else "**NO**"])
    stalls: dict[tuple[str, str], list[float]] = {}
    for r in b["faults"]:
        if r["stall_s"] is not None:
            stalls.setdefault((r["manager"], r["fault"]), []).append(r["stall_s"])
    summary = "; ".join(f"{m}, {fault}: {_spread(v, lambda x: f'{x:.1f}', True, ' s')}"
                        for (m, fault), v in stalls.items())
    return (_table(["manager", "fault", "acks before/after", "fault to settled", "stall", "first ack after settled",
                    "503/429 (code)", "connection errors", "entries on the primary", "acked batches missing",
                    "0 lost, 0 doubled"], rows, "llrrrrrrrrl")
            + f"\n\n{b['devices']} devices × {b['batches']} batches × {b['per_batch']} entries per run, {b['runs']} "
              f"run(s) of each fault. Stall, median (min–max) of the runs: {summary}. {_when(b)}.")


def drain(doc: dict) -> str:
    b = _bench(doc, "drain")
    row = [f"**{b['drain_s']:.0f} s**", f"{b['entries_per_s']:,.0f}", f"{b['copy_entries_per_s']:,.0f}",
           f"{b['x_peer']:.2f}", _opt(b["ack_p50_s"]), f"**{_opt(b['ack_p95_s'])}**", _opt(b["ack_max_s"]),
           b["busy"], b["connection_errors"], f"{b['server_cpu_us']:.0f}", f"{b['db_cpu_us']:.0f}",
           "yes" if b["exactly_once"] else f"**NO** ({b['stored']:,} stored)"]
    return (_table(["time to drain", "entries/s", "peer: COPY entries/s", "× peer", "ack p50", "ack p95", "ack max",
                    "503/429", "connection errors", "server CPU µs/entry", "PostgreSQL CPU µs/entry",
                    "each entry once"], [row], "rrrrrrrrrrrl")
            + f"\n\n{b['devices']} devices × {b['backlog']:,} entries (batches of {b['per_batch']:,}) = "
              f"{b['entries']:,} entries; the batches took {b['made_s']:.0f} s to make beforehand. Acknowledgements "
              f"per 10 s from the first: {', '.join(str(n) for n in b['acks_per_10s'])} batches. Disk: "
              f"**{b['bytes_per_entry']:.0f} bytes per stored entry** in PostgreSQL (the day partitions with their "
              f"indexes). One run (no spread). {_when(b)}.")


def _paths_of_runs(runs: list[list[dict]], keys: list[tuple[str, Callable[[float], str]]]) -> list[list[str]]:
    """One row per path of a latency bench run several times: median (min–max) of the runs per figure."""
    rows = []
    for i, first in enumerate(runs[0]):
        rows.append([first["path"]] + [
            "–" if first[k] is None else _spread([r[i][k] for r in runs], fmt) for k, fmt in keys])
    return rows


def daemon(doc: dict) -> str:
    b = _bench(doc, "daemon")
    if "runs" not in b:
        raise _Missing("daemon: runs and its goal (a run before they were)")
    runs = [r["paths"] for r in b["runs"]]
    rows = _paths_of_runs(runs, [("p50_ms", lambda v: f"{v:.2f}"), ("p95_ms", lambda v: f"{v:.2f}"),
                                 ("x_bare", lambda v: f"{v:.2f}")])
    return (_table(["path", "p50 ms", "p95 ms", "× bare (median)"], rows)
            + f"\n\n{b['n']} cards a run, {len(runs)} runs (median, min–max). Goal: {_goal_lines(b['goals'])} "
              f"{_when(b)}.")


def kiosk(doc: dict) -> str:
    b = _bench(doc, "kiosk")
    p = b["paint"]
    if "skipped" in p:
        paint = f"Verdict to paint: skipped ({p['skipped']})."
    elif "runs" not in p:
        raise _Missing("kiosk: runs and its goal (a run before they were)")
    else:
        runs = [r["paths"] for r in p["runs"]]
        paint = (_table(["from the verdict published to ...", "p50 ms", "p95 ms", "max ms", "× delivery (median)"],
                        _paths_of_runs(runs, [("p50_ms", lambda v: f"{v:.2f}"), ("p95_ms", lambda v: f"{v:.2f}"),
                                              ("max_ms", lambda v: f"{v:.2f}"), ("x_delivery", lambda v: f"{v:.1f}")]))
                 + f"\n\n{p['runs'][0]['n']} cards a run, {len(runs)} runs (median, min–max). Goal: "
                   f"{_goal_lines(b['goals'])}")
    pre = _table(["preview step (640x480 frame)", "median µs", "× decode"],
                 [[k, _us(v["us"]), f"{v['x_decode']:.4f}"] for k, v in b["preview"].items()])
    return f"{paint}\n\n{pre}\n\n{_when(b)}."


def fsync(doc: dict) -> str:
    b = _bench(doc, "fsync")
    g = _goal(doc, "fsync", "fsync.per_scan")
    rows = []
    for mode, label in (("standalone", "standalone (peer)"), ("sync", "enrolled, sync on as shipped")):
        per = b["per_scan"][mode]
        rows.append([label, len(per), f"**{statistics.median(per):.3f}**", f"{min(per):.3f}–{max(per):.3f}",
                     f"{statistics.median(b['until_ack'][mode]):.3f}",
                     f"{statistics.median(b['uploads']):.0f}" if mode == "sync" else "–"])
    files = ", ".join(f"{k} {v:.3f}" for k, v in b["by_file_per_scan"].items())
    mem = "; ".join(f"{mode}: RSS {m['rss_mib']:.0f} MiB, peak {m['peak_mib']:.0f} MiB, child processes "
                    f"{m['children_rss_mib']:.0f} MiB" for mode, m in b["memory"].items())
    return (_table(["device", "runs", "fsyncs per scan (median)", "spread", "until acknowledged", "uploads per run"],
                   rows)
            + f"\n\nSync on, per file and scan: {files}. Goal: **{g['verdict']}**. The daemon's memory at the end "
              f"of a run (`VmRSS`, `VmHWM`; median of runs): {mem}. {b['n']} cards a run, one every "
              f"{b['pace_ms']:.0f} ms. {_when(b)}.")


def site(doc: dict) -> str:
    b = _bench(doc, "site")
    p = b["propagation"]
    runs = [[i + 1, f"{v:.1f}", f"{bare:.1f}" if bare is not None else "–"]
            for i, (v, bare) in enumerate(zip(p["p95_ms_runs"], p["bare_p95_ms_runs"], strict=True))]
    lanes = [[i + 1, f"{r['alone_p50_ms']:.2f} / {r['alone_p95_ms']:.2f}", (f"{r['shared_p50_ms']:.2f} / "
              f"{r['shared_p95_ms']:.2f}"), f"{r['p95_delta_ms']:+.2f}", f"{r['ratio_median']:.2f}",
              f"{r['share_p50_ms']:.3f} / **{r['share_p95_ms']:.3f}**"] for i, r in enumerate(b["lane"])]
    return (_table(["run", "known to all, p95 ms", "peer (bare datagram to all), p95 ms"], runs)
            + f"\n\n{b['gates']} gates, {b['scans_per_run']} scans a run; known to each other gate median "
              f"{p['each_median_ms']:.1f} ms, to all {p['all_median_ms']:.1f} ms; {b['missed']} scans not known to "
              f"all within 2 s (each counted as 2 s).\n\n"
            + _table(["run", "lane without sharing p50 / p95 ms", "with sharing p50 / p95 ms", "p95 with − without ms",
                      "median per-scan ratio", "the site's own steps p50 / p95 ms"], lanes)
            + f"\n\nThe lane's entry logs on {b['lane_disk']}. {_when(b)}.")


def cli(doc: dict) -> str:
    b = _bench(doc, "cli")
    peers = {"checkpoint verify": ("`checkpoint verify --trust KEY TEXT`",
                                   "`verify(text, load_trust(...))` in `python -c`"),
             "checkpoint --help": ("`checkpoint --help`", '`python -c "import click"`'),
             "checkpoint config check": ("`checkpoint config check FILE`", "`check_file(path)` in `python -c`")}
    if "goals" not in b:
        raise _Missing("cli: goals judged on the rounds (a run before they were)")
    goal = {g["key"]: g for g in b["goals"]}
    rows = []
    for name, f in b.items():
        if isinstance(f, dict) and "ratio" in f:
            g = goal[f["goal"]]
            rows.append([*peers.get(name, (f"`{name}`", "")), _n(f["ms"], 0), _n(f["peer_ms"], 0),
                         f"**{f['ratio']:.2f}**", f"{f['ratio_p25']:.2f}–{f['ratio_p75']:.2f}",
                         f"{g['min']:.2f}–{g['max']:.2f}",
                         f"≤ {g['limit']}, met in {g['met_runs']} of {len(g['runs'])}: **{g['verdict']}**"])
    return (_table(["command", "peer", "CPU ms", "peer ms", "× peer (median of rounds)", "p25–p75", "min–max",
                    "goal"], rows, "llrrrrrl")
            + f"\n\n{b['rounds']} rounds, each a fresh process of the command and of its peer. {_when(b)}.")


# Pi models against the x86 figures (docs/raspberry-pi.md states where each comes from): a Pi 4's
# Ed25519 verify as published (µs), its CPython and its decode against x86, and the other models
# against the Pi 4, each as a (low, high) range.
PI4_ED25519_US = (240.0, 280.0)
PI4_PYTHON = (3.0, 4.0)
PI4_DECODE = (6.0, 6.0)
PI_MODELS = (("Pi 5", (0.4, 0.5)), ("Pi 4", (1.0, 1.0)), ("Pi 3B+", (2.0, 2.5)), ("Pi Zero 2 W", (2.8, 3.5)))
_FRAMES = ("640x480 one card", "1280x720 one card", "640x480 empty scene", "640x480 empty noise")


def _pi_inputs(doc: dict) -> dict:
    v, d, e = (_bench(doc, "verify")["figures"], _bench(doc, "decode")["frames"],
               _bench(doc, "entrylog")["commit_latency"])
    return {"raw_us": v["EdDSA"]["raw_us"], "python_us": v["EdDSA"]["overhead_us"],
            "decode_ms": {f: d[f]["stream"] for f in _FRAMES}, "log_us": e["NORMAL"]["overhead_us"],
            "seal_us": e["parts_us"]["seal holder in a session (AES-GCM)"]}


def pi_inputs(doc: dict) -> str:
    x = _pi_inputs(doc)
    ms = x["decode_ms"]
    labelled = _labelled_doc(doc)

    def on(bench: str) -> list[str]:  # the machine, where the file holds more than one
        return [doc["benches"][bench]["on"]] if labelled else []
    return _table(["figure on this x86 machine ([benchmarks.md](benchmarks.md))", "value"]
                  + (["measured on"] if labelled else []), [
        ["Ed25519 raw `cryptography` verify", f"{_us(x['raw_us'])} µs", *on("verify")],
        ["interpreter work in `verifier.verify` (full − raw)", f"{_us(x['python_us'])} µs", *on("verify")],
        ["stream decode (what a camera runs), 640x480 frame with one CK1 card / empty scene / uniform noise (worst)",
         f"{ms[_FRAMES[0]]:.2f} / {ms[_FRAMES[2]]:.2f} / {ms[_FRAMES[3]]:.2f} ms", *on("decode")],
        ["stream decode, 1280x720 frame with one card", f"{ms[_FRAMES[1]]:.2f} ms", *on("decode")],
        [("`EntryLog.record` CPU beyond a bare commit (NORMAL; sealing in a session is "
         f"{_us(x['seal_us'])} µs of it)"), f"{_us(x['log_us'])} µs", *on("entrylog")],
    ], "lr" + ("l" if labelled else ""))


def pi_budget(doc: dict) -> str:
    x = _pi_inputs(doc)
    ms = x["decode_ms"]

    def span(lo: float, hi: float, digits: int = 2) -> str:
        if round(lo, digits) == round(hi, digits):
            return f"{lo:.{digits}f} ms"
        return f"{lo:.{digits}f}–{hi:.{digits}f} ms"

    verify_ms = (x["raw_us"] + x["python_us"]) / 1000
    log_ms = x["log_us"] / 1000
    rows = [["x86 here (measured)", span(verify_ms, verify_ms), span(ms[_FRAMES[0]], ms[_FRAMES[0]]),
             span(ms[_FRAMES[1]], ms[_FRAMES[1]]), f"{ms[_FRAMES[2]]:.2f} / {ms[_FRAMES[3]]:.2f} ms",
             span(log_ms, log_ms),
             f"**{span(verify_ms + ms[_FRAMES[0]] + log_ms, verify_ms + ms[_FRAMES[0]] + log_ms, 1)}**"]]
    for model, (lo, hi) in PI_MODELS:
        v = [(PI4_ED25519_US[i] + x["python_us"] * PI4_PYTHON[i]) * f / 1000 for i, f in ((0, lo), (1, hi))]
        dec = {fr: (ms[fr] * PI4_DECODE[0] * lo, ms[fr] * PI4_DECODE[1] * hi) for fr in _FRAMES}
        lg = (x["log_us"] * PI4_PYTHON[0] * lo / 1000, x["log_us"] * PI4_PYTHON[1] * hi / 1000)
        total = (v[0] + dec[_FRAMES[0]][0] + lg[0], v[1] + dec[_FRAMES[0]][1] + lg[1])
        rows.append([model, span(*v), span(*dec[_FRAMES[0]], 1), span(*dec[_FRAMES[1]], 1),
                     f"{span(*dec[_FRAMES[2]], 1)[:-3]} / {span(*dec[_FRAMES[3]], 1)}", span(*lg),
                     f"**{span(*total, 1)}**"])
    return _table(["per scan (estimates)", "verify, Ed25519", "decode 640x480, card", "decode 1280x720, card",
                   "decode 640x480, empty / noise", "entry log CPU", "CPU per scan at 640x480"], rows)


def pi_frames(doc: dict) -> str:
    """The stream decoder's cost per kind of frame, on this machine and on a Pi 4 (x PI4_DECODE)."""
    fr = _bench(doc, "decode")["frames"]
    st = {name: f["stream"] for name, f in fr.items()}
    need = ("640x480 empty scene", "640x480 empty noise", "1280x720 empty scene", "640x480 one card",
            "1280x720 one card", "1280x720 passer-by")
    if any(n not in st for n in need):
        raise _Missing("decode: the frames the budget needs")
    k = PI4_DECODE[0]

    def both(a: str, b: str, la: str, lb: str) -> list[str]:
        return [f"{st[a]:.2f} ms ({la}) – {st[b]:.2f} ms ({lb})", f"~{st[a] * k:.0f}–{st[b] * k:.0f} ms"]
    rows = [["empty, 640x480 (or picamera2 lores), still lane",
             *both("640x480 empty scene", "640x480 empty noise", "scene", "uniform noise")],
            ["empty, 1280x720, still lane", f"{st['1280x720 empty scene']:.2f} ms",
             f"~{st['1280x720 empty scene'] * k:.0f} ms"],
            ["a card, read by the first pass", *both("640x480 one card", "1280x720 one card", "640x480", "1280x720")],
            ["something moving, 1280x720 (probe and texture search for 3 s)", f"{st['1280x720 passer-by']:.2f} ms",
             f"~{st['1280x720 passer-by'] * k:.0f} ms"]]
    for r in rows:
        r.append("fine" if float(r[2].split("–")[-1].strip("~ ms")) < 1000 / 15 else "**over**")
    return _table(["frame", "x86 CPU (stream decoder)", f"Pi 4 (x{k:.0f})", "against a 15 fps period (67 ms)"],
                  rows, "lrrl")


def scaling_fleet(doc: dict) -> str:
    """docs/scaling.md's ingest figures: the fleet run of the results file, group commit on and off."""
    b = _bench(doc, "fleet")
    f = b["figures"]
    need = ("format 1", "format 2", "format 1, group commit off", "format 2, group commit off")
    if any(n not in f for n in need):
        raise _Missing("fleet: both formats with group commit on and off")

    def med(case: str, key: str, form: str) -> str:
        return format(statistics.median(f[case][key]), form)
    on, off = need[:2], need[2:]
    return (f"**{med(on[0], 'entries_per_s', ',.0f')} / {med(on[1], 'entries_per_s', ',.0f')} entries/s** in "
            f"format 1 / 2 (medians of {b['runs']} runs; **{med(on[0], 'x_peer', '.2f')}× / "
            f"{med(on[1], 'x_peer', '.2f')}×** a bare `COPY` of the same rows into the same database in the same runs, "
            f"which reached {med(on[0], 'copy_entries_per_s', ',.0f')} / {med(on[1], 'copy_entries_per_s', ',.0f')} "
            f"rows/s), ack p95 {med(on[0], 'ack_p95_s', '.2f')} / {med(on[1], 'ack_p95_s', '.2f')} s, server CPU "
            f"{med(on[0], 'server_cpu_us', '.0f')} / {med(on[1], 'server_cpu_us', '.0f')} µs and PostgreSQL "
            f"{med(on[0], 'db_cpu_us', '.0f')} / {med(on[1], 'db_cpu_us', '.0f')} µs per entry; without group commit "
            f"{med(off[0], 'entries_per_s', ',.0f')} / {med(off[1], 'entries_per_s', ',.0f')} entries/s; "
            f"{'no `503`' if not any(x for c in need for x in f[c]['busy']) else 'some `503`'}; "
            f"{'each entry stored once' if all(f[c]['exactly_once'] for c in need) else '**not each entry once**'} "
            f"({b['started'][:16].replace('T', ' ')}, load average {b['load_average'][0]:.1f}, code {b['commit']})")


def scaling_drain(doc: dict) -> str:
    b = _bench(doc, "drain")
    busy = "no `503`" if not b["busy"] else f"{b['busy']} `503`/`429`"
    once = "each entry once" if b["exactly_once"] else "**not each entry once**"
    return (f"{b['entries']:,} entries stored in **{b['drain_s']:.0f} s** ({b['entries_per_s']:,.0f} "
            f"entries/s, {b['x_peer']:.2f}× a bare `COPY` in the same run), ack p95 {_opt(b['ack_p95_s'])}, {busy}, "
            f"{once} (load average {b['load_average'][0]:.1f})")


OUTAGE_ENTRIES = 1_300_000  # docs/scaling.md: a province offline for its two busiest hours


def scaling_outage(doc: dict) -> str:
    """How long the measured drain rate takes for a province's two busiest hours (docs/scaling.md)."""
    b = _bench(doc, "drain")
    return f"about {OUTAGE_ENTRIES / b['entries_per_s']:,.0f} s (at {b['entries_per_s']:,.0f} entries/s)"


def scaling_failover(doc: dict) -> str:
    b = _bench(doc, "failover")
    stalls: dict[tuple[str, str], list[float]] = {}
    for r in b["faults"]:
        if r["stall_s"] is not None:
            stalls.setdefault((r["manager"], r["fault"]), []).append(r["stall_s"])
    paf, hand = stalls.get(("pg_auto_failover", "primary_killed")), stalls.get(("pg_ctl", "primary_killed"))
    if not paf or not hand:
        raise _Missing("failover: the primary killed under both managers")
    lost = "nothing lost or doubled" if all(r["exact"] for r in b["faults"]) else "**an entry lost or doubled**"
    return (f"{lost} in any of the {len(b['faults'])} runs of the faults; with the primary killed mid-ingest "
            f"uploads stalled {min(paf):.1f}–{max(paf):.1f} s with pg_auto_failover (most of it the monitor's "
            "detection), "
            f"{min(hand):.1f}–{max(hand):.1f} s when the standby is promoted by hand a second after the kill "
            f"(load average {b['load_average'][0]:.1f})")


def readme_decode(doc: dict) -> str:
    x = _bench(doc, "decode")["samples"]
    if not x:
        raise _Missing("decode: the shared sample photos")
    app, zx, zb = x["appliance (auto)"], x["zxing-cpp"], x["pyzbar"]
    return (f"reads {app['correct']} of the {app['n']} real-world sample photos, against {zx['correct']} for "
            f"zxing-cpp alone and {zb['correct']} for pyzbar")


def readme_trace(doc: dict) -> str:
    b = _bench(doc, "trace")
    parts = [f"{f['full_ms']:.0f} ms on {name.replace('sqlite', 'SQLite').replace('postgresql', 'PostgreSQL')}"
             for name, f in b["backends"].items() if isinstance(f, dict)]
    n = f"{b['n'] // 1_000_000}M" if b["n"] >= 1_000_000 else f"{b['n']:,}"
    return f"{' and '.join(parts)} with {n} entries"


def _value(path: str) -> Callable[[dict], str]:
    """An inline figure: ``bench.key.key...|format`` from the results."""
    spec, _, fmt = path.partition("|")

    def render(doc: dict) -> str:
        bench, *keys = spec.split(".")
        v = _bench(doc, bench)
        try:
            for k in keys:
                v = v[int(k)] if isinstance(v, list) else v[k]
        except (KeyError, IndexError, ValueError):
            raise _Missing(spec) from None
        return format(v, fmt) if fmt else str(v)
    return render


def soak(doc: dict) -> str:
    b = _bench(doc, "soak")
    rows = []
    for i, r in enumerate(b["runs"], 1):
        fifths = r["slope_fifths"]
        rows.append([i, f"{r['start_rss_mib']:.1f} / {r['start_pss_mib']:.1f}",
                     f"{r['steady_rss_mib']:.1f} / {r['steady_pss_mib']:.1f}",
                     f"{r['daemon_rss_mib']:.1f} + {r['builder_rss_mib']:.1f}",
                     f"{r['swap_peak_rss_mib']:.1f} / {r['swap_peak_pss_mib']:.1f}", f"{r['daemon_swap_hwm_mib']:.1f}",
                     f"{r['slope_mib_per_10k']:+.2f} ({min(fifths):+.2f} … {max(fifths):+.2f})",
                     f"{r['daemon_slope_mib_per_10k']:+.2f}"])
    f = b["summary"]

    def mid(key: str, form: str = ".1f") -> str:
        return f"**{f[key]['median']:{form}}** ({f[key]['min']:{form}} … {f[key]['max']:{form}})"
    rows.append(["median (range)", mid("start_rss_mib"),
                 mid("steady_rss_mib") + " / " + f"{f['steady_pss_mib']['median']:.1f}",
                 f"{f['daemon_rss_mib']['median']:.1f} + {f['builder_rss_mib']['median']:.1f}",
                 mid("swap_peak_rss_mib") + " / " + f"{f['swap_peak_pss_mib']['median']:.1f}",
                 mid("daemon_swap_hwm_mib"), mid("slope_mib_per_10k", "+.2f"), mid("daemon_slope_mib_per_10k", "+.2f")])
    return (_table(["run", "after start-up RSS / PSS MB", "steady RSS / PSS MB", "steady RSS: daemon + other processes",
                    "bundle swap: sampled peak RSS / PSS MB", "the daemon's VmHWM over the swap",
                    "slope MB per 10k scans (fifths)", "the daemon's slope"], rows)
            + f"\n\n{b['scans']:,} scans a run, {b['revoked']:,} revoked ids, trust checked every "
              f"{b['trust_interval_s']} s. {_when(b)}.")


RENDERERS: dict[str, Callable[[dict], str]] = {
    "machine": machine, "goals": goals, "verify": verify, "bundle": bundle, "feedback": feedback,
    "feedback.handover": feedback_handover, "formats": formats, "pipeline": pipeline,
    "entrylog": entrylog, "entrylog.scale": entrylog_scale, "sync": sync, "flood": flood,
    "trace": trace, "trace.console": trace_console, "failover": failover, "drain": drain, "daemon": daemon,
    "kiosk": kiosk, "fsync": fsync, "site": site, "cli": cli, "soak": soak,
    "decode.samples": decode_samples, "decode.frames": decode_frames, "decode.camera": decode_camera,
    "decode.clips": decode_clips, "decoding.backends": decoding_backends, "decoding.empty": decoding_empty,
    "decoding.goals": decoding_goals, "decode.clips.second": lambda doc: decode_clips(doc, 1), "fleet": fleet,
    "pi.inputs": pi_inputs, "pi.frames": pi_frames, "scaling.fleet": scaling_fleet, "scaling.drain": scaling_drain,
    "scaling.failover": scaling_failover, "scaling.outage": scaling_outage,
    "pi.budget": pi_budget, "readme.decode": readme_decode, "readme.trace": readme_trace,
}


def render(name: str, doc: dict) -> str:
    fn = RENDERERS.get(name) or (_value(name[2:]) if name.startswith("=:") else None)
    if fn is None:
        raise SystemExit(f"bench.report: no part named {name!r}")
    try:
        return fn(doc)
    except _Missing as exc:
        return f"(not in this results file: {exc})"


def generate(text: str, results_file: str | None = None) -> str:
    """The doc ``text`` with its generated parts made from the results file it names (or
    ``results_file``, which it is made to name)."""
    named = _NAMED.search(text)
    if named is None:
        raise SystemExit("bench.report: the doc names no results file (<!-- bench-results: FILE -->)")
    if results_file is not None:
        text = text[:named.start(1)] + results_file + text[named.end(1):]
    doc = _labelled(results.load(ROOT / (results_file or named.group(1))))

    def part(m: re.Match) -> str:
        body = render(m.group(1), doc)
        inner = f"\n{body}\n" if "\n" in m.group(2) or "\n" in body else body
        return f"<!-- bench:{m.group(1)} -->{inner}<!-- /bench:{m.group(1)} -->"
    return _PART.sub(part, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", metavar="FILE", help="point every doc at this results file (relative to the "
                        "repository) before generating")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a doc is stale")
    args = parser.parse_args(argv)
    stale = []
    for name in DOCS:
        path = ROOT / name
        old = path.read_text(encoding="utf-8")
        new = generate(old, args.results)
        if new != old:
            stale.append(name)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    if args.check and stale:
        print(f"stale: {', '.join(stale)}: run python -m bench.report", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
