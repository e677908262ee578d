"""The MetaApi sync's time cursor: where the next read starts (the newest deal handed over, less
the overlap), which deals in that overlap are skipped (by id), and its text surviving a save."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.shared.brokers.mt5.metaapi.cursor import (
    HISTORY_START,
    MAX_SEEN,
    HandedDeal,
    SyncCursor,
    deal_identity,
    read_cursor,
)

HOUR = timedelta(hours=1)
T0 = datetime(2024, 6, 3, 6, 0, tzinfo=UTC)


def handed(deal_id: str, minutes: float) -> HandedDeal:
    return HandedDeal(deal_id, T0 + timedelta(minutes=minutes))


def test_a_first_sync_reads_from_before_any_mt5_history() -> None:
    assert read_cursor(None).window_start(HOUR) == HISTORY_START


def test_the_next_read_starts_the_overlap_before_the_newest_deal_handed_over() -> None:
    cursor = SyncCursor().after([handed("1", 0), handed("2", 90), handed("3", 30)], HOUR)
    assert cursor.through == T0 + timedelta(minutes=90)
    assert cursor.window_start(HOUR) == T0 + timedelta(minutes=30)


def test_only_deals_within_the_overlap_are_remembered_and_each_once() -> None:
    cursor = SyncCursor().after([handed("1", 0), handed("2", 30), handed("3", 90)], HOUR)
    cursor = cursor.after([handed("3", 90), handed("4", 95)], HOUR)
    assert cursor.seen_ids() == {"3", "4"}
    assert [d.id for d in cursor.seen] == ["3", "4"]


def test_a_late_deal_older_than_the_newest_never_moves_the_cursor_back() -> None:
    cursor = SyncCursor().after([handed("1", 90)], HOUR).after([handed("2", 40)], HOUR)
    assert cursor.through == T0 + timedelta(minutes=90)
    assert cursor.seen_ids() == {"1", "2"}


def test_handing_over_nothing_leaves_the_cursor_as_it_was() -> None:
    cursor = SyncCursor().after([handed("1", 0)], HOUR)
    assert cursor.after([], HOUR) == cursor
    assert SyncCursor().after([], HOUR) == SyncCursor()


def test_what_is_remembered_is_bounded() -> None:
    burst = [handed(str(n), n / 1000) for n in range(MAX_SEEN + 10)]
    cursor = SyncCursor().after(burst, HOUR)
    assert len(cursor.seen) == MAX_SEEN
    assert "0" not in cursor.seen_ids() and str(MAX_SEEN + 9) in cursor.seen_ids()


def test_the_cursor_survives_its_text() -> None:
    cursor = SyncCursor().after([handed("33230099", 0.5), handed("33230100", 2)], HOUR)
    assert read_cursor(cursor.text()) == cursor
    assert read_cursor(SyncCursor().text()) == SyncCursor()


@pytest.mark.parametrize("text", ["", "12345", "{}", '{"through": "yesterday", "seen": []}'])
def test_a_cursor_of_another_form_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="MetaApi cursor"):
        read_cursor(text)


def test_a_deal_is_placed_by_its_id_and_utc_time_or_not_at_all() -> None:
    deal = {"id": "33230099", "time": "2020-04-15T02:45:06.521Z"}
    assert deal_identity(deal) == HandedDeal(
        "33230099", datetime(2020, 4, 15, 2, 45, 6, 521000, tzinfo=UTC)
    )
    assert deal_identity(deal | {"time": "2020-04-15 02:45:06"}) is None  # no zone: not UTC
    assert deal_identity(deal | {"id": 33230099}) is None
    assert deal_identity(["not", "a", "deal"]) is None
