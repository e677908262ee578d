"""Which balance report an account keeps, and how a connection's syncs are counted per month:
the writer's rules as pure functions."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from services.shared.canonical import AccountSnapshot
from services.writer.journal import MonthlySyncs, StoredBalance, balance_applies, count_syncs

T0 = datetime(2024, 6, 4, 9, 0, tzinfo=UTC)


def report(as_of: datetime, deals_through: datetime | None = None) -> AccountSnapshot:
    return AccountSnapshot(balance=Decimal("1000"), as_of=as_of, deals_through=deals_through)


NEVER_SET = StoredBalance(as_of=None, received_at=None, newest_deal=None)


def test_the_first_report_of_an_account_is_applied() -> None:
    assert balance_applies(NEVER_SET, report(T0), T0)


def test_a_newer_report_replaces_the_balance() -> None:
    stored = StoredBalance(as_of=T0, received_at=T0, newest_deal=None)
    assert balance_applies(stored, report(T0 + timedelta(minutes=1)), T0 + timedelta(minutes=1))


def test_an_older_report_never_rolls_the_balance_back() -> None:
    stored = StoredBalance(as_of=T0, received_at=T0, newest_deal=None)
    assert not balance_applies(stored, report(T0 - timedelta(minutes=1)), T0 + timedelta(hours=1))


def test_of_two_reports_as_of_the_same_moment_the_one_received_later_wins() -> None:
    stored = StoredBalance(as_of=T0, received_at=T0, newest_deal=None)
    assert balance_applies(stored, report(T0), T0 + timedelta(seconds=1))
    assert not balance_applies(stored, report(T0), T0)


def test_a_report_whose_deals_are_older_than_deals_recorded_is_a_stale_copy() -> None:
    stored = StoredBalance(as_of=T0, received_at=T0, newest_deal=T0 + timedelta(hours=2))
    late_copy = report(T0 + timedelta(hours=3), deals_through=T0 + timedelta(hours=1))
    assert not balance_applies(stored, late_copy, T0 + timedelta(hours=3))


def test_a_report_reflecting_the_newest_deal_or_naming_none_is_applied() -> None:
    stored = StoredBalance(as_of=T0, received_at=T0, newest_deal=T0 + timedelta(hours=2))
    later = T0 + timedelta(hours=3)
    assert balance_applies(stored, report(later, deals_through=T0 + timedelta(hours=2)), later)
    assert balance_applies(stored, report(later), later)


def synced(*moments: datetime) -> list[tuple[datetime, uuid.UUID]]:
    return [(moment, uuid.uuid4()) for moment in moments]


JUNE, JULY = date(2024, 6, 1), date(2024, 7, 1)


def test_the_first_syncs_start_the_count_of_their_month() -> None:
    events = synced(T0, T0 + timedelta(hours=1))
    counted = count_syncs(MonthlySyncs(), events)
    assert (counted.month, counted.count) == (JUNE, 2)
    assert (counted.last_sync_at, counted.last_event_id) == max(events)


def test_syncs_of_the_same_month_add_to_its_count() -> None:
    stored = MonthlySyncs(JUNE, 5, T0, uuid.uuid4())
    assert count_syncs(stored, synced(T0 + timedelta(days=1))).count == 6


def test_a_newer_month_starts_the_count_over() -> None:
    stored = MonthlySyncs(JUNE, 5, T0, uuid.uuid4())
    july = datetime(2024, 7, 2, tzinfo=UTC)
    counted = count_syncs(stored, synced(july))
    assert (counted.month, counted.count) == (JULY, 1)


def test_a_late_event_of_an_older_month_changes_nothing() -> None:
    stored = MonthlySyncs(JULY, 3, datetime(2024, 7, 2, tzinfo=UTC), uuid.uuid4())
    assert count_syncs(stored, synced(T0)) == stored


def test_a_batch_spanning_months_counts_toward_the_latest_of_them() -> None:
    july = datetime(2024, 7, 1, 0, 30, tzinfo=UTC)
    counted = count_syncs(MonthlySyncs(JUNE, 4, T0, uuid.uuid4()), synced(T0, july, july))
    assert (counted.month, counted.count) == (JULY, 2)


def test_the_month_is_the_utc_one() -> None:
    late_june_in_utc = datetime(2024, 6, 30, 23, 30, tzinfo=UTC)
    assert count_syncs(MonthlySyncs(), synced(late_june_in_utc)).month == JUNE


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_events_in_any_order_count_alike(order: tuple[int, ...]) -> None:
    events = synced(T0, T0 + timedelta(days=30), T0 + timedelta(days=31))
    expected = count_syncs(MonthlySyncs(), events)
    assert count_syncs(MonthlySyncs(), [events[i] for i in order]) == expected
