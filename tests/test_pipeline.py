"""scanner.appliance.pipeline: real inputs (video files, pty serial readers, pipes) → one queue → real verdicts."""
from __future__ import annotations

import os
import threading
import time
from dataclasses import FrozenInstanceError

import pytest
from support.cameras import card_frame, write_video
from support.inputs import Pty
from support.waiting import WAIT

from hardware.camera import CameraConfig, CameraInput
from hardware.inputs import (
    InputThread,
    SourceHealth,
    SourceReason,
    SourceState,
)
from hardware.readers import SerialReader, SerialReaderConfig, StdinReader
from scanner.appliance.pipeline import Pipeline, PipelineHealth
from scanner.base.backoff import Backoff
from scanner.base.errors import Reason
from scanner.cards.scan import Scan

NOW = 1_750_000_000


class Verdicts:
    """A sink recording (scan, verdict) pairs; optionally held shut until released."""

    def __init__(self, hold: bool = False) -> None:
        self.got: list = []
        self.cond = threading.Condition()
        self.gate = threading.Event()
        if not hold:
            self.gate.set()
        self.entered = threading.Event()

    def __call__(self, scan, verdict) -> None:
        self.entered.set()
        assert self.gate.wait(WAIT)
        with self.cond:
            self.got.append((scan, verdict))
            self.cond.notify_all()

    def wait(self, n: int) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.got) >= n, WAIT)

    def texts(self) -> list[str]:
        with self.cond:
            return [s.text for s, _ in self.got]


class FrameClock:
    """A monotonic clock that advances 1/30 s per decoded camera frame: cooldowns in video time."""

    def __init__(self) -> None:
        self.camera: CameraInput | None = None

    def __call__(self) -> float:
        return self.camera.frames / 30.0 if self.camera else 0.0


def test_card_held_for_three_seconds_beeps_once(tmp_path, make_card, trust):
    card = make_card()
    frames = [card_frame(None)] * 5 + [card_frame(card)] * 90 + [card_frame(None)] * 5  # 3 s at 30 fps
    video = write_video(tmp_path / "held.avi", frames)
    clock = FrameClock()
    sink = Verdicts()
    pipe = Pipeline.verifying(trust, sink, clock=lambda: NOW, monotonic=clock)
    clock.camera = pipe.add(CameraInput(CameraConfig(str(video), name="gate")))
    started = time.time()
    with pipe:
        assert pipe.wait_finished(WAIT)
    assert len(sink.got) == 1
    scan, verdict = sink.got[0]
    assert verdict.accepted and verdict.reason is Reason.OK
    assert (scan.source, scan.source_id) == ("camera", "gate")
    assert started <= scan.at <= time.time()  # wall-clock time of the read
    h = pipe.health()
    assert h.verdicts == 1 and h.folded >= 80 and h.dropped == 0


def test_card_shown_again_after_the_cooldown_is_a_new_scan(tmp_path, make_card, trust):
    card = make_card()
    frames = [card_frame(card)] * 10 + [card_frame(None)] * 100 + [card_frame(card)] * 10  # away 3.3 s
    video = write_video(tmp_path / "twice.avi", frames)
    clock = FrameClock()
    sink = Verdicts()
    pipe = Pipeline.verifying(trust, sink, cooldown=3.0, clock=lambda: NOW, monotonic=clock)
    clock.camera = pipe.add(CameraInput(CameraConfig(str(video))))
    with pipe:
        assert pipe.wait_finished(WAIT)
    assert sink.texts() == [card, card]


def test_a_file_played_late_by_a_busy_machine_counts_the_cooldown_in_its_own_time(tmp_path, make_card, trust):
    """A video played at a pace (the demo's camera) on a machine too busy to keep it: one hold with
    a short gap in it is still one scan, and the card shown again after the cooldown (in the file's
    time) is a new one, however long the playing took on the wall clock."""
    card = make_card()
    away, gone = [card_frame(None)] * 10, [card_frame(None)] * 40  # 0.1 s and 0.4 s at 100 fps
    video = write_video(tmp_path / "late.avi", [card_frame(card)] * 5 + away + [card_frame(card)] * 5 + gone
                        + [card_frame(card)] * 5)
    sink = Verdicts()
    pipe = Pipeline.verifying(trust, sink, cooldown=0.3, clock=lambda: NOW)
    camera = pipe.add(CameraInput(CameraConfig(str(video), name="gate", pace=100),
                                  on_frame=lambda frame, codes: time.sleep(0.05)))  # 20 fps at best: 5x late
    started = time.monotonic()
    with pipe:
        assert pipe.wait_finished(WAIT)
    assert time.monotonic() - started > 65 * 0.05  # the wall clock saw gaps of 0.5 s and 2 s
    assert camera.frames == 65
    assert sink.texts() == [card, card]


def test_all_inputs_feed_one_queue_and_verdicts_carry_their_source(tmp_path, make_card, trust, now):
    pytest.importorskip("serial")
    cam_card, serial_card, stdin_card = make_card(name="Camera"), make_card(name="Serial"), make_card(name="Stdin")
    video = write_video(tmp_path / "v.avi", [card_frame(cam_card)] * 3)
    pty = Pty()
    r, w = os.pipe()
    sink = Verdicts()
    pipe = Pipeline.verifying(trust, sink, clock=lambda: now)
    serial = pipe.add(SerialReader(SerialReaderConfig(pty.slave_path, name="desk"), backoff=Backoff(0.01, 2, 0.1)))
    pipe.add(CameraInput(CameraConfig(str(video), name="cam")))
    pipe.add(StdinReader(os.fdopen(r, "rb", buffering=0)))
    with pipe:
        assert serial.status.wait_for(lambda h: h.state is SourceState.OK, WAIT)
        pty.send(serial_card.encode() + b"\r\n")
        os.write(w, stdin_card.encode() + b"\nnot a card\n")
        os.close(w)
        assert sink.wait(4)
        by_text = {s.text: (s.source, s.source_id, v.reason) for s, v in sink.got}
    pty.unplug()
    assert by_text == {cam_card: ("camera", "cam", Reason.OK), serial_card: ("serial", "desk", Reason.OK),
                       stdin_card: ("stdin", "stdin", Reason.OK),
                       "not a card": ("stdin", "stdin", Reason.UNSUPPORTED_FORMAT)}


def test_slow_sink_never_blocks_capture_and_one_verdict_per_text_in_flight(tmp_path, make_card, trust, now):
    card, other = make_card(name="One"), make_card(name="Two")
    video = write_video(tmp_path / "v.avi", [card_frame(card)] * 40 + [card_frame(other)] * 5)
    sink = Verdicts(hold=True)
    pipe = Pipeline.verifying(trust, sink, cooldown=0.0, clock=lambda: now)
    camera = pipe.add(CameraInput(CameraConfig(str(video))))
    with pipe:
        assert sink.entered.wait(WAIT)  # the worker is inside the sink, held there
        assert camera.join(WAIT)  # ... and the camera still read and decoded the whole file
        assert camera.frames == 45
        # the same text again from another source while its verdict is in flight: folded
        assert not pipe.submit(Scan(card, "usb", "reader-1", now))
        h = pipe.health()
        assert h.in_flight == 2 and h.queued == 1  # `card` in the sink, `other` waiting
        sink.gate.set()
        assert pipe.wait_idle(WAIT)
    assert sink.texts() == [card, other]
    assert pipe.health().folded >= 40


def test_same_text_from_another_source_after_its_verdict_is_verified(make_card, trust, now):
    card = make_card()
    sink = Verdicts()
    with Pipeline.verifying(trust, sink, clock=lambda: now) as pipe:
        assert pipe.submit(Scan(card, "camera", "cam", now))
        assert pipe.wait_idle(WAIT)
        assert not pipe.submit(Scan(card, "camera", "cam", now))  # same source, within the cooldown
        assert pipe.submit(Scan(card, "usb", "desk", now))  # another source: the entry log decides
        assert pipe.wait_idle(WAIT)
    assert [s.source for s, _ in sink.got] == ["camera", "usb"]


def test_cooldown_runs_from_the_last_sighting():
    t = [0.0]
    sink = Verdicts()
    pipe = Pipeline.verifying(lambda: None, sink, cooldown=3.0, verify=lambda text, trust, now: text,
                              monotonic=lambda: t[0])
    with pipe:
        assert pipe.submit(Scan("CK1:X", "camera", "c", 0))
        assert pipe.wait_idle(WAIT)
        for t[0] in (1.0, 2.5, 4.0, 5.9):  # seen again and again: every gap under 3 s
            assert not pipe.submit(Scan("CK1:X", "camera", "c", 0))
        t[0] = 9.0
        assert pipe.submit(Scan("CK1:X", "camera", "c", 0))
        assert pipe.wait_idle(WAIT)
    assert len(sink.got) == 2


def test_the_cooldown_folds_repeats_without_keeping_card_texts(make_card, trust, now):
    """The cooldown's map (up to 4,096 sightings) knows a scan by a 16-byte digest of its text and
    its source: a repeat is still folded, another card or source is not, and no card's text is kept."""
    card, other = make_card(name="One"), make_card(name="Two")
    sink = Verdicts()
    with Pipeline.verifying(trust, sink, clock=lambda: now) as pipe:
        assert pipe.submit(Scan(card, "camera", "cam", now))
        assert pipe.wait_idle(WAIT)
        assert not pipe.submit(Scan(card, "camera", "cam", now))  # within the cooldown: folded
        assert pipe.submit(Scan(other, "camera", "cam", now))
        assert pipe.submit(Scan(card, "usb", "desk", now))
        assert pipe.wait_idle(WAIT)
        keys = list(pipe._last_seen)
    assert [s.text for s, _ in sink.got] == [card, other, card]
    assert len(keys) == 3 and all(isinstance(k[0], bytes) and len(k[0]) == 16 for k in keys)
    held = [part for k in keys for part in k if isinstance(part, str)]
    assert not any(text in part for part in held for text in (card, other)), held


def test_full_queue_drops_and_counts_without_blocking(trust, now):
    sink = Verdicts(hold=True)
    pipe = Pipeline.verifying(trust, sink, queue_size=1, clock=lambda: now)
    with pipe:
        assert pipe.submit(Scan("CK1:A", "stdin", "s", now))
        assert sink.entered.wait(WAIT)
        assert pipe.submit(Scan("CK1:B", "stdin", "s", now))  # fills the queue
        assert not pipe.submit(Scan("CK1:C", "stdin", "s", now))  # dropped, at once
        assert pipe.health().dropped == 1
        sink.gate.set()
        assert pipe.wait_idle(WAIT)
        assert pipe.submit(Scan("CK1:C", "stdin", "s", now))  # a dropped scan is not held in the cooldown
        assert pipe.wait_idle(WAIT)
    assert sink.texts() == ["CK1:A", "CK1:B", "CK1:C"]


def test_failing_sink_is_counted_and_the_worker_goes_on(trust, now):
    calls = []

    def sink(scan, verdict):
        calls.append(scan.text)
        if scan.text == "CK1:BAD":
            raise RuntimeError("entry log on fire")

    with Pipeline.verifying(trust, sink, clock=lambda: now) as pipe:
        pipe.submit(Scan("CK1:BAD", "stdin", "s", now))
        pipe.submit(Scan("CK1:GOOD", "stdin", "s", now))
        assert pipe.wait_idle(WAIT)
        assert pipe.health().sink_errors == 1
    assert calls == ["CK1:BAD", "CK1:GOOD"]


def test_the_rest_keeps_working_while_a_camera_is_unplugged(tmp_path, make_card, trust, now):
    card = make_card()
    r, w = os.pipe()
    sink = Verdicts()
    pipe = Pipeline.verifying(trust, sink, clock=lambda: now)
    camera = pipe.add(CameraInput(CameraConfig(str(tmp_path / "video0.avi"), name="cam", live=True),
                                  backoff=Backoff(0.01, 2, 0.05)))
    pipe.add(StdinReader(os.fdopen(r, "rb", buffering=0), name="keyboard"))
    with pipe:
        assert camera.status.wait_for(lambda h: h.state is SourceState.REOPENING, WAIT)
        os.write(w, card.encode() + b"\n")
        os.close(w)
        assert sink.wait(1)
        health = pipe.health()
    assert isinstance(health, PipelineHealth) and all(isinstance(s, SourceHealth) for s in health.sources)
    states = {s.source_id: (s.state, s.reason) for s in health.sources}
    assert states["cam"] == (SourceState.REOPENING, SourceReason.DEVICE_MISSING)
    assert states["keyboard"][0] in (SourceState.OK, SourceState.FINISHED)
    assert sink.got[0][1].accepted
    with pytest.raises(FrozenInstanceError):
        health.sources[0].state = SourceState.OK


def test_read_issues_reach_the_callback(trust, now):
    issues = []
    r, w = os.pipe()
    pipe = Pipeline.verifying(trust, Verdicts(), on_issue=issues.append, clock=lambda: now)
    reader = pipe.add(StdinReader(os.fdopen(r, "rb", buffering=0)))
    with pipe:
        os.write(w, b"\x07\x00bell\n")
        os.close(w)
        assert reader.join(WAIT)
    assert [i.code for i in issues] == [SourceReason.GARBAGE] and pipe.health().issues == 1


def test_a_crashing_input_is_reported_failed(trust, now):
    class Broken(InputThread):
        kind = "usb"

        def run(self):
            raise KeyError("bug")

    with Pipeline.verifying(trust, Verdicts(), clock=lambda: now) as pipe:
        broken = pipe.add(Broken("broken"))
        assert broken.join(WAIT)
        assert broken.health().state is SourceState.FAILED
        assert pipe.submit(Scan("CK1:STILL", "stdin", "s", now))
        assert pipe.wait_idle(WAIT)


def test_bad_cooldown():
    with pytest.raises(ValueError):
        Pipeline.verifying(lambda: None, Verdicts(), cooldown=-1)
    with pytest.raises(ValueError):
        Backoff(0, 2, 1)


def test_backoff_grows_to_its_cap():
    b = Backoff(0.25, 2, 1.0)
    assert [b.next() for _ in range(5)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    b.reset()
    assert b.next() == 0.25


def test_stop_is_prompt_with_live_inputs(tmp_path, trust, now):
    pipe = Pipeline.verifying(trust, Verdicts(), clock=lambda: now)
    pipe.add(CameraInput(CameraConfig(str(tmp_path / "none.avi"), live=True), backoff=Backoff(30, 1, 30)))
    pipe.start()
    started = time.monotonic()
    pipe.stop(timeout=WAIT)
    assert all(s.state in (SourceState.STOPPED,) for s in pipe.health().sources)
    assert time.monotonic() - started < WAIT
