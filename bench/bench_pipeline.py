"""The scan pipeline: scan-to-verdict latency against bare decode + verify, and peak memory with a camera.

Latency: a live camera source hands the pipeline one frame with a card at a time (its own capture
thread, the newest-frame hand-off, the decode thread, the queue, the verifying worker, the sink);
the time from the source returning the frame to the sink being called is compared with calling the
same decoder and verifier on the same frame directly, interleaved frame by frame.
Memory: `python -m bench.bench_pipeline --child VIDEO SECONDS` runs a whole pipeline with an OpenCV
camera source (a video file replayed at 30 fps) in a fresh process and reports its RSS.
"""
from __future__ import annotations

import json
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from hardware.decode import make_decoder
from scanner.cards.bundle import open_bundle
from scanner.cards.trust import TrustStore
from scanner.cards.verifier import verify

from . import fixtures
from .bench_decode import scene, with_code
from .goals import judge
from .timing import table
from .world import bundle_bytes, world


class PushSource:
    """A live frame source the benchmark feeds; records when each frame entered the pipeline."""

    live = True
    name = "bench"

    def __init__(self) -> None:
        self.frames: queue.Queue = queue.Queue()
        self.entered: dict[int, float] = {}

    def open(self) -> None:
        pass

    def read(self):
        item = self.frames.get()
        if item is None:
            return None
        i, frame = item
        self.entered[i] = time.perf_counter()
        return frame

    def close(self) -> None:
        pass


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


RUNS = 3  # latency runs of each frame size in a full run: the goal is judged on their median


def latency_bench(n: int, size: tuple[int, int] = (640, 480)) -> dict:
    from hardware.camera import CameraConfig, CameraInput
    from scanner.appliance.pipeline import Pipeline

    w = world()
    trust = TrustStore.build(bundles=[open_bundle(bundle_bytes(10_000), [w.root.public_key()])])
    base = scene(*size)
    cards = [fixtures.card_text(w.ed_key, w.at) for _ in range(n)]
    frames = [with_code(base, c, 4) for c in cards]
    index = {c: i for i, c in enumerate(cards)}
    decoder = make_decoder("auto")
    src = PushSource()
    done = threading.Event()
    out: dict[int, float] = {}

    def sink(scan, verdict) -> None:
        out[index[scan.text]] = time.perf_counter()
        if not verdict.accepted:
            raise SystemExit(f"bench fixture broken: {verdict}")
        done.set()

    camera = CameraInput(CameraConfig("bench", backend="opencv", live=True), src, decoder=decoder)
    pipe = Pipeline.verifying(trust, sink, clock=lambda: w.at)
    pipe.add(camera)
    pipe.start()
    latency, bare = [], []
    try:
        for i, (frame, _card) in enumerate(zip(frames, cards)):
            def through_pipeline(i: int = i, frame=frame) -> None:
                done.clear()
                src.frames.put((i, frame))
                if not done.wait(30):
                    raise SystemExit("pipeline gave no verdict within 30 s")
                latency.append(out[i] - src.entered[i])

            def direct(frame=frame) -> None:
                t0 = time.perf_counter()
                codes = decoder.decode(frame)
                v = verify(codes[0].text, trust, w.at)
                bare.append(time.perf_counter() - t0)
                assert v.accepted

            for step in ((through_pipeline, direct) if i % 2 else (direct, through_pipeline)):
                step()
    finally:
        src.frames.put(None)
        pipe.stop()
    p50, p95 = _pct(latency, 0.5), _pct(latency, 0.95)
    b50, b95 = _pct(bare, 0.5), _pct(bare, 0.95)
    res = {"n": n, "size": f"{size[0]}x{size[1]}", "p50_ms": p50 * 1e3, "p95_ms": p95 * 1e3,
           "bare_p50_ms": b50 * 1e3, "bare_p95_ms": b95 * 1e3, "x_p50": p50 / b50, "x_p95": p95 / b95}
    return res


def memory_child(video: str, seconds: float) -> dict:
    """Run in a fresh process: a pipeline with an OpenCV camera source for ``seconds``; RSS figures."""
    from hardware.camera import CameraConfig, CameraInput
    from scanner.appliance.pipeline import Pipeline

    def status() -> dict[str, int]:
        vals = {}
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    vals[k] = int(v.split()[0]) * 1024
        return vals

    w = world()
    trust = TrustStore.build(bundles=[open_bundle(bundle_bytes(10_000), [w.root.public_key()])])
    make_decoder("auto").decode(np.zeros((480, 640), np.uint8))  # libraries loaded, as in the baseline
    verdicts = []
    camera = CameraInput(CameraConfig(video, backend="opencv", loop=True, pace=30.0), decoder=make_decoder("auto"))
    pipe = Pipeline.verifying(trust, lambda s, v: verdicts.append(v.reason), clock=lambda: w.at, cooldown=0.5)
    pipe.add(camera)
    before = status()["VmRSS"]
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        reset = True
    except OSError:
        reset = False
    pipe.start()
    time.sleep(seconds)
    during = status()
    pipe.stop()
    return {"baseline": before, "rss": during["VmRSS"], "peak": during["VmHWM"], "peak_reset": reset,
            "frames": camera.frames, "verdicts": len(verdicts), "seconds": seconds}


def memory_bench(seconds: float) -> list[dict]:
    import cv2
    w = world()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in ((640, 480), (1280, 720)):
            base = scene(*size)
            frames = [base] * 20 + [with_code(base, fixtures.card_text(w.ed_key, w.at), 4)] * 10
            path = str(Path(tmp) / f"lane-{size[0]}.avi")
            writer = cv2.VideoWriter(path, cv2.VideoWriter.fourcc(*"MJPG"), 30, size, isColor=False)
            for f in frames:
                writer.write(f)
            writer.release()
            proc = subprocess.run([sys.executable, "-m", "bench.bench_pipeline", "--child", path, str(seconds)],
                                  capture_output=True, text=True, timeout=seconds + 120, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"memory child failed: {proc.stderr.strip()[-2000:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            res["size"] = f"{size[0]}x{size[1]}"
            results.append(res)
    return results


def run(quick: bool = False) -> dict:
    print("== pipeline ==")
    runs = 1 if quick else RUNS
    lat = [r for _ in range(runs) for r in (latency_bench(20 if quick else 150),
                                            latency_bench(10 if quick else 60, (1280, 720)))]
    goals = [judge("pipeline.overhead", [r["x_p50"] for r in lat if r["size"] == size], size,
                   unjudged="a --quick run" if quick else "") for size in dict.fromkeys(r["size"] for r in lat)]
    rows: list[tuple] = [(r["size"], r["n"], f"{r['bare_p50_ms']:.2f}", f"{r['p50_ms']:.2f}", f"{r['x_p50']:.2f}",
             f"{r['bare_p95_ms']:.2f}", f"{r['p95_ms']:.2f}", f"{r['x_p95']:.2f}") for r in lat]
    print("scan-to-verdict latency: frame handed to the pipeline -> sink called, against decode + verify of the "
          f"same frame called directly (goal: overhead under 20%), {runs} run(s)")
    print(table(("frame", "n", "bare p50 ms", "pipeline p50 ms", "x bare", "bare p95 ms", "pipeline p95 ms",
                 "x bare p95"), rows))
    for g in goals:
        print(g.line())
    print()
    mem = memory_bench(2.0 if quick else 10.0)
    mib = 1024 * 1024
    rows = [(m["size"], f"{m['baseline'] / mib:.1f}", f"{m['rss'] / mib:.1f}",
             f"{m['peak'] / mib:.1f}" + ("" if m["peak_reset"] else " (since start)"),
             f"{(m['peak'] - m['baseline']) / mib:.1f}", m["frames"], m["verdicts"]) for m in mem]
    print("resident memory of a running pipeline (OpenCV camera source: MJPG video replayed at 30 fps, "
          "appliance decoder, trust with 10k revoked ids), fresh process")
    print(table(("frames", "RSS before MiB", "RSS running MiB", "peak MiB", "peak - before", "frames decoded",
                 "verdicts"), rows))
    print()
    return {"latency": lat, "memory": mem, "goals": [g.as_dict() for g in goals]}


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(memory_child(sys.argv[2], float(sys.argv[3]))))
    else:
        sys.exit("usage: python -m bench.bench_pipeline --child VIDEO SECONDS (run by python -m bench)")
