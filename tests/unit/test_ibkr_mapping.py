"""IBKR Flex statements become canonical fills: executions only, in UTC, cancellations applied.

The real `<Trades>` rows are tests/fixtures/ibkr/ibkr_flex_trades_section.xml; the round trips,
DST offsets, cancellation and correction are tests/fixtures/constructed/ibkr_flex_round_trips.xml.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from services.shared.brokers import MappedEvent, broker, mapper_for
from services.shared.brokers.ibkr.flex import parse_flex_time
from services.shared.brokers.ibkr.mapping import map_event
from services.shared.canonical import CanonicalBatch, Fill
from services.shared.envelope import ConnectionRef, RawEvent
from services.shared.errors import InvalidEvent
from services.writer.journal import PositionFill, TradeAggregate, aggregate_position
from tests.support.builders import FIXTURES, PINNED_CONNECTION

RECEIVED_AT = datetime(2025, 2, 1, 13, 30, 5, tzinfo=UTC)
REAL = (FIXTURES / "ibkr" / "ibkr_flex_trades_section.xml").read_bytes()
ROUND_TRIPS = (FIXTURES / "constructed" / "ibkr_flex_round_trips.xml").read_bytes()
AAPL = "ibkr:U1234567:265598"
MSFT = "ibkr:U1234567:272093"


def connection(account: str) -> ConnectionRef:
    return PINNED_CONNECTION.model_copy(
        update={"broker": "ibkr", "account_number": account, "server": None}
    )


def event(body: bytes, account: str = "U1234567") -> RawEvent:
    return RawEvent.wrap(
        source="poller",
        connection=connection(account),
        received_at=RECEIVED_AT,
        delivery_id="ibkr:flex:20250201",
        body=body,
        content_type="application/xml",
    )


def mapping_of(body: bytes, account: str = "U1234567") -> MappedEvent:
    return map_event(event(body, account))


def mapped(body: bytes, account: str = "U1234567") -> CanonicalBatch:
    mapping = mapping_of(body, account)
    assert mapping.rejected == ()
    return mapping.batch


def invalid_event_code(body: bytes, account: str = "U1234567") -> str:
    with pytest.raises(InvalidEvent) as raised:
        map_event(event(body, account))
    return raised.value.code


def by_ref(batch: CanonicalBatch) -> dict[str, Fill]:
    return {f.broker_ref: f for f in batch.fills}


def statement(*rows: str, account: str = "U1234567") -> bytes:
    """A minimal Flex document around `<Trade>` rows."""
    return (
        '<FlexQueryResponse queryName="t" type="AF"><FlexStatements count="1">'
        f'<FlexStatement accountId="{account}" fromDate="20240101" toDate="20241231">'
        f"<Trades>{''.join(rows)}</Trades></FlexStatement></FlexStatements></FlexQueryResponse>"
    ).encode()


def trade(**attributes: str | None) -> str:
    """An execution row; keyword values override the defaults, None leaves one out."""
    defaults: dict[str, str | None] = {
        "accountId": "U1234567",
        "assetCategory": "STK",
        "symbol": "AAPL",
        "conid": "265598",
        "tradeID": "8001",
        "transactionID": "9801",
        "ibOrderID": "6001",
        "dateTime": "20240715;093512",
        "quantity": "100",
        "tradePrice": "190.00",
        "ibCommission": "-1.00",
        "taxes": "0",
        "fifoPnlRealized": "0",
        "openCloseIndicator": "O",
        "notes": "",
        "buySell": "BUY",
        "transactionType": "ExchTrade",
        "levelOfDetail": "EXECUTION",
    }
    row = defaults | attributes
    cells = " ".join(f'{k}="{v}"' for k, v in row.items() if v is not None)
    return f"<Trade {cells} />"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- the real Flex rows ---------------------------------------------------------------------


def test_the_real_assignment_row_is_an_execution_that_closes_the_option() -> None:
    [fill] = mapped(REAL, "U123456").fills
    assert fill.fill_key == "ibkr:U123456:exec:594763148"
    assert fill.position_key == "ibkr:U123456:83615386"
    assert (fill.symbol, fill.side, fill.entry) == ("VXX   110917C00005000", "buy", "out")
    assert (fill.volume, fill.price, fill.profit, fill.commission) == (
        Decimal(3),
        Decimal(0),  # an assignment books the option at zero
        Decimal(0),
        Decimal(0),
    )
    assert (fill.broker_ref, fill.order_ref, fill.comment) == ("594763148", "2381339439", "A")


def test_a_trade_date_and_time_in_new_york_summer_is_four_hours_behind_utc() -> None:
    [fill] = mapped(REAL, "U123456").fills
    assert fill.broker_time == "2011-08-11;162000"
    assert fill.executed_at == utc("2011-08-11T20:20:00")


def test_the_auto_fx_conversion_and_the_order_summary_are_skipped_and_recorded() -> None:
    skipped = mapping_of(REAL, "U123456").skipped
    assert [(s.index, s.type, s.id) for s in skipped] == [
        (1, "Trade", "1234567890"),
        (2, "Order", "1722040385"),
    ]
    assert "AFx" in skipped[0].reason
    assert "not an execution" in skipped[1].reason


# --- DST: Flex times are New York wall clock ------------------------------------------------


def test_a_july_execution_converts_with_minus_four_hours() -> None:
    fill = by_ref(mapped(ROUND_TRIPS))["7001"]
    assert fill.broker_time == "20240715;093512"
    assert fill.executed_at == utc("2024-07-15T13:35:12")


def test_a_january_execution_converts_with_minus_five_hours() -> None:
    fill = by_ref(mapped(ROUND_TRIPS))["7003"]
    assert fill.broker_time == "2025-01-15;100000"
    assert fill.executed_at == utc("2025-01-15T15:00:00")


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("20240715;093512", "2024-07-15T13:35:12"),
        ("2024-07-15;093512", "2024-07-15T13:35:12"),
        ("2024-07-15 09:35:12", "2024-07-15T13:35:12"),
        ("20240115;093512", "2024-01-15T14:35:12"),
        ("20241103;013000", "2024-11-03T05:30:00"),  # the repeated hour reads as EDT
        ("20240310;093000", "2024-03-10T13:30:00"),  # the morning the clocks went forward
    ],
)
def test_every_flex_date_time_format_reads_as_new_york_time(stamp: str, expected: str) -> None:
    [fill] = mapped(statement(trade(dateTime=stamp))).fills
    assert (fill.broker_time, fill.executed_at) == (stamp, utc(expected))


@pytest.mark.parametrize(
    "stamp",
    ["2024-08-01, 15:30:45", "20240801T153045", "2024/08/01;153045", "20240801;1530"],
)
def test_a_time_the_shared_parser_refuses_rejects_the_row(stamp: str) -> None:
    # The poll adapter reads trade times with the same `parse_flex_time`, so it refuses these
    # before they are published instead of letting them reach this rejection.
    with pytest.raises(InvalidEvent):
        parse_flex_time(stamp)
    [rejection] = mapping_of(statement(trade(dateTime=stamp))).rejected
    assert (rejection.code, rejection.index) == ("invalid_trade", 0)


def test_the_shared_parser_gives_the_new_york_wall_clock_as_written() -> None:
    assert parse_flex_time("20241103;013000") == datetime(2024, 11, 3, 1, 30, 0)
    assert parse_flex_time("2024-07-15 09:35:12").tzinfo is None


def test_without_date_time_the_trade_date_and_time_are_used() -> None:
    row = trade(dateTime=None, tradeDate="20250115", tradeTime="100000")
    [fill] = mapped(statement(row)).fills
    assert (fill.broker_time, fill.executed_at) == ("20250115;100000", utc("2025-01-15T15:00:00"))


# --- executions -----------------------------------------------------------------------------


def test_executions_are_keyed_by_trade_id_and_positions_by_instrument() -> None:
    fills = mapped(ROUND_TRIPS).fills
    assert [f.fill_key for f in fills] == [
        f"ibkr:U1234567:exec:{ref}" for ref in ("7001", "7002", "7003", "7004", "7006", "7007")
    ]
    assert [f.position_key for f in fills] == [AAPL] * 3 + [MSFT] * 3


def test_a_row_without_a_trade_id_is_keyed_by_its_transaction_id() -> None:
    [fill] = mapped(statement(trade(tradeID=""))).fills
    assert (fill.fill_key, fill.broker_ref) == ("ibkr:U1234567:exec:9801", "9801")


def test_an_instrument_without_a_conid_is_keyed_by_its_symbol() -> None:
    [fill] = mapped(statement(trade(conid=""))).fills
    assert fill.position_key == "ibkr:U1234567:AAPL"


def test_side_entry_and_amounts_come_from_the_row() -> None:
    fills = by_ref(mapped(ROUND_TRIPS))
    opening, closing = fills["7001"], fills["7002"]
    assert (opening.side, opening.entry, opening.volume, opening.price) == (
        "buy",
        "in",
        Decimal("100"),
        Decimal("190.00"),
    )
    assert (closing.side, closing.entry, closing.volume) == ("sell", "out", Decimal("100"))
    # IBKR's realized P/L is net of the charges: they are kept for reading, not booked twice.
    assert (str(closing.profit), closing.commission, closing.fee) == (
        "547.85",
        Decimal(0),
        Decimal(0),
    )
    assert closing.comment == "commission -1.02; taxes -0.13"
    assert closing.order_ref == "5002"
    assert fills["7003"].comment is not None and fills["7003"].comment.startswith("P")


@pytest.mark.parametrize(
    ("indicator", "buy_sell", "entry"),
    [
        ("O", "SELL", "in"),  # a short sale opens
        ("C", "BUY", "out"),  # buying it back closes
        ("C;O", "SELL", "inout"),  # closes a long and opens a short in one execution
        ("", "BUY", "in"),  # no indicator (FX rows): a buy opens...
        ("-", "SELL", "out"),  # ...and a sell closes
    ],
)
def test_open_close_indicator_decides_the_entry(indicator: str, buy_sell: str, entry: str) -> None:
    quantity = "100" if buy_sell == "BUY" else "-100"
    row = trade(openCloseIndicator=indicator, buySell=buy_sell, quantity=quantity)
    [fill] = mapped(statement(row)).fills
    assert (fill.entry, fill.side, fill.volume) == (entry, buy_sell.lower(), Decimal("100"))


def test_volume_is_contracts_not_multiplied_out() -> None:
    [fill] = mapped(statement(trade(assetCategory="OPT", multiplier="100", quantity="-3"))).fills
    assert fill.volume == Decimal("3")


# --- cancellations and corrections ----------------------------------------------------------


def test_a_cancelled_execution_is_its_own_fill_marked_cancelled() -> None:
    mapping = mapping_of(ROUND_TRIPS)
    fills = by_ref(mapping.batch)
    cancelled = fills["7004"]
    assert (cancelled.fill_key, cancelled.cancelled) == ("ibkr:U1234567:exec:7004", True)
    # The original's own row wins over what the cancellation reconstructs.
    assert (cancelled.side, cancelled.volume, cancelled.comment) == (
        "buy",
        Decimal("10"),
        "commission -1.00",
    )
    assert "7005" not in fills  # the cancellation is no execution of its own


def test_a_cancellation_without_its_original_stands_in_for_it_cancelled() -> None:
    cancel = trade(
        tradeID="8002",
        quantity="-100",
        ibCommission="1.00",
        notes="Ca",
        buySell="BUY (Ca.)",
        transactionType="TradeCancel",
        origTradeID="8001",
        origTradePrice="190.00",
        tradePrice="190.00",
    )
    [fill] = mapped(statement(cancel)).fills
    assert (fill.fill_key, fill.broker_ref, fill.cancelled) == (
        "ibkr:U1234567:exec:8001",
        "8001",
        True,
    )
    # It reverses the original: negated, its amounts are the original's.
    assert (fill.side, fill.volume, fill.profit) == ("buy", Decimal("100"), Decimal("0"))


def test_a_cancellation_arriving_before_its_original_still_cancels_it() -> None:
    cancel = trade(tradeID="8002", quantity="-100", notes="Ca", origTradeID="8001")
    [fill] = mapped(statement(cancel, trade())).fills
    assert (fill.fill_key, fill.cancelled, fill.comment) == (
        "ibkr:U1234567:exec:8001",
        True,
        "commission -1.00",
    )


def test_a_cancellation_naming_only_the_transaction_finds_the_original_in_the_document() -> None:
    cancel = trade(
        tradeID="8002", transactionID="9802", quantity="-100", notes="Ca", origTransactionID="9801"
    )
    [fill] = mapped(statement(trade(), cancel)).fills
    assert (fill.fill_key, fill.cancelled) == ("ibkr:U1234567:exec:8001", True)


def test_a_corrected_execution_cancels_the_original_and_is_added() -> None:
    fills = by_ref(mapped(ROUND_TRIPS))
    original, corrected = fills["7006"], fills["7007"]
    assert (original.cancelled, original.price) == (True, Decimal("410.00"))
    assert (corrected.cancelled, corrected.price, corrected.comment) == (
        False,
        Decimal("410.10"),
        "Co; commission -1.00",
    )


def test_a_correction_whose_original_is_not_here_cancels_it_by_its_trade_id() -> None:
    corrected = trade(tradeID="8003", notes="Co", origTradeID="8001", origTradePrice="189.00")
    original, fill = mapped(statement(corrected)).fills
    assert (original.fill_key, original.cancelled, original.price) == (
        "ibkr:U1234567:exec:8001",
        True,
        Decimal("189.00"),
    )
    assert (original.profit, original.commission) == (Decimal(0), Decimal(0))
    assert (fill.fill_key, fill.cancelled) == ("ibkr:U1234567:exec:8003", False)


@pytest.mark.parametrize(
    "row",
    [
        trade(tradeID="8002", quantity="-100", notes="Ca"),
        trade(tradeID="8002", notes="Co"),
    ],
    ids=["cancellation", "correction"],
)
def test_a_cancellation_or_correction_that_names_no_original_is_rejected(row: str) -> None:
    [rejection] = mapping_of(statement(row)).rejected
    assert rejection.code == "invalid_trade"
    assert "must name the trade" in rejection.detail


# --- rows that are not executions -----------------------------------------------------------


def test_order_summaries_zero_quantity_book_trades_and_closed_lots_are_skipped() -> None:
    skipped = mapping_of(ROUND_TRIPS).skipped
    assert [(s.index, s.type, s.id) for s in skipped] == [
        (3, "Order", "5003"),
        (8, "Trade", "7008"),
        (9, "Lot", "9002"),
    ]
    assert skipped[1].reason == "zero-quantity BookTrade moves no position"


@pytest.mark.parametrize("level", ["ORDER", "CLOSED_LOT", "SUMMARY"])
def test_a_trade_row_of_another_level_of_detail_is_skipped(level: str) -> None:
    mapping = mapping_of(statement(trade(levelOfDetail=level)))
    assert mapping.batch.fills == ()
    [skip] = mapping.skipped
    assert skip.reason == f"level of detail {level}, not EXECUTION"


def test_the_same_execution_twice_is_one_fill() -> None:
    mapping = mapping_of(statement(trade(), trade()))
    assert len(mapping.batch.fills) == 1
    assert [(s.index, s.reason) for s in mapping.skipped] == [(1, "the same execution again")]


# --- the journal: one instrument, two round trips -------------------------------------------


def journal(fills: tuple[Fill, ...]) -> dict[str, list[TradeAggregate]]:
    """The writer's pure step over the fills it would count (cancelled ones are not)."""
    names = PositionFill.__dataclass_fields__
    by_position: dict[str, list[PositionFill]] = {}
    for fill in fills:
        if not fill.cancelled:
            row = {k: v for k, v in fill.model_dump().items() if k in names}
            by_position.setdefault(fill.position_key, []).append(PositionFill(**row))
    return {key: aggregate_position(key, rows) for key, rows in by_position.items()}


def test_each_round_trip_of_one_instrument_is_its_own_journal_row() -> None:
    first, second = journal(mapped(ROUND_TRIPS).fills)[AAPL]
    assert (first.trade_id, first.status, first.volume, first.closed_volume) == (
        AAPL,
        "closed",
        Decimal("100"),
        Decimal("100"),
    )
    assert (first.entry_price, first.exit_price, first.profit) == (
        Decimal("190"),
        Decimal("195.5"),
        Decimal("547.85"),
    )
    assert (second.trade_id, second.status, second.volume) == (
        f"{AAPL}:7003",
        "open",
        Decimal("50"),
    )
    assert second.opened_at == utc("2025-01-15T15:00:00")


def test_cancelled_and_corrected_executions_leave_only_the_corrected_one_counted() -> None:
    [row] = journal(mapped(ROUND_TRIPS).fills)[MSFT]
    assert (row.status, row.volume, row.entry_price, row.fill_count) == (
        "open",
        Decimal("10"),
        Decimal("410.1"),
        1,
    )


# --- bad rows, bad documents ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"quantity": "lots"}, "quantity"),
        ({"quantity": ""}, "quantity"),
        ({"tradePrice": "1e3"}, "tradePrice"),
        ({"ibCommission": "NaN"}, "ibCommission"),
        ({"tradeID": "", "transactionID": ""}, "tradeID or transactionID"),
        ({"tradeID": "T-1"}, "tradeID"),
        ({"symbol": ""}, "symbol"),
        ({"buySell": "SHORT"}, "buySell"),
        ({"openCloseIndicator": "X"}, "openCloseIndicator"),
        ({"dateTime": "07/15/2024;093512"}, "time"),
        ({"dateTime": "20240231;093512"}, "time"),
        ({"dateTime": "", "tradeDate": "20240715"}, "dateTime or tradeDate+tradeTime"),
        ({"levelOfDetail": ""}, "levelOfDetail"),
    ],
)
def test_a_bad_row_is_rejected_alone_and_the_others_still_map(
    change: dict[str, str], fragment: str
) -> None:
    rows = [trade(tradeID="1"), trade(**({"tradeID": "2"} | change)), trade(tradeID="3")]
    mapping = mapping_of(statement(*rows))
    assert [f.broker_ref for f in mapping.batch.fills] == ["1", "3"]
    [rejection] = mapping.rejected
    assert (rejection.index, rejection.code) == (1, "invalid_trade")
    assert fragment in rejection.detail
    assert rejection.item["element"] == "Trade"


def test_a_row_of_another_account_is_rejected_alone() -> None:
    mapping = mapping_of(statement(trade(accountId="U7654321"), trade(tradeID="2")))
    assert [(r.index, r.code) for r in mapping.rejected] == [(0, "account_mismatch")]
    assert len(mapping.batch.fills) == 1


def test_a_statement_for_another_account_is_an_account_mismatch() -> None:
    assert invalid_event_code(REAL, "U999999") == "account_mismatch"


def test_a_response_with_a_second_statement_for_another_account_is_an_account_mismatch() -> None:
    two = REAL.replace(
        b"</FlexStatements>",
        b'<FlexStatement accountId="U999999"><Trades/></FlexStatement></FlexStatements>',
    )
    assert invalid_event_code(two, "U123456") == "account_mismatch"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<FlexQueryResponse>",
        b"not xml",
        b"<a></b>",
        "<FlexQueryResponse q='\u00e9'/>".encode("latin-1"),
    ],
)
def test_a_document_that_is_not_xml_is_malformed(body: bytes) -> None:
    assert invalid_event_code(body) == "malformed_xml"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
            b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
            b"<FlexQueryResponse>&lol2;</FlexQueryResponse>",
            id="billion laughs",
        ),
        pytest.param(
            b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><FlexQueryResponse>&x;'
            b"</FlexQueryResponse>",
            id="external entity",
        ),
        pytest.param(b"<FlexQueryResponse>&undefined;</FlexQueryResponse>", id="undefined entity"),
    ],
)
def test_entity_tricks_are_refused_before_anything_is_expanded(body: bytes) -> None:
    assert invalid_event_code(body) == "malformed_xml"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (
            b"<FlexStatementResponse><Status>Warn</Status><ErrorCode>1019</ErrorCode>"
            b"</FlexStatementResponse>",
            "ErrorCode=1019",
        ),
        (b'<FlexQueryResponse queryName="t"><FlexStatements count="0"/></FlexQueryResponse>',
         "no FlexStatement"),
    ],
)  # fmt: skip
def test_a_response_without_a_statement_is_an_invalid_payload(body: bytes, fragment: str) -> None:
    with pytest.raises(InvalidEvent) as raised:
        map_event(event(body))
    assert raised.value.code == "invalid_payload"
    assert fragment in raised.value.detail


# --- batch ----------------------------------------------------------------------------------


def test_the_batch_belongs_to_the_event_and_has_no_balance_snapshot() -> None:
    raw = event(ROUND_TRIPS)
    batch = map_event(raw).batch
    assert (batch.event_id, batch.source, batch.received_at) == (
        raw.event_id,
        "poller",
        RECEIVED_AT,
    )
    assert (batch.account, batch.cash_movements) == (None, ())


def test_mapping_the_same_document_twice_gives_the_same_mapping() -> None:
    raw = event(ROUND_TRIPS)
    assert map_event(raw) == map_event(raw)


def test_the_ibkr_mapper_is_found_by_broker_name() -> None:
    assert mapper_for("ibkr") == broker("ibkr").map
    assert broker("ibkr").map_event is map_event
