"""Retry delays grow exponentially, are jittered, capped, and start over after a success."""

from __future__ import annotations

import random

from services.shared.backoff import Backoff


def test_delays_stay_under_an_exponentially_growing_ceiling_up_to_the_cap() -> None:
    backoff = Backoff(base_seconds=0.5, cap_seconds=4.0, _random=random.Random(1))
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    for ceiling in ceilings:
        assert 0 <= backoff.next_delay() <= ceiling


def test_jitter_spreads_retries_of_many_consumers() -> None:
    delays = {Backoff(_random=random.Random(seed)).next_delay() for seed in range(20)}
    assert len(delays) == 20


def test_reset_starts_over_from_the_base() -> None:
    backoff = Backoff(base_seconds=1.0, cap_seconds=100.0)
    for _ in range(6):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() <= 1.0
