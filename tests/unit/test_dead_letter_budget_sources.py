"""The dead-letter budget stops a consumer only for a run of failures that spans many tenants,
and at least half of those active lately (a bad deploy fails everyone): tenants sending nothing
but garbage, from however many connections, stop no one."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest

from services.shared.dead_letters import DeadLetterBudget, DeadLetterBudgetExceeded


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def tolerated(budget: DeadLetterBudget, sources: Sequence[object]) -> int:
    """How many invalid messages of these sources (in turn) the budget takes before it stops
    the consumer."""
    for taken, source in enumerate(sources):
        try:
            budget.record_invalid(source)
        except DeadLetterBudgetExceeded:
            return taken
    return len(sources)


def from_(*sources: object, messages: int) -> list[object]:
    return list(itertools.islice(itertools.cycle(sources), messages))


def test_one_tenants_endless_run_of_invalid_messages_never_stops_the_consumer() -> None:
    budget = DeadLetterBudget(max_consecutive=5, min_sources=3)
    assert tolerated(budget, from_("hostile", messages=10_000)) == 10_000


def test_two_tenants_colluding_are_still_below_a_minimum_of_three() -> None:
    budget = DeadLetterBudget(max_consecutive=5, min_sources=3)
    assert tolerated(budget, from_("hostile-a", "hostile-b", messages=1_000)) == 1_000


def test_a_long_run_across_enough_tenants_stops_the_consumer() -> None:
    budget = DeadLetterBudget(max_consecutive=5, min_sources=3)
    assert tolerated(budget, from_("a", "b", "c", messages=100)) == 5
    with pytest.raises(DeadLetterBudgetExceeded, match="from 3 sources"):
        budget.record_invalid("a")


def test_with_many_tenants_active_a_run_must_span_half_of_them() -> None:
    clock = Clock()
    budget = DeadLetterBudget(max_consecutive=5, min_sources=3, clock=clock)
    for tenant in range(100):
        budget.record_valid(f"tenant-{tenant}")
    colluders = [f"hostile-{n}" for n in range(10)]
    assert tolerated(budget, from_(*colluders, messages=5_000)) == 5_000
    # A bad deploy fails everyone's records: half of the active tenants is reached.
    budget.record_valid("tenant-0")
    everyone = [f"tenant-{tenant}" for tenant in range(100)]
    assert tolerated(budget, everyone) == 49


def test_tenants_inactive_for_the_window_no_longer_raise_the_bar() -> None:
    clock = Clock()
    budget = DeadLetterBudget(max_consecutive=5, min_sources=3, window_seconds=3600, clock=clock)
    for tenant in range(100):
        budget.record_valid(f"tenant-{tenant}")
    clock.now = 3600 + 61
    assert tolerated(budget, from_("a", "b", "c", messages=100)) == 5


def test_sources_are_counted_within_the_run_only() -> None:
    budget = DeadLetterBudget(max_consecutive=2, min_sources=2)
    budget.record_invalid("a")
    budget.record_valid()
    assert tolerated(budget, from_("b", messages=10)) == 10  # "a" was in the run before
    with pytest.raises(DeadLetterBudgetExceeded):
        budget.record_invalid("c")


def test_with_one_source_required_and_none_active_the_budget_counts_messages_alone() -> None:
    assert tolerated(DeadLetterBudget(max_consecutive=2), from_("k", messages=10)) == 2
