"""The real feedback device: LEDs, buzzer, gate relay, staff button and passage sensor via gpiozero.

``open_feedback`` is what the daemon calls: the GPIO device when the pins can be had, else one
log line and the console device (not a Pi, no permission on /dev/gpiochip*, a pin in use), never a
crash. Wiring and the relay's fail-safe choice: docs/wiring.md.
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import warnings
from importlib.metadata import entry_points
from typing import TextIO

from gpiozero import (
    LED,
    RGBLED,
    Button,
    Buzzer,
    Device,
    DigitalInputDevice,
    GPIOZeroError,
    GPIOZeroWarning,
    OutputDevice,
    TonalBuzzer,
)
from gpiozero.pins import Factory
from gpiozero.pins.mock import MockFactory, MockPWMPin
from gpiozero.tones import Tone

from hardware.console_feedback import ConsoleFeedback, ConsoleLine
from hardware.feedback import Callbacks, Outputs, PatternFeedback
from hardware.feedback_config import FeedbackConfig, FeedbackConfigError, gpio_number

log = logging.getLogger(__name__)

# what "GPIO cannot be used here" looks like: gpiozero's errors (no pin factory, pin in use), OS
# errors (permission on /dev/gpiochip*, /dev/gpiomem, no pigpio daemon), a pin library that is not
# installed, RPi.GPIO's RuntimeError, and lgpio's own error class (a busy line, a chip it may not
# open), checked by gpio_unavailable()
GPIO_UNAVAILABLE = (GPIOZeroError, OSError, ImportError, RuntimeError)


def gpio_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means "no usable GPIO here" (rather than a bug)."""
    lgpio = sys.modules.get("lgpio")
    return isinstance(exc, GPIO_UNAVAILABLE) or (lgpio is not None and isinstance(exc, lgpio.error))


def preload_lgpio() -> None:
    """Import lgpio without leaving its notification FIFO (.lgd-nfy0) in the current directory.

    lgpio creates that FIFO in the working directory when it is imported, and its import fails
    where that directory is not writable (a service running in /); with LG_WD set it changes the
    process's working directory instead. So it is imported with LG_WD pointing to a private
    directory (unless the operator set LG_WD), and the working directory is restored afterwards
    (or, where this user may not enter it again, the process works in /: _return_to).
    If lgpio cannot be imported, gpiozero reports that when it tries its default pin factories.
    Call it at start-up, before other threads use relative paths (open_feedback does).
    """
    if "lgpio" in sys.modules:
        return
    cwd = os.getcwd()
    set_here = "LG_WD" not in os.environ
    if set_here:
        workdir = tempfile.mkdtemp(prefix="checkpoint-lgpio-")
        atexit.register(shutil.rmtree, workdir, True)
        os.environ["LG_WD"] = workdir
    try:
        import lgpio  # noqa: F401  # deferred: Pi only, and imported inside the private LG_WD set above
    except (ImportError, OSError) as exc:
        log.debug("feedback: lgpio cannot be imported (%s: %s)", type(exc).__name__, exc)
    finally:
        _return_to(cwd)
        if set_here:
            del os.environ["LG_WD"]


def _return_to(cwd: str) -> None:
    """Back to ``cwd`` after lgpio's chdir; to / if this user may not enter it again (started by
    `sudo -u` in root's home): no relative path could be used there anyway."""
    try:
        if os.getcwd() != cwd:
            os.chdir(cwd)
    except OSError as exc:
        log.warning("feedback: cannot return to the working directory %s (%s); working in / instead", cwd,
                    exc.strerror or exc)
        os.chdir("/")


def make_pin_factory(name: str | None) -> Factory | None:
    """The pin factory called ``name`` (None: gpiozero's default, chosen on the first device)."""
    if name is None:
        return None
    if name == "mock":
        return MockFactory(pin_class=MockPWMPin)
    for ep in entry_points(group="gpiozero_pin_factories"):
        if ep.name == name:
            return ep.load()()
    raise FeedbackConfigError(f"pin factory {name!r} is not installed")


class GpioFeedback(PatternFeedback):
    """Feedback on real pins (or MockFactory pins). Outputs are written only when they change."""

    kind = "gpio"

    def __init__(self, config: FeedbackConfig, *, pin_factory: object | None = None,
                 callbacks: Callbacks | None = None, mirror: ConsoleLine | None = None) -> None:
        self.config = config.validate()
        self.mirror = mirror
        self.fallback_reason = None
        factory = pin_factory if pin_factory is not None else make_pin_factory(config.pin_factory)
        self._devices: list[Device] = []
        self._written: dict[str, object] = {}
        self._fail_open = config.relay is not None and config.relay.fail_safe == "open"
        self._held = False
        try:
            self._open_outputs(config, factory)
            super().__init__(config.patterns,
                             gate_pulse_s=config.relay.pulse_s if config.relay else None,
                             passage_timeout_s=config.passage.timeout_s if config.passage else None,
                             direction=config.direction, callbacks=callbacks, name="gpio-feedback")
            self._open_inputs(config, factory)
        except BaseException:
            if hasattr(self, "_player"):
                self.close()
            else:
                self._release()
            raise
        atexit.register(self.close)
        missing = [c for c in ("green", "red", "amber")
                   if getattr(config, c) is None and config.rgb is None
                   and any(getattr(p, c) for p in config.patterns.all())]
        if missing:
            log.warning("feedback: no %s LED fitted; patterns that use it show nothing there",
                        "/".join(missing))

    def _add(self, device: Device) -> Device:
        self._devices.append(device)
        return device

    def _open_outputs(self, config: FeedbackConfig, factory: object | None) -> None:
        self.leds = {}
        for name in ("green", "red", "amber"):
            led = getattr(config, name)
            if led is not None:
                self.leds[name] = self._add(LED(gpio_number(led.pin), active_high=led.active_high,
                                                initial_value=False, pin_factory=factory))
        self.rgb = None
        if config.rgb is not None:
            c = config.rgb
            self.rgb = self._add(RGBLED(gpio_number(c.red), gpio_number(c.green), gpio_number(c.blue),
                                        active_high=c.active_high, pwm=c.pwm, pin_factory=factory))
        self.buzzer = None
        if config.buzzer is not None:
            b = config.buzzer
            if b.tonal:
                self.buzzer = self._add(TonalBuzzer(gpio_number(b.pin), mid_tone=Tone.from_frequency(b.mid_tone_hz),
                                                    octaves=b.octaves, pin_factory=factory))
            else:
                self.buzzer = self._add(Buzzer(gpio_number(b.pin), active_high=b.active_high,
                                               initial_value=False, pin_factory=factory))
        self.relay = None
        if config.relay is not None:
            self.relay = self._add(OutputDevice(gpio_number(config.relay.pin),
                                                active_high=config.relay.active_high,
                                                initial_value=self._fail_open, pin_factory=factory))

    def _open_inputs(self, config: FeedbackConfig, factory: object | None) -> None:
        self.button = None
        if config.button is not None:
            b = config.button
            self.button = self._add(Button(gpio_number(b.pin), pull_up=b.pull_up, bounce_time=b.bounce_s,
                                           hold_time=b.hold_s, pin_factory=factory))
            self.button.when_pressed = self._button_pressed
            self.button.when_held = self._button_held
            self.button.when_released = self._button_released
        self.passage_sensor = None
        if config.passage is not None:
            p = config.passage
            self.passage_sensor = self._add(DigitalInputDevice(
                gpio_number(p.pin), pull_up=p.pull_up, active_state=p.active_state,
                bounce_time=p.bounce_s, pin_factory=factory))
            self.passage_sensor.when_activated = self.passage

    # -- staff button: a short press and a hold do different things ------------------------------

    def _button_action(self, action: str | None) -> None:
        if action == "toggle_direction":
            self.toggle_direction()
        elif action == "acknowledge":
            self.acknowledge()

    # the button's handlers are attached only when a button is configured
    def _button_pressed(self) -> None:
        self._held = False
        button = self.config.button
        if button is not None and button.hold is None:  # nothing to wait for: act at once
            self._button_action(button.press)

    def _button_held(self) -> None:
        self._held = True
        if self.config.button is not None:
            self._button_action(self.config.button.hold)

    def _button_released(self) -> None:
        button = self.config.button
        if button is not None and button.hold is not None and not self._held:
            self._button_action(button.press)

    # -- outputs -----------------------------------------------------------------------------------

    def _safe_frame(self) -> Outputs:
        # the safe state is a released relay: the gate's "open" side when it fails open
        return Outputs(gate_open=self._fail_open)

    def _set(self, key: str, value: object, write) -> None:
        if self._written.get(key, ...) != value:
            write(value)
            self._written[key] = value

    def _write(self, frame: Outputs, label: str) -> None:
        for name, led in self.leds.items():
            self._set(name, getattr(frame, name) > 0, lambda v, led=led: setattr(led, "value", v))
        if self.rgb is not None:
            self._set("rgb", self._rgb_color(frame), lambda v: setattr(self.rgb, "value", v))
        if self.buzzer is not None:
            if isinstance(self.buzzer, TonalBuzzer):
                self._set("buzzer", frame.buzzer_hz, self._play_tone)
            else:
                self._set("buzzer", frame.buzzer_hz > 0, lambda v: setattr(self.buzzer, "value", v))
        if self.relay is not None:
            self._set("relay", frame.gate_open != self._fail_open, lambda v: setattr(self.relay, "value", v))
        if self.mirror is not None:
            self.mirror(frame, label, direction=self.direction)

    def _play_tone(self, hz: float) -> None:
        if self.buzzer is None:
            return
        if hz > 0:
            self.buzzer.play(Tone.from_frequency(hz))
        else:
            self.buzzer.stop()

    def _rgb_color(self, frame: Outputs) -> tuple[float, float, float]:
        rgb = self.config.rgb
        assert rgb is not None  # asked only when an RGB LED is configured
        amber = rgb.amber
        r = max(frame.red, frame.amber * amber[0])
        g = max(frame.green, frame.amber * amber[1])
        b = frame.amber * amber[2]
        if not rgb.pwm:
            return (float(r > 0), float(g > 0), float(b > 0))
        return (r, g, b)

    def _release(self) -> None:
        atexit.unregister(self.close)
        for device in reversed(self._devices):
            device.close()
        self._devices.clear()
        if self.mirror is not None:
            self.mirror.end()


def open_feedback(config: FeedbackConfig, *, pin_factory: object | None = None,
                  callbacks: Callbacks | None = None, mirror: ConsoleLine | None = None,
                  stream: TextIO | None = None, lang: str | None = None) -> PatternFeedback:
    """The GPIO feedback device, or (one log line) the console one when GPIO cannot be used here.

    A bad config raises FeedbackConfigError instead: that needs a technician, not a fallback. The
    console device has no gate and no passage sensor (there is no hardware to drive or read).
    """
    config.validate()
    if pin_factory is None and config.pin_factory in (None, "lgpio"):
        preload_lgpio()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GPIOZeroWarning)
        try:
            device = GpioFeedback(config, pin_factory=pin_factory, callbacks=callbacks, mirror=mirror)
        except Exception as exc:
            if not gpio_unavailable(exc):
                raise
            why = f"{type(exc).__name__}: {exc}"
            tried = [str(w.message).removeprefix("Falling back from ") for w in caught
                     if issubclass(w.category, GPIOZeroWarning)]
            if tried:
                why += f" [{'; '.join(tried)}]"
        else:
            notes = [str(w.message) for w in caught if issubclass(w.category, GPIOZeroWarning)]
            if notes:  # e.g. gpiozero fell back to another pin factory: worth one line
                log.warning("feedback: gpiozero: %s", "; ".join(notes))
            return device
        finally:
            for w in caught:
                if not issubclass(w.category, GPIOZeroWarning):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    log.warning("feedback: GPIO unavailable (%s); showing lights and buzzer on the console instead "
                "(no gate, no passage sensor, no staff button)", why)
    return ConsoleFeedback(config.patterns, stream=stream, lang=lang, direction=config.direction,
                           callbacks=callbacks, fallback_reason=why)
