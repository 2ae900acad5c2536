"""scanner.base.backoff: the one backoff shared by the inputs (reopening a device) and the sync agent."""
from __future__ import annotations

import random

import pytest

from scanner.base.backoff import Backoff


def test_grows_by_factor_to_its_cap_and_starts_over():
    b = Backoff(0.25, 2, 1.0)
    assert [b.next() for _ in range(5)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    b.reset()
    assert b.next() == 0.25


@pytest.mark.parametrize("args", [(0, 2, 1), (-1, 2, 1), (1, 0.5, 2), (2, 2, 1)])
def test_refuses_nonsense(args):
    with pytest.raises(ValueError):
        Backoff(*args)


def test_jitter_draws_each_delay_from_the_upper_half():
    b = Backoff(1.0, 2.0, 300.0, jitter=True, rng=random.Random(7))
    ceilings = [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
    delays = [b.next() for _ in ceilings]
    assert all(x / 2 <= d <= x for d, x in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays)  # drawn, not fixed


def test_retry_after_is_a_lower_bound():
    b = Backoff(1.0, 2.0, 300.0, jitter=True)
    assert b.next(retry_after=120.0) == 120.0
    assert 1.0 <= b.next(retry_after=0.5) <= 2.0


def test_many_failures_stay_at_the_cap():
    b = Backoff(0.5, 10.0, 60.0)
    for _ in range(2000):
        delay = b.next()
    assert delay == 60.0
