"""MT5 deal webhooks become canonical fills, cash movements and a balance snapshot."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from services.devstack.demo import encode_body
from services.normalizer.mappers import mapper_for
from services.normalizer.mappers.mt5 import map_event, server_time_to_utc
from services.shared.canonical import Fill
from services.shared.envelope import ConnectionRef, RawEvent
from services.shared.errors import InvalidEvent
from tests.support.builders import fixture_deals

LOGIN, SERVER = 52557820, "Broker-Demo"
SENT_AT = datetime(2024, 6, 4, 9, 0, 5, tzinfo=UTC)
CONNECTION = ConnectionRef(
    connection_id=uuid.uuid4(),
    user_id=uuid.uuid4(),
    account_id=uuid.uuid4(),
    broker="mt5",
    connection_type="demo",
    account_number=str(LOGIN),
    server=SERVER,
)


def body(
    deals: list[Any],
    *,
    login: int = LOGIN,
    server: str = SERVER,
    offset: int = 10800,
    **account: Any,
) -> dict[str, Any]:
    return {
        "account": {
            "login": login,
            "server": server,
            "currency": "USD",
            "balance": Decimal("1069.44"),
            "equity": Decimal("1071.00"),
        }
        | account,
        "server_time_offset_seconds": offset,
        "deals": deals,
    }


def event(payload: dict[str, Any] | bytes) -> RawEvent:
    raw = payload if isinstance(payload, bytes) else encode_body(payload)
    return RawEvent.wrap(
        source="webhook",
        connection=CONNECTION,
        received_at=SENT_AT,
        delivery_id="msg_1",
        body=raw,
        sent_at=SENT_AT,
    )


def test_the_fixture_deals_become_three_fills_of_one_position() -> None:
    mapping = map_event(event(body(fixture_deals())))
    fills = mapping.batch.fills
    assert [f.fill_key for f in fills] == [
        f"mt5:{SERVER}:{LOGIN}:deal:{t}" for t in (900001, 900057, 900311)
    ]
    assert {f.position_key for f in fills} == {f"mt5:{SERVER}:{LOGIN}:800001"}
    assert [(f.entry, f.side) for f in fills] == [("in", "buy"), ("out", "sell"), ("out", "sell")]
    assert mapping.rejected == ()


def test_server_time_is_converted_to_utc_and_the_raw_value_kept() -> None:
    opening = map_event(event(body(fixture_deals()))).batch.fills[0]
    assert opening.executed_at == datetime(2024, 6, 3, 6, 0, 0, 123000, tzinfo=UTC)
    assert opening.broker_time == "1717405200123"


def test_a_jittery_reported_offset_is_rounded_to_the_servers_quarter_hour() -> None:
    assert server_time_to_utc(1717405200123, 10799) == server_time_to_utc(1717405200123, 10800)
    assert server_time_to_utc(1717405200000, 7201) == datetime(2024, 6, 3, 7, 0, tzinfo=UTC)


def test_amounts_are_the_exact_decimals_that_were_sent() -> None:
    fills = map_event(event(body(fixture_deals()))).batch.fills
    assert fills[0].volume == Decimal("0.30") and str(fills[0].volume) == "0.30"
    assert fills[2].swap == Decimal("-1.36") and fills[1].price == Decimal("1.08650")


def test_cash_deals_become_cash_movements_not_fills() -> None:
    deposit = fixture_deals()[0] | {
        "ticket": 1,
        "type": 2,
        "entry": 0,
        "position_id": 0,
        "symbol": "",
        "volume": 0,
        "price": 0,
        "profit": Decimal("500.00"),
        "comment": "deposit",
    }
    charge = deposit | {"ticket": 2, "type": 4, "profit": Decimal("-2.50"), "comment": ""}
    batch = map_event(event(body([deposit, charge]))).batch
    assert batch.fills == ()
    assert [(m.kind, m.amount) for m in batch.cash_movements] == [
        ("balance", Decimal("500.00")),
        ("charge", Decimal("-2.50")),
    ]
    assert batch.cash_movements[0].movement_key == f"mt5:{SERVER}:{LOGIN}:deal:1"


def test_the_snapshot_carries_the_reported_balance_as_of_the_signed_send_time() -> None:
    account = map_event(event(body([]))).batch.account
    assert account is not None
    assert (account.balance, account.equity, account.currency, account.as_of) == (
        Decimal("1069.44"),
        Decimal("1071.00"),
        "USD",
        SENT_AT,
    )


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"volume": "lots"}, "volume"),
        ({"volume": 0}, "positive volume"),
        ({"symbol": ""}, "symbol"),
        ({"ticket": -1}, "ticket"),
        ({"entry": 7}, "entry"),
        ({"type": 99}, "deal type 99"),
        ({"unexpected": 1}, "unexpected"),
    ],
)
def test_a_bad_deal_is_rejected_alone_and_the_valid_ones_still_map(
    change: dict[str, Any], fragment: str
) -> None:
    deals = fixture_deals()
    bad = deals[1] | change
    mapping = map_event(event(body([deals[0], bad, deals[2]])))
    assert [f.broker_ref for f in mapping.batch.fills] == ["900001", "900311"]
    [rejection] = mapping.rejected
    assert rejection.index == 1 and fragment in rejection.detail
    assert rejection.item["ticket"] == bad["ticket"]


def test_a_deal_missing_a_field_is_rejected() -> None:
    deal = {k: v for k, v in fixture_deals()[0].items() if k != "time_msc"}
    [rejection] = map_event(event(body([deal]))).rejected
    assert rejection.code == "invalid_deal" and "time_msc" in rejection.detail


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (body([], login=123), "account_mismatch"),
        (body([], server="Other-Server"), "account_mismatch"),
        (b'{"account": ', "malformed_json"),
        (b"[]", "invalid_payload"),
        ({"server_time_offset_seconds": 0, "deals": []}, "invalid_payload"),
        (body([], offset=20 * 3600), "invalid_payload"),
        (body([], balance="NaN"), "invalid_payload"),
    ],
)
def test_an_unusable_payload_is_an_invalid_event_with_a_stable_code(
    payload: dict[str, Any] | bytes, code: str
) -> None:
    with pytest.raises(InvalidEvent) as raised:
        map_event(event(payload))
    assert raised.value.code == code


def test_the_mapper_is_found_by_broker_name() -> None:
    assert mapper_for("mt5") is map_event
    for name in ("nope", "../etc", "MT5", ""):
        with pytest.raises(InvalidEvent) as raised:
            mapper_for(name)
        assert raised.value.code == "unknown_broker"


def test_mapping_is_deterministic() -> None:
    raw = event(body(fixture_deals()))
    assert map_event(raw) == map_event(raw)
    assert all(isinstance(f, Fill) for f in map_event(raw).batch.fills)
