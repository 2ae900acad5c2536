"""The kiosk's live camera preview: small JPEG frames with the detected codes outlined, to help aim.

Cameras hand every decoded frame to `Preview.offer` (their ``on_frame`` hook). While no screen
watches, that is one attribute read and a return: nothing is copied or encoded. While one does, at
most ``fps`` frames a second are scaled down (which also copies them, so the camera may reuse its
buffer) together with the corners of the codes found in them; the JPEG is encoded later, in the
API's thread pool, once per frame however many screens watch, off the scan path. Served as
Motion-JPEG by scanner/appliance/pages.py. Spec: docs/configuration.md#kiosk-screen-and-status-page.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from scanner.base.lazy import lazy_module

if TYPE_CHECKING:
    import cv2
    import numpy as np
else:
    np = lazy_module("numpy")  # loaded at its first use: ~13 MB a process without a camera may never need
    cv2 = lazy_module("cv2")  # loaded at its first use: a device without a camera never needs OpenCV

OUTLINE_BGR = (60, 220, 60)  # the outline drawn round a code: bright green on the grey picture
QUALITY = 70


@dataclass(frozen=True, slots=True)
class PreviewFrame:
    """One scaled-down frame (grayscale, private copy) and the codes' corners in its pixels."""

    seq: int
    image: np.ndarray
    outlines: tuple[tuple[tuple[int, int], ...], ...]


def scale_frame(frame: np.ndarray, width: int, codes: Sequence) -> tuple[np.ndarray, tuple]:
    """``frame`` scaled to ``width`` (never up) and the corners of ``codes`` mapped onto it."""
    h, w = frame.shape[:2]
    f = min(1.0, width / w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    small = cv2.resize(frame, size, interpolation=cv2.INTER_AREA) if f < 1.0 else frame.copy()
    outlines = tuple(tuple((round(x * f), round(y * f)) for x, y in c.corners)
                     for c in codes if getattr(c, "corners", None))
    return small, outlines


def encode_jpeg(image: np.ndarray, outlines: Sequence, quality: int = QUALITY) -> bytes:
    """A JPEG of a grayscale ``image`` with each outline drawn round its code (colour only if any)."""
    if outlines:
        img = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()
        thickness = max(2, image.shape[1] // 110)
        for quad in outlines:
            pts = np.array(quad, np.int32).reshape(-1, 1, 2)
            cv2.polylines(img, [pts], True, OUTLINE_BGR, thickness, cv2.LINE_AA)
    else:
        img = image
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("OpenCV could not encode a JPEG")
    return buf.tobytes()


class _Viewer:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.wake = asyncio.Event()


class _Slot:
    """One camera's newest preview frame, its viewers and the JPEG of that frame once encoded."""

    def __init__(self) -> None:
        self.viewers: list[_Viewer] = []
        self.frame: PreviewFrame | None = None
        self.jpeg: tuple[int, bytes] | None = None
        self.next_at = 0.0
        self.encode_lock = threading.Lock()


class Preview:
    """Preview frames of the cameras for the kiosk (see the module docstring). Thread-safe."""

    def __init__(self, fps: float = 3.0, width: int = 320, *, quality: int = QUALITY, max_viewers: int = 16,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.period = 1.0 / fps
        self.max_viewers = max_viewers
        self.width = width
        self.quality = quality
        self._mono = mono
        self._lock = threading.Lock()
        self._slots: dict[str, _Slot] = {}
        self._seq = 0
        self._closed = False
        self.encoded = 0  # JPEGs made (the benchmark and tests read it)

    def add_camera(self, camera_id: str) -> Callable[[np.ndarray, Sequence], None]:
        """Register a camera; returns its ``on_frame(frame, codes)`` hook (hardware.camera.CameraInput)."""
        with self._lock:
            slot = self._slots.setdefault(camera_id, _Slot())
        return lambda frame, codes: self._offer(slot, frame, codes)

    def cameras(self) -> list[str]:
        with self._lock:
            return list(self._slots)

    def watched(self, camera_id: str) -> bool:
        with self._lock:
            slot = self._slots.get(camera_id)
            return bool(slot and slot.viewers)

    def _offer(self, slot: _Slot, frame: np.ndarray, codes: Sequence) -> None:
        """A camera's decode thread, after each frame: cheap unless somebody watches and one is due."""
        if not slot.viewers:
            return
        now = self._mono()
        if now < slot.next_at:
            return
        slot.next_at = now + self.period
        image, outlines = scale_frame(frame, self.width, codes)
        with self._lock:
            if not slot.viewers:  # the last one left meanwhile: keep nothing
                return
            self._seq += 1
            slot.frame = PreviewFrame(self._seq, image, outlines)
            viewers = list(slot.viewers)
        for v in viewers:
            try:
                v.loop.call_soon_threadsafe(v.wake.set)
            except RuntimeError:  # that viewer's loop has closed
                pass

    # ------------------------------------------------------------ the API side (its event loop)

    def watch(self, camera_id: str) -> _Viewer | None:
        """Start watching a camera (None: no such camera, too many viewers, or closing); pair
        with `unwatch`."""
        viewer = _Viewer(asyncio.get_running_loop())
        with self._lock:
            slot = self._slots.get(camera_id)
            if slot is None or self._closed or len(slot.viewers) >= self.max_viewers:
                return None
            slot.viewers.append(viewer)
            if slot.frame is not None:
                viewer.wake.set()
        return viewer

    def unwatch(self, camera_id: str, viewer: _Viewer) -> None:
        with self._lock:
            slot = self._slots.get(camera_id)
            if slot is not None and viewer in slot.viewers:
                slot.viewers.remove(viewer)
                if not slot.viewers:
                    slot.frame = slot.jpeg = None  # nothing of the picture is kept once nobody watches

    def jpeg(self, camera_id: str, after: int) -> tuple[int, bytes] | None:
        """The newest frame as (seq, JPEG) if newer than ``after``, encoded once for every viewer
        (runs in a worker thread: the encode is the expensive part)."""
        with self._lock:
            slot = self._slots.get(camera_id)
            frame = slot.frame if slot is not None else None
        if slot is None or frame is None or frame.seq <= after:
            return None
        with slot.encode_lock:
            cached = slot.jpeg
            if cached is not None and cached[0] >= frame.seq:
                return cached
            data = encode_jpeg(frame.image, frame.outlines, self.quality)
            with self._lock:
                self.encoded += 1
                slot.jpeg = (frame.seq, data)
            return frame.seq, data

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """End every preview stream (the daemon is stopping)."""
        with self._lock:
            self._closed = True
            viewers = [v for s in self._slots.values() for v in s.viewers]
        for v in viewers:
            try:
                v.loop.call_soon_threadsafe(v.wake.set)
            except RuntimeError:
                pass
