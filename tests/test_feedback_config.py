"""hardware.feedback_config: pins named any way map to BCM numbers; a config that cannot work is
refused with a message that names what is wrong (both uses of a pin used twice)."""
from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardware.feedback import Pattern, Patterns, Timings
from hardware.feedback_config import (
    HEADER,
    ButtonConfig,
    BuzzerConfig,
    FeedbackConfig,
    FeedbackConfigError,
    LedConfig,
    PassageSensorConfig,
    RelayConfig,
    RgbLedConfig,
    gpio_number,
)


@pytest.mark.parametrize("pin, number", [
    (17, 17), ("17", 17), ("GPIO17", 17), ("gpio17", 17), ("BCM17", 17), (" GPIO4 ", 4),
    ("BOARD11", 17), ("J8:11", 17), ("board40", 21), (0, 0), (27, 27),
])
def test_pin_names(pin, number):
    assert gpio_number(pin) == number


@pytest.mark.parametrize("pin, message", [
    (28, "not on the 40-pin header"), (-1, "not on the 40-pin header"), ("GPIO99", "not on the 40-pin header"),
    ("BOARD1", "power, ground"), ("BOARD6", "power, ground"), ("J8:41", "power, ground"),
    ("LED", "not a GPIO pin"), ("", "not a GPIO pin"), (True, "not a GPIO pin"), (1.5, "not a GPIO pin"),
    (None, "not a GPIO pin"), ("²", "not a GPIO pin"), ("GPIO٣", "not a GPIO pin"), ("BOARD١١", "not a GPIO pin"),
])
def test_bad_pins(pin, message):
    with pytest.raises(FeedbackConfigError, match=message):
        gpio_number(pin, "green LED")


def test_header_table_is_a_bijection_onto_the_27_gpios():
    assert sorted(HEADER.values()) == list(range(28))


def full(**kw) -> FeedbackConfig:
    base = dict(green=LedConfig(17), red=LedConfig(27), amber=LedConfig(22), buzzer=BuzzerConfig(18),
                relay=RelayConfig(23), button=ButtonConfig(25), passage=PassageSensorConfig(24))
    base.update(kw)
    return FeedbackConfig(**base)


def test_a_full_config_validates_and_lists_its_pins():
    cfg = full()
    assert cfg.validate() is cfg
    assert cfg.pins() == {"green LED": 17, "red LED": 27, "amber LED": 22, "buzzer": 18, "relay": 23,
                          "staff button": 25, "passage sensor": 24}
    assert FeedbackConfig().validate().pins() == {}  # nothing fitted is a valid (console-only) device


@pytest.mark.parametrize("kw, message", [
    ({"relay": RelayConfig(17)}, "GPIO17 is used twice: green LED and relay"),
    ({"relay": RelayConfig("BOARD11")}, "GPIO17 is used twice: green LED and relay"),
    ({"passage": PassageSensorConfig("GPIO25")}, "GPIO25 is used twice: staff button and passage sensor"),
    ({"green": None, "red": None, "amber": None, "rgb": RgbLedConfig(5, 6, 5)},
     "GPIO5 is used twice: RGB LED red and RGB LED blue"),
])
def test_pin_used_twice_names_both_uses(kw, message):
    with pytest.raises(FeedbackConfigError, match=message):
        full(**kw).validate()


@pytest.mark.parametrize("kw, message", [
    ({"rgb": RgbLedConfig(5, 6, 13)}, "either one RGB LED or separate"),
    ({"green": None, "red": None, "amber": None, "rgb": RgbLedConfig(5, 6, 13, amber=(1.0, 2.0, 0.0))},
     "amber must be three levels"),
    ({"green": None, "red": None, "amber": None, "rgb": RgbLedConfig(5, 6, 13, amber=(1.0, 0.5))},
     "amber must be three levels"),
    ({"relay": None}, "passage sensor needs a gate relay"),
    ({"relay": RelayConfig(23, pulse_s=0)}, "relay pulse must be a positive"),
    ({"relay": RelayConfig(23, pulse_s=float("nan"))}, "relay pulse must be a positive"),
    ({"relay": RelayConfig(23, pulse_s="1")}, "relay pulse must be a positive"),
    ({"relay": RelayConfig(23, fail_safe="closed")}, "fail_safe must be \"locked\" or \"open\""),
    ({"passage": PassageSensorConfig(24, timeout_s=-1)}, "passage timeout"),
    ({"passage": PassageSensorConfig(24, bounce_s=-0.1)}, "passage sensor bounce"),
    ({"passage": PassageSensorConfig(24, pull_up=None)}, "active_state must say"),
    ({"passage": PassageSensorConfig(24, active_state=True)}, "active_state goes with an external"),
    ({"button": ButtonConfig(25, hold_s=0)}, "button hold time"),
    ({"button": ButtonConfig(25, press="open_gate")}, "button action must be one of"),
    ({"button": ButtonConfig(25, press=None, hold=None)}, "no action"),
    ({"direction": "up"}, "direction must be one of"),
    ({"pin_factory": "gpiod"}, "pin factory must be one of"),
])
def test_configs_that_cannot_work(kw, message):
    with pytest.raises(FeedbackConfigError, match=message):
        full(**kw).validate()


def test_tonal_buzzer_range():
    full(buzzer=BuzzerConfig(18, tonal=True)).validate()  # every default tone is playable
    with pytest.raises(FeedbackConfigError, match="pattern 'accept': 1760 Hz is outside the buzzer's range"):
        full(buzzer=BuzzerConfig(18, tonal=True, mid_tone_hz=440.0, octaves=1)).validate()
    with pytest.raises(FeedbackConfigError, match="not playable"):
        full(buzzer=BuzzerConfig(18, tonal=True, mid_tone_hz=10000.0, octaves=4)).validate()
    with pytest.raises(FeedbackConfigError, match=r"octaves must be 1\.\.9"):
        full(buzzer=BuzzerConfig(18, tonal=True, octaves=0)).validate()
    high = replace(Patterns.default(), accept=Pattern("accept", buzzer=((6000.0, 0.1),)))
    with pytest.raises(FeedbackConfigError, match="6000 Hz"):
        full(buzzer=BuzzerConfig(18, tonal=True), patterns=high).validate()
    full(buzzer=BuzzerConfig(18), patterns=high).validate()  # an active buzzer has no pitch to check


def test_errors_have_a_stable_code():
    with pytest.raises(FeedbackConfigError) as info:
        full(relay=RelayConfig(17)).validate()
    assert info.value.code == "feedback_config"


def test_patterns_from_timings():
    cfg = full(patterns=Patterns.default(Timings(verdict_s=3.0)))
    assert cfg.patterns.accept.green == ((1.0, 3.0),)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=12), st.integers(-1000, 1000),
                 st.builds(lambda p, d: p + d, st.sampled_from(["", "GPIO", "BOARD", "J8:"]),
                           st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=3)),
                 st.from_regex(r"(GPIO|BCM|BOARD|J8:|gpio|board)?[0-9]{1,3}", fullmatch=True)))
def test_pin_parser_never_crashes(pin):
    try:
        number = gpio_number(pin)
    except FeedbackConfigError as exc:
        assert exc.code == "feedback_config"
    else:
        assert 0 <= number <= 27
