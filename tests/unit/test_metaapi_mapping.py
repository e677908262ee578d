"""MetaApi's deals ("metaapi.deals" pages) into the MT5 account's canonical records: every deal
type and entry, the very records (keys, times, amounts) the webhook path makes of the same
deals, both times kept, the account checked, one bad deal costing only itself."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from services.devstack.demo import encode_body
from services.shared.brokers.mt5 import BROKER
from services.shared.brokers.mt5.deals import CASH_KINDS, DEAL_ENTRIES, DEAL_TYPES
from services.shared.brokers.mt5.metaapi.adapter import page_body
from services.shared.envelope import ConnectionRef, EventSource, RawEvent
from services.shared.errors import InvalidEvent
from tests.support.builders import PINNED_CONNECTION, SERVER, deposit_deal, fixture_deals, mt5_body
from tests.support.fake_metaapi import as_metaapi_deal, samples

map_event = BROKER.map  # every MT5 payload, by its kind

OFFSET = 10800  # the fixture's server runs GMT+3
LOGIN = PINNED_CONNECTION.account_number
RECEIVED = datetime(2024, 6, 10, tzinfo=UTC)


def information(**changes: Any) -> dict[str, Any]:
    info: dict[str, Any] = samples()["rest_GET_account_information_response"]
    info.update(login=int(LOGIN), server=SERVER, **changes)
    return info


def event(
    body: bytes, source: EventSource = "poller", connection: ConnectionRef = PINNED_CONNECTION
) -> RawEvent:
    return RawEvent.wrap(
        source=source,
        connection=connection,
        received_at=RECEIVED,
        delivery_id="d-1",
        body=body,
        sent_at=RECEIVED,
    )


def metaapi_page(deals: list[dict[str, Any]], info: dict[str, Any] | None = None) -> bytes:
    return page_body(
        login=LOGIN,
        server=SERVER,
        account_id="acc-1",
        deals=deals,
        information=info,
        positions=[] if info else None,
    )


def webhook_body(deals: list[dict[str, Any]]) -> bytes:
    return encode_body(mt5_body(int(LOGIN), deals, offset=OFFSET))


def every_deal() -> list[dict[str, Any]]:
    """The fixture's position, a deposit, and one deal of every other type MT5 has."""
    deals = [deposit_deal(900000), *fixture_deals()]
    template = fixture_deals()[0]
    for number in sorted(set(DEAL_TYPES.values()) - {0, 1, 2}):
        if number in CASH_KINDS:
            deals.append(deposit_deal(910000 + number, "-1.25") | {"type": number})
        else:  # 13, 14: cancelled buys and sells keep their position
            deals.append(template | {"ticket": 910000 + number, "type": number})
    return deals


def test_metaapi_deals_make_exactly_the_records_the_webhook_makes_of_the_same_deals() -> None:
    deals = every_deal()
    by_webhook = map_event(event(webhook_body(deals), "webhook")).batch
    by_metaapi = map_event(event(metaapi_page([as_metaapi_deal(d, OFFSET) for d in deals]))).batch

    assert by_metaapi.fills == by_webhook.fills
    assert by_metaapi.cash_movements == by_webhook.cash_movements
    assert {f.fill_key for f in by_metaapi.fills} >= {f"mt5:{SERVER}:{LOGIN}:deal:900001"}
    assert {f.position_key for f in by_metaapi.fills} == {f"mt5:{SERVER}:{LOGIN}:800001"}


def test_every_deal_type_maps_to_a_fill_or_a_cash_movement_of_its_kind() -> None:
    deals = every_deal()
    mapped = map_event(event(metaapi_page([as_metaapi_deal(d, OFFSET) for d in deals])))
    assert mapped.rejected == ()
    kinds = {c.broker_ref: c.kind for c in mapped.batch.cash_movements}
    assert sorted(kinds.values()) == sorted(CASH_KINDS.values())
    cancelled = {f.broker_ref: f.cancelled for f in mapped.batch.fills if f.cancelled}
    assert set(cancelled) == {"910013", "910014"}


@pytest.mark.parametrize("entry", sorted(DEAL_ENTRIES))
def test_every_entry_type_is_read(entry: str) -> None:
    deal = as_metaapi_deal(fixture_deals()[1], OFFSET) | {"entryType": entry}
    (fill,) = map_event(event(metaapi_page([deal]))).batch.fills
    assert fill.entry == {0: "in", 1: "out", 2: "inout", 3: "out_by"}[DEAL_ENTRIES[entry]]


def test_metaapis_own_spellings_of_dividend_and_tax_are_read() -> None:
    base = as_metaapi_deal(deposit_deal(920000), OFFSET)
    deals = [
        base | {"id": str(920000 + n), "type": name}
        for n, name in enumerate(("DEAL_DIVIDEND", "DEAL_DIVIDEND_FRANKED", "DEAL_TAX"))
    ]
    batch = map_event(event(metaapi_page(deals))).batch
    assert [c.kind for c in batch.cash_movements] == ["dividend", "dividend_franked", "tax"]


def test_both_times_are_kept_utc_as_the_execution_and_the_broker_clock_beside_it() -> None:
    deal = as_metaapi_deal(fixture_deals()[0], OFFSET)
    (fill,) = map_event(event(metaapi_page([deal]))).batch.fills
    assert fill.executed_at == datetime(2024, 6, 3, 6, 0, 0, 123000, tzinfo=UTC)
    assert deal["brokerTime"] == "2024-06-03 09:00:00.123"
    assert fill.broker_time == "1717405200123"  # the server's wall clock, as the EA sends it


def test_the_account_information_is_the_balance_snapshot_as_of_the_newest_deal() -> None:
    deals = [as_metaapi_deal(d, OFFSET) for d in fixture_deals()]
    batch = map_event(event(metaapi_page(deals, information(balance=Decimal("7319.90"))))).batch
    assert batch.account is not None
    assert (batch.account.balance, batch.account.currency) == (Decimal("7319.90"), "USD")
    assert batch.account.deals_through == max(f.executed_at for f in batch.fills)


def test_a_bad_deal_is_rejected_with_its_reason_and_the_others_are_kept() -> None:
    good = [as_metaapi_deal(d, OFFSET) for d in fixture_deals()]
    bad = [
        good[0] | {"id": "1", "type": "DEAL_TYPE_SOMETHING_NEW"},
        good[0] | {"id": "2", "price": "1.08"},  # a number written as text
        good[0] | {"id": "3", "brokerTime": "2024-06-05 09:00:00.000"},  # days from `time`
        {k: v for k, v in good[0].items() if k != "entryType"} | {"id": "4"},
    ]
    mapped = map_event(event(metaapi_page([*good, *bad])))
    assert len(mapped.batch.fills) == len(good)
    assert [(r.index, r.code) for r in mapped.rejected] == [
        (len(good), "unknown_deal_type"),
        (len(good) + 1, "invalid_deal"),
        (len(good) + 2, "invalid_deal"),
        (len(good) + 3, "invalid_deal"),
    ]


def test_a_page_of_another_account_maps_nothing() -> None:
    other = PINNED_CONNECTION.model_copy(update={"account_number": "1"})
    with pytest.raises(InvalidEvent) as refused:
        map_event(event(metaapi_page([]), connection=other))
    assert refused.value.code == "account_mismatch"


@pytest.mark.parametrize(
    ("connection_type", "mode"),
    [("demo", "ACCOUNT_TRADE_MODE_REAL"), ("live", "ACCOUNT_TRADE_MODE_DEMO")],
)
def test_an_account_of_the_other_trade_mode_than_its_connection_maps_nothing(
    connection_type: str, mode: str
) -> None:
    connection = PINNED_CONNECTION.model_copy(update={"connection_type": connection_type})
    deals = [as_metaapi_deal(d, OFFSET) for d in fixture_deals()]
    with pytest.raises(InvalidEvent) as refused:
        map_event(event(metaapi_page(deals, information(type=mode)), connection=connection))
    assert refused.value.code == "account_mismatch"
    assert "real-money" in refused.value.detail or "demo account" in refused.value.detail


def test_the_pages_numbers_stay_the_exact_digits_metaapi_sent() -> None:
    deal = as_metaapi_deal(fixture_deals()[1], OFFSET) | {"profit": Decimal("15.000000001")}
    body = metaapi_page([deal])
    assert b'"profit":15.000000001' in body
    (fill,) = map_event(event(body)).batch.fills
    assert fill.profit == Decimal("15.000000001")


def test_a_deal_far_after_the_event_was_received_is_implausible() -> None:
    deal = as_metaapi_deal(fixture_deals()[0], OFFSET)
    late = datetime.fromisoformat(deal["time"]) + timedelta(days=400)
    deal |= {
        "time": late.isoformat().replace("+00:00", "Z"),
        "brokerTime": (late + timedelta(hours=3)).strftime("%Y-%m-%d %H:%M:%S.000"),
    }
    mapped = map_event(event(metaapi_page([deal])))
    assert [r.code for r in mapped.rejected] == ["implausible_time"]
    assert mapped.batch.fills == ()
