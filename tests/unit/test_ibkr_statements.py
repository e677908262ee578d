"""Handing a Flex statement over, pure: trade times (read as the mapper reads them), the digest
that makes an unchanged statement the same event, the period check, the parts a large statement
is cut into, and each part's cursor."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import defusedxml.ElementTree as SafeET
import pytest

from services.shared.brokers.errors import PeriodGap, UnexpectedResponse
from services.shared.brokers.ibkr.flex import parse_flex_time
from services.shared.brokers.ibkr.mapping import map_event
from services.shared.brokers.ibkr.statements import (
    check_period,
    delivery_id,
    digest_statement,
    normalize_timestamp,
    part_cursors,
    read_cursor,
    row_timestamp,
    statement_accounts,
    statement_parts,
)
from services.shared.canonical import Fill
from services.shared.envelope import RawEvent
from services.shared.errors import InvalidEvent, PermanentError
from tests.support.builders import FIXTURES, PINNED_CONNECTION
from tests.support.fake_flex import execution, flex_statement

ROUND_TRIPS = (FIXTURES / "constructed" / "ibkr_flex_round_trips.xml").read_bytes()

NEW_TRADE = (
    '<Trade accountId="U123456" currency="USD" symbol="AAPL" dateTime="20240805;101500" '
    'tradeDate="20240805" quantity="10" tradePrice="210.5" buySell="BUY" '
    'levelOfDetail="EXECUTION" />'
)


@pytest.mark.parametrize(
    ("written", "normalized"),
    [
        ("20240801;153045", "20240801;153045"),
        ("2024-08-01;153045", "20240801;153045"),
        ("2021-02-03 10:01:50", "20210203;100150"),
        ("2024-08-01,15:30:45", "20240801;153045"),
        ("20240801153045", "20240801;153045"),
    ],
)
def test_flex_trade_times_are_read_in_the_formats_the_mapper_reads(
    written: str, normalized: str
) -> None:
    assert normalize_timestamp(written) == normalized
    assert parse_flex_time(written).strftime("%Y%m%d;%H%M%S") == normalized


# Each of these the mapper refuses: the adapter must refuse it too, not hand it downstream.
MAPPER_REFUSES = [
    "2024-08-01, 15:30:45",
    "20240801T153045",
    "2024/08/01;153045",
    "20240801;1530",
    "2021-02-03, 10:01",
    "20110811",
    "08/01/2024;153045",
    "01-Aug-24",
    "20241301;000000",
    "x",
]


@pytest.mark.parametrize("written", MAPPER_REFUSES)
def test_a_format_the_mapper_refuses_is_not_guessed(written: str) -> None:
    with pytest.raises(InvalidEvent):
        parse_flex_time(written)
    assert normalize_timestamp(written) is None


@pytest.mark.parametrize("written", MAPPER_REFUSES[:4])
def test_a_trade_time_the_mapper_refuses_stops_the_poll_naming_the_format(written: str) -> None:
    with pytest.raises(UnexpectedResponse) as caught:
        row_timestamp({"dateTime": written})
    assert isinstance(caught.value, PermanentError)
    assert repr(written) in str(caught.value)
    assert "yyyyMMdd or yyyy-MM-dd, then HHmmss or HH:mm:ss" in str(caught.value)


def test_a_row_without_datetime_is_placed_by_trade_date_and_time() -> None:
    assert row_timestamp({"tradeDate": "2011-08-11", "tradeTime": "162000"}) == "20110811;162000"
    assert row_timestamp({"tradeDate": "20110811"}) == "20110811;000000"
    assert row_timestamp({"symbol": "summary row"}) is None


def test_a_row_in_an_unreadable_date_format_stops_the_poll_with_the_fix() -> None:
    with pytest.raises(UnexpectedResponse, match="set the Flex query's date format to yyyyMMdd"):
        row_timestamp({"dateTime": "08/01/2024;153045"})


def test_the_sample_statement_is_one_account_three_rows_newest_on_2024_08_01() -> None:
    root = SafeET.fromstring(flex_statement())
    digest = digest_statement(root)
    assert statement_accounts(root) == ["U123456"]
    assert digest.trade_rows == 3
    assert digest.newest_trade == "20240801;153045"


def test_the_same_trades_generated_again_are_the_same_delivery() -> None:
    first = digest_statement(SafeET.fromstring(flex_statement(generated="20240802;083000")))
    again = digest_statement(SafeET.fromstring(flex_statement(generated="20240803;090000")))
    assert first.trades_sha256 == again.trades_sha256
    assert delivery_id("U123456", first.trades_sha256).startswith("ibkr:U123456:")
    assert len(delivery_id("U123456", first.trades_sha256).split(":")[2]) == 32


def test_a_new_trade_is_a_new_delivery_and_moves_the_newest_time() -> None:
    before = digest_statement(SafeET.fromstring(flex_statement()))
    after = digest_statement(SafeET.fromstring(flex_statement(extra_rows=[NEW_TRADE])))
    assert after.trades_sha256 != before.trades_sha256
    assert after.newest_trade == "20240805;101500"


def test_a_cursor_is_a_normalized_trade_time() -> None:
    assert read_cursor(None) is None
    assert read_cursor("20240801;153045") == "20240801;153045"
    with pytest.raises(ValueError, match="yyyyMMdd;HHmmss"):
        read_cursor("2024-08-01")


def test_a_statement_starting_on_a_later_day_than_the_cursor_is_a_gap_to_fix() -> None:
    root = SafeET.fromstring(flex_statement(from_date="20240805"))

    gap = check_period(root, "20240801;153045")

    assert isinstance(gap, PeriodGap)
    message = str(gap)
    assert "2024-08-05" in message and "2024-08-01 15:30:45" in message
    assert "widen the Flex query's period to start on or before 2024-08-01" in message
    assert "re-run the history" in message


@pytest.mark.parametrize("from_date", ["20240801", "2024-08-01", "2011-08-11", ""])
def test_a_statement_reaching_back_to_the_cursor_s_day_leaves_no_gap(from_date: str) -> None:
    root = SafeET.fromstring(flex_statement(from_date=from_date))
    assert check_period(root, "20240801;153045") is None


def test_without_a_cursor_any_period_will_do() -> None:
    assert check_period(SafeET.fromstring(flex_statement(from_date="20991231")), None) is None


def test_a_period_start_in_a_format_the_mapper_refuses_stops_the_poll() -> None:
    root = SafeET.fromstring(flex_statement(from_date="08/01/2024"))
    with pytest.raises(UnexpectedResponse, match="fromDate '08/01/2024'"):
        check_period(root, "20240801;153045")


def fills_of(*bodies: bytes) -> dict[str, Fill]:
    """Every fill the mapper makes of these bodies, by key, rejections not allowed."""
    found: dict[str, Fill] = {}
    for body in bodies:
        mapping = map_event(
            RawEvent.wrap(
                source="poller",
                connection=PINNED_CONNECTION.model_copy(
                    update={"broker": "ibkr", "account_number": "U1234567", "server": None}
                ),
                received_at=datetime(2025, 2, 1, tzinfo=UTC),
                delivery_id="d",
                body=body,
                content_type="application/xml",
            )
        )
        assert mapping.rejected == ()
        for fill in mapping.batch.fills:
            assert fill.fill_key not in found, "an execution is in one part only"
            found[fill.fill_key] = fill
    return found


def rows_of(body: bytes) -> list[dict[str, str]]:
    sections = SafeET.fromstring(body).iter("Trades")
    return [dict(row.attrib) for section in sections for row in section]


def test_a_statement_within_the_budget_is_one_part_handed_over_verbatim() -> None:
    root = SafeET.fromstring(ROUND_TRIPS)
    (part,) = statement_parts(ROUND_TRIPS, root, len(ROUND_TRIPS))
    assert part.body == ROUND_TRIPS
    assert part.trades_sha256 == digest_statement(root).trades_sha256
    assert part.newest_trade == "20250120;162000"


def test_a_statement_over_the_budget_is_cut_into_valid_statements_under_it() -> None:
    budget = 4000
    parts = statement_parts(ROUND_TRIPS, SafeET.fromstring(ROUND_TRIPS), budget)

    assert len(parts) > 1
    assert all(len(part.body) <= budget for part in parts)
    original = SafeET.fromstring(ROUND_TRIPS)
    [original_statement] = original.findall("./FlexStatements/FlexStatement")
    for part in parts:
        root = SafeET.fromstring(part.body)
        assert (root.tag, root.attrib) == (original.tag, original.attrib)
        [statement] = root.findall("./FlexStatements/FlexStatement")
        assert statement.attrib == original_statement.attrib
    # Every row exactly once, each part in document order.
    assert sorted(row["transactionID"] for p in parts for row in rows_of(p.body)) == sorted(
        row["transactionID"] for row in rows_of(ROUND_TRIPS)
    )
    assert fills_of(*(part.body for part in parts)) == fills_of(ROUND_TRIPS)


def test_an_execution_its_cancellation_correction_and_closed_lots_stay_in_one_part() -> None:
    parts = statement_parts(ROUND_TRIPS, SafeET.fromstring(ROUND_TRIPS), 1)  # a part per group

    def part_of(transaction: str) -> int:
        [index] = [
            i
            for i, part in enumerate(parts)
            if transaction in [row.get("transactionID") for row in rows_of(part.body)]
        ]
        return index

    assert len(parts) > 3
    assert part_of("9004") == part_of("9005")  # MSFT bought, and that execution cancelled
    assert part_of("9006") == part_of("9007")  # MSFT bought, and that execution corrected
    # The AAPL sale (transaction 9002) and the CLOSED_LOT that names it: both in one part.
    sale = rows_of(parts[part_of("9002")].body)
    assert [row["levelOfDetail"] for row in sale if row.get("transactionID") == "9002"] == [
        "EXECUTION",
        "CLOSED_LOT",
    ]


def test_parts_go_out_in_the_order_of_their_newest_row() -> None:
    rows = [
        execution(8000 + n, f"202408{1 + n % 28:02d};1{n % 60:05d}", conid=300000 + n)
        for n in range(60)
    ]
    body = flex_statement(extra_rows=rows)
    parts = statement_parts(body, SafeET.fromstring(body), 6000)

    newest = [part.newest_trade for part in parts]
    assert len(parts) > 3 and newest == sorted(newest)
    for part in parts:
        stamps = [row_timestamp(row) for row in rows_of(part.body)]
        assert part.newest_trade == max(stamp for stamp in stamps if stamp is not None)


def test_each_part_s_cursor_is_its_newest_row_unless_the_next_shares_that_second() -> None:
    assert part_cursors(["20240801;100000", "20240802;000000", "20240802;000000"]) == [
        "20240801;100000",
        "20240801;235959",
        "20240802;000000",
    ]
    assert part_cursors([]) == []


def test_a_part_is_the_same_delivery_whatever_else_was_generated() -> None:
    rows = [execution(8000 + n, f"20240802;1{n:05d}", conid=300000 + n) for n in range(30)]
    first = flex_statement(extra_rows=rows, generated="20240802;083000")
    again = flex_statement(extra_rows=rows, generated="20240803;090000")

    def ids(body: bytes) -> list[str]:
        return [p.trades_sha256 for p in statement_parts(body, SafeET.fromstring(body), 3000)]

    assert ids(first) == ids(again)
    assert len(set(ids(first))) == len(ids(first)) > 1


def test_a_large_statement_in_another_shape_is_not_guessed_at() -> None:
    body = ET.tostring(ET.Element("FlexQueryResponse"), encoding="utf-8")
    with pytest.raises(UnexpectedResponse, match="without FlexStatements"):
        statement_parts(body + b" " * 100, SafeET.fromstring(body), 10)
