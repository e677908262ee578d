"""A client's refusal budget, and a throttled client's attempts folded into one record per
window: the first recorded as it comes, the others as one record that counts them."""

from __future__ import annotations

from datetime import UTC, datetime

from services.ingest.audit import Attempt
from services.ingest.client_refusals import ClientRefusals


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def attempt(user_agent: str = "probe") -> Attempt:
    return Attempt(
        broker="mt5",
        received_at=datetime.now(UTC),
        client_ip="198.51.100.66",
        user_agent=user_agent,
        status_code=429,
        reason="rate_limited_refusals",
    )


def test_a_client_within_budget_waits_for_nothing_and_past_it_is_told_how_long() -> None:
    refusals = ClientRefusals("2/minute", clock=Clock())
    assert refusals.wait("a") is None
    refusals.spend("a")
    refusals.spend("a")
    assert refusals.wait("a") == 30
    assert refusals.wait("b") is None


def test_the_first_throttled_attempt_of_a_window_is_recorded_and_the_rest_folded() -> None:
    clock = Clock()
    refusals = ClientRefusals("1/minute", fold_seconds=60, clock=clock)
    recorded = [refusals.throttled("a", attempt(f"try {n}")) for n in range(5)]
    assert recorded == [True, False, False, False, False]
    assert refusals.summaries() == []  # the window is still open
    clock.now += 60
    [summary] = refusals.summaries()
    assert (summary.attempts, summary.user_agent, summary.reason) == (
        4,
        "try 4",
        "rate_limited_refusals",
    )
    assert refusals.summaries() == []


def test_after_its_window_a_throttled_client_starts_a_new_one() -> None:
    clock = Clock()
    refusals = ClientRefusals("1/minute", fold_seconds=60, clock=clock)
    refusals.throttled("a", attempt())
    refusals.throttled("a", attempt())
    clock.now += 61
    assert refusals.throttled("a", attempt()) is True  # recorded: the first of the next window
    assert [s.attempts for s in refusals.summaries()] == [1]  # the last window's other one


def test_a_window_with_nothing_folded_leaves_no_record() -> None:
    clock = Clock()
    refusals = ClientRefusals("1/minute", fold_seconds=60, clock=clock)
    refusals.throttled("a", attempt())
    clock.now += 61
    assert refusals.summaries() == []


def test_windows_end_each_on_its_own_time() -> None:
    clock = Clock()
    refusals = ClientRefusals("1/minute", fold_seconds=60, clock=clock)
    for client in ("a", "a"):
        refusals.throttled(client, attempt())
    clock.now += 30
    for client in ("b", "b", "b"):
        refusals.throttled(client, attempt())
    clock.now += 30
    assert [s.attempts for s in refusals.summaries()] == [1]  # a's window only
    clock.now += 30
    assert [s.attempts for s in refusals.summaries()] == [2]


def test_at_shutdown_every_open_window_is_recorded() -> None:
    refusals = ClientRefusals("1/minute", clock=Clock())
    for client in ("a", "a", "a", "b", "b"):
        refusals.throttled(client, attempt())
    assert sorted(s.attempts for s in refusals.drain()) == [1, 2]
    assert refusals.drain() == []
