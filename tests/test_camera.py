"""hardware.camera: real OpenCV sources on video files written here, image folders, unplug and reopen, picamera2.

Videos are written with cv2.VideoWriter (Motion-JPEG, lossy like a webcam) from QR codes rendered
in memory with segno, degraded the way cards are at a lane: rotated, in perspective, blurred, low
contrast, inverted (dark-mode phone screens). Every wait is event-driven with a generous timeout.
"""
from __future__ import annotations

import itertools
import os
import sys
from typing import ClassVar

import cv2
import numpy as np
import pytest
from support.cameras import H, W, card_frame, code_image, write_video
from support.inputs import Collector
from support.waiting import WAIT

from hardware import camera as cam
from hardware.camera import (
    ArraySource,
    CameraConfig,
    CameraInput,
    ImageFolderSource,
    OpenCVSource,
    SourceUnavailable,
    make_source,
)
from hardware.camera_picamera2 import Picamera2Source
from hardware.decode import make_decoder
from hardware.inputs import SourceReason, SourceState
from scanner.base.backoff import Backoff


def card_text(tag: str) -> str:
    """A card-like text of realistic length (385 characters, base45 alphabet), unique per tag."""
    body = (tag.upper() + " " + "6BFOXN*TS0BI$ZD4N9:9S6RCVN5+O30K3/XIV0W23NTDEXWK G2EP4J0BGJLF") * 8
    return "CK1:" + body[:381]


def run_input(inp, timeout: float = WAIT) -> Collector:
    """Start an input on a Collector, wait for it to end by itself, return what it handed over."""
    got = Collector()
    inp.start(got.submit, got.report)
    assert inp.join(timeout), "input did not finish"
    return got


# ------------------------------------------------------------------ the real OpenCV source on video files

DEGRADATIONS = ["plain", "rotated", "perspective", "blurred", "low_contrast", "inverted"]


def test_video_file_with_degraded_cards(tmp_path):
    frames, expected = [], []
    for kind in DEGRADATIONS:
        text = card_text(kind)
        expected.append(text)
        frames += [card_frame(None, "empty")] * 2 + [card_frame(text, kind)] * 3
    video = write_video(tmp_path / "lane.avi", frames)
    inp = CameraInput(CameraConfig(str(video), name="lane-1", direction="in"))
    got = run_input(inp)
    seen = got.texts()
    missing = [k for k, t in zip(DEGRADATIONS, expected) if t not in seen]
    assert not missing, f"not decoded from the video: {missing}"
    assert set(seen) == set(expected)  # nothing else, nothing wrong
    assert inp.frames == len(frames)  # a file is decoded frame by frame, none dropped
    scan = got.scans[0]
    assert (scan.source, scan.source_id, scan.direction) == ("camera", "lane-1", "in")
    health = inp.health()
    assert health.state is SourceState.FINISHED and health.reason == SourceReason.END_OF_STREAM
    assert health.scans == len(seen)


def test_small_code_in_720p_video(tmp_path):
    text = card_text("small")
    frame = card_frame(text, "plain", size=(1280, 720), scale=3)
    video = write_video(tmp_path / "hd.avi", [frame] * 2)
    got = run_input(CameraInput(CameraConfig(str(video), width=1280, height=720)))
    assert set(got.texts()) == {text}


def test_region_of_interest_limits_what_is_decoded(tmp_path):
    a, b = code_image("CK1:LEFT SIDE", 3), code_image("CK1:RIGHT SIDE", 3)
    frame = np.full((H, W), 200, np.uint8)
    frame[100:100 + a.shape[0], 20:20 + a.shape[1]] = a
    frame[100:100 + b.shape[0], 400:400 + b.shape[1]] = b
    video = write_video(tmp_path / "two.avi", [frame])
    both = run_input(CameraInput(CameraConfig(str(video))))
    assert sorted(set(both.texts())) == ["CK1:LEFT SIDE", "CK1:RIGHT SIDE"]
    right = run_input(CameraInput(CameraConfig(str(video), roi=(0.5, 0.0, 0.5, 1.0))))
    assert set(right.texts()) == {"CK1:RIGHT SIDE"}


def test_on_frame_sees_every_frame_and_its_codes(tmp_path):
    video = write_video(tmp_path / "v.avi", [card_frame(None), card_frame("CK1:ON FRAME")])
    seen = []
    run_input(CameraInput(CameraConfig(str(video)), on_frame=lambda f, codes: seen.append(
        (f.shape, [c.text for c in codes]))))
    assert seen == [((H, W), []), ((H, W), ["CK1:ON FRAME"])]


def test_opencv_source_reads_gray_frames_and_ends(tmp_path):
    video = write_video(tmp_path / "v.avi", [card_frame(None)] * 3)
    src = OpenCVSource(CameraConfig(str(video)))
    assert src.live is False
    src.open()
    frames = [src.read() for _ in range(4)]
    src.close()
    assert [f.shape if f is not None else None for f in frames] == [(H, W)] * 3 + [None]
    assert frames[0].dtype == np.uint8


# ------------------------------------------------------------------ image folders (the demo's camera)

def test_image_folder_source_skips_bad_files(tmp_path):
    folder = tmp_path / "cards"
    folder.mkdir()
    cv2.imwrite(str(folder / "1.png"), card_frame("CK1:FIRST"))
    (folder / "2.png").write_bytes(b"not an image")
    cv2.imwrite(str(folder / "3.jpg"), card_frame("CK1:THIRD", "rotated"))
    (folder / "notes.txt").write_text("ignored")
    cfg = CameraConfig(str(folder))
    assert cfg.resolved_backend() == "files"
    src = make_source(cfg)
    assert isinstance(src, ImageFolderSource)
    inp = CameraInput(cfg, src)
    got = run_input(inp)
    assert got.texts() == ["CK1:FIRST", "CK1:THIRD"]
    assert src.skipped == 1
    assert inp.health().state is SourceState.FINISHED


def test_missing_folder_is_retried_until_it_appears(tmp_path):
    folder = tmp_path / "later"
    inp = CameraInput(CameraConfig(str(folder)), backoff=Backoff(0.01, 2, 0.05))
    got = Collector()
    inp.start(got.submit, got.report)
    try:
        assert inp.status.wait_for(lambda h: h.state is SourceState.REOPENING, WAIT)
        assert inp.health().reason == SourceReason.DEVICE_MISSING
        staging = tmp_path / "staging"
        staging.mkdir()
        cv2.imwrite(str(staging / "a.png"), card_frame("CK1:ARRIVED"))
        staging.rename(folder)  # appears whole, as a mounted USB stick would
        assert inp.join(WAIT)
    finally:
        inp.stop()
    assert got.texts() == ["CK1:ARRIVED"]
    assert inp.health().state is SourceState.FINISHED and inp.health().reopens == 1


# ------------------------------------------------------------------ unplug: the device disappears, comes back

def test_live_camera_unplugged_and_replugged(tmp_path):
    """A 'camera' (a real VideoCapture treated as live) whose device node vanishes, then returns.

    Live semantics: the end of a stream means the camera stopped delivering, so the input closes
    and reopens it with backoff. While the path is gone it reports reopening/device_missing; the
    camera that comes back shows another card, which must be read.
    """
    device = tmp_path / "video0.avi"  # stands in for /dev/video0
    write_video(device, [card_frame(card_text("before"))] * 5)
    inp = CameraInput(CameraConfig(str(device), live=True), backoff=Backoff(0.01, 2, 0.1))
    got = Collector()
    inp.start(got.submit, got.report)
    try:
        assert got.wait(lambda c: card_text("before") in c.texts())
        assert inp.health().state in (SourceState.OK, SourceState.REOPENING)
        device.unlink()  # unplugged
        assert inp.status.wait_for(lambda h: h.state is SourceState.REOPENING
                                   and h.reason == SourceReason.DEVICE_MISSING, WAIT)
        write_video(tmp_path / "new.avi", [card_frame(card_text("after"))] * 5)
        os.replace(tmp_path / "new.avi", device)  # plugged back in
        assert got.wait(lambda c: card_text("after") in c.texts())
        assert inp.status.wait_for(lambda h: h.reopens >= 1, WAIT)
    finally:
        inp.stop()
        assert inp.join(WAIT)
    assert inp.health().state is SourceState.STOPPED


def test_live_source_newest_frame_path_and_no_frames_reopen():
    """Live sources are read in one thread and decoded in another; a stream that ends is reopened."""
    opened = []

    def factory():
        opened.append(1)
        frames = [card_frame(f"CK1:OPEN {len(opened)}")] * 3
        return ArraySource(frames, "sim", live=True)

    inp = CameraInput(CameraConfig("sim", backend="opencv", live=True), factory, backoff=Backoff(0.01, 1, 0.01))
    got = Collector()
    inp.start(got.submit, got.report)
    try:
        assert got.wait(lambda c: {"CK1:OPEN 1", "CK1:OPEN 2"} <= set(c.texts()))
        assert inp.status.wait_for(lambda h: h.reopens >= 1, WAIT)
        assert inp.health().reason in (None, SourceReason.NO_FRAMES)
    finally:
        inp.stop()
        assert inp.join(WAIT)


def test_the_newest_frame_box_hands_on_the_newest_frame_and_counts_the_ones_replaced():
    """The live hand-off between capture and decode: the decoder gets the newest frame, each frame
    replaced before it was taken is counted as dropped, and an empty box times out with nothing."""
    box = cam._Latest()
    assert box.take(0.01) is None
    frames = [np.full((2, 2), i, np.uint8) for i in range(4)]
    for frame in frames[:3]:
        box.put(frame)
    assert box.take(0.01) is frames[2] and box.dropped == 2
    assert box.take(0.01) is None  # taken once: the box is empty again
    box.put(frames[3])
    assert box.take(0.01) is frames[3] and box.take(0.01) is None and box.dropped == 2


def test_undecodable_config_fails_cleanly():
    inp = CameraInput(CameraConfig("0", decoder="opencv"))
    inp.start(Collector().submit, Collector().report)
    assert inp.join(WAIT)
    h = inp.health()
    assert h.state is SourceState.FAILED and h.reason == SourceReason.DECODER_UNAVAILABLE


@pytest.mark.parametrize("kwargs", [dict(device=""), dict(device="0", backend="gstreamer"),
                                    dict(device="0", width=8), dict(device="0", fps=0),
                                    dict(device="0", roi=(0.5, 0.5, 0.6, 0.2))])
def test_bad_camera_config(kwargs):
    with pytest.raises(ValueError):
        CameraConfig(**kwargs)


def test_missing_v4l2_device_is_reported_as_missing(tmp_path):
    src = OpenCVSource(CameraConfig(str(tmp_path / "nope" / "video9"), live=True))
    with pytest.raises(SourceUnavailable) as info:
        src.open()
    assert info.value.code == SourceReason.DEVICE_MISSING and info.value.retry


# ------------------------------------------------------------------ picamera2 (not installable here)

def test_picamera2_missing_gives_one_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)
    cfg = CameraConfig("picamera2")
    assert cfg.resolved_backend() == "picamera2"
    inp = CameraInput(cfg)
    inp.start(Collector().submit, Collector().report)
    assert inp.join(WAIT)
    h = inp.health()
    assert h.state is SourceState.FAILED and h.reason == SourceReason.LIBRARY_MISSING
    assert h.detail == ("picamera2 is not installed: sudo apt install python3-picamera2 and create the venv "
                        "with --system-site-packages")


class _FakePicamera2:
    """Stands in for picamera2.Picamera2, which cannot be installed here (it needs libcamera).

    It implements the calls Picamera2Source makes and hands out YUV420 buffers laid out as
    picamera2 documents them (padded Y rows, then U and V): this tests our configuration and the
    Y-plane path, not the camera. The real camera path is untested on this machine.
    """

    instances: ClassVar[list] = []

    def __init__(self, num: int = 0) -> None:
        self.num = num
        self.dual = 0
        self.controls = {}
        self.started = self.closed = False
        self.camera_controls = {"FrameDurationLimits": (), "ExposureTime": (), "AfMode": (), "LensPosition": (),
                                "AeExposureMode": (), "AnalogueGain": ()}
        _FakePicamera2.instances.append(self)

    def create_video_configuration(self, main, lores, buffer_count):
        return {"main": main, "lores": lores, "buffer_count": buffer_count}

    def configure(self, cfg):
        self.cfg = cfg
        w, _h = cfg["lores"]["size"]
        self.stride = (w + 63) // 64 * 64 + 64

    def camera_configuration(self):
        w, _h = self.cfg["main"]["size"]
        return {"lores": {**self.cfg["lores"], "stride": self.stride},
                "main": {**self.cfg["main"], "stride": (w + 63) // 64 * 64}}

    def set_controls(self, controls):
        self.controls.update(controls)

    def start(self):
        self.started = True

    def capture_buffer(self, name, wait=None):
        assert name == "lores" and self.started
        w, h = self.cfg["lores"]["size"]
        y = np.full((h, self.stride), 7, np.uint8)
        y[:, :w] = card_frame("CK1:PI CAMERA", size=(w, h))
        chroma = np.full(h // 2 * self.stride // 2, 128, np.uint8)
        return np.concatenate([y.reshape(-1), chroma, chroma])

    def capture_buffers(self, names, wait=None):
        """Both streams of one request (lores and main), as picamera2's capture_buffers hands them over."""
        assert list(names) == ["lores", "main"] and self.started
        w, h = self.cfg["main"]["size"]
        stride = (w + 63) // 64 * 64
        main = np.full((h, stride), 7, np.uint8)
        main[:, :w] = self.main_frame(w, h)
        chroma = np.full(h // 2 * stride // 2, 128, np.uint8)
        lores_w, lores_h = self.cfg["lores"]["size"]
        small = cv2.resize(main[:, :w], (lores_w, lores_h), interpolation=cv2.INTER_AREA)
        y = np.full((lores_h, self.stride), 7, np.uint8)
        y[:, :lores_w] = small
        lchroma = np.full(lores_h // 2 * self.stride // 2, 128, np.uint8)
        self.dual += 1
        return [np.concatenate([y.reshape(-1), lchroma, lchroma]),
                np.concatenate([main.reshape(-1), chroma, chroma])], {}

    @staticmethod
    def main_frame(w, h):
        """A card code small enough that the lores stream cannot read it, but the main stream can."""
        frame = np.full((h, w), 200, np.uint8)
        code = code_image(card_text("main stream"), scale=2)
        code = cv2.GaussianBlur(code, (0, 0), 1.2)
        frame[40:40 + code.shape[0], 60:60 + code.shape[1]] = code
        return frame

    def stop(self):
        self.started = False

    def close(self):
        self.closed = True


def test_picamera2_source_decodes_the_lores_y_plane(monkeypatch):
    module = type(sys)("picamera2")
    module.Picamera2 = _FakePicamera2
    monkeypatch.setitem(sys.modules, "picamera2", module)
    _FakePicamera2.instances.clear()
    cfg = CameraConfig("picamera2:1", width=320, height=240, fps=20, exposure=8000)
    inp = CameraInput(cfg, backoff=Backoff(0.01, 1, 0.01))
    got = Collector()
    inp.start(got.submit, got.report)
    try:
        assert got.wait(lambda c: "CK1:PI CAMERA" in c.texts())
    finally:
        inp.stop()
        assert inp.join(WAIT)
    fake = _FakePicamera2.instances[0]
    assert fake.num == 1 and fake.closed
    assert fake.cfg["lores"] == {"size": (320, 240), "format": "YUV420"}
    assert fake.controls == {"FrameDurationLimits": (50000, 50000), "AeEnable": False, "ExposureTime": 8000,
                             "AfMode": 2}


def test_picamera2_main_stream_crops_what_lores_cannot_read(monkeypatch):
    """With detail_width/height the first pass reads the small lores plane and the second pass crops
    the main plane of the same request: a code too small for lores is read from main."""
    module = type(sys)("picamera2")
    module.Picamera2 = _FakePicamera2
    monkeypatch.setitem(sys.modules, "picamera2", module)
    _FakePicamera2.instances.clear()
    text = card_text("main stream")
    small = cv2.resize(_FakePicamera2.main_frame(640, 480), (320, 240), interpolation=cv2.INTER_AREA)
    assert make_decoder("zxing").decode(small) == []  # lores alone cannot read it, nor the appliance decoder
    assert make_decoder("auto").decode(small) == []
    cfg = CameraConfig("picamera2", width=320, height=240, detail_width=640, detail_height=480,
                       exposure_mode="short")
    inp = CameraInput(cfg, backoff=Backoff(0.01, 1, 0.01))
    got = Collector()
    inp.start(got.submit, got.report)
    try:
        assert got.wait(lambda c: text in c.texts())
    finally:
        inp.stop()
        assert inp.join(WAIT)
    fake = _FakePicamera2.instances[0]
    assert fake.cfg["main"] == {"size": (640, 480), "format": "YUV420"} and fake.dual > 0
    assert fake.controls["AeExposureMode"] == 1 and "AeEnable" not in fake.controls


def test_v4l2_settings_from_the_config():
    assert cam.v4l2_settings(CameraConfig("/dev/video0")) == []
    settings = cam.v4l2_settings(CameraConfig("/dev/video0", exposure=120, focus=0, gain=4))
    assert [(name, value) for name, _, value in settings] == [
        ("auto_exposure", 1), ("exposure", 120), ("autofocus", 0), ("focus", 0), ("gain", 4)]
    assert settings[0][1] == cv2.CAP_PROP_AUTO_EXPOSURE and settings[3][1] == cv2.CAP_PROP_FOCUS


@pytest.mark.parametrize("kwargs", [{"exposure_mode": "long"}, {"detail_width": 1280},
                                    {"detail_width": 8, "detail_height": 8}])
def test_bad_camera_settings(kwargs):
    with pytest.raises(ValueError):
        CameraConfig("picamera2", **kwargs)


def test_picamera2_bad_device_name():
    with pytest.raises(SourceUnavailable) as info:
        Picamera2Source(CameraConfig("picamera2:left"))
    assert info.value.code == SourceReason.BAD_CONFIG and not info.value.retry


def test_decoder_given_is_used(tmp_path):
    video = write_video(tmp_path / "v.avi", [card_frame("CK1:PYZBAR PATH")])
    try:
        dec = make_decoder("pyzbar")
    except cam.DecoderUnavailable as exc:
        pytest.skip(str(exc))
    got = run_input(CameraInput(CameraConfig(str(video)), decoder=dec))
    assert got.texts() == ["CK1:PYZBAR PATH"]


class _FailingDecoder:
    """A decoder with a bug (a fault injected on purpose): the input must fail visibly, not hang."""

    name = "broken"

    def decode(self, gray):
        raise RuntimeError("decoder bug")


@pytest.mark.parametrize("live", [False, True])
def test_a_decoder_bug_fails_the_input_visibly(live):
    frame = card_frame(None)
    frames = itertools.repeat(frame) if live else [frame] * 3  # a live camera never runs dry
    inp = CameraInput(CameraConfig("sim", backend="opencv", live=live), lambda: ArraySource(frames, live=live),
                      decoder=_FailingDecoder())
    inp.start(Collector().submit, Collector().report)
    assert inp.join(WAIT)
    h = inp.health()
    assert h.state is SourceState.FAILED and h.reason == SourceReason.DEVICE_ERROR and "RuntimeError" in h.detail
