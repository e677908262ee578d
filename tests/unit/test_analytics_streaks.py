"""Streaks from runs: any sequence of wins and losses cut into parts anywhere, each part
reduced to its runs and the runs combined in order, gives the streaks of the whole sequence."""

from __future__ import annotations

import uuid
from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from services.shared.analytics.streaks import (
    Runs,
    Streak,
    Streaks,
    in_order,
    merged_outcomes,
    runs_of,
)

A = uuid.UUID("00000000-0000-0000-0000-00000000000a")
B = uuid.UUID("00000000-0000-0000-0000-00000000000b")
outcomes = st.lists(st.sampled_from((1, -1)), max_size=40)


def streaks_by_walking(signs: list[int]) -> Streaks:
    """The definition: walk the trades one by one."""
    longest = {1: 0, -1: 0}
    run, kind = 0, 0
    for sign in signs:
        run = run + 1 if sign == kind else 1
        kind = sign
        longest[kind] = max(longest[kind], run)
    current = Streak(None, 0) if not kind else Streak("win" if kind > 0 else "loss", run)
    return Streaks(longest[1], longest[-1], current)


@given(outcomes, st.lists(st.integers(min_value=0, max_value=40), max_size=6))
def test_runs_of_parts_combined_in_order_are_the_runs_of_the_whole(
    signs: list[int], cuts: list[int]
) -> None:
    bounds = [0, *sorted(min(c, len(signs)) for c in cuts), len(signs)]
    parts = [signs[a:b] for a, b in pairwise(bounds)]

    combined = in_order(runs_of(part) for part in parts)

    assert combined == runs_of(signs)
    assert combined.streaks == streaks_by_walking(signs)


def test_the_runs_a_sequence_starts_and_ends_with_are_signed_by_their_kind() -> None:
    assert runs_of([1, 1, -1, -1, -1, 1]) == Runs(first=2, last=1, longest_win=2, longest_loss=3)
    assert runs_of([-1, -1]) == Runs(first=-2, last=-2, longest_win=0, longest_loss=2)
    assert runs_of([]) == Runs() and Runs().streaks == Streaks(0, 0, Streak(None, 0))


def test_a_run_of_one_kind_goes_on_across_parts_of_that_kind_only() -> None:
    wins, losses = runs_of([1, 1]), runs_of([-1])

    assert wins.then(wins).then(losses).then(wins) == runs_of([1, 1, 1, 1, -1, 1, 1])
    assert wins.then(wins).streaks.longest_win == 4
    assert Runs().then(losses) == losses == losses.then(Runs())


def test_accounts_outcomes_merge_by_close_time_then_account() -> None:
    # Outcomes are close times in epoch microseconds, negative for losses.
    a = [10, 30, -30]
    b = [-20, 30]

    assert merged_outcomes([(B, b), (A, a)]) == [10, -20, 30, -30, 30]
