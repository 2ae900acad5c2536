"""hardware.feedback / feedback_patterns / feedback_player: patterns as data, verdict -> pattern, and
the player's guarantees (every step lasts at least its time, a new pattern pre-empts at once)."""
from __future__ import annotations

import logging
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.waiting import WAIT

from hardware.feedback import (
    OFF,
    Callbacks,
    DeviceState,
    Outputs,
    Pattern,
    PatternFeedback,
    Patterns,
    Timings,
    beeps,
    blink,
    steady,
)
from hardware.feedback_player import Player
from scanner.base.errors import Reason
from scanner.cards.verdict import Decision, Verdict, reject

EPS = 1e-6


class Recorder:
    """A frame sink that keeps (monotonic time after writing, frame, label)."""

    def __init__(self) -> None:
        self.frames: list[tuple[float, Outputs, str]] = []

    def __call__(self, frame: Outputs, label: str) -> None:
        self.frames.append((time.monotonic(), frame, label))


class RecordingFeedback(PatternFeedback):
    kind = "recording"

    def __init__(self, *args, **kw) -> None:
        self.rec = Recorder()
        super().__init__(*args, **kw)

    def _write(self, frame: Outputs, label: str) -> None:
        self.rec(frame, label)


def runs(frames, output: str) -> list[tuple[float, float]]:
    """(value, start time) each time ``output`` changed, from the recorded frames."""
    out: list[tuple[float, float]] = []
    for t, frame, _ in frames:
        value = getattr(frame, output)
        if not out or out[-1][0] != value:
            out.append((value, t))
    return out


# -- patterns as data -----------------------------------------------------------------------------

def test_default_patterns_match_the_spec():
    t = Timings()
    p = Patterns.default(t)
    assert p.accept.green == ((1.0, t.verdict_s),) and p.accept.buzzer == ((t.accept_hz, t.beep_s),)
    assert p.reject.red == ((1.0, t.verdict_s),) and len([s for s in p.reject.buzzer if s[0]]) == 3
    assert p.duplicate.amber == ((1.0, t.verdict_s),) and len([s for s in p.duplicate.buzzer if s[0]]) == 2
    assert p.error.repeat and p.error.amber == ((1.0, t.fast_blink_s), (0.0, t.fast_blink_s))
    assert p.degraded.repeat and p.degraded.amber == ((1.0, t.slow_blink_s), (0.0, t.slow_blink_s))
    assert t.fast_blink_s < t.slow_blink_s
    assert p.idle.tracks() == {} and p.error_alarm is None
    assert not p.accept.red and not p.accept.amber and not p.reject.green
    alarm = Patterns.default(t, alarm=True).error_alarm
    assert alarm.repeat and alarm.amber == p.error.amber and alarm.duration == pytest.approx(t.alarm_every_s)


@pytest.mark.parametrize("reason", [r for r in Reason if r not in (Reason.OK, Reason.DUPLICATE, Reason.ALREADY_INSIDE)])
def test_every_reject_reason_is_red(reason):
    assert Patterns.default().for_verdict(reject(reason, "x")).name == "reject"


def test_verdict_to_pattern():
    p = Patterns.default()
    assert p.for_verdict(Verdict(Decision.ACCEPT, Reason.OK)) is p.accept
    assert p.for_verdict(reject(Reason.DUPLICATE, "again")) is p.duplicate
    assert p.for_verdict(reject(Reason.ALREADY_INSIDE, "entered at gate-A")) is p.duplicate  # amber, not red


def test_pattern_helpers_and_duration():
    assert beeps(3, 440.0, 0.1, 0.2) == ((440.0, 0.1), (0.0, 0.2), (440.0, 0.1), (0.0, 0.2), (440.0, 0.1))
    assert blink(0.1, 0.3) == ((1.0, 0.1), (0.0, 0.3))
    assert steady(2.0) == ((1.0, 2.0),)
    assert Pattern("x", green=steady(1.0), buzzer=beeps(2, 1000.0, 0.5, 0.5)).duration == 1.5


@pytest.mark.parametrize("kw, message", [
    ({"green": ((1.0, 0.0),)}, "must be > 0"),
    ({"green": ((1.0, -1.0),)}, "must be > 0"),
    ({"green": ((1.0, float("inf")),)}, "must be > 0"),
    ({"red": ((2.0, 1.0),)}, "within 0..1"),
    ({"buzzer": ((-5.0, 1.0),)}, "not >= 0"),
    ({"buzzer": ((float("nan"), 1.0),)}, "not >= 0"),
    ({"amber": ((1.0,),)}, "not \\(value, seconds\\)"),
])
def test_bad_patterns_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        Pattern("bad", **kw)


# -- the player -----------------------------------------------------------------------------------

def test_player_starts_with_the_background_and_closes_to_the_safe_frame():
    rec = Recorder()
    player = Player(rec, background=Pattern("idle", repeat=True), safe=Outputs(gate_open=True))
    assert player.wait_idle(WAIT)
    player.close()
    assert [(f, label) for _, f, label in rec.frames] == [(OFF, "idle"), (Outputs(gate_open=True), "off")]


track_steps = st.lists(st.floats(0.004, 0.03), min_size=1, max_size=4)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(green=track_steps, buzzer=track_steps, gate=st.one_of(st.none(), st.floats(0.004, 0.05)))
def test_player_every_step_lasts_at_least_its_time(green, buzzer, gate):
    """Random on/off patterns: each output goes through exactly its steps, each lasting >= its time."""
    def alternate(durations, on):
        return tuple((on if i % 2 == 0 else 0.0, d) for i, d in enumerate(durations))

    pattern = Pattern("p", green=alternate(green, 1.0), buzzer=alternate(buzzer, 1000.0))
    rec = Recorder()
    player = Player(rec, background=Pattern("idle", repeat=True))
    try:
        assert player.wait_idle(WAIT)
        player.play(pattern, gate_pulse_s=gate)
        assert player.wait_idle(WAIT)
    finally:
        player.close()
    frames = [f for f in rec.frames if f[2] != "off"]
    for output, durations, on in (("green", green, 1.0), ("buzzer_hz", buzzer, 1000.0)):
        got = runs(frames, output)
        expected = [0.0] + [on if i % 2 == 0 else 0.0 for i in range(len(durations))]
        if expected[-1] != 0.0:
            expected.append(0.0)
        assert [v for v, _ in got] == expected
        for (_, start), (_, end), nominal in zip(got[1:], got[2:], durations):
            assert end - start >= nominal - EPS
    if gate is not None:
        opened = runs(frames, "gate_open")
        assert [v for v, _ in opened] == [False, True, False]
        assert opened[2][1] - opened[1][1] >= gate - EPS


def test_player_pre_empts_and_returns_to_the_background():
    rec = Recorder()
    player = Player(rec, background=Pattern("idle", repeat=True))
    try:
        player.set_background(Pattern("blink", amber=blink(0.02, 0.02), repeat=True))
        assert player.wait_until(lambda: len(rec.frames) >= 4, WAIT)
        player.play(Pattern("long", red=steady(60.0)))
        assert player.wait_until(lambda: rec.frames[-1][2] == "long", WAIT)
        player.play(Pattern("short", green=steady(0.02)))
        assert player.wait_until(lambda: rec.frames[-1][2] == "blink", WAIT)
    finally:
        player.close()
    labels = [label for _, _, label in rec.frames]
    assert labels.index("long") < labels.index("short") < len(labels) - labels[::-1].index("blink") - 1
    long_frame = next(f for _, f, label in rec.frames if label == "long")
    assert long_frame == Outputs(red=1.0)  # amber off while the verdict shows
    short = [(t, f) for t, f, label in rec.frames if label == "short"]
    assert short[0][1] == Outputs(green=1.0)


def test_close_from_a_callback_thread_does_not_deadlock():
    closed = threading.Event()
    holder: dict[str, Player] = {}

    def sink(frame, label):
        if label == "bye":
            holder["p"].close()  # close from the player thread itself
            closed.set()

    player = Player(sink, background=Pattern("idle", repeat=True))
    holder["p"] = player
    player.play(Pattern("bye", green=steady(0.01)))
    assert closed.wait(WAIT)
    player._thread.join(WAIT)
    assert not player._thread.is_alive()


# -- PatternFeedback behaviour --------------------------------------------------------------------

T = Timings(verdict_s=0.05, beep_s=0.01, beep_gap_s=0.01, fast_blink_s=0.02, slow_blink_s=0.03,
            chirp_s=0.01)


def test_feedback_states_and_verdicts():
    fb = RecordingFeedback(Patterns.default(T))
    try:
        fb.set_state(DeviceState.DEGRADED)
        fb.set_state("error")  # the plain string works too
        assert fb.state is DeviceState.ERROR
        assert fb.wait_until(lambda: fb.rec.frames[-1][2] == "error", WAIT)
        fb.show(reject(Reason.DUPLICATE, "again"))
        assert fb.wait_until(lambda: "duplicate" in [x[2] for x in fb.rec.frames]
                             and fb.rec.frames[-1][2] == "error", WAIT)
        with pytest.raises(ValueError):
            fb.set_state("broken")
    finally:
        fb.close()
    assert fb.rec.frames[-1][1:] == (OFF, "off")


def test_direction_toggle_and_callback_errors_are_logged(caplog):
    calls: list[str] = []

    def bad(direction):
        calls.append(direction)
        raise RuntimeError("entry log is down")

    fb = RecordingFeedback(Patterns.default(T), callbacks=Callbacks(on_direction=bad))
    try:
        with caplog.at_level(logging.ERROR, logger="hardware.feedback"):
            assert fb.toggle_direction() == "out"
            assert fb.wait_idle(WAIT)
            assert fb.toggle_direction() == "in"
        assert calls == ["out", "in"]
        assert len([r for r in caplog.records if "callback on_direction failed" in r.getMessage()]) == 2
        assert fb.wait_idle(WAIT)
        labels = [x[2] for x in fb.rec.frames]
        assert "toggle_out" in labels and "toggle_in" in labels
    finally:
        fb.close()


def test_constructor_checks():
    with pytest.raises(ValueError, match="direction"):
        RecordingFeedback(direction="sideways")
    with pytest.raises(ValueError, match="needs a gate"):
        RecordingFeedback(passage_timeout_s=5.0)


def test_gate_and_passage_on_the_pattern_device():
    missed: list[object] = []
    fb = RecordingFeedback(Patterns.default(T), gate_pulse_s=0.02, passage_timeout_s=0.05,
                           callbacks=Callbacks(on_no_passage=missed.append))
    try:
        fb.show(Verdict(Decision.ACCEPT, Reason.OK), entry_id=7)
        fb.show(Verdict(Decision.ACCEPT, Reason.OK))  # no entry id: nothing to confirm
        assert fb.wait_passages(WAIT) and fb.wait_idle(WAIT)
        assert missed == [7]
        assert any(f.gate_open for _, f, _ in fb.rec.frames)
    finally:
        fb.close()


def test_close_leaves_pending_passages_as_granted(caplog):
    missed: list[object] = []
    fb = RecordingFeedback(Patterns.default(T), gate_pulse_s=0.02, passage_timeout_s=600.0,
                           callbacks=Callbacks(on_no_passage=missed.append))
    fb.show(Verdict(Decision.ACCEPT, Reason.OK), entry_id="e-9")
    assert fb.pending_passages == ("e-9",)
    with caplog.at_level(logging.WARNING, logger="hardware.feedback"):
        fb.close()
    assert missed == []
    assert [r for r in caplog.records if "e-9" in r.getMessage() and "left as granted" in r.getMessage()]
