"""OANDA v20 transaction pages become canonical fills, cash movements and a balance snapshot.

Expected values are read off the real OANDA samples under tests/fixtures/oanda/ (each wrapped in
the poller's page envelope) and a constructed page under tests/fixtures/constructed/.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest

from services.shared.brokers import Skipped, broker, mapper_for
from services.shared.brokers.oanda.mapping import map_event, split_by_units
from services.shared.canonical import CanonicalBatch, CashMovement, Fill
from services.shared.dead_letters import json_safe
from services.shared.envelope import ConnectionRef, RawEvent
from services.shared.errors import InvalidEvent
from services.writer.journal import (
    PositionCharge,
    PositionFill,
    TradeAggregate,
    aggregate_position,
)
from tests.support.builders import FIXTURES, PINNED_CONNECTION

ACCOUNT = "101-004-1435156-001"
RECEIVED_AT = datetime(2024, 6, 4, 9, 0, 5, 250_000, tzinfo=UTC)


def sample(name: str) -> Any:
    """A real OANDA response, exactly as stored."""
    return json.loads((FIXTURES / "oanda" / name).read_text())


def constructed_page() -> dict[str, Any]:
    text = (FIXTURES / "constructed" / "oanda_open_reduce_close_page.json").read_text()
    document: dict[str, Any] = json.loads(text)
    return document


def connection(account: str = ACCOUNT, connection_type: str = "demo") -> ConnectionRef:
    return PINNED_CONNECTION.model_copy(
        update={
            "broker": "oanda",
            "account_number": account,
            "server": None,
            "connection_type": connection_type,
        }
    )


def page(
    transactions: list[Any],
    *,
    account_id: str = ACCOUNT,
    account: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The poller's page envelope around OANDA transactions, as the contract writes it."""
    ids = [t["id"] for t in transactions if isinstance(t, dict) and "id" in t] or ["1"]
    return {
        "kind": "oanda.transactions",
        "accountID": account_id,
        "environment": "practice",
        "from_id": ids[0],
        "to_id": ids[-1],
        "lastTransactionID": ids[-1],
        "transactions": transactions,
        "account": account,
        "openTrades": None if account is None else [],
    } | fields


def event(payload: dict[str, Any] | bytes, conn: ConnectionRef | None = None) -> RawEvent:
    return RawEvent.wrap(
        source="poller",
        connection=conn or connection(),
        received_at=RECEIVED_AT,
        delivery_id="oanda:2304-2311",
        body=payload if isinstance(payload, bytes) else orjson.dumps(payload),
    )


def mapped(payload: dict[str, Any], conn: ConnectionRef | None = None) -> CanonicalBatch:
    mapping = map_event(event(payload, conn))
    assert mapping.rejected == ()
    return mapping.batch


def invalid_event_code(payload: dict[str, Any] | bytes, conn: ConnectionRef | None = None) -> str:
    with pytest.raises(InvalidEvent) as raised:
        map_event(event(payload, conn))
    return raised.value.code


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def open_fill_page() -> tuple[dict[str, Any], ConnectionRef]:
    response = sample("order_fill_open_2022_real.json")
    account = response["orderFillTransaction"]["accountID"]
    transactions = [response["orderCreateTransaction"], response["orderFillTransaction"]]
    return page(transactions, account_id=account), connection(account)


def one_fill_page(name: str) -> tuple[dict[str, Any], ConnectionRef]:
    response = sample(name)
    fill = response["orderFillTransaction"]
    return page([fill], account_id=fill["accountID"]), connection(fill["accountID"])


# --- ORDER_FILL legs, from real responses ---------------------------------------------------


def test_a_real_opening_fill_is_an_in_fill_of_the_trade_it_opened() -> None:
    payload, conn = open_fill_page()
    [fill] = mapped(payload, conn).fills
    prefix = "oanda:101-001-22536936-001"
    assert (fill.fill_key, fill.position_key) == (f"{prefix}:txn:1990:open:1990", f"{prefix}:1990")
    assert (fill.symbol, fill.side, fill.entry) == ("EUR_USD", "buy", "in")
    assert (str(fill.volume), str(fill.price)) == ("1", "1.05260")
    assert (fill.broker_ref, fill.order_ref, fill.comment) == ("1990", "1989", "MARKET_ORDER")


def test_a_nanosecond_time_is_kept_raw_and_truncated_to_microseconds_in_utc() -> None:
    payload, conn = open_fill_page()
    [fill] = mapped(payload, conn).fills
    assert fill.broker_time == "2022-06-17T05:44:42.531693051Z"
    assert fill.executed_at == utc("2022-06-17T05:44:42.531693")


def test_the_order_that_was_filled_is_skipped_and_recorded() -> None:
    payload, conn = open_fill_page()
    mapping = map_event(event(payload, conn))
    assert [(s.index, s.type, s.id) for s in mapping.skipped] == [(0, "MARKET_ORDER", "1989")]


def test_a_real_partial_close_reduces_the_short_trade_with_its_profit_and_financing() -> None:
    payload, conn = one_fill_page("order_fill_trade_reduced_partial_close.json")
    [fill] = mapped(payload, conn).fills
    prefix = "oanda:101-305-3091856-001"
    assert (fill.fill_key, fill.position_key) == (
        f"{prefix}:txn:1042:reduce:1030",
        f"{prefix}:1030",
    )
    # Trade 1030 was short: reducing it buys back, so the leg's units are positive.
    assert (fill.side, fill.entry, str(fill.volume)) == ("buy", "out", "5")
    assert (str(fill.profit), str(fill.swap)) == ("14.0000", "-0.1519")
    assert str(fill.price) == "10131.6"  # the leg has no price of its own: the fill's
    assert fill.order_ref == "1041"


def test_a_real_full_close_of_a_long_trade_sells_it() -> None:
    payload, conn = one_fill_page("trade_close_full_response.json")
    [fill] = mapped(payload, conn).fills
    assert fill.fill_key == f"oanda:{ACCOUNT}:txn:2317:close:2313"
    assert fill.position_key == f"oanda:{ACCOUNT}:2313"
    assert (fill.side, fill.entry, str(fill.volume)) == ("sell", "out", "100")
    assert (str(fill.profit), str(fill.price)) == ("-0.1455", "1.09289")
    assert fill.executed_at == utc("2016-10-28T15:11:58.023004")


def test_a_fill_without_commission_fields_charges_nothing() -> None:
    payload, conn = one_fill_page("trade_close_full_response.json")
    [fill] = mapped(payload, conn).fills
    assert (fill.commission, fill.fee) == (Decimal(0), Decimal(0))


# --- one fill, several trades ---------------------------------------------------------------

MULTI_LEG = {
    "id": "4000",
    "accountID": ACCOUNT,
    "time": "2024-03-07T12:00:00.000000000Z",
    "type": "ORDER_FILL",
    "orderID": "3999",
    "instrument": "EUR_USD",
    "units": "-25",
    "price": "1.09000",
    "commission": "0.1001",
    "guaranteedExecutionFee": "0.0010",
    "tradesClosed": [
        {"tradeID": "3001", "units": "-10", "price": "1.09010", "realizedPL": "0.0200",
         "financing": "-0.0004"},
        {"tradeID": "3002", "units": "-5", "realizedPL": "-0.0100", "financing": "0.0000"},
    ],
    "tradeOpened": {"tradeID": "4000", "units": "-10", "price": "1.08990"},
}  # fmt: skip


def test_one_fill_that_closes_two_trades_and_opens_one_is_three_fills() -> None:
    fills = mapped(page([MULTI_LEG])).fills
    prefix = f"oanda:{ACCOUNT}"
    assert [(f.fill_key, f.position_key, f.entry, f.side, str(f.volume)) for f in fills] == [
        (f"{prefix}:txn:4000:close:3001", f"{prefix}:3001", "out", "sell", "10"),
        (f"{prefix}:txn:4000:close:3002", f"{prefix}:3002", "out", "sell", "5"),
        (f"{prefix}:txn:4000:open:4000", f"{prefix}:4000", "in", "sell", "10"),
    ]
    assert [str(f.price) for f in fills] == ["1.09010", "1.09000", "1.08990"]
    assert [(str(f.profit), str(f.swap)) for f in fills] == [
        ("0.0200", "-0.0004"),
        ("-0.0100", "0.0000"),
        ("0", "0"),
    ]
    assert {(f.broker_ref, f.order_ref) for f in fills} == {("4000", "3999")}


def test_a_fills_commission_is_shared_by_units_and_the_last_leg_takes_the_remainder() -> None:
    fills = mapped(page([MULTI_LEG])).fills
    # 0.1001 over 10 : 5 : 10 units; charges are negative, as they take money away.
    assert [str(f.commission) for f in fills] == ["-0.0400", "-0.0200", "-0.0401"]
    assert sum((f.commission for f in fills), Decimal(0)) == Decimal("-0.1001")


def test_the_guaranteed_execution_fee_is_shared_the_same_way_as_a_fee() -> None:
    fills = mapped(page([MULTI_LEG])).fills
    assert [str(f.fee) for f in fills] == ["-0.0004", "-0.0002", "-0.0004"]
    assert sum((f.fee for f in fills), Decimal(0)) == Decimal("-0.0010")


@pytest.mark.parametrize(
    ("total", "units", "shares"),
    [
        ("0.10", ["1", "1", "1"], ["0.03", "0.03", "0.04"]),
        ("-1", ["-2", "1"], ["-1", "0"]),
        ("0.0000", ["5", "-5"], ["0.0000", "0.0000"]),
        ("7.5", ["1"], ["7.5"]),
    ],
)
def test_splitting_an_amount_by_units_always_sums_to_the_amount(
    total: str, units: list[str], shares: list[str]
) -> None:
    split = split_by_units(Decimal(total), [Decimal(u) for u in units])
    assert [str(s) for s in split] == shares
    assert sum(split, Decimal(0)) == Decimal(total)


# --- the journal: open 10, reduce 4, close 6 ------------------------------------------------


def journal(
    fills: tuple[Fill, ...], cash: tuple[CashMovement, ...] = ()
) -> dict[str, list[TradeAggregate]]:
    """The writer's pure step over these fills and position charges, per position."""
    names = PositionFill.__dataclass_fields__
    by_position: dict[str, list[PositionFill]] = {}
    for fill in fills:
        row = {k: v for k, v in fill.model_dump().items() if k in names}
        by_position.setdefault(fill.position_key, []).append(PositionFill(**row))
    charges: dict[str, list[PositionCharge]] = {}
    for movement in cash:
        if movement.position_key is not None:
            charges.setdefault(movement.position_key, []).append(
                PositionCharge(
                    movement_key=movement.movement_key,
                    position_key=movement.position_key,
                    kind=movement.kind,
                    amount=movement.amount,
                    executed_at=movement.executed_at,
                )
            )
    return {
        key: aggregate_position(key, rows, charges.get(key, ()))
        for key, rows in by_position.items()
    }


def test_open_reduce_close_of_one_trade_is_one_closed_journal_row() -> None:
    batch = mapped(constructed_page())
    key = f"oanda:{ACCOUNT}:3001"
    assert [(f.entry, str(f.volume)) for f in batch.fills] == [
        ("in", "10"),
        ("out", "4"),
        ("out", "6"),
    ]
    [row] = journal(batch.fills, batch.cash_movements)[key]
    assert (row.trade_id, row.status, row.side) == (key, "closed", "buy")
    assert (row.volume, row.closed_volume) == (Decimal("10"), Decimal("10"))
    # The legs' own financing (-0.0001, -0.0003) and the daily financing of the open trade
    # (-0.0002): OANDA's own TradeSummary financing, and the page's account financing.
    assert (row.profit, row.swap) == (Decimal("0.0340"), Decimal("-0.0006"))
    assert (row.entry_price, row.exit_price) == (Decimal("1.1"), Decimal("1.1034"))
    assert row.opened_at == utc("2024-03-04T10:00:00.123456")
    assert row.closed_at == utc("2024-03-06T09:15:30.987654")
    assert row.fill_count == 3


def test_after_the_reduce_alone_the_trade_is_open_with_what_was_closed() -> None:
    batch = mapped(constructed_page())
    [row] = journal(batch.fills[:2])[f"oanda:{ACCOUNT}:3001"]
    assert (row.status, row.volume, row.closed_volume) == ("open", Decimal("10"), Decimal("4"))
    assert row.profit == Decimal("0.0100")


def test_the_constructed_page_books_daily_financing_to_the_trade_and_skips_its_orders() -> None:
    mapping = map_event(event(constructed_page()))
    [financing] = mapping.batch.cash_movements
    assert (financing.kind, str(financing.amount)) == ("financing", "-0.0002")
    assert financing.movement_key == f"oanda:{ACCOUNT}:txn:3004:trade:3001"
    assert financing.position_key == f"oanda:{ACCOUNT}:3001"
    assert [(s.type, s.id) for s in mapping.skipped] == [
        ("MARKET_ORDER", "3000"),
        ("MARKET_ORDER", "3002"),
        ("MARKET_ORDER", "3005"),
    ]


# --- cash movements -------------------------------------------------------------------------


def cash_transaction(kind: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": "5000",
        "accountID": ACCOUNT,
        "time": "2024-03-08T21:00:00.000000000Z",
        "type": kind,
        "accountBalance": "1000.0000",
    } | fields


@pytest.mark.parametrize(
    ("transaction", "kind", "amount"),
    [
        (cash_transaction("DAILY_FINANCING", financing="-1.2345"), "financing", "-1.2345"),
        (cash_transaction("TRANSFER_FUNDS", amount="500.0000"), "deposit", "500.0000"),
        (cash_transaction("TRANSFER_FUNDS", amount="-20.0000"), "withdrawal", "-20.0000"),
        (
            cash_transaction("DIVIDEND_ADJUSTMENT", dividendAdjustment="0.4200"),
            "dividend",
            "0.4200",
        ),
    ],
)
def test_money_transactions_become_cash_movements_of_their_kind(
    transaction: dict[str, Any], kind: str, amount: str
) -> None:
    batch = mapped(page([transaction]))
    assert batch.fills == ()
    [movement] = batch.cash_movements
    assert (movement.kind, str(movement.amount)) == (kind, amount)
    assert (movement.movement_key, movement.broker_ref) == (f"oanda:{ACCOUNT}:txn:5000", "5000")
    assert movement.broker_time == "2024-03-08T21:00:00.000000000Z"


def test_a_transfer_keeps_its_comment_or_else_its_funding_reason() -> None:
    commented = cash_transaction("TRANSFER_FUNDS", amount="1", comment="wire", fundingReason="X")
    reasoned = cash_transaction("TRANSFER_FUNDS", id="5001", amount="1", fundingReason="ADJUSTMENT")
    first, second = mapped(page([commented, reasoned])).cash_movements
    assert (first.comment, second.comment) == ("wire", "ADJUSTMENT")


# --- what is skipped ------------------------------------------------------------------------


def test_a_page_of_orders_cancels_and_configuration_maps_nothing_and_skips_everything() -> None:
    transactions = sample("transactions_sinceid.json")["transactions"]
    mapping = map_event(event(page(transactions)))
    assert (mapping.batch.fills, mapping.batch.cash_movements, mapping.rejected) == ((), (), ())
    assert mapping.skipped == (
        Skipped(0, "LIMIT_ORDER", "2307", "not a fill or a cash movement"),
        Skipped(1, "ORDER_CANCEL", "2308", "not a fill or a cash movement"),
        Skipped(2, "LIMIT_ORDER", "2309", "not a fill or a cash movement"),
        Skipped(3, "CLIENT_CONFIGURE", "2310", "not a fill or a cash movement"),
        Skipped(4, "CLIENT_CONFIGURE", "2311", "not a fill or a cash movement"),
    )


def test_an_idrange_page_skips_its_order_edits() -> None:
    transactions = sample("transactions_idrange.json")["transactions"]
    mapping = map_event(event(page(transactions)))
    assert [s.type for s in mapping.skipped] == [
        "LIMIT_ORDER",
        "ORDER_CLIENT_EXTENSIONS_MODIFY",
        "ORDER_CANCEL",
    ]


def test_heartbeats_are_skipped_and_the_fills_around_them_still_map() -> None:
    heartbeats = sample("transactions_stream_heartbeats.json")[:2]
    payload, conn = one_fill_page("trade_close_full_response.json")
    payload["transactions"] = [heartbeats[0], *payload["transactions"], heartbeats[1]]
    mapping = map_event(event(payload, conn))
    assert [f.broker_ref for f in mapping.batch.fills] == ["2317"]
    assert [(s.index, s.type, s.id) for s in mapping.skipped] == [
        (0, "HEARTBEAT", None),
        (2, "HEARTBEAT", None),
    ]


# --- the account snapshot -------------------------------------------------------------------


def test_the_summary_on_the_last_page_is_the_balance_snapshot() -> None:
    transactions = sample("transactions_sinceid.json")["transactions"]
    account = sample("account_summary.json")["account"]
    snapshot = mapped(page(transactions, account=account)).account
    assert snapshot is not None
    assert (snapshot.currency, str(snapshot.balance), str(snapshot.equity)) == (
        "EUR",
        "35454.4740",
        "35454.4740",
    )
    assert snapshot.as_of == RECEIVED_AT


def test_the_snapshot_reflects_the_newest_transaction_of_its_page() -> None:
    transactions = sample("transactions_sinceid.json")["transactions"]
    account = sample("account_summary.json")["account"]
    snapshot = mapped(page(transactions, account=account)).account
    assert snapshot is not None
    assert snapshot.deals_through == utc("2016-10-26T13:28:13.597103")


def test_a_page_before_the_last_carries_no_snapshot() -> None:
    assert mapped(page(sample("transactions_idrange.json")["transactions"])).account is None


def test_a_summary_of_another_account_is_an_account_mismatch() -> None:
    account = sample("account_summary.json")["account"] | {"id": "101-004-1435156-002"}
    assert invalid_event_code(page([], account=account)) == "account_mismatch"


@pytest.mark.parametrize(
    "change",
    [
        {"balance": 35454.474},
        {"NAV": None},
        {"currency": ""},
        {"balance": "lots"},
        {"balance": "1" + "0" * 15},  # beyond what the journal holds: refused, never altered
    ],
)
def test_a_summary_with_a_bad_balance_is_rejected_and_the_transactions_still_map(
    change: dict[str, Any],
) -> None:
    account = sample("account_summary.json")["account"] | change
    mapping = map_event(event(page([MULTI_LEG], account=account)))
    [rejection] = mapping.rejected
    assert (rejection.code, rejection.index, rejection.location) == (
        "invalid_payload",
        None,
        "account",
    )
    assert mapping.batch.account is None
    assert {f.broker_ref for f in mapping.batch.fills} == {"4000"}


# --- one bad transaction does not sink the page ---------------------------------------------


def closing_fill() -> dict[str, Any]:
    fill: dict[str, Any] = sample("trade_close_full_response.json")["orderFillTransaction"]
    return fill


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"units": -100}, "units"),  # a JSON number where OANDA writes a string
        ({"price": "1.09289e0"}, "price"),
        ({"commission": "NaN"}, "commission"),
        ({"time": "1477667518.023004583"}, "time"),  # the UNIX time format
        ({"time": "2016-13-28T15:11:58Z"}, "time"),
        ({"id": 2317}, "id"),
        ({"instrument": ""}, "instrument"),
        ({"tradesClosed": [{"units": "-100", "realizedPL": "0", "financing": "0"}]}, "tradeID"),
        ({"tradesClosed": [{"tradeID": "2313", "units": "-100", "financing": "0"}]}, "realizedPL"),
        ({"tradesClosed": [{"tradeID": "2313", "units": "0", "realizedPL": "0",
                            "financing": "0"}]}, "units must not be 0"),
        ({"tradesClosed": []}, "opened, closed and reduced nothing"),
    ],
)  # fmt: skip
def test_a_malformed_fill_is_rejected_alone_and_the_others_still_map(
    change: dict[str, Any], fragment: str
) -> None:
    good_before = cash_transaction("DAILY_FINANCING", id="2300", financing="-0.5000")
    bad = closing_fill() | change
    good_after = MULTI_LEG
    mapping = map_event(event(page([good_before, bad, good_after])))
    assert [m.broker_ref for m in mapping.batch.cash_movements] == ["2300"]
    assert {f.broker_ref for f in mapping.batch.fills} == {"4000"}
    [rejection] = mapping.rejected
    assert (rejection.index, rejection.code) == (1, "invalid_transaction")
    assert fragment in rejection.detail
    assert rejection.item["orderID"] == "2316"


def test_a_float_amount_is_rejected_not_rounded() -> None:
    raw = orjson.dumps(page([closing_fill()])).replace(b'"price":"1.09289"', b'"price":1.09289')
    [rejection] = map_event(event(raw)).rejected
    assert "price" in rejection.detail
    # Described in its dead letter as the exact text it was sent as.
    assert json_safe(rejection.item)["price"] == "1.09289"
    json.dumps(json_safe(rejection.item))


def test_a_fill_with_no_price_anywhere_is_rejected() -> None:
    bad = {k: v for k, v in closing_fill().items() if k != "price"}
    [rejection] = map_event(event(page([bad]))).rejected
    assert rejection.detail == "trade 2313: no price"


def test_a_transaction_of_another_account_is_rejected_alone() -> None:
    other = closing_fill() | {"accountID": "101-004-1435156-002"}
    mapping = map_event(event(page([other, MULTI_LEG])))
    assert [(r.index, r.code) for r in mapping.rejected] == [(0, "account_mismatch")]
    assert len(mapping.batch.fills) == 3


@pytest.mark.parametrize("item", [42, "ORDER_FILL", None, [1], {"id": "7"}, {"type": 3}])
def test_a_transaction_that_is_not_a_typed_object_is_rejected_alone(item: Any) -> None:
    mapping = map_event(event(page([item, MULTI_LEG])))
    [rejection] = mapping.rejected
    assert (rejection.index, rejection.code, rejection.item) == (0, "invalid_transaction", item)
    assert len(mapping.batch.fills) == 3


# --- times ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2016-10-28T15:11:58.999999999Z", "2016-10-28T15:11:58.999999"),  # truncated, not rounded
        ("2016-10-28T15:11:58Z", "2016-10-28T15:11:58"),
        ("2016-10-28T15:11:58.5Z", "2016-10-28T15:11:58.500000"),
        ("2016-10-28T17:11:58.023004583+02:00", "2016-10-28T15:11:58.023004"),
    ],
)
def test_rfc3339_times_become_utc_microseconds(text: str, expected: str) -> None:
    [fill] = mapped(page([closing_fill() | {"time": text}])).fills
    assert fill.executed_at == utc(expected)
    assert fill.broker_time == text


# --- pages that cannot be mapped at all -----------------------------------------------------


def test_a_page_for_another_account_is_an_account_mismatch() -> None:
    assert invalid_event_code(page([], account_id="101-004-1435156-002")) == "account_mismatch"


def test_a_live_page_on_a_demo_connection_is_an_account_mismatch() -> None:
    assert invalid_event_code(page([], environment="live")) == "account_mismatch"
    assert mapped(page([], environment="live"), connection(connection_type="live")).fills == ()


@pytest.mark.parametrize("raw", [b"", b'{"kind": ', b"\xff\xfe{}", b'{"transactions": [1,]}'])
def test_a_body_that_is_not_json_is_malformed(raw: bytes) -> None:
    assert invalid_event_code(raw) == "malformed_json"


def without(key: str) -> dict[str, Any]:
    document = page([])
    del document[key]
    return document


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(page([], kind="mt5.deals"), id="another kind"),
        pytest.param(page([]) | {"cursor": "9"}, id="unknown field"),
        pytest.param(without("transactions"), id="no transactions"),
        pytest.param(without("to_id"), id="no to_id"),
        pytest.param(page([], environment="sandbox"), id="unknown environment"),
        pytest.param(page([], lastTransactionID=2311), id="id as a number"),
        pytest.param(page([]) | {"transactions": {"0": {}}}, id="transactions not a list"),
        pytest.param(page([]) | {"account": []}, id="account not an object"),
        pytest.param(b"[]", id="not an object"),
    ],
)
def test_a_page_of_the_wrong_shape_is_invalid(payload: dict[str, Any] | bytes) -> None:
    assert invalid_event_code(payload) == "invalid_payload"


# --- batch ----------------------------------------------------------------------------------


def test_the_batch_belongs_to_the_event_it_was_mapped_from() -> None:
    raw = event(constructed_page())
    batch = map_event(raw).batch
    assert (batch.event_id, batch.source, batch.connection, batch.received_at) == (
        raw.event_id,
        "poller",
        connection(),
        RECEIVED_AT,
    )


def test_mapping_the_same_page_twice_gives_the_same_mapping() -> None:
    raw = event(constructed_page())
    assert map_event(raw) == map_event(raw)


def test_the_oanda_mapper_is_found_by_broker_name() -> None:
    assert mapper_for("oanda") == broker("oanda").map
    assert broker("oanda").map_event is map_event
