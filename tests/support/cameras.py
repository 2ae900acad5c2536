"""What a camera sees in the tests: QR codes in grey scenes degraded as at a lane, videos written by
OpenCV (Motion-JPEG, lossy like a webcam), and a simulated camera's folder scene."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import segno

from scanner.demo import video as demo_video

W, H = 640, 480


def code_image(text: str, scale: int = 4, border: int = 4) -> np.ndarray:
    """Black-on-white QR modules of ``text`` (alphanumeric mode for card text), uint8."""
    qr = segno.make_qr(text, error="m", boost_error=False)
    return np.array([[0 if d else 255 for d in row] for row in qr.matrix_iter(scale=scale, border=border)],
                    np.uint8)


def card_frame(text: str | None, kind: str = "plain", *, size: tuple[int, int] = (W, H),
               scale: int = 4) -> np.ndarray:
    """A grey 'scene' frame with the code of ``text`` (None: no code) degraded as ``kind`` says."""
    w, h = size
    rng = np.random.default_rng(abs(hash((text, kind))) % 2**32)
    frame = np.full((h, w), 120, np.float32)
    cv2.rectangle(frame, (20, 20), (w // 3, h - 40), 90, -1)  # some scene structure
    cv2.line(frame, (0, h - 10), (w, h // 2), 170, 3)
    if text is not None:
        code = code_image(text, scale).astype(np.float32)
        if kind == "low_contrast":
            code = 105 + code * (60 / 255)  # dark 105, light 165
        if kind == "inverted":
            code = 255 - code
        side = code.shape[0]
        src = np.float32([(0, 0), (side, 0), (side, side), (0, side)])
        cx, cy = w / 2, h / 2
        pts = src - side / 2
        if kind == "rotated":
            a = np.deg2rad(33)
            pts = pts @ np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]).T
        if kind == "perspective":
            pts = pts * np.float32([[1, 1], [0.8, 0.9], [0.8, 0.9], [1, 1]])
        dst = (pts + (cx, cy)).astype(np.float32)
        m = cv2.getPerspectiveTransform(src, dst)
        frame = cv2.warpPerspective(code, m, (w, h), dst=frame, flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_TRANSPARENT)
        if kind == "blurred":
            frame = cv2.GaussianBlur(frame, (0, 0), 1.1)
    frame += rng.normal(0, 3, frame.shape)  # sensor noise
    return frame.clip(0, 255).astype(np.uint8)


def write_video(path: Path, frames: list[np.ndarray], fps: float = 30.0) -> Path:
    """A Motion-JPEG AVI of grayscale frames, written by OpenCV."""
    h, w = frames[0].shape
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h), isColor=False)
    assert writer.isOpened(), "OpenCV cannot write MJPG here"
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def write_shots(path: Path, shots: list[demo_video.Shot], fps: float = 10.0) -> Path:
    """A Motion-JPEG video of QR shots (cards held up, or none), written by scanner.demo.video."""
    demo_video.write(path, shots, fps)
    return path


def show(folder: Path, text: str | None) -> None:
    """The simulated camera's scene: one image in its folder, swapped atomically (a card held up, or none)."""
    frame = next(demo_video.frames([demo_video.Shot(text, 0.1)]))
    tmp = folder.parent / "next.png"
    cv2.imwrite(str(tmp), frame)
    os.replace(tmp, folder / "frame.png")
