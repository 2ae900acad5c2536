"""Time from a verdict to the LED pin changing (hardware.gpio_feedback on gpiozero's MockFactory),
against a bare gpiozero ``LED.on()`` on the same factory in the same rounds.

Latency, not throughput: each sample is one call, stamped by the pin itself when its state changes
(a MockPWMPin that records ``perf_counter()``). Cases run in interleaved rounds in a shuffled order.
"""
from __future__ import annotations

import gc
import hashlib
import random
import statistics
import threading
import time

from gpiozero import LED
from gpiozero.pins.mock import MockFactory, MockPWMPin

from hardware.feedback import Patterns
from hardware.feedback_config import (
    BuzzerConfig,
    FeedbackConfig,
    LedConfig,
    RelayConfig,
)
from hardware.gpio_feedback import GpioFeedback
from scanner.base.errors import Reason
from scanner.cards.verdict import Decision, Verdict, reject

from .timing import table, us

GREEN, RED, AMBER, BUZZER, RELAY, BARE = 17, 27, 22, 18, 23, 5
WAIT = 30.0


class StampPin(MockPWMPin):
    """A mock pin that notes when its state last changed and wakes whoever waits for that."""

    def __init__(self, factory, info):
        super().__init__(factory, info)
        self.changed_at = 0.0
        self.changed = threading.Event()

    def _change_state(self, value):
        changed = super()._change_state(value)
        if changed:
            self.changed_at = time.perf_counter()
            self.changed.set()
        return changed


def _p(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def run(quick: bool = False) -> dict:
    rounds = 60 if quick else 1000
    factory = MockFactory(pin_class=StampPin)
    config = FeedbackConfig(green=LedConfig(GREEN), red=LedConfig(RED), amber=LedConfig(AMBER),
                            buzzer=BuzzerConfig(BUZZER), relay=RelayConfig(RELAY, pulse_s=1.0),
                            patterns=Patterns.default())
    fb = GpioFeedback(config, pin_factory=factory)
    bare = LED(BARE, pin_factory=factory)
    green, red, bare_pin = factory.pin(GREEN), factory.pin(RED), factory.pin(BARE)
    accept = Verdict(Decision.ACCEPT, Reason.OK, "ck1")
    rejected = reject(Reason.EXPIRED, "expired", "ck1")
    flip = {"accept": True}
    chunk = bytes(1 << 20)

    def bare_on() -> tuple[float, float]:
        bare.off()
        bare_pin.changed.clear()
        t0 = time.perf_counter()
        bare.on()
        returned = time.perf_counter()
        return bare_pin.changed_at - t0, returned - t0

    def show(wait) -> tuple[float, float]:
        # alternate accept (green) and reject (red) so every show changes a pin
        verdict, pin = (accept, green) if flip["accept"] else (rejected, red)
        flip["accept"] = not flip["accept"]
        pin.changed.clear()
        t0 = time.perf_counter()
        fb.show(verdict)
        returned = time.perf_counter()
        wait(pin)
        if not pin.changed.is_set():
            raise SystemExit("bench: the LED pin did not change within 30 s")
        return pin.changed_at - t0, returned - t0

    def idle_wait(pin) -> None:
        pin.changed.wait(WAIT)

    def busy_python(pin) -> None:  # the scan thread keeps computing in Python (holds the GIL)
        deadline = time.perf_counter() + WAIT
        n = 0
        while not pin.changed.is_set() and time.perf_counter() < deadline:
            n += 1

    def busy_c(pin) -> None:  # the scan thread is in C code that releases the GIL (like OpenCV)
        deadline = time.perf_counter() + WAIT
        while not pin.changed.is_set() and time.perf_counter() < deadline:
            hashlib.sha256(chunk).digest()

    cases = {
        "bare LED.on()": bare_on,
        "show(), caller waits": lambda: show(idle_wait),
        "show(), caller busy in C": lambda: show(busy_c),
        "show(), caller busy in Python": lambda: show(busy_python),
    }
    latency: dict[str, list[float]] = {name: [] for name in cases}
    call: dict[str, list[float]] = {name: [] for name in cases}
    order = list(cases)
    rng = random.Random(1)
    for fn in cases.values():  # warm up
        fn()
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            rng.shuffle(order)
            for name in order:
                lat, ret = cases[name]()
                latency[name].append(lat)
                call[name].append(ret)
    finally:
        if gc_was_enabled:
            gc.enable()
        fb.close()
        bare.close()

    peer = "bare LED.on()"
    p50_peer, p95_peer = statistics.median(latency[peer]), _p(latency[peer], 95)
    print(f"== feedback: verdict -> LED pin change ({rounds} interleaved rounds, MockFactory pins, "
          f"GIL switch interval {1000 * __import__('sys').getswitchinterval():.0f} ms)")
    rows = []
    result = {}
    for name in cases:
        p50, p95 = statistics.median(latency[name]), _p(latency[name], 95)
        c50, c95 = statistics.median(call[name]), _p(call[name], 95)
        rows.append([name, us(p50), us(p95), f"{p50 / p50_peer:.1f}", f"{p95 / p95_peer:.1f}",
                     us(c50), us(c95)])
        result[name] = {"p50_us": p50 * 1e6, "p95_us": p95 * 1e6, "x_bare_p50": p50 / p50_peer,
                        "x_bare_p95": p95 / p95_peer, "call_p50_us": c50 * 1e6, "call_p95_us": c95 * 1e6}
    print(table(["case", "pin p50 µs", "pin p95 µs", "x bare p50", "x bare p95", "call p50 µs",
                 "call p95 µs"], rows))
    print("pin = from the call to the pin's state change; call = how long the caller was held.\n")
    return result
