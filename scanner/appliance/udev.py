"""udev rules for USB QR readers: a stable name under /dev/checkpoint/ and the service's group.

A reader plugged in gets ``/dev/checkpoint/hid-VVVV-PPPP`` (keyboard mode, an evdev node) or
``/dev/checkpoint/serial-VVVV-PPPP`` (serial / USB CDC-ACM mode), and a name by USB port,
``/dev/checkpoint/by-path/...``, for two readers of the same model (entry and exit). The node
belongs to the group ``checkpoint`` (mode 0660), and ModemManager is told to leave serial readers
alone. The known readers are listed in `KNOWN_READERS` (names from the usb.ids database), more
come from the config's ``[udev] extra_readers``. docs/provisioning.md#usb-readers.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from scanner.base.errors import CheckpointError
from scanner.base.fsutil import atomic_write

# (vendor, product or "*" for every product of a vendor that makes only scanners, description)
KNOWN_READERS: tuple[tuple[str, str, str], ...] = (
    ("0c2e", "*", "Honeywell / Metrologic (Voyager, Xenon, Vuquest, MS series)"),
    ("1eab", "*", "Newland (HR, FM, EM series scanner engines)"),
    ("05e0", "0700", "Symbol / Zebra CS1504"),
    ("05e0", "1200", "Symbol / Zebra bar code scanner (keyboard)"),
    ("05e0", "1701", "Symbol / Zebra bar code scanner (CDC serial)"),
    ("05e0", "1a00", "Symbol / Zebra CS4070"),
    ("05f9", "1206", "Datalogic Gryphon (OEM mode)"),
    ("05f9", "120c", "Datalogic Gryphon GD4430"),
    ("05f9", "2206", "Datalogic Gryphon (keyboard emulation)"),
    ("05f9", "220c", "Datalogic Gryphon GD4430"),
    ("05f9", "4204", "Datalogic Gryphon (RS-232 emulation)"),
    ("0536", "01ca", "Hand Held Products IT4800 area imager"),
    ("065a", "0001", "Opticon (keyboard mode)"),
    ("065a", "0009", "Opticon (serial mode)"),
    ("27dd", "0002", "Mindeo virtual COM port"),
)

DEFAULT_FILE = "/etc/udev/rules.d/70-checkpoint-readers.rules"
_ID = re.compile(r"^[0-9a-f]{4}$")
_GROUP = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


class UdevError(CheckpointError):
    code = "udev"


def _match(vendor: str, product: str) -> str:
    m = f'ATTRS{{idVendor}}=="{vendor}"'
    if product != "*":
        m += f', ATTRS{{idProduct}}=="{product}"'
    return m


def rules(extra: Iterable[str] = (), *, group: str = "checkpoint") -> str:
    """The rules file for the known readers plus ``extra`` ("vvvv:pppp" pairs)."""
    if not _GROUP.match(group):
        raise UdevError(f"{group!r} is not a group name")
    readers = list(KNOWN_READERS)
    for item in extra:
        vendor, _, product = item.lower().partition(":")
        if not (_ID.match(vendor) and _ID.match(product)):
            raise UdevError(f"{item!r} is not vendor:product (four hex digits each)")
        readers.append((vendor, product, "from the configuration ([udev] extra_readers)"))
    lines = [
        "# USB QR readers for checkpoint-edge: a stable name and the service's group.",
        ("# Written by `checkpoint udev-rules`; the list is in scanner/appliance/udev.py "
         "(docs/provisioning.md#usb-readers)."),
        'ACTION=="remove", GOTO="checkpoint_readers_end"',
        "",
    ]
    for vendor, product, what in readers:
        name = f"{vendor}-$attr{{idProduct}}"
        m = _match(vendor, product)
        lines.append(f"# {vendor}:{product} {what}")
        lines.append(f'SUBSYSTEM=="input", KERNEL=="event*", {m}, GROUP="{group}", MODE="0660", '
                     f'SYMLINK+="checkpoint/hid-{name}", ENV{{CHECKPOINT_READER}}="hid"')
        lines.append(f'SUBSYSTEM=="tty", {m}, GROUP="{group}", MODE="0660", '
                     f'SYMLINK+="checkpoint/serial-{name}", ENV{{ID_MM_DEVICE_IGNORE}}="1", '
                     f'ENV{{CHECKPOINT_READER}}="serial"')
    lines += [
        "",
        "# two readers of one model (entry and exit): tell them apart by the USB port they are in",
        ('ENV{CHECKPOINT_READER}=="hid|serial", ENV{ID_PATH}=="?*", '
        'SYMLINK+="checkpoint/by-path/$env{CHECKPOINT_READER}-$env{ID_PATH}"'),
        "",
        'LABEL="checkpoint_readers_end"',
        "",
    ]
    return "\n".join(lines)


def install(text: str, path: str | os.PathLike = DEFAULT_FILE) -> None:
    """Write the rules and make udev apply them to readers already plugged in (needs root)."""
    path = Path(path)
    try:
        atomic_write(path, text.encode("ascii"), 0o644)
    except OSError as exc:
        raise UdevError(f"{path}: {exc.strerror or exc} (run as root)") from None
    udevadm = shutil.which("udevadm")
    if udevadm is None:
        return
    for args in (["control", "--reload"], ["trigger", "--action=add", "--subsystem-match=input",
                                           "--subsystem-match=tty"]):
        subprocess.run([udevadm, *args], check=False, timeout=30)
