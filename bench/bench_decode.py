"""QR decoding: rate and time per backend on the shared real-world set, on camera-like frames and
clips (bench/frames.py), and ms per camera frame.

Peers in the same run: pyzbar (QR only), zxing-cpp alone with the first pass's options, the
appliance decoder (one frame at a time) and, on clips and live-camera costs, the stream decoder
a camera runs. Empty frames are a static lane with fresh sensor noise in every frame.
"""
from __future__ import annotations

import functools
import itertools
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hardware.decode import DOWNSCALE_ABOVE, ApplianceDecoder, DecoderUnavailable, make_decoder, read_gray
from hardware.stream_decode import StreamDecoder

from . import fixtures
from . import frames as camera_frames
from .frames import scene
from .goals import judge
from .timing import interleaved, median, quartiles, ratios, table
from .world import world

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "qr"
CLOCK = time.process_time
"""Decode times are the CPU time of the process (all its threads): decoding is CPU-bound, and on a
shared machine other jobs stretch its wall time several times over, unevenly between peers."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def with_code(frame: np.ndarray, text: str, scale: int) -> np.ndarray:
    """``frame`` with the QR code of ``text`` (4-module quiet zone) pasted in the middle."""
    import segno
    qr = segno.make_qr(text, error="m", boost_error=False)
    code = np.array([[0 if d else 255 for d in row] for row in qr.matrix_iter(scale=scale, border=4)], np.uint8)
    out = frame.copy()
    h, w = code.shape
    y, x = (out.shape[0] - h) // 2, (out.shape[1] - w) // 2
    out[y:y + h, x:x + w] = code
    return out


def frames() -> dict[str, tuple[np.ndarray, str | None]]:
    """The benchmark frames: name → (frame, expected text or None)."""
    w = world()
    card = fixtures.card_text(w.ed_key, w.at)
    rng = np.random.default_rng(1)
    s640, s720 = scene(640, 480), scene(1280, 720)
    return {
        "640x480 empty scene": (s640, None),
        "640x480 empty grainy": (rng.normal(150, 20, (480, 640)).clip(0, 255).astype(np.uint8), None),
        "640x480 empty noise": (rng.integers(0, 256, (480, 640), dtype=np.uint8), None),
        "640x480 one card": (with_code(s640, card, 4), card),
        "1280x720 empty scene": (s720, None),
        "1280x720 one card": (with_code(s720, card, 4), card),
    }


def _samples() -> list[tuple[str, np.ndarray, bytes]]:
    if not SAMPLES.is_dir():
        return []
    return [(str(p.relative_to(SAMPLES)), read_gray(p), p.with_suffix(".txt").read_bytes())
            for p in sorted(SAMPLES.rglob("*"))
            if p.suffix.lower() in IMAGE_SUFFIXES and p.with_suffix(".txt").is_file()]


def _decoders() -> dict:
    out = {}
    for label, name in (("pyzbar", "pyzbar"), ("zxing-cpp", "zxing"), ("appliance (auto)", "auto")):
        try:
            out[label] = make_decoder(name)
        except DecoderUnavailable as exc:
            print(f"  {label}: unavailable ({exc})")
    return out


def samples_bench(rounds: int) -> dict:
    """Exact-text decode rate, median and p95 ms per image, for every backend, interleaved per image."""
    samples = _samples()
    if not samples:
        print(f"decode rate: shared samples not found at {SAMPLES}; skipped\n")
        return {}
    decoders = _decoders()
    times: dict[str, list[list[float]]] = {name: [[] for _ in samples] for name in decoders}
    correct = dict.fromkeys(decoders, 0)
    wrong = dict.fromkeys(decoders, 0)
    rng = random.Random(2)
    for r in range(rounds):
        for i, (_, gray, expected) in enumerate(samples):
            order = list(decoders)
            rng.shuffle(order)
            for name in order:
                t0 = CLOCK()
                codes = decoders[name].decode(gray)
                times[name][i].append(CLOCK() - t0)
                if r == 0:
                    got = [c.text.encode("utf-8") for c in codes]
                    if got == [expected]:
                        correct[name] += 1
                    elif got:
                        wrong[name] += 1
    rows, out = [], {}
    n = len(samples)
    for name in decoders:
        per_image = sorted(median(t) for t in times[name])
        p50, p95 = median(per_image), per_image[min(n - 1, int(round(0.95 * (n - 1))))]
        out[name] = {"correct": correct[name], "wrong": wrong[name], "n": n, "p50_ms": p50 * 1e3, "p95_ms": p95 * 1e3}
        rows.append((name, f"{correct[name]}/{n}", f"{100 * correct[name] / n:.0f}%", wrong[name],
                     f"{p50 * 1e3:.2f}", f"{p95 * 1e3:.2f}"))
    print(f"decode rate on {SAMPLES.parent.name}/{SAMPLES.name} ({n} images, exact text; CPU ms: median over "
          f"{rounds} rounds per image, then median and p95 over images)")
    print(table(("backend", "correct", "rate", "wrong", "median ms", "p95 ms"), rows))
    print()
    return out


def _variants(frame: np.ndarray, name: str, n: int = 8) -> list[np.ndarray]:
    """``n`` frames of the same picture as a camera gives them: fresh sensor noise in each (a new
    uniform noise for the noise frame), or for the passer-by a dark shape moving across the lane."""
    rng = np.random.default_rng(5)
    out = []
    for i in range(n):
        if name.endswith("empty noise"):
            out.append(rng.integers(0, 256, frame.shape, dtype=np.uint8))
            continue
        f = frame.astype(np.float32)
        if "passer-by" in name:
            h, w = frame.shape
            x = int(w * (0.2 + 0.6 * i / n))
            cv2.ellipse(f, (x, h // 2), (w // 10, h // 2), 0, 0, 360, 60, -1)
            cv2.rectangle(f, (x - w // 20, h // 3), (x + w // 20, h // 3 + h // 8), 200, -1)
        out.append((f + rng.normal(0, 2, frame.shape)).clip(0, 255).astype(np.uint8))
    return out


def _fed(seq: list[np.ndarray], fn: Callable[[np.ndarray], object]) -> Callable[[], object]:
    """``fn`` on the frames of ``seq`` in turn, a cycle of its own for each case."""
    it = itertools.cycle(seq)
    return lambda: fn(next(it))


def frames_bench(rounds: int, runs: int = 3) -> dict:
    """ms per frame: raw library calls, the appliance decoder and the stream decoder on the same frames;
    ``runs`` runs of ``rounds`` interleaved rounds each, the empty-frame goals judged on the runs."""
    import zxingcpp
    fmt = zxingcpp.BarcodeFormat
    qr: Any = [fmt.QRCodeModel1, fmt.QRCodeModel2] if hasattr(fmt, "QRCodeModel2") else fmt.QRCode
    appliance = make_decoder("auto")
    try:
        from pyzbar import pyzbar
        zbar_qr = [pyzbar.ZBarSymbol.QRCODE]
    except (ImportError, OSError):
        pyzbar = None
    results: dict = {}
    rows = []
    all_frames = frames()
    all_frames["1280x720 passer-by"] = (scene(1280, 720), None)
    for name, (frame, expected) in all_frames.items():
        got = [c.text for c in appliance.decode(frame)]
        if got != ([expected] if expected else []):
            raise SystemExit(f"bench fixture broken: appliance decoder on {name!r} gave {got!r}")
        big = max(frame.shape) > DOWNSCALE_ABOVE
        seq = _variants(frame, name)
        stream = StreamDecoder()
        for f in seq * 8:  # a camera that has been looking at this lane for a while
            stream.feed(f)
        cases = {
            "zxing raw": _fed(seq, functools.partial(zxingcpp.read_barcodes, formats=qr)),
            # the first pass alone, as a raw call with exactly its options: the stream's peer
            "zxing pass-1 opts": _fed(seq, functools.partial(
                zxingcpp.read_barcodes, formats=qr, try_invert=True, try_downscale=big,
                text_mode=zxingcpp.TextMode.Plain, return_errors=True)),
            "appliance": _fed(seq, appliance.decode),
            "stream": _fed(seq, stream.feed),
        }
        if pyzbar is not None:
            cases["pyzbar QR"] = _fed(seq, functools.partial(pyzbar.decode, symbols=zbar_qr))
        per_run = [interleaved(cases, rounds=rounds, target_s=0.02, seed=r, clock=CLOCK) for r in range(runs)]
        samples = {k: [x for run in per_run for x in run[k]] for k in cases}
        res: dict[str, Any] = {k: median(v) * 1e3 for k, v in samples.items()}
        res["runs_x_pass1"] = [median(ratios(run, "stream", "zxing pass-1 opts")) for run in per_run]
        if "pyzbar QR" in samples:
            res["runs_x_pyzbar"] = [median(ratios(run, "stream", "pyzbar QR")) for run in per_run]
        x_pass1 = ratios(samples, "stream", "zxing pass-1 opts")
        res["x_pass1"], res["x_pass1_iqr"] = median(x_pass1), quartiles(x_pass1)
        res["x_raw"] = median(ratios(samples, "stream", "zxing raw"))
        if "pyzbar QR" in samples:
            x_zb = ratios(samples, "stream", "pyzbar QR")
            res["x_pyzbar"], res["x_pyzbar_iqr"] = median(x_zb), quartiles(x_zb)
        results[name] = res
        rows.append((name, f"{res['zxing raw']:.2f}", f"{res['zxing pass-1 opts']:.2f}", f"{res['appliance']:.2f}",
                     f"{res['stream']:.2f}",
                     f"{res['x_pass1']:.2f} ({res['x_pass1_iqr'][0]:.2f}-{res['x_pass1_iqr'][1]:.2f})",
                     f"{res['pyzbar QR']:.2f}" if "pyzbar QR" in res else "-",
                     f"{res['x_pyzbar']:.3f} ({res['x_pyzbar_iqr'][0]:.3f}-{res['x_pyzbar_iqr'][1]:.3f})"
                     if "x_pyzbar" in res else "-"))
    print(f"CPU ms per frame (medians of {runs} runs x {rounds} interleaved rounds over 8 frames of each kind, fresh "
          "sensor noise in each; 'stream' = StreamDecoder, what a camera runs; 'appliance' = one frame at a time, as "
          "scan-image)")
    print(table(("frame", "zxing raw", "zxing pass-1", "appliance", "stream", "stream x pass-1 (p25-p75)",
                 "pyzbar QR", "stream x pyzbar QR (p25-p75)"), rows))
    empty = {k: v for k, v in results.items() if "empty" in k}
    judged = [judge("decode.empty.zxing", [max(v["runs_x_pass1"][r] for v in empty.values()) for r in range(runs)],
                    "worst empty frame, stream decoder")]
    if all("runs_x_pyzbar" in v for v in empty.values()):
        judged.append(judge("decode.empty.pyzbar", [max(v["runs_x_pyzbar"][r] for v in empty.values())
                                                    for r in range(runs)], "worst empty frame, stream decoder"))
    for g in judged:
        print(g.line())
    results["goals"] = [g.as_dict() for g in judged]
    print()
    return results


def _zxing_alone():
    """zxing-cpp alone with the appliance's first-pass options (the peer on camera-like frames)."""
    import zxingcpp
    fmt = zxingcpp.BarcodeFormat
    qr = [fmt.QRCodeModel1, fmt.QRCodeModel2] if hasattr(fmt, "QRCodeModel2") else fmt.QRCode
    return lambda f: [r.text for r in zxingcpp.read_barcodes(f, formats=qr, try_invert=True, try_downscale=False,
                                                               text_mode=zxingcpp.TextMode.Plain)]


def _pyzbar_qr():
    """pyzbar restricted to QR, one call per frame (no inverted retry): the issue's "pyzbar (QR only)"."""
    try:
        from pyzbar import pyzbar
    except (ImportError, OSError):
        return None
    symbols = [pyzbar.ZBarSymbol.QRCODE]
    return lambda f: [r.data.decode("utf-8", "replace") for r in pyzbar.decode(f, symbols=symbols)]


def camera_set_bench(per_category: int, seed: int) -> dict:
    """Read rate per frame, per category of the camera-like frame set, each frame decoded on its own."""
    text = camera_frames.card_text()
    camera = camera_frames.Camera(text)
    shots = camera_frames.frame_set(camera, per_category, seed)
    appliance = ApplianceDecoder()
    peers = {"zxing-cpp": _zxing_alone(), "pyzbar QR": _pyzbar_qr(),
             "appliance": lambda f: [c.text for c in appliance.decode(f)]}
    peers = {k: v for k, v in peers.items() if v is not None}
    rows: list[tuple] = []
    out: dict[str, Any] = {}
    missed = rescued = 0
    for cat, group in shots.items():
        ok = dict.fromkeys(peers, 0)
        ms: dict[str, list[float]] = {k: [] for k in peers}
        wrong = 0
        for shot in group:
            for name, fn in peers.items():
                t0 = CLOCK()
                got = fn(shot.frame)
                ms[name].append((CLOCK() - t0) * 1e3)
                ok[name] += got == [text]
                wrong += name == "appliance" and bool(got) and got != [text]
            if (cat in camera_frames.BLUR_AND_PERSPECTIVE and fn is not None
                    and peers["zxing-cpp"](shot.frame) != [text]):
                missed += 1
                rescued += peers["appliance"](shot.frame) == [text]
        n = len(group)
        out[cat] = {k: ok[k] / n for k in peers} | {"wrong": wrong}
        rows.append((cat, *(f"{100 * ok[k] / n:.0f}%" for k in peers),
                     *(f"{statistics.median(ms[k]):.1f}" for k in peers), wrong))
    print(f"camera-like frames (bench/frames.py, seed {seed}, {per_category} frames per category, 1280x720; "
          "read rate per frame = exact text; CPU ms = median per frame)")
    print(table(("category", *peers, *(f"{k} ms" for k in peers), "wrong"), rows))
    share = rescued / missed if missed else 1.0
    losses = [c for c, v in out.items() if v["appliance"] < v["zxing-cpp"]]
    print(f"goal: of the {missed} frames zxing-cpp misses in the blur and perspective categories the appliance reads "
          f"{rescued} ({100 * share:.0f}%; goal >= 90%: {'met' if share >= 0.9 else 'MISSED'}); "
          f"categories where it reads fewer than zxing-cpp: {', '.join(losses) or 'none'}")
    print()
    out["_rescued"] = (rescued, missed)
    return out


PI4_FACTOR = 6.0
"""x86 decode time x this = the Pi 4 estimate (docs/raspberry-pi.md)."""


def _first_read(decode, frames: list[np.ndarray], text: str, slow: float = 1.0,
                detail: list[np.ndarray] | None = None) -> float | None:
    """Camera time (s) from the card's first frame to the end of the decode that reads it, at FPS.

    The camera delivers frame i at i / FPS; the decoder always takes the newest frame, so frames
    that arrive while it works are skipped (as hardware.camera does). Decode times (CPU, `CLOCK`)
    are measured here and multiplied by ``slow`` (a slower machine)."""
    period = 1 / camera_frames.FPS
    t, i = 0.0, 0
    while i < len(frames):
        t = max(t, i * period)
        t0 = CLOCK()
        got = decode(frames[i]) if detail is None else decode(frames[i], detail[i])
        t += (CLOCK() - t0) * slow
        if got == [text]:
            return t
        i = max(i + 1, int(t / period))
    return None


def clips_bench(per_category: int, seed: int) -> dict:
    """Time to first read per clip (a card held for a second), per category, every decoder in the same run."""
    text = camera_frames.card_text()
    camera = camera_frames.Camera(text)
    clips = camera_frames.clips(camera, per_category, seed)
    lane = [camera.shoot(camera_frames.Pose(1e6), camera_frames.Look(), np.random.default_rng(i)).frame
            for i in range(8)]
    lane_lores = [cv2.resize(f, (f.shape[1] // 2, f.shape[0] // 2), interpolation=cv2.INTER_AREA) for f in lane]
    zx, zb = _zxing_alone(), _pyzbar_qr()

    def stream(lores: bool = False, trace: list[str] | None = None):
        s = StreamDecoder()
        for f in (lane_lores if lores else lane) * 6:  # the camera watched an empty lane before
            s.feed(f)
        if lores:
            return lambda f, d: [c.text for c in s.feed(f, d).codes]

        def feed(f: np.ndarray) -> list[str]:
            result = s.feed(f)
            if trace is not None:
                trace.append(_step(result))
            return [c.text for c in result.codes]
        return feed

    rows, out = [], {}
    slow_clips = []
    for cat, group in clips.items():
        res: dict[str, list] = {"stream": [], "stream Pi 4": [], "lores+main": [], "zxing-cpp": [], "pyzbar QR": []}
        for j, clip in enumerate(group):
            full = [s.frame for s in clip]
            lores = [cv2.resize(f, (f.shape[1] // 2, f.shape[0] // 2), interpolation=cv2.INTER_AREA) for f in full]
            trace: list[str] = []
            res["stream"].append(_first_read(stream(trace=trace), full, text))
            if res["stream"][-1] is None or res["stream"][-1] > CLIP_GOAL_S:
                slow_clips.append(f"  {cat} clip {j} ({_clip_blur(clip)}): "
                                  f"{'not read' if res['stream'][-1] is None else 'read late'}; per decoded frame: "
                                  + ", ".join(trace))
            res["stream Pi 4"].append(_first_read(stream(), full, text, PI4_FACTOR))
            res["lores+main"].append(_first_read(stream(True), lores, text, detail=full))
            res["zxing-cpp"].append(_first_read(zx, full, text))
            if zb is not None:
                res["pyzbar QR"].append(_first_read(zb, full, text))
        out[cat] = res
        cells = []
        for _name, times in res.items():
            got = sorted(t for t in times if t is not None)
            if not times:
                cells.append("-")
            elif not got:
                cells.append(f"0/{len(times)}")
            else:
                cells.append(f"{len(got)}/{len(times)} {statistics.median(got) * 1e3:.0f} ({got[-1] * 1e3:.0f})")
        rows.append((cat, *cells))
    print(f"clips (bench/frames.py, seed {seed}, {per_category} clips per category: a card held for one second, "
          f"{camera_frames.CLIP_FRAMES} frames at {camera_frames.FPS:.0f} fps, hand shake; "
          "read/clips, median (worst) ms of camera time to the first read; 'Pi 4' = decode CPU times x6; "
          "'lores+main' = the stream decoder on 640x360 with 1280x720 crops, as on picamera2)")
    print(table(("category", *res), rows))
    if slow_clips:
        print("clips the stream did not read within 300 ms: what it did on each frame it decoded (stage: pass1 = "
              "read by the first pass, none = nothing read; seen = symbols located but not read by the first pass; "
              "loc = outlines given a second pass, from the first pass, the probe or the texture search; att = "
              "second-pass attempts)")
        print("\n".join(slow_clips))
    slow = [c for c, r in out.items() if not _fast_enough(r["stream"])]
    print(f"goal: median time to first read <= 300 ms in every category (stream, x86): "
          f"{'met' if not slow else 'MISSED in ' + ', '.join(slow)}")
    print()
    return out


CLIP_GOAL_S = 0.3
"""Camera time to the first read of a clip (the issue's goal, 300 ms at 15 fps)."""


def _step(result) -> str:
    """What the stream decoder did on one frame, in a few characters (the clip trace)."""
    return f"{result.stage} seen {result.seen} loc {len(result.located)} att {result.attempts}"


def _clip_blur(clip: list) -> str:
    """A clip's pose and blur in modules (its first frame's module size), for the clip trace."""
    motion = [s.look.motion for s in clip]
    return (f"{clip[0].module_px:.1f} px/module, tilt {clip[0].pose.tilt_deg:.0f}°, streak "
            f"{min(motion):.1f}-{max(motion):.1f} modules")


def _fast_enough(times: list) -> bool:
    """Every clip read, and half of them within 300 ms."""
    got = [t for t in times if t is not None]
    return len(got) == len(times) and statistics.median(got) <= 0.3


def run(quick: bool = False) -> dict:
    print("== decode ==")
    out = {"samples": samples_bench(1 if quick else 5), "frames": frames_bench(3 if quick else 7, 1 if quick else 3),
           "camera set": camera_set_bench(3 if quick else 30, SEED),
           "clips": clips_bench(1 if quick else 8, SEED)}
    if not quick:
        out[f"camera set, seed {SECOND_SEED}"] = camera_set_bench(30, SECOND_SEED)
        out[f"clips, seed {SECOND_SEED}"] = clips_bench(8, SECOND_SEED)
    out["goals"] = out["frames"].pop("goals")
    return out


SEED = 2026
"""The frame set the bench reports on; the decoder was developed on other seeds (11-13), so this set is held out."""
SECOND_SEED = 2027
"""A second held-out frame set (never looked at while developing), reported beside the first in a full run."""
