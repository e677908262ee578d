"""Refusal budgets, and an over-budget client's refusals folded into one record per window and
kind: the first recorded as it comes, the others as one record that counts them, held back from
the audit's progress mark until that record is handed over."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.ingest.audit import Attempt
from services.ingest.client_refusals import ClientRefusals, client_budget, sender_budget

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
ONE, OTHER = uuid.UUID(int=1), uuid.UUID(int=2)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def attempt(
    user_agent: str = "probe",
    *,
    connection_id: uuid.UUID | None = None,
    status_code: int = 429,
    reason: str = "rate_limited_refusals",
    at: datetime = T0,
) -> Attempt:
    return Attempt(
        broker="mt5",
        received_at=at,
        client_ip="198.51.100.66",
        user_agent=user_agent,
        connection_id=connection_id,
        status_code=status_code,
        reason=reason,
    )


def over_budget(clock: Clock | None = None) -> ClientRefusals:
    """Refusals whose client "a" has spent its one refusal of the minute."""
    refusals = ClientRefusals("1/minute", fold_seconds=60, clock=clock or Clock())
    assert refusals.refused("a", attempt()) is True
    return refusals


def test_refusals_within_budget_are_recorded_and_past_it_the_wait_is_told() -> None:
    refusals = ClientRefusals("2/minute", clock=Clock())
    assert refusals.wait("a") is None
    assert [refusals.refused("a", attempt()) for _ in range(2)] == [True, True]
    assert refusals.wait("a") == 30
    assert refusals.wait("b") is None


def test_a_senders_budget_is_not_its_addresss() -> None:
    refusals = ClientRefusals("1/minute", clock=Clock())
    refusals.refused(client_budget("198.51.100.66"), attempt())
    assert refusals.wait(client_budget("198.51.100.66")) is not None
    assert refusals.wait(sender_budget("198.51.100.66", ONE)) is None
    refusals.refused(sender_budget("198.51.100.66", ONE), attempt(connection_id=ONE))
    assert refusals.wait(sender_budget("198.51.100.66", OTHER)) is None


def test_over_budget_the_first_refusal_of_a_window_is_recorded_and_the_rest_folded() -> None:
    clock = Clock()
    refusals = over_budget(clock)
    recorded = [refusals.refused("a", attempt(f"try {n}")) for n in range(5)]
    assert recorded == [True, False, False, False, False]
    assert refusals.release() == []  # the window is still open
    clock.now += 60
    [summary] = refusals.release()
    assert (summary.attempts, summary.user_agent, summary.reason) == (
        4,
        "try 4",
        "rate_limited_refusals",
    )
    assert refusals.release() == []


def test_each_connection_and_kind_of_refusal_is_folded_apart() -> None:
    refusals = over_budget()
    kinds = [
        attempt(connection_id=ONE, status_code=409, reason="replay"),
        attempt(connection_id=OTHER, status_code=409, reason="replay"),
        attempt(connection_id=ONE, status_code=401, reason="signature_mismatch"),
    ]
    for kind in kinds * 3:
        refusals.refused("a", kind)
    summaries = refusals.release(everything=True)
    assert sorted((s.connection_id, s.status_code, s.reason, s.attempts) for s in summaries) == [
        (ONE, 401, "signature_mismatch", 2),
        (ONE, 409, "replay", 2),
        (OTHER, 409, "replay", 2),
    ]


def test_after_its_window_a_throttled_client_starts_a_new_one() -> None:
    clock = Clock()
    refusals = over_budget(clock)
    refusals.refused("a", attempt())
    refusals.refused("a", attempt())
    clock.now += 61
    assert refusals.wait("a") is None  # refilled: recorded again, and the budget spent
    assert refusals.refused("a", attempt()) is True
    assert refusals.refused("a", attempt()) is True  # over again: the first of a new window
    assert [s.attempts for s in refusals.release()] == [1]  # the last window's other one


def test_a_window_with_nothing_folded_leaves_no_record() -> None:
    clock = Clock()
    refusals = over_budget(clock)
    refusals.refused("a", attempt())
    clock.now += 61
    assert refusals.release() == []


def test_windows_end_each_on_its_own_time() -> None:
    clock = Clock()
    refusals = ClientRefusals("1/hour", fold_seconds=60, clock=clock)
    for client in ("a", "b"):
        refusals.refused(client, attempt())
    for client in ("a", "a"):
        refusals.refused(client, attempt())
    clock.now += 30
    for client in ("b", "b", "b"):
        refusals.refused(client, attempt())
    clock.now += 30
    assert [s.attempts for s in refusals.release()] == [1]  # a's window only
    clock.now += 30
    assert [s.attempts for s in refusals.release()] == [2]


def test_at_shutdown_every_open_window_is_recorded() -> None:
    refusals = ClientRefusals("1/hour", clock=Clock())
    for client in ("a", "b", "a", "a", "a", "b", "b"):
        refusals.refused(client, attempt())
    assert sorted(s.attempts for s in refusals.release(everything=True)) == [1, 2]
    assert refusals.release(everything=True) == []


def test_folded_attempts_are_held_from_the_first_until_their_record_is_handed_over() -> None:
    clock = Clock()
    refusals = ClientRefusals("1/hour", fold_seconds=60, clock=clock)
    assert refusals.held_since() is None
    refusals.refused("a", attempt())
    refusals.refused("a", attempt(at=T0 + timedelta(seconds=1)))  # a's first: recorded
    assert refusals.held_since() is None  # nothing is held back yet
    refusals.refused("a", attempt(at=T0 + timedelta(seconds=5)))
    refusals.refused("a", attempt(at=T0 + timedelta(seconds=6)))
    assert refusals.held_since() == T0 + timedelta(seconds=5)
    # Received earlier, folded later (a slow body): the earliest counts, not the first folded.
    refusals.refused("b", attempt())
    refusals.refused("b", attempt())
    refusals.refused("b", attempt(at=T0 + timedelta(seconds=2)))
    assert refusals.held_since() == T0 + timedelta(seconds=2)
    clock.now += 61
    refusals.refused("a", attempt(at=T0 + timedelta(seconds=70)))  # a's next window
    assert refusals.held_since() == T0 + timedelta(seconds=2)  # ended, but not handed over
    assert sorted(s.attempts for s in refusals.release()) == [1, 2]
    assert refusals.held_since() is None
