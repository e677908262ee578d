"""Token buckets: a spend of several tokens waits until that many fit, on the injected clock."""

from __future__ import annotations

from services.shared.token_buckets import TokenBuckets


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_costly_spend_waits_until_all_its_tokens_fit() -> None:
    clock = FakeClock()
    buckets = TokenBuckets("10/minute", clock)  # a token every 6 s
    buckets.spend("user", 8)
    assert buckets.wait("user", 2) is None
    assert buckets.wait("user", 5) == 18  # 2 left: 3 more take 18 s
    clock.now += 18
    assert buckets.wait("user", 5) is None


def test_capacity_is_the_smallest_limit() -> None:
    assert TokenBuckets("100/minute;10/second").capacity == 10
