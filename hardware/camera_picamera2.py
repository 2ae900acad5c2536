"""Raspberry Pi camera modules through picamera2: the low-resolution YUV420 stream's Y plane is the frame.

picamera2 needs libcamera from Raspberry Pi OS and cannot be installed from PyPI alone, so it is
imported only when a camera is configured with backend "picamera2". The decoder reads the lores
stream's luma plane in place (`hardware.decode.y_plane`): no colour conversion, no copy. With
``detail_width``/``detail_height`` the main stream is that size and both planes of one request are
handed on (`DualFrame`): the first pass looks at the small one, the second pass crops the large one.
"""
from __future__ import annotations

import importlib

import numpy as np

from hardware.camera import CameraConfig, DualFrame, SourceUnavailable
from hardware.decode import y_plane
from hardware.inputs import SourceReason

INSTALL_HINT = ("picamera2 is not installed: sudo apt install python3-picamera2 and create the venv "
                "with --system-site-packages")
MAIN_MAX = (2028, 1520)
"""The main stream (unused by decoding, required by libcamera) is twice the lores size, at most this."""
CAPTURE_TIMEOUT = 2.0
"""Seconds to wait for a frame before calling the camera lost."""


def load_picamera2():
    """The Picamera2 class, or SourceUnavailable(library_missing) with the one install hint."""
    try:
        module = importlib.import_module("picamera2")
    except ImportError:
        raise SourceUnavailable(INSTALL_HINT, code=SourceReason.LIBRARY_MISSING, retry=False) from None
    return module.Picamera2


def camera_controls(config: CameraConfig, available: dict) -> dict:
    """libcamera controls for the configured rate, exposure and focus (only those the camera has)."""
    controls: dict = {}
    if config.fps and "FrameDurationLimits" in available:
        period = int(1_000_000 / config.fps)
        controls["FrameDurationLimits"] = (period, period)
    if config.exposure is not None and "ExposureTime" in available:
        controls["AeEnable"] = False
        controls["ExposureTime"] = int(config.exposure)
        if config.gain is not None and "AnalogueGain" in available:
            controls["AnalogueGain"] = float(config.gain)
    elif config.exposure_mode == "short" and "AeExposureMode" in available:
        controls["AeExposureMode"] = 1  # libcamera AeExposureModeShort: short exposures, more gain
    if "AfMode" in available:
        if config.focus is not None:
            controls["AfMode"] = 0  # libcamera AfModeManual
            controls["LensPosition"] = float(config.focus)
        else:
            controls["AfMode"] = 2  # libcamera AfModeContinuous
    return controls


class Picamera2Source:
    """A camera module (device "picamera2" or "picamera2:N"); frames are the lores Y plane."""

    live = True

    def __init__(self, config: CameraConfig) -> None:
        self.config = config
        self.name = config.source_id
        dev = str(config.device)
        try:
            self.camera_num = int(dev.split(":", 1)[1]) if ":" in dev else 0
        except ValueError:
            raise SourceUnavailable(f"{dev}: expected picamera2 or picamera2:N", code=SourceReason.BAD_CONFIG,
                                    retry=False) from None
        self._cam = None
        self._geometry: tuple[int, int, int] | None = None
        self._main: tuple[int, int, int] | None = None

    def open(self) -> None:
        picamera2 = load_picamera2()
        try:
            cam = picamera2(self.camera_num)
        except (IndexError, RuntimeError, OSError) as exc:  # no camera attached, or held by another process
            raise SourceUnavailable(f"camera module {self.camera_num}: {exc}",
                                    code=SourceReason.DEVICE_MISSING) from None
        try:
            width = (self.config.width or 640) & ~1
            height = (self.config.height or 480) & ~1
            if self.config.detail_width and self.config.detail_height:
                main = (self.config.detail_width & ~1, self.config.detail_height & ~1)
            else:
                main = (min(MAIN_MAX[0], width * 2), min(MAIN_MAX[1], height * 2))
            cfg = cam.create_video_configuration(main={"size": main, "format": "YUV420"},
                                                 lores={"size": (width, height), "format": "YUV420"},
                                                 buffer_count=4)
            cam.configure(cfg)
            streams = cam.camera_configuration()
            lores = streams["lores"]
            self._geometry = (lores["size"][0], lores["size"][1], lores["stride"])
            if self.config.detail_width and self.config.detail_height:
                self._main = (streams["main"]["size"][0], streams["main"]["size"][1], streams["main"]["stride"])
            controls = camera_controls(self.config, getattr(cam, "camera_controls", {}) or {})
            if controls:
                cam.set_controls(controls)
            cam.start()
        except (RuntimeError, OSError, ValueError, KeyError) as exc:
            cam.close()
            raise SourceUnavailable(f"camera module {self.camera_num}: {exc}",
                                    code=SourceReason.DEVICE_ERROR) from None
        self._cam = cam

    def read(self) -> np.ndarray | DualFrame:
        if self._cam is None or self._geometry is None:
            raise SourceUnavailable(f"{self.name}: not open")
        try:
            if self._main is None:
                buf, main = self._cam.capture_buffer("lores", wait=CAPTURE_TIMEOUT), None
            else:
                # both streams of one request: the same moment at two resolutions
                (buf, main), _ = self._cam.capture_buffers(["lores", "main"], wait=CAPTURE_TIMEOUT)
        except (RuntimeError, OSError, TimeoutError) as exc:
            raise SourceUnavailable(f"{self.name}: {exc}", code=SourceReason.NO_FRAMES) from None
        if buf is None:
            raise SourceUnavailable(f"{self.name}: no frame within {CAPTURE_TIMEOUT:.0f} s",
                                    code=SourceReason.NO_FRAMES)
        width, height, stride = self._geometry
        gray = y_plane(buf, width, height, stride)
        if main is None:
            return gray
        return DualFrame(gray, y_plane(main, *self._main))

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            try:
                cam.stop()
            finally:
                cam.close()
