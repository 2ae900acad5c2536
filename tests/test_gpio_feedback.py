"""hardware.gpio_feedback on gpiozero's MockFactory: the pins' recorded state history for every
pattern, pre-emption, the relay pulse, active-low wiring, the staff button, passage, safe shutdown.

Timings are checked on the pins' recorded history with gpiozero's MockPin.assert_states_and_times
(each step within its tolerance of the configured time), and each step lasts AT LEAST its time
(the player guarantees it). No assertion on speed.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from io import StringIO
from pathlib import Path

import pytest
from gpiozero import LED, Device
from gpiozero.pins.mock import MockFactory, MockPWMPin
from support.paths import ROOT
from support.waiting import WAIT

from hardware.console_feedback import ConsoleLine
from hardware.feedback import Callbacks, DeviceState, Pattern, Patterns, Timings, steady
from hardware.feedback_config import (
    ButtonConfig,
    BuzzerConfig,
    FeedbackConfig,
    FeedbackConfigError,
    LedConfig,
    PassageSensorConfig,
    RelayConfig,
    RgbLedConfig,
)
from hardware.gpio_feedback import GpioFeedback, open_feedback
from scanner.base.errors import Reason
from scanner.cards.verdict import Decision, Verdict, reject

EPS = 1e-6      # float rounding of the mock pins' timestamps
TRIES = 3       # runs of a timing test before an overrun counts (see in_time)

T = Timings(verdict_s=0.4, beep_s=0.06, beep_gap_s=0.06, fast_blink_s=0.08, slow_blink_s=0.2,
            chirp_s=0.04, alarm_every_s=0.6)
PULSE = 0.3
GREEN, RED, AMBER, BUZZER, RELAY, BUTTON, SENSOR = 17, 27, 22, 18, 23, 25, 24

ACCEPT = Verdict(Decision.ACCEPT, Reason.OK, "ck1")
REJECT = reject(Reason.EXPIRED, "card expired", "ck1")
DUPLICATE = reject(Reason.DUPLICATE, "scanned again", "ck1")


class FreqPin(MockPWMPin):
    """A MockPWMPin that also records every frequency set (gpiozero records only the duty cycle)."""

    def __init__(self, factory, info):
        self.frequencies: list[float | None] = []
        self.changes: list[tuple[float, float]] = []
        super().__init__(factory, info)

    def _change_state(self, value):
        changed = super()._change_state(value)
        if changed:  # the absolute time too, to order changes across pins
            self.changes.append((time.monotonic(), float(value)))
        return changed

    def clear_states(self):
        super().clear_states()
        self.changes = []

    def _set_frequency(self, value):
        super()._set_frequency(value)
        self.frequencies.append(value)

    def close(self):
        # what the program drove before it let go (a released MockPWMPin reads 0 whatever it was)
        self.driven = [float(s.state) for s in self.states]
        super().close()


def last_driven(pin) -> float:
    """The level the pin was last driven to before it was released."""
    assert pin.function == "input", "the pin was not released"
    return pin.driven[-1]


@pytest.fixture
def factory():
    f = MockFactory(pin_class=FreqPin)
    yield f
    f.reset()


def config(**kw) -> FeedbackConfig:
    base = dict(green=LedConfig(GREEN), red=LedConfig(RED), amber=LedConfig(AMBER),
                buzzer=BuzzerConfig(BUZZER), relay=RelayConfig(RELAY, pulse_s=PULSE),
                patterns=Patterns.default(T))
    base.update(kw)
    return FeedbackConfig(**base)


@pytest.fixture
def make(factory):
    """GpioFeedback on the mock factory, idle and with every pin's history cleared; ``make.reset()``
    closes what was made and gives the factory fresh pins."""
    made = []

    def build(cfg: FeedbackConfig | None = None, **kw) -> GpioFeedback:
        fb = GpioFeedback(cfg or config(), pin_factory=factory, **kw)
        made.append(fb)
        assert fb.wait_idle(WAIT)
        for pin in factory.pins.values():
            pin.clear_states()
        return fb

    def reset() -> None:
        while made:
            made.pop().close()
        factory.reset()

    build.reset = reset
    yield build
    reset()


def runs(pin) -> list[tuple[float, float | None]]:
    """(state, seconds it lasted) since clear_states; the last state is still on (None)."""
    st = pin.states
    return [(float(s.state), st[i + 1].timestamp if i + 1 < len(st) else None) for i, s in enumerate(st)]


def levels(pin) -> list[float]:
    return [float(s.state) for s in pin.states]


class Overrun(AssertionError):
    """A step lasted longer than gpiozero's tolerance allows; the states and their order were right
    and no step was cut short."""


def check_track(pin, expected: list[tuple[float, float | None]], *, prefix: bool = False) -> None:
    """The pin went through exactly these (state, nominal seconds) runs (``prefix``: began with
    them), each timed one never shorter than its time (the player's guarantee) and within
    gpiozero's tolerance of it (else Overrun); None: not timed (before the pattern, or still on)."""
    states = pin.states
    want = [s for s, _ in expected]
    got = [float(s.state) for s in states]
    assert (got[:len(want)] if prefix else got) == want, runs(pin)
    short = [(i, states[i].timestamp, nominal) for i, (_, nominal) in enumerate(expected[:-1], start=1)
             if nominal is not None and states[i].timestamp < nominal - EPS]
    assert not short, f"cut short (state index, seconds, nominal): {short}; {runs(pin)}"
    # gpiozero's timestamp of a state is how long the state before it lasted
    times = [states[0].timestamp] + [states[i].timestamp if nominal is None else nominal
                                     for i, (_, nominal) in enumerate(expected[:-1], start=1)]
    try:
        pin.assert_states_and_times(list(zip(times, want, strict=True)))
    except AssertionError as exc:
        raise Overrun(f"not {expected}: {runs(pin)}") from exc


def in_time(test):
    """Run a pattern-timing test again, on fresh pins and feedback, when a step overran: at most
    TRIES times in all. A pattern with a wrong time overruns every time and fails; a machine too busy
    to wake the player thread within gpiozero's tolerance overruns a run by chance. Any other
    failure (wrong states, a step cut short) fails at once."""
    @functools.wraps(test)
    def run(*args, **kw):
        overruns = []
        for _ in range(TRIES):
            try:
                return test(*args, **kw)
            except Overrun as exc:
                overruns.append(str(exc))
                kw["make"].reset()
        raise AssertionError(f"a step overran in all {TRIES} runs:\n" + "\n".join(overruns))
    return run


def absolute(pin) -> list[tuple[float, float]]:
    """(monotonic time, state) of each change since clear_states."""
    return list(pin.changes)


# -- every pattern --------------------------------------------------------------------------------

@in_time
def test_accept_green_one_beep_and_relay_pulse(make, factory):
    fb = make()
    fb.show(ACCEPT, entry_id=1)
    assert fb.wait_idle(WAIT)
    check_track(factory.pin(GREEN), [(0, None), (1, T.verdict_s), (0, None)])
    check_track(factory.pin(BUZZER), [(0, None), (1, T.beep_s), (0, None)])
    check_track(factory.pin(RELAY), [(0, None), (1, PULSE), (0, None)])
    assert levels(factory.pin(RED)) == [0] and levels(factory.pin(AMBER)) == [0]


@in_time
def test_reject_red_three_beeps_no_relay(make, factory):
    fb = make()
    fb.show(REJECT)
    assert fb.wait_idle(WAIT)
    check_track(factory.pin(RED), [(0, None), (1, T.verdict_s), (0, None)])
    check_track(factory.pin(BUZZER), [(0, None), (1, T.beep_s), (0, T.beep_gap_s), (1, T.beep_s),
                                      (0, T.beep_gap_s), (1, T.beep_s), (0, None)])
    assert levels(factory.pin(RELAY)) == [0] and levels(factory.pin(GREEN)) == [0]


@in_time
def test_duplicate_amber_two_beeps_no_relay(make, factory):
    fb = make()
    fb.show(DUPLICATE)
    assert fb.wait_idle(WAIT)
    check_track(factory.pin(AMBER), [(0, None), (1, T.verdict_s), (0, None)])
    check_track(factory.pin(BUZZER), [(0, None), (1, T.beep_s), (0, T.beep_gap_s), (1, T.beep_s), (0, None)])
    assert levels(factory.pin(RELAY)) == [0] and levels(factory.pin(RED)) == [0]


@pytest.mark.parametrize("state, half", [(DeviceState.ERROR, T.fast_blink_s),
                                         (DeviceState.DEGRADED, T.slow_blink_s)])
@in_time
def test_state_blinks_amber(make, factory, state, half):
    fb = make()
    amber = factory.pin(AMBER)
    fb.set_state(state)
    assert fb.wait_until(lambda: len(amber.states) >= 8, WAIT)
    fb.set_state(DeviceState.OK)
    assert fb.wait_idle(WAIT)
    # three complete periods; the fourth may be cut by the state change
    check_track(amber, [(0, None)] + [(1, half), (0, half)] * 3 + [(1, None)], prefix=True)
    assert levels(amber)[-1] == 0
    assert levels(factory.pin(BUZZER)) == [0]  # no alarm unless configured


@in_time
def test_same_state_again_does_not_restart_the_blink(make, factory):
    fb = make()
    amber = factory.pin(AMBER)
    fb.set_state(DeviceState.DEGRADED)
    assert fb.wait_until(lambda: len(amber.states) >= 2, WAIT)
    for _ in range(20):
        fb.set_state(DeviceState.DEGRADED)
    assert fb.wait_until(lambda: len(amber.states) >= 4, WAIT)
    check_track(amber, [(0, None), (1, T.slow_blink_s), (0, T.slow_blink_s), (1, None)], prefix=True)


def test_after_a_verdict_the_state_shows_again(make, factory):
    fb = make()
    amber, green = factory.pin(AMBER), factory.pin(GREEN)
    fb.set_state(DeviceState.ERROR)
    assert fb.wait_until(lambda: len(amber.states) >= 3, WAIT)
    fb.show(ACCEPT)
    assert fb.wait_until(lambda: len(green.states) >= 3, WAIT)  # green on, then off
    assert fb.wait_until(lambda: levels(amber)[-1] == 1, WAIT)  # blinking again
    t_green_on, t_green_off = [t for t, _ in absolute(green)]
    amber_changes = absolute(amber)
    # amber is dark for the whole accept pattern (it may go off in the very frame green goes on)
    assert 1 not in [s for t, s in amber_changes if t_green_on <= t < t_green_off]
    assert [s for t, s in amber_changes if t < t_green_off][-1] == 0
    # and blinks again from the frame green goes off
    assert [s for t, s in amber_changes if t >= t_green_off][:1] == [1]
    fb.set_state(DeviceState.OK)
    assert fb.wait_idle(WAIT)


@in_time
def test_error_alarm_beeps_until_acknowledged(make, factory):
    acked = threading.Event()
    cfg = config(patterns=Patterns.default(T, alarm=True))
    fb = make(cfg, callbacks=Callbacks(on_acknowledge=acked.set))
    buzzer = factory.pin(BUZZER)
    fb.set_state(DeviceState.ERROR)
    assert fb.wait_until(lambda: levels(buzzer).count(1) >= 4, WAIT)  # two alarm periods
    fb.acknowledge()
    assert acked.is_set()
    n = len(buzzer.states)
    amber = factory.pin(AMBER)
    before = len(amber.states)
    assert fb.wait_until(lambda: len(amber.states) >= before + 12, WAIT)  # 6 more blink periods
    assert levels(buzzer)[-1] == 0 and len(buzzer.states) <= n + 1  # silenced (at most the beep ends)
    check_track(buzzer, [(0, None), (1, T.beep_s), (0, T.beep_gap_s), (1, T.beep_s), (0, None)], prefix=True)
    # a new error after the appliance recovered alarms again
    fb.set_state(DeviceState.OK)
    assert fb.wait_idle(WAIT)
    m = len(buzzer.states)
    fb.set_state(DeviceState.ERROR)
    assert fb.wait_until(lambda: len(buzzer.states) >= m + 2, WAIT)


# -- pre-emption and the relay --------------------------------------------------------------------

@in_time
def test_new_verdict_pre_empts_at_once(make, factory):
    slow = Patterns.default(T)
    slow = replace(slow, reject=Pattern("reject", red=steady(60.0),
                                        buzzer=((440.0, 30.0),)))
    fb = make(config(patterns=slow))
    red, green, buzzer = factory.pin(RED), factory.pin(GREEN), factory.pin(BUZZER)
    fb.show(REJECT)
    assert fb.wait_until(lambda: levels(red)[-1] == 1 and levels(buzzer)[-1] == 1, WAIT)
    fb.show(ACCEPT)
    assert fb.wait_idle(WAIT)  # the 60 s reject did not have to finish
    (t_red_on, _), (t_red_off, off) = absolute(red)
    (t_green_on, _), (t_green_off, _) = absolute(green)
    assert off == 0 and t_green_on < t_red_off < t_green_off  # written in the frame after green's on
    # red was on until the accept's frame, no longer (the same frame: nothing waited in between)
    check_track(red, [(0, None), (1, t_green_on - t_red_on), (0, None)])
    # the 30 s reject beep ran straight into the accept beep (an active buzzer is just on), which
    # played in full and then stopped: the buzzer was on for at least one beep, far less than 30 s
    check_track(buzzer, [(0, None), (1, T.beep_s), (0, None)])


@in_time
def test_reject_does_not_cut_the_gate_pulse_and_accept_extends_it(make, factory):
    fb = make()
    relay = factory.pin(RELAY)
    fb.show(ACCEPT)
    assert fb.wait_until(lambda: levels(relay)[-1] == 1, WAIT)
    fb.show(REJECT)
    assert fb.wait_idle(WAIT)
    check_track(relay, [(0, None), (1, PULSE), (0, None)])  # the whole pulse despite the reject
    relay.clear_states()
    fb.show(ACCEPT)
    assert fb.wait_until(lambda: levels(relay)[-1] == 1, WAIT)
    t_second = time.monotonic()
    fb.show(ACCEPT)
    assert fb.wait_idle(WAIT)
    (_, on), (t_off, off) = absolute(relay)
    assert (on, off) == (1, 0)
    assert t_off >= t_second + PULSE  # the second accept kept the gate open a full pulse more


@in_time
def test_relay_pulse_length_configurable(make, factory):
    fb = make(config(relay=RelayConfig(RELAY, pulse_s=0.7)))
    fb.show(ACCEPT)
    assert fb.wait_idle(WAIT)
    check_track(factory.pin(RELAY), [(0, None), (1, 0.7), (0, None)])


# -- wiring variants --------------------------------------------------------------------------------

@in_time
def test_active_low_wiring(make, factory):
    cfg = config(green=LedConfig(GREEN, active_high=False), buzzer=BuzzerConfig(BUZZER, active_high=False),
                 relay=RelayConfig(RELAY, active_high=False, pulse_s=PULSE))
    fb = make(cfg)
    for pin in (GREEN, BUZZER, RELAY):
        assert levels(factory.pin(pin)) == [1]  # idle = high on active-low wiring
    fb.show(ACCEPT)
    assert fb.wait_idle(WAIT)
    check_track(factory.pin(GREEN), [(1, None), (0, T.verdict_s), (1, None)])
    check_track(factory.pin(BUZZER), [(1, None), (0, T.beep_s), (1, None)])
    check_track(factory.pin(RELAY), [(1, None), (0, PULSE), (1, None)])
    fb.close()
    for pin in (GREEN, BUZZER, RELAY):
        assert last_driven(factory.pin(pin)) == 1


@in_time
def test_fail_open_relay_is_released_for_the_pulse_and_on_shutdown(make, factory):
    fb = make(config(relay=RelayConfig(RELAY, pulse_s=PULSE, fail_safe="open")))
    relay = factory.pin(RELAY)
    assert levels(relay) == [1]  # energized: holding the gate locked
    fb.show(ACCEPT)
    assert fb.wait_idle(WAIT)
    check_track(relay, [(1, None), (0, PULSE), (1, None)])
    fb.close()
    assert last_driven(relay) == 0


@in_time
def test_rgb_led_colours(make, factory):
    cfg = config(green=None, red=None, amber=None, rgb=RgbLedConfig(5, 6, 13))
    fb = make(cfg)
    r, g, b = factory.pin(5), factory.pin(6), factory.pin(13)
    fb.show(ACCEPT)
    assert fb.wait_idle(WAIT)
    check_track(g, [(0, None), (1, T.verdict_s), (0, None)])
    assert levels(r) == [0] and levels(b) == [0]
    fb.show(DUPLICATE)
    assert fb.wait_idle(WAIT)
    check_track(r, [(0, None), (1, T.verdict_s), (0, None)])
    assert levels(g)[-2:] == [0.4, 0] and levels(b) == [0]


@in_time
def test_rgb_common_anode_without_pwm(make, factory):
    cfg = config(green=None, red=None, amber=None, rgb=RgbLedConfig(5, 6, 13, active_high=False, pwm=False))
    fb = make(cfg)
    r, g, b = factory.pin(5), factory.pin(6), factory.pin(13)
    assert levels(r) == levels(g) == levels(b) == [1]
    fb.show(DUPLICATE)
    assert fb.wait_idle(WAIT)
    check_track(r, [(1, None), (0, T.verdict_s), (1, None)])
    check_track(g, [(1, None), (0, T.verdict_s), (1, None)])
    assert levels(b) == [1]


@in_time
def test_tonal_buzzer_frequencies(make, factory):
    fb = make(config(buzzer=BuzzerConfig(BUZZER, tonal=True)))
    pin = factory.pin(BUZZER)
    pin.frequencies.clear()
    fb.show(ACCEPT)
    assert fb.wait_idle(WAIT)
    fb.show(REJECT)
    assert fb.wait_idle(WAIT)
    played = [f for f in pin.frequencies if f is not None]
    assert played == [pytest.approx(T.accept_hz, rel=0.01)] + [pytest.approx(T.reject_hz, rel=0.01)] * 3
    check_track(pin, [(0, None), (0.5, T.beep_s), (0, None), (0.5, T.beep_s), (0, T.beep_gap_s),
                      (0.5, T.beep_s), (0, T.beep_gap_s), (0.5, T.beep_s), (0, None)])


# -- staff button and passage sensor ----------------------------------------------------------------

@in_time
def test_button_press_toggles_direction_and_chirps(make, factory):
    directions: list[str] = []
    cfg = config(button=ButtonConfig(BUTTON, hold_s=30.0))  # a press can never count as a hold
    fb = make(cfg, callbacks=Callbacks(on_direction=directions.append))
    button, buzzer = factory.pin(BUTTON), factory.pin(BUZZER)
    assert fb.direction == "in"
    button.drive_low()
    button.drive_high()
    assert directions == ["out"] and fb.direction == "out"
    assert fb.wait_idle(WAIT)
    check_track(buzzer, [(0, None), (1, T.chirp_s), (0, T.chirp_s), (1, T.chirp_s), (0, None)])
    buzzer.clear_states()
    button.drive_low()
    button.drive_high()
    assert directions == ["out", "in"]
    assert fb.wait_idle(WAIT)
    check_track(buzzer, [(0, None), (1, T.chirp_s), (0, None)])


def test_button_hold_acknowledges(make, factory):
    acked = threading.Event()
    directions: list[str] = []
    cfg = config(button=ButtonConfig(BUTTON, hold_s=0.2))
    fb = make(cfg, callbacks=Callbacks(on_acknowledge=acked.set, on_direction=directions.append))
    button = factory.pin(BUTTON)
    button.drive_low()
    assert acked.wait(WAIT)
    button.drive_high()
    assert directions == [] and fb.direction == "in"


def test_button_press_only_acts_on_press(make, factory):
    directions: list[str] = []
    cfg = config(button=ButtonConfig(BUTTON, hold=None))
    make(cfg, callbacks=Callbacks(on_direction=directions.append))
    factory.pin(BUTTON).drive_low()
    assert directions == ["out"]
    factory.pin(BUTTON).drive_high()


def test_passage_sensor_confirms_the_entry(make, factory):
    passed, missed = [], []
    cfg = config(passage=PassageSensorConfig(SENSOR, timeout_s=60.0))
    fb = make(cfg, callbacks=Callbacks(on_passage=passed.append, on_no_passage=missed.append))
    fb.show(ACCEPT, entry_id="e-1")
    assert fb.pending_passages == ("e-1",)
    sensor = factory.pin(SENSOR)
    sensor.drive_low()  # switch to ground: passage
    sensor.drive_high()
    assert passed == ["e-1"] and fb.pending_passages == ()
    sensor.drive_low()  # nobody expected: reported as None
    sensor.drive_high()
    assert passed == ["e-1", None] and missed == []


def test_no_passage_is_reported(make, factory):
    missed: list[object] = []
    got = threading.Event()
    cfg = config(passage=PassageSensorConfig(SENSOR, timeout_s=0.2))

    def on_no_passage(entry_id):
        missed.append(entry_id)
        got.set()

    fb = make(cfg, callbacks=Callbacks(on_no_passage=on_no_passage))
    fb.show(REJECT, entry_id="r-1")   # no gate: not watched
    fb.show(ACCEPT, entry_id="a-1")
    assert got.wait(WAIT) and fb.wait_passages(WAIT)
    assert missed == ["a-1"]


# -- shutdown, faults, never blocking ---------------------------------------------------------------

def test_close_mid_pattern_goes_to_safe_state(make, factory):
    slow = replace(Patterns.default(T), accept=Pattern("accept", green=steady(60.0), buzzer=((1760.0, 60.0),)))
    fb = make(config(patterns=slow, relay=RelayConfig(RELAY, pulse_s=60.0)))
    fb.show(ACCEPT)
    assert fb.wait_until(lambda: all(levels(factory.pin(p))[-1] == 1 for p in (GREEN, BUZZER, RELAY)), WAIT)
    fb.close()
    fb.close()  # idempotent
    for pin in (GREEN, RED, AMBER, BUZZER, RELAY):
        assert last_driven(factory.pin(pin)) == 0
    for pin in (GREEN, BUZZER, RELAY):
        assert factory.pin(pin).driven == [0, 1, 0]  # on mid-pattern, then the safe state
    fb.show(ACCEPT)  # after close: ignored, no error
    assert levels(factory.pin(GREEN))[-1] == 0


def test_exception_in_with_block_leaves_safe_state(factory):
    slow = replace(Patterns.default(T), accept=Pattern("accept", green=steady(60.0)))
    with pytest.raises(ZeroDivisionError), open_feedback(config(patterns=slow), pin_factory=factory) as fb:
        fb.show(ACCEPT)
        assert fb.wait_until(lambda: levels(factory.pin(GREEN))[-1] == 1, WAIT)
        raise ZeroDivisionError("the scan loop failed")
    assert last_driven(factory.pin(GREEN)) == 0 and last_driven(factory.pin(RELAY)) == 0


def test_output_failure_is_a_fault_not_a_crash(make, factory, caplog):
    fb = make()
    fb.show(ACCEPT)
    assert fb.wait_until(lambda: levels(factory.pin(RELAY))[-1] == 1, WAIT)
    fb.leds["red"].close()  # the red LED's device disappears under the player
    with caplog.at_level(logging.ERROR, logger="hardware.feedback_player"):
        fb.show(REJECT)
        assert fb.wait_until(lambda: fb.fault is not None, WAIT)
    assert "DeviceClosed" in fb.fault
    assert [r for r in caplog.records if "feedback stopped" in r.getMessage()]
    for pin in (GREEN, BUZZER, RELAY):  # everything that still works went to its safe state
        assert levels(factory.pin(pin))[-1] == 0
    fb.show(ACCEPT)  # ignored once faulted
    assert fb.wait_idle(1.0) is False


def test_show_never_blocks_even_when_the_outputs_do(factory):
    release = threading.Event()

    class StuckLine(ConsoleLine):
        def __call__(self, frame, label, **kw):
            release.wait(WAIT)

    fb = GpioFeedback(config(), pin_factory=factory, mirror=StuckLine())
    try:
        done = threading.Event()

        def caller():
            for _ in range(50):
                fb.show(ACCEPT)
                fb.show(REJECT)
                fb.set_state(DeviceState.ERROR)
            done.set()

        thread = threading.Thread(target=caller)
        thread.start()
        assert done.wait(WAIT), "show() blocked while the outputs were stuck"
        thread.join()
    finally:
        release.set()
        fb.close()


def test_mirror_gets_every_frame(factory):
    out = StringIO()
    fb = GpioFeedback(config(), pin_factory=factory, mirror=ConsoleLine(out, tty=False, lang="en"))
    fb.show(ACCEPT)
    assert fb.wait_idle(WAIT)
    fb.close()
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("ready · in") and "● green" in lines[1] and "⇧ relay" in lines[1]
    assert lines[-1].endswith("off · in")


# -- falling back to the console ------------------------------------------------------------------

def test_pin_in_use_falls_back_to_console(factory, caplog):
    squatter = LED(RELAY, pin_factory=factory)
    out = StringIO()
    with caplog.at_level(logging.WARNING, logger="hardware.gpio_feedback"):
        fb = open_feedback(config(), pin_factory=factory, stream=out, lang="en")
    try:
        assert fb.kind == "console" and "GPIOPinInUse" in fb.fallback_reason
        lines = [r for r in caplog.records if r.name == "hardware.gpio_feedback"]
        assert len(lines) == 1 and "GPIO unavailable" in lines[0].getMessage()
        # the pins opened before the failing one were released again
        for pin in (GREEN, RED, AMBER, BUZZER):
            assert factory.pin(pin).function == "input"
            LED(pin, pin_factory=factory).close()
        fb.show(ACCEPT)
        assert fb.wait_idle(WAIT)
    finally:
        fb.close()
        squatter.close()
    assert "● green" in out.getvalue() and "⇧" not in out.getvalue()  # no gate on the console


def test_not_a_pi_falls_back_to_console_with_one_log_line(caplog, recwarn, monkeypatch):
    model = Path("/proc/device-tree/model")
    if model.exists() and b"Raspberry Pi" in model.read_bytes():
        pytest.skip("this machine is a Raspberry Pi: gpiozero's default factory works here")
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)

    monkeypatch.setattr(Device, "pin_factory", None)  # gpiozero chooses its default on first use
    with caplog.at_level(logging.WARNING):
        fb = open_feedback(config(), stream=StringIO())
    try:
        assert fb.kind == "console" and "BadPinFactory" in fb.fallback_reason
        assert "lgpio" in fb.fallback_reason  # why the Pi 5 default did not load
        lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        assert not [w for w in recwarn if "gpiozero" in str(w.filename)]
    finally:
        fb.close()


def test_bad_config_is_an_error_not_a_fallback(factory):
    with pytest.raises(FeedbackConfigError, match="GPIO17 is used twice: green LED and relay"):
        open_feedback(config(relay=RelayConfig(17)), pin_factory=factory)


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LG_WD", "GPIOZERO_PIN_FACTORY")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_lgpio_import_leaves_no_fifo_and_keeps_the_cwd(tmp_path):
    """lgpio drops a FIFO (.lgd-nfy0) into the working directory on import, or chdirs into LG_WD:
    open_feedback must do neither to the process (a fresh one, so lgpio is not imported yet)."""
    if importlib.util.find_spec("lgpio") is None:
        pytest.skip("lgpio is not installed")
    child = (
        "import io, json, os, sys\n"
        "from hardware.feedback_config import FeedbackConfig, LedConfig\n"
        "from hardware.gpio_feedback import open_feedback\n"
        "fb = open_feedback(FeedbackConfig(green=LedConfig(17)), stream=io.StringIO())\n"
        "fb.close()\n"
        "print(json.dumps({'cwd': os.getcwd(), 'lgpio': 'lgpio' in sys.modules, 'kind': fb.kind,\n"
        "                  'lg_wd': os.environ.get('LG_WD'), 'files': os.listdir('.')}))\n")
    proc = subprocess.run([sys.executable, "-c", child], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env=child_env(), check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cwd"] == str(tmp_path) and out["files"] == [] and out["lg_wd"] is None
    assert out["lgpio"]  # it was imported (and gpiozero tried it), just not into our directory


@pytest.mark.parametrize("name", ["rpigpio", "pigpio"])
def test_named_pin_factory_that_cannot_load_falls_back(name, caplog):
    with caplog.at_level(logging.WARNING, logger="hardware.gpio_feedback"):
        fb = open_feedback(config(pin_factory=name), stream=StringIO())
    try:
        assert fb.kind == "console"
        assert len([r for r in caplog.records if "GPIO unavailable" in r.getMessage()]) == 1
    finally:
        fb.close()


def test_mock_pin_factory_by_name():
    fb = open_feedback(config(pin_factory="mock"))
    try:
        assert fb.kind == "gpio"
        fb.show(ACCEPT)
        assert fb.wait_idle(WAIT)
        assert levels(fb.leds["green"].pin) == [0, 1, 0]
    finally:
        fb.close()


def test_door_contact_with_external_pull_up_is_active_high(make, factory):
    """A normally-closed door contact to ground with an external pull-up: the door opening (pin
    going high) is the passage."""
    passed: list[object] = []
    cfg = config(passage=PassageSensorConfig(SENSOR, pull_up=None, active_state=True, timeout_s=60.0))
    fb = make(cfg, callbacks=Callbacks(on_passage=passed.append))
    sensor = factory.pin(SENSOR)
    sensor.drive_low()  # door shut
    fb.show(ACCEPT, entry_id="d-1")
    sensor.drive_high()  # door opens
    assert passed == ["d-1"]


def test_uncaught_exception_still_leaves_safe_state(tmp_path):
    """The program dies of an uncaught exception mid-pattern: the atexit hook still writes the safe
    state before gpiozero releases the pins (a reporter registered first runs last and prints)."""
    child = (
        "import atexit, json\n"
        "from dataclasses import replace\n"
        "from gpiozero.pins.mock import MockFactory, MockPWMPin\n"
        "from hardware.feedback import Pattern, Patterns, steady\n"
        "from hardware.feedback_config import FeedbackConfig, LedConfig, RelayConfig\n"
        "from hardware.gpio_feedback import GpioFeedback\n"
        "from scanner.cards.verdict import Decision, Verdict\n"
        "from scanner.base.errors import Reason\n"
        "factory = MockFactory(pin_class=MockPWMPin)\n"
        "def report():\n"
        "    print(json.dumps({p: [float(s.state) for s in factory.pin(p).states] for p in (17, 23)}))\n"
        "atexit.register(report)\n"
        "slow = replace(Patterns.default(), accept=Pattern('accept', green=steady(60.0)))\n"
        "cfg = FeedbackConfig(green=LedConfig(17), relay=RelayConfig(23, active_high=False, pulse_s=60.0),\n"
        "                     patterns=slow)\n"
        "fb = GpioFeedback(cfg, pin_factory=factory)\n"
        "fb.show(Verdict(Decision.ACCEPT, Reason.OK))\n"
        "assert fb.wait_until(lambda: factory.pin(17).state == 1 and factory.pin(23).state == 0, 30)\n"
        "raise RuntimeError('the scan loop crashed')\n")
    proc = subprocess.run([sys.executable, "-c", child], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env=child_env(), check=False)
    assert proc.returncode == 1 and "the scan loop crashed" in proc.stderr
    states = json.loads(proc.stdout.strip().splitlines()[-1])
    # green: off, on, then off again (the safe frame) before any release artefact
    assert states["17"][:3] == [0, 1, 0]
    # active-low relay: idle high, pulled in (low), released again (high) by the safe frame
    assert states["23"][:4] == [0, 1, 0, 1]
