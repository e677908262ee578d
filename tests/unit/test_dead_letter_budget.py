"""The dead-letter budget stops a consumer that would otherwise dead-letter everything."""

from __future__ import annotations

import pytest

from services.shared.dead_letters import DeadLetterBudget, DeadLetterBudgetExceeded


def test_up_to_the_limit_of_consecutive_dead_letters_is_tolerated() -> None:
    budget = DeadLetterBudget(max_consecutive=3)
    for _ in range(3):
        budget.record_invalid()
    with pytest.raises(DeadLetterBudgetExceeded):
        budget.record_invalid()


def test_a_valid_message_resets_the_count() -> None:
    budget = DeadLetterBudget(max_consecutive=2)
    for _ in range(10):
        budget.record_invalid()
        budget.record_invalid()
        budget.record_valid()
