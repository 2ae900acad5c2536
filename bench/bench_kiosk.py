"""The kiosk: from a verdict being published to it being painted in a real browser.

A running appliance (scanner.appliance.daemon.Appliance: pipeline, entry log, feedback on MockFactory pins,
the local API on 127.0.0.1) reads cards one at a time from a named pipe; a headless Chromium
(Debian's, via selenium: bench/browser.py) shows the kiosk page. For each verdict the page records
when the server-sent event reached its handler (``received``), when the next animation frame, the
one that shows the new verdict, started rendering (``frame``: its requestAnimationFrame callback)
and when a task posted from that callback ran, after the frame was painted (``painted``); all as
``performance.timeOrigin + performance.now()``, against the event's ``published_ms`` (the daemon's
``time.time()`` just before it publishes: the same wall clock, checked). Reported: delivery
(published → received, the event stream alone), frame and paint, and each as a ratio to delivery,
card by card; a raw HTTP client on the same stream is the peer for delivery. The kiosk's goal:
updates on screen within 100 ms of the verdict (p95; judged on the median of three runs, each a
fresh appliance and browser).

Also the camera preview's cost per frame (scanner/appliance/preview.py) against decoding that frame: the
hook while nobody watches, scaling a frame when one is due, and the JPEG encode (done in the
API's threads, not the camera's).
"""
from __future__ import annotations

import functools
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

from scanner.cards import issuer, keys
from scanner.cards.verdict import Holder

from . import browser
from .appliance import SseClient, hue_cards
from .goals import judge
from .timing import interleaved, median, percentile, table


def _config(tmp: Path, fifo: Path) -> Path:
    path = tmp / "c.toml"
    path.write_text(f"""
[device]
state_dir = "{tmp / 'state'}"
checkpoint_id = "bench"
[sync]
enabled = false
[trust]
files = ["{tmp / 'hue.pub'}"]
[api]
listen = "127.0.0.1:0"
display_s = 2
[kiosk]
preview = false
[feedback]
pin_factory = "mock"
[feedback.green]
pin = 17
[feedback.red]
pin = 27
[[stdin]]
path = "{fifo}"
""")
    return path


def paint_latency(n: int) -> dict:
    from scanner.appliance.config import load
    from scanner.appliance.daemon import Appliance

    why = browser.unavailable()
    if why is not None:
        print(f"kiosk: verdict to paint: skipped ({why})\n")
        return {"skipped": why}
    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="bench-kiosk-") as tmp_name:
        tmp = Path(tmp_name)
        cards = hue_cards(tmp, n + 5)
        fifo = tmp / "in.fifo"
        os.mkfifo(fifo)
        w = os.open(fifo, os.O_RDWR)
        app = Appliance(load(_config(tmp, fifo)))
        published: dict[int, float] = {}
        cond = threading.Condition()

        def heard(event) -> None:
            if event.kind == "verdict":
                with cond:
                    published[event.data["seq"]] = event.data["published_ms"]
                    cond.notify_all()

        app.hub.listen(heard)
        app.start()
        threading.Thread(target=app.supervise, daemon=True).start()
        api = app.api
        if api is None:
            raise SystemExit("kiosk bench: the appliance's API did not start")
        driver = browser.launch(800, 480)
        peer = None
        try:
            driver.get(api.url + "/")
            browser.wait_js(driver, "document.body.dataset.connected === 'true'", 60, "the kiosk page")
            peer = SseClient(api.host, api.port, clock=lambda: time.time() * 1000)
            time.sleep(0.3)  # both streams connected before the first card (not part of any figure)
            for seq, card in enumerate(cards, 1):
                os.write(w, (card + "\n").encode())
                with cond:
                    if not cond.wait_for(functools.partial(published.__contains__, seq), 60):
                        raise TimeoutError(f"verdict {seq} was never published")
                # one card at a time, as at a checkpoint: the next after this one is surely on screen
                browser.wait_js(driver, f"window.ckKiosk.timings.some(t => t.seq === {seq})", 60)
            timings = driver.execute_script("return window.ckKiosk.timings")
            skew = driver.execute_script("return Date.now() - (performance.timeOrigin + performance.now())")
        finally:
            if peer is not None:
                peer.close()
            browser.close(driver)
            os.close(w)
            app.request_stop()
            app.shutdown()
    by_seq = {t["seq"]: t for t in timings}
    peer_ms, delivery, frame, paint, ratios = [], [], [], [], []
    for seq in range(6, n + 6):  # the first five warm things up
        t = by_seq[seq]
        delivery.append(t["received"] - t["published"])
        frame.append(t["frame"] - t["published"])
        paint.append(t["painted"] - t["published"])
        ratios.append(paint[-1] / max(delivery[-1], 0.01))
        if seq in peer.arrived:
            peer_ms.append(peer.arrived[seq] - published[seq])

    figures = []

    def row(name: str, values: list[float], ratio: str) -> tuple:
        figures.append({"path": name, "p50_ms": percentile(values, 0.5), "p95_ms": percentile(values, 0.95),
                        "max_ms": max(values), "x_delivery": None if ratio == "-" else float(ratio)})
        return name, f"{percentile(values, 0.5):.2f}", f"{percentile(values, 0.95):.2f}", f"{max(values):.2f}", ratio

    print(f"kiosk: verdict to paint in headless Chromium ({n} cards, one at a time; goal: on screen within 100 ms)")
    print(table(("from the verdict published to ...", "p50 ms", "p95 ms", "max ms", "x delivery (median)"), [
        row("... the event at a raw HTTP client (peer)", peer_ms, "-"),
        row("... the event handler in the page (delivery)", delivery, "1.00"),
        row("... the frame showing it starts rendering (rAF)", frame,
            f"{percentile(sorted(f / max(d, 0.01) for f, d in zip(frame, delivery)), 0.5):.1f}"),
        row(PAINT_PATH, paint, f"{percentile(ratios, 0.5):.1f}"),
    ]))
    print(f"clock check: the page's Date.now() - (timeOrigin + now()) = {skew:.2f} ms (0 = one clock)")
    print()
    return {"n": n, "paths": figures, "clock_skew_ms": skew}


def preview_cost(quick: bool) -> dict:
    """Per-frame cost of the preview hook (unwatched, watched) and of the encode, against decoding."""
    import asyncio

    from hardware.decode import make_decoder
    from scanner.appliance.preview import Preview, encode_jpeg, scale_frame
    from scanner.demo import video as demo_video

    frame = next(demo_video.frames([demo_video.Shot(issuer.issue(issuer.CardSpec(
        "VN-HUE", Holder("Nguyễn Văn An", "1985"), int(time.time()) - 60, int(time.time()) + 86400),
        keys.generate("EdDSA")), 0.1)]))
    decoder = make_decoder("auto")
    codes = decoder.decode(frame)
    assert codes and codes[0].corners, "the bench frame must hold a readable code"
    idle = Preview(fps=3, width=320)
    idle_hook = idle.add_camera("c")
    due = Preview(fps=1e9, width=320)  # a frame is due every time: the cost when a screen watches
    due_hook = due.add_camera("c")
    loop = asyncio.new_event_loop()

    async def watch():
        return due.watch("c")

    loop.run_until_complete(watch())
    small, outlines = scale_frame(frame, 320, codes)
    samples = interleaved({
        "decode": lambda: decoder.decode(frame),
        "hook, unwatched": lambda: idle_hook(frame, codes),
        "hook, watched (scale)": lambda: due_hook(frame, codes),
        "encode JPEG (API thread)": lambda: encode_jpeg(small, outlines),
    }, rounds=7 if quick else 25)
    loop.close()
    base = median(samples["decode"])
    rows = []
    for name in ("decode", "hook, unwatched", "hook, watched (scale)", "encode JPEG (API thread)"):
        m = median(samples[name])
        rows.append((name, f"{m * 1e6:.2f} µs" if m < 1e-3 else f"{m * 1e3:.2f} ms", f"{m / base:.4f}"))
    print(f"kiosk: camera preview cost per 640x480 frame ({frame.shape[1]}x{frame.shape[0]} → 320 wide, "
          "at most preview_fps a second while watched)")
    print(table(("step", "median", "x decode"), rows))
    print()
    return {name: {"us": median(v) * 1e6, "x_decode": median(v) / base} for name, v in samples.items()}


RUNS = 3  # fresh appliances and browsers in a full run: the goal is judged on their median
PAINT_PATH = "... that frame painted (task after the rAF)"  # the path the goal is about


def run(quick: bool = False) -> dict:
    runs = [paint_latency(20 if quick else 150) for _ in range(1 if quick else RUNS)]
    out: dict = {"paint": {"skipped": runs[0]["skipped"]} if "skipped" in runs[0] else {"runs": runs}}
    if "skipped" not in runs[0]:
        goal = judge("kiosk.paint_p95", [next(p["p95_ms"] for p in r["paths"] if p["path"] == PAINT_PATH)
                                         for r in runs], unjudged="a --quick run" if quick else "")
        print(goal.line())
        print()
        out["goals"] = [goal.as_dict()]
    return out | {"preview": preview_cost(quick)}
