"""Growing retry delays, the one backoff of the project: an input reopening its device and the sync
agent retrying the server both wait longer after each failure, up to a cap, and start over on success.
"""
from __future__ import annotations

import random


class Backoff:
    """Delays of ``base_s`` seconds, times ``factor`` per failure, at most ``cap_s``.

    With ``jitter`` each delay is drawn from [x/2, x] so that many devices do not retry in step; a
    server's Retry-After passed to `next` is a lower bound.
    """

    def __init__(self, base_s: float = 0.25, factor: float = 2.0, cap_s: float = 5.0, *,
                 jitter: bool = False, rng: random.Random | None = None) -> None:
        if base_s <= 0 or factor < 1 or cap_s < base_s:
            raise ValueError("backoff needs 0 < base_s <= cap_s and factor >= 1")
        self.base_s, self.factor, self.cap_s = base_s, factor, cap_s
        self.jitter = jitter
        self.rng = rng or random.Random()
        self._next = base_s

    def next(self, retry_after: float | None = None) -> float:
        """The delay before the next attempt (and count one more failure)."""
        x = self._next
        self._next = min(self.cap_s, self._next * self.factor)
        delay = x / 2 + self.rng.uniform(0, x / 2) if self.jitter else x
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    def reset(self) -> None:
        """Start over after a success."""
        self._next = self.base_s
