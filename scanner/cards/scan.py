"""A decoded text from one input, before verification: the value a card's text travels in to the lane."""
from __future__ import annotations

from dataclasses import dataclass

SOURCES = ("camera", "usb", "serial", "stdin", "manual")
DIRECTIONS = ("in", "out")


@dataclass(frozen=True, slots=True)
class Scan:
    """One code read by one input.

    ``source`` is the kind of input (one of SOURCES), ``source_id`` which one (its config name or
    device path), ``at`` the wall-clock time it was read (epoch seconds, UTC) and ``direction``
    the direction configured for that input, if any ("in"/"out").
    """

    text: str
    source: str
    source_id: str
    at: float
    direction: str | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown scan source {self.source!r}")
        if self.direction is not None and self.direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {self.direction!r}")
