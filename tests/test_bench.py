"""The benchmarks' own machinery: goals judged on several runs, the results file, the docs made from
one, and peers and stubs that measure what they claim to (the timings themselves are bench/'s)."""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import zxingcpp
from support.paths import ROOT

from bench import bench_cli, bench_sync, bench_verify, fixtures, goals, report, results
from bench.timing import run_queue_wait_s
from bench.world import bundle_bytes, world
from hardware.decode import make_decoder
from scanner.cards import verifier
from scanner.cards.bundle import open_bundle
from scanner.cards.trust import TrustStore


def test_the_goals_are_the_products():
    limits = {k: (g.limit, g.unit) for k, g in goals.GOALS.items()}
    assert limits == {
        "verify.EdDSA": (1.3, "x"), "verify.ES256": (1.5, "x"),
        "decode.empty.pyzbar": (0.2, "x"), "decode.empty.zxing": (1.1, "x"),
        "entrylog.record": (1.3, "x"),
        "sync.stall.p99": (2.0, "ms"), "sync.stall.max": (5.0, "ms"),
        "fsync.per_scan": (1.05, "fsync/scan"),
        "site.propagation.p95": (200.0, "ms"), "site.lane.share_p95": (1.0, "ms"),
        "site.lane.p95_delta": (1.0, "ms"),
        "fleet.entries_per_s": (50_000.0, "entries/s"), "fleet.ack_p95": (2.0, "s"),
        "soak.steady_rss": (120.0, "MB"), "soak.swap_peak": (160.0, "MB"), "soak.slope": (0.2, "MB/10k scans"),
        "daemon.event_p95": (100.0, "ms"), "kiosk.paint_p95": (100.0, "ms"), "pipeline.overhead": (1.2, "x"),
        "cli.verify": (1.3, "x"), "cli.help": (1.5, "x"), "cli.config_check": (1.3, "x"),
    }


def test_a_goal_is_judged_on_the_median_of_the_runs():
    two_of_five = goals.judge("verify.EdDSA", [1.1, 1.2, 1.4, 1.5, 1.6])
    assert (two_of_five.verdict, two_of_five.met_runs) == ("not met", 2)
    three_of_five = goals.judge("verify.EdDSA", [1.1, 1.2, 1.25, 1.5, 1.6])
    assert (three_of_five.verdict, three_of_five.median) == ("met", 1.25)
    assert goals.judge("verify.EdDSA", [1.0, 1.0]).verdict == "not judged"  # a --quick run
    slow = goals.judge("entrylog.record", [1.0, 1.0, 1.0], unjudged="the disk is slow")
    assert (slow.verdict, slow.note) == ("not judged", "the disk is slow")
    assert "2 of 5: NOT MET" in two_of_five.line()
    noisy = goals.judge("sync.stall.p99", [-19.0, -6.3, 18.5])  # ms above a peer, straddling the 2 ms goal
    assert noisy.verdict == "not judged" and "noise" in noisy.note
    assert goals.judge("sync.stall.p99", [30.0, 45.0, 215.0]).verdict == "not met"  # all above: a miss, noisy or not
    assert goals.judge("sync.stall.p99", [0.5, 1.0, 1.5]).verdict == "met"
    # from five runs on, one hiccup of the machine either way does not void the others...
    hiccup = goals.judge("sync.stall.p99", [-42.3, -0.7, 0.3, 1.1, 6.0])
    assert (hiccup.verdict, hiccup.met_runs) == ("met", 4)
    assert goals.judge("sync.stall.p99", [1.5, 2.5, 3.0, 3.4, 60.0]).verdict == "not met"
    # ...but two on one side do, and a median outside the limit is a miss however the runs spread
    assert goals.judge("sync.stall.p99", [-0.5, 0.2, 0.8, 30.0, 60.0]).verdict == "not judged"
    assert goals.judge("sync.stall.p99", [-40.0, 1.0, 2.5, 3.0, 6.5]).verdict == "not met"


def test_a_rate_to_reach_is_met_at_or_above_its_limit():
    """The fleet's goals as the product set them (entries/s on this machine, ack p95 in seconds):
    a rate is met when the median of the runs reaches it, and the ratio to the peer is written beside it."""
    short = goals.judge("fleet.entries_per_s", [41_000, 44_000, 52_000], "format 2", note="0.43x the bare COPY")
    assert (short.verdict, short.met_runs) == ("not met", 1)
    reached = goals.judge("fleet.entries_per_s", [49_000, 50_000, 55_000])
    assert (reached.verdict, reached.met_runs) == ("met", 2)
    assert "≥ 50,000 entries/s" in short.line() and "0.43x the bare COPY" in short.line()
    assert goals.judge("fleet.ack_p95", [1.4, 1.5, 2.6]).verdict == "met"
    assert goals.judge("fleet.ack_p95", [1.9, 2.1, 2.6]).verdict == "not met"
    words = report._goal_lines([short.as_dict()])
    assert "≥ 50,000 entries/s" in words and "median **44,000 entries/s**" in words and "0.43x" in words


def test_a_results_file_holds_the_machine_and_each_benchmark(tmp_path):
    path = tmp_path / "r.json"
    at = dt.datetime(2026, 12, 6, 10, 0).astimezone()
    g = goals.judge("fsync.per_scan", [1.01, 1.02, 1.03])
    results.save(path, "fsync", {"n": 300, "goals": [g.as_dict()]}, quick=False, started=at, seconds=12.0)
    results.save(path, "verify", {"figures": {"x": np.float64(1.5)}}, quick=False, started=at, seconds=3.0)
    results.save(path, "fsync", {"n": 301}, quick=False, started=at, seconds=1.0)  # again: replaces its part
    doc = results.load(path)
    m = doc["machine"]
    assert m["cpus"] and m["cpu"] and m["python"].startswith("CPython") and m["sqlite"] and m["host"]
    assert set(doc["benches"]) == {"fsync", "verify"}
    assert doc["benches"]["fsync"]["n"] == 301 and "goals" not in doc["benches"]["fsync"]
    assert doc["benches"]["verify"]["figures"]["x"] == 1.5 and not doc["benches"]["verify"]["quick"]
    with pytest.raises(ValueError):
        results.save(path, "x", {"bad": float("nan")}, quick=False, started=at, seconds=1.0)


def test_a_result_cannot_overwrite_when_and_how_its_run_was_made(tmp_path):
    """A benchmark's figures under a key of the file's own (``commit``: the code's hash) would take
    its place, and the docs would print the figures as the code's commit."""
    at = dt.datetime(2026, 12, 6, 10, 0).astimezone()
    for key in ("commit", "started", "load_average"):
        with pytest.raises(ValueError):
            results.save(tmp_path / "r.json", "entrylog", {key: {"FULL": 1.0}}, quick=False, started=at, seconds=1.0)
    assert not (tmp_path / "r.json").exists()


def test_the_docs_are_generated_from_the_results_file_they_name():
    for name in report.DOCS:
        text = (ROOT / name).read_text(encoding="utf-8")
        assert "<!-- bench-results: bench/results/" in text, name
        assert report.generate(text) == text, f"{name} is stale: run `python -m bench.report`"


def test_the_server_and_decode_sections_come_from_the_results_file_where_it_holds_them():
    """A benchmark the results file holds is a generated part of docs/benchmarks.md; one it does not
    hold says so in its section instead of passing off quoted figures as current."""
    text = (ROOT / "docs/benchmarks.md").read_text(encoding="utf-8")
    doc = results.load(ROOT / re.search(r"<!-- bench-results: (\S+) -->", text).group(1))
    parts = set(re.findall(r"<!-- bench:([^ =]\S*) -->", text))
    for bench in ("decode", "fleet", "failover", "drain", "trace"):
        if bench in doc["benches"]:
            assert {p for p in parts if p.split(".")[0] == bench}, f"{bench}: stored but not generated"
        else:
            assert f"no run of `--only {bench}`" in text, f"{bench}: not stored, and the section does not say so"
    for name in report.RENDERERS:  # every part made from a stored benchmark is in the doc, and made from it
        bench = name.split(".")[0]
        if bench in ("decode", "fleet", "failover", "drain", "trace", "cli") and bench in doc["benches"]:
            assert f"<!-- bench:{name} -->" in text, f"{name}: stored but not generated"
            assert "not in this results file" not in report.render(name, doc), name


def test_every_stored_benchmark_is_in_the_docs():
    """A benchmark the results file holds has its figures generated somewhere (else its section is
    hand-written and goes stale unseen), and every generated part finds what it needs in the file."""
    texts = {name: (ROOT / name).read_text(encoding="utf-8") for name in report.DOCS}
    parts = {p for text in texts.values() for p in report._PART.findall(text)}
    names = {name.removeprefix("=:").split(".")[0] for name, _ in parts}
    for name, text in texts.items():
        doc = results.load(ROOT / re.search(r"<!-- bench-results: (\S+) -->", text).group(1))
        for bench in doc["benches"]:
            assert bench in names, f"{bench}: stored in {name}'s results file but generated in no doc"
        for part, _ in report._PART.findall(text):
            assert "not in this results file" not in report.render(part, doc), f"{name}: {part}"


def test_a_figure_changed_by_hand_in_a_generated_part_is_found():
    """Every generated part of every doc is checked: one digit changed in any of them makes the doc
    differ from what its results file gives."""
    checked = 0
    for name in report.DOCS:
        text = (ROOT / name).read_text(encoding="utf-8")
        for m in report._PART.finditer(text):
            digit = re.search(r"\d", m.group(2))
            if digit is None:
                continue
            at = m.start(2) + digit.start()
            changed = text[:at] + str((int(digit.group()) + 1) % 10) + text[at + 1:]
            assert report.generate(changed) != changed, f"{name}: a figure changed in {m.group(1)} goes unnoticed"
            checked += 1
    assert checked >= 40


def test_a_doc_part_follows_its_results_file(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    g = goals.judge("fsync.per_scan", [1.01, 1.02, 1.09])
    results.save(path, "fsync", {"goals": [g.as_dict()]}, quick=False,
                 started=dt.datetime.now().astimezone(), seconds=1.0)
    monkeypatch.setattr(report, "ROOT", tmp_path)
    text = ("<!-- bench-results: r.json -->\nMedian <!-- bench:=:fsync.goals.0.median|.3f -->?"
            "<!-- /bench:=:fsync.goals.0.median|.3f -->.\n<!-- bench:goals -->\n<!-- /bench:goals -->\n"
            "<!-- bench:verify -->\n<!-- /bench:verify -->\n")
    out = report.generate(text)
    assert "-->1.020<!--" in out and "| `fsync.per_scan` |" in out and "**met**" in out
    assert "(not in this results file: verify)" in out
    assert report.generate(out) == out
    doc = json.loads(path.read_text())
    doc["benches"]["fsync"]["goals"][0]["median"] = 1.5
    path.write_text(json.dumps(doc))
    assert "-->1.500<!--" in report.generate(out)


def test_each_benchmark_keeps_the_machine_it_ran_on_and_the_docs_say_which(tmp_path, monkeypatch):
    """One host name, two machines (a VM moved to other hardware): each part of the file keeps its own,
    a part stored before parts kept one takes the file's, and the docs label each figure's machine."""
    path = tmp_path / "r.json"
    at = dt.datetime(2026, 12, 7, 10, 0).astimezone()
    fsync = goals.judge("fsync.per_scan", [1.01, 1.02, 1.03])
    results.save(path, "fsync", {"goals": [fsync.as_dict()]}, quick=False, started=at, seconds=1.0)
    doc = json.loads(path.read_text())
    del doc["benches"]["fsync"]["machine"]  # as stored before parts kept their machine
    doc["machine"]["cpu"] = "An older CPU (test)"
    path.write_text(json.dumps(doc))
    stall = goals.judge("sync.stall.p99", [0.5, 1.0, 1.5])
    results.save(path, "sync", {"goals": [stall.as_dict()]}, quick=False, started=at, seconds=1.0)
    doc = results.load(path)
    assert doc["benches"]["fsync"]["machine"]["cpu"] == "An older CPU (test)"
    here = results.hardware(results.machine())
    assert doc["benches"]["sync"]["machine"] == here != doc["benches"]["fsync"]["machine"]
    assert doc["machine"]["cpu"] == here["cpu"] and "commit" not in here and "load_average" not in here
    monkeypatch.setattr(report, "ROOT", tmp_path)
    text = ("<!-- bench-results: r.json -->\nMachine: <!-- bench:machine --><!-- /bench:machine -->\n"
            "<!-- bench:goals -->\n<!-- /bench:goals -->\n")
    out = report.generate(text)
    assert f"**fsync** on {here['host']}: " in out and "(An older CPU (test))" in out
    assert f"**sync** on {here['host']}: " in out and f"({here['cpu']})" in out
    assert "| measured on |" in out
    assert f"| **met** | {here['cpu']}, Linux {here['kernel']} |" in out
    assert f"| **met** | An older CPU (test), Linux {here['kernel']} |" in out
    labelled = report._labelled(results.load(path))
    assert report._when(labelled["benches"]["sync"]).endswith(f", on {here['cpu']}, Linux {here['kernel']}")
    one = report._labelled({**doc, "benches": {"sync": doc["benches"]["sync"]}})  # one machine: no labels
    assert "on" not in one["benches"]["sync"] and ", on " not in report._when(one["benches"]["sync"])


def test_the_sync_lanes_figures_say_how_much_of_the_tail_was_waiting_for_a_cpu():
    fast = [(i * 0.05, 0.001, 0.0005, 0.0) for i in range(100)]
    kept_off = [(5.0, 0.030, 0.029, 0.029), (5.05, 0.031, 0.030, 0.029)]  # slow only while runnable, not running
    f = bench_sync._figures(fast + kept_off)
    assert f["p99_ms"] == pytest.approx(30.0) and f["cpu_wait_p99_ms"] == pytest.approx(29.0)
    assert f["p99_less_cpu_wait_ms"] == pytest.approx(1.0)  # the tail was the wait: without it, a fast scan's
    unknown = bench_sync._figures([(0.0, 0.001, 0.0005, None)])
    assert unknown["cpu_wait_p99_ms"] is None and unknown["p99_less_cpu_wait_ms"] is None
    assert unknown["p99_ms"] == pytest.approx(1.0)


def test_the_run_queue_wait_counts_a_thread_kept_off_its_cpu():
    if run_queue_wait_s() is None:
        pytest.skip("the kernel does not give a thread's run-queue wait (/proc/thread-self/schedstat)")
    cpu = min(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(hog.pid, {cpu})
        os.sched_setaffinity(0, {cpu})  # this thread and the hog on one CPU: each waits while the other runs
        w0, t0 = run_queue_wait_s(), time.perf_counter()
        while time.perf_counter() - t0 < 0.5:
            pass
        waited = run_queue_wait_s() - w0
    finally:
        os.sched_setaffinity(0, before)
        hog.kill()
        hog.wait()
    assert waited > 0.1  # about half of the 0.5 s, had the two the CPU alone


def test_the_stubbed_verify_skips_the_signature_check():
    """bench_verify's Python-side case must reach the verifier: it accepts a card whose signature
    is broken, which the real verify rejects."""
    w = world()
    trust = TrustStore.build(bundles=[open_bundle(bundle_bytes(10), [w.root.public_key()])])
    text = fixtures.card_text(w.ed_key, w.at)
    forged = bench_verify._forged(text)
    assert verifier.verify(text, trust, w.at).accepted and not verifier.verify(forged, trust, w.at).accepted
    stubbed = bench_verify.stubbed_verify(trust, w.at)
    assert stubbed(forged).accepted and stubbed(text).accepted
    assert not verifier.verify(forged, trust, w.at).accepted  # the stub is gone again


def test_the_decode_peer_makes_the_first_passs_call(monkeypatch):
    """bench_decode's zxing peer is the appliance's first pass as a bare library call: the same
    options, read from the decoder itself."""
    calls = []
    real = zxingcpp.read_barcodes

    def recording(image, **kwargs):
        calls.append(kwargs)
        return real(image, **kwargs)
    monkeypatch.setattr(zxingcpp, "read_barcodes", recording)
    decoder = make_decoder("auto")
    for shape in ((480, 640), (720, 1280), (1800, 2400)):
        calls.clear()
        decoder.decode(np.full(shape, 128, np.uint8))
        assert calls[0] == decoder.first_pass_options(shape)


def test_the_cli_commands_and_their_peers_run_from_bytecode(tmp_path, monkeypatch):
    """bench_cli's children run as an installed appliance does, from bytecode (the project's modules
    too, not only the peer's click), even from a shell that writes none."""
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    env = bench_cli.child_env(tmp_path)
    probe = "import sys, click, scanner.base.catalogue; print(sys.flags.dont_write_bytecode)"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"
    assert list(tmp_path.rglob("scanner/base/catalogue.*.pyc")) and list(tmp_path.rglob("click/core.*.pyc"))
