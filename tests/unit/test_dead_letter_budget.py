"""The dead-letter budget stops a consumer that would otherwise dead-letter everything."""

from __future__ import annotations

import pytest

from services.shared.dead_letters import DeadLetterBudget, DeadLetterBudgetExceeded
from services.shared.errors import PermanentError


def record_invalid(budget: DeadLetterBudget, times: int) -> None:
    for _ in range(times):
        budget.record_invalid()


def tolerated(budget: DeadLetterBudget, times: int) -> int:
    """How many of `times` more consecutive invalid messages the budget takes before it stops
    the consumer."""
    for taken in range(times):
        try:
            budget.record_invalid()
        except DeadLetterBudgetExceeded:
            return taken
    return times


@pytest.mark.parametrize("limit", [1, 3, 10])
def test_up_to_the_limit_of_consecutive_invalid_messages_is_tolerated(limit: int) -> None:
    assert tolerated(DeadLetterBudget(max_consecutive=limit), limit) == limit


@pytest.mark.parametrize("limit", [1, 3, 10])
def test_one_invalid_message_past_the_limit_stops_the_consumer(limit: int) -> None:
    budget = DeadLetterBudget(max_consecutive=limit)
    record_invalid(budget, limit)
    with pytest.raises(DeadLetterBudgetExceeded):
        budget.record_invalid()


def test_a_limit_of_zero_stops_at_the_first_invalid_message() -> None:
    with pytest.raises(DeadLetterBudgetExceeded):
        DeadLetterBudget(max_consecutive=0).record_invalid()


def test_a_valid_message_resets_the_count() -> None:
    budget = DeadLetterBudget(max_consecutive=3)
    for _ in range(10):
        record_invalid(budget, 3)
        budget.record_valid()
    record_invalid(budget, 3)
    with pytest.raises(DeadLetterBudgetExceeded):
        budget.record_invalid()


def test_valid_messages_alone_never_spend_the_budget() -> None:
    budget = DeadLetterBudget(max_consecutive=3)
    for _ in range(100):
        budget.record_valid()
    assert tolerated(budget, 10) == 3  # all of it left, and no more


def test_invalid_messages_interleaved_with_valid_ones_are_not_consecutive() -> None:
    budget = DeadLetterBudget(max_consecutive=1)
    taken = 0
    for _ in range(50):
        taken += tolerated(budget, 1)
        budget.record_valid()
    assert taken == 50
    assert tolerated(budget, 10) == 1  # once the valid ones stop, the limit holds again


def test_the_stop_is_permanent_and_says_how_many_against_what_limit() -> None:
    budget = DeadLetterBudget(max_consecutive=2)
    record_invalid(budget, 2)
    with pytest.raises(DeadLetterBudgetExceeded) as raised:
        budget.record_invalid()
    assert isinstance(raised.value, PermanentError)
    assert "3 consecutive" in str(raised.value)
    assert "limit 2" in str(raised.value)
