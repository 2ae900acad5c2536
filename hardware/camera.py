"""Cameras → QR texts: frame sources (OpenCV, image folders, in-memory, picamera2) and the camera input.

A `FrameSource` is the narrow interface: ``open()``, ``read()`` → one 8-bit grayscale frame (or
None at the end of a file), ``close()``. `CameraInput` runs one source for the pipeline: it reads
frames, decodes the region of interest, hands every code it sees to the pipeline (which folds
repeats), and reopens a source that stops delivering with backoff while the rest of the appliance
goes on. Live cameras are read in their own thread and only the newest frame is decoded, so a slow
decode never makes the picture lag. Specification: docs/decoding.md.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from hardware.decode import (
    IMAGE_SUFFIXES,
    ApplianceDecoder,
    DecodedCode,
    Decoder,
    DecoderUnavailable,
    ImageUnreadable,
    Roi,
    check_roi,
    decode_region,
    make_decoder,
    read_gray,
    roi_view,
)
from hardware.inputs import InputThread, SourceReason, SourceState
from hardware.stream_decode import Hint, StreamDecoder
from scanner.base.backoff import Backoff
from scanner.base.errors import CheckpointError
from scanner.base.lazy import lazy_module
from scanner.base.safetext import escape

if TYPE_CHECKING:
    import cv2
    import numpy as np
else:
    np = lazy_module("numpy")  # loaded at its first use: ~13 MB a process without a camera may never need
    cv2 = lazy_module("cv2")  # loaded at its first use: a device without a camera never needs OpenCV

log = logging.getLogger(__name__)

BACKENDS = ("auto", "opencv", "picamera2", "files")
EXPOSURE_MODES = ("auto", "short")


class SourceUnavailable(CheckpointError):
    """A frame source that cannot be opened or stopped delivering; ``code`` is a SourceReason code.

    ``retry`` says whether reopening later may help (an unplugged camera) or not (a missing library).
    """

    def __init__(self, message: str, *, code: str = SourceReason.DEVICE_ERROR, retry: bool = True) -> None:
        super().__init__(message, code=code)
        self.retry = retry


@dataclass(frozen=True, slots=True)
class CameraConfig:
    """One camera as configured (scanner.appliance.config builds these from the TOML file).

    ``device``: a V4L2 index ("0") or path (/dev/video0, /dev/v4l/by-id/...), a video file, a
    stream URL, a folder of images, or "picamera2" / "picamera2:N" for a Raspberry Pi camera
    module. ``width``/``height``/``fps`` are asked of the backend (it may choose the nearest it
    has); ``exposure`` (OpenCV: backend units; picamera2: microseconds) and ``focus`` (OpenCV:
    backend units; picamera2: lens position in dioptres) are None for automatic. ``roi`` is the
    part of the frame decoded, as (x, y, w, h) fractions. ``gain`` is a manual sensor gain (with a
    manual exposure). ``exposure_mode`` "short" asks for short exposures and more gain (against
    motion blur; picamera2's AeExposureMode Short). ``detail_width``/``detail_height`` (picamera2):
    a higher-resolution main stream beside the width x height one that is decoded, from which the
    second pass crops (docs/decoding.md). ``live`` overrides the guess whether the
    device is a camera (frames may be dropped, end of stream means "lost") or a file (every frame
    decoded, end of stream means "finished"); ``pace`` plays a file at that many frames per second.
    """

    device: str
    name: str | None = None
    backend: str = "auto"
    width: int | None = 640
    height: int | None = 480
    fps: float | None = None
    exposure: float | None = None
    focus: float | None = None
    gain: float | None = None
    exposure_mode: str = "auto"
    detail_width: int | None = None
    detail_height: int | None = None
    roi: Roi | None = None
    decoder: str = "auto"
    direction: str | None = None
    live: bool | None = None
    pace: float | None = None
    loop: bool = False

    def __post_init__(self) -> None:
        if not str(self.device).strip():
            raise ValueError("camera device must not be empty")
        if self.backend not in BACKENDS:
            raise ValueError(f"camera backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        for field, value in (("width", self.width), ("height", self.height)):
            if value is not None and not (16 <= value <= 8192):
                raise ValueError(f"camera {field} must be between 16 and 8192, got {value!r}")
        for name, rate in (("fps", self.fps), ("pace", self.pace)):
            if rate is not None and not (0 < rate <= 1000):
                raise ValueError(f"camera {name} must be between 0 and 1000, got {rate!r}")
        if self.roi is not None:
            check_roi(self.roi)
        if self.exposure_mode not in EXPOSURE_MODES:
            raise ValueError(f"camera exposure_mode must be one of {', '.join(EXPOSURE_MODES)}, "
                             f"got {self.exposure_mode!r}")
        if (self.detail_width is None) != (self.detail_height is None):
            raise ValueError("camera detail_width and detail_height go together")
        for field, value in (("detail_width", self.detail_width), ("detail_height", self.detail_height)):
            if value is not None and not (16 <= value <= 8192):
                raise ValueError(f"camera {field} must be between 16 and 8192, got {value!r}")

    @property
    def source_id(self) -> str:
        return self.name or str(self.device)

    def resolved_backend(self) -> str:
        """The backend "auto" stands for: picamera2 for "picamera2[:N]", files for a folder, else OpenCV."""
        if self.backend != "auto":
            return self.backend
        dev = str(self.device)
        if dev == "picamera2" or dev.startswith("picamera2:"):
            return "picamera2"
        if Path(dev).is_dir():
            return "files"
        return "opencv"


@dataclass(frozen=True, slots=True)
class DualFrame:
    """A frame and the same picture at a higher resolution (picamera2's lores and main streams):
    the decoder looks at ``gray`` and crops what it must look at again from ``detail``."""

    gray: np.ndarray
    detail: np.ndarray


class FrameSource(Protocol):
    """Where frames come from. ``read`` returns a 2-D uint8 frame (or a `DualFrame`), or None at the end of a file."""

    name: str
    live: bool

    def open(self) -> None: ...

    def read(self) -> np.ndarray | DualFrame | None: ...

    def close(self) -> None: ...


def v4l2_settings(cfg: CameraConfig) -> list[tuple[str, int, float]]:
    """The V4L2 controls (through OpenCV's properties) a config asks for: (name, property, value).

    Manual exposure turns auto exposure off (V4L2 auto_exposure 1 = manual); manual focus turns
    autofocus off. Nothing is asked for what the config leaves automatic.
    """
    out: list[tuple[str, int, float]] = []
    if cfg.exposure is not None:
        out += [("auto_exposure", cv2.CAP_PROP_AUTO_EXPOSURE, 1), ("exposure", cv2.CAP_PROP_EXPOSURE, cfg.exposure)]
    if cfg.focus is not None:
        out += [("autofocus", cv2.CAP_PROP_AUTOFOCUS, 0), ("focus", cv2.CAP_PROP_FOCUS, cfg.focus)]
    if cfg.gain is not None:
        out.append(("gain", cv2.CAP_PROP_GAIN, cfg.gain))
    return out


def _is_device(dev: str) -> bool:
    return dev.isdigit() or dev.startswith("/dev/")


def _missing_or_denied(path: str) -> SourceUnavailable | None:
    """A typed error for a local path that is missing or unreadable; None if it looks usable."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return SourceUnavailable(f"{path}: not found", code=SourceReason.DEVICE_MISSING)
    except OSError as exc:
        return SourceUnavailable(f"{path}: {exc.strerror}", code=SourceReason.DEVICE_ERROR)
    if not os.access(path, os.R_OK):
        return SourceUnavailable(f"{path}: permission denied (add the user to the 'video' group)",
                                 code=SourceReason.PERMISSION_DENIED)
    return None


class OpenCVSource:
    """cv2.VideoCapture: USB webcams (V4L2 index or path), video files and network streams."""

    def __init__(self, config: CameraConfig) -> None:
        self.config = config
        self.name = config.source_id
        dev = str(config.device)
        self.live = config.live if config.live is not None else (_is_device(dev) or "://" in dev)
        self._cap: cv2.VideoCapture | None = None

    def open(self) -> None:
        cfg, dev = self.config, str(self.config.device)
        if "://" not in dev and not dev.isdigit():
            problem = _missing_or_denied(dev)
            if problem is not None:
                raise problem
        if dev.isdigit():
            cap = cv2.VideoCapture(int(dev), cv2.CAP_V4L2)
        elif dev.startswith("/dev/"):
            cap = cv2.VideoCapture(dev, cv2.CAP_V4L2)
        else:
            cap = cv2.VideoCapture(dev)
        if not cap.isOpened():
            cap.release()
            raise SourceUnavailable(f"{dev}: OpenCV cannot open it", code=SourceReason.DEVICE_ERROR)
        if self.live:
            self._configure(cap, cfg)
        self._cap = cap

    @staticmethod
    def _configure(cap: cv2.VideoCapture, cfg: CameraConfig) -> None:
        """Ask for size, rate, exposure, focus and gain; the V4L2 controls a camera lacks are logged once."""
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not one from 4 frames ago
        if cfg.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
        if cfg.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
        if cfg.fps:
            cap.set(cv2.CAP_PROP_FPS, cfg.fps)
        refused = [name for name, prop, value in v4l2_settings(cfg)
                   if not cap.set(prop, value)]
        if refused:
            log.warning("camera %s: the camera has no (or refused the) %s control", escape(cfg.source_id),
                        ", ".join(refused))

    def read(self) -> np.ndarray | None:
        cap = self._cap
        if cap is None:
            raise SourceUnavailable(f"{self.name}: not open", code=SourceReason.DEVICE_ERROR)
        try:
            ok, frame = cap.read()
        except cv2.error as exc:
            raise SourceUnavailable(f"{self.name}: {exc}", code=SourceReason.DEVICE_ERROR) from None
        if not ok or frame is None:
            if self.live:
                raise SourceUnavailable(f"{self.name}: stopped delivering frames", code=SourceReason.NO_FRAMES)
            return None
        if frame.ndim == 3:
            return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        return frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class ImageFolderSource:
    """Every image in a folder (sorted by name) as one frame each: the demo's and tests' camera."""

    live = False

    def __init__(self, folder: str | os.PathLike, name: str | None = None) -> None:
        self.folder = Path(folder)
        self.name = name or str(folder)
        self._files: list[Path] = []
        self._next = 0
        self.skipped = 0

    def open(self) -> None:
        try:
            entries = sorted(self.folder.iterdir())
        except FileNotFoundError:
            raise SourceUnavailable(f"{self.folder}: not found", code=SourceReason.DEVICE_MISSING) from None
        except OSError as exc:
            raise SourceUnavailable(f"{self.folder}: {exc.strerror}", code=SourceReason.DEVICE_ERROR) from None
        self._files = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        self._next = 0

    def read(self) -> np.ndarray | None:
        while self._next < len(self._files):
            path = self._files[self._next]
            self._next += 1
            try:
                return read_gray(path)
            except ImageUnreadable as exc:  # one bad file must not end the folder
                self.skipped += 1
                log.warning("camera %s: skipped %s", escape(self.name), escape(str(exc)))
        return None

    def close(self) -> None:
        self._files = []


class ArraySource:
    """Frames from memory (a simulated camera for the demo, benchmarks and tests)."""

    def __init__(self, frames: Iterable[np.ndarray], name: str = "memory", *, live: bool = False) -> None:
        self._frames = frames
        self.name = name
        self.live = live
        self._it: Iterator[np.ndarray] | None = None

    def open(self) -> None:
        self._it = iter(self._frames)

    def read(self) -> np.ndarray | None:
        if self._it is None:
            raise SourceUnavailable(f"{self.name}: not open")
        return next(self._it, None)

    def close(self) -> None:
        self._it = None


def make_source(config: CameraConfig) -> FrameSource:
    """The frame source a config describes (picamera2 is imported only here, only when asked for)."""
    backend = config.resolved_backend()
    if backend == "picamera2":
        from hardware.camera_picamera2 import Picamera2Source  # deferred: picamera2 exists on a Pi only
        return Picamera2Source(config)
    if backend == "files":
        return ImageFolderSource(config.device, config.source_id)
    return OpenCVSource(config)


class _Latest:
    """A one-frame mailbox: the capture thread overwrites, the decoder takes the newest.

    A frame put into the empty box puts a token into a C queue, which wakes the waiting decoder
    sooner than a `threading.Condition` does; a frame replacing one not yet taken is counted as dropped.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: queue.SimpleQueue[bool] = queue.SimpleQueue()  # one token while the box holds a frame
        self._frame: np.ndarray | DualFrame | None = None
        self.dropped = 0

    def put(self, frame: np.ndarray | DualFrame) -> None:
        with self._lock:
            empty = self._frame is None
            if not empty:
                self.dropped += 1
            self._frame = frame
        if empty:
            self._ready.put(True)

    def take(self, timeout: float) -> np.ndarray | DualFrame | None:
        try:
            self._ready.get(timeout=timeout)
        except queue.Empty:
            return None
        with self._lock:
            frame, self._frame = self._frame, None
            return frame


HINT_REPEAT_S = 2.0
"""A hint that stays is handed on again this often."""


class CameraInput(InputThread):
    """One camera for the pipeline: capture, decode (region of interest), hand on, reopen when lost.

    ``source`` is a FrameSource or a factory making a fresh one per (re)open. ``on_frame(frame,
    codes)`` is called after each decoded frame (benchmarks and the kiosk preview use it);
    ``on_hint(hint)`` whenever the stream decoder's `Hint` changes (None: nothing to say any more),
    and again every HINT_REPEAT_S while it stays (a screen drops a hint that is not repeated).
    """

    kind = "camera"

    def __init__(self, config: CameraConfig, source: FrameSource | Callable[[], FrameSource] | None = None, *,
                 decoder: Decoder | None = None, backoff: Backoff | None = None,
                 on_frame: Callable[[np.ndarray, Sequence], None] | None = None,
                 on_hint: Callable[[Hint | None], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(config.source_id, direction=config.direction, clock=clock)
        self.config = config
        if source is None:
            self._factory: Callable[[], FrameSource] = lambda: make_source(config)
        elif callable(source) and not hasattr(source, "read"):
            self._factory = source
        else:  # a source object (it has read()): the same one every time
            fixed = cast(FrameSource, source)
            self._factory = lambda: fixed
        self._decoder = decoder
        self._backoff = backoff or Backoff()
        self._on_frame = on_frame
        self._on_hint = on_hint
        self._hint: Hint | None = None
        self._hint_at = 0.0
        self.frames = 0
        self._media_s: float | None = None  # a file played at a pace: its time (seconds), across loops
        self.stream: StreamDecoder | None = None
        """The stream decoder while running (its ``hint`` says what would help the camera), if the decoder is one."""
        self._live: bool | None = None

    @property
    def finite(self) -> bool:
        if self._live is None:
            self._live = self._guess_live()
        return not self._live and not self.config.loop

    def _guess_live(self) -> bool:
        cfg = self.config
        if cfg.live is not None:
            return cfg.live
        backend = cfg.resolved_backend()
        return backend == "picamera2" or (backend == "opencv" and (_is_device(str(cfg.device))
                                                                   or "://" in str(cfg.device)))

    def run(self) -> None:
        decoder = self._decoder
        if decoder is None:
            try:
                decoder = make_decoder(self.config.decoder)
            except DecoderUnavailable as exc:
                self.status.set(SourceState.FAILED, SourceReason.DECODER_UNAVAILABLE, str(exc))
                return
        if isinstance(decoder, ApplianceDecoder):
            decoder = StreamDecoder(decoder)  # a camera's frames are a stream (hardware/stream_decode.py)
        self.stream = decoder if isinstance(decoder, StreamDecoder) else None
        while not self._stop.is_set():
            try:
                source = self._factory()
                source.open()
            except SourceUnavailable as exc:
                if not exc.retry:
                    self.status.set(SourceState.FAILED, exc.code, str(exc))
                    return
                self.status.set(SourceState.REOPENING, exc.code, str(exc))
                if not self._sleep(self._backoff.next()):
                    return
                continue
            self._live = source.live
            try:
                ended = self._stream(source, decoder)
            except SourceUnavailable as exc:
                self.status.set(SourceState.REOPENING, exc.code, str(exc))
                ended = False
                if not self._sleep(self._backoff.next()):
                    return
            finally:
                source.close()
            if ended:
                if self.config.loop and not self._stop.is_set():
                    continue
                self.status.set(SourceState.FINISHED, SourceReason.END_OF_STREAM)
                return

    def _stream(self, source: FrameSource, decoder: Decoder) -> bool:
        """Read until stopped (False) or the end of a file (True); raises SourceUnavailable when lost."""
        first = source.read()
        if first is None:
            if source.live:
                raise SourceUnavailable(f"{source.name}: no frames", code=SourceReason.NO_FRAMES)
            return True
        self.status.set(SourceState.OK)
        self._backoff.reset()
        if not source.live:
            period = 1.0 / self.config.pace if self.config.pace else 0.0
            frame: np.ndarray | DualFrame | None = first
            next_at = time.monotonic()
            while frame is not None:
                if period:  # the cooldown counts in the file's time, however late a busy machine plays it
                    self._media_s = 0.0 if self._media_s is None else self._media_s + period
                self._decode(frame, decoder)
                if self._stop.is_set():
                    return False
                if period:
                    next_at += period
                    if not self._sleep(max(0.0, next_at - time.monotonic())):
                        return False
                frame = source.read()
            return True
        return self._stream_live(source, decoder, first)

    def _stream_live(self, source: FrameSource, decoder: Decoder, first: np.ndarray | DualFrame) -> bool:
        """Capture in this thread, decode the newest frame in a helper thread."""
        box = _Latest()
        box.put(first)
        done = threading.Event()
        failure: list[BaseException] = []

        def decode_loop() -> None:
            try:
                while True:
                    frame = box.take(0.1)
                    if frame is not None:
                        self._decode(frame, decoder)
                    elif done.is_set():  # the last frame before the end is still decoded
                        return
            except Exception as exc:  # noqa: BLE001 - handed to the capture thread, which fails the input with it
                failure.append(exc)
                done.set()

        worker = threading.Thread(target=decode_loop, name=f"decode:{self.source_id}", daemon=True)
        worker.start()
        try:
            while not self._stop.is_set():
                if failure:
                    raise failure[0]
                frame = source.read()
                if frame is None:
                    raise SourceUnavailable(f"{source.name}: stream ended", code=SourceReason.NO_FRAMES)
                box.put(frame)
            return False
        finally:
            done.set()
            worker.join()
            if failure:
                raise failure[0]

    def _decode(self, frame: np.ndarray | DualFrame, decoder: Decoder) -> None:
        self.frames += 1
        if isinstance(frame, DualFrame):
            detail, frame = frame.detail, frame.gray
        else:
            detail = None
        if isinstance(decoder, StreamDecoder):
            codes = self._feed(decoder, frame, detail)
            hint, now = decoder.hint, time.monotonic()
            if hint != self._hint or (hint is not None and now - self._hint_at >= HINT_REPEAT_S):
                self._hint, self._hint_at = hint, now
                if self._on_hint is not None:
                    self._on_hint(hint)
        else:
            codes = decode_region(decoder, frame, self.config.roi)
        for code in codes:
            self._emit(code.text, self._media_s)
        if isinstance(decoder, StreamDecoder):
            decoder.settle()  # the change gate's look at a frame read at once, after its codes were handed on
        if self._on_frame is not None:
            self._on_frame(frame, codes)

    def _feed(self, stream: StreamDecoder, frame: np.ndarray, detail: np.ndarray | None) -> list:
        """The region of interest of the frame (and of its detail) through the stream decoder, corners in
        frame pixels."""
        view, dx, dy = roi_view(frame, self.config.roi)
        if detail is not None and self.config.roi is not None:
            detail = roi_view(detail, self.config.roi)[0]
        codes = list(stream.feed(view, detail).codes)
        if not (dx or dy):
            return codes
        return [DecodedCode(c.text, c.raw, tuple((x + dx, y + dy) for x, y in c.corners) if c.corners else None)
                for c in codes]

