"""USB keyboard-wedge QR readers through evdev: grabbed exclusively, key codes translated here.

The device is found by its /dev/input path (best /dev/input/by-id/...-event-kbd) or by
"vendor:product" (hex, as lsusb shows it), grabbed so its keystrokes never reach a console or the
kiosk, and translated with `hardware.keymaps` for the layout the reader is set to. A read ends at
Enter (or the configured suffix); a half-typed read is dropped after ``timeout`` seconds without a
key. When the reader is unplugged it is looked for again with backoff. docs/readers.md.
"""
from __future__ import annotations

import errno
import os
import re
import select
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from hardware import keymaps
from hardware.inputs import SourceReason, SourceState
from hardware.readers import LineAssembler, Problem, ReaderInput, parse_terminator
from scanner.base.backoff import Backoff

EV_KEY = 1
_VID_PID = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{4})$")


@dataclass(frozen=True, slots=True)
class HidReaderConfig:
    """A keyboard-wedge reader: ``device`` is a /dev/input path or "vendor:product" in hex.

    ``layout`` is the keyboard layout the reader types for (keymaps.LAYOUTS), ``suffix`` what ends a
    code (enter, tab, or literal text), ``timeout`` the seconds without a key after which a
    half-typed code is dropped, ``grab`` whether to take the device exclusively.
    """

    device: str
    name: str | None = None
    layout: str = "us"
    suffix: str = "enter"
    timeout: float = 0.5
    grab: bool = True
    direction: str | None = None

    def __post_init__(self) -> None:
        if not self.device.strip():
            raise ValueError("HID reader device must not be empty")
        keymaps.check_layout(self.layout)
        parse_terminator(self.suffix)
        if not 0 < self.timeout <= 60:
            raise ValueError("timeout must be between 0 and 60 seconds")

    @property
    def source_id(self) -> str:
        return self.name or self.device

    @property
    def vendor_product(self) -> tuple[int, int] | None:
        m = _VID_PID.match(self.device.strip())
        return (int(m.group(1), 16), int(m.group(2), 16)) if m else None


class KeyEvents:
    """Key events in, checked reads out: a `KeyTranslator` and a `LineAssembler` for one device.

    Pure (no I/O): the reader feeds it what evdev reads, the tests feed it synthetic streams.
    """

    def __init__(self, layout: str = "us", suffix: str = "enter", timeout: float = 0.5) -> None:
        self.translator = keymaps.KeyTranslator(layout)
        self.lines = LineAssembler(parse_terminator(suffix), timeout=timeout)

    def feed(self, events: Iterable, now: float | None = None) -> list[tuple[str, Problem | None]]:
        """Process events (anything with ``type``, ``code``, ``value`` and ``timestamp()``)."""
        out: list[tuple[str, Problem | None]] = []
        for ev in events:
            if ev.type != EV_KEY:
                continue
            chars = self.translator.feed(ev.code, ev.value)
            if chars:
                out += self.lines.feed(chars, ev.timestamp() if now is None else now)
        return out

    def expire(self, now: float) -> tuple[str, Problem] | None:
        return self.lines.expire(now)

    def reset(self) -> None:
        self.translator.reset()
        self.lines = LineAssembler(self.lines.terminator, timeout=self.lines.timeout)


def _os_code(exc: OSError) -> str:
    if exc.errno in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return SourceReason.DEVICE_MISSING
    if exc.errno in (errno.EACCES, errno.EPERM):
        return SourceReason.PERMISSION_DENIED
    if exc.errno == errno.EBUSY:
        return SourceReason.DEVICE_BUSY
    return SourceReason.DEVICE_ERROR


class _NotFound(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


def find_device(evdev, config: HidReaderConfig):
    """Open the configured reader: its path, or the first keyboard-like device with the vendor:product."""
    wanted = config.vendor_product
    if wanted is None:
        try:
            return evdev.InputDevice(config.device)
        except OSError as exc:
            denied = exc.errno in (errno.EACCES, errno.EPERM)
            hint = " (run as root or add the user to the 'input' group)" if denied else ""
            raise _NotFound(_os_code(exc), f"{exc.strerror}{hint}") from None
    denied = False
    for path in sorted(evdev.list_devices()):
        try:
            dev = evdev.InputDevice(path)
        except OSError as exc:
            denied |= exc.errno in (errno.EACCES, errno.EPERM)
            continue
        keys = dev.capabilities().get(EV_KEY, [])
        if (dev.info.vendor, dev.info.product) == wanted and keymaps.KEY_ENTER in keys:
            return dev
        dev.close()
    if denied:
        raise _NotFound(SourceReason.PERMISSION_DENIED,
                        "some input devices are not readable (run as root or add the user to the 'input' group)")
    raise _NotFound(SourceReason.DEVICE_MISSING, f"no keyboard device {config.device} attached")


class HidReader(ReaderInput):
    """A keyboard-wedge reader read through evdev (Linux only)."""

    kind = "usb"

    def __init__(self, config: HidReaderConfig, *, backoff: Backoff | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(config.source_id, direction=config.direction, clock=clock)
        self.config = config
        self.layout_for_hints = config.layout
        self._backoff = backoff or Backoff()
        self.events = KeyEvents(config.layout, config.suffix, config.timeout)

    def run(self) -> None:
        try:
            import evdev  # deferred: Linux only, and needed only when a HID reader is configured
        except ImportError:
            self.status.set(SourceState.FAILED, SourceReason.LIBRARY_MISSING,
                            "evdev is not installed (Linux only): pip install evdev")
            return
        while not self._stop.is_set():
            try:
                dev = find_device(evdev, self.config)
            except _NotFound as exc:
                self.status.set(SourceState.REOPENING, exc.code, str(exc))
                if not self._sleep(self._backoff.next()):
                    return
                continue
            try:
                if self.config.grab:
                    dev.grab()
                self.events.reset()
                self.status.set(SourceState.OK)
                self._backoff.reset()
                self._read(dev)
            except OSError as exc:  # unplugged (ENODEV), or grabbed by someone else (EBUSY)
                self.status.set(SourceState.REOPENING, _os_code(exc), exc.strerror or str(exc))
                if not self._sleep(self._backoff.next()):
                    return
            finally:
                dev.close()

    def _read(self, dev) -> None:
        fd = dev.fd
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                stale = self.events.expire(time.time())
                if stale is not None:
                    self._deliver(*stale)
                continue
            try:
                events = list(dev.read())
            except BlockingIOError:  # woken without events: not an unplug
                continue
            for text, problem in self.events.feed(events):
                self._deliver(text, problem)


def uinput_available() -> tuple[bool, str]:
    """Whether a virtual input device can be made here (/dev/uinput), and why not."""
    path = "/dev/uinput"
    if not os.path.exists(path):
        return False, f"{path} does not exist (no uinput module in this kernel; 'modprobe uinput' as root)"
    if not os.access(path, os.W_OK):
        return False, f"{path} is not writable by this user"
    return True, ""
