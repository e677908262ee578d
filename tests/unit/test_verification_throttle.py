"""How long a source that keeps failing verification is held off: not at all for the first
few failures, then a wait that doubles with each further one, up to a cap."""

from __future__ import annotations

from services.ingest.verification_failures import ThrottlePolicy


def test_the_free_failures_wait_nothing_then_each_further_one_doubles_the_wait() -> None:
    policy = ThrottlePolicy(free=3, cap_seconds=900)
    assert [policy.wait_after(n) for n in range(1, 9)] == [0, 0, 0, 1, 2, 4, 8, 16]


def test_the_wait_never_passes_the_cap_however_many_failures() -> None:
    policy = ThrottlePolicy(free=0, cap_seconds=900)
    assert [policy.wait_after(n) for n in (10, 11, 100, 10**9)] == [512, 900, 900, 900]
