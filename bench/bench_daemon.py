"""The appliance: from a code read to its verdict on the kiosk's event stream, over real HTTP.

A running appliance (scanner.appliance.daemon.Appliance: pipeline, degraded-mode policy, entry log with
synchronous=FULL, feedback on MockFactory pins, the local API on 127.0.0.1) reads cards from a
named pipe (a stdin reader, so the whole input path is in it). For each card the time from writing
its line to (a) the event being published inside the daemon and (b) the server-sent event arriving
at an HTTP client is compared with the bare work a scan needs, verify + EntryLog.record of the same
kind of card, measured in the same run, card by card (interleaved). Goal: the kiosk
hears of a verdict within 100 ms (p95; judged on the median of three fresh appliances).
"""
from __future__ import annotations

import functools
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

from scanner.cards.scan import Scan
from scanner.cards.trust import load_trust
from scanner.cards.verifier import verify
from scanner.store.entrylog import EntryLog

from .appliance import SseClient, hue_cards
from .goals import judge
from .timing import percentile, table

RUNS = 3  # fresh appliances in a full run: the goal is judged on their median
EVENT_PATH = "line written → SSE event received (HTTP)"  # the path the goal is about


def run(quick: bool = False) -> dict:
    n = 30 if quick else 200
    runs = [_one(n) for _ in range(1 if quick else RUNS)]
    goal = judge("daemon.event_p95", [next(p["p95_ms"] for p in r if p["path"] == EVENT_PATH) for r in runs],
                 unjudged="a --quick run" if quick else "")
    print(goal.line())
    print()
    return {"n": n, "runs": [{"paths": r} for r in runs], "goals": [goal.as_dict()]}


def _one(n: int) -> list[dict]:
    """One fresh appliance, ``n`` cards one at a time: the table of its paths, printed and returned."""
    from scanner.appliance.config import load
    from scanner.appliance.daemon import Appliance

    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp_name:
        tmp = Path(tmp_name)
        cards = hue_cards(tmp, 2 * n + 10)
        fifo = tmp / "in.fifo"
        os.mkfifo(fifo)
        w = os.open(fifo, os.O_RDWR)
        (tmp / "c.toml").write_text(f"""
[device]
state_dir = "{tmp / 'state'}"
checkpoint_id = "bench"
[sync]
enabled = false
[trust]
files = ["{tmp / 'hue.pub'}"]
[api]
listen = "127.0.0.1:0"
[feedback]
pin_factory = "mock"
[feedback.green]
pin = 17
[feedback.red]
pin = 27
[feedback.buzzer]
pin = 18
[[stdin]]
path = "{fifo}"
""")
        app = Appliance(load(tmp / "c.toml"))
        published: dict[int, float] = {}
        pub_cond = threading.Condition()

        def heard(event) -> None:
            if event.kind == "verdict":
                with pub_cond:
                    published[event.data["seq"]] = time.perf_counter()
                    pub_cond.notify_all()

        app.hub.listen(heard)
        app.start()
        supervisor = threading.Thread(target=app.supervise, daemon=True)
        supervisor.start()
        api = app.api
        if api is None:
            raise SystemExit("daemon bench: the appliance's API did not start")
        client = SseClient(api.host, api.port)
        trust = load_trust([tmp / "hue.pub"])
        bare_log = EntryLog(tmp / "bare.db", device_id="d-bench", checkpoint_id="bench", passback_window_s=0)
        to_publish, to_stream, bare = [], [], []
        try:
            time.sleep(0.2)  # let the stream connect before the first card (not part of any figure)
            for i in range(n + 5):
                t0 = time.perf_counter()
                os.write(w, (cards[i] + "\n").encode())
                seq = i + 1
                arrived = client.wait(seq)
                with pub_cond:
                    pub_cond.wait_for(functools.partial(published.__contains__, seq), 60)
                t1 = time.perf_counter()
                v = verify(cards[n + 5 + i], trust, time.time())
                bare_log.record(Scan(cards[n + 5 + i], "stdin", "bench", time.time(), "in"), v)
                t2 = time.perf_counter()
                if i >= 5:  # the first few warm the caches
                    to_publish.append(published[seq] - t0)
                    to_stream.append(arrived - t0)
                    bare.append(t2 - t1)
        finally:
            client.close()
            os.close(w)
            app.request_stop()
            app.shutdown()
            bare_log.close()
    ratios = sorted(s / b for s, b in zip(to_stream, bare))
    rows = [
        ("bare verify + EntryLog.record (FULL)", f"{percentile(bare, 0.5) * 1e3:.2f}",
         f"{percentile(bare, 0.95) * 1e3:.2f}", "1.00"),
        ("line written → event published (in the daemon)", f"{percentile(to_publish, 0.5) * 1e3:.2f}",
         f"{percentile(to_publish, 0.95) * 1e3:.2f}",
         f"{percentile(sorted(p / b for p, b in zip(to_publish, bare)), 0.5):.2f}"),
        (EVENT_PATH, f"{percentile(to_stream, 0.5) * 1e3:.2f}",
         f"{percentile(to_stream, 0.95) * 1e3:.2f}", f"{percentile(ratios, 0.5):.2f}"),
    ]
    print(f"appliance: scan to kiosk event ({n} cards, one at a time; goal: within 100 ms)")
    print(table(("path", "p50 ms", "p95 ms", "x bare (median)"), rows))
    print()
    return [{"path": r[0], "p50_ms": float(r[1]), "p95_ms": float(r[2]), "x_bare": float(r[3])} for r in rows]
