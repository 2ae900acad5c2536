"""Which feedback hardware exists and on which pins: plain frozen dataclasses, checked by ``validate``.

The daemon builds these from its TOML file; docs/wiring.md tells technicians what each field means
for the wires. Pins are BCM GPIO numbers (17, "GPIO17", "BCM17") or physical header pins
("BOARD11", "J8:11"); all are turned into BCM numbers, and a pin used twice is refused with both
uses named.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from gpiozero.tones import Tone

from hardware.feedback_patterns import Patterns
from scanner.base import i18n
from scanner.base.errors import CheckpointError
from scanner.cards.scan import DIRECTIONS

Pin = int | str

# physical pin of the 40-pin header (J8) -> BCM GPIO number; the other header pins are power/ground
HEADER = {3: 2, 5: 3, 7: 4, 8: 14, 10: 15, 11: 17, 12: 18, 13: 27, 15: 22, 16: 23, 18: 24, 19: 10,
          21: 9, 22: 25, 23: 11, 24: 8, 26: 7, 27: 0, 28: 1, 29: 5, 31: 6, 32: 12, 33: 13, 35: 19,
          36: 16, 37: 26, 38: 20, 40: 21}
PIN_FACTORIES = ("mock", "lgpio", "rpigpio", "pigpio", "native")
BUTTON_ACTIONS = ("toggle_direction", "acknowledge")
FAIL_SAFE = ("locked", "open")


class FeedbackConfigError(CheckpointError):
    """Feedback hardware configuration that cannot work (a pin used twice, a bad timing, ...)."""

    code = "feedback_config"


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()  # not "²" or "٣", which str.isdigit() also accepts


def gpio_number(pin: Pin, what: str = "pin") -> int:
    """The BCM GPIO number of ``pin``: 17, "17", "GPIO17", "BCM17", or "BOARD11"/"J8:11" (header pin)."""
    if isinstance(pin, bool) or not isinstance(pin, int | str):
        raise FeedbackConfigError(f"{what}: {pin!r} is not a GPIO pin")
    if isinstance(pin, int):
        number = pin
    else:
        text = pin.strip().upper()
        for prefix in ("BOARD", "J8:"):
            if text.startswith(prefix) and _digits(text[len(prefix):]):
                physical = int(text[len(prefix):])
                if physical not in HEADER:
                    raise FeedbackConfigError(
                        f"{what}: header pin {physical} is not a GPIO (power, ground or not on the header)",
                        text=i18n.text("pin.not_gpio_header", physical=physical))
                return HEADER[physical]
        for prefix in ("GPIO", "BCM", ""):
            if text.startswith(prefix) and _digits(text[len(prefix):]):
                number = int(text[len(prefix):])
                break
        else:
            raise FeedbackConfigError(f"{what}: {pin!r} is not a GPIO pin (use 17, GPIO17 or BOARD11)",
                                      text=i18n.text("pin.not_a_pin", pin=repr(pin)))
    if not 0 <= number <= 27:
        raise FeedbackConfigError(f"{what}: GPIO{number} is not on the 40-pin header (GPIO0..GPIO27)",
                                  text=i18n.text("pin.off_header", number=number))
    return number


def _seconds(value: object, what: str, *, zero: bool = False) -> None:
    ok = (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
          and (value >= 0 if zero else value > 0))
    if not ok:
        raise FeedbackConfigError(f"{what} must be a {'non-negative' if zero else 'positive'} "
                                  f"number of seconds, not {value!r}")


@dataclass(frozen=True, slots=True)
class LedConfig:
    """One LED. active_high=False when the LED is wired from 3V3 to the pin (lit when the pin is low)."""

    pin: Pin
    active_high: bool = True


@dataclass(frozen=True, slots=True)
class RgbLedConfig:
    """One RGB LED instead of three: active_high=True for common cathode, False for common anode.
    ``amber`` is the (red, green, blue) mix shown for amber (with pwm=False any channel > 0 is on)."""

    red: Pin
    green: Pin
    blue: Pin
    active_high: bool = True
    pwm: bool = True
    amber: tuple[float, float, float] = (1.0, 0.4, 0.0)


@dataclass(frozen=True, slots=True)
class BuzzerConfig:
    """An active buzzer (on/off), or with tonal=True a passive one driven by PWM at each pattern's
    frequency, within ``octaves`` of ``mid_tone_hz``."""

    pin: Pin
    active_high: bool = True
    tonal: bool = False
    mid_tone_hz: float = 1320.0
    octaves: int = 2


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """The gate relay, pulsed for ``pulse_s`` on every accept.

    fail_safe="locked": the relay is energized only during the pulse (fail-secure).
    fail_safe="open": the relay is energized while the gate is held locked and released for the
    pulse (fail-open, e.g. a maglock powered through the relay). Either way a stopped program, a
    crash or a power cut leaves the relay released, i.e. the gate locked or open as chosen here
    (docs/wiring.md#gate-relay). active_high=False for the common boards whose input is active low.
    """

    pin: Pin
    active_high: bool = True
    pulse_s: float = 1.0
    fail_safe: str = "locked"


@dataclass(frozen=True, slots=True)
class ButtonConfig:
    """The staff button (to ground, internal pull-up by default). A press shorter than ``hold_s``
    does ``press``; holding it for ``hold_s`` does ``hold`` ("toggle_direction", "acknowledge" or None)."""

    pin: Pin
    pull_up: bool = True
    bounce_s: float | None = 0.05
    hold_s: float = 2.0
    press: str | None = "toggle_direction"
    hold: str | None = "acknowledge"


@dataclass(frozen=True, slots=True)
class PassageSensorConfig:
    """Turnstile rotation sensor or door contact: active when the pin goes low (switch to ground,
    internal pull-up) unless configured otherwise; an accept not followed by it within ``timeout_s``
    is reported as "did not pass"."""

    pin: Pin
    pull_up: bool | None = True
    active_state: bool | None = None
    bounce_s: float | None = 0.05
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class FeedbackConfig:
    """Every feedback part that exists (None = not fitted), the patterns and the pin factory
    (None = gpiozero's default: lgpio on a Pi 5, honouring GPIOZERO_PIN_FACTORY; "mock" = MockFactory)."""

    green: LedConfig | None = None
    red: LedConfig | None = None
    amber: LedConfig | None = None
    rgb: RgbLedConfig | None = None
    buzzer: BuzzerConfig | None = None
    relay: RelayConfig | None = None
    button: ButtonConfig | None = None
    passage: PassageSensorConfig | None = None
    patterns: Patterns = field(default_factory=Patterns.default)
    direction: str = "in"
    pin_factory: str | None = None

    def pins(self) -> dict[str, int]:
        """Every use of a pin ("green LED", "relay", ...) and its BCM number; a pin used twice is an error."""
        uses: list[tuple[str, Pin]] = []
        for name in ("green", "red", "amber"):
            led = getattr(self, name)
            if led is not None:
                uses.append((f"{name} LED", led.pin))
        if self.rgb is not None:
            uses += [(f"RGB LED {c}", getattr(self.rgb, c)) for c in ("red", "green", "blue")]
        for name, what in (("buzzer", "buzzer"), ("relay", "relay"), ("button", "staff button"),
                           ("passage", "passage sensor")):
            part = getattr(self, name)
            if part is not None:
                uses.append((what, part.pin))
        seen: dict[int, str] = {}
        for what, pin in uses:
            number = gpio_number(pin, what)
            if number in seen:
                raise FeedbackConfigError(f"GPIO{number} is used twice: {seen[number]} and {what}")
            seen[number] = what
        return {what: number for number, what in seen.items()}

    def validate(self) -> FeedbackConfig:
        """This config, or FeedbackConfigError naming what cannot work."""
        self.pins()
        if self.rgb is not None and any(getattr(self, c) is not None for c in ("green", "red", "amber")):
            raise FeedbackConfigError("configure either one RGB LED or separate green/red/amber LEDs, not both")
        if self.rgb is not None:
            amber = self.rgb.amber
            if len(amber) != 3 or not all(isinstance(v, int | float) and 0 <= v <= 1 for v in amber):
                raise FeedbackConfigError(f"RGB LED amber must be three levels 0..1, not {amber!r}")
        if self.direction not in DIRECTIONS:
            raise FeedbackConfigError(f"direction must be one of {', '.join(DIRECTIONS)}, not {self.direction!r}")
        if self.pin_factory is not None and self.pin_factory not in PIN_FACTORIES:
            raise FeedbackConfigError(f"pin factory must be one of {', '.join(PIN_FACTORIES)} "
                                      f"(or unset for gpiozero's default), not {self.pin_factory!r}")
        if self.relay is not None:
            _seconds(self.relay.pulse_s, "relay pulse")
            if self.relay.fail_safe not in FAIL_SAFE:
                raise FeedbackConfigError(f"relay fail_safe must be \"locked\" or \"open\", "
                                          f"not {self.relay.fail_safe!r}")
        if self.passage is not None:
            if self.relay is None:
                raise FeedbackConfigError("a passage sensor needs a gate relay (it confirms that "
                                          "somebody passed after the gate opened)")
            _seconds(self.passage.timeout_s, "passage timeout")
            if self.passage.bounce_s is not None:
                _seconds(self.passage.bounce_s, "passage sensor bounce", zero=True)
            if self.passage.pull_up is None and self.passage.active_state is None:
                raise FeedbackConfigError("passage sensor: without a pull resistor (pull_up unset) "
                                          "active_state must say which level means passage")
            if self.passage.pull_up is not None and self.passage.active_state is not None:
                raise FeedbackConfigError("passage sensor: active_state goes with an external pull "
                                          "resistor (pull_up unset); with the internal pull-up the "
                                          "sensor is active low, with the pull-down active high")
        if self.button is not None:
            _seconds(self.button.hold_s, "button hold time")
            if self.button.bounce_s is not None:
                _seconds(self.button.bounce_s, "button bounce", zero=True)
            for action in (self.button.press, self.button.hold):
                if action is not None and action not in BUTTON_ACTIONS:
                    raise FeedbackConfigError(f"button action must be one of {', '.join(BUTTON_ACTIONS)}, "
                                              f"not {action!r}")
            if self.button.press is None and self.button.hold is None:
                raise FeedbackConfigError("the staff button has no action (press and hold both unset)")
        if self.buzzer is not None and self.buzzer.tonal:
            self._check_tones()
        return self

    def _check_tones(self) -> None:
        buzzer = self.buzzer
        if buzzer is None:
            return
        octaves = buzzer.octaves
        if isinstance(octaves, bool) or not isinstance(octaves, int) or not 1 <= octaves <= 9:
            raise FeedbackConfigError(f"buzzer octaves must be 1..9, not {octaves!r}")
        try:
            mid = Tone.from_frequency(buzzer.mid_tone_hz)
            low = mid.down(12 * octaves).frequency
            high = mid.up(12 * octaves).frequency
        except (ValueError, TypeError) as exc:
            raise FeedbackConfigError(f"buzzer tone range: {buzzer.mid_tone_hz!r} Hz ± {octaves} "
                                      f"octaves is not playable ({exc})") from None
        for pattern in self.patterns.all():
            for hz, _ in pattern.buzzer:
                if hz and not low <= hz <= high:
                    raise FeedbackConfigError(
                        f"pattern {pattern.name!r}: {hz:g} Hz is outside the buzzer's range "
                        f"{low:.0f}..{high:.0f} Hz (mid_tone_hz {buzzer.mid_tone_hz:g}, octaves {octaves})")
