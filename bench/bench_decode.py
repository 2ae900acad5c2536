"""QR decoding: rate and time per backend on the shared real-world set, and ms per camera frame.

Backends side by side in one run: pyzbar (QR only), zxing-cpp (one pass, QR only) and the
appliance decoder ("auto": zxing-cpp + probe + second pass). Frames: empty and with one card, at
640x480 and 1280x720; the appliance call is compared with the raw library call on the same frame.
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import cv2
import numpy as np

from hardware.decode import DOWNSCALE_ABOVE, DecoderUnavailable, make_decoder, read_gray

from . import fixtures
from .timing import interleaved, median, quartiles, ratios, table
from .world import world

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "qr"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def scene(w: int, h: int, seed: int = 3) -> np.ndarray:
    """A plausible empty lane as the camera sees it: shapes, edges, some text, sensor noise."""
    rng = np.random.default_rng(seed)
    img = np.tile(np.linspace(90, 170, w, dtype=np.float32), (h, 1))
    for _ in range(12):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        cv2.rectangle(img, (x, y), (x + int(rng.integers(20, w // 3)), y + int(rng.integers(20, h // 3))),
                      float(rng.integers(30, 230)), int(rng.choice([-1, 2, 4])))
    img8 = img.astype(np.uint8)
    for i in range(3):
        cv2.putText(img8, "LOI RA / EXIT 0123", (int(w * 0.05), int(h * (0.3 + 0.25 * i))),
                    cv2.FONT_HERSHEY_SIMPLEX, w / 900, 40, 2)
    return (img8 + rng.normal(0, 3, img.shape)).clip(0, 255).astype(np.uint8)


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
    times = {name: [[] for _ in samples] for name in decoders}
    correct = {name: 0 for name in decoders}
    wrong = {name: 0 for name in decoders}
    rng = random.Random(2)
    for r in range(rounds):
        for i, (_, gray, expected) in enumerate(samples):
            order = list(decoders)
            rng.shuffle(order)
            for name in order:
                t0 = time.perf_counter()
                codes = decoders[name].decode(gray)
                times[name][i].append(time.perf_counter() - t0)
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
    print(f"decode rate on {SAMPLES.parent.name}/{SAMPLES.name} ({n} images, exact text; ms: median over "
          f"{rounds} rounds per image, then median and p95 over images)")
    print(table(("backend", "correct", "rate", "wrong", "median ms", "p95 ms"), rows))
    print()
    return out


def frames_bench(rounds: int) -> dict:
    """ms per frame: raw library calls and the appliance decoder on the same frames, interleaved."""
    import zxingcpp
    fmt = zxingcpp.BarcodeFormat
    qr = [fmt.QRCodeModel1, fmt.QRCodeModel2] if hasattr(fmt, "QRCodeModel2") else fmt.QRCode
    appliance = make_decoder("auto")
    try:
        from pyzbar import pyzbar
        zbar_qr = [pyzbar.ZBarSymbol.QRCODE]
    except (ImportError, OSError):
        pyzbar = None
    results: dict = {}
    rows = []
    for name, (frame, expected) in frames().items():
        got = [c.text for c in appliance.decode(frame)]
        if got != ([expected] if expected else []):
            raise SystemExit(f"bench fixture broken: appliance decoder on {name!r} gave {got!r}")
        big = max(frame.shape) > DOWNSCALE_ABOVE
        cases = {
            "zxing raw": lambda f=frame: zxingcpp.read_barcodes(f, formats=qr),
            # the appliance's first pass alone, as a raw call: what the probe and Python add on top
            "zxing pass-1 opts": lambda f=frame: zxingcpp.read_barcodes(f, formats=qr, try_downscale=big,
                                                                        return_errors=True),
            "appliance": lambda f=frame: appliance.decode(f),
        }
        if pyzbar is not None:
            cases["pyzbar QR"] = lambda f=frame: pyzbar.decode(f, symbols=zbar_qr)
            if name == "640x480 empty noise":
                cases["pyzbar all"] = lambda f=frame: pyzbar.decode(f)
        samples = interleaved(cases, rounds=rounds, target_s=0.02)
        res = {k: median(v) * 1e3 for k, v in samples.items()}
        app_raw = ratios(samples, "appliance", "zxing raw")
        res["x_raw"], res["x_raw_iqr"] = median(app_raw), quartiles(app_raw)
        res["x_pass1"] = median(ratios(samples, "appliance", "zxing pass-1 opts"))
        if "pyzbar QR" in samples:
            res["x_pyzbar"] = median(ratios(samples, "appliance", "pyzbar QR"))
        results[name] = res
        rows.append((name, f"{res['zxing raw']:.2f}", f"{res['zxing pass-1 opts']:.2f}", f"{res['appliance']:.2f}",
                     f"{res['x_raw']:.2f} ({res['x_raw_iqr'][0]:.2f}-{res['x_raw_iqr'][1]:.2f})",
                     f"{res['x_pass1']:.2f}",
                     f"{res['pyzbar QR']:.2f}" if "pyzbar QR" in res else "-",
                     f"{res['x_pyzbar']:.2f}" if "x_pyzbar" in res else "-",
                     f"{res['pyzbar all']:.1f}" if "pyzbar all" in res else ""))
    print(f"ms per frame (medians of {rounds} interleaved rounds; goals: appliance <= 1.1x zxing raw, "
          "empty 640x480 appliance <= 0.25x pyzbar QR)")
    print(table(("frame", "zxing raw", "zxing pass-1", "appliance", "x raw (p25-p75)", "x pass-1", "pyzbar QR",
                 "x pyzbar", "pyzbar all"), rows))
    print()
    return results


def run(quick: bool = False) -> dict:
    print("== decode ==")
    out = {"samples": samples_bench(1 if quick else 5), "frames": frames_bench(5 if quick else 31)}
    return out
