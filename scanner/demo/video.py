"""The demo's simulated camera: a video of QR cards being shown, written with OpenCV.

Each shot is one card on paper (slightly turned, moving a little as a hand does) or on a phone in
dark mode (light modules on a black screen), held for a while, with empty scene between shots.
The video is 8-bit grayscale Motion-JPEG, as a USB camera would deliver it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np
import segno

W, H = 640, 480
FPS = 10.0


@dataclass(frozen=True, slots=True)
class Shot:
    """``text`` shown for ``seconds`` (None: nothing shown), ``style`` "paper" or "phone_dark"."""

    text: str | None
    seconds: float
    style: str = "paper"


def modules(text: str, scale: int) -> np.ndarray:
    """Black-on-white QR modules (border of 4 modules), uint8."""
    qr = segno.make_qr(text, error="m", boost_error=False)
    m = np.array(list(qr.matrix_iter(scale=1, border=4)), dtype=np.uint8)
    img = np.where(m > 0, 0, 255).astype(np.uint8)
    return cv2.resize(img, (img.shape[1] * scale, img.shape[0] * scale), interpolation=cv2.INTER_NEAREST)


def _scene(rng: np.random.Generator) -> np.ndarray:
    frame = np.full((H, W), 118, np.float32)
    cv2.rectangle(frame, (0, H - 90), (W, H), 92, -1)  # a counter
    cv2.rectangle(frame, (470, 40), (600, 300), 140, -1)  # a door frame
    return frame


def _place(frame: np.ndarray, img: np.ndarray, angle: float, dx: float, dy: float) -> np.ndarray:
    h, w = img.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    m[:, 2] += (W / 2 - w / 2 + dx, H / 2 - h / 2 + dy)
    mask = cv2.warpAffine(np.full_like(img, 255), m, (W, H), flags=cv2.INTER_NEAREST)
    warped = cv2.warpAffine(img, m, (W, H), flags=cv2.INTER_LINEAR)
    return np.where(mask > 0, warped.astype(np.float32), frame)


def _paper(text: str) -> np.ndarray:
    return modules(text, 4)


def _phone_dark(text: str) -> np.ndarray:
    code = 255 - modules(text, 4)  # dark mode: light modules on a black screen
    code = (code.astype(np.float32) * 0.85 + 12).astype(np.uint8)  # a screen is never pure white
    pad = 28
    body = np.full((code.shape[0] + 3 * pad, code.shape[1] + 2 * pad), 35, np.uint8)
    body[pad:pad + code.shape[0], pad:pad + code.shape[1]] = code
    return body


def frames(shots: list[Shot], fps: float = FPS, seed: int = 7):
    """Yield the frames of the shots (numpy uint8, H x W)."""
    rng = np.random.default_rng(seed)
    for shot in shots:
        n = max(1, round(shot.seconds * fps))
        img = None
        if shot.text is not None:
            img = _phone_dark(shot.text) if shot.style == "phone_dark" else _paper(shot.text)
        angle = float(rng.uniform(-8, 8))
        for i in range(n):
            frame = _scene(rng)
            if img is not None:
                wobble = np.sin(i / 3.0)
                frame = _place(frame, img, angle + wobble, 6 * wobble, 3 * np.cos(i / 4.0))
            frame += rng.normal(0, 3, frame.shape).astype(np.float32)
            yield frame.clip(0, 255).astype(np.uint8)


def write(path: str | os.PathLike, shots: list[Shot], fps: float = FPS) -> int:
    """Write the video; returns the number of frames."""
    writer = cv2.VideoWriter(os.fspath(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (W, H), isColor=False)
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write a Motion-JPEG video to {path}")
    n = 0
    try:
        for frame in frames(shots, fps):
            writer.write(frame)
            n += 1
    finally:
        writer.release()
    return n
