"""The dead-letter budget stops a consumer only for a run of failures that spans many sources
(a bad deploy fails everyone): one tenant sending nothing but garbage stops no one."""

from __future__ import annotations

import pytest

from services.shared.dead_letters import DeadLetterBudget, DeadLetterBudgetExceeded


def test_one_sources_endless_run_of_invalid_messages_never_stops_the_consumer() -> None:
    budget = DeadLetterBudget(max_consecutive=5, min_sources=3)
    for _ in range(10_000):
        budget.record_invalid(b"the-hostile-connection")


def test_two_sources_colluding_are_still_below_a_limit_of_three() -> None:
    budget = DeadLetterBudget(max_consecutive=5, min_sources=3)
    for n in range(1_000):
        budget.record_invalid(b"hostile-a" if n % 2 else b"hostile-b")


def test_a_long_run_across_enough_sources_stops_the_consumer() -> None:
    budget = DeadLetterBudget(max_consecutive=5, min_sources=3)
    for source in [b"a", b"b", b"c", b"a", b"b"]:
        budget.record_invalid(source)
    with pytest.raises(DeadLetterBudgetExceeded, match="from 3 or more sources"):
        budget.record_invalid(b"c")


def test_sources_are_counted_within_the_run_only() -> None:
    budget = DeadLetterBudget(max_consecutive=2, min_sources=2)
    budget.record_invalid(b"a")
    budget.record_valid()
    for _ in range(10):
        budget.record_invalid(b"b")  # "a" belonged to the run before the valid message
    with pytest.raises(DeadLetterBudgetExceeded):
        budget.record_invalid(b"c")


def test_with_one_source_required_the_budget_counts_messages_alone() -> None:
    budget = DeadLetterBudget(max_consecutive=2)
    budget.record_invalid(b"k")
    budget.record_invalid(b"k")
    with pytest.raises(DeadLetterBudgetExceeded):
        budget.record_invalid(b"k")
