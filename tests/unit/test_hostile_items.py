"""Whatever one item of a payload holds costs only that item: it is rejected with its reason,
the other items are mapped, and its dead letter describes it whatever it is.

These are the instances that once stopped, stalled or corrupted the pipeline for everyone: a
price beyond the decimal context, a deal nested hundreds of levels deep, a lone surrogate, a
balance that was stored as 0.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from services.normalizer.pipeline import item_rejections, normalize
from services.shared.brokers import MappedEvent, Rejection
from services.shared.brokers.items import mapped_or_rejected
from services.shared.dead_letters import MAX_DEAD_LETTER_BYTES, dead_letter, fit_to_size
from services.shared.envelope import ConnectionRef, RawEvent
from tests.support.builders import (
    PINNED_CONNECTION,
    PINNED_LOGIN,
    deposit_deal,
    fixture_deals,
    mt5_body,
)
from tests.support.json_as_sent import Verbatim, json_as_sent
from tests.support.records import consumer_record

RECEIVED_AT = datetime(2024, 6, 4, 9, 0, 5, tzinfo=UTC)


def event(body: bytes, connection: ConnectionRef = PINNED_CONNECTION) -> RawEvent:
    return RawEvent.wrap(
        source="webhook",
        connection=connection,
        received_at=RECEIVED_AT,
        delivery_id="msg_hostile",
        body=body,
        sent_at=RECEIVED_AT,
    )


def mt5_mapping(deals: list[Any], **account: Any) -> MappedEvent:
    document = mt5_body(PINNED_LOGIN, deals)
    document["account"] |= account
    return normalize(event(json_as_sent(document)))


def with_one_bad_deal(**changes: Any) -> MappedEvent:
    good, bad = fixture_deals()[0], fixture_deals()[1] | changes
    return mt5_mapping([good, bad])


def nested(depth: int) -> Verbatim:
    """`depth` levels of objects and lists, as JSON text (a few hundred parse; each item's
    dead letter must still describe it)."""
    half = depth // 2
    return Verbatim('{"deeper":[' * half + '"bottom"' + "]}" * half)


def only_rejection(mapping: MappedEvent) -> Rejection:
    [rejection] = mapping.rejected
    return rejection


def letter_size(mapping: MappedEvent) -> int:
    letter = dead_letter(
        consumer_record(b"raw"),
        stage="normalizer",
        reason_code="rejected_items",
        reason="hostile",
        failed_at=RECEIVED_AT,
        rejections=item_rejections(mapping),
    )
    return len(fit_to_size(letter).model_dump_json().encode())


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"price": Decimal("1e999999")}, "price"),  # once overflowed the writer's aggregation
        ({"volume": Decimal("1e16")}, "volume"),
        ({"profit": Decimal("1e200000")}, "profit"),
        ({"commission": Decimal("0.0000000000000000001")}, "commission"),
        ({"comment": "closed \ud800 by hand"}, "comment"),  # once stalled its partition
        ({"symbol": "EUR\x00USD"}, "symbol"),
        ({"symbol": "X" * 100}, "symbol"),
        ({"ticket": 2**64}, "ticket"),
        ({"comment": nested(600)}, "comment"),  # once killed the normalizer
        ({"external_id": nested(300)}, "external_id"),
    ],
)
def test_a_deal_the_journal_cannot_hold_is_rejected_alone_with_its_reason(
    changes: dict[str, Any], fragment: str
) -> None:
    mapping = with_one_bad_deal(**changes)
    rejection = only_rejection(mapping)
    assert (rejection.index, rejection.code) == (1, "invalid_deal")
    assert fragment in rejection.detail
    assert [f.broker_ref for f in mapping.batch.fills] == [str(fixture_deals()[0]["ticket"])]
    assert letter_size(mapping) <= MAX_DEAD_LETTER_BYTES


def test_a_deal_dated_days_after_its_receipt_is_rejected_as_implausible() -> None:
    later = RECEIVED_AT + timedelta(days=3, hours=3)  # server time: UTC+3
    millis = int(later.timestamp() * 1000)
    rejection = only_rejection(with_one_bad_deal(time=millis // 1000, time_msc=millis))
    assert (rejection.index, rejection.code) == (1, "implausible_time")


def test_a_balance_beyond_the_journal_rejects_the_report_and_keeps_the_deals() -> None:
    mapping = mt5_mapping(fixture_deals(), balance=Decimal("1e200000"))
    rejection = only_rejection(mapping)
    assert (rejection.index, rejection.location, rejection.code) == (
        None,
        "account",
        "invalid_account",
    )
    assert "balance" in rejection.detail
    assert mapping.batch.account is None  # never stored, not as 0 nor as anything else
    assert len(mapping.batch.fills) == len(fixture_deals())


def oanda_connection() -> ConnectionRef:
    return PINNED_CONNECTION.model_copy(
        update={"broker": "oanda", "account_number": "101-004-1-001", "server": None}
    )


def oanda_page(transactions: list[Any]) -> bytes:
    return json_as_sent(
        {
            "kind": "oanda.transactions",
            "accountID": "101-004-1-001",
            "environment": "practice",
            "from_id": "1",
            "to_id": "9",
            "lastTransactionID": "9",
            "transactions": transactions,
        }
    )


def financing(id_: str, amount: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": id_,
        "time": "2024-06-03T21:00:00.000000000Z",
        "type": "DAILY_FINANCING",
        "financing": amount,
    } | fields


def transfer(id_: str, amount: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": id_,
        "time": "2024-06-03T21:00:00.000000000Z",
        "type": "TRANSFER_FUNDS",
        "amount": amount,
    } | fields


@pytest.mark.parametrize(
    "bad",
    [
        financing("2", "1" + "0" * 20),
        financing("2", "-0.5", positionFinancings=[{"openTradeFinancings": nested(500)}]),
        transfer("2", "100.00", comment="deposit \udfff"),
        transfer("2", "100.00", comment="x" * 5000),
    ],
    ids=["amount beyond the journal", "nested", "surrogate", "long comment"],
)
def test_an_oanda_transaction_the_journal_cannot_hold_is_rejected_alone(bad: Any) -> None:
    mapping = normalize(event(oanda_page([financing("1", "-0.25"), bad]), oanda_connection()))
    rejection = only_rejection(mapping)
    assert (rejection.index, rejection.code) == (1, "invalid_transaction")
    assert [m.broker_ref for m in mapping.batch.cash_movements] == ["1"]
    assert letter_size(mapping) <= MAX_DEAD_LETTER_BYTES


def test_text_of_oanda_s_that_the_journal_does_not_read_hurts_nothing() -> None:
    mapping = normalize(
        event(oanda_page([financing("1", "-0.25", note="\ud800" * 3)]), oanda_connection())
    )
    assert mapping.rejected == () and len(mapping.batch.cash_movements) == 1


def test_a_flex_execution_the_journal_cannot_hold_is_rejected_alone() -> None:
    def execution(trade_id: str, price: str) -> str:
        return (
            f'<Trade accountId="U1" levelOfDetail="EXECUTION" symbol="AAPL" conid="265598"'
            f' tradeID="{trade_id}" dateTime="20240603;100000" quantity="10" buySell="BUY"'
            f' openCloseIndicator="O" tradePrice="{price}" fifoPnlRealized="0"/>'
        )

    body = (
        '<FlexQueryResponse><FlexStatements count="1"><FlexStatement accountId="U1"><Trades>'
        f"{execution('1', '190.5')}{execution('2', '1' + '0' * 16)}"
        "</Trades></FlexStatement></FlexStatements></FlexQueryResponse>"
    ).encode()
    connection = PINNED_CONNECTION.model_copy(
        update={"broker": "ibkr", "account_number": "U1", "server": None}
    )
    mapping = normalize(event(body, connection))
    rejection = only_rejection(mapping)
    assert (rejection.index, rejection.code) == (1, "invalid_trade")
    assert "price" in rejection.detail
    assert [f.broker_ref for f in mapping.batch.fills] == ["1"]


@pytest.mark.parametrize(
    "failure", [KeyError("volume"), RecursionError("too deep"), ArithmeticError("overflow")]
)
def test_any_exception_an_item_provokes_is_that_items_rejection(failure: Exception) -> None:
    def provoke() -> None:
        raise failure

    rejection = mapped_or_rejected(7, {"the": "item"}, provoke, invalid_code="invalid_deal")
    assert isinstance(rejection, Rejection)
    assert (rejection.index, rejection.code, rejection.item) == (7, "mapper_error", {"the": "item"})
    assert type(failure).__name__ in rejection.detail


def test_a_cash_deal_of_33_digits_adds_up_exactly_never_rounded() -> None:
    big = Decimal("999999999999999.999999999999999999")
    deal = deposit_deal(990_001) | {"profit": big, "fee": Decimal("-0.000000000000000001")}
    [movement] = mt5_mapping([deal]).batch.cash_movements
    assert movement.amount == Decimal("999999999999999.999999999999999998")
