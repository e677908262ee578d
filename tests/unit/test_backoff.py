"""Retry delays grow exponentially, are jittered, capped, and start over after a success."""

from __future__ import annotations

import random

import pytest

from services.shared.backoff import Backoff

CEILINGS = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


class Drawing(random.Random):
    """A random source whose every draw in [0, 1) is `fraction`: the jitter made predictable."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self._fraction = fraction

    def random(self) -> float:
        return self._fraction


AT_THE_TOP = 1 - 2**-53  # the largest draw below 1


def delays(backoff: Backoff, count: int) -> list[float]:
    return [backoff.next_delay() for _ in range(count)]


def test_the_longest_delays_are_an_exponentially_growing_ceiling_up_to_the_cap() -> None:
    backoff = Backoff(base_seconds=0.5, cap_seconds=4.0, _random=Drawing(AT_THE_TOP))

    assert delays(backoff, len(CEILINGS)) == pytest.approx(CEILINGS)


def test_the_shortest_delays_are_no_wait_at_all() -> None:
    backoff = Backoff(base_seconds=0.5, cap_seconds=4.0, _random=Drawing(0.0))

    assert delays(backoff, len(CEILINGS)) == [0.0] * len(CEILINGS)


@pytest.mark.parametrize("seed", range(20))
def test_every_delay_lies_between_no_wait_and_its_ceiling(seed: int) -> None:
    backoff = Backoff(base_seconds=0.5, cap_seconds=4.0, _random=random.Random(seed))

    assert all(
        0 <= delay <= ceiling
        for delay, ceiling in zip(delays(backoff, len(CEILINGS)), CEILINGS, strict=True)
    )


def test_jitter_spreads_retries_of_many_consumers() -> None:
    spread = {Backoff(_random=random.Random(seed)).next_delay() for seed in range(20)}
    assert len(spread) == 20


def test_reset_starts_over_from_the_base() -> None:
    backoff = Backoff(base_seconds=1.0, cap_seconds=100.0, _random=Drawing(AT_THE_TOP))
    grown = delays(backoff, 6)
    assert grown[-1] == pytest.approx(32.0)

    backoff.reset()

    assert backoff.next_delay() == pytest.approx(1.0)


def test_an_outage_of_any_length_never_overflows_the_backoff() -> None:
    backoff = Backoff(base_seconds=0.2, cap_seconds=30.0)
    for _ in range(5000):
        assert 0 <= backoff.next_delay() <= 30.0
